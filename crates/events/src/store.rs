//! The `EventStore` trait, its errors, and the append preparation shared by
//! both backends (validation, the stream-head cache, the hash chain).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::chain::{GENESIS_HASH, HashedFields, event_hash};
use crate::envelope::{AppendResult, ExpectedVersion, NewEvent, RecordedEvent, StreamAppend, format_timestamp};

/// Longest accepted stream id, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 256;

/// Which database a store writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// What kind of failure a [`StoreError`] is, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The stream moved on; re-read and decide again.
    Conflict,
    /// The database could not be reached or opened, or the connection was lost.
    Unavailable,
    /// The database was written by a newer Cairn.
    SchemaTooNew,
    /// Applying migrations failed.
    Migration,
    /// The request was malformed.
    InvalidAppend,
    /// A stored row could not be read.
    CorruptRow,
    /// An event is past a limit (`limits`); nothing was written.
    LimitExceeded,
    /// Any other database error.
    Database,
    /// The append's lease is held by another worker now; nothing was written.
    Fenced,
}

/// Errors of the event store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stream was not at the expected version; nothing was written.
    #[error(
        "conflict on stream `{stream_id}`: expected version {expected}, but the stream is at version {actual}; nothing was written (re-read the stream and decide again)"
    )]
    Conflict {
        /// The stream that moved on.
        stream_id: String,
        /// The version the caller expected.
        expected: u64,
        /// The stream's actual version.
        actual: u64,
    },
    /// The database could not be reached or opened, or the connection to
    /// it was lost (the outcome of an append in flight is then unknown:
    /// re-read the stream before deciding again).
    #[error("the event store at {database} is unavailable: {source}")]
    Unavailable {
        /// The database, without its password.
        database: String,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// The database schema is newer than this build.
    #[error(
        "the event store at {database} has schema migration {found}, which this build of Cairn does not know (it knows up to {supported}); it was written by a newer Cairn: upgrade Cairn to use it"
    )]
    SchemaTooNew {
        /// The database, without its password.
        database: String,
        /// The unknown migration version found in the database.
        found: i64,
        /// The newest migration this build knows.
        supported: i64,
    },
    /// Migrations failed.
    #[error("cannot migrate the event store at {database}: {source}")]
    Migration {
        /// The database, without its password.
        database: String,
        /// The underlying error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// The append request itself is invalid; nothing was written.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// An event is past a limit; nothing was written.
    #[error("{event_type} for stream `{stream_id}` was not written: {source}")]
    LimitExceeded {
        /// The stream.
        stream_id: String,
        /// The event's type.
        event_type: String,
        /// Which limit, where.
        #[source]
        source: Box<crate::limits::LimitError>,
    },
    /// A stored row could not be read into an event.
    #[error("the stored event at position {position} cannot be read: {message}")]
    CorruptRow {
        /// Global position of the row.
        position: u64,
        /// What is wrong.
        message: String,
    },
    /// The append carried a lease its worker no longer holds: another
    /// worker took the run over. Nothing was written; stop driving the run.
    #[error(
        "the lease on `{stream_id}` is no longer held by this worker (another took the run over); nothing was written"
    )]
    Fenced {
        /// The run's stream.
        stream_id: String,
    },
    /// Another database error.
    #[error("database error on {database}: {source}")]
    Database {
        /// The database, without its password.
        database: String,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },
}

impl StoreError {
    /// The kind of failure.
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            StoreError::Conflict { .. } => StoreErrorKind::Conflict,
            StoreError::Unavailable { .. } => StoreErrorKind::Unavailable,
            StoreError::SchemaTooNew { .. } => StoreErrorKind::SchemaTooNew,
            StoreError::Migration { .. } => StoreErrorKind::Migration,
            StoreError::InvalidAppend(_) => StoreErrorKind::InvalidAppend,
            StoreError::CorruptRow { .. } => StoreErrorKind::CorruptRow,
            StoreError::LimitExceeded { .. } => StoreErrorKind::LimitExceeded,
            StoreError::Database { .. } => StoreErrorKind::Database,
            StoreError::Fenced { .. } => StoreErrorKind::Fenced,
        }
    }

    /// Whether this is an optimistic-concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        self.kind() == StoreErrorKind::Conflict
    }
}

/// The latest write to the event store failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailure {
    /// When writes began to fail (the first failure since the last success).
    pub since: DateTime<Utc>,
    /// The error, for the server's log: it may name databases and files.
    pub error: String,
}

/// The probe [`EventStore::probe_write`] runs (both backends).
pub(crate) const PROBE_SQL: &str = "INSERT INTO cairn_health (id, probed_at) VALUES (1, $1) \
     ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at";

