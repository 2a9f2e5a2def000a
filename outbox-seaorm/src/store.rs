//! Every SQL statement the outbox runs, per backend.
//!
//! The write path inserts rows; the relay claims them with a committed lease (`locked_by`,
//! `locked_until`), then marks them delivered, schedules a retry, parks them as dead or releases
//! them. Writes after a claim are fenced by `locked_by = <this relay>`, so a relay whose lease
//! expired (and whose rows another relay took over) cannot overwrite the newer state.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, IsolationLevel,
    QueryResult, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Value,
};
use uuid::Uuid;

use outbox_core::{Envelope, Headers};

use crate::config::{OutboxConfig, quote};
use crate::entity::{DeliveryStatus, MessageStatus};
use crate::error::{Error, Result};

/// What happens to a message whose earlier message on the same aggregate is not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// Messages are claimed in sequence order but delivered independently: the highest
    /// throughput, no order guarantee between messages of one aggregate.
    Unordered,
    /// The messages of one aggregate reach each handler in the order they were recorded.
    PerAggregate(OnFailure),
}

/// In [`Ordering::PerAggregate`], what a message that failed for good does to the messages of
/// its aggregate that come after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// They wait until the dead message is requeued (and delivered) or discarded: order is
    /// never broken. A retrying message always blocks its aggregate.
    Block,
    /// The dead message is parked and the aggregate goes on with the next one.
    Park,
}

/// A new row of the messages table.
#[derive(Debug)]
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

/// A row a relay claimed.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) envelope: Envelope,
    /// Times the row was claimed, this claim included.
    pub(crate) claims: u32,
    /// Delayed messages stand outside their aggregate's order.
    pub(crate) delayed: bool,
    /// Whether an earlier attempt failed, so per-handler states may exist.
    pub(crate) failed_before: bool,
}

/// A handler's state for one message, as stored in the deliveries table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryState {
    pub(crate) status: DeliveryStatus,
    pub(crate) attempts: u32,
}

/// The new state of a message that did not simply succeed.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) status: MessageStatus,
    pub(crate) available_at: DateTime<Utc>,
    pub(crate) error: Option<(String, &'static str)>,
    pub(crate) deliveries: Vec<DeliveryWrite>,
}

/// A row to upsert into the deliveries table.
#[derive(Debug)]
pub(crate) struct DeliveryWrite {
    pub(crate) handler: String,
    pub(crate) status: DeliveryStatus,
    pub(crate) attempts: u32,
    pub(crate) error: Option<(String, &'static str)>,
}

/// Begins a transaction that is going to write.
///
/// On SQLite it is `BEGIN IMMEDIATE`: the write lock is taken (waiting on the busy timeout) at
/// the start, so a transaction that reads before it writes cannot fail with `SQLITE_BUSY` when
/// another connection committed in between, as a deferred one would.
pub(crate) async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction> {
    Ok(match db.get_database_backend() {
        DbBackend::Sqlite => {
            db.begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?
        }
        _ => db.begin().await?,
    })
}

/// Builds a statement with backend-specific placeholders.
struct Params {
    backend: DbBackend,
    values: Vec<Value>,
}

impl Params {
    fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            values: Vec::new(),
        }
    }

    fn bind(&mut self, v: impl Into<Value>) -> String {
        self.values.push(v.into());
        match self.backend {
            DbBackend::Postgres => format!("${}", self.values.len()),
            _ => "?".to_owned(),
        }
    }

    /// `(?, ?, ...)` for an `IN` list. The list is padded to a power of two by repeating its
    /// last element (harmless in `IN`), so a relay prepares a handful of statements instead of
    /// one per batch size.
    fn list<T: Clone + Into<Value>>(&mut self, items: &[T]) -> String {
        let n = items.len().next_power_of_two();
        let parts: Vec<String> = (0..n)
            .map(|i| self.bind(items[i.min(items.len() - 1)].clone()))
            .collect();
        format!("({})", parts.join(", "))
    }

    fn statement(self, sql: String) -> Statement {
        Statement::from_sql_and_values(self.backend, sql, self.values)
    }
}

/// The SQL of one outbox (one set of table names) on one backend.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    backend: DbBackend,
    messages: String,
    deliveries: String,
    inbox: String,
    locks: String,
    /// The channel commits `NOTIFY` on (PostgreSQL with `pg_notify` only).
    notify_channel: Option<String>,
}

const CLAIM_COLUMNS: &str = "o.seq, o.id, o.aggregate_type, o.aggregate_id, o.event_type, \
     o.event_version, o.payload, o.headers, o.occurred_at, o.not_before, o.attempts, \
     o.last_error_kind";

