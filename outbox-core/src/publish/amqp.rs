//! RabbitMQ (AMQP 0-9-1) through `lapin`: persistent messages, publisher confirms, mandatory
//! routing, `message_id` set.
//!
//! A nack, an unroutable message (no queue bound), a lost connection: each is a retryable
//! failure, never a loss. The connection is re-established on the next attempt.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::cloudevents::{self, Mode};
use crate::envelope::Envelope;
use crate::handler::HandlerError;
use crate::publish::{Publisher, Template, TemplateError};

/// Publishes to an exchange; the route's destination is the routing key.
pub struct AmqpPublisher {
    uri: String,
    exchange: Template,
    source: String,
    mode: Mode,
    channel: Mutex<Option<(Connection, Channel)>>,
}

impl std::fmt::Debug for AmqpPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpPublisher")
            .field("exchange", &self.exchange)
            .field("source", &self.source)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl AmqpPublisher {
    /// A publisher connecting to `uri` (`amqp://guest:guest@127.0.0.1:5672/%2f`) and publishing
    /// to `exchange` (a template too: `"{aggregate_type}.events"`), with CloudEvents `source`.
    /// It connects on first use; declare the exchange and queues yourself.
    pub fn new(
        uri: impl Into<String>,
        exchange: &str,
        source: impl Into<String>,
    ) -> Result<Self, TemplateError> {
        Ok(Self {
            uri: uri.into(),
            exchange: Template::parse(exchange)?,
            source: source.into(),
            mode: Mode::Structured,
            channel: Mutex::new(None),
        })
    }

    /// Structured (default) or binary CloudEvents (attributes as `cloudEvents:*` headers).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    async fn channel(&self) -> Result<Channel, lapin::Error> {
        let mut guard = self.channel.lock().await;
        if let Some((conn, ch)) = guard.as_ref()
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let conn = Connection::connect(&self.uri, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        *guard = Some((conn, ch.clone()));
        Ok(ch)
    }

    async fn forget_channel(&self) {
        self.channel.lock().await.take();
    }
}

/// What would change a routing key's words (or an exchange name): the separator, the
/// binding wildcards, whitespace, and `%` itself.
const ROUTING_WORD: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'.')
    .add(b'*')
    .add(b'#')
    .add(b'%');

#[async_trait::async_trait]
impl Publisher for AmqpPublisher {
    /// `.`, `*`, `#`, whitespace, `%` and non-ASCII are percent-encoded, so an id is one word
    /// of a topic exchange's routing key.
    fn escape_aggregate_id<'a>(&self, id: &'a str) -> std::borrow::Cow<'a, str> {
        crate::publish::percent_encode(id, ROUTING_WORD)
    }

    fn transport(&self) -> crate::publish::Transport {
        crate::publish::Transport::new("amqp")
            .exchange(self.exchange.to_string())
            .cloudevents(self.mode, self.source.clone())
    }

    async fn publish(&self, envelope: &Envelope, routing_key: &str) -> Result<(), HandlerError> {
        let mut headers = FieldTable::default();
        let (body, content_type) = match self.mode {
            Mode::Structured => (
                cloudevents::to_structured(envelope, &self.source)?,
                cloudevents::STRUCTURED_CONTENT_TYPE,
            ),
            Mode::Binary => {
                for (k, v) in
                    cloudevents::binary_headers(envelope, &self.source, cloudevents::Binding::Amqp)
                {
                    headers.insert(
                        ShortString::from(k),
                        AMQPValue::LongString(LongString::from(v)),
                    );
                }
                (
                    envelope.payload.clone().into_bytes(),
                    cloudevents::CONTENT_TYPE,
                )
            }
        };
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(envelope.message_id.to_string()))
            .with_content_type(ShortString::from(content_type))
            .with_type(ShortString::from(envelope.event_type.clone()))
            .with_app_id(ShortString::from(self.source.clone()))
            .with_timestamp(envelope.occurred_at.timestamp().max(0) as u64)
            .with_headers(headers);
        let exchange = self
            .exchange
            .render_with(envelope, |id| self.escape_aggregate_id(id));
        // AMQP short strings hold 255 bytes; a longer name would corrupt the frame.
        if exchange.len() > 255 || routing_key.len() > 255 {
            return Err(HandlerError::permanent(format!(
                "exchange `{exchange}` or routing key `{routing_key}` is longer than 255 bytes"
            )));
        }
        let attempt = async {
            let ch = self.channel().await?;
            let confirm = ch
                .basic_publish(
                    ShortString::from(exchange.clone()),
                    ShortString::from(routing_key.to_owned()),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &body,
                    properties,
                )
                .await?;
            confirm.await
        };
        match attempt.await {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => Err(HandlerError::retry(format!(
                "unroutable: exchange `{exchange}` has no queue bound for `{routing_key}`"
            ))),
            Ok(Confirmation::Nack(_)) => Err(HandlerError::retry(format!(
                "the broker nacked the message on exchange `{exchange}`"
            ))),
            Ok(Confirmation::NotRequested) => Err(HandlerError::retry(
                "publisher confirms are off on the channel",
            )),
            Err(e) => {
                self.forget_channel().await;
                Err(HandlerError::retry(e))
            }
        }
    }
}
