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

    /// The tables it owns, without suffix.
    fn tables(&self) -> &'static [&'static str];

    /// `CREATE TABLE IF NOT EXISTS` statements for its tables with `suffix`.
    fn create(&self, suffix: &str) -> Vec<String>;

    /// Whether it wants events of this type (others are passed over, but
    /// the checkpoint still moves past them).
    fn wants(&self, event_type: &str) -> bool;

    /// Applies one event within the batch's transaction. An error stops
    /// the projection at this event (never skipped).
    fn apply<'a>(&'a self, tx: &'a mut Tx, input: Input<'a>) -> BoxFuture<'a, Result<(), DbError>>;
}
