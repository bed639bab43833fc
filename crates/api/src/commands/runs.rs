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
    /// Who is cancelling.
    #[arg(long = "as", default_value = "cli")]
    pub actor: String,
}

/// Lists every run, oldest first, from the `runs` read model.
pub async fn list(database: &str, read: &crate::commands::read::ReadArgs) -> anyhow::Result<ExitCode> {
    let w = crate::commands::read::catch_up(database, read).await?;
    out!("{:<40} {:<24} {:>3} {:<10} {:<27} current step", "run", "workflow", "v", "status", "started (UTC)");
    for r in cairn_projections::queries::runs(w.db(), i64::MAX).await? {
        let step = r.current_step.unwrap_or_default();
        out!("{:<40} {:<24} {:>3} {:<10} {:<27} {step}", r.run_id, r.workflow, r.version, r.status, r.started_at);
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
pub async fn cancel(database: &str, args: CancelArgs) -> anyhow::Result<ExitCode> {
    let store = cairn_events::open(database).await?;
    let engine = Engine::new(store, TaskRegistry::builtin());
    match engine.cancel(args.run, &args.actor, args.reason).await {
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
    List,
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
        QuarantineCommand::List => {
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
