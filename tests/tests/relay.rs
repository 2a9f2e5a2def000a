//! The relay: dispatch by event type, per-handler retries, dead letters, bad rows, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering as AtomicOrdering};
use std::time::Duration;

use outbox_seaorm::entity::{DeliveryStatus, MessageStatus, message};
use outbox_seaorm::{
    Admin, DeliveredRows, DeliveryOrder, HandlerContext, HandlerEntry, HandlerError, OnFailure,
    Registry, RetryPolicy, UnitOfWork,
};
use outbox_tests::fixtures::{
    FromANewerVersion, Numbered, OrderCancelled, OrderConfirmed, OrderPlaced, Recorder,
    commit_numbered, order, recording,
};
use outbox_tests::{TestDb, backend_tests, wait_for};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, QueryOrder, Statement};
use uuid::Uuid;

backend_tests!(
    delivers_each_message_to_every_handler_of_its_type,
    handler_failing_twice_then_succeeding_is_retried_alone,
    always_failing_handler_is_dead_after_max_attempts_and_others_flow,
    panicking_handler_is_caught_and_retried,
    handler_timeout_is_a_retryable_failure,
    unknown_event_type_waits_for_a_relay_that_knows_it,
    known_type_nothing_handles_is_unhandled_at_once_and_stalls_nothing,
    corrupt_payload_is_dead_at_once_with_a_deserialize_error,
    dead_delivery_can_be_requeued,
    per_aggregate_order_holds_across_transactions_and_retries,
    runs_claimed_behind_running_ones_keep_order_through_failures,
    a_foreground_batch_dropped_half_way_leaves_no_aggregate_stuck,
    park_mode_lets_an_aggregate_go_on_after_a_dead_message,
    a_blocked_backlog_larger_than_the_claim_window_does_not_starve_others,
    a_follower_behind_a_row_leased_by_another_relay_is_not_claimed,
    backoff_counts_from_when_the_handlers_finished,
    requeue_and_discard_refuse_messages_in_flight,
    invalid_settings_are_rejected,
    delayed_event_is_not_delivered_early,
    delete_mode_removes_delivered_rows,
    batches_claimed_ahead_keep_their_leases_while_they_wait,
    commit_wakes_a_relay_that_polls_rarely,
    graceful_shutdown_finishes_the_batch_in_flight,
    shutdown_timeout_gives_unfinished_messages_back,
    shutdown_timeout_keeps_what_finished,
);

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_millis(1))
        .max_delay(Duration::from_millis(5))
        .jitter(false)
        .max_attempts(attempts)
}

async fn rows(db: &DatabaseConnection) -> Vec<message::Model> {
    message::Entity::find()
        .order_by_asc(message::Column::Seq)
        .all(db)
        .await
        .unwrap()
}

async fn place(db: &DatabaseConnection, orders: &mut [&mut order::Model]) {
    let uow = UnitOfWork::begin(db).await.unwrap();
    for o in orders.iter_mut() {
        uow.save(&mut **o).await.unwrap();
    }
    uow.commit().await.unwrap();
}

/// Drains the relay until `done` holds, waiting out retry delays.
async fn drain_until(relay: &outbox_seaorm::Relay, what: &str, done: impl Fn() -> bool) {
    wait_for(what, Duration::from_secs(20), || async {
        relay.drain().await.unwrap();
        done().then_some(())
    })
    .await
}

async fn delivers_each_message_to_every_handler_of_its_type(t: TestDb) {
    let placed_a = Recorder::new();
    let placed_b = Recorder::new();
    let confirmed = Recorder::new();
    let registry = Registry::new([
        recording::<OrderPlaced>("placed-a", placed_a.clone()),
        recording::<OrderPlaced>("placed-b", placed_b.clone()),
        recording::<OrderConfirmed>("confirmed", confirmed.clone()),
    ])
    .unwrap();
    let mut o1 = order::Model::place("ada", 10);
    o1.confirm();
    let mut o2 = order::Model::place("bob", 20);
    place(&t.db, &mut [&mut o1, &mut o2]).await;

    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(registry)
        .build()
        .await
        .unwrap();
    let report = relay.drain().await.unwrap();
    assert_eq!(report.claimed, 3);
    assert_eq!(report.delivered, 3);
    assert_eq!(placed_a.len(), 2);
    assert_eq!(placed_b.len(), 2);
    assert_eq!(confirmed.all(), [OrderConfirmed { order_id: o1.id }]);
    for r in rows(&t.db).await {
        assert_eq!(r.status, MessageStatus::Delivered);
        assert!(r.delivered_at.is_some() && r.locked_by.is_none());
    }
    // Nothing is delivered twice.
    assert_eq!(relay.drain().await.unwrap().claimed, 0);
    assert_eq!(placed_a.len(), 2);
    t.cleanup().await;
}

