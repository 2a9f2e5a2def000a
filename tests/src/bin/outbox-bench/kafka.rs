//! Relay → Kafka against the limit: a plain producer loop sending the same records (same
//! value, key and headers, the same idempotent `acks=all` producer settings) to the same broker,
//! every delivery report awaited, as many in flight as librdkafka takes. Variants alternate
//! round by round; each round writes to a fresh 3-partition topic.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use outbox_seaorm::cloudevents;
use outbox_seaorm::publish::kafka::KafkaPublisher;
use outbox_seaorm::publish::kafka::rdkafka::ClientConfig;
use outbox_seaorm::publish::kafka::rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, TopicReplication,
};
use outbox_seaorm::publish::kafka::rdkafka::client::DefaultClientContext;
use outbox_seaorm::publish::kafka::rdkafka::message::{Header, OwnedHeaders};
use outbox_seaorm::publish::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use outbox_seaorm::publish::kafka::rdkafka::util::Timeout;
use outbox_seaorm::{DeliveredRows, Registry, Relay, Route};
use outbox_tests::Backend;

use crate::backlog::{pending_left, reset, seed};
use crate::{env_num, fresh, server_version};

fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

async fn topic(bootstrap: &str) -> anyhow::Result<String> {
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = config(bootstrap).create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(&name, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
    }
    Ok(name)
}

pub(crate) async fn suite(backend: Backend) -> anyhow::Result<()> {
    let bootstrap = std::env::var("OUTBOX_TEST_KAFKA_URL")
        .map_err(|_| anyhow::anyhow!("OUTBOX_TEST_KAFKA_URL is not set"))?;
    let t = fresh(backend).await?;
    let n = env_num("BENCH_KAFKA_EVENTS", 20_000.0) as u64;
    let aggregates = env_num("BENCH_KAFKA_AGGREGATES", 1000.0) as u64;
    let rounds = env_num("BENCH_ROUNDS", 3.0).max(1.0) as usize;
    println!(
        "\n## relay → Kafka vs a plain producer loop, {backend:?} ({}), {n} events over \
         {aggregates} aggregates, 3 partitions, structured CloudEvents, relay ordered per \
         aggregate, {rounds} alternating rounds",
        server_version(&t.db).await
    );
    let (mut relay_secs, mut plain_secs) = (0.0, 0.0);
    for round in 0..rounds {
        for relay_first in [round % 2 == 0, round % 2 != 0] {
            if relay_first {
                relay_secs += relay_round(&t, &bootstrap, n, aggregates).await?;
            } else {
                plain_secs += plain_round(&t, &bootstrap, n, aggregates).await?;
            }
        }
    }
    let total = (n * rounds as u64) as f64;
    println!("| variant | events/s | vs plain producer |");
    println!("|---|---:|---:|");
    println!(
        "| plain producer loop (the limit) | {:.0} | 100% |",
        total / plain_secs
    );
    println!(
        "| relay → KafkaPublisher, 1 relay, batch 100 | {:.0} | {:.0}% |",
        total / relay_secs,
        100.0 * plain_secs / relay_secs
    );
    t.cleanup().await;
    Ok(())
}

async fn relay_round(
    t: &outbox_tests::TestDb,
    bootstrap: &str,
    n: u64,
    aggregates: u64,
) -> anyhow::Result<f64> {
    reset(&t.db).await?;
    seed(&t.db, n, aggregates, "pending").await?;
    let topic = topic(bootstrap).await?;
    let route = Route::new(
        "bench-kafka",
        KafkaPublisher::new(config(bootstrap), "/bench")?,
    )
    .destination(&topic)?;
    let relay = Relay::builder(t.connect_again().await)
        .id("bench-kafka")
        .registry(Registry::new([])?.with_route(route)?)
        .batch_size(100)
        .delivered_rows(DeliveredRows::Delete)
        .poll_interval(Duration::from_millis(20))
        .without_retention()
        .build()
        .await?;
    let start = Instant::now();
    let handle = relay.spawn();
    loop {
        let s = handle.stats();
        if s.delivered + s.dead >= n {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("relay → Kafka stalled: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let dead = handle.stats().dead;
    handle.shutdown().await;
    anyhow::ensure!(dead == 0, "{dead} messages went dead");
    anyhow::ensure!(!pending_left(&t.db).await?, "pending messages left");
    Ok(secs)
}

/// The same records as the relay sends, built up front (the loop measures sending only).
async fn plain_round(
    t: &outbox_tests::TestDb,
    bootstrap: &str,
    n: u64,
    aggregates: u64,
) -> anyhow::Result<f64> {
    let _ = t;
    let topic = topic(bootstrap).await?;
    let mut c = config(bootstrap);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "20000");
    let producer: FutureProducer = c.create()?;
    let records: Vec<(String, Vec<u8>, String)> = (1..=n)
        .map(|i| {
            let mut envelope =
                outbox_seaorm::Envelope::new(uuid::Uuid::now_v7(), "bench.noop", 1, r#"{"n":1}"#);
            envelope.sequence = i as i64;
            envelope.position = (i / aggregates + 1) as i64;
            envelope.aggregate_type = "bench".into();
            envelope.aggregate_id = (i % aggregates).to_string();
            let value = cloudevents::to_structured(&envelope, "/bench").expect("JSON payload");
            (
                envelope.aggregate_id,
                value,
                envelope.message_id.to_string(),
            )
        })
        .collect();
    let start = Instant::now();
    let sends = futures_util::stream::iter(records.iter().map(|(key, value, id)| {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "content-type",
                value: Some(cloudevents::STRUCTURED_CONTENT_TYPE),
            })
            .insert(Header {
                key: "id",
                value: Some(id.as_str()),
            });
        producer.send(
            FutureRecord::to(&topic)
                .key(key.as_str())
                .payload(value.as_slice())
                .headers(headers),
            Timeout::After(Duration::from_secs(5)),
        )
    }))
    .buffer_unordered(10_000);
    let failed = sends
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(failed == 0, "{failed} plain sends failed");
    Ok(secs)
}
