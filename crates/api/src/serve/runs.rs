//! Runs: start (with `Idempotency-Key`), list, get, cancel, history,
//! context, raw events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State as S};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_events::{Event, RecordedEvent};
use cairn_runtime::run::RunState;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::State;
use super::extract::{Caller, JsonBody, MAX_WAIT_SECS, OptJson, Pos, Q, WaitSecs, parse_id};
use super::problem::{ApiError, ApiResult, FieldProblem};

/// What starts a run.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// The workflow's name.
    #[schemars(length(min = 1))]
    pub workflow: String,
    /// The version to run (default: the newest).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub version: Option<u32>,
    /// The inputs, checked against the workflow's `inputs` schema.
    #[serde(default)]
    pub inputs: Option<serde_json::Map<String, Value>>,
}

/// A run.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunView {
    /// Its id.
    pub run_id: Uuid,
    /// The workflow.
    pub workflow: String,
    /// The pinned version.
    pub version: u32,
    /// `running`, `waiting` (for people), `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Who started it.
    pub started_by: String,
    /// When (RFC 3339).
    pub started_at: String,
    /// When it ended, once it has.
    pub ended_at: Option<String>,
    /// The inputs, defaults applied.
    pub inputs: Value,
    /// The output, once completed.
    pub output: Option<Value>,
    /// The error, once failed.
    pub error: Option<RunErrorView>,
    /// What it waits for from people.
    pub waiting: Vec<WaitView>,
    /// The idempotency key it was started with.
    pub idempotency_key: Option<String>,
    /// The parent run, for a child run.
    pub parent_run_id: Option<Uuid>,
    /// Events in its stream.
    pub stream_version: u64,
}

/// Why a run failed.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunErrorView {
    /// A stable kind (`http.status`, `ai.invalid_output`, …).
    pub kind: String,
    /// What happened.
    pub message: String,
    /// The step that failed.
    pub step: Option<String>,
}

/// A form or approval a run waits for.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WaitView {
    /// The step.
    pub step_id: String,
    /// `form` or `approval`.
    pub kind: String,
    /// Who may answer.
    pub assignees: Vec<String>,
    /// Title or summary.
    pub title: Option<String>,
    /// For an approval: the content to approve and its hash (send the hash
    /// back with the decision).
    pub content: Value,
    /// SHA-256 of the content.
    pub content_hash: String,
    /// The deadline, if any.
    pub deadline: Option<DateTime<Utc>>,
    /// Where to send the answer.
    pub answer_url: String,
}

/// A page of runs.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunPage {
    /// Runs, newest first.
    pub items: Vec<RunRow>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A run in a list (from the `runs` read model).
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunRow {
    /// Its id.
    pub run_id: String,
    /// The workflow.
    pub workflow: String,
    /// The pinned version.
    pub version: i64,
    /// Status.
    pub status: String,
    /// The step it is at.
    pub current_step: Option<String>,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    pub ended_at: Option<String>,
    /// Who started it.
    pub started_by: String,
    /// The error kind, once failed.
    pub error_kind: Option<String>,
    /// The error message, once failed.
    pub error_message: Option<String>,
    /// The step that failed.
    pub failed_step: Option<String>,
}

/// A run status.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusFilter {
    /// In progress.
    Running,
    /// Waiting for people.
    Waiting,
    /// Ended with an output.
    Completed,
    /// Ended with an error.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl StatusFilter {
    fn name(self) -> &'static str {
        match self {
            StatusFilter::Running => "running",
            StatusFilter::Waiting => "waiting",
            StatusFilter::Completed => "completed",
            StatusFilter::Failed => "failed",
            StatusFilter::Cancelled => "cancelled",
        }
    }
}

/// Filters of `GET /runs`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// Only runs of this workflow.
    #[serde(default)]
    pub workflow: Option<String>,
    /// Only runs with this status.
    #[serde(default)]
    pub status: Option<StatusFilter>,
    /// Started at or after this time (RFC 3339).
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// Started before this time (RFC 3339).
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Runs per page (1–500, default 50).
    #[serde(default)]
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
}

