//! The dashboard in a real headless Chromium: each page shows the database's numbers, the live
//! refresh runs under the CSP, "requeue all matching" on a filtered dead-letter view puts
//! exactly those rows back to pending, and the read-only dashboard hides its actions and
//! refuses their POSTs. A screenshot of each page lands in `target/dashboard-screenshots/`.
//!
//! Needs `OUTBOX_TEST_CHROMIUM` (the chromium binary); ignored with that reason otherwise, and
//! failed when `OUTBOX_TEST_REQUIRE` names `chromium`.

use std::time::Duration;

use axum::Router;
use outbox_seaorm::dashboard::{self, DashboardConfig};
use outbox_seaorm::entity::MessageStatus;
use outbox_seaorm::{Admin, MessageFilter, UnitOfWork};
use outbox_tests::chromium::{Chromium, screenshot_dir};
use outbox_tests::dashboard::seed;
use outbox_tests::fixtures::FromANewerVersion;
use outbox_tests::{Backend, Server, TestDb, server_url, wait_for};

/// Serves `app` on a free loopback port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_chromium), ignore = "OUTBOX_TEST_CHROMIUM is not set")]
async fn the_dashboard_in_chromium_shows_the_database_and_requeues_what_is_filtered() {
    let Some(binary) = server_url(Server::Chromium) else {
        return;
    };
    let t = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let relay = seed(&t.db).await;
    let admin = Admin::new(t.db.clone());
    // Mounted under a path, as a service would.
    let base = serve(Router::new().nest(
        "/outbox",
        dashboard::router(t.db.clone(), DashboardConfig::new()),
    ))
    .await;
    let base = format!("{base}/outbox");
    let read_only = serve(dashboard::router(
        t.db.clone(),
        DashboardConfig::new().read_only(true),
    ))
    .await;
    let shots = screenshot_dir();
    let mut b = Chromium::launch(&binary).await;

    // Overview: the cards and the chart's totals are the database's.
    b.goto(&base).await;
    let status = admin.status().await.unwrap();
    let minutes = admin.throughput().await.unwrap();
    assert_eq!(b.number("#count-pending").await, status.pending);
    assert_eq!(b.number("#count-dead").await, status.dead);
    assert_eq!(b.number("#count-unhandled").await, status.unhandled);
    assert_eq!(
        b.number("#count-delivered-hour").await,
        status.delivered_last_hour
    );
    assert_eq!(b.number("#count-unknown").await, status.unknown_event_type);
    let delivered: u64 = minutes.iter().map(|m| m.delivered).sum();
    let failed: u64 = minutes.iter().map(|m| m.failed).sum();
    assert_eq!(b.number("#chart-delivered").await, delivered);
    assert_eq!(b.number("#chart-failed").await, failed);
    let bars = b
        .eval("document.querySelectorAll('#throughput-chart rect').length")
        .await;
    assert!(bars.as_u64().unwrap() >= 1, "the chart draws bars: {bars}");
    b.screenshot(&shots.join("overview.png")).await;

    // The live refresh (the script, allowed by the CSP) picks up a new pending message.
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.record(
        "order",
        "o-9",
        FromANewerVersion { n: 9 },
        Default::default(),
    )
    .unwrap();
    uow.commit().await.unwrap();
    let pending = admin.counts().await.unwrap().pending;
    // No navigation: the number changes in place, within a few refresh periods.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while b.number("#count-pending").await != pending {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the overview did not refresh"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        b.text("#live-status").await.map(|s| s.starts_with("live")),
        Some(true)
    );

    // Messages: a keyset page, then the next one by its link.
    b.goto(&format!("{base}/messages?limit=5")).await;
    let rows = "document.querySelectorAll('#messages tbody tr').length";
    assert_eq!(b.eval(rows).await, 5);
    b.screenshot(&shots.join("messages.png")).await;
    b.click("#next-page", &format!("{base}/messages?")).await;
    let total = admin.count(&MessageFilter::new()).await.unwrap();
    assert_eq!(b.eval(rows).await, total - 5);

    // One message.
    let dead = admin
        .list(&MessageFilter::new().status(MessageStatus::Dead))
        .await
        .unwrap();
    b.goto(&format!("{base}/messages/{}", dead[0].message_id))
        .await;
    assert_eq!(b.text("#message-status").await.as_deref(), Some("dead"));
    assert!(
        b.text("#payload")
            .await
            .unwrap()
            .contains("\"key\": \"agg-0\"")
    );
    b.screenshot(&shots.join("message.png")).await;

    // Dead letters: from the overview's group link, narrowed to one aggregate with the form.
    b.goto(&base).await;
    b.click("#dead-groups td.num a", &format!("{base}/dead-letters?"))
        .await;
    assert_eq!(b.number("#matching").await, 3);
    b.eval("document.querySelector('input[name=aggregate]').value = 'agg-2'")
        .await;
    b.click("form.filters button", &format!("{base}/dead-letters?"))
        .await;
    assert_eq!(b.number("#matching").await, 1);
    b.screenshot(&shots.join("dead-letters.png")).await;
    b.click("#requeue-all", &format!("{base}/dead-letters/confirm?"))
        .await;
    assert_eq!(b.number("#confirm-count").await, 1);
    b.screenshot(&shots.join("confirm.png")).await;
    b.click("#confirm", &format!("{base}/dead-letters?")).await;
    assert_eq!(
        b.text("#action-done").await.as_deref(),
        Some("1 message(s) requeued.")
    );
    assert_eq!(b.number("#matching").await, 0);
    let agg2 = admin
        .list(&MessageFilter::new().aggregate_id("agg-2"))
        .await
        .unwrap();
    assert_eq!(agg2[0].status, "pending", "requeued");
    assert_eq!(
        admin.counts().await.unwrap().dead,
        2,
        "the others are still dead"
    );
    b.goto(&format!("{base}/messages?status=pending&aggregate=agg-2"))
        .await;
    assert_eq!(b.eval(rows).await, 1, "shown pending again");

    // Handlers.
    b.goto(&format!("{base}/handlers")).await;
    let report = admin.handler_stats().await.unwrap();
    let mail = report
        .handlers
        .iter()
        .find(|h| h.handler == "mail")
        .unwrap();
    assert_eq!(b.number("tr[data-handler=mail] td.dead").await, mail.dead);
    assert_eq!(
        b.number("tr[data-handler=mail] td.failed").await,
        mail.failed
    );
    b.screenshot(&shots.join("handlers.png")).await;

    // Relays: one running.
    let handle = relay.spawn();
    wait_for("the relay's row", Duration::from_secs(10), || async {
        (!admin.relays().await.unwrap().is_empty()).then_some(())
    })
    .await;
    b.goto(&format!("{base}/relays")).await;
    let relays = admin.relays().await.unwrap();
    assert_eq!(
        b.eval("document.querySelectorAll('#relays tbody tr').length")
            .await,
        relays.len()
    );
    assert_eq!(
        b.text(&format!("tr[data-relay='{}'] td code", relays[0].id))
            .await
            .as_deref(),
        Some(relays[0].id.as_str())
    );
    b.screenshot(&shots.join("relays.png")).await;
    handle.shutdown().await;

    // Read-only: no actions on the page, and a POST is refused. (The relay, stopped now, ran
    // the requeued message again: `mail` fails it for good, so it is dead again.)
    let dead_before = admin.counts().await.unwrap().dead;
    b.goto(&format!("{read_only}/dead-letters")).await;
    assert!(b.text("#read-only").await.is_some());
    assert_eq!(
        b.eval("document.querySelector('#requeue-all') === null")
            .await,
        true
    );
    assert!(
        b.number("#matching").await > 0,
        "there is something it could act on"
    );
    let refused = b
        .eval(
            "fetch('/dead-letters/requeue', { method: 'POST', headers: \
             { 'content-type': 'application/x-www-form-urlencoded' }, body: 'csrf=x' }) \
             .then(r => r.text().then(t => [r.status, t]))",
        )
        .await;
    assert_eq!(refused[0], 403);
    assert!(
        refused[1].as_str().unwrap().contains("read-only"),
        "{refused}"
    );
    b.screenshot(&shots.join("read-only.png")).await;
    assert_eq!(
        admin.counts().await.unwrap().dead,
        dead_before,
        "nothing changed"
    );

    drop(b);
    t.cleanup().await;
}
