//! The workflow language: parse (YAML → raw structs with spans), then
//! compile (validate → [`crate::Workflow`]).

mod compile;
mod compile_dag;
mod compile_people;
mod ctx;
pub(crate) mod diagnostic;
mod fields;
pub mod raw;

pub use compile::{check_secrets, compile, valid_queue_name};
pub use compile_people::check_models;
pub use ctx::END;
pub use diagnostic::{Diagnostic, Diagnostics, did_you_mean};

use crate::model::Workflow;

/// Parses and compiles a workflow file. `file` names it in diagnostics;
/// `tasks` lists the task handlers available.
pub fn parse(source: &str, file: &str, tasks: &[&str]) -> Result<Workflow, Diagnostics> {
    // Every unknown field at once, then every other problem of the rest.
    let unknown = fields::unknown_fields(source);
    if !unknown.is_empty() {
        let mut diags: Vec<Diagnostic> = unknown.iter().map(|u| u.diagnostic(file)).collect();
        if let Some(rest) = fields::without(source, &unknown)
            && let Err(more) = parse_known(&rest, file, tasks)
        {
            diags.extend(more.0.into_iter().filter(|d| d.code != "yaml"));
        }
        return Err(Diagnostics(diags));
    }
    parse_known(source, file, tasks)
}

/// Compiles a definition as it was published, to read, plan or replay its
/// runs: every task handler it names is taken as known (the handlers are
/// needed to execute its tasks, in the process that registers them, not to
/// decide what a run did or would do).
pub fn parse_published(source: &str, file: &str) -> Result<Workflow, Diagnostics> {
    let names: Vec<String> = match serde_saphyr::from_str::<raw::RawWorkflow>(source) {
        Ok(r) => {
            let mut out = Vec::new();
            task_names(&r.steps, &mut out);
            task_names(&r.compensations, &mut out);
            out
        }
        Err(_) => Vec::new(),
    };
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    parse(source, file, &names)
}

/// The task handler names the steps (nested ones included) use.
fn task_names(steps: &[raw::RawStep], out: &mut Vec<String>) {
    for s in steps {
        if let Some(t) = &s.task {
            out.push(t.value.clone());
        }
        for b in s.parallel.iter().flat_map(|p| &p.branches) {
            task_names(&b.steps, out);
        }
        if let Some(m) = &s.map {
            task_names(&m.steps, out);
        }
        if let Some(d) = &s.dag {
            task_names(&d.steps, out);
        }
    }
}

fn parse_known(source: &str, file: &str, tasks: &[&str]) -> Result<Workflow, Diagnostics> {
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
