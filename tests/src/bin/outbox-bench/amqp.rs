//! Relay → RabbitMQ against a plain lapin loop (see `broker.rs`): the same persistent
//! structured CloudEvents messages with the same properties (message id, content type, type,
//! app id, timestamp), mandatory, one routing key per aggregate, to a fresh topic exchange and
//! durable queue each round, every publisher confirm awaited.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use outbox_seaorm::publish::amqp::AmqpPublisher;
use outbox_seaorm::{Envelope, Publisher, cloudevents};
use outbox_tests::Backend;

use crate::broker::{self, Broker};

pub(crate) async fn suite(backend: Backend) -> anyhow::Result<()> {
    let uri = std::env::var("OUTBOX_TEST_AMQP_URL")
        .map_err(|_| anyhow::anyhow!("OUTBOX_TEST_AMQP_URL is not set"))?;
    let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let rabbit = Rabbit {
        uri,
        _conn: conn,
        channel,
    };
    broker::suite(&rabbit, backend, "AMQP").await
}

/// The plain loop's connection and confirming channel, kept for every round.
struct Rabbit {
    uri: String,
    _conn: Connection,
    channel: Channel,
}

/// A round's exchange and queue (bound with `#`: every routing key).
struct Target {
    exchange: String,
    queue: String,
}

type Message = (String, String, Vec<u8>, BasicProperties);

impl Broker for Rabbit {
    type Target = Target;
    type Prepared = Vec<Message>;

    fn name(&self) -> &'static str {
        "RabbitMQ"
    }

    fn process(&self) -> &'static str {
        "beam.smp"
    }

    async fn open(&self) -> anyhow::Result<Target> {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let target = Target {
            exchange: format!("bench-{tag}"),
            queue: format!("bench-{tag}"),
        };
        let ch = &self.channel;
        ch.exchange_declare(
            target.exchange.clone().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare(
            target.queue.clone().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            target.queue.clone().into(),
            target.exchange.clone().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(target)
    }

    fn publisher(&self, target: &Target) -> anyhow::Result<(Arc<dyn Publisher>, String)> {
        Ok((
            Arc::new(AmqpPublisher::new(&self.uri, &target.exchange, "/bench")?),
            "{aggregate_type}.{aggregate_id}".into(),
        ))
    }

    fn prepare(&self, target: &Target, envelopes: &[Envelope]) -> anyhow::Result<Vec<Message>> {
        envelopes
            .iter()
            .map(|e| {
                let body = cloudevents::to_structured(e, "/bench")?;
                // What `AmqpPublisher` sets.
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(ShortString::from(e.message_id.to_string()))
                    .with_content_type(ShortString::from(cloudevents::STRUCTURED_CONTENT_TYPE))
                    .with_type(ShortString::from(e.event_type.clone()))
                    .with_app_id(ShortString::from("/bench"))
                    .with_timestamp(e.occurred_at.timestamp().max(0) as u64)
                    .with_headers(FieldTable::default());
                let key = format!("{}.{}", e.aggregate_type, e.aggregate_id);
                Ok((target.exchange.clone(), key, body, properties))
            })
            .collect()
    }

    async fn send(&self, prepared: Vec<Message>, window: usize) -> anyhow::Result<()> {
        let publish = |(exchange, key, body, properties): Message| async move {
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &body,
                    properties,
                )
                .await?
                .await?;
            anyhow::ensure!(
                matches!(confirm, Confirmation::Ack(None)),
                "not confirmed: {confirm:?}"
            );
            Ok(())
        };
        if window == 1 {
            for m in prepared {
                publish(m).await?;
            }
            return Ok(());
        }
        let mut confirms =
            futures_util::stream::iter(prepared.into_iter().map(publish)).buffer_unordered(window);
        while let Some(r) = confirms.next().await {
            r?;
        }
        Ok(())
    }

    async fn stored(&self, target: &Target) -> anyhow::Result<u64> {
        let queue = self
            .channel
            .queue_declare(
                target.queue.clone().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(u64::from(queue.message_count()))
    }

    async fn close(&self, target: Target) -> anyhow::Result<()> {
        self.channel
            .queue_delete(target.queue.into(), Default::default())
            .await?;
        self.channel
            .exchange_delete(target.exchange.into(), Default::default())
            .await?;
        Ok(())
    }
}
