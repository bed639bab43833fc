//! Resume and fork, carried out: the plan made by
//! [`cairn_core::resume_plan`] recorded as `RunResumed` at the version it
//! was made at; a fork started as a new run carrying over the outputs
//! recorded before a step.

use cairn_events::{Event, ExpectedVersion, ForkOrigin, NewEvent, RunResumed, StepKept};
use serde_json::Value;
use uuid::Uuid;

use cairn_core::decider::{RunState, bare, fold};
use cairn_core::model::{StepKind, Workflow};
use cairn_core::resume_plan::top_of;
pub use cairn_core::resume_plan::{Mark, Plan, PlanLine, Refusal, ResumeRequest, plan};

use crate::error::RunError;
use crate::runner::Engine;

/// Why a resume or a fork did not happen: the runtime failed, or the plan
/// refused (each refusal says what to do instead).
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The runner failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The plan refused.
    #[error(transparent)]
    Refused(#[from] Refusal),
}

impl ResumeError {
    /// A stable code for the API and the CLI.
    pub fn code(&self) -> &'static str {
        match self {
            ResumeError::Run(r) => r.code(),
            ResumeError::Refused(r) => r.code(),
        }
    }
}

impl Engine {
    /// Plans a resume of a run without recording anything.
    pub async fn plan_resume(&self, run_id: Uuid, req: &ResumeRequest) -> Result<Plan, ResumeError> {
        let events = self.events(run_id).await?;
        let w = self.pinned(run_id, &fold(&events)).await?;
        Ok(plan(
            &w,
            &events,
            &ResumeRequest { now: Some(req.now.unwrap_or_else(|| self.fx.clock.now())), ..req.clone() },
        )?)
    }

    /// Plans and records a resume (`RunResumed`), appended only if nothing
    /// was recorded on the run since it was read: of two concurrent resumes
    /// one wins and the other gets [`ResumeError::Conflict`]. The run is
    /// then driven like any other ([`Engine::drive`]).
    pub async fn resume(&self, run_id: Uuid, req: &ResumeRequest) -> Result<Plan, ResumeError> {
        let p = self.plan_resume(run_id, req).await?;
        self.record_resume(&p, req).await?;
        Ok(p)
    }

    /// Records a plan made by [`Engine::plan_resume`] (and shown to whoever
    /// asked) exactly as it is, if the run has not changed since it was made.
    pub async fn record_resume(&self, p: &Plan, req: &ResumeRequest) -> Result<(), ResumeError> {
        let run_id = p.run_id;
        let e = Event::RunResumed(RunResumed {
            from_step: p.from_step.clone(),
            policy: p.policy.clone(),
            plan: p.plan.clone(),
            by: req.by.clone(),
            reason: req.reason.clone(),
            inputs: p.inputs.clone(),
            forced: req.force,
        });
        let new = vec![NewEvent::from_event(&e, crate::trace::metadata(&req.by, run_id, &e))];
        match self.append_due_now(run_id, ExpectedVersion::Exact(p.at_version), new).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_conflict() => {
                let version = self.state(run_id).await.map(|s| s.version).unwrap_or(p.at_version);
                Err(Refusal::Conflict { run_id, version }.into())
            }
            Err(e) => Err(RunError::from(e).into()),
        }
    }

    /// The definition a run is pinned to; one that is gone or no longer
    /// compiles is [`Refusal::DefinitionGone`].
    async fn pinned(&self, run_id: Uuid, s: &RunState) -> Result<std::sync::Arc<Workflow>, ResumeError> {
        self.recorded_definition(&s.workflow, s.workflow_version).await.map_err(|e| match e {
            RunError::Definition { name, version, message } => {
                Refusal::DefinitionGone { run_id, workflow: name, version, why: message }.into()
            }
            e => ResumeError::Run(e),
        })
    }

    /// Every event of a run, decoded.
    pub async fn events(&self, run_id: Uuid) -> Result<Vec<Event>, RunError> {
        let recorded = self.store.read_stream(&cairn_events::run_stream(run_id), 1).await?;
        if recorded.is_empty() {
            return Err(RunError::UnknownRun(run_id));
        }
        recorded.iter().map(|e| Event::decode(e).map_err(RunError::from)).collect()
    }

    /// Forks a run: a new run of the same workflow version whose
    /// `RunStarted` names the source run and position, carrying over (as
    /// `StepKept`) the outputs the source had recorded before `at` first
    /// started; it runs from `at` on, with `inputs` merged over the
    /// source's. The source run is not changed. Returns the new run's id.
    pub async fn fork(
        &self,
        source: Uuid,
        at: &str,
        inputs: serde_json::Map<String, Value>,
        by: &str,
    ) -> Result<Uuid, ResumeError> {
        let events = self.events(source).await?;
        let s = fold(&events);
        let w = self.pinned(source, &s).await?;
        let Some(st) = w.step(at) else {
            let ids: Vec<&str> = w.steps.iter().map(|s| s.id.as_str()).collect();
            let hint = cairn_core::lang::did_you_mean(at, ids.iter().copied())
                .map(|d| format!("; did you mean `{d}`?"))
                .unwrap_or_else(|| format!("; its top-level steps: {}", ids.join(", ")));
            return Err(Refusal::UnknownStep {
                step: at.to_owned(),
                workflow: w.name.clone(),
                version: s.workflow_version,
                hint,
            }
            .into());
        };
        if w.block_of(&st.id) != Some(&cairn_core::model::Block::Top) {
            let holder = top_of(&s, at);
            return Err(Refusal::NotReached {
                run_id: source,
                step: at.to_owned(),
                hint: format!("a fork starts at a top-level step: fork at the step that holds it (`{holder}`)"),
            }
            .into());
        }
        let first = w.steps.first().is_some_and(|f| f.id == at);
        let cut =
            events.iter().position(|e| matches!(e, Event::StepStarted(x) if x.step_id == at && x.scope.is_empty()));
        let cut = match (cut, first) {
            (Some(c), _) => c,
            (None, true) => 1,
            (None, false) => {
                let reached: Vec<&str> =
                    w.steps.iter().filter(|x| s.visits.contains_key(&x.id)).map(|x| x.id.as_str()).collect();
                return Err(Refusal::NotReached {
                    run_id: source,
                    step: at.to_owned(),
                    hint: format!("fork at a step it reached ({})", reached.join(", ")),
                }
                .into());
            }
        };
        let before = fold(&events[..cut]);
        let mut merged = (*before.inputs).clone();
        if let Value::Object(m) = &mut merged {
            m.extend(inputs);
        }
        let reason = format!("carried over from run {source}");
        let mut carried = Vec::new();
        for inst in &before.completed {
            let Some(output) = before.outputs.get(inst) else { continue };
            let target = w
                .step(bare(inst))
                .filter(|x| matches!(x.kind, StepKind::Branch { .. } | StepKind::Switch { .. }))
                .and_then(|_| output.get("target").and_then(Value::as_str).map(str::to_owned));
            carried.push(Event::StepKept(StepKept {
                step_id: inst.clone(),
                output: (**output).clone(),
                target,
                reason: reason.clone(),
                scope: before.scope_of(inst).to_owned(),
            }));
        }
        let origin = ForkOrigin { run_id: source, stream_version: cut as u64, step_id: at.to_owned() };
        let id = Uuid::now_v7();
        self.check_children(&w).await?;
        let from = crate::runner::Origin { fork: Some((origin, carried)), ..Default::default() };
        self.start_run(&w, s.workflow_version, merged, by, id, from, false).await?;
        Ok(id)
    }
}
