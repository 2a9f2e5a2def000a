//! Looking at messages and acting on many at once: filters, listings, one message in full, the
//! status an operator alerts on. Queries are built with sea-query, which renders them for each
//! database, and touch the pending and dead rows, never the whole delivered history.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, IntoTableRef, Order, Query, SelectStatement, TableRef,
};
use sea_orm::{ConnectionTrait, QueryResult};
use serde::Serialize;
use uuid::Uuid;

use super::{Admin, DeliveryInfo, RelayInfo};
use crate::entity::MessageStatus;
use crate::error::Result;

/// Which messages an operator looks at or acts on; every condition set must hold.
///
/// ```
/// use outbox_seaorm::{entity::MessageStatus, MessageFilter};
/// let dead_mail = MessageFilter::new()
///     .status(MessageStatus::Dead)
///     .handler("send-confirmation")
///     .error_kind("handler_timed_out")
///     .limit(100);
/// # let _ = dead_mail;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageFilter {
    pub(crate) status: Option<MessageStatus>,
    pub(crate) handler: Option<String>,
    pub(crate) event_type: Option<String>,
    pub(crate) aggregate_type: Option<String>,
    pub(crate) aggregate_id: Option<String>,
    pub(crate) error_kind: Option<String>,
    pub(crate) since: Option<DateTime<Utc>>,
    pub(crate) after: Option<i64>,
    pub(crate) limit: Option<u32>,
}

impl MessageFilter {
    /// Every message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages in this state.
    pub fn status(mut self, status: MessageStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Messages with a delivery state for this handler or route (they failed for it once).
    pub fn handler(mut self, handler: impl Into<String>) -> Self {
        self.handler = Some(handler.into());
        self
    }

    /// Messages of this event type.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Messages of aggregates of this type.
    pub fn aggregate_type(mut self, aggregate_type: impl Into<String>) -> Self {
        self.aggregate_type = Some(aggregate_type.into());
        self
    }

    /// Messages of this aggregate id.
    pub fn aggregate_id(mut self, aggregate_id: impl Into<String>) -> Self {
        self.aggregate_id = Some(aggregate_id.into());
        self
    }

    /// Messages whose last error, or one of whose deliveries' last error, is of this kind.
    pub fn error_kind(mut self, kind: impl Into<String>) -> Self {
        self.error_kind = Some(kind.into());
        self
    }

    /// Messages recorded at or after `t`.
    pub fn since(mut self, t: DateTime<Utc>) -> Self {
        self.since = Some(t);
        self
    }

    /// Messages after this sequence number (keyset pagination: pass the last one seen).
    pub fn after(mut self, sequence: i64) -> Self {
        self.after = Some(sequence);
        self
    }

    /// At most `n` messages in a listing (listings default to 50).
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(n);
        self
    }
}

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

/// Pending messages of one aggregate type and event type.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Backlog {
    /// The aggregate type.
    pub aggregate_type: String,
    /// The event type.
    pub event_type: String,
    /// How many are pending.
    pub pending: u64,
    /// Seconds since the oldest of them was recorded.
    pub oldest_age_secs: f64,
}

/// Dead letters of one handler (or of the message as a whole) and error kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DeadGroup {
    /// The handler or route, or `None` for messages that died as a whole (crashed, unknown
    /// version, ...).
    pub handler: Option<String>,
    /// The error kind.
    pub error_kind: Option<String>,
    /// How many.
    pub count: u64,
}

