//! Benchmarks of the outbox against the physical limit, printed as tables.
//!
//! ```text
//! cargo run --release -p outbox-tests --bin outbox-bench -- <suite> [sqlite] [postgres] [mariadb]
//! ```
//!
//! Suites: `write` (unit of work vs plain SeaORM vs raw SQL), `relay` (drain rate vs a minimal
//! raw-SQL claim+mark loop), `latency` (commit → handler entry), `scale` (claim cost with
//! delivered history and a large backlog; relay RSS), `order` (ordered vs unordered). Servers
//! come from `OUTBOX_TEST_POSTGRES_URL` / `OUTBOX_TEST_MYSQL_URL`. `BENCH_SECS` (seconds per
//! measured round, default 2), `BENCH_ROUNDS` (default 3) and `BENCH_EVENTS` (relay backlog,
//! default 100000) scale the runs. Results vary with the machine: compare ratios measured in one
//! run, where variants alternate round by round so drift cancels out.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use chrono::Utc;
use outbox_seaorm::{
    DeliveredRows, DeliveryOrder, HandlerContext, HandlerEntry, OnFailure, OutboxConfig, Registry,
    Relay, UnitOfWork,
};
use outbox_tests::fixtures::{OrderPlaced, order};
use outbox_tests::{Backend, TestDb};
use sea_orm::sqlx;
use sea_orm::{ActiveModelTrait, ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

fn env_num(var: &str, default: f64) -> f64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(suite) = args.first().cloned() else {
        anyhow::bail!(
            "usage: outbox-bench <write|relay|latency|scale|order|latency-relay> [backends]"
        );
    };
    if suite == "latency-relay" {
        return latency_relay_child(&args[1..]).await;
    }
    let mut backends: Vec<Backend> = args[1..]
        .iter()
        .map(|b| match b.as_str() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "pg" => Ok(Backend::Postgres),
            "mariadb" | "mysql" => Ok(Backend::MySql),
            other => Err(anyhow::anyhow!("unknown backend {other}")),
        })
        .collect::<Result<_, _>>()?;
    if backends.is_empty() {
        backends = vec![Backend::Sqlite, Backend::Postgres];
    }
    print_machine().await;
    for backend in backends {
        match suite.as_str() {
            "write" => write_suite(backend).await?,
            "relay" => relay_suite(backend).await?,
            "latency" => latency_suite(backend).await?,
            "scale" => scale_suite(backend).await?,
            "order" => order_suite(backend).await?,
            other => anyhow::bail!("unknown suite {other}"),
        }
    }
    Ok(())
}

async fn print_machine() {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "# machine: {cores} cores, {}",
        Utc::now().format("%Y-%m-%d")
    );
}

async fn fresh(backend: Backend) -> anyhow::Result<TestDb> {
    TestDb::new(backend)
        .await
        .ok_or_else(|| anyhow::anyhow!("{backend:?} is not configured (see OUTBOX_TEST_*_URL)"))
}

async fn server_version(db: &DatabaseConnection) -> String {
    let sql = match db.get_database_backend() {
        sea_orm::DbBackend::Sqlite => "SELECT sqlite_version() AS v",
        _ => "SELECT version() AS v",
    };
    db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .ok()
        .flatten()
        .and_then(|r| r.try_get::<String>("", "v").ok())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// 1. Write overhead

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Write {
    /// Unit of work: upsert the order, one outbox row, commit.
    UnitOfWork,
    /// The same with `pg_notify` on (PostgreSQL only): the commit also sends a NOTIFY.
    UnitOfWorkNotify,
    /// Plain SeaORM: insert the order in a transaction, no outbox.
    SeaOrm,
    /// Raw SQL through sqlx: order insert + outbox insert, prepared, one round trip each.
    RawTwoRows,
    /// Raw SQL through sqlx: the order as an upsert (what `UnitOfWork::save` does) + outbox.
    RawUpsertTwoRows,
    /// Raw SQL through sqlx: the order insert alone.
    RawOrderOnly,
}

const WRITES: [Write; 6] = [
    Write::UnitOfWork,
    Write::UnitOfWorkNotify,
    Write::SeaOrm,
    Write::RawTwoRows,
    Write::RawUpsertTwoRows,
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
        Write::RawTwoRows | Write::RawUpsertTwoRows | Write::RawOrderOnly => {
            raw_write(db, w != Write::RawOrderOnly, w == Write::RawUpsertTwoRows).await?
        }
    }
    Ok(())
}

