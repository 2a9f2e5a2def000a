//! Event handlers: what they receive, what they return, how they are registered.

use std::any::{Any, TypeId, type_name};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::envelope::Envelope;
use crate::error::{BoxError, Error, Result};
use crate::event::DomainEvent;
use crate::upcast::Upcasters;

/// A boxed, `Send` future, the return type of erased handlers.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The erased form of a handler that `#[event_handler]` registers: a plain function pointer, so
/// it can live in the `static` that `inventory` builds.
pub type HandlerFn = for<'a> fn(&'a HandlerContext) -> BoxFuture<'a, Result<(), HandlerError>>;

/// A handler as the relay calls it: it reads the message from the context, decodes it and acts.
///
/// `#[event_handler]` and [`HandlerEntry::new`] implement it for you; implement it by hand for a
/// handler that is generic over event types (an audit log, a forwarder).
pub trait Handler: Send + Sync + 'static {
    /// Handles the message in `ctx`.
    fn call<'a>(&'a self, ctx: &'a HandlerContext) -> BoxFuture<'a, Result<(), HandlerError>>;
}

impl Handler for HandlerFn {
    fn call<'a>(&'a self, ctx: &'a HandlerContext) -> BoxFuture<'a, Result<(), HandlerError>> {
        (self)(ctx)
    }
}

/// A handler registered by `#[event_handler]`, collected process-wide through `inventory`.
#[derive(Debug, Clone, Copy)]
pub struct HandlerRegistration {
    /// The handler's stable name (defaults to `module::path::fn_name`).
    pub name: &'static str,
    /// The function, as `module::path::fn_name` (whatever its name): what an error about
    /// the handler names, e.g. two handlers claiming one name.
    pub function: &'static str,
    /// The event type it handles.
    pub event_type: &'static str,
    /// The event version its argument type declares.
    pub event_version: u32,
    /// The erased handler.
    pub call: HandlerFn,
}

inventory::collect!(HandlerRegistration);

/// A handler with its name, event type and options, as held by a [`Registry`](crate::Registry).
#[derive(Clone)]
pub struct HandlerEntry {
    pub(crate) name: Cow<'static, str>,
    pub(crate) event_type: Cow<'static, str>,
    pub(crate) event_version: u32,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) timeout: Option<Duration>,
    /// Where it comes from, for errors: `` fn `module::fn_name` ``, the source line that built
    /// it, or the route.
    pub(crate) defined_at: Cow<'static, str>,
}

/// Where the code that built an entry by hand is, as `built at file:line`.
#[track_caller]
fn built_here() -> Cow<'static, str> {
    let at = std::panic::Location::caller();
    Cow::Owned(format!("the entry built at {}:{}", at.file(), at.line()))
}

impl HandlerEntry {
    /// A typed handler from a closure or async fn taking the event and an owned context.
    ///
    /// ```
    /// use outbox_seaorm_core::{DomainEvent, HandlerEntry, Registry};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize, DomainEvent)]
    /// #[event(name = "ping")]
    /// struct Pinged { n: u32 }
    ///
    /// let registry = Registry::new([HandlerEntry::new("count-pings", |e: Pinged, _ctx| async move {
    ///     println!("ping {}", e.n);
    ///     Ok::<_, std::io::Error>(())
    /// })])?;
    /// assert_eq!(registry.handlers_for("ping").count(), 1);
    /// # Ok::<(), outbox_seaorm_core::Error>(())
    /// ```
    #[track_caller]
    pub fn new<E, F, Fut, R>(name: impl Into<Cow<'static, str>>, f: F) -> Self
    where
        E: DomainEvent,
        F: Fn(E, HandlerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoHandlerResult,
    {
        struct Typed<E, F>(F, std::marker::PhantomData<fn(E)>);
        impl<E, F, Fut, R> Handler for Typed<E, F>
        where
            E: DomainEvent,
            F: Fn(E, HandlerContext) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoHandlerResult,
        {
            fn call<'a>(
                &'a self,
                ctx: &'a HandlerContext,
            ) -> BoxFuture<'a, Result<(), HandlerError>> {
                Box::pin(async move {
                    let event = ctx.decode::<E>()?;
                    (self.0)(event, ctx.clone()).await.into_handler_result()
                })
            }
        }
        Self {
            name: name.into(),
            event_type: Cow::Borrowed(E::EVENT_TYPE),
            event_version: E::VERSION,
            handler: Arc::new(Typed(f, std::marker::PhantomData)),
            timeout: None,
            defined_at: built_here(),
        }
    }

