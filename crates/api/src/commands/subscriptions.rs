//! `cairn subscriptions` and `cairn deliveries`: lifecycle events delivered
//! to endpoints (signed) or to workflows, and the delivery log with its dead
//! letters. The same engine calls as `/subscriptions` and `/deliveries`.

use std::process::ExitCode;

use cairn_events::SubscriptionDefined;
use cairn_runtime::RunError;
use cairn_runtime::deliveries::{Delivery, SubscriptionRequest};
use schemars::JsonSchema;
use serde::Serialize;

use super::format::Format;

/// A subscription as the CLI and the API show it (its secret by name only).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SubscriptionView {
    /// Its name.
    pub name: String,
    /// The lifecycle events it wants.
    pub events: Vec<String>,
    /// Only runs of these workflows (empty: all).
    pub workflows: Vec<String>,
    /// Where events are POSTed.
    pub url: Option<String>,
    /// The signing secret's name.
    pub secret: Option<String>,
    /// Or the workflow each event starts.
    pub start: Option<String>,
    /// Attempts before a delivery is dead.
    pub max_attempts: u32,
    /// Who defined it.
    pub defined_by: String,
}

/// The view of a subscription.
pub fn view(d: &SubscriptionDefined) -> SubscriptionView {
    SubscriptionView {
        name: d.name.clone(),
        events: d.events.clone(),
        workflows: d.workflows.clone(),
        url: d.url.clone(),
        secret: d.secret.clone(),
        start: d.start.clone(),
        max_attempts: d.max_attempts,
        defined_by: d.by.clone(),
    }
}

/// A delivery as the CLI and the API show it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeliveryView {
    /// `<subscription>@<position>`.
    pub id: String,
    /// The subscription.
    pub subscription: String,
    /// The event's log position.
    pub position: u64,
    /// Its lifecycle name.
    pub event: String,
    /// Its run.
    pub run_id: Option<uuid::Uuid>,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// The endpoint's last HTTP status.
    pub last_status: Option<u16>,
    /// The last error.
    pub last_error: Option<String>,
    /// When it is tried next (pending).
    pub next_at: Option<String>,
    /// When it was last attempted.
    pub updated_at: String,
}

/// The view of a delivery.
pub fn delivery_view(d: &Delivery) -> DeliveryView {
    DeliveryView {
        id: d.id.clone(),
        subscription: d.subscription.clone(),
        position: d.position,
        event: d.event.clone(),
        run_id: d.run_id,
        status: d.status.clone(),
        attempts: d.attempts,
        last_status: d.last_status,
        last_error: d.last_error.clone(),
        next_at: d.next_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        updated_at: d.updated_at.clone(),
    }
}

/// The deliveries, newest first, filtered, at most `limit`.
pub async fn deliveries(
    engine: &cairn_runtime::Engine,
    status: Option<&str>,
    subscription: Option<&str>,
    limit: usize,
) -> Result<Vec<DeliveryView>, RunError> {
    let l = engine.deliveries().await?;
    let mut all: Vec<&Delivery> = l
        .deliveries
        .values()
        .filter(|d| status.is_none_or(|s| d.status == s) && subscription.is_none_or(|s| d.subscription == s))
        .collect();
    all.sort_by(|a, b| b.position.cmp(&a.position).then(a.id.cmp(&b.id)));
    Ok(all.into_iter().take(limit).map(delivery_view).collect())
}

