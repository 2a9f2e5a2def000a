//! Orders published to NATS JetStream as CloudEvents, consumed by a second process through an
//! inbox (exactly-once effects under at-least-once delivery).
//!
//! ```text
//! cargo run -p outbox-examples --example orders_nats      # needs NATS with JetStream
//! ```
//!
//! The first process is the orders service: it saves orders and their events in a SQLite file
//! and runs a relay whose route publishes every `order` event to
//! `orders.{aggregate_type}.{event_type}`. It starts the second process (this binary with
//! `consume`), the shipping service, which reads the `ORDERS` stream with a durable consumer
//! and records each event in its own SQLite file, in the same transaction as the inbox mark.
//! `NATS_URL` overrides `nats://127.0.0.1:4222`.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use outbox_seaorm::publish::nats::JetStreamPublisher;
use outbox_seaorm::{Admin, DomainEvent, Events, Registry, Relay, Route, UnitOfWork};
use outbox_seaorm::{Inbox, consume_jetstream};
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

const STREAM: &str = "ORDERS";
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    std::fs::create_dir_all("target")?;
    match std::env::args().nth(1).as_deref() {
        Some("consume") => consume(&nats_url).await,
        _ => produce(&nats_url).await,
    }
}

/// The orders service.
async fn produce(nats_url: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(nats_url).await?;
    let js = jetstream::new(client.clone());
    // A fresh stream per run; the duplicate window drops relay retries of one message.
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["orders.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;

    let mut consumer = tokio::process::Command::new(std::env::current_exe()?)
        .arg("consume")
        .kill_on_drop(true)
        .spawn()?;

    let db = open("target/orders-nats.db").await?;
    let route = Route::new(
        "orders-to-nats",
        JetStreamPublisher::new(client, "/orders-service"),
    )
    .aggregate_types(["order"])
    .destination("orders.{aggregate_type}.{event_type}")?;
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

    let admin = Admin::new(db.clone());
    while admin.counts().await?.pending > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "[orders]   {} messages published to {STREAM}",
        admin.counts().await?.delivered
    );
    relay.shutdown().await;

    let status = tokio::time::timeout(Duration::from_secs(30), consumer.wait()).await??;
    anyhow::ensure!(status.success(), "the shipping service failed");
    Ok(())
}

/// The shipping service, in a second process.
async fn consume(nats_url: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(nats_url).await?;
    let js = jetstream::new(client);
    let stream = loop {
        match js.get_stream(STREAM).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let consumer = stream
        .get_or_create_consumer(
            "shipping",
            pull::Config {
                durable_name: Some("shipping".into()),
                ..Default::default()
            },
        )
        .await?;
    let db = open("target/shipping-nats.db").await?;
    db.execute_unprepared("CREATE TABLE shipments (order_id TEXT, event TEXT)")
        .await?;
    let inbox = Inbox::new(db.clone());
    let messages = consumer.messages().await?;
    let handling = consume_jetstream(&inbox, "shipping", messages, |envelope, uow| {
        Box::pin(async move {
            println!(
                "[shipping] {} for order {} (message {}, trace {})",
                envelope.event_type,
                envelope.aggregate_id,
                envelope.message_id,
                envelope.headers.traceparent.as_deref().unwrap_or("-"),
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
        r = handling => { r?; anyhow::bail!("the stream ended early") }
        n = done => println!("[shipping] {} events recorded once each", n?),
    }
    Ok(())
}