/// Leases (both backends; see the `leases` migration).
pub(crate) const BEAT_SQL: &str = "INSERT INTO cairn_workers (worker_id, beat_ms, started_ms, about) VALUES ($1, $2, $2, $3) \
     ON CONFLICT (worker_id) DO UPDATE SET beat_ms = excluded.beat_ms";
pub(crate) const CLAIM_SQL: &str = "INSERT INTO cairn_leases (stream_id, worker_id, token) VALUES ($1, $2, 1) \
     ON CONFLICT (stream_id) DO UPDATE SET worker_id = excluded.worker_id, \
     token = CASE WHEN cairn_leases.worker_id = excluded.worker_id THEN cairn_leases.token ELSE cairn_leases.token + 1 END \
     WHERE cairn_leases.worker_id = excluded.worker_id OR NOT EXISTS \
     (SELECT 1 FROM cairn_workers w WHERE w.worker_id = cairn_leases.worker_id AND w.beat_ms > $3) \
     RETURNING token";
pub(crate) const RELEASE_SQL: &str = "DELETE FROM cairn_leases WHERE stream_id = $1 AND worker_id = $2";
/// A retired worker's leases stay, orphaned: the next claim raises their
/// tokens, so nothing it still had in flight can land.
pub(crate) const RETIRE_SQL: &str = "DELETE FROM cairn_workers WHERE worker_id = $1";
pub(crate) const WAKE_IF_UNSET_SQL: &str =
    "INSERT INTO cairn_wakeups (stream_id, due_ms) VALUES ($1, $2) ON CONFLICT (stream_id) DO NOTHING";
pub(crate) const INDEXED_SQL: &str = "SELECT stream_id FROM cairn_wakeups";
pub(crate) const WORKERS_SQL: &str = "SELECT worker_id, beat_ms, about FROM cairn_workers ORDER BY worker_id";
pub(crate) const SET_WAKE_SQL: &str = "INSERT INTO cairn_wakeups (stream_id, due_ms) VALUES ($1, $2) \
     ON CONFLICT (stream_id) DO UPDATE SET due_ms = excluded.due_ms";
pub(crate) const CLEAR_WAKE_SQL: &str = "DELETE FROM cairn_wakeups WHERE stream_id = $1";
/// Claims due runs no live worker holds (the lease part is `CLAIM_SQL`'s).
pub(crate) const CLAIM_DUE_LEASES: &str = "ON CONFLICT (stream_id) DO UPDATE SET worker_id = excluded.worker_id, \
     token = CASE WHEN cairn_leases.worker_id = excluded.worker_id THEN cairn_leases.token ELSE cairn_leases.token + 1 END \
     WHERE cairn_leases.worker_id = excluded.worker_id OR NOT EXISTS \
     (SELECT 1 FROM cairn_workers k WHERE k.worker_id = cairn_leases.worker_id AND k.beat_ms > $3)";
/// Due rows whose run no live worker holds.
pub(crate) const DUE_UNHELD: &str = "w.due_ms <= $2 AND NOT EXISTS (SELECT 1 FROM cairn_leases l \
     JOIN cairn_workers k ON k.worker_id = l.worker_id WHERE l.stream_id = w.stream_id AND k.beat_ms > $3)";
pub(crate) const ORPHANS_SQL: &str = "SELECT l.stream_id FROM cairn_leases l WHERE l.worker_id <> $1 AND NOT EXISTS \
     (SELECT 1 FROM cairn_workers w WHERE w.worker_id = l.worker_id AND w.beat_ms > $2) ORDER BY l.stream_id LIMIT $3";

