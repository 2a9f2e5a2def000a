//! Aggregates and the buffer of events they record while their methods run.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::event::DomainEvent;
use crate::trace;

/// An aggregate root: something with a type, an id and a buffer of recorded [`Events`].
///
/// Derive it with `#[derive(DomainEvents)]`; saving the aggregate through a unit of work drains
/// the buffer into outbox rows in the same transaction as the aggregate's own row.
///
/// ```
/// use outbox_core::{Aggregate, DomainEvent, DomainEvents, Events};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, DomainEvent)]
/// #[event(name = "order.confirmed")]
/// struct OrderConfirmed { order_id: u64 }
///
/// #[derive(DomainEvents)]
/// #[domain_events(aggregate = "order", id = id)]
/// struct Order { id: u64, confirmed: bool, #[events] events: Events }
///
/// impl Order {
///     fn confirm(&mut self) {
///         self.confirmed = true;
///         self.events.record(OrderConfirmed { order_id: self.id });
///     }
/// }
///
/// let mut order = Order { id: 7, confirmed: false, events: Events::new() };
/// order.confirm();
/// assert_eq!(order.aggregate_id(), "7");
/// assert_eq!(order.events().len(), 1);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an aggregate",
    label = "does not record domain events",
    note = "derive it with `#[derive(DomainEvents)]` and mark its `Events` field with `#[events]`"
)]
pub trait Aggregate {
    /// The aggregate type stored on each outbox row (`"order"`).
    const AGGREGATE_TYPE: &'static str;

    /// The aggregate's id as stored on each outbox row; events of one id are delivered in order.
    fn aggregate_id(&self) -> String;

    /// The events recorded and not saved yet.
    fn events(&self) -> &Events;

    /// The buffer, to record into or drain.
    fn events_mut(&mut self) -> &mut Events;
}

/// The buffer of events an aggregate records while its methods run.
///
/// It is a plain value: `Default`, `Clone`, `Debug` and `PartialEq`, so it fits in a SeaORM
/// model as a `#[sea_orm(ignore)]` field (SeaORM fills ignored fields with `Default` on load).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    pending: Vec<PendingEvent>,
}

impl Events {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `event`; it becomes an outbox row when the aggregate is saved.
    ///
    /// Returns the message id (a UUIDv7) the event will be delivered under.
    pub fn record<E: DomainEvent>(&mut self, event: E) -> Uuid {
        self.record_with(event, RecordOptions::default())
    }

    /// Records `event` with options: a not-before time, extra headers.
    pub fn record_with<E: DomainEvent>(&mut self, event: E, options: RecordOptions) -> Uuid {
        let message_id = Uuid::now_v7();
        let payload = serde_json::to_string(&event).map_err(|e| SerializeFailure(Arc::new(e)));
        self.pending.push(PendingEvent {
            message_id,
            event_type: E::EVENT_TYPE,
            version: E::VERSION,
            payload,
            occurred_at: Utc::now(),
            not_before: options.not_before,
            headers: options.headers,
            traceparent: trace::current_traceparent(),
        });
        message_id
    }

    /// Number of events not saved yet.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is waiting to be saved.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The events not saved yet, in recording order.
    pub fn iter(&self) -> impl Iterator<Item = &PendingEvent> {
        self.pending.iter()
    }

    /// Takes every recorded event out of the buffer, in recording order.
    pub fn take(&mut self) -> Vec<PendingEvent> {
        std::mem::take(&mut self.pending)
    }

    /// Puts events back in front of the buffer (after a failed save), keeping their order.
    pub fn restore(&mut self, mut events: Vec<PendingEvent>) {
        events.append(&mut self.pending);
        self.pending = events;
    }
}

/// Options for [`Events::record_with`].
#[derive(Debug, Clone, Default)]
pub struct RecordOptions {
    not_before: Option<DateTime<Utc>>,
    headers: BTreeMap<String, String>,
}

impl RecordOptions {
    /// Default options: deliver as soon as possible, no extra headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Do not deliver the event before `at` (a delayed or scheduled event).
    pub fn not_before(mut self, at: DateTime<Utc>) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Adds a header that travels with the message to handlers and brokers.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// A recorded event waiting to be written as an outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    /// The message id, a UUIDv7 made when the event was recorded.
    pub message_id: Uuid,
    /// The event type name.
    pub event_type: &'static str,
    /// The event version.
    pub version: u32,
    /// The payload as JSON text, or why serialization failed (reported when the aggregate is
    /// saved, so recording never panics).
    pub payload: Result<String, SerializeFailure>,
    /// When the event was recorded.
    pub occurred_at: DateTime<Utc>,
    /// Not to be delivered before this time.
    pub not_before: Option<DateTime<Utc>>,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// The W3C `traceparent` of the span the event was recorded in, if any.
    pub traceparent: Option<String>,
}

/// A serialization error kept until the event is saved (so recording never panics).
#[derive(Debug, Clone)]
pub struct SerializeFailure(pub Arc<serde_json::Error>);

impl PartialEq for SerializeFailure {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for SerializeFailure {}
