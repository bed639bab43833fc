//! The pure core of Cairn: the workflow language and its compiler, the
//! model, the decider, replay and resume planning, templates, conditions
//! and contracts.
//!
//! Architecture invariant: this crate does no I/O. It depends on no async
//! runtime, SQL, HTTP or mail crate (the dependency graph holds it:
//! `cargo tree -p cairn-core -e normal`), reads no clock and draws no random
//! numbers: the same events and the same `now` always give the same
//! decision, which is what makes replay exact. The runtime
//! (`cairn-runtime`) does the effects the decider asks for.

pub mod ai;
pub mod config;
pub mod contract;
pub mod decider;
pub mod duration;
pub mod expr;
pub mod human;
pub mod lang;
pub mod model;
pub mod path;
pub mod replay;
pub mod resume_plan;
pub mod schedule;
pub mod secrets;
pub mod settings;
pub mod template;
pub mod trigger;

pub use model::{RetryPolicy, Step, StepKind, Target, Workflow};
