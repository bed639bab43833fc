//! The read side of Cairn: projection workers with transactional checkpoints
//! and the read models built from the event log. Depends on `cairn-events`
//! only; it never calls the engine.
//!
//! A [`Projection`] names its tables, the event types it wants and a
//! handler. A [`Worker`] reads the log from each projection's checkpoint and
//! applies a batch and the new checkpoint in one transaction, conditional on
//! the checkpoint it started from, so a crash never double-counts or skips
//! and two workers never both apply a batch. `rebuild` replays a projection
//! into fresh tables and swaps them in atomically.

pub mod db;
pub mod models;
pub mod projection;
pub mod queries;
pub mod worker;

pub use db::{ReadDb, Tx, Val, default_read_url};
pub use projection::{Input, Projection};
pub use worker::{Batch, CHECKPOINTS, ProjectionError, Status, Worker};
