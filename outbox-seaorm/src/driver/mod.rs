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

mod completion;
mod maintenance;
mod mysql;
mod postgres;
pub(crate) mod sql;
#[cfg(test)]
mod sql_check;
mod sqlite;
mod stats;
mod types;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, QueryResult,
    TransactionTrait,
};
use uuid::Uuid;

use outbox_seaorm_core::{Envelope, Headers};

use crate::config::{OutboxConfig, quote};
use crate::entity::DeliveryStatus;
use crate::error::{Error, Result};
use sql::{Arg, Catalog, seqs};

pub(crate) use maintenance::RelayRow;
pub(crate) use outbox_seaorm_core::__private::ErrorText;
pub use outbox_seaorm_core::MAX_ERROR_BYTES;
pub(crate) use stats::Series;
pub(crate) use types::{
    BlockWrite, ClaimOrder, ClaimSpec, Claimed, Completion, DeliveryState, DeliveryWrite, Hold,
    NewMessage, OutcomeWrite, ReleaseWrite, Written,
};

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
            c.relays_table(),
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

    /// Whether `INSERT .. ON CONFLICT (primary key) DO UPDATE` conflicts on the primary key
    /// only (PostgreSQL, SQLite). MariaDB's `ON DUPLICATE KEY UPDATE` fires on any unique key,
    /// so there `save` guards its upsert: a conflict on another unique key fails the statement
    /// (see `uow::model::upsert`).
    fn upsert_on_key(&self) -> bool {
        true
    }

    /// Claims retried at once after a deadlock, since the driver was built.
    fn conflicts_retried(&self) -> u64 {
        0
    }

    /// The configured pool size, to warn when it cannot serve the relay's concurrency.
    fn pool_size(&self, db: &DatabaseConnection) -> u32;

    /// A pool of its own for the relay's writes (claims, outcomes, lease renewals), of up to
    /// `connections`, on the same database and tables as `db`: handlers that hold every
    /// connection of the application's pool cannot make the relay's own writes wait. `None`
    /// when the driver cannot open one that is sure to see the same tables. Where the server
    /// can bound every statement of a session (PostgreSQL's `statement_timeout`), the pool's
    /// connections are bounded by `statement_timeout` and the driver says so with
    /// [`Driver::reserved_bounds_statements`]; claims on it then need no transaction of their
    /// own to bound them.
    async fn reserve(
        &self,
        _db: &DatabaseConnection,
        _connections: u32,
        _statement_timeout: Duration,
    ) -> Result<Option<DatabaseConnection>> {
        Ok(None)
    }

    /// Whether the pools [`Driver::reserve`] opens bound each statement by its timeout.
    fn reserved_bounds_statements(&self) -> bool {
        false
    }

    /// The PostgreSQL channel relays `LISTEN` on, when commits notify.
    fn listen_channel(&self) -> Option<String> {
        None
    }

    /// Taken around the relay's own writes (claims, verdicts, lease renewals) where the
    /// database has one writer: SQLite. Two of them from one process would otherwise collide
    /// on the file's write lock, and the loser sleeps in SQLite's busy handler (1, 2, 5, 10 ms
    /// and up) instead of waiting its turn. Held only around statements the relay runs itself,
    /// never around user code, so it cannot deadlock with a unit of work. One gate per
    /// database file: relays of other databases (another file, another in-memory database) do
    /// not wait for each other.
    async fn relay_write_gate(
        &self,
        _db: &DatabaseConnection,
    ) -> Option<tokio::sync::OwnedMutexGuard<()>> {
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

    /// What a relay changes in the database when it starts, after [`check_schema`]
    /// (SQLite: the journal mode). Checks change nothing.
    ///
    /// [`check_schema`]: Driver::check_schema
    async fn prepare_for_relay(&self, _db: &DatabaseConnection) -> Result<()> {
        Ok(())
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

    /// Extends the lease on the messages `relay` still holds under the claims `tokens`.
    /// Returns the ones it still holds: the others were taken over (their lease lapsed and
    /// another relay claimed them), or written.
    async fn extend_leases(
        &self,
        db: &DatabaseConnection,
        relay: &str,
        seq_list: &[i64],
        tokens: &[i64],
        lease: Duration,
    ) -> Result<Vec<i64>> {
        if seq_list.is_empty() {
            return Ok(Vec::new());
        }
        let args = [
            ("seqs", seqs(seq_list)),
            ("tokens", seqs(tokens)),
            ("relay", relay.into()),
            ("lease", self.span(lease)),
        ];
        let n = {
            let _gate = self.relay_write_gate(db).await;
            db.execute_raw(self.sql().stmt("extend_leases", &args))
                .await?
                .rows_affected()
        };
        if n as usize == seq_list.len() {
            return Ok(seq_list.to_vec());
        }
        // Which are still ours: the same rows and tokens, without the lease it did not extend.
        let held = [
            ("seqs", seqs(seq_list)),
            ("tokens", seqs(tokens)),
            ("relay", relay.into()),
        ];
        let rows = db
            .query_all_raw(self.sql().stmt("still_held", &held))
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<i64>("", "seq")?))
            .collect()
    }

    /// Counts one more crash against a message `relay` holds under the claim `token`, before
    /// it runs alone. Returns `false` when the relay no longer holds it.
    async fn count_crash(
        &self,
        db: &DatabaseConnection,
        relay: &str,
        seq: i64,
        token: i64,
    ) -> Result<bool> {
        let stmt = self.sql().stmt(
            "count_crash",
            &[
                ("seq", seq.into()),
                ("relay", relay.into()),
                ("token", token.into()),
            ],
        );
        Ok(db.execute_raw(stmt).await?.rows_affected() == 1)
    }

    /// Wakes relays in other processes (PostgreSQL `NOTIFY`, when configured).
    async fn notify(&self, _db: &DatabaseConnection) -> Result<()> {
        Ok(())
    }
}