async fn handler_failing_twice_then_succeeding_is_retried_alone(t: TestDb) {
    let calls = Arc::new(AtomicU32::new(0));
    let steady = Recorder::new();
    let flaky = {
        let calls = calls.clone();
        HandlerEntry::new("flaky", move |_: OrderPlaced, ctx: HandlerContext| {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, AtomicOrdering::SeqCst) + 1;
                assert_eq!(ctx.attempt(), n, "the context counts attempts");
                if n <= 2 {
                    anyhow::bail!("transient failure #{n}");
                }
                Ok(())
            }
        })
    };
    let registry =
        Registry::new([flaky, recording::<OrderPlaced>("steady", steady.clone())]).unwrap();
    let mut o = order::Model::place("ada", 1);
    place(&t.db, &mut [&mut o]).await;
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(registry)
        .retry(fast_retry(5))
        .build()
        .await
        .unwrap();

    let first = relay.run_once().await.unwrap();
    assert_eq!((first.claimed, first.retried), (1, 1));
    let r = &rows(&t.db).await[0];
    assert_eq!(r.status, MessageStatus::Pending);
    assert_eq!(r.last_error_kind.as_deref(), Some("handler_failed"));
    assert!(
        r.last_error
            .as_deref()
            .unwrap()
            .contains("transient failure #1")
    );

    drain_until(&relay, "delivery", || {
        calls.load(AtomicOrdering::SeqCst) == 3
    })
    .await;
    assert_eq!(
        steady.len(),
        1,
        "the handler that succeeded is not run again"
    );
    let r = &rows(&t.db).await[0];
    assert_eq!(r.status, MessageStatus::Delivered);
    let dead = Admin::new(t.db.clone()).dead_letters(10).await.unwrap();
    assert!(dead.is_empty());
    let deliveries = outbox_seaorm::entity::delivery::Entity::find()
        .all(&t.db)
        .await
        .unwrap();
    let flaky_row = deliveries.iter().find(|d| d.handler == "flaky").unwrap();
    assert_eq!(flaky_row.status, DeliveryStatus::Delivered);
    assert_eq!(
        flaky_row.attempts, 3,
        "three runs: two failures, then the success"
    );
    let steady_row = deliveries.iter().find(|d| d.handler == "steady").unwrap();
    assert_eq!(steady_row.status, DeliveryStatus::Delivered);
    assert_eq!(steady_row.attempts, 1, "ran once");
    t.cleanup().await;
}

async fn always_failing_handler_is_dead_after_max_attempts_and_others_flow(t: TestDb) {
    let calls = Arc::new(AtomicU32::new(0));
    let ok = Recorder::new();
    let broken = {
        let calls = calls.clone();
        HandlerEntry::new("broken", move |_: OrderConfirmed, _ctx: HandlerContext| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, AtomicOrdering::SeqCst);
                Err::<(), _>(std::io::Error::other("smtp is down"))
            }
        })
    };
    let registry = Registry::new([
        broken,
        recording::<OrderConfirmed>("audit", ok.clone()),
        recording::<OrderPlaced>("placed", Recorder::new()),
    ])
    .unwrap();
    let mut poisoned = order::Model::place("ada", 1);
    poisoned.confirm();
    let mut healthy = order::Model::place("bob", 2);
    place(&t.db, &mut [&mut poisoned, &mut healthy]).await;

    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(registry)
        .retry(fast_retry(3))
        .build()
        .await
        .unwrap();
    let admin = Admin::new(t.db.clone());
    wait_for("dead letter", Duration::from_secs(20), || async {
        relay.drain().await.unwrap();
        (admin.counts().await.unwrap().dead == 1).then_some(())
    })
    .await;
    assert_eq!(
        calls.load(AtomicOrdering::SeqCst),
        3,
        "exactly max_attempts calls"
    );
    assert_eq!(
        ok.len(),
        1,
        "the other handler of the same message ran once"
    );
    let counts = admin.counts().await.unwrap();
    assert_eq!((counts.delivered, counts.dead, counts.pending), (2, 1, 0));

    let dead = admin.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_type, "order.confirmed");
    assert_eq!(dead[0].aggregate_id, poisoned.id.to_string());
    assert_eq!(dead[0].last_error_kind.as_deref(), Some("handler_failed"));
    let broken_delivery = dead[0]
        .deliveries
        .iter()
        .find(|d| d.handler == "broken")
        .unwrap();
    assert_eq!(broken_delivery.status, DeliveryStatus::Dead);
    assert_eq!(broken_delivery.attempts, 3);
    assert!(
        broken_delivery
            .last_error
            .as_deref()
            .unwrap()
            .contains("smtp is down")
    );
    t.cleanup().await;
}

