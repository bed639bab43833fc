//! The pure decider: [`evolve`] folds a run's events into a [`RunState`];
//! [`decide`] says what happens next given the workflow, the state and the
//! current time. No I/O, no clock, no randomness: jitter comes from a hash of
//! the run, step and attempt, so replaying a run reproduces every decision.

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_events::{
    BranchTaken, CompensationStarted, Event, RetryScheduled, RunCompleted, RunFailed, StepCompleted, StepFailed,
    StepStarted, TimerFired, TimerStarted,
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model::{StepKind, Target, Workflow};
use crate::template;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunStatus {
    /// No `RunStarted` yet.
    #[default]
    NotStarted,
    /// In progress (including waiting).
    Running,
    /// Ended with an output.
    Completed,
    /// Ended with an error.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl RunStatus {
    /// Whether the run has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled)
    }
}

/// Where inside the steps a running run is.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Cursor {
    /// Nothing to do (not started, or ended).
    #[default]
    Idle,
    /// Started; the first step is next.
    Start,
    /// An attempt was recorded as started and has no outcome yet.
    InFlight {
        /// Step.
        step: String,
        /// Attempt.
        attempt: u32,
        /// The recorded input.
        input: Value,
    },
    /// A step completed; where to go next is to be decided.
    After {
        /// The step that completed.
        step: String,
        /// The target a branch or switch chose.
        jump: Option<String>,
    },
    /// An attempt failed; retry or fail the run.
    Failed {
        /// Step.
        step: String,
        /// The failed attempt.
        attempt: u32,
        /// Error kind.
        error_kind: String,
        /// Message.
        message: String,
        /// Whether the error allows a retry.
        retryable: bool,
        /// The least wait the failing service asked for.
        retry_after_ms: Option<u64>,
    },
    /// A wait step's timer is running.
    Waiting {
        /// Step.
        step: String,
        /// Attempt.
        attempt: u32,
        /// Timer id.
        timer_id: String,
        /// When it fires.
        due_at: DateTime<Utc>,
    },
    /// The run is failing; the next compensation is to start.
    Compensating,
    /// Waiting for a retry.
    RetryWait {
        /// Step.
        step: String,
        /// The attempt to run.
        next_attempt: u32,
        /// When.
        due_at: DateTime<Utc>,
    },
}

/// Everything the decider knows about a run, folded from its events.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunState {
    /// Run id.
    pub run_id: Option<Uuid>,
    /// Workflow name.
    pub workflow: String,
    /// Pinned definition version.
    pub workflow_version: u32,
    /// Status.
    pub status: RunStatus,
    /// Inputs after defaults.
    pub inputs: Value,
    /// Latest output of every completed step.
    pub outputs: BTreeMap<String, Value>,
    /// Visits per step (attempt 1 starts).
    pub visits: BTreeMap<String, u32>,
    /// Position inside the steps.
    pub cursor: Cursor,
    /// Output of the last completed step.
    pub last_output: Value,
    /// The run's output, once completed.
    pub output: Option<Value>,
    /// The error, once failed.
    pub error: Option<(String, String, Option<String>)>,
    /// Events folded (= the stream version).
    pub version: u64,
    /// Steps in order of their last completion.
    pub completed: Vec<String>,
    /// Set while a failing run undoes its work.
    pub compensating: Option<Compensating>,
    pending_jump: Option<String>,
}

/// A failing run undoing its completed steps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Compensating {
    /// Compensation steps to run, in order.
    pub queue: Vec<String>,
    /// How many have completed.
    pub done: usize,
    /// The error the run fails with afterwards: kind, message, step.
    pub error: (String, String, Option<String>),
}

