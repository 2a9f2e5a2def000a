//! Operating the outbox: counts, dead letters, requeue, discard.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use uuid::Uuid;

use crate::config::{OutboxConfig, quote};
use crate::entity::DeliveryStatus;
use crate::error::Result;
use crate::store::Store;

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
    store: Store,
    config: OutboxConfig,
}

/// How many messages are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Waiting, in flight or waiting for a retry.
    pub pending: u64,
    /// Delivered and not yet removed by retention.
    pub delivered: u64,
    /// Dead letters.
    pub dead: u64,
}

/// A dead message, with the state of each of its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message id.
    pub message_id: Uuid,
    /// Its position in the outbox.
    pub sequence: i64,
    /// The event type.
    pub event_type: String,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// Times it was claimed.
    pub attempts: u32,
    /// The last error recorded on the message.
    pub last_error: Option<String>,
    /// The last error's kind.
    pub last_error_kind: Option<String>,
    /// When the event was recorded.
    pub occurred_at: DateTime<Utc>,
    /// Per-handler states (empty when the whole message failed, e.g. an unknown event type).
    pub deliveries: Vec<DeliveryInfo>,
}

/// One handler's state for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// The handler's name.
    pub handler: String,
    /// Delivered, failed or dead.
    pub status: DeliveryStatus,
    /// Failed attempts.
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// The last error's kind.
    pub last_error_kind: Option<String>,
}

impl Admin {
    /// An admin on the default tables.
    pub fn new(db: DatabaseConnection) -> Self {
        Self::with_config(db, OutboxConfig::default())
    }

    /// An admin on the tables named by `config`.
    pub fn with_config(db: DatabaseConnection, config: OutboxConfig) -> Self {
        Self {
            store: Store::new(db.get_database_backend(), &config),
            db,
            config,
        }
    }

    /// Counts messages by state.
    pub async fn counts(&self) -> Result<OutboxCounts> {
        let by_status = self.store.counts(&self.db).await?;
        let get = |s: &str| by_status.get(s).copied().unwrap_or(0);
        Ok(OutboxCounts {
            pending: get("pending"),
            delivered: get("delivered"),
            dead: get("dead"),
        })
    }

    /// Puts a dead message back in the queue with a fresh retry budget for its dead
    /// deliveries; deliveries that succeeded are not repeated.
    pub async fn requeue(&self, message_id: Uuid) -> Result<()> {
        self.store
            .requeue(&self.db, message_id, None, Utc::now())
            .await
    }

    /// Like [`requeue`](Self::requeue), for one handler's dead delivery only.
    pub async fn requeue_delivery(&self, message_id: Uuid, handler: &str) -> Result<()> {
        self.store
            .requeue(&self.db, message_id, Some(handler), Utc::now())
            .await
    }

    /// Deletes an undelivered message for good (a poison message you decided to drop).
    pub async fn discard(&self, message_id: Uuid) -> Result<()> {
        self.store.discard(&self.db, message_id).await
    }

    /// The oldest dead letters, up to `limit`.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        let backend = self.db.get_database_backend();
        let m = quote(backend, self.config.messages_table());
        let d = quote(backend, self.config.deliveries_table());
        let sql = format!(
            "SELECT seq, id, event_type, aggregate_type, aggregate_id, attempts, last_error, \
             last_error_kind, occurred_at FROM {m} WHERE status = 'dead' ORDER BY seq LIMIT {limit}"
        );
        let rows = self
            .db
            .query_all_raw(Statement::from_string(backend, sql))
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let attempts: i32 = r.try_get("", "attempts")?;
            out.push(DeadLetter {
                message_id: r.try_get("", "id")?,
                sequence: r.try_get("", "seq")?,
                event_type: r.try_get("", "event_type")?,
                aggregate_type: r.try_get("", "aggregate_type")?,
                aggregate_id: r.try_get("", "aggregate_id")?,
                attempts: attempts.max(0) as u32,
                last_error: r.try_get("", "last_error")?,
                last_error_kind: r.try_get("", "last_error_kind")?,
                occurred_at: r.try_get("", "occurred_at")?,
                deliveries: Vec::new(),
            });
        }
        if out.is_empty() {
            return Ok(out);
        }
        let mut by_id: HashMap<Uuid, Vec<DeliveryInfo>> = HashMap::new();
        for chunk in out.chunks(100) {
            let ids: Vec<sea_orm::Value> = chunk.iter().map(|l| l.message_id.into()).collect();
            let placeholders: Vec<String> = (1..=ids.len())
                .map(|i| match backend {
                    sea_orm::DbBackend::Postgres => format!("${i}"),
                    _ => "?".to_owned(),
                })
                .collect();
            let sql = format!(
                "SELECT message_id, handler, status, attempts, last_error, last_error_kind \
                 FROM {d} WHERE message_id IN ({}) ORDER BY handler",
                placeholders.join(", ")
            );
            let rows = self
                .db
                .query_all_raw(Statement::from_sql_and_values(backend, sql, ids))
                .await?;
            for r in rows {
                let status: String = r.try_get("", "status")?;
                let attempts: i32 = r.try_get("", "attempts")?;
                let Some(status) = DeliveryStatus::parse(&status) else {
                    continue;
                };
                by_id
                    .entry(r.try_get("", "message_id")?)
                    .or_default()
                    .push(DeliveryInfo {
                        handler: r.try_get("", "handler")?,
                        status,
                        attempts: attempts.max(0) as u32,
                        last_error: r.try_get("", "last_error")?,
                        last_error_kind: r.try_get("", "last_error_kind")?,
                    });
            }
        }
        for l in &mut out {
            l.deliveries = by_id.remove(&l.message_id).unwrap_or_default();
        }
        Ok(out)
    }
}
