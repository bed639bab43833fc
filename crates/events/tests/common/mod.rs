//! Test harness shared by the event store tests: a fresh SQLite file or a
//! fresh PostgreSQL schema per test (see `cairn_events::testing`).
#![allow(dead_code, missing_docs, clippy::large_enum_variant)]

use std::path::PathBuf;
use std::sync::Arc;

use cairn_events::EventStore;
use cairn_events::postgres::{PgConfig, PgStore};
use cairn_events::sqlite::{SqliteConfig, SqliteStore};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Executor};

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
        let store = PgStore::connect_with(
            opts.clone(),
            format!("test schema {schema}"),
            PgConfig { max_connections: 12, ..PgConfig::default() },
        )
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

pub use cairn_events::testing::fresh_pg_schema;

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