/// Cancelling.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRun {
    /// Why (recorded in `RunCancelled`).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Which completed steps a resume runs again.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    /// The failed steps, and completed steps only if what they read changed.
    #[default]
    FailedOnly,
    /// The failed steps and everything after them.
    Downstream,
}

/// Resuming a failed run (docs/recovery.md).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeRun {
    /// The step to resume from (default: the step that failed).
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub from: Option<String>,
    /// `failed-only` (default) or `downstream`.
    #[serde(default)]
    pub policy: Option<PolicyName>,
    /// Inputs to change for the resume, merged over the run's and checked
    /// against the workflow's `inputs` schema.
    #[serde(default)]
    pub inputs: Option<serde_json::Map<String, Value>>,
    /// Only return the plan; record nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Resume a cancelled run, or send non-idempotent HTTP requests again.
    #[serde(default)]
    pub force: bool,
    /// Why (recorded in `RunResumed`).
    #[serde(default)]
    pub reason: Option<String>,
}

/// A resume plan, and whether it was recorded.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Resumed {
    /// `false` for a dry run: nothing was recorded.
    pub resumed: bool,
    /// The plan: steps kept, run again, newly reached, no longer reached,
    /// approvals requested again, AI cost, non-idempotent requests.
    pub plan: cairn_runtime::recovery::Plan,
}

/// Forking a run (docs/recovery.md).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRun {
    /// The top-level step the new run starts from; the outputs the source
    /// recorded before it are carried over.
    #[schemars(length(min = 1))]
    pub at: String,
    /// Inputs to change, merged over the source run's.
    #[serde(default)]
    pub inputs: Option<serde_json::Map<String, Value>>,
}

/// A run's inputs and step outputs.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunContext {
    /// The run.
    pub run_id: Uuid,
    /// Its status.
    pub status: String,
    /// The inputs, defaults applied.
    pub inputs: Value,
    /// The latest output of every completed step.
    pub outputs: BTreeMap<String, Value>,
    /// The run's output, once completed.
    pub output: Option<Value>,
}

/// One stored event, with its position and hashes.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RawEvent {
    /// Global position in the log.
    pub global_position: u64,
    /// Its stream.
    pub stream_id: String,
    /// Its version in the stream, from 1.
    pub stream_version: u64,
    /// Its id.
    pub event_id: String,
    /// Its type (docs/events.md).
    pub event_type: String,
    /// Its payload schema version.
    pub schema_version: u32,
    /// When it was recorded (RFC 3339).
    pub recorded_at: String,
    /// Its payload.
    pub payload: Value,
    /// Its metadata (actor, trace, engine version).
    pub metadata: Value,
    /// The previous event's hash in the stream.
    pub prev_hash: String,
    /// Its hash (docs/compliance.md).
    pub hash: String,
}

impl RawEvent {
    /// From a stored event.
    pub fn of(r: &RecordedEvent) -> RawEvent {
        RawEvent {
            global_position: r.global_position,
            stream_id: r.stream_id.clone(),
            stream_version: r.stream_version,
            event_id: r.event_id.clone(),
            event_type: r.event_type.clone(),
            schema_version: r.schema_version,
            recorded_at: r.recorded_at.clone(),
            payload: serde_json::from_str(&r.payload).unwrap_or(Value::Null),
            metadata: serde_json::from_str(&r.metadata).unwrap_or(Value::Null),
            prev_hash: r.prev_hash.clone(),
            hash: r.hash.clone(),
        }
    }
}

/// Events of a run.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EventPage {
    /// In stream order.
    pub items: Vec<RawEvent>,
}

/// Which events.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Events after this stream version (default 0: all).
    #[serde(default)]
    pub after: Option<Pos>,
}

/// Which point of a run (at most one; none: the run's end).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateQuery {
    /// After this many of the run's events (its stream version).
    #[serde(default)]
    pub at: Option<Pos>,
    /// As of this position in the whole log.
    #[serde(default)]
    pub position: Option<Pos>,
    /// Just before this step (instance) first started.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub step: Option<String>,
}

