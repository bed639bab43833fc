//! What the commands show on the terminal while they work: a run's
//! progress, and the read models brought up to date at the end.

use cairn_events::Event;

/// Progress display: on a terminal each running step is one line that is
/// rewritten in place with its outcome; otherwise one plain line per fact.
pub struct Progress {
    tty: bool,
    open_line: bool,
}

impl Progress {
    /// A display for stderr.
    pub fn new(tty: bool) -> Self {
        Progress { tty, open_line: false }
    }

    /// Shows one event.
    pub fn show(&mut self, e: &Event) {
        use std::io::Write as _;
        let running = match e {
            Event::StepStarted(s) if s.attempt > 1 => Some(format!("{} (attempt {})", s.step_id, s.attempt)),
            Event::StepStarted(s) => Some(s.step_id.clone()),
            Event::AiAttemptStarted(a) => {
                Some(format!("{} asks {}/{} (attempt {})", a.step_id, a.provider, a.model, a.attempt))
            }
            Event::TimerStarted(t) if t.purpose == "wait" => Some(format!(
                "{} waits until {}",
                t.step_id.as_deref().unwrap_or("timer"),
                t.due_at.format("%H:%M:%S%.3f")
            )),
            _ => None,
        };
        let done = match e {
            Event::StepCompleted(s) => Some(("✓", format!("{} ({} ms)", s.step_id, s.duration_ms))),
            Event::StepFailed(s) => {
                Some(("✗", format!("{} attempt {}: [{}] {}", s.step_id, s.attempt, s.error_kind, s.message)))
            }
            Event::RetryScheduled(r) => {
                Some(("↻", format!("{} retry {} in {} ms", r.step_id, r.next_attempt, r.backoff_ms)))
            }
            Event::BranchTaken(b) => {
                Some(("→", format!("{}: `{}` is {} → {}", b.step_id, b.expression, b.value, b.target)))
            }
            Event::TimerStarted(t) if t.purpose != "wait" => Some((
                "⏲",
                format!(
                    "{} {} at {}",
                    t.step_id.as_deref().unwrap_or("timer"),
                    match t.purpose.as_str() {
                        "retry" => "retries",
                        "deadline" => "is due",
                        other => other,
                    },
                    t.due_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
                ),
            )),
            Event::CompensationStarted(c) => Some(("↩", format!("undoing: {}", c.compensations.join(", ")))),
            Event::StepSkipped(s) => Some(("–", format!("{} {}", s.step_id, s.reason))),
            Event::StepKept(k) => Some(("=", format!("{} kept: {}", k.step_id, k.reason))),
            Event::RunResumed(r) => Some(("↺", format!("resumed from `{}` ({}) by {}", r.from_step, r.policy, r.by))),
            Event::ChildRunStarted(c) => Some((
                "↳",
                format!("{} started child run {} ({} v{})", c.step_id, c.child_run_id, c.workflow, c.workflow_version),
            )),
            Event::AiAttemptCompleted(a) => Some((
                "⇠",
                format!(
                    "{} reply {}: {}+{} tokens{}, {} ms",
                    a.step_id,
                    a.attempt,
                    a.usage.input_tokens,
                    a.usage.output_tokens,
                    a.cost
                        .as_ref()
                        .map(|c| format!(", {:.6} {}", c.micros as f64 / 1e6, c.currency))
                        .unwrap_or_default(),
                    a.latency_ms
                ),
            )),
            Event::AiOutputRejected(r) => Some((
                "✗",
                format!(
                    "{} reply {} rejected, fed back: {}",
                    r.step_id,
                    r.attempt,
                    r.errors.iter().map(|e| format!("{} {}", e.path, e.message)).collect::<Vec<_>>().join("; ")
                ),
            )),
            Event::AiAttemptFailed(f) => {
                Some(("✗", format!("{} call {}: [{}] {}", f.step_id, f.attempt, f.error_kind, f.message)))
            }
            Event::InputRequested(r) => Some((
                "✎",
                format!(
                    "{} waits for input{}",
                    r.step_id,
                    if r.assignees.is_empty() { String::new() } else { format!(" from {}", r.assignees.join(", ")) }
                ),
            )),
            Event::ApprovalRequested(r) => Some((
                "⚖",
                format!("{} waits for {} approval(s) from {}", r.step_id, r.required_approvals, r.approvers.join(", ")),
            )),
            Event::InputSubmitted(s) => Some(("✓", format!("{} submitted by {}", s.step_id, s.submitted_by))),
            Event::ApprovalDecided(d) => Some((
                if d.decision == "approved" { "✓" } else { "✗" },
                format!(
                    "{} {} by {}{}",
                    d.step_id,
                    d.decision,
                    d.decided_by,
                    d.comment.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
                ),
            )),
            Event::ApprovalExpired(x) => Some(("⌛", format!("{} expired: {}", x.step_id, x.on_timeout))),
            Event::NotificationSent(n) => Some(("✉", format!("{} {} sent to {}", n.step_id, n.purpose, n.recipient))),
            Event::NotificationFailed(n) => {
                Some(("✉", format!("{} {} to {} failed: {}", n.step_id, n.purpose, n.recipient, n.error)))
            }
            Event::RunCompleted(_) => Some(("●", "completed".to_owned())),
            Event::RunFailed(f) => Some(("●", format!("failed: {}", f.message))),
            _ => None,
        };
        let mut err = std::io::stderr().lock();
        if !self.tty {
            if let (Some(text), Event::StepStarted(s)) = (&running, e)
                && s.attempt > 1
            {
                let _ = writeln!(err, "  … {text}");
            }
            if let Event::TimerStarted(_) = e
                && let Some(text) = &running
            {
                let _ = writeln!(err, "  ⏲ {text}");
            }
            if let Some((mark, text)) = done {
                let _ = writeln!(err, "  {mark} {text}");
            }
            return;
        }
        if let Some(text) = running {
            // Rewrite the open line: the step is running (or waiting).
            let _ = write!(err, "\r\x1b[2K  \x1b[2m⋯ {text}\x1b[0m");
            self.open_line = true;
        } else if let Some((mark, text)) = done {
            let clear = if self.open_line { "\r\x1b[2K" } else { "" };
            let _ = writeln!(err, "{clear}  \x1b[1m{mark}\x1b[0m {text}");
            self.open_line = false;
        }
        let _ = err.flush();
    }
}

/// Brings the read models up to date; a failure there is reported, never
/// fails the command (the log is the truth; `cairn projections status` shows
/// what is wrong).
pub async fn project(database: &str, read: &crate::commands::read::ReadArgs) {
    if let Err(e) = crate::commands::read::catch_up(database, read).await {
        eprintln!("warning: the read models are not up to date: {e:#}");
    }
}
