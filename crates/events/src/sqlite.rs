//! The embedded event store: one SQLite file in WAL mode.
//!
//! Writes go through a single connection (SQLite has one writer anyway), so
//! `global_position` is the rowid, assigned as max + 1: gap-free and committed
//! in order. An append is one multi-row `INSERT … RETURNING` in autocommit
//! mode, exactly the work of a raw insert; expected versions are checked
//! against the head cache and enforced by the `(stream_id, stream_version)`
//! unique constraint.
#![allow(clippy::disallowed_methods)] // a store: its SQL lives here

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor, Row};
use tokio::sync::watch;

use crate::envelope::{AppendResult, RecordedEvent, StreamAppend};
use crate::rows::{EVENT_COLUMNS, decode_row, to_i64};
use crate::store::{
    Backend, EventStore, Head, HeadCache, InsertError, PreparedRow, RowWriter, StoreError, StoreResult,
    append_many_with,
};

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: a commit survives power loss. The default.
    #[default]
    Full,
    /// `synchronous=NORMAL`: a commit survives a process crash, but the last
    /// transactions before a power loss or OS crash may be lost. Faster.
    Normal,
}

/// Options for opening the SQLite store.
#[derive(Debug, Clone, Default)]
pub struct SqliteConfig {
    /// Commit durability.
    pub durability: Durability,
    /// Where `recorded_at` comes from (the system clock by default).
    pub clock: crate::clock::ClockHandle,
}

/// Rows per INSERT statement; larger appends use an explicit transaction.
const ROWS_PER_STATEMENT: usize = 256;

/// The SQLite event store.
pub struct SqliteStore {
    /// The one connection appends go through, held (not pooled) so an
    /// append costs no pool checkout and return.
    appender: tokio::sync::Mutex<SqliteConnection>,
    writer: SqlitePool,
    reader: SqlitePool,
    cache: HeadCache,
    wake: watch::Sender<u64>,
    label: String,
    clock: crate::clock::ClockHandle,
    health: crate::store::WriteHealth,
}

