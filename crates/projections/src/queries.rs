//! The questions the CLI (and next the HTTP API) asks, answered from the
//! read models, never by replaying a stream.

use crate::db::{DbError, ReadDb, Val};
use crate::models::{AuditEntry, CostTotal, HistoryRow, InboxRow, RunRow};

/// A run's timeline: every attempt, retry, branch, AI call and human
/// decision, in log order.
pub async fn history(db: &ReadDb, run_id: &str) -> Result<Vec<HistoryRow>, DbError> {
    let sql =
        format!("SELECT {} FROM step_history WHERE run_id = $1 ORDER BY position", HistoryRow::COLUMNS.join(", "));
    Ok(db.rows(&sql, &[Val::from(run_id)]).await?.iter().map(|r| HistoryRow::from_vals(r)).collect())
}

/// One run's row of the `runs` model.
pub async fn run(db: &ReadDb, run_id: &str) -> Result<Option<RunRow>, DbError> {
    let sql = format!("SELECT {} FROM runs WHERE run_id = $1", RunRow::COLUMNS.join(", "));
    Ok(db.rows(&sql, &[Val::from(run_id)]).await?.first().map(|r| RunRow::from_vals(r)))
}

/// Runs, oldest first.
pub async fn runs(db: &ReadDb, limit: i64) -> Result<Vec<RunRow>, DbError> {
    let sql = format!("SELECT {} FROM runs ORDER BY started_at, run_id LIMIT $1", RunRow::COLUMNS.join(", "));
    Ok(db.rows(&sql, &[Val::Int(limit)]).await?.iter().map(|r| RunRow::from_vals(r)).collect())
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

/// Token and money totals grouped `by`, from the day `since` through the
/// day `until`, both included (days are `YYYY-MM-DD`, UTC).
pub async fn costs(
    db: &ReadDb,
    by: CostsBy,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<Vec<CostTotal>, DbError> {
    let col = by.column();
    let rows = db.rows(
        &format!(
            "SELECT {col}, CAST(SUM(attempts) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(cost_micros) AS BIGINT), MAX(currency) FROM costs WHERE day >= $1 AND day <= $2 GROUP BY {col} ORDER BY {col}"
        ),
        &[Val::from(since.unwrap_or("0000-00-00")), Val::from(until.unwrap_or("9999-99-99"))],
    )
    .await?;
    Ok(rows.iter().map(|r| CostTotal::from_vals(r)).collect())
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

/// Audit entries in log order.
pub async fn audit(db: &ReadDb, f: &AuditFilter) -> Result<Vec<AuditEntry>, DbError> {
    let sql = format!(
        "SELECT {} FROM audit_log WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR run_id = $2) AND ($3 IS NULL OR recorded_at >= $3) AND ($4 IS NULL OR recorded_at < $4) AND position > $6 ORDER BY position LIMIT $5",
        AuditEntry::SELECT
    );
    let rows = db
        .rows(
            &sql,
            &[
                Val::opt_text(f.actor.clone()),
                Val::opt_text(f.run.clone()),
                Val::opt_text(f.since.clone()),
                Val::opt_text(f.until.clone()),
                Val::Int(if f.limit > 0 { f.limit } else { i64::MAX }),
                Val::Int(f.after.unwrap_or(0)),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| AuditEntry::from_vals(r)).collect())
}

/// What waits for people, oldest request first.
pub async fn inbox(db: &ReadDb) -> Result<Vec<InboxRow>, DbError> {
    let sql =
        format!("SELECT {} FROM inbox WHERE status = 'waiting' ORDER BY requested_at", InboxRow::COLUMNS.join(", "));
    Ok(db.rows(&sql, &[]).await?.iter().map(|r| InboxRow::from_vals(r)).collect())
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

/// The conditions on `runs` (its columns prefixed by `prefix`) of the
/// filter's workflow, status, since and until, with their arguments
/// (`$1`…), for the statements that select runs.
fn run_conditions(f: &RunFilter, prefix: &str) -> (Vec<String>, Vec<Val>) {
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<Val> = Vec::new();
    for (col, op, v) in [
        ("workflow", "=", &f.workflow),
        ("status", "=", &f.status),
        ("started_at", ">=", &f.since),
        ("started_at", "<", &f.until),
    ] {
        if let Some(v) = v {
            args.push(Val::from(v.as_str()));
            conds.push(format!("{prefix}{col} {op} ${}", args.len()));
        }
    }
    (conds, args)
}

/// A page of runs, newest first. Only the filters given are in the
/// statement, so the planner walks the index that serves them in order
/// (`runs_by_workflow`, `runs_by_status`, `runs_by_start`) and stops after
/// a page: a page costs the same on the 100,000th run.
pub async fn runs_page(db: &ReadDb, f: &RunFilter) -> Result<Vec<RunRow>, DbError> {
    let (mut conds, mut args) = run_conditions(f, "");
    let mut arg = |v: Val| {
        args.push(v);
        format!("${}", args.len())
    };
    if let Some((at, id)) = &f.before {
        let (a, b) = (arg(Val::from(at.as_str())), arg(Val::from(id.as_str())));
        conds.push(format!("(started_at, run_id) < ({a}, {b})"));
    }
    let limit = arg(Val::Int(if f.limit > 0 { f.limit } else { i64::MAX }));
    let sql = format!(
        "SELECT {} FROM runs{}{} ORDER BY started_at DESC, run_id DESC LIMIT {limit}",
        RunRow::COLUMNS.join(", "),
        if conds.is_empty() { "" } else { " WHERE " },
        conds.join(" AND ")
    );
    let rows = db.rows(&sql, &args).await?;
    Ok(rows.iter().map(|r| RunRow::from_vals(r)).collect())
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

/// Every schedule's stream that was ever defined (`schedule-<name>`), by name.
pub async fn schedule_streams(db: &ReadDb) -> Result<Vec<String>, DbError> {
    Ok(db
        .rows("SELECT DISTINCT resource FROM audit_log WHERE event_type = 'ScheduleDefined' ORDER BY resource", &[])
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next().and_then(|v| v.as_text().map(str::to_owned)))
        .collect())
}

/// Every webhook trigger's stream that was ever defined (`trigger-<name>`).
pub async fn trigger_streams(db: &ReadDb) -> Result<Vec<String>, DbError> {
    Ok(db
        .rows("SELECT DISTINCT resource FROM audit_log WHERE event_type = 'TriggerDefined' ORDER BY resource", &[])
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next().and_then(|v| v.as_text().map(str::to_owned)))
        .collect())
}

/// The step attempts (`attempt` and `ai` entries of the history) of the
/// runs that `f` selects (its workflow, status, since and until; no
/// limit): `(workflow, step, status, duration in ms)`, for reports.
pub async fn step_attempts(db: &ReadDb, f: &RunFilter) -> Result<Vec<(String, String, String, Option<i64>)>, DbError> {
    let (mut conds, args) = run_conditions(f, "r.");
    conds.push("h.kind IN ('attempt', 'ai')".to_owned());
    let sql = format!(
        "SELECT r.workflow, h.step_id, h.status, h.duration_ms FROM step_history h JOIN runs r ON r.run_id = h.run_id WHERE {} ORDER BY r.workflow, h.step_id",
        conds.join(" AND ")
    );
    Ok(db
        .rows(&sql, &args)
        .await?
        .into_iter()
        .map(|r| {
            let text = |i: usize| r.get(i).and_then(Val::as_text).unwrap_or_default().to_owned();
            (text(0), text(1), text(2), r.get(3).and_then(Val::as_int))
        })
        .collect())
}
