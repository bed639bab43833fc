//! Resume planning: a failed run's resume planned from its events and the
//! dependency graph, and checked; the runtime records it (`RunResumed`).
//!
//! The plan is computed without running anything: the decider is asked
//! what a resumed run would do, supposing every step that runs again
//! reproduces its recorded output, and the data each step reads says which
//! completed steps may have to run again if outputs change (see
//! [`crate::decider::Resumed`] for the rule the run then follows).

use std::collections::{BTreeMap, BTreeSet};

use cairn_events::{AiCostEstimate, Event, ResumePlan, RunResumed, SchemaViolation, StepCompleted};
use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::decider::{Policy, RunState, RunStatus, bare, decide, evolve, fold};
use crate::model::{StepKind, Workflow};
use crate::path::InstancePath;

/// What to resume and how.
#[derive(Debug, Clone)]
pub struct ResumeRequest {
    /// The step to resume from (default: the failed step).
    pub from: Option<String>,
    /// Which completed steps run again.
    pub policy: Policy,
    /// Inputs to change, merged over the run's.
    pub inputs: serde_json::Map<String, Value>,
    /// Allow what is otherwise refused: a cancelled run, HTTP steps whose
    /// requests are not idempotent.
    pub force: bool,
    /// Who asks.
    pub by: String,
    /// Why.
    pub reason: Option<String>,
    /// The time the plan's path is predicted at (what falls due by then);
    /// the engine sets its clock's now. Without it nothing falls due.
    pub now: Option<chrono::DateTime<Utc>>,
}

impl ResumeRequest {
    /// A `failed-only` resume from the failed step by `by`.
    pub fn new(by: &str) -> Self {
        ResumeRequest {
            from: None,
            policy: Policy::FailedOnly,
            inputs: serde_json::Map::new(),
            force: false,
            by: by.to_owned(),
            reason: None,
            now: None,
        }
    }
}

/// How a step fares in a plan, against the run's original path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    /// Completed before; its output is kept.
    Kept,
    /// Runs again.
    Rerun,
    /// Completed before; runs again only if what it reads changes.
    RerunIfChanged,
    /// Was not reached before; is now.
    NewlyReached,
    /// Was reached before; is not now.
    NoLongerReached,
}

/// One line of a plan's diff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanLine {
    /// How the step fares.
    pub mark: Mark,
    /// Step instance.
    pub step: String,
    /// Its kind (`http`, `ai`, …).
    pub kind: String,
    /// Why, and what to know about it.
    pub note: String,
}

/// A resume plan: what `RunResumed` will record, and the diff shown to
/// whoever asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    /// The run.
    pub run_id: Uuid,
    /// Its workflow.
    pub workflow: String,
    /// The pinned version.
    pub workflow_version: u32,
    /// The run's status before the resume.
    pub status: String,
    /// The step resumed from.
    pub from_step: String,
    /// `failed-only` or `downstream`.
    pub policy: String,
    /// The plan `RunResumed` records.
    #[schemars(with = "Value")]
    pub plan: ResumePlan,
    /// Every step of the original and the planned path, in order.
    pub lines: Vec<PlanLine>,
    /// Things to know before resuming.
    pub warnings: Vec<String>,
    /// The inputs changed by the resume.
    pub inputs: Option<Value>,
    /// The stream version the plan was made at: the resume is recorded
    /// only if the run is still there.
    pub at_version: u64,
}

