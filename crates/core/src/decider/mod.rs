//! The pure decider: [`evolve`] folds a run's events into a [`RunState`];
//! [`decide`] says what happens next given the workflow, the state and the
//! current time. No I/O, no clock, no randomness: jitter comes from a hash of
//! the run, step and attempt, so replaying a run reproduces every decision.
//!
//! A run has one thread of control for its top-level steps and one more for
//! every running parallel branch and map iteration. Steps inside a map
//! iteration are recorded under an instance id that names the iteration,
//! `<map>[<index>].<step>`; the thread an instance runs in is recorded in
//! its `StepStarted` (`scope`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cairn_events::{
    BranchTaken, CompensationStarted, ErrorCaught, Event, RetryScheduled, RunCompleted, RunFailed, StepCompleted,
    StepFailed, StepSkipped, StepStarted, TimerFired, TimerStarted,
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model::{Step, StepKind, Target, Workflow};
use crate::path::{self, InstancePath};
use crate::template::{self, Scope};

mod ai;
mod people;
mod queue;
mod resume;

pub use ai::{AiOutcome, AiProgress};
pub use people::{HumanWait, Notice, request_event};
pub use queue::{Claim, ENGINE_KINDS, TaskState};
pub use resume::{Policy, Resumed};
pub use resume::{ancestors as resume_ancestors, container_of as container_of_key};

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

/// Where inside its steps a thread of control is. `step` is always the
/// step's instance id (its id, prefixed inside map iterations).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Cursor {
    /// Nothing to do (not started, or ended).
    #[default]
    Idle,
    /// Started; the first step is next.
    Start,
    /// Resumed: this step is entered next.
    Enter {
        /// The top-level step.
        step: String,
    },
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
    /// An attempt failed; retry or fail.
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
    /// A `workflow` step's child run was started; waiting for it to end.
    Child {
        /// Step.
        step: String,
        /// Attempt.
        attempt: u32,
        /// The child run.
        child_run_id: Uuid,
    },
}

impl Cursor {
    /// The step instance the cursor is at, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Cursor::InFlight { step, .. }
            | Cursor::After { step, .. }
            | Cursor::Failed { step, .. }
            | Cursor::Waiting { step, .. }
            | Cursor::RetryWait { step, .. }
            | Cursor::Child { step, .. } => Some(step),
            Cursor::Idle | Cursor::Start | Cursor::Enter { .. } | Cursor::Compensating => None,
        }
    }
}

/// One thread of control: the run's top-level steps, a parallel branch or a
/// map iteration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Thread {
    /// Where it is.
    pub cursor: Cursor,
    /// Output of its last completed step.
    pub last_output: Value,
    pending_jump: Option<String>,
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
    /// Who started it.
    pub started_by: String,
    /// When it started (runs recorded before this was kept: `None`).
    pub started_at: Option<DateTime<Utc>>,
    /// Status.
    pub status: RunStatus,
    /// Inputs after defaults.
    pub inputs: Arc<Value>,
    /// Latest output of every completed step instance.
    pub outputs: BTreeMap<String, Arc<Value>>,
    /// The error of every step instance whose failure a `catch` handled
    /// (`{ kind, message, attempt }`), until it completes again.
    pub errors: BTreeMap<String, Arc<Value>>,
    /// Visits per step instance (attempt 1 starts).
    pub visits: BTreeMap<String, u32>,
    /// Threads of control by scope: `""` is the top level.
    pub threads: BTreeMap<String, Thread>,
    /// Output of the last completed top-level step.
    pub last_output: Value,
    /// The run's output, once completed.
    pub output: Option<Value>,
    /// The error, once failed.
    pub error: Option<(String, String, Option<String>)>,
    /// Events folded (= the stream version).
    pub version: u64,
    /// Step instances in order of their last completion.
    pub completed: Vec<String>,
    /// The members of `completed`, to find one without a scan.
    completed_set: std::collections::HashSet<String>,
    /// Set while a failing run undoes its work.
    pub compensating: Option<Compensating>,
    /// The scope of every step instance outside the top level.
    scopes: HashMap<String, String>,
    /// What every AI step instance has done.
    pub ai: BTreeMap<String, AiProgress>,
    /// Forms and approvals requested, by step instance.
    pub people: BTreeMap<String, HumanWait>,
    /// Tasks offered to external workers, by step instance and attempt.
    pub tasks: BTreeMap<(String, u32), TaskState>,
    /// Money the run's AI attempts spent, in micros.
    pub spent_micros: u64,
    /// Tokens the run's AI attempts used.
    pub spent_tokens: u64,
    /// The parent run, for a child run.
    pub parent: Option<cairn_events::ParentRun>,
    /// The schedule that started it, by name.
    pub schedule: Option<String>,
    /// The highest attempt recorded per step instance.
    pub attempts: BTreeMap<String, u32>,
    /// Set once the run was resumed: what the resume keeps and re-runs.
    pub resume: Option<Box<Resumed>>,
    /// Whether a failing run undid completed steps (a saga ran).
    pub compensated: bool,
    /// The items of every map step instance's last start.
    pub map_items: BTreeMap<String, Value>,
    /// The attempt before the first attempt of each step instance's
    /// current visit: retries count from there.
    pub visit_base: BTreeMap<String, u32>,
    /// The error kinds of each step instance's failed attempts in its
    /// current visit: each retrier counts the ones it matched first.
    pub visit_failures: BTreeMap<String, Vec<String>>,
    /// When each step instance's current visit first failed (the time its
    /// first retry was scheduled at): `max_duration` counts from there.
    pub retrying_since: BTreeMap<String, DateTime<Utc>>,
    /// What its decisions take from the configuration, as recorded when it
    /// started (`None`: a run recorded before that reads it live).
    pub settings: Option<cairn_events::RunSettings>,
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

static IDLE: Cursor = Cursor::Idle;

impl RunState {
    /// The top-level thread's cursor.
    pub fn cursor(&self) -> &Cursor {
        self.threads.get("").map_or(&IDLE, |t| &t.cursor)
    }

    /// The scope (thread) a step instance runs in.
    pub fn scope_of(&self, instance: &str) -> &str {
        self.scopes.get(instance).map_or("", String::as_str)
    }

    /// Whether this attempt of this instance still awaits its outcome (it
    /// may have been cancelled by a failing parallel branch, or recorded by
    /// another process).
    pub fn awaits(&self, instance: &str, attempt: u32) -> bool {
        self.status == RunStatus::Running
            && self.threads.get(self.scope_of(instance)).is_some_and(|t| match &t.cursor {
                Cursor::InFlight { step, attempt: a, .. } | Cursor::Child { step, attempt: a, .. } => {
                    step == instance && *a == attempt
                }
                _ => false,
            })
    }

    /// Whether an attempt of this step instance is in flight (started, or
    /// waiting for its child run) and the run is running.
    pub fn in_flight(&self, instance: &str) -> bool {
        self.status == RunStatus::Running
            && self.threads.get(self.scope_of(instance)).is_some_and(|t| match &t.cursor {
                Cursor::InFlight { step, .. } | Cursor::Child { step, .. } => step == instance,
                _ => false,
            })
    }

