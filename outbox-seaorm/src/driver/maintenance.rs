//! Retention, the inbox and the operators' actions: the same sequence of the driver's named
//! statements on every database, so methods of any driver rather than of the trait.

use std::collections::HashMap;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, QueryResult};
use uuid::Uuid;

use super::Driver;
use super::sql::{Arg, seqs};
use crate::admin::{DeadLetter, DeliveryInfo, OutboxCounts, RelayInfo};
use crate::entity::DeliveryStatus;
use crate::error::{Error, Result};

impl dyn Driver {
    /// Takes (or renews) the named lock for `holder` for `hold`, if it is free, expired or
    /// already `holder`'s. Returns whether `holder` has it now.
    pub(crate) async fn try_lock(
        &self,
        db: &DatabaseConnection,
        name: &str,
        holder: &str,
        hold: Duration,
    ) -> Result<bool> {
        let sql = self.sql();
        db.execute_raw(sql.stmt("lock_row", &[("name", name.into())]))
            .await?;
        let stmt = sql.stmt(
            "take_lock",
            &[
                ("name", name.into()),
                ("holder", holder.into()),
                ("hold", self.span(hold)),
            ],
        );
        Ok(db.execute_raw(stmt).await?.rows_affected() == 1)
    }

    /// Lets go of the named lock if `holder` has it.
    pub(crate) async fn unlock(
        &self,
        db: &DatabaseConnection,
        name: &str,
        holder: &str,
    ) -> Result<()> {
        let stmt = self.sql().stmt(
            "unlock",
            &[("name", name.into()), ("holder", holder.into())],
        );
        db.execute_raw(stmt).await?;
        Ok(())
    }

    /// Deletes up to `limit` messages delivered more than `age` ago, oldest first, with their
    /// delivery rows. Returns how many.
    pub(crate) async fn delete_delivered(
        &self,
        db: &DatabaseConnection,
        age: Duration,
        limit: u32,
    ) -> Result<usize> {
        let sql = self.sql();
        let stmt = sql.stmt(
            "old_delivered",
            &[("age", self.span(age)), ("limit", i64::from(limit).into())],
        );
        let rows = db.query_all_raw(stmt).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let list = rows
            .iter()
            .map(|r| r.try_get::<i64>("", "seq"))
            .collect::<Result<Vec<_>, DbErr>>()?;
        let txn = self.begin_write(db).await?;
        txn.execute_raw(sql.stmt("delete_deliveries_of", &[("seqs", seqs(&list))]))
            .await?;
        let n = txn
            .execute_raw(sql.stmt("delete_delivered_rows", &[("seqs", seqs(&list))]))
            .await?
            .rows_affected();
        txn.commit().await?;
        Ok(n as usize)
    }

    /// Deletes up to `limit` inbox rows older than `age`. Returns how many.
    pub(crate) async fn delete_inbox(
        &self,
        db: &DatabaseConnection,
        age: Duration,
        limit: u32,
    ) -> Result<usize> {
        let stmt = self.sql().stmt(
            "delete_inbox",
            &[("age", self.span(age)), ("limit", i64::from(limit).into())],
        );
        Ok(db.execute_raw(stmt).await?.rows_affected() as usize)
    }

    /// Marks `message_id` processed by `consumer` in `txn`. Returns `false` when it already
    /// was: a concurrent transaction marking the same pair waits on the key until the first
    /// commits (then this one sees the mark) or rolls back (then this one wins).
    pub(crate) async fn mark_processed(
        &self,
        txn: &DatabaseTransaction,
        consumer: &str,
        message_id: Uuid,
    ) -> Result<bool> {
        let stmt = self.sql().stmt(
            "mark_processed",
            &[
                ("consumer", consumer.into()),
                ("message_id", message_id.into()),
            ],
        );
        Ok(txn.execute_raw(stmt).await?.rows_affected() == 1)
    }

    /// Counts messages by state, and the pending ones waiting for a relay that knows their
    /// event type.
    pub(crate) async fn counts(&self, db: &DatabaseConnection) -> Result<OutboxCounts> {
        let rows = db.query_all_raw(self.sql().stmt("counts", &[])).await?;
        let mut c = OutboxCounts::default();
        for r in rows {
            let status: String = r.try_get("", "status")?;
            let n = r.try_get::<i64>("", "n")?.max(0) as u64;
            match status.as_str() {
                "pending" => c.pending += n,
                "delivered" => c.delivered += n,
                "dead" => c.dead += n,
                "unhandled" => c.unhandled += n,
                _ => {}
            }
        }
        let row = db
            .query_one_raw(self.sql().stmt("count_unknown_type", &[]))
            .await?;
        if let Some(r) = row {
            c.unknown_event_type = r.try_get::<i64>("", "n")?.max(0) as u64;
        }
        Ok(c)
    }