    /// A typed handler with state shared by all its calls: `f` gets the event, the context and
    /// the state (an `Arc`, cloned for each call), so the closure needs no clone of its own
    /// before `async move`.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use outbox_seaorm_core::{DomainEvent, HandlerEntry, Registry};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize, DomainEvent)]
    /// #[event(name = "counted.ping")]
    /// struct Ping { n: u32 }
    ///
    /// let seen = Mutex::new(Vec::new());
    /// let entry = HandlerEntry::with_state("count-pings", seen, |e: Ping, _ctx, seen| async move {
    ///     seen.lock().unwrap().push(e.n);
    ///     Ok::<_, std::io::Error>(())
    /// });
    /// assert_eq!(Registry::new([entry])?.handlers_for("counted.ping").count(), 1);
    /// # Ok::<(), outbox_seaorm_core::Error>(())
    /// ```
    #[track_caller]
    pub fn with_state<E, S, F, Fut, R>(name: impl Into<Cow<'static, str>>, state: S, f: F) -> Self
    where
        E: DomainEvent,
        S: Send + Sync + 'static,
        F: Fn(E, HandlerContext, Arc<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoHandlerResult,
    {
        let state = Arc::new(state);
        Self::new(name, move |event: E, ctx| f(event, ctx, state.clone()))
    }

    /// An untyped handler for `event_type`: it reads the raw [`Envelope`] from the context.
    #[track_caller]
    pub fn erased(
        name: impl Into<Cow<'static, str>>,
        event_type: impl Into<Cow<'static, str>>,
        handler: impl Handler,
    ) -> Self {
        Self {
            name: name.into(),
            event_type: event_type.into(),
            event_version: 1,
            handler: Arc::new(handler),
            timeout: None,
            defined_at: built_here(),
        }
    }

    /// The entry of a handler registered by `#[event_handler]`.
    pub fn from_registration(r: &HandlerRegistration) -> Self {
        Self {
            name: Cow::Borrowed(r.name),
            event_type: Cow::Borrowed(r.event_type),
            event_version: r.event_version,
            handler: Arc::new(r.call),
            timeout: None,
            defined_at: Cow::Owned(format!("fn `{}`", r.function)),
        }
    }

    /// Overrides the relay's handler timeout for this handler.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The handler's stable name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The event type it handles.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The event version it expects.
    pub fn event_version(&self) -> u32 {
        self.event_version
    }

    /// Where it comes from: `` fn `module::fn_name` `` for `#[event_handler]`, the source line
    /// that built it by hand, or `` route `name` ``.
    pub fn defined_at(&self) -> &str {
        &self.defined_at
    }

    /// Its own timeout, if it has one.
    pub fn timeout_override(&self) -> Option<Duration> {
        self.timeout
    }

    /// The handler itself.
    pub fn handler(&self) -> &dyn Handler {
        &*self.handler
    }
}

impl fmt::Debug for HandlerEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerEntry")
            .field("name", &self.name)
            .field("event_type", &self.event_type)
            .field("event_version", &self.event_version)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

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
        }
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

/// A map of values by type: the state handlers reach through [`HandlerContext::state`].
#[derive(Default, Clone)]
pub struct Extensions {
    map: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Extensions {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts `value`, replacing any value of the same type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.map.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, if any.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.map.get(&TypeId::of::<T>())?.downcast_ref()
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.map.len())
            .finish()
    }
}

/// The error a handler returns: retried with back-off unless it is [permanent](Self::permanent).
///
/// Any `Result<(), E>` with `E: Into<Box<dyn Error + Send + Sync>>` (including `anyhow::Result`)
/// converts into it; return a `HandlerError` yourself to mark a failure permanent.
#[derive(Debug)]
pub struct HandlerError {
    permanent: bool,
    source: BoxError,
}

