//! What is reported in the log, under the default policies: events dropped unsaved and units
//! of work dropped without `commit` or `rollback` are `ERROR` logs, never a panic (an error
//! returned through `?` reaches the caller); a relay says once at start which event types in
//! the outbox nothing in it takes.
//!
//! A binary of its own, with one test: the unsaved-events policy is process-wide (nothing here
//! sets it: the default is under test), and `tracing` caches per-callsite interest
//! process-wide, so a thread-scoped capture is only reliable when no other test runs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_seaorm::{Aggregate, RecordOptions, Registry, UnitOfWork};
use outbox_tests::fixtures::{Numbered, OrderConfirmed, OrderPlaced, Recorder, order, recording};
use outbox_tests::{Backend, TestDb};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// One event as the subscriber saw it.
#[derive(Debug, Clone)]
struct Captured {
    level: tracing::Level,
    target: String,
    fields: BTreeMap<String, String>,
}

impl Captured {
    fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }
}

/// A layer that keeps every event.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    /// The events captured so far of `target`, taken out.
    fn take(&self, target: &str) -> Vec<Captured> {
        let mut all = self.0.lock().unwrap();
        let (taken, kept) = all.drain(..).partition(|e| e.target == target);
        *all = kept;
        taken
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields: fields.0,
        });
    }
}

const UNSAVED: &str = "outbox::unsaved";

/// A current-thread runtime: the subscriber sees every event of the test, drops included.
#[tokio::test]
async fn drops_are_error_logs_not_panics_and_a_relay_names_what_nothing_takes() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let mut ran = Vec::new();
    for backend in [Backend::Sqlite, Backend::Postgres, Backend::MySql] {
        let Some(t) = TestDb::new(backend).await else {
            continue;
        };
        ran.push(backend);
        a_question_mark_returns_the_librarys_error(&t, &capture).await;
        a_cancelled_request_future_is_reported_not_panicked(&t, &capture).await;
        a_dropped_unit_of_work_is_reported_and_so_are_the_events_it_gave_back(&t, &capture).await;
        a_relay_warns_once_at_start_about_event_types_nothing_takes(&t, &capture).await;
        t.cleanup().await;
    }
    eprintln!("ran on {ran:?}");
    assert!(ran.contains(&Backend::Sqlite));
}

/// A handler of a request: the unit of work refuses the event (an invalid header name) and the
/// error goes up through `?`, dropping the aggregate on the way.
async fn place_with_a_bad_header(db: &sea_orm::DatabaseConnection) -> outbox_seaorm::Result<()> {
    let mut order = order::Model::place("eve", 3);
    let order_id = order.id;
    order.record_with(
        OrderConfirmed { order_id },
        RecordOptions::new().header("x-tenant", "acme"),
    );
    let uow = UnitOfWork::begin(db).await?;
    uow.save(&mut order).await?;
    uow.commit().await
}

async fn a_question_mark_returns_the_librarys_error(t: &TestDb, capture: &Capture) {
    let err = place_with_a_bad_header(&t.db)
        .await
        .expect_err("an invalid header name is refused");
    assert!(
        err.to_string().contains("x-tenant"),
        "the caller sees: {err}"
    );
    let reports = capture.take(UNSAVED);
    assert!(!reports.is_empty(), "the dropped events are reported");
    for r in &reports {
        assert_eq!(r.level, tracing::Level::ERROR, "{r:?}");
        assert!(r.message().contains("order.placed"), "{r:?}");
    }
}

async fn a_cancelled_request_future_is_reported_not_panicked(t: &TestDb, capture: &Capture) {
    let db = t.db.clone();
    let request = async move {
        let mut order = order::Model::place("ada", 1);
        let uow = UnitOfWork::begin(&db).await.unwrap();
        uow.save(&mut order).await.unwrap();
        // The client went away: the request future is dropped here.
        tokio::time::sleep(Duration::from_secs(60)).await;
        uow.commit().await.unwrap();
    };
    let cancelled = tokio::time::timeout(Duration::from_millis(300), request).await;
    assert!(cancelled.is_err(), "the request was cancelled");
    let reports = capture.take(UNSAVED);
    assert_eq!(
        reports.len(),
        2,
        "the unit of work, then the order: {reports:?}"
    );
    assert!(
        reports[0]
            .message()
            .contains("dropped without `commit` or `rollback`"),
        "{reports:?}"
    );
    assert!(
        reports[1].message().contains("dropped without being saved"),
        "{reports:?}"
    );
    for r in &reports {
        assert_eq!(r.level, tracing::Level::ERROR, "{r:?}");
        assert!(r.message().contains("order.placed"), "{r:?}");
    }
}

