//! The projection runner. Each batch is one transaction that applies the
//! events and moves the checkpoint, conditional on the checkpoint (position
//! and generation) it started from: a crash mid-batch leaves nothing, and a
//! second worker (or a rebuild) that got there first makes the batch roll
//! back instead of applying twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cairn_events::{Event, EventStore, RecordedEvent, StoreError};
use sqlx::Connection;

use crate::db::{DbError, ReadDb, Tx, Val};
use crate::projection::{Input, Projection};

/// The checkpoint table.
pub const CHECKPOINTS: &str = "cairn_projections";

/// The table of parked events: one a projection could not apply, set aside
/// with its error so the projection goes on past it.
pub const PARKED: &str = "cairn_parked";

/// Events per batch transaction.
pub const DEFAULT_BATCH: usize = 500;

/// How long a following worker waits after a commit wakes it before it
/// catches up (see [`Worker::run`]).
pub const LINGER: Duration = Duration::from_millis(50);

/// Errors of the runner.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The read-model database failed.
    #[error("read-model database: {0}")]
    Db(#[from] DbError),
    /// No projection has this name.
    #[error("no projection named `{0}` (known: runs, step_history, costs, audit_log, inbox)")]
    Unknown(String),
}

/// What one batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// Applied events up to this position.
    Applied {
        /// Events read (wanted or not).
        events: usize,
        /// The new checkpoint.
        position: u64,
    },
    /// Caught up with the log.
    Idle,
    /// Stopped at an event it cannot apply (see `status`): only when even
    /// parking it failed.
    Stopped,
    /// Set aside an event it cannot apply (see [`Worker::parked`]) and
    /// moved past it.
    Parked {
        /// The parked event's position.
        position: u64,
    },
    /// Another worker or a rebuild moved the checkpoint first; nothing applied.
    Raced,
    /// Another worker holds this projection.
    NotOwner,
}

/// A projection's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Projection.
    pub name: String,
    /// Last applied global position.
    pub position: u64,
    /// The log's head.
    pub head: u64,
    /// `head - position`.
    pub lag_events: u64,
    /// Seconds between the newest event and the checkpoint's event (0 when caught up).
    pub lag_seconds: f64,
    /// When the checkpoint last moved.
    pub updated_at: Option<String>,
    /// Set when the projection stopped: the position and the error.
    pub error: Option<(u64, String)>,
    /// Events it set aside and went on past (see [`Worker::parked`]).
    pub parked: u64,
}

/// One row of the checkpoint table.
#[derive(Debug, Clone, Default)]
struct Checkpoint {
    position: u64,
    generation: i64,
    error: Option<(u64, String)>,
    updated_at: Option<String>,
}

/// Moves a checkpoint from `from` to `to` within `tx`, only if it is still
/// at `from` in `generation`; `false` when another worker or a rebuild got
/// there first.
async fn advance(tx: &mut Tx, name: &str, from: u64, generation: i64, to: u64) -> Result<bool, DbError> {
    let moved = tx
        .exec(
            &format!("UPDATE {CHECKPOINTS} SET position = $1, updated_at = $2 WHERE name = $3 AND position = $4 AND generation = $5"),
            &[Val::from(to), Val::from(cairn_events::clock::ClockHandle::default().now().to_rfc3339()), Val::from(name), Val::from(from), Val::Int(generation)],
        )
        .await?;
    Ok(moved == 1)
}

