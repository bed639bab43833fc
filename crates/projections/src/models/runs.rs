//! The `runs` read model: one row per run.

use std::collections::HashMap;

use cairn_events::{Event, RecordedEvent};
use futures_util::future::BoxFuture;

use super::{duplicate, int_at, rows_of_runs, text_at, touched_runs};
use crate::db::{DbError, Tx, Val};
use crate::projection::Projection;

// ---- runs -----------------------------------------------------------------

/// One row per run: status, current step, workflow and version, times, who
/// started it.
pub struct Runs;

impl Projection for Runs {
    fn name(&self) -> &'static str {
        "runs"
    }

    fn apply_batch<'a>(
        &'a self,
        tx: &'a mut Tx,
        suffix: &'a str,
        events: &'a [(&'a RecordedEvent, &'a Event)],
    ) -> BoxFuture<'a, Result<(), DbError>> {
        Box::pin(self.fold(tx, suffix, events))
    }

    fn tables(&self) -> &'static [&'static str] {
        &["runs"]
    }

    fn create(&self, s: &str) -> Vec<String> {
        vec![format!(
            "CREATE TABLE IF NOT EXISTS runs{s} (run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, version BIGINT NOT NULL, status TEXT NOT NULL, current_step TEXT, started_at TEXT NOT NULL, ended_at TEXT, started_by TEXT NOT NULL, parent_run_id TEXT, error_kind TEXT, error_message TEXT, failed_step TEXT, updated_at TEXT NOT NULL, last_position BIGINT NOT NULL)"
        )]
    }

    fn indexes(&self) -> Vec<String> {
        // A page of runs is newest first, by workflow or status or neither
        // (`queries::runs_page`): each filter walks its own index in order
        // and stops after a page, whatever the number of runs.
        vec![
            "CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at, run_id)".to_owned(),
            "CREATE INDEX IF NOT EXISTS runs_by_workflow ON runs (workflow, started_at, run_id)".to_owned(),
            "CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, started_at, run_id)".to_owned(),
        ]
    }

    fn wants(&self, t: &str) -> bool {
        matches!(
            t,
            "RunStarted"
                | "StepStarted"
                | "StepCompleted"
                | "StepFailed"
                | "TimerStarted"
                | "InputRequested"
                | "ApprovalRequested"
                | "RunCompleted"
                | "RunFailed"
                | "RunCancelled"
                | "RunResumed"
        )
    }
}

const RUN_COLUMNS: [&str; 14] = [
    "run_id",
    "workflow",
    "version",
    "status",
    "current_step",
    "started_at",
    "ended_at",
    "started_by",
    "parent_run_id",
    "error_kind",
    "error_message",
    "failed_step",
    "updated_at",
    "last_position",
];

/// One `runs` row, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunRow {
    /// The run.
    pub run_id: String,
    /// Its workflow.
    pub workflow: String,
    /// The pinned version.
    pub version: i64,
    /// `running`, `waiting`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// The step started last.
    pub current_step: Option<String>,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended.
    pub ended_at: Option<String>,
    /// Who started it.
    pub started_by: String,
    /// The parent run of a child run.
    pub parent_run_id: Option<String>,
    /// Why it failed (or `cancelled`).
    pub error_kind: Option<String>,
    /// The failure's message.
    pub error_message: Option<String>,
    /// The step it failed at.
    pub failed_step: Option<String>,
    /// When the row last changed.
    pub updated_at: String,
    /// The log position of that change.
    pub last_position: i64,
}

impl RunRow {
    /// The columns, in the order of [`RunRow::vals`].
    pub(crate) const COLUMNS: &[&str] = &RUN_COLUMNS;

    fn vals(&self) -> Vec<Val> {
        vec![
            Val::from(self.run_id.as_str()),
            Val::from(self.workflow.as_str()),
            Val::Int(self.version),
            Val::from(self.status.as_str()),
            Val::opt_text(self.current_step.clone()),
            Val::from(self.started_at.as_str()),
            Val::opt_text(self.ended_at.clone()),
            Val::from(self.started_by.as_str()),
            Val::opt_text(self.parent_run_id.clone()),
            Val::opt_text(self.error_kind.clone()),
            Val::opt_text(self.error_message.clone()),
            Val::opt_text(self.failed_step.clone()),
            Val::from(self.updated_at.as_str()),
            Val::Int(self.last_position),
        ]
    }