/// Why a run cannot be resumed (or forked) as asked; each says what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No run has this id.
    #[error("no run {run_id}")]
    UnknownRun {
        /// The id asked for.
        run_id: Uuid,
    },
    /// The run has not ended.
    #[error(
        "run {run_id} is still running{at}; only a run that ended can be resumed: wait for it to fail, or cancel it (`cairn cancel {run_id}`) and resume with --force"
    )]
    StillRunning {
        /// Run.
        run_id: Uuid,
        /// Where it is.
        at: String,
    },
    /// The run completed.
    #[error(
        "run {run_id} completed; a completed run is not resumed: fork it to run again from a step (`cairn fork {run_id} --at STEP`)"
    )]
    Completed {
        /// Run.
        run_id: Uuid,
    },
    /// The run was cancelled.
    #[error(
        "run {run_id} was cancelled{by}; a cancelled run is resumed only on purpose: add --force (`force: true`), or fork it"
    )]
    Cancelled {
        /// Run.
        run_id: Uuid,
        /// Who cancelled it.
        by: String,
    },
    /// Compensations undid the run's completed steps.
    #[error(
        "run {run_id} ran its compensations ({steps}), which undid completed steps; resuming would keep outputs whose effects were undone: fork it (`cairn fork {run_id} --at STEP`) or start a new run"
    )]
    Compensated {
        /// Run.
        run_id: Uuid,
        /// The compensation steps that ran.
        steps: String,
    },
    /// The pinned definition is gone.
    #[error(
        "run {run_id} is pinned to `{workflow}` version {version}, which {why}; a run resumes only on its own version: publish that version again, or start a new run on the latest"
    )]
    DefinitionGone {
        /// Run.
        run_id: Uuid,
        /// Workflow.
        workflow: String,
        /// Version.
        version: u32,
        /// What happened to it.
        why: String,
    },
    /// No such step.
    #[error("step `{step}` is not in `{workflow}` version {version}{hint}")]
    UnknownStep {
        /// The step asked for.
        step: String,
        /// Workflow.
        workflow: String,
        /// Version.
        version: u32,
        /// Did you mean / the steps there are.
        hint: String,
    },
    /// The step never ran in this run.
    #[error("step `{step}` was never reached in run {run_id}; {hint}")]
    NotReached {
        /// Run.
        run_id: Uuid,
        /// The step.
        step: String,
        /// What to do instead.
        hint: String,
    },
    /// A step that would run again says `resumable: false`.
    #[error(
        "step `{step}` is marked `resumable: false`, and this resume may run it again; fork the run before it (`cairn fork {run_id} --at STEP`) or start a new run"
    )]
    NotResumable {
        /// Run.
        run_id: Uuid,
        /// The step.
        step: String,
    },
    /// HTTP steps whose requests are not idempotent would be sent again.
    #[error(
        "the resume may send the request of {steps} again, which is not idempotent (a POST or PATCH): check that the service did not act on it, then add --force (`force: true`); or mark the step `idempotent: true`"
    )]
    NotIdempotent {
        /// The steps.
        steps: String,
    },
    /// A kept output breaks its step's contract.
    #[error(
        "the recorded output of step `{step}` no longer satisfies its output_contract ({}); run it again: resume --from {step} or --policy downstream", crate::contract::describe(.errors)
    )]
    KeptOutputBreaksContract {
        /// The step.
        step: String,
        /// Every violation.
        errors: Vec<SchemaViolation>,
    },
    /// The changed inputs break the workflow's inputs schema.
    #[error("the inputs do not satisfy the `inputs` schema of `{workflow}`: {}", crate::contract::describe(.errors))]
    InvalidInputs {
        /// Workflow.
        workflow: String,
        /// Every violation.
        errors: Vec<SchemaViolation>,
    },
    /// A child run: its parent decides.
    #[error(
        "run {run_id} is a child run of run {parent} (step `{step}`); the parent failed with it: resume the parent (`cairn resume {parent}`), which runs the step, and so a new child run, again"
    )]
    ChildRun {
        /// Run.
        run_id: Uuid,
        /// The parent run.
        parent: Uuid,
        /// The parent's step.
        step: String,
    },
    /// Something was recorded on the run after the plan was made (another resume).
    #[error(
        "run {run_id} changed while the resume was planned (another resume or answer was recorded at version {version}); nothing was recorded: look at it again (`cairn show {run_id}`) and plan anew"
    )]
    Conflict {
        /// Run.
        run_id: Uuid,
        /// The version it has now.
        version: u64,
    },
}

