//! The message as the relay hands it to handlers and publishers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::DomainEvent;
use crate::upcast::Upcasters;

/// Metadata that travels with a message: correlation, causation, trace context, and free-form
/// string headers. Stored as the JSON object of the outbox row's `headers` column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Headers {
    /// Groups every message caused, directly or not, by one request or command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The id of the message whose handler recorded this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The W3C `traceparent` of the span the event was recorded in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The W3C `tracestate` that went with it, when it had vendor entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// Other headers, given with [`RecordOptions::header`](crate::RecordOptions::header).
    #[serde(flatten)]
    pub extra: BTreeMap<String, String>,
}

/// One outbox message, as read back by the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// The message id (UUIDv7): consumers deduplicate on it.
    pub message_id: Uuid,
    /// The row's position in the whole outbox (a global, increasing sequence number).
    pub sequence: i64,
    /// The message's position in its aggregate's stream: 1 for the aggregate's first event, then
    /// 2, 3, ... without gaps, in commit order, like a Kafka offset within a partition. Delayed
    /// events have positions too but are delivered outside this order.
    pub position: i64,
    /// The aggregate type (`"order"`).
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The event type name (`"order.created"`).
    pub event_type: String,
    /// The version the payload was written at.
    pub event_version: u32,
    /// The payload, as JSON text.
    pub payload: String,
    /// Correlation, causation, trace context and extra headers.
    pub headers: Headers,
    /// When the event was recorded.
    pub occurred_at: DateTime<Utc>,
}

impl Envelope {
    /// A message with its id, event type, version and payload (JSON text). The other fields
    /// start empty (sequence and position 0, no aggregate type or id, no headers) and
    /// `occurred_at` is now: set the public fields you need. For tests of handlers and
    /// publishers, and for consumers that rebuild a message.
    ///
    /// ```
    /// let mut envelope = outbox_seaorm_core::Envelope::new(
    ///     uuid::Uuid::now_v7(), "order.confirmed", 1, r#"{"order_id":42}"#,
    /// );
    /// envelope.aggregate_type = "order".into();
    /// envelope.aggregate_id = "42".into();
    /// envelope.headers.extra.insert("tenant".into(), "acme".into());
    /// ```
    pub fn new(
        message_id: Uuid,
        event_type: impl Into<String>,
        event_version: u32,
        payload: impl Into<String>,
    ) -> Self {
        Self {
            message_id,
            sequence: 0,
            position: 0,
            aggregate_type: String::new(),
            aggregate_id: String::new(),
            event_type: event_type.into(),
            event_version,
            payload: payload.into(),
            headers: Headers::default(),
            occurred_at: Utc::now(),
        }
    }

    /// Deserializes the payload into `E`, upcasting an older stored version through `upcasters`.
    ///
    /// Fails with [`Error::UnknownVersion`] when no chain of upcasters leads from the stored
    /// version to `E::VERSION`, and with [`Error::Deserialize`] when the payload does not fit `E`.
    pub fn decode<E: DomainEvent>(&self, upcasters: &Upcasters) -> Result<E> {
        let deserialize = |source| Error::Deserialize {
            event_type: self.event_type.clone(),
            source,
        };
        if self.event_version == E::VERSION {
            return serde_json::from_str(&self.payload).map_err(deserialize);
        }
        let unknown = || Error::UnknownVersion {
            event_type: self.event_type.clone(),
            stored: self.event_version,
            expected: E::VERSION,
        };
        if self.event_version > E::VERSION {
            return Err(unknown());
        }
        let mut value: serde_json::Value =
            serde_json::from_str(&self.payload).map_err(deserialize)?;
        for from in self.event_version..E::VERSION {
            let upcaster = upcasters.get(&self.event_type, from).ok_or_else(unknown)?;
            value = upcaster(value).map_err(|source| Error::Upcast {
                event_type: self.event_type.clone(),
                from,
                source,
            })?;
        }
        serde_json::from_value(value).map_err(deserialize)
    }
}
