//! The `inbox` read model: what waits for people.

use std::collections::HashMap;

use cairn_events::{Event, RecordedEvent};
use futures_util::future::BoxFuture;

use super::{int_at, rows_of_runs, text_at, touched_runs};
use crate::db::{DbError, Tx, Val};
use crate::projection::Projection;

// ---- inbox ------------------------------------------------------------------

/// Forms and approvals waiting for people, by assignee, with deadlines.
pub struct Inbox;

impl Projection for Inbox {
    fn name(&self) -> &'static str {
        "inbox"
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
        &["inbox"]
    }

    fn create(&self, s: &str) -> Vec<String> {
        vec![format!(
            "CREATE TABLE IF NOT EXISTS inbox{s} (run_id TEXT NOT NULL, step_id TEXT NOT NULL, kind TEXT NOT NULL, assignees TEXT NOT NULL, summary TEXT, requested_at TEXT NOT NULL, deadline TEXT, status TEXT NOT NULL, decisions BIGINT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (run_id, step_id))"
        )]
    }

    fn wants(&self, t: &str) -> bool {
        matches!(
            t,
            "InputRequested"
                | "InputSubmitted"
                | "ApprovalRequested"
                | "ApprovalDecided"
                | "ApprovalExpired"
                | "StepCompleted"
                | "StepFailed"
                | "StepSkipped"
                | "RunCompleted"
                | "RunFailed"
                | "RunCancelled"
        )
    }
}

const INBOX_COLUMNS: [&str; 10] = [
    "run_id",
    "step_id",
    "kind",
    "assignees",
    "summary",
    "requested_at",
    "deadline",
    "status",
    "decisions",
    "updated_at",
];

/// One `inbox` row, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InboxRow {
    /// The run.
    pub run_id: String,
    /// The step that asks.
    pub step_id: String,
    /// `form` or `approval`.
    pub kind: String,
    /// Who may answer (a JSON array of names).
    pub assignees: String,
    /// The form's fields, or the approval's summary.
    pub summary: Option<String>,
    /// When it was asked (RFC 3339).
    pub requested_at: String,
    /// When it expires.
    pub deadline: Option<String>,
    /// `waiting`, `submitted`, `expired` or `done`.
    pub status: String,
    /// Approval decisions so far.
    pub decisions: i64,
    /// When the row last changed.
    pub updated_at: String,
}

impl InboxRow {
    /// The columns, in the order of `vals`.
    pub(crate) const COLUMNS: &[&str] = &INBOX_COLUMNS;

    fn vals(&self) -> Vec<Val> {
        vec![
            Val::from(self.run_id.as_str()),
            Val::from(self.step_id.as_str()),
            Val::from(self.kind.as_str()),
            Val::from(self.assignees.as_str()),
            Val::opt_text(self.summary.clone()),
            Val::from(self.requested_at.as_str()),
            Val::opt_text(self.deadline.clone()),
            Val::from(self.status.as_str()),
            Val::Int(self.decisions),
            Val::from(self.updated_at.as_str()),
        ]
    }

    /// The row read back (columns in `INBOX_COLUMNS` order).
    pub(crate) fn from_vals(r: &[Val]) -> InboxRow {
        InboxRow {
            run_id: text_at(r, 0).unwrap_or_default(),
            step_id: text_at(r, 1).unwrap_or_default(),
            kind: text_at(r, 2).unwrap_or_default(),
            assignees: text_at(r, 3).unwrap_or_default(),
            summary: text_at(r, 4),
            requested_at: text_at(r, 5).unwrap_or_default(),
            deadline: text_at(r, 6),
            status: text_at(r, 7).unwrap_or_default(),
            decisions: int_at(r, 8).unwrap_or_default(),
            updated_at: text_at(r, 9).unwrap_or_default(),
        }
    }

    /// The assignees (or approvers) as names.
    pub fn assignee_names(&self) -> Vec<String> {
        serde_json::from_str(&self.assignees).unwrap_or_default()
    }
}

