//! What people send back: form submissions and approval decisions. Each is
//! checked against the request as it was recorded (token, assignees or
//! approvers, fields, content hash) and appended with the expected version
//! together with the pure progress it allows, so of two racing answers
//! exactly one is recorded; the other gets [`HumanError::Conflict`] naming
//! the event that won.

use cairn_events::{ApprovalDecided, Event, ExpectedVersion, InputSubmitted, NewEvent, RecordedEvent};
use serde_json::Value;
use uuid::Uuid;

use crate::error::RunError;
use crate::runner::Engine;
use cairn_core::decider::{HumanWait, RunState, evolve};
use cairn_core::human::{Field, FieldError};

/// A form submission.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Who submits (an identity).
    pub by: String,
    /// The request's resume token.
    pub token: String,
    /// Field values.
    pub values: Value,
}

/// An approval decision.
#[derive(Debug, Clone)]
pub struct Vote {
    /// Who decides (an identity).
    pub by: String,
    /// The request's resume token.
    pub token: String,
    /// Approve (`true`) or reject.
    pub approve: bool,
    /// Why.
    pub comment: Option<String>,
    /// The hash of the content the approver was shown; refused when the
    /// request's content is no longer that.
    pub content_hash: Option<String>,
    /// The approval's fields (an object, or `null` for none), checked like
    /// a form's: approving must satisfy them; rejecting may give them.
    pub values: Value,
}

impl Vote {
    /// A decision with no comment, no content hash to check and no values.
    pub fn new(by: impl Into<String>, token: impl Into<String>, approve: bool) -> Vote {
        Vote { by: by.into(), token: token.into(), approve, comment: None, content_hash: None, values: Value::Null }
    }
}

/// The event that got there first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Winner {
    /// Its type.
    pub event_type: String,
    /// Its version in the run's stream.
    pub stream_version: u64,
    /// Its global position.
    pub global_position: u64,
    /// Its id.
    pub event_id: String,
    /// Who recorded it.
    pub by: String,
}

impl std::fmt::Display for Winner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} by {} (stream version {}, position {}, event {})",
            self.event_type, self.by, self.stream_version, self.global_position, self.event_id
        )
    }
}

/// Why a submission or decision was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum HumanError {
    /// The run could not be read.
    #[error(transparent)]
    Run(#[from] RunError),
    /// Nothing waits at that step.
    #[error("run {run_id} has no {kind} waiting at step `{step}`{}", waiting_hint(.waiting))]
    NotWaiting {
        /// The run.
        run_id: Uuid,
        /// The step asked for.
        step: String,
        /// `form` or `approval`.
        kind: &'static str,
        /// What does wait, for the message.
        waiting: Vec<String>,
    },
    /// The token does not belong to the request.
    #[error("the resume token is not the one for step `{step}`; use the token shown with the request")]
    BadToken {
        /// The step.
        step: String,
    },
    /// The identity may not answer this request.
    #[error("`{by}` may not {action} step `{step}`; only {} may", allowed.join(", "))]
    NotAllowed {
        /// Who tried.
        by: String,
        /// The step.
        step: String,
        /// `submit` or `decide`.
        action: &'static str,
        /// Who may.
        allowed: Vec<String>,
    },
    /// The values break the form's rules.
    #[error("the submission for `{step}` is not valid: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The step.
        step: String,
        /// Every problem, by field.
        errors: Vec<FieldError>,
    },
    /// The approver saw other content than what is now to approve.
    #[error("the content of `{step}` is not what was shown (shown {shown}, now {current}); look at it again")]
    ContentChanged {
        /// The step.
        step: String,
        /// The hash the approver saw.
        shown: String,
        /// The hash now.
        current: String,
    },
    /// Someone else got there first.
    #[error("step `{step}` was already answered: {winner}")]
    Conflict {
        /// The step.
        step: String,
        /// The event that won.
        winner: Winner,
    },
}

fn waiting_hint(w: &[String]) -> String {
    if w.is_empty() { "; nothing in it waits for people".into() } else { format!("; waiting: {}", w.join(", ")) }
}

impl HumanError {
    /// A stable code for the kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            HumanError::Run(r) => r.code(),
            HumanError::NotWaiting { .. } => "not-waiting",
            HumanError::BadToken { .. } => "bad-token",
            HumanError::NotAllowed { .. } => "not-allowed",
            HumanError::Invalid { .. } => "invalid-submission",
            HumanError::ContentChanged { .. } => "content-changed",
            HumanError::Conflict { .. } => "already-answered",
        }
    }
}

