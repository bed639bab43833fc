//! `cairn runs`, `cairn show RUN`, `cairn cancel RUN`.
//!
//! Until the read models exist these scan the log; they answer from events,
//! never from anything the engine keeps in memory.

use crate::codes;
use std::process::ExitCode;

use anyhow::Context;
use cairn_events::Event;
use cairn_runtime::{Engine, TaskRegistry};
use uuid::Uuid;

/// Arguments of `cairn show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The run id.
    pub run: Uuid,
}

/// Arguments of `cairn cancel`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The run id.
    pub run: Uuid,
    /// Why.
    #[arg(long)]
    pub reason: Option<String>,
}

/// Arguments of `cairn runs`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only runs of this workflow.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only runs with this status.
    #[arg(long, value_parser = ["running", "waiting", "completed", "failed", "cancelled"])]
    pub status: Option<String>,
    /// Only runs started at or after this time: RFC 3339
    /// (`2026-12-01T09:00:00Z`), a day (`2026-12-01`, UTC) or an age
    /// (`90m`, `2h`, `7d`: that long ago).
    #[arg(long, value_parser = since)]
    pub since: Option<String>,
    /// At most this many runs: the newest (still listed oldest first).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub limit: Option<i64>,
    /// `text`: a table; `json`: an array of runs (every column of the
    /// `runs` read model); `ids`: one run id per line, for scripts.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ListFormat,
}

/// How `cairn runs` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    /// A table for people.
    Text,
    /// A JSON array.
    Json,
    /// One run id per line.
    Ids,
}

/// `--since`: RFC 3339, a day or an age, as the read model's timestamps
/// (RFC 3339 UTC, microseconds) so they compare as text.
pub(crate) fn since(s: &str) -> Result<String, String> {
    let at = if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        t.with_timezone(&chrono::Utc)
    } else if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        d.and_time(chrono::NaiveTime::MIN).and_utc()
    } else if let Ok(age) = cairn_runtime::lang::parse_duration(s) {
        cairn_events::clock::ClockHandle::default().now()
            - chrono::Duration::from_std(age).map_err(|e| e.to_string())?
    } else {
        return Err(format!(
            "`{s}` is not a time: write RFC 3339 (`2026-12-01T09:00:00Z`), a day (`2026-12-01`) or an age (`2h`, `7d`)"
        ));
    };
    Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// Lists runs, oldest first, from the `runs` read model.
