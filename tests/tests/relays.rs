//! Many relays on one outbox, leases, retention, wake-ups across processes, event versions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::time::Duration;

use outbox_seaorm::{
    Admin, HandlerContext, HandlerEntry, Registry, Relay, Retention, RetryPolicy, Upcasters,
};
use outbox_tests::fixtures::{Numbered, Recorder, commit_numbered, order, recording};
use outbox_tests::{TestDb, backend_tests, wait_for};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::{Deserialize, Serialize};

backend_tests!(
    relays_record_themselves_and_their_heartbeat,
    many_relays_deliver_each_message_once_in_aggregate_order,
    an_abandoned_claim_is_taken_over_when_its_lease_expires,
    retention_deletes_old_delivered_rows_in_batches_one_relay_at_a_time,
    upcaster_lets_a_v2_handler_read_v1_payloads,
    unknown_stored_version_is_dead_with_a_typed_error,
);

async fn exec(db: &DatabaseConnection, pg: &str, other: &str) {
    let sql = if db.get_database_backend() == DbBackend::Postgres {
        pg
    } else {
        other
    };
    db.execute_unprepared(sql).await.unwrap();
}

async fn many_relays_deliver_each_message_once_in_aggregate_order(t: TestDb) {
    let total = commit_numbered(&t.db, 20, 15).await;
    let seen = Recorder::<(String, u32)>::new();
    let mut handles = Vec::new();
    for i in 0..4 {
        let seen = seen.clone();
        let handler = HandlerEntry::new("ordered", move |e: Numbered, _ctx: HandlerContext| {
            let seen = seen.clone();
            async move {
                seen.push((e.key, e.n));
                Ok::<_, std::io::Error>(())
            }
        });
        // A pool of its own per relay, as separate instances of a service would have.
        let db = t.connect_again().await;
        handles.push(
            Relay::builder(db)
                .id(format!("relay-{i}"))
                .registry(Registry::new([handler]).unwrap())
                .batch_size(8)
                .poll_interval(Duration::from_millis(20))
                .spawn()
                .await
                .unwrap(),
        );
    }
    wait_for("every event", Duration::from_secs(60), || async {
        (seen.len() >= total).then_some(())
    })
    .await;
    let stats: Vec<_> = handles.iter().map(|h| h.stats()).collect();
    for h in handles {
        h.shutdown().await;
    }
    let all = seen.all();
    assert_eq!(all.len(), total, "no message handed to two relays");
    let mut per_key: HashMap<String, Vec<u32>> = HashMap::new();
    for (k, n) in all {
        per_key.entry(k).or_default().push(n);
    }
    assert_eq!(per_key.len(), 20);
    for (k, ns) in per_key {
        assert_eq!(ns, (1..=15).collect::<Vec<_>>(), "order of {k}");
    }
    let busy = stats.iter().filter(|s| s.delivered > 0).count();
    assert!(busy >= 2, "the work was shared: {stats:?}");
    // Claims never fail under contention: on MariaDB a deadlock is retried at once (and
    // counted in `conflicts_retried`), elsewhere there is none.
    assert!(
        stats.iter().all(|s| s.errors == 0),
        "no claim or write failed: {stats:?}"
    );
    t.cleanup().await;
}

async fn an_abandoned_claim_is_taken_over_when_its_lease_expires(t: TestDb) {
    commit_numbered(&t.db, 1, 1).await;
    let calls = Arc::new(AtomicU32::new(0));
    let stuck = {
        let calls = calls.clone();
        HandlerEntry::new("log", move |_: Numbered, _ctx: HandlerContext| {
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, AtomicOrdering::SeqCst) == 0 {
                    // The first relay "crashes" here: its future is dropped mid-handler.
                    std::future::pending::<()>().await;
                }
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let lease = Duration::from_millis(400);
    let crashed = Relay::builder(t.db.clone())
        .id("crashed")
        .registry(Registry::new([stuck.clone()]).unwrap())
        .lease(lease)
        .build()
        .await
        .unwrap();
    let survivor = Relay::builder(t.connect_again().await)
        .id("survivor")
        .registry(Registry::new([stuck]).unwrap())
        .lease(lease)
        .build()
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), crashed.run_once())
            .await
            .is_err(),
        "the first relay hangs in the handler"
    );
    assert_eq!(
        survivor.run_once().await.unwrap().claimed,
        0,
        "not handed to a second relay while the lease holds"
    );
    wait_for("takeover", Duration::from_secs(10), || async {
        (survivor.run_once().await.unwrap().delivered == 1).then_some(())
    })
    .await;
    assert_eq!(calls.load(AtomicOrdering::SeqCst), 2);
    t.cleanup().await;
}

