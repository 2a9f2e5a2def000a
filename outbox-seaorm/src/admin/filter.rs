//! Which messages an operator looks at or acts on: [`MessageFilter`] and the query it becomes.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query, SelectStatement};

use super::Admin;
use super::query::{col, table};
use crate::entity::MessageStatus;

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

impl Admin {
    /// The messages (alias `m`) the filter matches, without columns.
    pub(super) fn matching(&self, f: &MessageFilter) -> SelectStatement {
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
}
