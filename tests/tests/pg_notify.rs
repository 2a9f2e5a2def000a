//! PostgreSQL NOTIFY wakes relays in other processes. In a test binary of its own: a commit
//! anywhere in this process would also wake the relay in-process and hide a broken LISTEN.

use std::time::Duration;

use outbox_seaorm::entity::MessageStatus;
use outbox_seaorm::{OutboxConfig, Registry, Relay, save_aggregate_with};
use outbox_tests::fixtures::{OrderPlaced, Recorder, order, recording};
use outbox_tests::{Backend, TestDb, wait_for};
use sea_orm::{EntityTrait, TransactionTrait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_postgres), ignore = "OUTBOX_TEST_POSTGRES_URL is not set")]
async fn pg_notify_wakes_a_relay_that_polls_rarely() {
    outbox_tests::run(Backend::Postgres, body).await;
}

async fn body(t: TestDb) {
    let config = OutboxConfig::new().pg_notify(true);
    let seen = Recorder::new();
    let handle = Relay::builder_with(t.connect_again().await, &config)
        .registry(Registry::new([recording::<OrderPlaced>("placed", seen.clone())]).unwrap())
        .poll_interval(Duration::from_secs(3600))
        .spawn()
        .await
        .unwrap();
    // Let the first poll pass; LISTEN is issued alongside it and has no signal of its own, so
    // leave it a moment more.
    wait_for("first poll", Duration::from_secs(10), || async {
        (handle.stats().polls >= 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A plain transaction wakes no relay in this process: only the NOTIFY can.
    let mut o = order::Model::place("ada", 1);
    let txn = t.db.begin().await.unwrap();
    let written = save_aggregate_with(&txn, &config, &mut o).await.unwrap();
    txn.commit().await.unwrap();
    written.committed();
    wait_for("notified delivery", Duration::from_secs(10), || async {
        (seen.len() == 1).then_some(())
    })
    .await;
    handle.shutdown().await;
    let rows = outbox_seaorm::entity::message::Entity::find()
        .all(&t.db)
        .await
        .unwrap();
    assert_eq!(rows[0].status, MessageStatus::Delivered);
    t.cleanup().await;
}