    /// The attempt of the step instance in flight (0 when none is).
    pub fn attempt_of(&self, instance: &str) -> u32 {
        match self.threads.get(self.scope_of(instance)).map(|t| &t.cursor) {
            Some(Cursor::InFlight { step, attempt, .. }) if step == instance => *attempt,
            _ => 0,
        }
    }

    /// The child runs this run waits for now.
    pub fn children_awaited(&self) -> Vec<Uuid> {
        self.threads
            .values()
            .filter_map(|t| match &t.cursor {
                Cursor::Child { child_run_id, .. } => Some(*child_run_id),
                _ => None,
            })
            .collect()
    }

    /// The run's status as every surface names it: `running`, `waiting`
    /// (a form or approval waits for people), `completed`, `failed` or
    /// `cancelled`.
    pub fn status_name(&self) -> &'static str {
        match self.status {
            RunStatus::NotStarted | RunStatus::Running => {
                if self.waiting_for_people().is_empty() {
                    "running"
                } else {
                    "waiting"
                }
            }
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// The forms and approvals waiting for people now: step instance and request.
    pub fn waiting_for_people(&self) -> Vec<(&str, &HumanWait)> {
        self.people
            .iter()
            .filter(|(inst, h)| self.attempt_of(inst) == h.attempt && h.attempt > 0)
            .map(|(i, h)| (i.as_str(), h))
            .collect()
    }

    fn thread_mut(&mut self, instance: &str) -> Option<&mut Thread> {
        match self.scopes.get(instance) {
            Some(k) => self.threads.get_mut(k.as_str()),
            None => self.threads.get_mut(""),
        }
    }

    /// Removes the threads inside a container instance, recursively.
    /// Moves `instance` to the end of the completion order.
    fn mark_completed(&mut self, instance: &str) {
        if !self.completed_set.insert(instance.to_owned()) {
            self.completed.retain(|c| c != instance);
        }
        self.completed.push(instance.to_owned());
    }

    /// Drops the completions from position `i` on, returning them.
    fn completed_from(&mut self, i: usize) -> Vec<String> {
        let gone = self.completed.split_off(i);
        for c in &gone {
            self.completed_set.remove(c);
        }
        gone
    }

    fn drop_children(&mut self, instance: &str) {
        if self.threads.len() <= 1 {
            return;
        }
        let (dot, bracket) = path::inside(instance);
        let mut gone = prefixed(&self.threads, &dot);
        gone.extend(prefixed(&self.threads, &bracket));
        for k in gone {
            if let Some(t) = self.threads.remove(&k)
                && let Some(step) = t.cursor.step()
            {
                self.drop_children(step);
            }
        }
    }

    /// The step instances still running inside a thread, nested ones included.
    fn live_steps(&self, key: &str, out: &mut Vec<String>) {
        let Some(t) = self.threads.get(key) else { return };
        let step = match &t.cursor {
            Cursor::InFlight { step, .. }
            | Cursor::Waiting { step, .. }
            | Cursor::RetryWait { step, .. }
            | Cursor::Child { step, .. } => step,
            _ => return,
        };
        out.push(step.clone());
        let (dot, bracket) = path::inside(step);
        for k in self.threads.keys().filter(|k| k.starts_with(&dot) || k.starts_with(&bracket)) {
            self.live_steps(k, out);
        }
    }
}

/// The keys of a sorted map that start with `prefix`: a range scan, so
/// a map of many iterations does not cost a scan of every key per event.
fn prefixed<V>(map: &BTreeMap<String, V>, prefix: &str) -> Vec<String> {
    map.range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The step id of an instance id (`m[2].price` → `price`); see
/// [`InstancePath`].
pub fn bare(instance: &str) -> &str {
    InstancePath::new(instance).step()
}

/// The instance prefix of an instance id (`m[2].price` → `m[2].`).
fn prefix(instance: &str) -> &str {
    InstancePath::new(instance).prefix()
}

/// Folds one event into the state.
pub fn evolve(mut s: RunState, event: &Event) -> RunState {
    s.version += 1;
    if ai::evolve(&mut s, event)
        || ai::evolve_timer(&mut s, event)
        || people::evolve(&mut s, event)
        || queue::evolve(&mut s, event)
    {
        return s;
    }
    match event {
        Event::RunStarted(e) => {
            s.run_id = Some(e.run_id);
            s.workflow = e.workflow.clone();
            s.workflow_version = e.workflow_version;
            s.started_by = e.started_by.clone();
            s.started_at = e.started_at;
            s.status = RunStatus::Running;
            s.inputs = Arc::new(e.inputs.clone());
            s.parent = e.parent.clone();
            s.schedule = e.schedule.as_ref().map(|o| o.name.clone());
            s.settings = e.settings.clone();
            s.threads.insert(String::new(), Thread { cursor: Cursor::Start, ..Thread::default() });
        }
        Event::StepStarted(e) => {
            // A start that is not the retry (or the re-start) of the attempt
            // the thread is on is a new visit. Attempts are numbered on
            // across visits, so each visit's attempts have their own
            // idempotency keys, timer ids, child runs and history rows; a
            // log written before that (attempt 1 again) is still a visit.
            let again = s.threads.get(&e.scope).is_some_and(|t| match &t.cursor {
                Cursor::RetryWait { step, next_attempt, .. } => step == &e.step_id && *next_attempt == e.attempt,
                Cursor::InFlight { step, attempt, .. } => step == &e.step_id && *attempt == e.attempt,
                _ => false,
            });
            if !again {
                *s.visits.entry(e.step_id.clone()).or_default() += 1;
                s.visit_base.insert(e.step_id.clone(), e.attempt.saturating_sub(1));
                s.visit_failures.remove(&e.step_id);
                s.retrying_since.remove(&e.step_id);
            }
            match s.attempts.get_mut(&e.step_id) {
                Some(a) => *a = (*a).max(e.attempt),
                None => {
                    s.attempts.insert(e.step_id.clone(), e.attempt);
                }
            }
            if let Some(r) = s.resume.as_mut() {
                r.started.insert(e.step_id.clone());
            }
            // A map's start records its items (`{ "items": [...] }`).
            if let Value::Object(o) = &e.input
                && o.len() == 1
                && let Some(items @ Value::Array(_)) = o.get("items")
            {
                s.map_items.insert(e.step_id.clone(), items.clone());
            }
            if s.threads.len() > 1 {
                // A container starting again starts its insides afresh.
                s.drop_children(&e.step_id);
                let bracket = path::iterations_of(&e.step_id);
                for k in prefixed(&s.outputs, &bracket) {
                    s.outputs.remove(&k);
                }
                for k in prefixed(&s.visits, &bracket) {
                    s.visits.remove(&k);
                }
            }
            if !e.scope.is_empty() {
                s.scopes.insert(e.step_id.clone(), e.scope.clone());
            }
            if let Some(p) = s.ai.get_mut(&e.step_id) {
                p.restart();
            }
            s.people.remove(&e.step_id);
            let t = s.threads.entry(e.scope.clone()).or_default();
            t.cursor = Cursor::InFlight { step: e.step_id.clone(), attempt: e.attempt, input: e.input.clone() };
        }
        Event::BranchTaken(e) => {
            if let Some(t) = s.thread_mut(&e.step_id) {
                t.pending_jump = Some(e.target.clone());
            }
        }
        Event::StepCompleted(e) => {
            s.mark_completed(&e.step_id);
            if let Some(c) = s.compensating.as_mut()
                && c.queue.get(c.done) == Some(&e.step_id)
            {
                c.done += 1;
            }
            if let Some(r) = s.resume.as_mut() {
                r.completed(&e.step_id, &e.output);
            }
            s.outputs.insert(e.step_id.clone(), Arc::new(e.output.clone()));
            s.errors.remove(&e.step_id);
            s.drop_children(&e.step_id);
            let top = !s.scopes.contains_key(&e.step_id);
            if let Some(t) = s.thread_mut(&e.step_id) {
                t.last_output = e.output.clone();
                t.cursor = Cursor::After { step: e.step_id.clone(), jump: t.pending_jump.take() };
                if top {
                    s.last_output = e.output.clone();
                }
            }
        }
        Event::StepFailed(e) => {
            s.visit_failures.entry(e.step_id.clone()).or_default().push(e.error_kind.clone());
            s.drop_children(&e.step_id);
            if let Some(t) = s.thread_mut(&e.step_id) {
                t.cursor = Cursor::Failed {
                    step: e.step_id.clone(),
                    attempt: e.attempt,
                    error_kind: e.error_kind.clone(),
                    message: e.message.clone(),
                    retryable: e.retryable,
                    retry_after_ms: e.retry_after_ms,
                };
            }
        }
        Event::TimerStarted(e) if e.purpose == "wait" => {
            if let Some(step) = &e.step_id
                && let Some(t) = s.thread_mut(step)
                && let Cursor::InFlight { attempt, .. } = &t.cursor
            {
                t.cursor = Cursor::Waiting {
                    step: step.clone(),
                    attempt: *attempt,
                    timer_id: e.timer_id.clone(),
                    due_at: e.due_at,
                };
            }
        }
        Event::RetryScheduled(e) => {
            if !s.retrying_since.contains_key(&e.step_id) {
                let backoff = chrono::Duration::milliseconds(i64::try_from(e.backoff_ms).unwrap_or(i64::MAX));
                s.retrying_since.insert(e.step_id.clone(), e.due_at - backoff);
            }
            if let Some(t) = s.thread_mut(&e.step_id) {
                t.cursor =
                    Cursor::RetryWait { step: e.step_id.clone(), next_attempt: e.next_attempt, due_at: e.due_at };
            }
        }
        Event::ChildRunStarted(e) => {
            if let Some(t) = s.thread_mut(&e.step_id)
                && let Cursor::InFlight { attempt, .. } = &t.cursor
            {
                t.cursor = Cursor::Child { step: e.step_id.clone(), attempt: *attempt, child_run_id: e.child_run_id };
            }
        }
        // A guard was false: control goes on after the step, which did not
        // run (a cancellation's skip changes nothing: its container fails).
        Event::StepSkipped(e) if e.guard.is_some() => {
            if !e.scope.is_empty() {
                s.scopes.insert(e.step_id.clone(), e.scope.clone());
            }
            let t = s.threads.entry(e.scope.clone()).or_default();
            t.pending_jump = None;
            t.cursor = Cursor::After { step: e.step_id.clone(), jump: None };
        }
        // A failure handled: control goes to the handler, which reads the
        // error as `steps.ID.error`.
        Event::ErrorCaught(e) => {
            s.errors.insert(
                e.step_id.clone(),
                Arc::new(json!({ "kind": e.error_kind, "message": e.message, "attempt": e.attempt })),
            );
            if let Some(t) = s.thread_mut(&e.step_id) {
                t.pending_jump = None;
                t.cursor = Cursor::After { step: e.step_id.clone(), jump: Some(e.next.clone()) };
            }
        }
        Event::StepKept(e) => {
            s.mark_completed(&e.step_id);
            if !e.scope.is_empty() {
                s.scopes.insert(e.step_id.clone(), e.scope.clone());
            }
            s.outputs.insert(e.step_id.clone(), Arc::new(e.output.clone()));
            let top = e.scope.is_empty();
            let t = s.threads.entry(e.scope.clone()).or_default();
            t.last_output = e.output.clone();
            t.pending_jump = None;
            t.cursor = Cursor::After { step: e.step_id.clone(), jump: e.target.clone() };
            if top {
                s.last_output = e.output.clone();
            }
        }
        Event::RunResumed(e) => resume::evolve(&mut s, e),
        Event::CompensationStarted(e) => {
            s.compensated = true;
            s.compensating = Some(Compensating {
                queue: e.compensations.clone(),
                done: 0,
                error: (e.error_kind.clone(), e.message.clone(), e.failed_step.clone()),
            });
            s.threads.retain(|k, _| k.is_empty());
            s.threads.entry(String::new()).or_default().cursor = Cursor::Compensating;
        }
        Event::RunCompleted(e) => {
            s.status = RunStatus::Completed;
            s.output = Some(e.output.clone());
            s.end_threads();
        }
        Event::RunFailed(e) => {
            s.status = RunStatus::Failed;
            s.error = Some((e.error_kind.clone(), e.message.clone(), e.failed_step.clone()));
            s.end_threads();
        }
        Event::RunCancelled(_) => {
            s.status = RunStatus::Cancelled;
            s.end_threads();
        }
        _ => {}
    }
    s
}

impl RunState {
    /// The attempt a new visit of a step instance starts with: one past the
    /// highest recorded (across visits and resumes), so no two attempts of
    /// a run share an idempotency key, timer id, child run or resume token.
    pub fn next_visit_attempt(&self, instance: &str) -> u32 {
        let resumed = self.resume.as_ref().and_then(|r| r.base.get(instance).copied()).unwrap_or(0);
        1 + self.attempts.get(instance).copied().unwrap_or(0).max(resumed)
    }

    /// The attempt number within the current visit (1 for its first).
    pub fn attempt_in_visit(&self, instance: &str, attempt: u32) -> u32 {
        attempt.saturating_sub(self.visit_base.get(instance).copied().unwrap_or(0))
    }

    fn end_threads(&mut self) {
        self.threads.retain(|k, _| k.is_empty());
        self.threads.entry(String::new()).or_default().cursor = Cursor::Idle;
    }
}

/// Folds many events.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> RunState {
    events.into_iter().fold(RunState::default(), evolve)
}

/// What should happen next. Events in `append` are pure progress, recorded
/// before anything else (then decide again); `execute` lists the recorded,
/// still open attempts whose effects are to run (concurrently); `wake_at`
/// is the earliest time a timer or retry falls due. All empty: the run has
/// ended (or never started).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// Events to record now.
    pub append: Vec<Event>,
    /// Effects to perform, each then recording its outcome.
    pub execute: Vec<Execution>,
    /// When to decide again if nothing else happens.
    pub wake_at: Option<DateTime<Utc>>,
    /// A form or approval waits for people: a driver with no effects left
    /// may stop here instead of sleeping (a submission wakes the run).
    pub parked: bool,
}

