//! The messages table: one row per recorded event.

use sea_orm::entity::prelude::*;

pub use super::MessageStatus;

/// One outbox message. Its `id`, `aggregate_type`, `aggregate_id`, `event_type` and `payload`
/// columns are the ones Debezium's outbox event router reads, so change data capture can
/// replace the relay.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox_messages")]
pub struct Model {
    /// Position in the outbox: increases in commit order for one aggregate.
    #[sea_orm(primary_key)]
    pub seq: i64,
    /// The message id (UUIDv7).
    #[sea_orm(unique)]
    pub id: Uuid,
    /// The aggregate type (`"order"`).
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The event type name.
    pub event_type: String,
    /// The payload's schema version.
    pub event_version: i32,
    /// The event, as JSON.
    pub payload: Json,
    /// Correlation id, causation id, `traceparent`, extra headers.
    pub headers: Json,
    /// When the event was recorded.
    pub occurred_at: DateTimeUtc,
    /// Not to be delivered before this time (delayed events only).
    pub not_before: Option<DateTimeUtc>,
    /// When the message may next be claimed (recording time, not-before time, or next retry).
    pub available_at: DateTimeUtc,
    /// Pending, delivered or dead.
    pub status: MessageStatus,
    /// How many times a relay claimed it.
    pub attempts: i32,
    /// The relay holding it, while claimed.
    pub locked_by: Option<String>,
    /// When the claim expires.
    pub locked_until: Option<DateTimeUtc>,
    /// The last error, with its chain.
    pub last_error: Option<String>,
    /// The last error's kind (`handler_failed`, `deserialize`, ...).
    pub last_error_kind: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<DateTimeUtc>,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