async fn a_dropped_unit_of_work_is_reported_and_so_are_the_events_it_gave_back(
    t: &TestDb,
    capture: &Capture,
) {
    // Dropped holding the order's event: reported, and the event goes back to the order.
    let mut order = order::Model::place("bob", 2);
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut order).await.unwrap();
    drop(uow);
    let reports = capture.take(UNSAVED);
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = &reports[0];
    assert_eq!(r.level, tracing::Level::ERROR);
    for needle in [
        "a unit of work holding 1 staged event(s) was dropped without `commit` or `rollback`",
        "order.placed",
        &order.id.to_string(),
    ] {
        assert!(r.message().contains(needle), "{needle:?} in {r:?}");
    }
    assert_eq!(order.events().len(), 1, "given back to the aggregate");
    // Dropping the order still holding it reports it again.
    drop(order);
    let reports = capture.take(UNSAVED);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        reports[0].message().contains("dropped without being saved"),
        "{reports:?}"
    );

    // Given back and then saved: nothing to report.
    let mut order = order::Model::place("cy", 4);
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut order).await.unwrap();
    drop(uow);
    assert_eq!(capture.take(UNSAVED).len(), 1);
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut order).await.unwrap();
    uow.commit().await.unwrap();
    drop(order);

    // An event recorded on the unit of work itself (no aggregate holds it) is named as lost.
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    let id = uow
        .record(
            "audit",
            7,
            OrderConfirmed {
                order_id: uuid::Uuid::now_v7(),
            },
            RecordOptions::new(),
        )
        .unwrap();
    drop(uow);
    let reports = capture.take(UNSAVED);
    assert_eq!(reports.len(), 1, "{reports:?}");
    for needle in [
        "a unit of work holding 1 staged event(s) was dropped without `commit` or `rollback`",
        "recorded on the unit of work itself are lost",
        &id.to_string(),
    ] {
        assert!(
            reports[0].message().contains(needle),
            "{needle:?} in {reports:?}"
        );
    }

    // Rolled back explicitly, or with nothing staged: nothing reported, now or later.
    let mut order = order::Model::place("di", 5);
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut order).await.unwrap();
    uow.rollback().await.unwrap();
    drop(order);
    drop(UnitOfWork::begin(&t.db).await.unwrap());
    let reports = capture.take(UNSAVED);
    assert!(reports.is_empty(), "{reports:?}");
}

async fn a_relay_warns_once_at_start_about_event_types_nothing_takes(
    t: &TestDb,
    capture: &Capture,
) {
    let _ = capture.take("outbox_seaorm::relay::untaken");
    let mut order = order::Model::place("flo", 6);
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut order).await.unwrap();
    uow.record(
        "counter",
        "c-1",
        Numbered {
            key: "c-1".into(),
            n: 1,
        },
        Default::default(),
    )
    .unwrap();
    uow.commit().await.unwrap();

    // `test.numbered` is known here but nothing handles it; `order.placed` is handled.
    let placed = Recorder::new();
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(
            Registry::new([recording::<OrderPlaced>("placed", placed.clone())])
                .unwrap()
                .with_event::<Numbered>(),
        )
        .build()
        .await
        .unwrap();
    let at_start: Vec<Captured> = capture
        .take("outbox_seaorm::relay::untaken")
        .into_iter()
        .filter(|e| e.level == tracing::Level::WARN)
        .collect();
    assert_eq!(at_start.len(), 1, "{at_start:?}");
    let w = &at_start[0];
    assert!(
        w.fields["unhandled_types"].contains("test.numbered"),
        "{w:?}"
    );
    assert!(!w.fields["unhandled_types"].contains("order"), "{w:?}");
    assert!(w.message().contains("use that_crate as _;"), "{w:?}");

    // Running it marks the message unhandled without a second warning for the type.
    let r = relay.drain().await.unwrap();
    assert!(r.unhandled >= 1, "{r:?}");
    let later: Vec<Captured> = capture
        .take("outbox_seaorm::relay::worker")
        .into_iter()
        .filter(|e| e.level == tracing::Level::WARN && e.message().contains("no handler"))
        .collect();
    assert!(later.is_empty(), "warned once: {later:?}");

    // A relay that handles it now says the unhandled messages can be requeued.
    let numbered = Recorder::new();
    outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([recording::<Numbered>("numbered", numbered)]).unwrap())
        .build()
        .await
        .unwrap();
    let hints = capture.take("outbox_seaorm::relay::untaken");
    assert!(
        hints.iter().any(|e| e.level == tracing::Level::INFO
            && e.message().contains("outbox requeue --status unhandled")),
        "{hints:?}"
    );
}