impl Decision {
    /// Record these events.
    pub fn append(events: Vec<Event>) -> Self {
        Decision { append: events, ..Decision::default() }
    }

    /// Nothing to do before `t`.
    pub fn wait_until(t: DateTime<Utc>) -> Self {
        Decision { wake_at: Some(t), ..Decision::default() }
    }

    /// Nothing to do, ever: the run has ended.
    pub fn done() -> Self {
        Decision::default()
    }

    /// Whether there is nothing to do at all.
    pub fn is_done(&self) -> bool {
        self.append.is_empty() && self.execute.is_empty() && self.wake_at.is_none()
    }

    pub(crate) fn wake(&mut self, t: DateTime<Utc>) {
        self.wake_at = Some(self.wake_at.map_or(t, |w| w.min(t)));
    }

    fn merge(&mut self, other: Decision) {
        self.append.extend(other.append);
        self.execute.extend(other.execute);
        self.parked |= other.parked;
        if let Some(t) = other.wake_at {
            self.wake(t);
        }
    }
}

/// An effect to perform for a recorded attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// Step instance.
    pub step_id: String,
    /// Attempt.
    pub attempt: u32,
    /// What to do.
    pub effect: Effect,
    /// The recorded input.
    pub input: Value,
    /// Attempt timeout.
    pub timeout: Option<Duration>,
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
    /// Start (or find, after a crash) the child run and record
    /// `ChildRunStarted`.
    StartChild {
        /// Child workflow.
        workflow: String,
        /// Its version; the latest when `None`.
        version: Option<u32>,
        /// The child's id, derived from run, step and attempt.
        child_run_id: Uuid,
    },
    /// Wait for the child run to end and record its result.
    AwaitChild {
        /// The child run.
        child_run_id: Uuid,
    },
    /// Call the model with the recorded request (the execution's input is
    /// the `AiAttemptStarted` payload) and record the reply or failure.
    Ai {
        /// The AI attempt number.
        number: u32,
        /// The scripted replies, rendered (scripted provider only).
        scripted: Vec<Value>,
    },
    /// Record the form's or approval's request with its token's hash.
    Request,
    /// Send one notification about a waiting form or approval.
    Notify {
        /// `request`, `reminder-N` or `escalation`.
        purpose: String,
        /// The identity notified.
        identity: String,
        /// Their address.
        address: String,
        /// Send attempt, from 1.
        send_attempt: u32,
    },
}