/// The lease methods of [`EventStore`]: the same SQL on both backends, run
/// on the connection `self.lease_conn()` gives (SQLite: the one held for
/// appends, so they never contend for the database's write lock).
macro_rules! lease_methods {
    () => {
        fn beat<'a>(&'a self, worker: &'a str, about: &'a str, now_ms: i64) -> BoxFuture<'a, StoreResult<()>> {
            Box::pin(async move {
                let q = sqlx::query(crate::store::BEAT_SQL).bind(worker).bind(now_ms).bind(about);
                q.execute(&mut *self.lease_conn().await?).await.map(|_| ()).map_err(|e| self.db_err(e))
            })
        }

        fn claim<'a>(
            &'a self,
            stream_id: &'a str,
            worker: &'a str,
            stale_before_ms: i64,
        ) -> BoxFuture<'a, StoreResult<Option<i64>>> {
            Box::pin(async move {
                sqlx::query_scalar::<_, i64>(crate::store::CLAIM_SQL)
                    .bind(stream_id)
                    .bind(worker)
                    .bind(stale_before_ms)
                    .fetch_optional(&mut *self.lease_conn().await?)
                    .await
                    .map_err(|e| self.db_err(e))
            })
        }

        fn release<'a>(&'a self, stream_id: &'a str, worker: &'a str) -> BoxFuture<'a, StoreResult<()>> {
            Box::pin(async move {
                let q = sqlx::query(crate::store::RELEASE_SQL).bind(stream_id).bind(worker);
                q.execute(&mut *self.lease_conn().await?).await.map(|_| ()).map_err(|e| self.db_err(e))
            })
        }

        fn retire<'a>(&'a self, worker: &'a str) -> BoxFuture<'a, StoreResult<()>> {
            Box::pin(async move {
                let q = sqlx::query(crate::store::RETIRE_SQL).bind(worker);
                q.execute(&mut *self.lease_conn().await?).await.map(|_| ()).map_err(|e| self.db_err(e))
            })
        }

        fn keeps_leases(&self) -> bool {
            true
        }

        fn wake_if_unset<'a>(&'a self, stream_id: &'a str, due_ms: i64) -> BoxFuture<'a, StoreResult<()>> {
            Box::pin(async move {
                let q = sqlx::query(crate::store::WAKE_IF_UNSET_SQL).bind(stream_id).bind(due_ms);
                q.execute(&mut *self.lease_conn().await?).await.map(|_| ()).map_err(|e| self.db_err(e))
            })
        }

        fn indexed(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
            Box::pin(async move {
                sqlx::query_scalar::<_, String>(crate::store::INDEXED_SQL)
                    .fetch_all(&mut *self.lease_conn().await?)
                    .await
                    .map_err(|e| self.db_err(e))
            })
        }

        fn workers(&self) -> BoxFuture<'_, StoreResult<Vec<(String, i64, String)>>> {
            Box::pin(async move {
                sqlx::query_as::<_, (String, i64, String)>(crate::store::WORKERS_SQL)
                    .fetch_all(&mut *self.lease_conn().await?)
                    .await
                    .map_err(|e| self.db_err(e))
            })
        }

        fn set_wake<'a>(&'a self, stream_id: &'a str, due_ms: Option<i64>) -> BoxFuture<'a, StoreResult<()>> {
            Box::pin(async move {
                let q = match due_ms {
                    Some(due) => sqlx::query(crate::store::SET_WAKE_SQL).bind(stream_id).bind(due),
                    None => sqlx::query(crate::store::CLEAR_WAKE_SQL).bind(stream_id),
                };
                q.execute(&mut *self.lease_conn().await?).await.map(|_| ()).map_err(|e| self.db_err(e))
            })
        }

        fn orphans<'a>(
            &'a self,
            worker: &'a str,
            stale_before_ms: i64,
            limit: i64,
        ) -> BoxFuture<'a, StoreResult<Vec<String>>> {
            Box::pin(async move {
                sqlx::query_scalar::<_, String>(crate::store::ORPHANS_SQL)
                    .bind(worker)
                    .bind(stale_before_ms)
                    .bind(limit)
                    .fetch_all(&mut *self.lease_conn().await?)
                    .await
                    .map_err(|e| self.db_err(e))
            })
        }
    };
}
pub(crate) use lease_methods;

