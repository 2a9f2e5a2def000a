//! The context a handler receives next to its event: the message's metadata, the relay's
//! state, cancellation.

use std::any::{Any, type_name};
use std::fmt;
use std::sync::Arc;

use uuid::Uuid;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::DomainEvent;
use crate::upcast::Upcasters;

use super::Extensions;

/// What a handler receives next to its event: the message's metadata and the relay's state.
///
/// Cloning is cheap (a few `Arc`s).
#[derive(Clone)]
pub struct HandlerContext {
    envelope: Arc<Envelope>,
    handler: Arc<str>,
    attempt: u32,
    extensions: Arc<Extensions>,
    upcasters: Arc<Upcasters>,
    host: Option<Arc<dyn Any + Send + Sync>>,
    cancel: tokio_util::sync::CancellationToken,
}

impl HandlerContext {
    /// A context for one call of one handler. Relays build these; tests may too.
    pub fn new(
        envelope: Arc<Envelope>,
        handler: Arc<str>,
        attempt: u32,
        extensions: Arc<Extensions>,
        upcasters: Arc<Upcasters>,
    ) -> Self {
        Self {
            envelope,
            handler,
            attempt,
            extensions,
            upcasters,
            host: None,
            cancel: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Cancels this call through `token`: the relay cancels it when it lost the message's
    /// lease (another relay holds the message now, and this call's outcome will not be
    /// written).
    pub fn with_cancellation(mut self, token: tokio_util::sync::CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Completes when this call is cancelled: the relay lost the message's lease (it lapsed,
    /// and another relay claimed the message), so this call's outcome will not be written and
    /// another relay runs the message. A handler that wants to stop cleanly selects on it; one
    /// that does not is aborted at its next `.await` after the relay's grace period
    /// (`RelayBuilder::cancel_grace`).
    ///
    /// ```no_run
    /// # async fn step(_: u32) {}
    /// # async fn h(ctx: outbox_seaorm_core::HandlerContext) -> anyhow::Result<()> {
    /// for page in 0..100 {
    ///     if ctx.is_cancelled() {
    ///         anyhow::bail!("cancelled: another relay runs this message");
    ///     }
    ///     step(page).await;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether this call was cancelled (see [`cancelled`](Self::cancelled)).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Attaches what the storage integration running the handler gives its extension traits
    /// (`outbox-seaorm`'s relay puts its database and tables here, for `ctx.db()` and
    /// `ctx.exactly_once(..)`).
    pub fn with_host(mut self, host: Arc<dyn Any + Send + Sync>) -> Self {
        self.host = Some(host);
        self
    }

    /// What [`with_host`](Self::with_host) attached, if it is a `T`.
    pub fn host<T: Any>(&self) -> Option<&T> {
        self.host.as_deref()?.downcast_ref()
    }

    /// The whole message.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The message id; consumers deduplicate on it.
    pub fn message_id(&self) -> Uuid {
        self.envelope.message_id
    }

    /// The correlation id of the message.
    pub fn correlation_id(&self) -> Option<Uuid> {
        self.envelope.headers.correlation_id
    }

    /// The id of the aggregate that recorded the event.
    pub fn aggregate_id(&self) -> &str {
        &self.envelope.aggregate_id
    }

    /// The message's position in its aggregate's stream (1, 2, 3, ... in commit order, without
    /// gaps): a handler that keeps the last position it applied per aggregate can tell a
    /// redelivery (a position it has seen) from a gap.
    pub fn position(&self) -> i64 {
        self.envelope.position
    }

    /// Which attempt of this handler this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The name of the handler being called.
    pub fn handler_name(&self) -> &str {
        &self.handler
    }

    /// State given to the relay (`Relay::builder(db).state(mailer)`), by type.
    pub fn state<T: Any + Send + Sync>(&self) -> Result<&T> {
        self.extensions.get::<T>().ok_or(Error::MissingState {
            type_name: type_name::<T>(),
        })
    }

    /// All the state given to the relay.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Decodes the payload as `E`, upcasting older versions.
    pub fn decode<E: DomainEvent>(&self) -> Result<E> {
        self.envelope.decode(&self.upcasters)
    }
}

impl fmt::Debug for HandlerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerContext")
            .field("message_id", &self.envelope.message_id)
            .field("event_type", &self.envelope.event_type)
            .field("handler", &self.handler)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}