impl HandlerError {
    /// A failure worth retrying (a timeout, a 503, a lost connection).
    pub fn retry(source: impl Into<BoxError>) -> Self {
        Self {
            permanent: false,
            source: source.into(),
        }
    }

    /// A failure that retrying cannot fix: the delivery is dead at once.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self {
            permanent: true,
            source: source.into(),
        }
    }

    /// Wraps any boxed error: a `HandlerError` inside stays as it is (permanent or not), a core
    /// [`Error`] keeps its retryability, anything else is retried.
    pub fn from_boxed(boxed: BoxError) -> Self {
        let boxed = match boxed.downcast::<HandlerError>() {
            Ok(h) => return *h,
            Err(other) => other,
        };
        let boxed = match boxed.downcast::<Error>() {
            Ok(e) => return HandlerError::from(*e),
            Err(other) => other,
        };
        // Wrapped on the way (`anyhow`, an error with context): a permanent `HandlerError`
        // inside shows its mark in the chain of sources.
        let mut link: Option<&(dyn std::error::Error + 'static)> = Some(&*boxed);
        let mut permanent = false;
        while let Some(e) = link {
            if e.is::<Permanent>() {
                permanent = true;
                break;
            }
            link = e.source();
        }
        Self {
            permanent,
            source: boxed,
        }
    }

    /// Whether the failure is permanent.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// Turns it into the relay's [`Error`], naming the handler.
    pub fn into_error(self, handler: &str) -> Error {
        match self.source.downcast::<Error>() {
            // Keep the core error's own kind when the flag agrees with it.
            Ok(e) if e.is_retryable() != self.permanent => *e,
            Ok(e) => Error::HandlerFailed {
                handler: handler.to_owned(),
                permanent: self.permanent,
                source: e,
            },
            Err(source) => Error::HandlerFailed {
                handler: handler.to_owned(),
                permanent: self.permanent,
                source,
            },
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if self.permanent {
            // The mark survives wrapping (`anyhow`, context), which hides this type itself.
            Some(&Permanent)
        } else {
            self.source.source()
        }
    }
}

/// The mark of a permanent failure in a chain of errors.
#[derive(Debug)]
struct Permanent;

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("permanent failure, not retried")
    }
}

impl std::error::Error for Permanent {}

impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        Self {
            permanent: !e.is_retryable(),
            source: Box::new(e),
        }
    }
}

/// What an event handler may return: `()` or `Result<(), E>` for any error convertible into
/// `Box<dyn Error + Send + Sync>` (`anyhow::Result<()>`, `Result<(), HandlerError>`, ...).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid event handler return type",
    label = "handlers return `()` or `Result<(), E>`",
    note = "use `anyhow::Result<()>`, `Result<(), HandlerError>` or any `Result<(), E>` where `E: std::error::Error + Send + Sync + 'static`"
)]
pub trait IntoHandlerResult {
    /// Converts into the relay's view of the outcome.
    fn into_handler_result(self) -> Result<(), HandlerError>;
}

impl IntoHandlerResult for () {
    fn into_handler_result(self) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl<E: Into<BoxError>> IntoHandlerResult for Result<(), E> {
    fn into_handler_result(self) -> Result<(), HandlerError> {
        self.map_err(|e| HandlerError::from_boxed(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permanent_error_stays_permanent_through_anyhow_and_boxes() {
        let through_anyhow: Result<(), anyhow::Error> =
            Err(HandlerError::permanent(std::io::Error::other("never valid")).into());
        assert!(
            through_anyhow
                .into_handler_result()
                .unwrap_err()
                .is_permanent()
        );
        let nested: Result<(), anyhow::Error> = Err(anyhow::Error::from(HandlerError::permanent(
            std::io::Error::other("x"),
        ))
        .context("while mailing"));
        assert!(nested.into_handler_result().unwrap_err().is_permanent());
        let boxed: Result<(), BoxError> = Err(Box::new(HandlerError::permanent("y")));
        assert!(boxed.into_handler_result().unwrap_err().is_permanent());
        let plain: Result<(), std::io::Error> = Err(std::io::Error::other("z"));
        assert!(!plain.into_handler_result().unwrap_err().is_permanent());
    }
}
