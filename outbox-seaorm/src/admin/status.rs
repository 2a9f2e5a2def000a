//! What an operator checks first and alerts on: [`Status`] with its backlog and dead-letter
//! groups, from the pending and dead rows only, and the per-type counts the handler report
//! reads.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use serde::Serialize;

use super::query::{age, col, positive, table};
use super::{Admin, RelayInfo};
use crate::error::Result;

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

impl Admin {
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
}
