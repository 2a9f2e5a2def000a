//! The outbox's tables: created from SQL files (one per backend) or through a migration.

use sea_orm::{ConnectionTrait, DbBackend};

use crate::config::OutboxConfig;
use crate::driver;
use crate::error::Result;

/// Creates the outbox tables and their indexes, with the default names, if they do not exist
/// (idempotent).
///
/// Prefer [`OutboxMigration`](crate::OutboxMigration) in an application that uses
/// `sea-orm-migration`; this is for the others, for tests and for examples.
pub async fn create_tables(db: &impl ConnectionTrait) -> Result<()> {
    create_tables_with(db, &OutboxConfig::default()).await
}

/// [`create_tables`] with the names of `config`.
pub async fn create_tables_with(db: &impl ConnectionTrait, config: &OutboxConfig) -> Result<()> {
    let backend = db.get_database_backend();
    for stmt in statements_with(backend, config) {
        db.execute_unprepared(&stmt).await?;
    }
    if backend == DbBackend::Sqlite {
        // A table created by an earlier version gets the claim token (PostgreSQL and MariaDB
        // do this with `ADD COLUMN IF NOT EXISTS`, which SQLite lacks).
        let table = crate::config::quote(backend, config.messages_table());
        let probe = format!("SELECT claim_token FROM {table} WHERE 1 = 0");
        if db.execute_unprepared(&probe).await.is_err() {
            db.execute_unprepared(&format!(
                "ALTER TABLE {table} ADD COLUMN claim_token BIGINT NULL"
            ))
            .await?;
        }
    }
    Ok(())
}

/// Checks that every outbox table exists with the columns this version uses (what
/// `Relay::build` checks at start). Fails with [`Error::Schema`](crate::Error::Schema) naming
/// the first table that is missing or outdated. It only reads: unlike `Relay::build`, it
/// leaves a SQLite file's journal mode as it is.
pub async fn check_tables(db: &sea_orm::DatabaseConnection) -> Result<()> {
    check_tables_with(db, &OutboxConfig::default()).await
}

/// [`check_tables`] with the names of `config`.
pub async fn check_tables_with(
    db: &sea_orm::DatabaseConnection,
    config: &OutboxConfig,
) -> Result<()> {
    driver::cached(db.get_database_backend(), config)
        .check_schema(db)
        .await
}

/// Drops the outbox tables with the default names (and everything in them).
pub async fn drop_tables(db: &impl ConnectionTrait) -> Result<()> {
    drop_tables_with(db, &OutboxConfig::default()).await
}

/// [`drop_tables`] with the names of `config`.
pub async fn drop_tables_with(db: &impl ConnectionTrait, config: &OutboxConfig) -> Result<()> {
    let driver = driver::for_backend(db.get_database_backend(), config);
    for stmt in driver.drop_statements() {
        db.execute_unprepared(&stmt).await?;
    }
    Ok(())
}

/// The DDL statements for `backend`, with the default names.
pub fn statements(backend: DbBackend) -> Vec<String> {
    statements_with(backend, &OutboxConfig::default())
}

/// [`statements`] with the names of `config`.
pub fn statements_with(backend: DbBackend, config: &OutboxConfig) -> Vec<String> {
    driver::for_backend(backend, config).create_statements()
}

/// `OutboxMigration` lives here and is public at the crate root only.
#[cfg(feature = "migration")]
pub(crate) mod migration;
