//! Both paths to one Kafka broker, read by one consumer: the relay's `KafkaPublisher` (a
//! CloudEvent in binary mode) to one topic, Debezium's outbox event router (the payload with the
//! row's columns as headers, produced by `engine.py --kafka` as Kafka Connect would) to another.
//! The same consumer code reads both topics; each record is mapped to the same fields
//! ([`Seen`]) from its own encoding, and the two are compared event by event. And the engine
//! hands a batch back to Debezium only once Kafka has it: a batch the broker never took is
//! routed again after a restart.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use cloudevents::AttributesReader;
use cloudevents::binding::rdkafka::MessageExt;
use outbox_seaorm::cloudevents::Mode;
use outbox_seaorm::publish::kafka::KafkaPublisher;
use outbox_seaorm::publish::kafka::rdkafka::ClientConfig;
use outbox_seaorm::publish::kafka::rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, TopicReplication,
};
use outbox_seaorm::publish::kafka::rdkafka::client::DefaultClientContext;
use outbox_seaorm::publish::kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use outbox_seaorm::publish::kafka::rdkafka::message::{Headers as _, Message, OwnedMessage};
use outbox_seaorm::{Headers, Registry, Relay, Route};
use outbox_tests::{Server, server_url};
use sea_orm::ConnectionTrait;
use uuid::Uuid;

use super::{Cdc, install_tracing, save_orders, save_traced_orders};

fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// A fresh topic of 3 partitions.
async fn topic(bootstrap: &str) -> String {
    let name = format!("outbox-dbz-{}", Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = config(bootstrap).create().unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(&name, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for r in results {
        r.expect("topic created");
    }
    name
}

/// The next `n` records of the topics `consumer` reads, failing after 60 s without one.
async fn read(consumer: &StreamConsumer, n: usize) -> Vec<OwnedMessage> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} records arrived", out.len()))
            .expect("a record");
        out.push(m.detach());
    }
    out
}

fn header(m: &OwnedMessage, name: &str) -> String {
    let h = m
        .headers()
        .unwrap_or_else(|| panic!("no headers on a record of {}", m.topic()));
    let value = h
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .unwrap_or_else(|| panic!("no header {name} on a record of {}", m.topic()));
    String::from_utf8(value.to_vec()).expect("a UTF-8 header")
}

/// One event as a consumer sees it, whichever path it came by.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: Uuid,
    event_type: String,
    event_version: String,
    aggregate_type: String,
    /// The record's key: the aggregate id on both paths.
    key: String,
    position: i64,
    occurred_at: chrono::DateTime<chrono::Utc>,
    /// The record's value: the payload text on both paths (binary mode; the router with
    /// `table.expand.json.payload=false`).
    value: String,
    /// The payload as JSON: the CloudEvent's `data`, or the value parsed.
    payload: serde_json::Value,
    traceparent: Option<String>,
    tracestate: Option<String>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    /// The headers given to `RecordOptions::header`.
    extra: BTreeMap<String, String>,
}

/// CloudEvents attributes of ours that are not custom headers.
const OUR_EXTENSIONS: [&str; 7] = [
    "aggregatetype",
    "eventversion",
    "aggregateposition",
    "traceparent",
    "tracestate",
    "correlationid",
    "causationid",
];

impl Seen {
    /// A relay record, read with the CloudEvents SDK's Kafka binding: the attributes are
    /// `ce_*` headers, the value is the payload.
    fn from_cloudevent(m: &OwnedMessage) -> Self {
        let event = m.to_event().expect("a CloudEvent");
        let ext = |name: &str| event.extension(name).map(|v| v.to_string());
        let payload = match event.data() {
            Some(cloudevents::Data::Json(v)) => v.clone(),
            Some(cloudevents::Data::Binary(b)) => serde_json::from_slice(b).unwrap(),
            Some(cloudevents::Data::String(s)) => serde_json::from_str(s).unwrap(),
            None => panic!("a CloudEvent without data"),
        };
        let key = String::from_utf8(m.key().expect("a key").to_vec()).unwrap();
        assert_eq!(event.subject(), Some(key.as_str()), "subject and key");
        assert_eq!(header(m, "id"), event.id(), "the plain id header");
        Seen {
            id: event.id().parse().expect("a UUID id"),
            event_type: event.ty().to_owned(),
            event_version: ext("eventversion").expect("eventversion"),
            aggregate_type: ext("aggregatetype").expect("aggregatetype"),
            key,
            position: ext("aggregateposition")
                .expect("aggregateposition")
                .parse()
                .unwrap(),
            occurred_at: *event.time().expect("time"),
            value: String::from_utf8(m.payload().expect("a value").to_vec()).unwrap(),
            payload,
            traceparent: ext("traceparent"),
            tracestate: ext("tracestate"),
            correlation_id: ext("correlationid"),
            causation_id: ext("causationid"),
            extra: event
                .iter_extensions()
                .filter(|(name, _)| !OUR_EXTENSIONS.contains(name))
                .map(|(name, v)| (name.to_owned(), v.to_string()))
                .collect(),
        }
    }

