//! Delivery to real brokers: NATS JetStream and RabbitMQ, with relays killed mid-batch.
//!
//! Needs `OUTBOX_TEST_NATS_URL` (`nats://127.0.0.1:4222`) and `OUTBOX_TEST_AMQP_URL`
//! (`amqp://guest:guest@127.0.0.1:5672/%2f`); ignored, with the reason, otherwise. The outbox
//! itself lives in a SQLite file here: the broker path does not depend on the database.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use outbox_seaorm::cloudevents::Mode;
use outbox_seaorm::publish::nats::JetStreamPublisher;
use outbox_seaorm::{Admin, Inbox, Registry, Relay, Route};
use outbox_tests::fixtures::{AWKWARD_IDS, Numbered, commit_awkward, commit_numbered};
use outbox_tests::{Backend, Server, TestDb, kill_on_progress, server_url, wait_for};
use sea_orm::ConnectionTrait;
use tokio::process::{Child, Command};
use uuid::Uuid;

fn spawn_worker(db_url: &str, name: &str, broker: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_relay-worker"))
        .args([db_url, name, "700", "2"])
        .args(broker)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn relay-worker")
}

/// Runs workers publishing through `broker`, kills one after every 20 deliveries while the
/// backlog drains,
/// and waits until everything is delivered. Returns how many were killed mid-backlog.
async fn drain_with_kills(t: &TestDb, broker: &[&str], total: usize) -> usize {
    let admin = Admin::new(t.db.clone());
    let mut workers: Vec<Child> = (0..2)
        .map(|i| spawn_worker(&t.url, &format!("w{i}"), broker))
        .collect();
    let kills = kill_on_progress(&admin, &mut workers, 20, 6, |n| {
        spawn_worker(&t.url, &format!("w{n}"), broker)
    })
    .await;
    wait_for("the outbox to drain", Duration::from_secs(90), || async {
        let c = admin.counts().await.unwrap();
        (c.pending == 0 && c.delivered as usize == total).then_some(())
    })
    .await;
    for w in &mut workers {
        w.start_kill().ok();
        w.wait().await.ok();
    }
    kills
}

/// A fresh topic exchange and a durable queue bound to it with `binding`, both deleted by the
/// server once unused (the queue when its last consumer leaves).
/// A binary-mode NATS message as the CloudEvents SDK's HTTP binding reads it (NATS headers
/// follow it).
fn sdk_event(headers: &async_nats::HeaderMap, payload: &[u8]) -> cloudevents::Event {
    let mut h = http::HeaderMap::new();
    for (k, v) in headers.iter() {
        let name: &str = k.as_ref();
        h.insert(
            http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).unwrap(),
            v[0].as_str().parse().unwrap(),
        );
    }
    cloudevents::binding::http::to_event(&h, payload.to_vec())
        .expect("a valid binary-mode CloudEvent")
}

