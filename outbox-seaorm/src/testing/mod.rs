//! Testing handlers and aggregates (feature `testing`).
//!
//! - [`Harness`]: an outbox on an in-memory SQLite database (or yours) with a relay;
//!   [`Harness::settle`] delivers every message, and those the handlers write in turn, then
//!   returns a [`SettleReport`] to assert on (`report.delivered::<OrderConfirmed>()`,
//!   `report.failed_for("send-email")`, `report.dead()`).
//! - [`assert_recorded!`](crate::testing::assert_recorded),
//!   [`assert_not_recorded!`](crate::testing::assert_not_recorded) and [`recorded`]: what an
//!   aggregate recorded, with no database.
//! - [`CapturePublisher`]: a publisher for routes that keeps what would have gone to NATS,
//!   RabbitMQ or a webhook, with its CloudEvents attributes.
//!
//! ```
//! use outbox_seaorm::testing::{CapturePublisher, Harness};
//! use outbox_seaorm::{DomainEvent, HandlerContext, HandlerEntry, Registry, Route};
//! use outbox_seaorm::UnitOfWork;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, DomainEvent)]
//! #[event(name = "invoice.issued")]
//! struct InvoiceIssued { number: u32 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let capture = CapturePublisher::new();
//! let registry = Registry::new([HandlerEntry::new(
//!     "archive",
//!     |_: InvoiceIssued, _: HandlerContext| async { Ok::<_, std::io::Error>(()) },
//! )])?
//! .with_route(Route::new("to-nats", capture.clone()).destination("billing.{event_type}")?)?;
//! let harness = Harness::builder().registry(registry).build().await?;
//!
//! let uow = UnitOfWork::begin(harness.db()).await?;
//! uow.record("invoice", "2026-7", InvoiceIssued { number: 7 }, Default::default())?;
//! uow.commit().await?;
//!
//! let report = harness.settle().await?;
//! assert_eq!(report.delivered::<InvoiceIssued>()[0].number, 7);
//! let sent = capture.assert_published::<InvoiceIssued>("billing.invoice.issued");
//! assert_eq!(sent.len(), 1);
//! assert_eq!(capture.published()[0].attribute("subject"), Some("2026-7"));
//! # Ok(()) }
//! ```

mod harness;
mod report;

pub use harness::{Harness, HarnessBuilder};
pub use outbox_seaorm_core::testing::{CapturePublisher, Published, RecordedEvents, recorded};
#[doc(inline)]
pub use outbox_seaorm_core::{assert_not_recorded, assert_recorded};
pub use report::{HandlerFailure, SettleReport};
