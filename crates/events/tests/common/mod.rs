//! Test harness shared by the event store tests: a fresh SQLite file or a
//! fresh PostgreSQL schema per test.
//!
//! PostgreSQL tests read `CAIRN_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When the server cannot be
//! reached they are skipped with a message, except under `CI=true`, where
//! they fail.
#![allow(dead_code, missing_docs, clippy::large_enum_variant)]

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use cairn_events::postgres::{PgConfig, PgStore};
use cairn_events::sqlite::{SqliteConfig, SqliteStore};
use cairn_events::{EventStore, redact_url};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn pg_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

pub fn under_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

pub enum Harness {
    Sqlite { dir: tempfile::TempDir, path: PathBuf, store: Arc<SqliteStore> },
    Postgres { opts: PgConnectOptions, schema: String, store: Arc<PgStore> },
}

impl Harness {
    pub async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cairn.db");
        let store = SqliteStore::open(&path, SqliteConfig::default()).await.expect("open sqlite");
        Harness::Sqlite { dir, path, store }
    }

    /// A store in a fresh schema, or `None` (skip) when PostgreSQL is
    /// unreachable outside CI.
    pub async fn postgres() -> Option<Harness> {
        let (opts, schema) = fresh_pg_schema().await?;
        let store =
            PgStore::connect_with(opts.clone(), format!("test schema {schema}"), PgConfig { max_connections: 12 })
                .await
                .expect("connect to test schema");
        Some(Harness::Postgres { opts, schema, store })
    }

    pub fn store(&self) -> Arc<dyn EventStore> {
        match self {
            Harness::Sqlite { store, .. } => store.clone(),
            Harness::Postgres { store, .. } => store.clone(),
        }
    }

    /// A second, independent store instance on the same database (another
    /// process, as far as caches go).
    pub async fn reopen(&self) -> Arc<dyn EventStore> {
        match self {
            Harness::Sqlite { path, .. } => SqliteStore::open(path, SqliteConfig::default()).await.expect("reopen"),
            Harness::Postgres { opts, schema, .. } => {
                PgStore::connect_with(opts.clone(), format!("test schema {schema}"), PgConfig::default())
                    .await
                    .expect("reopen")
            }
        }
    }

    /// Runs raw SQL as an attacker with write access to the database would.
    pub async fn exec(&self, sql: &str) {
        let sql = AssertSqlSafe(sql.to_owned());
        match self {
            Harness::Sqlite { store, .. } => {
                store.raw_pool().execute(sql).await.expect("raw sql");
            }
            Harness::Postgres { store, .. } => {
                store.raw_pool().execute(sql).await.expect("raw sql");
            }
        }
    }

    /// Like [`exec`], returning the error instead of panicking.
    pub async fn try_exec(&self, sql: &str) -> Result<(), sqlx::Error> {
        let sql = AssertSqlSafe(sql.to_owned());
        match self {
            Harness::Sqlite { store, .. } => store.raw_pool().execute(sql).await.map(|_| ()),
            Harness::Postgres { store, .. } => store.raw_pool().execute(sql).await.map(|_| ()),
        }
    }

    /// Drops the immutability triggers, as an attacker would first.
    pub async fn disable_immutability(&self) {
        match self {
            Harness::Sqlite { .. } => {
                self.exec("DROP TRIGGER events_are_immutable_update").await;
                self.exec("DROP TRIGGER events_are_immutable_delete").await;
            }
            Harness::Postgres { .. } => self.exec("ALTER TABLE events DISABLE TRIGGER USER").await,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Harness::Postgres { .. })
    }
}

/// Creates a fresh schema and returns options whose search_path is it.
/// Drops test schemas older than an hour left by earlier runs.
pub async fn fresh_pg_schema() -> Option<(PgConnectOptions, String)> {
    let url = pg_url();
    let mut conn = match PgConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) if under_ci() => panic!("PostgreSQL at {} is unreachable and CI=true: {e}", redact_url(&url)),
        Err(e) => {
            eprintln!("SKIPPED: PostgreSQL at {} is unreachable ({e}); set CAIRN_TEST_POSTGRES_URL", redact_url(&url));
            return None;
        }
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let stale: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'cairn\\_t\\_%' AND split_part(nspname, '_', 3)::bigint < $1",
    )
    .bind((now - 3600) as i64)
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    for s in stale {
        let _ = conn.execute(AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {s} CASCADE"))).await;
    }
    let schema = format!("cairn_t_{now}_{}", uuid::Uuid::now_v7().simple());
    conn.execute(AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).await.expect("create schema");
    let opts = PgConnectOptions::from_str(&url).expect("parse url").options([("search_path", schema.as_str())]);
    Some((opts, schema))
}

/// Generates one `#[tokio::test]` per backend for each named async fn taking
/// a [`Harness`].
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::Harness::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(h) = $crate::common::Harness::postgres().await else { return };
                    super::$name(h).await
                }
            )*
        }
    };
}