impl Refusal {
    /// A stable code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownRun { .. } => "unknown-run",
            Refusal::StillRunning { .. } => "run-running",
            Refusal::Completed { .. } => "run-completed",
            Refusal::Cancelled { .. } => "run-cancelled",
            Refusal::Compensated { .. } => "run-compensated",
            Refusal::DefinitionGone { .. } => "definition-gone",
            Refusal::UnknownStep { .. } => "unknown-step",
            Refusal::NotReached { .. } => "step-not-reached",
            Refusal::NotResumable { .. } => "not-resumable",
            Refusal::NotIdempotent { .. } => "not-idempotent",
            Refusal::KeptOutputBreaksContract { .. } => "kept-output-invalid",
            Refusal::InvalidInputs { .. } => "invalid-inputs",
            Refusal::ChildRun { .. } => "child-run",
            Refusal::Conflict { .. } => "conflict",
        }
    }
}

/// How every step instance ended in the recorded run, in order of first start.
struct Recorded {
    order: Vec<String>,
    /// `completed`, `failed`, `cancelled`, `skipped` (its guard was false),
    /// `caught` (failed, and a `catch` sent control on) or `open`.
    last: BTreeMap<String, &'static str>,
}

fn recorded(events: &[Event]) -> Recorded {
    let mut order = Vec::new();
    let mut last: BTreeMap<String, &'static str> = BTreeMap::new();
    for e in events {
        let (step, what) = match e {
            Event::StepStarted(x) => (&x.step_id, "open"),
            Event::StepKept(x) => (&x.step_id, "completed"),
            Event::StepCompleted(x) => (&x.step_id, "completed"),
            Event::StepFailed(x) => (&x.step_id, "failed"),
            Event::StepSkipped(x) if x.guard.is_some() => (&x.step_id, "skipped"),
            Event::ErrorCaught(x) => (&x.step_id, "caught"),
            Event::StepSkipped(x) => (&x.step_id, "cancelled"),
            _ => continue,
        };
        if !last.contains_key(step) {
            order.push(step.clone());
        }
        // A cancellation recorded after the step completed changes nothing.
        if !(what == "cancelled" && last.get(step) == Some(&"completed")) {
            last.insert(step.clone(), what);
        }
    }
    Recorded { order, last }
}

