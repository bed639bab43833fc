//! Replay: re-fold a recorded run and ask the decider again at every event,
//! reporting the first decision that differs from what was recorded (an
//! engine or definition change that would take another path); the state
//! at any point (time travel); and shadow re-validation of past runs
//! against a new definition's contracts and conditions. Nothing here calls
//! a model or a service: it reads the log only.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use cairn_events::{DecodeError, Event, RecordedEvent, SchemaViolation};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::decider::{Cursor, RunState, bare, context, decide, evolve};
use crate::model::{StepKind, Target, Workflow};

/// The first point where the decider, asked again, decides otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Divergence {
    /// The run's event number (stream version) of the first recorded event
    /// that differs.
    pub stream_version: u64,
    /// Its position in the whole log.
    pub global_position: u64,
    /// What was recorded there: `{type, payload}`.
    pub recorded: Value,
    /// What the decider decides there now (`{type, payload}` each); empty
    /// when it would do nothing yet.
    pub decided: Vec<Value>,
    /// In words.
    pub message: String,
}

/// The outcome of a replay.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ReplayReport {
    /// The run.
    pub run_id: Option<Uuid>,
    /// Events replayed.
    pub events: usize,
    /// Points at which the decider's events were compared with the log.
    pub decisions_checked: usize,
    /// The first difference, if any.
    pub divergence: Option<Divergence>,
}

/// Events a person or another command records, not the decider: always accepted.
fn external(e: &Event) -> bool {
    matches!(
        e,
        Event::InputSubmitted(_)
            | Event::ApprovalDecided(_)
            | Event::RunCancelled(_)
            | Event::RunResumed(_)
            | Event::TaskClaimed(_)
            | Event::NotificationSent(_)
            | Event::NotificationFailed(_)
    )
}

fn typed(e: &Event) -> Value {
    let payload: Value = serde_json::from_str(&e.payload_json()).unwrap_or(Value::Null);
    json!({ "type": e.event_type(), "payload": payload })
}

/// The event with what depends on the clock (instants, durations) blanked:
/// the decider was asked at the moment of the decision, the replay at the
/// moment it was recorded.
fn normalised(e: &Event) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::String(s) if DateTime::parse_from_rfc3339(s).is_ok() => *v = Value::String("<instant>".into()),
            Value::Array(a) => a.iter_mut().for_each(walk),
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if k == "duration_ms" || k == "latency_ms" || k == "backoff_ms" {
                        *x = Value::Null;
                    } else {
                        walk(x);
                    }
                }
            }
            _ => {}
        }
    }
    let mut v = typed(e);
    walk(&mut v);
    v
}

fn step_of(e: &Event) -> Option<String> {
    e.step_id().map(str::to_owned)
}

fn short(e: &Event) -> String {
    match step_of(e) {
        Some(s) => format!("{} `{s}`", e.event_type()),
        None => e.event_type().to_owned(),
    }
}

