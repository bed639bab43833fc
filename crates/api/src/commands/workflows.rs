//! `cairn workflows list|show`: the published workflows, from their streams.

use crate::codes;
use std::process::ExitCode;

use cairn_events::{Event, EventStore};

use super::format::Format;

/// `cairn workflows`.
#[derive(Debug, clap::Subcommand)]
pub enum WorkflowsCommand {
    /// Every published workflow: name, latest version, archived, last published.
    List {
        /// `text` (a table) or `json` (an array).
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// One workflow: its versions (who published each, when, its hash) and
    /// the source of one (`NAME@VERSION`; default the latest).
    Show {
        /// `NAME` or `NAME@VERSION`.
        #[arg(value_name = "NAME[@VERSION]")]
        name: String,
        /// `text` or `json` (the versions and the source).
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Archive a workflow: it takes no new runs (its runs go on); recorded
    /// as `--as IDENTITY` (default `cli`).
    Archive {
        /// The workflow's name.
        name: String,
    },
}

/// A workflow as its stream has it.
pub(crate) struct Published {
    name: String,
    /// Archived: takes no new runs.
    pub(crate) archived: bool,
    /// (version, hash, by, at, source), oldest first.
    versions: Vec<(u32, String, String, String, String)>,
}

/// The workflow `name` as its stream has it; `None` when never published.
pub(crate) async fn published(store: &dyn EventStore, name: &str) -> anyhow::Result<Option<Published>> {
    let events = store.read_stream(&cairn_events::workflow_stream(name), 1).await?;
    if events.is_empty() {
        return Ok(None);
    }
    let mut p = Published { name: name.to_owned(), archived: false, versions: Vec::new() };
    for r in &events {
        match Event::decode(r)? {
            Event::WorkflowVersionPublished(v) => {
                p.versions.push((v.version, v.definition_hash, v.published_by, r.recorded_at.clone(), v.source))
            }
            Event::WorkflowArchived(_) => p.archived = true,
            _ => {}
        }
    }
    Ok(Some(p))
}

fn summary(p: &Published) -> serde_json::Value {
    let last = p.versions.last();
    serde_json::json!({
        "name": p.name,
        "latest_version": last.map_or(0, |v| v.0),
        "archived": p.archived,
        "updated_at": last.map(|v| v.3.clone()),
    })
}

/// Runs `cairn workflows …` (as `actor`, the global `--as`).
pub async fn run(
    database: &str,
    read: &super::read::ReadArgs,
    actor: Option<&str>,
    cmd: WorkflowsCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        WorkflowsCommand::Archive { name } => {
            let store = cairn_events::open_existing(database).await?;
            let stream = cairn_events::workflow_stream(&name);
            let Some(p) = published(&*store, &name).await? else {
                eprintln!("error: no workflow named `{name}`; `cairn workflows list` lists them");
                return Ok(codes::exit("unknown-workflow"));
            };
            if !p.archived {
                let by = actor.unwrap_or("cli");
                let e =
                    Event::WorkflowArchived(cairn_events::WorkflowArchived { name: name.clone(), by: by.to_owned() });
                let version = store.read_stream(&stream, 1).await?.len() as u64;
                store
                    .append(
                        &stream,
                        cairn_events::ExpectedVersion::Exact(version),
                        vec![cairn_events::NewEvent::from_event(&e, cairn_events::Metadata::by(by))],
                    )
                    .await?;
            }
            out!("workflow {name} is archived: it takes no new runs");
            Ok(ExitCode::SUCCESS)
        }
        WorkflowsCommand::List { format } => {
            let w = super::read::catch_up(database, read).await?;
            let store = cairn_events::open_existing(database).await?;
            let mut all = Vec::new();
            for stream in cairn_projections::queries::workflow_streams(w.db()).await? {
                let Some(name) = stream.strip_prefix("workflow-") else { continue };
                if let Some(p) = published(&*store, name).await? {
                    all.push(p);
                }
            }
            if format == Format::Json {
                out!("{}", serde_json::to_string_pretty(&all.iter().map(summary).collect::<Vec<_>>())?);
                return Ok(ExitCode::SUCCESS);
            }
            out!("{:<32} {:>6} {:<9} last published (UTC)", "workflow", "latest", "archived");
            for p in &all {
                let last = p.versions.last();
                let (v, at) = last.map_or((0, ""), |v| (v.0, v.3.as_str()));
                out!("{:<32} {:>6} {:<9} {at}", p.name, v, if p.archived { "yes" } else { "no" });
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowsCommand::Show { name, format } => {
            let (name, version) = super::name_version(&name)?;
            let store = cairn_events::open_existing(database).await?;
            let Some(p) = published(&*store, &name).await? else {
                eprintln!(
                    "error: no workflow named `{name}` in {}; `cairn workflows list` lists them",
                    store.describe()
                );
                return Ok(codes::exit("unknown-workflow"));
            };
            let pick = version.unwrap_or_else(|| p.versions.last().map_or(0, |v| v.0));
            let Some(chosen) = p.versions.iter().find(|v| v.0 == pick) else {
                let have: Vec<String> = p.versions.iter().map(|v| v.0.to_string()).collect();
                eprintln!("error: workflow `{name}` has no version {pick}; it has {}", have.join(", "));
                return Ok(codes::exit("unknown-version"));
            };
            if format == Format::Json {
                let mut v = summary(&p);
                v["versions"] = p
                    .versions
                    .iter()
                    .map(|x| serde_json::json!({"version": x.0, "definition_hash": x.1, "published_by": x.2, "published_at": x.3}))
                    .collect();
                v["version"] = pick.into();
                v["source"] = chosen.4.clone().into();
                out!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            out!("workflow {}{}", p.name, if p.archived { " (archived)" } else { "" });
            for (v, hash, by, at, _) in &p.versions {
                out!("  v{v:<4} {at}  by {by:<16} sha256:{}", &hash[..hash.len().min(16)]);
            }
            out!("--- v{pick} ---");
            out!("{}", chosen.4.trim_end());
            Ok(ExitCode::SUCCESS)
        }
    }
}
