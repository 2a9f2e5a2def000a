//! Backlogs for the relay suites: bulk seeding, resetting, and draining with relays.

use std::time::{Duration, Instant};

use outbox_seaorm::{DeliveredRows, DeliveryOrder, HandlerContext, HandlerEntry, Registry, Relay};
use outbox_tests::TestDb;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, outbox_seaorm::DomainEvent)]
#[event(name = "bench.noop")]
pub(crate) struct Noop {
    pub(crate) n: u32,
}

pub(crate) fn noop_registry() -> Registry {
    Registry::new([HandlerEntry::new(
        "noop",
        |_: Noop, _ctx: HandlerContext| async { Ok::<_, std::convert::Infallible>(()) },
    )])
    .expect("one handler")
}

/// Inserts `n` messages with `status` over `aggregates` aggregates, in bulk: message `i`
/// (counting from one) belongs to aggregate `i % aggregates` at position `i / aggregates + 1`,
/// so positions grow with `seq` within each aggregate, as the unit of work writes them. No
/// stream rows: the relay does not read them, and nothing writes through a unit of work after.
pub(crate) async fn seed(
    db: &DatabaseConnection,
    n: u64,
    aggregates: u64,
    status: &str,
) -> anyhow::Result<()> {
    let delivered_at = if status == "delivered" {
        "now()"
    } else {
        "NULL"
    };
    match db.get_database_backend() {
        DbBackend::Postgres => {
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
        DbBackend::MySql => seed_mysql(db, n, aggregates, status).await?,
        _ => {
            let past = "2000-01-01T00:00:00.000+00:00";
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
    let delivered_at = if status == "delivered" {
        "UTC_TIMESTAMP(6)"
    } else {
        "NULL"
    };
    let mut left = n;
    let mut i = 0u64;
    while left > 0 {
        let chunk = left.min(2000);
        let rows: Vec<String> = (0..chunk)
            .map(|_| {
                i += 1;
                format!(
                    "(UNHEX(REPLACE(UUID(), '-', '')), 'bench', '{}', {}, 'bench.noop', 1, \
                     '{{\"n\":1}}', '{{}}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) - INTERVAL 1 SECOND, \
                     '{status}', {delivered_at})",
                    i % aggregates,
                    i / aggregates + 1,
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

pub(crate) async fn pending_left(db: &DatabaseConnection) -> anyhow::Result<bool> {
    Ok(db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT 1 AS one FROM outbox_messages WHERE status = 'pending' LIMIT 1",
        ))
        .await?
        .is_some())
}

/// Empties the outbox tables. PostgreSQL and MariaDB truncate, so a run never starts behind
/// the dead rows of the one before.
pub(crate) async fn reset(db: &DatabaseConnection) -> anyhow::Result<()> {
    let tables = ["outbox_messages", "outbox_deliveries", "outbox_streams"];
    match db.get_database_backend() {
        DbBackend::Postgres => {
            db.execute_unprepared(&format!("TRUNCATE {}", tables.join(", ")))
                .await?;
        }
        DbBackend::MySql => {
            for t in tables {
                db.execute_unprepared(&format!("TRUNCATE TABLE {t}"))
                    .await?;
            }
        }
        _ => {
            for t in tables {
                db.execute_unprepared(&format!("DELETE FROM {t}")).await?;
            }
        }
    }
    Ok(())
}

/// A drain: how long it took, and (time, messages done) samples every 20 ms.
pub(crate) struct Drain {
    pub(crate) secs: f64,
    pub(crate) samples: Vec<(f64, u64)>,
    /// Claim statements run, and those that returned rows (summed over the relays).
    pub(crate) polls: u64,
    pub(crate) batches: u64,
    /// Messages claimed (a message claimed twice counts twice).
    pub(crate) claimed: u64,
}

impl Drain {
    pub(crate) fn rate(&self, n: u64) -> f64 {
        n as f64 / self.secs
    }

    /// Events per second while the done count went from `from` to `to` (fractions of `n`).
    pub(crate) fn rate_between(&self, n: u64, from: f64, to: f64) -> f64 {
        let at = |q: f64| {
            let target = (n as f64 * q).ceil() as u64;
            self.samples
                .iter()
                .find(|(_, done)| *done >= target)
                .map_or(self.secs, |(t, _)| *t)
        };
        let (a, b) = (at(from), at(to));
        n as f64 * (to - from) / (b - a).max(1e-3)
    }
}

/// Drains the backlog of `n` with `relays` relays; returns events per second.
pub(crate) async fn drain_with_relays(
    t: &TestDb,
    relays: usize,
    ordering: DeliveryOrder,
    delivered: DeliveredRows,
    n: u64,
) -> anyhow::Result<f64> {
    Ok(drain_traced(t, relays, ordering, delivered, n)
        .await?
        .rate(n))
}

/// Drains the backlog of `n` with `relays` relays (each with its own pool). Done when the
/// relays' counters say `n` messages reached an outcome (no polling of the table, which would
/// compete with the claims and, on PostgreSQL, clean their index for them).
pub(crate) async fn drain_traced(
    t: &TestDb,
    relays: usize,
    ordering: DeliveryOrder,
    delivered: DeliveredRows,
    n: u64,
) -> anyhow::Result<Drain> {
    // Pools and schema checks first: the clock measures the drain only.
    let mut built = Vec::new();
    for i in 0..relays {
        built.push(
            Relay::builder(t.connect_again().await)
                .id(format!("bench-{i}"))
                .registry(noop_registry())
                .batch_size(100)
                .ordering(ordering)
                .delivered_rows(delivered)
                .poll_interval(Duration::from_secs_f64(
                    crate::env_num("BENCH_POLL_MS", 20.0) / 1000.0,
                ))
                .without_retention()
                .build()
                .await?,
        );
    }
    let start = Instant::now();
    let handles: Vec<_> = built.into_iter().map(|r| r.spawn()).collect();
    let mut samples = Vec::new();
    let (mut last, mut last_progress) = (0, Instant::now());
    loop {
        let done: u64 = handles
            .iter()
            .map(|h| {
                let s = h.stats();
                s.delivered + s.dead
            })
            .sum();
        let now = Instant::now();
        samples.push((now.duration_since(start).as_secs_f64(), done));
        if done >= n {
            break;
        }
        if done > last {
            (last, last_progress) = (done, now);
        } else if now.duration_since(last_progress) > Duration::from_secs(1)
            && !pending_left(&t.db).await?
        {
            // Counted short (a lease lost, say), but nothing is pending: done.
            break;
        } else if now.duration_since(last_progress) > Duration::from_secs(120) {
            let stats: Vec<_> = handles.iter().map(|h| h.stats()).collect();
            anyhow::bail!("drain stalled at {done} of {n}: {stats:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let stats: Vec<_> = handles.iter().map(|h| h.stats()).collect();
    let dead: u64 = stats.iter().map(|s| s.dead).sum();
    let polls = stats.iter().map(|s| s.polls).sum();
    let batches = stats.iter().map(|s| s.batches).sum();
    let claimed = stats.iter().map(|s| s.claimed).sum();
    for h in handles {
        h.shutdown().await;
    }
    if dead > 0 {
        eprintln!("warning: {dead} messages went dead during the drain");
    }
    if pending_left(&t.db).await? {
        eprintln!("warning: pending messages left after the drain");
    }
    Ok(Drain {
        secs,
        samples,
        polls,
        batches,
        claimed,
    })
}
