//! The scale-out event store on PostgreSQL.
//!
//! Gap-free global order: an append is one call of the `cairn_append`
//! function, which takes a transaction-scoped advisory lock, reads the
//! highest position with a fresh snapshot and inserts after it. The lock is
//! held until the transaction has committed and become visible, so the next
//! appender can only take later positions after every earlier one is
//! visible: readers of `read_all` never see position p + 1 before p, even
//! with many concurrent writers. (Plain sequences do not give this: their
//! values become visible in commit order, not value order.)
#![allow(clippy::disallowed_methods)] // a store: its SQL lives here

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::envelope::{AppendResult, RecordedEvent, StreamAppend};
use crate::rows::{EVENT_COLUMNS, decode_row, to_i64};
use crate::store::{
    Backend, EventStore, Head, HeadCache, InsertError, PreparedRow, RowWriter, StoreError, StoreResult,
    append_many_with, redact_url,
};

/// The LISTEN/NOTIFY channel appends notify on commit.
pub const NOTIFY_CHANNEL: &str = "cairn_events";

/// One round trip per append: `cairn_append` (see the migration) takes the
/// ordering lock, assigns positions and inserts.
const APPEND_SQL: &str = "SELECT cairn_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
const APPEND_GUARDED_SQL: &str =
    "SELECT cairn_append_guarded($11, $12, $13, $14, $15, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
/// The SQLSTATE `cairn_append_guarded` raises for a lease held by another.
const FENCED: &str = "CF001";

/// Options for the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// Where `recorded_at` comes from (the system clock by default).
    pub clock: crate::clock::ClockHandle,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig { max_connections: 16, clock: crate::clock::ClockHandle::default() }
    }
}

/// The PostgreSQL event store.
pub struct PgStore {
    pool: PgPool,
    /// The connection appends go through, held (not pooled) so an append
    /// costs no pool checkout and return; reconnected after a failure.
    appender: tokio::sync::Mutex<Option<PgConnection>>,
    cache: HeadCache,
    wake: Arc<watch::Sender<u64>>,
    /// The last position this process committed; the notifier NOTIFYs on change.
    commits: watch::Sender<u64>,
    listener: Option<JoinHandle<()>>,
    notifier: JoinHandle<()>,
    label: String,
    clock: crate::clock::ClockHandle,
    health: crate::store::WriteHealth,
}

/// Shortest time between two NOTIFYs this process sends. Commits wake
/// in-process subscribers at once; other processes hear of a burst of
/// commits within this time, with one NOTIFY instead of one per commit
/// (each NOTIFY signals every listening backend: costly on small machines).
pub const NOTIFY_COALESCE: Duration = Duration::from_millis(5);

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(h) = self.listener.take() {
            h.abort();
        }
        self.notifier.abort();
    }
}

impl PgStore {
    /// Connects to a `postgres://` URL and migrates the database.
    pub async fn connect(url: &str, config: PgConfig) -> StoreResult<Arc<PgStore>> {
        let label = redact_url(url);
        let opts: PgConnectOptions =
            url.parse().map_err(|source| StoreError::Unavailable { database: label.clone(), source })?;
        Self::connect_with(opts, label, config).await
    }

    /// Connects with explicit options; `label` names the database in errors
    /// and must not contain a password.
    pub async fn connect_with(opts: PgConnectOptions, label: String, config: PgConfig) -> StoreResult<Arc<PgStore>> {
        // `cairn` in pg_stat_activity, unless the caller named the application.
        let opts = match opts.get_application_name() {
            Some(_) => opts,
            None => opts.application_name("cairn"),
        };
        // One direct attempt first: the pool would retry an unreachable
        // server until its acquire timeout and then hide the cause.
        let probe = PgConnection::connect_with(&opts)
            .await
            .map_err(|source| StoreError::Unavailable { database: label.clone(), source })?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Unavailable { database: label.clone(), source })?;
        crate::migrate::run_postgres(&pool, &label).await?;
        let (wake, _) = watch::channel(0);
        let wake = Arc::new(wake);
        let listener = match PgListener::connect_with(&pool).await {
            Ok(mut l) => match l.listen(NOTIFY_CHANNEL).await {
                Ok(()) => Some(tokio::spawn(listen(l, wake.clone()))),
                Err(e) => {
                    tracing::warn!(database = %label, error = %e, "LISTEN failed; subscriptions fall back to polling");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(database = %label, error = %e, "no listener connection; subscriptions fall back to polling");
                None
            }
        };
        let (commits, commit_rx) = watch::channel(0);
        let notifier = tokio::spawn(notify_others(pool.clone(), commit_rx));
        Ok(Arc::new(PgStore {
            pool,
            appender: tokio::sync::Mutex::new(None),
            cache: HeadCache::default(),
            wake,
            commits,
            listener,
            notifier,
            label,
            clock: config.clock,
            health: Default::default(),
        }))
    }

    /// The pool, for tests and tools that need raw access (tamper tests,
    /// benchmarks). Never use it to change events.
    pub fn raw_pool(&self) -> &PgPool {
        &self.pool
    }

