//! `OutboxMigration`, re-exported at the crate root (its one public path).

use super::{create_tables_with, drop_tables_with};
use crate::config::OutboxConfig;

/// A `sea-orm-migration` migration that creates the outbox tables; add it to your `Migrator`.
///
/// Its name is stable (`m20261130_000001_create_outbox_tables`), so it is applied once.
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
#[derive(Debug, Clone, Default)]
pub struct OutboxMigration {
    config: OutboxConfig,
}

impl OutboxMigration {
    /// The migration for tables with the names of `config` (`default()` for the default ones).
    pub fn new_with(config: &OutboxConfig) -> Self {
        Self {
            config: config.clone(),
        }
    }
}

impl sea_orm_migration::MigrationName for OutboxMigration {
    fn name(&self) -> &str {
        "m20261130_000001_create_outbox_tables"
    }
}

#[async_trait::async_trait]
impl sea_orm_migration::MigrationTrait for OutboxMigration {
    async fn up(
        &self,
        manager: &sea_orm_migration::SchemaManager,
    ) -> Result<(), sea_orm_migration::DbErr> {
        create_tables_with(manager.get_connection(), &self.config)
            .await
            .map_err(into_db_err)
    }

    async fn down(
        &self,
        manager: &sea_orm_migration::SchemaManager,
    ) -> Result<(), sea_orm_migration::DbErr> {
        drop_tables_with(manager.get_connection(), &self.config)
            .await
            .map_err(into_db_err)
    }
}

fn into_db_err(e: crate::Error) -> sea_orm::DbErr {
    match e {
        crate::Error::Db(e) => e,
        other => sea_orm::DbErr::Migration(other.report()),
    }
}