/// Replays a run under `w`: at every event, decides again (with the time
/// it was recorded as now) and compares. Pure given the events.
pub fn check(w: &Workflow, recorded: &[RecordedEvent]) -> Result<ReplayReport, DecodeError> {
    let events: Vec<Event> = recorded.iter().map(Event::decode).collect::<Result<_, _>>()?;
    let mut s = RunState::default();
    let mut checked = 0;
    let mut i = 0;
    if let Some(first) = events.first() {
        s = evolve(s, first);
        i = 1;
        // A fork's carried outputs were copied from its source, not decided.
        if matches!(first, Event::RunStarted(r) if r.fork_of.is_some()) {
            while let Some(e @ Event::StepKept(_)) = events.get(i) {
                s = evolve(s, e);
                i += 1;
            }
        }
    }
    let diverge = |i: usize, decided: Vec<Value>, message: String| Divergence {
        stream_version: recorded[i].stream_version,
        global_position: recorded[i].global_position,
        recorded: typed(&events[i]),
        decided,
        message,
    };
    while i < events.len() {
        let now = recorded_now(&recorded[i]);
        if external(&events[i]) {
            s = evolve(s, &events[i]);
            i += 1;
            continue;
        }
        let mut d = decide(w, &s, now);
        // A step that read `run.now` recorded the time it read: decide at it.
        if let Some(t) = read_time(&d.append, &events[i..]) {
            d = decide(w, &s, t);
        }
        let e = &events[i];
        // The decided events, queued per thread of control: the threads of
        // a run (parallel branches, map iterations) progress independently,
        // so the log may interleave them in any order, and an effect's
        // outcome may come before another thread's pending decision (the
        // runner commits outcomes ready together first). Within a thread
        // the order is the decider's, and a thread's decision is recorded
        // whole.
        // The common case first: the decision recorded as it is now.
        if !d.append.is_empty() && events.get(i..i + d.append.len()).is_some_and(|w| w == d.append.as_slice()) {
            checked += 1;
            for e in &d.append {
                s = evolve(s, e);
            }
            i += d.append.len();
            continue;
        }
        if !d.append.is_empty() {
            let threads = threads_of(&d.append, &s);
            let mut queues: BTreeMap<&str, VecDeque<usize>> = BTreeMap::new();
            for (k, t) in threads.iter().enumerate() {
                queues.entry(t.as_str()).or_default().push_back(k);
            }
            let mut scopes: HashMap<String, String> = HashMap::new();
            let mut touched: BTreeSet<&str> = BTreeSet::new();
            let mut j = i;
            while j < events.len() && !external(&events[j]) {
                let t = thread_at(&events, j, &s, &scopes);
                let Some((key, q)) =
                    queues.get_key_value(t).map(|(k, _)| *k).and_then(|k| Some((k, queues.get_mut(k)?)))
                else {
                    break;
                };
                let Some(&k) = q.front() else { break };
                let want = &d.append[k];
                if &events[j] != want && normalised(&events[j]) != normalised(want) {
                    break;
                }
                q.pop_front();
                touched.insert(key);
                if let Event::StepStarted(x) = &events[j] {
                    scopes.insert(x.step_id.clone(), x.scope.clone());
                }
                j += 1;
            }
            if j > i {
                checked += 1;
                // A thread's decision is recorded whole, never in part.
                if let Some(&k) = touched.iter().find_map(|t| queues.get(t).and_then(|q| q.front())) {
                    let want = &d.append[k];
                    let message = match events.get(j) {
                        Some(got) => mismatch(got, want),
                        None => format!("the log ends, but the decider would record {}", short(want)),
                    };
                    let at = j.min(events.len() - 1);
                    return Ok(report(&s, events.len(), checked, Some(diverge(at, vec![typed(want)], message))));
                }
                for e in &events[i..j] {
                    s = evolve(s, e);
                }
                i = j;
                continue;
            }
            // Nothing decided now was recorded here: the event must be the
            // outcome of an effect in flight, else the decider differs.
            if outcome_in_flight(&s, &d, e) {
                s = evolve(s, e);
                i += 1;
                continue;
            }
            let t = thread_at(&events, i, &s, &scopes);
            if let Some(k) = queues.get(t).and_then(|q| q.front()) {
                let decided: Vec<Value> =
                    threads.iter().zip(&d.append).filter(|(th, _)| th.as_str() == t).map(|(_, x)| typed(x)).collect();
                checked += 1;
                let message = mismatch(e, &d.append[*k]);
                return Ok(report(&s, events.len(), checked, Some(diverge(i, decided, message))));
            }
        }
        // No decision of the event's thread pending: the event must be the
        // outcome of an effect in flight.
        let open = outcome_in_flight(&s, &d, e);
        if !open {
            let message = if d.append.is_empty() && d.execute.is_empty() && d.wake_at.is_none() && !d.parked {
                format!("recorded {}; the decider now ends the run here", short(e))
            } else if d.append.is_empty() {
                format!("recorded {}; the decider now waits for something else here", short(e))
            } else {
                format!(
                    "recorded {}; the decider now records {} here",
                    short(e),
                    d.append.iter().map(short).collect::<Vec<_>>().join(", ")
                )
            };
            return Ok(report(
                &s,
                events.len(),
                checked,
                Some(diverge(i, d.append.iter().map(typed).collect(), message)),
            ));
        }
        s = evolve(s, e);
        i += 1;
    }
    // The log ends: nothing the decider would have recorded with the last
    // event is missing (the runner records pure progress with the outcome
    // that allows it). After a command's event (a resume, an answer) the
    // run may not have been driven yet; and a timer that fell due between
    // the last decision and its append may not have been recorded before
    // the process stopped, so this asks with nothing due.
    if let Some(last) = events.last()
        && !external(last)
        && i > 0
    {
        let d = decide(w, &s, DateTime::UNIX_EPOCH);
        if let Some(want) = d.append.first() {
            let message = format!("the log ends, but the decider would record {}", short(want));
            return Ok(report(
                &s,
                events.len(),
                checked + 1,
                Some(diverge(events.len() - 1, d.append.iter().map(typed).collect(), message)),
            ));
        }
    }
    Ok(report(&s, events.len(), checked, None))
}