type Failure = (String, String, Option<String>);

enum End {
    Running,
    Completed(Value),
    Failed(Failure),
}

/// The template and condition context of a step instance:
/// `{ inputs, steps: { id: { output } } }`, plus `item` and `index` inside a
/// map iteration. Steps of enclosing iterations are visible by their ids.
pub fn context(s: &RunState, instance: &str) -> Scope {
    scope_context(s, prefix(instance))
}

/// The outputs visible from scope `pre`: those of the top level and of each
/// enclosing iteration (`m[2].` sees `m[2].x` and top-level `y`). Found by
/// range scans that skip every other iteration's subtree, so the cost does
/// not grow with the number of iterations.
fn visible_outputs(s: &RunState, pre: &str) -> Vec<(String, Arc<Value>)> {
    visible(&s.outputs, pre)
}

/// The entries of `map` (by step instance) visible from scope `pre`.
fn visible(map: &BTreeMap<String, Arc<Value>>, pre: &str) -> Vec<(String, Arc<Value>)> {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let mut out = Vec::new();
    // Each enclosing scope: "", then every prefix of `pre` ending in '.'.
    let scopes = std::iter::once("").chain(pre.match_indices('.').map(|(i, _)| &pre[..=i]));
    for scope in scopes {
        let mut from = Included(scope.to_owned());
        while let Some((k, v)) = map.range::<String, _>((from.clone(), Unbounded)).next() {
            let Some(rest) = k.strip_prefix(scope) else { break };
            match rest.find('[') {
                // Inside a container: skip past `scope + container + "["…`.
                Some(b) if rest[b..].contains('.') => {
                    from = Excluded(format!("{scope}{}[\u{10FFFF}", &rest[..b]));
                }
                _ => {
                    out.push((rest.to_owned(), v.clone()));
                    from = Excluded(k.clone());
                }
            }
        }
    }
    out
}

/// `run`: what templates and conditions know of the run itself; with a
/// step attempt, its attempt in the visit and a UUID of its own (derived
/// from the run, the step and the attempt, so a replay finds the same one);
/// with `now`, the time as `run.now` (recorded by the step that reads it).
pub fn run_context(s: &RunState, attempt: Option<(&str, u32)>, now: Option<DateTime<Utc>>) -> Value {
    let mut run = json!({
        "id": s.run_id.map(|u| u.to_string()),
        "workflow": s.workflow,
        "version": s.workflow_version,
        "started_by": s.started_by,
        "started_at": s.started_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        "parent_id": s.parent.as_ref().map(|p| p.run_id.to_string()),
        "parent_step": s.parent.as_ref().map(|p| p.step_id.clone()),
    });
    if let (Some(t), Value::Object(m)) = (now, &mut run) {
        m.insert("now".into(), json!(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)));
    }
    if let (Some((instance, a)), Value::Object(m)) = (attempt, &mut run) {
        // A retry counts on within its visit; anything else starts a visit.
        let retry = s.threads.get(s.scope_of(instance)).is_some_and(|t| {
            matches!(&t.cursor, Cursor::RetryWait { step, next_attempt, .. } if step == instance && *next_attempt == a)
        });
        m.insert("attempt".into(), json!(if retry { s.attempt_in_visit(instance, a) } else { 1 }));
        let mut h = Sha256::new();
        h.update(b"cairn-uuid");
        h.update(s.run_id.map(|r| r.into_bytes()).unwrap_or_default());
        h.update(instance.as_bytes());
        h.update(a.to_be_bytes());
        let d = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        m.insert("uuid".into(), json!(uuid::Builder::from_random_bytes(b).into_uuid().to_string()));
    }
    run
}

fn scope_context(s: &RunState, pre: &str) -> Scope {
    let mut ctx = Scope::new();
    ctx.share("inputs", s.inputs.clone());
    ctx.set("run", run_context(s, None, None));
    if s.errors.is_empty() {
        ctx.outputs("steps", visible_outputs(s, pre));
    } else {
        ctx.steps("steps", visible_outputs(s, pre), visible(&s.errors, pre));
    }
    // Inside a map iteration: `item` and `index` of the innermost one.
    if let Some(iteration) = pre.strip_suffix('.')
        && let Some((map, index)) = InstancePath::new(iteration).iteration()
    {
        let item = s
            .threads
            .get(s.scope_of(map))
            .and_then(|t| match &t.cursor {
                Cursor::InFlight { step, input, .. } if step == map => input.get("items")?.get(index).cloned(),
                _ => None,
            })
            .unwrap_or(Value::Null);
        ctx.set("item", item);
        ctx.set("index", json!(index));
    }
    ctx
}

/// The context with `secrets.NAME` as `[redacted:NAME]`: what is recorded
/// never holds a secret.
fn context_with_placeholders(w: &Workflow, s: &RunState, pre: &str) -> Scope {
    let mut ctx = scope_context(s, pre);
    if !w.secret_refs.is_empty() {
        let secrets: serde_json::Map<String, Value> = w
            .secret_refs
            .iter()
            .map(|r| (r.name.clone(), Value::String(crate::secrets::placeholder(&r.name))))
            .collect();
        ctx.set("secrets", Value::Object(secrets));
    }
    ctx
}

