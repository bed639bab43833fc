//! Schedules over HTTP: define (`PUT /schedules/{name}`), list with the next
//! firings, get, pause, resume, delete, backfill. The same engine calls as
//! `cairn schedules`; see docs/operations.md "Schedules".

use std::sync::Arc;

use axum::extract::{Path, State as S};
use cairn_runtime::ScheduleRequest;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::State;
use super::extract::{Caller, JsonBody, OptJson};
use super::problem::{ApiError, ApiResult};
use crate::commands::schedules::{ScheduleView, view};

/// A schedule's definition.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefineSchedule {
    /// The published workflow each firing starts.
    pub workflow: String,
    /// A version to pin (default: the latest at each firing).
    #[serde(default)]
    pub version: Option<u32>,
    /// The cron expression: 5 fields, or 6 with seconds first; `MON`,
    /// `JAN`, `L`, `#`, `W`; `@daily` and the like.
    pub cron: String,
    /// The IANA time zone it is read in (default `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Each run's inputs.
    #[serde(default)]
    pub inputs: Option<Value>,
    /// While an earlier run still runs: `skip` (default), `buffer_one`,
    /// `allow_all`, `cancel_other`.
    #[serde(default)]
    pub overlap: Option<String>,
    /// How far back missed firings are caught up after downtime (`10m`,
    /// the default; `0s`: none).
    #[serde(default)]
    pub catchup_window: Option<String>,
    /// Most delay added to each firing (`30s`; default none).
    #[serde(default)]
    pub jitter: Option<String>,
}

/// Schedules.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ScheduleList {
    /// By name.
    pub items: Vec<ScheduleView>,
}

/// Why a schedule is paused.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseSchedule {
    /// Why (kept in the audit log).
    #[serde(default)]
    pub reason: Option<String>,
}

/// A past range to backfill.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backfill {
    /// From (RFC 3339).
    pub from: DateTime<Utc>,
    /// To, inclusive (RFC 3339, not after now).
    pub to: DateTime<Utc>,
}

/// One firing of a backfill.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BackfillFiring {
    /// Its nominal time.
    pub nominal_at: String,
    /// Its run.
    pub run_id: uuid::Uuid,
    /// Started by this request (false: it had its run already).
    pub started: bool,
}

/// What a backfill started.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Backfilled {
    /// In time order.
    pub items: Vec<BackfillFiring>,
}

fn duration(field: &str, s: Option<&str>, default: &str) -> Result<std::time::Duration, ApiError> {
    let s = s.unwrap_or(default);
    cairn_runtime::lang::parse_duration(s)
        .map_err(|e| ApiError::coded("invalid-schedule", format!("`{field}` {s:?}: {e}")))
}

async fn current(state: &State, name: &str) -> ApiResult<ScheduleView> {
    let s = state.engine.schedule(name).await?.ok_or_else(|| {
        ApiError::not_found("unknown-schedule", format!("no schedule named `{name}` (GET /schedules lists them)"))
    })?;
    view(&s, state.engine.clock().now()).ok_or_else(|| ApiError::internal("a schedule without a definition"))
}

/// `PUT /schedules/{name}`.
pub async fn define(
    S(state): S<Arc<State>>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<DefineSchedule>,
) -> ApiResult<axum::Json<ScheduleView>> {
    let r = ScheduleRequest {
        name: name.clone(),
        workflow: body.workflow,
        workflow_version: body.version,
        cron: body.cron,
        timezone: body.timezone.unwrap_or_else(|| "UTC".into()),
        inputs: body.inputs.unwrap_or_else(|| Value::Object(Default::default())),
        overlap: body.overlap.unwrap_or_else(|| "skip".into()),
        catchup_window: duration("catchup_window", body.catchup_window.as_deref(), "10m")?,
        jitter: duration("jitter", body.jitter.as_deref(), "0s")?,
    };
    state.engine.define_schedule(r, &caller.identity).await?;
    Ok(axum::Json(current(&state, &name).await?))
}

/// `GET /schedules`.
pub async fn list(S(state): S<Arc<State>>) -> ApiResult<axum::Json<ScheduleList>> {
    let db = state.read().await?;
    let items = crate::commands::schedules::all(&state.engine, db).await.map_err(ApiError::internal)?;
    Ok(axum::Json(ScheduleList { items }))
}

/// `GET /schedules/{name}`.
pub async fn get(S(state): S<Arc<State>>, Path(name): Path<String>) -> ApiResult<axum::Json<ScheduleView>> {
    Ok(axum::Json(current(&state, &name).await?))
}

/// `POST /schedules/{name}/pause`.
pub async fn pause(
    S(state): S<Arc<State>>,
    caller: Caller,
    Path(name): Path<String>,
    OptJson(body): OptJson<PauseSchedule>,
) -> ApiResult<axum::Json<ScheduleView>> {
    state.engine.pause_schedule(&name, &caller.identity, body.reason).await?;
    Ok(axum::Json(current(&state, &name).await?))
}

/// `POST /schedules/{name}/resume`.
pub async fn resume(
    S(state): S<Arc<State>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<ScheduleView>> {
    state.engine.resume_schedule(&name, &caller.identity).await?;
    Ok(axum::Json(current(&state, &name).await?))
}

/// `DELETE /schedules/{name}`.
pub async fn delete(
    S(state): S<Arc<State>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<ScheduleView>> {
    state.engine.delete_schedule(&name, &caller.identity).await?;
    Ok(axum::Json(current(&state, &name).await?))
}

/// `POST /schedules/{name}/backfill`.
pub async fn backfill(
    S(state): S<Arc<State>>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<Backfill>,
) -> ApiResult<axum::Json<Backfilled>> {
    let list = state.engine.backfill_schedule(&name, body.from, body.to, &caller.identity).await?;
    let items = list
        .into_iter()
        .map(|(t, run_id, started)| BackfillFiring {
            nominal_at: t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            run_id,
            started,
        })
        .collect();
    Ok(axum::Json(Backfilled { items }))
}
