//! Relays in processes of their own, killed with SIGKILL in the middle of batches.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use outbox_seaorm::Admin;
use outbox_tests::fixtures::{
    commit_numbered, create_relay_log, order_violations, relay_log, replays_after_later,
};
use outbox_tests::{TestDb, backend_tests, kill_on_progress, wait_for};
use tokio::process::{Child, Command};

backend_tests!(killed_relay_processes_lose_nothing_and_keep_aggregate_order);

fn spawn_worker(url: &str, name: &str) -> Child {
    // Short lease so that a killed worker's rows are taken over quickly; a few ms per handler
    // so kills land mid-batch.
    Command::new(env!("CARGO_BIN_EXE_relay-worker"))
        .args([url, name, "700", "3"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn relay-worker")
}

async fn killed_relay_processes_lose_nothing_and_keep_aggregate_order(t: TestDb) {
    create_relay_log(&t.db).await;
    let total = commit_numbered(&t.db, 30, 12).await;
    let admin = Admin::new(t.db.clone());
    let mut workers: Vec<Child> = (0..3)
        .map(|i| spawn_worker(&t.url, &format!("w{i}")))
        .collect();
    let kills_mid_backlog = kill_on_progress(&admin, &mut workers, 30, 8, |n| {
        spawn_worker(&t.url, &format!("w{n}"))
    })
    .await;
    wait_for("the backlog to drain", Duration::from_secs(90), || async {
        let c = admin.counts().await.unwrap();
        (c.pending == 0 && c.delivered as usize == total).then_some(())
    })
    .await;
    for w in &mut workers {
        w.start_kill().ok();
        w.wait().await.ok();
    }

    let log = relay_log(&t.db).await;
    let distinct: HashSet<&str> = log.iter().map(|l| l.0.as_str()).collect();
    let duplicates = log.len() - distinct.len();
    eprintln!(
        "{:?}: {total} events, {kills_mid_backlog} workers killed mid-backlog, {} deliveries, \
         {duplicates} duplicates (at-least-once after a kill), {} of them replayed after a \
         later message of their aggregate",
        t.backend,
        log.len(),
        replays_after_later(&log)
    );
    assert!(
        kills_mid_backlog >= 1,
        "at least one worker was killed mid-backlog"
    );
    assert_eq!(distinct.len(), total, "no event lost");
    assert_eq!(
        order_violations(&log),
        0,
        "no event delivered for the first time after a later one of its aggregate"
    );
    t.cleanup().await;
}
