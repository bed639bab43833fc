//! `cairn validate FILE...` and `cairn schema`.

use crate::codes;
use std::process::ExitCode;

use cairn_runtime::TaskRegistry;

/// Arguments of `cairn validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Workflow files.
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
    /// `text` (default) or `json` (one array of diagnostics).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
}

/// Runs `validate`: exit 0 when every file is valid, 1 otherwise.
pub fn run(args: Args, setup: &super::setup::SetupArgs) -> anyhow::Result<ExitCode> {
    let config = super::setup::config(setup, None)?;
    let tasks = TaskRegistry::builtin();
    let names = tasks.names();
    let mut all = Vec::new();
    for f in &args.files {
        let file = f.display().to_string();
        match std::fs::read_to_string(f) {
            Err(e) => all.push(cairn_runtime::lang::Diagnostic {
                code: "io",
                file,
                line: 0,
                column: 0,
                message: format!("cannot read the file: {e}"),
                help: None,
            }),
            Ok(src) => match cairn_runtime::lang::parse(&src, &file, &names) {
                Ok(w) => {
                    // Secrets are checked against this environment (CAIRN_SECRET_<NAME>).
                    let secrets = cairn_runtime::Secrets::from_env();
                    let mut missing = cairn_runtime::lang::check_secrets(&w, &secrets.names(), &file);
                    // Models and prompt templates against the config.
                    missing.extend(cairn_runtime::lang::check_models(&w, &config, &file));
                    if missing.is_empty() && args.format == "text" {
                        out!("{file}: valid");
                    }
                    all.extend(missing);
                }
                Err(d) => all.extend(d.0),
            },
        }
    }
    if args.format == "json" {
        out!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for d in &all {
            eprintln!("{d}");
        }
    }
    Ok(if all.is_empty() { ExitCode::SUCCESS } else { codes::exit("invalid-definition") })
}

/// Runs `schema`: prints the workflow language's JSON Schema.
pub fn schema() -> anyhow::Result<ExitCode> {
    out!("{}", serde_json::to_string_pretty(&cairn_runtime::lang::schema())?);
    Ok(ExitCode::SUCCESS)
}