/// Plans a resume of the run whose events these are. Pure.
pub fn plan(w: &Workflow, events: &[Event], req: &ResumeRequest) -> Result<Plan, Refusal> {
    let s = fold(events);
    let run_id = s.run_id.unwrap_or_default();
    match s.status {
        RunStatus::NotStarted => return Err(Refusal::UnknownRun { run_id }),
        RunStatus::Running => {
            let at = s.cursor().step().map(|st| format!(" (at step `{st}`)")).unwrap_or_default();
            return Err(Refusal::StillRunning { run_id, at });
        }
        RunStatus::Completed => return Err(Refusal::Completed { run_id }),
        RunStatus::Cancelled if !req.force => {
            let by = events
                .iter()
                .rev()
                .find_map(|e| match e {
                    Event::RunCancelled(c) => Some(format!(" by {}", c.by)),
                    _ => None,
                })
                .unwrap_or_default();
            return Err(Refusal::Cancelled { run_id, by });
        }
        _ => {}
    }
    if let Some(p) = &s.parent {
        return Err(Refusal::ChildRun { run_id, parent: p.run_id, step: p.step_id.clone() });
    }
    // A saga whose undo stopped at a failed compensation: resume the undo.
    if let Some(c) = &s.compensating
        && c.done < c.queue.len()
        && s.status == RunStatus::Failed
    {
        return compensation_plan(&s, c, req, run_id);
    }
    if s.compensated {
        // Only what ran: a compensation queued after one that failed never did.
        let mut queued: BTreeSet<&str> = BTreeSet::new();
        let mut ran: Vec<String> = Vec::new();
        for e in events {
            match e {
                Event::CompensationStarted(c) => queued.extend(c.compensations.iter().map(String::as_str)),
                Event::StepCompleted(x) if queued.contains(x.step_id.as_str()) => ran.push(format!("`{}`", x.step_id)),
                Event::StepFailed(x) if queued.contains(x.step_id.as_str()) => {
                    ran.push(format!("`{}` (failed)", x.step_id));
                }
                _ => {}
            }
        }
        let steps = if ran.is_empty() { "none completed".to_owned() } else { ran.join(", ") };
        return Err(Refusal::Compensated { run_id, steps });
    }
    let rec = recorded(events);
    let failed: Vec<String> = rec
        .order
        .iter()
        .filter(|i| matches!(rec.last.get(*i), Some(&"failed" | &"open" | &"cancelled")))
        .cloned()
        .collect();
    let from = resolve_from(w, &s, &rec, req, &failed)?;

    // The changed inputs, checked against the schema.
    let mut inputs = (*s.inputs).clone();
    let mut changed_inputs = BTreeSet::new();
    if let Value::Object(m) = &mut inputs {
        for (k, v) in &req.inputs {
            if m.get(k) != Some(v) {
                changed_inputs.insert(k.clone());
            }
            m.insert(k.clone(), v.clone());
        }
    }
    if let Some(schema) = &w.inputs_schema {
        let errors = crate::contract::violations(schema, &inputs);
        if !errors.is_empty() {
            return Err(Refusal::InvalidInputs { workflow: w.name.clone(), errors });
        }
    }

    let completed: Vec<&String> = rec.order.iter().filter(|i| rec.last.get(*i) == Some(&"completed")).collect();
    // What runs again for sure.
    let mut rerun: BTreeSet<String> = failed.iter().cloned().collect();
    rerun.insert(from.clone());
    if req.policy == Policy::Downstream {
        let inside = |i: &str| InstancePath::new(i).in_iteration_of(&from) || within(&s, i, &from);
        let origins: Vec<String> = if failed.contains(&from) { failed.clone() } else { vec![from.clone()] };
        let after = downstream(w, &s, &origins);
        for c in &completed {
            if after.contains(c.as_str()) || inside(c) {
                rerun.insert((*c).clone());
            }
        }
    }
    // What may run again: completed steps the resumed run enters again
    // (from the top-level step holding the one resumed from on) that read
    // what runs again.
    let zone: BTreeSet<&String> = {
        let top = top_of(&s, &from);
        let start = rec.order.iter().position(|i| *i == top).unwrap_or(0);
        rec.order[start..].iter().collect()
    };
    let mut maybe: BTreeSet<String> = BTreeSet::new();
    if req.policy == Policy::FailedOnly {
        for c in &completed {
            if rerun.contains(c.as_str()) || !zone.contains(c) {
                continue;
            }
            let Some(st) = w.step(bare(c)) else { continue };
            let r = &st.reads;
            let hit = r.inputs.iter().any(|i| changed_inputs.contains(i))
                || r.steps.iter().any(|x| rerun.iter().chain(&maybe).any(|y| bare(y) == x))
                || (r.all && (!rerun.is_empty() || !changed_inputs.is_empty()));
            if hit {
                maybe.insert((*c).clone());
            }
        }
    }
    let plan_rerun: Vec<String> = rec.order.iter().filter(|i| rerun.contains(*i)).cloned().collect();
    let mut rerun_list = plan_rerun.clone();
    if !rec.order.contains(&from) {
        rerun_list.insert(0, from.clone());
    }

    // Refusals: steps that must not run again, requests that must not be sent twice.
    let may_run: Vec<&String> = rerun_list.iter().chain(maybe.iter()).collect();
    for i in &may_run {
        if w.step(bare(i)).is_some_and(|st| !st.resumable) {
            return Err(Refusal::NotResumable { run_id, step: (*i).clone() });
        }
    }
    let not_idempotent: Vec<String> = may_run
        .iter()
        .filter(|i| w.step(bare(i)).is_some_and(|st| matches!(st.kind, StepKind::Http { idempotent: false, .. })))
        .map(|i| (*i).clone())
        .collect();
    if !not_idempotent.is_empty() && !req.force {
        return Err(Refusal::NotIdempotent {
            steps: not_idempotent.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", "),
        });
    }
    // Every kept output must still satisfy its contract.
    for c in &completed {
        if rerun.contains(c.as_str()) || maybe.contains(c.as_str()) {
            continue;
        }
        if let (Some(st), Some(out)) = (w.step(bare(c)), s.outputs.get(c.as_str()))
            && let Some(contract) = &st.output_contract
        {
            let errors = crate::contract::violations(contract, out);
            if !errors.is_empty() {
                return Err(Refusal::KeptOutputBreaksContract { step: (*c).clone(), errors });
            }
        }
    }

    let mut plan = ResumePlan {
        rerun: rerun_list.clone(),
        kept: completed
            .iter()
            .filter(|c| !rerun.contains(c.as_str()) && !maybe.contains(c.as_str()))
            .map(|c| (*c).clone())
            .collect(),
        rerun_if_changed: rec.order.iter().filter(|i| maybe.contains(*i)).cloned().collect(),
        failed: failed.clone(),
        not_idempotent,
        ..ResumePlan::default()
    };
    for i in &may_run {
        let Some(st) = w.step(bare(i)) else { continue };
        match &st.kind {
            StepKind::Ai(a) => {
                let spent = s.ai.get(i.as_str()).map_or(0, |p| p.spent_micros);
                let cost = spent as f64 / 1_000_000.0;
                plan.estimated_cost += cost;
                plan.ai_costs.push(AiCostEstimate { step_id: (*i).clone(), model: a.model.clone(), cost });
            }
            StepKind::Approval(_) if rec.last.get(i.as_str()) == Some(&"completed") => {
                plan.stale_approvals.push((*i).clone());
            }
            _ => {}
        }
    }

    // The path the resumed run would take, if what runs again reproduces its output.
    let resumed = RunResumed {
        from_step: from.clone(),
        policy: req.policy.name().to_owned(),
        plan: plan.clone(),
        by: req.by.clone(),
        reason: req.reason.clone(),
        inputs: (!req.inputs.is_empty()).then(|| Value::Object(req.inputs.clone())),
        forced: req.force,
    };
    let (path, stopped) = simulate(w, &s, &resumed, req.now.unwrap_or(chrono::DateTime::UNIX_EPOCH));
    let before: BTreeSet<&String> = rec.order.iter().collect();
    let after: BTreeSet<&String> = path.iter().collect();
    let reentered_from = rec.order.iter().position(|i| i == &top_of(&s, &from)).unwrap_or(0);
    plan.newly_reached = path.iter().filter(|i| !before.contains(i)).cloned().collect();
    plan.no_longer_reached = rec.order[reentered_from..]
        .iter()
        .filter(|i| !after.contains(i) && s.scope_of(i).is_empty())
        .cloned()
        .collect();
    plan.rerun.retain(|i| !plan.no_longer_reached.contains(i));

    let kind_of = |i: &str| w.step(bare(i)).map_or("?", |st| st.kind.name()).to_owned();
    let mut lines = Vec::new();
    for i in &rec.order {
        let why = |m: &str| match rec.last.get(i.as_str()) {
            Some(&"failed") => format!("{m}: it failed"),
            Some(&"open" | &"cancelled") => format!("{m}: it did not finish"),
            _ => m.to_owned(),
        };
        let (mark, mut note) = if plan.no_longer_reached.contains(i) {
            (Mark::NoLongerReached, why("no longer reached"))
        } else if rerun.contains(i) {
            let m = if *i == from { "runs again: resumed from here" } else { "runs again" };
            (Mark::Rerun, why(m))
        } else if rec.last.get(i.as_str()) == Some(&"caught") {
            (
                Mark::RerunIfChanged,
                "failed and its `catch` handled it: it runs again if the resumed run reaches it".to_owned(),
            )
        } else if rec.last.get(i.as_str()) == Some(&"skipped") {
            let guard = w.step(bare(i)).and_then(|st| st.when.as_ref()).map_or("", |g| g.source());
            (
                Mark::RerunIfChanged,
                format!(
                    "was skipped (its guard `{guard}` was false): the guard is checked again if the resumed run reaches it"
                ),
            )
        } else if maybe.contains(i) {
            let st = w.step(bare(i));
            let reads: Vec<String> = st.map(|st| st.reads.steps.iter().cloned().collect()).unwrap_or_default();
            (Mark::RerunIfChanged, format!("runs again only if what it reads changes (reads {})", reads.join(", ")))
        } else {
            (Mark::Kept, "output kept".to_owned())
        };
        if plan.not_idempotent.contains(i) {
            note.push_str("; its request is not idempotent (sent again only with --force)");
        }
        if plan.stale_approvals.contains(i) {
            note.push_str("; approved content may change: the approval is requested again if it runs");
        }
        if let Some(c) = plan.ai_costs.iter().find(|c| &c.step_id == i) {
            note.push_str(&format!("; AI ({}) cost last time {:.6}", c.model, c.cost));
        }
        lines.push(PlanLine { mark, step: i.clone(), kind: kind_of(i), note });
    }
    for i in &plan.newly_reached {
        lines.push(PlanLine {
            mark: Mark::NewlyReached,
            step: i.clone(),
            kind: kind_of(i),
            note: "newly reached".into(),
        });
    }
    let mut warnings = Vec::new();
    if let Some(st) = stopped {
        warnings.push(format!(
            "the path past `{st}` depends on what it returns this time; the steps after it are a prediction"
        ));
    }
    if !plan.stale_approvals.is_empty() {
        warnings.push(format!("approvals that may be requested again: {}", plan.stale_approvals.join(", ")));
    }
    if s.status == RunStatus::Cancelled {
        warnings.push("the run was cancelled; --force resumes it anyway".into());
    }
    let before_stale: Vec<&str> = completed
        .iter()
        .filter(|c| !zone.contains(*c))
        .filter(|c| w.step(bare(c)).is_some_and(|st| st.reads.inputs.iter().any(|i| changed_inputs.contains(i))))
        .map(|c| c.as_str())
        .collect();
    if !before_stale.is_empty() {
        warnings.push(format!(
            "{} read a changed input but come before `{from}`, so they keep their outputs; resume from the first of them to run them again",
            before_stale.join(", ")
        ));
    }
    Ok(Plan {
        run_id,
        workflow: s.workflow.clone(),
        workflow_version: s.workflow_version,
        status: format!("{:?}", s.status).to_lowercase(),
        from_step: from,
        policy: req.policy.name().to_owned(),
        plan,
        lines,
        warnings,
        inputs: resumed.inputs,
        at_version: s.version,
    })
}

