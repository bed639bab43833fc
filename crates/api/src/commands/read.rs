//! The read side on the command line: `cairn projections status|run|rebuild`
//! and the queries `history`, `costs`, `audit`, `inbox`, answered from the
//! read models. On the embedded database the projections catch up before a
//! query answers (cheap when they are current).

use crate::codes;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cairn_events::EventStore;
use cairn_projections::queries::{self, AuditFilter, CostsBy};
use cairn_projections::{ReadDb, Worker, models};

/// Where the read models live.
#[derive(Debug, Clone, clap::Args)]
pub struct ReadArgs {
    /// The read-model database (default: PostgreSQL's event database itself;
    /// for SQLite a sibling file, `cairn.db` → `cairn-read.db`).
    #[arg(long, global = true, env = "CAIRN_READ_DATABASE_URL")]
    pub read_database: Option<String>,
}

/// `cairn projections …`.
#[derive(Debug, clap::Subcommand)]
pub enum ProjectionsCommand {
    /// Each projection's checkpoint, the log's head, and the lag.
    Status {
        /// `text` for people, `json` for tools.
        #[arg(long, value_enum, default_value = "text")]
        format: super::format::Format,
    },
    /// Run the projections as a worker until interrupted (Ctrl-C).
    Run {
        /// Poll interval when no wake-up arrives, in milliseconds.
        #[arg(long, default_value_t = 500)]
        poll_ms: u64,
        /// Events per batch transaction.
        #[arg(long, default_value_t = cairn_projections::worker::DEFAULT_BATCH)]
        batch: usize,
    },
    /// List the events read models set aside (parked) and why.
    Parked {
        /// Only this projection's.
        name: Option<String>,
    },
    /// Apply a parked event now (after its cause was fixed) and forget it.
    Retry {
        /// The projection.
        name: String,
        /// The event's position in the log.
        position: u64,
    },
    /// Forget a parked event without applying it.
    Skip {
        /// The projection.
        name: String,
        /// The event's position in the log.
        position: u64,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Rebuild one projection (or all) from position 0 and swap it in.
    Rebuild {
        /// The projection: runs, step_history, costs, audit_log, inbox.
        name: Option<String>,
        /// Every projection.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
}

/// Arguments of `cairn history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The run id.
    pub run: String,
    /// `text` for people, `json` for tools.
    #[arg(long, value_enum, default_value = "text")]
    pub format: super::format::Format,
}

/// Arguments of `cairn inbox`.
#[derive(Debug, clap::Args)]
pub struct InboxArgs {
    /// `text` for people, `json` for tools.
    #[arg(long, value_enum, default_value = "text")]
    pub format: super::format::Format,
}

/// Arguments of `cairn costs`.
#[derive(Debug, clap::Args)]
pub struct CostsArgs {
    /// Group by `run`, `workflow`, `model` or `day`.
    #[arg(long, default_value = "workflow", value_parser = ["run", "workflow", "model", "day"])]
    pub by: String,
    /// From this day on (`YYYY-MM-DD`, UTC).
    #[arg(long)]
    pub since: Option<chrono::NaiveDate>,
    /// Through this day, included (`YYYY-MM-DD`, UTC).
    #[arg(long)]
    pub until: Option<chrono::NaiveDate>,
    /// `text` for people, `json` for tools.
    #[arg(long, value_enum, default_value = "text")]
    pub format: super::format::Format,
}

/// Arguments of `cairn audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only this actor.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this run.
    #[arg(long)]
    pub run: Option<String>,
    /// From this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Until this time (RFC 3339, exclusive).
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
    /// `text` for people, `json` for tools.
    #[arg(long, value_enum, default_value = "text")]
    pub format: super::format::Format,
}

/// Opens the store, the read models and a worker over them.
pub async fn worker(database: &str, read: &ReadArgs) -> anyhow::Result<(Arc<dyn EventStore>, Worker)> {
    let store = cairn_events::open_existing(database).await?;
    let w = worker_on(store.clone(), database, read).await?;
    Ok((store, w))
}

/// A worker over an open store and the read models `read` names.
pub async fn worker_on(store: Arc<dyn EventStore>, database: &str, read: &ReadArgs) -> anyhow::Result<Worker> {
    let url = read.read_database.clone().unwrap_or_else(|| cairn_projections::default_read_url(database));
    let db = ReadDb::open(&url).await.map_err(|e| anyhow::anyhow!("the read models at {url}: {e}"))?;
    Ok(Worker::new(store, db, models::all()).await?)
}

