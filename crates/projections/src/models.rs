//! The read models: `runs`, `step_history`, `costs`, `audit_log`, `inbox`.
//! Each owns its tables (no projection reads another's), so each can be
//! rebuilt alone.

use std::collections::HashMap;

use cairn_events::{Event, RecordedEvent};
use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::db::{DbError, Tx, Val};
use crate::projection::{Input, Projection};

/// Every projection Cairn has, in a stable order.
pub fn all() -> Vec<Box<dyn Projection>> {
    vec![Box::new(Runs), Box::new(StepHistory), Box::new(Costs), Box::new(AuditLog), Box::new(Inbox)]
}

/// A value as text, shortened to `n` characters.
fn short(v: &Value, n: usize) -> String {
    let t = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if t.chars().count() > n { format!("{}…", t.chars().take(n).collect::<String>()) } else { t }
}

fn run_id(i: &Input<'_>) -> Val {
    Val::opt_text(i.run_id())
}

// ---- runs -----------------------------------------------------------------

/// One row per run: status, current step, workflow and version, times, who
/// started it.
pub struct Runs;

impl Projection for Runs {
    fn name(&self) -> &'static str {
        "runs"
    }

    fn apply_batch<'a>(
        &'a self,
        tx: &'a mut Tx,
        suffix: &'a str,
        events: &'a [(&'a RecordedEvent, &'a Event)],
    ) -> BoxFuture<'a, Result<(), DbError>> {
        Box::pin(self.fold(tx, suffix, events))
    }

    fn tables(&self) -> &'static [&'static str] {
        &["runs"]
    }

    fn create(&self, s: &str) -> Vec<String> {
        vec![format!(
            "CREATE TABLE IF NOT EXISTS runs{s} (run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, version BIGINT NOT NULL, status TEXT NOT NULL, current_step TEXT, started_at TEXT NOT NULL, ended_at TEXT, started_by TEXT NOT NULL, parent_run_id TEXT, error_kind TEXT, error_message TEXT, failed_step TEXT, updated_at TEXT NOT NULL, last_position BIGINT NOT NULL)"
        )]
    }

    fn wants(&self, t: &str) -> bool {
        matches!(
            t,
            "RunStarted"
                | "StepStarted"
                | "StepCompleted"
                | "StepFailed"
                | "TimerStarted"
                | "InputRequested"
                | "ApprovalRequested"
                | "RunCompleted"
                | "RunFailed"
                | "RunCancelled"
                | "RunResumed"
        )
    }
}

// ---- step_history -----------------------------------------------------------

/// Every step attempt of every visit (start, end, duration, status, error,
/// tokens, cost), branch decisions, retries, AI attempts, and who submitted
/// or approved. Every entry is keyed by the position of the event that
/// opened it (a step in a loop starts attempt 1 again on each visit in logs
/// written before attempts were numbered on, so `step + attempt` is not a
/// key); `step_current` says which entry each step's outcome updates.
pub struct StepHistory;

impl Projection for StepHistory {
    fn name(&self) -> &'static str {
        "step_history"
    }

    fn version(&self) -> u32 {
        // 2: entries keyed by position, with the visit (was `a:STEP:N`).
        2
    }

    fn apply_batch<'a>(
        &'a self,
        tx: &'a mut Tx,
        suffix: &'a str,
        events: &'a [(&'a RecordedEvent, &'a Event)],
    ) -> BoxFuture<'a, Result<(), DbError>> {
        Box::pin(self.fold(tx, suffix, events))
    }

    fn tables(&self) -> &'static [&'static str] {
        &["step_history", "step_current"]
    }

    fn create(&self, s: &str) -> Vec<String> {
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS step_history{s} (run_id TEXT NOT NULL, entry TEXT NOT NULL, position BIGINT NOT NULL, kind TEXT NOT NULL, step_id TEXT NOT NULL, attempt BIGINT, visit BIGINT, status TEXT, started_at TEXT, ended_at TEXT, duration_ms BIGINT, error_kind TEXT, error_message TEXT, input_tokens BIGINT, output_tokens BIGINT, cost_micros BIGINT, actor TEXT, detail TEXT, PRIMARY KEY (run_id, entry))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS step_current{s} (run_id TEXT NOT NULL, step_id TEXT NOT NULL, attempt BIGINT NOT NULL, entry TEXT NOT NULL, visit BIGINT NOT NULL, retry_attempt BIGINT, ai_attempt BIGINT, ai_entry TEXT, PRIMARY KEY (run_id, step_id))"
            ),
        ]
    }

    fn wants(&self, t: &str) -> bool {
        matches!(
            t,
            "StepStarted"
                | "StepCompleted"
                | "StepFailed"
                | "StepSkipped"
                | "StepKept"
                | "RunResumed"
                | "RetryScheduled"
                | "BranchTaken"
                | "AiAttemptStarted"
                | "AiAttemptCompleted"
                | "AiAttemptFailed"
                | "AiOutputRejected"
                | "InputSubmitted"
                | "ApprovalDecided"
                | "ApprovalExpired"
                | "ChildRunStarted"
                | "ChildRunCompleted"
        )
    }
}

// ---- costs ------------------------------------------------------------------

/// Tokens and money by run, step, model, workflow and day.
pub struct Costs;

impl Projection for Costs {
    fn name(&self) -> &'static str {
        "costs"
    }

    fn apply_batch<'a>(
        &'a self,
        tx: &'a mut Tx,
        suffix: &'a str,
        events: &'a [(&'a RecordedEvent, &'a Event)],
    ) -> BoxFuture<'a, Result<(), DbError>> {
        Box::pin(self.fold(tx, suffix, events))
    }

    fn tables(&self) -> &'static [&'static str] {
        &["costs", "cost_runs", "cost_attempts"]
    }

    fn create(&self, s: &str) -> Vec<String> {
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS costs{s} (run_id TEXT NOT NULL, step_id TEXT NOT NULL, workflow TEXT NOT NULL, model TEXT NOT NULL, day TEXT NOT NULL, attempts BIGINT NOT NULL, input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, cost_micros BIGINT NOT NULL, currency TEXT, PRIMARY KEY (run_id, step_id, model, day))"
            ),
            format!("CREATE TABLE IF NOT EXISTS cost_runs{s} (run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL)"),
            format!(
                "CREATE TABLE IF NOT EXISTS cost_attempts{s} (run_id TEXT NOT NULL, step_id TEXT NOT NULL, attempt BIGINT NOT NULL, model TEXT NOT NULL, PRIMARY KEY (run_id, step_id, attempt))"
            ),
        ]
    }

    fn wants(&self, t: &str) -> bool {
        matches!(t, "RunStarted" | "AiAttemptStarted" | "AiAttemptCompleted")
    }
}