async fn panicking_handler_is_caught_and_retried(t: TestDb) {
    let calls = Arc::new(AtomicU32::new(0));
    let panicky = {
        let calls = calls.clone();
        HandlerEntry::new("panicky", move |e: OrderPlaced, _ctx: HandlerContext| {
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, AtomicOrdering::SeqCst) == 0 {
                    panic!("bug in handler for {}", e.order_id);
                }
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let registry = Registry::new([panicky]).unwrap();
    let mut o = order::Model::place("ada", 1);
    place(&t.db, &mut [&mut o]).await;
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(registry)
        .retry(fast_retry(3))
        .build()
        .await
        .unwrap();
    let first = relay.run_once().await.unwrap();
    assert_eq!(first.retried, 1);
    let r = &rows(&t.db).await[0];
    assert_eq!(r.last_error_kind.as_deref(), Some("handler_panicked"));
    assert!(r.last_error.as_deref().unwrap().contains("bug in handler"));
    drain_until(&relay, "retry after panic", || {
        calls.load(AtomicOrdering::SeqCst) == 2
    })
    .await;
    assert_eq!(rows(&t.db).await[0].status, MessageStatus::Delivered);
    t.cleanup().await;
}

async fn handler_timeout_is_a_retryable_failure(t: TestDb) {
    let slow = HandlerEntry::new("slow", |_: OrderPlaced, _ctx: HandlerContext| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, std::io::Error>(())
    })
    .timeout(Duration::from_millis(50));
    let registry = Registry::new([slow]).unwrap();
    let mut o = order::Model::place("ada", 1);
    place(&t.db, &mut [&mut o]).await;
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(registry)
        .retry(fast_retry(2))
        .build()
        .await
        .unwrap();
    let r = relay.run_once().await.unwrap();
    assert_eq!(r.retried, 1);
    let row = &rows(&t.db).await[0];
    assert_eq!(row.last_error_kind.as_deref(), Some("handler_timed_out"));
    t.cleanup().await;
}

async fn unknown_event_type_waits_for_a_relay_that_knows_it(t: TestDb) {
    // Written by a newer version during a rolling deployment: this relay does not know the type.
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.record("order", 1, FromANewerVersion { n: 1 }, Default::default())
        .unwrap();
    uow.commit().await.unwrap();
    let old = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([recording::<OrderPlaced>("placed", Recorder::new())]).unwrap())
        .retry(fast_retry(2))
        .unknown_type_delay(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    for _ in 0..3 {
        old.drain().await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let r = &rows(&t.db).await[0];
    assert_eq!(
        r.status,
        MessageStatus::Pending,
        "not dead, whatever the retry policy says"
    );
    assert_eq!(r.attempts, 0, "no attempt used");
    assert_eq!(r.last_error_kind.as_deref(), Some("unknown_event_type"));
    assert!(
        r.last_error
            .as_deref()
            .unwrap()
            .contains("test.from-a-newer-version")
    );
    let counts = Admin::new(t.db.clone()).counts().await.unwrap();
    assert_eq!(
        counts.unknown_event_type, 1,
        "visible to operators: {counts:?}"
    );
    assert!(old.stats().left_for_others >= 3, "{:?}", old.stats());

    // The newer relay knows it and delivers it.
    let seen = Recorder::new();
    let new = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([recording::<FromANewerVersion>("newer", seen.clone())]).unwrap())
        .build()
        .await
        .unwrap();
    wait_for("the newer relay", Duration::from_secs(10), || async {
        new.drain().await.unwrap();
        (seen.len() == 1).then_some(())
    })
    .await;
    assert_eq!(rows(&t.db).await[0].status, MessageStatus::Delivered);
    t.cleanup().await;
}

async fn known_type_nothing_handles_is_unhandled_at_once_and_stalls_nothing(t: TestDb) {
    // An audit-only event before an event that is handled, on one aggregate.
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.record(
        "order",
        7,
        Numbered {
            key: "audit".into(),
            n: 1,
        },
        Default::default(),
    )
    .unwrap();
    let placed = OrderPlaced {
        order_id: Uuid::nil(),
        amount: 5,
    };
    uow.record("order", 7, placed.clone(), Default::default())
        .unwrap();
    uow.commit().await.unwrap();
    let seen = Recorder::new();
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(
            Registry::new([recording::<OrderPlaced>("placed", seen.clone())])
                .unwrap()
                .with_event::<Numbered>(),
        )
        .build()
        .await
        .unwrap();
    let r = relay.drain().await.unwrap();
    assert_eq!((r.delivered, r.unhandled), (1, 1), "{r:?}");
    assert_eq!(seen.all(), [placed]);
    assert_eq!(relay.stats().unhandled, 1);
    let statuses: Vec<_> = rows(&t.db).await.iter().map(|m| m.status).collect();
    assert_eq!(
        statuses,
        [MessageStatus::Unhandled, MessageStatus::Delivered],
        "nothing took the audit event: unhandled, not delivered"
    );
    t.cleanup().await;
}

async fn corrupt_payload_is_dead_at_once_with_a_deserialize_error(t: TestDb) {
    let seen = Recorder::new();
    let registry = Registry::new([recording::<OrderPlaced>("placed", seen.clone())]).unwrap();
    let mut good = order::Model::place("ada", 1);
    let mut bad = order::Model::place("bob", 2);
    place(&t.db, &mut [&mut bad, &mut good]).await;
    // An older deployment wrote `amount` as a string; this version cannot read it.
    let backend = t.db.get_database_backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => {
            "UPDATE outbox_messages SET payload = CAST($1 AS JSON) WHERE aggregate_id = $2"
        }
        _ => "UPDATE outbox_messages SET payload = ? WHERE aggregate_id = ?",
    };
    t.db.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [
            format!(r#"{{"order_id":"{}","amount":"two"}}"#, bad.id).into(),
            bad.id.to_string().into(),
        ],
    ))
    .await
    .unwrap();

    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(registry)
        .retry(fast_retry(5))
        .ordering(DeliveryOrder::Unordered)
        .build()
        .await
        .unwrap();
    let r = relay.drain().await.unwrap();
    assert_eq!((r.delivered, r.dead), (1, 1), "{r:?}");
    assert_eq!(seen.all()[0].order_id, good.id);
    let dead = &Admin::new(t.db.clone()).dead_letters(1).await.unwrap()[0];
    assert_eq!(dead.aggregate_id, bad.id.to_string());
    assert_eq!(dead.last_error_kind.as_deref(), Some("deserialize"));
    assert_eq!(dead.attempts, 1, "not retried: it would fail the same way");
    t.cleanup().await;
}