    /// A router record: the value is the payload column's text, the other columns are plain
    /// headers (as Kafka Connect's `SimpleHeaderConverter` writes them: text, numbers in
    /// decimal), our headers column one header holding its JSON text.
    fn from_router(m: &OwnedMessage) -> Self {
        let value = String::from_utf8(m.payload().expect("a value").to_vec()).unwrap();
        let headers: Headers =
            serde_json::from_str(&header(m, "headers")).expect("our headers column as JSON");
        let occurred_at = header(m, "occurred_at");
        Seen {
            id: header(m, "id").parse().expect("a UUID id"),
            event_type: header(m, "event_type"),
            event_version: header(m, "event_version"),
            aggregate_type: header(m, "aggregate_type"),
            key: String::from_utf8(m.key().expect("a key").to_vec()).unwrap(),
            position: header(m, "position").parse().expect("a decimal position"),
            occurred_at: chrono::DateTime::parse_from_rfc3339(&occurred_at)
                .unwrap_or_else(|e| panic!("occurred_at {occurred_at}: {e}"))
                .to_utc(),
            payload: serde_json::from_str(&value).expect("a JSON payload"),
            value,
            traceparent: headers.traceparent,
            tracestate: headers.tracestate,
            correlation_id: headers.correlation_id.map(|u| u.to_string()),
            causation_id: headers.causation_id.map(|u| u.to_string()),
            extra: headers.extra,
        }
    }
}