// ---- audit_log --------------------------------------------------------------

/// Who did what, when, with what outcome, from where, to what (the fields
/// PCI DSS 10.2.2 asks for), with the event's position and hash: an auditor
/// goes from a row to its proof with `cairn verify` and `cairn events`.
pub struct AuditLog;

/// The action an event records, as a verb phrase.
fn action(t: &str) -> &'static str {
    match t {
        "RunStarted" => "start run",
        "RunCompleted" => "complete run",
        "RunFailed" => "fail run",
        "RunCancelled" => "cancel run",
        "RunResumed" => "resume run",
        "StepStarted" => "start step",
        "StepCompleted" => "complete step",
        "StepFailed" => "fail step",
        "StepSkipped" => "skip step",
        "StepKept" => "keep step output",
        "RetryScheduled" => "schedule retry",
        "BranchTaken" => "take branch",
        "AiAttemptStarted" => "call model",
        "AiAttemptCompleted" => "receive model output",
        "AiOutputRejected" => "reject model output",
        "AiAttemptFailed" => "model call failed",
        "NotificationFailed" => "notification failed",
        "InputRequested" => "request input",
        "InputSubmitted" => "submit input",
        "ApprovalRequested" => "request approval",
        "ApprovalDecided" => "decide approval",
        "ApprovalExpired" => "expire approval",
        "NotificationSent" => "send notification",
        "TimerStarted" => "start timer",
        "TimerFired" => "fire timer",
        "ChildRunStarted" => "start child run",
        "ChildRunCompleted" => "finish child run",
        "CompensationStarted" => "start compensation",
        "WorkflowVersionPublished" => "publish workflow",
        "WorkflowArchived" => "archive workflow",
        "ApiKeyCreated" => "create API key",
        "ApiKeyRevoked" => "revoke API key",
        "ParkedEventRetried" => "retry parked event",
        "ParkedEventSkipped" => "skip parked event",
        "RunsOnProbation" => "drive runs on probation",
        "ProbationPassed" => "pass probation",
        "RunQuarantined" => "quarantine run",
        "RunReleased" => "release run",
        "AccessDenied" => "refuse request",
        _ => "record event",
    }
}

fn failed(e: &Event) -> bool {
    match e {
        Event::StepFailed(_)
        | Event::RunFailed(_)
        | Event::AiOutputRejected(_)
        | Event::AiAttemptFailed(_)
        | Event::NotificationFailed(_)
        | Event::ApprovalExpired(_) => true,
        Event::ChildRunCompleted(c) => c.status != "completed",
        _ => false,
    }
}

impl Projection for AuditLog {
    fn name(&self) -> &'static str {
        "audit_log"
    }

    fn version(&self) -> u32 {
        // 2: refusals (`AccessDenied`) with the outcome `denied`, the
        // attempted action and the client's address.
        2
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_log"]
    }

    fn create(&self, s: &str) -> Vec<String> {
        vec![format!(
            "CREATE TABLE IF NOT EXISTS audit_log{s} (position BIGINT PRIMARY KEY, recorded_at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, event_type TEXT NOT NULL, outcome TEXT NOT NULL, origin TEXT NOT NULL, resource TEXT NOT NULL, run_id TEXT, details TEXT NOT NULL, hash TEXT NOT NULL)"
        )]
    }

    fn wants(&self, _t: &str) -> bool {
        true
    }

    fn apply_batch<'a>(
        &'a self,
        tx: &'a mut Tx,
        suffix: &'a str,
        events: &'a [(&'a RecordedEvent, &'a Event)],
    ) -> BoxFuture<'a, Result<(), DbError>> {
        Box::pin(async move {
            let mut meta = None;
            let rows = events.iter().map(|(r, e)| audit_row(r, e, &mut meta)).collect();
            crate::projection::write_rows(tx, &format!("audit_log{suffix}"), &AUDIT_COLUMNS, None, rows).await
        })
    }
}

// ---- inbox ------------------------------------------------------------------

/// Forms and approvals waiting for people, by assignee, with deadlines.
pub struct Inbox;

impl Projection for Inbox {
    fn name(&self) -> &'static str {
        "inbox"
    }

    fn apply_batch<'a>(
        &'a self,
        tx: &'a mut Tx,
        suffix: &'a str,
        events: &'a [(&'a RecordedEvent, &'a Event)],
    ) -> BoxFuture<'a, Result<(), DbError>> {
        Box::pin(self.fold(tx, suffix, events))
    }

    fn tables(&self) -> &'static [&'static str] {
        &["inbox"]
    }

    fn create(&self, s: &str) -> Vec<String> {
        vec![format!(
            "CREATE TABLE IF NOT EXISTS inbox{s} (run_id TEXT NOT NULL, step_id TEXT NOT NULL, kind TEXT NOT NULL, assignees TEXT NOT NULL, summary TEXT, requested_at TEXT NOT NULL, deadline TEXT, status TEXT NOT NULL, decisions BIGINT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (run_id, step_id))"
        )]
    }

    fn wants(&self, t: &str) -> bool {
        matches!(
            t,
            "InputRequested"
                | "InputSubmitted"
                | "ApprovalRequested"
                | "ApprovalDecided"
                | "ApprovalExpired"
                | "StepCompleted"
                | "StepFailed"
                | "StepSkipped"
                | "RunCompleted"
                | "RunFailed"
                | "RunCancelled"
        )
    }
}

// ---- batch folds ------------------------------------------------------------
//
// Each fold reproduces its projection's one-by-one `apply` exactly, but
// reads each touched row once and writes it once per batch; the property
// tests hold the two to the same tables.