fn fail_run(kind: &str, message: String, step: Option<&str>) -> Vec<Event> {
    vec![Event::RunFailed(RunFailed { error_kind: kind.to_owned(), message, failed_step: step.map(str::to_owned) })]
}

fn missing(step: &str, version: u32) -> Failure {
    (
        "definition".to_owned(),
        format!("step `{}` is not in version {version} of the workflow", bare(step)),
        Some(step.to_owned()),
    )
}

/// Decides the next thing to do. Pure.
pub fn decide(w: &Workflow, s: &RunState, now: DateTime<Utc>) -> Decision {
    let mut d = Decision::default();
    if s.status != RunStatus::Running {
        return d;
    }
    match thread(w, s, "", now, &mut d) {
        End::Running => {}
        End::Completed(_) => d.append.extend(complete(w, s)),
        End::Failed((kind, message, step)) => {
            d.append.extend(fail_or_compensate(w, s, &kind, message, step.as_deref(), now));
        }
    }
    d
}

/// Decides for one thread, adding to `d`; says whether the thread has ended.
fn thread(w: &Workflow, s: &RunState, key: &str, now: DateTime<Utc>, d: &mut Decision) -> End {
    let Some(t) = s.threads.get(key) else { return End::Running };
    match &t.cursor {
        Cursor::Idle => End::Running,
        Cursor::Start => match w.steps.first() {
            Some(first) => match enter(w, s, "", "", &first.id, now) {
                Ok(events) => {
                    d.append.extend(events);
                    End::Running
                }
                Err(f) => End::Failed(f),
            },
            None => End::Completed(Value::Null),
        },
        Cursor::Enter { step } => match enter(w, s, key, "", step, now) {
            Ok(events) => {
                d.append.extend(events);
                End::Running
            }
            Err(f) => End::Failed(f),
        },
        Cursor::After { .. } | Cursor::Compensating if key.is_empty() && s.compensating.is_some() => {
            d.append.extend(next_compensation(w, s, now));
            End::Running
        }
        Cursor::Compensating => End::Running,
        Cursor::After { step, jump } => {
            let target = match (jump, w.step(bare(step))) {
                (Some(j), _) if j == "end" => Target::End,
                (Some(j), _) => Target::Step(j.clone()),
                (None, Some(st)) => st.then.clone(),
                (None, None) => return End::Failed(missing(step, s.workflow_version)),
            };
            match target {
                Target::End => End::Completed(t.last_output.clone()),
                Target::Step(next) => match enter(w, s, key, prefix(step), &next, now) {
                    Ok(events) => {
                        d.append.extend(events);
                        End::Running
                    }
                    Err(f) => End::Failed(f),
                },
            }
        }
        Cursor::InFlight { step, attempt, input } => {
            let Some(st) = w.step(bare(step)) else { return End::Failed(missing(step, s.workflow_version)) };
            let exec = |effect, timeout| Execution {
                step_id: step.clone(),
                attempt: *attempt,
                effect,
                input: input.clone(),
                timeout,
            };
            match &st.kind {
                StepKind::Task { handler, .. } => {
                    d.execute.push(exec(Effect::Task { handler: handler.clone() }, st.timeout));
                }
                StepKind::Http { timeout, retry_on_status, .. } => d.execute.push(exec(
                    Effect::Http { retry_on_status: retry_on_status.clone() },
                    // The step's timeout bounds the whole attempt; the request's its own.
                    Some(st.timeout.map_or(*timeout, |t| t.min(*timeout))),
                )),
                StepKind::Workflow { name, version, .. } => d.execute.push(exec(
                    Effect::StartChild {
                        workflow: name.clone(),
                        version: *version,
                        child_run_id: child_id(s.run_id, step, *attempt),
                    },
                    None,
                )),
                StepKind::Parallel { .. } | StepKind::Map { .. } | StepKind::Dag { .. } => {
                    container(&InFlight { w, s, st, inst: step, attempt: *attempt, input, now }, d)
                }
                StepKind::Ai(a) => ai::decide(&InFlight { w, s, st, inst: step, attempt: *attempt, input, now }, a, d),
                StepKind::Form(_) | StepKind::Approval(_) => {
                    people::decide(&InFlight { w, s, st, inst: step, attempt: *attempt, input, now }, d)
                }
                StepKind::Queue { queue, heartbeat_timeout, .. } => queue::decide(
                    &InFlight { w, s, st, inst: step, attempt: *attempt, input, now },
                    queue,
                    *heartbeat_timeout,
                    d,
                ),
                // Pure steps record start and outcome together; an in-flight
                // pure step can only come from an interrupted older engine.
                _ => d.append.extend(start(w, s, key, prefix(step), st, *attempt, now)),
            }
            End::Running
        }
        Cursor::Child { step, attempt, child_run_id } => {
            d.execute.push(Execution {
                step_id: step.clone(),
                attempt: *attempt,
                effect: Effect::AwaitChild { child_run_id: *child_run_id },
                input: Value::Null,
                timeout: None,
            });
            End::Running
        }
        Cursor::Failed { step, attempt, error_kind, message, retryable, retry_after_ms } => {
            let Some(st) = w.step(bare(step)) else {
                return End::Failed((error_kind.clone(), message.clone(), Some(step.clone())));
            };
            // The first retrier whose errors match decides; it counts the
            // failures of this visit it matched first (one retrier: every
            // attempt of the visit).
            let base = s.visit_base.get(step.as_str()).copied().unwrap_or(0);
            let retrier = st.retry.iter().position(|p| p.matches(error_kind));
            let tries = retrier.map_or(0, |i| {
                let kinds = s.visit_failures.get(step.as_str()).map_or(&[][..], Vec::as_slice);
                kinds.iter().filter(|k| st.retry.iter().position(|p| p.matches(k)) == Some(i)).count() as u32
            });
            let policy = retrier.map(|i| &st.retry[i]);
            let scheduled = policy.filter(|p| {
                *retryable
                    && tries < p.max_attempts
                    && !p.non_retryable.iter().any(|k| crate::model::error_matches(k, error_kind))
            });
            let retry = scheduled.map(|p| {
                let next = attempt + 1;
                let backoff = p
                    .backoff(tries + 1, seed(s.run_id, step, next))
                    .max(Duration::from_millis(retry_after_ms.unwrap_or(0)));
                let due_at = now + chrono::Duration::from_std(backoff).unwrap_or(chrono::Duration::zero());
                (p, next, backoff, due_at)
            });
            // Past the retrier's `max_duration` (from the visit's first failure): no more.
            let over = retry.as_ref().and_then(|(p, _, _, due_at)| {
                let limit = chrono::Duration::from_std(p.max_duration?).ok()?;
                let since = s.retrying_since.get(step.as_str()).copied().unwrap_or(now);
                (*due_at > since + limit).then_some(p.max_duration)
            });
            if let (Some((_, next, backoff, due_at)), None) = (retry, over) {
                d.append.push(Event::RetryScheduled(RetryScheduled {
                    step_id: step.clone(),
                    next_attempt: next,
                    due_at,
                    backoff_ms: u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                }));
                End::Running
            } else if let Some(c) = st.catch.iter().find(|c| c.matches(error_kind)) {
                d.append.push(Event::ErrorCaught(ErrorCaught {
                    step_id: step.clone(),
                    attempt: *attempt,
                    error_kind: error_kind.clone(),
                    message: message.clone(),
                    next: c.next.name().to_owned(),
                }));
                End::Running
            } else if matches!(st.kind, StepKind::Fail { .. }) {
                // A fail step's error and cause are the run's, as written.
                End::Failed((error_kind.clone(), message.clone(), Some(step.clone())))
            } else {
                let why = match (policy, over) {
                    (_, Some(Some(limit))) => format!("its retries would go past max_duration {limit:?}"),
                    (None, _) if !st.retry.is_empty() => "no retrier matches its error".to_owned(),
                    (Some(p), _)
                        if *retryable
                            && !p.non_retryable.iter().any(|k| crate::model::error_matches(k, error_kind)) =>
                    {
                        format!("after {} attempt(s)", attempt.saturating_sub(base))
                    }
                    (None, _) if *retryable => format!("after {} attempt(s)", attempt.saturating_sub(base)),
                    _ => "not retryable".to_owned(),
                };
                End::Failed((
                    error_kind.clone(),
                    format!("step `{step}` failed ({why}): {message}"),
                    Some(step.clone()),
                ))
            }
        }
        Cursor::Waiting { step, attempt, timer_id, due_at } => {
            if now >= *due_at {
                d.append.extend([
                    Event::TimerFired(TimerFired { timer_id: timer_id.clone(), due_at: *due_at }),
                    Event::StepCompleted(StepCompleted {
                        step_id: step.clone(),
                        attempt: *attempt,
                        output: json!({ "waited_until": due_at }),
                        duration_ms: 0,
                    }),
                ]);
            } else {
                d.wake(*due_at);
            }
            End::Running
        }
        Cursor::RetryWait { step, next_attempt, due_at } => {
            if now >= *due_at {
                match w.step(bare(step)) {
                    Some(st) => d.append.extend(start(w, s, key, prefix(step), st, *next_attempt, now)),
                    None => return End::Failed(missing(step, s.workflow_version)),
                }
            } else {
                d.wake(*due_at);
            }
            End::Running
        }
    }
}