/// One entry of a run's timeline (the `step_history` read model).
#[derive(Debug, Serialize, JsonSchema)]
pub struct HistoryEntry {
    /// Position of the event that made it.
    pub position: i64,
    /// `attempt`, `retry`, `branch`, `ai`, `input`, `approval`, `claim` (a task worker took a `queue` step attempt; `actor` is the worker), `child`, `kept`, …
    pub kind: String,
    /// The step.
    pub step_id: String,
    /// The attempt.
    pub attempt: Option<i64>,
    /// Its status.
    pub status: Option<String>,
    /// Start time.
    pub started_at: Option<String>,
    /// End time.
    pub ended_at: Option<String>,
    /// Duration.
    pub duration_ms: Option<i64>,
    /// Error kind.
    pub error_kind: Option<String>,
    /// Error message.
    pub error_message: Option<String>,
    /// AI input tokens.
    pub input_tokens: Option<i64>,
    /// AI output tokens.
    pub output_tokens: Option<i64>,
    /// AI cost in millionths of the currency.
    pub cost_micros: Option<i64>,
    /// Who (for submissions and decisions).
    pub actor: Option<String>,
    /// More about it.
    pub detail: Option<String>,
    /// Which visit of the step (1 for the first; a loop enters a step again).
    pub visit: Option<i64>,
}

/// A run's timeline.
#[derive(Debug, Serialize, JsonSchema)]
pub struct History {
    /// The run.
    pub run_id: Uuid,
    /// Entries in log order.
    pub items: Vec<HistoryEntry>,
}

/// The status of a folded run, as the API names it.
pub fn status_name(s: &RunState) -> &'static str {
    s.status_name()
}

/// Reads and folds a run.
pub async fn load(state: &State, run_id: Uuid) -> ApiResult<(RunState, Vec<RecordedEvent>)> {
    let events = state.store.read_stream(&cairn_events::run_stream(run_id), 1).await?;
    if events.is_empty() {
        return Err(ApiError::not_found("unknown-run", format!("no run with id {run_id}")));
    }
    let decoded = events.iter().map(Event::decode).collect::<Result<Vec<_>, _>>()?;
    Ok((cairn_runtime::run::fold(&decoded), events))
}

fn view(run_id: Uuid, s: &RunState, events: &[RecordedEvent]) -> ApiResult<RunView> {
    let first = Event::decode(&events[0])?;
    let (started_by, key) = match &first {
        Event::RunStarted(r) => (r.started_by.clone(), r.idempotency_key.clone()),
        _ => (String::new(), None),
    };
    let ended_at = if s.status.is_terminal() { events.last().map(|e| e.recorded_at.clone()) } else { None };
    Ok(RunView {
        run_id,
        workflow: s.workflow.clone(),
        version: s.workflow_version,
        status: status_name(s).to_owned(),
        started_by,
        started_at: events[0].recorded_at.clone(),
        ended_at,
        inputs: (*s.inputs).clone(),
        output: s.output.clone(),
        error: s.error.clone().map(|(kind, message, step)| RunErrorView { kind, message, step }),
        waiting: s
            .waiting_for_people()
            .into_iter()
            .map(|(step, h)| WaitView {
                step_id: step.to_owned(),
                kind: h.kind.clone(),
                assignees: h.assignees.clone(),
                title: h.title.clone(),
                content: h.content.clone(),
                content_hash: h.content_hash.clone(),
                deadline: h.deadline,
                answer_url: format!(
                    "/runs/{run_id}/steps/{step}/{}",
                    if h.kind == "form" { "submission" } else { "decision" }
                ),
            })
            .collect(),
        idempotency_key: key,
        parent_run_id: s.parent.as_ref().map(|p| p.run_id),
        stream_version: s.version,
    })
}

/// `Prefer: wait=N` (RFC 7240), if asked: how long to wait for the run to
/// end before answering. As the RFC says, a preference the server does not
/// understand is ignored, a `wait` whose value is not a number of seconds
/// included: the answer then has no `Preference-Applied`, which is how a
/// client learns it was not applied.
fn prefer_wait(state: &State, headers: &HeaderMap) -> Option<Duration> {
    let mut wait = None;
    for v in headers.get_all("prefer") {
        let Ok(text) = v.to_str() else { continue };
        for pref in text.split(',') {
            let (name, value) = pref.split_once('=').map_or((pref, ""), |(n, v)| (n, v));
            if !name.trim().eq_ignore_ascii_case("wait") {
                continue;
            }
            if let Ok(secs) = value.trim().trim_matches('"').parse::<u64>() {
                wait = Some(secs);
            }
        }
    }
    wait.map(|s| cap_wait(state, s))
}