/// The plan that finishes a saga's undo: the compensation that failed runs
/// again, then those queued after it; the ones that completed stand; the
/// run then fails with its original error, as a saga does. Inputs cannot
/// change (the undo reads what the run did) and `from` can only name the
/// failed compensation.
fn compensation_plan(
    s: &RunState,
    c: &crate::decider::Compensating,
    req: &ResumeRequest,
    run_id: Uuid,
) -> Result<Plan, Refusal> {
    let failed = c.queue[c.done].clone();
    if let Some(asked) = req.from.as_deref()
        && asked != failed
    {
        return Err(Refusal::NotReached {
            run_id,
            step: asked.to_owned(),
            hint: format!(
                "the run failed while undoing its work, at compensation `{failed}`: a resume finishes the undo from there (omit --from)"
            ),
        });
    }
    if !req.inputs.is_empty() {
        return Err(Refusal::NotReached {
            run_id,
            step: failed.clone(),
            hint: "a resume that finishes an undo takes no new inputs: the compensations undo what the run did with the inputs it had".to_owned(),
        });
    }
    let mut lines = Vec::new();
    for (i, id) in c.queue.iter().enumerate() {
        let (mark, note) = match i.cmp(&c.done) {
            std::cmp::Ordering::Less => (Mark::Kept, "compensation completed: what it undid stays undone".to_owned()),
            std::cmp::Ordering::Equal => {
                (Mark::Rerun, "runs again: resumed from here (the compensation failed)".to_owned())
            }
            std::cmp::Ordering::Greater => (Mark::NewlyReached, "compensation still to run".to_owned()),
        };
        lines.push(PlanLine { mark, step: id.clone(), kind: "compensation".to_owned(), note });
    }
    let (kind, message, step) = &c.error;
    let plan = ResumePlan {
        rerun: vec![failed.clone()],
        kept: c.queue[..c.done].to_vec(),
        failed: vec![failed.clone()],
        newly_reached: c.queue[c.done + 1..].to_vec(),
        ..ResumePlan::default()
    };
    Ok(Plan {
        run_id,
        workflow: s.workflow.clone(),
        workflow_version: s.workflow_version,
        status: format!("{:?}", s.status).to_lowercase(),
        from_step: failed,
        policy: req.policy.name().to_owned(),
        plan,
        lines,
        warnings: vec![format!(
            "the run failed at {} ({kind}: {message}) and was undoing its work; this resume finishes the undo, then the run fails again with that error, as a saga does",
            step.as_deref().map_or("a step".to_owned(), |st| format!("`{st}`"))
        )],
        inputs: None,
        at_version: s.version,
    })
}

