//! Lifecycle subscriptions and the delivery log over HTTP; see
//! docs/operations.md "Lifecycle subscriptions".

use std::sync::Arc;

use axum::extract::{Path, State as S};
use axum::http::StatusCode;
use cairn_runtime::deliveries::SubscriptionRequest;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::State;
use super::extract::{Caller, JsonBody, Q};
use super::problem::ApiResult;
use crate::commands::subscriptions::{DeliveryView, SubscriptionView, view};

/// A subscription's definition.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefineSubscription {
    /// The lifecycle events: `run.started`, `run.completed`, `run.failed`,
    /// `run.cancelled`, `step.failed`, `approval.requested`,
    /// `approval.expired`, or `*`.
    pub events: Vec<String>,
    /// Only runs of these workflows (default: all).
    #[serde(default)]
    pub workflows: Vec<String>,
    /// Where to POST each event (with `secret`).
    #[serde(default)]
    pub url: Option<String>,
    /// The signing secret's name (`CAIRN_SECRET_<NAME>` on the servers).
    #[serde(default)]
    pub secret: Option<String>,
    /// Or a workflow to start for each event (its input `event`).
    #[serde(default)]
    pub start: Option<String>,
    /// Attempts before a delivery is dead (default 8).
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// Subscriptions.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SubscriptionList {
    /// By name.
    pub items: Vec<SubscriptionView>,
}

/// Deliveries.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub items: Vec<DeliveryView>,
}

/// Which deliveries.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// `pending`, `delivered` or `dead`.
    #[serde(default)]
    pub status: Option<DeliveryStatus>,
    /// One subscription's.
    #[serde(default)]
    pub subscription: Option<String>,
    /// At most this many (default 100).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

/// A delivery's status.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Tried again later.
    Pending,
    /// Delivered.
    Delivered,
    /// No attempts left.
    Dead,
}

/// `PUT /subscriptions/{name}`.
pub async fn define(
    S(state): S<Arc<State>>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<DefineSubscription>,
) -> ApiResult<axum::Json<SubscriptionView>> {
    let r = SubscriptionRequest {
        name,
        events: b.events,
        workflows: b.workflows,
        url: b.url,
        secret: b.secret,
        start: b.start,
        max_attempts: b.max_attempts,
    };
    Ok(axum::Json(view(&state.engine.define_subscription(r, &caller.identity).await?)))
}

/// `GET /subscriptions`.
pub async fn list(S(state): S<Arc<State>>) -> ApiResult<axum::Json<SubscriptionList>> {
    let items = state.engine.subscriptions().await?.values().map(view).collect();
    Ok(axum::Json(SubscriptionList { items }))
}

/// `DELETE /subscriptions/{name}`.
pub async fn delete(S(state): S<Arc<State>>, caller: Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    state.engine.delete_subscription(&name, &caller.identity).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /deliveries`.
pub async fn deliveries(S(state): S<Arc<State>>, Q(q): Q<DeliveryQuery>) -> ApiResult<axum::Json<DeliveryList>> {
    let status = q.status.map(|s| match s {
        DeliveryStatus::Pending => "pending",
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Dead => "dead",
    });
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(super::problem::ApiError::bad_request("bad-query", "limit must be between 1 and 1000"));
    }
    let limit = limit as usize;
    let items =
        crate::commands::subscriptions::deliveries(&state.engine, status, q.subscription.as_deref(), limit).await?;
    Ok(axum::Json(DeliveryList { items }))
}

/// `POST /deliveries/{id}/retry`.
pub async fn retry(S(state): S<Arc<State>>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.engine.requeue_delivery(&id, &caller.identity).await?;
    Ok(StatusCode::ACCEPTED)
}
