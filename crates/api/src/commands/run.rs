//! `cairn run FILE`: validate, publish, start and drive a run to its end.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use cairn_engine::Engine;
use cairn_engine::decider::RunStatus;
use cairn_events::Event;
use serde_json::Value;

/// Arguments of `cairn run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workflow file.
    pub file: std::path::PathBuf,
    /// An input, `name=value`; the value is parsed as JSON when it is JSON
    /// (`count=3`, `tags=["a"]`) and taken as a string otherwise.
    #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// A JSON file with the inputs (an object); `--input` values override it.
    #[arg(long)]
    pub input_file: Option<std::path::PathBuf>,
    /// A file of `NAME=value` secret lines, added to the `CAIRN_SECRET_<NAME>`
    /// environment variables.
    #[arg(long)]
    pub secrets_file: Option<std::path::PathBuf>,
    /// Publish this workflow file first: a child workflow the run starts
    /// with a `workflow` step. Repeatable.
    #[arg(long = "with", value_name = "FILE")]
    pub with: Vec<std::path::PathBuf>,
}

/// Arguments of `cairn publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Workflow files.
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
}

/// Validates a file against this engine (task handlers, secrets), printing
/// every problem to stderr; `None` when there were any.
pub(crate) fn load(engine: &Engine, path: &std::path::Path) -> anyhow::Result<Option<cairn_engine::Workflow>> {
    let source = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file = path.display().to_string();
    let problems = match cairn_engine::lang::parse(&source, &file, &engine.task_names()) {
        Ok(w) => {
            let mut missing = cairn_engine::lang::check_secrets(&w, &engine.secret_names(), &file);
            missing.extend(cairn_engine::lang::check_models(&w, engine.config(), &file));
            if missing.is_empty() { Ok(w) } else { Err(missing) }
        }
        Err(d) => Err(d.0),
    };
    match problems {
        Ok(w) => Ok(Some(w)),
        Err(d) => {
            for p in &d {
                eprintln!("{p}");
            }
            eprintln!("{}: {} problem(s); nothing was run or published", file, d.len());
            Ok(None)
        }
    }
}

/// Validates and publishes each file; `false` when any was invalid (then
/// none is published).
async fn publish_all(engine: &Engine, files: &[std::path::PathBuf], quiet: bool) -> anyhow::Result<bool> {
    let mut workflows = Vec::new();
    for f in files {
        match load(engine, f)? {
            Some(w) => workflows.push(w),
            None => return Ok(false),
        }
    }
    for w in &workflows {
        let before = engine.latest_version(&w.name).await?;
        let v = engine.publish(w, "cli").await?;
        if !quiet {
            let what = if before == Some(v) { "unchanged" } else { "published" };
            out!("{} v{v} ({what})", w.name);
        }
    }
    Ok(true)
}

/// `cairn publish FILE...`.
pub async fn publish(database: &str, setup: &super::setup::SetupArgs, args: PublishArgs) -> anyhow::Result<ExitCode> {
    let engine = super::setup::engine(database, setup, load_secrets(None)?).await?;
    Ok(if publish_all(&engine, &args.files, false).await? { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Secrets from the environment and an optional file.
pub fn load_secrets(file: Option<&std::path::Path>) -> anyhow::Result<cairn_engine::secrets::Secrets> {
    let mut secrets = cairn_engine::secrets::Secrets::from_env();
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading secrets file {}", f.display()))?;
        secrets.add_file(&text).map_err(|e| anyhow::anyhow!("secrets file {}: {e}", f.display()))?;
    }
    Ok(secrets)
}

/// Parses `--input` and `--input-file` into one JSON object.
pub fn parse_inputs(inputs: &[String], file: Option<&std::path::Path>) -> anyhow::Result<Value> {
    let mut obj = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading input file {}", f.display()))?;
            match serde_json::from_str::<Value>(&text).with_context(|| format!("{} is not JSON", f.display()))? {
                Value::Object(m) => m,
                _ => anyhow::bail!("{} must hold a JSON object of inputs", f.display()),
            }
        }
        None => serde_json::Map::new(),
    };
    for i in inputs {
        let (k, v) = i.split_once('=').with_context(|| format!("`--input {i}` is not NAME=VALUE"))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        obj.insert(k.to_owned(), v);
    }
    Ok(Value::Object(obj))
}

