//! The runtime of Cairn: the durable runner that appends what the pure
//! decider of `cairn-core` decides and performs its effects (tasks, `http`
//! steps, AI calls, e-mail), group commit, the inbox where people answer,
//! notifications and recovery (resume, fork, the run scan).
//!
//! Depends on `cairn-core` and `cairn-events`; it never reads a projection.
//!
//! # The façade
//!
//! What a program embedding Cairn (and the `cairn` binary) uses is here at
//! the root: [`Engine`] and its options, [`TaskRegistry`] with handlers
//! written as plain `async fn`s, the language entry points ([`lang`]), a
//! run as the log has it ([`run`]), people's answers ([`people`]), replay
//! ([`replay`]), resume and fork ([`recovery`]) and the trace ids
//! ([`trace`]). Everything else is the crate's own.

mod commit;
pub mod deliveries;
mod effects;
mod error;
mod http;
mod inbox;
mod lease;
pub mod metrics;
mod notify;
mod provider;
pub mod quarantine;
mod queue;
pub mod recovery;
mod runner;
mod scan;
mod schedules;
mod tasks;
pub mod trace;
mod triggers;
pub mod worker;

pub use cairn_core::config::Config;
pub use cairn_core::decider::ENGINE_KINDS as ENGINE_TASK_ERRORS;
pub use cairn_core::model::{RetryPolicy, Step, StepKind, Target, Workflow};
pub use cairn_core::schedule;
pub use cairn_core::secrets::Secrets;
pub use error::RunError;
pub use lease::Claimed;
pub use lease::DEFAULT_LEASE_TIMEOUT;
pub use queue::{Task, TaskAck, TaskQueueError};
pub use runner::{Engine, Start};
pub use scan::RunSummary;
pub use schedules::ScheduleRequest;
pub use tasks::{TaskContext, TaskError, TaskHandler, TaskRegistry};
pub use triggers::{Delivered, TriggerRequest};
pub use worker::Worker;

/// The workflow language: parse a definition, check it against the
/// configuration and the secrets, its JSON Schema.
pub mod lang {
    pub use cairn_core::duration::parse_duration;
    pub use cairn_core::lang::{
        Diagnostic, Diagnostics, check_models, check_secrets, parse, parse_published, schema, valid_queue_name,
    };
}

/// A run as its events have it: folded state, status, what it waits for.
pub mod run {
    pub use cairn_core::decider::{HumanWait, Policy, RunState, RunStatus, bare, fold};
}

/// People's answers: a form's submission and an approval's vote, checked
/// as on every surface.
pub mod people {
    pub use crate::inbox::{HumanError, Recorded, Submission, Vote};
    pub use cairn_core::human::{Field, FieldError, FieldType, validate};
}

/// Replay with determinism checks, the state at any event, and shadow
/// re-validation against a new definition.
pub mod replay {
    pub use cairn_core::replay::{Divergence, Finding, ReplayReport, Snapshot, before_step, check, shadow, snapshot};
}

/// The HTTP client Cairn uses (TLS with rustls and ring, no proxies from the
/// environment), for a caller's own requests.
pub fn http_client() -> reqwest::Client {
    http::client()
}

/// Group commit, exposed for the tests that drive it against a store that
/// fails on purpose (tests/group_commit.rs); not part of the façade.
#[doc(hidden)]
pub mod testing {
    pub use crate::commit::GroupCommit;
}