async fn dead_delivery_can_be_requeued(t: TestDb) {
    let fixed = Arc::new(AtomicBool::new(false));
    let other = Recorder::new();
    let mailer = {
        let fixed = fixed.clone();
        HandlerEntry::new("mailer", move |_: OrderPlaced, _ctx: HandlerContext| {
            let fixed = fixed.clone();
            async move {
                if fixed.load(AtomicOrdering::SeqCst) {
                    Ok(())
                } else {
                    Err(HandlerError::permanent(std::io::Error::other(
                        "bad template",
                    )))
                }
            }
        })
    };
    let registry =
        Registry::new([mailer, recording::<OrderPlaced>("other", other.clone())]).unwrap();
    let mut o = order::Model::place("ada", 1);
    place(&t.db, &mut [&mut o]).await;
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(registry)
        .retry(fast_retry(5))
        .build()
        .await
        .unwrap();
    let r = relay.drain().await.unwrap();
    assert_eq!(r.dead, 1, "a permanent error is dead at once");
    let admin = Admin::new(t.db.clone());
    let dead = admin.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].deliveries.len(), 2);

    fixed.store(true, AtomicOrdering::SeqCst);
    admin.requeue(dead[0].message_id).await.unwrap();
    let r = relay.drain().await.unwrap();
    assert_eq!(r.delivered, 1);
    assert_eq!(
        other.len(),
        1,
        "the delivery that had succeeded is not repeated"
    );
    assert_eq!(admin.counts().await.unwrap().dead, 0);
    let missing = admin.requeue(uuid::Uuid::now_v7()).await.unwrap_err();
    assert!(matches!(
        missing,
        outbox_seaorm::Error::MessageNotFound { .. }
    ));
    t.cleanup().await;
}

async fn per_aggregate_order_holds_across_transactions_and_retries(t: TestDb) {
    let received = Recorder::<(String, u32)>::new();
    let failed_once = Arc::new(AtomicBool::new(false));
    let handler = {
        let received = received.clone();
        let failed_once = failed_once.clone();
        HandlerEntry::new("ordered", move |e: Numbered, _ctx: HandlerContext| {
            let received = received.clone();
            let failed_once = failed_once.clone();
            async move {
                // The first event of aggregate "a" fails once: "a" must wait, "b" must not.
                if e.key == "a" && e.n == 1 && !failed_once.swap(true, AtomicOrdering::SeqCst) {
                    anyhow::bail!("first try fails");
                }
                received.push((e.key, e.n));
                Ok(())
            }
        })
    };
    for n in 1..=3 {
        let uow = UnitOfWork::begin(&t.db).await.unwrap();
        for key in ["a", "b"] {
            let mut c = outbox_tests::fixtures::Counter::new(key);
            c.value = n - 1;
            c.bump();
            uow.stage(&mut c).unwrap();
        }
        uow.commit().await.unwrap();
    }
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([handler]).unwrap())
        .retry(fast_retry(5))
        .batch_size(4)
        .build()
        .await
        .unwrap();
    let first = relay.run_once().await.unwrap();
    assert_eq!(first.retried, 1);
    let after_first: Vec<_> = received.all();
    assert!(
        after_first.iter().all(|(k, _)| k == "b"),
        "nothing of `a` is delivered while its head retries: {after_first:?}"
    );
    drain_until(&relay, "all six", || received.len() == 6).await;
    let per = |key: &str| -> Vec<u32> {
        received
            .all()
            .into_iter()
            .filter(|(k, _)| k == key)
            .map(|(_, n)| n)
            .collect()
    };
    assert_eq!(per("a"), [1, 2, 3]);
    assert_eq!(per("b"), [1, 2, 3]);
    t.cleanup().await;
}