pub async fn list(database: &str, read: &crate::commands::read::ReadArgs, args: ListArgs) -> anyhow::Result<ExitCode> {
    let w = crate::commands::read::catch_up(database, read).await?;
    let f = cairn_projections::queries::RunFilter {
        workflow: args.workflow,
        status: args.status,
        since: args.since,
        limit: args.limit.unwrap_or(0),
        ..Default::default()
    };
    let mut rows = cairn_projections::queries::runs_page(w.db(), &f).await?;
    rows.reverse();
    match args.format {
        ListFormat::Ids => {
            for r in &rows {
                out!("{}", r.run_id);
            }
        }
        ListFormat::Json => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "run_id": r.run_id, "workflow": r.workflow, "version": r.version, "status": r.status,
                        "current_step": r.current_step, "started_at": r.started_at, "ended_at": r.ended_at,
                        "started_by": r.started_by, "parent_run_id": r.parent_run_id, "error_kind": r.error_kind,
                        "error_message": r.error_message, "failed_step": r.failed_step,
                    })
                })
                .collect();
            out!("{}", serde_json::to_string_pretty(&items)?);
        }
        ListFormat::Text => {
            out!("{:<40} {:<24} {:>3} {:<10} {:<27} current step", "run", "workflow", "v", "status", "started (UTC)");
            for r in rows {
                let step = r.current_step.unwrap_or_default();
                out!(
                    "{:<40} {:<24} {:>3} {:<10} {:<27} {step}",
                    r.run_id,
                    r.workflow,
                    r.version,
                    r.status,
                    r.started_at
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows one run with its steps.
pub async fn show(database: &str, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let store = cairn_events::open_existing(database).await?;
    let events = store.read_stream(&cairn_events::run_stream(args.run), 1).await?;
    if events.is_empty() {
        eprintln!("error: no run with id {} in {}", args.run, store.describe());
        return Ok(codes::exit("unknown-run"));
    }
    for e in &events {
        let at: String = e.recorded_at.chars().skip(11).take(12).collect();
        let line = match Event::decode(e).with_context(|| format!("event {} of the run", e.stream_version))? {
            Event::RunStarted(s) => {
                let parent =
                    s.parent.map(|p| format!(" (child of run {} step `{}`)", p.run_id, p.step_id)).unwrap_or_default();
                format!(
                    "run started: {} v{} by {} with {}{parent}",
                    s.workflow, s.workflow_version, s.started_by, s.inputs
                )
            }
            Event::StepStarted(s) => format!("  {} attempt {} started", s.step_id, s.attempt),
            Event::StepCompleted(s) => {
                format!("  {} attempt {} completed in {} ms: {}", s.step_id, s.attempt, s.duration_ms, s.output)
            }
            Event::StepFailed(s) => {
                format!("  {} attempt {} failed [{}]: {}", s.step_id, s.attempt, s.error_kind, s.message)
            }
            Event::RetryScheduled(r) => format!("  {} retry {} due {}", r.step_id, r.next_attempt, r.due_at),
            Event::BranchTaken(b) => format!("  {}: `{}` = {} → {}", b.step_id, b.expression, b.value, b.target),
            Event::StepSkipped(s) => format!("  {} skipped: {}", s.step_id, s.reason),
            Event::StepKept(k) => format!("  {} kept ({}): {}", k.step_id, k.reason, k.output),
            Event::RunResumed(r) => format!(
                "run resumed from `{}` ({}) by {}{}: runs again {}; kept {}",
                r.from_step,
                r.policy,
                r.by,
                r.reason.as_ref().map(|x| format!(" ({x})")).unwrap_or_default(),
                r.plan.rerun.join(", "),
                r.plan.kept.join(", ")
            ),
            Event::ChildRunStarted(c) => {
                format!("  {} started child run {} ({} v{})", c.step_id, c.child_run_id, c.workflow, c.workflow_version)
            }
            Event::ChildRunCompleted(c) => {
                format!("  {} child run {} {}: {}", c.step_id, c.child_run_id, c.status, c.result)
            }
            Event::RunCompleted(c) => format!("run completed: {}", c.output),
            Event::RunFailed(f) => format!("run failed [{}]: {}", f.error_kind, f.message),
            Event::RunCancelled(c) => {
                format!("run cancelled by {}{}", c.by, c.reason.map(|r| format!(": {r}")).unwrap_or_default())
            }
            other => format!("  {}", other.event_type()),
        };
        out!("{:>4} {at} {line}", e.stream_version);
    }
    Ok(ExitCode::SUCCESS)
}

/// Cancels a running run.
/// As `--as IDENTITY` (the global option; default `cli`).
pub async fn cancel(database: &str, actor: Option<&str>, args: CancelArgs) -> anyhow::Result<ExitCode> {
    let store = cairn_events::open(database).await?;
    let engine = Engine::new(store, TaskRegistry::builtin());
    match engine.cancel(args.run, actor.unwrap_or("cli"), args.reason).await {
        Ok(()) => {
            out!("cancelled run {}", args.run);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(codes::exit(e.code()))
        }
    }
}

/// `cairn quarantine`: runs start-up stopped driving because the process
/// died driving them (docs/operations.md).
#[derive(Debug, clap::Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined runs, and runs on probation (a process died while
    /// driving them, or is driving them now).
    List {
        /// `text` for people, `json` for tools.
        #[arg(long, value_enum, default_value = "text")]
        format: super::format::Format,
    },
    /// Release a quarantined run: `cairn serve` drives it again (a running
    /// server within seconds), as do `cairn continue` and `cairn run`.
    Release {
        /// The run id.
        run: Uuid,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Runs `cairn quarantine`.
pub async fn quarantine(database: &str, cmd: QuarantineCommand) -> anyhow::Result<ExitCode> {
    let store = cairn_events::open_existing(database).await?;
    let ledger = cairn_runtime::quarantine::Ledger::read(&store).await?;
    match cmd {
        QuarantineCommand::List { format: super::format::Format::Json } => {
            let quarantined: Vec<serde_json::Value> = ledger
                .quarantined
                .iter()
                .map(|(run, (q, at))| serde_json::json!({ "run_id": run, "since": at, "reason": q.reason }))
                .collect();
            let mut suspects: Vec<_> = ledger.suspects.iter().collect();
            suspects.sort();
            let probation: Vec<serde_json::Value> = suspects
                .into_iter()
                .map(|(run, deaths)| serde_json::json!({ "run_id": run, "deaths": deaths }))
                .collect();
            let v = serde_json::json!({ "quarantined": quarantined, "probation": probation });
            out!("{}", serde_json::to_string_pretty(&v)?);
        }
        QuarantineCommand::List { .. } => {
            if ledger.quarantined.is_empty() && ledger.suspects.is_empty() {
                out!("no run is quarantined or on probation");
            }
            for (run, (q, at)) in &ledger.quarantined {
                out!("{run}  quarantined {at}  {}", q.reason);
            }
            let mut suspects: Vec<_> = ledger.suspects.iter().collect();
            suspects.sort();
            for (run, deaths) in suspects {
                out!("{run}  on probation: a process died driving it {deaths} time(s) in a row, or is driving it now");
            }
        }
        QuarantineCommand::Release { run, reason } => {
            if !ledger.is_quarantined(run) {
                eprintln!("error: run {run} is not quarantined (see `cairn quarantine list`)");
                return Ok(codes::exit("not-quarantined"));
            }
            let by = std::env::var("CAIRN_IDENTITY")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "operator".into());
            cairn_runtime::quarantine::release(&store, run, &by, reason).await?;
            // Due now for whichever worker polls next.
            let now = cairn_events::clock::ClockHandle::default().now().timestamp_millis();
            store.set_wake(&cairn_events::run_stream(run), Some(now)).await?;
            out!("released run {run}: it is driven again");
        }
    }
    Ok(ExitCode::SUCCESS)
}