/// Loads rows keyed by their first column, `IN`-list style, many per statement.
/// The run ids a batch touches, in order, once each.
fn touched_runs(events: &[(&RecordedEvent, &Event)]) -> Vec<String> {
    let ids: std::collections::BTreeSet<&str> =
        events.iter().filter_map(|(r, _)| r.stream_id.strip_prefix("run-")).collect();
    ids.into_iter().map(str::to_owned).collect()
}

/// The rows of `table` whose `run_id` is one of `runs` (and that match
/// `filter`), `IN`-list style, many runs per statement.
async fn rows_of_runs(
    tx: &mut Tx,
    table: &str,
    columns: &[&str],
    filter: &str,
    runs: &[String],
) -> Result<Vec<Vec<Val>>, DbError> {
    let mut out = Vec::new();
    for chunk in runs.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let args: Vec<Val> = chunk.iter().map(|k| Val::from(k.as_str())).collect();
        let sql = format!("SELECT {} FROM {table} WHERE {filter} run_id IN ({})", columns.join(", "), marks.join(","));
        out.extend(tx.rows(&sql, &args).await?);
    }
    Ok(out)
}

const RUN_COLUMNS: [&str; 14] = [
    "run_id",
    "workflow",
    "version",
    "status",
    "current_step",
    "started_at",
    "ended_at",
    "started_by",
    "parent_run_id",
    "error_kind",
    "error_message",
    "failed_step",
    "updated_at",
    "last_position",
];

fn duplicate(what: String) -> DbError {
    DbError::Protocol(what)
}

impl Runs {
    async fn fold(&self, tx: &mut Tx, suffix: &str, events: &[(&RecordedEvent, &Event)]) -> Result<(), DbError> {
        let table = format!("runs{suffix}");
        let mut existing: HashMap<String, Vec<Val>> = rows_of_runs(tx, &table, &RUN_COLUMNS, "", &touched_runs(events))
            .await?
            .into_iter()
            .map(|r| (r[0].to_string(), r))
            .collect();
        let mut new: HashMap<String, Vec<Val>> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        for (r, e) in events {
            let Some(id) = r.stream_id.strip_prefix("run-") else { continue };
            let (at, position) = (Val::Text(r.recorded_at.clone()), Val::from(r.global_position));
            if let Event::RunStarted(s) = e {
                if existing.contains_key(id) || new.contains_key(id) {
                    return Err(duplicate(format!("run {id} was already started")));
                }
                new.insert(
                    id.to_owned(),
                    vec![
                        Val::from(id),
                        Val::from(s.workflow.as_str()),
                        Val::from(s.workflow_version),
                        Val::from("running"),
                        Val::Null,
                        at.clone(),
                        Val::Null,
                        Val::from(s.started_by.as_str()),
                        Val::opt_text(s.parent.as_ref().map(|p| p.run_id.to_string())),
                        Val::Null,
                        Val::Null,
                        Val::Null,
                        at,
                        position,
                    ],
                );
                order.push(id.to_owned());
                continue;
            }
            let Some(row) = new.get_mut(id).or_else(|| existing.get_mut(id)) else { continue };
            let status = row[3].as_text().unwrap_or_default().to_owned();
            match e {
                Event::StepStarted(s) => {
                    row[4] = Val::from(s.step_id.as_str());
                    row[3] = Val::from("running");
                }
                Event::StepCompleted(_) | Event::StepFailed(_) => {
                    if status == "waiting" {
                        row[3] = Val::from("running");
                    }
                }
                // An AI backoff is the run at work, not waiting.
                Event::TimerStarted(t) if t.purpose == "retry" => {}
                Event::TimerStarted(_) | Event::InputRequested(_) | Event::ApprovalRequested(_) => {
                    row[3] = Val::from("waiting");
                }
                Event::RunResumed(_) => {
                    row[3] = Val::from("running");
                    row[6] = Val::Null;
                    row[9] = Val::Null;
                    row[10] = Val::Null;
                    row[11] = Val::Null;
                }
                Event::RunCompleted(_) => {
                    row[3] = Val::from("completed");
                    row[6] = at.clone();
                }
                Event::RunFailed(f) => {
                    row[3] = Val::from("failed");
                    row[6] = at.clone();
                    row[9] = Val::from(f.error_kind.as_str());
                    row[10] = Val::from(f.message.as_str());
                    row[11] = Val::opt_text(f.failed_step.clone());
                }
                Event::RunCancelled(c) => {
                    row[3] = Val::from("cancelled");
                    row[6] = at.clone();
                    row[9] = Val::from("cancelled");
                    row[10] = Val::from(format!(
                        "cancelled by {}{}",
                        c.by,
                        c.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
                    ));
                }
                _ => continue,
            }
            row[12] = at;
            row[13] = position;
        }
        let inserts: Vec<Vec<Val>> = order.iter().filter_map(|id| new.remove(id)).collect();
        crate::projection::write_rows(tx, &table, &RUN_COLUMNS, None, inserts).await?;
        let mut updates: Vec<(String, Vec<Val>)> = existing.into_iter().collect();
        updates.sort_by(|a, b| a.0.cmp(&b.0));
        crate::projection::write_rows(
            tx,
            &table,
            &RUN_COLUMNS,
            Some(&["run_id"]),
            updates.into_iter().map(|(_, r)| r).collect(),
        )
        .await
    }
}

const AUDIT_COLUMNS: [&str; 11] = [
    "position",
    "recorded_at",
    "actor",
    "action",
    "event_type",
    "outcome",
    "origin",
    "resource",
    "run_id",
    "details",
    "hash",
];

/// Actor and origin from an event's metadata.
fn actor_origin(metadata: &str) -> (String, String) {
    let meta: cairn_events::Metadata = serde_json::from_str(metadata).unwrap_or_default();
    let actor = meta.actor.clone().unwrap_or_else(|| "unknown".into());
    let origin = match (&meta.correlation_id, &meta.trace_id) {
        (Some(c), _) => format!("cairn {} correlation {c}", meta.engine_version),
        (None, Some(t)) => format!("cairn {} trace {t}", meta.engine_version),
        (None, None) => format!("cairn {}", meta.engine_version),
    };
    (actor, origin)
}

