//! Schema migrations, embedded in the binary, and the "newer than this
//! binary" check.

use sqlx::migrate::{MigrateError, Migrator};

use crate::store::{StoreError, StoreResult};

static SQLITE: Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("../../migrations/postgres");

fn newest(m: &Migrator) -> i64 {
    m.iter().map(|m| m.version).max().unwrap_or(0)
}

fn map_err(database: &str, m: &Migrator, e: MigrateError) -> StoreError {
    match e {
        MigrateError::VersionMissing(found) => {
            StoreError::SchemaTooNew { database: database.to_owned(), found, supported: newest(m) }
        }
        MigrateError::Execute(source) if !matches!(source, sqlx::Error::Database(_)) => {
            StoreError::Unavailable { database: database.to_owned(), source }
        }
        source => StoreError::Migration { database: database.to_owned(), source },
    }
}

pub(crate) async fn run_sqlite(pool: &sqlx::SqlitePool, database: &str) -> StoreResult<()> {
    SQLITE.run(pool).await.map_err(|e| map_err(database, &SQLITE, e))
}

pub(crate) async fn run_postgres(pool: &sqlx::PgPool, database: &str) -> StoreResult<()> {
    POSTGRES.run(pool).await.map_err(|e| map_err(database, &POSTGRES, e))
}