/// Creates `path` readable and writable by its owner only (0600), if it
/// does not exist yet.
pub fn create_private(path: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    match o.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and migrates it.
    pub async fn open(path: impl AsRef<Path>, config: SqliteConfig) -> StoreResult<Arc<SqliteStore>> {
        let path = path.as_ref();
        let label = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && let Err(e) = std::fs::create_dir_all(parent)
        {
            return Err(StoreError::Unavailable { database: label, source: sqlx::Error::Io(e) });
        }
        // Created owner-only: the log holds what runs did. SQLite gives the
        // WAL and shared-memory files the database file's mode.
        if let Err(e) = create_private(path) {
            return Err(StoreError::Unavailable { database: label, source: sqlx::Error::Io(e) });
        }
        let opts = SqliteConnectOptions::new().filename(path);
        Self::open_with(opts, label, config).await
    }

    /// Opens a `sqlite:` URL (e.g. `sqlite://.cairn/cairn.db`).
    pub async fn open_url(url: &str, config: SqliteConfig) -> StoreResult<Arc<SqliteStore>> {
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
        let (path, _query) = path.split_once('?').unwrap_or((path, ""));
        if path.is_empty() || path == ":memory:" {
            return Err(StoreError::Unavailable {
                database: url.to_owned(),
                source: sqlx::Error::Configuration(
                    "an in-memory SQLite database cannot hold a durable log; give a file path".into(),
                ),
            });
        }
        Self::open(PathBuf::from(path), config).await
    }

    async fn open_with(
        opts: SqliteConnectOptions,
        label: String,
        config: SqliteConfig,
    ) -> StoreResult<Arc<SqliteStore>> {
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match config.durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let unavailable = |source| StoreError::Unavailable { database: label.clone(), source };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(opts.clone())
            .await
            .map_err(unavailable)?;
        crate::migrate::run_sqlite(&writer, &label).await?;
        let appender = opts.connect().await.map_err(unavailable)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(opts)
            .await
            .map_err(unavailable)?;
        let (wake, _) = watch::channel(0);
        Ok(Arc::new(SqliteStore {
            appender: tokio::sync::Mutex::new(appender),
            writer,
            reader,
            cache: HeadCache::default(),
            wake,
            label,
            clock: config.clock,
            health: Default::default(),
        }))
    }

    /// A second writer connection, for tests and tools that need raw access
    /// (tamper tests, benchmarks). Never use it to change events.
    pub fn raw_pool(&self) -> &SqlitePool {
        &self.writer
    }

    async fn head_of(&self, stream_id: &str) -> StoreResult<Head> {
        let row = sqlx::query(
            "SELECT stream_version, hash FROM events WHERE stream_id = ? ORDER BY stream_version DESC LIMIT 1",
        )
        .bind(stream_id)
        .fetch_optional(&self.reader)
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

    /// Inserts `rows` atomically and returns the first global position.
    /// Positions are rowids, assigned max + 1 per row under the single
    /// writer, so one statement's rows are consecutive and end at
    /// `last_insert_rowid` (no `RETURNING` rows to ship back one by one).
    async fn insert_rows(
        &self,
        rows: &[PreparedRow],
        fences: &[crate::Fence],
        wakes: &[crate::Wake],
    ) -> Result<u64, InsertError> {
        let mut conn = self.appender.lock().await;
        let simple = rows.len() <= ROWS_PER_STATEMENT && wakes.is_empty();
        let last = if simple && fences.is_empty() {
            insert_statement(rows.len()).bind_rows(rows).execute(&mut *conn).await?.last_insert_rowid()
        } else if simple && fences.iter().all(|f| f.token != 0) {
            // One statement: the rows go in only if every lease still holds.
            let mut q = sqlx::query(AssertSqlSafe(fenced_insert_sql(rows.len(), fences.len())));
            q = bind_rows(q, rows);
            for f in fences {
                q = q.bind(f.stream_id.clone()).bind(f.worker_id.clone()).bind(f.token);
            }
            let done = q.execute(&mut *conn).await?;
            if done.rows_affected() == 0 {
                return Err(InsertError::Fenced(fences[0].stream_id.clone()));
            }
            done.last_insert_rowid()
        } else {
            // One writer at a time (IMMEDIATE): a takeover cannot slip in
            // between the fence check and the insert.
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            // New runs' leases, taken with the appends that create them.
            let new: Vec<&crate::Fence> = fences.iter().filter(|f| f.token == 0).collect();
            if !new.is_empty() {
                let values = vec!["(?,?,1)"; new.len()].join(",");
                let mut q = sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO cairn_leases (stream_id, worker_id, token) VALUES {values} ON CONFLICT (stream_id) DO NOTHING"
                )));
                for f in &new {
                    q = q.bind(f.stream_id.clone()).bind(f.worker_id.clone());
                }
                q.execute(&mut *tx).await?;
            }
            if !fences.is_empty() {
                let mut q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(held_sql(fences.len())));
                for f in fences {
                    q = q.bind(f.stream_id.clone()).bind(f.worker_id.clone()).bind(f.token);
                }
                if usize::try_from(q.fetch_one(&mut *tx).await?).unwrap_or(0) != fences.len() {
                    return Err(InsertError::Fenced(fences[0].stream_id.clone()));
                }
            }
            let mut last = 0;
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                last = insert_statement(chunk.len()).bind_rows(chunk).execute(&mut *tx).await?.last_insert_rowid();
            }
            // The wake-up index: one statement to set, one to clear, one to
            // let go of the runs that need no worker.
            let set: Vec<(&String, i64)> = wakes.iter().filter_map(|w| w.due_ms.map(|d| (&w.stream_id, d))).collect();
            if !set.is_empty() {
                let values = vec!["(?,?)"; set.len()].join(",");
                let mut q = sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO cairn_wakeups (stream_id, due_ms) VALUES {values} \
                     ON CONFLICT (stream_id) DO UPDATE SET due_ms = excluded.due_ms"
                )));
                for (stream, due) in set {
                    q = q.bind(stream.clone()).bind(due);
                }
                q.execute(&mut *tx).await?;
            }
            let clear: Vec<&String> = wakes.iter().filter(|w| w.due_ms.is_none()).map(|w| &w.stream_id).collect();
            if !clear.is_empty() {
                let marks = vec!["?"; clear.len()].join(",");
                let mut q =
                    sqlx::query(AssertSqlSafe(format!("DELETE FROM cairn_wakeups WHERE stream_id IN ({marks})")));
                for stream in &clear {
                    q = q.bind((*stream).clone());
                }
                q.execute(&mut *tx).await?;
                let go: Vec<&crate::Fence> = fences.iter().filter(|f| clear.contains(&&f.stream_id)).collect();
                if !go.is_empty() {
                    let pairs = vec!["(?,?)"; go.len()].join(",");
                    let mut q = sqlx::query(AssertSqlSafe(format!(
                        "DELETE FROM cairn_leases WHERE (stream_id, worker_id) IN (VALUES {pairs})"
                    )));
                    for f in go {
                        q = q.bind(f.stream_id.clone()).bind(f.worker_id.clone());
                    }
                    q.execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            last
        };
        let first = last - rows.len() as i64 + 1;
        Ok(u64::try_from(first).unwrap_or(0))
    }
}

