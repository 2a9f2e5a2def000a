//! Domain events, handler registration and delivery policy for a transactional outbox,
//! independent of any database.
//!
//! Most applications depend on `outbox-seaorm`, which re-exports this crate and adds the unit of
//! work that writes events in the caller's transaction and the relay that delivers them. This
//! crate holds what both sides share: events with stable names ([`DomainEvent`]), aggregates
//! that buffer them ([`Aggregate`], [`Events`]), handlers ([`event_handler`], [`Registry`]),
//! and how a handler is called ([`dispatch::invoke`]) and retried ([`RetryPolicy`]), and the
//! [`catalog`] of it all (JSON, AsyncAPI 3.0, a breaking-change check).
//!
//! ```standalone_crate
//! use std::sync::Arc;
//! use outbox_seaorm_core::{
//!     dispatch, event_handler, DomainEvent, DomainEvents, Aggregate, Envelope, Events,
//!     Extensions, HandlerContext, Registry,
//! };
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, DomainEvent)]
//! #[event(name = "order.confirmed", version = 1)]
//! struct OrderConfirmed { order_id: u64 }
//!
//! #[derive(DomainEvents)]
//! #[domain_events(aggregate = "order", id = id)]
//! struct Order { id: u64, #[events] events: Events }
//!
//! #[event_handler(name = "print-confirmation")]
//! async fn print_confirmation(event: OrderConfirmed, ctx: &HandlerContext) -> Result<(), std::io::Error> {
//!     println!("order {} confirmed (message {})", event.order_id, ctx.message_id());
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), outbox_seaorm_core::Error> {
//! let mut order = Order { id: 42, events: Events::new() };
//! order.events.record(OrderConfirmed { order_id: 42 });
//!
//! // What a relay does with the row the event became:
//! let pending = order.events_mut().take().remove(0);
//! let mut envelope = Envelope::new(
//!     pending.message_id, pending.event_type, pending.version, pending.payload.unwrap(),
//! );
//! envelope.sequence = 1;
//! envelope.position = 1;
//! envelope.aggregate_type = Order::AGGREGATE_TYPE.into();
//! envelope.aggregate_id = order.aggregate_id();
//! envelope.occurred_at = pending.occurred_at;
//! let envelope = Arc::new(envelope);
//! let registry = Registry::from_inventory()?;
//! for entry in registry.handlers_for("order.confirmed") {
//!     let ctx = HandlerContext::new(
//!         envelope.clone(), entry.name().into(), 1,
//!         Arc::new(Extensions::new()), registry.upcasters().clone(),
//!     );
//!     dispatch::invoke(entry, &ctx, std::time::Duration::from_secs(5)).await?;
//! }
//! # Ok(())
//! # }
//! ```

// On docs.rs (`--cfg docsrs`, nightly) feature-gated items show the feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]

// Generated code names this crate `::outbox_seaorm_core`; this makes that path work inside it too.
extern crate self as outbox_seaorm_core;

mod aggregate;
pub mod catalog;
pub mod cloudevents;
pub mod context;
pub mod dispatch;
mod envelope;
mod error;
mod error_text;
mod event;
mod extension_name;
mod handler;
pub mod publish;
mod registry;
mod retry;
pub mod staging;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;
mod unsaved;
mod upcast;

#[doc(inline)]
pub use self::aggregate::{
    Aggregate, Events, Owner, PendingEvent, RecordOptions, SerializeFailure,
};
#[doc(inline)]
pub use self::envelope::{Envelope, Headers};
#[doc(inline)]
pub use self::error::{BoxError, Error, Result, check_name};
#[doc(inline)]
pub use self::error_text::MAX_ERROR_BYTES;
#[doc(inline)]
pub use self::event::{DomainEvent, EventTypeRegistration, registered_event_types};
#[doc(inline)]
pub use self::handler::{
    BoxFuture, Extensions, Handler, HandlerContext, HandlerEntry, HandlerError, HandlerFn,
    HandlerRegistration, IntoHandlerResult,
};
#[doc(inline)]
pub use self::registry::Registry;
#[doc(inline)]
pub use self::retry::RetryPolicy;
#[doc(hidden)]
pub use self::unsaved::on_unsaved_events_unless_set;
#[doc(inline)]
pub use self::unsaved::{UnsavedEvents, on_unsaved_events};
#[doc(inline)]
pub use self::upcast::{UpcastFn, UpcasterRegistration, Upcasters};

/// Derives [`DomainEvent`]: `#[event(name = "order.created", version = 1)]`.
#[cfg(feature = "macros")]
pub use outbox_seaorm_macros::DomainEvent;
/// Derives [`Aggregate`]: `#[domain_events(aggregate = "order", id = id)]` and an `#[events]` field.
#[cfg(feature = "macros")]
pub use outbox_seaorm_macros::DomainEvents;
/// Registers an `async fn(event: E, ctx: &HandlerContext)` as a handler of `E`.
#[cfg(feature = "macros")]
pub use outbox_seaorm_macros::event_handler;

/// Not public API: what generated code refers to.
#[doc(hidden)]
pub mod __private {
    pub use inventory;

    use crate::{DomainEvent, HandlerContext, HandlerError};

    /// Decodes the event for a generated handler, with the handler's name on failure.
    pub fn decode<E: DomainEvent>(ctx: &HandlerContext) -> Result<E, HandlerError> {
        ctx.decode::<E>().map_err(HandlerError::from)
    }

    pub use crate::catalog::schema::{NoSchema, SchemaProbe, WithSchema, require_schema};
    pub use crate::error_text::ErrorText;
    pub use serde_json;
}
