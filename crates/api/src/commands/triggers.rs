//! `cairn triggers`: define, list, show and delete webhook triggers
//! (`POST /hooks/<name>` starts a run when the delivery's signature
//! matches). The same engine calls as `/triggers` over HTTP.

use std::process::ExitCode;

use cairn_events::TriggerDefined;
use cairn_runtime::{Engine, TriggerRequest};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use super::format::Format;
use crate::codes;

/// A trigger as the CLI and the API show it (its secret by name only).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TriggerView {
    /// Its name.
    pub name: String,
    /// Where deliveries go: `POST` to this path.
    pub hook: String,
    /// The workflow each delivery starts.
    pub workflow: String,
    /// The version pinned (none: the latest at each delivery).
    pub workflow_version: Option<u32>,
    /// The inputs template over `body` and `headers`.
    pub inputs: Value,
    /// `github` or `stripe`.
    pub signature: String,
    /// The signing secret's name (`CAIRN_SECRET_<NAME>`), never its value.
    pub secret: String,
    /// Where a delivery's id is (`header:<Name>`, `body:<pointer>`).
    pub delivery_id: String,
    /// Oldest a signed timestamp may be, in seconds (`stripe`).
    pub tolerance_seconds: u64,
    /// Who defined it last.
    pub defined_by: String,
    /// When.
    pub defined_at: String,
}

/// The view of a definition.
pub fn view(d: &TriggerDefined) -> TriggerView {
    TriggerView {
        name: d.name.clone(),
        hook: format!("/hooks/{}", d.name),
        workflow: d.workflow.clone(),
        workflow_version: d.workflow_version,
        inputs: d.inputs.clone(),
        signature: d.signature.clone(),
        secret: d.secret.clone(),
        delivery_id: d.delivery_id.clone(),
        tolerance_seconds: d.tolerance_seconds,
        defined_by: d.by.clone(),
        defined_at: d.defined_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

/// Every trigger defined and not deleted, by name.
pub async fn all(engine: &Engine, db: &cairn_projections::ReadDb) -> anyhow::Result<Vec<TriggerView>> {
    let mut out = Vec::new();
    for stream in cairn_projections::queries::trigger_streams(db).await? {
        let Some(name) = stream.strip_prefix("trigger-") else { continue };
        if let Some(d) = engine.trigger(name).await? {
            out.push(view(&d));
        }
    }
    Ok(out)
}

/// `cairn triggers`.
#[derive(Debug, clap::Subcommand)]
pub enum TriggersCommand {
    /// Define a webhook trigger, or redefine one.
    Create {
        /// Its name: deliveries go to `POST /hooks/NAME`.
        name: String,
        /// The published workflow each delivery starts (`NAME` or `NAME@VERSION`).
        #[arg(long)]
        workflow: String,
        /// How deliveries are signed: `github` or `stripe`.
        #[arg(long)]
        signature: String,
        /// The signing secret's name: the server reads `CAIRN_SECRET_<NAME>`.
        #[arg(long)]
        secret: String,
        /// Where a delivery's id is: `header:<Name>` or `body:<JSON pointer>`
        /// (default: `header:X-GitHub-Delivery` for github, `body:/id` for stripe).
        #[arg(long)]
        delivery_id: Option<String>,
        /// An input, `NAME=TEMPLATE` over `body` and `headers`
        /// (`repo={{ body.repository.full_name }}`); repeatable.
        #[arg(long = "input", value_name = "NAME=TEMPLATE")]
        inputs: Vec<String>,
        /// Oldest a signed timestamp may be, in seconds (stripe; default 300).
        #[arg(long)]
        tolerance: Option<u64>,
    },
    /// Every trigger.
    List {
        /// `text` or `json`.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// One trigger.
    Show {
        /// Its name.
        name: String,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Delete a trigger: its hook answers 404 from now on.
    Delete {
        /// Its name.
        name: String,
    },
}

fn print(v: &TriggerView, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        out!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    out!("trigger {} at POST {}", v.name, v.hook);
    let version = v.workflow_version.map_or_else(|| "latest".to_owned(), |n| n.to_string());
    out!("  workflow     {} (version {version})", v.workflow);
    out!("  signature    {} with secret {}", v.signature, v.secret);
    out!("  delivery id  {}", v.delivery_id);
    out!("  inputs       {}", v.inputs);
    Ok(())
}

/// Runs a `cairn triggers` command.
pub async fn run(
    database: &str,
    read: &super::read::ReadArgs,
    setup: &super::setup::SetupArgs,
    cmd: TriggersCommand,
) -> anyhow::Result<ExitCode> {
    let by = setup.identity.clone().unwrap_or_else(|| "cli".into());
    let secrets = super::setup::load_secrets(None)?;
    let engine = super::setup::engine(database, setup, secrets).await?;
    match cmd {
        TriggersCommand::Create { name, workflow, signature, secret, delivery_id, inputs, tolerance } => {
            let (workflow, version) = super::name_version(&workflow)?;
            let mut map = serde_json::Map::new();
            for kv in &inputs {
                let Some((k, v)) = kv.split_once('=') else { anyhow::bail!("--input {kv}: write NAME=TEMPLATE") };
                map.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let r = TriggerRequest {
                name,
                workflow,
                workflow_version: version,
                inputs: Value::Object(map),
                signature,
                secret,
                delivery_id,
                tolerance_seconds: tolerance,
            };
            match engine.define_trigger(r, &by).await {
                Ok(d) => {
                    print(&view(&d), Format::Text)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => super::refused(e),
            }
        }
        TriggersCommand::List { format } => {
            let w = super::read::catch_up(database, read).await?;
            let all = all(&engine, w.db()).await?;
            if format == Format::Json {
                out!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(ExitCode::SUCCESS);
            }
            out!("{:<24} {:<24} {:<8} {:<24} delivery id", "trigger", "workflow", "style", "secret");
            for v in &all {
                out!("{:<24} {:<24} {:<8} {:<24} {}", v.name, v.workflow, v.signature, v.secret, v.delivery_id);
            }
            Ok(ExitCode::SUCCESS)
        }
        TriggersCommand::Show { name, format } => match engine.trigger(&name).await? {
            Some(d) => {
                print(&view(&d), format)?;
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("error [unknown-trigger]: no trigger named `{name}`; `cairn triggers list` lists them");
                Ok(codes::exit("unknown-trigger"))
            }
        },
        TriggersCommand::Delete { name } => match engine.delete_trigger(&name, &by).await {
            Ok(()) => {
                out!("trigger {name} is deleted");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => super::refused(e),
        },
    }
}
