//! The workflow language: parse (YAML → raw structs with spans), then
//! compile (validate → [`crate::Workflow`]).

mod compile;
mod compile_people;
mod diagnostic;
pub mod raw;

pub use compile::{END, check_secrets, compile};
pub use compile_people::check_models;
pub use diagnostic::{Diagnostic, Diagnostics, did_you_mean};

use crate::model::Workflow;

/// Parses and compiles a workflow file. `file` names it in diagnostics;
/// `tasks` lists the task handlers available.
pub fn parse(source: &str, file: &str, tasks: &[&str]) -> Result<Workflow, Diagnostics> {
    let raw: raw::RawWorkflow = serde_saphyr::from_str(source).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
        Diagnostics(vec![Diagnostic {
            code: "yaml",
            file: file.to_owned(),
            line,
            column,
            message: first_line(&e.to_string()),
            help: Some("see docs/workflow-language.md for the fields a workflow and a step take".into()),
        }])
    })?;
    compile(raw, source, file, tasks)
}

fn first_line(s: &str) -> String {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim().to_owned()
}

/// The JSON Schema of the workflow language, for editors and `cairn schema`.
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(raw::RawWorkflow)
}