    /// The row read back (columns in [`RunRow::COLUMNS`] order).
    pub(crate) fn from_vals(r: &[Val]) -> RunRow {
        RunRow {
            run_id: text_at(r, 0).unwrap_or_default(),
            workflow: text_at(r, 1).unwrap_or_default(),
            version: int_at(r, 2).unwrap_or_default(),
            status: text_at(r, 3).unwrap_or_default(),
            current_step: text_at(r, 4),
            started_at: text_at(r, 5).unwrap_or_default(),
            ended_at: text_at(r, 6),
            started_by: text_at(r, 7).unwrap_or_default(),
            parent_run_id: text_at(r, 8),
            error_kind: text_at(r, 9),
            error_message: text_at(r, 10),
            failed_step: text_at(r, 11),
            updated_at: text_at(r, 12).unwrap_or_default(),
            last_position: int_at(r, 13).unwrap_or_default(),
        }
    }
}

impl Runs {
    async fn fold(&self, tx: &mut Tx, suffix: &str, events: &[(&RecordedEvent, &Event)]) -> Result<(), DbError> {
        let table = format!("runs{suffix}");
        let mut existing: HashMap<String, RunRow> = rows_of_runs(tx, &table, &RUN_COLUMNS, "", &touched_runs(events))
            .await?
            .iter()
            .map(|r| RunRow::from_vals(r))
            .map(|r| (r.run_id.clone(), r))
            .collect();
        let mut new: HashMap<String, RunRow> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        for (r, e) in events {
            let Some(id) = r.stream_id.strip_prefix("run-") else { continue };
            let (at, position) = (r.recorded_at.clone(), i64::try_from(r.global_position).unwrap_or(i64::MAX));
            if let Event::RunStarted(s) = e {
                if existing.contains_key(id) || new.contains_key(id) {
                    return Err(duplicate(format!("run {id} was already started")));
                }
                new.insert(
                    id.to_owned(),
                    RunRow {
                        run_id: id.to_owned(),
                        workflow: s.workflow.clone(),
                        version: i64::from(s.workflow_version),
                        status: "running".into(),
                        started_at: at.clone(),
                        started_by: s.started_by.clone(),
                        parent_run_id: s.parent.as_ref().map(|p| p.run_id.to_string()),
                        updated_at: at,
                        last_position: position,
                        ..RunRow::default()
                    },
                );
                order.push(id.to_owned());
                continue;
            }
            let Some(row) = new.get_mut(id).or_else(|| existing.get_mut(id)) else { continue };
            match e {
                Event::StepStarted(s) => {
                    row.current_step = Some(s.step_id.clone());
                    row.status = "running".into();
                }
                Event::StepCompleted(_) | Event::StepFailed(_) => {
                    if row.status == "waiting" {
                        row.status = "running".into();
                    }
                }
                // An AI backoff is the run at work, not waiting.
                Event::TimerStarted(t) if t.purpose == "retry" => {}
                Event::TimerStarted(_) | Event::InputRequested(_) | Event::ApprovalRequested(_) => {
                    row.status = "waiting".into();
                }
                Event::RunResumed(_) => {
                    row.status = "running".into();
                    row.ended_at = None;
                    row.error_kind = None;
                    row.error_message = None;
                    row.failed_step = None;
                }
                Event::RunCompleted(_) => {
                    row.status = "completed".into();
                    row.ended_at = Some(at.clone());
                }
                Event::RunFailed(f) => {
                    row.status = "failed".into();
                    row.ended_at = Some(at.clone());
                    row.error_kind = Some(f.error_kind.clone());
                    row.error_message = Some(f.message.clone());
                    row.failed_step = f.failed_step.clone();
                }
                Event::RunCancelled(c) => {
                    row.status = "cancelled".into();
                    row.ended_at = Some(at.clone());
                    row.error_kind = Some("cancelled".into());
                    row.error_message = Some(format!(
                        "cancelled by {}{}",
                        c.by,
                        c.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
                    ));
                }
                _ => continue,
            }
            row.updated_at = at;
            row.last_position = position;
        }
        let inserts: Vec<Vec<Val>> = order.iter().filter_map(|id| new.remove(id)).map(|r| r.vals()).collect();
        crate::projection::write_rows(tx, &table, &RUN_COLUMNS, None, inserts).await?;
        let mut updates: Vec<RunRow> = existing.into_values().collect();
        updates.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        crate::projection::write_rows(
            tx,
            &table,
            &RUN_COLUMNS,
            Some(&["run_id"]),
            updates.iter().map(RunRow::vals).collect(),
        )
        .await
    }
}