/// The task-queue methods of [`EventStore`] (the same SQL on both
/// backends but `$offered`, which selects the offered tasks of the queues
/// bound as a JSON array of names).
macro_rules! task_methods {
    ($offered:literal) => {
        fn offered_tasks<'a>(
            &'a self,
            queues: &'a [String],
            limit: i64,
        ) -> BoxFuture<'a, StoreResult<Vec<crate::TaskRow>>> {
            Box::pin(async move {
                let queues = serde_json::to_string(queues).unwrap_or_default();
                sqlx::query_as::<_, crate::store::TaskTuple>($offered)
                    .bind(queues)
                    .bind(limit)
                    .fetch_all(self.read_pool())
                    .await
                    .map(|r| r.into_iter().map(crate::TaskRow::from_tuple).collect())
                    .map_err(|e| self.db_err(e))
            })
        }

        fn beat_task<'a>(
            &'a self,
            stream_id: &'a str,
            step_id: &'a str,
            attempt: i64,
            token_hash: &'a str,
            now_ms: i64,
        ) -> BoxFuture<'a, StoreResult<Option<i64>>> {
            Box::pin(async move {
                sqlx::query_scalar::<_, i64>(
                    "UPDATE cairn_tasks SET beat_by_ms = $5 + heartbeat_ms \
                     WHERE stream_id = $1 AND step_id = $2 AND attempt = $3 AND token_hash = $4 RETURNING beat_by_ms",
                )
                .bind(stream_id)
                .bind(step_id)
                .bind(attempt)
                .bind(token_hash)
                .bind(now_ms)
                .fetch_optional(&mut *self.lease_conn().await?)
                .await
                .map_err(|e| self.db_err(e))
            })
        }

        fn task<'a>(
            &'a self,
            stream_id: &'a str,
            step_id: &'a str,
            attempt: i64,
        ) -> BoxFuture<'a, StoreResult<Option<crate::TaskRow>>> {
            Box::pin(async move {
                sqlx::query_as::<_, crate::store::TaskTuple>(crate::store::TASK_SQL)
                    .bind(stream_id)
                    .bind(step_id)
                    .bind(attempt)
                    .fetch_optional(self.read_pool())
                    .await
                    .map(|r| r.map(crate::TaskRow::from_tuple))
                    .map_err(|e| self.db_err(e))
            })
        }

        fn lapsed_tasks(&self, now_ms: i64, limit: i64) -> BoxFuture<'_, StoreResult<Vec<crate::TaskRow>>> {
            Box::pin(async move {
                sqlx::query_as::<_, crate::store::TaskTuple>(crate::store::LAPSED_TASKS_SQL)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(self.read_pool())
                    .await
                    .map(|r| r.into_iter().map(crate::TaskRow::from_tuple).collect())
                    .map_err(|e| self.db_err(e))
            })
        }

        fn drop_task<'a>(
            &'a self,
            stream_id: &'a str,
            step_id: &'a str,
            attempt: i64,
        ) -> BoxFuture<'a, StoreResult<()>> {
            Box::pin(async move {
                sqlx::query("DELETE FROM cairn_tasks WHERE stream_id = $1 AND step_id = $2 AND attempt = $3")
                    .bind(stream_id)
                    .bind(step_id)
                    .bind(attempt)
                    .execute(&mut *self.lease_conn().await?)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.db_err(e))
            })
        }

        fn queue_depths(&self) -> BoxFuture<'_, StoreResult<Vec<crate::QueueDepth>>> {
            Box::pin(async move {
                sqlx::query_as::<_, (String, i64, i64)>(
                    "SELECT queue, SUM(CASE WHEN token_hash IS NULL THEN 1 ELSE 0 END) AS offered, \
                     SUM(CASE WHEN token_hash IS NULL THEN 0 ELSE 1 END) AS claimed \
                     FROM cairn_tasks GROUP BY queue ORDER BY queue",
                )
                .fetch_all(self.read_pool())
                .await
                .map(|r| r.into_iter().map(|(queue, offered, claimed)| crate::QueueDepth { queue, offered, claimed }).collect())
                .map_err(|e| self.db_err(e))
            })
        }
    };
}
pub(crate) use task_methods;

/// A [`crate::TaskRow`] as selected.
pub(crate) type TaskTuple =
    (String, String, i64, String, i64, Option<String>, Option<String>, Option<i64>, Option<i64>);

pub(crate) const TASK_SQL: &str = "SELECT stream_id, step_id, attempt, queue, heartbeat_ms, token_hash, worker, \
     claimed_ms, beat_by_ms FROM cairn_tasks WHERE stream_id = $1 AND step_id = $2 AND attempt = $3";
pub(crate) const LAPSED_TASKS_SQL: &str = "SELECT stream_id, step_id, attempt, queue, heartbeat_ms, token_hash, \
     worker, claimed_ms, beat_by_ms FROM cairn_tasks WHERE token_hash IS NOT NULL AND beat_by_ms < $1 \
     ORDER BY beat_by_ms LIMIT $2";

/// Runs the write probe, `run(recorded_at)`, noting its outcome.
pub(crate) async fn probe_with<W, F, Fut>(w: &W, run: F) -> StoreResult<()>
where
    W: RowWriter,
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>>,
{
    let now = w.clock().now();
    match run(format_timestamp(now)).await {
        Ok(()) => {
            w.health().succeeded();
            Ok(())
        }
        Err(e) => {
            w.health().failed(now, &e);
            Err(w.db_err(e))
        }
    }
}

/// Whether writes succeed, as the latest append or probe found.
#[derive(Debug, Default)]
pub(crate) struct WriteHealth(std::sync::Mutex<Option<WriteFailure>>);

impl WriteHealth {
    pub(crate) fn succeeded(&self) {
        let mut g = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.is_some() {
            *g = None;
        }
    }

    pub(crate) fn failed(&self, now: DateTime<Utc>, error: &dyn std::fmt::Display) {
        let mut g = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let since = g.as_ref().map_or(now, |f| f.since);
        *g = Some(WriteFailure { since, error: error.to_string() });
    }

    pub(crate) fn get(&self) -> Option<WriteFailure> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// An append-only, totally ordered, hash-chained event log.
///
/// Architecture invariant: an event, once appended, is never rewritten.
pub trait EventStore: Send + Sync + 'static {
    /// Appends to several streams in one transaction: all or nothing. Fails
    /// with [`StoreError::Conflict`] if any stream is not at its expected
    /// version, and then writes nothing.
    fn append_many(&self, appends: Vec<StreamAppend>) -> BoxFuture<'_, StoreResult<Vec<AppendResult>>>;

