//! The big drain (issue #9): 1M pending rows with `DeliveredRows::Delete` within 20% of the
//! rate of 100k, unordered, one relay. Deleting leaves dead entries in the pending index that
//! every following claim walks until vacuum removes them: the table shows how many autovacuums
//! ran during each drain and the rate at the start and at the end of it.
//! `BENCH_BIG_VACUUM=<seconds>` has the bench itself run `VACUUM` that often during the drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use outbox_seaorm::{DeliveredRows, DeliveryOrder};
use outbox_tests::Backend;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use crate::backlog::{drain_traced, reset, seed};
use crate::{env_num, fresh, server_version};

/// PostgreSQL's counters for the outbox table: (autovacuums so far, dead tuples now).
async fn vacuum_counters(db: &DatabaseConnection) -> Option<(i64, i64)> {
    if db.get_database_backend() != DbBackend::Postgres {
        return None;
    }
    // The statistics reach the view within a second or so.
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT autovacuum_count, n_dead_tup FROM pg_stat_user_tables \
             WHERE relid = 'outbox_messages'::regclass",
        ))
        .await
        .ok()??;
    Some((
        row.try_get("", "autovacuum_count").ok()?,
        row.try_get("", "n_dead_tup").ok()?,
    ))
}

/// The autovacuum settings in effect for the outbox table, on one line.
async fn vacuum_settings(db: &DatabaseConnection) -> anyhow::Result<String> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT name || ' = ' || setting AS s FROM pg_settings WHERE name IN \
             ('autovacuum', 'autovacuum_naptime', 'autovacuum_vacuum_threshold', \
             'autovacuum_vacuum_scale_factor', 'autovacuum_vacuum_insert_threshold', \
             'autovacuum_vacuum_insert_scale_factor', 'autovacuum_vacuum_cost_delay', \
             'autovacuum_vacuum_cost_limit') \
             UNION ALL SELECT 'outbox_messages reloptions = ' || \
             COALESCE(array_to_string(reloptions, ', '), '(none)') FROM pg_class \
             WHERE oid = 'outbox_messages'::regclass",
        ))
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.try_get::<String>("", "s").ok())
        .collect::<Vec<_>>()
        .join("; "))
}

pub(crate) async fn suite(backend: Backend) -> anyhow::Result<()> {
    let t = fresh(backend).await?;
    // To look at the table from outside while the drain runs.
    eprintln!("# database: {}", t.url);
    let big = env_num("BENCH_BIG", 1_000_000.0) as u64;
    let small = big / 10;
    println!(
        "\n## big drain, {backend:?} ({}): {small} then {big} pending rows over 1000 aggregates, \
         unordered, 1 relay, batch 100, rows deleted on delivery",
        server_version(&t.db).await
    );
    // `BENCH_BIG_VACUUM=<seconds>`: the bench runs `VACUUM outbox_messages` that often during
    // the drains (PostgreSQL), to see what vacuuming would give where autovacuum is off.
    let vacuum_every = std::env::var("BENCH_BIG_VACUUM")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|_| backend == Backend::Postgres)
        .map(Duration::from_secs_f64);
    if backend == Backend::Postgres {
        println!("\n{}", vacuum_settings(&t.db).await?);
        match vacuum_every {
            Some(d) => println!("the bench runs VACUUM outbox_messages every {d:?}\n"),
            None => println!(),
        }
    }
    println!(
        "| pending rows | seed s | drain s | ev/s | ev/s first 10% | ev/s middle 10% | ev/s last 10% \
         | autovacuums during the drain | VACUUMs by the bench | dead tuples after |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rates = Vec::new();
    for n in [small, big] {
        reset(&t.db).await?;
        let seeding = Instant::now();
        seed(&t.db, n, 1000, "pending").await?;
        let seed_secs = seeding.elapsed().as_secs_f64();
        let before = vacuum_counters(&t.db).await;
        let vacuums = Arc::new(AtomicU64::new(0));
        let vacuumer = vacuum_every.map(|every| {
            let (db, vacuums) = (t.db.clone(), vacuums.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if db
                        .execute_unprepared("VACUUM outbox_messages")
                        .await
                        .is_ok()
                    {
                        vacuums.fetch_add(1, AtomicOrdering::Relaxed);
                    }
                }
            })
        });
        let d = drain_traced(&t, 1, DeliveryOrder::Unordered, DeliveredRows::Delete, n).await;
        if let Some(v) = vacuumer {
            v.abort();
        }
        let d = d?;
        // Let the statistics catch up before reading them.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = vacuum_counters(&t.db).await;
        let (autovacuums, dead) = match (before, after) {
            (Some((v0, _)), Some((v1, dead))) => ((v1 - v0).to_string(), dead.to_string()),
            _ => ("-".into(), "-".into()),
        };
        let vacuums = vacuums.load(AtomicOrdering::Relaxed);
        let rate = d.rate(n);
        rates.push(rate);
        println!(
            "| {n} | {seed_secs:.1} | {:.1} | {rate:.0} | {:.0} | {:.0} | {:.0} | {autovacuums} | {vacuums} | {dead} |",
            d.secs,
            d.rate_between(n, 0.0, 0.1),
            d.rate_between(n, 0.45, 0.55),
            d.rate_between(n, 0.9, 1.0),
        );
    }
    println!(
        "\n{big} vs {small}: the big drain runs at {:.0}% of the small one's rate (target ≥ 80%)",
        100.0 * rates[1] / rates[0]
    );
    t.cleanup().await;
    Ok(())
}
