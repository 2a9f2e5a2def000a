//! One driver per database: every SQL statement of the outbox, behind one internal trait.
//!
//! The unit of work, the relay, the inbox and the admin call [`Driver`]; only
//! [`for_backend`] asks which database it is. Each driver keeps its statements in its own
//! `.sql` files (`postgres.sql`, `mysql.sql`, `sqlite.sql` for queries, `*_schema.sql` for the
//! tables), as River keeps one package per database. Most operations are the same sequence of
//! statements everywhere and live here as the trait's provided methods, reading the driver's
//! named queries; appending messages and claiming them differ in shape and are written per
//! driver.
//!
//! Time always comes from the database (`now()`, `UTC_TIMESTAMP(6)`, SQLite's `'now'`), never
//! from the process: a relay whose clock runs ahead cannot take over live leases.

mod mysql;
mod postgres;
pub(crate) mod sql;
mod sqlite;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, QueryResult,
    TransactionTrait,
};
use uuid::Uuid;

use outbox_core::{Envelope, Headers};

use crate::admin::{DeadLetter, DeliveryInfo, OutboxCounts};
use crate::config::{OutboxConfig, quote};
use crate::entity::{DeliveryStatus, MessageStatus};
use crate::error::{Error, Result};
use sql::{Arg, Catalog, seqs};

/// The driver for `db`'s backend and the tables of `config`.
pub(crate) fn for_backend(backend: DbBackend, config: &OutboxConfig) -> Arc<dyn Driver> {
    match backend {
        DbBackend::Postgres => Arc::new(postgres::Postgres::new(config)),
        DbBackend::MySql => Arc::new(mysql::MySql::new(config)),
        _ => Arc::new(sqlite::Sqlite::new(config)),
    }
}

/// The driver for `backend` and `config`, built once per process: a unit of work begins with
/// a map look-up, not by parsing SQL.
pub(crate) fn cached(backend: DbBackend, config: &OutboxConfig) -> Arc<dyn Driver> {
    // `DbBackend` is not `Hash`: key by its name.
    type Drivers = Mutex<HashMap<(String, OutboxConfig), Arc<dyn Driver>>>;
    static DRIVERS: OnceLock<Drivers> = OnceLock::new();
    let mut map = DRIVERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry((format!("{backend:?}"), config.clone()))
        .or_insert_with(|| for_backend(backend, config))
        .clone()
}

/// A new row of the messages table.
#[derive(Debug, Clone)]
pub(crate) struct NewMessage {
    pub(crate) id: Uuid,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) event_type: String,
    pub(crate) event_version: u32,
    pub(crate) payload: String,
    pub(crate) headers: String,
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) not_before: Option<DateTime<Utc>>,
}

/// How a claim respects the order of each aggregate's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimOrder {
    /// Any available message.
    Any,
    /// Only runs of messages that start at their aggregate's head (its first undelivered
    /// message); `dead_blocks`: a dead message is still the head.
    PerAggregate { dead_blocks: bool },
}

/// What to claim.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimSpec<'a> {
    pub(crate) relay: &'a str,
    pub(crate) limit: u32,
    pub(crate) lease: Duration,
    pub(crate) order: ClaimOrder,
    /// How many available rows an ordered claim looks at (a bounded prefix of the pending
    /// rows, in sequence order).
    pub(crate) window: u32,
    /// The server-side time limit of each claim statement.
    pub(crate) timeout: Duration,
}

/// A row a relay claimed.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub(crate) envelope: Envelope,
    /// Times it was claimed since its last outcome, this claim included: more than 1 means a
    /// relay claimed it before and never wrote what happened (it died, or hung past its lease).
    pub(crate) claims: u32,
    /// Times a relay died while running it alone.
    pub(crate) crashes: u32,
    /// Delayed messages stand outside their aggregate's order.
    pub(crate) delayed: bool,
    /// Whether an earlier attempt failed, so per-handler states may exist.
    pub(crate) failed_before: bool,
}

/// A handler's stored state for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeliveryState {
    pub(crate) status: DeliveryStatus,
    pub(crate) attempts: u32,
}

/// A row to upsert into the deliveries table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryWrite {
    pub(crate) handler: String,
    pub(crate) status: DeliveryStatus,
    pub(crate) attempts: u32,
    pub(crate) error: Option<(String, &'static str)>,
}

