//! The questions the CLI (and next the HTTP API) asks, answered from the
//! read models, never by replaying a stream.

use crate::db::{DbError, ReadDb, Val};

/// A run's timeline: every attempt, retry, branch, AI call and human
/// decision, in log order. Columns: position, kind, step_id, attempt,
/// status, started_at, ended_at, duration_ms, error_kind, error_message,
/// input_tokens, output_tokens, cost_micros, actor, detail, visit.
pub async fn history(db: &ReadDb, run_id: &str) -> Result<Vec<Vec<Val>>, DbError> {
    db.rows(
        "SELECT position, kind, step_id, attempt, status, started_at, ended_at, duration_ms, error_kind, error_message, input_tokens, output_tokens, cost_micros, actor, detail, visit FROM step_history WHERE run_id = $1 ORDER BY position",
        &[Val::from(run_id)],
    )
    .await
}

/// One run's row of the `runs` model: run_id, workflow, version, status,
/// current_step, started_at, ended_at, started_by, error_kind,
/// error_message, failed_step.
pub async fn run(db: &ReadDb, run_id: &str) -> Result<Option<Vec<Val>>, DbError> {
    Ok(db
        .rows(
            "SELECT run_id, workflow, version, status, current_step, started_at, ended_at, started_by, error_kind, error_message, failed_step FROM runs WHERE run_id = $1",
            &[Val::from(run_id)],
        )
        .await?
        .into_iter()
        .next())
}

/// Runs, oldest first: run_id, workflow, version, status, started_at,
/// current_step.
pub async fn runs(db: &ReadDb, limit: i64) -> Result<Vec<Vec<Val>>, DbError> {
    db.rows(
        "SELECT run_id, workflow, version, status, started_at, current_step FROM runs ORDER BY started_at, run_id LIMIT $1",
        &[Val::Int(limit)],
    )
    .await
}

/// How to group costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostsBy {
    /// Per run.
    Run,
    /// Per workflow.
    Workflow,
    /// Per provider/model.
    Model,
    /// Per day (UTC).
    Day,
}

impl CostsBy {
    fn column(self) -> &'static str {
        match self {
            CostsBy::Run => "run_id",
            CostsBy::Workflow => "workflow",
            CostsBy::Model => "model",
            CostsBy::Day => "day",
        }
    }
}

/// Token and money totals grouped `by`, from `since` (a day, `YYYY-MM-DD`):
/// key, attempts, input_tokens, output_tokens, cost_micros, currency.
pub async fn costs(db: &ReadDb, by: CostsBy, since: Option<&str>) -> Result<Vec<Vec<Val>>, DbError> {
    let col = by.column();
    db.rows(
        &format!(
            "SELECT {col}, CAST(SUM(attempts) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(cost_micros) AS BIGINT), MAX(currency) FROM costs WHERE day >= $1 GROUP BY {col} ORDER BY {col}"
        ),
        &[Val::from(since.unwrap_or("0000-00-00"))],
    )
    .await
}

/// Audit filters.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this run.
    pub run: Option<String>,
    /// From this time (RFC 3339, inclusive).
    pub since: Option<String>,
    /// Until this time (RFC 3339, exclusive).
    pub until: Option<String>,
    /// At most this many rows.
    pub limit: i64,
    /// Only rows after this position (a page's cursor).
    pub after: Option<i64>,
}

/// Audit rows in log order: position, recorded_at, actor, action,
/// event_type, outcome, origin, resource, hash.
pub async fn audit(db: &ReadDb, f: &AuditFilter) -> Result<Vec<Vec<Val>>, DbError> {
    db.rows(
        "SELECT position, recorded_at, actor, action, event_type, outcome, origin, resource, hash, CASE WHEN event_type = 'AccessDenied' THEN details END FROM audit_log WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR run_id = $2) AND ($3 IS NULL OR recorded_at >= $3) AND ($4 IS NULL OR recorded_at < $4) AND position > $6 ORDER BY position LIMIT $5",
        &[
            Val::opt_text(f.actor.clone()),
            Val::opt_text(f.run.clone()),
            Val::opt_text(f.since.clone()),
            Val::opt_text(f.until.clone()),
            Val::Int(if f.limit > 0 { f.limit } else { i64::MAX }),
            Val::Int(f.after.unwrap_or(0)),
        ],
    )
    .await
}

/// What waits for people: run_id, step_id, kind, assignees (JSON),
/// summary, requested_at, deadline, decisions.
pub async fn inbox(db: &ReadDb) -> Result<Vec<Vec<Val>>, DbError> {
    db.rows(
        "SELECT run_id, step_id, kind, assignees, summary, requested_at, deadline, decisions FROM inbox WHERE status = 'waiting' ORDER BY requested_at",
        &[],
    )
    .await
}

/// Run filters for a page of runs, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only this status (`running`, `waiting`, `completed`, `failed`, `cancelled`).
    pub status: Option<String>,
    /// Started at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Started before this time (RFC 3339).
    pub until: Option<String>,
    /// The last row of the previous page: (started_at, run_id).
    pub before: Option<(String, String)>,
    /// At most this many rows.
    pub limit: i64,
}

/// A page of runs, newest first: run_id, workflow, version, status,
/// current_step, started_at, ended_at, started_by, error_kind,
/// error_message, failed_step.
pub async fn runs_page(db: &ReadDb, f: &RunFilter) -> Result<Vec<Vec<Val>>, DbError> {
    let (b_at, b_id) = f.before.clone().map_or((Val::Null, Val::from("")), |(a, i)| (Val::from(a), Val::from(i)));
    db.rows(
        "SELECT run_id, workflow, version, status, current_step, started_at, ended_at, started_by, error_kind, error_message, failed_step FROM runs WHERE ($1 IS NULL OR workflow = $1) AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR started_at >= $3) AND ($4 IS NULL OR started_at < $4) AND ($5 IS NULL OR started_at < $5 OR (started_at = $5 AND run_id < $6)) ORDER BY started_at DESC, run_id DESC LIMIT $7",
        &[
            Val::opt_text(f.workflow.clone()),
            Val::opt_text(f.status.clone()),
            Val::opt_text(f.since.clone()),
            Val::opt_text(f.until.clone()),
            b_at,
            b_id,
            Val::Int(if f.limit > 0 { f.limit } else { i64::MAX }),
        ],
    )
    .await
}

/// The streams of every workflow ever published (`workflow-<name>`), by name.
pub async fn workflow_streams(db: &ReadDb) -> Result<Vec<String>, DbError> {
    Ok(db
        .rows(
            "SELECT DISTINCT resource FROM audit_log WHERE event_type = 'WorkflowVersionPublished' ORDER BY resource",
            &[],
        )
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next().and_then(|v| v.as_text().map(str::to_owned)))
        .collect())
}
