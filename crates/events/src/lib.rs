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
pub mod clock;
pub mod docs;
mod envelope;
pub mod export;
pub mod limits;
mod migrate;
mod open;
pub mod postgres;
mod rows;
pub mod sqlite;
mod store;
mod subscription;
pub mod testing;
mod upcast;
mod verify;

pub use catalog::*;
pub use chain::{GENESIS_HASH, HashedFields, canonical_bytes, event_hash};
pub use envelope::{
    API_KEYS_STREAM, AppendResult, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamAppend, format_timestamp,
    run_stream, workflow_stream,
};
pub use open::{DEFAULT_DATABASE_URL, open, open_existing};
pub use store::{
    Backend, EventStore, MAX_STREAM_ID_LEN, StoreError, StoreErrorKind, StoreResult, WriteFailure, redact_url,
};
pub use subscription::{DEFAULT_POLL_INTERVAL, Subscription, subscribe};
pub use upcast::{DecodeError, Location, UpcastFn, Upcasters};
pub use verify::{BreakKind, ChainBreak, MAX_BREAKS, VerifyReport, verify};