/// A projection whose tables are of another version than this binary's is
/// dropped and set back to position 0 (a new generation, so a batch of an
/// old worker in flight rolls back); the worker then builds it again. Only
/// one of several workers starting together does it.
async fn upgrade(db: &ReadDb, p: &dyn Projection) -> Result<(), DbError> {
    let found = db.rows(&format!("SELECT version FROM {CHECKPOINTS} WHERE name = $1"), &[Val::from(p.name())]).await?;
    let Some(stored) = found.first().and_then(|r| r.first()).and_then(Val::as_int) else { return Ok(()) };
    let want = i64::from(p.version());
    if stored == want {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    let claimed = tx
        .exec(
            &format!("UPDATE {CHECKPOINTS} SET position = 0, generation = generation + 1, version = $1, updated_at = $2, error = NULL, error_position = NULL WHERE name = $3 AND version = $4"),
            &[Val::Int(want), Val::from(cairn_events::clock::ClockHandle::default().now().to_rfc3339()), Val::from(p.name()), Val::Int(stored)],
        )
        .await?;
    if claimed != 1 {
        return tx.rollback().await;
    }
    for t in p.tables() {
        tx.exec(&format!("DROP TABLE IF EXISTS {t}"), &[]).await?;
    }
    for ddl in p.create("").into_iter().chain(p.indexes()) {
        tx.exec(&ddl, &[]).await?;
    }
    tracing::info!(
        projection = p.name(),
        from = stored,
        to = want,
        "read model upgraded; building it again from position 0"
    );
    tx.commit().await
}

async fn park(tx: &mut Tx, name: &str, position: u64, event_type: &str, error: &str) -> Result<(), DbError> {
    tx.exec(
        &format!("INSERT INTO {PARKED} (name, position, event_type, error, parked_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name, position) DO UPDATE SET error = excluded.error, parked_at = excluded.parked_at"),
        &[Val::from(name), Val::from(position), Val::from(event_type), Val::from(error), Val::from(cairn_events::clock::ClockHandle::default().now().to_rfc3339())],
    )
    .await?;
    Ok(())
}

/// An event a projection set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// The projection.
    pub name: String,
    /// The event's position in the log.
    pub position: u64,
    /// Its type.
    pub event_type: String,
    /// Why it could not be applied.
    pub error: String,
    /// When it was parked.
    pub parked_at: String,
}

/// Runs projections from an event store into a read-model database.
pub struct Worker {
    store: Arc<dyn EventStore>,
    db: ReadDb,
    projections: Vec<Box<dyn Projection>>,
    batch: usize,
    /// PostgreSQL: the session holding this worker's advisory locks.
    locks: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
    owned: std::sync::Mutex<HashSet<String>>,
}

/// What one batch of every projection together did.
enum Together {
    /// The events applied, and whether they were a whole batch (more may follow).
    Applied(u64, bool),
    CaughtUp,
    Apart,
}

/// On PostgreSQL, a session holding the read models' set-up lock (keyed by
/// schema: other schemas of the database are other deployments); waits for
/// another process's set-up to finish. `None` on SQLite (one writer).
async fn setup_lock(db: &ReadDb) -> Result<Option<sqlx::PgConnection>, ProjectionError> {
    let ReadDb::Pg(pool) = db else { return Ok(None) };
    let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
    #[allow(clippy::disallowed_methods)] // the lock is per session: it cannot go through the pool
    sqlx::query("SELECT pg_advisory_lock(hashtextextended(current_schema() || ':cairn-projections-setup', 0))")
        .execute(&mut conn)
        .await?;
    Ok(Some(conn))
}

impl Worker {
    /// A worker for `projections`; creates the checkpoint table and the
    /// projections' tables when missing.
    pub async fn new(
        store: Arc<dyn EventStore>,
        db: ReadDb,
        projections: Vec<Box<dyn Projection>>,
    ) -> Result<Worker, ProjectionError> {
        // Any number of processes may start at once on one database: on
        // PostgreSQL the set-up runs under a session advisory lock, one
        // process at a time (concurrent `CREATE TABLE IF NOT EXISTS` of one
        // table can fail on PostgreSQL's catalog), and the next finds it done.
        let setup = setup_lock(&db).await?;
        let done = Self::set_up(&db, &projections).await;
        if let Some(conn) = setup {
            // Closing the session releases the lock, also on an error above.
            drop(conn);
        }
        done?;
        Ok(Worker {
            store,
            db,
            projections,
            batch: DEFAULT_BATCH,
            locks: tokio::sync::Mutex::new(None),
            owned: std::sync::Mutex::new(HashSet::new()),
        })
    }

