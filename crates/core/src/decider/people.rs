//! The decider for `form` and `approval` steps. A step attempt is recorded
//! as started with what it shows (rendered), then its request
//! (`InputRequested` / `ApprovalRequested`, with the resume token's hash) is
//! recorded by the runner, which alone holds the token key. From then on the
//! run waits without holding anything: a submission or decision appended by
//! anyone completes the step; deadlines and reminders are durable timers;
//! notifications are effects whose failures are retried and never fail the
//! run.

use std::collections::BTreeMap;

use cairn_events::{
    ApprovalExpired, ApprovalRequested, Event, FormField, NotificationFailed, StepCompleted, StepFailed, TimerFired,
    TimerStarted,
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Decision, Effect, Execution, InFlight, RunState};
use crate::human::{ApprovalStep, FormStep, OnTimeout};
use crate::model::{Step, StepKind, Workflow};

/// A form or approval waiting for people, folded from its events.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HumanWait {
    /// `form` or `approval`.
    pub kind: String,
    /// The step attempt it belongs to.
    pub attempt: u32,
    /// SHA-256 of the resume token.
    pub token_hash: String,
    /// Form: who may submit. Approval: who may decide now.
    pub assignees: Vec<String>,
    /// Form fields, as requested.
    pub fields: Vec<FormField>,
    /// Form title, approval summary.
    pub title: Option<String>,
    /// Approvals needed now.
    pub required: u32,
    /// Quorum as written.
    pub quorum: String,
    /// The content being approved.
    pub content: Value,
    /// Its hash.
    pub content_hash: String,
    /// 0, or 1 once escalated.
    pub round: u32,
    /// Decisions, in the order made.
    pub decisions: Vec<Decided>,
    /// The form's submission: who, values.
    pub submitted: Option<(String, Value)>,
    /// The current deadline.
    pub deadline: Option<DateTime<Utc>>,
    /// Timers set: id → (purpose, due).
    pub timers: BTreeMap<String, (String, DateTime<Utc>)>,
    /// Timers that fired.
    pub fired: Vec<String>,
    /// The deadline passed (`ApprovalExpired`).
    pub expired: bool,
    /// Notifications: (purpose, recipient) → state.
    pub notices: BTreeMap<(String, String), Notice>,
}

/// One approver's decision, folded from `ApprovalDecided`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decided {
    /// Who decided.
    pub by: String,
    /// Approved (`true`) or rejected.
    pub approved: bool,
    /// Why.
    pub comment: Option<String>,
    /// The round it counts in (0, or 1 once escalated).
    pub round: u32,
    /// The approval's fields as given, checked.
    pub values: Option<Value>,
}

/// One notification's progress.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Notice {
    /// Send attempts made.
    pub attempts: u32,
    /// Handed to the channel.
    pub sent: bool,
    /// When the next attempt is due; `None` with `attempts > 0` and not
    /// sent: given up.
    pub retry_at: Option<DateTime<Utc>>,
}

impl HumanWait {
    /// Approvals and rejections in the current round.
    pub fn tally(&self) -> (u32, u32) {
        let mut yes = 0;
        let mut no = 0;
        for d in &self.decisions {
            if d.round == self.round {
                if d.approved { yes += 1 } else { no += 1 }
            }
        }
        (yes, no)
    }

    /// Whether `who` has decided already.
    pub fn decided(&self, who: &str) -> bool {
        self.decisions.iter().any(|d| d.by == who)
    }
}