    /// The oldest dead letters, up to `limit`, with their deliveries.
    pub(crate) async fn dead_letters(
        &self,
        db: &DatabaseConnection,
        limit: u32,
    ) -> Result<Vec<DeadLetter>> {
        let sql = self.sql();
        let rows = db
            .query_all_raw(sql.stmt("dead_letters", &[("limit", i64::from(limit).into())]))
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let attempts: i32 = r.try_get("", "attempts")?;
            out.push(DeadLetter {
                message_id: r.try_get("", "id")?,
                sequence: r.try_get("", "seq")?,
                position: r.try_get("", "position")?,
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
        let list: Vec<i64> = out.iter().map(|d| d.sequence).collect();
        let mut by_id = self.deliveries_of(db, &list).await?;
        for d in &mut out {
            d.deliveries = by_id.remove(&d.message_id).unwrap_or_default();
        }
        Ok(out)
    }

    /// The delivery states of the messages with these sequence numbers, by message id.
    pub(crate) async fn deliveries_of(
        &self,
        db: &DatabaseConnection,
        seq_list: &[i64],
    ) -> Result<HashMap<Uuid, Vec<DeliveryInfo>>> {
        let rows = db
            .query_all_raw(
                self.sql()
                    .stmt("deliveries_of", &[("seqs", seqs(seq_list))]),
            )
            .await?;
        let mut by_id: HashMap<Uuid, Vec<DeliveryInfo>> = HashMap::new();
        for r in rows {
            let status: String = r.try_get("", "status")?;
            let Some(status) = DeliveryStatus::parse(&status) else {
                continue;
            };
            let attempts: i32 = r.try_get("", "attempts")?;
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
        Ok(by_id)
    }

    /// Puts a dead message back in the queue: its dead deliveries (or only `handler`'s) get a
    /// fresh retry budget, delivered ones are not run again, and the aggregate's later
    /// messages, held back behind it, are released.
    pub(crate) async fn requeue(
        &self,
        db: &DatabaseConnection,
        message_id: Uuid,
        handler: Option<&str>,
    ) -> Result<()> {
        let sql = self.sql();
        let txn = self.begin_write(db).await?;
        let Some(row) = txn
            .query_one_raw(sql.stmt("dead_message", &[("id", message_id.into())]))
            .await?
        else {
            return Err(Error::MessageNotFound {
                message_id,
                operation: "requeue",
                state: "dead or unhandled",
            });
        };
        txn.execute_raw(sql.stmt("requeue", &[("id", message_id.into())]))
            .await?;
        let stmt = match handler {
            Some(h) => sql.stmt(
                "requeue_delivery",
                &[("id", message_id.into()), ("handler", h.into())],
            ),
            None => sql.stmt("requeue_deliveries", &[("id", message_id.into())]),
        };
        txn.execute_raw(stmt).await?;
        self.unblock(&txn, &row).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Deletes a message that will never be delivered (dead, or pending and not leased), with
    /// its delivery rows, and releases the aggregate's later messages held back behind it.
    pub(crate) async fn discard(&self, db: &DatabaseConnection, message_id: Uuid) -> Result<()> {
        let sql = self.sql();
        let txn = self.begin_write(db).await?;
        let Some(row) = txn
            .query_one_raw(sql.stmt("discardable", &[("id", message_id.into())]))
            .await?
        else {
            return Err(Error::MessageNotFound {
                message_id,
                operation: "discard",
                state: "dead, unhandled, or pending and held by no relay",
            });
        };
        txn.execute_raw(sql.stmt("delete_deliveries_by_id", &[("id", message_id.into())]))
            .await?;
        txn.execute_raw(sql.stmt("delete_by_id", &[("id", message_id.into())]))
            .await?;
        self.unblock(&txn, &row).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Lifts the hold on the aggregate of `row` (a row with `aggregate_type`, `aggregate_id`).
    pub(crate) async fn unblock(&self, txn: &DatabaseTransaction, row: &QueryResult) -> Result<()> {
        let args = [
            (
                "aggregate_type",
                Arg::from(row.try_get::<String>("", "aggregate_type")?),
            ),
            (
                "aggregate_id",
                row.try_get::<String>("", "aggregate_id")?.into(),
            ),
        ];
        txn.execute_raw(self.sql().stmt("unblock_stream", &args))
            .await?;
        txn.execute_raw(self.sql().stmt("unblock_followers", &args))
            .await?;
        Ok(())
    }

    /// Records a relay as running (again), with what it handles.
    pub(crate) async fn register_relay(
        &self,
        db: &DatabaseConnection,
        relay: &RelayRow,
    ) -> Result<()> {
        let stmt = self.sql().stmt(
            "register_relay",
            &[
                ("id", relay.id.clone().into()),
                ("host", relay.host.clone().into()),
                ("version", relay.version.clone().into()),
                ("lease_ms", relay.lease_ms.into()),
                ("handled", relay.handled.clone().into()),
            ],
        );
        db.execute_raw(stmt).await?;
        Ok(())
    }

    /// A relay's heartbeat, with how many messages it holds.
    pub(crate) async fn relay_heartbeat(
        &self,
        db: &DatabaseConnection,
        id: &str,
        held: usize,
    ) -> Result<()> {
        let held = i32::try_from(held).unwrap_or(i32::MAX);
        let stmt = self.sql().stmt(
            "relay_heartbeat",
            &[("id", id.into()), ("held", held.into())],
        );
        db.execute_raw(stmt).await?;
        Ok(())
    }

    /// Marks a relay stopped (it shut down), and forgets relays stopped more than a day ago.
    pub(crate) async fn relay_stopped(&self, db: &DatabaseConnection, id: &str) -> Result<()> {
        db.execute_raw(self.sql().stmt("relay_stopped", &[("id", id.into())]))
            .await?;
        let day = self.span(Duration::from_secs(86_400));
        db.execute_raw(self.sql().stmt("forget_stopped_relays", &[("age", day)]))
            .await?;
        Ok(())
    }

    /// The relay's gauges: pending, dead, unhandled and unknown-type counts and the oldest pending
    /// message's recording time, from the pending and dead rows only.
    pub(crate) async fn gauges(&self, db: &DatabaseConnection) -> Result<Gauges> {
        let row = db
            .query_one_raw(self.sql().stmt("gauges", &[]))
            .await?
            .ok_or_else(|| DbErr::Custom("the gauges query returned no row".into()))?;
        let count = |name: &str| -> Result<u64> {
            Ok(u64::try_from(row.try_get::<i64>("", name)?).unwrap_or(0))
        };
        Ok(Gauges {
            pending: count("pending")?,
            dead: count("dead")?,
            unhandled: count("unhandled")?,
            unknown: count("unknown")?,
            oldest: row.try_get("", "oldest")?,
        })
    }

    /// The relays recorded, oldest first.
    pub(crate) async fn relays(&self, db: &DatabaseConnection) -> Result<Vec<RelayInfo>> {
        let rows = db.query_all_raw(self.sql().stmt("relays", &[])).await?;
        rows.iter()
            .map(|r| {
                let lease_ms: i64 = r.try_get("", "lease_ms")?;
                let silent_ms: i64 = r.try_get("", "silent_ms")?;
                let held: i32 = r.try_get("", "held")?;
                let handled: String = r.try_get("", "handled")?;
                Ok(RelayInfo {
                    id: r.try_get("", "id")?,
                    host: r.try_get("", "host")?,
                    version: r.try_get("", "version")?,
                    started_at: r.try_get("", "started_at")?,
                    heartbeat_at: r.try_get("", "heartbeat_at")?,
                    stopped_at: r.try_get("", "stopped_at")?,
                    lease: Duration::from_millis(lease_ms.max(0) as u64),
                    silent_for: Duration::from_millis(silent_ms.max(0) as u64),
                    held: held.max(0) as u64,
                    handles: serde_json::from_str(&handled).unwrap_or_default(),
                })
            })
            .collect()
    }
}

/// A relay as it records itself.
#[derive(Debug, Clone)]
pub(crate) struct RelayRow {
    pub(crate) id: String,
    pub(crate) host: String,
    pub(crate) version: String,
    pub(crate) lease_ms: i64,
    /// JSON: [`Handles`].
    pub(crate) handled: String,
}

/// What the relay reports as gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gauges {
    pub(crate) pending: u64,
    pub(crate) dead: u64,
    pub(crate) unhandled: u64,
    pub(crate) unknown: u64,
    pub(crate) oldest: Option<chrono::DateTime<chrono::Utc>>,
}