/// Folds one event into the state.
pub fn evolve(mut s: RunState, event: &Event) -> RunState {
    s.version += 1;
    match event {
        Event::RunStarted(e) => {
            s.run_id = Some(e.run_id);
            s.workflow = e.workflow.clone();
            s.workflow_version = e.workflow_version;
            s.status = RunStatus::Running;
            s.inputs = e.inputs.clone();
            s.cursor = Cursor::Start;
        }
        Event::StepStarted(e) => {
            if e.attempt == 1 {
                *s.visits.entry(e.step_id.clone()).or_default() += 1;
            }
            s.cursor = Cursor::InFlight { step: e.step_id.clone(), attempt: e.attempt, input: e.input.clone() };
        }
        Event::BranchTaken(e) => s.pending_jump = Some(e.target.clone()),
        Event::StepCompleted(e) => {
            s.completed.retain(|c| c != &e.step_id);
            s.completed.push(e.step_id.clone());
            if let Some(c) = s.compensating.as_mut()
                && c.queue.get(c.done) == Some(&e.step_id)
            {
                c.done += 1;
            }
            s.outputs.insert(e.step_id.clone(), e.output.clone());
            s.last_output = e.output.clone();
            s.cursor = Cursor::After { step: e.step_id.clone(), jump: s.pending_jump.take() };
        }
        Event::StepFailed(e) => {
            s.cursor = Cursor::Failed {
                step: e.step_id.clone(),
                attempt: e.attempt,
                error_kind: e.error_kind.clone(),
                message: e.message.clone(),
                retryable: e.retryable,
                retry_after_ms: e.retry_after_ms,
            };
        }
        Event::TimerStarted(e) => {
            if let (Some(step), Cursor::InFlight { attempt, .. }) = (&e.step_id, &s.cursor) {
                s.cursor = Cursor::Waiting {
                    step: step.clone(),
                    attempt: *attempt,
                    timer_id: e.timer_id.clone(),
                    due_at: e.due_at,
                };
            }
        }
        Event::RetryScheduled(e) => {
            s.cursor = Cursor::RetryWait { step: e.step_id.clone(), next_attempt: e.next_attempt, due_at: e.due_at };
        }
        Event::CompensationStarted(e) => {
            s.compensating = Some(Compensating {
                queue: e.compensations.clone(),
                done: 0,
                error: (e.error_kind.clone(), e.message.clone(), e.failed_step.clone()),
            });
            s.cursor = Cursor::Compensating;
        }
        Event::RunCompleted(e) => {
            s.status = RunStatus::Completed;
            s.output = Some(e.output.clone());
            s.cursor = Cursor::Idle;
        }
        Event::RunFailed(e) => {
            s.status = RunStatus::Failed;
            s.error = Some((e.error_kind.clone(), e.message.clone(), e.failed_step.clone()));
            s.cursor = Cursor::Idle;
        }
        Event::RunCancelled(_) => {
            s.status = RunStatus::Cancelled;
            s.cursor = Cursor::Idle;
        }
        _ => {}
    }
    s
}

/// Folds many events.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> RunState {
    events.into_iter().fold(RunState::default(), evolve)
}

/// What should happen next.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Append these events (pure progress: no effect outside the log).
    Append(Vec<Event>),
    /// Perform the in-flight attempt's effect, then record its outcome.
    Execute {
        /// Step.
        step_id: String,
        /// Attempt.
        attempt: u32,
        /// What to do.
        effect: Effect,
        /// The recorded input.
        input: Value,
        /// Attempt timeout.
        timeout: Option<Duration>,
    },
    /// Nothing to do before this time (a retry is due then).
    WaitUntil(DateTime<Utc>),
    /// The run has ended (or never started).
    Done,
}

/// An effect outside the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Call a native task handler.
    Task {
        /// Handler name.
        handler: String,
    },
    /// Send an HTTP request.
    Http {
        /// 4xx statuses retried anyway.
        retry_on_status: Vec<u16>,
    },
}

/// The template and condition context: `{ inputs, steps: { id: { output } } }`.
pub fn context(s: &RunState) -> Value {
    let steps: serde_json::Map<String, Value> =
        s.outputs.iter().map(|(k, v)| (k.clone(), json!({ "output": v }))).collect();
    json!({ "inputs": s.inputs, "steps": steps })
}

/// The context with `secrets.NAME` as `[redacted:NAME]`: what is recorded
/// never holds a secret.
fn context_with_placeholders(w: &Workflow, s: &RunState) -> Value {
    let mut ctx = context(s);
    if !w.secret_refs.is_empty() {
        let secrets: serde_json::Map<String, Value> = w
            .secret_refs
            .iter()
            .map(|r| (r.name.clone(), Value::String(crate::secrets::placeholder(&r.name))))
            .collect();
        ctx["secrets"] = Value::Object(secrets);
    }
    ctx
}

