//! Delivery to Kafka (a tansu broker in CI): the wire format as the CloudEvents SDK's Kafka
//! binding reads it, order per aggregate through relays killed mid-run, the failures of a
//! delivery (unknown topic, broker down, record too large), a broker restarted mid-run, and the
//! inbox consumer across a restart and a rebalance.
//!
//! Needs `OUTBOX_TEST_KAFKA_URL` (the bootstrap servers, `127.0.0.1:9092`); the restart test
//! needs `OUTBOX_TEST_TANSU` instead (the `tansu` binary: it starts and restarts a broker of its
//! own, on a port free at the time). Each test creates its own topics.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use cloudevents::AttributesReader;
use cloudevents::binding::rdkafka::MessageExt;
use outbox_seaorm::cloudevents::Mode;
use outbox_seaorm::publish::kafka::rdkafka::ClientConfig;
use outbox_seaorm::publish::kafka::rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, TopicReplication,
};
use outbox_seaorm::publish::kafka::rdkafka::client::DefaultClientContext;
use outbox_seaorm::publish::kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use outbox_seaorm::publish::kafka::rdkafka::message::{Headers, Message, OwnedMessage};
use outbox_seaorm::publish::kafka::{KafkaPublisher, Key};
use outbox_seaorm::{Admin, Inbox, Registry, Relay, RetryPolicy, Route};
use outbox_tests::fixtures::{AWKWARD_IDS, Numbered, commit_awkward, commit_numbered};
use outbox_tests::{Backend, Server, TestDb, kill_on_progress, server_url, wait_for};
use tokio::process::{Child, Command};
use uuid::Uuid;

fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// A fresh topic of `partitions` partitions.
async fn topic(bootstrap: &str, partitions: i32) -> String {
    let name = format!("outbox-test-{}", Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = config(bootstrap).create().unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for r in results {
        r.expect("topic created");
    }
    name
}

/// A consumer of `topic` from its beginning, in a group of its own.
fn reader(bootstrap: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = config(bootstrap)
        .set("group.id", format!("reader-{}", Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// The next `n` records of `consumer`, failing after 30 s without one.
async fn read(consumer: &StreamConsumer, n: usize) -> Vec<OwnedMessage> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} records arrived", out.len()))
            .expect("a record");
        out.push(m.detach());
    }
    out
}

fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
}

fn relay_to(db: &sea_orm::DatabaseConnection, route: Route) -> outbox_seaorm::RelayBuilder {
    Relay::builder(db.clone())
        .registry(Registry::new([]).unwrap().with_route(route).unwrap())
        .retry(RetryPolicy::exponential(Duration::from_millis(50)).max_attempts(50))
        .poll_interval(Duration::from_millis(50))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_kafka), ignore = "OUTBOX_TEST_KAFKA_URL is not set")]
async fn binary_and_structured_records_read_with_the_cloudevents_sdk() {
    let Some(bootstrap) = server_url(Server::Kafka) else {
        return;
    };
    let n = AWKWARD_IDS.len();
    for mode in [Mode::Binary, Mode::Structured] {
        let t = TestDb::new(Backend::Sqlite).await.unwrap();
        commit_awkward(&t.db, &AWKWARD_IDS).await;
        let topic = topic(&bootstrap, 3).await;
        let publisher = KafkaPublisher::new(config(&bootstrap), "/orders")
            .unwrap()
            .mode(mode);
        let route = Route::new(format!("to-kafka-{mode:?}").to_lowercase(), publisher)
            .destination(&topic)
            .unwrap();
        let relay = relay_to(&t.db, route).build().await.unwrap();
        assert_eq!(relay.drain().await.unwrap().delivered, n, "{mode:?}");

        let records = read(&reader(&bootstrap, &topic), n).await;
        let mut subjects = Vec::new();
        for m in &records {
            let event = m
                .to_event()
                .expect("a CloudEvent for the SDK's Kafka binding");
            assert_eq!(event.source().as_str(), "/orders");
            let subject = event.subject().expect("subject").to_owned();
            // The key is the aggregate id, as is: one aggregate, one partition.
            assert_eq!(m.key(), Some(subject.as_bytes()), "{mode:?}");
            // The message id as a plain header too.
            assert_eq!(header(m, "id").as_deref(), Some(event.id()), "{mode:?}");
            assert!(event.extension("aggregatetype").is_some(), "{mode:?}");
            assert_eq!(
                event.extension("aggregateposition").map(|v| v.to_string()),
                Some("1".to_owned())
            );
            let content_type = header(m, "content-type").unwrap();
            match mode {
                Mode::Binary => {
                    assert_eq!(content_type, "application/json");
                    assert_eq!(header(m, "ce_specversion").as_deref(), Some("1.0"));
                    // The value is the payload itself.
                    let value: serde_json::Value =
                        serde_json::from_slice(m.payload().unwrap()).unwrap();
                    assert!(value.is_object(), "{value}");
                }
                Mode::Structured => {
                    assert_eq!(content_type, "application/cloudevents+json");
                    assert_eq!(header(m, "ce_specversion"), None);
                }
                other => panic!("a mode this test does not know: {other:?}"),
            }
            subjects.push(subject);
        }
        subjects.sort();
        let mut want: Vec<String> = AWKWARD_IDS.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(subjects, want, "each awkward id once");
        t.cleanup().await;
    }
}