    async fn head_of(&self, stream_id: &str) -> StoreResult<Head> {
        let row = sqlx::query(
            "SELECT stream_version, hash FROM events WHERE stream_id = $1 ORDER BY stream_version DESC LIMIT 1",
        )
        .bind(stream_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.db_err(e))?;
        match row {
            None => Ok(Head::empty()),
            Some(r) => {
                let v: i64 = r.try_get(0).map_err(|e| self.db_err(e))?;
                Ok(Head { version: u64::try_from(v).unwrap_or(0), hash: r.try_get(1).map_err(|e| self.db_err(e))? })
            }
        }
    }

    async fn insert_rows(
        &self,
        rows: &[PreparedRow],
        fences: &[crate::Fence],
        wakes: &[crate::Wake],
    ) -> Result<u64, InsertError> {
        let col = |f: fn(&PreparedRow) -> String| rows.iter().map(f).collect::<Vec<String>>();
        let guarded = !fences.is_empty() || !wakes.is_empty();
        let sql = if guarded { APPEND_GUARDED_SQL } else { APPEND_SQL };
        let mut query = sqlx::query_scalar::<_, Option<i64>>(sql)
            .bind(col(|r| r.stream_id.clone()))
            .bind(rows.iter().map(|r| to_i64(r.stream_version)).collect::<Vec<i64>>())
            .bind(col(|r| r.event_id.clone()))
            .bind(col(|r| r.event_type.clone()))
            .bind(rows.iter().map(|r| i32::try_from(r.schema_version).unwrap_or(i32::MAX)).collect::<Vec<i32>>())
            .bind(col(|r| r.recorded_at.clone()))
            .bind(col(|r| r.metadata.clone()))
            .bind(col(|r| r.payload.clone()))
            .bind(col(|r| r.prev_hash.clone()))
            .bind(col(|r| r.hash.clone()));
        if guarded {
            // A wake of -1 removes the run from the index.
            query = query
                .bind(fences.iter().map(|f| f.stream_id.clone()).collect::<Vec<String>>())
                .bind(fences.iter().map(|f| f.worker_id.clone()).collect::<Vec<String>>())
                .bind(fences.iter().map(|f| f.token).collect::<Vec<i64>>())
                .bind(wakes.iter().map(|w| w.stream_id.clone()).collect::<Vec<String>>())
                .bind(wakes.iter().map(|w| w.due_ms.unwrap_or(-1)).collect::<Vec<i64>>());
        }
        let mut held = self.appender.lock().await;
        let conn = match &mut *held {
            Some(c) => c,
            None => held.insert(PgConnection::connect_with(&self.pool.connect_options()).await?),
        };
        let first = match query.fetch_one(&mut *conn).await {
            Ok(v) => v,
            Err(e) => {
                // A refused append (a conflict) leaves the connection
                // usable; anything else may have broken it: start afresh.
                let refused = matches!(&e, sqlx::Error::Database(d)
                    if d.code().is_some_and(|c| c.starts_with("23")
                        || c.starts_with("P0")
                        || c.starts_with("40")
                        || c.starts_with("CF")));
                if !refused {
                    *held = None;
                }
                if let sqlx::Error::Database(d) = &e
                    && d.code().as_deref() == Some(FENCED)
                {
                    let stream = fences.iter().find(|f| d.message().contains(&f.stream_id));
                    return Err(InsertError::Fenced(stream.unwrap_or(&fences[0]).stream_id.clone()));
                }
                return Err(e.into());
            }
        };
        Ok(first.and_then(|f| u64::try_from(f).ok()).unwrap_or(0))
    }
}

impl PgStore {
    /// A pooled connection for a lease statement.
    /// The pool the task index is read on.
    fn read_pool(&self) -> &PgPool {
        &self.pool
    }

    async fn lease_conn(&self) -> StoreResult<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.pool.acquire().await.map_err(|e| self.db_err(e))
    }
}

/// Whether an error means the server or the connection went away (SQLSTATE
/// class 08, an administrator or crash shutdown, or an I/O failure).
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            d.code().is_some_and(|c| c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

/// Sends one NOTIFY per burst of local commits, at most every [`NOTIFY_COALESCE`].
async fn notify_others(pool: PgPool, mut commits: watch::Receiver<u64>) {
    while commits.changed().await.is_ok() {
        commits.borrow_and_update();
        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')").bind(NOTIFY_CHANNEL).execute(&pool).await {
            tracing::debug!(error = %e, "NOTIFY failed; other processes fall back to polling");
        }
        tokio::time::sleep(NOTIFY_COALESCE).await;
    }
}