/// A wait cut to [`MAX_WAIT_SECS`] and to a second under the request limit.
fn cap_wait(state: &State, secs: u64) -> Duration {
    let limit = state.timeout.saturating_sub(Duration::from_secs(1));
    Duration::from_secs(secs.min(MAX_WAIT_SECS)).min(limit)
}

/// Waits (up to `wait`) for run `id` to end: for `drive`, the drive this
/// request kicked when this process drives the run (no read, no log);
/// through the log otherwise, or when that drive stopped short of the end
/// (a timer, people, another worker took it over).
async fn wait_for_end(
    state: &State,
    id: Uuid,
    wait: Duration,
    drive: Option<cairn_runtime::worker::DriveEnd>,
) -> ApiResult<()> {
    let deadline = tokio::time::Instant::now() + wait;
    if let Some(drive) = drive {
        match tokio::time::timeout_at(deadline, drive).await {
            Err(_) | Ok(Ok(true)) => return Ok(()),
            Ok(_) => {}
        }
    }
    state.tail.until_ended(&*state.store, &cairn_events::run_stream(id), deadline).await?;
    Ok(())
}

/// `Preference-Applied: wait=N` on an answer that waited.
fn applied(r: &mut Response, wait: Option<Duration>) {
    if let Some(w) = wait
        && let Ok(v) = HeaderValue::from_str(&format!("wait={}", w.as_secs()))
    {
        r.headers_mut().insert("preference-applied", v);
    }
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let k = v.to_str().ok().map(str::trim).unwrap_or("");
    if k.is_empty() || k.len() > 255 || !k.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "bad-idempotency-key",
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters (a UUID, say)",
        ));
    }
    Ok(Some(k.to_owned()))
}

/// The caller's W3C `traceparent`, when it is a valid one (an invalid one
/// is ignored, as the recommendation says).
fn traceparent(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    crate::telemetry::parse_traceparent(v).map(|_| v.trim().to_owned())
}