fn audit_row(r: &RecordedEvent, e: &Event, meta: &mut Option<(String, (String, String))>) -> Vec<Val> {
    // Most events of a batch share their metadata text: parse it once.
    if meta.as_ref().is_none_or(|(text, _)| text != &r.metadata) {
        *meta = Some((r.metadata.clone(), actor_origin(&r.metadata)));
    }
    let (actor, origin) = meta.as_ref().map(|(_, ao)| ao.clone()).unwrap_or_default();
    if let Event::AccessDenied(d) = e {
        // What was refused, on what, from where: not the stream it is kept in.
        let resource = match (&d.run_id, &d.step_id) {
            (Some(run), Some(step)) => format!("run-{run}/{step}"),
            (Some(run), None) => format!("run-{run}"),
            _ => "api".to_owned(),
        };
        return vec![
            Val::from(r.global_position),
            Val::Text(r.recorded_at.clone()),
            Val::from(d.actor.as_str()),
            Val::from(d.action.as_str()),
            Val::from(r.event_type.as_str()),
            Val::from("denied"),
            Val::from(format!("{} ({origin})", d.origin)),
            Val::from(resource),
            Val::opt_text(d.run_id.map(|u| u.to_string())),
            Val::from(r.payload.as_str()),
            Val::from(r.hash.as_str()),
        ];
    }
    let resource = match e.step_id() {
        Some(step) => format!("{}/{step}", r.stream_id),
        None => r.stream_id.clone(),
    };
    vec![
        Val::from(r.global_position),
        Val::Text(r.recorded_at.clone()),
        Val::from(actor),
        Val::from(action(&r.event_type)),
        Val::from(r.event_type.as_str()),
        Val::from(if failed(e) { "failure" } else { "success" }),
        Val::from(origin),
        Val::from(resource),
        Val::opt_text(r.stream_id.strip_prefix("run-")),
        Val::from(r.payload.as_str()),
        Val::from(r.hash.as_str()),
    ]
}

const HISTORY_COLUMNS: [&str; 18] = [
    "run_id",
    "entry",
    "position",
    "kind",
    "step_id",
    "attempt",
    "visit",
    "status",
    "started_at",
    "ended_at",
    "duration_ms",
    "error_kind",
    "error_message",
    "input_tokens",
    "output_tokens",
    "cost_micros",
    "actor",
    "detail",
];

/// One `step_history` row, by name.
#[derive(Debug, Clone, PartialEq)]
struct HistoryRow {
    run_id: String,
    entry: String,
    position: i64,
    kind: String,
    step_id: String,
    attempt: Option<i64>,
    visit: Option<i64>,
    status: String,
    started_at: Option<String>,
    ended_at: Option<String>,
    duration_ms: Option<i64>,
    error_kind: Option<String>,
    error_message: Option<String>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cost_micros: Option<i64>,
    actor: Option<String>,
    detail: Option<String>,
}

fn opt_int(v: Option<i64>) -> Val {
    v.map_or(Val::Null, Val::Int)
}

fn text_at(r: &[Val], i: usize) -> Option<String> {
    r.get(i).and_then(Val::as_text).map(str::to_owned)
}

fn int_at(r: &[Val], i: usize) -> Option<i64> {
    r.get(i).and_then(Val::as_int)
}

impl HistoryRow {
    fn new(run: &str, r: &RecordedEvent, kind: &str, step: &str, status: &str) -> HistoryRow {
        HistoryRow {
            run_id: run.to_owned(),
            entry: r.global_position.to_string(),
            position: i64::try_from(r.global_position).unwrap_or(i64::MAX),
            kind: kind.to_owned(),
            step_id: step.to_owned(),
            attempt: None,
            visit: None,
            status: status.to_owned(),
            started_at: Some(r.recorded_at.clone()),
            ended_at: None,
            duration_ms: None,
            error_kind: None,
            error_message: None,
            input_tokens: None,
            output_tokens: None,
            cost_micros: None,
            actor: None,
            detail: None,
        }
    }

    fn attempt(mut self, a: i64, visit: Option<i64>) -> Self {
        self.attempt = Some(a);
        self.visit = visit;
        self
    }

    fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }

    fn actor(mut self, a: impl Into<String>) -> Self {
        self.actor = Some(a.into());
        self
    }

    fn vals(&self) -> Vec<Val> {
        vec![
            Val::from(self.run_id.as_str()),
            Val::from(self.entry.as_str()),
            Val::Int(self.position),
            Val::from(self.kind.as_str()),
            Val::from(self.step_id.as_str()),
            opt_int(self.attempt),
            opt_int(self.visit),
            Val::from(self.status.as_str()),
            Val::opt_text(self.started_at.clone()),
            Val::opt_text(self.ended_at.clone()),
            opt_int(self.duration_ms),
            Val::opt_text(self.error_kind.clone()),
            Val::opt_text(self.error_message.clone()),
            opt_int(self.input_tokens),
            opt_int(self.output_tokens),
            opt_int(self.cost_micros),
            Val::opt_text(self.actor.clone()),
            Val::opt_text(self.detail.clone()),
        ]
    }

    fn from_vals(r: &[Val]) -> HistoryRow {
        HistoryRow {
            run_id: text_at(r, 0).unwrap_or_default(),
            entry: text_at(r, 1).unwrap_or_default(),
            position: int_at(r, 2).unwrap_or(0),
            kind: text_at(r, 3).unwrap_or_default(),
            step_id: text_at(r, 4).unwrap_or_default(),
            attempt: int_at(r, 5),
            visit: int_at(r, 6),
            status: text_at(r, 7).unwrap_or_default(),
            started_at: text_at(r, 8),
            ended_at: text_at(r, 9),
            duration_ms: int_at(r, 10),
            error_kind: text_at(r, 11),
            error_message: text_at(r, 12),
            input_tokens: int_at(r, 13),
            output_tokens: int_at(r, 14),
            cost_micros: int_at(r, 15),
            actor: text_at(r, 16),
            detail: text_at(r, 17),
        }
    }
}

/// Where a step (instance) of a run is, for the history: its open attempt
/// row, its visit, the retry it waits for and its latest AI attempt row.
#[derive(Debug, Clone, PartialEq, Default)]
struct Current {
    attempt: i64,
    entry: String,
    visit: i64,
    retry_attempt: Option<i64>,
    ai: Option<(i64, String)>,
}

