//! `cairn resume`, `cairn replay` and `cairn fork`: recovering failed runs
//! and debugging recorded ones (docs/recovery.md).

use crate::codes;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use cairn_events::EventStore;
use cairn_runtime::Engine;
use cairn_runtime::recovery::{Mark, Plan, ResumeError, ResumeRequest};
use cairn_runtime::run::Policy;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::read::ReadArgs;
use super::setup::SetupArgs;

pub use super::format::Format;

/// Arguments of `cairn resume`.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The failed run (or, with --workflow, none: every matching run).
    pub run: Option<Uuid>,
    /// The step to resume from (default: the step that failed).
    #[arg(long)]
    pub from: Option<String>,
    /// `failed-only` runs the failed steps again, and completed steps only
    /// if what they read changed; `downstream` runs everything after the step too.
    #[arg(long, default_value = "failed-only", value_parser = ["failed-only", "downstream"])]
    pub policy: String,
    /// Change an input for the resume: NAME=VALUE (VALUE is JSON, else a string).
    #[arg(long = "input", value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// Show the plan; record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Resume without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Resume a cancelled run, or send non-idempotent HTTP requests again.
    #[arg(long)]
    pub force: bool,
    /// Why (recorded in `RunResumed`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Plan every run of this workflow (with --status, --since).
    #[arg(long, conflicts_with = "run")]
    pub workflow: Option<String>,
    /// With --workflow: the runs' status.
    #[arg(long, default_value = "failed", value_parser = ["failed", "cancelled"], requires = "workflow")]
    pub status: String,
    /// With --workflow: runs started at or after this instant (RFC 3339).
    #[arg(long, requires = "workflow")]
    pub since: Option<DateTime<Utc>>,
    /// Text (the diff) or JSON (the plan, for tools).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// Arguments of `cairn replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The run (or, with --workflow, none: every run of the workflow).
    pub run: Option<Uuid>,
    /// Print the state after this many of the run's events (its stream
    /// version, as `cairn show` numbers them).
    #[arg(long, conflicts_with = "step")]
    pub at: Option<u64>,
    /// Print the state as of this position in the whole log (as the audit
    /// log and exports show positions): after the run's last event at or
    /// before it.
    #[arg(long, conflicts_with_all = ["at", "step"])]
    pub position: Option<u64>,
    /// Print the state just before this step first started.
    #[arg(long)]
    pub step: Option<String>,
    /// Decide with this definition instead of the run's pinned version; with
    /// --workflow, re-check past runs against it (shadow re-validation).
    #[arg(long)]
    pub definition: Option<std::path::PathBuf>,
    /// Every run of this workflow.
    #[arg(long, conflicts_with = "run")]
    pub workflow: Option<String>,
    /// With --workflow: runs started at or after this instant (RFC 3339).
    #[arg(long, requires = "workflow")]
    pub since: Option<DateTime<Utc>>,
    /// Text or JSON.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// Arguments of `cairn fork`.
#[derive(Debug, clap::Args)]
pub struct ForkArgs {
    /// The source run (never changed).
    pub run: Uuid,
    /// The top-level step the new run starts from; the outputs recorded
    /// before it are carried over.
    #[arg(long)]
    pub at: String,
    /// Change an input: NAME=VALUE.
    #[arg(long = "input", value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
}

fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn inputs(list: &[String]) -> anyhow::Result<serde_json::Map<String, Value>> {
    match super::run::parse_inputs(list, None)? {
        Value::Object(m) => Ok(m),
        _ => Ok(serde_json::Map::new()),
    }
}

/// Prints a plan as a diff against the run's original path.
fn print_plan(p: &Plan) -> anyhow::Result<()> {
    use std::io::Write as _;
    write!(std::io::stdout().lock(), "{}", plan_text(p, colour()))?;
    Ok(())
}

/// A plan as a diff against the run's original path (`paint`: in colour),
/// as `cairn resume --dry-run` prints it and `cairn mcp` returns it.
pub(crate) fn plan_text(p: &Plan, paint: bool) -> String {
    use std::fmt::Write as _;
    let c = |code: &str, s: &str| if paint { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_owned() };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "plan: resume run {} ({} v{}, {}) from `{}`, policy {}",
        p.run_id, p.workflow, p.workflow_version, p.status, p.from_step, p.policy
    );
    if let Some(i) = &p.inputs {
        let _ = writeln!(o, "  with inputs {i}");
    }
    let width = p.lines.iter().map(|l| l.step.len()).max().unwrap_or(4).max(4);
    for l in &p.lines {
        let (sign, code) = match l.mark {
            Mark::Kept => ("=", "2"),
            Mark::Rerun => ("~", "33"),
            Mark::RerunIfChanged => ("?", "36"),
            Mark::NewlyReached => ("+", "32"),
            Mark::NoLongerReached => ("-", "31"),
        };
        let _ = writeln!(o, "  {} {:<width$}  {:<9} {}", c(code, sign), l.step, l.kind, l.note);
    }
    if !p.plan.ai_costs.is_empty() {
        let _ = writeln!(
            o,
            "estimated AI cost of what may run again: {:.6} ({} step(s), from what they cost last time)",
            p.plan.estimated_cost,
            p.plan.ai_costs.len()
        );
    }
    for w in &p.warnings {
        let _ = writeln!(o, "{} {w}", c("33", "note:"));
    }
    let _ = writeln!(
        o,
        "legend: = kept  ~ runs again  ? runs again if what it reads changes  + newly reached  - no longer reached"
    );
    o
}