fn fail_run(kind: &str, message: String, step: Option<&str>) -> Decision {
    Decision::Append(vec![Event::RunFailed(RunFailed {
        error_kind: kind.to_owned(),
        message,
        failed_step: step.map(str::to_owned),
    })])
}

/// Decides the next thing to do. Pure.
pub fn decide(w: &Workflow, s: &RunState, now: DateTime<Utc>) -> Decision {
    if s.status != RunStatus::Running {
        return Decision::Done;
    }
    match &s.cursor {
        Cursor::Idle => Decision::Done,
        Cursor::Start => match w.steps.first() {
            Some(first) => enter(w, s, &first.id, now),
            None => complete(w, s),
        },
        Cursor::After { .. } | Cursor::Compensating if s.compensating.is_some() => next_compensation(w, s, now),
        Cursor::Compensating => Decision::Done,
        Cursor::After { step, jump } => {
            let target = match (jump, w.step(step)) {
                (Some(j), _) if j == "end" => Target::End,
                (Some(j), _) => Target::Step(j.clone()),
                (None, Some(st)) => st.then.clone(),
                (None, None) => {
                    return fail_run(
                        "definition",
                        format!("step `{step}` is not in version {} of the workflow", s.workflow_version),
                        Some(step),
                    );
                }
            };
            match target {
                Target::End => complete(w, s),
                Target::Step(next) => enter(w, s, &next, now),
            }
        }
        Cursor::InFlight { step, attempt, input } => match w.step(step).map(|st| (&st.kind, st.timeout)) {
            Some((StepKind::Task { handler, .. }, timeout)) => Decision::Execute {
                step_id: step.clone(),
                attempt: *attempt,
                effect: Effect::Task { handler: handler.clone() },
                input: input.clone(),
                timeout,
            },
            Some((StepKind::Http { timeout, retry_on_status, .. }, step_timeout)) => Decision::Execute {
                step_id: step.clone(),
                attempt: *attempt,
                effect: Effect::Http { retry_on_status: retry_on_status.clone() },
                input: input.clone(),
                // The step's timeout bounds the whole attempt; the request's its own.
                timeout: Some(step_timeout.map_or(*timeout, |t| t.min(*timeout))),
            },
            // Pure steps record start and outcome together; an in-flight
            // pure step can only come from an interrupted older engine.
            Some(_) => start(w, s, step, *attempt, now),
            None => fail_run("definition", format!("step `{step}` is not in the workflow"), Some(step)),
        },
        Cursor::Failed { step, attempt, error_kind, message, retryable, retry_after_ms } => {
            let Some(st) = w.step(step) else {
                return fail_run(error_kind, message.clone(), Some(step));
            };
            let policy = &st.retry;
            if *retryable && *attempt < policy.max_attempts && !policy.non_retryable.iter().any(|k| k == error_kind) {
                let next = attempt + 1;
                let backoff = policy
                    .backoff(next, seed(s.run_id, step, next))
                    .max(Duration::from_millis(retry_after_ms.unwrap_or(0)));
                let due_at = now + chrono::Duration::from_std(backoff).unwrap_or(chrono::Duration::zero());
                Decision::Append(vec![Event::RetryScheduled(RetryScheduled {
                    step_id: step.clone(),
                    next_attempt: next,
                    due_at,
                    backoff_ms: u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                })])
            } else {
                let why = if !*retryable || policy.non_retryable.iter().any(|k| k == error_kind) {
                    "not retryable".to_owned()
                } else {
                    format!("after {attempt} attempt(s)")
                };
                fail_or_compensate(
                    w,
                    s,
                    error_kind,
                    format!("step `{step}` failed ({why}): {message}"),
                    Some(step),
                    now,
                )
            }
        }
        Cursor::Waiting { step, attempt, timer_id, due_at } => {
            if now >= *due_at {
                Decision::Append(vec![
                    Event::TimerFired(TimerFired { timer_id: timer_id.clone(), due_at: *due_at }),
                    Event::StepCompleted(StepCompleted {
                        step_id: step.clone(),
                        attempt: *attempt,
                        output: json!({ "waited_until": due_at }),
                        duration_ms: 0,
                    }),
                ])
            } else {
                Decision::WaitUntil(*due_at)
            }
        }
        Cursor::RetryWait { step, next_attempt, due_at } => {
            if now >= *due_at {
                start(w, s, step, *next_attempt, now)
            } else {
                Decision::WaitUntil(*due_at)
            }
        }
    }
}