    /// The events of a stream from `from_version` (inclusive, versions start at 1).
    fn read_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
    ) -> BoxFuture<'a, StoreResult<Vec<RecordedEvent>>>;

    /// Up to `limit` events from global position `from_position` (inclusive,
    /// positions start at 1) in order. Never skips a committed event.
    fn read_all(&self, from_position: u64, limit: usize) -> BoxFuture<'_, StoreResult<Vec<RecordedEvent>>>;

    /// The highest committed global position (0 for an empty log).
    fn head_position(&self) -> BoxFuture<'_, StoreResult<u64>>;

    /// The current version of a stream (0 if it does not exist).
    fn stream_version<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, StoreResult<u64>>;

    /// A receiver that changes when new events may have been committed.
    /// Wake-ups may be spurious or (for other processes' writes) missing;
    /// [`Subscription`](crate::Subscription) polls as the floor.
    fn wakeups(&self) -> watch::Receiver<u64>;

    /// The database this store writes to, without any password.
    fn describe(&self) -> &str;

    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// How the latest write went: `Some` while the last append (or probe)
    /// failed for a reason other than a conflict or a limit, such as a full
    /// disk. Readiness reports it until a write succeeds.
    fn write_failure(&self) -> Option<WriteFailure> {
        None
    }

    /// Rewrites one row outside the log to learn whether the database takes
    /// writes (again); clears or sets [`EventStore::write_failure`].
    fn probe_write(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }

    /// [`EventStore::append_many`], refused with [`StoreError::Fenced`]
    /// (nothing written) unless every fence's lease is still held with its
    /// token, checked in the append's own transaction; the wake-up index is
    /// changed by `wakes` in the same transaction, and a run whose wake is
    /// `None` (it needs no worker) is let go: the lease of its fence is
    /// given up. A store that keeps no
    /// leases keeps no wake-ups either: it ignores `wakes` and refuses fences.
    fn append_guarded(
        &self,
        appends: Vec<StreamAppend>,
        fences: Vec<crate::Fence>,
        wakes: Vec<crate::Wake>,
    ) -> BoxFuture<'_, StoreResult<Vec<AppendResult>>> {
        let _ = wakes;
        if fences.is_empty() {
            return self.append_many(appends);
        }
        Box::pin(async { Err(StoreError::InvalidAppend("this store keeps no leases".into())) })
    }

    /// Whether this store keeps leases and the wake-up index (both
    /// databases do; a test double may not).
    fn keeps_leases(&self) -> bool {
        false
    }

    /// Claims for `worker`, in one statement, up to `limit` runs of the
    /// wake-up index due by `due_by_ms` that no live worker holds (one that
    /// has beaten since `stale_before_ms`): a timer about to fire, an answer
    /// recorded by another process, a dead worker's run. Returns each
    /// stream with its lease token and due time. On PostgreSQL the rows
    /// another worker is claiming at the same moment are skipped
    /// (`FOR UPDATE SKIP LOCKED`), so concurrent pollers split the work.
    fn claim_due<'a>(
        &'a self,
        worker: &'a str,
        due_by_ms: i64,
        stale_before_ms: i64,
        limit: i64,
    ) -> BoxFuture<'a, StoreResult<Vec<(String, i64, i64)>>> {
        let _ = (worker, due_by_ms, stale_before_ms, limit);
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Puts the run of `stream_id` in the wake-up index at `due_ms` unless
    /// it is there already (a run recorded before the index existed, found
    /// waiting on a timer): an entry an append or an answer wrote wins.
    fn wake_if_unset<'a>(&'a self, stream_id: &'a str, due_ms: i64) -> BoxFuture<'a, StoreResult<()>> {
        let _ = (stream_id, due_ms);
        Box::pin(async { Ok(()) })
    }

    /// The streams in the wake-up index (runs a worker will be handed when
    /// they are due).
    fn indexed(&self) -> BoxFuture<'_, StoreResult<Vec<String>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Every worker that beats or has beaten and not retired: its id, its
    /// last beat (milliseconds since the epoch) and where it runs.
    fn workers(&self) -> BoxFuture<'_, StoreResult<Vec<(String, i64, String)>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Sets when the run of `stream_id` next needs a worker (`None`: never
    /// without an answer), outside any append: for a drive that failed and
    /// is tried again later.
    fn set_wake<'a>(&'a self, stream_id: &'a str, due_ms: Option<i64>) -> BoxFuture<'a, StoreResult<()>> {
        let _ = (stream_id, due_ms);
        Box::pin(async { Ok(()) })
    }

    /// Records that `worker` is alive at `now_ms` (milliseconds since the
    /// epoch); `about` says where it runs, for operators.
    fn beat<'a>(&'a self, worker: &'a str, about: &'a str, now_ms: i64) -> BoxFuture<'a, StoreResult<()>> {
        let _ = (worker, about, now_ms);
        Box::pin(async { Err(StoreError::InvalidAppend("this store keeps no leases".into())) })
    }

    /// Claims the run of `stream_id` for `worker`: free, already its own,
    /// or held by a worker that has not beaten since `stale_before_ms`
    /// (taken over: the token rises). The token to fence appends with, or
    /// `None` while a live worker holds it.
    fn claim<'a>(
        &'a self,
        stream_id: &'a str,
        worker: &'a str,
        stale_before_ms: i64,
    ) -> BoxFuture<'a, StoreResult<Option<i64>>> {
        let _ = (stream_id, worker, stale_before_ms);
        Box::pin(async { Err(StoreError::InvalidAppend("this store keeps no leases".into())) })
    }

    /// Gives up `worker`'s lease on `stream_id` (the run ended, or waits for
    /// nothing this worker will notice).
    fn release<'a>(&'a self, stream_id: &'a str, worker: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        let _ = (stream_id, worker);
        Box::pin(async { Ok(()) })
    }

    /// Ends `worker`: its leases are free to take over at once (a clean exit).
    fn retire<'a>(&'a self, worker: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        let _ = worker;
        Box::pin(async { Ok(()) })
    }

    /// Up to `limit` runs whose lease is held by a worker other than
    /// `worker` that has not beaten since `stale_before_ms`, or by none: a
    /// dead or retired worker's runs, to take over.
    fn orphans<'a>(
        &'a self,
        worker: &'a str,
        stale_before_ms: i64,
        limit: i64,
    ) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        let _ = (worker, stale_before_ms, limit);
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Up to `limit` tasks of `queues` no worker has claimed, longest
    /// offered first (a worker claims one by appending its `TaskClaimed`
    /// to the run, with the expected version: of two racing claims one is
    /// recorded).
    fn offered_tasks<'a>(
        &'a self,
        queues: &'a [String],
        limit: i64,
    ) -> BoxFuture<'a, StoreResult<Vec<crate::TaskRow>>> {
        let _ = (queues, limit);
        Box::pin(async { Err(StoreError::InvalidAppend("this store keeps no task queues".into())) })
    }

    /// Moves a claimed task's heartbeat deadline to `now_ms` plus its
    /// heartbeat timeout; the new deadline, or `None` when the claim of
    /// `token_hash` no longer holds (finished, lapsed, or never made).
    fn beat_task<'a>(
        &'a self,
        stream_id: &'a str,
        step_id: &'a str,
        attempt: i64,
        token_hash: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, StoreResult<Option<i64>>> {
        let _ = (stream_id, step_id, attempt, token_hash, now_ms);
        Box::pin(async { Ok(None) })
    }

    /// The task of a step attempt, if it is offered or claimed.
    fn task<'a>(
        &'a self,
        stream_id: &'a str,
        step_id: &'a str,
        attempt: i64,
    ) -> BoxFuture<'a, StoreResult<Option<crate::TaskRow>>> {
        let _ = (stream_id, step_id, attempt);
        Box::pin(async { Ok(None) })
    }

    /// Up to `limit` claimed tasks whose heartbeat deadline is before `now_ms`.
    fn lapsed_tasks(&self, now_ms: i64, limit: i64) -> BoxFuture<'_, StoreResult<Vec<crate::TaskRow>>> {
        let _ = (now_ms, limit);
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Takes a task out of the queues (its attempt is no longer in flight:
    /// a cancelled branch's, say).
    fn drop_task<'a>(&'a self, stream_id: &'a str, step_id: &'a str, attempt: i64) -> BoxFuture<'a, StoreResult<()>> {
        let _ = (stream_id, step_id, attempt);
        Box::pin(async { Ok(()) })
    }

    /// Every queue with tasks, with how many are offered and claimed.
    fn queue_depths(&self) -> BoxFuture<'_, StoreResult<Vec<crate::QueueDepth>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Appends `events` to one stream.
    fn append<'a>(
        &'a self,
        stream_id: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, StoreResult<AppendResult>> {
        Box::pin(async move {
            let mut r =
                self.append_many(vec![StreamAppend { stream_id: stream_id.to_owned(), expected, events }]).await?;
            r.pop().ok_or_else(|| StoreError::InvalidAppend("store returned no result".into()))
        })
    }
}