async fn retention_deletes_old_delivered_rows_in_batches_one_relay_at_a_time(t: TestDb) {
    commit_numbered(&t.db, 1, 33).await;
    let relay = Relay::builder(t.db.clone())
        .registry(
            Registry::new([HandlerEntry::new(
                "ok",
                |_: Numbered, _ctx: HandlerContext| async { Ok::<_, std::io::Error>(()) },
            )])
            .unwrap(),
        )
        .retention(Retention::delete_delivered_after(Duration::from_secs(3600)).batch_size(10))
        .build()
        .await
        .unwrap();
    // Deliver 30 of the 33 and age 25 of those; 3 stay pending.
    exec(
        &t.db,
        "UPDATE outbox_messages SET available_at = now() + interval '1 day' WHERE seq > 30",
        "UPDATE outbox_messages SET available_at = '2999-01-01 00:00:00' WHERE seq > 30",
    )
    .await;
    assert_eq!(relay.drain().await.unwrap().delivered, 30);
    exec(
        &t.db,
        "UPDATE outbox_messages SET delivered_at = now() - interval '2 days' WHERE seq <= 25",
        "UPDATE outbox_messages SET delivered_at = '2000-01-01 00:00:00' WHERE seq <= 25",
    )
    .await;

    // Another relay holds the retention lock: this one does nothing.
    exec(
        &t.db,
        "INSERT INTO outbox_locks (name, holder, locked_until) VALUES ('retention', 'other', now() + interval '1 hour')",
        "INSERT INTO outbox_locks (name, holder, locked_until) VALUES ('retention', 'other', '2999-01-01 00:00:00')",
    )
    .await;
    let r = relay.run_retention().await.unwrap();
    assert!(r.skipped && r.deleted == 0, "{r:?}");

    // Its lock expires (it died): this relay takes over and deletes in batches of 10.
    exec(
        &t.db,
        "UPDATE outbox_locks SET locked_until = now() - interval '1 second'",
        "UPDATE outbox_locks SET locked_until = '2000-01-01 00:00:00'",
    )
    .await;
    let r = relay.run_retention().await.unwrap();
    assert_eq!((r.deleted, r.skipped), (25, false));
    let counts = Admin::new(t.db.clone()).counts().await.unwrap();
    assert_eq!((counts.delivered, counts.pending), (5, 3));
    let holder: Option<String> =
        t.db.query_one_raw(Statement::from_string(
            t.db.get_database_backend(),
            "SELECT holder FROM outbox_locks WHERE name = 'retention'",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "holder")
        .unwrap();
    assert_eq!(holder, None, "the lock is released after the round");
    t.cleanup().await;
}

/// Version 2 of `order.placed`: it gained a currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox_seaorm::DomainEvent)]
#[event(name = "order.placed", version = 2)]
struct OrderPlacedV2 {
    order_id: uuid::Uuid,
    amount: i64,
    currency: String,
}

fn v1_to_v2(mut v: serde_json::Value) -> Result<serde_json::Value, outbox_seaorm::BoxError> {
    v["currency"] = "EUR".into();
    Ok(v)
}

async fn upcaster_lets_a_v2_handler_read_v1_payloads(t: TestDb) {
    let mut o = order::Model::place("ada", 700);
    let uow = outbox_seaorm::UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut o).await.unwrap();
    uow.commit().await.unwrap();
    let seen = Recorder::new();
    let registry = Registry::new([outbox_tests::fixtures::recording::<OrderPlacedV2>(
        "v2",
        seen.clone(),
    )])
    .unwrap()
    .with_upcasters(Upcasters::new().with("order.placed", 1, v1_to_v2));
    let relay = Relay::builder(t.db.clone())
        .registry(registry)
        .build()
        .await
        .unwrap();
    assert_eq!(relay.drain().await.unwrap().delivered, 1);
    assert_eq!(
        seen.all(),
        [OrderPlacedV2 {
            order_id: o.id,
            amount: 700,
            currency: "EUR".into()
        }]
    );
    t.cleanup().await;
}