fn spawn_worker(db_url: &str, name: &str, bootstrap: &str, topic: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_relay-worker"))
        .args([db_url, name, "700", "0", "kafka", bootstrap, topic])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn relay-worker")
}

/// Per key, the `n`s in arrival order, each message's first arrival only, must be 1, 2, 3, ...
/// A relay killed after the broker took a record and before the outbox marked it sends it
/// again: the later copies may come, never an earlier event after a later one's first copy.
fn assert_every_event_in_order(records: &[OwnedMessage], keys: usize, per_key: u32) -> usize {
    let mut seen = HashSet::new();
    let mut by_key: HashMap<String, Vec<u32>> = HashMap::new();
    let mut duplicates = 0;
    for m in records {
        let id = header(m, "id").unwrap();
        if !seen.insert(id) {
            duplicates += 1;
            continue;
        }
        let event = m.to_event().unwrap();
        let data: Numbered = match event.data() {
            Some(cloudevents::Data::Json(v)) => serde_json::from_value(v.clone()).unwrap(),
            other => panic!("unexpected data {other:?}"),
        };
        assert_eq!(m.key(), Some(data.key.as_bytes()));
        by_key.entry(data.key).or_default().push(data.n);
    }
    assert_eq!(by_key.len(), keys);
    for (k, ns) in by_key {
        assert_eq!(
            ns,
            (1..=per_key).collect::<Vec<_>>(),
            "first arrivals of {k}"
        );
    }
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_kafka), ignore = "OUTBOX_TEST_KAFKA_URL is not set")]
async fn every_event_in_order_per_aggregate_through_relays_killed_mid_run() {
    let Some(bootstrap) = server_url(Server::Kafka) else {
        return;
    };
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    let total = commit_numbered(&t.db, 20, 100).await;
    let topic = topic(&bootstrap, 3).await;
    let consumer = reader(&bootstrap, &topic);

    let admin = Admin::new(t.db.clone());
    let mut workers: Vec<Child> = (0..2)
        .map(|i| spawn_worker(&t.url, &format!("w{i}"), &bootstrap, &topic))
        .collect();
    let kills = kill_on_progress(&admin, &mut workers, 150, 8, |n| {
        spawn_worker(&t.url, &format!("w{n}"), &bootstrap, &topic)
    })
    .await;
    wait_for("the outbox to drain", Duration::from_secs(120), || async {
        let c = admin.counts().await.unwrap();
        (c.pending == 0 && c.delivered as usize == total).then_some(())
    })
    .await;
    for w in &mut workers {
        w.start_kill().ok();
        w.wait().await.ok();
    }
    assert!(kills >= 1);

    // Every record the log holds: at least `total`, the rest copies sent again after a kill.
    let mut records = read(&consumer, total).await;
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
        records.push(m.detach());
    }
    let partitions: HashSet<i32> = records.iter().map(|m| m.partition()).collect();
    let duplicates = assert_every_event_in_order(&records, 20, 100);
    eprintln!(
        "Kafka: {total} events, {kills} relay kills, {} records, {duplicates} copies sent again, \
         partitions {partitions:?}",
        records.len()
    );
    assert_eq!(partitions.len(), 3, "20 keys spread over the 3 partitions");
    t.cleanup().await;
}

