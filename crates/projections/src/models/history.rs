//! The `step_history` read model: every attempt, retry, branch, AI call and human answer of a run.

use std::collections::HashMap;

use cairn_events::{Event, RecordedEvent};
use futures_util::future::BoxFuture;

use super::{duplicate, int_at, opt_int, short, text_at};
use crate::db::{DbError, Tx, Val};
use crate::projection::Projection;

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
            // Only to know a run is new: it has no rows to look up.
            "RunStarted"
                | "StepStarted"
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
                | "TaskClaimed"
                | "ApprovalDecided"
                | "ApprovalExpired"
                | "ChildRunStarted"
                | "ChildRunCompleted"
        )
    }
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
pub struct HistoryRow {
    /// The run.
    pub run_id: String,
    /// The entry's key: the position of the event that opened it.
    pub entry: String,
    /// That position.
    pub position: i64,
    /// `attempt`, `retry`, `branch`, `ai`, `input`, `approval`, `claim`, `child`, `kept`, …
    pub kind: String,
    /// The step instance.
    pub step_id: String,
    /// The attempt number.
    pub attempt: Option<i64>,
    /// The visit of the step (loops visit it again).
    pub visit: Option<i64>,
    /// `running`, `completed`, `failed`, … (by kind).
    pub status: String,
    /// When it started (RFC 3339).
    pub started_at: Option<String>,
    /// When it ended.
    pub ended_at: Option<String>,
    /// How long it took.
    pub duration_ms: Option<i64>,
    /// Why it failed.
    pub error_kind: Option<String>,
    /// The failure's message.
    pub error_message: Option<String>,
    /// Model input tokens.
    pub input_tokens: Option<i64>,
    /// Model output tokens.
    pub output_tokens: Option<i64>,
    /// Cost in millionths of the currency.
    pub cost_micros: Option<i64>,
    /// Who submitted or decided.
    pub actor: Option<String>,
    /// What else to know (a branch's target, a model, a comment).
    pub detail: Option<String>,
}

impl HistoryRow {
    /// The columns, in the order of `vals`.
    pub(crate) const COLUMNS: &[&str] = &HISTORY_COLUMNS;

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

    /// The row read back (columns in `HISTORY_COLUMNS` order).
    pub(crate) fn from_vals(r: &[Val]) -> HistoryRow {
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
    /// Runs that start in this batch: nothing of theirs is in the tables
    /// yet, so nothing is looked up (a run's first event is `RunStarted`;
    /// a rebuild writes fresh tables).
    fresh: std::collections::HashSet<String>,
}

impl HistoryFold<'_> {
    async fn row(&mut self, tx: &mut Tx, run: &str, entry: &str) -> Result<Option<&mut HistoryRow>, DbError> {
        let key = (run.to_owned(), entry.to_owned());
        if !self.rows.contains_key(&key) && self.fresh.contains(run) {
            self.rows.insert(key.clone(), None);
        }
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
        if self.fresh.contains(run) {
            self.current.insert(key, None);
            return Ok(None);
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
            fresh: events
                .iter()
                .filter(|(_, e)| matches!(e, Event::RunStarted(_)))
                .filter_map(|(r, _)| r.stream_id.strip_prefix("run-").map(str::to_owned))
                .collect(),
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
                Event::TaskClaimed(s) => {
                    let (_, visit) = on(&f.current(tx, run, &s.step_id).await?);
                    f.create(
                        HistoryRow::new(run, r, "claim", &s.step_id, "claimed")
                            .attempt(i64::from(s.attempt), visit)
                            .actor(s.worker.as_str())
                            .detail(format!("claimed by worker `{}` (key identity `{}`)", s.worker, s.by)),
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
