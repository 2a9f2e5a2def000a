//! The test kit (`outbox_seaorm::testing`): `Harness::settle` delivers cascades, waits for
//! retries, reports failures and dead letters, gives up loudly; `CapturePublisher` records what
//! a route would send. Run on the harness's in-memory SQLite and on each backend's database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use outbox_seaorm::entity::DeliveryStatus;
use outbox_seaorm::testing::{CapturePublisher, Harness};
use outbox_seaorm::{
    Error, HandlerContext, HandlerContextExt, HandlerEntry, RecordOptions, Registry, RetryPolicy,
    Route, UnitOfWork,
};
use outbox_tests::fixtures::{FromANewerVersion, OrderCancelled, OrderConfirmed, OrderPlaced};
use outbox_tests::{TestDb, backend_tests};
use uuid::Uuid;

backend_tests!(
    settle_delivers_cascades_and_reports_them,
    settle_waits_for_retries_and_reports_failures_and_dead_letters,
);

/// `order.placed` handled by a handler that confirms the order (a second message, written by
/// the handler), `order.confirmed` by one that fails `fail_first` times, `order.cancelled` by
/// one that always fails.
fn registry(fail_first: u32) -> Registry {
    let failures = Arc::new(AtomicU32::new(0));
    Registry::new([
        HandlerEntry::new(
            "confirm-order",
            |e: OrderPlaced, ctx: HandlerContext| async move {
                let uow = UnitOfWork::begin(ctx.db()?).await?;
                uow.record(
                    "order",
                    e.order_id,
                    OrderConfirmed {
                        order_id: e.order_id,
                    },
                    RecordOptions::new(),
                )?;
                uow.commit().await?;
                anyhow::Ok(())
            },
        ),
        HandlerEntry::new("mailer", move |_: OrderConfirmed, _: HandlerContext| {
            let failures = failures.clone();
            async move {
                if failures.fetch_add(1, Ordering::SeqCst) < fail_first {
                    anyhow::bail!("smtp: 421 try again later");
                }
                anyhow::Ok(())
            }
        }),
        HandlerEntry::new("refund", |_: OrderCancelled, _: HandlerContext| async {
            anyhow::bail!("payment service unavailable");
            #[allow(unreachable_code)]
            anyhow::Ok(())
        }),
    ])
    .unwrap()
}

async fn harness_on(t: &TestDb, registry: Registry) -> Harness {
    Harness::builder()
        .db(t.db.clone())
        .registry(registry)
        .relay(|r| {
            r.retry(
                RetryPolicy::exponential(Duration::from_millis(2))
                    .max_attempts(3)
                    .jitter(false),
            )
        })
        .build()
        .await
        .unwrap()
}

async fn place(db: &sea_orm::DatabaseConnection, order_id: Uuid) {
    let uow = UnitOfWork::begin(db).await.unwrap();
    uow.record(
        "order",
        order_id,
        OrderPlaced {
            order_id,
            amount: 100,
        },
        RecordOptions::new(),
    )
    .unwrap();
    uow.commit().await.unwrap();
}

async fn settle_delivers_cascades_and_reports_them(t: TestDb) {
    let harness = harness_on(&t, registry(0)).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    place(harness.db(), a).await;
    place(harness.db(), b).await;

    let report = harness.settle().await.unwrap();
    // Two placed, and the two confirmations their handler wrote while being delivered.
    assert_eq!(report.messages().len(), 4, "{report}");
    let confirmed: Vec<Uuid> = report
        .delivered::<OrderConfirmed>()
        .iter()
        .map(|e| e.order_id)
        .collect();
    assert_eq!(confirmed.len(), 2);
    assert!(confirmed.contains(&a) && confirmed.contains(&b));
    assert_eq!(report.delivered::<OrderPlaced>().len(), 2);
    assert!(report.dead().is_empty());
    assert!(report.failed_for("mailer").is_empty());
    assert_eq!(harness.admin().counts().await.unwrap().pending, 0);

    // The next report covers only what was written since.
    place(harness.db(), Uuid::now_v7()).await;
    let next = harness.settle().await.unwrap();
    assert_eq!(next.event_types(), ["order.placed", "order.confirmed"]);
    t.cleanup().await;
}

