//! What a projection is: a name, its tables, the event types it wants and a
//! handler that applies one event inside the runner's transaction.

use cairn_events::{Event, RecordedEvent};
use futures_util::future::BoxFuture;

use crate::db::{DbError, Tx};

/// One event as a handler sees it.
pub struct Input<'a> {
    /// Appended to every table name: empty for the live tables,
    /// `__rebuild` while a rebuild fills fresh ones.
    pub suffix: &'a str,
    /// The stored event (position, stream, time, metadata, hash).
    pub recorded: &'a RecordedEvent,
    /// The decoded event.
    pub event: &'a Event,
}

impl Input<'_> {
    /// A table name with the current suffix.
    pub fn table(&self, name: &str) -> String {
        format!("{name}{}", self.suffix)
    }

    /// The run id of a `run-<id>` stream.
    pub fn run_id(&self) -> Option<&str> {
        self.recorded.stream_id.strip_prefix("run-")
    }
}

/// A read model built from the log.
pub trait Projection: Send + Sync {
    /// Its name (`runs`, `step_history`, …), unique.
    fn name(&self) -> &'static str;

    /// The shape of its tables and what they mean. Raise it when either
    /// changes: a worker that finds tables of another version drops them
    /// and builds the projection again from position 0 (which also clears
    /// a stop that the old version made).
    fn version(&self) -> u32 {
        1
    }

    /// The tables it owns, without suffix.
    fn tables(&self) -> &'static [&'static str];

    /// `CREATE TABLE IF NOT EXISTS` statements for its tables with `suffix`.
    fn create(&self, suffix: &str) -> Vec<String>;

    /// `CREATE INDEX IF NOT EXISTS` statements for its live tables (no
    /// suffix): made at start-up (so an older database gains them) and
    /// after a rebuild's swap (a rebuild fills its fresh tables without
    /// them, and the old tables' indexes go with the old tables).
    fn indexes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether it wants events of this type (others are passed over, but
    /// the checkpoint still moves past them).
    fn wants(&self, event_type: &str) -> bool;

    /// Applies a batch of wanted events, in order, within one transaction:
    /// folds them in memory and reads and writes each touched row once.
    /// Any batching of the same events must leave the same tables (the
    /// property tests compare batches of one, of random sizes and of the
    /// whole log). An error stops the projection (never skipped); the
    /// runner then applies the batch one event at a time to name the event
    /// at fault.
    fn apply_batch<'a>(
        &'a self,
        tx: &'a mut Tx,
        suffix: &'a str,
        events: &'a [(&'a RecordedEvent, &'a Event)],
    ) -> BoxFuture<'a, Result<(), DbError>>;

    /// Applies one event: a batch of one.
    fn apply<'a>(&'a self, tx: &'a mut Tx, input: Input<'a>) -> BoxFuture<'a, Result<(), DbError>> {
        Box::pin(async move {
            let one = [(input.recorded, input.event)];
            self.apply_batch(tx, input.suffix, &one).await
        })
    }
}

/// Inserts (or, with `key`, upserts: every other column takes the new
/// value) `rows` of `columns` into `table`, many rows per statement.
pub async fn write_rows(
    tx: &mut Tx,
    table: &str,
    columns: &[&str],
    key: Option<&[&str]>,
    rows: Vec<Vec<crate::db::Val>>,
) -> Result<(), DbError> {
    // Stay well under SQLite's and PostgreSQL's bound-parameter limits.
    let per = (900 / columns.len().max(1)).max(1);
    let conflict = key.map(|k| {
        let set: Vec<String> =
            columns.iter().filter(|c| !k.contains(c)).map(|c| format!("{c} = excluded.{c}")).collect();
        format!(" ON CONFLICT ({}) DO UPDATE SET {}", k.join(", "), set.join(", "))
    });
    // SQLite looks a numbered parameter's name up by a scan of all of them
    // (sqlx asks for every one's): `$n` costs O(n²) per statement, 900
    // parameters 400,000 steps. Plain `?` in order has no names to scan.
    let plain = matches!(tx, Tx::Sqlite(_));
    for chunk in rows.chunks(per) {
        let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
        let mut args = Vec::with_capacity(chunk.len() * columns.len());
        for (i, row) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for (j, v) in row.iter().enumerate() {
                if j > 0 {
                    sql.push(',');
                }
                // A NULL is written, not bound: a bound NULL carries a type
                // (PostgreSQL then refuses text for a BIGINT column), a
                // literal takes the column's.
                if *v == crate::db::Val::Null {
                    sql.push_str("NULL");
                } else {
                    args.push(v.clone());
                    if plain {
                        sql.push('?');
                    } else {
                        sql.push_str(&format!("${}", args.len()));
                    }
                }
            }
            sql.push(')');
        }
        if let Some(c) = &conflict {
            sql.push_str(c);
        }
        tx.exec(&sql, &args).await?;
    }
    Ok(())
}