/// Folds a human-step event; `false` when `event` is not one.
pub(super) fn evolve(s: &mut RunState, event: &Event) -> bool {
    match event {
        Event::InputRequested(e) => {
            let attempt = s.attempt_of(&e.step_id);
            s.people.insert(
                e.step_id.clone(),
                HumanWait {
                    kind: "form".into(),
                    attempt,
                    token_hash: e.token_hash.clone(),
                    assignees: e.assignees.clone(),
                    fields: e.fields.clone(),
                    title: e.title.clone(),
                    deadline: e.deadline,
                    ..HumanWait::default()
                },
            );
        }
        Event::ApprovalRequested(e) => {
            let attempt = s.attempt_of(&e.step_id);
            let h = s.people.entry(e.step_id.clone()).or_default();
            h.kind = "approval".into();
            h.attempt = attempt;
            h.token_hash = e.token_hash.clone().unwrap_or_default();
            h.assignees = e.approvers.clone();
            h.required = e.required_approvals;
            h.quorum = e.quorum.clone();
            h.title = Some(e.summary.clone());
            h.content = e.content.clone();
            h.content_hash = e.content_hash.clone();
            h.round = e.escalation;
            h.fields = e.fields.clone();
            h.deadline = e.deadline;
            h.expired = false;
        }
        Event::InputSubmitted(e) => {
            if let Some(h) = s.people.get_mut(&e.step_id) {
                h.submitted = Some((e.submitted_by.clone(), e.values.clone()));
            }
        }
        Event::ApprovalDecided(e) => {
            if let Some(h) = s.people.get_mut(&e.step_id) {
                let round = h.round;
                h.decisions.push(Decided {
                    by: e.decided_by.clone(),
                    approved: e.decision == "approved",
                    comment: e.comment.clone(),
                    round,
                    values: e.values.clone(),
                });
            }
        }
        Event::ApprovalExpired(e) => {
            if let Some(h) = s.people.get_mut(&e.step_id) {
                h.expired = true;
            }
        }
        Event::NotificationSent(e) => {
            if let Some(h) = s.people.get_mut(&e.step_id) {
                let n = h.notices.entry((e.purpose.clone(), e.recipient.clone())).or_default();
                n.attempts += 1;
                n.sent = true;
                n.retry_at = None;
            }
        }
        Event::NotificationFailed(e) => {
            if let Some(h) = s.people.get_mut(&e.step_id) {
                let n = h.notices.entry((e.purpose.clone(), e.recipient.clone())).or_default();
                n.attempts = n.attempts.max(e.attempt);
                n.retry_at = e.retry_at;
            }
        }
        Event::TimerStarted(t) if t.purpose == "deadline" || t.purpose == "reminder" => {
            if let Some(h) = t.step_id.as_ref().and_then(|st| s.people.get_mut(st)) {
                h.timers.insert(t.timer_id.clone(), (t.purpose.clone(), t.due_at));
            }
        }
        Event::TimerFired(t) => {
            for h in s.people.values_mut() {
                if h.timers.contains_key(&t.timer_id) {
                    h.fired.push(t.timer_id.clone());
                    return true;
                }
            }
            return false;
        }
        _ => return false,
    }
    true
}

fn rendered_list(list: &[String], ctx: &crate::template::Scope) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for t in list {
        match crate::template::render(&Value::String(t.clone()), ctx).map_err(|e| e.to_string())? {
            Value::String(s) => out.extend(s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)),
            Value::Array(items) => out.extend(items.iter().filter_map(Value::as_str).map(str::to_owned)),
            other => return Err(format!("an identity rendered to {other}, not text")),
        }
    }
    out.dedup();
    Ok(out)
}

fn due(now: DateTime<Utc>, d: Option<std::time::Duration>) -> Option<DateTime<Utc>> {
    d.map(|d| now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero()))
}

/// What a form's `StepStarted` records: everything the request will show.
pub(super) fn form_input(f: &FormStep, ctx: &crate::template::Scope, now: DateTime<Utc>) -> Result<Value, String> {
    let title = match &f.title {
        Some(t) => Some(crate::template::render(&Value::String(t.clone()), ctx).map_err(|e| e.to_string())?),
        None => None,
    };
    let fields: Vec<FormField> = f.fields.iter().map(crate::human::Field::recorded).collect();
    Ok(json!({
        "title": title,
        "fields": fields,
        "assignees": rendered_list(&f.assignees, ctx)?,
        "deadline": due(now, f.deadline),
    }))
}