/// Brings the read models up to date with the log.
pub async fn catch_up(database: &str, read: &ReadArgs) -> anyhow::Result<Worker> {
    let (_, w) = worker(database, read).await?;
    w.catch_up().await?;
    Ok(w)
}

/// `cairn projections …`.
pub async fn projections(database: &str, read: &ReadArgs, cmd: ProjectionsCommand) -> anyhow::Result<ExitCode> {
    let (store, w) = worker(database, read).await?;
    match cmd {
        ProjectionsCommand::Status { format: super::format::Format::Json } => {
            let all = w.status().await?;
            let items: Vec<serde_json::Value> = all
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "name": s.name, "position": s.position, "head": s.head, "lag_events": s.lag_events,
                        "lag_seconds": s.lag_seconds, "parked": s.parked,
                        "stopped": s.error.as_ref().map(|(at, e)| serde_json::json!({"position": at, "error": e})),
                    })
                })
                .collect();
            out!("{}", serde_json::to_string_pretty(&items)?);
            if all.iter().any(|s| s.error.is_some()) {
                return Ok(codes::exit("projection-stopped"));
            }
        }
        ProjectionsCommand::Status { .. } => {
            out!("{:<14} {:>10} {:>10} {:>10} {:>9}  state", "projection", "checkpoint", "head", "lag", "lag (s)");
            let mut stopped = false;
            for s in w.status().await? {
                let mut state = match &s.error {
                    Some((at, e)) => {
                        stopped = true;
                        format!("STOPPED at position {at}: {e}")
                    }
                    None if s.lag_events == 0 => "current".to_owned(),
                    None => "behind".to_owned(),
                };
                if s.parked > 0 {
                    state.push_str(&format!(", {} parked (cairn projections parked {})", s.parked, s.name));
                }
                out!(
                    "{:<14} {:>10} {:>10} {:>10} {:>9.1}  {state}",
                    s.name,
                    s.position,
                    s.head,
                    s.lag_events,
                    s.lag_seconds
                );
            }
            if stopped {
                eprintln!(
                    "a stopped projection resumes after `cairn projections rebuild NAME` once its cause is fixed"
                );
                return Ok(codes::exit("projection-stopped"));
            }
        }
        ProjectionsCommand::Parked { name } => {
            let parked = w.parked(name.as_deref()).await?;
            if parked.is_empty() {
                out!("no parked events");
            }
            for p in parked {
                out!("{} {} {} (parked {}): {}", p.name, p.position, p.event_type, p.parked_at, p.error);
            }
        }
        ProjectionsCommand::Retry { name, position } => match w.retry(&name, position).await? {
            Ok(()) => {
                let by = operator();
                record(
                    &store,
                    cairn_events::ParkedEventRetried { projection: name.clone(), position, by: by.clone() },
                    &by,
                )
                .await?;
                out!("{name}: the event at position {position} is applied and no longer parked")
            }
            Err(e) => {
                eprintln!("error: {name} still cannot apply the event at position {position}: {e}");
                return Ok(codes::exit("still-parked"));
            }
        },
        ProjectionsCommand::Skip { name, position, reason } => {
            let error = w.parked(Some(&name)).await?.into_iter().find(|p| p.position == position).map(|p| p.error);
            if w.skip(&name, position).await? {
                let by = operator();
                let e = cairn_events::ParkedEventSkipped {
                    projection: name.clone(),
                    position,
                    error: error.unwrap_or_default(),
                    by: by.clone(),
                    reason,
                };
                record(&store, e, &by).await?;
                out!("{name}: the event at position {position} is skipped (not in this read model)");
            } else {
                eprintln!("error: {name} has no parked event at position {position} (see `cairn projections parked`)");
                return Ok(codes::exit("not-parked"));
            }
        }
        ProjectionsCommand::Run { poll_ms, batch } => {
            let w = w.with_batch(batch);
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                let _ = stop_tx.send(true);
            });
            eprintln!("projections running: {} (Ctrl-C stops)", w.names().join(", "));
            w.run(Duration::from_millis(poll_ms), stop).await;
        }
        ProjectionsCommand::Rebuild { name, all } => {
            let names: Vec<String> = match (name, all) {
                (Some(n), false) => vec![n],
                (None, true) => w.names().into_iter().map(str::to_owned).collect(),
                _ => {
                    eprintln!("error: name a projection ({}) or pass --all", w.names().join(", "));
                    return Ok(codes::exit("usage"));
                }
            };
            for n in names {
                let t = std::time::Instant::now();
                match w.rebuild(&n).await {
                    Ok(events) => out!("{n}: rebuilt from {events} events in {:.2} s", t.elapsed().as_secs_f64()),
                    Err(cairn_projections::ProjectionError::Unknown(n)) => {
                        eprintln!("error: no projection named `{n}`; known: {}", w.names().join(", "));
                        return Ok(codes::exit("unknown-projection"));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn money(micros: i64, currency: Option<&str>) -> String {
    if micros > 0 { format!("{:.6} {}", micros as f64 / 1e6, currency.unwrap_or_default()) } else { String::new() }
}

/// An optional value as a table shows it: empty when absent.
fn opt(v: &Option<impl std::fmt::Display>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// `cairn history RUN`.
pub async fn history(database: &str, read: &ReadArgs, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let w = catch_up(database, read).await?;
    let Some(run) = queries::run(w.db(), &args.run).await? else {
        eprintln!("error: no run with id {} (see `cairn runs`)", args.run);
        return Ok(codes::exit("unknown-run"));
    };
    if args.format == super::format::Format::Json {
        let entries: Vec<serde_json::Value> = queries::history(w.db(), &args.run)
            .await?
            .into_iter()
            .map(|r| {
                serde_json::json!({
                    "entry": r.entry, "position": r.position, "kind": r.kind, "step_id": r.step_id,
                    "attempt": r.attempt, "visit": r.visit, "status": r.status, "started_at": r.started_at,
                    "ended_at": r.ended_at, "duration_ms": r.duration_ms, "error_kind": r.error_kind,
                    "error_message": r.error_message, "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens, "cost_micros": r.cost_micros, "actor": r.actor,
                    "detail": r.detail,
                })
            })
            .collect();
        let v = serde_json::json!({
            "run_id": run.run_id, "workflow": run.workflow, "version": run.version, "status": run.status,
            "started_at": run.started_at, "ended_at": run.ended_at, "started_by": run.started_by,
            "error_kind": run.error_kind, "error_message": run.error_message, "failed_step": run.failed_step,
            "entries": entries,
        });
        out!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "run {} — {} v{} — {} — started {} by {}",
        run.run_id,
        run.workflow,
        run.version,
        run.status,
        run.started_at,
        run.started_by
    );
    if let Some(kind) = &run.error_kind {
        let at = run.failed_step.as_ref().map(|s| format!(" at step `{s}`")).unwrap_or_default();
        out!("  error [{kind}] {}{at}", opt(&run.error_message));
    }
    for r in queries::history(w.db(), &args.run).await? {
        let (kind, step, status) = (&r.kind, &r.step_id, &r.status);
        let time: String = opt(&r.started_at).chars().skip(11).take(12).collect();
        let mut line = format!("{time} {step}");
        if kind == "attempt" || kind == "ai" {
            line.push_str(&format!(" {kind}#{} {status}", opt(&r.attempt)));
            if let Some(v) = r.visit.filter(|v| *v > 1) {
                line.push_str(&format!(" (visit {v})"));
            }
        } else {
            line.push_str(&format!(" {kind} {status}"));
        }
        if let Some(ms) = r.duration_ms {
            line.push_str(&format!(" in {ms} ms"));
        }
        if let Some(k) = &r.error_kind {
            line.push_str(&format!(" [{k}] {}", opt(&r.error_message)));
        }
        if let (Some(i), Some(o)) = (r.input_tokens, r.output_tokens) {
            line.push_str(&format!(" tokens {i}+{o}"));
        }
        if let Some(c) = r.cost_micros.filter(|c| *c > 0) {
            line.push_str(&format!(" cost {:.6}", c as f64 / 1e6));
        }
        if let Some(a) = &r.actor {
            line.push_str(&format!(" by {a}"));
        }
        if let Some(d) = &r.detail {
            line.push_str(&format!(" — {d}"));
        }
        out!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn costs`.
pub async fn costs(database: &str, read: &ReadArgs, args: CostsArgs) -> anyhow::Result<ExitCode> {
    if let (Some(a), Some(b)) = (args.since, args.until)
        && a > b
    {
        anyhow::bail!("--since {a} is after --until {b}: no day is in that range; swap them");
    }
    let w = catch_up(database, read).await?;
    let by = match args.by.as_str() {
        "run" => CostsBy::Run,
        "model" => CostsBy::Model,
        "day" => CostsBy::Day,
        _ => CostsBy::Workflow,
    };
    let day = |d: Option<chrono::NaiveDate>| d.map(|d| d.format("%Y-%m-%d").to_string());
    let rows = queries::costs(w.db(), by, day(args.since).as_deref(), day(args.until).as_deref()).await?;
    if args.format == super::format::Format::Json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    args.by.as_str(): r.key, "attempts": r.attempts, "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens, "cost": r.cost_micros as f64 / 1e6, "currency": r.currency,
                })
            })
            .collect();
        out!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(ExitCode::SUCCESS);
    }
    out!("{:<40} {:>9} {:>14} {:>14}  cost", args.by, "attempts", "input tokens", "output tokens");
    for r in rows {
        let cost = money(r.cost_micros, r.currency.as_deref());
        out!("{:<40} {:>9} {:>14} {:>14}  {cost}", r.key, r.attempts, r.input_tokens, r.output_tokens);
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn audit`.
pub async fn audit(database: &str, read: &ReadArgs, args: AuditArgs) -> anyhow::Result<ExitCode> {
    let w = catch_up(database, read).await?;
    let f = AuditFilter {
        actor: args.actor,
        run: args.run,
        since: args.since,
        until: args.until,
        limit: args.limit,
        after: None,
    };
    let rows = queries::audit(w.db(), &f).await?;
    if args.format == super::format::Format::Json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "position": r.position, "recorded_at": r.recorded_at, "actor": r.actor, "action": r.action,
                    "event_type": r.event_type, "outcome": r.outcome, "origin": r.origin, "resource": r.resource,
                    "hash": r.hash, "denied": r.denied,
                })
            })
            .collect();
        out!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:>8} {:<27} {:<12} {:<22} {:<8} {:<48} hash",
        "position",
        "time (UTC)",
        "actor",
        "action",
        "outcome",
        "resource"
    );
    for r in rows {
        let hash: String = r.hash.chars().take(16).collect();
        out!(
            "{:>8} {:<27} {:<12} {:<22} {:<8} {:<48} {hash}…",
            r.position,
            r.recorded_at,
            r.actor,
            r.action,
            r.outcome,
            r.resource
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn inbox`.
pub async fn inbox(database: &str, read: &ReadArgs, args: InboxArgs) -> anyhow::Result<ExitCode> {
    let w = catch_up(database, read).await?;
    let rows = queries::inbox(w.db()).await?;
    if args.format == super::format::Format::Json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "run_id": r.run_id, "step_id": r.step_id, "kind": r.kind, "assignees": r.assignees,
                    "summary": r.summary, "requested_at": r.requested_at, "deadline": r.deadline,
                    "status": r.status, "decisions": r.decisions,
                })
            })
            .collect();
        out!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        out!("nothing waits for people");
    }
    for r in rows {
        out!(
            "{} {} {} for {} — {} (requested {}{})",
            r.run_id,
            r.step_id,
            r.kind,
            r.assignees,
            opt(&r.summary),
            r.requested_at,
            r.deadline.as_ref().map(|d| format!(", due {d}")).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Who runs this command, for the audit log.
fn operator() -> String {
    std::env::var("CAIRN_IDENTITY").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "operator".into())
}

/// Records what an operator did to a read model in the `operations` stream
/// (so the audit log has it).
async fn record(store: &Arc<dyn EventStore>, e: impl Into<cairn_events::Event>, by: &str) -> anyhow::Result<()> {
    let e: cairn_events::Event = e.into();
    let new = cairn_events::NewEvent::from_event(&e, cairn_events::Metadata::by(by));
    store.append("operations", cairn_events::ExpectedVersion::Any, vec![new]).await?;
    Ok(())
}
