//! Upcasting: old payload shapes are upgraded on read, one schema version at a
//! time. Stored rows are never rewritten.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use serde_json::Value;

use crate::envelope::RecordedEvent;

/// Where in the log an event sits, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Stream id.
    pub stream_id: String,
    /// Version in the stream.
    pub stream_version: u64,
    /// Global position.
    pub global_position: u64,
}

impl Location {
    pub(crate) fn of(e: &RecordedEvent) -> Self {
        Location {
            stream_id: e.stream_id.clone(),
            stream_version: e.stream_version,
            global_position: e.global_position,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream {} version {} (position {})", self.stream_id, self.stream_version, self.global_position)
    }
}

/// A stored event could not be turned into a typed catalog event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The type name is not in this build's catalog.
    #[error(
        "unknown event type `{event_type}` at {at}: this build of Cairn does not know it; upgrade Cairn or remove the writer that produced it"
    )]
    UnknownEventType {
        /// The stored type name.
        event_type: String,
        /// Where it is.
        at: Location,
    },
    /// Written by a newer Cairn than this one.
    #[error(
        "event `{event_type}` at {at} has schema version {found}, newer than the {supported} this build understands; upgrade Cairn"
    )]
    SchemaTooNew {
        /// Type name.
        event_type: String,
        /// Where it is.
        at: Location,
        /// Stored schema version.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// An old version with no upcaster to the next one.
    #[error("event `{event_type}` at {at} has schema version {found} and no upcaster from it is registered")]
    NoUpcaster {
        /// Type name.
        event_type: String,
        /// Where it is.
        at: Location,
        /// Stored schema version.
        found: u32,
    },
    /// The payload is not valid JSON, or not the expected shape.
    #[error("event `{event_type}` at {at} has a payload that does not match its schema: {message}")]
    InvalidPayload {
        /// Type name.
        event_type: String,
        /// Where it is.
        at: Location,
        /// What is wrong.
        message: String,
    },
}

/// Upgrades a payload from one version to the next.
pub type UpcastFn = fn(Value) -> Result<Value, String>;

/// A registry of upcasters keyed by (event type, from version).
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), UpcastFn>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.steps.keys()).finish()
    }
}

impl Upcasters {
    /// An empty registry.
    pub fn new() -> Self {
        Upcasters::default()
    }

    /// The upcasters of this build's catalog.
    pub fn standard() -> &'static Upcasters {
        static STANDARD: OnceLock<Upcasters> = OnceLock::new();
        STANDARD.get_or_init(|| {
            let mut u = Upcasters::new();
            u.register("StepFailed", 1, step_failed_v1_to_v2);
            u
        })
    }

    /// Registers `f` to turn `event_type` version `from` into `from + 1`.
    pub fn register(&mut self, event_type: &str, from: u32, f: UpcastFn) {
        self.steps.insert((event_type.to_owned(), from), f);
    }

    /// Upgrades `value` from version `found` to `current`.
    pub fn upcast(
        &self,
        event_type: &str,
        found: u32,
        current: u32,
        mut value: Value,
        at: &Location,
    ) -> Result<Value, DecodeError> {
        if found > current {
            return Err(DecodeError::SchemaTooNew {
                event_type: event_type.to_owned(),
                at: at.clone(),
                found,
                supported: current,
            });
        }
        for v in found..current {
            let Some(step) = self.steps.get(&(event_type.to_owned(), v)) else {
                return Err(DecodeError::NoUpcaster { event_type: event_type.to_owned(), at: at.clone(), found: v });
            };
            value = step(value).map_err(|message| DecodeError::InvalidPayload {
                event_type: event_type.to_owned(),
                at: at.clone(),
                message: format!("upcasting from version {v}: {message}"),
            })?;
        }
        Ok(value)
    }
}

/// `StepFailed` v1 (pre-release) carried one `error` string `"kind: message"`
/// and no retry flag; v2 splits kind and message and adds `retryable`.
fn step_failed_v1_to_v2(mut v: Value) -> Result<Value, String> {
    let obj = v.as_object_mut().ok_or("payload is not an object")?;
    let error = obj
        .remove("error")
        .and_then(|e| e.as_str().map(str::to_owned))
        .ok_or("v1 StepFailed has no string field `error`")?;
    let (kind, message) = match error.split_once(": ") {
        Some((k, m)) if !k.is_empty() && !k.contains(' ') => (k.to_owned(), m.to_owned()),
        _ => ("error".to_owned(), error),
    };
    obj.insert("error_kind".into(), Value::String(kind));
    obj.insert("message".into(), Value::String(message));
    obj.insert("retryable".into(), Value::Bool(false));
    Ok(v)
}