/// What an approval's `StepStarted` records.
pub(super) fn approval_input(
    a: &ApprovalStep,
    ctx: &crate::template::Scope,
    now: DateTime<Utc>,
) -> Result<Value, String> {
    let summary = match crate::template::render(&Value::String(a.summary.clone()), ctx).map_err(|e| e.to_string())? {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let content = crate::template::render(&a.content, ctx).map_err(|e| e.to_string())?;
    let approvers = rendered_list(&a.approvers, ctx)?;
    if approvers.is_empty() {
        return Err("the approvers list rendered empty; nobody could decide".into());
    }
    Ok(json!({
        "approvers": approvers,
        "quorum": a.quorum.name(),
        "required_approvals": a.quorum.required(approvers.len()),
        "summary": summary,
        "content_hash": crate::human::content_hash(&content),
        "content": content,
        "deadline": due(now, a.deadline),
        "escalate_to": rendered_list(&a.escalate_to, ctx)?,
        "fields": a.fields.iter().map(crate::human::Field::recorded).collect::<Vec<FormField>>(),
    }))
}

/// The request event, built by the runner from the recorded input and the
/// token hash only it can compute.
pub fn request_event(step_id: &str, kind: &StepKind, input: &Value, token_hash: String) -> Option<Event> {
    let deadline = input.get("deadline").and_then(|d| serde_json::from_value(d.clone()).ok());
    let strings = |k: &str| -> Vec<String> {
        input
            .get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    match kind {
        StepKind::Form(_) => Some(Event::InputRequested(cairn_events::InputRequested {
            step_id: step_id.to_owned(),
            fields: input.get("fields").and_then(|f| serde_json::from_value(f.clone()).ok()).unwrap_or_default(),
            assignees: strings("assignees"),
            token_hash,
            deadline,
            title: input.get("title").and_then(Value::as_str).map(str::to_owned),
        })),
        StepKind::Approval(_) => Some(Event::ApprovalRequested(ApprovalRequested {
            step_id: step_id.to_owned(),
            approvers: strings("approvers"),
            quorum: input.get("quorum").and_then(Value::as_str).unwrap_or("any").to_owned(),
            required_approvals: input.get("required_approvals").and_then(Value::as_u64).unwrap_or(1) as u32,
            summary: input.get("summary").and_then(Value::as_str).unwrap_or_default().to_owned(),
            content: input.get("content").cloned().unwrap_or(Value::Null),
            content_hash: input.get("content_hash").and_then(Value::as_str).unwrap_or_default().to_owned(),
            deadline,
            token_hash: Some(token_hash),
            escalation: 0,
            fields: input.get("fields").and_then(|f| serde_json::from_value(f.clone()).ok()).unwrap_or_default(),
        })),
        _ => None,
    }
}

fn outcome(
    st: &Step,
    a: &ApprovalStep,
    h: &HumanWait,
    inst: &str,
    attempt: u32,
    approved: bool,
    decision: &str,
) -> Event {
    let with_fields = !a.fields.is_empty();
    let decisions: Vec<Value> = h
        .decisions
        .iter()
        .map(|d| {
            let mut v = json!({"by": d.by, "decision": if d.approved { "approved" } else { "rejected" }, "comment": d.comment, "round": d.round});
            if with_fields {
                v["values"] = d.values.clone().unwrap_or(Value::Null);
            }
            v
        })
        .collect();
    let comment = h.decisions.last().and_then(|d| d.comment.clone());
    if !approved && a.fail_on_reject {
        let why = if decision == "expired" {
            "expired: its deadline passed without a decision".to_owned()
        } else {
            let who: Vec<&str> = h.decisions.iter().filter(|d| !d.approved).map(|d| d.by.as_str()).collect();
            format!(
                "was rejected by {}{}",
                who.join(", "),
                comment.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
            )
        };
        // Inside a map, also the step it is an instance of.
        let of = if inst == st.id { String::new() } else { format!(" (step `{}`)", st.id) };
        return Event::StepFailed(StepFailed {
            step_id: inst.to_owned(),
            attempt,
            error_kind: "approval.rejected".into(),
            message: format!("approval `{inst}`{of} {why}"),
            retryable: false,
            retry_after_ms: None,
        });
    }
    let mut output = json!({
        "approved": approved,
        "decision": decision,
        "comment": comment,
        "decisions": decisions,
        "content_hash": h.content_hash,
    });
    if with_fields {
        // The values of the approval that completed the quorum.
        let by = h.decisions.iter().rev().find(|d| d.approved && d.round == h.round && approved);
        output["values"] = by.and_then(|d| d.values.clone()).unwrap_or(Value::Null);
    }
    Event::StepCompleted(StepCompleted { step_id: inst.to_owned(), attempt, output, duration_ms: 0 })
}

/// Decides for an in-flight form or approval step.
pub(super) fn decide(f: &InFlight<'_>, d: &mut Decision) {
    let InFlight { w, s, st, inst, attempt, input, now } = *f;
    let Some(h) = s.people.get(inst).filter(|h| h.attempt == attempt) else {
        d.execute.push(Execution {
            step_id: inst.to_owned(),
            attempt,
            effect: Effect::Request,
            input: input.clone(),
            timeout: None,
        });
        return;
    };
    // Resolved?
    match &st.kind {
        StepKind::Form(_) => {
            if let Some((_, values)) = &h.submitted {
                d.append.push(Event::StepCompleted(StepCompleted {
                    step_id: inst.to_owned(),
                    attempt,
                    output: values.clone(),
                    duration_ms: 0,
                }));
                return;
            }
        }
        StepKind::Approval(a) => {
            let (yes, no) = h.tally();
            let deciders = u32::try_from(h.assignees.len()).unwrap_or(u32::MAX);
            if yes >= h.required {
                d.append.push(outcome(st, a, h, inst, attempt, true, "approved"));
                return;
            }
            if deciders.saturating_sub(no) < h.required {
                d.append.push(outcome(st, a, h, inst, attempt, false, "rejected"));
                return;
            }
        }
        _ => return,
    }
    // Timers: set them once the request is recorded.
    let timer = |purpose: &str, n: usize| format!("{inst}#{attempt}#{purpose}{n}#{}", h.round);
    if let Some(deadline) = h.deadline {
        let id = timer("deadline", 0);
        if !h.timers.contains_key(&id) {
            d.append.push(Event::TimerStarted(TimerStarted {
                timer_id: id,
                step_id: Some(inst.to_owned()),
                due_at: deadline,
                purpose: "deadline".into(),
            }));
            let reminders = match &st.kind {
                StepKind::Form(f) => &f.reminders,
                StepKind::Approval(a) => &a.reminders,
                _ => return,
            };
            for (k, r) in reminders.iter().enumerate() {
                let at = deadline - chrono::Duration::from_std(*r).unwrap_or(chrono::Duration::zero());
                if at > now {
                    d.append.push(Event::TimerStarted(TimerStarted {
                        timer_id: timer("reminder", k + 1),
                        step_id: Some(inst.to_owned()),
                        due_at: at,
                        purpose: "reminder".into(),
                    }));
                }
            }
            return;
        }
    }
    d.parked = true;
    // Due timers fire: reminders notify again, the deadline ends the wait.
    for (id, (purpose, due_at)) in &h.timers {
        if h.fired.contains(id) || !id.ends_with(&format!("#{}", h.round)) {
            continue;
        }
        if now < *due_at {
            d.wake(*due_at);
            continue;
        }
        d.append.push(Event::TimerFired(TimerFired { timer_id: id.clone(), due_at: *due_at }));
        if purpose == "deadline" && id.ends_with(&format!("#{}", h.round)) {
            expire(f, h, *due_at, d);
            return;
        }
    }
    if !d.append.is_empty() {
        return;
    }
    notify(w, s, h, inst, attempt, now, d);
}

/// A deadline passed.
fn expire(f: &InFlight<'_>, h: &HumanWait, deadline: DateTime<Utc>, d: &mut Decision) {
    let InFlight { st, inst, attempt, input, now, .. } = *f;
    match &st.kind {
        StepKind::Form(_) => d.append.push(Event::StepFailed(StepFailed {
            step_id: inst.to_owned(),
            attempt,
            error_kind: "input.expired".into(),
            message: format!("nobody submitted form `{inst}` before its deadline {}", deadline.to_rfc3339()),
            retryable: true,
            retry_after_ms: None,
        })),
        StepKind::Approval(a) => {
            let escalate = a.on_timeout == OnTimeout::Escalate && h.round == 0;
            d.append.push(Event::ApprovalExpired(ApprovalExpired {
                step_id: inst.to_owned(),
                deadline,
                on_timeout: if h.round > 0 { "reject".into() } else { a.on_timeout.name().into() },
            }));
            if escalate {
                let approvers: Vec<String> = input
                    .get("escalate_to")
                    .and_then(Value::as_array)
                    .map(|v| v.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default();
                d.append.push(Event::ApprovalRequested(ApprovalRequested {
                    step_id: inst.to_owned(),
                    required_approvals: a.quorum.required(approvers.len()),
                    approvers,
                    quorum: a.quorum.name(),
                    summary: h.title.clone().unwrap_or_default(),
                    content: h.content.clone(),
                    content_hash: h.content_hash.clone(),
                    deadline: a
                        .deadline
                        .map(|dl| now + chrono::Duration::from_std(dl).unwrap_or(chrono::Duration::zero())),
                    token_hash: Some(h.token_hash.clone()),
                    escalation: h.round + 1,
                    fields: h.fields.clone(),
                }));
            } else if a.on_timeout == OnTimeout::Fail && h.round == 0 {
                d.append.push(Event::StepFailed(StepFailed {
                    step_id: inst.to_owned(),
                    attempt,
                    error_kind: "approval.expired".into(),
                    message: format!("approval `{inst}` was not decided before its deadline {}", deadline.to_rfc3339()),
                    retryable: false,
                    retry_after_ms: None,
                }));
            } else {
                d.append.push(outcome(st, a, h, inst, attempt, false, "expired"));
            }
        }
        _ => {}
    }
}

/// The notifications still to send: one per recipient for the request (per
/// round) and for every reminder that fired.
fn notify(w: &Workflow, s: &RunState, h: &HumanWait, inst: &str, attempt: u32, now: DateTime<Utc>, d: &mut Decision) {
    let surroundings = crate::settings::Surroundings::of(w, s.settings.as_ref());
    let Some(max_attempts) = surroundings.email_max_attempts() else { return };
    let mut purposes = vec![if h.round == 0 { "request".to_owned() } else { "escalation".to_owned() }];
    for id in &h.fired {
        if let Some((p, _)) = h.timers.get(id)
            && p == "reminder"
            && let Some(n) = id.rsplit('#').nth(1).and_then(|x| x.strip_prefix("reminder"))
        {
            purposes.push(format!("reminder-{n}"));
        }
    }
    let waiting_on: Vec<&String> = match h.kind.as_str() {
        "approval" => h.assignees.iter().filter(|a| !h.decided(a)).collect(),
        _ => h.assignees.iter().collect(),
    };
    for purpose in &purposes {
        for identity in &waiting_on {
            let Some(address) = surroundings.email_of(identity) else {
                let key = (purpose.clone(), (*identity).clone());
                if !h.notices.contains_key(&key) {
                    d.append.push(Event::NotificationFailed(NotificationFailed {
                        step_id: inst.to_owned(),
                        channel: "email".into(),
                        recipient: (*identity).clone(),
                        purpose: purpose.clone(),
                        attempt: 1,
                        error: format!("no email address for `{identity}`; add `people: {{ {identity}: {{ email: … }} }}` to cairn.yaml"),
                        retry_at: None,
                    }));
                }
                continue;
            };
            let n = h.notices.get(&(purpose.clone(), address.clone()));
            match n {
                Some(n) if n.sent => continue,
                Some(n) if n.attempts >= max_attempts || (n.attempts > 0 && n.retry_at.is_none()) => continue,
                Some(Notice { retry_at: Some(t), .. }) if *t > now => {
                    d.wake(*t);
                    continue;
                }
                _ => {}
            }
            d.execute.push(Execution {
                step_id: inst.to_owned(),
                attempt,
                effect: Effect::Notify {
                    purpose: purpose.clone(),
                    identity: (*identity).clone(),
                    address,
                    send_attempt: n.map_or(1, |n| n.attempts + 1),
                },
                input: json!({
                    "kind": h.kind,
                    "title": h.title,
                    "fields": h.fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
                    "deadline": h.deadline,
                    "content": h.content,
                }),
                timeout: None,
            });
        }
    }
}