/// One row ready to insert.
#[derive(Debug, Clone)]
pub(crate) struct PreparedRow {
    pub stream_id: String,
    pub stream_version: u64,
    pub event_id: String,
    pub event_type: String,
    pub schema_version: u32,
    pub recorded_at: String,
    pub metadata: String,
    pub payload: String,
    pub prev_hash: String,
    pub hash: String,
}

/// A stream's head as known to the store: its version and the hash of its
/// last event. Immutable facts, so a cached head is never wrong, only old.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub version: u64,
    pub hash: String,
}

impl Head {
    pub(crate) fn empty() -> Self {
        Head { version: 0, hash: GENESIS_HASH.to_owned() }
    }
}

/// Remembers the last head this process saw per stream, so an append whose
/// expected version matches needs no read. Safe across processes: the head
/// `(stream, version) -> hash` never changes once written, and the unique
/// `(stream_id, stream_version)` constraint rejects an append to a stream
/// that another writer moved on.
#[derive(Debug, Default)]
pub(crate) struct HeadCache {
    heads: Mutex<HashMap<String, Head>>,
}

const HEAD_CACHE_CAPACITY: usize = 100_000;

impl HeadCache {
    pub(crate) fn get(&self, stream_id: &str, version: u64) -> Option<Head> {
        if version == 0 {
            return Some(Head::empty());
        }
        let heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        heads.get(stream_id).filter(|h| h.version == version).cloned()
    }