/// The new state of a message that did not simply succeed at once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutcomeWrite {
    pub(crate) seq: i64,
    pub(crate) message_id: Uuid,
    pub(crate) status: MessageStatus,
    /// For a pending message: when it is available again, from now.
    pub(crate) retry_in: Duration,
    pub(crate) error: Option<(String, &'static str)>,
    pub(crate) deliveries: Vec<DeliveryWrite>,
    /// Whether its handlers ran (counted in `attempts`); a message left for another relay
    /// did not run.
    pub(crate) ran: bool,
    /// Delete the row (and its delivery rows) instead of marking it delivered.
    pub(crate) delete: bool,
}

/// How long an aggregate's later messages wait behind a failed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Until the failed message's retry.
    For(Duration),
    /// Until an operator requeues or discards the dead message.
    Forever,
}

/// An aggregate whose later messages must wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockWrite {
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) after_position: i64,
    pub(crate) hold: Hold,
}

/// Messages given back without an outcome (behind a failed message of their aggregate, or at
/// shutdown). They are not counted as claimed without an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReleaseWrite {
    pub(crate) seqs: Vec<i64>,
}

/// Everything the completer writes at once.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Completion {
    /// Messages whose every delivery succeeded at the first try (no delivery rows).
    pub(crate) delivered: Vec<i64>,
    /// Delete delivered rows instead of marking them.
    pub(crate) delete: bool,
    pub(crate) outcomes: Vec<OutcomeWrite>,
    pub(crate) blocks: Vec<BlockWrite>,
    pub(crate) releases: Vec<ReleaseWrite>,
}

/// What a completion wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    /// Messages marked delivered (or deleted).
    pub(crate) delivered: u64,
    /// Messages scheduled for another attempt.
    pub(crate) retried: u64,
    /// Messages that became dead.
    pub(crate) dead: u64,
    /// Messages left for a relay that knows their type (pending, not run).
    pub(crate) left_for_others: u64,
    /// Messages given back.
    pub(crate) released: u64,
    /// Messages this relay no longer held (its lease had passed to another relay).
    pub(crate) lease_lost: u64,
}

impl Written {
    fn count(&mut self, o: &OutcomeWrite) {
        match (o.status, o.ran) {
            (MessageStatus::Delivered, _) => self.delivered += 1,
            (MessageStatus::Dead, _) => self.dead += 1,
            (MessageStatus::Pending, true) => self.retried += 1,
            (MessageStatus::Pending, false) => self.left_for_others += 1,
        }
    }
}

/// The SQL of one database.
///
/// The provided methods run the driver's named queries; a driver overrides what its database
/// does differently.
#[async_trait::async_trait]
pub(crate) trait Driver: Send + Sync + fmt::Debug {
    /// The driver's named statements.
    fn sql(&self) -> &Catalog;

    /// The tables it works on.
    fn config(&self) -> &OutboxConfig;

    /// A duration as the argument of the driver's interval arithmetic (`:after`, `:lease`).
    fn span(&self, d: Duration) -> Arg;

    /// The `CREATE` statements of the outbox tables.
    fn create_statements(&self) -> Vec<String>;

    /// The `DROP` statements of the outbox tables.
    fn drop_statements(&self) -> Vec<String> {
        let c = self.config();
        [
            c.locks_table(),
            c.inbox_table(),
            c.deliveries_table(),
            c.streams_table(),
            c.messages_table(),
        ]
        .into_iter()
        .map(|t| format!("DROP TABLE IF EXISTS {}", quote(self.sql().backend(), t)))
        .collect()
    }

    /// Claims retried at once after a deadlock, since the driver was built.
    fn conflicts_retried(&self) -> u64 {
        0
    }

    /// The configured pool size, to warn when it cannot serve the relay's concurrency.
    fn pool_size(&self, db: &DatabaseConnection) -> u32;

    /// The PostgreSQL channel relays `LISTEN` on, when commits notify.
    fn listen_channel(&self) -> Option<String> {
        None
    }

    /// Begins a transaction that is going to write.
    async fn begin_write(&self, db: &DatabaseConnection) -> Result<DatabaseTransaction> {
        Ok(db.begin().await?)
    }

    /// Appends messages in `txn`: each aggregate's stream row hands out the next positions
    /// (and is locked until `txn` ends, so positions follow commit order), then the rows are
    /// inserted in recording order.
    async fn append(&self, txn: &DatabaseTransaction, rows: &[NewMessage]) -> Result<()>;

