//! A group task that panics (here: the service's metrics recorder, user code the relay calls
//! outside a handler's own task) gives its messages back, counted and logged at ERROR, and the
//! relay goes on. Its own binary: the recorder is process-wide.

use std::sync::{Arc, Once};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use outbox_seaorm::entity::{MessageStatus, message};
use outbox_seaorm::{DeliveryOrder, HandlerContext, HandlerEntry, Registry, UnitOfWork};
use outbox_tests::fixtures::{OrderConfirmed, OrderPlaced, Recorder as Seen, order, recording};
use outbox_tests::{TestDb, backend_tests, wait_for};
use sea_orm::{EntityTrait, QueryOrder};

backend_tests!(a_panicking_group_gives_its_messages_back_and_the_relay_goes_on);

/// Panics when the run of the handler `explodes` is recorded.
struct Exploding;

struct Boom;

impl HistogramFn for Boom {
    fn record(&self, _: f64) {
        panic!("the metrics recorder panicked");
    }
}

impl Recorder for Exploding {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        if key.labels().any(|l| l.value() == "explodes") {
            Histogram::from_arc(Arc::new(Boom))
        } else {
            Histogram::noop()
        }
    }
}

async fn commit(t: &TestDb, o: &mut order::Model) {
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(o).await.unwrap();
    uow.commit().await.unwrap();
}

async fn a_panicking_group_gives_its_messages_back_and_the_relay_goes_on(t: TestDb) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| metrics::set_global_recorder(Exploding).unwrap());
    let confirmed = Seen::new();
    let registry = Registry::new([
        HandlerEntry::new("explodes", |_: OrderPlaced, _ctx: HandlerContext| async {
            Ok::<(), anyhow::Error>(())
        }),
        recording::<OrderConfirmed>("fine", confirmed.clone()),
    ])
    .unwrap();
    let mut a = order::Model::place("ada", 1);
    a.confirm();
    commit(&t, &mut a).await;
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(registry)
        .ordering(DeliveryOrder::Unordered)
        .poll_interval(Duration::from_millis(50))
        .shutdown_timeout(Duration::from_secs(2))
        .spawn()
        .await
        .unwrap();
    wait_for(
        "a group panics, the other message is delivered",
        Duration::from_secs(20),
        || async { (relay.stats().group_panics >= 1 && confirmed.len() == 1).then_some(()) },
    )
    .await;
    // The relay goes on: a message committed after the panic is delivered.
    let mut b = order::Model::place("bob", 2);
    b.confirm();
    commit(&t, &mut b).await;
    wait_for("the relay goes on", Duration::from_secs(20), || async {
        (confirmed.len() == 2).then_some(())
    })
    .await;
    let stats = relay.stats();
    relay.shutdown().await;
    assert!(
        stats.released >= 1,
        "the panicked group's message was given back: {stats:?}"
    );
    let rows = message::Entity::find()
        .order_by_asc(message::Column::Seq)
        .all(&t.db)
        .await
        .unwrap();
    for placed in rows.iter().filter(|r| r.event_type == "order.placed") {
        assert_eq!(placed.status, MessageStatus::Pending, "not lost, not dead");
        assert!(
            placed.locked_by.is_none(),
            "not left leased to a live relay"
        );
    }
    t.cleanup().await;
}
