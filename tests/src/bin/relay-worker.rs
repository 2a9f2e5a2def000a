//! A relay in a process of its own, for the fault tests, until it is killed.
//!
//! ```text
//! relay-worker <database url> <relay id> <lease ms> <handler delay ms>
//!     delivers `test.numbered` events to a handler that appends them to `relay_log`
//! relay-worker <database url> <relay id> <lease ms> <delay ms> nats <nats url> <subject template>
//! relay-worker <database url> <relay id> <lease ms> <delay ms> amqp <amqp uri> <exchange> <routing key template>
//! relay-worker <database url> <relay id> <lease ms> <delay ms> kafka <bootstrap servers> <topic template>
//!     publishes every event to the broker instead
//! ```
//!
//! Environment: `RELAY_BATCH` (default 10), `RELAY_CONCURRENCY` (default 16),
//! `RELAY_POISON=<key>` (the process aborts when it handles an event of that aggregate key),
//! `RELAY_POOL` (default 8).

use std::time::Duration;

use outbox_seaorm::publish::amqp::AmqpPublisher;
use outbox_seaorm::publish::kafka::KafkaPublisher;
use outbox_seaorm::publish::kafka::rdkafka::ClientConfig;
use outbox_seaorm::publish::nats::JetStreamPublisher;
use outbox_seaorm::{
    HandlerContext, HandlerContextExt, HandlerEntry, Registry, Relay, RetryPolicy, Route,
};
use outbox_tests::fixtures::{Numbered, log_delivery};
use sea_orm::{ConnectOptions, Database};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (url, id, lease_ms, delay_ms, broker) = match &args[1..] {
        [url, id, lease, delay, broker @ ..] => (url, id, lease, delay, broker),
        _ => anyhow::bail!("usage: see the module documentation"),
    };
    let lease = Duration::from_millis(lease_ms.parse()?);
    let delay = Duration::from_millis(delay_ms.parse()?);
    let env = |name: &str, default: u32| -> u32 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let poison = std::env::var("RELAY_POISON").ok();
    let mut opts = ConnectOptions::new(url.clone());
    opts.sqlx_logging(false)
        .max_connections(env("RELAY_POOL", 8))
        .acquire_timeout(Duration::from_secs(60));
    let db = Database::connect(opts).await?;

    let registry = match broker {
        [] => {
            let relay_id = id.clone();
            Registry::new([HandlerEntry::new(
                "log",
                move |e: Numbered, ctx: HandlerContext| {
                    let relay_id = relay_id.clone();
                    let poison = poison.clone();
                    async move {
                        if poison.as_deref() == Some(e.key.as_str()) {
                            // A handler that takes its process down (an abort, an OOM kill).
                            std::process::abort();
                        }
                        log_delivery(ctx.db()?, ctx.message_id(), &e, &relay_id).await?;
                        tokio::time::sleep(delay).await;
                        anyhow::Ok(())
                    }
                },
            )])?
        }
        [kind, nats_url, subject] if kind == "nats" => {
            let client = async_nats::connect(nats_url.as_str()).await?;
            let publisher = JetStreamPublisher::new(client, "/relay-worker");
            Registry::new([])?.with_route(Route::new("to-nats", publisher).destination(subject)?)?
        }
        [kind, uri, exchange, routing_key] if kind == "amqp" => {
            let publisher = AmqpPublisher::new(uri.clone(), exchange, "/relay-worker")?;
            Registry::new([])?
                .with_route(Route::new("to-rabbitmq", publisher).destination(routing_key)?)?
        }
        [kind, bootstrap, topic] if kind == "kafka" => {
            let mut config = ClientConfig::new();
            config
                .set("bootstrap.servers", bootstrap)
                .set("message.timeout.ms", "5000");
            let publisher = KafkaPublisher::new(config, "/relay-worker")?;
            Registry::new([])?.with_route(Route::new("to-kafka", publisher).destination(topic)?)?
        }
        _ => anyhow::bail!("unknown broker arguments: {broker:?}"),
    };
    let relay = Relay::builder(db)
        .id(id.clone())
        .registry(registry)
        .lease(lease)
        .batch_size(env("RELAY_BATCH", 10))
        .concurrency(env("RELAY_CONCURRENCY", 16) as usize)
        .poll_interval(Duration::from_millis(50))
        .retry(RetryPolicy::exponential(Duration::from_millis(10)).max_attempts(20))
        .spawn()
        .await?;
    println!("ready");
    tokio::signal::ctrl_c().await?;
    relay.shutdown().await;
    Ok(())
}