    /// Claims messages for a relay.
    async fn claim(&self, db: &DatabaseConnection, spec: &ClaimSpec<'_>) -> Result<Vec<Claimed>>;

    /// Checks that the outbox tables exist with the columns this version uses.
    async fn check_schema(&self, db: &DatabaseConnection) -> Result<()> {
        check_tables(self, db).await
    }

    /// The stored per-handler states of the messages with these sequence numbers.
    async fn prior_deliveries(
        &self,
        db: &DatabaseConnection,
        seq_list: &[i64],
    ) -> Result<HashMap<Uuid, HashMap<String, DeliveryState>>> {
        let mut out: HashMap<Uuid, HashMap<String, DeliveryState>> = HashMap::new();
        if seq_list.is_empty() {
            return Ok(out);
        }
        let stmt = self
            .sql()
            .stmt("prior_deliveries", &[("seqs", seqs(seq_list))]);
        for row in db.query_all_raw(stmt).await? {
            let id: Uuid = row.try_get("", "message_id")?;
            let handler: String = row.try_get("", "handler")?;
            let status: String = row.try_get("", "status")?;
            let attempts: i32 = row.try_get("", "attempts")?;
            let status = DeliveryStatus::parse(&status).unwrap_or_else(|| {
                // A status written by a newer version: leave the handler alone (as if it had
                // succeeded) rather than run it again.
                tracing::warn!(message_id = %id, handler, status, "unknown delivery status");
                DeliveryStatus::Delivered
            });
            out.entry(id).or_default().insert(
                handler,
                DeliveryState {
                    status,
                    attempts: attempts.max(0) as u32,
                },
            );
        }
        Ok(out)
    }

    /// Extends the lease on the messages `relay` still holds. Returns how many.
    async fn extend_leases(
        &self,
        db: &DatabaseConnection,
        relay: &str,
        seq_list: &[i64],
        lease: Duration,
    ) -> Result<u64> {
        if seq_list.is_empty() {
            return Ok(0);
        }
        let stmt = self.sql().stmt(
            "extend_leases",
            &[
                ("seqs", seqs(seq_list)),
                ("relay", relay.into()),
                ("lease", self.span(lease)),
            ],
        );
        Ok(db.execute_raw(stmt).await?.rows_affected())
    }

    /// Counts one more crash against a message `relay` holds, before it runs alone. Returns
    /// `false` when the relay no longer holds it.
    async fn count_crash(&self, db: &DatabaseConnection, relay: &str, seq: i64) -> Result<bool> {
        let stmt = self.sql().stmt(
            "count_crash",
            &[("seq", seq.into()), ("relay", relay.into())],
        );
        Ok(db.execute_raw(stmt).await?.rows_affected() == 1)
    }

    /// Writes what the relay decided, fenced by `relay`'s lease.
    async fn complete(
        &self,
        db: &DatabaseConnection,
        relay: &str,
        c: &Completion,
    ) -> Result<Written> {
        let mut w = Written::default();
        let sql = self.sql();
        if !c.delivered.is_empty() {
            let q = if c.delete {
                "delete_now"
            } else {
                "mark_delivered"
            };
            let stmt = sql.stmt(q, &[("seqs", seqs(&c.delivered)), ("relay", relay.into())]);
            let n = db.execute_raw(stmt).await?.rows_affected();
            w.delivered += n;
            w.lease_lost += (c.delivered.len() as u64).saturating_sub(n);
        }
        // Releases go first: a failed message's hold then covers its released followers too.
        for r in &c.releases {
            if r.seqs.is_empty() {
                continue;
            }
            let stmt = sql.stmt(
                "release",
                &[("seqs", seqs(&r.seqs)), ("relay", relay.into())],
            );
            let n = db.execute_raw(stmt).await?.rows_affected();
            w.released += n;
            w.lease_lost += (r.seqs.len() as u64).saturating_sub(n);
        }
        if !c.outcomes.is_empty() || !c.blocks.is_empty() {
            let txn = self.begin_write(db).await?;
            for o in &c.outcomes {
                if self.write_outcome(&txn, relay, o).await? {
                    w.count(o);
                } else {
                    w.lease_lost += 1;
                }
            }
            for b in &c.blocks {
                let args = [
                    ("aggregate_type", Arg::from(b.aggregate_type.clone())),
                    ("aggregate_id", b.aggregate_id.clone().into()),
                    ("position", b.after_position.into()),
                    (
                        "after",
                        self.span(match b.hold {
                            Hold::For(d) => d,
                            Hold::Forever => Duration::ZERO,
                        }),
                    ),
                ];
                let (stream, followers) = match b.hold {
                    Hold::For(_) => ("hold_stream", "hold_followers"),
                    Hold::Forever => ("block_stream", "block_followers"),
                };
                txn.execute_raw(sql.stmt(stream, &args)).await?;
                txn.execute_raw(sql.stmt(followers, &args)).await?;
            }
            txn.commit().await?;
        }
        Ok(w)
    }

    /// Writes one outcome with its per-handler states. Returns `false` when `relay` no longer
    /// held the message.
    async fn write_outcome(
        &self,
        txn: &DatabaseTransaction,
        relay: &str,
        o: &OutcomeWrite,
    ) -> Result<bool> {
        let sql = self.sql();
        if o.delete && o.status == MessageStatus::Delivered {
            // Delivery rows describe nothing once the message is gone. Deleted first, and only
            // while this relay still holds the message.
            let args = [("seq", Arg::from(o.seq)), ("relay", relay.into())];
            txn.execute_raw(sql.stmt("delete_deliveries_held", &args))
                .await?;
            let n = txn
                .execute_raw(sql.stmt("delete_held", &args))
                .await?
                .rows_affected();
            return Ok(n == 1);
        }
        let (err, kind) = match &o.error {
            Some((e, k)) => (Some(e.clone()), Some((*k).to_owned())),
            None => (None, None),
        };
        let stmt = sql.stmt(
            "write_outcome",
            &[
                ("status", o.status.as_str().into()),
                ("after", self.span(o.retry_in)),
                ("error", err.into()),
                ("kind", kind.into()),
                ("ran", i32::from(o.ran).into()),
                ("seq", o.seq.into()),
                ("relay", relay.into()),
            ],
        );
        if txn.execute_raw(stmt).await?.rows_affected() == 0 {
            return Ok(false);
        }
        for d in &o.deliveries {
            let (err, kind) = match &d.error {
                Some((e, k)) => (Some(e.clone()), Some((*k).to_owned())),
                None => (None, None),
            };
            let stmt = sql.stmt(
                "upsert_delivery",
                &[
                    ("message_id", o.message_id.into()),
                    ("handler", d.handler.clone().into()),
                    ("status", d.status.as_str().into()),
                    ("attempts", (d.attempts.min(i32::MAX as u32) as i32).into()),
                    ("error", err.into()),
                    ("kind", kind.into()),
                ],
            );
            txn.execute_raw(stmt).await?;
        }
        Ok(true)
    }

    /// Takes (or renews) the named lock for `holder` for `hold`, if it is free, expired or
    /// already `holder`'s. Returns whether `holder` has it now.
    async fn try_lock(
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
    async fn unlock(&self, db: &DatabaseConnection, name: &str, holder: &str) -> Result<()> {
        let stmt = self.sql().stmt(
            "unlock",
            &[("name", name.into()), ("holder", holder.into())],
        );
        db.execute_raw(stmt).await?;
        Ok(())
    }

    /// Deletes up to `limit` messages delivered more than `age` ago, oldest first, with their
    /// delivery rows. Returns how many.
    async fn delete_delivered(
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
    async fn delete_inbox(
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
    async fn mark_processed(
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
    async fn counts(&self, db: &DatabaseConnection) -> Result<OutboxCounts> {
        let rows = db.query_all_raw(self.sql().stmt("counts", &[])).await?;
        let mut c = OutboxCounts::default();
        for r in rows {
            let status: String = r.try_get("", "status")?;
            let n = r.try_get::<i64>("", "n")?.max(0) as u64;
            match status.as_str() {
                "pending" => c.pending += n,
                "delivered" => c.delivered += n,
                "dead" => c.dead += n,
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
    async fn dead_letters(&self, db: &DatabaseConnection, limit: u32) -> Result<Vec<DeadLetter>> {
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
        let rows = db
            .query_all_raw(sql.stmt("deliveries_of", &[("seqs", seqs(&list))]))
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
        for d in &mut out {
            d.deliveries = by_id.remove(&d.message_id).unwrap_or_default();
        }
        Ok(out)
    }

    /// Puts a dead message back in the queue: its dead deliveries (or only `handler`'s) get a
    /// fresh retry budget, delivered ones are not run again, and the aggregate's later
    /// messages, held back behind it, are released.
    async fn requeue(
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
    async fn discard(&self, db: &DatabaseConnection, message_id: Uuid) -> Result<()> {
        let sql = self.sql();
        let txn = self.begin_write(db).await?;
        let Some(row) = txn
            .query_one_raw(sql.stmt("discardable", &[("id", message_id.into())]))
            .await?
        else {
            return Err(Error::MessageNotFound {
                message_id,
                operation: "discard",
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
    async fn unblock(&self, txn: &DatabaseTransaction, row: &QueryResult) -> Result<()> {
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

    /// Wakes relays in other processes (PostgreSQL `NOTIFY`, when configured).
    async fn notify(&self, _db: &DatabaseConnection) -> Result<()> {
        Ok(())
    }
}

/// Checks each outbox table with a query that reads every column it needs and no row.
pub(crate) async fn check_tables<D: Driver + ?Sized>(d: &D, db: &DatabaseConnection) -> Result<()> {
    let c = d.config();
    for (table, query) in [
        (c.messages_table(), "check_messages"),
        (c.deliveries_table(), "check_deliveries"),
        (c.streams_table(), "check_streams"),
        (c.inbox_table(), "check_inbox"),
        (c.locks_table(), "check_locks"),
    ] {
        if let Err(source) = db.query_all_raw(d.sql().stmt(query, &[])).await {
            return Err(Error::Schema {
                table: table.to_owned(),
                source,
            });
        }
    }
    Ok(())
}

/// Reads a claimed row (the columns every driver's claim returns).
pub(crate) fn read_claimed(row: &QueryResult) -> Result<Claimed> {
    let seq: i64 = row.try_get("", "seq")?;
    let headers_text: String = row.try_get("", "headers")?;
    // Headers are metadata: a row whose headers were damaged by hand is still delivered.
    let headers: Headers = serde_json::from_str(&headers_text).unwrap_or_else(|e| {
        tracing::warn!(seq, error = %e, "outbox row has unreadable headers; delivering without them");
        Headers::default()
    });
    let count = |name: &str| -> Result<u32> { Ok(row.try_get::<i32>("", name)?.max(0) as u32) };
    let not_before: Option<DateTime<Utc>> = row.try_get("", "not_before")?;
    let last_error_kind: Option<String> = row.try_get("", "last_error_kind")?;
    Ok(Claimed {
        envelope: Envelope {
            message_id: row.try_get("", "id")?,
            sequence: seq,
            position: row.try_get("", "position")?,
            aggregate_type: row.try_get("", "aggregate_type")?,
            aggregate_id: row.try_get("", "aggregate_id")?,
            event_type: row.try_get("", "event_type")?,
            event_version: count("event_version")?,
            payload: row.try_get("", "payload")?,
            headers,
            occurred_at: row.try_get("", "occurred_at")?,
        },
        claims: count("claims")?,
        crashes: count("crashes")?,
        delayed: not_before.is_some(),
        failed_before: last_error_kind.is_some(),
    })
}

/// Messages grouped by aggregate, in recording order, with how many each aggregate has: what
/// an append needs to reserve positions.
pub(crate) fn per_aggregate(rows: &[NewMessage]) -> Vec<((&str, &str), i64)> {
    let mut counts: Vec<((&str, &str), i64)> = Vec::new();
    for r in rows {
        let key = (r.aggregate_type.as_str(), r.aggregate_id.as_str());
        match counts.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => counts.push((key, 1)),
        }
    }
    // One order for every writer, so two writers locking the same stream rows cannot
    // deadlock on each other.
    counts.sort();
    counts
}

/// The positions of `rows` given the last position each aggregate's stream handed out.
pub(crate) fn positions(rows: &[NewMessage], last: &HashMap<(String, String), i64>) -> Vec<i64> {
    let mut counts: HashMap<(&str, &str), i64> = HashMap::new();
    for r in rows {
        *counts
            .entry((r.aggregate_type.as_str(), r.aggregate_id.as_str()))
            .or_default() += 1;
    }
    let mut next: HashMap<(&str, &str), i64> = HashMap::new();
    rows.iter()
        .map(|r| {
            let key = (r.aggregate_type.as_str(), r.aggregate_id.as_str());
            let top = last
                .get(&(key.0.to_owned(), key.1.to_owned()))
                .copied()
                .unwrap_or(counts[&key]);
            let k = next.entry(key).or_insert(top - counts[&key]);
            *k += 1;
            *k
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: &str, id: &str) -> NewMessage {
        NewMessage {
            id: Uuid::now_v7(),
            aggregate_type: t.into(),
            aggregate_id: id.into(),
            event_type: "e".into(),
            event_version: 1,
            payload: "{}".into(),
            headers: "{}".into(),
            occurred_at: Utc::now(),
            not_before: None,
        }
    }

    #[test]
    fn positions_continue_each_stream_in_recording_order() {
        let rows = [row("o", "1"), row("o", "2"), row("o", "1"), row("c", "1")];
        let mut last = HashMap::new();
        last.insert(("o".to_owned(), "1".to_owned()), 7); // 5 before, 2 now
        last.insert(("o".to_owned(), "2".to_owned()), 1);
        last.insert(("c".to_owned(), "1".to_owned()), 3);
        assert_eq!(positions(&rows, &last), [6, 1, 7, 3]);
        let keys: Vec<_> = per_aggregate(&rows).into_iter().collect();
        assert_eq!(keys, [(("c", "1"), 1), (("o", "1"), 2), (("o", "2"), 1)]);
    }
}
