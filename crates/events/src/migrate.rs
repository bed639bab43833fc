//! Schema migrations, embedded in the binary, and the "newer than this
//! binary" check.

use std::sync::LazyLock;

use sqlx::SqlStr;
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};

use crate::store::{StoreError, StoreResult};

/// The migrations, `(version, description, sql)`, as `sqlx migrate` names
/// their files (`<version>_<description>.sql`). Built without sqlx's
/// `migrate!` macro, whose compile-time database drivers would double the
/// build of sqlx; the checksums are the same as the macro's.
fn migrator(files: &[(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .map(|(v, d, sql)| Migration::new(*v, (*d).into(), MigrationType::Simple, SqlStr::from_static(sql), false))
            .collect(),
    )
}

static SQLITE: LazyLock<Migrator> = LazyLock::new(|| {
    migrator(&[
        (20261122000001, "events", include_str!("../../../migrations/sqlite/20261122000001_events.sql")),
        (20261206000001, "health", include_str!("../../../migrations/sqlite/20261206000001_health.sql")),
        (20261206000002, "leases", include_str!("../../../migrations/sqlite/20261206000002_leases.sql")),
        (20261207000001, "tasks", include_str!("../../../migrations/sqlite/20261207000001_tasks.sql")),
    ])
});
static POSTGRES: LazyLock<Migrator> = LazyLock::new(|| {
    migrator(&[
        (20261122000001, "events", include_str!("../../../migrations/postgres/20261122000001_events.sql")),
        (20261206000001, "health", include_str!("../../../migrations/postgres/20261206000001_health.sql")),
        (20261206000002, "leases", include_str!("../../../migrations/postgres/20261206000002_leases.sql")),
        (20261207000001, "tasks", include_str!("../../../migrations/postgres/20261207000001_tasks.sql")),
    ])
});

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
