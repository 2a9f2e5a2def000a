//! Write overhead: what the unit of work adds to a business transaction, against raw SQL that
//! gives the same guarantee and against the plain two-row transaction.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use outbox_seaorm::{OutboxConfig, UnitOfWork};
use outbox_tests::Backend;
use outbox_tests::fixtures::{OrderPlaced, order};
use sea_orm::sqlx::{self, Row};
use sea_orm::{ActiveModelTrait, DatabaseConnection, DbBackend, TransactionTrait};
use uuid::Uuid;

use crate::{env_num, fresh, server_version};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Write {
    /// Unit of work: `save` (an upsert of the order), commit (stream upsert + outbox row).
    UnitOfWork,
    /// The same with `pg_notify` on (PostgreSQL only): the commit also sends a NOTIFY.
    UnitOfWorkNotify,
    /// Plain SeaORM: insert the order in a transaction, no outbox.
    SeaOrm,
    /// Raw SQL with the unit of work's guarantee: the order upsert, the stream upsert that
    /// hands out the position (locking the stream row until commit, so positions follow
    /// commit order), the outbox row at that position.
    RawSameGuarantee,
    /// Raw SQL: the order upsert and the outbox row, no stream row.
    RawUpsertTwoRows,
    /// Raw SQL: the plain two-row transaction (order insert + outbox row at position 1).
    RawTwoRows,
    /// Raw SQL: the order insert alone.
    RawOrderOnly,
}

const WRITES: [Write; 7] = [
    Write::UnitOfWork,
    Write::UnitOfWorkNotify,
    Write::SeaOrm,
    Write::RawSameGuarantee,
    Write::RawUpsertTwoRows,
    Write::RawTwoRows,
    Write::RawOrderOnly,
];

async fn one_write(db: &DatabaseConnection, w: Write) -> anyhow::Result<()> {
    match w {
        Write::UnitOfWork | Write::UnitOfWorkNotify => {
            let config = OutboxConfig::new().pg_notify(w == Write::UnitOfWorkNotify);
            let mut o = order::Model::place("bench", 100);
            let uow = UnitOfWork::begin_with(db, &config).await?;
            uow.save(&mut o).await?;
            uow.commit().await?;
        }
        Write::SeaOrm => {
            let mut o = order::Model::place("bench", 100);
            o.events = Default::default();
            let txn = db.begin().await?;
            order::ActiveModel::from(o).insert(&txn).await?;
            txn.commit().await?;
        }
        _ => {
            let raw = Raw::new(w)?;
            match db.get_database_backend() {
                DbBackend::Postgres => raw.postgres(db).await?,
                DbBackend::MySql => raw.mysql(db).await?,
                _ => raw.sqlite(db).await?,
            }
        }
    }
    Ok(())
}

/// One raw write: the rows the unit of work writes (a client-generated order id, one
/// `order.placed` message), through the pool SeaORM uses, prepared statements, no framework.
struct Raw {
    /// Write the order as `save` does (`INSERT … ON CONFLICT DO UPDATE`), not a plain insert.
    upsert: bool,
    /// Write the outbox row.
    outbox: bool,
    /// Take the position from the aggregate's stream row.
    stream: bool,
    id: Uuid,
    message_id: Uuid,
    payload: String,
    headers: String,
    occurred_at: DateTime<Utc>,
}

