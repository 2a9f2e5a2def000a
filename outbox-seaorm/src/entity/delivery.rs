//! The deliveries table: per-handler state of messages that did not go through at once.

use sea_orm::entity::prelude::*;

pub use super::DeliveryStatus;

/// The state of one handler (or publisher) for one message.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox_deliveries")]
pub struct Model {
    /// The message id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: Uuid,
    /// The handler's registered name.
    #[sea_orm(primary_key, auto_increment = false)]
    pub handler: String,
    /// Delivered, failed (to be retried) or dead.
    pub status: DeliveryStatus,
    /// Failed attempts so far.
    pub attempts: i32,
    /// The last error, with its chain.
    pub last_error: Option<String>,
    /// The last error's kind.
    pub last_error_kind: Option<String>,
    /// When this row last changed.
    pub updated_at: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