impl Store {
    pub(crate) fn new(backend: DbBackend, config: &OutboxConfig) -> Self {
        Self {
            backend,
            messages: quote(backend, config.messages_table()),
            deliveries: quote(backend, config.deliveries_table()),
            inbox: quote(backend, config.inbox_table()),
            locks: quote(backend, config.locks_table()),
            notify_channel: (backend == DbBackend::Postgres && config.notifies())
                .then(|| config.notify_channel().to_owned()),
        }
    }

    /// Sends the wake-up notification, delivered by PostgreSQL when `db`'s transaction commits
    /// (and never if it rolls back). A no-op unless `pg_notify` is on.
    pub(crate) async fn notify(&self, db: &impl ConnectionTrait) -> Result<()> {
        if let Some(channel) = &self.notify_channel {
            db.execute_raw(Statement::from_sql_and_values(
                self.backend,
                "SELECT pg_notify($1, '')",
                [channel.clone().into()],
            ))
            .await?;
        }
        Ok(())
    }

    /// Takes (or renews) the named lock for `holder` until `until`, if it is free, expired or
    /// already `holder`'s. Returns whether `holder` now has it.
    pub(crate) async fn try_lock(
        &self,
        db: &impl ConnectionTrait,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        let mut p = Params::new(self.backend);
        let n = p.bind(name.to_owned());
        let insert = match self.backend {
            DbBackend::MySql => {
                format!("INSERT IGNORE INTO {l} (name) VALUES ({n})", l = self.locks)
            }
            _ => format!(
                "INSERT INTO {l} (name) VALUES ({n}) ON CONFLICT (name) DO NOTHING",
                l = self.locks
            ),
        };
        db.execute_raw(p.statement(insert)).await?;
        let mut p = Params::new(self.backend);
        let by = p.bind(holder.to_owned());
        let until = p.bind(until);
        let n = p.bind(name.to_owned());
        let now = p.bind(now);
        let me = p.bind(holder.to_owned());
        let sql = format!(
            "UPDATE {l} SET holder = {by}, locked_until = {until} WHERE name = {n} \
             AND (holder IS NULL OR locked_until < {now} OR holder = {me})",
            l = self.locks
        );
        Ok(db.execute_raw(p.statement(sql)).await?.rows_affected() == 1)
    }

    /// Marks `message_id` processed by `consumer`, in `db`'s transaction. Returns `false` when
    /// it already was: a concurrent transaction marking the same pair blocks on the key until
    /// the first commits (then this one sees the mark) or rolls back (then this one wins).
    pub(crate) async fn mark_processed(
        &self,
        db: &impl ConnectionTrait,
        consumer: &str,
        message_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut p = Params::new(self.backend);
        let c = p.bind(consumer.to_owned());
        let id = p.bind(message_id);
        let at = p.bind(now);
        let sql = match self.backend {
            DbBackend::MySql => format!(
                "INSERT IGNORE INTO {i} (consumer, message_id, processed_at) VALUES ({c}, {id}, {at})",
                i = self.inbox
            ),
            _ => format!(
                "INSERT INTO {i} (consumer, message_id, processed_at) VALUES ({c}, {id}, {at}) \
                 ON CONFLICT (consumer, message_id) DO NOTHING",
                i = self.inbox
            ),
        };
        Ok(db.execute_raw(p.statement(sql)).await?.rows_affected() == 1)
    }