/// A relay claims an aggregate's next run while it still runs the earlier one (the run is
/// queued on the aggregate's chain). Failures in the middle of such chains (a retry) give back
/// what was queued behind them, and still every event reaches the handler, each aggregate's
/// first deliveries in order.
async fn runs_claimed_behind_running_ones_keep_order_through_failures(t: TestDb) {
    let received = Recorder::<(String, String, u32, String)>::new();
    let failed = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let handler = {
        let received = received.clone();
        HandlerEntry::new("chained", move |e: Numbered, ctx: HandlerContext| {
            let received = received.clone();
            let failed = failed.clone();
            async move {
                // Slow enough that the next claim comes while runs are still going.
                tokio::time::sleep(Duration::from_millis(2)).await;
                if e.n % 7 == 3 && failed.lock().unwrap().insert((e.key.clone(), e.n)) {
                    anyhow::bail!("fails once");
                }
                received.push((ctx.message_id().to_string(), e.key, e.n, String::new()));
                Ok(())
            }
        })
    };
    let total = outbox_tests::fixtures::commit_numbered(&t.db, 3, 40).await;
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([handler]).unwrap())
        .retry(fast_retry(5))
        .batch_size(6)
        .poll_interval(Duration::from_millis(10))
        .spawn()
        .await
        .unwrap();
    wait_for("every event", Duration::from_secs(60), || async {
        let ids: std::collections::HashSet<String> =
            received.all().into_iter().map(|(id, ..)| id).collect();
        (ids.len() == total).then_some(())
    })
    .await;
    let stats = relay.stats();
    relay.shutdown().await;
    let log = received.all();
    assert_eq!(
        outbox_tests::fixtures::order_violations(&log),
        0,
        "first deliveries out of order ({stats:?}): {log:?}"
    );
    assert_eq!(stats.retried, 3 * 6, "{stats:?}");
    // 18 chains broke with runs queued behind them (each run shows here; a run the others
    // ran one at a time would make this 0).
    assert!(
        stats.chain_given_back > 0,
        "no run was queued behind a chain: {stats:?}"
    );
    t.cleanup().await;
}