impl Raw {
    fn new(w: Write) -> anyhow::Result<Self> {
        let id = Uuid::now_v7();
        Ok(Self {
            upsert: matches!(w, Write::RawSameGuarantee | Write::RawUpsertTwoRows),
            outbox: w != Write::RawOrderOnly,
            stream: w == Write::RawSameGuarantee,
            id,
            message_id: Uuid::now_v7(),
            payload: serde_json::to_string(&OrderPlaced {
                order_id: id,
                amount: 100,
            })?,
            headers: format!(r#"{{"correlation_id":"{}"}}"#, Uuid::now_v7()),
            occurred_at: Utc::now(),
        })
    }

    /// The aggregate id, as the unit of work writes it.
    fn aggregate_id(&self) -> String {
        self.id.to_string()
    }

    async fn postgres(&self, db: &DatabaseConnection) -> anyhow::Result<()> {
        let mut tx = db.get_postgres_connection_pool().begin().await?;
        sqlx::query(if self.upsert {
            "INSERT INTO orders (id, customer, amount, status) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET customer = excluded.customer, \
             amount = excluded.amount, status = excluded.status"
        } else {
            "INSERT INTO orders (id, customer, amount, status) VALUES ($1, $2, $3, $4)"
        })
        .bind(self.id)
        .bind("bench")
        .bind(100i64)
        .bind("placed")
        .execute(&mut *tx)
        .await?;
        if self.outbox {
            // The driver's statement shape: one round trip upserts the stream row (taking the
            // position, locking the row until commit) and inserts the message at it.
            sqlx::query(if self.stream {
                "WITH s AS (INSERT INTO outbox_streams AS s (aggregate_type, aggregate_id, \
                 last_position) VALUES ($2, $3, 1) ON CONFLICT (aggregate_type, aggregate_id) \
                 DO UPDATE SET last_position = s.last_position + excluded.last_position \
                 RETURNING s.last_position, s.blocked_until) \
                 INSERT INTO outbox_messages (id, aggregate_type, aggregate_id, position, \
                 event_type, event_version, payload, headers, occurred_at, not_before, \
                 available_at) SELECT $1, $2, $3, s.last_position, $4, $5, CAST($6 AS json), \
                 CAST($7 AS json), $8, $9, COALESCE($9, GREATEST(now(), s.blocked_until)) FROM s"
            } else {
                "INSERT INTO outbox_messages (id, aggregate_type, aggregate_id, position, \
                 event_type, event_version, payload, headers, occurred_at, not_before, \
                 available_at) VALUES ($1, $2, $3, 1, $4, $5, CAST($6 AS json), \
                 CAST($7 AS json), $8, $9, COALESCE($9, now()))"
            })
            .bind(self.message_id)
            .bind("order")
            .bind(self.aggregate_id())
            .bind("order.placed")
            .bind(1i32)
            .bind(&self.payload)
            .bind(&self.headers)
            .bind(self.occurred_at)
            .bind(Option::<DateTime<Utc>>::None)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn mysql(&self, db: &DatabaseConnection) -> anyhow::Result<()> {
        let mut tx = db.get_mysql_connection_pool().begin().await?;
        sqlx::query(if self.upsert {
            "INSERT INTO orders (id, customer, amount, status) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE customer = VALUES(customer), amount = VALUES(amount), \
             status = VALUES(status)"
        } else {
            "INSERT INTO orders (id, customer, amount, status) VALUES (?, ?, ?, ?)"
        })
        .bind(self.id)
        .bind("bench")
        .bind(100i64)
        .bind("placed")
        .execute(&mut *tx)
        .await?;
        if self.outbox {
            let (position, held) = if self.stream {
                // As the driver: upsert (locks the row until commit), read it back, insert.
                sqlx::query(
                    "INSERT INTO outbox_streams (aggregate_type, aggregate_id, last_position) \
                     VALUES (?, ?, 1) ON DUPLICATE KEY UPDATE \
                     last_position = last_position + VALUES(last_position)",
                )
                .bind("order")
                .bind(self.aggregate_id())
                .execute(&mut *tx)
                .await?;
                let row = sqlx::query(
                    "SELECT last_position, blocked_until FROM outbox_streams \
                     WHERE aggregate_type = ? AND aggregate_id = ?",
                )
                .bind("order")
                .bind(self.aggregate_id())
                .fetch_one(&mut *tx)
                .await?;
                (
                    row.try_get::<i64, _>("last_position")?,
                    row.try_get::<Option<DateTime<Utc>>, _>("blocked_until")?,
                )
            } else {
                (1, None)
            };
            sqlx::query(
                "INSERT INTO outbox_messages (id, aggregate_type, aggregate_id, position, \
                 event_type, event_version, payload, headers, occurred_at, not_before, \
                 available_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, \
                 COALESCE(?, GREATEST(UTC_TIMESTAMP(6), COALESCE(?, '1970-01-01'))))",
            )
            .bind(self.message_id)
            .bind("order")
            .bind(self.aggregate_id())
            .bind(position)
            .bind("order.placed")
            .bind(1i32)
            .bind(&self.payload)
            .bind(&self.headers)
            .bind(self.occurred_at)
            .bind(Option::<DateTime<Utc>>::None)
            .bind(Option::<DateTime<Utc>>::None)
            .bind(held)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn sqlite(&self, db: &DatabaseConnection) -> anyhow::Result<()> {
        // The unit of work's transaction mode: IMMEDIATE (waits for the write lock up front).
        // A transaction object, so an error rolls back instead of leaving the pooled
        // connection inside a transaction.
        let mut tx = db
            .get_sqlite_connection_pool()
            .begin_with("BEGIN IMMEDIATE")
            .await?;
        sqlx::query(if self.upsert {
            "INSERT INTO orders (id, customer, amount, status) VALUES (?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET customer = excluded.customer, \
             amount = excluded.amount, status = excluded.status"
        } else {
            "INSERT INTO orders (id, customer, amount, status) VALUES (?, ?, ?, ?)"
        })
        .bind(self.id)
        .bind("bench")
        .bind(100i64)
        .bind("placed")
        .execute(&mut *tx)
        .await?;
        if self.outbox {
            let (position, held) = if self.stream {
                // As the driver: upsert RETURNING, then insert.
                let row = sqlx::query(
                    "INSERT INTO outbox_streams (aggregate_type, aggregate_id, last_position) \
                     VALUES (?, ?, 1) ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET \
                     last_position = last_position + excluded.last_position \
                     RETURNING last_position, blocked_until",
                )
                .bind("order")
                .bind(self.aggregate_id())
                .fetch_one(&mut *tx)
                .await?;
                (
                    row.try_get::<i64, _>("last_position")?,
                    row.try_get::<Option<String>, _>("blocked_until")?,
                )
            } else {
                (1, None)
            };
            sqlx::query(
                "INSERT INTO outbox_messages (id, aggregate_type, aggregate_id, position, \
                 event_type, event_version, payload, headers, occurred_at, not_before, \
                 available_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, COALESCE(?, \
                 max(strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), COALESCE(?, ''))))",
            )
            .bind(self.message_id)
            .bind("order")
            .bind(self.aggregate_id())
            .bind(position)
            .bind("order.placed")
            .bind(1i32)
            .bind(&self.payload)
            .bind(&self.headers)
            .bind(self.occurred_at)
            .bind(Option::<DateTime<Utc>>::None)
            .bind(Option::<DateTime<Utc>>::None)
            .bind(held)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// What a round did: transactions committed, and the failures (with the first error).
#[derive(Default)]
struct Tally {
    done: u64,
    failed: u64,
    first_error: Option<String>,
}

/// Runs `w` from `writers` tasks for `dur`.
async fn write_round(db: &DatabaseConnection, w: Write, writers: usize, dur: Duration) -> Tally {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + dur;
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (db, done) = (db.clone(), done.clone());
            tokio::spawn(async move {
                let (mut failed, mut first_error) = (0, None);
                while Instant::now() < deadline {
                    match one_write(&db, w).await {
                        Ok(()) => {
                            done.fetch_add(1, AtomicOrdering::Relaxed);
                        }
                        Err(e) => {
                            failed += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                (failed, first_error)
            })
        })
        .collect();
    let mut tally = Tally::default();
    for t in tasks {
        if let Ok((failed, first)) = t.await {
            tally.failed += failed;
            if tally.first_error.is_none() {
                tally.first_error = first;
            }
        }
    }
    tally.done = done.load(AtomicOrdering::Relaxed);
    tally
}

pub(crate) async fn suite(backend: Backend) -> anyhow::Result<()> {
    let t = fresh(backend).await?;
    let secs = env_num("BENCH_SECS", 2.0);
    let rounds = env_num("BENCH_ROUNDS", 3.0) as usize;
    let writer_counts: Vec<usize> = match std::env::var("BENCH_WRITERS") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) => vec![1, 2, 4, 8],
    };
    println!(
        "\n## write overhead, {backend:?} ({}), {rounds} alternating rounds of {secs} s per cell",
        server_version(&t.db).await
    );
    let writes: Vec<Write> = WRITES
        .into_iter()
        .filter(|w| *w != Write::UnitOfWorkNotify || backend == Backend::Postgres)
        .collect();
    println!(
        "| writers | unit of work tps | UoW + NOTIFY tps | plain SeaORM tps | raw same guarantee tps \
         | raw upsert + outbox tps | raw 2 rows tps | raw order only tps | UoW vs raw same guarantee \
         | UoW vs raw 2 rows | stream row cost (same guarantee vs upsert + outbox) | NOTIFY cost \
         | outbox row cost (raw 2 rows vs 1) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // Warm up connections and statement caches.
    for &w in &writes {
        write_round(&t.db, w, 2, Duration::from_millis(300)).await;
    }
    let mut errors: HashMap<Write, (u64, String)> = HashMap::new();
    for writers in writer_counts {
        let mut done: HashMap<Write, u64> = HashMap::new();
        for round in 0..rounds {
            // Every variant once a round, the first one moving on each round: drift over the
            // run and within a round hits every variant alike.
            for k in 0..writes.len() {
                let w = writes[(round + k) % writes.len()];
                let tally = write_round(&t.db, w, writers, Duration::from_secs_f64(secs)).await;
                *done.entry(w).or_default() += tally.done;
                if tally.failed > 0 {
                    let e = errors.entry(w).or_insert((0, String::new()));
                    e.0 += tally.failed;
                    if e.1.is_empty() {
                        e.1 = tally.first_error.unwrap_or_default();
                    }
                }
            }
        }
        let tps = |w: Write| done.get(&w).copied().unwrap_or(0) as f64 / (secs * rounds as f64);
        let ratio = |a: Write, b: Write| format!("{:.3}×", tps(a) / tps(b));
        let (notify_tps, notify_cost) = if backend == Backend::Postgres {
            (
                format!("{:.0}", tps(Write::UnitOfWorkNotify)),
                ratio(Write::UnitOfWork, Write::UnitOfWorkNotify),
            )
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "| {writers} | {:.0} | {notify_tps} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {notify_cost} | {} |",
            tps(Write::UnitOfWork),
            tps(Write::SeaOrm),
            tps(Write::RawSameGuarantee),
            tps(Write::RawUpsertTwoRows),
            tps(Write::RawTwoRows),
            tps(Write::RawOrderOnly),
            ratio(Write::RawSameGuarantee, Write::UnitOfWork),
            ratio(Write::RawTwoRows, Write::UnitOfWork),
            ratio(Write::RawUpsertTwoRows, Write::RawSameGuarantee),
            ratio(Write::RawOrderOnly, Write::RawTwoRows),
        );
    }
    let mut errors: Vec<_> = errors.into_iter().collect();
    errors.sort_by_key(|(w, _)| format!("{w:?}"));
    for (w, (n, first)) in errors {
        println!("\n{w:?}: {n} failed transactions (not counted), first: {first}");
    }
    t.cleanup().await;
    Ok(())
}