/// The time a decided step read as `run.now`, as its recorded start (or
/// skip) says: the decision is then made again at that time.
/// (A guard read at another time may have skipped what was started, or the
/// reverse: the step's start or skip, whichever was recorded, says when.)
fn read_time(decided: &[Event], recorded: &[Event]) -> Option<DateTime<Utc>> {
    let read = |e: &Event| match e {
        Event::StepStarted(x) => x.at.map(|t| (x.step_id.clone(), t)),
        Event::StepSkipped(x) => x.at.map(|t| (x.step_id.clone(), t)),
        _ => None,
    };
    decided
        .iter()
        .filter_map(read)
        .find_map(|(step, _)| recorded.iter().filter_map(read).find_map(|(r, t)| (r == step).then_some(t)))
}

/// The latest "now" the decision behind a recorded event can have been
/// made at: the append's time is stored in whole microseconds (truncated),
/// and the decision came at or before the append, so the end of that
/// microsecond. (The start of it would miss a timer due within it.)
fn recorded_now(r: &RecordedEvent) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&r.recorded_at).map(|d| d.with_timezone(&Utc)).unwrap_or_default()
        + chrono::Duration::nanoseconds(999)
}

/// Whether `e` is the outcome of an effect in flight: one the decider runs
/// now, or an attempt recorded as started and still awaiting its outcome.
/// (The runner records outcomes that are ready together in one commit,
/// before it decides again; a later one of them is still an outcome even
/// when the decider, after an earlier one, would now cancel its siblings.)
fn outcome_in_flight(s: &RunState, d: &crate::decider::Decision, e: &Event) -> bool {
    let awaited = match e {
        Event::StepCompleted(x) => s.awaits(&x.step_id, x.attempt),
        Event::StepFailed(x) => s.awaits(&x.step_id, x.attempt),
        // What the other effects record: a request for people, a model's
        // reply or failure, a child run started or ended.
        Event::InputRequested(_)
        | Event::ApprovalRequested(_)
        | Event::AiAttemptCompleted(_)
        | Event::AiAttemptFailed(_)
        | Event::ChildRunStarted(_)
        | Event::ChildRunCompleted(_) => e.step_id().is_some_and(|st| s.in_flight(st)),
        _ => false,
    };
    awaited || step_of(e).is_some_and(|st| d.execute.iter().any(|x| x.step_id == st))
}

fn mismatch(got: &Event, want: &Event) -> String {
    match (got, want) {
        (Event::BranchTaken(g), Event::BranchTaken(n)) => format!(
            "branch `{}` went to `{}` ({} was {}); the decider now goes to `{}` ({} is {})",
            g.step_id, g.target, g.expression, g.value, n.target, n.expression, n.value
        ),
        _ => format!("recorded {}; the decider now records {}", short(got), short(want)),
    }
}

/// The thread of control (scope) an event names through its step, if it
/// names one: a `StepStarted` or `StepKept` its own scope, others their
/// step's (`scopes` first: starts seen in this batch and not yet folded).
fn own_thread<'a>(e: &'a Event, s: &'a RunState, scopes: &'a HashMap<String, String>) -> Option<&'a str> {
    match e {
        Event::StepStarted(x) => Some(&x.scope),
        Event::StepKept(x) => Some(&x.scope),
        other => other.step_id().map(|st| scopes.get(st).map_or_else(|| s.scope_of(st), String::as_str)),
    }
}

