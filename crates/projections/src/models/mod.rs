//! The read models: `runs`, `step_history`, `costs`, `audit_log`, `inbox`.
//! Each owns its tables (no projection reads another's), so each can be
//! rebuilt alone, and its module: the projection, its tables, its typed
//! row and its batch fold.

use cairn_events::{Event, RecordedEvent};
use serde_json::Value;

use crate::db::{DbError, Tx, Val};
use crate::projection::Projection;

mod audit;
mod costs;
mod history;
mod inbox;
mod runs;

pub use audit::{AuditEntry, AuditLog};
pub use costs::{CostTotal, Costs};
pub use history::{HistoryRow, StepHistory};
pub use inbox::{Inbox, InboxRow};
pub use runs::{RunRow, Runs};

/// Every projection Cairn has, in a stable order.
pub fn all() -> Vec<Box<dyn Projection>> {
    vec![Box::new(Runs), Box::new(StepHistory), Box::new(Costs), Box::new(AuditLog), Box::new(Inbox)]
}

/// A value as text, shortened to `n` characters.
fn short(v: &Value, n: usize) -> String {
    let t = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if t.chars().count() > n { format!("{}…", t.chars().take(n).collect::<String>()) } else { t }
}

// ---- batch folds ------------------------------------------------------------
//
// Each fold reproduces its projection's one-by-one `apply` exactly, but
// reads each touched row once and writes it once per batch; the property
// tests hold the two to the same tables.

/// Loads rows keyed by their first column, `IN`-list style, many per statement.
/// The run ids a batch touches, in order, once each.
fn touched_runs(events: &[(&RecordedEvent, &Event)]) -> Vec<String> {
    let ids: std::collections::BTreeSet<&str> =
        events.iter().filter_map(|(r, _)| r.stream_id.strip_prefix("run-")).collect();
    ids.into_iter().map(str::to_owned).collect()
}

/// The rows of `table` whose `run_id` is one of `runs` (and that match
/// `filter`), `IN`-list style, many runs per statement.
async fn rows_of_runs(
    tx: &mut Tx,
    table: &str,
    columns: &[&str],
    filter: &str,
    runs: &[String],
) -> Result<Vec<Vec<Val>>, DbError> {
    let mut out = Vec::new();
    for chunk in runs.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let args: Vec<Val> = chunk.iter().map(|k| Val::from(k.as_str())).collect();
        let sql = format!("SELECT {} FROM {table} WHERE {filter} run_id IN ({})", columns.join(", "), marks.join(","));
        out.extend(tx.rows(&sql, &args).await?);
    }
    Ok(out)
}

fn duplicate(what: String) -> DbError {
    DbError::Protocol(what)
}

/// An optional integer column.
fn opt_int(v: Option<i64>) -> Val {
    v.map_or(Val::Null, Val::Int)
}

/// Column `i` of a row as text, if it is text.
fn text_at(r: &[Val], i: usize) -> Option<String> {
    r.get(i).and_then(Val::as_text).map(str::to_owned)
}

/// Column `i` of a row as an integer, if it is one.
fn int_at(r: &[Val], i: usize) -> Option<i64> {
    r.get(i).and_then(Val::as_int)
}
