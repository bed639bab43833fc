//! The read-model database: SQLite or PostgreSQL behind one small interface.
//! Projection SQL is written once with `$1`-style parameters, which both
//! backends accept.
#![allow(clippy::disallowed_methods)] // the read models' store: its SQL lives here

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Postgres, Row, Sqlite};

/// A read-model database error.
pub type DbError = sqlx::Error;

/// A value bound to or read from a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// Text.
    Text(String),
    /// A 64-bit integer.
    Int(i64),
    /// SQL NULL.
    Null,
}

impl Val {
    /// Text or NULL.
    pub fn opt_text(v: Option<impl Into<String>>) -> Val {
        v.map_or(Val::Null, |s| Val::Text(s.into()))
    }

    /// The text, if it is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if it is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl std::fmt::Display for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad` honours width and alignment (`{:<40}`).
        match self {
            Val::Text(s) => f.pad(s),
            Val::Int(i) => f.pad(&i.to_string()),
            Val::Null => f.pad(""),
        }
    }
}

impl From<&str> for Val {
    fn from(s: &str) -> Self {
        Val::Text(s.to_owned())
    }
}

impl From<String> for Val {
    fn from(s: String) -> Self {
        Val::Text(s)
    }
}

impl From<i64> for Val {
    fn from(i: i64) -> Self {
        Val::Int(i)
    }
}

impl From<u64> for Val {
    fn from(i: u64) -> Self {
        Val::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}

impl From<u32> for Val {
    fn from(i: u32) -> Self {
        Val::Int(i64::from(i))
    }
}

/// The read-model database.
#[derive(Clone, Debug)]
pub enum ReadDb {
    /// An SQLite file (WAL).
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Pg(PgPool),
}

/// An open transaction on the read-model database.
pub enum Tx {
    /// SQLite.
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    /// PostgreSQL.
    Pg(sqlx::Transaction<'static, Postgres>),
}

macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Val::Text(s) => q.bind(s.clone()),
                Val::Int(i) => q.bind(*i),
                Val::Null => q.bind(Option::<String>::None),
            };
        }
        q
    }};
}

/// A result row as values (integers, text or NULL), for either backend.
macro_rules! row_vals {
    ($r:expr) => {{
        let r = $r;
        (0..r.len())
            .map(|i| {
                if let Ok(Some(v)) = r.try_get::<Option<i64>, _>(i) {
                    Val::Int(v)
                } else if let Ok(Some(v)) = r.try_get::<Option<String>, _>(i) {
                    Val::Text(v)
                } else {
                    Val::Null
                }
            })
            .collect::<Vec<Val>>()
    }};
}

fn sqlite_row(r: &sqlx::sqlite::SqliteRow) -> Vec<Val> {
    row_vals!(r)
}

fn pg_row(r: &sqlx::postgres::PgRow) -> Vec<Val> {
    row_vals!(r)
}

/// Where the read models live by default for an event store at `url`: on
/// PostgreSQL the same database (their own tables); on SQLite a sibling file
/// (`cairn.db` → `cairn-read.db`), because SQLite has one writer per file and
/// projection batches there would hold up the engine's appends (W10 with
/// in-process projections measured 246 runs/s sharing the file against
/// about 2,000 with its own).
pub fn default_read_url(url: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return url.to_owned();
    }
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let p = Path::new(path);
    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("cairn");
    let file = match p.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}-read.{ext}"),
        None => format!("{stem}-read"),
    };
    format!("sqlite://{}", p.with_file_name(file).display())
}

impl ReadDb {
    /// Opens the read-model database at `url` (`sqlite://PATH` or a path, or
    /// `postgres://…`), with the same URL forms as the event store.
    pub async fn open(url: &str) -> Result<ReadDb, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return ReadDb::postgres(PgConnectOptions::from_str(url)?).await;
        }
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        ReadDb::sqlite(Path::new(path)).await
    }

    /// An SQLite read-model database in this file.
    pub async fn sqlite(path: &Path) -> Result<ReadDb, DbError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        // Owner-only, as the event log (its WAL files take this mode).
        cairn_events::sqlite::create_private(path)?;
        // synchronous=NORMAL: in WAL mode a commit is still atomic and the
        // file consistent after any crash; power loss may take the newest
        // commits, but each takes its checkpoint with it (same transaction),
        // so the projections apply those events again from the log. Every
        // table here is derived from the log: no fsync per catch-up.
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        Ok(ReadDb::Sqlite(SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?))
    }

    /// A PostgreSQL read-model database.
    pub async fn postgres(opts: PgConnectOptions) -> Result<ReadDb, DbError> {
        let opts = match opts.get_application_name() {
            Some(_) => opts,
            None => opts.application_name("cairn-projections"),
        };
        Ok(ReadDb::Pg(PgPoolOptions::new().max_connections(6).connect_with(opts).await?))
    }

    /// Begins a write transaction.
    pub async fn begin(&self) -> Result<Tx, DbError> {
        Ok(match self {
            // IMMEDIATE: take the write lock now, not on the first write.
            ReadDb::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            ReadDb::Pg(p) => Tx::Pg(p.begin().await?),
        })
    }

    /// Runs one statement outside a transaction.
    pub async fn exec(&self, sql: &str, args: &[Val]) -> Result<u64, DbError> {
        Ok(match self {
            ReadDb::Sqlite(p) => {
                bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), args).execute(p).await?.rows_affected()
            }
            ReadDb::Pg(p) => bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), args).execute(p).await?.rows_affected(),
        })
    }

    /// Every row of a query, each as a list of values.
    pub async fn rows(&self, sql: &str, args: &[Val]) -> Result<Vec<Vec<Val>>, DbError> {
        Ok(match self {
            ReadDb::Sqlite(p) => bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
                .fetch_all(p)
                .await?
                .iter()
                .map(sqlite_row)
                .collect(),
            ReadDb::Pg(p) => {
                bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), args).fetch_all(p).await?.iter().map(pg_row).collect()
            }
        })
    }

    /// Whether this is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, ReadDb::Pg(_))
    }
}

impl Tx {
    /// Runs one statement; returns the rows it changed.
    pub async fn exec(&mut self, sql: &str, args: &[Val]) -> Result<u64, DbError> {
        Ok(match self {
            Tx::Sqlite(t) => {
                bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), args).execute(&mut **t).await?.rows_affected()
            }
            Tx::Pg(t) => {
                bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), args).execute(&mut **t).await?.rows_affected()
            }
        })
    }

    /// The first row of a query, if any.
    pub async fn row(&mut self, sql: &str, args: &[Val]) -> Result<Option<Vec<Val>>, DbError> {
        Ok(match self {
            Tx::Sqlite(t) => bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
                .fetch_optional(&mut **t)
                .await?
                .map(|r| sqlite_row(&r)),
            Tx::Pg(t) => bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
                .fetch_optional(&mut **t)
                .await?
                .map(|r| pg_row(&r)),
        })
    }

    /// Every row of a query.
    pub async fn rows(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Vec<Val>>, DbError> {
        Ok(match self {
            Tx::Sqlite(t) => bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
                .fetch_all(&mut **t)
                .await?
                .iter()
                .map(sqlite_row)
                .collect(),
            Tx::Pg(t) => bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
                .fetch_all(&mut **t)
                .await?
                .iter()
                .map(pg_row)
                .collect(),
        })
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Pg(t) => t.commit().await,
        }
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(t) => t.rollback().await,
            Tx::Pg(t) => t.rollback().await,
        }
    }
}
