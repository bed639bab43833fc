//! The runtime's error: what a start, a drive, an answer or a resume can
//! fail with, each naming its code in the registry of error codes.

use cairn_events::StoreError;
use uuid::Uuid;

/// Errors of the runner.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event could not be decoded.
    #[error(transparent)]
    Decode(#[from] cairn_events::DecodeError),
    /// No such run.
    #[error("no run with id {0}")]
    UnknownRun(Uuid),
    /// The pinned definition is missing or no longer compiles.
    #[error("workflow `{name}` version {version}: {message}")]
    Definition {
        /// Workflow.
        name: String,
        /// Version.
        version: u32,
        /// What is wrong.
        message: String,
    },
    /// The run's next step runs a task handler this process does not
    /// register (an embedding program's): it goes on in a process that
    /// registers it; nothing was recorded for the step.
    #[error(
        "workflow `{name}` version {version} runs task handlers this process does not register ({}); the run goes on in the process that registers them",
        .handlers.join(", ")
    )]
    HandlersElsewhere {
        /// Workflow.
        name: String,
        /// Version.
        version: u32,
        /// The handlers missing here, each as `` `name` ``.
        handlers: Vec<String>,
    },
    /// The inputs do not satisfy the workflow's `inputs` schema; nothing was started.
    #[error("the inputs do not satisfy the `inputs` schema of `{workflow}`: {}", cairn_core::contract::describe(.errors))]
    InvalidInputs {
        /// Workflow.
        workflow: String,
        /// Every violation.
        errors: Vec<cairn_events::SchemaViolation>,
    },
    /// A value is past one of the limits on what is written (nesting,
    /// size); nothing was written.
    #[error("{0}")]
    Limit(Box<cairn_events::limits::LimitError>),
    /// A request about a schedule or a webhook trigger was refused
    /// (`invalid-schedule`, `unknown-schedule`, `schedule-deleted`,
    /// `out-of-range`, `invalid-trigger`, `unknown-trigger`,
    /// `bad-signature`, `bad-delivery`); nothing was recorded.
    #[error("{message}")]
    Refused {
        /// The code.
        code: &'static str,
        /// What was wrong and what to do.
        message: String,
    },
    /// The run cannot be changed in its state.
    #[error("run {run_id} is {status}: {message}")]
    InvalidState {
        /// Run.
        run_id: Uuid,
        /// Its status.
        status: String,
        /// What to do instead.
        message: String,
    },
}

/// Checks the name of a schedule, trigger or subscription (it is part of
/// a stream id and of a URL path): 1 to 100 letters, digits, `-`, `_`, `.`.
pub(crate) fn check_name(what: &str, name: &str, code: &'static str) -> Result<(), RunError> {
    if !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Ok(());
    }
    Err(RunError::Refused {
        code,
        message: format!("{what} name `{name}`: use 1 to 100 letters, digits, `-`, `_` or `.`"),
    })
}

impl RunError {
    /// Its code in the registry of error codes (docs/errors.md).
    pub fn code(&self) -> &'static str {
        match self {
            RunError::UnknownRun(_) => "unknown-run",
            RunError::InvalidInputs { .. } => "invalid-inputs",
            RunError::InvalidState { .. } => "invalid-state",
            RunError::Definition { .. } => "definition",
            RunError::HandlersElsewhere { .. } => "handlers-elsewhere",
            RunError::Refused { code, .. } => code,
            RunError::Limit(_) | RunError::Store(StoreError::LimitExceeded { .. }) => "limit-exceeded",
            RunError::Store(s) if s.is_conflict() => "conflict",
            RunError::Store(StoreError::Database { .. } | StoreError::Unavailable { .. }) => "store-unavailable",
            RunError::Store(_) | RunError::Decode(_) => "internal",
        }
    }
}