/// What was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The stream version of the submission or decision.
    pub stream_version: u64,
    /// Its global position.
    pub global_position: u64,
}

enum Answer<'a> {
    Form(&'a Submission),
    Approval(&'a Vote),
}

impl Answer<'_> {
    fn by(&self) -> &str {
        match self {
            Answer::Form(s) => &s.by,
            Answer::Approval(v) => &v.by,
        }
    }
}

impl Engine {
    /// Drives a run after an answer and then, once it has ended, each parent
    /// waiting for it; returns the state of the top-most run driven.
    pub async fn drive_after_answer(
        &self,
        run_id: Uuid,
        observer: crate::runner::Observer<'_>,
    ) -> Result<(Uuid, RunState), RunError> {
        self.drive_chain(run_id, observer, false).await
    }

    /// Like [`Engine::drive_after_answer`], but returns instead of sleeping
    /// when all a run has left is a timer ([`Engine::wake_at`] tells when):
    /// for a host that keeps its own timers, so a waiting run holds no task
    /// and is not re-read while it waits.
    pub async fn drive_after_answer_until_idle(
        &self,
        run_id: Uuid,
        observer: crate::runner::Observer<'_>,
    ) -> Result<(Uuid, RunState), RunError> {
        self.drive_chain(run_id, observer, true).await
    }

    async fn drive_chain(
        &self,
        run_id: Uuid,
        observer: crate::runner::Observer<'_>,
        until_idle: bool,
    ) -> Result<(Uuid, RunState), RunError> {
        let mut id = run_id;
        loop {
            let state = if until_idle {
                self.drive_until_idle(id, &mut *observer).await?
            } else {
                self.drive(id, &mut *observer).await?
            };
            match state.parent.clone() {
                Some(p) if state.status.is_terminal() => id = p.run_id,
                _ => return Ok((id, state)),
            }
        }
    }

    /// Everything a run waits for from people, its child runs' included:
    /// (run, step, request).
    pub async fn waiting(&self, run_id: Uuid) -> Result<Vec<(Uuid, String, HumanWait)>, RunError> {
        let mut out = Vec::new();
        let mut todo = vec![run_id];
        while let Some(id) = todo.pop() {
            let s = self.state(id).await?;
            out.extend(s.waiting_for_people().into_iter().map(|(step, h)| (id, step.to_owned(), h.clone())));
            todo.extend(s.children_awaited());
        }
        Ok(out)
    }

    /// Records a form submission and the progress it allows; drive the run
    /// afterwards for its effects.
    pub async fn submit(&self, run_id: Uuid, step: &str, s: &Submission) -> Result<Recorded, HumanError> {
        self.answer(run_id, step, Answer::Form(s), false).await
    }

    /// Records an approval decision and the progress it allows.
    pub async fn decide_approval(&self, run_id: Uuid, step: &str, v: &Vote) -> Result<Recorded, HumanError> {
        self.answer(run_id, step, Answer::Approval(v), false).await
    }

    /// [`Engine::submit`] for a caller whose identity was proven otherwise
    /// (an API key): no resume token is needed (`s.token` is ignored); the
    /// assignees are checked as always. The request is the one recorded in
    /// the same read the answer is checked against.
    pub async fn submit_as_caller(&self, run_id: Uuid, step: &str, s: &Submission) -> Result<Recorded, HumanError> {
        self.answer(run_id, step, Answer::Form(s), true).await
    }

    /// [`Engine::decide_approval`] for a caller whose identity was proven
    /// otherwise (an API key): no resume token is needed; the approvers are
    /// checked as always.
    pub async fn decide_as_caller(&self, run_id: Uuid, step: &str, v: &Vote) -> Result<Recorded, HumanError> {
        self.answer(run_id, step, Answer::Approval(v), true).await
    }

    /// How long an answer waits for a request that its step has started but
    /// not yet recorded (the run was just started or resumed by another
    /// process): whoever can see the step can answer it.
    const REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

