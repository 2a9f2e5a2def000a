//! Operating the outbox: counts, status, listings, dead letters, relays, requeue and discard
//! (one message or every one a filter matches).

mod bulk;
mod filter;
mod listing;
mod query;
mod stats;
mod status;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::config::OutboxConfig;
use crate::driver::{self, Driver};
use crate::entity::DeliveryStatus;
use crate::error::Result;
use crate::wake;

pub use filter::MessageFilter;
pub use listing::{MessageDetail, MessageSummary};
pub(crate) use query::{age, table};
pub use stats::{HandlerReport, HandlerStats, Lag, MinuteCounts};
pub use status::{Backlog, DeadGroup, Status};

/// Every error kind the relay stores (`last_error_kind` of a message or a delivery): the
/// kinds of the core's errors (`outbox_seaorm_core::Error::kind`), and the relay's own
/// (`delivery_dead`, `crashed`, `outcome_unwritable`). Filters refuse any other value, which could match nothing.
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
pub(crate) const ERROR_KINDS: [&str; 16] = [
    "handler_failed",
    "handler_timed_out",
    "handler_panicked",
    "deserialize",
    "unknown_version",
    "unknown_event_type",
    "upcast",
    "missing_state",
    "serialize",
    "invalid_name",
    "duplicate_handler",
    "duplicate_event_type",
    "catalog_format",
    "delivery_dead",
    "crashed",
    "outcome_unwritable",
];

/// Operations on an outbox for operators and dashboards.
///
/// ```no_run
/// # async fn f(db: sea_orm::DatabaseConnection) -> outbox_seaorm::Result<()> {
/// use outbox_seaorm::Admin;
///
/// let admin = Admin::new(db);
/// for dead in admin.dead_letters(50).await? {
///     println!("{} {}: {:?}", dead.message_id, dead.event_type, dead.last_error);
///     admin.requeue(dead.message_id).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Admin {
    db: DatabaseConnection,
    driver: Arc<dyn Driver>,
    config: OutboxConfig,
}

/// How many messages are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct OutboxCounts {
    /// Waiting, in flight or waiting for a retry.
    pub pending: u64,
    /// Delivered and not yet removed by retention.
    pub delivered: u64,
    /// Dead letters.
    pub dead: u64,
    /// Messages no handler or route took (never counted as delivered): kept until requeued
    /// or discarded.
    pub unhandled: u64,
    /// Pending messages whose event type the relays that saw them did not know (written by a
    /// newer version): they wait for a relay that knows the type.
    pub unknown_event_type: u64,
}

/// A dead message, with the state of each of its deliveries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message id.
    pub message_id: Uuid,
    /// Its position in the outbox.
    pub sequence: i64,
    /// Its position in its aggregate's stream.
    pub position: i64,
    /// The event type.
    pub event_type: String,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// Times its handlers ran to an outcome.
    pub attempts: u32,
    /// The last error recorded on the message.
    pub last_error: Option<String>,
    /// The last error's kind.
    pub last_error_kind: Option<String>,
    /// When the event was recorded.
    pub occurred_at: DateTime<Utc>,
    /// Per-handler states (empty when the whole message failed, e.g. it crashed its relay).
    pub deliveries: Vec<DeliveryInfo>,
}

/// One handler's state for a message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DeliveryInfo {
    /// The handler's name.
    pub handler: String,
    /// Delivered, failed or dead.
    pub status: DeliveryStatus,
    /// Times this handler ran for the message (failures and the final success alike).
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// The last error's kind.
    pub last_error_kind: Option<String>,
}

/// A relay, as it records itself in the relays table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RelayInfo {
    /// Its id (`locked_by` of the messages it holds).
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// The library version it runs.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat (every third of its lease while it runs).
    pub heartbeat_at: DateTime<Utc>,
    /// When it shut down, if it did.
    pub stopped_at: Option<DateTime<Utc>>,
    /// Its lease.
    #[serde(with = "millis")]
    pub lease: std::time::Duration,
    /// Time since its last heartbeat, by the database's clock.
    #[serde(with = "millis")]
    pub silent_for: std::time::Duration,
    /// Messages it held at its last heartbeat.
    pub held: u64,
    /// What it handles.
    pub handles: Handles,
}

impl RelayInfo {
    /// Running and heart-beating: not stopped, and heard from within its lease.
    pub fn is_alive(&self) -> bool {
        self.stopped_at.is_none() && self.silent_for < self.lease
    }
}

/// What a relay handles: its handlers (with their event types), its routes, and the event
/// types it knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Handles {
    /// `(handler name, event type)`.
    pub handlers: Vec<(String, String)>,
    /// Route names.
    pub routes: Vec<String>,
    /// Routes it leaves to change data capture (`Route::published_by_cdc`): Debezium publishes
    /// them, the relay does not. Absent in rows written before it existed.
    #[serde(default)]
    pub cdc_routes: Vec<String>,
    /// Every event type it knows.
    pub event_types: Vec<String>,
}

mod millis {
    pub(super) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u128(d.as_millis())
    }
}

impl Admin {
    /// An admin on the default tables.
    pub fn new(db: DatabaseConnection) -> Self {
        Self::new_with(db, &OutboxConfig::default())
    }

    /// An admin on the tables named by `config`.
    pub fn new_with(db: DatabaseConnection, config: &OutboxConfig) -> Self {
        Self {
            driver: driver::cached(db.get_database_backend(), config),
            db,
            config: config.clone(),
        }
    }

    /// Counts messages by state.
    pub async fn counts(&self) -> Result<OutboxCounts> {
        self.driver.counts(&self.db).await
    }

    /// Puts a dead or unhandled message back in the queue with a fresh retry budget for its
    /// dead deliveries (deliveries that succeeded are not repeated), releases the messages of its
    /// aggregate held back behind it, and wakes the relays (this process's at once, others'
    /// through `NOTIFY` when [`OutboxConfig::pg_notify`] is on).
    pub async fn requeue(&self, message_id: Uuid) -> Result<()> {
        self.driver.requeue(&self.db, message_id, None).await?;
        self.wake().await
    }

    /// Like [`requeue`](Self::requeue), for one handler's dead delivery only.
    pub async fn requeue_delivery(&self, message_id: Uuid, handler: &str) -> Result<()> {
        self.driver
            .requeue(&self.db, message_id, Some(handler))
            .await?;
        self.wake().await
    }

    /// Deletes an undelivered message for good (a poison message you decided to drop) and
    /// releases the messages of its aggregate held back behind it.
    pub async fn discard(&self, message_id: Uuid) -> Result<()> {
        self.driver.discard(&self.db, message_id).await?;
        self.wake().await
    }

    /// Every relay recorded: running ones, ones that stopped heart-beating (crashed or hung),
    /// and ones that shut down in the last day.
    pub async fn relays(&self) -> Result<Vec<RelayInfo>> {
        self.driver.relays(&self.db).await
    }

    /// The oldest dead letters, up to `limit`.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        self.driver.dead_letters(&self.db, limit).await
    }

    async fn wake(&self) -> Result<()> {
        wake::notify();
        self.driver.notify(&self.db).await
    }
}
