//! Audit and cost queries, and the compliance export.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State as S;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use cairn_events::export::{ExportFilter, Format};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::State;
use super::extract::{Caller, Pos, Q};
use super::problem::{ApiError, ApiResult};

/// Audit filters.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this actor (an identity, `engine`, `cli`).
    #[serde(default)]
    pub actor: Option<String>,
    /// Only this run.
    #[serde(default)]
    pub run: Option<uuid::Uuid>,
    /// From this time (RFC 3339, inclusive).
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// Until this time (RFC 3339, exclusive).
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<Pos>,
    /// Rows per page (1–1000, default 100).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

/// One audit row.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AuditRow {
    /// The event's position in the log.
    pub position: i64,
    /// When.
    pub recorded_at: String,
    /// Who.
    pub actor: String,
    /// What, in words (`start run`, `approve`, …).
    pub action: String,
    /// The event type.
    pub event_type: String,
    /// `success`, `failure`, or `denied` (a refused request).
    pub outcome: String,
    /// Why a request was refused (`bad-key`, `not-allowed`, `bad-token`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Which build and trace wrote it; for a refusal, the client's address first.
    pub origin: String,
    /// What it is about (`run-<id>/<step>`, `workflow-<name>`, `apikeys`).
    pub resource: String,
    /// The event's hash (check it with an export).
    pub hash: String,
}

/// A page of the audit log.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AuditPage {
    /// In log order.
    pub items: Vec<AuditRow>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<u64>,
}

/// How to group costs.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// Per run.
    Run,
    /// Per workflow.
    Workflow,
    /// Per provider/model.
    Model,
    /// Per day (UTC).
    Day,
}

/// Cost filters.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CostsQuery {
    /// Group by `run`, `workflow`, `model` or `day` (default `workflow`).
    #[serde(default)]
    pub by: Option<GroupBy>,
    /// From this day on (`YYYY-MM-DD`, UTC).
    #[serde(default)]
    pub since: Option<chrono::NaiveDate>,
    /// Through this day, included (`YYYY-MM-DD`, UTC).
    #[serde(default)]
    pub until: Option<chrono::NaiveDate>,
}

/// Totals of one group.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CostRow {
    /// The run id, workflow, `provider/model` or day.
    pub key: String,
    /// AI attempts.
    pub attempts: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Money, in millionths of the currency.
    pub cost_micros: i64,
    /// The currency.
    pub currency: Option<String>,
}

/// Cost totals.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Costs {
    /// What the rows are grouped by.
    pub by: String,
    /// One row per group.
    pub items: Vec<CostRow>,
}

/// `GET /audit`.
pub async fn audit(S(state): S<Arc<State>>, Q(q): Q<AuditQuery>) -> ApiResult<axum::Json<AuditPage>> {
    let limit = i64::from(q.limit.unwrap_or(100));
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("bad-query", "limit must be between 1 and 1000"));
    }
    let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let f = cairn_projections::queries::AuditFilter {
        actor: q.actor,
        run: q.run.map(|r| r.to_string()),
        since: q.since.map(ts),
        until: q.until.map(ts),
        limit: limit + 1,
        after: q.cursor.map(|c| i64::try_from(c.0).unwrap_or(i64::MAX)),
    };
    let db = state.read().await?;
    let mut rows = cairn_projections::queries::audit(db, &f).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let items: Vec<AuditRow> = rows
        .iter()
        .map(|r| AuditRow {
            position: r.position,
            recorded_at: r.recorded_at.clone(),
            actor: r.actor.clone(),
            action: r.action.clone(),
            event_type: r.event_type.clone(),
            outcome: r.outcome.clone(),
            reason: r.denied.as_deref().and_then(|d| {
                serde_json::from_str::<serde_json::Value>(d).ok()?.get("reason")?.as_str().map(str::to_owned)
            }),
            origin: r.origin.clone(),
            resource: r.resource.clone(),
            hash: r.hash.clone(),
        })
        .collect();
    let next_cursor = if more { items.last().map(|r| r.position as u64) } else { None };
    Ok(axum::Json(AuditPage { items, next_cursor }))
}

/// `GET /costs`.
pub async fn costs(S(state): S<Arc<State>>, Q(q): Q<CostsQuery>) -> ApiResult<axum::Json<Costs>> {
    use cairn_projections::queries::CostsBy;
    let (by, name) = match q.by.unwrap_or(GroupBy::Workflow) {
        GroupBy::Run => (CostsBy::Run, "run"),
        GroupBy::Workflow => (CostsBy::Workflow, "workflow"),
        GroupBy::Model => (CostsBy::Model, "model"),
        GroupBy::Day => (CostsBy::Day, "day"),
    };
    let day = |d: Option<chrono::NaiveDate>| d.map(|d| d.format("%Y-%m-%d").to_string());
    let db = state.read().await?;
    let rows = cairn_projections::queries::costs(db, by, day(q.since).as_deref(), day(q.until).as_deref()).await?;
    let items = rows
        .into_iter()
        .map(|r| CostRow {
            key: r.key,
            attempts: r.attempts,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cost_micros: r.cost_micros,
            currency: r.currency,
        })
        .collect();
    Ok(axum::Json(Costs { by: name.to_owned(), items }))
}