const CURRENT_COLUMNS: [&str; 8] =
    ["run_id", "step_id", "attempt", "entry", "visit", "retry_attempt", "ai_attempt", "ai_entry"];

/// The step_history rows one batch touches, read at most once each.
struct HistoryFold<'t> {
    history: &'t str,
    current_table: &'t str,
    /// Rows by (run, entry); `None`: known not to exist.
    rows: HashMap<(String, String), Option<HistoryRow>>,
    /// Rows first written by this batch, in order (plain INSERTs: a
    /// duplicate fails as it would one by one).
    created: Vec<(String, String)>,
    /// Where each step is, by (run, step); `None`: never started.
    current: HashMap<(String, String), Option<Current>>,
    current_set: Vec<(String, String)>,
}

impl HistoryFold<'_> {
    async fn row(&mut self, tx: &mut Tx, run: &str, entry: &str) -> Result<Option<&mut HistoryRow>, DbError> {
        let key = (run.to_owned(), entry.to_owned());
        if !self.rows.contains_key(&key) {
            let found = tx
                .row(
                    &format!(
                        "SELECT {} FROM {} WHERE run_id = $1 AND entry = $2",
                        HISTORY_COLUMNS.join(", "),
                        self.history
                    ),
                    &[Val::from(run), Val::from(entry)],
                )
                .await?;
            self.rows.insert(key.clone(), found.map(|r| HistoryRow::from_vals(&r)));
        }
        Ok(self.rows.get_mut(&key).and_then(Option::as_mut))
    }

    fn create(&mut self, row: HistoryRow) -> Result<(), DbError> {
        let key = (row.run_id.clone(), row.entry.clone());
        if matches!(self.rows.get(&key), Some(Some(_))) {
            return Err(duplicate(format!("step_history entry {} of run {} exists", key.1, key.0)));
        }
        self.rows.insert(key.clone(), Some(row));
        self.created.push(key);
        Ok(())
    }

    async fn current(&mut self, tx: &mut Tx, run: &str, step: &str) -> Result<Option<Current>, DbError> {
        let key = (run.to_owned(), step.to_owned());
        if let Some(c) = self.current.get(&key) {
            return Ok(c.clone());
        }
        let found = tx
            .row(
                &format!(
                    "SELECT attempt, entry, visit, retry_attempt, ai_attempt, ai_entry FROM {} WHERE run_id = $1 AND step_id = $2",
                    self.current_table
                ),
                &[Val::from(run), Val::from(step)],
            )
            .await?
            .map(|r| Current {
                attempt: int_at(&r, 0).unwrap_or(1),
                entry: text_at(&r, 1).unwrap_or_default(),
                visit: int_at(&r, 2).unwrap_or(1),
                retry_attempt: int_at(&r, 3),
                ai: int_at(&r, 4).zip(text_at(&r, 5)),
            });
        self.current.insert(key, found.clone());
        Ok(found)
    }

    fn set_current(&mut self, run: &str, step: &str, c: Current) {
        let key = (run.to_owned(), step.to_owned());
        self.current.insert(key.clone(), Some(c));
        self.current_set.push(key);
    }

    /// The open attempt row of a step, when the outcome is of its attempt.
    async fn attempt_row(
        &mut self,
        tx: &mut Tx,
        run: &str,
        step: &str,
        attempt: u32,
    ) -> Result<Option<&mut HistoryRow>, DbError> {
        match self.current(tx, run, step).await? {
            Some(c) if c.attempt == i64::from(attempt) => self.row(tx, run, &c.entry).await,
            _ => Ok(None),
        }
    }

    /// The row of the step's latest AI attempt, when it is attempt `number`.
    async fn ai_row(
        &mut self,
        tx: &mut Tx,
        run: &str,
        step: &str,
        number: u32,
    ) -> Result<Option<&mut HistoryRow>, DbError> {
        match self.current(tx, run, step).await?.and_then(|c| c.ai) {
            Some((n, entry)) if n == i64::from(number) => self.row(tx, run, &entry).await,
            _ => Ok(None),
        }
    }
}

fn add(v: Option<i64>, n: Option<i64>) -> Option<i64> {
    match (v, n) {
        (a, Some(b)) => Some(a.unwrap_or(0) + b),
        (a, None) => Some(a.unwrap_or(0)),
    }
}

