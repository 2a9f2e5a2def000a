//! Event handlers: the [`Handler`] trait, the entries a registry holds and how they are
//! registered. What a handler receives is in `context` and `extensions`, what it returns in
//! `error`.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::event::DomainEvent;

mod context;
mod error;
mod extensions;

pub use self::context::HandlerContext;
pub use self::error::{HandlerError, IntoHandlerResult};
pub use self::extensions::Extensions;

/// A boxed, `Send` future, the return type of erased handlers (futures-util's).
pub use futures_util::future::BoxFuture;

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

    /// An untyped handler for `event_type`: it reads the raw [`Envelope`](crate::Envelope) from
    /// the context.
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
