//! Task queues over HTTP: external workers long-poll named queues, get a
//! task with a token, heartbeat, and complete or fail it (the protocol is
//! in docs/api.md). Keys of the `worker` role may do this and nothing else.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as S;
use cairn_runtime::{TaskAck, TaskError, TaskQueueError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::State;
use super::extract::{Caller, JsonBody};
use super::problem::{ApiError, ApiResult, FieldProblem};

/// Longest a poll waits for a task.
pub const MAX_WAIT_MS: u64 = 60_000;
/// How long a poll waits unless it says.
const DEFAULT_WAIT_MS: u64 = 20_000;
/// Most tasks one poll takes.
const MAX_TASKS: u32 = 100;

/// A long poll for tasks.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Poll {
    /// The queues to take tasks from (1 to 20 names), longest-offered
    /// first across them.
    #[schemars(length(min = 1, max = 20), inner(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}$")))]
    pub queues: Vec<String>,
    /// The worker's name, recorded with each claim and shown in history
    /// (e.g. `host-pid`): 1 to 100 printable characters, not all spaces.
    #[schemars(length(min = 1, max = 100), regex(pattern = r"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$"))]
    pub worker: String,
    /// Most tasks to take (1 to 100; default 1): the worker's free slots.
    #[serde(default, deserialize_with = "whole")]
    #[schemars(range(min = 1, max = 100))]
    pub max: Option<u32>,
    /// How long to wait for a task when there is none, in milliseconds (0
    /// to 60000; default 20000, and never past the server's
    /// `--max-poll-wait` or its request timeout less two seconds). An empty
    /// list after the wait: poll again.
    #[serde(default, deserialize_with = "whole")]
    #[schemars(range(max = 60000))]
    pub wait_ms: Option<u64>,
}

/// A task a worker now holds.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskOut {
    /// Heartbeat, complete and fail with this (a secret: whoever has it
    /// may answer the attempt).
    pub token: String,
    /// The run.
    pub run_id: String,
    /// Its workflow.
    pub workflow: String,
    /// Its version.
    pub workflow_version: u32,
    /// The step instance.
    pub step_id: String,
    /// The attempt, from 1.
    pub attempt: u32,
    /// The queue.
    pub queue: String,
    /// The step's input.
    pub input: Value,
    /// Longest the worker may go without a heartbeat, in milliseconds
    /// (beat at a third of it).
    pub heartbeat_timeout_ms: u64,
    /// The first heartbeat is due by then (RFC 3339).
    pub heartbeat_by: String,
    /// When the attempt times out whatever the heartbeats (RFC 3339), if
    /// the step has a `timeout`.
    pub expires_at: Option<String>,
}

/// What a poll got.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Polled {
    /// The tasks claimed (empty after the wait: poll again).
    pub tasks: Vec<TaskOut>,
}

/// A heartbeat.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The task's token.
    pub token: String,
}

/// A heartbeat's answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Beat {
    /// The claim holds until then (RFC 3339): beat again before.
    pub heartbeat_by: String,
}

/// A task's result.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Complete {
    /// The task's token.
    pub token: String,
    /// The step's output (any JSON; checked against its `output_contract`).
    pub output: Value,
}

/// What went wrong with a task.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskFailure {
    /// A stable error kind (`retry.errors`, `catch.errors` and
    /// `non_retryable` match it): 1 to 100 of letters, digits, `_`, `-`,
    /// `.`; not `timeout` or `heartbeat-timeout`, which the engine uses.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.\-]{1,100}$"))]
    pub kind: String,
    /// What happened, for people (at most 10,000 characters).
    #[schemars(length(max = 10000))]
    pub message: String,
    /// Whether a retry may help (default true).
    #[serde(default)]
    pub retryable: Option<bool>,
    /// The least wait before a retry, in milliseconds.
    #[serde(default, deserialize_with = "whole")]
    pub retry_after_ms: Option<u64>,
}

/// A task's failure.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fail {
    /// The task's token.
    pub token: String,
    /// The error.
    pub error: TaskFailure,
}

/// What an answer did.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Answer {
    /// Whether this call recorded it (`false`: this token's same answer was
    /// recorded before; nothing changed).
    pub recorded: bool,
    /// `completed` or `failed` (an output that breaks the step's
    /// `output_contract` or the limits is recorded as a failure).
    pub outcome: String,
    /// The recorded error kind, for a failure.
    pub error_kind: Option<String>,
    /// The recorded message, for a failure.
    pub message: Option<String>,
}

/// One queue's depth.
#[derive(Debug, Serialize, JsonSchema)]
pub struct QueueOut {
    /// The queue.
    pub queue: String,
    /// Tasks waiting for a worker.
    pub offered: i64,
    /// Tasks workers hold.
    pub claimed: i64,
}

/// Every queue with tasks.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Queues {
    /// By name.
    pub queues: Vec<QueueOut>,
}

/// A count that JSON may write as `3` or `3.0` (JSON Schema's `integer`
/// admits both).
fn whole<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error as _;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let whole =
        n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e19).map(|f| f as u64));
    whole
        .and_then(|u| T::try_from(u).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{n} is not a whole number in range")))
}

fn refused(e: TaskQueueError) -> ApiError {
    match e {
        TaskQueueError::Run(r) => r.into(),
        other => ApiError::coded(other.code(), other.to_string()),
    }
}

