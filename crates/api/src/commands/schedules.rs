//! `cairn schedules`: define, list (with the next firings), show, pause,
//! resume, delete and backfill schedules. The same engine calls as
//! `/schedules` over HTTP; a `cairn serve` or `cairn worker` on the database
//! fires them (docs/operations.md "Schedules").

use std::process::ExitCode;

use cairn_runtime::schedule::Schedule;
use cairn_runtime::{Engine, ScheduleRequest};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use super::format::Format;
use crate::codes;

/// A schedule as the CLI and the API show it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ScheduleView {
    /// Its name.
    pub name: String,
    /// The workflow each firing starts.
    pub workflow: String,
    /// The version pinned (none: the latest at each firing).
    pub workflow_version: Option<u32>,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone it is read in.
    pub timezone: String,
    /// Each run's inputs.
    pub inputs: Value,
    /// `skip`, `buffer_one`, `allow_all` or `cancel_other`.
    pub overlap: String,
    /// How far back missed firings are caught up after downtime, in seconds.
    pub catchup_window_seconds: u64,
    /// Most delay added to a firing, in seconds.
    pub jitter_seconds: f64,
    /// `active`, `paused` or `deleted`.
    pub state: String,
    /// Why it was paused.
    pub paused_reason: Option<String>,
    /// The next firings' nominal times (RFC 3339, UTC), at most five.
    pub next_firings: Vec<String>,
    /// The last firing's nominal time.
    pub last_fired_at: Option<String>,
    /// The last firing's run.
    pub last_run_id: Option<uuid::Uuid>,
    /// Firings made.
    pub fired: u64,
    /// Firings skipped (overlap, missed, refused).
    pub skipped: u64,
    /// Who defined it last.
    pub defined_by: String,
    /// When.
    pub defined_at: String,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The view of `s` at `now`.
pub fn view(s: &Schedule, now: DateTime<Utc>) -> Option<ScheduleView> {
    let d = &s.definition.as_ref()?.recorded;
    Some(ScheduleView {
        name: s.name.clone(),
        workflow: d.workflow.clone(),
        workflow_version: d.workflow_version,
        cron: d.cron.clone(),
        timezone: d.timezone.clone(),
        inputs: d.inputs.clone(),
        overlap: d.overlap.clone(),
        catchup_window_seconds: d.catchup_window_ms / 1000,
        jitter_seconds: d.jitter_ms as f64 / 1000.0,
        state: if s.deleted {
            "deleted"
        } else if s.paused.is_some() {
            "paused"
        } else {
            "active"
        }
        .into(),
        paused_reason: s.paused.as_ref().and_then(|p| p.1.clone()),
        next_firings: cairn_runtime::schedule::upcoming(s, now, 5).into_iter().map(time).collect(),
        last_fired_at: s.last_fired.map(|(t, _)| time(t)),
        last_run_id: s.last_fired.map(|(_, r)| r),
        fired: s.fired,
        skipped: s.skipped,
        defined_by: d.by.clone(),
        defined_at: time(d.defined_at),
    })
}

/// Every schedule ever defined (deleted ones included), by name.
pub async fn all(engine: &Engine, db: &cairn_projections::ReadDb) -> anyhow::Result<Vec<ScheduleView>> {
    let now = engine.clock().now();
    let mut out = Vec::new();
    for stream in cairn_projections::queries::schedule_streams(db).await? {
        let Some(name) = stream.strip_prefix("schedule-") else { continue };
        if let Some(s) = engine.schedule(name).await?
            && let Some(v) = view(&s, now)
        {
            out.push(v);
        }
    }
    Ok(out)
}

