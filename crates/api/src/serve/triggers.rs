//! Webhook triggers over HTTP: define (`PUT /triggers/{name}`), list, get,
//! delete, and the hooks themselves (`POST /hooks/{name}`, no API key: the
//! delivery's signature is its credential). See docs/operations.md
//! "Webhook triggers".

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State as S};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_runtime::TriggerRequest;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::State;
use super::extract::{Caller, JsonBody};
use super::problem::{ApiError, ApiResult};
use crate::commands::triggers::{TriggerView, view};

/// A trigger's definition.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefineTrigger {
    /// The published workflow each delivery starts.
    pub workflow: String,
    /// A version to pin (default: the latest at each delivery).
    #[serde(default)]
    pub version: Option<u32>,
    /// `github` (`X-Hub-Signature-256`) or `stripe` (`Stripe-Signature`).
    pub signature: String,
    /// The signing secret's name: the server reads `CAIRN_SECRET_<NAME>`.
    pub secret: String,
    /// Where a delivery's id is: `header:<Name>` or `body:<JSON pointer>`
    /// (default `header:X-GitHub-Delivery` for github, `body:/id` for stripe).
    #[serde(default)]
    pub delivery_id: Option<String>,
    /// The run's inputs: a JSON value whose strings are templates over
    /// `body` and `headers` (lowercase names).
    #[serde(default)]
    pub inputs: Option<Value>,
    /// Oldest a signed timestamp may be, in seconds (stripe; default 300).
    #[serde(default)]
    pub tolerance_seconds: Option<u64>,
}

/// Triggers.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TriggerList {
    /// By name.
    pub items: Vec<TriggerView>,
}

/// What a delivery did.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Delivery {
    /// The run it started (or that its delivery id started before).
    pub run_id: uuid::Uuid,
    /// The delivery id.
    pub delivery_id: String,
    /// Started by this delivery (false: a replay of one that did).
    pub started: bool,
    /// The run's status now.
    pub status: String,
}

/// `PUT /triggers/{name}`.
pub async fn define(
    S(state): S<Arc<State>>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<DefineTrigger>,
) -> ApiResult<axum::Json<TriggerView>> {
    let r = TriggerRequest {
        name,
        workflow: body.workflow,
        workflow_version: body.version,
        inputs: body.inputs.unwrap_or_else(|| Value::Object(Default::default())),
        signature: body.signature,
        secret: body.secret,
        delivery_id: body.delivery_id,
        tolerance_seconds: body.tolerance_seconds,
    };
    Ok(axum::Json(view(&state.engine.define_trigger(r, &caller.identity).await?)))
}

/// `GET /triggers`.
pub async fn list(S(state): S<Arc<State>>) -> ApiResult<axum::Json<TriggerList>> {
    let db = state.read().await?;
    let items = crate::commands::triggers::all(&state.engine, db).await.map_err(ApiError::internal)?;
    Ok(axum::Json(TriggerList { items }))
}

/// `GET /triggers/{name}`.
pub async fn get(S(state): S<Arc<State>>, Path(name): Path<String>) -> ApiResult<axum::Json<TriggerView>> {
    match state.engine.trigger(&name).await? {
        Some(d) => Ok(axum::Json(view(&d))),
        None => Err(ApiError::not_found("unknown-trigger", format!("no trigger named `{name}` (GET /triggers)"))),
    }
}

/// `DELETE /triggers/{name}`.
pub async fn delete(S(state): S<Arc<State>>, caller: Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    state.engine.delete_trigger(&name, &caller.identity).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /hooks/{name}`.
pub async fn hook(
    S(state): S<Arc<State>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let mut h = BTreeMap::new();
    for (k, v) in &headers {
        if let Ok(v) = v.to_str() {
            h.insert(k.as_str().to_ascii_lowercase(), v.to_owned());
        }
    }
    let drive = state.driver.drives();
    let (d, s) = state.engine.deliver(&name, &h, &body, drive).await?;
    if d.started {
        state.driver.kick_started(d.run_id, s.clone(), false);
    }
    let status = format!("{:?}", s.status).to_lowercase();
    let code = if d.started { StatusCode::CREATED } else { StatusCode::OK };
    let out = Delivery { run_id: d.run_id, delivery_id: d.delivery_id, started: d.started, status };
    Ok((code, axum::Json(out)).into_response())
}
