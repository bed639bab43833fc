//! Opening an event store from a database URL.

use std::sync::Arc;

use crate::postgres::{PgConfig, PgStore};
use crate::sqlite::{Durability, SqliteConfig, SqliteStore};
use crate::store::{EventStore, StoreError, StoreResult, redact_url};

/// The embedded default database.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.cairn/cairn.db";

/// Opens the store a URL names: `sqlite://PATH[?synchronous=full|normal]`
/// (or a bare file path) or `postgres://…`.
pub async fn open(url: &str) -> StoreResult<Arc<dyn EventStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store: Arc<dyn EventStore> = PgStore::connect(url, PgConfig::default()).await?;
        return Ok(store);
    }
    let is_sqlite = url.starts_with("sqlite:") || !url.contains("://");
    if !is_sqlite {
        return Err(StoreError::Unavailable {
            database: redact_url(url),
            source: sqlx::Error::Configuration(
                "unsupported database URL: use sqlite://PATH or postgres://USER@HOST:PORT/DB".into(),
            ),
        });
    }
    let mut config = SqliteConfig::default();
    if let Some((_, query)) = url.split_once('?') {
        for kv in query.split('&') {
            match kv.split_once('=') {
                Some(("synchronous", v)) if v.eq_ignore_ascii_case("full") => config.durability = Durability::Full,
                Some(("synchronous", v)) if v.eq_ignore_ascii_case("normal") => config.durability = Durability::Normal,
                _ => {
                    return Err(StoreError::Unavailable {
                        database: url.to_owned(),
                        source: sqlx::Error::Configuration(
                            format!("unknown SQLite URL parameter `{kv}`: the only one is synchronous=full|normal")
                                .into(),
                        ),
                    });
                }
            }
        }
    }
    let store: Arc<dyn EventStore> = SqliteStore::open_url(url, config).await?;
    Ok(store)
}

/// Opens an event log that must already exist: what read commands use, so
/// a mistyped `--database` says so instead of creating an empty log (and
/// its directories). PostgreSQL databases are never created by Cairn.
pub async fn open_existing(url: &str) -> StoreResult<Arc<dyn EventStore>> {
    let is_pg = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if !is_pg {
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        if !path.is_empty() && path != ":memory:" && !std::path::Path::new(path).is_file() {
            return Err(StoreError::Unavailable {
                database: path.to_owned(),
                source: sqlx::Error::Configuration(
                    format!(
                        "there is no event log at {path}; check --database (or CAIRN_DATABASE_URL): \
                         commands that only read never create one, `cairn run` and `cairn serve` do"
                    )
                    .into(),
                ),
            });
        }
    }
    open(url).await
}