/// The export formats.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// JSON lines: records, then each stream's head, then the manifest.
    #[default]
    Jsonl,
    /// CSV records; the heads and manifest from `/exports/audit/manifest`.
    Csv,
}

/// What to export.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `jsonl` (default) or `csv`.
    #[serde(default)]
    pub format: Option<ExportFormat>,
    /// Events recorded at or after this time (RFC 3339).
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// Events recorded before this time (RFC 3339).
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// Only this run's events.
    #[serde(default)]
    pub run: Option<uuid::Uuid>,
    /// Events at or before this log position (default: the head when the
    /// request arrives; the response's `Cairn-Export-Through` header says
    /// which, so the manifest of a CSV export can be asked for the same
    /// records).
    #[serde(default)]
    pub through: Option<Pos>,
}

impl ExportQuery {
    async fn filter(&self, state: &State) -> ApiResult<ExportFilter> {
        let through = match self.through {
            Some(t) => t.0,
            None => state.store.head_position().await?,
        };
        Ok(ExportFilter {
            since: self.since,
            until: self.until,
            stream: self.run.map(cairn_events::run_stream),
            through: Some(through),
        })
    }
}

/// Bytes written by the export, sent to the response in chunks.
/// A plain blocking channel: the export runs on a blocking thread inside
/// the runtime's context, where tokio's own blocking send may not be used.
struct ChannelWriter {
    tx: std::sync::mpsc::SyncSender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx.send(Ok(chunk)).map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

/// Runs an export on a blocking thread, streaming what it writes.
fn stream_export(state: &State, filter: ExportFilter, format: Format, manifest_only: bool) -> Body {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Bytes, std::io::Error>>(4);
    let store = state.store.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter { tx: tx.clone(), buf: Vec::new() };
        let r = if manifest_only {
            let mut sink = std::io::sink();
            handle.block_on(cairn_events::export::export(&*store, &filter, format, &mut sink, Some(&mut w)))
        } else if format == Format::Csv {
            // CSV carries no trailer: its heads and manifest come from /exports/audit/manifest.
            let mut sink = std::io::sink();
            handle.block_on(cairn_events::export::export(&*store, &filter, format, &mut w, Some(&mut sink)))
        } else {
            handle.block_on(cairn_events::export::export(&*store, &filter, format, &mut w, None))
        };
        let r = r.map_err(|e| std::io::Error::other(e.to_string())).and_then(|_| std::io::Write::flush(&mut w));
        if let Err(e) = r {
            tracing::warn!(error = %e, "export stopped");
            let _ = tx.send(Err(e));
        }
    });
    // Each chunk is taken on a blocking thread too (64 KiB at a time).
    Body::from_stream(futures_util::stream::unfold(rx, |rx| async move {
        let (rx, next) = tokio::task::spawn_blocking(move || {
            let next = rx.recv().ok();
            (rx, next)
        })
        .await
        .ok()?;
        next.map(|c| (c, rx))
    }))
}

/// `GET /exports/audit`.
pub async fn export(S(state): S<Arc<State>>, caller: Caller, Q(q): Q<ExportQuery>) -> ApiResult<Response> {
    let filter = q.filter(&state).await?;
    let through = filter.through.unwrap_or(0);
    let format = match q.format.unwrap_or_default() {
        ExportFormat::Jsonl => Format::Jsonl,
        ExportFormat::Csv => Format::Csv,
    };
    tracing::info!(by = %caller.identity, key_id = ?caller.key_id, through, "compliance export");
    let body = stream_export(&state, filter, format, false);
    let mut r = body.into_response();
    let h = r.headers_mut();
    let (ctype, ext) = if format == Format::Csv { ("text/csv", "csv") } else { ("application/x-ndjson", "jsonl") };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"cairn-audit-{through}.{ext}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&through.to_string()) {
        h.insert("cairn-export-through", v);
    }
    Ok(r)
}

/// `GET /exports/audit/manifest`: the heads and manifest of the export
/// with the same parameters (give `through`), as JSON lines, for CSV.
pub async fn manifest(S(state): S<Arc<State>>, Q(q): Q<ExportQuery>) -> ApiResult<Response> {
    let filter = q.filter(&state).await?;
    let through = filter.through.unwrap_or(0);
    let format = match q.format.unwrap_or(ExportFormat::Csv) {
        ExportFormat::Jsonl => Format::Jsonl,
        ExportFormat::Csv => Format::Csv,
    };
    let mut r = stream_export(&state, filter, format, true).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    if let Ok(v) = HeaderValue::from_str(&through.to_string()) {
        r.headers_mut().insert("cairn-export-through", v);
    }
    Ok(r)
}