    async fn answer(&self, run_id: Uuid, step: &str, a: Answer<'_>, proven: bool) -> Result<Recorded, HumanError> {
        let since = std::time::Instant::now();
        let stream = cairn_events::run_stream(run_id);
        let kind = match a {
            Answer::Form(_) => "form",
            Answer::Approval(_) => "approval",
        };
        loop {
            let recorded = self.store.read_stream(&stream, 1).await.map_err(RunError::from)?;
            if recorded.is_empty() {
                return Err(RunError::UnknownRun(run_id).into());
            }
            let mut state = RunState::default();
            let mut decoded = Vec::with_capacity(recorded.len());
            for r in &recorded {
                let e = Event::decode(r).map_err(RunError::from)?;
                state = evolve(state, &e);
                decoded.push(e);
            }
            let open = state
                .waiting_for_people()
                .into_iter()
                .find(|(i, h)| *i == step && h.kind == kind)
                .map(|(_, h)| h.clone());
            let Some(h) = open else {
                if let Some(winner) = winner(&recorded, &decoded, step, a.by(), None) {
                    return Err(HumanError::Conflict { step: step.to_owned(), winner });
                }
                // Started, its request about to be recorded: wait for it
                // (only for a step of the kind answered whose request is not
                // recorded yet; a form's answer to an approval is refused now).
                let requested =
                    state.people.get(step).is_some_and(|h| h.attempt > 0 && h.attempt == state.attempt_of(step));
                let about_to_ask = state.in_flight(step) && !requested && since.elapsed() < Self::REQUEST_GRACE;
                if about_to_ask && self.asks(&state, step, kind).await {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                }
                let waiting = state.waiting_for_people().iter().map(|(i, h)| format!("{i} ({})", h.kind)).collect();
                return Err(HumanError::NotWaiting { run_id, step: step.to_owned(), kind, waiting });
            };
            let event = self.check(run_id, &h, step, &a, proven, &recorded, &decoded)?;
            let w = self.definition(&state.workflow, state.workflow_version).await?;
            let version = state.version;
            let mut events = vec![event];
            let after = evolve(state, &events[0]);
            let now = self.fx.clock.now();
            let events = self
                .think(&w.clone(), move || {
                    let _ = crate::runner::settle(&w, after, &mut events, now);
                    events
                })
                .await;
            let mut new = vec![NewEvent::from_event(&events[0], crate::trace::metadata(a.by(), run_id, &events[0]))];
            new.extend(
                events[1..].iter().map(|e| NewEvent::from_event(e, crate::trace::metadata("engine", run_id, e))),
            );
            match self.append_due_now(run_id, ExpectedVersion::Exact(version), new).await {
                Ok(r) => {
                    return Ok(Recorded { stream_version: version + 1, global_position: r.first_position });
                }
                // The run moved on meanwhile: look again (a rival answer is
                // then named, an unrelated step's progress is no reason to refuse).
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(RunError::from(e).into()),
            }
        }
    }