impl Inbox {
    async fn fold(&self, tx: &mut Tx, suffix: &str, events: &[(&RecordedEvent, &Event)]) -> Result<(), DbError> {
        let table = format!("inbox{suffix}");
        // The rows that closing events can touch: those waiting, for the runs at hand.
        let mut rows: HashMap<(String, String), InboxRow> =
            rows_of_runs(tx, &table, &INBOX_COLUMNS, "status = 'waiting' AND", &touched_runs(events))
                .await?
                .iter()
                .map(|r| InboxRow::from_vals(r))
                .map(|r| ((r.run_id.clone(), r.step_id.clone()), r))
                .collect();
        let mut touched: std::collections::BTreeSet<(String, String)> = std::collections::BTreeSet::new();
        for (r, e) in events {
            let Some(run) = r.stream_id.strip_prefix("run-") else { continue };
            let at = r.recorded_at.clone();
            let mut close = |step: &str, status: &str, rows: &mut HashMap<(String, String), InboxRow>| {
                let key = (run.to_owned(), step.to_owned());
                if let Some(row) = rows.get_mut(&key)
                    && row.status == "waiting"
                {
                    row.status = status.to_owned();
                    row.updated_at = at.clone();
                    touched.insert(key);
                }
            };
            match e {
                Event::InputRequested(s) => {
                    let key = (run.to_owned(), s.step_id.clone());
                    rows.insert(
                        key.clone(),
                        InboxRow {
                            run_id: run.to_owned(),
                            step_id: s.step_id.clone(),
                            kind: "form".into(),
                            assignees: serde_json::to_string(&s.assignees).unwrap_or_default(),
                            summary: Some(s.fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ")),
                            requested_at: at.clone(),
                            deadline: s.deadline.map(|d| d.to_rfc3339()),
                            status: "waiting".into(),
                            decisions: 0,
                            updated_at: at.clone(),
                        },
                    );
                    touched.insert(key);
                }
                Event::ApprovalRequested(s) => {
                    let key = (run.to_owned(), s.step_id.clone());
                    rows.insert(
                        key.clone(),
                        InboxRow {
                            run_id: run.to_owned(),
                            step_id: s.step_id.clone(),
                            kind: "approval".into(),
                            assignees: serde_json::to_string(&s.approvers).unwrap_or_default(),
                            summary: Some(s.summary.clone()),
                            requested_at: at.clone(),
                            deadline: s.deadline.map(|d| d.to_rfc3339()),
                            status: "waiting".into(),
                            decisions: 0,
                            updated_at: at.clone(),
                        },
                    );
                    touched.insert(key);
                }
                Event::ApprovalDecided(s) => {
                    let key = (run.to_owned(), s.step_id.clone());
                    if !rows.contains_key(&key)
                        && let Some(found) = tx
                            .row(
                                &format!(
                                    "SELECT {} FROM {table} WHERE run_id = $1 AND step_id = $2",
                                    INBOX_COLUMNS.join(", ")
                                ),
                                &[Val::from(run), Val::from(s.step_id.as_str())],
                            )
                            .await?
                    {
                        rows.insert(key.clone(), InboxRow::from_vals(&found));
                    }
                    if let Some(row) = rows.get_mut(&key) {
                        row.decisions += 1;
                        row.updated_at = at.clone();
                        touched.insert(key);
                    }
                }
                Event::InputSubmitted(s) => close(&s.step_id, "submitted", &mut rows),
                Event::ApprovalExpired(s) => close(&s.step_id, "expired", &mut rows),
                Event::StepCompleted(s) => close(&s.step_id, "done", &mut rows),
                Event::StepFailed(s) => close(&s.step_id, "done", &mut rows),
                Event::StepSkipped(s) => close(&s.step_id, "done", &mut rows),
                Event::RunCompleted(_) | Event::RunFailed(_) | Event::RunCancelled(_) => {
                    let steps: Vec<String> = rows
                        .iter()
                        .filter(|((r, _), row)| r == run && row.status == "waiting")
                        .map(|((_, s), _)| s.clone())
                        .collect();
                    for s in steps {
                        close(&s, "done", &mut rows);
                    }
                }
                _ => {}
            }
        }
        let out: Vec<Vec<Val>> = touched.into_iter().filter_map(|k| rows.remove(&k)).map(|r| r.vals()).collect();
        crate::projection::write_rows(tx, &table, &INBOX_COLUMNS, Some(&["run_id", "step_id"]), out).await
    }
}
