//! RabbitMQ stopped while a relay publishes to it: deliveries retry and complete when it is
//! back. In a binary of its own, and only with `OUTBOX_TEST_RABBITMQ_RESTART` set: it stops the
//! broker it is pointed at (`rabbitmqctl stop_app` / `start_app`).

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use outbox_seaorm::publish::amqp::AmqpPublisher;
use outbox_seaorm::{Admin, Registry, Relay, RetryPolicy, Route};
use outbox_tests::fixtures::commit_numbered;
use outbox_tests::{Backend, Server, TestDb, server_url, wait_for};
use uuid::Uuid;

async fn rabbitmqctl(command: &str) {
    let status = tokio::process::Command::new("rabbitmqctl")
        .arg(command)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("run rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {command} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_amqp), ignore = "OUTBOX_TEST_AMQP_URL is not set")]
#[cfg_attr(
    all(outbox_amqp, not(outbox_rabbitmq_restart)),
    ignore = "OUTBOX_TEST_RABBITMQ_RESTART is not set (set it to 1 to let the test stop RabbitMQ)"
)]
async fn deliveries_retry_through_a_rabbitmq_outage_and_complete() {
    let Some(url) = server_url(Server::Amqp) else {
        return;
    };
    if server_url(Server::RabbitMqRestart).is_none() {
        return;
    }
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    let tag = Uuid::new_v4().simple().to_string();
    let (exchange, queue) = (format!("outage-{tag}"), format!("outage-{tag}"));
    {
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.exchange_declare(
            exchange.clone().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(queue.clone().into(), durable, FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            queue.clone().into(),
            exchange.clone().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        conn.close(200, "declared".into()).await.ok();
    }
    let total = commit_numbered(&t.db, 5, 6).await;

    rabbitmqctl("stop_app").await;
    let route = Route::new(
        "to-rabbitmq",
        AmqpPublisher::new(url.clone(), &exchange, "/outage-test").unwrap(),
    )
    .destination("{event_type}")
    .unwrap();
    let relay = Relay::builder(t.db.clone())
        .registry(Registry::new([]).unwrap().with_route(route).unwrap())
        .retry(
            RetryPolicy::exponential(Duration::from_millis(100))
                .max_delay(Duration::from_millis(500))
                .max_attempts(200),
        )
        .poll_interval(Duration::from_millis(50))
        .spawn()
        .await
        .unwrap();
    wait_for(
        "failed attempts while RabbitMQ is down",
        Duration::from_secs(30),
        || async { (relay.stats().retried >= 5).then_some(()) },
    )
    .await;
    let retried_during_outage = relay.stats().retried;
    rabbitmqctl("start_app").await;

    let admin = Admin::new(t.db.clone());
    wait_for(
        "delivery after the outage",
        Duration::from_secs(60),
        || async {
            let c = admin.counts().await.unwrap();
            (c.pending == 0 && c.delivered as usize == total).then_some(())
        },
    )
    .await;
    relay.shutdown().await;

    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.clone().into(),
            "checker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut ids = HashSet::new();
    while ids.len() < total {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("every message is in the queue")
            .unwrap()
            .unwrap();
        ids.insert(d.properties.message_id().clone().unwrap().to_string());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    eprintln!("RabbitMQ outage: {total} events, {retried_during_outage} retries while it was down");
    assert_eq!(ids.len(), total);
    ch.queue_delete(queue.into(), Default::default()).await.ok();
    ch.exchange_delete(exchange.into(), Default::default())
        .await
        .ok();
    t.cleanup().await;
}
