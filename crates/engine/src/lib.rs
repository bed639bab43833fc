//! The write side of Cairn: the workflow language, validation, templating,
//! conditions, the pure decider and the durable runner.
//!
//! Depends on `cairn-events` only; it never reads a projection.
//!
//! Architecture invariant: the decider ([`decider`]) does no I/O, reads no
//! clock and draws no random numbers: the same events and the same `now`
//! always give the same decision, which is what makes replay exact.

pub mod ai;
pub mod commit;
pub mod config;
pub mod contract;
pub mod decider;
mod duration;
mod effects;
pub mod expr;
pub mod http;
pub mod human;
pub mod inbox;
pub mod lang;
pub mod model;
pub mod notify;
pub mod recovery;
pub mod replay;
pub mod runner;
pub mod secrets;
mod settings;
pub mod tasks;
pub mod template;
pub mod trace;

pub use model::{RetryPolicy, Step, StepKind, Target, Workflow};
pub use runner::{Engine, RunError, Start};
pub use tasks::{TaskContext, TaskError, TaskHandler, TaskRegistry};
