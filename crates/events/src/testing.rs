//! Support for tests of Cairn's crates: a fresh PostgreSQL schema per test.
//!
//! PostgreSQL tests read `CAIRN_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When the server cannot be
//! reached they are skipped with a message, except under `CI=true`, where
//! they fail.
#![allow(clippy::disallowed_methods)] // test support: fresh schemas and seeds from the time

use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

use crate::postgres::{PgConfig, PgStore};
use crate::store::redact_url;

/// The default test database.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The test database URL.
pub fn pg_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// Whether tests run under CI (`CI=true`), where PostgreSQL is required.
pub fn under_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Creates a fresh schema and returns connect options whose search_path is
/// it, or `None` (skip) when PostgreSQL is unreachable outside CI. Drops test
/// schemas older than an hour that earlier runs left behind.
///
/// # Panics
/// Under `CI=true` when the server is unreachable.
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
    .bind(i64::try_from(now.saturating_sub(3600)).unwrap_or(0))
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    for s in stale {
        let _ = conn.execute(AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {s} CASCADE"))).await;
    }
    let schema = format!("cairn_t_{now}_{}", uuid::Uuid::now_v7().simple());
    if let Err(e) = conn.execute(AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).await {
        panic!("cannot create test schema {schema}: {e}");
    }
    let opts = match PgConnectOptions::from_str(&url) {
        Ok(o) => o.options([("search_path", schema.as_str())]),
        Err(e) => panic!("CAIRN_TEST_POSTGRES_URL does not parse: {e}"),
    };
    Some((opts, schema))
}

/// A PostgreSQL store in a fresh schema (see [`fresh_pg_schema`]).
pub async fn pg_store() -> Option<Arc<PgStore>> {
    let (opts, schema) = fresh_pg_schema().await?;
    match PgStore::connect_with(
        opts,
        format!("test schema {schema}"),
        PgConfig { max_connections: 12, ..PgConfig::default() },
    )
    .await
    {
        Ok(s) => Some(s),
        Err(e) => panic!("cannot open the test store: {e}"),
    }
}
