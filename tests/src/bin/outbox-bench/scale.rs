//! Scale: the claim's cost with delivered history behind the backlog, and a large backlog's
//! drain with the relay's memory.

use std::sync::Arc;
use std::time::Duration;

use outbox_seaorm::{DeliveredRows, DeliveryOrder};
use outbox_tests::Backend;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};

use crate::backlog::{drain_with_relays, reset, seed};
use crate::{env_num, fresh, server_version};

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
pub(crate) async fn claim_plan(db: &DatabaseConnection) -> anyhow::Result<(f64, bool, String)> {
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

pub(crate) async fn suite(backend: Backend) -> anyhow::Result<()> {
    let t = fresh(backend).await?;
    let pending = env_num("BENCH_SCALE_PENDING", 20_000.0) as u64;
    println!(
        "\n## scale, {backend:?} ({}): {pending} pending behind delivered history, 1 relay, unordered",
        server_version(&t.db).await
    );
    println!(
        "| delivered rows in the table | relay ev/s | claim SELECT ms (EXPLAIN ANALYZE) | plan |"
    );
    println!("|---:|---:|---:|---|");
    let max_history = env_num("BENCH_HISTORY", 1_000_000.0) as u64;
    let mut history = 0u64;
    for target in [0u64, 10_000, 100_000, 1_000_000] {
        if target > max_history {
            break;
        }
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
    let mut s = samples.lock().unwrap().clone();
    s.push(rss_kib());
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
