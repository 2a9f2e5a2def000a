//! NATS JetStream: publish with an ack, `Nats-Msg-Id` set to the message id.
//!
//! Relay retries of a message that already reached the stream carry the same `Nats-Msg-Id`, so
//! the stream's duplicate window (`duplicate_window`, 2 minutes by default) drops them:
//! consumers see each message once unless a retry comes after the window. Per-aggregate order
//! is kept because the relay awaits each ack before the next message of an aggregate.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};

use crate::cloudevents::{self, Mode};
use crate::envelope::Envelope;
use crate::handler::HandlerError;
use crate::publish::Publisher;

/// Publishes to JetStream; the route's destination is the subject.
#[derive(Debug, Clone)]
pub struct JetStreamPublisher {
    js: jetstream::Context,
    source: String,
    mode: Mode,
}

impl JetStreamPublisher {
    /// A publisher on `client`, with CloudEvents `source` (a URI naming your service,
    /// `"/orders-service"`), in structured mode.
    pub fn new(client: async_nats::Client, source: impl Into<String>) -> Self {
        Self {
            js: jetstream::new(client),
            source: source.into(),
            mode: Mode::Structured,
        }
    }

    /// Structured (default) or binary CloudEvents.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
}

/// What would change a subject's tokens: the separator, the wildcards, whitespace, and `%`
/// itself (so the encoding reads back unambiguously).
const SUBJECT_TOKEN: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'.')
    .add(b'*')
    .add(b'>')
    .add(b'%');

#[async_trait::async_trait]
impl Publisher for JetStreamPublisher {
    /// `.`, `*`, `>`, whitespace, `%` and non-ASCII are percent-encoded: `acct.1 b` becomes the
    /// one token `acct%2E1%20b`.
    fn escape_aggregate_id<'a>(&self, id: &'a str) -> std::borrow::Cow<'a, str> {
        crate::publish::percent_encode(id, SUBJECT_TOKEN)
    }

    fn transport(&self) -> crate::publish::Transport {
        crate::publish::Transport::new("nats").cloudevents(self.mode, self.source.clone())
    }

    async fn publish(&self, envelope: &Envelope, subject: &str) -> Result<(), HandlerError> {
        let mut headers = HeaderMap::new();
        let body = match self.mode {
            Mode::Structured => {
                headers.insert("Content-Type", cloudevents::STRUCTURED_CONTENT_TYPE);
                cloudevents::to_structured(envelope, &self.source)?
            }
            Mode::Binary => {
                headers.insert("Content-Type", cloudevents::CONTENT_TYPE);
                for (k, v) in
                    cloudevents::binary_headers(envelope, &self.source, cloudevents::Binding::Http)
                {
                    headers.insert(k.as_str(), v.as_str());
                }
                envelope.payload.clone().into_bytes()
            }
        };
        let message = PublishMessage::build()
            .payload(bytes::Bytes::from(body))
            .headers(headers)
            .message_id(envelope.message_id.to_string());
        let ack = self
            .js
            .send_publish(subject.to_owned(), message)
            .await
            .map_err(HandlerError::retry)?;
        ack.await.map_err(HandlerError::retry)?;
        Ok(())
    }
}