/// How many of `n` fences (`stream_id`, `worker_id`, token; a token of 0
/// matches any, for a lease just taken) still hold.
fn held_sql(n: usize) -> String {
    let held = vec!["(?,?,?)"; n.max(1)].join(",");
    format!(
        "SELECT count(*) FROM (VALUES {held}) AS f JOIN cairn_leases l ON l.stream_id = f.column1 \
         AND l.worker_id = f.column2 AND (f.column3 = 0 OR l.token = f.column3)"
    )
}

/// A multi-row insert that writes nothing unless all of `fences` fences
/// still hold (the rows' parameters, then each fence's).
fn fenced_insert_sql(rows: usize, fences: usize) -> String {
    let values = vec!["(?,?,?,?,?,?,?,?,?,?)"; rows.max(1)].join(",");
    format!(
        "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, recorded_at, metadata, payload, prev_hash, hash) \
         SELECT * FROM (VALUES {values}) WHERE ({}) = {fences}",
        held_sql(fences)
    )
}

/// A prepared multi-row insert, cached per row count.
struct InsertStatement(Arc<str>);

fn insert_statement(n: usize) -> InsertStatement {
    static CACHE: OnceLock<Vec<Arc<str>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        (0..=ROWS_PER_STATEMENT)
            .map(|n| {
                let values = vec!["(?,?,?,?,?,?,?,?,?,?)"; n.max(1)].join(",");
                Arc::from(format!(
                    "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, recorded_at, metadata, payload, prev_hash, hash) VALUES {values}"
                ))
            })
            .collect()
    });
    InsertStatement(cache[n.min(ROWS_PER_STATEMENT)].clone())
}

impl InsertStatement {
    fn bind_rows(
        self,
        rows: &[PreparedRow],
    ) -> sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
        bind_rows(sqlx::query(AssertSqlSafe(self.0)), rows)
    }
}

/// Binds each row's ten columns, in order.
fn bind_rows<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    rows: &[PreparedRow],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    for r in rows {
        q = q
            .bind(r.stream_id.clone())
            .bind(to_i64(r.stream_version))
            .bind(r.event_id.clone())
            .bind(r.event_type.clone())
            .bind(i64::from(r.schema_version))
            .bind(r.recorded_at.clone())
            .bind(r.metadata.clone())
            .bind(r.payload.clone())
            .bind(r.prev_hash.clone())
            .bind(r.hash.clone());
    }
    q
}

impl EventStore for SqliteStore {
    fn write_failure(&self) -> Option<crate::store::WriteFailure> {
        self.health.get()
    }

