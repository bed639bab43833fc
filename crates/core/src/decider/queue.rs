//! The decider for `queue` steps, whose work external workers do. An
//! attempt is recorded as started with its input and offered on its queue
//! (`TaskOffered`, which the write side's task index follows); a worker
//! polling the queue claims it (`TaskClaimed`, with the hash of the task
//! token it was given), heartbeats, and completes or fails the attempt with
//! the token. The run waits without holding anything. The step's `timeout`
//! is a durable timer from the offer; a lapsed heartbeat is noticed by the
//! engine's workers, which fail the attempt (`heartbeat-timeout`); either
//! way the retry policy decides what follows, so a vanished worker's task is
//! offered again as the next attempt.

use cairn_events::{Event, StepFailed, TaskOffered};
use chrono::{DateTime, Utc};

use super::{Decision, InFlight, RunState};

/// One offered task (a `queue` step attempt), folded from its events.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskState {
    /// The queue.
    pub queue: String,
    /// Longest a claim may go without a heartbeat (milliseconds).
    pub heartbeat_timeout_ms: u64,
    /// When the attempt times out unless finished.
    pub expires_at: Option<DateTime<Utc>>,
    /// The claim: the worker's name, the key's identity, the token's hash.
    pub claim: Option<Claim>,
    /// How the attempt ended, once it has: `completed`, or the error kind.
    pub outcome: Option<String>,
    /// The failure's message, once it failed.
    pub message: Option<String>,
}

/// A worker's claim of a task.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Claim {
    /// The worker, as it named itself.
    pub worker: String,
    /// The identity of its API key.
    pub by: String,
    /// SHA-256 of the task token.
    pub token_hash: String,
}

/// The error kinds the engine itself fails a task with; a worker's own
/// failure never has them.
pub const ENGINE_KINDS: [&str; 2] = ["timeout", "heartbeat-timeout"];

/// Folds a task event; `false` when `event` is not one. Outcomes of an
/// offered attempt are noted (and left for the main fold).
pub(super) fn evolve(s: &mut RunState, event: &Event) -> bool {
    match event {
        Event::TaskOffered(e) => {
            s.tasks.insert(
                (e.step_id.clone(), e.attempt),
                TaskState {
                    queue: e.queue.clone(),
                    heartbeat_timeout_ms: e.heartbeat_timeout_ms,
                    expires_at: e.expires_at,
                    claim: None,
                    outcome: None,
                    message: None,
                },
            );
            true
        }
        Event::TaskClaimed(e) => {
            if let Some(t) = s.tasks.get_mut(&(e.step_id.clone(), e.attempt)) {
                t.claim = Some(Claim { worker: e.worker.clone(), by: e.by.clone(), token_hash: e.token_hash.clone() });
            }
            true
        }
        Event::StepCompleted(e) => {
            if let Some(t) = s.tasks.get_mut(&(e.step_id.clone(), e.attempt)) {
                t.outcome = Some("completed".into());
            }
            false
        }
        Event::StepFailed(e) => {
            if let Some(t) = s.tasks.get_mut(&(e.step_id.clone(), e.attempt)) {
                t.outcome = Some(e.error_kind.clone());
                t.message = Some(e.message.clone());
            }
            false
        }
        _ => false,
    }
}

/// The offer that goes with a `queue` step attempt's start.
pub(super) fn offer(
    inst: &str,
    attempt: u32,
    queue: &str,
    heartbeat: std::time::Duration,
    timeout: Option<std::time::Duration>,
    now: DateTime<Utc>,
) -> Event {
    Event::TaskOffered(TaskOffered {
        step_id: inst.to_owned(),
        attempt,
        queue: queue.to_owned(),
        heartbeat_timeout_ms: u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX),
        expires_at: timeout.map(|t| now + chrono::Duration::from_std(t).unwrap_or(chrono::Duration::MAX)),
    })
}

/// Decides for a `queue` step attempt in flight: offer it (an attempt
/// started by an engine that did not), time it out, or wait.
pub(super) fn decide(f: &InFlight<'_>, queue: &str, heartbeat: std::time::Duration, d: &mut Decision) {
    let Some(t) = f.s.tasks.get(&(f.inst.to_owned(), f.attempt)) else {
        d.append.push(offer(f.inst, f.attempt, queue, heartbeat, f.st.timeout, f.now));
        return;
    };
    d.parked = true;
    let Some(expires) = t.expires_at else { return };
    if f.now < expires {
        d.wake(expires);
        return;
    }
    let who = match &t.claim {
        Some(c) => format!("worker `{}` claimed it and did not finish", c.worker),
        None => "no worker claimed it".to_owned(),
    };
    let limit = f.st.timeout.map(|t| format!(" ({t:?})")).unwrap_or_default();
    d.append.push(Event::StepFailed(StepFailed {
        step_id: f.inst.to_owned(),
        attempt: f.attempt,
        error_kind: "timeout".into(),
        message: format!("the task on queue `{}` passed the step's timeout{limit}: {who}", t.queue),
        retryable: true,
        retry_after_ms: None,
    }));
}