    /// Creates the checkpoint and parked tables and the projections' tables
    /// where missing, and upgrades projections whose version changed.
    async fn set_up(db: &ReadDb, projections: &[Box<dyn Projection>]) -> Result<(), ProjectionError> {
        db.exec(
            &format!("CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (name TEXT PRIMARY KEY, position BIGINT NOT NULL, generation BIGINT NOT NULL, updated_at TEXT, error_position BIGINT, error TEXT)"),
            &[],
        )
        .await?;
        // Checkpoints written before projections had versions are version 1.
        if db.rows(&format!("SELECT version FROM {CHECKPOINTS} LIMIT 1"), &[]).await.is_err()
            && let Err(e) =
                db.exec(&format!("ALTER TABLE {CHECKPOINTS} ADD COLUMN version BIGINT NOT NULL DEFAULT 1"), &[]).await
        {
            // Another worker starting at the same moment may have added it.
            db.rows(&format!("SELECT version FROM {CHECKPOINTS} LIMIT 1"), &[]).await.map_err(|_| e)?;
        }
        db.exec(
            &format!("CREATE TABLE IF NOT EXISTS {PARKED} (name TEXT NOT NULL, position BIGINT NOT NULL, event_type TEXT NOT NULL, error TEXT NOT NULL, parked_at TEXT NOT NULL, PRIMARY KEY (name, position))"),
            &[],
        )
        .await?;
        for p in projections {
            upgrade(db, &**p).await?;
            for ddl in p.create("").into_iter().chain(p.indexes()) {
                db.exec(&ddl, &[]).await?;
            }
            db.exec(
                &format!("INSERT INTO {CHECKPOINTS} (name, position, generation, version) VALUES ($1, 0, 0, $2) ON CONFLICT (name) DO NOTHING"),
                &[Val::from(p.name()), Val::from(p.version())],
            )
            .await?;
        }
        Ok(())
    }

    /// Uses batches of `n` events (at least 1).
    pub fn with_batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// The read-model database.
    pub fn db(&self) -> &ReadDb {
        &self.db
    }

