//! The transactional outbox for SeaORM: domain events are written as rows of an outbox table in
//! the same transaction as the aggregate that recorded them, and a relay delivers them to their
//! handlers, at least once, retrying with back-off and parking dead letters.
//!
//! ```standalone_crate
//! use outbox_seaorm::{
//!     event_handler, DomainEvent, DomainEvents, Events, HandlerContext, Relay, UnitOfWork,
//! };
//! use sea_orm::entity::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, DomainEvent)]
//! #[event(name = "order.confirmed", version = 1)]
//! struct OrderConfirmed { order_id: Uuid }
//!
//! mod order {
//!     use super::*;
//!     // A SeaORM model that is also the aggregate: its events live in an ignored field.
//!     #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, DomainEvents)]
//!     #[sea_orm(table_name = "orders")]
//!     #[domain_events(aggregate = "order", id = id)]
//!     pub struct Model {
//!         #[sea_orm(primary_key, auto_increment = false)]
//!         pub id: Uuid,
//!         pub status: String,
//!         #[sea_orm(ignore)]
//!         #[events]
//!         pub events: Events,
//!     }
//!     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//!     pub enum Relation {}
//!     impl ActiveModelBehavior for ActiveModel {}
//!
//!     impl Model {
//!         pub fn confirm(&mut self) {
//!             self.status = "confirmed".into();
//!             self.events.record(OrderConfirmed { order_id: self.id });
//!         }
//!     }
//! }
//!
//! #[event_handler(name = "send-confirmation-email")]
//! async fn send_confirmation(event: OrderConfirmed, ctx: &HandlerContext) -> anyhow::Result<()> {
//!     println!("order {} confirmed, message {}", event.order_id, ctx.message_id());
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let db = sea_orm::Database::connect("sqlite::memory:").await?;
//! outbox_seaorm::schema::create_tables(&db).await?;
//! db.execute_unprepared("CREATE TABLE orders (id BLOB PRIMARY KEY, status TEXT NOT NULL)").await?;
//!
//! let mut order = order::Model { id: Uuid::now_v7(), status: "new".into(), events: Events::new() };
//! order.confirm();
//!
//! let uow = UnitOfWork::begin(&db).await?;
//! uow.save(&mut order).await?;  // order row upserted, OrderConfirmed staged
//! uow.commit().await?;          // outbox row written in the same transaction, then COMMIT
//!
//! let relay = Relay::builder(db.clone()).build().await?;
//! let report = relay.drain().await?;  // or `.spawn()` to run in the background
//! assert_eq!(report.delivered, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - A unit of work that commits leaves the aggregates' state and one row per recorded event;
//!   one that does not leaves neither, and the events stay on their aggregates for the next
//!   attempt ([`UnitOfWork`], [`Events`]). Events dropped unsaved are reported.
//! - Delivery is at least once: a handler may see a message twice (after a crash or an expired
//!   lease). Deduplicate on [`HandlerContext::message_id`], or use the [`Inbox`].
//! - By default the messages of one aggregate reach each handler in the order of their
//!   positions, which follow commit order even with concurrent writers
//!   ([`DeliveryOrder::PerAggregate`]).
//! - A relay that dies loses nothing; only the messages it was running are delivered again, and
//!   a message that kills its process is parked alone ([`RelayBuilder::max_crashes`]).
//!
//! # Backends
//!
//! SQLite (the default feature), PostgreSQL (`postgres`) and MariaDB 10.6+ (`mysql`), one
//! driver each with its own SQL. Lease times are the database's clock.

// On docs.rs (`--cfg docsrs`, nightly) feature-gated items show the feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
#[cfg(feature = "cli")]
pub mod cli;
mod config;
#[cfg(feature = "dashboard")]
pub mod dashboard;
mod driver;
pub mod entity;
mod error;
mod inbox;
mod listen;
mod relay;
pub mod schema;
#[cfg(feature = "dashboard")]
mod since;
#[cfg(feature = "testing")]
pub mod testing;
mod uow;
mod wake;