impl StepHistory {
    async fn fold(&self, tx: &mut Tx, suffix: &str, events: &[(&RecordedEvent, &Event)]) -> Result<(), DbError> {
        let history = format!("step_history{suffix}");
        let current_table = format!("step_current{suffix}");
        let mut f = HistoryFold {
            history: &history,
            current_table: &current_table,
            rows: HashMap::new(),
            created: Vec::new(),
            current: HashMap::new(),
            current_set: Vec::new(),
        };
        for (r, e) in events {
            let Some(run) = r.stream_id.strip_prefix("run-") else { continue };
            let at = Some(r.recorded_at.clone());
            // The attempt (and visit) an entry about a step belongs to.
            let on = |c: &Option<Current>| c.as_ref().map_or((1, None), |c| (c.attempt, Some(c.visit)));
            match e {
                Event::StepStarted(s) => {
                    let attempt = i64::from(s.attempt);
                    let before = f.current(tx, run, &s.step_id).await?;
                    // The retry (or re-start) of the attempt the step is on
                    // stays in its visit; any other start is a new visit.
                    let visit = match &before {
                        Some(c) if c.retry_attempt == Some(attempt) => c.visit,
                        Some(c) if c.attempt == attempt => {
                            let open = f.row(tx, run, &c.entry).await?.is_some_and(|r| r.status == "running");
                            if open { c.visit } else { c.visit + 1 }
                        }
                        Some(c) => c.visit + 1,
                        None => 1,
                    };
                    let row = HistoryRow::new(run, r, "attempt", &s.step_id, "running").attempt(attempt, Some(visit));
                    let entry = row.entry.clone();
                    f.create(row)?;
                    let ai = before.and_then(|c| c.ai);
                    f.set_current(run, &s.step_id, Current { attempt, entry, visit, retry_attempt: None, ai });
                }
                Event::StepCompleted(s) => {
                    if let Some(row) = f.attempt_row(tx, run, &s.step_id, s.attempt).await? {
                        row.status = "completed".into();
                        row.ended_at = at;
                        row.duration_ms = i64::try_from(s.duration_ms).ok();
                        row.detail = Some(short(&s.output, 200));
                    }
                }
                Event::StepFailed(s) => {
                    if let Some(row) = f.attempt_row(tx, run, &s.step_id, s.attempt).await? {
                        row.status = "failed".into();
                        row.ended_at = at;
                        row.error_kind = Some(s.error_kind.clone());
                        row.error_message = Some(s.message.clone());
                        row.duration_ms.get_or_insert(0);
                    }
                }
                Event::StepSkipped(s) => {
                    let c = f.current(tx, run, &s.step_id).await?;
                    // A retry it was waiting for will not come.
                    if let Some(mut c) = c.clone().filter(|c| c.retry_attempt.is_some()) {
                        c.retry_attempt = None;
                        f.set_current(run, &s.step_id, c);
                    }
                    let cancelled = match &c {
                        Some(c) => match f.row(tx, run, &c.entry.clone()).await? {
                            Some(row) if row.status == "running" => {
                                row.status = "cancelled".into();
                                row.ended_at = at;
                                row.detail = Some(s.reason.clone());
                                true
                            }
                            _ => false,
                        },
                        None => false,
                    };
                    if !cancelled {
                        f.create(HistoryRow::new(run, r, "skipped", &s.step_id, "skipped").detail(s.reason.as_str()))?;
                    }
                }
                Event::StepKept(s) => {
                    f.create(HistoryRow::new(run, r, "kept", &s.step_id, "kept").detail(s.reason.as_str()))?;
                }
                Event::RunResumed(e) => {
                    // Retries pending before the resume will not come: what
                    // starts next starts a new visit.
                    tx.exec(
                        &format!("UPDATE {current_table} SET retry_attempt = NULL WHERE run_id = $1"),
                        &[Val::from(run)],
                    )
                    .await?;
                    for ((r, step), c) in f.current.iter_mut() {
                        if let Some(c) = c.as_mut().filter(|_| r == run) {
                            c.retry_attempt = None;
                            f.current_set.push((r.clone(), step.clone()));
                        }
                    }
                    let detail = format!(
                        "resumed from `{}` ({}) by {}: re-run {}, kept {}",
                        e.from_step,
                        e.policy,
                        e.by,
                        e.plan.rerun.join(", "),
                        e.plan.kept.join(", ")
                    );
                    f.create(
                        HistoryRow::new(run, r, "resume", &e.from_step, "resumed").actor(e.by.as_str()).detail(detail),
                    )?;
                }
                Event::RetryScheduled(s) => {
                    let detail = format!(
                        "attempt {} due {} (backoff {} ms)",
                        s.next_attempt,
                        s.due_at.to_rfc3339(),
                        s.backoff_ms
                    );
                    let c = f.current(tx, run, &s.step_id).await?;
                    let visit = c.as_ref().map(|c| c.visit);
                    let next = i64::from(s.next_attempt);
                    f.create(
                        HistoryRow::new(run, r, "retry", &s.step_id, "scheduled").attempt(next, visit).detail(detail),
                    )?;
                    if let Some(mut c) = c {
                        c.retry_attempt = Some(next);
                        f.set_current(run, &s.step_id, c);
                    }
                }
                Event::BranchTaken(s) => {
                    let (attempt, visit) = on(&f.current(tx, run, &s.step_id).await?);
                    let detail = format!("`{}` = {} → {}", s.expression, s.value, s.target);
                    f.create(
                        HistoryRow::new(run, r, "branch", &s.step_id, "taken").attempt(attempt, visit).detail(detail),
                    )?;
                }
                Event::AiAttemptStarted(s) => {
                    let row = HistoryRow::new(run, r, "ai", &s.step_id, "running")
                        .attempt(i64::from(s.attempt), None)
                        .detail(format!("{}/{}", s.provider, s.model));
                    let entry = row.entry.clone();
                    f.create(row)?;
                    let mut c = f.current(tx, run, &s.step_id).await?.unwrap_or_default();
                    c.ai = Some((i64::from(s.attempt), entry));
                    f.set_current(run, &s.step_id, c);
                }
                Event::AiAttemptCompleted(s) => {
                    let cost = s.cost.as_ref().and_then(|c| i64::try_from(c.micros).ok());
                    let (inp, out) =
                        (i64::try_from(s.usage.input_tokens).ok(), i64::try_from(s.usage.output_tokens).ok());
                    if let Some(row) = f.ai_row(tx, run, &s.step_id, s.attempt).await? {
                        row.status = "completed".into();
                        row.ended_at = at;
                        row.duration_ms = i64::try_from(s.latency_ms).ok();
                        row.input_tokens = inp;
                        row.output_tokens = out;
                        row.cost_micros = cost;
                    }
                    if let Some(c) = f.current(tx, run, &s.step_id).await?
                        && let Some(row) = f.row(tx, run, &c.entry).await?
                    {
                        row.input_tokens = add(row.input_tokens, inp);
                        row.output_tokens = add(row.output_tokens, out);
                        row.cost_micros = add(row.cost_micros, cost);
                    }
                }
                Event::AiAttemptFailed(s) => {
                    if let Some(row) = f.ai_row(tx, run, &s.step_id, s.attempt).await? {
                        row.status = "failed".into();
                        row.ended_at = at;
                        row.duration_ms = i64::try_from(s.latency_ms).ok();
                        row.error_kind = Some(s.error_kind.clone());
                        row.error_message = Some(s.message.clone());
                    }
                }
                Event::AiOutputRejected(s) => {
                    let errors: Vec<String> = s.errors.iter().map(|v| format!("{}: {}", v.path, v.message)).collect();
                    if let Some(row) = f.ai_row(tx, run, &s.step_id, s.attempt).await? {
                        row.status = "rejected".into();
                        row.error_kind = Some("contract".into());
                        row.error_message = Some(errors.join("; "));
                    }
                }
                Event::InputSubmitted(s) => {
                    let (attempt, visit) = on(&f.current(tx, run, &s.step_id).await?);
                    f.create(
                        HistoryRow::new(run, r, "input", &s.step_id, "submitted")
                            .attempt(attempt, visit)
                            .actor(s.submitted_by.as_str())
                            .detail(short(&s.values, 200)),
                    )?;
                }
                Event::ApprovalDecided(s) => {
                    let (attempt, visit) = on(&f.current(tx, run, &s.step_id).await?);
                    let mut row = HistoryRow::new(run, r, "approval", &s.step_id, &s.decision)
                        .attempt(attempt, visit)
                        .actor(s.decided_by.as_str());
                    row.detail = s.comment.clone();
                    f.create(row)?;
                }
                Event::ApprovalExpired(s) => {
                    let (attempt, visit) = on(&f.current(tx, run, &s.step_id).await?);
                    let detail = format!("deadline {} passed: {}", s.deadline.to_rfc3339(), s.on_timeout);
                    f.create(
                        HistoryRow::new(run, r, "approval", &s.step_id, "expired")
                            .attempt(attempt, visit)
                            .detail(detail),
                    )?;
                }
                Event::ChildRunStarted(s) => {
                    let (attempt, visit) = on(&f.current(tx, run, &s.step_id).await?);
                    let detail = format!("child run {} ({} v{})", s.child_run_id, s.workflow, s.workflow_version);
                    f.create(
                        HistoryRow::new(run, r, "child", &s.step_id, "started").attempt(attempt, visit).detail(detail),
                    )?;
                }
                Event::ChildRunCompleted(s) => {
                    let (attempt, visit) = on(&f.current(tx, run, &s.step_id).await?);
                    let detail = format!("child run {}: {}", s.child_run_id, short(&s.result, 200));
                    f.create(
                        HistoryRow::new(run, r, "child", &s.step_id, &s.status).attempt(attempt, visit).detail(detail),
                    )?;
                }
                _ => {}
            }
        }
        let created: std::collections::HashSet<(String, String)> = f.created.iter().cloned().collect();
        let inserts: Vec<Vec<Val>> =
            f.created.iter().filter_map(|k| f.rows.get(k).and_then(Option::as_ref).map(HistoryRow::vals)).collect();
        let mut updates: Vec<((String, String), Vec<Val>)> = f
            .rows
            .iter()
            .filter(|(k, _)| !created.contains(*k))
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.vals())))
            .collect();
        updates.sort_by(|a, b| a.0.cmp(&b.0));
        crate::projection::write_rows(tx, &history, &HISTORY_COLUMNS, None, inserts).await?;
        crate::projection::write_rows(
            tx,
            &history,
            &HISTORY_COLUMNS,
            Some(&["run_id", "entry"]),
            updates.into_iter().map(|(_, r)| r).collect(),
        )
        .await?;
        let mut seen = std::collections::HashSet::new();
        let currents: Vec<Vec<Val>> = f
            .current_set
            .iter()
            .rev()
            .filter(|k| seen.insert((*k).clone()))
            .filter_map(|k| {
                let c = f.current.get(k)?.as_ref()?;
                Some(vec![
                    Val::from(k.0.as_str()),
                    Val::from(k.1.as_str()),
                    Val::Int(c.attempt),
                    Val::from(c.entry.as_str()),
                    Val::Int(c.visit),
                    opt_int(c.retry_attempt),
                    opt_int(c.ai.as_ref().map(|a| a.0)),
                    Val::opt_text(c.ai.as_ref().map(|a| a.1.clone())),
                ])
            })
            .collect();
        crate::projection::write_rows(tx, &current_table, &CURRENT_COLUMNS, Some(&["run_id", "step_id"]), currents)
            .await
    }
}