async fn unknown_stored_version_is_dead_with_a_typed_error(t: TestDb) {
    let mut a = order::Model::place("ada", 1);
    let mut b = order::Model::place("bob", 2);
    let uow = outbox_seaorm::UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut a).await.unwrap();
    uow.save(&mut b).await.unwrap();
    uow.commit().await.unwrap();
    // `a` was written by a newer deployment (version 3); `b` is version 1 and no upcaster is
    // registered.
    exec(
        &t.db,
        "UPDATE outbox_messages SET event_version = 3 WHERE seq = 1",
        "UPDATE outbox_messages SET event_version = 3 WHERE seq = 1",
    )
    .await;
    let registry = Registry::new([outbox_tests::fixtures::recording::<OrderPlacedV2>(
        "v2",
        Recorder::new(),
    )])
    .unwrap();
    let relay = Relay::builder(t.db.clone())
        .registry(registry)
        .retry(RetryPolicy::default().max_attempts(5))
        .build()
        .await
        .unwrap();
    let r = relay.drain().await.unwrap();
    assert_eq!(r.dead, 2, "not retried: no attempt can succeed");
    for dead in Admin::new(t.db.clone()).dead_letters(10).await.unwrap() {
        assert_eq!(dead.last_error_kind.as_deref(), Some("unknown_version"));
        assert_eq!(dead.attempts, 1);
    }
    t.cleanup().await;
}

async fn relays_record_themselves_and_their_heartbeat(t: TestDb) {
    let admin = Admin::new(t.db.clone());
    let relay = Relay::builder(t.db.clone())
        .id("recorded")
        .registry(Registry::new([recording::<Numbered>("numbered", Recorder::new())]).unwrap())
        .lease(Duration::from_millis(600))
        .spawn()
        .await
        .unwrap();
    let first = wait_for("the relay's row", Duration::from_secs(10), || async {
        admin
            .relays()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.id == "recorded")
    })
    .await;
    assert!(first.is_alive(), "{first:?}");
    assert_eq!(first.version, env!("CARGO_PKG_VERSION"));
    assert!(!first.host.is_empty());
    assert_eq!(
        first.handles.handlers,
        [("numbered".to_owned(), "test.numbered".to_owned())]
    );
    wait_for("a heartbeat", Duration::from_secs(10), || async {
        let r = admin
            .relays()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.id == "recorded")?;
        (r.heartbeat_at > first.heartbeat_at).then_some(())
    })
    .await;
    relay.shutdown().await;
    let stopped = admin
        .relays()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == "recorded")
        .unwrap();
    assert!(
        stopped.stopped_at.is_some() && !stopped.is_alive(),
        "{stopped:?}"
    );

    // A relay that dies without shutting down stops heart-beating: flagged once its lease passes.
    let mut killed = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay-worker"))
        .args([t.url.as_str(), "killed", "600", "1"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for("the worker's row", Duration::from_secs(20), || async {
        let r = admin
            .relays()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.id == "killed")?;
        r.is_alive().then_some(())
    })
    .await;
    killed.start_kill().unwrap();
    killed.wait().await.unwrap();
    let silent = wait_for(
        "the dead relay to be flagged",
        Duration::from_secs(10),
        || async {
            let r = admin
                .relays()
                .await
                .unwrap()
                .into_iter()
                .find(|r| r.id == "killed")?;
            (!r.is_alive()).then_some(r)
        },
    )
    .await;
    assert!(
        silent.stopped_at.is_none(),
        "it did not shut down: {silent:?}"
    );
    assert!(silent.silent_for >= silent.lease);
    t.cleanup().await;
}