/// `POST /runs`.
pub async fn start(
    S(state): S<Arc<State>>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<StartRun>,
) -> ApiResult<Response> {
    let key = idempotency_key(&headers)?;
    let wait = prefer_wait(&state, &headers);
    let Some(rec) = super::workflows::recorded(&state, &body.workflow).await? else {
        return Err(ApiError::not_found(
            "unknown-workflow",
            format!("no workflow named `{}`; create it with POST /workflows", body.workflow),
        )
        .with_errors(vec![FieldProblem::new("/workflow", "no such workflow")]));
    };
    let version = body.version.unwrap_or(rec.view.latest_version);
    if !rec.view.versions.iter().any(|v| v.version == version) {
        return Err(ApiError::not_found(
            "unknown-version",
            format!(
                "workflow `{}` has no version {version} (the newest is {})",
                body.workflow, rec.view.latest_version
            ),
        )
        .with_errors(vec![FieldProblem::new("/version", "no such version")]));
    }
    let w = state.engine.definition(&body.workflow, version).await?;
    let inputs = Value::Object(body.inputs.unwrap_or_default());
    let run_id = key.as_ref().map(|k| cairn_runtime::Start::idempotent_id(&caller.identity, k));
    let pinned = body.version.is_some();
    if let Some(id) = run_id
        && let Some(r) = replay(&state, id, &w, version, pinned, &inputs, wait).await?
    {
        return Ok(r);
    }
    if rec.view.archived {
        return Err(ApiError::conflict(
            "workflow-archived",
            format!("workflow `{}` is archived and takes no new runs", body.workflow),
        ));
    }
    let opts = cairn_runtime::Start {
        run_id,
        idempotency_key: key.clone(),
        drive: state.driver.drives(),
        trace_parent: traceparent(&headers),
    };
    let (id, started) = match state.engine.start_with(&w, version, inputs.clone(), &caller.identity, opts).await {
        Ok(started) => started,
        Err(cairn_runtime::RunError::Store(e)) if e.is_conflict() && run_id.is_some() => {
            // Another request with this key got there first.
            let id = run_id.unwrap_or_default();
            return match replay(&state, id, &w, version, pinned, &inputs, wait).await? {
                Some(r) => Ok(r),
                None => Err(ApiError::internal("an idempotent start conflicted but no run is recorded")),
            };
        }
        Err(e) => return Err(e.into()),
    };
    let drive = state.driver.kick_started(id, started, wait.is_some());
    if let Some(w) = wait {
        wait_for_end(&state, id, w, drive).await?;
    }
    let (s, events) = load(&state, id).await?;
    let mut r = (StatusCode::CREATED, axum::Json(view(id, &s, &events)?)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/runs/{id}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    applied(&mut r, wait);
    Ok(r)
}

/// The run an idempotency key already started, if any: the same request
/// gives it again (200); another request with that key is refused (422).
/// A request that names no version means the version the key's first start
/// used, so a retry after a deploy (a newer latest version) is the same
/// request.
async fn replay(
    state: &State,
    id: Uuid,
    w: &cairn_runtime::Workflow,
    version: u32,
    pinned: bool,
    inputs: &Value,
    wait: Option<Duration>,
) -> ApiResult<Option<Response>> {
    match state.engine.same_start(id, w, version, pinned, inputs).await? {
        None => return Ok(None),
        Some(Ok(())) => {}
        Some(Err(why)) => {
            return Err(ApiError::unprocessable(
                "idempotency-key-reused",
                why.replace("idempotency key", "Idempotency-Key"),
                vec![FieldProblem::new("Idempotency-Key", "already used for a different request")],
            ));
        }
    }
    if let Some(w) = wait {
        wait_for_end(state, id, w, None).await?;
    }
    let (s, events) = load(state, id).await?;
    let mut r = (StatusCode::OK, axum::Json(view(id, &s, &events)?)).into_response();
    r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    if let Ok(v) = HeaderValue::from_str(&format!("/runs/{id}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    applied(&mut r, wait);
    Ok(Some(r))
}

/// How long `GET /runs/{id}` may wait.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetRunQuery {
    /// Wait up to this many seconds (at most 60) for the run to end before
    /// answering; the answer is the run as it then is.
    #[serde(default)]
    pub wait: Option<WaitSecs>,
}

/// `GET /runs/{id}`.
pub async fn get(
    S(state): S<Arc<State>>,
    Path(id): Path<String>,
    Q(q): Q<GetRunQuery>,
) -> ApiResult<axum::Json<RunView>> {
    let id = parse_id(&id, "run")?;
    if let Some(secs) = q.wait.map(|w| w.0).filter(|s| *s > 0) {
        if state.store.stream_version(&cairn_events::run_stream(id)).await? == 0 {
            return Err(ApiError::not_found("unknown-run", format!("no run with id {id}")));
        }
        wait_for_end(&state, id, cap_wait(&state, secs), None).await?;
    }
    let (s, events) = load(&state, id).await?;
    Ok(axum::Json(view(id, &s, &events)?))
}

/// A cursor is the last row's start time and id: the next page holds the
/// runs before it (any text is taken; an empty one is the first page).
fn cursor_of(started_at: &str, run_id: &str) -> String {
    format!("{started_at}|{run_id}")
}

fn parse_cursor(c: &str) -> Option<(String, String)> {
    if c.is_empty() {
        return None;
    }
    let (a, b) = c.split_once('|').unwrap_or((c, ""));
    Some((a.to_owned(), b.to_owned()))
}

/// `GET /runs`.
pub async fn list(S(state): S<Arc<State>>, Q(q): Q<RunsQuery>) -> ApiResult<axum::Json<RunPage>> {
    let limit = i64::from(q.limit.unwrap_or(50));
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("bad-query", "limit must be between 1 and 500"));
    }
    let before = q.cursor.as_deref().and_then(parse_cursor);
    let f = cairn_projections::queries::RunFilter {
        workflow: q.workflow,
        status: q.status.map(|s| s.name().to_owned()),
        since: q.since.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        until: q.until.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        before,
        limit: limit + 1,
    };
    let db = state.read().await?;
    let mut rows = cairn_projections::queries::runs_page(db, &f).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let items: Vec<RunRow> = rows
        .into_iter()
        .map(|r| RunRow {
            run_id: r.run_id,
            workflow: r.workflow,
            version: r.version,
            status: r.status,
            current_step: r.current_step,
            started_at: r.started_at,
            ended_at: r.ended_at,
            started_by: r.started_by,
            error_kind: r.error_kind,
            error_message: r.error_message,
            failed_step: r.failed_step,
        })
        .collect();
    let next_cursor = if more { items.last().map(|r| cursor_of(&r.started_at, &r.run_id)) } else { None };
    Ok(axum::Json(RunPage { items, next_cursor }))
}