    /// Deletes up to `limit` inbox rows processed before `cutoff`. Returns how many.
    pub(crate) async fn delete_inbox_before(
        &self,
        db: &impl ConnectionTrait,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<usize> {
        let mut p = Params::new(self.backend);
        let c = p.bind(cutoff);
        let lim = p.bind(limit as i64);
        let sql = match self.backend {
            DbBackend::MySql => format!(
                "DELETE FROM {i} WHERE processed_at < {c} ORDER BY processed_at LIMIT {lim}",
                i = self.inbox
            ),
            _ => format!(
                "DELETE FROM {i} WHERE (consumer, message_id) IN (SELECT consumer, message_id \
                 FROM {i} WHERE processed_at < {c} ORDER BY processed_at LIMIT {lim})",
                i = self.inbox
            ),
        };
        Ok(db.execute_raw(p.statement(sql)).await?.rows_affected() as usize)
    }

    /// Lets go of the named lock if `holder` has it.
    pub(crate) async fn unlock(
        &self,
        db: &impl ConnectionTrait,
        name: &str,
        holder: &str,
    ) -> Result<()> {
        let mut p = Params::new(self.backend);
        let n = p.bind(name.to_owned());
        let by = p.bind(holder.to_owned());
        let sql = format!(
            "UPDATE {l} SET holder = NULL, locked_until = NULL WHERE name = {n} AND holder = {by}",
            l = self.locks
        );
        db.execute_raw(p.statement(sql)).await?;
        Ok(())
    }

    /// Deletes up to `limit` messages delivered before `cutoff`, oldest first, with their
    /// delivery rows. Each statement is short, so no lock is held for long. Returns how many.
    pub(crate) async fn delete_delivered(
        &self,
        db: &impl ConnectionTrait,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<usize> {
        let mut p = Params::new(self.backend);
        let c = p.bind(cutoff);
        let lim = p.bind(limit as i64);
        let sql = format!(
            "SELECT seq, id FROM {m} WHERE status = 'delivered' AND delivered_at < {c} \
             ORDER BY delivered_at LIMIT {lim}",
            m = self.messages
        );
        let rows = db.query_all_raw(p.statement(sql)).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut seqs = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        for r in &rows {
            seqs.push(r.try_get::<i64>("", "seq")?);
            ids.push(r.try_get::<Uuid>("", "id")?);
        }
        for (ids, seqs) in ids.chunks(500).zip(seqs.chunks(500)) {
            let mut p = Params::new(self.backend);
            let list = p.list(ids);
            let sql = format!(
                "DELETE FROM {d} WHERE message_id IN {list}",
                d = self.deliveries
            );
            db.execute_raw(p.statement(sql)).await?;
            let mut p = Params::new(self.backend);
            let list = p.list(seqs);
            let sql = format!(
                "DELETE FROM {m} WHERE seq IN {list} AND status = 'delivered'",
                m = self.messages
            );
            db.execute_raw(p.statement(sql)).await?;
        }
        Ok(rows.len())
    }

    /// Inserts messages, in order, in as few statements as the backend's parameter limit allows.
    pub(crate) async fn insert(
        &self,
        db: &impl ConnectionTrait,
        rows: &[NewMessage],
    ) -> Result<()> {
        // 10 parameters a row; 500 rows stay far below SQLite's 32766 and PostgreSQL's 65535.
        for chunk in rows.chunks(500) {
            let mut p = Params::new(self.backend);
            let json = |p: &mut Params, s: &str| {
                let ph = p.bind(s.to_owned());
                match self.backend {
                    // Bound as text and cast: stored as written, not normalized through jsonb.
                    DbBackend::Postgres => format!("CAST({ph} AS JSON)"),
                    _ => ph,
                }
            };
            let mut tuples = Vec::with_capacity(chunk.len());
            for r in chunk {
                let available_at = r.not_before.unwrap_or(r.occurred_at);
                let t = [
                    p.bind(r.id),
                    p.bind(r.aggregate_type.clone()),
                    p.bind(r.aggregate_id.clone()),
                    p.bind(r.event_type.clone()),
                    p.bind(r.event_version as i32),
                    json(&mut p, &r.payload),
                    json(&mut p, &r.headers),
                    p.bind(r.occurred_at),
                    p.bind(r.not_before),
                    p.bind(available_at),
                ];
                tuples.push(format!("({})", t.join(", ")));
            }
            let sql = format!(
                "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, event_version, \
                 payload, headers, occurred_at, not_before, available_at) VALUES {}",
                self.messages,
                tuples.join(", ")
            );
            db.execute_raw(p.statement(sql)).await?;
        }
        Ok(())
    }

    fn claim_filter(&self, p: &mut Params, now: DateTime<Utc>, ordering: Ordering) -> String {
        let now1 = p.bind(now);
        let now2 = p.bind(now);
        let mut filter = format!(
            "o.status = 'pending' AND o.available_at <= {now1} \
             AND (o.locked_until IS NULL OR o.locked_until < {now2})"
        );
        if let Ordering::PerAggregate(on_failure) = ordering {
            let blocking = match on_failure {
                OnFailure::Block => "'pending', 'dead'",
                OnFailure::Park => "'pending'",
            };
            // (`status <> 'delivered'` repeats the aggregate index's own condition: SQLite uses
            // a partial index only when the query states its WHERE term literally.)
            // Only the head of an aggregate is claimable: while an earlier message is pending
            // (queued, claimed by another relay, or waiting for a retry) the later ones wait.
            // Claiming does not change `status`, so no relay can ever see a later message as
            // the head while an earlier one is in flight.
            filter.push_str(&format!(
                " AND (o.not_before IS NOT NULL OR NOT EXISTS (SELECT 1 FROM {m} p \
                 WHERE p.aggregate_type = o.aggregate_type AND p.aggregate_id = o.aggregate_id \
                 AND p.seq < o.seq AND p.status IN ({blocking}) AND p.not_before IS NULL \
                 AND p.status <> 'delivered'))",
                m = self.messages
            ));
        }
        filter
    }

    /// Claims up to `limit` available messages for `relay` until `lease_until`, in sequence order.
    ///
    /// In per-aggregate order, the claim takes aggregate heads (see [`claim_filter`]), then,
    /// when the batch has room, the messages that follow those heads: no other relay can claim
    /// them while this one holds their head, so the relay runs each aggregate's run in order in
    /// one batch instead of one message per aggregate per round trip.
    pub(crate) async fn claim(
        &self,
        db: &DatabaseConnection,
        relay: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
        ordering: Ordering,
    ) -> Result<Vec<Claimed>> {
        let plain = |p: &mut Params| {
            (
                format!("{} AS o", self.messages),
                self.claim_filter(p, now, ordering),
            )
        };
        let mut rows = match ordering {
            Ordering::Unordered => {
                self.claim_where(db, relay, lease_until, limit, true, plain)
                    .await?
            }
            Ordering::PerAggregate(on_failure) => {
                let heads = self
                    .claim_where(db, relay, lease_until, limit, true, |p| {
                        self.windowed_heads(p, now, limit.saturating_mul(4).max(100), on_failure)
                    })
                    .await?;
                if heads.is_empty() {
                    // The window may be full of blocked aggregates (retrying, or behind a dead
                    // message): look at the whole backlog so no aggregate starves behind them.
                    self.claim_where(db, relay, lease_until, limit, true, plain)
                        .await?
                } else {
                    heads
                }
            }
        };
        if let Ordering::PerAggregate(on_failure) = ordering
            && !rows.is_empty()
            && rows.len() < limit as usize
        {
            let mut heads: Vec<(String, String)> = rows
                .iter()
                .filter(|c| !c.delayed)
                .map(|c| {
                    (
                        c.envelope.aggregate_type.clone(),
                        c.envelope.aggregate_id.clone(),
                    )
                })
                .collect();
            heads.sort();
            heads.dedup();
            if !heads.is_empty() {
                let room = limit - rows.len() as u32;
                let followers = self
                    .claim_where(db, relay, lease_until, room, false, |p| {
                        self.followers_filter(p, now, relay, on_failure, &heads)
                    })
                    .await?;
                rows.extend(followers);
            }
        }
        // RETURNING gives no order guarantee.
        rows.sort_by_key(|c| c.envelope.sequence);
        Ok(rows)
    }

    /// The messages, not delayed, that follow heads this relay holds.
    fn followers_filter(
        &self,
        p: &mut Params,
        now: DateTime<Utc>,
        relay: &str,
        on_failure: OnFailure,
        heads: &[(String, String)],
    ) -> (String, String) {
        let now1 = p.bind(now);
        let now2 = p.bind(now);
        // Padded to a power of two like `Params::list`, so few distinct statements are prepared.
        let n = heads.len().next_power_of_two();
        let pairs: Vec<String> = (0..n)
            .map(|i| {
                let (t, id) = &heads[i.min(heads.len() - 1)];
                format!("({}, {})", p.bind(t.clone()), p.bind(id.clone()))
            })
            .collect();
        // A follower is claimable only if nothing earlier in its aggregate stands in the way:
        // a row leased by another relay, a row not due yet (waiting for a retry), or, in block
        // mode, a dead row. The rows this relay holds, and the due unleased ones this same
        // statement takes, are its run; any gap stops it.
        // Bound in the order the text below uses them (`?` placeholders are positional).
        let now3 = p.bind(now);
        let me = p.bind(relay.to_owned());
        let now4 = p.bind(now);
        let now5 = p.bind(now);
        let dead = match on_failure {
            OnFailure::Block => "g.status = 'dead' OR ",
            OnFailure::Park => "",
        };
        let filter = format!(
            "o.status = 'pending' AND o.not_before IS NULL AND o.available_at <= {now1} \
             AND (o.locked_until IS NULL OR o.locked_until < {now2}) \
             AND o.status <> 'delivered' AND (o.aggregate_type, o.aggregate_id) IN ({}) \
             AND NOT EXISTS (SELECT 1 FROM {m} g WHERE g.aggregate_type = o.aggregate_type \
             AND g.aggregate_id = o.aggregate_id AND g.seq < o.seq AND g.not_before IS NULL \
             AND g.status <> 'delivered' AND ({dead}(g.status = 'pending' AND (\
             (g.locked_until IS NOT NULL AND g.locked_until >= {now3} \
             AND COALESCE(g.locked_by, '') <> {me}) \
             OR (g.available_at > {now4} AND (g.locked_until IS NULL OR g.locked_until < {now5}))))))",
            pairs.join(", "),
            m = self.messages
        );
        (format!("{} AS o", self.messages), filter)
    }

    /// Aggregate heads among the first `window` pending rows in sequence order (4 batches: room
    /// for a few relays to claim side by side before one falls back to the unbounded query).
    ///
    /// The window is a prefix of the pending rows, so the first row of an aggregate in it is the
    /// aggregate's head: the claim costs `O(window)`, not `O(backlog)`, which matters when a
    /// large backlog belongs to few aggregates. Delayed rows each get a partition of their own
    /// (they stand outside their aggregate's order); those not yet due stay out of the window.
    fn windowed_heads(
        &self,
        p: &mut Params,
        now: DateTime<Utc>,
        window: u32,
        on_failure: OnFailure,
    ) -> (String, String) {
        let due = p.bind(now);
        let w = p.bind(window as i64);
        let from = format!(
            "{m} AS o JOIN (SELECT x.seq FROM (SELECT w.seq, ROW_NUMBER() OVER (\
             PARTITION BY w.aggregate_type, w.aggregate_id, w.lane ORDER BY w.seq) AS rn \
             FROM (SELECT seq, aggregate_type, aggregate_id, \
             CASE WHEN not_before IS NULL THEN 0 ELSE seq END AS lane FROM {m} \
             WHERE status = 'pending' AND (not_before IS NULL OR available_at <= {due}) \
             ORDER BY seq LIMIT {w}) AS w) AS x WHERE x.rn = 1) AS h ON h.seq = o.seq",
            m = self.messages
        );
        let now1 = p.bind(now);
        let now2 = p.bind(now);
        let mut filter = format!(
            "o.status = 'pending' AND o.available_at <= {now1} \
             AND (o.locked_until IS NULL OR o.locked_until < {now2})"
        );
        if on_failure == OnFailure::Block {
            filter.push_str(&format!(
                " AND (o.not_before IS NOT NULL OR NOT EXISTS (SELECT 1 FROM {m} d \
                 WHERE d.aggregate_type = o.aggregate_type AND d.aggregate_id = o.aggregate_id \
                 AND d.seq < o.seq AND d.status = 'dead' AND d.not_before IS NULL \
                 AND d.status <> 'delivered'))",
                m = self.messages
            ));
        }
        (from, filter)
    }

    /// Claims up to `limit` rows of the `FROM` clause and filter `source` builds (the messages
    /// table under the alias `o`).
    ///
    /// `skip_locked` is off for followers: a row of a held aggregate can be row-locked for an
    /// instant by another relay's scan (InnoDB locks rows as a locking read scans them), and
    /// skipping it would claim the rows after it past a gap. Waiting is safe: only this relay
    /// holds the aggregate's head, and the scans holding such locks never wait themselves.
    async fn claim_where(
        &self,
        db: &DatabaseConnection,
        relay: &str,
        lease_until: DateTime<Utc>,
        limit: u32,
        skip_locked: bool,
        source: impl FnOnce(&mut Params) -> (String, String),
    ) -> Result<Vec<Claimed>> {
        let skip = if skip_locked { " SKIP LOCKED" } else { "" };
        match self.backend {
            DbBackend::Postgres => {
                let mut p = Params::new(self.backend);
                let by = p.bind(relay.to_owned());
                let until = p.bind(lease_until);
                let (from, filter) = source(&mut p);
                let lim = p.bind(limit as i64);
                let sql = format!(
                    "UPDATE {m} AS o SET locked_by = {by}, locked_until = {until}, \
                     attempts = o.attempts + 1 \
                     FROM (SELECT o.seq FROM {from} WHERE {filter} ORDER BY o.seq LIMIT {lim} \
                     FOR UPDATE OF o{skip}) AS c WHERE o.seq = c.seq \
                     RETURNING o.seq, o.id, o.aggregate_type, o.aggregate_id, o.event_type, \
                     o.event_version, o.payload::text AS payload, o.headers::text AS headers, \
                     o.occurred_at, o.not_before, o.attempts, o.last_error_kind",
                    m = self.messages
                );
                let rows = db.query_all_raw(p.statement(sql)).await?;
                rows.iter().map(read_claimed).collect()
            }
            DbBackend::MySql => {
                // READ COMMITTED: InnoDB takes no gap locks, so the locking read does not block
                // writers inserting new outbox rows while the claim runs.
                let txn = db
                    .begin_with_config(Some(IsolationLevel::ReadCommitted), None)
                    .await?;
                let mut p = Params::new(self.backend);
                let (from, filter) = source(&mut p);
                let lim = p.bind(limit as i64);
                let sql = format!(
                    "SELECT {CLAIM_COLUMNS} FROM {from} WHERE {filter} ORDER BY o.seq \
                     LIMIT {lim} FOR UPDATE{skip}"
                );
                let rows = txn.query_all_raw(p.statement(sql)).await?;
                let mut claimed = rows.iter().map(read_claimed).collect::<Result<Vec<_>>>()?;
                if !claimed.is_empty() {
                    let seqs: Vec<i64> = claimed.iter().map(|c| c.envelope.sequence).collect();
                    let mut p = Params::new(self.backend);
                    let by = p.bind(relay.to_owned());
                    let until = p.bind(lease_until);
                    let list = p.list(&seqs);
                    let sql = format!(
                        "UPDATE {m} SET locked_by = {by}, locked_until = {until}, \
                         attempts = attempts + 1 WHERE seq IN {list}",
                        m = self.messages
                    );
                    txn.execute_raw(p.statement(sql)).await?;
                    for c in &mut claimed {
                        c.claims += 1;
                    }
                }
                txn.commit().await?;
                Ok(claimed)
            }
            _ => {
                // SQLite has one writer at a time: a single UPDATE .. RETURNING is atomic, so
                // two relays can never claim one row.
                let mut p = Params::new(self.backend);
                let by = p.bind(relay.to_owned());
                let until = p.bind(lease_until);
                let (from, filter) = source(&mut p);
                let lim = p.bind(limit as i64);
                let sql = format!(
                    "UPDATE {m} SET locked_by = {by}, locked_until = {until}, \
                     attempts = attempts + 1 WHERE seq IN (SELECT o.seq FROM {from} \
                     WHERE {filter} ORDER BY o.seq LIMIT {lim}) \
                     RETURNING seq, id, aggregate_type, aggregate_id, event_type, event_version, \
                     payload, headers, occurred_at, not_before, attempts, last_error_kind",
                    m = self.messages
                );
                let rows = db.query_all_raw(p.statement(sql)).await?;
                rows.iter().map(read_claimed).collect()
            }
        }
    }

    /// The stored per-handler states of these messages (only messages that failed before have
    /// any).
    pub(crate) async fn deliveries(
        &self,
        db: &impl ConnectionTrait,
        message_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, HashMap<String, DeliveryState>>> {
        let mut out: HashMap<Uuid, HashMap<String, DeliveryState>> = HashMap::new();
        if message_ids.is_empty() {
            return Ok(out);
        }
        let mut p = Params::new(self.backend);
        let list = p.list(message_ids);
        let sql = format!(
            "SELECT message_id, handler, status, attempts FROM {d} WHERE message_id IN {list}",
            d = self.deliveries
        );
        for row in db.query_all_raw(p.statement(sql)).await? {
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

    /// Marks messages delivered (or deletes them), if `relay` still holds them. Returns how
    /// many it still held.
    pub(crate) async fn complete(
        &self,
        db: &DatabaseConnection,
        relay: &str,
        now: DateTime<Utc>,
        done: &[(i64, Uuid)],
        delete: bool,
        with_delivery_rows: &[Uuid],
    ) -> Result<u64> {
        if done.is_empty() {
            return Ok(0);
        }
        let seqs: Vec<i64> = done.iter().map(|d| d.0).collect();
        let mut p = Params::new(self.backend);
        let sql = if delete {
            let list = p.list(&seqs);
            let by = p.bind(relay.to_owned());
            format!(
                "DELETE FROM {m} WHERE seq IN {list} AND locked_by = {by}",
                m = self.messages
            )
        } else {
            let at = p.bind(now);
            let list = p.list(&seqs);
            let by = p.bind(relay.to_owned());
            format!(
                "UPDATE {m} SET status = 'delivered', delivered_at = {at}, locked_by = NULL, \
                 locked_until = NULL, last_error = NULL, last_error_kind = NULL \
                 WHERE seq IN {list} AND locked_by = {by}",
                m = self.messages
            )
        };
        if delete && !with_delivery_rows.is_empty() {
            // Per-handler rows only exist for messages that failed before; once the message
            // is gone they describe nothing. Deleted first, in the same transaction, and only
            // for messages this relay still holds: another relay's state stays untouched.
            let txn = begin_write(db).await?;
            let mut d = Params::new(self.backend);
            let list = d.list(with_delivery_rows);
            let by = d.bind(relay.to_owned());
            let del = format!(
                "DELETE FROM {dt} WHERE message_id IN {list} AND message_id IN \
                 (SELECT id FROM {m} WHERE locked_by = {by})",
                dt = self.deliveries,
                m = self.messages
            );
            txn.execute_raw(d.statement(del)).await?;
            let n = txn.execute_raw(p.statement(sql)).await?.rows_affected();
            txn.commit().await?;
            return Ok(n);
        }
        Ok(db.execute_raw(p.statement(sql)).await?.rows_affected())
    }

    /// Writes the outcome of a message that did not simply succeed, atomically with its
    /// per-handler states. Returns `false` when `relay` no longer held the message.
    pub(crate) async fn record_outcome(
        &self,
        db: &DatabaseConnection,
        relay: &str,
        now: DateTime<Utc>,
        message: (i64, Uuid),
        outcome: &Outcome,
    ) -> Result<bool> {
        let txn = begin_write(db).await?;
        let mut p = Params::new(self.backend);
        let status = p.bind(outcome.status.as_str());
        let at = p.bind(outcome.available_at);
        let (err, kind) = match &outcome.error {
            Some((e, k)) => (Some(e.clone()), Some(k.to_string())),
            None => (None, None),
        };
        let err = p.bind(err);
        let kind = p.bind(kind);
        let delivered_at = p.bind((outcome.status == MessageStatus::Delivered).then_some(now));
        let seq = p.bind(message.0);
        let by = p.bind(relay.to_owned());
        let sql = format!(
            "UPDATE {m} SET status = {status}, available_at = {at}, last_error = {err}, \
             last_error_kind = {kind}, delivered_at = {delivered_at}, locked_by = NULL, \
             locked_until = NULL WHERE seq = {seq} AND locked_by = {by}",
            m = self.messages
        );
        if txn.execute_raw(p.statement(sql)).await?.rows_affected() == 0 {
            txn.rollback().await?;
            return Ok(false);
        }
        self.upsert_deliveries(&txn, now, message.1, &outcome.deliveries)
            .await?;
        txn.commit().await?;
        Ok(true)
    }

    async fn upsert_deliveries(
        &self,
        db: &impl ConnectionTrait,
        now: DateTime<Utc>,
        message_id: Uuid,
        rows: &[DeliveryWrite],
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut p = Params::new(self.backend);
        let mut tuples = Vec::with_capacity(rows.len());
        for r in rows {
            let (err, kind) = match &r.error {
                Some((e, k)) => (Some(e.clone()), Some(k.to_string())),
                None => (None, None),
            };
            let t = [
                p.bind(message_id),
                p.bind(r.handler.clone()),
                p.bind(r.status.as_str()),
                p.bind(r.attempts as i32),
                p.bind(err),
                p.bind(kind),
                p.bind(now),
            ];
            tuples.push(format!("({})", t.join(", ")));
        }
        let update = match self.backend {
            DbBackend::MySql => " ON DUPLICATE KEY UPDATE status = VALUES(status), \
                 attempts = VALUES(attempts), last_error = VALUES(last_error), \
                 last_error_kind = VALUES(last_error_kind), updated_at = VALUES(updated_at)"
                .to_owned(),
            _ => " ON CONFLICT (message_id, handler) DO UPDATE SET status = excluded.status, \
                 attempts = excluded.attempts, last_error = excluded.last_error, \
                 last_error_kind = excluded.last_error_kind, updated_at = excluded.updated_at"
                .to_owned(),
        };
        let sql = format!(
            "INSERT INTO {d} (message_id, handler, status, attempts, last_error, \
             last_error_kind, updated_at) VALUES {}{update}",
            tuples.join(", "),
            d = self.deliveries
        );
        db.execute_raw(p.statement(sql)).await?;
        Ok(())
    }

    /// Gives messages back without counting the claim as an attempt (shutdown, or later
    /// messages of an aggregate whose head failed).
    pub(crate) async fn release(
        &self,
        db: &impl ConnectionTrait,
        relay: &str,
        seqs: &[i64],
    ) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let mut p = Params::new(self.backend);
        let list = p.list(seqs);
        let by = p.bind(relay.to_owned());
        let sql = format!(
            "UPDATE {m} SET locked_by = NULL, locked_until = NULL, \
             attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
             WHERE seq IN {list} AND locked_by = {by}",
            m = self.messages
        );
        Ok(db.execute_raw(p.statement(sql)).await?.rows_affected())
    }

    /// Extends the lease on messages `relay` still holds.
    pub(crate) async fn extend_lease(
        &self,
        db: &impl ConnectionTrait,
        relay: &str,
        seqs: &[i64],
        until: DateTime<Utc>,
    ) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let mut p = Params::new(self.backend);
        let until = p.bind(until);
        let list = p.list(seqs);
        let by = p.bind(relay.to_owned());
        let sql = format!(
            "UPDATE {m} SET locked_until = {until} WHERE seq IN {list} AND locked_by = {by}",
            m = self.messages
        );
        Ok(db.execute_raw(p.statement(sql)).await?.rows_affected())
    }

    /// Puts a dead (or any) message back in the queue: its dead deliveries become failed with
    /// zero attempts, so they get a full retry budget; delivered handlers are not run again.
    pub(crate) async fn requeue(
        &self,
        db: &DatabaseConnection,
        message_id: Uuid,
        handler: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let txn = begin_write(db).await?;
        let mut p = Params::new(self.backend);
        let at = p.bind(now);
        let id = p.bind(message_id);
        let sql = format!(
            "UPDATE {m} SET status = 'pending', available_at = {at}, attempts = 0, \
             locked_by = NULL, locked_until = NULL WHERE id = {id} AND status = 'dead'",
            m = self.messages
        );
        if txn.execute_raw(p.statement(sql)).await?.rows_affected() == 0 {
            return Err(Error::MessageNotFound {
                message_id,
                operation: "requeue",
            });
        }
        let mut p = Params::new(self.backend);
        let at = p.bind(now);
        let id = p.bind(message_id);
        let mut sql = format!(
            "UPDATE {d} SET status = 'failed', attempts = 0, updated_at = {at} \
             WHERE message_id = {id} AND status = 'dead'",
            d = self.deliveries
        );
        if let Some(h) = handler {
            let h = p.bind(h.to_owned());
            sql.push_str(&format!(" AND handler = {h}"));
        }
        txn.execute_raw(p.statement(sql)).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Deletes a message that will never be delivered, with its delivery rows.
    pub(crate) async fn discard(&self, db: &DatabaseConnection, message_id: Uuid) -> Result<()> {
        let txn = begin_write(db).await?;
        // Never a message a relay is handling: dead, or pending and not leased.
        let mut p = Params::new(self.backend);
        let id = p.bind(message_id);
        let now = p.bind(Utc::now());
        let sql = format!(
            "DELETE FROM {m} WHERE id = {id} AND (status = 'dead' OR (status = 'pending' \
             AND (locked_until IS NULL OR locked_until < {now})))",
            m = self.messages
        );
        if txn.execute_raw(p.statement(sql)).await?.rows_affected() == 0 {
            return Err(Error::MessageNotFound {
                message_id,
                operation: "discard",
            });
        }
        let mut p = Params::new(self.backend);
        let id = p.bind(message_id);
        let sql = format!(
            "DELETE FROM {d} WHERE message_id = {id}",
            d = self.deliveries
        );
        txn.execute_raw(p.statement(sql)).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Counts messages by status.
    pub(crate) async fn counts(&self, db: &impl ConnectionTrait) -> Result<HashMap<String, u64>> {
        let sql = format!(
            "SELECT status, COUNT(*) AS n FROM {m} GROUP BY status",
            m = self.messages
        );
        let rows = db
            .query_all_raw(Statement::from_string(self.backend, sql))
            .await?;
        let mut out = HashMap::new();
        for r in rows {
            let status: String = r.try_get("", "status")?;
            let n: i64 = r.try_get("", "n")?;
            out.insert(status, n.max(0) as u64);
        }
        Ok(out)
    }
}

fn read_claimed(row: &QueryResult) -> Result<Claimed> {
    let seq: i64 = row.try_get("", "seq")?;
    let headers_text: String = row.try_get("", "headers")?;
    // Headers are metadata: a row whose headers were damaged by hand is still delivered.
    let headers: Headers = serde_json::from_str(&headers_text).unwrap_or_else(|e| {
        tracing::warn!(seq, error = %e, "outbox row has unreadable headers; delivering without them");
        Headers::default()
    });
    let version: i32 = row.try_get("", "event_version")?;
    let attempts: i32 = row.try_get("", "attempts")?;
    let not_before: Option<DateTime<Utc>> = row.try_get("", "not_before")?;
    let last_error_kind: Option<String> = row.try_get("", "last_error_kind")?;
    Ok(Claimed {
        envelope: Envelope {
            message_id: row.try_get("", "id")?,
            sequence: seq,
            aggregate_type: row.try_get("", "aggregate_type")?,
            aggregate_id: row.try_get("", "aggregate_id")?,
            event_type: row.try_get("", "event_type")?,
            event_version: version.max(0) as u32,
            payload: row.try_get("", "payload")?,
            headers,
            occurred_at: row.try_get("", "occurred_at")?,
        },
        claims: attempts.max(0) as u32,
        delayed: not_before.is_some(),
        failed_before: last_error_kind.is_some(),
    })
}