/// A step attempt in flight, as the deciders of its kind see it.
#[derive(Clone, Copy)]
pub(super) struct InFlight<'a> {
    pub(super) w: &'a Workflow,
    pub(super) s: &'a RunState,
    pub(super) st: &'a Step,
    /// The step instance.
    pub(super) inst: &'a str,
    pub(super) attempt: u32,
    /// The input its `StepStarted` recorded.
    pub(super) input: &'a Value,
    pub(super) now: DateTime<Utc>,
}

/// One thread inside a container: its scope, instance prefix, first step
/// and name in messages.
struct Kid<'w> {
    key: String,
    prefix: String,
    first: &'w str,
    label: String,
}

/// Decides for an in-flight `parallel` or `map`: starts its threads up to
/// `max_concurrency`, decides inside the running ones, and completes (or
/// fails) the step once they have ended.
fn container(f: &InFlight<'_>, d: &mut Decision) {
    let InFlight { w, s, st, inst, attempt, input, now } = *f;
    let compete = matches!(st.kind, StepKind::Parallel { compete: true, .. });
    let (kids, fail_fast, max) = match &st.kind {
        StepKind::Parallel { branches, fail_fast, max_concurrency, .. } => (
            branches
                .iter()
                .filter_map(|(name, steps)| {
                    Some(Kid {
                        key: format!("{inst}.{name}"),
                        prefix: prefix(inst).to_owned(),
                        first: &steps.first()?.id,
                        label: format!("branch `{name}`"),
                    })
                })
                .collect::<Vec<_>>(),
            *fail_fast,
            *max_concurrency,
        ),
        StepKind::Map { steps, fail_fast, max_concurrency, .. } => {
            let n = input.get("items").and_then(Value::as_array).map_or(0, Vec::len);
            let Some(first) = steps.first() else { return };
            (
                (0..n)
                    .map(|i| Kid {
                        key: path::iteration(inst, i),
                        prefix: path::iteration_prefix(inst, i),
                        first: &first.id,
                        label: format!("item {i}"),
                    })
                    .collect(),
                *fail_fast,
                *max_concurrency,
            )
        }
        StepKind::Dag { steps, fail_fast, max_concurrency, .. } => (
            steps
                .iter()
                .map(|n| Kid {
                    key: format!("{inst}.{}", n.id),
                    prefix: prefix(inst).to_owned(),
                    first: &n.id,
                    label: format!("step `{}`", n.id),
                })
                .collect(),
            *fail_fast,
            *max_concurrency,
        ),
        _ => return,
    };
    let deps = match &st.kind {
        StepKind::Dag { depends_on, .. } => depends_on.as_slice(),
        _ => &[],
    };
    let mut inner = Decision::default();
    let mut ends: Vec<Option<End>> = Vec::with_capacity(kids.len());
    for k in &kids {
        ends.push(s.threads.contains_key(&k.key).then(|| thread(w, s, &k.key, now, &mut inner)));
    }
    // A dag's steps that can never start: one they depend on failed, or
    // can never start itself (the graph is acyclic, so this settles).
    let mut blocked = vec![false; kids.len()];
    let mut changed = !deps.is_empty();
    while changed {
        changed = false;
        for (i, d) in deps.iter().enumerate() {
            if ends[i].is_none()
                && !blocked[i]
                && d.iter().any(|&j| blocked[j] || matches!(ends[j], Some(End::Failed(_))))
            {
                blocked[i] = true;
                changed = true;
            }
        }
    }
    let ready = |i: usize| deps.get(i).is_none_or(|d| d.iter().all(|&j| matches!(ends[j], Some(End::Completed(_)))));
    let running = ends.iter().filter(|e| matches!(e, Some(End::Running))).count();
    let waiting = ends.iter().zip(&blocked).filter(|(e, b)| e.is_none() && !**b).count();
    let failures: Vec<(&Kid<'_>, &Failure)> = kids
        .iter()
        .zip(&ends)
        .filter_map(|(k, e)| match e {
            Some(End::Failed(f)) => Some((k, f)),
            _ => None,
        })
        .collect();
    // A race: the first branch (in listed order) found completed wins; the
    // others' live steps are cancelled and their late results not recorded.
    if compete
        && let Some((winner, Some(End::Completed(v)))) =
            kids.iter().zip(&ends).find(|(_, e)| matches!(e, Some(End::Completed(_))))
    {
        let name = winner.key.strip_prefix(&format!("{inst}.")).unwrap_or(&winner.key).to_owned();
        cancel_running(s, &kids, &ends, &format!("cancelled: `{inst}` was won by {}", winner.label), d);
        let output = json!({ "winner": name, "output": v });
        let limits = crate::settings::Surroundings::of(w, s.settings.as_ref()).limits();
        d.append.extend(completed_or_contract(&limits, st, inst, attempt, output));
        return;
    }
    if let Some((first_kid, (kind, message, _))) = failures.first()
        && (fail_fast || running + waiting == 0)
    {
        let mut message = format!("{} failed: {message}", first_kid.label);
        if failures.len() > 1 {
            message.push_str(&format!(" (and {} more failed)", failures.len() - 1));
        }
        let never: Vec<&str> = kids.iter().zip(&blocked).filter(|(_, b)| **b).map(|(k, _)| k.first).collect();
        if !fail_fast && !never.is_empty() {
            message.push_str(&format!(
                "; {} did not start: a step they depend on failed",
                never.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            ));
        }
        cancel_running(s, &kids, &ends, &format!("cancelled: `{inst}` failed fast ({} failed)", first_kid.label), d);
        d.append.push(Event::StepFailed(StepFailed {
            step_id: inst.to_owned(),
            attempt,
            error_kind: kind.clone(),
            message,
            retryable: true,
            retry_after_ms: None,
        }));
        return;
    }
    if running + waiting == 0 {
        let results = ends.into_iter().map(|e| match e {
            Some(End::Completed(v)) => v,
            _ => Value::Null,
        });
        let output = match &st.kind {
            StepKind::Parallel { branches, as_list: false, .. } => {
                Value::Object(branches.iter().map(|(n, _)| n.clone()).zip(results).collect())
            }
            StepKind::Dag { steps, .. } => Value::Object(steps.iter().map(|n| n.id.clone()).zip(results).collect()),
            _ => Value::Array(results.collect()),
        };
        let limits = crate::settings::Surroundings::of(w, s.settings.as_ref()).limits();
        d.append.extend(completed_or_contract(&limits, st, inst, attempt, output));
        return;
    }
    d.merge(inner);
    let mut free = max.map_or(usize::MAX, |m| (m as usize).saturating_sub(running));
    for (i, (k, e)) in kids.iter().zip(&ends).enumerate() {
        if free == 0 {
            break;
        }
        if e.is_some() || !ready(i) {
            continue;
        }
        free -= 1;
        match enter(w, s, &k.key, &k.prefix, k.first, now) {
            Ok(events) => d.append.extend(events),
            Err((kind, message, _)) => {
                d.append.push(Event::StepFailed(StepFailed {
                    step_id: inst.to_owned(),
                    attempt,
                    error_kind: kind,
                    message: format!("{} could not start: {message}", k.label),
                    retryable: false,
                    retry_after_ms: None,
                }));
                return;
            }
        }
    }
}

/// Cancels the live steps of the container's running threads: each is
/// recorded as `StepSkipped` with `reason`, and a late result of its attempt
/// is not recorded (a failing-fast container, a race's losers).
fn cancel_running(s: &RunState, kids: &[Kid<'_>], ends: &[Option<End>], reason: &str, d: &mut Decision) {
    let mut live = Vec::new();
    for (k, e) in kids.iter().zip(ends) {
        if matches!(e, Some(End::Running)) {
            s.live_steps(&k.key, &mut live);
        }
    }
    for l in live {
        d.append.push(Event::StepSkipped(StepSkipped {
            step_id: l,
            reason: reason.to_owned(),
            scope: String::new(),
            guard: None,
            at: None,
        }));
    }
}

/// The child run id of a `workflow` step's attempt: derived, so a crashed
/// and re-run attempt finds the child it already started.
fn child_id(run: Option<Uuid>, step: &str, attempt: u32) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"cairn-child");
    h.update(run.map(|r| r.into_bytes()).unwrap_or_default());
    h.update(step.as_bytes());
    h.update(attempt.to_be_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid()
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
) -> Vec<Event> {
    if let Some(c) = &s.compensating {
        let (k, m, st) = &c.error;
        return vec![Event::RunFailed(RunFailed {
            error_kind: k.clone(),
            message: format!("{m}; then compensation failed: {message}"),
            failed_step: st.clone(),
        })];
    }
    let queue: Vec<String> =
        s.completed.iter().rev().filter_map(|id| w.step(bare(id)).and_then(|st| st.compensate.clone())).collect();
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
    events.extend(next_compensation(w, &next, now));
    events
}

fn next_compensation(w: &Workflow, s: &RunState, now: DateTime<Utc>) -> Vec<Event> {
    let Some(c) = &s.compensating else { return Vec::new() };
    match c.queue.get(c.done).and_then(|id| w.step(id)) {
        Some(st) => start(w, s, "", "", st, s.next_visit_attempt(&st.id), now),
        None => {
            let (kind, message, step) = c.error.clone();
            vec![Event::RunFailed(RunFailed { error_kind: kind, message, failed_step: step })]
        }
    }
}

pub(super) fn seed(run: Option<Uuid>, step: &str, attempt: u32) -> u64 {
    let mut h = Sha256::new();
    h.update(run.map(|r| r.into_bytes()).unwrap_or_default());
    h.update(step.as_bytes());
    h.update(attempt.to_be_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Enters step `id` in thread `key` (instance prefix `pre`): checks
/// `max_visits`, then starts the visit's first attempt.
fn enter(
    w: &Workflow,
    s: &RunState,
    key: &str,
    pre: &str,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, Failure> {
    let instance = format!("{pre}{id}");
    let Some(st) = w.step(id) else { return Err(missing(&instance, s.workflow_version)) };
    if let Some(r) = &s.resume
        && let Some(kept) = r.keep(w, s, st, key, &instance)
    {
        return Ok(vec![Event::StepKept(kept)]);
    }
    if let Some(guard) = &st.when {
        // Checked once per visit, as control reaches the step; a skipped
        // step is no visit (its `max_visits` is not spent).
        let mut ctx = context_with_placeholders(w, s, pre);
        if st.reads.now {
            ctx.set("run", run_context(s, None, Some(now)));
        }
        let attempt = s.next_visit_attempt(&instance);
        let refused = |kind: &str, e: String| {
            vec![
                started(&instance, key, attempt, Value::Null),
                failed(&instance, attempt, kind, format!("its guard `{}`: {e}", guard.source())),
            ]
        };
        if let Err(e) = guard.check_cost(&ctx) {
            return Ok(refused("limit", e));
        }
        match guard.holds(&ctx) {
            Ok(true) => {}
            Ok(false) => {
                return Ok(vec![Event::StepSkipped(StepSkipped {
                    step_id: instance.clone(),
                    reason: format!("when: `{}` is false", guard.source()),
                    scope: key.to_owned(),
                    guard: Some(guard.source().to_owned()),
                    at: st.reads.now.then_some(now),
                })]);
            }
            Err(e) => return Ok(refused("condition", e)),
        }
    }
    let visits = s.visits.get(&instance).copied().unwrap_or(0);
    if let Some(max) = st.max_visits
        && visits >= max
    {
        return Err((
            "max_visits".to_owned(),
            format!("step `{instance}` would run a {} time; its max_visits is {max}", ordinal(visits + 1)),
            Some(instance),
        ));
    }
    Ok(start(w, s, key, pre, st, s.next_visit_attempt(&instance), now))
}

fn started(step: &str, key: &str, attempt: u32, input: Value) -> Event {
    Event::StepStarted(StepStarted { step_id: step.to_owned(), attempt, input, scope: key.to_owned(), at: None })
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

/// `StepCompleted`, or `StepFailed` when the output breaks the step's
/// `output_contract`.
fn completed_or_contract(
    limits: &cairn_events::limits::Limits,
    st: &Step,
    inst: &str,
    attempt: u32,
    output: Value,
) -> Vec<Event> {
    if let Err(l) = limits.check_value("/output", &output) {
        return vec![failed(inst, attempt, "limit", format!("the step's output was not recorded: {l}"))];
    }
    if let Some(c) = &st.output_contract {
        let v = crate::contract::violations(c, &output);
        if !v.is_empty() {
            return vec![failed(
                inst,
                attempt,
                "contract",
                format!("the output does not satisfy the output_contract: {}", crate::contract::describe(&v)),
            )];
        }
    }
    vec![Event::StepCompleted(StepCompleted { step_id: inst.to_owned(), attempt, output, duration_ms: 0 })]
}

/// Starts an attempt of step `st` in thread `key`: records it and, for a
/// pure step, its outcome. A rendered input too deep or too large to record
/// fails the attempt (kind `limit`) instead of an append the log refuses.
fn start(w: &Workflow, s: &RunState, key: &str, pre: &str, st: &Step, attempt: u32, now: DateTime<Utc>) -> Vec<Event> {
    let mut events = start_unchecked(w, s, key, pre, st, attempt, now);
    // What it read as `run.now`, recorded so a replay decides at the same time.
    if st.reads.now
        && let Some(Event::StepStarted(e)) = events.first_mut()
    {
        e.at = Some(now);
    }
    if let Some(Event::StepStarted(e)) = events.first_mut()
        && let Err(l) =
            crate::settings::Surroundings::of(w, s.settings.as_ref()).limits().check_value("/input", &e.input)
    {
        e.input = Value::Null;
        let (step, attempt) = (e.step_id.clone(), e.attempt);
        events.truncate(1);
        events.push(failed(&step, attempt, "limit", format!("the step's input was not recorded: {l}")));
    }
    events
}

fn start_unchecked(
    w: &Workflow,
    s: &RunState,
    key: &str,
    pre: &str,
    st: &Step,
    attempt: u32,
    now: DateTime<Utc>,
) -> Vec<Event> {
    let instance = format!("{pre}{}", st.id);
    let step = instance.as_str();
    let mut ctx = context_with_placeholders(w, s, pre);
    // The time only for a step that reads it (and so records it).
    ctx.set("run", run_context(s, Some((step, attempt)), st.reads.now.then_some(now)));
    let render_failed =
        |e: String| vec![started(step, key, attempt, Value::Null), failed(step, attempt, "template", e)];
    // A condition that could iterate past its budget is not evaluated.
    let costly = match &st.kind {
        StepKind::Branch { condition, .. } => condition.check_cost(&ctx).err(),
        StepKind::Switch { cases, .. } => cases.iter().find_map(|(c, _)| c.check_cost(&ctx).err()),
        _ => None,
    };
    if let Some(e) = costly {
        return vec![started(step, key, attempt, Value::Null), failed(step, attempt, "limit", e)];
    }
    match &st.kind {
        StepKind::Http { request: t, .. } | StepKind::Task { input: t, .. } | StepKind::Workflow { inputs: t, .. } => {
            match template::render(t, &ctx) {
                Ok(input) => vec![started(step, key, attempt, input)],
                Err(e) => render_failed(e.to_string()),
            }
        }
        StepKind::Queue { input, queue: q, heartbeat_timeout } => match template::render(input, &ctx) {
            Ok(input) => {
                vec![
                    started(step, key, attempt, input),
                    queue::offer(step, attempt, q, *heartbeat_timeout, st.timeout, now),
                ]
            }
            Err(e) => render_failed(e.to_string()),
        },
        StepKind::Parallel { .. } | StepKind::Dag { .. } => vec![started(step, key, attempt, Value::Null)],
        StepKind::Fail { error, cause } => match template::render(cause, &ctx) {
            Ok(v) => {
                let message = match &v {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                vec![
                    started(step, key, attempt, json!({ "error": error, "cause": message })),
                    failed(step, attempt, error, message),
                ]
            }
            Err(e) => render_failed(e.to_string()),
        },
        StepKind::Ai(a) => match ai::start_input(w, s, a, &ctx) {
            Ok(input) => vec![started(step, key, attempt, input)],
            Err(e) => render_failed(e),
        },
        StepKind::Form(f) => match people::form_input(f, &ctx, now) {
            Ok(input) => vec![started(step, key, attempt, input)],
            Err(e) => render_failed(e),
        },
        StepKind::Approval(a) => match people::approval_input(a, &ctx, now) {
            Ok(input) => vec![started(step, key, attempt, input)],
            Err(e) => render_failed(e),
        },
        StepKind::Map { items, .. } => match template::render(items, &ctx) {
            Ok(Value::Array(items)) => {
                let n = items.len();
                let mut events = vec![started(step, key, attempt, json!({ "items": items }))];
                if n == 0 {
                    let limits = crate::settings::Surroundings::of(w, s.settings.as_ref()).limits();
                    events.extend(completed_or_contract(&limits, st, step, attempt, json!([])));
                }
                events
            }
            Ok(other) => render_failed(format!("`items` rendered to {}, not a list", short(&other))),
            Err(e) => render_failed(e.to_string()),
        },
        StepKind::Transform { output } => match template::render(output, &ctx) {
            Ok(output) => {
                let mut events = vec![started(step, key, attempt, Value::Null)];
                let limits = crate::settings::Surroundings::of(w, s.settings.as_ref()).limits();
                events.extend(completed_or_contract(&limits, st, step, attempt, output));
                events
            }
            Err(e) => render_failed(e.to_string()),
        },
        StepKind::Branch { condition, then, otherwise } => match condition.holds(&ctx) {
            Ok(v) => {
                let target = if v { then } else { otherwise };
                branch(step, key, attempt, condition.source(), json!(v), target)
            }
            Err(e) => vec![started(step, key, attempt, Value::Null), failed(step, attempt, "condition", e)],
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
                    vec![
                        started(step, key, attempt, json!({ "until": due_at })),
                        Event::TimerStarted(TimerStarted {
                            timer_id,
                            step_id: Some(step.to_owned()),
                            due_at,
                            purpose: "wait".into(),
                        }),
                    ]
                }
                Err(e) => render_failed(e),
            }
        }
        StepKind::Switch { cases, default } => {
            for (c, target) in cases {
                match c.holds(&ctx) {
                    Ok(true) => return branch(step, key, attempt, c.source(), json!(true), target),
                    Ok(false) => {}
                    Err(e) => {
                        return vec![started(step, key, attempt, Value::Null), failed(step, attempt, "condition", e)];
                    }
                }
            }
            branch(step, key, attempt, "default", json!(false), default)
        }
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, `11th`, `21st`, `401st`…
pub(crate) fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// A value, shortened for a message.
fn short(v: &Value) -> String {
    let t = v.to_string();
    if t.len() > 80 { format!("{}…", &t[..t.floor_char_boundary(80)]) } else { t }
}

fn branch(step: &str, key: &str, attempt: u32, expression: &str, value: Value, target: &Target) -> Vec<Event> {
    let target = target.name().to_owned();
    vec![
        started(step, key, attempt, Value::Null),
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
    ]
}

fn complete(w: &Workflow, s: &RunState) -> Vec<Event> {
    let output = match &w.output {
        Some(t) => match template::render(t, &context_with_placeholders(w, s, "")) {
            Ok(v) => v,
            Err(e) => return fail_run("template", format!("workflow output: {e}"), None),
        },
        None => s.last_output.clone(),
    };
    vec![Event::RunCompleted(RunCompleted { output })]
}
