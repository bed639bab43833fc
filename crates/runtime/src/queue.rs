//! Task queues: the work of `queue` steps, done by external workers in any
//! language over HTTP (like Step Functions activities and Temporal task
//! queues). A worker long-polls named queues and claims a task: its claim
//! is recorded in the run (`TaskClaimed`, with the hash of the task token
//! it gets) and in the write side's task index (`cairn_tasks`, with its
//! heartbeat deadline). It heartbeats, then completes or fails the attempt
//! with the token; the outcome is appended with the expected version, due
//! for a worker at once, so the run goes on wherever a worker is free.
//!
//! The engine's workers reap lapsed claims ([`Engine::reap_tasks`]): the
//! attempt fails with `heartbeat-timeout` and the retry policy offers it
//! again. A token outlives nothing: completing twice answers what was
//! recorded; a late answer to an attempt that timed out, was cancelled or
//! was failed by the engine is refused, and never recorded.

use std::time::Duration;

use base64::Engine as _;
use cairn_core::decider::{Cursor, ENGINE_KINDS, RunStatus, TaskState};
use cairn_events::{Event, ExpectedVersion, NewEvent, StepFailed, TaskClaimed};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::RunError;
use crate::runner::Engine;
use crate::tasks::TaskError;

/// A task handed to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The token to heartbeat, complete and fail it with (secret: whoever
    /// has it can answer the attempt).
    pub token: String,
    /// The run.
    pub run_id: Uuid,
    /// Its workflow.
    pub workflow: String,
    /// Its version.
    pub workflow_version: u32,
    /// The step instance.
    pub step_id: String,
    /// The attempt, from 1.
    pub attempt: u32,
    /// The queue it came from.
    pub queue: String,
    /// The step's input, as recorded.
    pub input: Value,
    /// Longest the worker may go without a heartbeat (milliseconds).
    pub heartbeat_timeout_ms: u64,
    /// The first heartbeat is due by then.
    pub heartbeat_by: DateTime<Utc>,
    /// When the attempt times out whatever the heartbeats (the step's
    /// `timeout`), if it has one.
    pub expires_at: Option<DateTime<Utc>>,
}

/// What an answer to a task did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskAck {
    /// The run answered (due for a worker when `recorded`).
    pub run_id: Uuid,
    /// Whether this call recorded it (`false`: the same answer was
    /// recorded before, by this token).
    pub recorded: bool,
    /// `completed`, or `failed`.
    pub outcome: String,
    /// The error kind recorded, for a failure (the worker's, or
    /// `contract` / `limit` when its output broke the step's rules).
    pub error_kind: Option<String>,
    /// The recorded message, for a failure.
    pub message: Option<String>,
}

/// Why a task call was refused; nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum TaskQueueError {
    /// The run could not be read or written.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The token is not one Cairn gives out.
    #[error("the task token is malformed: {0}; send the `token` of a task as `POST /tasks/poll` gave it")]
    BadToken(String),
    /// No such task, or the token is not its claim's.
    #[error("no task of run {run_id} step `{step}` attempt {attempt} was claimed with this token")]
    UnknownTask {
        /// The run.
        run_id: Uuid,
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
    },
    /// The engine failed the attempt before the answer came.
    #[error("task `{step}` attempt {attempt} of run {run_id} has expired ({kind}); nothing was recorded: {message}")]
    Expired {
        /// The run.
        run_id: Uuid,
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
        /// `timeout` or `heartbeat-timeout`.
        kind: String,
        /// The recorded failure.
        message: String,
    },
    /// The run (or the branch the step was in) no longer waits for it.
    #[error("task `{step}` attempt {attempt} of run {run_id} was cancelled: {why}; nothing was recorded")]
    Cancelled {
        /// The run.
        run_id: Uuid,
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
        /// What happened.
        why: String,
    },
    /// This token already answered the attempt otherwise.
    #[error(
        "task `{step}` attempt {attempt} of run {run_id} was already {outcome} with this token; nothing was recorded"
    )]
    AlreadyFinished {
        /// The run.
        run_id: Uuid,
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
        /// `completed`, or `failed (KIND)`.
        outcome: String,
    },
}