#[doc(inline)]
pub use self::admin::{
    Admin, Backlog, DeadGroup, DeadLetter, DeliveryInfo, HandlerReport, HandlerStats, Handles, Lag,
    MessageDetail, MessageFilter, MessageSummary, MinuteCounts, OutboxCounts, RelayInfo, Status,
};
#[doc(inline)]
pub use self::config::OutboxConfig;
#[doc(inline)]
pub use self::driver::MAX_ERROR_BYTES;
#[doc(inline)]
pub use self::error::{Error, Result};
#[cfg(feature = "amqp")]
#[doc(inline)]
pub use self::inbox::consume_amqp;
#[cfg(feature = "nats")]
#[doc(inline)]
pub use self::inbox::consume_jetstream;
#[cfg(feature = "kafka")]
#[doc(inline)]
pub use self::inbox::consume_kafka;
#[doc(inline)]
pub use self::inbox::{HandlerContextExt, Inbox, Processed};
#[doc(inline)]
pub use self::relay::{
    BatchReport, DeliveredRows, DeliveryOrder, OnFailure, Relay, RelayBuilder, RelayHandle,
    RelayStats, Retention, RetentionReport,
};
#[cfg(feature = "migration")]
#[doc(inline)]
pub use self::schema::migration::OutboxMigration;
#[doc(inline)]
pub use self::uow::{
    UnitOfWork, Written, save_aggregate, save_aggregate_with, stage_aggregate, stage_aggregate_with,
};

/// The error of recording, decoding or handling an event (`outbox_seaorm_core::Error`), which
/// [`Error::Event`] carries.
#[doc(inline)]
pub use outbox_seaorm_core::Error as EventError;
/// The event catalog: events, handlers and routes as JSON and AsyncAPI 3.0, and the check of a
/// committed catalog against the current one. It needs no database, so it lives in
/// `outbox-seaorm-core` (beside the registry it reads) and is re-exported here.
#[doc(inline)]
pub use outbox_seaorm_core::catalog;
#[doc(inline)]
pub use outbox_seaorm_core::publish::{Publisher, Route};
#[doc(inline)]
pub use outbox_seaorm_core::{
    Aggregate, BoxError, BoxFuture, DomainEvent, DomainEvents, Envelope, Events, Extensions,
    Handler, HandlerContext, HandlerEntry, HandlerError, Headers, IntoHandlerResult, Owner,
    PendingEvent, RecordOptions, Registry, RetryPolicy, SerializeFailure, UnsavedEvents, Upcasters,
    event_handler, on_unsaved_events, upcaster,
};
#[doc(inline)]
pub use outbox_seaorm_core::{cloudevents, context, dispatch, staging, trace};

/// Publishing messages to brokers besides (or instead of) handlers: the transports behind their
/// features, and the pieces of a [`Route`]. [`Publisher`] and [`Route`] are at the crate root.
pub mod publish {
    #[cfg(feature = "amqp")]
    #[doc(inline)]
    pub use outbox_seaorm_core::publish::amqp;
    #[cfg(feature = "kafka")]
    #[doc(inline)]
    pub use outbox_seaorm_core::publish::kafka;
    #[cfg(feature = "nats")]
    #[doc(inline)]
    pub use outbox_seaorm_core::publish::nats;
    #[cfg(feature = "webhook")]
    #[doc(inline)]
    pub use outbox_seaorm_core::publish::webhook;
    #[doc(inline)]
    pub use outbox_seaorm_core::publish::{Matcher, Template, TemplateError, Transport};
}

/// Not public API: the path generated code takes when the user depends on this crate only.
#[doc(hidden)]
pub use outbox_seaorm_core as __core;

/// Not public API: the relay's stage probe, for the latency benchmark's breakdown.
#[doc(hidden)]
pub mod __bench {
    pub use crate::relay::probe::{Stage, install};
}

/// The README's examples, compiled as doc tests so they cannot drift from the API.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