    /// The projections' names.
    pub fn names(&self) -> Vec<&'static str> {
        self.projections.iter().map(|p| p.name()).collect()
    }

    fn projection(&self, name: &str) -> Result<&dyn Projection, ProjectionError> {
        self.projections
            .iter()
            .find(|p| p.name() == name)
            .map(|p| &**p)
            .ok_or_else(|| ProjectionError::Unknown(name.to_owned()))
    }

    /// Every checkpoint row, by projection name, in one query.
    async fn checkpoints(&self) -> Result<std::collections::HashMap<String, Checkpoint>, DbError> {
        let rows = self
            .db
            .rows(
                &format!("SELECT name, position, generation, error_position, error, updated_at FROM {CHECKPOINTS}"),
                &[],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let int = |i: usize| r.get(i).and_then(Val::as_int).unwrap_or(0);
                let text = |i: usize| r.get(i).and_then(|v| v.as_text().map(str::to_owned));
                let checkpoint = Checkpoint {
                    position: u64::try_from(int(1)).unwrap_or(0),
                    generation: int(2),
                    error: text(4).map(|e| (u64::try_from(int(3)).unwrap_or(0), e)),
                    updated_at: text(5),
                };
                (text(0).unwrap_or_default(), checkpoint)
            })
            .collect())
    }

    async fn checkpoint(&self, name: &str) -> Result<Checkpoint, DbError> {
        Ok(self.checkpoints().await?.remove(name).unwrap_or_default())
    }

    /// On PostgreSQL, whether this worker holds (or now takes) the
    /// projection's advisory lock; one worker applies a projection at a
    /// time, and a dead worker's locks go with its session.
    async fn owns(&self, name: &str) -> Result<bool, ProjectionError> {
        let ReadDb::Pg(pool) = &self.db else { return Ok(true) };
        if self.owned.lock().unwrap_or_else(|p| p.into_inner()).contains(name) {
            return Ok(true);
        }
        let mut held = self.locks.lock().await;
        let conn = match &mut *held {
            Some(c) => c,
            None => held.insert(sqlx::PgConnection::connect_with(&pool.connect_options()).await?),
        };
        // Keyed by schema too: deployments in other schemas of the same
        // database are other projections.
        #[allow(clippy::disallowed_methods)] // the lock is per connection: it cannot go through the pool's store
        let got: Result<bool, DbError> = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtextextended(current_schema() || ':cairn-projection:' || $1, 0))",
        )
        .bind(name)
        .fetch_one(&mut *conn)
        .await;
        match got {
            Ok(true) => {
                self.owned.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned());
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                // The lock session is gone: so are the locks it held.
                *held = None;
                self.owned.lock().unwrap_or_else(|p| p.into_inner()).clear();
                Err(e.into())
            }
        }
    }

    /// Applies one batch of one projection.
    pub async fn step(&self, name: &str) -> Result<Batch, ProjectionError> {
        let p = self.projection(name)?;
        if !self.owns(name).await? {
            return Ok(Batch::NotOwner);
        }
        let Checkpoint { position, generation, error, .. } = self.checkpoint(name).await?;
        if error.is_some() {
            return Ok(Batch::Stopped);
        }
        let events = self.store.read_all(position + 1, self.batch).await?;
        let Some(last) = events.last().map(|e| e.global_position) else { return Ok(Batch::Idle) };
        let mut tx = self.db.begin().await?;
        if !advance(&mut tx, name, position, generation, last).await? {
            tx.rollback().await?;
            return Ok(Batch::Raced);
        }
        match apply_all(p, &mut tx, "", &events).await {
            Ok(()) => {
                tx.commit().await?;
                Ok(Batch::Applied { events: events.len(), position: last })
            }
            Err(Failure::Db(e)) if is_transient(&e) => {
                let _ = tx.rollback().await;
                Err(e.into())
            }
            Err(f) => {
                let _ = tx.rollback().await;
                let (at, message) = f.pinpoint(&self.db, p, "", &events).await;
                // Park the event at fault and go on past it: one event never
                // holds back every later run. What came before it in the
                // batch is applied with the park, in one transaction.
                if let Some(bad) = events.iter().find(|r| r.global_position == at) {
                    let before: Vec<RecordedEvent> =
                        events.iter().filter(|r| r.global_position < at).cloned().collect();
                    let mut tx = self.db.begin().await?;
                    if !advance(&mut tx, name, position, generation, at).await? {
                        tx.rollback().await?;
                        return Ok(Batch::Raced);
                    }
                    if apply_all(p, &mut tx, "", &before).await.is_ok() {
                        park(&mut tx, name, at, &bad.event_type, &message).await?;
                        tx.commit().await?;
                        tracing::error!(projection = name, position = at, "parked: {message}");
                        return Ok(Batch::Parked { position: at });
                    }
                    let _ = tx.rollback().await;
                }
                tracing::error!(projection = name, position = at, "{message}");
                self.db
                    .exec(
                        &format!("UPDATE {CHECKPOINTS} SET error_position = $1, error = $2 WHERE name = $3 AND generation = $4"),
                        &[Val::from(at), Val::from(message), Val::from(name), Val::Int(generation)],
                    )
                    .await?;
                Ok(Batch::Stopped)
            }
        }
    }

    /// One batch for every projection at their common checkpoint, in one
    /// transaction: [`Together::Applied`] with the events applied,
    /// [`Together::CaughtUp`] when they are together at the log's head, or
    /// [`Together::Apart`] when it cannot go that way (projections at
    /// different positions, stopped or not owned: the one-by-one path
    /// handles those).
    async fn step_together(&self) -> Result<Together, ProjectionError> {
        let mut group = Vec::new();
        let mut at = None;
        let checkpoints = self.checkpoints().await?;
        for p in &self.projections {
            if !self.owns(p.name()).await? {
                return Ok(Together::Apart);
            }
            let Some(c) = checkpoints.get(p.name()) else { return Ok(Together::Apart) };
            if c.error.is_some() || at.is_some_and(|a| a != c.position) {
                return Ok(Together::Apart);
            }
            at = Some(c.position);
            group.push((&**p, c.generation));
        }
        let Some(position) = at else { return Ok(Together::Apart) };
        let events = self.store.read_all(position + 1, self.batch).await?;
        let Some(last) = events.last().map(|e| e.global_position) else { return Ok(Together::CaughtUp) };
        // Decode once for all.
        let mut decoded = Vec::with_capacity(events.len());
        for r in &events {
            if !group.iter().any(|(p, _)| p.wants(&r.event_type)) {
                continue;
            }
            match Event::decode(r) {
                Ok(e) => decoded.push((r, e)),
                Err(_) => return Ok(Together::Apart), // the one-by-one path stops the right projection
            }
        }
        let mut tx = self.db.begin().await?;
        for (p, generation) in &group {
            if !advance(&mut tx, p.name(), position, *generation, last).await? {
                tx.rollback().await?;
                return Ok(Together::Apart);
            }
        }
        for (p, _) in &group {
            let wanted: Vec<(&RecordedEvent, &Event)> =
                decoded.iter().filter(|(r, _)| p.wants(&r.event_type)).map(|(r, e)| (*r, e)).collect();
            if wanted.is_empty() {
                continue;
            }
            if let Err(e) = p.apply_batch(&mut tx, "", &wanted).await {
                let _ = tx.rollback().await;
                if is_transient(&e) {
                    return Err(e.into());
                }
                return Ok(Together::Apart); // one by one, to stop only the projection at fault
            }
        }
        tx.commit().await?;
        Ok(Together::Applied(events.len() as u64 * group.len() as u64, events.len() >= self.batch))
    }

    /// Applies every projection until each is caught up (or stopped, or
    /// held by another worker); returns the events applied.
    pub async fn catch_up(&self) -> Result<u64, ProjectionError> {
        let mut total = 0;
        // Together while the projections are at the same position (the
        // steady state): one read, one decode and one commit per batch.
        loop {
            match self.step_together().await? {
                // Less than a batch: that was the log's head when read.
                Together::Applied(n, whole) => {
                    total += n;
                    if !whole {
                        return Ok(total);
                    }
                }
                Together::CaughtUp => return Ok(total),
                Together::Apart => break,
            }
        }
        for name in self.names() {
            loop {
                match self.step(name).await? {
                    Batch::Applied { events, .. } => total += events as u64,
                    Batch::Raced | Batch::Parked { .. } => {}
                    Batch::Idle | Batch::Stopped | Batch::NotOwner => break,
                }
            }
        }
        Ok(total)
    }

    /// Runs until `stop` turns true: catches up, then waits for new events
    /// (woken by the store, polling every `poll` as the floor); backs off on
    /// database errors, up to 30 s. A poll that finds the log's head where
    /// the last catch-up found it costs one query, not a catch-up.
    ///
    /// Woken by a commit, it lingers [`LINGER`] before catching up, so the
    /// commits of that time are applied in one transaction: under load one
    /// catch-up serves many runs instead of one per commit. (A read through
    /// [`Worker::catch_up`] is not delayed by this.)
    pub async fn run(&self, poll: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut wake = self.store.wakeups();
        let mut backoff = Duration::from_millis(100);
        // The head the last successful catch-up started from: everything up
        // to it is applied (or parked, or another worker's to apply).
        let mut caught_up: Option<u64> = None;
        while !*stop.borrow() {
            let head = self.store.head_position().await.ok();
            if head.is_some() && head == caught_up {
                tokio::select! {
                    _ = wake.changed() => {
                        tokio::select! {
                            () = tokio::time::sleep(LINGER) => {}
                            _ = stop.changed() => {}
                        }
                    }
                    () = tokio::time::sleep(poll) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            match self.catch_up().await {
                Ok(_) => {
                    caught_up = head;
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!("projections: {e}; retrying in {backoff:?}");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            }
            tokio::select! {
                _ = wake.changed() => {
                    tokio::select! {
                        () = tokio::time::sleep(LINGER) => {}
                        _ = stop.changed() => {}
                    }
                }
                () = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Every projection's checkpoint, the head and the lag.
    pub async fn status(&self) -> Result<Vec<Status>, ProjectionError> {
        let head = self.store.head_position().await?;
        let newest = self.store.read_all(head.max(1), 1).await?.first().and_then(RecordedEvent::recorded_at);
        let mut out = Vec::new();
        let mut checkpoints = self.checkpoints().await?;
        let mut parked: HashMap<String, u64> = HashMap::new();
        for p in self.parked(None).await? {
            *parked.entry(p.name).or_default() += 1;
        }
        for name in self.names() {
            let Checkpoint { position, error, updated_at, .. } = checkpoints.remove(name).unwrap_or_default();
            let lag_seconds = if position >= head {
                0.0
            } else {
                let at = self.store.read_all(position.max(1), 1).await?.first().and_then(RecordedEvent::recorded_at);
                match (newest, at) {
                    (Some(n), Some(a)) if position > 0 => (n - a).num_milliseconds().max(0) as f64 / 1000.0,
                    (Some(n), _) => {
                        let first = self.store.read_all(1, 1).await?.first().and_then(RecordedEvent::recorded_at);
                        first.map_or(0.0, |f| (n - f).num_milliseconds().max(0) as f64 / 1000.0)
                    }
                    _ => 0.0,
                }
            };
            out.push(Status {
                name: name.to_owned(),
                position,
                head,
                lag_events: head.saturating_sub(position),
                lag_seconds,
                updated_at,
                error,
                parked: parked.get(name).copied().unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// The events set aside, of one projection or of all, in log order.
    pub async fn parked(&self, name: Option<&str>) -> Result<Vec<Parked>, ProjectionError> {
        let rows = self
            .db
            .rows(
                &format!("SELECT name, position, event_type, error, parked_at FROM {PARKED} WHERE $1 = '' OR name = $1 ORDER BY position, name"),
                &[Val::from(name.unwrap_or(""))],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let text = |i: usize| r.get(i).and_then(Val::as_text).unwrap_or_default().to_owned();
                Parked {
                    name: text(0),
                    position: r.get(1).and_then(Val::as_int).and_then(|p| u64::try_from(p).ok()).unwrap_or(0),
                    event_type: text(2),
                    error: text(3),
                    parked_at: text(4),
                }
            })
            .collect())
    }

    /// Applies a parked event now (after its cause was fixed, e.g. by an
    /// upgrade) and forgets it; still failing, it stays parked with the new
    /// error. It is applied after the events that came later: for tables
    /// exactly as an in-order fold, rebuild the projection instead.
    pub async fn retry(&self, name: &str, position: u64) -> Result<Result<(), String>, ProjectionError> {
        let p = self.projection(name)?;
        let events = self.store.read_all(position, 1).await?;
        let Some(r) = events.first().filter(|r| r.global_position == position) else {
            return Ok(Err(format!("there is no event at position {position}")));
        };
        let mut tx = self.db.begin().await?;
        match apply_all(p, &mut tx, "", std::slice::from_ref(r)).await {
            Ok(()) => {
                tx.exec(
                    &format!("DELETE FROM {PARKED} WHERE name = $1 AND position = $2"),
                    &[Val::from(name), Val::from(position)],
                )
                .await?;
                tx.commit().await?;
                Ok(Ok(()))
            }
            Err(f) => {
                let _ = tx.rollback().await;
                let (_, message) = f.describe();
                let mut tx = self.db.begin().await?;
                park(&mut tx, name, position, &r.event_type, &message).await?;
                tx.commit().await?;
                Ok(Err(message))
            }
        }
    }

    /// Forgets a parked event without applying it.
    pub async fn skip(&self, name: &str, position: u64) -> Result<bool, ProjectionError> {
        self.projection(name)?;
        let n = self
            .db
            .exec(
                &format!("DELETE FROM {PARKED} WHERE name = $1 AND position = $2"),
                &[Val::from(name), Val::from(position)],
            )
            .await?;
        Ok(n == 1)
    }

    /// Rebuilds a projection from position 0 into fresh tables, then swaps
    /// them in with the new checkpoint in one transaction: readers see the
    /// old tables or the new ones, never half of either. Clears a stop.
    /// Returns the events replayed.
    pub async fn rebuild(&self, name: &str) -> Result<u64, ProjectionError> {
        const FRESH: &str = "__rebuild";
        let p = self.projection(name)?;
        for t in p.tables() {
            self.db.exec(&format!("DROP TABLE IF EXISTS {t}{FRESH}"), &[]).await?;
        }
        for ddl in p.create(FRESH) {
            self.db.exec(&ddl, &[]).await?;
        }
        let mut position = 0u64;
        let mut replayed = 0u64;
        // Events it cannot apply are parked again (the old parks go with
        // the old tables), and it goes on past them.
        let mut parks: Vec<(u64, String, String)> = Vec::new();
        loop {
            let mut events = self.store.read_all(position + 1, self.batch.max(1000)).await?;
            let head = self.store.head_position().await?;
            let mut tx = self.db.begin().await?;
            if let Err(f) = apply_all(p, &mut tx, FRESH, &events).await {
                let _ = tx.rollback().await;
                let (at, message) = f.pinpoint(&self.db, p, FRESH, &events).await;
                let Some(bad) = events.iter().find(|r| r.global_position == at).cloned() else {
                    return Err(ProjectionError::Db(sqlx::Error::Protocol(format!(
                        "rebuild of `{name}` stopped at position {at}: {message}"
                    ))));
                };
                parks.push((at, bad.event_type.clone(), message));
                events.retain(|r| r.global_position < at);
                tx = self.db.begin().await?;
                if let Err(f) = apply_all(p, &mut tx, FRESH, &events).await {
                    let _ = tx.rollback().await;
                    return Err(ProjectionError::Db(sqlx::Error::Protocol(format!(
                        "rebuild of `{name}` stopped: {}",
                        f.describe().1
                    ))));
                }
                // Resume right after the parked event.
                events.push(bad);
            }
            replayed += events.len() as u64;
            position = events.last().map_or(position, |e| e.global_position);
            if position < head {
                tx.commit().await?;
                continue;
            }
            // Caught up: swap in the same transaction as the last batch.
            for t in p.tables() {
                tx.exec(&format!("DROP TABLE IF EXISTS {t}"), &[]).await?;
                tx.exec(&format!("ALTER TABLE {t}{FRESH} RENAME TO {t}"), &[]).await?;
            }
            for ddl in p.indexes() {
                tx.exec(&ddl, &[]).await?;
            }
            tx.exec(
                &format!("UPDATE {CHECKPOINTS} SET position = $1, generation = generation + 1, updated_at = $2, error = NULL, error_position = NULL WHERE name = $3"),
                &[Val::from(position), Val::from(cairn_events::clock::ClockHandle::default().now().to_rfc3339()), Val::from(name)],
            )
            .await?;
            tx.exec(&format!("DELETE FROM {PARKED} WHERE name = $1"), &[Val::from(name)]).await?;
            for (at, event_type, message) in &parks {
                park(&mut tx, name, *at, event_type, message).await?;
            }
            tx.commit().await?;
            return Ok(replayed);
        }
    }
}

enum Failure {
    Decode(u64, String),
    /// The batch failed; the position of its first wanted event.
    Batch(u64, DbError),
    Db(DbError),
}

impl Failure {
    fn describe(&self) -> (u64, String) {
        match self {
            Failure::Decode(at, m) => (*at, m.clone()),
            Failure::Batch(at, e) => (*at, format!("the batch from position {at} cannot be applied: {e}")),
            Failure::Db(e) => (0, e.to_string()),
        }
    }

    /// The event at fault, found by applying one by one when the batch failed.
    async fn pinpoint(self, db: &ReadDb, p: &dyn Projection, suffix: &str, events: &[RecordedEvent]) -> (u64, String) {
        match &self {
            Failure::Batch(..) => match locate(db, p, suffix, events).await {
                Some(found) => found,
                None => self.describe(),
            },
            _ => self.describe(),
        }
    }
}

fn is_transient(e: &DbError) -> bool {
    matches!(e, DbError::Io(_) | DbError::PoolTimedOut | DbError::PoolClosed | DbError::WorkerCrashed)
}

async fn apply_all(p: &dyn Projection, tx: &mut Tx, suffix: &str, events: &[RecordedEvent]) -> Result<(), Failure> {
    let mut decoded = Vec::with_capacity(events.len());
    for r in events.iter().filter(|r| p.wants(&r.event_type)) {
        let event = Event::decode(r).map_err(|e| {
            Failure::Decode(
                r.global_position,
                format!("{} at position {} cannot be decoded: {e}", r.event_type, r.global_position),
            )
        })?;
        decoded.push((r, event));
    }
    if decoded.is_empty() {
        return Ok(());
    }
    let refs: Vec<(&RecordedEvent, &Event)> = decoded.iter().map(|(r, e)| (*r, e)).collect();
    match p.apply_batch(tx, suffix, &refs).await {
        Ok(()) => Ok(()),
        Err(e) if is_transient(&e) => Err(Failure::Db(e)),
        // Name the event at fault: apply one by one (the caller rolls back).
        Err(batch_error) => {
            let at = decoded.first().map_or(0, |(r, _)| r.global_position);
            Err(Failure::Batch(at, batch_error))
        }
    }
}

/// Applies `events` one by one in a transaction that is rolled back, to
/// find the first that fails and why.
async fn locate(db: &ReadDb, p: &dyn Projection, suffix: &str, events: &[RecordedEvent]) -> Option<(u64, String)> {
    let mut tx = db.begin().await.ok()?;
    let mut found = None;
    for r in events.iter().filter(|r| p.wants(&r.event_type)) {
        let Ok(event) = Event::decode(r) else { continue };
        if let Err(e) = p.apply(&mut tx, Input { suffix, recorded: r, event: &event }).await {
            found = Some((
                r.global_position,
                format!("{} at position {} cannot be applied: {e}", r.event_type, r.global_position),
            ));
            break;
        }
    }
    let _ = tx.rollback().await;
    found
}