/// `POST /runs/{id}/cancel`.
pub async fn cancel(
    S(state): S<Arc<State>>,
    caller: Caller,
    Path(id): Path<String>,
    OptJson(body): OptJson<CancelRun>,
) -> ApiResult<axum::Json<RunView>> {
    let id = parse_id(&id, "run")?;
    state.engine.cancel(id, &caller.identity, body.reason).await?;
    let (s, events) = load(&state, id).await?;
    Ok(axum::Json(view(id, &s, &events)?))
}

/// `POST /runs/{id}/resume`.
pub async fn resume(
    S(state): S<Arc<State>>,
    caller: Caller,
    Path(id): Path<String>,
    OptJson(body): OptJson<ResumeRun>,
) -> ApiResult<axum::Json<Resumed>> {
    use cairn_runtime::recovery::ResumeRequest;
    let id = parse_id(&id, "run")?;
    let req = ResumeRequest {
        from: body.from,
        policy: match body.policy.unwrap_or_default() {
            PolicyName::FailedOnly => cairn_runtime::run::Policy::FailedOnly,
            PolicyName::Downstream => cairn_runtime::run::Policy::Downstream,
        },
        inputs: body.inputs.unwrap_or_default(),
        force: body.force,
        by: caller.identity.clone(),
        reason: body.reason,
        now: None,
    };
    let result =
        if body.dry_run { state.engine.plan_resume(id, &req).await } else { state.engine.resume(id, &req).await };
    let plan = result.map_err(resume_problem)?;
    if !body.dry_run {
        state.driver.kick(id);
    }
    Ok(axum::Json(Resumed { resumed: !body.dry_run, plan }))
}

fn resume_problem(e: cairn_runtime::recovery::ResumeError) -> ApiError {
    use cairn_runtime::recovery::{Refusal as R, ResumeError as E};
    match e {
        E::Run(r) => ApiError::from(r),
        E::Refused(ref r @ R::InvalidInputs { ref errors, .. }) => ApiError::unprocessable(
            r.code(),
            r.to_string(),
            errors.iter().map(|v| FieldProblem::new(format!("/inputs{}", v.path), v.message.clone())).collect(),
        ),
        E::Refused(r) => ApiError::coded(r.code(), r.to_string()),
    }
}