/// A foreground batch (`run_once`) dropped while its handlers run, as a request timeout would:
/// its aggregates' chains end with it, so once the leases lapse the same relay delivers
/// everything (a chain left behind would have later runs queued on it that nothing runs).
async fn a_foreground_batch_dropped_half_way_leaves_no_aggregate_stuck(t: TestDb) {
    let received = Recorder::<(String, u32)>::new();
    let handler = {
        let received = received.clone();
        HandlerEntry::new("slow", move |e: Numbered, _ctx: HandlerContext| {
            let received = received.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                received.push((e.key, e.n));
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let total = outbox_tests::fixtures::commit_numbered(&t.db, 3, 4).await;
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([handler]).unwrap())
        .lease(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let dropped = tokio::time::timeout(Duration::from_millis(100), relay.run_once()).await;
    assert!(dropped.is_err(), "the batch was still running");
    wait_for(
        "every event, after the dropped batch's leases lapse",
        Duration::from_secs(30),
        || async {
            relay.run_once().await.unwrap();
            let got: std::collections::HashSet<(String, u32)> =
                received.all().into_iter().collect();
            (got.len() == total).then_some(())
        },
    )
    .await;
    t.cleanup().await;
}

async fn park_mode_lets_an_aggregate_go_on_after_a_dead_message(t: TestDb) {
    let received = Recorder::<u32>::new();
    let handler = {
        let received = received.clone();
        HandlerEntry::new("parking", move |e: Numbered, _ctx: HandlerContext| {
            let received = received.clone();
            async move {
                if e.n == 1 {
                    return Err(HandlerError::permanent(std::io::Error::other("poison")));
                }
                received.push(e.n);
                Ok(())
            }
        })
    };
    let mut c = outbox_tests::fixtures::Counter::new("p");
    c.bump();
    c.bump();
    c.bump();
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.stage(&mut c).unwrap();
    uow.commit().await.unwrap();

    // Blocking (the default): the dead head holds the aggregate.
    let blocking = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([handler.clone()]).unwrap())
        .build()
        .await
        .unwrap();
    let r = blocking.drain().await.unwrap();
    assert_eq!(
        (r.dead, r.released),
        (1, 2),
        "the run behind the dead head is given back untouched"
    );
    assert!(received.is_empty());
    assert_eq!(blocking.drain().await.unwrap().claimed, 0, "still blocked");

    // Parking: the dead head is set aside and its aggregate goes on. (A hold placed while
    // blocking stays until the dead message is requeued or discarded, so a new aggregate.)
    let mut q = outbox_tests::fixtures::Counter::new("q");
    q.bump();
    q.bump();
    q.bump();
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.stage(&mut q).unwrap();
    uow.commit().await.unwrap();
    let parking = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([handler]).unwrap())
        .ordering(DeliveryOrder::PerAggregate(OnFailure::Park))
        .build()
        .await
        .unwrap();
    parking.drain().await.unwrap();
    assert_eq!(received.all(), [2, 3]);
    t.cleanup().await;
}

async fn delayed_event_is_not_delivered_early(t: TestDb) {
    let seen = Recorder::new();
    let registry = Registry::new([
        recording::<OrderCancelled>("cancelled", seen.clone()),
        recording::<OrderPlaced>("placed", Recorder::new()),
    ])
    .unwrap();
    let mut o = order::Model::place("ada", 1);
    let due = chrono::Utc::now() + chrono::Duration::milliseconds(300);
    o.events.record_with(
        OrderCancelled {
            order_id: o.id,
            reason: "unpaid".into(),
        },
        outbox_seaorm::RecordOptions::new().not_before(due),
    );
    place(&t.db, &mut [&mut o]).await;
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(registry)
        .build()
        .await
        .unwrap();
    let r = relay.drain().await.unwrap();
    assert_eq!(
        r.delivered, 1,
        "the placed event goes; the delayed one waits"
    );
    assert!(seen.is_empty());
    drain_until(&relay, "delayed event", || !seen.is_empty()).await;
    assert!(chrono::Utc::now() >= due);
    t.cleanup().await;
}

async fn delete_mode_removes_delivered_rows(t: TestDb) {
    let registry = Registry::new([recording::<OrderPlaced>("placed", Recorder::new())]).unwrap();
    let mut a = order::Model::place("ada", 1);
    let mut b = order::Model::place("bob", 1);
    place(&t.db, &mut [&mut a, &mut b]).await;
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(registry)
        .delivered_rows(DeliveredRows::Delete)
        .build()
        .await
        .unwrap();
    assert_eq!(relay.drain().await.unwrap().delivered, 2);
    assert!(rows(&t.db).await.is_empty());
    t.cleanup().await;
}

async fn commit_wakes_a_relay_that_polls_rarely(t: TestDb) {
    let seen = Recorder::new();
    let registry = Registry::new([recording::<OrderPlaced>("placed", seen.clone())]).unwrap();
    let handle = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(registry)
        .poll_interval(Duration::from_secs(3600))
        .spawn()
        .await
        .unwrap();
    // Let the relay's first (empty) poll pass, so only a wake-up can find the message.
    wait_for("first poll", Duration::from_secs(10), || async {
        (handle.stats().polls >= 1).then_some(())
    })
    .await;
    let mut o = order::Model::place("ada", 1);
    place(&t.db, &mut [&mut o]).await;
    wait_for("woken delivery", Duration::from_secs(10), || async {
        (seen.len() == 1).then_some(())
    })
    .await;
    handle.shutdown().await;
    t.cleanup().await;
}

async fn graceful_shutdown_finishes_the_batch_in_flight(t: TestDb) {
    let started = Recorder::new();
    let finished = Recorder::new();
    let slow = {
        let (started, finished) = (started.clone(), finished.clone());
        HandlerEntry::new("slow", move |e: OrderPlaced, _ctx: HandlerContext| {
            let (started, finished) = (started.clone(), finished.clone());
            async move {
                started.push(e.order_id);
                tokio::time::sleep(Duration::from_millis(200)).await;
                finished.push(e.order_id);
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let handle = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([slow]).unwrap())
        .spawn()
        .await
        .unwrap();
    let mut o = order::Model::place("ada", 1);
    place(&t.db, &mut [&mut o]).await;
    wait_for("handler start", Duration::from_secs(10), || async {
        (!started.is_empty()).then_some(())
    })
    .await;
    handle.shutdown().await;
    assert_eq!(finished.len(), 1);
    let r = &rows(&t.db).await[0];
    assert_eq!(r.status, MessageStatus::Delivered);
    assert!(r.locked_by.is_none());
    t.cleanup().await;
}

async fn shutdown_timeout_gives_unfinished_messages_back(t: TestDb) {
    let started = Recorder::new();
    let stuck = {
        let started = started.clone();
        HandlerEntry::new("stuck", move |e: OrderPlaced, _ctx: HandlerContext| {
            let started = started.clone();
            async move {
                started.push(e.order_id);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let handle = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([stuck]).unwrap())
        .handler_timeout(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_millis(100))
        .spawn()
        .await
        .unwrap();
    let mut o = order::Model::place("ada", 1);
    place(&t.db, &mut [&mut o]).await;
    wait_for("handler start", Duration::from_secs(10), || async {
        (!started.is_empty()).then_some(())
    })
    .await;
    handle.shutdown().await;
    let r = &rows(&t.db).await[0];
    assert_eq!(r.status, MessageStatus::Pending);
    assert!(
        r.locked_by.is_none() && r.locked_until.is_none(),
        "released, not left claimed"
    );
    assert_eq!(r.attempts, 0, "an interrupted attempt is not counted");
    t.cleanup().await;
}

async fn a_blocked_backlog_larger_than_the_claim_window_does_not_starve_others(t: TestDb) {
    let received = Recorder::<(String, u32)>::new();
    let handler = {
        let received = received.clone();
        HandlerEntry::new("blocking", move |e: Numbered, _ctx: HandlerContext| {
            let received = received.clone();
            async move {
                if e.key == "stuck" && e.n == 1 {
                    return Err(HandlerError::permanent(std::io::Error::other("poison")));
                }
                received.push((e.key, e.n));
                Ok(())
            }
        })
    };
    // 150 messages of one aggregate whose head will be dead, then one of another aggregate:
    // with batches of 2 the claim window (100 rows) holds only the blocked aggregate.
    let mut stuck = outbox_tests::fixtures::Counter::new("stuck");
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    for _ in 0..150 {
        stuck.bump();
    }
    uow.stage(&mut stuck).unwrap();
    let mut healthy = outbox_tests::fixtures::Counter::new("healthy");
    healthy.bump();
    uow.stage(&mut healthy).unwrap();
    uow.commit().await.unwrap();

    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([handler]).unwrap())
        .batch_size(2)
        .build()
        .await
        .unwrap();
    relay.drain().await.unwrap();
    assert_eq!(received.all(), [("healthy".to_owned(), 1)]);
    let counts = Admin::new(t.db.clone()).counts().await.unwrap();
    assert_eq!(
        (counts.dead, counts.pending),
        (1, 149),
        "the rest of `stuck` waits"
    );
    t.cleanup().await;
}

async fn exec(t: &TestDb, pg: &str, other: &str) {
    let sql = if t.db.get_database_backend() == sea_orm::DbBackend::Postgres {
        pg
    } else {
        other
    };
    t.db.execute_unprepared(sql).await.unwrap();
}

async fn a_follower_behind_a_row_leased_by_another_relay_is_not_claimed(t: TestDb) {
    let received = Recorder::<u32>::new();
    let handler = {
        let received = received.clone();
        HandlerEntry::new("gap", move |e: Numbered, _ctx: HandlerContext| {
            let received = received.clone();
            async move {
                received.push(e.n);
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let mut c = outbox_tests::fixtures::Counter::new("x");
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    for _ in 0..3 {
        c.bump();
    }
    uow.stage(&mut c).unwrap();
    uow.commit().await.unwrap();
    // The state a relay can leave for a moment while it writes a batch's outcomes: the head is
    // due again and unleased, the second message still leased by that relay.
    exec(
        &t,
        "UPDATE outbox_messages SET locked_by = 'other', locked_until = now() + interval '1 hour' WHERE seq = 2",
        "UPDATE outbox_messages SET locked_by = 'other', locked_until = '2999-01-01 00:00:00' WHERE seq = 2",
    )
    .await;
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([handler]).unwrap())
        .build()
        .await
        .unwrap();
    let r = relay.run_once().await.unwrap();
    assert_eq!(
        r.claimed, 1,
        "the third message stays behind the leased second one"
    );
    assert_eq!(received.all(), [1]);
    t.cleanup().await;
}

async fn backoff_counts_from_when_the_handlers_finished(t: TestDb) {
    let slow_failure = HandlerEntry::new(
        "slow-failure",
        |_: OrderPlaced, _ctx: HandlerContext| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Err::<(), _>(std::io::Error::other("late failure"))
        },
    );
    let mut o = order::Model::place("ada", 1);
    place(&t.db, &mut [&mut o]).await;
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([slow_failure]).unwrap())
        .retry(
            RetryPolicy::exponential(Duration::from_millis(500))
                .jitter(false)
                .max_attempts(5),
        )
        .build()
        .await
        .unwrap();
    relay.run_once().await.unwrap();
    let finished = chrono::Utc::now();
    let due = rows(&t.db).await[0].available_at;
    assert!(
        due > finished + chrono::Duration::milliseconds(300),
        "due {due} only {} ms after the handler finished",
        (due - finished).num_milliseconds()
    );
    t.cleanup().await;
}

async fn requeue_and_discard_refuse_messages_in_flight(t: TestDb) {
    let mut o = order::Model::place("ada", 1);
    place(&t.db, &mut [&mut o]).await;
    let id = rows(&t.db).await[0].id;
    exec(
        &t,
        "UPDATE outbox_messages SET locked_by = 'busy', locked_until = now() + interval '1 hour'",
        "UPDATE outbox_messages SET locked_by = 'busy', locked_until = '2999-01-01 00:00:00'",
    )
    .await;
    let admin = Admin::new(t.db.clone());
    // Pending and being handled: neither requeued (it is not dead) nor discarded.
    assert!(matches!(
        admin.requeue(id).await,
        Err(outbox_seaorm::Error::MessageNotFound { .. })
    ));
    assert!(matches!(
        admin.discard(id).await,
        Err(outbox_seaorm::Error::MessageNotFound { .. })
    ));
    let r = &rows(&t.db).await[0];
    assert_eq!(
        r.locked_by.as_deref(),
        Some("busy"),
        "the lease is untouched"
    );
    t.cleanup().await;
}

async fn invalid_settings_are_rejected(t: TestDb) {
    let build = |b: outbox_seaorm::RelayBuilder| b.registry(Registry::new([]).unwrap()).build();
    for (what, builder) in [
        (
            "batch",
            outbox_seaorm::Relay::builder(t.db.clone()).batch_size(0),
        ),
        (
            "batch",
            outbox_seaorm::Relay::builder(t.db.clone()).batch_size(50_000),
        ),
        (
            "lease",
            outbox_seaorm::Relay::builder(t.db.clone()).lease(Duration::from_millis(1)),
        ),
        (
            "id",
            outbox_seaorm::Relay::builder(t.db.clone()).id("r".repeat(200)),
        ),
        (
            "concurrency",
            outbox_seaorm::Relay::builder(t.db.clone()).concurrency(0),
        ),
    ] {
        let err = build(builder).await.unwrap_err();
        assert!(
            matches!(err, outbox_seaorm::Error::InvalidSetting(_)),
            "{what}: {err:?}"
        );
    }
    t.cleanup().await;
}

async fn shutdown_timeout_keeps_what_finished(t: TestDb) {
    let fast_done = Recorder::new();
    let stuck_started = Recorder::new();
    let mixed = {
        let (fast_done, stuck_started) = (fast_done.clone(), stuck_started.clone());
        HandlerEntry::new("mixed", move |e: OrderPlaced, _ctx: HandlerContext| {
            let (fast_done, stuck_started) = (fast_done.clone(), stuck_started.clone());
            async move {
                if e.amount == 2 {
                    stuck_started.push(e.order_id);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                } else {
                    fast_done.push(e.order_id);
                }
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let mut fast = order::Model::place("ada", 1);
    let mut stuck = order::Model::place("bob", 2);
    place(&t.db, &mut [&mut fast, &mut stuck]).await;
    let handle = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([mixed]).unwrap())
        .handler_timeout(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_millis(100))
        .spawn()
        .await
        .unwrap();
    wait_for("both handlers to run", Duration::from_secs(10), || async {
        (fast_done.len() == 1 && stuck_started.len() == 1).then_some(())
    })
    .await;
    handle.shutdown().await;
    let by_aggregate: std::collections::HashMap<String, message::Model> = rows(&t.db)
        .await
        .into_iter()
        .map(|r| (r.aggregate_id.clone(), r))
        .collect();
    let f = &by_aggregate[&fast.id.to_string()];
    assert_eq!(
        f.status,
        MessageStatus::Delivered,
        "what finished is written, not re-run"
    );
    let s = &by_aggregate[&stuck.id.to_string()];
    assert_eq!(s.status, MessageStatus::Pending);
    assert!(s.locked_by.is_none(), "the unfinished one is given back");
    assert_eq!(s.attempts, 0);
    t.cleanup().await;
}

/// While claims come back full, the relay claims ahead (PostgreSQL and MariaDB): batches that
/// wait, claimed, while the batch before them runs. Here each batch of 10 takes about 1 s to
/// run (one message at a time, 100 ms each) and the lease is 300 ms, so a batch claimed ahead
/// waits several leases before it runs. Its leases must be kept meanwhile, or a later claim
/// takes its messages again and they run twice.
async fn batches_claimed_ahead_keep_their_leases_while_they_wait(t: TestDb) {
    let total = commit_numbered(&t.db, 30, 3).await;
    let seen = Recorder::<String>::new();
    let handler = {
        let seen = seen.clone();
        HandlerEntry::new("log", move |_: Numbered, ctx: HandlerContext| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                seen.push(ctx.message_id().to_string());
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let relay = outbox_seaorm::Relay::builder(t.connect_again().await)
        .registry(Registry::new([handler]).unwrap())
        .batch_size(10)
        // A window of two batches: claims side by side each find rows outside the other's.
        .claim_window(20)
        .concurrency(1)
        .lease(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(50))
        .spawn()
        .await
        .unwrap();
    let admin = Admin::new(t.db.clone());
    wait_for(
        "every message delivered",
        Duration::from_secs(60),
        || async { (admin.counts().await.unwrap().delivered as usize == total).then_some(()) },
    )
    .await;
    relay.shutdown().await;
    let all = seen.all();
    let distinct: std::collections::HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), total);
    assert_eq!(all.len(), total, "a message ran twice");
    t.cleanup().await;
}