/// What an operator checks first, from the pending and dead rows only (cheap on a table with
/// millions of delivered rows).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// Messages waiting, in flight or waiting for a retry.
    pub pending: u64,
    /// Dead letters.
    pub dead: u64,
    /// Messages no handler or route took: not delivered, kept until requeued or discarded.
    pub unhandled: u64,
    /// Messages delivered in the last hour (unhandled ones are not).
    pub delivered_last_hour: u64,
    /// Pending messages waiting for a relay that knows their event type.
    pub unknown_event_type: u64,
    /// Seconds since the oldest pending message was recorded.
    pub oldest_pending_age_secs: Option<f64>,
    /// The backlog by aggregate type and event type, largest first.
    pub backlog: Vec<Backlog>,
    /// Dead letters by handler and error kind, largest first.
    pub dead_letters: Vec<DeadGroup>,
    /// The relays recorded.
    pub relays: Vec<RelayInfo>,
}

pub(crate) fn table(name: &str) -> TableRef {
    match name.split_once('.') {
        Some((schema, t)) => (Alias::new(schema), Alias::new(t)).into_table_ref(),
        None => Alias::new(name).into_table_ref(),
    }
}

fn col(name: &'static str) -> Expr {
    Expr::col((Alias::new("m"), Alias::new(name)))
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

    /// Requeues every dead message the filter matches (see [`Admin::requeue`]), in batches;
    /// returns how many. Only dead messages are requeued, or, when the filter's status is
    /// [`MessageStatus::Unhandled`], only unhandled ones (any other status is ignored).
    pub async fn requeue_matching(&self, filter: &MessageFilter) -> Result<u64> {
        let status = match filter.status {
            Some(MessageStatus::Unhandled) => MessageStatus::Unhandled,
            _ => MessageStatus::Dead,
        };
        self.act_on_matching(filter, status, |id| async move {
            self.driver.requeue(&self.db, id, None).await
        })
        .await
    }

    /// Discards every message the filter matches that may be discarded (dead, unhandled, or
    /// pending and not held by a relay; see [`Admin::discard`]); returns how many. Without a
    /// status in the filter, dead ones.
    pub async fn discard_matching(&self, filter: &MessageFilter) -> Result<u64> {
        let status = filter.status.unwrap_or(MessageStatus::Dead);
        self.act_on_matching(filter, status, |id| async move {
            self.driver.discard(&self.db, id).await
        })
        .await
    }

    async fn act_on_matching<F, Fut>(
        &self,
        filter: &MessageFilter,
        status: MessageStatus,
        act: F,
    ) -> Result<u64>
    where
        F: Fn(Uuid) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut page = MessageFilter {
            status: Some(status),
            limit: Some(500),
            after: None,
            ..filter.clone()
        };
        let mut done = 0;
        loop {
            let batch = self.list(&page).await?;
            let Some(last) = batch.last() else { break };
            page.after = Some(last.sequence);
            for m in &batch {
                match act(m.message_id).await {
                    Ok(()) => done += 1,
                    // Taken by a relay, requeued or discarded by someone else meanwhile.
                    Err(crate::Error::MessageNotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if done > 0 {
            self.wake().await?;
        }
        Ok(done)
    }

    /// Counts, backlog and dead letters by group, and relays: what to look at and alert on.
    pub async fn status(&self) -> Result<Status> {
        let m = table(self.config.messages_table());
        let d = table(self.config.deliveries_table());
        let d_table = d.clone();
        let count_where = |status: &'static str| {
            let mut q = Query::select();
            q.from_as(m.clone(), Alias::new("m"))
                .expr_as(
                    Expr::col((Alias::new("m"), Alias::new("seq"))).count(),
                    Alias::new("n"),
                )
                .and_where(col("status").eq(status));
            q
        };
        let pending = self.scalar(&count_where("pending")).await?;
        let dead = self.scalar(&count_where("dead")).await?;
        let unhandled = self.scalar(&count_where("unhandled")).await?;
        let mut recent = count_where("delivered");
        recent.and_where(col("delivered_at").gt(Utc::now() - chrono::Duration::hours(1)));
        let delivered_last_hour = self.scalar(&recent).await?;
        let mut unknown = count_where("pending");
        unknown.and_where(col("last_error_kind").eq("unknown_event_type"));
        let unknown_event_type = self.scalar(&unknown).await?;

        let mut q = Query::select();
        q.from_as(m.clone(), Alias::new("m"))
            .columns(["aggregate_type", "event_type"].map(|c| (Alias::new("m"), Alias::new(c))))
            .expr_as(
                Expr::col((Alias::new("m"), Alias::new("seq"))).count(),
                Alias::new("n"),
            )
            // A delayed message is only late from its `not_before` on.
            .expr_as(
                Expr::col((Alias::new("m"), Alias::new("not_before")))
                    .if_null(Expr::col((Alias::new("m"), Alias::new("occurred_at"))))
                    .min(),
                Alias::new("oldest"),
            )
            .and_where(col("status").eq("pending"))
            .group_by_col((Alias::new("m"), Alias::new("aggregate_type")))
            .group_by_col((Alias::new("m"), Alias::new("event_type")));
        let now = Utc::now();
        let mut backlog = Vec::new();
        for r in self.db.query_all(&q).await? {
            let oldest: DateTime<Utc> = r.try_get("", "oldest")?;
            backlog.push(Backlog {
                aggregate_type: r.try_get("", "aggregate_type")?,
                event_type: r.try_get("", "event_type")?,
                pending: positive(r.try_get::<i64>("", "n")?),
                oldest_age_secs: age(now, oldest),
            });
        }
        backlog.sort_by_key(|b| std::cmp::Reverse(b.pending));
        let oldest_pending_age_secs = backlog.iter().map(|b| b.oldest_age_secs).reduce(f64::max);

        let mut dead_letters = Vec::new();
        let mut by_handler = Query::select();
        by_handler
            .from_as(d, Alias::new("d"))
            .columns(["handler", "last_error_kind"].map(|c| (Alias::new("d"), Alias::new(c))))
            .expr_as(
                Expr::col((Alias::new("d"), Alias::new("handler"))).count(),
                Alias::new("n"),
            )
            .and_where(Expr::col((Alias::new("d"), Alias::new("status"))).eq("dead"))
            .group_by_col((Alias::new("d"), Alias::new("handler")))
            .group_by_col((Alias::new("d"), Alias::new("last_error_kind")));
        for r in self.db.query_all(&by_handler).await? {
            dead_letters.push(DeadGroup {
                handler: Some(r.try_get("", "handler")?),
                error_kind: r.try_get("", "last_error_kind")?,
                count: positive(r.try_get::<i64>("", "n")?),
            });
        }
        let mut whole = count_where("dead");
        whole
            .column((Alias::new("m"), Alias::new("last_error_kind")))
            // Dead as a whole (a crash, a payload no handler can read, an upcaster that
            // failed, ...): no handler's delivery is dead, so the groups above miss it.
            .and_where(
                Expr::exists(
                    Query::select()
                        .expr(Expr::val(1))
                        .from_as(d_table.clone(), Alias::new("dd"))
                        .and_where(
                            Expr::col((Alias::new("dd"), Alias::new("message_id")))
                                .equals((Alias::new("m"), Alias::new("id"))),
                        )
                        .and_where(Expr::col((Alias::new("dd"), Alias::new("status"))).eq("dead"))
                        .to_owned(),
                )
                .not(),
            )
            .group_by_col((Alias::new("m"), Alias::new("last_error_kind")));
        for r in self.db.query_all(&whole).await? {
            dead_letters.push(DeadGroup {
                handler: None,
                error_kind: r.try_get("", "last_error_kind")?,
                count: positive(r.try_get::<i64>("", "n")?),
            });
        }
        dead_letters.sort_by_key(|g| std::cmp::Reverse(g.count));
        Ok(Status {
            pending,
            dead,
            unhandled,
            delivered_last_hour,
            unknown_event_type,
            oldest_pending_age_secs,
            backlog,
            dead_letters,
            relays: self.relays().await?,
        })
    }

    /// The messages (alias `m`) the filter matches, without columns.
    fn matching(&self, f: &MessageFilter) -> SelectStatement {
        let mut q = Query::select();
        q.from_as(table(self.config.messages_table()), Alias::new("m"));
        if let Some(s) = f.status {
            q.and_where(col("status").eq(s.as_str()));
        }
        if let Some(t) = &f.event_type {
            q.and_where(col("event_type").eq(t.as_str()));
        }
        if let Some(t) = &f.aggregate_type {
            q.and_where(col("aggregate_type").eq(t.as_str()));
        }
        if let Some(id) = &f.aggregate_id {
            q.and_where(col("aggregate_id").eq(id.as_str()));
        }
        if let Some(t) = f.since {
            q.and_where(col("occurred_at").gte(t));
        }
        if let Some(seq) = f.after {
            q.and_where(col("seq").gt(seq));
        }
        let deliveries = |cond: Expr| {
            let mut sub = Query::select();
            sub.column((Alias::new("d"), Alias::new("message_id")))
                .from_as(table(self.config.deliveries_table()), Alias::new("d"))
                .and_where(cond);
            sub
        };
        if let Some(h) = &f.handler {
            let sub =
                deliveries(Expr::col((Alias::new("d"), Alias::new("handler"))).eq(h.as_str()));
            q.and_where(col("id").in_subquery(sub));
        }
        if let Some(k) = &f.error_kind {
            let sub = deliveries(
                Expr::col((Alias::new("d"), Alias::new("last_error_kind"))).eq(k.as_str()),
            );
            q.and_where(
                col("last_error_kind")
                    .eq(k.as_str())
                    .or(col("id").in_subquery(sub)),
            );
        }
        q
    }

    /// Messages delivered in the last hour, by event type.
    pub(super) async fn delivered_last_hour_by_type(
        &self,
    ) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut q = Query::select();
        q.from_as(table(self.config.messages_table()), Alias::new("m"))
            .column((Alias::new("m"), Alias::new("event_type")))
            .expr_as(
                Expr::col((Alias::new("m"), Alias::new("seq"))).count(),
                Alias::new("n"),
            )
            .and_where(col("status").eq("delivered"))
            .and_where(col("delivered_at").gt(Utc::now() - chrono::Duration::hours(1)))
            .group_by_col((Alias::new("m"), Alias::new("event_type")));
        let mut out = std::collections::BTreeMap::new();
        for r in self.db.query_all(&q).await? {
            out.insert(
                r.try_get("", "event_type")?,
                positive(r.try_get::<i64>("", "n")?),
            );
        }
        Ok(out)
    }

    /// `(handler, event type)` of every delivery row's message: the event types a handler
    /// takes, as its rows tell (a handler without rows is not here).
    pub(super) async fn handler_event_types(&self) -> Result<Vec<(String, String)>> {
        let mut q = Query::select();
        q.distinct()
            .from_as(table(self.config.deliveries_table()), Alias::new("d"))
            .join_as(
                sea_orm::sea_query::JoinType::InnerJoin,
                table(self.config.messages_table()),
                Alias::new("m"),
                Expr::col((Alias::new("m"), Alias::new("id")))
                    .equals((Alias::new("d"), Alias::new("message_id"))),
            )
            .column((Alias::new("d"), Alias::new("handler")))
            .column((Alias::new("m"), Alias::new("event_type")));
        let mut out = Vec::new();
        for r in self.db.query_all(&q).await? {
            out.push((r.try_get("", "handler")?, r.try_get("", "event_type")?));
        }
        Ok(out)
    }

    async fn scalar(&self, q: &SelectStatement) -> Result<u64> {
        let row = self.db.query_one(q).await?;
        Ok(positive(row.map_or(Ok(0), |r| r.try_get::<i64>("", "n"))?))
    }
}

fn positive(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Seconds from `then` to `now`, 0 when `then` is later.
pub(crate) fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> f64 {
    (now - then)
        .to_std()
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
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