/// The thread of control (scope) each event is about; an event that names
/// no step (a timer firing, the run's end) belongs to the thread of the next
/// event that does, or the top level.
fn threads_of(events: &[Event], s: &RunState) -> Vec<String> {
    let mut scopes: HashMap<String, String> = HashMap::new();
    let mut out: Vec<Option<String>> = Vec::with_capacity(events.len());
    for e in events {
        if let Event::StepStarted(x) = e {
            scopes.insert(x.step_id.clone(), x.scope.clone());
        }
        out.push(own_thread(e, s, &scopes).map(str::to_owned));
    }
    let mut next = String::new();
    for t in out.iter_mut().rev() {
        match t {
            Some(t) => next.clone_from(t),
            None => *t = Some(next.clone()),
        }
    }
    out.into_iter().map(Option::unwrap_or_default).collect()
}

/// The thread of recorded event `j`, looking ahead past events that name
/// no step.
fn thread_at<'a>(events: &'a [Event], j: usize, s: &'a RunState, scopes: &'a HashMap<String, String>) -> &'a str {
    events[j..].iter().take(8).find_map(|e| own_thread(e, s, scopes)).unwrap_or("")
}

fn report(s: &RunState, events: usize, checked: usize, divergence: Option<Divergence>) -> ReplayReport {
    ReplayReport { run_id: s.run_id, events, decisions_checked: checked, divergence }
}

/// A run's state at one point: what `replay --at` prints.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Snapshot {
    /// Events folded (the stream version reached).
    pub stream_version: u64,
    /// When the last of them was recorded.
    pub recorded_at: String,
    /// The last event folded.
    pub last_event: String,
    /// `running`, `waiting`, `completed`, `failed` or `cancelled`: the
    /// status `GET /runs/{id}` gives at that point.
    pub status: String,
    /// The run's inputs.
    pub inputs: Value,
    /// The outputs recorded so far, by step instance.
    pub outputs: BTreeMap<String, Value>,
    /// Work under way: each thread's step and what it is doing.
    pub pending: Vec<String>,
    /// Forms and approvals waiting for people: step and who.
    pub waiting_for: Vec<String>,
}

/// The state after the first `n` events (n ≥ 1).
pub fn snapshot(recorded: &[RecordedEvent], n: usize) -> Result<Snapshot, DecodeError> {
    let n = n.clamp(1, recorded.len().max(1));
    let mut s = RunState::default();
    let mut last = String::new();
    for r in &recorded[..n.min(recorded.len())] {
        let e = Event::decode(r)?;
        last = short(&e);
        s = evolve(s, &e);
    }
    let mut pending = Vec::new();
    for (scope, t) in &s.threads {
        let at = if scope.is_empty() { String::new() } else { format!(" (in {scope})") };
        let what = match &t.cursor {
            Cursor::InFlight { step, attempt, .. } => format!("`{step}` attempt {attempt} started, no outcome yet"),
            Cursor::Failed { step, attempt, error_kind, .. } => {
                format!("`{step}` attempt {attempt} failed ({error_kind}); retry or fail next")
            }
            Cursor::Waiting { step, due_at, .. } => format!("`{step}` waits until {}", due_at.to_rfc3339()),
            Cursor::RetryWait { step, next_attempt, due_at } => {
                format!("`{step}` attempt {next_attempt} due at {}", due_at.to_rfc3339())
            }
            Cursor::Child { step, child_run_id, .. } => format!("`{step}` waits for child run {child_run_id}"),
            Cursor::After { step, .. } => format!("`{step}` completed; the next step is to start"),
            Cursor::Start => "the first step is to start".to_owned(),
            Cursor::Enter { step } => format!("resumed: `{step}` is to start"),
            Cursor::Compensating => "compensating".to_owned(),
            Cursor::Idle => continue,
        };
        pending.push(format!("{what}{at}"));
    }
    let waiting_for = s
        .waiting_for_people()
        .into_iter()
        .map(|(step, h)| format!("`{step}`: {}", serde_json::to_string(&h.assignees).unwrap_or_default()))
        .collect();
    Ok(Snapshot {
        stream_version: s.version,
        recorded_at: recorded.get(n - 1).map(|r| r.recorded_at.clone()).unwrap_or_default(),
        last_event: last,
        status: s.status_name().to_owned(),
        inputs: (*s.inputs).clone(),
        outputs: s.outputs.iter().map(|(k, v)| (k.clone(), (**v).clone())).collect(),
        pending,
        waiting_for,
    })
}

