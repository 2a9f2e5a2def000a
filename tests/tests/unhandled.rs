//! Messages nothing takes are `unhandled`, never delivered: in the table, `Admin`, the command
//! line, the dashboard and retention; a message a route publishes is delivered; requeue gives
//! unhandled messages to a relay that has a handler for them now.

use std::sync::Arc;
use std::time::Duration;

use assert_cmd::Command;
use outbox_seaorm::dashboard::{self, DashboardConfig};
use outbox_seaorm::entity::{MessageStatus, message};
use outbox_seaorm::{
    Admin, DeliveredRows, Envelope, HandlerError, MessageFilter, Publisher, Registry, Retention,
    Route, UnitOfWork,
};
use outbox_tests::dashboard::get;
use outbox_tests::fixtures::{Numbered, OrderCancelled, OrderPlaced, Recorder, recording};
use outbox_tests::{TestDb, backend_tests};
use sea_orm::{DatabaseConnection, EntityTrait, QueryOrder};
use serde_json::Value;

backend_tests!(
    messages_nothing_takes_are_unhandled_everywhere_and_requeue_delivers_them,
    a_message_a_route_publishes_is_delivered,
    delete_mode_deletes_delivered_rows_and_keeps_unhandled_ones,
);

async fn rows(db: &DatabaseConnection) -> Vec<message::Model> {
    message::Entity::find()
        .order_by_asc(message::Column::Seq)
        .all(db)
        .await
        .unwrap()
}

fn outbox(t: &TestDb) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_outbox-cli"));
    c.env("DATABASE_URL", &t.url).env_remove("RUST_LOG");
    c
}

fn json(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

async fn messages_nothing_takes_are_unhandled_everywhere_and_requeue_delivers_them(t: TestDb) {
    // One event nothing here handles (its type is known: the handler's crate is "not
    // linked"), one that is handled, on one aggregate.
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    let audit = Numbered {
        key: "audit".into(),
        n: 1,
    };
    uow.record("order", 7, audit.clone(), Default::default())
        .unwrap();
    let placed = OrderPlaced {
        order_id: uuid::Uuid::nil(),
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
    assert_eq!(seen.all(), [placed], "the unhandled one stalls nothing");

    // The table.
    let stored = rows(&t.db).await;
    assert_eq!(stored[0].status, MessageStatus::Unhandled);
    assert_eq!(
        stored[0].delivered_at, None,
        "an unhandled message was not delivered"
    );
    assert_eq!(stored[1].status, MessageStatus::Delivered);

    // Admin: counts, status, listings.
    let admin = Admin::new(t.db.clone());
    let counts = admin.counts().await.unwrap();
    assert_eq!((counts.delivered, counts.unhandled), (1, 1), "{counts:?}");
    let status = admin.status().await.unwrap();
    assert_eq!((status.delivered_last_hour, status.unhandled), (1, 1));
    let listed = admin
        .list(&MessageFilter::new().status(MessageStatus::Unhandled))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].event_type, "test.numbered");
    assert_eq!(listed[0].status, "unhandled");

    // The command line: status, its check, the listing filter.
    let out = outbox(&t).args(["--json", "status"]).assert().success();
    let status = json(&out.get_output().stdout);
    assert_eq!(status["unhandled"], 1);
    assert_eq!(status["delivered_last_hour"], 1);
    outbox(&t)
        .args(["status", "--fail-if", "unhandled>0"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("check failed: unhandled>0"));
    outbox(&t)
        .args(["status", "--fail-if", "unhandled>1"])
        .assert()
        .success();
    let out = outbox(&t)
        .args(["--json", "list", "--status", "unhandled"])
        .assert()
        .success();
    let listed = json(&out.get_output().stdout);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["event_type"], "test.numbered");
    let out = outbox(&t).args(["status"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(text.contains("unhandled"), "{text}");
    outbox(&t)
        .args(["requeue", "--status", "delivered", "--yes"])
        .assert()
        .code(2);

    // The dashboard: the overview's count, the listing, the message page.
    let app = dashboard::router(t.db.clone(), DashboardConfig::new());
    let overview = get(&app, "/").await;
    assert_eq!(overview.number("count-unhandled"), 1, "{}", overview.body);
    assert_eq!(overview.number("count-delivered-hour"), 1);
    let page = get(&app, &format!("/messages/{}", stored[0].id)).await;
    assert_eq!(page.text_of("message-status").as_deref(), Some("unhandled"));
    assert!(page.body.contains("id=\"unhandled-note\""), "{}", page.body);

    // Retention deletes delivered rows, keeps unhandled ones.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cleaner = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([]).unwrap())
        .retention(Retention::delete_delivered_after(Duration::from_millis(1)))
        .build()
        .await
        .unwrap();
    let report = cleaner.run_retention().await.unwrap();
    assert_eq!(report.deleted, 1, "{report:?}");
    let left = rows(&t.db).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].status, MessageStatus::Unhandled);

    // A delivered message is not requeued; an unhandled one is, and a relay that has a
    // handler for it now delivers it.
    let err = admin.requeue(stored[1].id).await.unwrap_err();
    assert!(
        matches!(err, outbox_seaorm::Error::MessageNotFound { .. }),
        "{err}"
    );
    let numbered = Recorder::new();
    let fixed = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([recording::<Numbered>("audit", numbered.clone())]).unwrap())
        .build()
        .await
        .unwrap();
    outbox(&t)
        .args([
            "requeue",
            "--status",
            "unhandled",
            "--event-type",
            "test.numbered",
            "--yes",
        ])
        .assert()
        .success();
    let counts = admin.counts().await.unwrap();
    assert_eq!((counts.unhandled, counts.pending), (0, 1), "{counts:?}");
    let again = admin
        .requeue_matching(&MessageFilter::new().status(MessageStatus::Unhandled))
        .await
        .unwrap();
    assert_eq!(again, 0, "nothing unhandled is left to requeue");
    let r = fixed.drain().await.unwrap();
    assert_eq!((r.delivered, r.unhandled), (1, 0), "{r:?}");
    assert_eq!(numbered.all(), [audit]);
    assert_eq!(rows(&t.db).await[0].status, MessageStatus::Delivered);
    assert_eq!(admin.counts().await.unwrap().unhandled, 0);
    t.cleanup().await;
}

