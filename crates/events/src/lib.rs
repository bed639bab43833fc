//! The event log of Cairn: the event catalog and envelopes, the
//! [`EventStore`] trait with its SQLite and PostgreSQL implementations, the
//! tamper-evident hash chain, upcasting and subscriptions.
//!
//! This crate owns what is written down. It depends on no other Cairn crate;
//! the engine (write side) and the projections (read side) meet only here.
//!
//! Architecture invariant: an event, once appended, is never rewritten —
//! old payload versions are upcast on read.

mod catalog;
mod chain;
#[cfg(feature = "store")]
pub mod clock;
pub mod docs;
mod envelope;
#[cfg(feature = "store")]
pub mod export;
pub mod limits;
#[cfg(feature = "store")]
mod migrate;
#[cfg(feature = "store")]
mod open;
#[cfg(feature = "store")]
pub mod postgres;
#[cfg(feature = "store")]
mod rows;
#[cfg(feature = "store")]
pub mod sqlite;
#[cfg(feature = "store")]
mod store;
#[cfg(feature = "store")]
mod subscription;
#[cfg(feature = "store")]
pub mod testing;
mod upcast;
#[cfg(feature = "store")]
mod verify;

pub use catalog::*;
pub use chain::{GENESIS_HASH, HashedFields, canonical_bytes, event_hash};
pub use envelope::{
    API_KEYS_STREAM, AppendResult, DELIVERIES_STREAM, ExpectedVersion, Fence, Metadata, NewEvent, QueueDepth,
    RecordedEvent, SUBSCRIPTIONS_STREAM, StreamAppend, TaskRow, Wake, format_timestamp, run_stream, schedule_stream,
    trigger_stream, workflow_stream,
};
#[cfg(feature = "store")]
pub use open::{DEFAULT_DATABASE_URL, open, open_existing};
#[cfg(feature = "store")]
pub use store::{
    Backend, EventStore, MAX_STREAM_ID_LEN, StoreError, StoreErrorKind, StoreResult, WriteFailure, redact_url,
};
#[cfg(feature = "store")]
pub use subscription::{DEFAULT_POLL_INTERVAL, Subscription, subscribe};
pub use upcast::{DecodeError, Location, UpcastFn, Upcasters};
#[cfg(feature = "store")]
pub use verify::{BreakKind, ChainBreak, MAX_BREAKS, VerifyReport, verify};
