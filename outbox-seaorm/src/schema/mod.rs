//! The outbox's tables: created from SQL files (one per backend) or through a migration.

use sea_orm::{ConnectionTrait, DbBackend};

use crate::config::{OutboxConfig, base_name, quote};
use crate::error::Result;

const SQLITE: &str = include_str!("sqlite.sql");
const POSTGRES: &str = include_str!("postgres.sql");
const MYSQL: &str = include_str!("mysql.sql");

/// Creates the outbox tables and their indexes if they do not exist (idempotent).
///
/// Prefer [`OutboxMigration`] in an application that uses `sea-orm-migration`; this is for
/// the others, for tests and for examples.
pub async fn create_tables(db: &impl ConnectionTrait, config: &OutboxConfig) -> Result<()> {
    for stmt in statements(db.get_database_backend(), config) {
        db.execute_unprepared(&stmt).await?;
    }
    Ok(())
}

/// Drops the outbox tables (and everything in them).
pub async fn drop_tables(db: &impl ConnectionTrait, config: &OutboxConfig) -> Result<()> {
    let backend = db.get_database_backend();
    for table in [
        config.locks_table(),
        config.inbox_table(),
        config.deliveries_table(),
        config.messages_table(),
    ] {
        db.execute_unprepared(&format!("DROP TABLE IF EXISTS {}", quote(backend, table)))
            .await?;
    }
    Ok(())
}

/// The DDL statements for `backend`, with the configured names filled in.
pub fn statements(backend: DbBackend, config: &OutboxConfig) -> Vec<String> {
    let template = match backend {
        DbBackend::Postgres => POSTGRES,
        DbBackend::MySql => MYSQL,
        _ => SQLITE,
    };
    let mut sql = template.to_owned();
    for (key, name) in [
        ("messages", config.messages_table()),
        ("deliveries", config.deliveries_table()),
        ("inbox", config.inbox_table()),
        ("locks", config.locks_table()),
    ] {
        let base = base_name(name);
        let schema = match name.rsplit_once('.') {
            Some((schema, _)) => format!("{}.", quote(backend, schema)),
            None => String::new(),
        };
        sql = sql
            .replace(&format!("{{{key}_schema}}"), &schema)
            .replace(&format!("{{{key}_table}}"), &quote(backend, base))
            .replace(&format!("{{{key}_base}}"), base)
            .replace(&format!("{{{key}}}"), &quote(backend, name));
    }
    // Comments go first: they may contain `;`.
    let sql: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    sql.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A `sea-orm-migration` migration that creates the outbox tables; add it to your `Migrator`.
///
/// Its name is stable (`m20261129_000001_create_outbox_tables`), so it is applied once.
///
/// ```
/// use outbox_seaorm::OutboxMigration;
/// use sea_orm_migration::prelude::*;
///
/// pub struct Migrator;
///
/// #[async_trait::async_trait]
/// impl MigratorTrait for Migrator {
///     fn migrations() -> Vec<Box<dyn MigrationTrait>> {
///         vec![
///             // your own migrations ...
///             Box::new(OutboxMigration::default()),
///         ]
///     }
/// }
/// ```
#[cfg(feature = "migration")]
#[derive(Debug, Clone, Default)]
pub struct OutboxMigration {
    config: OutboxConfig,
}

#[cfg(feature = "migration")]
impl OutboxMigration {
    /// The migration for tables with other names.
    pub fn new(config: OutboxConfig) -> Self {
        Self { config }
    }
}

#[cfg(feature = "migration")]
impl sea_orm_migration::MigrationName for OutboxMigration {
    fn name(&self) -> &str {
        "m20261129_000001_create_outbox_tables"
    }
}

#[cfg(feature = "migration")]
#[async_trait::async_trait]
impl sea_orm_migration::MigrationTrait for OutboxMigration {
    async fn up(
        &self,
        manager: &sea_orm_migration::SchemaManager,
    ) -> Result<(), sea_orm_migration::DbErr> {
        create_tables(manager.get_connection(), &self.config)
            .await
            .map_err(into_db_err)
    }

    async fn down(
        &self,
        manager: &sea_orm_migration::SchemaManager,
    ) -> Result<(), sea_orm_migration::DbErr> {
        drop_tables(manager.get_connection(), &self.config)
            .await
            .map_err(into_db_err)
    }
}

#[cfg(feature = "migration")]
fn into_db_err(e: crate::Error) -> sea_orm::DbErr {
    match e {
        crate::Error::Db(e) => e,
        other => sea_orm::DbErr::Migration(other.to_string()),
    }
}