/// The message's last error and status, read back from the outbox.
async fn last_error(db: &sea_orm::DatabaseConnection) -> (String, String) {
    let admin = Admin::new(db.clone());
    let m = admin
        .list(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("a message");
    (m.status, m.last_error.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_kafka), ignore = "OUTBOX_TEST_KAFKA_URL is not set")]
async fn an_unknown_topic_is_retried_and_delivered_once_it_exists() {
    let Some(bootstrap) = server_url(Server::Kafka) else {
        return;
    };
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    commit_numbered(&t.db, 1, 1).await;
    // A name no test creates, then created.
    let missing = format!("outbox-test-missing-{}", Uuid::new_v4().simple());
    let mut c = config(&bootstrap);
    c.set("message.timeout.ms", "3000")
        .set("allow.auto.create.topics", "false");
    let route = Route::new("to-missing", KafkaPublisher::new(c, "/t").unwrap())
        .destination(&missing)
        .unwrap();
    let relay = relay_to(&t.db, route).build().await.unwrap();
    let report = relay.run_once().await.unwrap();
    if report.delivered == 1 {
        // A broker that creates topics on first use (auto.create.topics.enable).
        eprintln!("the broker created `{missing}` on first use; nothing to retry");
        t.cleanup().await;
        return;
    }
    assert_eq!((report.retried, report.dead), (1, 0), "{report:?}");
    let (status, error) = last_error(&t.db).await;
    assert_eq!(status, "pending");
    assert!(error.contains("does not exist"), "{error}");

    let admin: AdminClient<DefaultClientContext> = config(&bootstrap).create().unwrap();
    for r in admin
        .create_topics(
            &[NewTopic::new(&missing, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
    wait_for(
        "delivery once the topic exists",
        Duration::from_secs(60),
        || async {
            relay.run_once().await.unwrap();
            let c = Admin::new(t.db.clone()).counts().await.unwrap();
            (c.delivered == 1).then_some(())
        },
    )
    .await;
    assert_eq!(read(&reader(&bootstrap, &missing), 1).await.len(), 1);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_kafka), ignore = "OUTBOX_TEST_KAFKA_URL is not set")]
async fn a_broker_that_cannot_be_reached_is_retried_never_lost() {
    // Port 1: nothing listens.
    let Some(_) = server_url(Server::Kafka) else {
        return;
    };
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    commit_numbered(&t.db, 1, 1).await;
    let mut c = config("127.0.0.1:1");
    c.set("message.timeout.ms", "1500");
    let route = Route::new("to-nowhere", KafkaPublisher::new(c, "/t").unwrap())
        .destination("orders")
        .unwrap();
    let relay = relay_to(&t.db, route).build().await.unwrap();
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.delivered, report.retried, report.dead), (0, 1, 0));
    let (status, error) = last_error(&t.db).await;
    assert_eq!(status, "pending");
    assert!(error.contains("brokers down or unreachable"), "{error}");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_kafka), ignore = "OUTBOX_TEST_KAFKA_URL is not set")]
async fn a_record_over_the_size_limit_is_dead_and_the_others_are_delivered() {
    let Some(bootstrap) = server_url(Server::Kafka) else {
        return;
    };
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    let topic = topic(&bootstrap, 1).await;
    // A large event between two small ones of other aggregates.
    let uow = outbox_seaorm::UnitOfWork::begin(&t.db).await.unwrap();
    for (key, pad) in [("small-1", 0), ("large", 20_000), ("small-2", 0)] {
        let e = Numbered {
            key: format!("{key}{}", "x".repeat(pad)),
            n: 1,
        };
        uow.record("counter", key, e, Default::default()).unwrap();
    }
    uow.commit().await.unwrap();
    let mut c = config(&bootstrap);
    c.set("message.max.bytes", "10000");
    let route = Route::new("to-kafka", KafkaPublisher::new(c, "/t").unwrap())
        .destination(&topic)
        .unwrap();
    let relay = relay_to(&t.db, route).build().await.unwrap();
    let report = relay.drain().await.unwrap();
    assert_eq!((report.delivered, report.dead), (2, 1), "{report:?}");
    let dead = Admin::new(t.db.clone()).dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let text = format!("{dead:?}");
    assert!(text.contains("over the size limit"), "{text}");
    assert_eq!(read(&reader(&bootstrap, &topic), 2).await.len(), 2);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_kafka), ignore = "OUTBOX_TEST_KAFKA_URL is not set")]
