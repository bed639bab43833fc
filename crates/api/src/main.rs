//! `cairn`: the command-line face of Cairn, a durable, event-sourced workflow
//! engine. The outer ring: it composes the event log, the engine and the
//! projections and depends on all of them; nothing depends on it.

/// Writes a line to stdout, returning the error (a closed pipe) instead of
/// panicking like `println!`.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)?
    }};
}

mod codes;
mod commands;
mod keys;
mod local;
mod mcp;
mod serve;
mod telemetry;
mod tui;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Cairn: a durable, event-sourced workflow engine for work that mixes AI,
/// people and services. Every transition, AI attempt, approval and retry is
/// an immutable, hash-chained event.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, propagate_version = true)]
struct Cli {
    /// The database: `sqlite://PATH[?synchronous=full|normal]` (embedded,
    /// the default) or `postgres://USER@HOST:PORT/DB`.
    #[arg(long, global = true, env = "CAIRN_DATABASE_URL", default_value = cairn_events::DEFAULT_DATABASE_URL)]
    database: String,

    #[command(flatten)]
    read: commands::read::ReadArgs,

    #[command(flatten)]
    setup: commands::setup::SetupArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a workflow file to its end on the database and print its output.
    Run(commands::run::Args),
    /// Continue every run a crash interrupted, to its end.
    Continue,
    /// Validate workflow files and publish each as a new version (when
    /// changed), e.g. child workflows that `workflow` steps start.
    Publish(commands::run::PublishArgs),
    /// List runs with their status; filter by workflow, status and start
    /// time; as a table, JSON or ids.
    Runs(commands::runs::ListArgs),
    /// Start a published workflow by name; print the run id (`--wait`:
    /// drive it here and print its output).
    Start(commands::run::StartArgs),
    /// The published workflows: list them, show one's versions and source,
    /// archive one.
    #[command(subcommand)]
    Workflows(commands::workflows::WorkflowsCommand),
    /// Schedules: runs started at the times a cron expression names (in a
    /// time zone), fired by the servers and workers on the database.
    #[command(subcommand)]
    Schedules(commands::schedules::SchedulesCommand),
    /// Webhook triggers: `POST /hooks/NAME` on `cairn serve` starts a run
    /// when the delivery's signature (GitHub or Stripe style) matches.
    #[command(subcommand)]
    Triggers(commands::triggers::TriggersCommand),
    /// Lifecycle subscriptions: run and step events delivered (signed, at
    /// least once, with retries) to an endpoint, or starting a workflow.
    #[command(subcommand)]
    Subscriptions(commands::subscriptions::SubscriptionsCommand),
    /// The delivery log of the subscriptions: pending, delivered and dead
    /// deliveries; put a dead one back.
    #[command(subcommand)]
    Deliveries(commands::subscriptions::DeliveriesCommand),
    /// Runs, failure rate and p50/p95 durations by workflow and by step
    /// over a period.
    Report(commands::report::Args),
    /// Print a shell completion script: `cairn completions bash >
    /// /etc/bash_completion.d/cairn` (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Show one run, event by event.
    Show(commands::runs::ShowArgs),
    /// Cancel a running run.
    Cancel(commands::runs::CancelArgs),
    /// Runs the process died driving: list them, release one.
    #[command(subcommand)]
    Quarantine(commands::runs::QuarantineCommand),
    /// Resume a failed run from a step, keeping what already succeeded:
    /// shows the plan as a diff against the original path, then records
    /// `RunResumed` and runs it (docs/recovery.md).
    Resume(commands::recovery::ResumeArgs),
    /// Re-fold a run and ask the decider again at every event; exit 1 on
    /// the first decision that differs. `--at N` shows the state then;
    /// `--definition NEW --workflow NAME` re-checks past runs against it.
    Replay(commands::recovery::ReplayArgs),
    /// Start a new run from a step of another, carrying over the outputs
    /// before it (the source run is never changed).
    Fork(commands::recovery::ForkArgs),
    /// Check workflow files; exit 1 listing every problem with file:line:column.
    Validate(commands::validate::Args),
    /// Print the JSON Schema of the workflow language.
    Schema,
    /// List every error code with its HTTP status and exit code (docs/errors.md).
    Codes {
        /// `text` or `json`.
        #[arg(long, value_enum, default_value = "text")]
        format: commands::recovery::Format,
    },
    /// Write a demo run to the log, read it back and verify the hash chain.
    Demo,
    /// Check the whole log: hash chains, stream versions, global positions.
    /// Exits 1 naming the first broken stream and version.
    Verify(commands::verify::Args),
    /// Export the log (or a run, or a time range) for compliance: records
    /// with positions and hashes, chain heads and a manifest, verifiable
    /// offline with `cairn verify --export FILE`.
    Export(commands::export::Args),
    /// Print stored events as JSON lines (a stream, or the whole log).
    Events(commands::events::Args),
    /// The read models' projections: status, a worker, rebuilds.
    #[command(subcommand)]
    Projections(commands::read::ProjectionsCommand),
    /// A run's timeline from the read models: attempts, times, errors,
    /// tokens, cost, branch decisions, who submitted or approved.
    History(commands::read::HistoryArgs),
    /// Tokens and money by run, workflow, model or day.
    Costs(commands::read::CostsArgs),
    /// Who did what, when, with what outcome, with each event's position and hash.
    Audit(commands::read::AuditArgs),
    /// Forms and approvals waiting for people.
    Inbox(commands::read::InboxArgs),
    /// API keys for the HTTP API: create (shown once), list, revoke.
    #[command(subcommand)]
    Keys(commands::keys::KeysCommand),
    /// Submit a form a run waits for, then continue the run.
    Submit(commands::people::SubmitArgs),
    /// Approve an approval a run waits for, then continue the run.
    Approve(commands::people::DecideArgs),
    /// Reject an approval a run waits for, then continue the run.
    Reject(commands::people::DecideArgs),
    /// Serve the HTTP API (REST, OpenAPI at /openapi.json, docs at /docs),
    /// with a worker that drives runs unless `--no-worker`.
    Serve(serve::Args),
    /// Drive runs without serving the API: any number of workers (and
    /// servers) share one database; a dead worker's runs are taken over.
    Worker(serve::WorkerArgs),
    /// Write a new workflow from a template (`--list` shows them).
    New(commands::author::NewArgs),
    /// Draw a workflow file as Mermaid, Graphviz DOT or SVG.
    Graph(commands::author::GraphArgs),
    /// Explain a workflow file: what each step reads and produces, the
    /// fields available to it, and reads no contract guarantees.
    Explain(commands::author::ExplainArgs),
    /// Runs, a run's steps and timeline, resume plans and the inbox in the
    /// terminal, acting as `--as` (docs/tui.md).
    Tui(local::Args),
    /// Serve the Model Context Protocol over stdio on this database, acting
    /// as `--as` (docs/mcp.md); `cairn serve` has it over HTTP at /mcp.
    Mcp(local::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server or a worker: on the threads `--threads` asks for.
    let threads = match &cli.command {
        Command::Serve(args) => Some(&args.runtime),
        Command::Worker(args) => Some(&args.runtime),
        _ => None,
    };
    if let Some(threads) = threads {
        let runtime = match threads.build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                return codes::exit("internal");
            }
        };
        return finish(runtime.block_on(async {
            match cli.command {
                Command::Serve(args) => serve::listen::run(&cli.database, &cli.read, &cli.setup, args).await,
                Command::Worker(args) => serve::worker(&cli.database, &cli.setup, args).await,
                _ => unreachable!("matched above"),
            }
        }));
    }
    // One thread: a run's effects are async, and the W10 benchmark measures
    // a current-thread runtime ~20% faster than one worker per core.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return codes::exit("internal");
        }
    };
    let result = runtime.block_on(async {
        let result = match cli.command {
            Command::Run(args) => commands::run::run(&cli.database, &cli.read, &cli.setup, args).await,
            Command::Continue => commands::run::continue_command(&cli.database, &cli.read, &cli.setup).await,
            Command::Publish(args) => commands::run::publish(&cli.database, &cli.setup, args).await,
            Command::Runs(args) => commands::runs::list(&cli.database, &cli.read, args).await,
            Command::Start(args) => commands::run::start(&cli.database, &cli.read, &cli.setup, args).await,
            Command::Workflows(cmd) => {
                commands::workflows::run(&cli.database, &cli.read, cli.setup.identity.as_deref(), cmd).await
            }
            Command::Schedules(cmd) => commands::schedules::run(&cli.database, &cli.read, &cli.setup, cmd).await,
            Command::Triggers(cmd) => commands::triggers::run(&cli.database, &cli.read, &cli.setup, cmd).await,
            Command::Subscriptions(cmd) => commands::subscriptions::subscriptions(&cli.database, &cli.setup, cmd).await,
            Command::Deliveries(cmd) => {
                commands::subscriptions::deliveries_command(&cli.database, &cli.setup, cmd).await
            }
            Command::Report(args) => commands::report::run(&cli.database, &cli.read, args).await,
            Command::Completions { shell } => {
                use clap::CommandFactory as _;
                clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut std::io::stdout());
                Ok(ExitCode::SUCCESS)
            }
            Command::Show(args) => commands::runs::show(&cli.database, args).await,
            Command::Cancel(args) => commands::runs::cancel(&cli.database, cli.setup.identity.as_deref(), args).await,
            Command::Quarantine(cmd) => commands::runs::quarantine(&cli.database, cmd).await,
            Command::Resume(args) => commands::recovery::resume(&cli.database, &cli.read, &cli.setup, args).await,
            Command::Replay(args) => commands::recovery::replay(&cli.database, &cli.setup, args).await,
            Command::Fork(args) => commands::recovery::fork(&cli.database, &cli.read, &cli.setup, args).await,
            Command::Validate(args) => commands::validate::run(args, &cli.setup),
            Command::Schema => commands::validate::schema(),
            Command::Codes { format } => codes::list(format == commands::recovery::Format::Json),
            Command::Demo => commands::demo::run(&cli.database).await,
            Command::Verify(args) => commands::verify::run(&cli.database, args).await,
            Command::Events(args) => commands::events::run(&cli.database, args).await,
            Command::Export(args) => commands::export::run(&cli.database, args).await,
            Command::Projections(cmd) => commands::read::projections(&cli.database, &cli.read, cmd).await,
            Command::History(args) => commands::read::history(&cli.database, &cli.read, args).await,
            Command::Costs(args) => commands::read::costs(&cli.database, &cli.read, args).await,
            Command::Audit(args) => commands::read::audit(&cli.database, &cli.read, args).await,
            Command::Inbox(args) => commands::read::inbox(&cli.database, &cli.read, args).await,
            Command::Keys(cmd) => commands::keys::run(&cli.database, &cli.setup, cmd).await,
            Command::Submit(args) => commands::people::submit(&cli.database, &cli.read, &cli.setup, args).await,
            Command::Approve(args) => commands::people::decide(&cli.database, &cli.read, &cli.setup, args, true).await,
            Command::Reject(args) => commands::people::decide(&cli.database, &cli.read, &cli.setup, args, false).await,
            Command::New(args) => commands::author::new(args),
            Command::Graph(args) => commands::author::graph(args),
            Command::Explain(args) => commands::author::explain_command(args),
            Command::Tui(args) => tui::run(&cli.database, &cli.read, &cli.setup, args).await,
            Command::Mcp(args) => mcp::stdio(&cli.database, &cli.read, &cli.setup, args).await,
            Command::Serve(_) | Command::Worker(_) => unreachable!("served above"),
        };
        commands::setup::retire_workers().await;
        result
    });
    finish(result)
}

fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        // `cairn … | head`: the reader left; that is not a failure.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            codes::exit("internal")
        }
    }
}