const INBOX_COLUMNS: [&str; 10] = [
    "run_id",
    "step_id",
    "kind",
    "assignees",
    "summary",
    "requested_at",
    "deadline",
    "status",
    "decisions",
    "updated_at",
];

impl Inbox {
    async fn fold(&self, tx: &mut Tx, suffix: &str, events: &[(&RecordedEvent, &Event)]) -> Result<(), DbError> {
        let table = format!("inbox{suffix}");
        // The rows that closing events can touch: those waiting, for the runs at hand.
        let mut rows: HashMap<(String, String), Vec<Val>> =
            rows_of_runs(tx, &table, &INBOX_COLUMNS, "status = 'waiting' AND", &touched_runs(events))
                .await?
                .into_iter()
                .map(|r| ((r[0].to_string(), r[1].to_string()), r))
                .collect();
        let mut touched: std::collections::BTreeSet<(String, String)> = std::collections::BTreeSet::new();
        for (r, e) in events {
            let Some(run) = r.stream_id.strip_prefix("run-") else { continue };
            let at = Val::Text(r.recorded_at.clone());
            let mut close = |step: &str, status: &str, rows: &mut HashMap<(String, String), Vec<Val>>| {
                let key = (run.to_owned(), step.to_owned());
                if let Some(row) = rows.get_mut(&key)
                    && row[7].as_text() == Some("waiting")
                {
                    row[7] = Val::from(status);
                    row[9] = at.clone();
                    touched.insert(key);
                }
            };
            match e {
                Event::InputRequested(s) => {
                    let key = (run.to_owned(), s.step_id.clone());
                    rows.insert(
                        key.clone(),
                        vec![
                            Val::from(run),
                            Val::from(s.step_id.as_str()),
                            Val::from("form"),
                            Val::from(serde_json::to_string(&s.assignees).unwrap_or_default()),
                            Val::from(s.fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ")),
                            at.clone(),
                            Val::opt_text(s.deadline.map(|d| d.to_rfc3339())),
                            Val::from("waiting"),
                            Val::Int(0),
                            at.clone(),
                        ],
                    );
                    touched.insert(key);
                }
                Event::ApprovalRequested(s) => {
                    let key = (run.to_owned(), s.step_id.clone());
                    rows.insert(
                        key.clone(),
                        vec![
                            Val::from(run),
                            Val::from(s.step_id.as_str()),
                            Val::from("approval"),
                            Val::from(serde_json::to_string(&s.approvers).unwrap_or_default()),
                            Val::from(s.summary.as_str()),
                            at.clone(),
                            Val::opt_text(s.deadline.map(|d| d.to_rfc3339())),
                            Val::from("waiting"),
                            Val::Int(0),
                            at.clone(),
                        ],
                    );
                    touched.insert(key);
                }
                Event::ApprovalDecided(s) => {
                    let key = (run.to_owned(), s.step_id.clone());
                    if !rows.contains_key(&key)
                        && let Some(found) = tx
                            .row(
                                &format!(
                                    "SELECT {} FROM {table} WHERE run_id = $1 AND step_id = $2",
                                    INBOX_COLUMNS.join(", ")
                                ),
                                &[Val::from(run), Val::from(s.step_id.as_str())],
                            )
                            .await?
                    {
                        rows.insert(key.clone(), found);
                    }
                    if let Some(row) = rows.get_mut(&key) {
                        row[8] = Val::Int(row[8].as_int().unwrap_or(0) + 1);
                        row[9] = at.clone();
                        touched.insert(key);
                    }
                }
                Event::InputSubmitted(s) => close(&s.step_id, "submitted", &mut rows),
                Event::ApprovalExpired(s) => close(&s.step_id, "expired", &mut rows),
                Event::StepCompleted(s) => close(&s.step_id, "done", &mut rows),
                Event::StepFailed(s) => close(&s.step_id, "done", &mut rows),
                Event::StepSkipped(s) => close(&s.step_id, "done", &mut rows),
                Event::RunCompleted(_) | Event::RunFailed(_) | Event::RunCancelled(_) => {
                    let steps: Vec<String> = rows
                        .iter()
                        .filter(|((r, _), row)| r == run && row[7].as_text() == Some("waiting"))
                        .map(|((_, s), _)| s.clone())
                        .collect();
                    for s in steps {
                        close(&s, "done", &mut rows);
                    }
                }
                _ => {}
            }
        }
        let out: Vec<Vec<Val>> = touched.into_iter().filter_map(|k| rows.remove(&k)).collect();
        crate::projection::write_rows(tx, &table, &INBOX_COLUMNS, Some(&["run_id", "step_id"]), out).await
    }
}

impl Costs {
    async fn fold(&self, tx: &mut Tx, suffix: &str, events: &[(&RecordedEvent, &Event)]) -> Result<(), DbError> {
        // Runs first, in one statement per many (AI events of a run always
        // follow its start), then the rare AI events one by one.
        let starts: Vec<Vec<Val>> = events
            .iter()
            .filter_map(|(r, e)| match e {
                Event::RunStarted(s) => {
                    Some(vec![Val::opt_text(r.stream_id.strip_prefix("run-")), Val::from(s.workflow.as_str())])
                }
                _ => None,
            })
            .collect();
        crate::projection::write_rows(tx, &format!("cost_runs{suffix}"), &["run_id", "workflow"], None, starts).await?;
        for (recorded, event) in events.iter().filter(|(_, e)| !matches!(e, Event::RunStarted(_))) {
            costs_event(tx, Input { suffix, recorded, event }).await?;
        }
        Ok(())
    }
}

/// Applies one AI event (or run start) to the cost tables.
fn costs_event<'a>(tx: &'a mut Tx, i: Input<'a>) -> BoxFuture<'a, Result<(), DbError>> {
    Box::pin(async move {
        let (c, r, a) = (i.table("costs"), i.table("cost_runs"), i.table("cost_attempts"));
        let run = run_id(&i);
        match i.event {
            Event::RunStarted(e) => {
                tx.exec(
                    &format!("INSERT INTO {r} (run_id, workflow) VALUES ($1, $2)"),
                    &[run, Val::from(e.workflow.as_str())],
                )
                .await?;
            }
            Event::AiAttemptStarted(e) => {
                tx.exec(
                    &format!("INSERT INTO {a} (run_id, step_id, attempt, model) VALUES ($1, $2, $3, $4) ON CONFLICT (run_id, step_id, attempt) DO UPDATE SET model = excluded.model"),
                    &[run, Val::from(e.step_id.as_str()), Val::from(e.attempt), Val::from(format!("{}/{}", e.provider, e.model))],
                )
                .await?;
            }
            Event::AiAttemptCompleted(e) => {
                let model = tx
                    .row(
                        &format!("SELECT model FROM {a} WHERE run_id = $1 AND step_id = $2 AND attempt = $3"),
                        &[run.clone(), Val::from(e.step_id.as_str()), Val::from(e.attempt)],
                    )
                    .await?
                    .and_then(|r| r.first().and_then(|v| v.as_text().map(str::to_owned)))
                    .unwrap_or_else(|| "unknown".into());
                let workflow = tx
                    .row(&format!("SELECT workflow FROM {r} WHERE run_id = $1"), std::slice::from_ref(&run))
                    .await?
                    .and_then(|r| r.first().and_then(|v| v.as_text().map(str::to_owned)))
                    .unwrap_or_else(|| "unknown".into());
                let day: String = i.recorded.recorded_at.chars().take(10).collect();
                let cost = e.cost.as_ref().map_or(0, |c| i64::try_from(c.micros).unwrap_or(i64::MAX));
                tx.exec(
                    &format!("INSERT INTO {c} (run_id, step_id, workflow, model, day, attempts, input_tokens, output_tokens, cost_micros, currency) VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $9) ON CONFLICT (run_id, step_id, model, day) DO UPDATE SET attempts = {c}.attempts + 1, input_tokens = {c}.input_tokens + excluded.input_tokens, output_tokens = {c}.output_tokens + excluded.output_tokens, cost_micros = {c}.cost_micros + excluded.cost_micros, currency = COALESCE(excluded.currency, {c}.currency)"),
                    &[
                        run,
                        Val::from(e.step_id.as_str()),
                        Val::from(workflow),
                        Val::from(model),
                        Val::from(day),
                        Val::from(e.usage.input_tokens),
                        Val::from(e.usage.output_tokens),
                        Val::Int(cost),
                        Val::opt_text(e.cost.as_ref().map(|c| c.currency.clone())),
                    ],
                )
                .await?;
            }
            _ => {}
        }
        Ok(())
    })
}