impl TaskQueueError {
    /// The problem code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            TaskQueueError::Run(_) => "internal",
            TaskQueueError::BadToken(_) => "bad-task-token",
            TaskQueueError::UnknownTask { .. } => "unknown-task",
            TaskQueueError::Expired { .. } => "task-expired",
            TaskQueueError::Cancelled { .. } => "task-cancelled",
            TaskQueueError::AlreadyFinished { .. } => "task-finished",
        }
    }
}

/// A parsed task token: `t1.<run>.<attempt>.<secret>.<step, base64url>`.
struct Token {
    run_id: Uuid,
    step: String,
    attempt: u32,
    hash: String,
}

const TOKEN_VERSION: &str = "t1";

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn token_for(run_id: Uuid, step: &str, attempt: u32, secret: &str) -> String {
    let step = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(step.as_bytes());
    format!("{TOKEN_VERSION}.{}.{attempt}.{secret}.{step}", run_id.simple())
}

impl Token {
    fn parse(token: &str) -> Result<Token, TaskQueueError> {
        let bad = |why: &str| TaskQueueError::BadToken(why.to_owned());
        let parts: Vec<&str> = token.trim().split('.').collect();
        let [version, run, attempt, secret, step] = parts.as_slice() else {
            return Err(bad("it has not the five parts of a task token"));
        };
        if *version != TOKEN_VERSION {
            return Err(bad("it is not of a version this server gives out"));
        }
        let run_id = Uuid::parse_str(run).map_err(|_| bad("its run id is not a UUID"))?;
        let attempt: u32 = attempt.parse().map_err(|_| bad("its attempt is not a number"))?;
        if secret.len() != 64 || !secret.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("its secret is not 64 hexadecimal digits"));
        }
        let step = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(step.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("its step is not base64url text"))?;
        Ok(Token { run_id, step, attempt, hash: hash(secret) })
    }
}

fn secret() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

fn millis(d: DateTime<Utc>) -> i64 {
    d.timestamp_millis()
}

