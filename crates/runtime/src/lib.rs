//! The runtime of Cairn: the durable runner that appends what the pure
//! decider of `cairn-core` decides and performs its effects (tasks, `http`
//! steps, AI calls, e-mail), group commit, the inbox where people answer,
//! notifications and recovery (resume, continue, the run scan).
//!
//! Depends on `cairn-core` and `cairn-events`; it never reads a projection.

pub mod commit;
mod effects;
pub mod http;
pub mod inbox;
pub mod notify;
mod provider;
pub mod recovery;
pub mod runner;
pub mod scan;
pub mod tasks;
pub mod trace;

pub use cairn_core::model::{RetryPolicy, Step, StepKind, Target, Workflow};
pub use runner::{Engine, RunError, Start};
pub use tasks::{TaskContext, TaskError, TaskHandler, TaskRegistry};