/// Fails the run, first undoing its completed steps that have a
/// `compensate` (in reverse order of completion). A failure while
/// compensating fails the run at once, naming both errors.
fn fail_or_compensate(
    w: &Workflow,
    s: &RunState,
    kind: &str,
    message: String,
    step: Option<&str>,
    now: DateTime<Utc>,
) -> Decision {
    if let Some(c) = &s.compensating {
        let (k, m, st) = &c.error;
        return Decision::Append(vec![Event::RunFailed(RunFailed {
            error_kind: k.clone(),
            message: format!("{m}; then compensation failed: {message}"),
            failed_step: st.clone(),
        })]);
    }
    let queue: Vec<String> =
        s.completed.iter().rev().filter_map(|id| w.step(id).and_then(|st| st.compensate.clone())).collect();
    if queue.is_empty() {
        return fail_run(kind, message, step);
    }
    let started = Event::CompensationStarted(CompensationStarted {
        failed_step: step.map(str::to_owned),
        error_kind: kind.to_owned(),
        message,
        compensations: queue,
    });
    let next = evolve(s.clone(), &started);
    let mut events = vec![started];
    if let Decision::Append(more) = next_compensation(w, &next, now) {
        events.extend(more);
    }
    Decision::Append(events)
}

fn next_compensation(w: &Workflow, s: &RunState, now: DateTime<Utc>) -> Decision {
    let Some(c) = &s.compensating else { return Decision::Done };
    match c.queue.get(c.done) {
        Some(id) => start(w, s, id, 1, now),
        None => {
            let (kind, message, step) = c.error.clone();
            Decision::Append(vec![Event::RunFailed(RunFailed { error_kind: kind, message, failed_step: step })])
        }
    }
}