/// Counts what it publishes.
struct Counting(Arc<std::sync::atomic::AtomicU32>);

#[async_trait::async_trait]
impl Publisher for Counting {
    async fn publish(&self, _: &Envelope, _: &str) -> Result<(), HandlerError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

async fn a_message_a_route_publishes_is_delivered(t: TestDb) {
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.record(
        "order",
        1,
        OrderCancelled {
            order_id: uuid::Uuid::nil(),
            reason: "late".into(),
        },
        Default::default(),
    )
    .unwrap();
    uow.commit().await.unwrap();
    // One that only a route change data capture publishes takes: complete, as delivered.
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.record(
        "cart",
        2,
        Numbered {
            key: "cart".into(),
            n: 2,
        },
        Default::default(),
    )
    .unwrap();
    uow.commit().await.unwrap();
    let published = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let route = Route::new("cancellations", Counting(published.clone()))
        .event_types(["order.cancelled"])
        .destination("orders")
        .unwrap();
    let by_cdc = Route::new("carts-out", Counting(published.clone()))
        .aggregate_types(["cart"])
        .destination("carts")
        .unwrap()
        .published_by_cdc(true);
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(
            Registry::new([])
                .unwrap()
                .with_route(route)
                .unwrap()
                .with_route(by_cdc)
                .unwrap(),
        )
        .build()
        .await
        .unwrap();
    let r = relay.drain().await.unwrap();
    assert_eq!((r.delivered, r.unhandled), (2, 0), "{r:?}");
    assert_eq!(
        published.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the relay does not publish what CDC publishes"
    );
    let statuses: Vec<_> = rows(&t.db).await.iter().map(|m| m.status).collect();
    assert_eq!(
        statuses,
        [MessageStatus::Delivered, MessageStatus::Delivered]
    );
    assert_eq!(
        Admin::new(t.db.clone()).counts().await.unwrap().unhandled,
        0
    );
    t.cleanup().await;
}

async fn delete_mode_deletes_delivered_rows_and_keeps_unhandled_ones(t: TestDb) {
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    let placed = OrderPlaced {
        order_id: uuid::Uuid::nil(),
        amount: 1,
    };
    uow.record("order", 1, placed, Default::default()).unwrap();
    let audit = Numbered {
        key: "a".into(),
        n: 1,
    };
    uow.record("counter", "a", audit, Default::default())
        .unwrap();
    uow.commit().await.unwrap();
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(
            Registry::new([recording::<OrderPlaced>("placed", Recorder::new())])
                .unwrap()
                .with_event::<Numbered>(),
        )
        .delivered_rows(DeliveredRows::Delete)
        .build()
        .await
        .unwrap();
    let r = relay.drain().await.unwrap();
    assert_eq!((r.delivered, r.unhandled), (1, 1), "{r:?}");
    let left = rows(&t.db).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].event_type, "test.numbered");
    assert_eq!(left[0].status, MessageStatus::Unhandled);
    t.cleanup().await;
}