/// The step instance to resume from: as asked, else the failed one.
fn resolve_from(
    w: &Workflow,
    s: &RunState,
    rec: &Recorded,
    req: &ResumeRequest,
    failed: &[String],
) -> Result<String, Refusal> {
    let run_id = s.run_id.unwrap_or_default();
    let Some(asked) = &req.from else {
        // The step the run failed at (for a container, the container: its
        // failed insides are in `failed`); for a cancelled run, the last open one.
        if let Some((_, _, Some(step))) = &s.error {
            return Ok(step.clone());
        }
        return failed.iter().find(|f| s.scope_of(f).is_empty()).or(failed.first()).cloned().ok_or_else(|| {
            Refusal::NotReached {
                run_id,
                step: "?".into(),
                hint: "the run has no failed step: name one with --from STEP".into(),
            }
        });
    };
    if rec.last.contains_key(asked) {
        return Ok(asked.clone());
    }
    if w.step(bare(asked)).is_none() {
        let hint = crate::lang::did_you_mean(asked, w.step_ids())
            .map(|d| format!("; did you mean `{d}`?"))
            .unwrap_or_else(|| {
                let mut ids: Vec<&str> = w.step_ids().collect();
                ids.sort_unstable();
                format!("; its steps: {}", ids.join(", "))
            });
        return Err(Refusal::UnknownStep {
            step: asked.clone(),
            workflow: w.name.clone(),
            version: s.workflow_version,
            hint,
        });
    }
    let instances: Vec<&String> = rec.order.iter().filter(|i| bare(i) == asked).collect();
    match instances.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Refusal::NotReached {
            run_id,
            step: asked.clone(),
            hint: format!(
                "resume from a step it reached ({}), or fork it",
                rec.order.iter().filter(|i| s.scope_of(i).is_empty()).cloned().collect::<Vec<_>>().join(", ")
            ),
        }),
        many => Err(Refusal::NotReached {
            run_id,
            step: asked.clone(),
            hint: format!(
                "it ran as {}: name one of them, or resume from the step that holds them",
                many.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

/// The top-level step holding an instance.
/// The top-level step that holds a step instance (itself when top-level).
pub fn top_of(s: &RunState, instance: &str) -> String {
    crate::decider::resume_ancestors(s, s.scope_of(instance)).pop().unwrap_or_else(|| instance.to_owned())
}

/// Whether `instance` runs inside the container instance `container`.
fn within(s: &RunState, instance: &str, container: &str) -> bool {
    crate::decider::resume_ancestors(s, s.scope_of(instance)).iter().any(|c| c == container)
}

/// Every step instance after the origins in control flow: the rest of each
/// one's sequence, then what follows its enclosing containers.
fn downstream(w: &Workflow, s: &RunState, origins: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for o in origins {
        let mut at = o.clone();
        loop {
            let pre = InstancePath::new(&at).prefix().to_owned();
            for id in reachable(w, bare(&at)) {
                out.insert(crate::path::join(&pre, &id));
            }
            let scope = s.scope_of(&at).to_owned();
            match crate::decider::container_of_key(&scope) {
                Some(c) => at = c.to_owned(),
                None => break,
            }
        }
    }
    out
}

/// Step ids reachable after `id` within its sequence, following every jump.
fn reachable(w: &Workflow, id: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![id.to_owned()];
    while let Some(cur) = todo.pop() {
        let Some(st) = w.step(&cur) else { continue };
        let mut next: Vec<String> = Vec::new();
        if let crate::model::Target::Step(t) = &st.then {
            next.push(t.clone());
        }
        match &st.kind {
            StepKind::Branch { then, otherwise, .. } => {
                next.extend([then, otherwise].iter().map(|t| t.name().to_owned()))
            }
            StepKind::Switch { cases, default } => {
                next.extend(cases.iter().map(|(_, t)| t.name().to_owned()));
                next.push(default.name().to_owned());
            }
            _ => {}
        }
        next.extend(st.catch.iter().map(|c| c.next.name().to_owned()));
        for n in next {
            if n != "end" && w.block_of(&n) == w.block_of(id) && seen.insert(n.clone()) {
                todo.push(n);
            }
        }
    }
    seen
}

/// The instances a resumed run would start or keep, in order, supposing
/// each step that runs again returns its recorded output; and the first
/// step whose outcome cannot be supposed (it never completed), if any.
fn simulate(
    w: &Workflow,
    s: &RunState,
    resumed: &RunResumed,
    now: chrono::DateTime<Utc>,
) -> (Vec<String>, Option<String>) {
    let mut state = evolve(s.clone(), &Event::RunResumed(resumed.clone()));
    let prior = s.outputs.clone();
    let mut path: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stopped: Option<String> = None;
    for _ in 0..10_000 {
        let d = decide(w, &state, now);
        let events: Vec<Event> = if !d.append.is_empty() {
            d.append
        } else if !d.execute.is_empty() {
            let mut out = Vec::new();
            for ex in &d.execute {
                let output = match prior.get(&ex.step_id) {
                    Some(o) => (**o).clone(),
                    None => {
                        // Not known before it runs: suppose it returns nothing.
                        stopped.get_or_insert_with(|| ex.step_id.clone());
                        Value::Null
                    }
                };
                out.push(Event::StepCompleted(StepCompleted {
                    step_id: ex.step_id.clone(),
                    attempt: ex.attempt,
                    output,
                    duration_ms: 0,
                }));
            }
            out
        } else {
            // A wait or retry: its outcome is known (the step completes).
            match state.threads.values().find_map(|t| match &t.cursor {
                crate::decider::Cursor::Waiting { step, .. } | crate::decider::Cursor::RetryWait { step, .. } => {
                    Some(step.clone())
                }
                _ => None,
            }) {
                Some(step) if d.wake_at.is_some() => {
                    let output = prior.get(&step).map(|o| (**o).clone()).unwrap_or(Value::Null);
                    vec![Event::StepCompleted(StepCompleted {
                        attempt: state.attempts.get(&step).copied().unwrap_or(1),
                        step_id: step,
                        output,
                        duration_ms: 0,
                    })]
                }
                _ => break,
            }
        };
        for e in &events {
            let step = match e {
                Event::StepStarted(x) => Some(&x.step_id),
                Event::StepKept(x) => Some(&x.step_id),
                _ => None,
            };
            if let Some(step) = step
                && seen.insert(step.clone())
            {
                path.push(step.clone());
            }
            if let Event::StepFailed(f) = e {
                return (path, stopped.or(Some(f.step_id.clone())));
            }
            state = evolve(state, e);
        }
        if state.status.is_terminal() {
            break;
        }
    }
    (path, stopped)
}