fn seed(run: Option<Uuid>, step: &str, attempt: u32) -> u64 {
    let mut h = Sha256::new();
    h.update(run.map(|r| r.into_bytes()).unwrap_or_default());
    h.update(step.as_bytes());
    h.update(attempt.to_be_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

fn enter(w: &Workflow, s: &RunState, step: &str, now: DateTime<Utc>) -> Decision {
    let Some(st) = w.step(step) else {
        return fail_run("definition", format!("step `{step}` is not in the workflow"), Some(step));
    };
    let visits = s.visits.get(step).copied().unwrap_or(0);
    if let Some(max) = st.max_visits
        && visits >= max
    {
        return fail_run(
            "max_visits",
            format!("step `{step}` would run a {}th time; its max_visits is {max}", visits + 1),
            Some(step),
        );
    }
    start(w, s, step, 1, now)
}

fn started(step: &str, attempt: u32, input: Value) -> Event {
    Event::StepStarted(StepStarted { step_id: step.to_owned(), attempt, input })
}

fn failed(step: &str, attempt: u32, kind: &str, message: String) -> Event {
    Event::StepFailed(StepFailed {
        step_id: step.to_owned(),
        attempt,
        error_kind: kind.to_owned(),
        message,
        retryable: false,
        retry_after_ms: None,
    })
}

fn start(w: &Workflow, s: &RunState, step: &str, attempt: u32, now: DateTime<Utc>) -> Decision {
    let Some(st) = w.step(step) else {
        return fail_run("definition", format!("step `{step}` is not in the workflow"), Some(step));
    };
    let ctx = context_with_placeholders(w, s);
    match &st.kind {
        StepKind::Http { request, .. } => match template::render(request, &ctx) {
            Ok(input) => Decision::Append(vec![started(step, attempt, input)]),
            Err(e) => Decision::Append(vec![
                started(step, attempt, Value::Null),
                failed(step, attempt, "template", e.to_string()),
            ]),
        },
        StepKind::Task { input, .. } => match template::render(input, &ctx) {
            Ok(input) => Decision::Append(vec![started(step, attempt, input)]),
            Err(e) => Decision::Append(vec![
                started(step, attempt, Value::Null),
                failed(step, attempt, "template", e.to_string()),
            ]),
        },
        StepKind::Transform { output } => match template::render(output, &ctx) {
            Ok(output)
                if st.output_contract.as_ref().is_some_and(|c| !crate::contract::violations(c, &output).is_empty()) =>
            {
                let v =
                    st.output_contract.as_ref().map(|c| crate::contract::violations(c, &output)).unwrap_or_default();
                Decision::Append(vec![
                    started(step, attempt, Value::Null),
                    failed(
                        step,
                        attempt,
                        "contract",
                        format!("the output does not satisfy the output_contract: {}", crate::contract::describe(&v)),
                    ),
                ])
            }
            Ok(output) => Decision::Append(vec![
                started(step, attempt, Value::Null),
                Event::StepCompleted(StepCompleted { step_id: step.to_owned(), attempt, output, duration_ms: 0 }),
            ]),
            Err(e) => Decision::Append(vec![
                started(step, attempt, Value::Null),
                failed(step, attempt, "template", e.to_string()),
            ]),
        },
        StepKind::Branch { condition, then, otherwise } => match condition.holds(&ctx) {
            Ok(v) => {
                let target = if v { then } else { otherwise };
                branch(step, attempt, condition.source(), json!(v), target)
            }
            Err(e) => {
                Decision::Append(vec![started(step, attempt, Value::Null), failed(step, attempt, "condition", e)])
            }
        },
        StepKind::Wait { duration, until } => {
            let due_at = match (duration, until) {
                (Some(d), _) => Ok(now + chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::zero())),
                (None, Some(u)) => template::render(u, &ctx).map_err(|e| e.to_string()).and_then(|v| match v {
                    Value::String(t) => DateTime::parse_from_rfc3339(&t)
                        .map(|d| d.with_timezone(&Utc))
                        .map_err(|_| format!("`until` rendered to `{t}`, which is not an RFC 3339 instant")),
                    other => Err(format!("`until` rendered to {other}, not an RFC 3339 string")),
                }),
                (None, None) => Ok(now),
            };
            match due_at {
                Ok(due_at) => {
                    let timer_id = format!("{step}#{attempt}");
                    Decision::Append(vec![
                        started(step, attempt, json!({ "until": due_at })),
                        Event::TimerStarted(TimerStarted {
                            timer_id,
                            step_id: Some(step.to_owned()),
                            due_at,
                            purpose: "wait".into(),
                        }),
                    ])
                }
                Err(e) => {
                    Decision::Append(vec![started(step, attempt, Value::Null), failed(step, attempt, "template", e)])
                }
            }
        }
        StepKind::Switch { cases, default } => {
            for (c, target) in cases {
                match c.holds(&ctx) {
                    Ok(true) => return branch(step, attempt, c.source(), json!(true), target),
                    Ok(false) => {}
                    Err(e) => {
                        return Decision::Append(vec![
                            started(step, attempt, Value::Null),
                            failed(step, attempt, "condition", e),
                        ]);
                    }
                }
            }
            branch(step, attempt, "default", json!(false), default)
        }
    }
}

fn branch(step: &str, attempt: u32, expression: &str, value: Value, target: &Target) -> Decision {
    let target = target.name().to_owned();
    Decision::Append(vec![
        started(step, attempt, Value::Null),
        Event::BranchTaken(BranchTaken {
            step_id: step.to_owned(),
            expression: expression.to_owned(),
            value: value.clone(),
            target: target.clone(),
        }),
        Event::StepCompleted(StepCompleted {
            step_id: step.to_owned(),
            attempt,
            output: json!({ "target": target, "value": value }),
            duration_ms: 0,
        }),
    ])
}

fn complete(w: &Workflow, s: &RunState) -> Decision {
    let output = match &w.output {
        Some(t) => match template::render(t, &context_with_placeholders(w, s)) {
            Ok(v) => v,
            Err(e) => return fail_run("template", format!("workflow output: {e}"), None),
        },
        None => s.last_output.clone(),
    };
    Decision::Append(vec![Event::RunCompleted(RunCompleted { output })])
}