async fn keys_follow_the_setting_and_awkward_ids_make_valid_topics() {
    let Some(bootstrap) = server_url(Server::Kafka) else {
        return;
    };
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    commit_numbered(&t.db, 2, 1).await;
    let topic = topic(&bootstrap, 1).await;
    let publisher = KafkaPublisher::new(config(&bootstrap), "/t")
        .unwrap()
        .key(Key::AggregateTypeAndId);
    let route = Route::new("typed-keys", publisher)
        .destination(&topic)
        .unwrap();
    let relay = relay_to(&t.db, route).build().await.unwrap();
    assert_eq!(relay.drain().await.unwrap().delivered, 2);
    let mut keys: Vec<Vec<u8>> = read(&reader(&bootstrap, &topic), 2)
        .await
        .iter()
        .map(|m| m.key().unwrap().to_vec())
        .collect();
    keys.sort();
    assert_eq!(keys, [b"counter/agg-0".to_vec(), b"counter/agg-1".to_vec()]);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_kafka), ignore = "OUTBOX_TEST_KAFKA_URL is not set")]
async fn a_topic_name_kafka_refuses_is_dead_at_once() {
    let Some(bootstrap) = server_url(Server::Kafka) else {
        return;
    };
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    commit_numbered(&t.db, 1, 1).await;
    let route = Route::new(
        "bad-topic",
        KafkaPublisher::new(config(&bootstrap), "/t").unwrap(),
    )
    .destination("orders/{aggregate_type}")
    .unwrap();
    let relay = relay_to(&t.db, route).build().await.unwrap();
    let report = relay.run_once().await.unwrap();
    assert_eq!(report.dead, 1, "{report:?}");
    let dead = format!(
        "{:?}",
        Admin::new(t.db.clone()).dead_letters(1).await.unwrap()
    );
    assert!(dead.contains("not a valid Kafka topic name"), "{dead}");
    t.cleanup().await;
}

/// Records through `consume_kafka` into the consumer's inbox; each effect is a row of
/// `effects` written in the inbox transaction (an in-memory list would count the effect of a
/// transaction that a restart rolled back).
fn spawn_inbox_consumer(
    inbox: Inbox,
    bootstrap: &str,
    group: &str,
    topic: &str,
    member: &'static str,
) -> tokio::task::JoinHandle<()> {
    let mut c = config(bootstrap);
    c.set("group.id", group)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    let topic = topic.to_owned();
    tokio::spawn(async move {
        outbox_seaorm::consume_kafka(&inbox, "checker", c, &[&topic], |envelope, uow| {
            Box::pin(async move {
                use sea_orm::ConnectionTrait;
                let e: Numbered = envelope.decode(&Default::default())?;
                uow.execute_raw(sea_orm::Statement::from_sql_and_values(
                    sea_orm::DbBackend::Sqlite,
                    "INSERT INTO effects (k, n, member) VALUES (?, ?, ?)",
                    [e.key.into(), e.n.into(), member.into()],
                ))
                .await
                .map_err(outbox_seaorm::HandlerError::retry)?;
                Ok(())
            })
        })
        .await
        .unwrap();
    })
}

/// How many effects `member` has had.
async fn handled_by(db: &sea_orm::DatabaseConnection, member: &str) -> usize {
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Sqlite,
            "SELECT COUNT(*) AS n FROM effects WHERE member = ?",
            [member.into()],
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap() as usize
}

/// Events `first..=last` of each of `agg-0`..`agg-{aggregates - 1}`, one transaction per number.
async fn commit_range(db: &sea_orm::DatabaseConnection, aggregates: u32, first: u32, last: u32) {
    for n in first..=last {
        let uow = outbox_seaorm::UnitOfWork::begin(db).await.unwrap();
        for i in 0..aggregates {
            let key = format!("agg-{i}");
            uow.record(
                "counter",
                key.clone(),
                Numbered { key, n },
                Default::default(),
            )
            .unwrap();
        }
        uow.commit().await.unwrap();
    }
}