/// The number of events before a step instance first started (for
/// `replay --step`): the state just before it ran.
pub fn before_step(recorded: &[RecordedEvent], step: &str) -> Result<Option<usize>, DecodeError> {
    for (i, r) in recorded.iter().enumerate() {
        if r.event_type == "StepStarted"
            && let Event::StepStarted(x) = Event::decode(r)?
            && (x.step_id == step || bare(&x.step_id) == step)
        {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// One thing a new definition would judge otherwise in a recorded run.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Finding {
    /// The run's event number where it was recorded.
    pub stream_version: u64,
    /// Step instance.
    pub step: String,
    /// `contract` (the output would now be rejected), `branch` (another
    /// target), `missing-step` (the new definition has no such step) or
    /// `condition` (the condition no longer evaluates).
    pub kind: String,
    /// In words.
    pub message: String,
    /// The schema violations, for `contract`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<SchemaViolation>,
}

/// Re-checks a recorded run against a new definition without calling
/// anything: every recorded step output against the new step's
/// `output_contract` (AI outputs included), and every branch and switch
/// decision against the new conditions, evaluated on the data the run had
/// at that point.
pub fn shadow(w: &Workflow, recorded: &[RecordedEvent]) -> Result<Vec<Finding>, DecodeError> {
    let mut out = Vec::new();
    let mut s = RunState::default();
    for r in recorded {
        let e = Event::decode(r)?;
        let at = r.stream_version;
        match &e {
            Event::StepCompleted(c) => match w.step(bare(&c.step_id)) {
                None => out.push(Finding {
                    stream_version: at,
                    step: c.step_id.clone(),
                    kind: "missing-step".into(),
                    message: format!("the new definition has no step `{}`", bare(&c.step_id)),
                    errors: Vec::new(),
                }),
                Some(st) => {
                    if let Some(contract) = &st.output_contract {
                        let errors = crate::contract::violations(contract, &c.output);
                        if !errors.is_empty() {
                            out.push(Finding {
                                stream_version: at,
                                step: c.step_id.clone(),
                                kind: "contract".into(),
                                message: format!(
                                    "the recorded output would now fail the output_contract: {}",
                                    crate::contract::describe(&errors)
                                ),
                                errors,
                            });
                        }
                    }
                }
            },
            Event::BranchTaken(b) => {
                let ctx = context(&s, &b.step_id);
                let target: Result<Option<&Target>, String> = match w.step(bare(&b.step_id)).map(|st| &st.kind) {
                    Some(StepKind::Branch { condition, then, otherwise }) => {
                        condition.holds(&ctx).map(|v| Some(if v { then } else { otherwise }))
                    }
                    Some(StepKind::Switch { cases, default }) => (|| {
                        for (c, t) in cases {
                            if c.holds(&ctx)? {
                                return Ok(Some(t));
                            }
                        }
                        Ok(Some(default))
                    })(),
                    _ => Ok(None),
                };
                match target {
                    Ok(Some(t)) if t.name() != b.target => out.push(Finding {
                        stream_version: at,
                        step: b.step_id.clone(),
                        kind: "branch".into(),
                        message: format!("went to `{}`; the new definition goes to `{}`", b.target, t.name()),
                        errors: Vec::new(),
                    }),
                    Ok(_) => {}
                    Err(message) => out.push(Finding {
                        stream_version: at,
                        step: b.step_id.clone(),
                        kind: "condition".into(),
                        message,
                        errors: Vec::new(),
                    }),
                }
            }
            _ => {}
        }
        s = evolve(s, &e);
    }
    Ok(out)
}