    fn append_many(&self, appends: Vec<StreamAppend>) -> BoxFuture<'_, StoreResult<Vec<AppendResult>>> {
        self.append_guarded(appends, Vec::new(), Vec::new())
    }

    crate::store::lease_methods!();
    // The offered tasks of a list of queues (a JSON array of names).
    crate::store::task_methods!(
        "SELECT stream_id, step_id, attempt, queue, heartbeat_ms, token_hash, worker, claimed_ms, beat_by_ms FROM cairn_tasks WHERE token_hash IS NULL AND queue IN (SELECT value FROM json_each($1)) ORDER BY offered_at LIMIT $2"
    );

    fn claim_due<'a>(
        &'a self,
        worker: &'a str,
        due_by_ms: i64,
        stale_before_ms: i64,
        limit: i64,
    ) -> BoxFuture<'a, StoreResult<Vec<(String, i64, i64)>>> {
        Box::pin(async move {
            static SQL: OnceLock<String> = OnceLock::new();
            let sql = SQL.get_or_init(|| {
                format!(
                    "INSERT INTO cairn_leases (stream_id, worker_id, token) SELECT w.stream_id, $1, 1 FROM cairn_wakeups w \
                     WHERE {} ORDER BY w.due_ms LIMIT $4 {} RETURNING stream_id, token",
                    crate::store::DUE_UNHELD,
                    crate::store::CLAIM_DUE_LEASES
                )
            });
            // One writer: the claim and the due times it read are one moment.
            let mut conn = self.appender.lock().await;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(|e| self.db_err(e))?;
            let claimed: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(sql.as_str()))
                .bind(worker)
                .bind(due_by_ms)
                .bind(stale_before_ms)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| self.db_err(e))?;
            let mut out = Vec::with_capacity(claimed.len());
            for (stream, token) in claimed {
                let due: Option<i64> = sqlx::query_scalar("SELECT due_ms FROM cairn_wakeups WHERE stream_id = $1")
                    .bind(&stream)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.db_err(e))?;
                out.push((stream, token, due.unwrap_or(0)));
            }
            tx.commit().await.map_err(|e| self.db_err(e))?;
            Ok(out)
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
            self.wake.send_replace(last);
            Ok(out)
        })
    }

    fn probe_write(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(crate::store::probe_with(self, move |at| async move {
            sqlx::query(crate::store::PROBE_SQL).bind(at).execute(&self.writer).await.map(|_| ())
        }))
    }

    fn read_stream<'a>(
        &'a self,
        stream_id: &'a str,
        from_version: u64,
    ) -> BoxFuture<'a, StoreResult<Vec<RecordedEvent>>> {
        Box::pin(async move {
            static SQL: OnceLock<String> = OnceLock::new();
            let sql = SQL.get_or_init(|| {
                format!("SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? AND stream_version >= ? ORDER BY stream_version")
            });
            let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(stream_id)
                .bind(to_i64(from_version))
                .fetch_all(&self.reader)
                .await
                .map_err(|e| self.db_err(e))?;
            let events = rows.iter().map(decode_row).collect::<StoreResult<Vec<_>>>()?;
            self.cache.remember_read(&events);
            Ok(events)
        })
    }

    fn read_all(&self, from_position: u64, limit: usize) -> BoxFuture<'_, StoreResult<Vec<RecordedEvent>>> {
        Box::pin(async move {
            static SQL: OnceLock<String> = OnceLock::new();
            let sql = SQL.get_or_init(|| {
                format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE global_position >= ? ORDER BY global_position LIMIT ?"
                )
            });
            let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(to_i64(from_position))
                .bind(to_i64(limit as u64))
                .fetch_all(&self.reader)
                .await
                .map_err(|e| self.db_err(e))?;
            rows.iter().map(decode_row).collect()
        })
    }

    fn head_position(&self) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let v: Option<i64> = sqlx::query_scalar("SELECT MAX(global_position) FROM events")
                .fetch_one(&self.reader)
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
        Backend::Sqlite
    }
}

impl SqliteStore {
    /// The connection lease statements run on: the held appender, so they
    /// queue behind appends instead of contending for the write lock.
    /// The pool the task index is read on (never the appender).
    fn read_pool(&self) -> &SqlitePool {
        &self.reader
    }

    async fn lease_conn(&self) -> StoreResult<tokio::sync::MutexGuard<'_, SqliteConnection>> {
        Ok(self.appender.lock().await)
    }

    /// Closes both pools, checkpointing the WAL.
    pub async fn close(&self) {
        let _ = self.appender.lock().await.execute("PRAGMA wal_checkpoint(TRUNCATE)").await;
        self.reader.close().await;
        self.writer.close().await;
    }
}

impl RowWriter for SqliteStore {
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
        StoreError::Database { database: self.label.clone(), source }
    }

    fn health(&self) -> &crate::store::WriteHealth {
        &self.health
    }
}
