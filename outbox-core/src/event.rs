//! Domain events: the facts an aggregate records, with a stable name and a version.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A domain event: a serializable fact with a stable type name and a schema version.
///
/// The name is what the outbox row stores and what the relay dispatches on, so it must not
/// change when the Rust type is renamed or moved. Derive it:
///
/// ```
/// use outbox_seaorm_core::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, DomainEvent)]
/// #[event(name = "order.created", version = 1)]
/// struct OrderCreated {
///     order_id: u64,
/// }
///
/// assert_eq!(<OrderCreated as DomainEvent>::EVENT_TYPE, "order.created");
/// assert_eq!(<OrderCreated as DomainEvent>::VERSION, 1);
/// ```
///
/// Without `name`, the type's own identifier is used (`"OrderCreated"`); without `version`, 1.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a domain event",
    label = "not a domain event",
    note = "derive it with `#[derive(Serialize, Deserialize, DomainEvent)]`"
)]
pub trait DomainEvent: Serialize + DeserializeOwned + Send + 'static {
    /// The stable event type name stored on the outbox row (`"order.created"`).
    const EVENT_TYPE: &'static str;
    /// The schema version of the payload, starting at 1.
    const VERSION: u32 = 1;
}

/// An event type known to the process, submitted by `#[derive(DomainEvent)]` so the relay can
/// warn about event types nobody handles and refuse two types claiming one name, and the
/// [event catalog](crate::catalog) can describe it.
#[derive(Debug, Clone, Copy)]
pub struct EventTypeRegistration {
    /// The event type name.
    pub name: &'static str,
    /// The event version.
    pub version: u32,
    /// The Rust type's path, for messages.
    pub rust_type: &'static str,
    /// The aggregate type that records it, when `#[event(aggregate = "...")]` says so.
    pub aggregate_type: Option<&'static str>,
    /// The payload's JSON Schema (draft 7): `Some` when outbox-seaorm-core's `schema` feature is on and
    /// the type derives `schemars::JsonSchema`. A function, since a schema is built at run time
    /// and a registration is a `static`.
    pub schema: fn() -> Option<serde_json::Value>,
}

inventory::collect!(EventTypeRegistration);

/// All event types registered with `#[derive(DomainEvent)]` in the linked crates.
pub fn registered_event_types() -> impl Iterator<Item = &'static EventTypeRegistration> {
    inventory::iter::<EventTypeRegistration>.into_iter()
}