/// A consumer of `topics` from their beginning, in a group of its own.
fn reader(bootstrap: &str, topics: &[&str]) -> StreamConsumer {
    let consumer: StreamConsumer = config(bootstrap)
        .set(
            "group.id",
            format!("dbz-reader-{}", Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(topics).unwrap();
    consumer
}

/// Per key, the positions in arrival order must be 1, 2, 3, ... with each event once.
fn assert_in_order(path: &str, seen: &[Seen]) -> HashMap<String, i64> {
    let mut last: HashMap<String, i64> = HashMap::new();
    for s in seen {
        let p = last.entry(s.key.clone()).or_insert(0);
        assert_eq!(s.position, *p + 1, "{path}: order of aggregate {}", s.key);
        *p += 1;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(outbox_debezium, outbox_kafka)),
    ignore = "OUTBOX_TEST_DEBEZIUM_URL or OUTBOX_TEST_KAFKA_URL is not set"
)]
async fn the_relay_and_debezium_to_kafka_read_by_one_consumer_match_event_by_event() {
    let Some(url) = server_url(Server::Debezium) else {
        return;
    };
    let Some(bootstrap) = server_url(Server::Kafka) else {
        return;
    };
    install_tracing();
    let relay_topic = topic(&bootstrap).await;
    let debezium_topic = topic(&bootstrap).await;

    // Debezium's engine producing to Kafka, its router's topic this run's own.
    let mut cdc = Cdc::prepare(url).await;
    cdc.engine_args = vec![
        "--kafka".into(),
        bootstrap.clone(),
        "--set".into(),
        format!("transforms.outbox.route.topic.replacement={debezium_topic}"),
    ];
    cdc.start_engine().await;
    let expected = save_traced_orders(&cdc.db).await;

    // The relay publishing the same rows to the other topic.
    let publisher = KafkaPublisher::new(config(&bootstrap), "/orders")
        .unwrap()
        .mode(Mode::Binary);
    let route = Route::new("orders-kafka", publisher)
        .aggregate_types(["order"])
        .destination(&relay_topic)
        .unwrap();
    let relay = Relay::builder(cdc.db.clone())
        .registry(Registry::new([]).unwrap().with_route(route).unwrap())
        .build()
        .await
        .unwrap();
    let report = relay.drain().await.unwrap();
    assert_eq!(report.delivered, expected, "{report:?}");

    // One consumer, one code path, both topics.
    let consumer = reader(&bootstrap, &[&relay_topic, &debezium_topic]);
    let records = read(&consumer, 2 * expected).await;
    let (mut by_relay, mut by_debezium) = (Vec::new(), Vec::new());
    for m in &records {
        if m.topic() == relay_topic {
            by_relay.push(Seen::from_cloudevent(m));
        } else {
            assert_eq!(m.topic(), debezium_topic);
            by_debezium.push(Seen::from_router(m));
        }
    }
    assert_eq!(by_relay.len(), expected, "records of the relay");
    assert_eq!(by_debezium.len(), expected, "records of Debezium");

    // Each path: each aggregate's events in order, every one once.
    let relay_last = assert_in_order("relay", &by_relay);
    let debezium_last = assert_in_order("Debezium", &by_debezium);
    assert_eq!(relay_last.len(), expected / 4);
    assert!(relay_last.values().all(|&p| p == 4), "{relay_last:?}");
    assert_eq!(relay_last, debezium_last);

    // Event by event: the same fields, whichever encoding carried them.
    let relay_by_id: HashMap<Uuid, &Seen> = by_relay.iter().map(|s| (s.id, s)).collect();
    assert_eq!(relay_by_id.len(), expected, "every relay event once");
    for d in &by_debezium {
        let r = relay_by_id
            .get(&d.id)
            .unwrap_or_else(|| panic!("Debezium routed {}, which the relay never published", d.id));
        assert_eq!(*r, d, "event {}", d.id);
        assert!(d.traceparent.is_some(), "a traceparent on {}", d.id);
    }
    let tenants = by_debezium
        .iter()
        .filter(|s| s.extra.contains_key("tenant"));
    assert_eq!(
        tenants.count(),
        expected / 4,
        "the custom header on each tagged event"
    );
    let awkward = by_debezium
        .iter()
        .filter(|s| s.event_type == "dbz.awkward")
        .inspect(|s| assert_eq!(s.payload["big"], serde_json::json!(u64::MAX)))
        .count();
    assert_eq!(awkward, expected / 4);

    drop(relay);
    cdc.stop().await;
}

impl Cdc {
    /// Waits for the engine to stop by itself (`engine.py` exits 3 when the engine stopped on
    /// an error) and returns how many records it printed, that is, handed over as delivered.
    async fn wait_engine_failed(&mut self) -> usize {
        let mut engine = self.engine.take().expect("a running engine");
        // Kept open: `wait` would close it, which asks the engine to stop.
        let _stdin = engine.stdin.take();
        let status = tokio::time::timeout(Duration::from_secs(180), engine.wait())
            .await
            .expect("the engine to stop by itself within 180 s")
            .expect("the engine's exit status");
        assert_eq!(status.code(), Some(3), "the engine stopped on its error");
        let mut printed = 0;
        while self.records.recv().await.is_some() {
            printed += 1;
        }
        printed
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(outbox_debezium, outbox_kafka)),
    ignore = "OUTBOX_TEST_DEBEZIUM_URL or OUTBOX_TEST_KAFKA_URL is not set"
)]
async fn records_kafka_did_not_take_are_routed_again_when_the_engine_restarts() {
    let Some(url) = server_url(Server::Debezium) else {
        return;
    };
    let Some(bootstrap) = server_url(Server::Kafka) else {
        return;
    };
    let debezium_topic = topic(&bootstrap).await;
    let route_to = format!("transforms.outbox.route.topic.replacement={debezium_topic}");

    // The engine producing to a broker that is not there (port 1): its first batch is never
    // delivered, so the engine stops without committing that batch's offsets.
    let mut cdc = Cdc::prepare(url).await;
    cdc.engine_args = vec![
        "--kafka".into(),
        "127.0.0.1:1".into(),
        "--kafka-timeout-ms".into(),
        "2000".into(),
        "--set".into(),
        route_to.clone(),
    ];
    cdc.start_engine().await;
    save_orders(&cdc.db, 2).await;
    assert_eq!(
        cdc.wait_engine_failed().await,
        0,
        "records shown as delivered"
    );
    cdc.wait_slot(false, "the failed engine to release its slot")
        .await;

    // Started again with the broker: it reads the same rows again, from its committed offsets.
    cdc.engine_args = vec![
        "--kafka".into(),
        bootstrap.clone(),
        "--set".into(),
        route_to,
    ];
    cdc.start_engine().await;
    let records = read(&reader(&bootstrap, &[&debezium_topic]), 4).await;
    let seen: Vec<Seen> = records.iter().map(Seen::from_router).collect();
    let last = assert_in_order("Debezium", &seen);
    assert_eq!(last.len(), 2);
    assert!(last.values().all(|&p| p == 2), "{last:?}");
    let mut ids: Vec<String> = seen.iter().map(|s| s.id.to_string()).collect();
    ids.sort();
    let rows = cdc
        .db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT id::text AS id FROM outbox_messages ORDER BY id",
        ))
        .await
        .unwrap();
    let saved: Vec<String> = rows.iter().map(|r| r.try_get("", "id").unwrap()).collect();
    assert_eq!(ids, saved, "every saved event on Kafka once");
    cdc.stop().await;
}