/// `POST /runs/{id}/fork`.
pub async fn fork(
    S(state): S<Arc<State>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ForkRun>,
) -> ApiResult<Response> {
    let source = parse_id(&id, "run")?;
    let id = state
        .engine
        .fork(source, &body.at, body.inputs.unwrap_or_default(), &caller.identity)
        .await
        .map_err(resume_problem)?;
    state.driver.kick(id);
    let (s, events) = load(&state, id).await?;
    let mut r = (StatusCode::CREATED, axum::Json(view(id, &s, &events)?)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/runs/{id}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

/// `GET /runs/{id}/context`.
pub async fn context(S(state): S<Arc<State>>, Path(id): Path<String>) -> ApiResult<axum::Json<RunContext>> {
    let id = parse_id(&id, "run")?;
    let (s, _) = load(&state, id).await?;
    Ok(axum::Json(RunContext {
        run_id: id,
        status: status_name(&s).to_owned(),
        inputs: (*s.inputs).clone(),
        outputs: s.outputs.iter().map(|(k, v)| (k.clone(), (**v).clone())).collect(),
        output: s.output.clone(),
    }))
}

/// `GET /runs/{id}/events`.
pub async fn events(
    S(state): S<Arc<State>>,
    Path(id): Path<String>,
    Q(q): Q<EventsQuery>,
) -> ApiResult<axum::Json<EventPage>> {
    let id = parse_id(&id, "run")?;
    let stream = cairn_events::run_stream(id);
    let events = state.store.read_stream(&stream, q.after.map_or(0, |p| p.0).saturating_add(1)).await?;
    if events.is_empty() && state.store.stream_version(&stream).await? == 0 {
        return Err(ApiError::not_found("unknown-run", format!("no run with id {id}")));
    }
    Ok(axum::Json(EventPage { items: events.iter().map(RawEvent::of).collect() }))
}

/// `GET /runs/{id}/replay`.
pub async fn replay_run(
    S(state): S<Arc<State>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<cairn_runtime::replay::ReplayReport>> {
    let id = parse_id(&id, "run")?;
    let (s, events) = load(&state, id).await?;
    let w = state.engine.recorded_definition(&s.workflow, s.workflow_version).await?;
    Ok(axum::Json(cairn_runtime::replay::check(&w, &events)?))
}

/// `GET /runs/{id}/state`.
pub async fn state_at(
    S(state): S<Arc<State>>,
    Path(id): Path<String>,
    Q(q): Q<StateQuery>,
) -> ApiResult<axum::Json<cairn_runtime::replay::Snapshot>> {
    let id = parse_id(&id, "run")?;
    let (_, events) = load(&state, id).await?;
    let given = usize::from(q.at.is_some()) + usize::from(q.position.is_some()) + usize::from(q.step.is_some());
    if given > 1 {
        return Err(ApiError::bad_request("bad-query", "give at most one of `at`, `position` and `step`")
            .with_errors(vec![FieldProblem::new("at", "with `position` or `step`")]));
    }
    let n = match (q.at, q.position, &q.step) {
        (Some(Pos(n)), _, _) => {
            if n == 0 || n > events.len() as u64 {
                return Err(ApiError::unprocessable(
                    "out-of-range",
                    format!("run {id} has events 1 to {}", events.len()),
                    vec![FieldProblem::new("at", format!("between 1 and {}", events.len()))],
                ));
            }
            n as usize
        }
        (_, Some(Pos(p)), _) => match events.iter().filter(|e| e.global_position <= p).count() {
            0 => {
                return Err(ApiError::unprocessable(
                    "out-of-range",
                    format!("run {id} starts at log position {}", events[0].global_position),
                    vec![FieldProblem::new("position", "a position at or after the run's first event")],
                ));
            }
            n => n,
        },
        (_, _, Some(step)) => match cairn_runtime::replay::before_step(&events, step)? {
            Some(n) => n,
            None => {
                return Err(ApiError::unprocessable(
                    "step-not-reached",
                    format!("step `{step}` never started in run {id}"),
                    vec![FieldProblem::new("step", "a step the run started")],
                ));
            }
        },
        _ => events.len(),
    };
    Ok(axum::Json(cairn_runtime::replay::snapshot(&events, n)?))
}

/// `GET /runs/{id}/history`.
pub async fn history(S(state): S<Arc<State>>, Path(id): Path<String>) -> ApiResult<axum::Json<History>> {
    let id = parse_id(&id, "run")?;
    if state.store.stream_version(&cairn_events::run_stream(id)).await? == 0 {
        return Err(ApiError::not_found("unknown-run", format!("no run with id {id}")));
    }
    let db = state.read().await?;
    let rows = cairn_projections::queries::history(db, &id.to_string()).await?;
    let items = rows
        .into_iter()
        .map(|r| HistoryEntry {
            position: r.position,
            kind: r.kind,
            step_id: r.step_id,
            attempt: r.attempt,
            status: Some(r.status),
            started_at: r.started_at,
            ended_at: r.ended_at,
            duration_ms: r.duration_ms,
            error_kind: r.error_kind,
            error_message: r.error_message,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cost_micros: r.cost_micros,
            actor: r.actor,
            detail: r.detail,
            visit: r.visit,
        })
        .collect();
    Ok(axum::Json(History { run_id: id, items }))
}