/// The effects so far, in the order they committed.
async fn effects(db: &sea_orm::DatabaseConnection) -> Vec<(String, u32)> {
    use sea_orm::ConnectionTrait;
    db.query_all_raw(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Sqlite,
        "SELECT k, n FROM effects ORDER BY rowid",
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.try_get("", "k").unwrap(), r.try_get("", "n").unwrap()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_kafka), ignore = "OUTBOX_TEST_KAFKA_URL is not set")]
async fn inbox_consumer_has_effects_once_across_a_restart_and_a_rebalance() {
    use sea_orm::ConnectionTrait;
    let Some(bootstrap) = server_url(Server::Kafka) else {
        return;
    };
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    // Numbers 1..=30 now, 31..=50 while the third member joins (so that it has records to
    // handle whichever partition it is given).
    commit_range(&t.db, 6, 1, 30).await;
    let total = 6 * 50;
    let topic = topic(&bootstrap, 3).await;
    // One record per batch. tansu 0.6.0 answers a fetch that starts inside a record batch with
    // the batches after it (seen in its debug log: fetch_offset 41, first base_offset 42), so a
    // member resuming at a committed offset mid-batch never sees the rest of that batch: one
    // effect missing in about one run in three under load. A Kafka broker returns the batch
    // holding the offset and the client skips what comes before; what this test checks is the
    // consumer's side, so it keeps batch boundaries where tansu reads them right.
    let mut producer = config(&bootstrap);
    producer.set("batch.num.messages", "1");
    let route = Route::new("to-kafka", KafkaPublisher::new(producer, "/t").unwrap())
        .destination(&topic)
        .unwrap();
    let relay = relay_to(&t.db, route).spawn().await.unwrap();

    let consumer_db = TestDb::new(Backend::Sqlite).await.unwrap();
    consumer_db
        .db
        .execute_unprepared(
            "CREATE TABLE effects (k TEXT NOT NULL, n INTEGER NOT NULL, member TEXT NOT NULL)",
        )
        .await
        .unwrap();
    let inbox = Inbox::new(consumer_db.db.clone());
    let group = format!("inbox-{}", Uuid::new_v4().simple());
    let count = || async { effects(&consumer_db.db).await.len() };
    let first = spawn_inbox_consumer(inbox.clone(), &bootstrap, &group, &topic, "first");
    wait_for("some effects", Duration::from_secs(60), || async {
        (count().await >= 40).then_some(())
    })
    .await;
    // A restart: the consumer dies mid-run (its uncommitted records come again).
    first.abort();
    first.await.ok();
    let second = spawn_inbox_consumer(inbox.clone(), &bootstrap, &group, &topic, "second");
    wait_for("more effects", Duration::from_secs(60), || async {
        (count().await >= 120).then_some(())
    })
    .await;
    // A rebalance: a third member joins, handles records of the partitions it was given, then
    // leaves. It leaves only once it has handled some: a member that vanishes while its join
    // is still under way keeps its partitions on tansu, which does not expire it on the
    // session timeout (a Kafka broker would, after 6 s).
    let third = spawn_inbox_consumer(inbox.clone(), &bootstrap, &group, &topic, "third");
    // Trickled over 20 s: committed at once, the second member handled them all before the
    // third had joined (seen in CI), and the third had nothing left to handle.
    let trickle = tokio::spawn({
        let db = t.db.clone();
        async move {
            for n in 31..=50 {
                commit_range(&db, 6, n, n).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    wait_for(
        "effects of the third member",
        Duration::from_secs(60),
        || async { (handled_by(&consumer_db.db, "third").await >= 3).then_some(()) },
    )
    .await;
    third.abort();
    third.await.ok();
    trickle.await.unwrap();
    wait_for("every effect", Duration::from_secs(90), || async {
        (count().await >= total).then_some(())
    })
    .await;
    // Redelivered records settle; none may add an effect.
    tokio::time::sleep(Duration::from_secs(3)).await;
    second.abort();
    relay.shutdown().await;

    let mut by_key: HashMap<String, Vec<u32>> = HashMap::new();
    for (k, n) in effects(&consumer_db.db).await {
        by_key.entry(k).or_default().push(n);
    }
    assert_eq!(by_key.len(), 6);
    for (k, ns) in by_key {
        assert_eq!(
            ns,
            (1..=50).collect::<Vec<_>>(),
            "effects of {k}: once each, in order"
        );
    }
    consumer_db.cleanup().await;
    t.cleanup().await;
}

/// A tansu broker of the test's own on `port`, its log in memory.
fn start_tansu(bin: &str, port: u16) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start tansu")
}

async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Its broker keeps its log in memory, so a restart empties it: the test reads what was
/// delivered before the restart first (the relay stopped meanwhile), then stops the broker,
/// starts the relay against it while it is down, starts it again and re-creates the topic. What
/// it checks is the relay's side: deliveries failing during the outage are retried, the producer
/// recovers, and the records before and after the restart together are every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_tansu), ignore = "OUTBOX_TEST_TANSU is not set")]
async fn a_broker_restarted_mid_run_loses_nothing() {
    let Some(bin) = server_url(Server::Tansu) else {
        return;
    };
    // A free port, not a fixed one: a broker left running by an interrupted run (a killed test
    // process does not kill its children) would answer in this one's place, never go down, and
    // fail the test for a reason that is not the relay's.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let bootstrap = format!("127.0.0.1:{port}");
    let mut broker = start_tansu(&bin, port);
    wait_for("tansu up", Duration::from_secs(30), || async {
        port_open(port).await.then_some(())
    })
    .await;

    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    let total = commit_numbered(&t.db, 10, 60).await;
    let topic = topic(&bootstrap, 3).await;
    let relay_with = |c: ClientConfig| {
        let route = Route::new("to-kafka", KafkaPublisher::new(c, "/t").unwrap())
            .destination(&topic)
            .unwrap();
        Relay::builder(t.db.clone())
            .registry(Registry::new([]).unwrap().with_route(route).unwrap())
            .retry(
                RetryPolicy::exponential(Duration::from_millis(100))
                    .max_delay(Duration::from_millis(500))
                    .max_attempts(500),
            )
            .poll_interval(Duration::from_millis(50))
            .spawn()
    };
    let mut c = config(&bootstrap);
    c.set("message.timeout.ms", "3000");
    let admin = Admin::new(t.db.clone());
    let relay = relay_with(c.clone()).await.unwrap();
    wait_for("a third delivered", Duration::from_secs(60), || async {
        let c = admin.counts().await.unwrap();
        (c.delivered as usize >= total / 3).then_some(())
    })
    .await;
    relay.shutdown().await;
    let before = admin.counts().await.unwrap().delivered as usize;
    let consumer = reader(&bootstrap, &topic);
    let mut records = read(&consumer, before).await;
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
        records.push(m.detach());
    }
    drop(consumer);

    broker.start_kill().unwrap();
    broker.wait().await.unwrap();
    let relay = relay_with(c).await.unwrap();
    wait_for(
        "failures while the broker is down",
        Duration::from_secs(30),
        || async { (relay.stats().retried >= 3).then_some(()) },
    )
    .await;
    assert_eq!(admin.counts().await.unwrap().delivered as usize, before);
    let _broker = start_tansu(&bin, port);
    wait_for("tansu up again", Duration::from_secs(30), || async {
        port_open(port).await.then_some(())
    })
    .await;
    // Its memory is gone: the topic again, as an operator would create it.
    let admin_client: AdminClient<DefaultClientContext> = config(&bootstrap).create().unwrap();
    for r in admin_client
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
    wait_for(
        "delivery after the restart",
        Duration::from_secs(120),
        || async {
            let c = admin.counts().await.unwrap();
            (c.pending == 0 && c.delivered as usize == total).then_some(())
        },
    )
    .await;
    let retried = relay.stats().retried;
    relay.shutdown().await;

    let consumer = reader(&bootstrap, &topic);
    records.extend(read(&consumer, total - before).await);
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
        records.push(m.detach());
    }
    let duplicates = assert_every_event_in_order(&records, 10, 60);
    eprintln!(
        "Kafka restart: {total} events, {before} delivered before the restart, {retried} \
         retries, {} records, {duplicates} copies",
        records.len()
    );
    t.cleanup().await;
}