/// `cairn schedules`.
#[derive(Debug, clap::Subcommand)]
pub enum SchedulesCommand {
    /// Define a schedule, or redefine one (firings from now on follow it).
    Create {
        /// Its name (letters, digits, `-`, `_`, `.`).
        name: String,
        /// The published workflow each firing starts (`NAME` or `NAME@VERSION`).
        #[arg(long)]
        workflow: String,
        /// The cron expression: 5 fields, or 6 with seconds first
        /// (`"0 30 2 * * MON-FRI"`), or `@daily`.
        #[arg(long)]
        cron: String,
        /// The IANA time zone it is read in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// An input, `NAME=VALUE` (the value as JSON when it parses, else text); repeatable.
        #[arg(long = "input", value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        /// While an earlier run still runs: `skip`, `buffer_one`, `allow_all`, `cancel_other`.
        #[arg(long, default_value = "skip")]
        overlap: String,
        /// How far back missed firings are caught up after downtime (`10m`, `1h`).
        #[arg(long, default_value = "10m")]
        catchup_window: String,
        /// Most delay added to each firing (`30s`).
        #[arg(long, default_value = "0s")]
        jitter: String,
    },
    /// Every schedule, with its next firing.
    List {
        /// `text` or `json`.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// One schedule: its definition and next five firings.
    Show {
        /// Its name.
        name: String,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Pause a schedule: it fires nothing until resumed.
    Pause {
        /// Its name.
        name: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a paused schedule from now (the paused time is not caught up).
    Resume {
        /// Its name.
        name: String,
    },
    /// Delete a schedule: it fires nothing more; its runs stay.
    Delete {
        /// Its name.
        name: String,
    },
    /// Start a run for each past time the schedule names in a range.
    Backfill {
        /// Its name.
        name: String,
        /// From (RFC 3339, as `2026-05-01T00:00:00Z`).
        #[arg(long)]
        from: DateTime<Utc>,
        /// To, inclusive.
        #[arg(long)]
        to: DateTime<Utc>,
    },
}

fn duration(flag: &str, s: &str) -> anyhow::Result<std::time::Duration> {
    cairn_runtime::lang::parse_duration(s).map_err(|e| anyhow::anyhow!("--{flag} {s}: {e}"))
}

fn print(v: &ScheduleView, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        out!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    out!("schedule {} ({})", v.name, v.state);
    let version = v.workflow_version.map_or_else(|| "latest".to_owned(), |n| n.to_string());
    out!("  workflow   {} (version {version})", v.workflow);
    out!("  cron       {} in {}", v.cron, v.timezone);
    out!("  overlap    {}; catch-up window {} s; jitter {} s", v.overlap, v.catchup_window_seconds, v.jitter_seconds);
    out!("  inputs     {}", v.inputs);
    if let Some(r) = &v.paused_reason {
        out!("  paused     {r}");
    }
    out!("  fired      {} (skipped {})", v.fired, v.skipped);
    if let (Some(at), Some(run)) = (&v.last_fired_at, v.last_run_id) {
        out!("  last       {at} run {run}");
    }
    for t in &v.next_firings {
        out!("  next       {t}");
    }
    Ok(())
}

/// Runs a `cairn schedules` command.
pub async fn run(
    database: &str,
    read: &super::read::ReadArgs,
    setup: &super::setup::SetupArgs,
    cmd: SchedulesCommand,
) -> anyhow::Result<ExitCode> {
    let by = setup.identity.clone().unwrap_or_else(|| "cli".into());
    let engine = super::setup::engine(database, setup, cairn_runtime::Secrets::default()).await?;
    match cmd {
        SchedulesCommand::Create { name, workflow, cron, timezone, inputs, overlap, catchup_window, jitter } => {
            let (workflow, version) = super::name_version(&workflow)?;
            let mut values = serde_json::Map::new();
            for kv in &inputs {
                let Some((k, v)) = kv.split_once('=') else {
                    anyhow::bail!("--input {kv}: write NAME=VALUE");
                };
                let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
                values.insert(k.to_owned(), v);
            }
            let r = ScheduleRequest {
                name,
                workflow,
                workflow_version: version,
                cron,
                timezone,
                inputs: Value::Object(values),
                overlap,
                catchup_window: duration("catchup-window", &catchup_window)?,
                jitter: duration("jitter", &jitter)?,
            };
            match engine.define_schedule(r, &by).await {
                Ok(s) => {
                    if let Some(v) = view(&s, engine.clock().now()) {
                        print(&v, Format::Text)?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => super::refused(e),
            }
        }
        SchedulesCommand::List { format } => {
            let w = super::read::catch_up(database, read).await?;
            let all = all(&engine, w.db()).await?;
            if format == Format::Json {
                out!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(ExitCode::SUCCESS);
            }
            out!(
                "{:<24} {:<8} {:<24} {:<22} {:<20} next firing (UTC)",
                "schedule",
                "state",
                "workflow",
                "cron",
                "timezone"
            );
            for v in &all {
                let next = v.next_firings.first().map_or("-", String::as_str);
                out!("{:<24} {:<8} {:<24} {:<22} {:<20} {next}", v.name, v.state, v.workflow, v.cron, v.timezone);
            }
            Ok(ExitCode::SUCCESS)
        }
        SchedulesCommand::Show { name, format } => match engine.schedule(&name).await? {
            Some(s) => {
                let v = view(&s, engine.clock().now())
                    .ok_or_else(|| anyhow::anyhow!("schedule {name} has no definition"))?;
                print(&v, format)?;
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("error [unknown-schedule]: no schedule named `{name}`; `cairn schedules list` lists them");
                Ok(codes::exit("unknown-schedule"))
            }
        },
        SchedulesCommand::Pause { name, reason } => match engine.pause_schedule(&name, &by, reason).await {
            Ok(_) => {
                out!("schedule {name} is paused");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => super::refused(e),
        },
        SchedulesCommand::Resume { name } => match engine.resume_schedule(&name, &by).await {
            Ok(s) => {
                let next = cairn_runtime::schedule::upcoming(&s, engine.clock().now(), 1);
                out!("schedule {name} is active; next firing {}", next.first().map_or("-".into(), |t| time(*t)));
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => super::refused(e),
        },
        SchedulesCommand::Delete { name } => match engine.delete_schedule(&name, &by).await {
            Ok(()) => {
                out!("schedule {name} is deleted; its runs stay");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => super::refused(e),
        },
        SchedulesCommand::Backfill { name, from, to } => match engine.backfill_schedule(&name, from, to, &by).await {
            Ok(list) => {
                for (t, run, new) in &list {
                    out!("{} {run} {}", time(*t), if *new { "started" } else { "already started" });
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => super::refused(e),
        },
    }
}
