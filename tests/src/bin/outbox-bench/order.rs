//! Per-aggregate order: ordered vs unordered drains of one backlog spread over 10, 1 000 and
//! 100 000 aggregates (issue #9: ordered ≥ 80% of unordered at 1 000, no cliff at 10).

use outbox_seaorm::{DeliveredRows, DeliveryOrder, OnFailure};
use outbox_tests::Backend;

use crate::backlog::{drain_traced, reset, seed};
use crate::{env_num, fresh, server_version};

pub(crate) async fn suite(backend: Backend) -> anyhow::Result<()> {
    let t = fresh(backend).await?;
    let n = env_num("BENCH_ORDER_EVENTS", 20_000.0) as u64;
    let rounds = env_num("BENCH_ORDER_ROUNDS", 2.0).max(1.0) as usize;
    println!(
        "\n## per-aggregate order cost, {backend:?} ({}), {n} events, 1 relay, batch 100, \
         rows deleted on delivery, {rounds} alternating rounds",
        server_version(&t.db).await
    );
    println!(
        "| aggregates | unordered ev/s | ordered ev/s | ordered vs unordered \
         | ordered rows per claim | ordered empty claims |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for aggregates in [10u64, 1000, 100_000] {
        let ordered = DeliveryOrder::PerAggregate(OnFailure::Block);
        let (mut secs_unordered, mut secs_ordered) = (0.0, 0.0);
        let (mut polls, mut batches, mut claimed) = (0, 0, 0);
        for round in 0..rounds {
            // Alternate which goes first, so drift hits both alike.
            let modes = if round.is_multiple_of(2) {
                [DeliveryOrder::Unordered, ordered]
            } else {
                [ordered, DeliveryOrder::Unordered]
            };
            for mode in modes {
                reset(&t.db).await?;
                seed(&t.db, n, aggregates, "pending").await?;
                let d = drain_traced(&t, 1, mode, DeliveredRows::Delete, n).await?;
                if mode == DeliveryOrder::Unordered {
                    secs_unordered += d.secs;
                } else {
                    secs_ordered += d.secs;
                    polls += d.polls;
                    batches += d.batches;
                    claimed += d.claimed;
                }
            }
        }
        let unordered = (n * rounds as u64) as f64 / secs_unordered;
        let ordered = (n * rounds as u64) as f64 / secs_ordered;
        println!(
            "| {aggregates} | {unordered:.0} | {ordered:.0} | {:.0}% | {:.1} | {} |",
            100.0 * ordered / unordered,
            claimed as f64 / batches.max(1) as f64,
            polls - batches,
        );
    }
    t.cleanup().await;
    Ok(())
}