/// Runs the command.
pub async fn run(
    database: &str,
    read: &crate::commands::read::ReadArgs,
    setup: &super::setup::SetupArgs,
    args: Args,
) -> anyhow::Result<ExitCode> {
    let inputs = parse_inputs(&args.inputs, args.input_file.as_deref())?;
    let secrets = load_secrets(args.secrets_file.as_deref())?;
    let engine = super::setup::engine(database, setup, secrets).await?;
    let Some(workflow) = load(&engine, &args.file)? else { return Ok(ExitCode::from(1)) };
    if !publish_all(&engine, &args.with, true).await? {
        return Ok(ExitCode::from(1));
    }
    // Runs a crash interrupted continue first.
    continue_interrupted(&engine).await?;
    let version = engine.publish(&workflow, "cli").await?;
    let tty = std::io::stderr().is_terminal();
    let mut display = Progress::new(tty);
    let mut progress = |e: &Event| {
        if let Event::RunStarted(r) = e {
            eprintln!("run {}: {} v{}", r.run_id, r.workflow, r.workflow_version);
        }
        display.show(e);
    };
    // The embedded default runs the projections in-process, alongside the
    // run, woken by its commits.
    let projector = Projector::start(engine.store().clone(), database, read).await;
    let started_by = setup.identity(engine.config()).unwrap_or_else(|| "cli".into());
    let (run_id, mut state) = match engine.run(&workflow, version, inputs, &started_by, &mut progress).await {
        Ok(done) => done,
        Err(cairn_engine::RunError::InvalidInputs { workflow, errors }) => {
            eprintln!("error: the inputs do not satisfy the `inputs` schema of `{workflow}`:");
            for e in &errors {
                eprintln!("  {}: {}", e.path, e.message);
            }
            eprintln!("nothing was run; pass valid values with --input NAME=VALUE");
            return Ok(ExitCode::from(1));
        }
        Err(cairn_engine::RunError::Definition { name, message, .. }) => {
            eprintln!("error: child workflow `{name}`: {message}");
            eprintln!("nothing was run; or pass its file with `--with FILE`");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    // On a terminal, people answer right here; the run goes on after each answer.
    let mut said = None;
    while state.status == RunStatus::Running
        && super::people::interactive()
        && super::people::ask_at_terminal(&engine, setup, run_id, &mut said).await?
    {
        state = engine.drive(run_id, &mut progress).await?;
    }
    // The read models include this run when the command returns.
    if let Some(p) = projector {
        p.finish().await;
    }
    super::people::finish(&engine, run_id, &state).await
}

/// Progress display: on a terminal each running step is one line that is
/// rewritten in place with its outcome; otherwise one plain line per fact.
pub struct Progress {
    tty: bool,
    open_line: bool,
}

impl Progress {
    /// A display for stderr.
    pub fn new(tty: bool) -> Self {
        Progress { tty, open_line: false }
    }

    /// Shows one event.
    pub fn show(&mut self, e: &Event) {
        use std::io::Write as _;
        let running = match e {
            Event::StepStarted(s) if s.attempt > 1 => Some(format!("{} (attempt {})", s.step_id, s.attempt)),
            Event::StepStarted(s) => Some(s.step_id.clone()),
            Event::AiAttemptStarted(a) => {
                Some(format!("{} asks {}/{} (attempt {})", a.step_id, a.provider, a.model, a.attempt))
            }
            Event::TimerStarted(t) if t.purpose == "wait" => Some(format!(
                "{} waits until {}",
                t.step_id.as_deref().unwrap_or("timer"),
                t.due_at.format("%H:%M:%S%.3f")
            )),
            _ => None,
        };
        let done = match e {
            Event::StepCompleted(s) => Some(("✓", format!("{} ({} ms)", s.step_id, s.duration_ms))),
            Event::StepFailed(s) => {
                Some(("✗", format!("{} attempt {}: [{}] {}", s.step_id, s.attempt, s.error_kind, s.message)))
            }
            Event::RetryScheduled(r) => {
                Some(("↻", format!("{} retry {} in {} ms", r.step_id, r.next_attempt, r.backoff_ms)))
            }
            Event::BranchTaken(b) => {
                Some(("→", format!("{}: `{}` is {} → {}", b.step_id, b.expression, b.value, b.target)))
            }
            Event::TimerStarted(t) if t.purpose != "wait" => Some((
                "⏲",
                format!(
                    "{} {} at {}",
                    t.step_id.as_deref().unwrap_or("timer"),
                    match t.purpose.as_str() {
                        "retry" => "retries",
                        "deadline" => "is due",
                        other => other,
                    },
                    t.due_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
                ),
            )),
            Event::CompensationStarted(c) => Some(("↩", format!("undoing: {}", c.compensations.join(", ")))),
            Event::StepSkipped(s) => Some(("–", format!("{} {}", s.step_id, s.reason))),
            Event::StepKept(k) => Some(("=", format!("{} kept: {}", k.step_id, k.reason))),
            Event::RunResumed(r) => Some(("↺", format!("resumed from `{}` ({}) by {}", r.from_step, r.policy, r.by))),
            Event::ChildRunStarted(c) => Some((
                "↳",
                format!("{} started child run {} ({} v{})", c.step_id, c.child_run_id, c.workflow, c.workflow_version),
            )),
            Event::AiAttemptCompleted(a) => Some((
                "⇠",
                format!(
                    "{} reply {}: {}+{} tokens{}, {} ms",
                    a.step_id,
                    a.attempt,
                    a.usage.input_tokens,
                    a.usage.output_tokens,
                    a.cost
                        .as_ref()
                        .map(|c| format!(", {:.6} {}", c.micros as f64 / 1e6, c.currency))
                        .unwrap_or_default(),
                    a.latency_ms
                ),
            )),
            Event::AiOutputRejected(r) => Some((
                "✗",
                format!(
                    "{} reply {} rejected, fed back: {}",
                    r.step_id,
                    r.attempt,
                    r.errors.iter().map(|e| format!("{} {}", e.path, e.message)).collect::<Vec<_>>().join("; ")
                ),
            )),
            Event::AiAttemptFailed(f) => {
                Some(("✗", format!("{} call {}: [{}] {}", f.step_id, f.attempt, f.error_kind, f.message)))
            }
            Event::InputRequested(r) => Some((
                "✎",
                format!(
                    "{} waits for input{}",
                    r.step_id,
                    if r.assignees.is_empty() { String::new() } else { format!(" from {}", r.assignees.join(", ")) }
                ),
            )),
            Event::ApprovalRequested(r) => Some((
                "⚖",
                format!("{} waits for {} approval(s) from {}", r.step_id, r.required_approvals, r.approvers.join(", ")),
            )),
            Event::InputSubmitted(s) => Some(("✓", format!("{} submitted by {}", s.step_id, s.submitted_by))),
            Event::ApprovalDecided(d) => Some((
                if d.decision == "approved" { "✓" } else { "✗" },
                format!(
                    "{} {} by {}{}",
                    d.step_id,
                    d.decision,
                    d.decided_by,
                    d.comment.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
                ),
            )),
            Event::ApprovalExpired(x) => Some(("⌛", format!("{} expired: {}", x.step_id, x.on_timeout))),
            Event::NotificationSent(n) => Some(("✉", format!("{} {} sent to {}", n.step_id, n.purpose, n.recipient))),
            Event::NotificationFailed(n) => {
                Some(("✉", format!("{} {} to {} failed: {}", n.step_id, n.purpose, n.recipient, n.error)))
            }
            Event::RunCompleted(_) => Some(("●", "completed".to_owned())),
            Event::RunFailed(f) => Some(("●", format!("failed: {}", f.message))),
            _ => None,
        };
        let mut err = std::io::stderr().lock();
        if !self.tty {
            if let (Some(text), Event::StepStarted(s)) = (&running, e)
                && s.attempt > 1
            {
                let _ = writeln!(err, "  … {text}");
            }
            if let Event::TimerStarted(_) = e
                && let Some(text) = &running
            {
                let _ = writeln!(err, "  ⏲ {text}");
            }
            if let Some((mark, text)) = done {
                let _ = writeln!(err, "  {mark} {text}");
            }
            return;
        }
        if let Some(text) = running {
            // Rewrite the open line: the step is running (or waiting).
            let _ = write!(err, "\r\x1b[2K  \x1b[2m⋯ {text}\x1b[0m");
            self.open_line = true;
        } else if let Some((mark, text)) = done {
            let clear = if self.open_line { "\r\x1b[2K" } else { "" };
            let _ = writeln!(err, "{clear}  \x1b[1m{mark}\x1b[0m {text}");
            self.open_line = false;
        }
        let _ = err.flush();
    }
}

/// Drives every run that started and has not ended to its end.
pub async fn continue_interrupted(engine: &Engine) -> anyhow::Result<usize> {
    let runs = engine.unfinished_runs().await?;
    let ledger = crate::quarantine::Ledger::read(engine.store()).await?;
    let mut moved = 0;
    for run_id in &runs {
        if ledger.is_quarantined(*run_id) {
            eprintln!("not continuing run {run_id}: quarantined (cairn quarantine)");
            continue;
        }
        let before = engine.state(*run_id).await?.version;
        let mut quiet = |_: &Event| {};
        let state = engine.drive(*run_id, &mut quiet).await?;
        // A run that waits for people and had nothing due is not news.
        if state.version == before && state.status == RunStatus::Running {
            continue;
        }
        moved += 1;
        let status = match state.status {
            RunStatus::Running if !engine.waiting(*run_id).await?.is_empty() => "waiting for people".to_owned(),
            s => format!("{s:?}").to_lowercase(),
        };
        eprintln!("continued run {run_id}: {status}");
    }
    Ok(moved)
}

/// The projection worker running inside `cairn run`.
struct Projector {
    worker: std::sync::Arc<cairn_projections::Worker>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Projector {
    /// Starts the worker; `None` (with a warning) when the read models
    /// cannot be opened: the run goes on, the log is the truth.
    async fn start(
        store: std::sync::Arc<dyn cairn_events::EventStore>,
        database: &str,
        read: &crate::commands::read::ReadArgs,
    ) -> Option<Projector> {
        match crate::commands::read::worker_on(store, database, read).await {
            Ok(w) => {
                let worker = std::sync::Arc::new(w);
                let (stop, rx) = tokio::sync::watch::channel(false);
                let w = worker.clone();
                let task = tokio::spawn(async move { w.run(std::time::Duration::from_millis(500), rx).await });
                Some(Projector { worker, stop, task })
            }
            Err(e) => {
                eprintln!("warning: {e:#}; the run goes on without the read models");
                None
            }
        }
    }

    /// Stops the worker after a last catch-up.
    async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Err(e) = self.worker.catch_up().await {
            eprintln!("warning: the read models are not up to date: {e}");
        }
    }
}

/// Brings the read models up to date; a failure there is reported, never
/// fails the command (the log is the truth; `cairn projections status` shows
/// what is wrong).
pub async fn project(database: &str, read: &crate::commands::read::ReadArgs) {
    if let Err(e) = crate::commands::read::catch_up(database, read).await {
        eprintln!("warning: the read models are not up to date: {e:#}");
    }
}

/// `cairn continue`.
pub async fn continue_command(
    database: &str,
    read: &crate::commands::read::ReadArgs,
    setup: &super::setup::SetupArgs,
) -> anyhow::Result<ExitCode> {
    let engine = super::setup::engine(database, setup, load_secrets(None)?).await?;
    let n = continue_interrupted(&engine).await?;
    project(database, read).await;
    out!("{n} run(s) continued");
    Ok(ExitCode::SUCCESS)
}