/// The physical cost: the same rows, prepared statements, no framework.
async fn raw_write(db: &DatabaseConnection, with_outbox: bool, upsert: bool) -> anyhow::Result<()> {
    let id = Uuid::now_v7();
    let payload = serde_json::to_string(&OrderPlaced {
        order_id: id,
        amount: 100,
    })?;
    let now = Utc::now();
    let message_id = Uuid::now_v7();
    let headers = format!(r#"{{"correlation_id":"{}"}}"#, Uuid::now_v7());
    match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            let mut tx = db.get_postgres_connection_pool().begin().await?;
            sqlx::query(if upsert {
                "INSERT INTO orders (id, customer, amount, status) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET customer = excluded.customer, \
                 amount = excluded.amount, status = excluded.status"
            } else {
                "INSERT INTO orders (id, customer, amount, status) VALUES ($1, $2, $3, $4)"
            })
            .bind(id)
            .bind("bench")
            .bind(100i64)
            .bind("placed")
            .execute(&mut *tx)
            .await?;
            if with_outbox {
                sqlx::query(
                    "INSERT INTO outbox_messages (id, aggregate_type, aggregate_id, event_type, \
                     event_version, payload, headers, occurred_at, not_before, available_at) \
                     VALUES ($1, $2, $3, $4, $5, CAST($6 AS JSON), CAST($7 AS JSON), $8, $9, $10)",
                )
                .bind(message_id)
                .bind("order")
                .bind(id.to_string())
                .bind("order.placed")
                .bind(1i32)
                .bind(&payload)
                .bind(&headers)
                .bind(now)
                .bind(Option::<chrono::DateTime<Utc>>::None)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
        sea_orm::DbBackend::MySql => {
            let mut tx = db.get_mysql_connection_pool().begin().await?;
            sqlx::query(if upsert {
                "INSERT INTO orders (id, customer, amount, status) VALUES (?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE customer = VALUES(customer), amount = VALUES(amount), \
                 status = VALUES(status)"
            } else {
                "INSERT INTO orders (id, customer, amount, status) VALUES (?, ?, ?, ?)"
            })
            .bind(id)
            .bind("bench")
            .bind(100i64)
            .bind("placed")
            .execute(&mut *tx)
            .await?;
            if with_outbox {
                sqlx::query(
                    "INSERT INTO outbox_messages (id, aggregate_type, aggregate_id, event_type, \
                     event_version, payload, headers, occurred_at, not_before, available_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(message_id)
                .bind("order")
                .bind(id.to_string())
                .bind("order.placed")
                .bind(1i32)
                .bind(&payload)
                .bind(&headers)
                .bind(now)
                .bind(Option::<chrono::DateTime<Utc>>::None)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
        _ => {
            // Same transaction mode as the unit of work: IMMEDIATE.
            let mut conn = db.get_sqlite_connection_pool().acquire().await?;
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            sqlx::query(if upsert {
                "INSERT INTO orders (id, customer, amount, status) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET customer = excluded.customer, \
                 amount = excluded.amount, status = excluded.status"
            } else {
                "INSERT INTO orders (id, customer, amount, status) VALUES (?, ?, ?, ?)"
            })
            .bind(id)
            .bind("bench")
            .bind(100i64)
            .bind("placed")
            .execute(&mut *conn)
            .await?;
            if with_outbox {
                sqlx::query(
                    "INSERT INTO outbox_messages (id, aggregate_type, aggregate_id, event_type, \
                     event_version, payload, headers, occurred_at, not_before, available_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(message_id)
                .bind("order")
                .bind(id.to_string())
                .bind("order.placed")
                .bind(1i32)
                .bind(&payload)
                .bind(&headers)
                .bind(now)
                .bind(Option::<chrono::DateTime<Utc>>::None)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
            sqlx::query("COMMIT").execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// Runs `w` from `writers` tasks for `dur`; returns the transactions done.
async fn write_round(db: &DatabaseConnection, w: Write, writers: usize, dur: Duration) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + dur;
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (db, done) = (db.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    match one_write(&db, w).await {
                        Ok(()) => {
                            done.fetch_add(1, AtomicOrdering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("{w:?}: {e:#}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.ok();
    }
    done.load(AtomicOrdering::Relaxed)
}

async fn write_suite(backend: Backend) -> anyhow::Result<()> {
    let t = fresh(backend).await?;
    let secs = env_num("BENCH_SECS", 2.0);
    let rounds = env_num("BENCH_ROUNDS", 3.0) as usize;
    println!(
        "\n## write overhead, {backend:?} ({}), {rounds} alternating rounds of {secs} s per cell",
        server_version(&t.db).await
    );
    let writes: Vec<Write> = WRITES
        .into_iter()
        .filter(|w| *w != Write::UnitOfWorkNotify || backend == Backend::Postgres)
        .collect();
    println!(
        "| writers | unit of work tps | UoW + NOTIFY tps | plain SeaORM tps | raw 2 rows tps | raw upsert + outbox tps | raw order only tps | UoW vs raw 2 rows | UoW vs raw upsert + outbox | NOTIFY cost | outbox row cost (raw 2 rows vs 1) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // Warm up connections and statement caches.
    for &w in &writes {
        write_round(&t.db, w, 2, Duration::from_millis(300)).await;
    }
    for writers in [1, 2, 4, 8] {
        let mut done: HashMap<Write, u64> = HashMap::new();
        for _ in 0..rounds {
            for &w in &writes {
                *done.entry(w).or_default() +=
                    write_round(&t.db, w, writers, Duration::from_secs_f64(secs)).await;
            }
        }
        let tps = |w: Write| done.get(&w).copied().unwrap_or(0) as f64 / (secs * rounds as f64);
        let notify = if backend == Backend::Postgres {
            (
                format!("{:.0}", tps(Write::UnitOfWorkNotify)),
                format!(
                    "{:.3}×",
                    tps(Write::UnitOfWork) / tps(Write::UnitOfWorkNotify)
                ),
            )
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "| {writers} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3}× | {:.3}× | {} | {:.2}× |",
            tps(Write::UnitOfWork),
            notify.0,
            tps(Write::SeaOrm),
            tps(Write::RawTwoRows),
            tps(Write::RawUpsertTwoRows),
            tps(Write::RawOrderOnly),
            tps(Write::RawTwoRows) / tps(Write::UnitOfWork),
            tps(Write::RawUpsertTwoRows) / tps(Write::UnitOfWork),
            notify.1,
            tps(Write::RawOrderOnly) / tps(Write::RawTwoRows),
        );
    }
    t.cleanup().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Relay throughput

#[derive(Serialize, Deserialize, outbox_seaorm::DomainEvent)]
#[event(name = "bench.noop")]
struct Noop {
    n: u32,
}

fn noop_registry() -> Registry {
    Registry::new([HandlerEntry::new(
        "noop",
        |_: Noop, _ctx: HandlerContext| async { Ok::<_, std::convert::Infallible>(()) },
    )])
    .expect("one handler")
}

/// Inserts `n` pending messages over `aggregates` aggregates, in bulk.
async fn seed(
    db: &DatabaseConnection,
    n: u64,
    aggregates: u64,
    status: &str,
) -> anyhow::Result<()> {
    let backend = db.get_database_backend();
    let delivered_at = if status == "delivered" {
        "now()"
    } else {
        "NULL"
    };
    match backend {
        sea_orm::DbBackend::Postgres => {
            db.execute_unprepared(&format!(
                "INSERT INTO outbox_messages (id, aggregate_type, aggregate_id, position, event_type, \
                 event_version, payload, headers, occurred_at, available_at, status, delivered_at) \
                 SELECT gen_random_uuid(), 'bench', (i % {aggregates})::text, i / {aggregates} + 1, 'bench.noop', 1, \
                 '{{\"n\":1}}'::json, '{{}}'::json, now(), now() - interval '1 second', '{status}', {delivered_at} \
                 FROM generate_series(1, {n}) i"
            ))
            .await?;
            db.execute_unprepared("ANALYZE outbox_messages").await?;
        }
        sea_orm::DbBackend::MySql => seed_mysql(db, n, aggregates, status).await?,
        _ => {
            let past = "2000-01-01T00:00:00+00:00";
            let delivered_at = if status == "delivered" {
                format!("'{past}'")
            } else {
                "NULL".into()
            };
            // In chunks: one huge recursive insert holds the write lock for long.
            let mut left = n;
            while left > 0 {
                let chunk = left.min(100_000);
                let done = n - left;
                db.execute_unprepared(&format!(
                    "WITH RECURSIVE s(i) AS (SELECT {done} + 1 UNION ALL SELECT i + 1 FROM s WHERE i < {done} + {chunk}) \
                     INSERT INTO outbox_messages (id, aggregate_type, aggregate_id, position, event_type, \
                     event_version, payload, headers, occurred_at, available_at, status, delivered_at) \
                     SELECT randomblob(16), 'bench', CAST(i % {aggregates} AS TEXT), i / {aggregates} + 1, 'bench.noop', 1, \
                     '{{\"n\":1}}', '{{}}', '{past}', '{past}', '{status}', {delivered_at} FROM s"
                ))
                .await?;
                left -= chunk;
            }
            db.execute_unprepared("ANALYZE").await?;
        }
    }
    Ok(())
}

async fn seed_mysql(
    db: &DatabaseConnection,
    n: u64,
    aggregates: u64,
    status: &str,
) -> anyhow::Result<()> {
    let mut left = n;
    let mut i = 0u64;
    while left > 0 {
        let chunk = left.min(2000);
        let rows: Vec<String> = (0..chunk)
                    .map(|_| {
                        i += 1;
                        format!(
                            "(UNHEX(REPLACE(UUID(), '-', '')), 'bench', '{}', {}, 'bench.noop', 1, '{{\"n\":1}}', '{{}}', \
                             UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) - INTERVAL 1 SECOND, '{status}', {})",
                            i % aggregates,
                            i / aggregates + 1,
                            if status == "delivered" { "UTC_TIMESTAMP(6)" } else { "NULL" }
                        )
                    })
                    .collect();
        db.execute_unprepared(&format!(
                    "INSERT INTO outbox_messages (id, aggregate_type, aggregate_id, position, event_type, \
                     event_version, payload, headers, occurred_at, available_at, status, delivered_at) \
                     VALUES {}",
                    rows.join(", ")
                ))
                .await?;
        left -= chunk;
    }
    db.execute_unprepared("ANALYZE TABLE outbox_messages")
        .await?;
    Ok(())
}

async fn pending_left(db: &DatabaseConnection) -> anyhow::Result<bool> {
    Ok(db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT 1 AS one FROM outbox_messages WHERE status = 'pending' LIMIT 1",
        ))
        .await?
        .is_some())
}

async fn reset(db: &DatabaseConnection) -> anyhow::Result<()> {
    db.execute_unprepared("DELETE FROM outbox_messages").await?;
    db.execute_unprepared("DELETE FROM outbox_deliveries")
        .await?;
    Ok(())
}

/// Drains the backlog with `relays` relays; returns events per second.
async fn drain_with_relays(
    t: &TestDb,
    relays: usize,
    ordering: DeliveryOrder,
    delivered: DeliveredRows,
    n: u64,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..relays {
        handles.push(
            Relay::builder(t.connect_again().await)
                .id(format!("bench-{i}"))
                .registry(noop_registry())
                .batch_size(100)
                .ordering(ordering)
                .delivered_rows(delivered)
                .poll_interval(Duration::from_millis(20))
                .without_retention()
                .spawn()
                .await?,
        );
    }
    while pending_left(&t.db).await? {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    for h in handles {
        h.shutdown().await;
    }
    Ok(n as f64 / secs)
}

/// The limit: the same claim and mark, in a minimal loop of raw statements.
async fn drain_raw(t: &TestDb, loops: usize, delete: bool, n: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..loops {
        let db = t.connect_again().await;
        tasks.push(tokio::spawn(async move {
            raw_loop(&db, &format!("raw-{i}"), delete).await
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn raw_loop(db: &DatabaseConnection, me: &str, delete: bool) -> anyhow::Result<()> {
    // SQLite answers a writer that lost the race for the lock with SQLITE_BUSY; the relay backs
    // off and retries, and so does the baseline.
    loop {
        match raw_loop_once(db, me, delete).await {
            Err(e) if e.to_string().contains("database is locked") => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other,
        }
    }
}

async fn raw_loop_once(db: &DatabaseConnection, me: &str, delete: bool) -> anyhow::Result<()> {
    match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            loop {
                let now = Utc::now();
                let rows = sqlx::query(
                    "UPDATE outbox_messages AS o SET locked_by = $1, locked_until = $2, \
                     claims = o.claims + 1 FROM (SELECT o.seq FROM outbox_messages AS o \
                     WHERE o.status = 'pending' AND o.available_at <= $3 \
                     AND (o.locked_until IS NULL OR o.locked_until < $3) ORDER BY o.seq LIMIT 100 \
                     FOR UPDATE SKIP LOCKED) AS c WHERE o.seq = c.seq \
                     RETURNING o.seq, o.id, o.aggregate_type, o.aggregate_id, o.event_type, \
                     o.event_version, o.payload::text AS payload, o.headers::text AS headers, \
                     o.occurred_at, o.not_before, o.claims, o.last_error_kind",
                )
                .bind(me)
                .bind(now + chrono::Duration::seconds(60))
                .bind(now)
                .fetch_all(pool)
                .await?;
                if rows.is_empty() {
                    return Ok(());
                }
                let mut seqs = Vec::with_capacity(rows.len());
                for r in &rows {
                    use sqlx::Row;
                    seqs.push(r.try_get::<i64, _>("seq")?);
                    let payload: String = r.try_get("payload")?;
                    let _: Noop = serde_json::from_str(&payload)?;
                }
                if delete {
                    sqlx::query(
                        "DELETE FROM outbox_messages WHERE seq = ANY($1) AND locked_by = $2",
                    )
                    .bind(&seqs)
                    .bind(me)
                    .execute(pool)
                    .await?;
                } else {
                    sqlx::query(
                        "UPDATE outbox_messages SET status = 'delivered', delivered_at = $1, \
                         locked_by = NULL, locked_until = NULL WHERE seq = ANY($2) AND locked_by = $3",
                    )
                    .bind(now)
                    .bind(&seqs)
                    .bind(me)
                    .execute(pool)
                    .await?;
                }
            }
        }
        _ => {
            let pool = db.get_sqlite_connection_pool();
            loop {
                let now = Utc::now();
                let rows = sqlx::query(
                    "UPDATE outbox_messages SET locked_by = ?, locked_until = ?, claims = claims + 1 \
                     WHERE seq IN (SELECT o.seq FROM outbox_messages AS o WHERE o.status = 'pending' \
                     AND o.available_at <= ? AND (o.locked_until IS NULL OR o.locked_until < ?) \
                     ORDER BY o.seq LIMIT 100) RETURNING seq, id, aggregate_type, aggregate_id, \
                     event_type, event_version, payload, headers, occurred_at, not_before, claims, last_error_kind",
                )
                .bind(me)
                .bind(now + chrono::Duration::seconds(60))
                .bind(now)
                .bind(now)
                .fetch_all(pool)
                .await?;
                if rows.is_empty() {
                    return Ok(());
                }
                let mut seqs = Vec::with_capacity(rows.len());
                for r in &rows {
                    use sqlx::Row;
                    seqs.push(r.try_get::<i64, _>("seq")?);
                    let payload: String = r.try_get("payload")?;
                    let _: Noop = serde_json::from_str(&payload)?;
                }
                let list = serde_json::to_string(&seqs)?;
                let sql = if delete {
                    "DELETE FROM outbox_messages WHERE seq IN (SELECT value FROM json_each(?)) AND locked_by = ?"
                } else {
                    "UPDATE outbox_messages SET status = 'delivered', delivered_at = ?, locked_by = NULL, \
                     locked_until = NULL WHERE seq IN (SELECT value FROM json_each(?)) AND locked_by = ?"
                };
                let mut q = sqlx::query(sql);
                if !delete {
                    q = q.bind(now);
                }
                q.bind(list).bind(me).execute(pool).await?;
            }
        }
    }
}

async fn relay_suite(backend: Backend) -> anyhow::Result<()> {
    let t = fresh(backend).await?;
    let n = env_num("BENCH_EVENTS", 100_000.0) as u64;
    println!(
        "\n## relay throughput, {backend:?} ({}), backlog {n}, no-op handler, batch 100",
        server_version(&t.db).await
    );
    println!(
        "| relays | rows leave by | relay unordered ev/s | relay ordered ev/s | raw claim+mark ev/s | unordered vs raw | ordered vs raw |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let relay_counts: Vec<usize> = match std::env::var("BENCH_RELAYS") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) if backend == Backend::Sqlite => vec![1, 2],
        Err(_) => vec![1, 2, 4],
    };
    for relays in relay_counts {
        for (label, delivered) in [
            ("update", DeliveredRows::Keep),
            ("delete", DeliveredRows::Delete),
        ] {
            let delete = delivered == DeliveredRows::Delete;
            let run = |kind: u8| {
                let t = &t;
                async move {
                    reset(&t.db).await?;
                    seed(&t.db, n, 1000, "pending").await?;
                    match kind {
                        0 => {
                            drain_with_relays(t, relays, DeliveryOrder::Unordered, delivered, n)
                                .await
                        }
                        1 => {
                            drain_with_relays(
                                t,
                                relays,
                                DeliveryOrder::PerAggregate(OnFailure::Block),
                                delivered,
                                n,
                            )
                            .await
                        }
                        _ => drain_raw(t, relays, delete, n).await,
                    }
                }
            };
            let unordered = run(0).await?;
            let ordered = run(1).await?;
            let raw = run(2).await?;
            println!(
                "| {relays} | {label} | {unordered:.0} | {ordered:.0} | {raw:.0} | {:.0}% | {:.0}% |",
                100.0 * unordered / raw,
                100.0 * ordered / raw
            );
        }
    }
    t.cleanup().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Latency

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.95), p(0.99), *v.last().unwrap())
}

/// Commits `count` events at `rate` per second; returns (message id, commit-returned µs).
async fn produce_steady(
    db: &DatabaseConnection,
    config: &OutboxConfig,
    count: usize,
    rate: f64,
) -> anyhow::Result<Vec<(Uuid, i64)>> {
    let start = tokio::time::Instant::now();
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let mut o = order::Model::place("latency", i as i64 + 1);
        let id = o.events.iter().next().unwrap().message_id;
        let uow = UnitOfWork::begin_with(db, config).await?;
        uow.save(&mut o).await?;
        uow.commit().await?;
        out.push((id, Utc::now().timestamp_micros()));
    }
    Ok(out)
}

fn latency_registry(seen: Arc<std::sync::Mutex<Vec<(Uuid, i64)>>>) -> Registry {
    Registry::new([HandlerEntry::new(
        "latency",
        move |_: OrderPlaced, ctx: HandlerContext| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push((ctx.message_id(), Utc::now().timestamp_micros()));
                Ok::<_, std::convert::Infallible>(())
            }
        },
    )])
    .expect("one handler")
}

/// `latency-relay <db url> <pg_notify 0|1> <poll ms> <count>`: a relay in its own process that
/// prints `<message id> <handler entry µs>` for each event, then exits.
async fn latency_relay_child(args: &[String]) -> anyhow::Result<()> {
    let [url, notify, poll_ms, count] = args else {
        anyhow::bail!("usage: latency-relay <url> <notify> <poll ms> <count>");
    };
    let count: usize = count.parse()?;
    let mut opts = sea_orm::ConnectOptions::new(url.clone());
    opts.sqlx_logging(false);
    let db = sea_orm::Database::connect(opts).await?;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let relay = Relay::builder(db)
        .config(OutboxConfig::new().pg_notify(notify == "1"))
        .registry(latency_registry(seen.clone()))
        .poll_interval(Duration::from_millis(poll_ms.parse()?))
        .without_retention()
        .spawn()
        .await?;
    println!("ready");
    while seen.lock().unwrap().len() < count {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await;
    for (id, t) in seen.lock().unwrap().iter() {
        println!("{id} {t}");
    }
    Ok(())
}

async fn latency_suite(backend: Backend) -> anyhow::Result<()> {
    let count = env_num("BENCH_LATENCY_EVENTS", 10_000.0) as usize;
    let rate = 500.0;
    let probe = fresh(backend).await?;
    println!(
        "\n## latency commit → handler entry, {backend:?} ({}), {count} events at {rate}/s",
        server_version(&probe.db).await
    );
    probe.cleanup().await;
    println!("| wake-up | p50 ms | p95 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    let mut modes = vec![("in-process (same process, commit wakes the relay)", 0u8)];
    if backend == Backend::Postgres {
        modes.push(("LISTEN/NOTIFY (relay in another process)", 1));
    }
    modes.push(("polling only, 100 ms (relay in another process)", 2));
    modes.push(("polling only, 1 s default (relay in another process)", 3));
    for (label, mode) in modes {
        let t = fresh(backend).await?;
        let config = OutboxConfig::new().pg_notify(mode == 1);
        let (commits, entries) = if mode == 0 {
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let relay = Relay::builder(t.connect_again().await)
                .registry(latency_registry(seen.clone()))
                .without_retention()
                .spawn()
                .await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let commits = produce_steady(&t.db, &config, count, rate).await?;
            while seen.lock().unwrap().len() < count {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            relay.shutdown().await;
            let entries = seen.lock().unwrap().clone();
            (commits, entries)
        } else {
            let poll = match mode {
                1 => "1000",
                2 => "100",
                _ => "1000",
            };
            let mut child = tokio::process::Command::new(std::env::current_exe()?)
                .args([
                    "latency-relay",
                    &t.url,
                    if mode == 1 { "1" } else { "0" },
                    poll,
                    &count.to_string(),
                ])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line).await?;
            anyhow::ensure!(line.trim() == "ready", "relay child: {line}");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let commits = produce_steady(&t.db, &config, count, rate).await?;
            let mut rest = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut rest).await?;
            child.wait().await?;
            let entries = rest
                .lines()
                .filter_map(|l| {
                    let (id, t) = l.split_once(' ')?;
                    Some((id.parse().ok()?, t.parse().ok()?))
                })
                .collect();
            (commits, entries)
        };
        let committed: HashMap<Uuid, i64> = commits.into_iter().collect();
        let lat: Vec<f64> = entries
            .iter()
            .filter_map(|(id, t)| committed.get(id).map(|c| (*t - *c).max(0) as f64 / 1000.0))
            .collect();
        let (p50, p95, p99, max) = percentiles(lat);
        println!("| {label} | {p50:.2} | {p95:.2} | {p99:.2} | {max:.1} |");
        t.cleanup().await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Scale

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The claim's cost: PostgreSQL's own timing of the claim's SELECT (EXPLAIN ANALYZE, in a
/// transaction that is rolled back), and whether the plan touches only the pending index.
async fn claim_plan(db: &DatabaseConnection) -> anyhow::Result<(f64, bool, String)> {
    let txn = db.begin().await?;
    let rows = txn
        .query_all_raw(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "EXPLAIN (ANALYZE, BUFFERS) SELECT o.seq FROM outbox_messages AS o \
             WHERE o.status = 'pending' AND o.available_at <= now() \
             AND (o.locked_until IS NULL OR o.locked_until < now()) ORDER BY o.seq LIMIT 100 \
             FOR UPDATE SKIP LOCKED",
        ))
        .await?;
    txn.rollback().await?;
    let plan: Vec<String> = rows
        .iter()
        .filter_map(|r| r.try_get::<String>("", "QUERY PLAN").ok())
        .collect();
    let ms = plan
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Execution Time: ")?
                .trim_end_matches(" ms")
                .parse()
                .ok()
        })
        .unwrap_or(f64::NAN);
    let uses_pending_index = plan.iter().any(|l| l.contains("outbox_messages_pending"));
    let scan = plan
        .iter()
        .find(|l| l.contains("Scan"))
        .map(|l| l.trim().split("  (").next().unwrap_or("").to_owned())
        .unwrap_or_default();
    Ok((ms, uses_pending_index, scan))
}

async fn scale_suite(backend: Backend) -> anyhow::Result<()> {
    let t = fresh(backend).await?;
    let pending = 20_000u64;
    println!(
        "\n## scale, {backend:?} ({}): {pending} pending behind delivered history, 1 relay, unordered",
        server_version(&t.db).await
    );
    println!(
        "| delivered rows in the table | relay ev/s | claim SELECT ms (EXPLAIN ANALYZE) | plan |"
    );
    println!("|---:|---:|---:|---|");
    let mut history = 0u64;
    for target in [0u64, 10_000, 100_000, 1_000_000] {
        seed(&t.db, target - history, 1000, "delivered").await?;
        history = target;
        seed(&t.db, pending, 1000, "pending").await?;
        let plan = if backend == Backend::Postgres {
            let (ms, idx, scan) = claim_plan(&t.db).await?;
            (
                format!("{ms:.3}"),
                format!(
                    "{scan}{}",
                    if idx { "" } else { " (not the pending index!)" }
                ),
            )
        } else {
            ("-".into(), "-".into())
        };
        let rate = drain_with_relays(
            &t,
            1,
            DeliveryOrder::Unordered,
            DeliveredRows::Keep,
            pending,
        )
        .await?;
        println!("| {history} | {rate:.0} | {} | {} |", plan.0, plan.1);
    }

    reset(&t.db).await?;
    let big = env_num("BENCH_BIG", 1_000_000.0) as u64;
    seed(&t.db, big, 100_000, "pending").await?;
    if backend == Backend::Postgres {
        let (ms, _, scan) = claim_plan(&t.db).await?;
        println!("\nclaim with {big} pending: {ms:.3} ms ({scan})");
    }
    let base = rss_kib();
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = {
        let samples = samples.clone();
        tokio::spawn(async move {
            loop {
                samples.lock().unwrap().push(rss_kib());
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let rate =
        drain_with_relays(&t, 1, DeliveryOrder::Unordered, DeliveredRows::Delete, big).await?;
    sampler.abort();
    let s = samples.lock().unwrap().clone();
    let at = |q: f64| s[((s.len() - 1) as f64 * q) as usize] / 1024;
    println!(
        "drain of {big} (delete on delivery): {rate:.0} ev/s; process RSS MiB before {}, at 10% {}, 50% {}, 90% {}, peak {}",
        base / 1024,
        at(0.1),
        at(0.5),
        at(0.9),
        s.iter().max().unwrap() / 1024
    );
    t.cleanup().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Per-aggregate order

async fn order_suite(backend: Backend) -> anyhow::Result<()> {
    let t = fresh(backend).await?;
    let n = env_num("BENCH_ORDER_EVENTS", 20_000.0) as u64;
    println!(
        "\n## per-aggregate order cost, {backend:?} ({}), {n} events, 1 relay, batch 100",
        server_version(&t.db).await
    );
    println!("| aggregates | unordered ev/s | ordered ev/s | ordered vs unordered |");
    println!("|---:|---:|---:|---:|");
    for aggregates in [10u64, 1000, 100_000] {
        let rate = |ordering| {
            let t = &t;
            async move {
                reset(&t.db).await?;
                seed(&t.db, n, aggregates, "pending").await?;
                drain_with_relays(t, 1, ordering, DeliveredRows::Delete, n).await
            }
        };
        let unordered = rate(DeliveryOrder::Unordered).await?;
        let ordered = rate(DeliveryOrder::PerAggregate(OnFailure::Block)).await?;
        println!(
            "| {aggregates} | {unordered:.0} | {ordered:.0} | {:.0}% |",
            100.0 * ordered / unordered
        );
    }
    t.cleanup().await;
    Ok(())
}