    /// Whether `step` of the run's definition is a step of this kind
    /// (`form` or `approval`); an unreadable definition is taken to be.
    async fn asks(&self, state: &RunState, step: &str, kind: &str) -> bool {
        match self.definition(&state.workflow, state.workflow_version).await {
            Ok(w) => w.step(cairn_core::decider::bare(step)).is_some_and(|st| {
                matches!(
                    (&st.kind, kind),
                    (cairn_core::model::StepKind::Form(_), "form")
                        | (cairn_core::model::StepKind::Approval(_), "approval")
                )
            }),
            Err(_) => true,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        &self,
        run_id: Uuid,
        h: &HumanWait,
        step: &str,
        a: &Answer<'_>,
        proven: bool,
        recorded: &[RecordedEvent],
        decoded: &[Event],
    ) -> Result<Event, HumanError> {
        let token = match a {
            Answer::Form(s) => &s.token,
            Answer::Approval(v) => &v.token,
        };
        let by = a.by().to_owned();
        // The request's token, or the answerer's own (from a notification
        // to them: it answers as them and no one else).
        let personal = || self.answer_token_identity(run_id, step, h.attempt, token).is_some_and(|who| who == by);
        if !proven && !cairn_core::human::token_matches(token, &h.token_hash) && !personal() {
            return Err(HumanError::BadToken { step: step.to_owned() });
        }
        match a {
            Answer::Form(s) => {
                if !h.assignees.is_empty() && !h.assignees.contains(&by) {
                    return Err(HumanError::NotAllowed {
                        by,
                        step: step.to_owned(),
                        action: "submit",
                        allowed: h.assignees.clone(),
                    });
                }
                if let Err(l) = self.fx.config.limits.check_value("/values", &s.values) {
                    let field = l.path.trim_start_matches("/values/").split('/').next().unwrap_or("_").to_owned();
                    let field = if field.is_empty() || field == "/values" { "_".to_owned() } else { field };
                    return Err(HumanError::Invalid {
                        step: step.to_owned(),
                        errors: vec![cairn_core::human::FieldError { field, message: l.to_string() }],
                    });
                }
                let fields: Vec<Field> = h.fields.iter().map(Field::from_recorded).collect();
                let values = cairn_core::human::validate(&fields, &s.values)
                    .map_err(|errors| HumanError::Invalid { step: step.to_owned(), errors })?;
                Ok(Event::InputSubmitted(InputSubmitted { step_id: step.to_owned(), submitted_by: by, values }))
            }
            Answer::Approval(v) => {
                if h.decided(&by) {
                    let w = winner(recorded, decoded, step, &by, Some(&by));
                    if let Some(winner) = w {
                        return Err(HumanError::Conflict { step: step.to_owned(), winner });
                    }
                }
                if !h.assignees.contains(&by) {
                    return Err(HumanError::NotAllowed {
                        by,
                        step: step.to_owned(),
                        action: "decide",
                        allowed: h.assignees.clone(),
                    });
                }
                if let Some(shown) = &v.content_hash
                    && shown != &h.content_hash
                {
                    return Err(HumanError::ContentChanged {
                        step: step.to_owned(),
                        shown: shown.clone(),
                        current: h.content_hash.clone(),
                    });
                }
                let invalid = |errors| HumanError::Invalid { step: step.to_owned(), errors };
                if let Err(l) = self.fx.config.limits.check_value("/values", &v.values) {
                    let field = l.path.trim_start_matches("/values/").split('/').next().unwrap_or("_").to_owned();
                    let field = if field.is_empty() || field == "/values" { "_".to_owned() } else { field };
                    return Err(invalid(vec![cairn_core::human::FieldError { field, message: l.to_string() }]));
                }
                let fields: Vec<Field> = h.fields.iter().map(Field::from_recorded).collect();
                let values = cairn_core::human::validate_decision(&fields, v.approve, &v.values).map_err(invalid)?;
                Ok(Event::ApprovalDecided(ApprovalDecided {
                    step_id: step.to_owned(),
                    decided_by: by,
                    decision: if v.approve { "approved" } else { "rejected" }.into(),
                    comment: v.comment.clone().filter(|c| !c.trim().is_empty()),
                    content_hash: h.content_hash.clone(),
                    values,
                }))
            }
        }
    }
}

/// The event that answered or closed the step's latest request: the same
/// approver's decision when `same` is given, else a submission, a decision
/// that closed it, or the step's outcome.
fn winner(recorded: &[RecordedEvent], decoded: &[Event], step: &str, _by: &str, same: Option<&str>) -> Option<Winner> {
    let start = decoded.iter().rposition(|e| match e {
        Event::InputRequested(r) => r.step_id == step,
        Event::ApprovalRequested(r) => r.step_id == step && r.escalation == 0,
        _ => false,
    })?;
    let found = decoded.iter().enumerate().skip(start).find(|(_, e)| match (e, same) {
        (Event::ApprovalDecided(d), Some(who)) => d.step_id == step && d.decided_by == who,
        (_, Some(_)) => false,
        (Event::InputSubmitted(x), None) => x.step_id == step,
        (Event::StepCompleted(x), None) => x.step_id == step,
        (Event::StepFailed(x), None) => x.step_id == step,
        (Event::StepSkipped(x), None) => x.step_id == step,
        (Event::RunCancelled(_) | Event::RunFailed(_) | Event::RunCompleted(_), None) => true,
        _ => false,
    })?;
    // A submission or the decision that completed the step names its author.
    let mut i = found.0;
    if same.is_none()
        && matches!(decoded[i], Event::StepCompleted(_) | Event::StepFailed(_))
        && i > start
        && let Some(j) =
            (start..i).rev().find(|&j| matches!(&decoded[j], Event::ApprovalDecided(d) if d.step_id == step))
    {
        i = j;
    }
    let r = &recorded[i];
    let by = serde_json::from_str::<Value>(&r.metadata)
        .ok()
        .and_then(|m| m.get("actor").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    Some(Winner {
        event_type: r.event_type.clone(),
        stream_version: r.stream_version,
        global_position: r.global_position,
        event_id: r.event_id.clone(),
        by,
    })
}
