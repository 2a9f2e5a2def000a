//! Listing messages and showing one in full: [`MessageSummary`], [`MessageDetail`] and the
//! queries behind `Admin::list`, `Admin::count` and `Admin::show`.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, QueryResult};
use serde::Serialize;
use uuid::Uuid;

use super::filter::MessageFilter;
use super::query::{col, positive, table};
use super::{Admin, DeliveryInfo};
use crate::error::Result;

/// One message in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MessageSummary {
    /// The message id.
    pub message_id: Uuid,
    /// Its position in the outbox.
    pub sequence: i64,
    /// Its position in its aggregate's stream.
    pub position: i64,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The event type.
    pub event_type: String,
    /// The event version.
    pub event_version: i32,
    /// Pending, delivered, dead or unhandled.
    pub status: String,
    /// Times its handlers ran to an outcome.
    pub attempts: i32,
    /// The last error's kind.
    pub last_error_kind: Option<String>,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was recorded.
    pub occurred_at: DateTime<Utc>,
    /// When it may be claimed next.
    pub available_at: DateTime<Utc>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
    /// The relay holding it, while one does.
    pub locked_by: Option<String>,
}

/// One message in full.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MessageDetail {
    /// What a listing shows.
    #[serde(flatten)]
    pub summary: MessageSummary,
    /// The payload (JSON).
    pub payload: serde_json::Value,
    /// The headers (JSON).
    pub headers: serde_json::Value,
    /// Each handler's and route's state (only for messages that failed once).
    pub deliveries: Vec<DeliveryInfo>,
}

const SUMMARY: [&str; 15] = [
    "id",
    "seq",
    "position",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "event_version",
    "status",
    "attempts",
    "last_error_kind",
    "last_error",
    "occurred_at",
    "available_at",
    "delivered_at",
    "locked_by",
];

impl Admin {
    /// The messages the filter matches, oldest first (by sequence), up to its limit (50 by
    /// default). Page with [`MessageFilter::after`] and the last sequence seen.
    pub async fn list(&self, filter: &MessageFilter) -> Result<Vec<MessageSummary>> {
        let mut q = self.matching(filter);
        q.columns(SUMMARY.map(|c| (Alias::new("m"), Alias::new(c))))
            .order_by((Alias::new("m"), Alias::new("seq")), Order::Asc)
            .limit(u64::from(filter.limit.unwrap_or(50)));
        let rows = self.db.query_all(&q).await?;
        rows.iter().map(summary).collect()
    }

    /// How many messages the filter matches (its limit ignored).
    pub async fn count(&self, filter: &MessageFilter) -> Result<u64> {
        let mut q = self.matching(&MessageFilter {
            after: filter.after,
            ..filter.clone()
        });
        q.expr_as(
            Expr::col((Alias::new("m"), Alias::new("seq"))).count(),
            Alias::new("n"),
        );
        let row = self.db.query_one(&q).await?;
        Ok(positive(row.map_or(Ok(0), |r| r.try_get::<i64>("", "n"))?))
    }

    /// One message in full, with its payload, headers and every delivery's state.
    pub async fn show(&self, message_id: Uuid) -> Result<Option<MessageDetail>> {
        let mut q = Query::select();
        q.from_as(table(self.config.messages_table()), Alias::new("m"))
            .columns(SUMMARY.map(|c| (Alias::new("m"), Alias::new(c))))
            .columns(["payload", "headers"].map(|c| (Alias::new("m"), Alias::new(c))))
            .and_where(col("id").eq(message_id));
        let Some(row) = self.db.query_one(&q).await? else {
            return Ok(None);
        };
        let summary = summary(&row)?;
        let json = |name: &str| -> Result<serde_json::Value> {
            // PostgreSQL and SQLite hand JSON back as text here, MariaDB as text too.
            let text: String = row.try_get("", name).or_else(|_| {
                row.try_get::<serde_json::Value>("", name)
                    .map(|v| v.to_string())
            })?;
            Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
        };
        let (payload, headers) = (json("payload")?, json("headers")?);
        let deliveries = self
            .driver
            .deliveries_of(&self.db, &[summary.sequence])
            .await?
            .remove(&message_id)
            .unwrap_or_default();
        Ok(Some(MessageDetail {
            summary,
            payload,
            headers,
            deliveries,
        }))
    }
}

fn summary(r: &QueryResult) -> Result<MessageSummary> {
    Ok(MessageSummary {
        message_id: r.try_get("", "id")?,
        sequence: r.try_get("", "seq")?,
        position: r.try_get("", "position")?,
        aggregate_type: r.try_get("", "aggregate_type")?,
        aggregate_id: r.try_get("", "aggregate_id")?,
        event_type: r.try_get("", "event_type")?,
        event_version: r.try_get("", "event_version")?,
        status: r.try_get("", "status")?,
        attempts: r.try_get("", "attempts")?,
        last_error_kind: r.try_get("", "last_error_kind")?,
        last_error: r.try_get("", "last_error")?,
        occurred_at: r.try_get("", "occurred_at")?,
        available_at: r.try_get("", "available_at")?,
        delivered_at: r.try_get("", "delivered_at")?,
        locked_by: r.try_get("", "locked_by")?,
    })
}
