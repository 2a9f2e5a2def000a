//! Orders published to Kafka as CloudEvents, keyed by order id, consumed by a second process
//! through an inbox (exactly-once effects under at-least-once delivery).
//!
//! ```text
//! cargo run -p outbox-examples --example orders_kafka     # needs a Kafka broker on 9092
//! ```
//!
//! The first process is the orders service: it saves orders and their events in a SQLite file
//! and runs a relay whose route publishes every `order` event to a topic of three partitions,
//! `orders-<run>`, keyed by the order id (an order's events stay in one partition, in order).
//! It starts the second process (this binary with `consume <topic>`), the shipping service,
//! which reads the topic in a consumer group and records each event in its own SQLite file, in
//! the same transaction as the inbox mark; offsets are committed after that transaction.
//! `KAFKA_BOOTSTRAP` overrides `127.0.0.1:9092`.

use std::time::Duration;

use outbox_seaorm::cloudevents::Mode;
use outbox_seaorm::publish::kafka::rdkafka::ClientConfig;
use outbox_seaorm::publish::kafka::rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, TopicReplication,
};
use outbox_seaorm::publish::kafka::rdkafka::client::DefaultClientContext;
use outbox_seaorm::publish::kafka::{KafkaPublisher, Key};
use outbox_seaorm::{Admin, DomainEvent, Events, Registry, Relay, Route, UnitOfWork};
use outbox_seaorm::{Inbox, consume_kafka};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "order.placed")]
struct OrderPlaced {
    order_id: Uuid,
    customer: String,
}

#[derive(Debug, Serialize, Deserialize, DomainEvent)]
#[event(name = "order.shipped")]
struct OrderShipped {
    order_id: Uuid,
    carrier: String,
}

/// A plain domain struct as the aggregate: the service persists it itself.
#[derive(outbox_seaorm::DomainEvents)]
#[domain_events(aggregate = "order", id = id)]
struct Order {
    id: Uuid,
    #[events]
    events: Events,
}

const ORDERS: usize = 5;

async fn open(path: &str) -> anyhow::Result<DatabaseConnection> {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    let mut options = ConnectOptions::new(format!("sqlite://{path}?mode=rwc"));
    options.sqlx_logging(false);
    let db = Database::connect(options).await?;
    outbox_seaorm::schema::create_tables(&db).await?;
    Ok(db)
}

fn kafka_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    // SASL and TLS settings go here too, as librdkafka names them.
    config.set("bootstrap.servers", bootstrap);
    config
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    std::fs::create_dir_all("target")?;
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("consume") => consume(&bootstrap, &args[2]).await,
        _ => produce(&bootstrap).await,
    }
}

/// The orders service.
async fn produce(bootstrap: &str) -> anyhow::Result<()> {
    // A fresh topic per run: three partitions, orders spread over them by key.
    let topic = format!("orders-{}", Uuid::now_v7().simple());
    let admin: AdminClient<DefaultClientContext> = kafka_config(bootstrap).create()?;
    for created in admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        created.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }

    let mut consumer = tokio::process::Command::new(std::env::current_exe()?)
        .args(["consume", &topic])
        .kill_on_drop(true)
        .spawn()?;

    let db = open("target/orders-kafka.db").await?;
    let publisher = KafkaPublisher::new(kafka_config(bootstrap), "/orders-service")?
        .mode(Mode::Binary)
        .key(Key::AggregateId);
    let route = Route::new("orders-to-kafka", publisher)
        .aggregate_types(["order"])
        .destination(&topic)?;
    let relay = Relay::builder(db.clone())
        .registry(Registry::new([])?.with_route(route)?)
        .spawn()
        .await?;

    for i in 0..ORDERS {
        let mut order = Order {
            id: Uuid::now_v7(),
            events: Events::new(),
        };
        order.events.record(OrderPlaced {
            order_id: order.id,
            customer: format!("customer-{i}"),
        });
        order.events.record(OrderShipped {
            order_id: order.id,
            carrier: "DHL".into(),
        });
        let uow = UnitOfWork::begin(&db).await?;
        // ... the service writes its own rows on `&uow` here ...
        uow.stage(&mut order)?;
        uow.commit().await?;
        println!("[orders]   order {} placed and shipped", order.id);
    }

    let outbox = Admin::new(db.clone());
    while outbox.counts().await?.pending > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "[orders]   {} messages published to {topic}",
        outbox.counts().await?.delivered
    );
    relay.shutdown().await;

    let status = tokio::time::timeout(Duration::from_secs(60), consumer.wait()).await??;
    anyhow::ensure!(status.success(), "the shipping service failed");
    Ok(())
}

/// The shipping service, in a second process.
async fn consume(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let db = open("target/shipping-kafka.db").await?;
    db.execute_unprepared("CREATE TABLE shipments (order_id TEXT, event TEXT)")
        .await?;
    let inbox = Inbox::new(db.clone());
    let mut config = kafka_config(bootstrap);
    config.set("group.id", "shipping");
    let topics = [topic];
    let handling = consume_kafka(&inbox, "shipping", config, &topics, |envelope, uow| {
        Box::pin(async move {
            println!(
                "[shipping] {} for order {} (message {}, position {})",
                envelope.event_type, envelope.aggregate_id, envelope.message_id, envelope.position,
            );
            uow.execute_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Sqlite,
                "INSERT INTO shipments (order_id, event) VALUES (?, ?)",
                [envelope.aggregate_id.into(), envelope.event_type.into()],
            ))
            .await
            .map_err(outbox_seaorm::HandlerError::retry)?;
            Ok(())
        })
    });
    // Stop once every event is recorded (a real service would run until shut down).
    let done = async {
        loop {
            let n: i64 = db
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Sqlite,
                    "SELECT COUNT(*) AS n FROM shipments",
                ))
                .await?
                .map(|r| r.try_get("", "n"))
                .transpose()?
                .unwrap_or(0);
            if n as usize >= ORDERS * 2 {
                return anyhow::Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        r = handling => { r?; anyhow::bail!("the consumer stopped early") }
        n = done => println!("[shipping] {} events recorded once each", n?),
    }
    Ok(())
}
