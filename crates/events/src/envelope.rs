//! Envelopes: what a caller hands the store ([`NewEvent`]) and what the store
//! hands back ([`RecordedEvent`]).

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who and what caused an event: stored beside the payload, covered by the hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Metadata {
    /// The identity that caused the event (a user, an API key name, `engine`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Groups the events of one logical operation across streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The event or request that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// OpenTelemetry trace id (32 hex digits) active when the event was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// OpenTelemetry span id (16 hex digits) active when the event was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// Version of the Cairn build that wrote the event.
    #[serde(default)]
    pub engine_version: String,
}

impl Metadata {
    /// Metadata for an event caused by `actor`, stamped with this build's version.
    pub fn by(actor: impl Into<String>) -> Self {
        Metadata {
            actor: Some(actor.into()),
            engine_version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Metadata::default()
        }
    }
}

/// An event about to be appended. The payload is JSON text and is stored,
/// hashed and returned byte for byte as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique id (UUIDv7, so ids sort by creation time).
    pub event_id: Uuid,
    /// The catalog name of the event, e.g. `StepCompleted`.
    pub event_type: String,
    /// The version of the payload's shape.
    pub schema_version: u32,
    /// The payload as JSON text.
    pub payload: String,
    /// Who and what caused it.
    pub metadata: Metadata,
}

impl NewEvent {
    /// An event with an arbitrary type and payload, for streams outside the
    /// run catalog and for tests of old schema versions.
    pub fn raw(
        event_type: impl Into<String>,
        schema_version: u32,
        payload: &serde_json::Value,
        metadata: Metadata,
    ) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version,
            payload: payload.to_string(),
            metadata,
        }
    }
}

/// An event as stored: the exact stored text of every field, its place in its
/// stream and in the global order, and its link in the stream's hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RecordedEvent {
    /// Position in the log's total order: 1, 2, 3, … with no gaps.
    pub global_position: u64,
    /// The stream this event belongs to, e.g. `run-0193…`.
    pub stream_id: String,
    /// Position inside its stream: 1, 2, 3, … with no gaps.
    pub stream_version: u64,
    /// Unique id (UUIDv7), as text.
    pub event_id: String,
    /// Catalog name of the event.
    pub event_type: String,
    /// Version of the payload's shape when it was written.
    pub schema_version: u32,
    /// When the store recorded it (RFC 3339, UTC, microseconds), as stored.
    pub recorded_at: String,
    /// Metadata as stored JSON text.
    pub metadata: String,
    /// Payload as stored JSON text.
    pub payload: String,
    /// Hash of the previous event of the stream (64 zeros for the first), hex.
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this event's canonical bytes, hex.
    pub hash: String,
}

impl RecordedEvent {
    /// The payload parsed as JSON (as stored, before any upcasting).
    pub fn payload_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }

    /// The metadata parsed.
    pub fn metadata(&self) -> Result<Metadata, serde_json::Error> {
        serde_json::from_str(&self.metadata)
    }

    /// The stored fields the hash chain covers.
    pub fn hashed_fields(&self) -> crate::chain::HashedFields<'_> {
        crate::chain::HashedFields {
            stream_id: &self.stream_id,
            stream_version: self.stream_version,
            event_id: &self.event_id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            recorded_at: &self.recorded_at,
            metadata: &self.metadata,
            payload: &self.payload,
        }
    }

    /// The hash recomputed from the stored fields and the stored `prev_hash`.
    pub fn computed_hash(&self) -> String {
        crate::chain::event_hash(&self.prev_hash, &self.hashed_fields())
    }

    /// The time the event was recorded.
    pub fn recorded_at(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.recorded_at).ok().map(|t| t.with_timezone(&Utc))
    }
}

/// The format of `recorded_at`: fixed so the hashed text is reproducible.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// What the caller believes the stream's current version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version (0 = no stream).
    Exact(u64),
    /// Append at the end whatever the version (reads the head first; use only
    /// for streams with a single writer, such as definitions).
    Any,
}

impl ExpectedVersion {
    #[cfg(feature = "store")]
    pub(crate) fn exact(self) -> Option<u64> {
        match self {
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Exact(v) => Some(v),
            ExpectedVersion::Any => None,
        }
    }
}