async fn settle_waits_for_retries_and_reports_failures_and_dead_letters(t: TestDb) {
    let harness = harness_on(&t, registry(2)).await;
    place(harness.db(), Uuid::now_v7()).await;
    // Another order: a dead letter holds back the later messages of its own aggregate only.
    let order_id = Uuid::now_v7();
    let uow = UnitOfWork::begin(harness.db()).await.unwrap();
    let cancelled = OrderCancelled {
        order_id,
        reason: "changed my mind".into(),
    };
    uow.record("order", order_id, cancelled, RecordOptions::new())
        .unwrap();
    uow.commit().await.unwrap();

    let report = harness.settle().await.unwrap();
    // The mailer failed twice and succeeded on its third attempt.
    let mailer = report.failed_for("mailer");
    assert_eq!(mailer.len(), 1, "{report}");
    assert_eq!(mailer[0].status, DeliveryStatus::Delivered);
    assert_eq!(mailer[0].attempts, 3);
    assert_eq!(report.delivered::<OrderConfirmed>().len(), 1);
    // The refund never succeeds: a dead letter after three attempts.
    let dead = report.dead();
    assert_eq!(dead.len(), 1, "{report}");
    assert_eq!(dead[0].summary.event_type, "order.cancelled");
    let refund = report.failed_for("refund");
    assert_eq!(refund[0].status, DeliveryStatus::Dead);
    assert_eq!(refund[0].attempts, 3);
    assert_eq!(report.recorded::<OrderCancelled>().len(), 1);
    assert!(report.delivered::<OrderCancelled>().is_empty());
    // The report prints each failed delivery under its message.
    let printed = report.to_string();
    assert!(
        printed.contains("refund: Dead after 3 attempt(s), last error: handler `refund` failed"),
        "{printed}"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn messages_blocked_behind_a_dead_letter_are_reported_not_waited_for() {
    let harness = Harness::builder()
        .registry(registry(0))
        .timeout(Duration::from_secs(30))
        .relay(|r| r.retry(RetryPolicy::exponential(Duration::from_millis(1)).max_attempts(2)))
        .build()
        .await
        .unwrap();
    let order_id = Uuid::now_v7();
    let uow = UnitOfWork::begin(harness.db()).await.unwrap();
    let reason = "changed my mind".to_owned();
    uow.record(
        "order",
        order_id,
        OrderCancelled { order_id, reason },
        RecordOptions::new(),
    )
    .unwrap();
    uow.record(
        "order",
        order_id,
        OrderConfirmed { order_id },
        RecordOptions::new(),
    )
    .unwrap();
    uow.commit().await.unwrap();

    let started = std::time::Instant::now();
    let report = harness.settle().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(report.dead().len(), 1, "{report}");
    let blocked = report.blocked();
    assert_eq!(blocked.len(), 1, "{report}");
    assert_eq!(blocked[0].summary.event_type, "order.confirmed");
    assert!(report.scheduled().is_empty());
    assert!(
        report
            .to_string()
            .contains("pending, blocked behind a dead letter of its aggregate"),
        "{report}"
    );
}

#[tokio::test]
async fn settle_gives_up_after_its_time_listing_what_is_pending() {
    // A handler that keeps failing, with retries far apart: the time runs out first.
    let registry = Registry::new([HandlerEntry::new(
        "flaky",
        |_: OrderPlaced, _: HandlerContext| async {
            anyhow::bail!("upstream 503");
            #[allow(unreachable_code)]
            anyhow::Ok(())
        },
    )])
    .unwrap();
    let harness = Harness::builder()
        .registry(registry)
        .timeout(Duration::from_millis(300))
        .relay(|r| r.retry(RetryPolicy::exponential(Duration::from_secs(60)).jitter(false)))
        .build()
        .await
        .unwrap();
    let order_id = Uuid::now_v7();
    place(harness.db(), order_id).await;

    let started = std::time::Instant::now();
    let err = harness.settle().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    let Error::NotSettled {
        reason, pending, ..
    } = &err
    else {
        panic!("expected NotSettled, got {err}");
    };
    assert_eq!(reason, "the time ran out");
    assert_eq!(pending.len(), 1);
    let text = err.to_string();
    assert!(text.contains("still pending (1):"), "{text}");
    assert!(
        text.contains(&format!(
            "order.placed v1 (aggregate order {order_id}), 1 attempt(s)"
        )),
        "{text}"
    );
    assert!(
        text.contains("last error: handler `flaky` failed: upstream 503"),
        "{text}"
    );
}

#[tokio::test]
async fn settle_fails_at_once_on_an_event_type_nothing_here_knows() {
    let harness = Harness::builder()
        .registry(Registry::new([]).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let uow = UnitOfWork::begin(harness.db()).await.unwrap();
    uow.record("thing", 1, FromANewerVersion { n: 1 }, RecordOptions::new())
        .unwrap();
    uow.commit().await.unwrap();

    let started = std::time::Instant::now();
    let err = harness.settle().await.unwrap_err();
    // Not the 30 s timeout: nothing in this test would ever deliver it.
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("does not know the event type(s) test.from-a-newer-version"),
        "{text}"
    );
    assert!(text.contains("Registry::with_event"), "{text}");
}

#[tokio::test]
async fn a_message_delayed_past_the_time_limit_is_reported_as_scheduled() {
    let harness = Harness::builder()
        .registry(Registry::new([]).unwrap())
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let order_id = Uuid::now_v7();
    let uow = UnitOfWork::begin(harness.db()).await.unwrap();
    let later = RecordOptions::new().not_before(chrono::Utc::now() + chrono::Duration::hours(1));
    uow.record("order", order_id, OrderConfirmed { order_id }, later)
        .unwrap();
    uow.record(
        "order",
        order_id,
        OrderPlaced {
            order_id,
            amount: 1,
        },
        RecordOptions::new(),
    )
    .unwrap();
    uow.commit().await.unwrap();

    let report = harness.settle().await.unwrap();
    assert_eq!(report.scheduled().len(), 1);
    assert_eq!(report.scheduled()[0].summary.event_type, "order.confirmed");
    // Known and handled by nothing: unhandled at once, not delivered.
    assert!(report.delivered::<OrderPlaced>().is_empty());
    assert_eq!(report.unhandled().len(), 1);
    assert_eq!(report.unhandled()[0].summary.event_type, "order.placed");
}

#[tokio::test]
async fn capture_publisher_keeps_what_a_route_sends_and_can_fail_it() {
    let capture = CapturePublisher::new().source("/orders-service");
    capture.fail_next(1);
    let route = Route::new("orders-to-nats", capture.clone())
        .aggregate_types(["order"])
        .destination("orders.{aggregate_id}.{event_type}")
        .unwrap();
    let harness = Harness::builder()
        .registry(Registry::new([]).unwrap().with_route(route).unwrap())
        .build()
        .await
        .unwrap();
    let order_id = Uuid::now_v7();
    let uow = UnitOfWork::begin(harness.db()).await.unwrap();
    let tagged = RecordOptions::new().header("tenant", "acme");
    uow.record("order", order_id, OrderConfirmed { order_id }, tagged)
        .unwrap();
    uow.commit().await.unwrap();

    let report = harness.settle().await.unwrap();
    // The first publish failed (a broker down) and was retried.
    let failures = report.failed_for("orders-to-nats");
    assert_eq!(failures.len(), 1, "{report}");
    assert_eq!(failures[0].attempts, 2);
    assert_eq!(failures[0].status, DeliveryStatus::Delivered);

    let destination = format!("orders.{order_id}.order.confirmed");
    let sent = capture.assert_published::<OrderConfirmed>(&destination);
    assert_eq!(sent, [OrderConfirmed { order_id }]);
    let p = &capture.published()[0];
    assert_eq!(p.attribute("specversion"), Some("1.0"));
    assert_eq!(p.attribute("type"), Some("order.confirmed"));
    assert_eq!(p.attribute("source"), Some("/orders-service"));
    assert_eq!(p.attribute("subject"), Some(order_id.to_string().as_str()));
    assert_eq!(p.attribute("tenant"), Some("acme"));
    assert_eq!(
        p.attribute("id"),
        Some(report.messages()[0].summary.message_id.to_string().as_str())
    );

    // Asking for what was not sent fails with a listing of what was.
    let miss = std::panic::catch_unwind(|| capture.assert_published::<OrderConfirmed>("elsewhere"));
    let msg = miss.unwrap_err();
    let msg = msg.downcast_ref::<String>().unwrap();
    assert!(
        msg.contains("no order.confirmed v1 was published to `elsewhere`"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("1. {destination} <- order.confirmed v1")),
        "{msg}"
    );
}

#[tokio::test]
async fn a_hung_handler_ends_settle_at_its_time_limit() {
    let registry = Registry::new([HandlerEntry::new(
        "hangs",
        |_: OrderPlaced, _: HandlerContext| async {
            std::future::pending::<()>().await;
            anyhow::Ok(())
        },
    )])
    .unwrap();
    let harness = Harness::builder()
        .registry(registry)
        .timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    place(harness.db(), Uuid::now_v7()).await;
    let started = std::time::Instant::now();
    let err = harness.settle().await.unwrap_err();
    // The handler timeout is the harness's time limit: not the relay's 30 s default.
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    let text = err.to_string();
    assert!(text.contains("timed out after 1s"), "{text}");
}

#[tokio::test]
async fn settle_with_a_unit_of_work_still_open_fails_in_time_and_recovers_after_the_commit() {
    let harness = Harness::builder()
        .registry(registry(0))
        .timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let order_id = Uuid::now_v7();
    let uow = UnitOfWork::begin(harness.db()).await.unwrap();
    let placed = OrderPlaced {
        order_id,
        amount: 1,
    };
    uow.record("order", order_id, placed, RecordOptions::new())
        .unwrap();

    let started = std::time::Instant::now();
    let err = harness.settle().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    assert!(
        err.to_string()
            .contains("commit or drop every `UnitOfWork`"),
        "{err}"
    );

    uow.commit().await.unwrap();
    // The abandoned batch's claim may hold the message for its 2 s lease.
    let report = harness
        .settle_within(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(report.delivered::<OrderPlaced>().len(), 1, "{report}");
}

#[tokio::test]
async fn a_scheduled_message_is_reported_again_once_delivered() {
    let confirmed = outbox_tests::fixtures::Recorder::new();
    let harness = Harness::builder()
        .registry(
            Registry::new([outbox_tests::fixtures::recording::<OrderConfirmed>(
                "confirmed",
                confirmed.clone(),
            )])
            .unwrap(),
        )
        .timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let order_id = Uuid::now_v7();
    let uow = UnitOfWork::begin(harness.db()).await.unwrap();
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let options = RecordOptions::new().not_before(soon);
    uow.record("order", order_id, OrderConfirmed { order_id }, options)
        .unwrap();
    uow.commit().await.unwrap();

    let first = harness.settle().await.unwrap();
    assert_eq!(first.scheduled().len(), 1, "{first}");
    // A longer limit takes it in: settle waits until it is due.
    let second = harness
        .settle_within(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        second.delivered::<OrderConfirmed>(),
        [OrderConfirmed { order_id }]
    );
    assert_eq!(confirmed.all(), [OrderConfirmed { order_id }]);
    assert!(second.scheduled().is_empty());
}

#[tokio::test]
#[should_panic(
    expected = "no handler or route is named `mailr`; the harness's are: confirm-order, mailer, refund"
)]
async fn failed_for_a_name_no_handler_has_panics() {
    let harness = Harness::builder()
        .registry(registry(0))
        .build()
        .await
        .unwrap();
    let report = harness.settle().await.unwrap();
    let _ = report.failed_for("mailr");
}
