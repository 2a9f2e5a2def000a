//! SeaORM entities of the outbox tables, for your own queries and dashboards.
//!
//! They name the default tables (`outbox_messages`, `outbox_deliveries`, `outbox_inbox`); the
//! framework itself builds its SQL from [`OutboxConfig`](crate::OutboxConfig), so it also works
//! with other names.

pub mod delivery;
pub mod inbox;
pub mod message;

use sea_orm::entity::prelude::*;

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, serde::Serialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum MessageStatus {
    /// Waiting for delivery, being delivered, or waiting for a retry.
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Every handler and publisher succeeded.
    #[sea_orm(string_value = "delivered")]
    Delivered,
    /// At least one delivery is dead and none is still being retried; see the deliveries table.
    #[sea_orm(string_value = "dead")]
    Dead,
    /// Nothing took it: its event type had no handler and no route in the relay that claimed
    /// it (often the crate with the handler is not linked into that binary). Not delivered;
    /// kept by retention; `outbox requeue` puts it back in the queue once a handler exists.
    #[sea_orm(string_value = "unhandled")]
    Unhandled,
}

/// Where one handler's delivery of a message stands. Rows exist only for messages that did not
/// go through on their first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, serde::Serialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DeliveryStatus {
    /// The handler succeeded; it is not run again.
    #[sea_orm(string_value = "delivered")]
    Delivered,
    /// The handler failed and will be retried.
    #[sea_orm(string_value = "failed")]
    Failed,
    /// The handler failed for good (attempts exhausted, or a permanent error).
    #[sea_orm(string_value = "dead")]
    Dead,
}

impl MessageStatus {
    /// The status stored as `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(MessageStatus::Pending),
            "delivered" => Some(MessageStatus::Delivered),
            "dead" => Some(MessageStatus::Dead),
            "unhandled" => Some(MessageStatus::Unhandled),
            _ => None,
        }
    }

    /// The stored name (`"pending"`, `"delivered"`, `"dead"`, `"unhandled"`).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Pending => "pending",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Dead => "dead",
            MessageStatus::Unhandled => "unhandled",
        }
    }

    /// Every status, in the order a listing offers them.
    pub const ALL: [MessageStatus; 4] = [
        MessageStatus::Pending,
        MessageStatus::Delivered,
        MessageStatus::Dead,
        MessageStatus::Unhandled,
    ];
}

impl DeliveryStatus {
    /// The stored name (`"delivered"`, `"failed"`, `"dead"`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Dead => "dead",
        }
    }

    /// The status stored as `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            "dead" => Some(DeliveryStatus::Dead),
            _ => None,
        }
    }
}
