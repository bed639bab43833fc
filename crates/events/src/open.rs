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
