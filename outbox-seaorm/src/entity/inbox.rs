//! The inbox table: which consumer processed which message.

use sea_orm::entity::prelude::*;

/// A message a consumer has processed; written in the consumer's own transaction.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox_inbox")]
pub struct Model {
    /// The consumer's name.
    #[sea_orm(primary_key, auto_increment = false)]
    pub consumer: String,
    /// The message id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: Uuid,
    /// When it was processed.
    pub processed_at: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