fn instant(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Whether the run still waits for this attempt: running, with the
/// step's thread in flight at it.
fn in_flight(state: &cairn_core::decider::RunState, step: &str, attempt: u32) -> bool {
    state.status == RunStatus::Running
        && state
            .threads
            .values()
            .any(|t| matches!(&t.cursor, Cursor::InFlight { step: s, attempt: a, .. } if s == step && *a == attempt))
}

/// Why an attempt that is not in flight no longer waits for its worker.
fn gone(state: &cairn_core::decider::RunState) -> String {
    match state.status {
        RunStatus::Cancelled => "the run was cancelled".into(),
        RunStatus::Completed => "the run has completed".into(),
        RunStatus::Failed => "the run has failed".into(),
        _ => "the run no longer waits for it (its branch was cancelled, or the run was resumed elsewhere)".into(),
    }
}

/// How many times an answer is tried again after losing a race with
/// another append to the run.
const RACES: usize = 8;

impl Engine {
    /// Claims up to `max` tasks of `queues` for `worker` (acting as `by`),
    /// longest offered first, waiting up to `wait` for one to be offered
    /// when none is. An empty list after the wait: poll again.
    pub async fn poll_tasks(
        &self,
        queues: &[String],
        worker: &str,
        by: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Task>, RunError> {
        let until = tokio::time::Instant::now() + wait;
        // Commits (this process's; on PostgreSQL every process's, by
        // NOTIFY) may have offered tasks.
        let mut commits = self.store().wakeups();
        loop {
            commits.borrow_and_update();
            let got = self.claim_some(queues, worker, by, max).await?;
            if !got.is_empty() || tokio::time::Instant::now() >= until {
                return Ok(got);
            }
            // Another process's offer on SQLite wakes nothing here: look
            // again at least every half second.
            let tick = (tokio::time::Instant::now() + Duration::from_millis(500)).min(until);
            tokio::select! {
                r = commits.changed() => {
                    if r.is_err() {
                        tokio::time::sleep_until(tick).await;
                    }
                }
                () = tokio::time::sleep_until(tick) => {}
            }
        }
    }

    /// Claims up to `max` of the offered tasks, each by recording its
    /// claim in its run (the task index follows in the same transaction).
    async fn claim_some(&self, queues: &[String], worker: &str, by: &str, max: usize) -> Result<Vec<Task>, RunError> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self.store().offered_tasks(queues, limit).await?;
        // Together: their claims share the group commit's transactions.
        let claims = futures_util::future::join_all(rows.into_iter().map(|row| self.claim_one(row, worker, by))).await;
        let mut got = Vec::new();
        for c in claims {
            got.extend(c?);
        }
        Ok(got)
    }

    /// Claims the offered task `row` unless another poller did first, or
    /// its run no longer waits for it (then it leaves the queue).
    async fn claim_one(&self, row: cairn_events::TaskRow, worker: &str, by: &str) -> Result<Option<Task>, RunError> {
        let Some(run_id) = row.stream_id.strip_prefix("run-").and_then(|r| Uuid::parse_str(r).ok()) else {
            self.store().drop_task(&row.stream_id, &row.step_id, row.attempt).await?;
            return Ok(None);
        };
        let attempt = u32::try_from(row.attempt).unwrap_or(u32::MAX);
        let secret = secret();
        let token_hash = hash(&secret);
        for _ in 0..RACES {
            let state = match self.state(run_id).await {
                Ok(s) => s,
                Err(RunError::UnknownRun(_)) => return self.gone(&row).await,
                Err(e) => return Err(e),
            };
            let Some(offered) = state.tasks.get(&(row.step_id.clone(), attempt)).cloned() else {
                return self.gone(&row).await;
            };
            if offered.claim.is_some() {
                // Another poller got there first.
                return Ok(None);
            }
            if !in_flight(&state, &row.step_id, attempt) {
                return self.gone(&row).await;
            }
            let now = self.clock().now();
            let heartbeat_by = now
                + chrono::Duration::milliseconds(i64::try_from(offered.heartbeat_timeout_ms).unwrap_or(i64::MAX / 2));
            let event = Event::TaskClaimed(TaskClaimed {
                step_id: row.step_id.clone(),
                attempt,
                worker: worker.to_owned(),
                by: by.to_owned(),
                token_hash: token_hash.clone(),
                heartbeat_by,
            });
            let new = NewEvent::from_event(&event, crate::trace::metadata(by, run_id, &event));
            let append = cairn_events::StreamAppend {
                stream_id: cairn_events::run_stream(run_id),
                expected: ExpectedVersion::Exact(state.version),
                events: vec![new],
            };
            match self.commits.append(append).await {
                Ok(_) => {}
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
            let input = state
                .threads
                .values()
                .find_map(|t| match &t.cursor {
                    Cursor::InFlight { step, attempt: a, input } if *step == row.step_id && *a == attempt => {
                        Some(input.clone())
                    }
                    _ => None,
                })
                .unwrap_or(Value::Null);
            return Ok(Some(Task {
                token: token_for(run_id, &row.step_id, attempt, &secret),
                run_id,
                workflow: state.workflow.clone(),
                workflow_version: state.workflow_version,
                step_id: row.step_id,
                attempt,
                queue: row.queue,
                input,
                heartbeat_timeout_ms: offered.heartbeat_timeout_ms,
                heartbeat_by,
                expires_at: offered.expires_at,
            }));
        }
        // Busy: another poll takes it.
        Ok(None)
    }

    /// Takes a task no run waits for out of the queues.
    async fn gone(&self, row: &cairn_events::TaskRow) -> Result<Option<Task>, RunError> {
        self.store().drop_task(&row.stream_id, &row.step_id, row.attempt).await?;
        Ok(None)
    }

    /// Records a heartbeat: the claim holds until the returned time
    /// (another heartbeat is due by then).
    pub async fn heartbeat_task(&self, token: &str) -> Result<DateTime<Utc>, TaskQueueError> {
        let t = Token::parse(token)?;
        let now = millis(self.clock().now());
        let stream = cairn_events::run_stream(t.run_id);
        if let Some(by) = self
            .store()
            .beat_task(&stream, &t.step, i64::from(t.attempt), &t.hash, now)
            .await
            .map_err(RunError::from)?
        {
            return Ok(instant(by));
        }
        // Why not: the run says.
        let state = self.task_state(&t).await?;
        Err(self.refusal(&t, &state.0, state.1.as_ref(), None))
    }

    /// Completes the attempt with `output` (checked against the step's
    /// `output_contract` and the limits, as a native task's: a breach is
    /// recorded as the attempt's failure).
    pub async fn complete_task(&self, token: &str, output: Value) -> Result<TaskAck, TaskQueueError> {
        self.answer_task(token, Ok(output)).await
    }

    /// Fails the attempt: the step's retry policy decides what follows.
    pub async fn fail_task(&self, token: &str, error: TaskError) -> Result<TaskAck, TaskQueueError> {
        self.answer_task(token, Err(error)).await
    }

    async fn task_state(
        &self,
        t: &Token,
    ) -> Result<(cairn_core::decider::RunState, Option<TaskState>), TaskQueueError> {
        let state = match self.state(t.run_id).await {
            Ok(s) => s,
            Err(RunError::UnknownRun(_)) => {
                return Err(TaskQueueError::UnknownTask { run_id: t.run_id, step: t.step.clone(), attempt: t.attempt });
            }
            Err(e) => return Err(e.into()),
        };
        let task = state.tasks.get(&(t.step.clone(), t.attempt)).cloned();
        match &task {
            Some(x) if x.claim.as_ref().is_some_and(|c| c.token_hash == t.hash) => Ok((state, task)),
            _ => Err(TaskQueueError::UnknownTask { run_id: t.run_id, step: t.step.clone(), attempt: t.attempt }),
        }
    }

    /// Why an answer (`completing`: `Some(true)` to complete, `Some(false)`
    /// to fail, `None` a heartbeat) to a task that is not in flight is not
    /// recorded, or the earlier answer it repeats.
    fn refusal(
        &self,
        t: &Token,
        state: &cairn_core::decider::RunState,
        task: Option<&TaskState>,
        completing: Option<bool>,
    ) -> TaskQueueError {
        let (run_id, step, attempt) = (t.run_id, t.step.clone(), t.attempt);
        match task.and_then(|x| x.outcome.as_deref()) {
            Some(kind) if ENGINE_KINDS.contains(&kind) => {
                let message = last_failure(state, &t.step, t.attempt).unwrap_or_default();
                TaskQueueError::Expired { run_id, step, attempt, kind: kind.to_owned(), message }
            }
            Some("completed") if completing != Some(true) => {
                TaskQueueError::AlreadyFinished { run_id, step, attempt, outcome: "completed".into() }
            }
            Some(kind) if kind != "completed" && completing != Some(false) => {
                TaskQueueError::AlreadyFinished { run_id, step, attempt, outcome: format!("failed ({kind})") }
            }
            _ => TaskQueueError::Cancelled { run_id, step, attempt, why: gone(state) },
        }
    }

    async fn answer_task(&self, token: &str, outcome: Result<Value, TaskError>) -> Result<TaskAck, TaskQueueError> {
        let t = Token::parse(token)?;
        let completing = outcome.is_ok();
        for _ in 0..RACES {
            let (state, task) = self.task_state(&t).await?;
            let task = task.unwrap_or_default();
            match task.outcome.as_deref() {
                // The same answer again: what was recorded.
                Some("completed") if completing => {
                    return Ok(TaskAck {
                        run_id: t.run_id,
                        recorded: false,
                        outcome: "completed".into(),
                        error_kind: None,
                        message: None,
                    });
                }
                Some(kind) if !completing && !ENGINE_KINDS.contains(&kind) && kind != "completed" => {
                    return Ok(TaskAck {
                        run_id: t.run_id,
                        recorded: false,
                        outcome: "failed".into(),
                        error_kind: Some(kind.to_owned()),
                        message: last_failure(&state, &t.step, t.attempt),
                    });
                }
                Some(_) => return Err(self.refusal(&t, &state, Some(&task), Some(completing))),
                None => {}
            }
            if !in_flight(&state, &t.step, t.attempt) {
                return Err(self.refusal(&t, &state, Some(&task), Some(completing)));
            }
            let w = self.recorded_definition(&state.workflow, state.workflow_version).await?;
            let stream = cairn_events::run_stream(t.run_id);
            let claimed_ms = self.store().task(&stream, &t.step, i64::from(t.attempt)).await.map_err(RunError::from)?;
            let now = millis(self.clock().now());
            let duration_ms =
                claimed_ms.and_then(|r| r.claimed_ms).map_or(0, |c| u64::try_from(now.saturating_sub(c)).unwrap_or(0));
            let event = self.outcome_event(&w, t.step.clone(), t.attempt, outcome.clone(), duration_ms);
            let ack = match &event {
                Event::StepFailed(f) => TaskAck {
                    run_id: t.run_id,
                    recorded: true,
                    outcome: "failed".into(),
                    error_kind: Some(f.error_kind.clone()),
                    message: Some(f.message.clone()),
                },
                _ => TaskAck {
                    run_id: t.run_id,
                    recorded: true,
                    outcome: "completed".into(),
                    error_kind: None,
                    message: None,
                },
            };
            let by = task.claim.map(|c| c.by).unwrap_or_default();
            let new = NewEvent::from_event(&event, crate::trace::metadata(&by, t.run_id, &event));
            match self.append_due_now(t.run_id, ExpectedVersion::Exact(state.version), vec![new]).await {
                Ok(_) => {
                    crate::metrics::recorded(
                        &state.workflow,
                        state.started_at,
                        std::slice::from_ref(&event),
                        self.clock().now(),
                    );
                    return Ok(ack);
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(RunError::from(e).into()),
            }
        }
        Err(RunError::from(cairn_events::StoreError::InvalidAppend(format!(
            "run {} kept changing while the task's answer was recorded; try again",
            t.run_id
        )))
        .into())
    }

    /// Fails the attempts whose worker stopped heartbeating
    /// (`heartbeat-timeout`, retryable: the retry policy offers the task
    /// again), puts back claims that were never recorded, and drops tasks
    /// no run waits for. Returns the runs whose attempt it failed (due for
    /// a worker).
    pub async fn reap_tasks(&self) -> Result<Vec<Uuid>, RunError> {
        let now = self.clock().now();
        let mut failed = Vec::new();
        for row in self.store().lapsed_tasks(millis(now), 100).await? {
            let Some(run_id) = row.stream_id.strip_prefix("run-").and_then(|r| Uuid::parse_str(r).ok()) else {
                self.store().drop_task(&row.stream_id, &row.step_id, row.attempt).await?;
                continue;
            };
            let attempt = u32::try_from(row.attempt).unwrap_or(u32::MAX);
            let hash = row.token_hash.clone().unwrap_or_default();
            let state = match self.state(run_id).await {
                Ok(s) => s,
                Err(RunError::UnknownRun(_)) => {
                    self.store().drop_task(&row.stream_id, &row.step_id, row.attempt).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let task = state.tasks.get(&(row.step_id.clone(), attempt));
            let claimed_here = task.and_then(|t| t.claim.as_ref()).is_some_and(|c| c.token_hash == hash);
            if !claimed_here || !in_flight(&state, &row.step_id, attempt) {
                self.store().drop_task(&row.stream_id, &row.step_id, row.attempt).await?;
                continue;
            }
            let worker = row.worker.clone().unwrap_or_default();
            let since = row.claimed_ms.map(instant).map(|t| t.to_rfc3339()).unwrap_or_default();
            let event = Event::StepFailed(StepFailed {
                step_id: row.step_id.clone(),
                attempt,
                error_kind: "heartbeat-timeout".into(),
                message: format!(
                    "worker `{worker}` claimed the task on queue `{}` at {since} and sent no heartbeat for {} ms \
                     (the step's heartbeat_timeout); it is presumed gone",
                    row.queue, row.heartbeat_ms
                ),
                retryable: true,
                retry_after_ms: None,
            });
            let new = NewEvent::from_event(&event, crate::trace::metadata("cairn", run_id, &event));
            match self.append_due_now(run_id, ExpectedVersion::Exact(state.version), vec![new]).await {
                Ok(_) => {
                    crate::metrics::recorded(
                        &state.workflow,
                        state.started_at,
                        std::slice::from_ref(&event),
                        self.clock().now(),
                    );
                    failed.push(run_id);
                }
                // Answered meanwhile, or another worker reaped it: the next pass sees.
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(failed)
    }
}

/// The message of the attempt's recorded failure.
fn last_failure(state: &cairn_core::decider::RunState, step: &str, attempt: u32) -> Option<String> {
    state.tasks.get(&(step.to_owned(), attempt)).and_then(|t| t.message.clone())
}