/// What an answer did; a recorded one drives its run on here at once.
fn ack(state: &State, a: TaskAck) -> axum::Json<Answer> {
    if a.recorded {
        state.driver.kick(a.run_id);
    }
    axum::Json(Answer { recorded: a.recorded, outcome: a.outcome, error_kind: a.error_kind, message: a.message })
}

fn valid_kind(k: &str) -> bool {
    !k.is_empty() && k.len() <= 100 && k.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// `POST /tasks/poll`.
pub async fn poll(
    S(state): S<Arc<State>>,
    caller: Caller,
    JsonBody(body): JsonBody<Poll>,
) -> ApiResult<axum::Json<Polled>> {
    let mut errors = Vec::new();
    if body.queues.is_empty() || body.queues.len() > 20 {
        errors.push(FieldProblem::new("/queues", "name 1 to 20 queues"));
    }
    for (i, q) in body.queues.iter().enumerate() {
        if !cairn_runtime::lang::valid_queue_name(q) {
            errors.push(FieldProblem::new(
                format!("/queues/{i}"),
                format!("`{q}` is not a queue name: 1 to 100 letters, digits, `_`, `-`, `.` or `:`"),
            ));
        }
    }
    if body.worker.trim_matches(' ').is_empty()
        || body.worker.chars().count() > 100
        || body.worker.chars().any(|c| c.is_ascii_control())
    {
        errors.push(FieldProblem::new("/worker", "name the worker in 1 to 100 printable characters"));
    }
    let max = body.max.unwrap_or(1);
    if !(1..=MAX_TASKS).contains(&max) {
        errors.push(FieldProblem::new("/max", format!("take 1 to {MAX_TASKS} tasks at a time")));
    }
    let wait = body.wait_ms.unwrap_or(DEFAULT_WAIT_MS);
    if wait > MAX_WAIT_MS {
        errors.push(FieldProblem::new("/wait_ms", format!("wait at most {MAX_WAIT_MS} ms")));
    }
    if !errors.is_empty() {
        return Err(ApiError::coded("invalid-body", "the poll is not valid").with_errors(errors));
    }
    // Answer before the server's request timeout cuts the request.
    let wait =
        Duration::from_millis(wait).min(state.max_poll_wait).min(state.timeout.saturating_sub(Duration::from_secs(2)));
    let mut queues = body.queues.clone();
    queues.sort();
    queues.dedup();
    let tasks = state.engine.poll_tasks(&queues, body.worker.trim(), &caller.identity, max as usize, wait).await?;
    Ok(axum::Json(Polled {
        tasks: tasks
            .into_iter()
            .map(|t| TaskOut {
                token: t.token,
                run_id: t.run_id.to_string(),
                workflow: t.workflow,
                workflow_version: t.workflow_version,
                step_id: t.step_id,
                attempt: t.attempt,
                queue: t.queue,
                input: t.input,
                heartbeat_timeout_ms: t.heartbeat_timeout_ms,
                heartbeat_by: t.heartbeat_by.to_rfc3339(),
                expires_at: t.expires_at.map(|e| e.to_rfc3339()),
            })
            .collect(),
    }))
}

/// `POST /tasks/heartbeat`.
pub async fn heartbeat(S(state): S<Arc<State>>, JsonBody(body): JsonBody<Heartbeat>) -> ApiResult<axum::Json<Beat>> {
    let by = state.engine.heartbeat_task(&body.token).await.map_err(refused)?;
    Ok(axum::Json(Beat { heartbeat_by: by.to_rfc3339() }))
}

/// `POST /tasks/complete`.
pub async fn complete(S(state): S<Arc<State>>, JsonBody(body): JsonBody<Complete>) -> ApiResult<axum::Json<Answer>> {
    let a = state.engine.complete_task(&body.token, body.output).await.map_err(refused)?;
    Ok(ack(&state, a))
}

/// `POST /tasks/fail`.
pub async fn fail(S(state): S<Arc<State>>, JsonBody(body): JsonBody<Fail>) -> ApiResult<axum::Json<Answer>> {
    let e = body.error;
    let mut errors = Vec::new();
    if !valid_kind(&e.kind) {
        errors.push(FieldProblem::new("/error/kind", "1 to 100 letters, digits, `_`, `-` or `.`"));
    } else if cairn_runtime::ENGINE_TASK_ERRORS.contains(&e.kind.as_str()) {
        errors.push(FieldProblem::new(
            "/error/kind",
            format!("`{}` is the engine's own kind; name what went wrong in the worker", e.kind),
        ));
    }
    if e.message.chars().count() > 10_000 {
        errors.push(FieldProblem::new("/error/message", "at most 10,000 characters"));
    }
    if !errors.is_empty() {
        return Err(ApiError::coded("invalid-body", "the failure is not valid").with_errors(errors));
    }
    let error = TaskError {
        kind: e.kind,
        message: e.message,
        retryable: e.retryable.unwrap_or(true),
        retry_after_ms: e.retry_after_ms,
    };
    let a = state.engine.fail_task(&body.token, error).await.map_err(refused)?;
    Ok(ack(&state, a))
}

/// `GET /queues`.
pub async fn queues(S(state): S<Arc<State>>) -> ApiResult<axum::Json<Queues>> {
    let depths = state.store.queue_depths().await.map_err(cairn_runtime::RunError::from)?;
    Ok(axum::Json(Queues {
        queues: depths
            .into_iter()
            .map(|d| QueueOut { queue: d.queue, offered: d.offered, claimed: d.claimed })
            .collect(),
    }))
}