/// `cairn subscriptions`.
#[derive(Debug, clap::Subcommand)]
pub enum SubscriptionsCommand {
    /// Subscribe an endpoint (`--url` with `--secret`) or a workflow
    /// (`--start`) to lifecycle events.
    Create {
        /// Its name.
        name: String,
        /// The events, comma-separated: run.started, run.completed,
        /// run.failed, run.cancelled, step.failed, approval.requested,
        /// approval.expired, or `*`.
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// Only runs of this workflow (repeatable; default: all).
        #[arg(long = "workflow")]
        workflows: Vec<String>,
        /// Where to POST each event.
        #[arg(long)]
        url: Option<String>,
        /// The signing secret's name (`CAIRN_SECRET_<NAME>` where deliveries are made).
        #[arg(long)]
        secret: Option<String>,
        /// Or: a workflow to start for each event (its input `event`).
        #[arg(long)]
        start: Option<String>,
        /// Attempts before a delivery is dead (default 8).
        #[arg(long)]
        max_attempts: Option<u32>,
    },
    /// Every subscription.
    List {
        /// `text` or `json`.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Delete a subscription.
    Delete {
        /// Its name.
        name: String,
    },
}

/// `cairn deliveries`.
#[derive(Debug, clap::Subcommand)]
pub enum DeliveriesCommand {
    /// The delivery log, newest first.
    List {
        /// Only `pending`, `delivered` or `dead` ones.
        #[arg(long, value_parser = ["pending", "delivered", "dead"])]
        status: Option<String>,
        /// Only this subscription's.
        #[arg(long)]
        subscription: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Put a dead delivery back to be tried again.
    Retry {
        /// Its id (`SUBSCRIPTION@POSITION`).
        id: String,
    },
}

/// Runs a `cairn subscriptions` command.
pub async fn subscriptions(
    database: &str,
    setup: &super::setup::SetupArgs,
    cmd: SubscriptionsCommand,
) -> anyhow::Result<ExitCode> {
    let by = setup.identity.clone().unwrap_or_else(|| "cli".into());
    let engine = super::setup::engine(database, setup, super::setup::load_secrets(None)?).await?;
    match cmd {
        SubscriptionsCommand::Create { name, events, workflows, url, secret, start, max_attempts } => {
            let r = SubscriptionRequest { name, events, workflows, url, secret, start, max_attempts };
            match engine.define_subscription(r, &by).await {
                Ok(d) => {
                    out!("subscription {} to {}", d.name, d.events.join(", "));
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => super::refused(e),
            }
        }
        SubscriptionsCommand::List { format } => {
            let all: Vec<SubscriptionView> = engine.subscriptions().await?.values().map(view).collect();
            if format == Format::Json {
                out!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(ExitCode::SUCCESS);
            }
            out!("{:<24} {:<40} target", "subscription", "events");
            for s in &all {
                let target =
                    s.url.clone().or_else(|| s.start.as_ref().map(|w| format!("start {w}"))).unwrap_or_default();
                out!("{:<24} {:<40} {target}", s.name, s.events.join(","));
            }
            Ok(ExitCode::SUCCESS)
        }
        SubscriptionsCommand::Delete { name } => match engine.delete_subscription(&name, &by).await {
            Ok(()) => {
                out!("subscription {name} is deleted");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => super::refused(e),
        },
    }
}

/// Runs a `cairn deliveries` command.
pub async fn deliveries_command(
    database: &str,
    setup: &super::setup::SetupArgs,
    cmd: DeliveriesCommand,
) -> anyhow::Result<ExitCode> {
    let by = setup.identity.clone().unwrap_or_else(|| "cli".into());
    let engine = super::setup::engine(database, setup, cairn_runtime::Secrets::default()).await?;
    match cmd {
        DeliveriesCommand::List { status, subscription, limit, format } => {
            let all = deliveries(&engine, status.as_deref(), subscription.as_deref(), limit).await?;
            if format == Format::Json {
                out!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(ExitCode::SUCCESS);
            }
            out!("{:<32} {:<20} {:<10} {:>8}  last error", "delivery", "event", "status", "attempts");
            for d in &all {
                let err = d.last_error.as_deref().unwrap_or("");
                out!("{:<32} {:<20} {:<10} {:>8}  {err}", d.id, d.event, d.status, d.attempts);
            }
            Ok(ExitCode::SUCCESS)
        }
        DeliveriesCommand::Retry { id } => match engine.requeue_delivery(&id, &by).await {
            Ok(()) => {
                out!("delivery {id} is pending again");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => super::refused(e),
        },
    }
}