    pub(crate) fn put(&self, stream_id: &str, head: Head) {
        let mut heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        if heads.len() >= HEAD_CACHE_CAPACITY && !heads.contains_key(stream_id) {
            heads.clear();
        }
        match heads.get(stream_id) {
            Some(h) if h.version >= head.version => {}
            _ => {
                heads.insert(stream_id.to_owned(), head);
            }
        }
    }

    pub(crate) fn forget(&self, stream_id: &str) {
        self.heads.lock().unwrap_or_else(|p| p.into_inner()).remove(stream_id);
    }

    pub(crate) fn remember_read(&self, events: &[RecordedEvent]) {
        if let Some(last) = events.last() {
            self.put(&last.stream_id, Head { version: last.stream_version, hash: last.hash.clone() });
        }
    }
}

/// Checks an append request before touching the database.
pub(crate) fn validate(appends: &[StreamAppend]) -> StoreResult<()> {
    if appends.is_empty() {
        return Err(StoreError::InvalidAppend("no streams given".into()));
    }
    let mut seen = HashSet::new();
    for a in appends {
        if a.stream_id.is_empty() || a.stream_id.len() > MAX_STREAM_ID_LEN {
            return Err(StoreError::InvalidAppend(format!(
                "stream id must be 1 to {MAX_STREAM_ID_LEN} bytes, got {} bytes",
                a.stream_id.len()
            )));
        }
        if a.stream_id.chars().any(char::is_control) {
            return Err(StoreError::InvalidAppend(format!("stream id {:?} contains control characters", a.stream_id)));
        }
        if !seen.insert(a.stream_id.as_str()) {
            return Err(StoreError::InvalidAppend(format!(
                "stream `{}` appears twice in one group commit; put its events in one entry",
                a.stream_id
            )));
        }
        if a.events.is_empty() {
            return Err(StoreError::InvalidAppend(format!("no events given for stream `{}`", a.stream_id)));
        }
        for e in &a.events {
            // Before parsing: a payload past the limits is never written, so
            // every reader can read what is.
            if let Err(source) = crate::limits::Limits::default().check_payload(&e.payload) {
                return Err(StoreError::LimitExceeded {
                    stream_id: a.stream_id.clone(),
                    event_type: e.event_type.clone(),
                    source: Box::new(source),
                });
            }
            if e.event_type.is_empty() {
                return Err(StoreError::InvalidAppend(format!("an event for `{}` has an empty type", a.stream_id)));
            }
            if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&e.payload) {
                return Err(StoreError::InvalidAppend(format!(
                    "payload of `{}` for stream `{}` is not valid JSON: {err}",
                    e.event_type, a.stream_id
                )));
            }
        }
    }
    Ok(())
}

/// Builds the rows for one stream on top of `head`.
pub(crate) fn prepare_rows(append: &StreamAppend, head: &Head, recorded_at: &str, out: &mut Vec<PreparedRow>) {
    let mut prev = head.hash.clone();
    for (i, e) in append.events.iter().enumerate() {
        let stream_version = head.version + 1 + i as u64;
        let event_id = e.event_id.to_string();
        // Metadata is a plain struct of strings: serializing cannot fail.
        let metadata = serde_json::to_string(&e.metadata).unwrap_or_else(|_| "{}".to_owned());
        let hash = event_hash(
            &prev,
            &HashedFields {
                stream_id: &append.stream_id,
                stream_version,
                event_id: &event_id,
                event_type: &e.event_type,
                schema_version: e.schema_version,
                recorded_at,
                metadata: &metadata,
                payload: &e.payload,
            },
        );
        out.push(PreparedRow {
            stream_id: append.stream_id.clone(),
            stream_version,
            event_id,
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            recorded_at: recorded_at.to_owned(),
            metadata,
            payload: e.payload.clone(),
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
        });
    }
}

