//! People: the inbox, form submissions and approval decisions. The caller
//! acts as its key's identity; an approval decision is refused unless that
//! identity is a listed approver (the engine checks it against the request
//! as recorded).

use std::sync::Arc;

use axum::extract::{Path, State as S};
use axum::http::StatusCode;
use cairn_runtime::people::{HumanError, Submission, Vote};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::State;
use super::extract::{Caller, JsonBody, Q, parse_id};
use super::problem::{ApiError, ApiResult, FieldProblem, Winner};

/// Inbox filters.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxQuery {
    /// Only what this identity may answer (`me`: the caller's identity).
    #[serde(default)]
    pub assignee: Option<String>,
}

/// Something waiting for people.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InboxItem {
    /// The run.
    pub run_id: String,
    /// The step.
    pub step_id: String,
    /// `form` or `approval`.
    pub kind: String,
    /// Who may answer.
    pub assignees: Vec<String>,
    /// Title or summary.
    pub summary: Option<String>,
    /// When it was asked.
    pub requested_at: Option<String>,
    /// The deadline.
    pub deadline: Option<String>,
    /// Decisions so far.
    pub decisions: Option<i64>,
    /// Where to answer.
    pub answer_url: String,
}

/// The inbox.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Inbox {
    /// Oldest first.
    pub items: Vec<InboxItem>,
}

/// A form submission.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitForm {
    /// The field values.
    pub values: serde_json::Map<String, Value>,
    /// The request's resume token (from its notification); checked when
    /// given, derived by the server otherwise.
    #[serde(default)]
    pub token: Option<String>,
}

/// An approval decision.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    /// Approve (`true`) or reject (`false`).
    pub approve: bool,
    /// Why.
    #[serde(default)]
    pub comment: Option<String>,
    /// The `content_hash` of what the approver was shown; refused (409)
    /// when the content is no longer that.
    #[serde(default)]
    pub content_hash: Option<String>,
    /// The request's resume token; checked when given.
    #[serde(default)]
    pub token: Option<String>,
    /// The approval's fields (its `ApprovalRequested` lists them), checked
    /// like a form's: approving must satisfy them, a rejection may give
    /// them; refused (422, each field named) for an approval without fields.
    #[serde(default)]
    pub values: Option<serde_json::Map<String, Value>>,
}

/// What was recorded.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Answered {
    /// The run.
    pub run_id: String,
    /// The step.
    pub step_id: String,
    /// Who answered.
    pub by: String,
    /// The answer's version in the run's stream.
    pub stream_version: u64,
    /// Its global position.
    pub global_position: u64,
}

/// `GET /inbox`.
pub async fn inbox(S(state): S<Arc<State>>, caller: Caller, Q(q): Q<InboxQuery>) -> ApiResult<axum::Json<Inbox>> {
    let db = state.read().await?;
    let who = match q.assignee.as_deref() {
        Some("me") => Some(caller.identity.clone()),
        other => other.map(str::to_owned),
    };
    let mut items = Vec::new();
    for r in cairn_projections::queries::inbox(db).await? {
        let assignees = r.assignee_names();
        if who.as_ref().is_some_and(|w| !assignees.contains(w)) {
            continue;
        }
        let answer_url = format!(
            "/runs/{}/steps/{}/{}",
            r.run_id,
            r.step_id,
            if r.kind == "form" { "submission" } else { "decision" }
        );
        items.push(InboxItem {
            run_id: r.run_id,
            step_id: r.step_id,
            kind: r.kind,
            assignees,
            summary: r.summary,
            requested_at: Some(r.requested_at),
            deadline: r.deadline,
            decisions: Some(r.decisions),
            answer_url,
        });
    }
    Ok(axum::Json(Inbox { items }))
}

fn human(e: HumanError) -> ApiError {
    let msg = e.to_string();
    match e {
        HumanError::Run(r) => r.into(),
        HumanError::Invalid { ref errors, .. } => ApiError::coded(e.code(), msg).with_errors(
            errors.iter().map(|f| FieldProblem::new(format!("/values/{}", f.field), f.message.clone())).collect(),
        ),
        HumanError::Conflict { ref winner, .. } => {
            let winner = winner.clone();
            let mut a = ApiError::coded(e.code(), msg);
            a.0.winner = Some(Winner {
                event_type: winner.event_type,
                by: winner.by,
                stream_version: winner.stream_version,
                global_position: winner.global_position,
                event_id: winner.event_id,
            });
            a
        }
        other => ApiError::coded(other.code(), msg),
    }
}

/// After an answer was recorded: drive the run on, say what was recorded.
fn answered(
    state: &State,
    run: uuid::Uuid,
    step: String,
    by: String,
    rec: cairn_runtime::people::Recorded,
) -> (StatusCode, axum::Json<Answered>) {
    state.driver.kick(run);
    let a = Answered {
        run_id: run.to_string(),
        step_id: step,
        by,
        stream_version: rec.stream_version,
        global_position: rec.global_position,
    };
    (StatusCode::CREATED, axum::Json(a))
}

/// `POST /runs/{id}/steps/{step}/submission`.
pub async fn submit(
    S(state): S<Arc<State>>,
    caller: Caller,
    Path((id, step)): Path<(String, String)>,
    JsonBody(body): JsonBody<SubmitForm>,
) -> ApiResult<(StatusCode, axum::Json<Answered>)> {
    let run = parse_id(&id, "run")?;
    // Without a token the key proves who answers; the request is checked in
    // the same read as the answer (never a token derived from an earlier one).
    let s = Submission {
        by: caller.identity.clone(),
        token: body.token.clone().unwrap_or_default(),
        values: Value::Object(body.values),
    };
    let rec = match body.token {
        Some(_) => state.engine.submit(run, &step, &s).await,
        None => state.engine.submit_as_caller(run, &step, &s).await,
    }
    .map_err(human)?;
    Ok(answered(&state, run, step, caller.identity, rec))
}

/// `POST /runs/{id}/steps/{step}/decision`.
pub async fn decide(
    S(state): S<Arc<State>>,
    caller: Caller,
    Path((id, step)): Path<(String, String)>,
    JsonBody(body): JsonBody<Decide>,
) -> ApiResult<(StatusCode, axum::Json<Answered>)> {
    let run = parse_id(&id, "run")?;
    let v = Vote {
        by: caller.identity.clone(),
        token: body.token.clone().unwrap_or_default(),
        approve: body.approve,
        comment: body.comment,
        content_hash: body.content_hash,
        values: body.values.map_or(Value::Null, Value::Object),
    };
    let rec = match body.token {
        Some(_) => state.engine.decide_approval(run, &step, &v).await,
        None => state.engine.decide_as_caller(run, &step, &v).await,
    }
    .map_err(human)?;
    Ok(answered(&state, run, step, caller.identity, rec))
}