/// What kind of failure a database error is, for what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// A deadlock, a lock wait timeout, a serialization failure, a busy database, a cancelled
    /// statement, a connection the server dropped: the transaction was rolled back; the same
    /// statements may succeed when tried again.
    Transient,
    /// The database refused the statement for what it holds (a constraint, a value it cannot
    /// store, a trigger): trying again changes nothing.
    Refused,
    /// Not an answer from the database: a lost connection, a pool that gave no connection in
    /// time, a decoding error.
    Other,
}

/// What kind of failure `e` is: from the database's error code (the error number on MariaDB,
/// the SQLSTATE on PostgreSQL, the primary result code on SQLite), never its message text.
pub(crate) fn fault(e: &Error) -> Fault {
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    {
        use sea_orm::{DbErr, RuntimeErr};
        let Error::Db(
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)),
        ) = e
        else {
            return Fault::Other;
        };
        let Some(d) = e.as_database_error() else {
            return Fault::Other;
        };
        #[cfg(feature = "mysql")]
        if let Some(m) = d.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
            // ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT: both roll back and may be retried.
            return match m.number() {
                1213 | 1205 => Fault::Transient,
                _ => Fault::Refused,
            };
        }
        #[cfg(feature = "postgres")]
        if let Some(p) = d.try_downcast_ref::<sea_orm::sqlx::postgres::PgDatabaseError>() {
            // serialization_failure, deadlock_detected, lock_not_available, query_canceled
            // (a statement timeout), and class 08 (connection exceptions).
            let code = p.code();
            return if matches!(code, "40001" | "40P01" | "55P03" | "57014")
                || code.starts_with("08")
            {
                Fault::Transient
            } else {
                Fault::Refused
            };
        }
        #[cfg(feature = "sqlite")]
        if d.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
            .is_some()
        {
            // SQLITE_BUSY, SQLITE_LOCKED (any extended code of theirs).
            let code: i64 = d.code().and_then(|c| c.parse().ok()).unwrap_or(0);
            return if matches!(code & 0xff, 5 | 6) {
                Fault::Transient
            } else {
                Fault::Refused
            };
        }
        Fault::Refused
    }
    #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
    {
        let _ = e;
        Fault::Other
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
        (c.relays_table(), "check_relays"),
    ] {
        if let Err(cause) = db.query_all_raw(d.sql().stmt(query, &[])).await {
            return Err(Error::Schema {
                table: table.to_owned(),
                cause,
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
    let mut envelope = Envelope::new(
        row.try_get("", "id")?,
        row.try_get::<String>("", "event_type")?,
        count("event_version")?,
        row.try_get::<String>("", "payload")?,
    );
    envelope.sequence = seq;
    envelope.position = row.try_get("", "position")?;
    envelope.aggregate_type = row.try_get("", "aggregate_type")?;
    envelope.aggregate_id = row.try_get("", "aggregate_id")?;
    envelope.headers = headers;
    envelope.occurred_at = row.try_get("", "occurred_at")?;
    Ok(Claimed {
        envelope: Arc::new(envelope),
        claims: count("claims")?,
        crashes: count("crashes")?,
        delayed: not_before.is_some(),
        failed_before: last_error_kind.is_some(),
        // Set by the claim that returned it.
        token: 0,
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

    /// An unordered claim of up to 10 rows by `relay` under `token`.
    fn spec(relay: &str, token: i64) -> ClaimSpec<'_> {
        ClaimSpec {
            relay,
            limit: 10,
            lease: Duration::from_secs(60),
            order: ClaimOrder::Any,
            window: 10,
            timeout: Duration::from_secs(5),
            bounded: false,
            token,
            held: &[],
            passable: &[],
        }
    }

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

    /// A flush repeated after its commit's answer was lost counts what it wrote as written; a
    /// row another claim took is lost, whatever the try.
    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn a_repeated_completion_is_not_a_lost_lease_and_a_takeover_is() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        let config = OutboxConfig::default();
        crate::schema::create_tables_with(&db, &config)
            .await
            .unwrap();
        let d = for_backend(DbBackend::Sqlite, &config);
        let txn = db.begin().await.unwrap();
        d.append(&txn, &[row("o", "1"), row("o", "2")])
            .await
            .unwrap();
        txn.commit().await.unwrap();
        let claimed = d.claim(&db, &spec("a", 7)).await.unwrap();
        assert_eq!(claimed.len(), 2);
        assert!(claimed.iter().all(|c| c.token == 7));
        let (s1, s2) = (claimed[0].envelope.sequence, claimed[1].envelope.sequence);
        let one = Completion {
            delivered: vec![s1],
            tokens: vec![7],
            ..Completion::default()
        };
        let w = d.complete(&db, "a", &one, false).await.unwrap();
        assert_eq!((w.delivered, w.lease_lost), (1, 0));
        let w = d.complete(&db, "a", &one, true).await.unwrap();
        assert_eq!(
            (w.delivered, w.lease_lost),
            (0, 0),
            "already written by this relay"
        );
        // The second row's lease lapsed and another relay claimed it.
        db.execute_unprepared(&format!(
            "UPDATE outbox_messages SET locked_by = 'b', claim_token = 9 WHERE seq = {s2}"
        ))
        .await
        .unwrap();
        assert_eq!(
            d.extend_leases(&db, "a", &[s2], &[7], Duration::from_secs(60))
                .await
                .unwrap(),
            Vec::<i64>::new()
        );
        let two = Completion {
            delivered: vec![s2],
            tokens: vec![7],
            ..Completion::default()
        };
        for again in [false, true] {
            let w = d.complete(&db, "a", &two, again).await.unwrap();
            assert_eq!(
                (w.delivered, w.lease_lost),
                (0, 1),
                "taken over (again: {again})"
            );
        }
        assert_eq!(
            d.extend_leases(&db, "b", &[s2], &[9], Duration::from_secs(60))
                .await
                .unwrap(),
            vec![s2]
        );
    }

    /// A run given back by undoing its claim keeps the mark of a relay that died holding it
    /// (`claims > 1` at the next claim: it runs alone); a plain release clears it.
    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn an_undone_claim_keeps_a_suspect_a_release_clears_it() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        let config = OutboxConfig::default();
        crate::schema::create_tables_with(&db, &config)
            .await
            .unwrap();
        let d = for_backend(DbBackend::Sqlite, &config);
        let txn = db.begin().await.unwrap();
        d.append(&txn, &[row("o", "1")]).await.unwrap();
        txn.commit().await.unwrap();
        let claim = |relay: &'static str, token: i64| {
            let (d, db) = (&d, &db);
            async move {
                let c = d.claim(db, &spec(relay, token)).await.unwrap();
                assert_eq!(c.len(), 1, "{relay} claims the row");
                c[0].claims
            }
        };
        let lapse = || {
            db.execute_unprepared(
                "UPDATE outbox_messages SET locked_until = '2000-01-01T00:00:00.000+00:00'",
            )
        };
        assert_eq!(claim("dead", 1).await, 1);
        lapse().await.unwrap();
        assert_eq!(claim("b", 2).await, 2, "taken over: a suspect");
        for (undo_claim, next) in [(true, 2), (false, 1)] {
            let c = Completion {
                releases: vec![ReleaseWrite {
                    seqs: vec![1],
                    undo_claim,
                }],
                tokens: vec![2],
                ..Completion::default()
            };
            let w = d.complete(&db, "b", &c, false).await.unwrap();
            assert_eq!(w.released, 1);
            assert_eq!(claim("b", 2).await, next, "undo_claim: {undo_claim}");
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