fn refusal(e: &ResumeError, format: Format) -> ExitCode {
    if format == Format::Json {
        use std::io::Write as _;
        let body = serde_json::json!({ "error": e.code(), "message": e.to_string() });
        let _ = writeln!(std::io::stdout().lock(), "{body}");
    }
    eprintln!("error: {e}");
    eprintln!("nothing was recorded");
    codes::exit(e.code())
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead as _, Write as _};
    let mut err = std::io::stderr().lock();
    write!(err, "{question} [y/N] ")?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// `cairn resume`.
pub async fn resume(database: &str, read: &ReadArgs, setup: &SetupArgs, args: ResumeArgs) -> anyhow::Result<ExitCode> {
    let engine = super::setup::engine(database, setup, super::setup::load_secrets(None)?).await?;
    let by = setup.identity(engine.config()).unwrap_or_else(|| "cli".into());
    let req = ResumeRequest {
        from: args.from.clone(),
        policy: Policy::parse(&args.policy).unwrap_or(Policy::FailedOnly),
        inputs: inputs(&args.inputs)?,
        force: args.force,
        by,
        reason: args.reason.clone(),
        now: None,
    };
    let runs: Vec<Uuid> = match (&args.run, &args.workflow) {
        (Some(r), _) => vec![*r],
        (None, Some(w)) => {
            let all = engine.runs_of(w, args.since).await?;
            let runs: Vec<Uuid> = all.iter().filter(|r| r.status == args.status).map(|r| r.run_id).collect();
            if runs.is_empty() {
                eprintln!(
                    "no {} runs of `{w}`{}",
                    args.status,
                    args.since.map(|s| format!(" since {s}")).unwrap_or_default()
                );
                return Ok(ExitCode::SUCCESS);
            }
            runs
        }
        (None, None) => {
            anyhow::bail!("name a run (`cairn resume RUN`) or a workflow (`--workflow NAME --status failed`)")
        }
    };
    let bulk = args.workflow.is_some();
    // Plan every run first; nothing is recorded until all are shown.
    let mut plans = Vec::new();
    let mut refused = 0;
    for id in &runs {
        match engine.plan_resume(*id, &req).await {
            Ok(p) => plans.push(p),
            Err(e) if bulk => {
                refused += 1;
                eprintln!("run {id}: cannot be resumed: {e}");
            }
            Err(e) => return Ok(refusal(&e, args.format)),
        }
    }
    match args.format {
        Format::Json if bulk => out!("{}", serde_json::to_string_pretty(&plans)?),
        Format::Json => out!("{}", serde_json::to_string_pretty(&plans[0])?),
        Format::Text => {
            for p in &plans {
                print_plan(p)?;
            }
        }
    }
    if bulk {
        eprintln!("{} run(s) planned, {refused} refused", plans.len());
    }
    if args.dry_run {
        eprintln!("dry run: nothing was recorded; resume with --yes");
        return Ok(if refused > 0 { ExitCode::from(codes::REFUSED) } else { ExitCode::SUCCESS });
    }
    if !args.yes {
        let asked = super::people::interactive() && confirm(&format!("resume {} run(s)?", plans.len()))?;
        if !asked {
            eprintln!("nothing was recorded: add --yes to resume (or --dry-run to only plan)");
            return Ok(codes::exit("not-confirmed"));
        }
    }
    let mut last = ExitCode::SUCCESS;
    let (mut completed, mut failed) = (0, 0);
    for p in plans {
        // The plan shown is the plan recorded, appended only if the run is
        // still where the plan saw it.
        if let Err(e) = engine.record_resume(&p, &req).await {
            eprintln!("run {}: {e}", p.run_id);
            failed += 1;
            last = codes::exit(e.code());
            continue;
        }
        eprintln!("run {}: resumed from `{}`", p.run_id, p.from_step);
        let Some((top, state)) = drive_here(&engine, p.run_id).await? else {
            last = codes::exit("waiting");
            continue;
        };
        match state.status {
            cairn_runtime::run::RunStatus::Completed => completed += 1,
            cairn_runtime::run::RunStatus::Failed => failed += 1,
            _ => {}
        }
        if bulk {
            last = if state.status == cairn_runtime::run::RunStatus::Failed { codes::exit("run-failed") } else { last };
        } else {
            super::console::project(database, read).await;
            return super::people::finish(&engine, top, &state).await;
        }
    }
    super::console::project(database, read).await;
    eprintln!("{completed} completed, {failed} failed, {refused} refused");
    Ok(if refused > 0 { ExitCode::from(codes::REFUSED) } else { last })
}

