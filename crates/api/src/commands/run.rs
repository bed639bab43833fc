//! `cairn run FILE`: validate, publish, start and drive a run to its end.

use crate::codes;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use cairn_events::Event;
use cairn_runtime::Engine;
use cairn_runtime::run::RunStatus;
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
pub(crate) fn load(engine: &Engine, path: &std::path::Path) -> anyhow::Result<Option<cairn_runtime::Workflow>> {
    let source = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file = path.display().to_string();
    let problems = match cairn_runtime::lang::parse(&source, &file, &engine.task_names()) {
        Ok(w) => {
            let mut missing = cairn_runtime::lang::check_secrets(&w, &engine.secret_names(), &file);
            missing.extend(cairn_runtime::lang::check_models(&w, engine.config(), &file));
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
    let engine = super::setup::engine(database, setup, super::setup::load_secrets(None)?).await?;
    Ok(if publish_all(&engine, &args.files, false).await? {
        ExitCode::SUCCESS
    } else {
        codes::exit("invalid-definition")
    })
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
    let secrets = super::setup::load_secrets(args.secrets_file.as_deref())?;
    let engine = super::setup::engine(database, setup, secrets).await?;
    let Some(workflow) = load(&engine, &args.file)? else { return Ok(codes::exit("invalid-definition")) };
    if !publish_all(&engine, &args.with, true).await? {
        return Ok(codes::exit("invalid-definition"));
    }
    // Runs a crash interrupted continue first.
    continue_interrupted(&engine).await?;
    let version = engine.publish(&workflow, "cli").await?;
    let tty = std::io::stderr().is_terminal();
    let mut display = super::console::Progress::new(tty);
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
        Err(cairn_runtime::RunError::InvalidInputs { workflow, errors }) => {
            return Ok(invalid_inputs(&workflow, &errors, "run"));
        }
        Err(cairn_runtime::RunError::Definition { name, message, .. }) => {
            eprintln!("error: child workflow `{name}`: {message}");
            eprintln!("nothing was run; or pass its file with `--with FILE`");
            return Ok(codes::exit("unknown-child-workflow"));
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
    export_trace(&engine, run_id).await;
    super::people::finish(&engine, run_id, &state).await
}

/// Sends the run's spans when an OTLP endpoint is configured (a failure
/// to send is said, and changes nothing about the run).
async fn export_trace(engine: &Engine, run_id: uuid::Uuid) {
    if !crate::telemetry::configured() {
        return;
    }
    let events = match engine.store().read_stream(&cairn_events::run_stream(run_id), 1).await {
        Ok(rs) => rs.into_iter().filter_map(|r| Event::decode(&r).ok().map(|e| (r, e))).collect::<Vec<_>>(),
        Err(e) => {
            eprintln!("warning: cannot read run {run_id} to export its trace: {e}");
            return;
        }
    };
    if let Err(e) = crate::telemetry::export_runs(&events).await {
        eprintln!("warning: {e}");
    }
}

/// Says which inputs do not satisfy `workflow`'s `inputs` schema and that
/// nothing was `done`; the exit code.
fn invalid_inputs(workflow: &str, errors: &[cairn_events::SchemaViolation], done: &str) -> ExitCode {
    eprintln!("error: the inputs do not satisfy the `inputs` schema of `{workflow}`:");
    for e in errors {
        eprintln!("  {}: {}", e.path, e.message);
    }
    eprintln!("nothing was {done}; pass valid values with --input NAME=VALUE");
    codes::exit("invalid-inputs")
}

/// Drives every run that started and has not ended to its end.
pub async fn continue_interrupted(engine: &Engine) -> anyhow::Result<usize> {
    let runs = engine.unfinished_runs().await?;
    let ledger = cairn_runtime::quarantine::Ledger::read(engine.store()).await?;
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

/// `cairn continue`.
pub async fn continue_command(
    database: &str,
    read: &crate::commands::read::ReadArgs,
    setup: &super::setup::SetupArgs,
) -> anyhow::Result<ExitCode> {
    let engine = super::setup::engine(database, setup, super::setup::load_secrets(None)?).await?;
    let n = continue_interrupted(&engine).await?;
    super::console::project(database, read).await;
    out!("{n} run(s) continued");
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `cairn start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The published workflow: `NAME` (its latest version) or
    /// `NAME@VERSION` (`cairn workflows list`).
    #[arg(value_name = "NAME[@VERSION]")]
    pub workflow: String,
    /// An input, `name=value` (JSON when it parses as JSON, else a string).
    #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// A JSON file with the inputs (an object); `--input` values override it.
    #[arg(long)]
    pub input_file: Option<std::path::PathBuf>,
    /// Drive the run here until it ends or waits, then print its output
    /// (exit codes as `cairn run`). Without it the run is recorded and left
    /// to a worker (`cairn serve`, `cairn worker`, or `cairn continue`).
    #[arg(long)]
    pub wait: bool,
    /// A file of `NAME=value` secret lines (with `--wait`).
    #[arg(long)]
    pub secrets_file: Option<std::path::PathBuf>,
    /// Start at most one run for this key (per `--as` identity, shared with
    /// the HTTP API's `Idempotency-Key`): a retry with the same workflow and
    /// inputs prints the run the first try started; other inputs are refused.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// `text`: the run id (with `--wait`, then the output); `json`: an
    /// object with `run_id`, `status` and, when it ended, `output` or `error`.
    #[arg(long, value_enum, default_value = "text")]
    pub format: super::format::Format,
}

/// `cairn start NAME`: starts a published workflow; prints the run id.
pub async fn start(
    database: &str,
    read: &crate::commands::read::ReadArgs,
    setup: &super::setup::SetupArgs,
    args: StartArgs,
) -> anyhow::Result<ExitCode> {
    let json = args.format == super::format::Format::Json;
    let inputs = parse_inputs(&args.inputs, args.input_file.as_deref())?;
    let secrets = super::setup::load_secrets(args.secrets_file.as_deref())?;
    let engine = super::setup::engine(database, setup, secrets).await?;
    let (name, pinned) = super::name_version(&args.workflow)?;
    let name = name.as_str();
    let latest = engine.latest_version(name).await?;
    let Some(version) = pinned.or(latest) else {
        eprintln!("error: no workflow named `{name}` is published; `cairn publish FILE` publishes it");
        return Ok(codes::exit("unknown-workflow"));
    };
    if latest.is_none_or(|l| version > l) || version == 0 {
        eprintln!("error: workflow `{name}` has no version {version} (the latest is {})", latest.unwrap_or(0));
        return Ok(codes::exit("unknown-version"));
    }
    if super::workflows::published(&**engine.store(), name).await?.is_some_and(|p| p.archived) {
        eprintln!("error: workflow `{name}` is archived and takes no new runs");
        return Ok(codes::exit("workflow-archived"));
    }
    let w = engine.definition(name, version).await?;
    let started_by = setup.identity(engine.config()).unwrap_or_else(|| "cli".into());
    let keyed = args.idempotency_key.as_ref().map(|k| cairn_runtime::Start::idempotent_id(&started_by, k));
    if let Some(id) = keyed {
        match engine.same_start(id, &w, version, pinned.is_some(), &inputs).await? {
            None => {}
            Some(Ok(())) => eprintln!("run {id} was started with this key already"),
            Some(Err(why)) => {
                eprintln!("error: {why}");
                return Ok(codes::exit("idempotency-key-reused"));
            }
        }
    }
    let opts = cairn_runtime::Start {
        run_id: keyed,
        idempotency_key: args.idempotency_key.clone(),
        drive: false,
        trace_parent: None,
    };
    let run_id = match engine.start_with(&w, version, inputs, &started_by, opts).await {
        Ok((id, _)) => id,
        // Started with this key already (above, or by a racing start).
        Err(cairn_runtime::RunError::Store(e)) if e.is_conflict() && keyed.is_some() => keyed.unwrap_or_default(),
        Err(cairn_runtime::RunError::InvalidInputs { workflow, errors }) => {
            return Ok(invalid_inputs(&workflow, &errors, "started"));
        }
        Err(e) => return Err(e.into()),
    };
    if !args.wait {
        if json {
            out!("{}", serde_json::json!({ "run_id": run_id, "status": "running" }));
        } else {
            out!("{run_id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        out!("{run_id}");
    }
    let tty = std::io::stderr().is_terminal() && !json;
    let mut display = super::console::Progress::new(tty);
    let mut progress = |e: &Event| {
        if !json {
            display.show(e);
        }
    };
    let projector = Projector::start(engine.store().clone(), database, read).await;
    let state = engine.drive(run_id, &mut progress).await?;
    if let Some(p) = projector {
        p.finish().await;
    }
    export_trace(&engine, run_id).await;
    if json {
        let waiting = state.status == RunStatus::Running;
        let mut v = serde_json::json!({
            "run_id": run_id,
            "status": if waiting { "waiting".to_owned() } else { format!("{:?}", state.status).to_lowercase() },
        });
        if let Some(o) = &state.output {
            v["output"] = o.clone();
        }
        if let Some((kind, message, step)) = &state.error {
            v["error"] = serde_json::json!({ "kind": kind, "message": message, "step": step });
        }
        out!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(match state.status {
            RunStatus::Completed => ExitCode::SUCCESS,
            RunStatus::Running => codes::exit("waiting"),
            _ => codes::exit("run-failed"),
        });
    }
    super::people::finish(&engine, run_id, &state).await
}