/// The events to append to one stream.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    /// Target stream.
    pub stream_id: String,
    /// The version the stream must be at.
    pub expected: ExpectedVersion,
    /// Events in order; at least one.
    pub events: Vec<NewEvent>,
}

/// A lease an append must still hold: the run's stream, the worker and the
/// token it claimed the lease with. An append carrying a fence the worker
/// no longer holds (another worker took the run over) is refused with
/// `StoreError::Fenced` and writes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The run's stream.
    pub stream_id: String,
    /// The worker that claimed it.
    pub worker_id: String,
    /// The token the claim returned; 0 claims the lease of a new run in
    /// the append that creates it (expected `NoStream`), token 1, refused
    /// if another worker holds it.
    pub token: i64,
}

/// A task of the task queues (see the `tasks` migration): a `queue` step
/// attempt offered to external workers, and its claim once a worker has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// The run's stream.
    pub stream_id: String,
    /// The step instance.
    pub step_id: String,
    /// The attempt.
    pub attempt: i64,
    /// The queue.
    pub queue: String,
    /// How long a claim may go without a heartbeat (milliseconds).
    pub heartbeat_ms: i64,
    /// SHA-256 of the claim's task token; `None` while offered.
    pub token_hash: Option<String>,
    /// The worker that claimed it, as it named itself.
    pub worker: Option<String>,
    /// When it was claimed (milliseconds since the epoch).
    pub claimed_ms: Option<i64>,
    /// When the claim lapses without a heartbeat.
    pub beat_by_ms: Option<i64>,
}

impl TaskRow {
    /// A row as the task SQL selects it.
    #[allow(clippy::type_complexity)]
    pub fn from_tuple(
        t: (String, String, i64, String, i64, Option<String>, Option<String>, Option<i64>, Option<i64>),
    ) -> TaskRow {
        let (stream_id, step_id, attempt, queue, heartbeat_ms, token_hash, worker, claimed_ms, beat_by_ms) = t;
        TaskRow { stream_id, step_id, attempt, queue, heartbeat_ms, token_hash, worker, claimed_ms, beat_by_ms }
    }
}

/// One queue's tasks: offered (waiting for a worker) and claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    /// The queue.
    pub queue: String,
    /// Tasks waiting for a worker.
    pub offered: i64,
    /// Tasks a worker holds.
    pub claimed: i64,
}

/// A change to the wake-up index, written in the same transaction as the
/// events it goes with: when the run of `stream_id` next needs a worker
/// (`due_ms`, milliseconds since the epoch; 0 while a worker is driving it,
/// so a dead worker's run is due at once), or `None` when it needs none
/// until someone answers (it waits for people, or it ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wake {
    /// The run's stream.
    pub stream_id: String,
    /// When it next needs a worker; `None` removes it from the index.
    pub due_ms: Option<i64>,
}

/// Where an append landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream appended to.
    pub stream_id: String,
    /// Version of the first appended event.
    pub first_version: u64,
    /// Version of the last appended event (the stream's new version).
    pub last_version: u64,
    /// Global position of the first appended event.
    pub first_position: u64,
    /// Global position of the last appended event.
    pub last_position: u64,
    /// Hash of the last appended event (the stream's new chain head).
    pub head_hash: String,
}

/// Stream id of a run.
pub fn run_stream(run_id: Uuid) -> String {
    format!("run-{run_id}")
}

/// Stream id of a schedule.
pub fn schedule_stream(name: &str) -> String {
    format!("schedule-{name}")
}

/// Stream id of a webhook trigger.
pub fn trigger_stream(name: &str) -> String {
    format!("trigger-{name}")
}

/// The stream of lifecycle subscriptions.
pub const SUBSCRIPTIONS_STREAM: &str = "subscriptions";
/// The stream of deliveries to subscriptions (attempts, requeues, scans).
pub const DELIVERIES_STREAM: &str = "deliveries";

/// The stream of API key creations and revocations.
pub const API_KEYS_STREAM: &str = "apikeys";

/// The stream of a workflow's published versions.
pub fn workflow_stream(name: &str) -> String {
    format!("workflow-{name}")
}