/// Commits one event per awkward id, relays them through a RabbitMQ topic exchange to
/// `{word}.{aggregate_id}` (a queue bound to `{word}.*`: an id that split the routing key would
/// be unroutable, returned and retried, never delivered) in `mode`, and returns what the queue
/// got.
async fn awkward_ids_through_rabbitmq(
    t: &TestDb,
    amqp_url: &str,
    word: &str,
    mode: Mode,
) -> Vec<lapin::message::Delivery> {
    use outbox_seaorm::publish::amqp::AmqpPublisher;

    commit_awkward(&t.db, &AWKWARD_IDS).await;
    let conn = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let (exchange, queue) = topic_queue(&ch, &format!("{word}.*")).await;
    let publisher = AmqpPublisher::new(amqp_url.to_owned(), &exchange, "/orders")
        .unwrap()
        .mode(mode);
    let route = Route::new(format!("awkward-{word}"), publisher)
        .destination(&format!("{word}.{{aggregate_id}}"))
        .unwrap();
    let relay = Relay::builder(t.db.clone())
        .registry(Registry::new([]).unwrap().with_route(route).unwrap())
        .build()
        .await
        .unwrap();
    assert_eq!(relay.drain().await.unwrap().delivered, AWKWARD_IDS.len());

    let mut deliveries = ch
        .basic_consume(
            queue.clone().into(),
            word.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..AWKWARD_IDS.len() {
        let d = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
            .await
            .expect("every event is in the queue")
            .unwrap()
            .unwrap();
        got.push(d);
    }
    got
}

/// Each awkward id came through exactly once.
fn assert_each_awkward_id_once(mut seen: Vec<String>) {
    seen.sort();
    let mut want: Vec<String> = AWKWARD_IDS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(seen, want);
}

async fn topic_queue(ch: &lapin::Channel, binding: &str) -> (String, String) {
    let tag = Uuid::new_v4().simple().to_string();
    let (exchange, queue) = (format!("outbox-test-{tag}"), format!("outbox-test-{tag}"));
    ch.exchange_declare(
        exchange.clone().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.clone().into(),
        QueueDeclareOptions {
            durable: true,
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.clone().into(),
        exchange.clone().into(),
        binding.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    (exchange, queue)
}

/// Per key, the `n`s in arrival order must be 1, 2, 3, ... once each.
fn assert_once_in_order(received: &[(String, u32)], keys: usize, per_key: u32) {
    let mut by_key: HashMap<&str, Vec<u32>> = HashMap::new();
    for (k, n) in received {
        by_key.entry(k).or_default().push(*n);
    }
    assert_eq!(by_key.len(), keys);
    for (k, ns) in by_key {
        assert_eq!(ns, (1..=per_key).collect::<Vec<_>>(), "arrivals of {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_nats), ignore = "OUTBOX_TEST_NATS_URL is not set")]
async fn jetstream_consumer_gets_every_event_once_in_order_after_relay_kills() {
    let Some(nats_url) = server_url(Server::Nats) else {
        return;
    };
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    let total = commit_numbered(&t.db, 8, 25).await;

    let client = async_nats::connect(&nats_url).await.unwrap();
    let js = jetstream::new(client.clone());
    let tag = Uuid::new_v4().simple().to_string();
    let stream_name = format!("OUTBOX_TEST_{tag}");
    let stream = js
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("t{tag}.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();

    let subject = format!("t{tag}.{{aggregate_type}}.{{aggregate_id}}");
    let kills = drain_with_kills(&t, &["nats", &nats_url, &subject], total).await;
    assert!(kills >= 1);

    // A consumer written with the broker's own client.
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("checker".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut received = Vec::new();
    let mut ids = HashSet::new();
    while received.len() < total {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the stream holds every event")
            .unwrap()
            .unwrap();
        // What we publish is a valid structured CloudEvent for the SDK.
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "content-type",
            "application/cloudevents+json".parse().unwrap(),
        );
        let event = cloudevents::binding::http::to_event(&headers, msg.payload.to_vec())
            .expect("valid CloudEvent");
        assert_eq!(cloudevents::AttributesReader::ty(&event), "test.numbered");
        assert_eq!(
            cloudevents::AttributesReader::source(&event).as_str(),
            "/relay-worker"
        );
        let data: Numbered = match event.data() {
            Some(cloudevents::Data::Json(v)) => serde_json::from_value(v.clone()).unwrap(),
            other => panic!("unexpected data {other:?}"),
        };
        ids.insert(cloudevents::AttributesReader::id(&event).to_owned());
        received.push((data.key, data.n));
        msg.ack().await.unwrap();
    }
    let info = js
        .get_stream(&stream_name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    eprintln!(
        "JetStream: {total} events, {kills} relay kills, {} messages in the stream",
        info.state.messages
    );
    assert_eq!(
        info.state.messages as usize, total,
        "relay retries dropped by the duplicate window"
    );
    assert_eq!(ids.len(), total);
    assert_once_in_order(&received, 8, 25);
    js.delete_stream(&stream_name).await.unwrap();
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_amqp), ignore = "OUTBOX_TEST_AMQP_URL is not set")]
async fn rabbitmq_consumer_with_inbox_has_effects_once_in_order_after_relay_kills() {
    let Some(amqp_url) = server_url(Server::Amqp) else {
        return;
    };
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    let total = commit_numbered(&t.db, 8, 25).await;

    let conn = Connection::connect(&amqp_url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let (exchange, queue) = topic_queue(&ch, "#").await;

    let kills = drain_with_kills(
        &t,
        &[
            "amqp",
            &amqp_url,
            &exchange,
            "{aggregate_type}.{event_type}",
        ],
        total,
    )
    .await;
    assert!(kills >= 1);

    // The consumer's own database, with the inbox and its effects.
    let consumer_db = TestDb::new(Backend::Sqlite).await.unwrap();
    let deliveries = ch
        .basic_consume(
            queue.clone().into(),
            "checker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let effects = outbox_tests::fixtures::Recorder::<(String, u32)>::new();
    let inbox = Inbox::new(consumer_db.db.clone());
    let consumer = {
        let effects = effects.clone();
        tokio::spawn(async move {
            outbox_seaorm::consume_amqp(&inbox, "checker", deliveries, |envelope, _uow| {
                let effects = effects.clone();
                Box::pin(async move {
                    let e: Numbered = envelope.decode(&Default::default())?;
                    effects.push((e.key, e.n));
                    Ok(())
                })
            })
            .await
        })
    };
    wait_for("every effect", Duration::from_secs(30), || async {
        (effects.len() >= total).then_some(())
    })
    .await;
    // Give redelivered duplicates (if any) a moment to be seen and skipped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    consumer.abort();
    let marks = consumer_db
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT COUNT(*) AS n FROM outbox_inbox",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    eprintln!(
        "RabbitMQ: {total} events, {kills} relay kills, {} effects",
        effects.len()
    );
    assert_eq!(marks as usize, total);
    assert_once_in_order(&effects.all(), 8, 25);
    ch.queue_delete(queue.into(), Default::default())
        .await
        .unwrap();
    consumer_db.cleanup().await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_nats), ignore = "OUTBOX_TEST_NATS_URL is not set")]
async fn binary_mode_jetstream_events_are_valid_cloudevents() {
    let Some(nats_url) = server_url(Server::Nats) else {
        return;
    };
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    commit_numbered(&t.db, 1, 1).await;
    let client = async_nats::connect(&nats_url).await.unwrap();
    let js = jetstream::new(client.clone());
    let tag = Uuid::new_v4().simple().to_string();
    let stream = js
        .create_stream(stream::Config {
            name: format!("OUTBOX_BIN_{tag}"),
            subjects: vec![format!("b{tag}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    let route = Route::new(
        "binary",
        JetStreamPublisher::new(client, "/orders").mode(Mode::Binary),
    )
    .destination(&format!("b{tag}.{{event_type}}"))
    .unwrap();
    let relay = Relay::builder(t.db.clone())
        .registry(Registry::new([]).unwrap().with_route(route).unwrap())
        .build()
        .await
        .unwrap();
    assert_eq!(relay.drain().await.unwrap().delivered, 1);
    let consumer = stream
        .create_consumer(pull::Config::default())
        .await
        .unwrap();
    let msg = consumer
        .messages()
        .await
        .unwrap()
        .next()
        .await
        .unwrap()
        .unwrap();
    let event = sdk_event(msg.headers.as_ref().unwrap(), &msg.payload);
    assert_eq!(cloudevents::AttributesReader::ty(&event), "test.numbered");
    assert_eq!(
        cloudevents::AttributesReader::subject(&event),
        Some("agg-0")
    );
    assert_eq!(
        event.extension("aggregatetype").map(|v| v.to_string()),
        Some("counter".into())
    );
    js.delete_stream(format!("OUTBOX_BIN_{tag}")).await.unwrap();
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_nats), ignore = "OUTBOX_TEST_NATS_URL is not set")]
async fn awkward_aggregate_ids_stay_one_subject_token_and_one_header_value() {
    use outbox_seaorm::cloudevents::{Binding, from_binary};

    let Some(nats_url) = server_url(Server::Nats) else {
        return;
    };
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    let ids = AWKWARD_IDS;
    commit_awkward(&t.db, &ids).await;
    let client = async_nats::connect(&nats_url).await.unwrap();
    let js = jetstream::new(client.clone());
    let tag = Uuid::new_v4().simple().to_string();
    // One token after the prefix: an id that split the subject would match no stream.
    let stream = js
        .create_stream(stream::Config {
            name: format!("OUTBOX_IDS_{tag}"),
            subjects: vec![format!("i{tag}.*")],
            ..Default::default()
        })
        .await
        .unwrap();
    let route = Route::new(
        "ids",
        JetStreamPublisher::new(client, "/orders").mode(Mode::Binary),
    )
    .destination(&format!("i{tag}.{{aggregate_id}}"))
    .unwrap();
    let relay = Relay::builder(t.db.clone())
        .registry(Registry::new([]).unwrap().with_route(route).unwrap())
        .build()
        .await
        .unwrap();
    assert_eq!(relay.drain().await.unwrap().delivered, ids.len());
    let consumer = stream
        .create_consumer(pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..ids.len() {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("every event is in the stream")
            .unwrap()
            .unwrap();
        assert_eq!(msg.subject.split('.').count(), 2, "{}", msg.subject);
        let headers = msg.headers.clone().unwrap();
        let back = from_binary(
            Binding::Http,
            headers.iter().map(|(k, v)| {
                let name: &str = k.as_ref();
                (name.to_owned(), v[0].as_str().to_owned())
            }),
            &msg.payload,
        )
        .unwrap();
        assert_eq!(
            back.headers.extra.get("tenant"),
            Some(&format!("acme {}", back.aggregate_id)),
            "the extension header decodes"
        );
        // The SDK's HTTP binding reads the same headers (NATS headers follow it); it does not
        // percent-decode values (0.9), so decode its subject to compare.
        let event = sdk_event(&headers, &msg.payload);
        let subject = cloudevents::AttributesReader::subject(&event).unwrap();
        let subject = percent_encoding::percent_decode_str(subject)
            .decode_utf8()
            .unwrap();
        assert_eq!(subject, back.aggregate_id, "the SDK's ce-subject");
        // The subject's token reads back as the id too.
        let token = msg.subject.split_once('.').unwrap().1;
        let decoded = percent_encoding::percent_decode_str(token)
            .decode_utf8()
            .unwrap();
        assert_eq!(decoded, back.aggregate_id);
        seen.push(back.aggregate_id);
    }
    assert_each_awkward_id_once(seen);
    js.delete_stream(format!("OUTBOX_IDS_{tag}")).await.unwrap();
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_amqp), ignore = "OUTBOX_TEST_AMQP_URL is not set")]
async fn awkward_aggregate_ids_stay_one_routing_key_word_and_one_header_value() {
    use lapin::types::AMQPValue;
    use outbox_seaorm::cloudevents::{Binding, from_binary};

    let Some(amqp_url) = server_url(Server::Amqp) else {
        return;
    };
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    let mut seen = Vec::new();
    for d in awkward_ids_through_rabbitmq(&t, &amqp_url, "k", Mode::Binary).await {
        let headers = d.properties.headers().clone().unwrap_or_default();
        let strings = headers.inner().iter().filter_map(|(k, v)| match v {
            AMQPValue::LongString(s) => Some((k.to_string(), s.to_string())),
            _ => None,
        });
        let back = from_binary(Binding::Amqp, strings, &d.data).unwrap();
        let word = d.routing_key.as_str().split_once('.').unwrap().1.to_owned();
        let decoded = percent_encoding::percent_decode_str(&word)
            .decode_utf8()
            .unwrap();
        assert_eq!(
            decoded, back.aggregate_id,
            "the routing key's word is the id"
        );
        assert_eq!(
            back.headers.extra.get("tenant"),
            Some(&format!("acme {}", back.aggregate_id))
        );
        seen.push(back.aggregate_id);
    }
    assert_each_awkward_id_once(seen);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_amqp), ignore = "OUTBOX_TEST_AMQP_URL is not set")]
async fn structured_rabbitmq_events_parse_with_the_cloudevents_sdk_and_match_their_rows() {
    // The Rust CloudEvents SDK (0.9) has no AMQP binding (cloudevents/sdk-rust#188 was never
    // merged); structured mode is its JSON event format, so its own parser reads these bodies.
    use cloudevents::AttributesReader;

    let Some(amqp_url) = server_url(Server::Amqp) else {
        return;
    };
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    let admin = Admin::new(t.db.clone());
    let mut seen = Vec::new();
    for d in awkward_ids_through_rabbitmq(&t, &amqp_url, "s", Mode::Structured).await {
        assert_eq!(
            d.properties.content_type().as_ref().map(|s| s.as_str()),
            Some("application/cloudevents+json")
        );
        let event: cloudevents::Event = serde_json::from_slice(&d.data).unwrap();
        let id: Uuid = event.id().parse().unwrap();
        let row = admin
            .show(id)
            .await
            .unwrap()
            .expect("the event's id is a row");
        let s = &row.summary;
        assert_eq!(event.specversion(), cloudevents::event::SpecVersion::V10);
        assert_eq!(event.ty(), s.event_type);
        assert_eq!(event.source().as_str(), "/orders");
        assert_eq!(event.subject(), Some(s.aggregate_id.as_str()));
        assert_eq!(
            event.time().map(|t| t.timestamp_micros()),
            Some(s.occurred_at.timestamp_micros())
        );
        assert_eq!(event.datacontenttype(), Some("application/json"));
        let ext = |name: &str| event.extension(name).map(|v| v.to_string());
        assert_eq!(ext("aggregatetype"), Some(s.aggregate_type.clone()));
        assert_eq!(ext("eventversion"), Some(s.event_version.to_string()));
        assert_eq!(ext("aggregateposition"), Some(s.position.to_string()));
        assert_eq!(ext("tenant"), Some(format!("acme {}", s.aggregate_id)));
        match event.data() {
            Some(cloudevents::Data::Json(v)) => assert_eq!(v, &row.payload),
            other => panic!("JSON data expected, got {other:?}"),
        }
        seen.push(s.aggregate_id.clone());
    }
    assert_each_awkward_id_once(seen);
    t.cleanup().await;
}