/// Compiles `--definition FILE` with this engine's tasks and configuration.
fn definition_file(engine: &Engine, path: &std::path::Path) -> anyhow::Result<Option<cairn_runtime::Workflow>> {
    Ok(super::run::load(engine, path)?.map(|w| engine.configured(w)))
}

/// `cairn replay`.
pub async fn replay(database: &str, setup: &SetupArgs, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let engine = super::setup::engine(database, setup, super::setup::load_secrets(None)?).await?;
    let store = engine.store().clone();
    let new = match &args.definition {
        Some(p) => match definition_file(&engine, p)? {
            Some(w) => Some(w),
            None => return Ok(codes::exit("invalid-definition")),
        },
        None => None,
    };
    if let Some(name) = &args.workflow {
        if args.at.is_some() || args.step.is_some() || args.position.is_some() {
            anyhow::bail!("--at, --position and --step show one run: name the run instead of --workflow");
        }
        let runs = engine.runs_of(name, args.since).await?;
        return match &new {
            Some(w) => shadow(&store, w, name, &runs, args.format).await,
            None => replay_all(&engine, &store, &runs, args.format).await,
        };
    }
    let Some(run) = args.run else {
        anyhow::bail!("name a run (`cairn replay RUN`) or a workflow (`--workflow NAME`)");
    };
    let recorded = store.read_stream(&cairn_events::run_stream(run), 1).await?;
    if recorded.is_empty() {
        eprintln!("error: no run with id {run} in {}", store.describe());
        return Ok(codes::exit("unknown-run"));
    }
    // Time travel.
    let at = match (&args.at, &args.step) {
        (Some(n), _) => {
            if *n == 0 || *n as usize > recorded.len() {
                eprintln!("error: --at {n}: run {run} has events 1 to {}", recorded.len());
                return Ok(codes::exit("out-of-range"));
            }
            Some(*n as usize)
        }
        (None, None) if args.position.is_some() => {
            let p = args.position.unwrap_or_default();
            match recorded.iter().filter(|e| e.global_position <= p).count() {
                0 => {
                    eprintln!(
                        "error: --position {p}: run {run} starts at log position {}",
                        recorded[0].global_position
                    );
                    return Ok(codes::exit("out-of-range"));
                }
                n => Some(n),
            }
        }
        (None, Some(step)) => match cairn_runtime::replay::before_step(&recorded, step)? {
            Some(i) => Some(i),
            None => {
                eprintln!("error: step `{step}` never started in run {run}");
                return Ok(codes::exit("step-not-reached"));
            }
        },
        _ => None,
    };
    if let Some(n) = at {
        let snap = cairn_runtime::replay::snapshot(&recorded, n)?;
        match args.format {
            Format::Json => out!("{}", serde_json::to_string_pretty(&snap)?),
            Format::Text => {
                out!("run {run} after event {} ({}, {})", snap.stream_version, snap.last_event, snap.recorded_at);
                out!("status: {}", snap.status);
                out!("inputs: {}", snap.inputs);
                out!("outputs so far:");
                for (k, v) in &snap.outputs {
                    out!("  {k}: {v}");
                }
                out!("pending:");
                for p in &snap.pending {
                    out!("  {p}");
                }
                if !snap.waiting_for.is_empty() {
                    out!("waiting for people:");
                    for w in &snap.waiting_for {
                        out!("  {w}");
                    }
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let s = engine.state(run).await?;
    let w = match new {
        Some(w) => std::sync::Arc::new(w),
        None => {
            engine.recorded_definition(&s.workflow, s.workflow_version).await.context("the run's pinned definition")?
        }
    };
    let report = cairn_runtime::replay::check(&w, &recorded)?;
    print_report(&report, args.format)?;
    Ok(if report.divergence.is_some() { codes::exit("diverged") } else { ExitCode::SUCCESS })
}

fn print_report(r: &cairn_runtime::replay::ReplayReport, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        out!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let run = r.run_id.map(|u| u.to_string()).unwrap_or_default();
    match &r.divergence {
        None => {
            out!("run {run}: {} events replayed, {} decisions made again: no divergence", r.events, r.decisions_checked)
        }
        Some(d) => {
            out!(
                "run {run}: DIVERGES at event {} (log position {}): {}",
                d.stream_version,
                d.global_position,
                d.message
            );
            out!("  recorded: {}", d.recorded);
            if d.decided.is_empty() {
                out!("  decided now: nothing yet");
            }
            for x in &d.decided {
                out!("  decided now: {x}");
            }
        }
    }
    Ok(())
}

async fn replay_all(
    engine: &Engine,
    store: &std::sync::Arc<dyn EventStore>,
    runs: &[cairn_runtime::RunSummary],
    format: Format,
) -> anyhow::Result<ExitCode> {
    let mut diverged = 0;
    for r in runs {
        let recorded = store.read_stream(&cairn_events::run_stream(r.run_id), 1).await?;
        let s = engine.state(r.run_id).await?;
        let w = engine.recorded_definition(&s.workflow, s.workflow_version).await?;
        let report = cairn_runtime::replay::check(&w, &recorded)?;
        diverged += usize::from(report.divergence.is_some());
        print_report(&report, format)?;
    }
    eprintln!("{} run(s) replayed, {diverged} diverged", runs.len());
    Ok(if diverged > 0 { codes::exit("diverged") } else { ExitCode::SUCCESS })
}

async fn shadow(
    store: &std::sync::Arc<dyn EventStore>,
    w: &cairn_runtime::Workflow,
    name: &str,
    runs: &[cairn_runtime::RunSummary],
    format: Format,
) -> anyhow::Result<ExitCode> {
    if w.name != name {
        anyhow::bail!("the definition is of workflow `{}`, not `{name}`", w.name);
    }
    let mut affected = 0;
    let mut all = Vec::new();
    for r in runs {
        let recorded = store.read_stream(&cairn_events::run_stream(r.run_id), 1).await?;
        let findings = cairn_runtime::replay::shadow(w, &recorded)?;
        affected += usize::from(!findings.is_empty());
        if format == Format::Text {
            if findings.is_empty() {
                out!("run {} ({}): unchanged", r.run_id, r.status);
            } else {
                let fails = findings.iter().any(|f| f.kind != "branch");
                out!(
                    "run {} ({}): would {}",
                    r.run_id,
                    r.status,
                    if fails { "now fail" } else { "branch differently" }
                );
                for f in &findings {
                    out!("  event {} `{}` [{}]: {}", f.stream_version, f.step, f.kind, f.message);
                }
            }
        }
        all.push(serde_json::json!({ "run_id": r.run_id, "status": r.status, "findings": findings }));
    }
    if format == Format::Json {
        out!("{}", serde_json::to_string_pretty(&all)?);
    }
    eprintln!(
        "{} run(s) of `{name}` re-checked against the new definition without calling anything: {affected} would fail or branch differently",
        runs.len()
    );
    Ok(if affected > 0 { codes::exit("diverged") } else { ExitCode::SUCCESS })
}

/// `cairn fork`.
pub async fn fork(database: &str, read: &ReadArgs, setup: &SetupArgs, args: ForkArgs) -> anyhow::Result<ExitCode> {
    let engine = super::setup::engine(database, setup, super::setup::load_secrets(None)?).await?;
    let by = setup.identity(engine.config()).unwrap_or_else(|| "cli".into());
    let id = match engine.fork(args.run, &args.at, inputs(&args.inputs)?, &by).await {
        Ok(id) => id,
        Err(ResumeError::Run(cairn_runtime::RunError::InvalidInputs { workflow, errors })) => {
            eprintln!("error: the inputs do not satisfy the `inputs` schema of `{workflow}`:");
            for e in &errors {
                eprintln!("  {}: {}", e.path, e.message);
            }
            return Ok(codes::exit("invalid-inputs"));
        }
        Err(e) => return Ok(refusal(&e, Format::Text)),
    };
    eprintln!("run {id}: forked from run {} at `{}`", args.run, args.at);
    let Some((top, state)) = drive_here(&engine, id).await? else {
        super::console::project(database, read).await;
        return Ok(codes::exit("waiting"));
    };
    super::console::project(database, read).await;
    super::people::finish(&engine, top, &state).await
}

/// Drives a run this command recorded something for. `None` when its next
/// step runs a task handler this process does not register (an embedding
/// program's): what was recorded stands, and the run goes on there.
async fn drive_here(
    engine: &Engine,
    id: uuid::Uuid,
) -> anyhow::Result<Option<(uuid::Uuid, cairn_runtime::run::RunState)>> {
    let mut display = super::console::Progress::new(std::io::stderr().is_terminal());
    match engine.drive_after_answer(id, &mut |e| display.show(e)).await {
        Ok(x) => Ok(Some(x)),
        Err(e @ cairn_runtime::RunError::HandlersElsewhere { .. }) => {
            eprintln!("run {id}: recorded; {e}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