async fn listen(mut listener: PgListener, wake: Arc<watch::Sender<u64>>) {
    loop {
        match listener.recv().await {
            Ok(_) => wake.send_modify(|v| *v = v.wrapping_add(1)),
            Err(e) => {
                tracing::debug!(error = %e, "listener connection lost; reconnecting");
                // Wake readers so they poll; the listener reconnects on recv.
                wake.send_modify(|v| *v = v.wrapping_add(1));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

impl EventStore for PgStore {
    fn write_failure(&self) -> Option<crate::store::WriteFailure> {
        self.health.get()
    }

    fn append_many(&self, appends: Vec<StreamAppend>) -> BoxFuture<'_, StoreResult<Vec<AppendResult>>> {
        self.append_guarded(appends, Vec::new(), Vec::new())
    }

    crate::store::lease_methods!();
    // The offered tasks of a list of queues (a JSON array of names).
    crate::store::task_methods!(
        "SELECT stream_id, step_id, attempt, queue, heartbeat_ms, token_hash, worker, claimed_ms, beat_by_ms FROM cairn_tasks WHERE token_hash IS NULL AND queue IN (SELECT json_array_elements_text($1::json)) ORDER BY offered_at LIMIT $2"
    );

    fn claim_due<'a>(
        &'a self,
        worker: &'a str,
        due_by_ms: i64,
        stale_before_ms: i64,
        limit: i64,
    ) -> BoxFuture<'a, StoreResult<Vec<(String, i64, i64)>>> {
        Box::pin(async move {
            // The due rows are locked as they are picked, skipping those
            // another worker is picking: concurrent pollers split the work.
            let sql = format!(
                "WITH due AS (SELECT w.stream_id, w.due_ms FROM cairn_wakeups w WHERE {} \
                 ORDER BY w.due_ms LIMIT $4 FOR UPDATE OF w SKIP LOCKED), \
                 claimed AS (INSERT INTO cairn_leases (stream_id, worker_id, token) SELECT stream_id, $1, 1 FROM due \
                 {} RETURNING stream_id, token) \
                 SELECT c.stream_id, c.token, d.due_ms FROM claimed c JOIN due d ON d.stream_id = c.stream_id",
                crate::store::DUE_UNHELD,
                crate::store::CLAIM_DUE_LEASES
            );
            sqlx::query_as::<_, (String, i64, i64)>(AssertSqlSafe(sql))
                .bind(worker)
                .bind(due_by_ms)
                .bind(stale_before_ms)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.db_err(e))
        })
    }

    fn append_guarded(
        &self,
        appends: Vec<StreamAppend>,
        fences: Vec<crate::Fence>,
        wakes: Vec<crate::Wake>,
    ) -> BoxFuture<'_, StoreResult<Vec<AppendResult>>> {
        Box::pin(async move {
            let out = append_many_with(self, appends, &fences, &wakes).await?;
            let last = out.iter().map(|r| r.last_position).max().unwrap_or(0);
            self.wake.send_modify(|v| *v = (*v).max(last));
            self.commits.send_replace(last);
            Ok(out)
        })
    }

    fn probe_write(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(crate::store::probe_with(self, move |at| async move {
            sqlx::query(crate::store::PROBE_SQL).bind(at).execute(&self.pool).await.map(|_| ())
        }))
    }

    fn read_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
    ) -> BoxFuture<'a, StoreResult<Vec<RecordedEvent>>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(stream_id)
                .bind(to_i64(from_version))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.db_err(e))?;
            let events = rows.iter().map(decode_row).collect::<StoreResult<Vec<_>>>()?;
            self.cache.remember_read(&events);
            Ok(events)
        })
    }

    fn read_all(&self, from_position: u64, limit: usize) -> BoxFuture<'_, StoreResult<Vec<RecordedEvent>>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE global_position >= $1 ORDER BY global_position LIMIT $2"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(to_i64(from_position))
                .bind(to_i64(limit as u64))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.db_err(e))?;
            rows.iter().map(decode_row).collect()
        })
    }

    fn head_position(&self) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let v: Option<i64> = sqlx::query_scalar("SELECT MAX(global_position) FROM events")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.db_err(e))?;
            Ok(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0))
        })
    }

    fn stream_version<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(async move { Ok(self.head_of(stream_id).await?.version) })
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    fn describe(&self) -> &str {
        &self.label
    }

    fn backend(&self) -> Backend {
        Backend::Postgres
    }
}

impl RowWriter for PgStore {
    fn clock(&self) -> &crate::clock::ClockHandle {
        &self.clock
    }

    fn cache(&self) -> &HeadCache {
        &self.cache
    }

    fn read_head<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, StoreResult<Head>> {
        Box::pin(self.head_of(stream_id))
    }

    fn insert<'a>(
        &'a self,
        rows: &'a [PreparedRow],
        fences: &'a [crate::Fence],
        wakes: &'a [crate::Wake],
    ) -> BoxFuture<'a, Result<u64, InsertError>> {
        Box::pin(self.insert_rows(rows, fences, wakes))
    }

    fn db_err(&self, source: sqlx::Error) -> StoreError {
        if connection_lost(&source) {
            StoreError::Unavailable { database: self.label.clone(), source }
        } else {
            StoreError::Database { database: self.label.clone(), source }
        }
    }

    fn health(&self) -> &crate::store::WriteHealth {
        &self.health
    }
}