/// Turns inserted rows and their first global position into results, and
/// updates the head cache.
pub(crate) fn results(
    appends: &[StreamAppend],
    rows: &[PreparedRow],
    first_position: u64,
    cache: &HeadCache,
) -> Vec<AppendResult> {
    let mut out = Vec::with_capacity(appends.len());
    let mut offset = 0u64;
    let mut idx = 0usize;
    for a in appends {
        let n = a.events.len();
        let first = &rows[idx];
        let last = &rows[idx + n - 1];
        out.push(AppendResult {
            stream_id: a.stream_id.clone(),
            first_version: first.stream_version,
            last_version: last.stream_version,
            first_position: first_position + offset,
            last_position: first_position + offset + n as u64 - 1,
            head_hash: last.hash.clone(),
        });
        cache.put(&a.stream_id, Head { version: last.stream_version, hash: last.hash.clone() });
        offset += n as u64;
        idx += n;
    }
    out
}

/// Hides the password of a database URL.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return format!("{scheme}://{authority}{}", redact_query_password(tail));
    };
    let user = userinfo.split(':').next().unwrap_or("");
    let redacted = if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
    // Query parameters may carry a password too (`?password=`).
    let tail = redact_query_password(tail);
    format!("{scheme}://{redacted}@{host}{tail}")
}

fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let q: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{path}?{}", q.join("&"))
}

/// The two primitives a backend supplies; [`append_many_with`] does the rest.
pub(crate) trait RowWriter: Sync {
    fn cache(&self) -> &HeadCache;
    /// Where `recorded_at` comes from.
    fn clock(&self) -> &crate::clock::ClockHandle;
    fn read_head<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, StoreResult<Head>>;
    /// Inserts rows atomically, if every fence holds; returns the first
    /// global position.
    fn insert<'a>(
        &'a self,
        rows: &'a [PreparedRow],
        fences: &'a [crate::Fence],
        wakes: &'a [crate::Wake],
    ) -> BoxFuture<'a, Result<u64, InsertError>>;
    fn db_err(&self, e: sqlx::Error) -> StoreError;
    /// Where the outcome of writes is kept.
    fn health(&self) -> &WriteHealth;
}

/// Why an insert wrote nothing.
pub(crate) enum InsertError {
    /// The database refused or failed.
    Db(sqlx::Error),
    /// A fence's lease is held by another worker (the stream named).
    Fenced(String),
}

impl From<sqlx::Error> for InsertError {
    fn from(e: sqlx::Error) -> Self {
        InsertError::Db(e)
    }
}

/// Validation, expected-version checks, hashing, insert and conflict
/// reporting, shared by both backends.
pub(crate) async fn append_many_with<W: RowWriter>(
    w: &W,
    appends: Vec<StreamAppend>,
    fences: &[crate::Fence],
    wakes: &[crate::Wake],
) -> StoreResult<Vec<AppendResult>> {
    validate(&appends)?;
    // Streams appended with `Any` may lose a race and retry; exact ones never do.
    for _ in 0..8 {
        let mut rows = Vec::with_capacity(appends.iter().map(|a| a.events.len()).sum());
        let recorded_at = format_timestamp(w.clock().now());
        for a in &appends {
            let head = match a.expected.exact() {
                Some(v) => match w.cache().get(&a.stream_id, v) {
                    Some(h) => h,
                    None => {
                        let h = w.read_head(&a.stream_id).await?;
                        if h.version != v {
                            return Err(StoreError::Conflict {
                                stream_id: a.stream_id.clone(),
                                expected: v,
                                actual: h.version,
                            });
                        }
                        h
                    }
                },
                None => w.read_head(&a.stream_id).await?,
            };
            prepare_rows(a, &head, &recorded_at, &mut rows);
        }
        match w.insert(&rows, fences, wakes).await {
            Err(InsertError::Fenced(stream_id)) => {
                for a in &appends {
                    w.cache().forget(&a.stream_id);
                }
                return Err(StoreError::Fenced { stream_id });
            }
            Ok(first) => {
                w.health().succeeded();
                return Ok(results(&appends, &rows, first, w.cache()));
            }
            Err(InsertError::Db(e)) if matches!(&e, sqlx::Error::Database(d) if d.is_unique_violation()) => {
                for a in &appends {
                    w.cache().forget(&a.stream_id);
                    if let Some(v) = a.expected.exact() {
                        let actual = w.read_head(&a.stream_id).await?.version;
                        if actual != v {
                            return Err(StoreError::Conflict { stream_id: a.stream_id.clone(), expected: v, actual });
                        }
                    }
                }
            }
            Err(InsertError::Db(e)) => {
                // The outcome may be unknown (connection lost at commit):
                // forget the heads so the next append reads them.
                for a in &appends {
                    w.cache().forget(&a.stream_id);
                }
                w.health().failed(w.clock().now(), &e);
                return Err(w.db_err(e));
            }
        }
    }
    Err(StoreError::InvalidAppend("gave up after 8 contended appends with ExpectedVersion::Any".into()))
}
