//! The one error type of the core crate.

use std::time::Duration;

/// A boxed error, as handlers and publishers return them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while recording, decoding or handling an event.
///
/// The relay stores the [`kind`](Error::kind) and the message of the error on the outbox row
/// (or on the delivery of one handler), so every variant is also something an operator reads.
///
/// # Handling
///
/// [`is_retryable`](Error::is_retryable) says whether the relay retries the delivery with
/// back-off or parks it as dead at once: a payload that does not deserialize today will not
/// deserialize tomorrow, while a handler that timed out may well succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No handler (and no publisher) is registered for an event type.
    ///
    /// A relay does not fail a message with it: a type the process knows that nothing handles
    /// completes at once, and a type it does not know (written by a newer version) is left for a
    /// relay that knows it, with `unknown_event_type` as its last error kind.
    #[error("no handler is registered for event type `{event_type}`")]
    UnknownEventType {
        /// The event type name stored on the row.
        event_type: String,
    },

    /// The stored event version cannot be turned into the version a handler expects: it is newer
    /// than the handler's, or an upcaster in the chain is missing.
    #[error(
        "event `{event_type}` is stored at version {stored}, handler expects version {expected} and no upcaster chain leads there"
    )]
    UnknownVersion {
        /// The event type name.
        event_type: String,
        /// The version stored on the row.
        stored: u32,
        /// The version the handler's event type declares.
        expected: u32,
    },

    /// The stored payload does not deserialize into the handler's event type (or is not JSON).
    #[error("payload of event `{event_type}` does not deserialize")]
    Deserialize {
        /// The event type name.
        event_type: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },

    /// An event could not be serialized when it was recorded.
    #[error("event `{event_type}` could not be serialized")]
    Serialize {
        /// The event type name.
        event_type: String,
        /// What serde said.
        #[source]
        source: std::sync::Arc<serde_json::Error>,
    },

    /// An upcaster returned an error.
    #[error("upcasting event `{event_type}` from version {from} failed")]
    Upcast {
        /// The event type name.
        event_type: String,
        /// The version the failing upcaster starts from.
        from: u32,
        /// What the upcaster returned.
        #[source]
        source: BoxError,
    },

    /// A handler returned an error.
    #[error("handler `{handler}` failed")]
    HandlerFailed {
        /// The handler's registered name.
        handler: String,
        /// `true` when the handler asked not to be retried ([`HandlerError::permanent`](crate::HandlerError::permanent)).
        permanent: bool,
        /// What the handler returned.
        #[source]
        source: BoxError,
    },

    /// A handler panicked. The panic is caught, the relay keeps running.
    #[error("handler `{handler}` panicked: {message}")]
    HandlerPanicked {
        /// The handler's registered name.
        handler: String,
        /// The panic payload, when it was a string.
        message: String,
    },

    /// A handler did not finish within its timeout.
    #[error("handler `{handler}` timed out after {timeout:?}")]
    HandlerTimedOut {
        /// The handler's registered name.
        handler: String,
        /// The timeout that elapsed.
        timeout: Duration,
    },

    /// A handler asked for state the relay was not given.
    #[error("no state of type `{type_name}` was given to the relay")]
    MissingState {
        /// The Rust type that was asked for.
        type_name: &'static str,
    },

    /// Two handlers share one name. Handler names are stored with delivery state, so they must
    /// be unique; pin one with `#[event_handler(name = "...")]`.
    #[error(
        "two handlers are registered under the name `{name}`, {first} and {second}: give one \
         of them another name (`#[event_handler(name = \"...\")]`)"
    )]
    DuplicateHandler {
        /// The name used twice.
        name: String,
        /// One registration: `` fn `module::fn_name` `` for `#[event_handler]`, the source
        /// line that built a [`HandlerEntry`](crate::HandlerEntry) by hand, or `` route `name` ``.
        first: String,
        /// The other registration, described the same way.
        second: String,
    },

    /// Two Rust types declare the same event type name and version.
    #[error("event type `{name}` version {version} is declared by both `{first}` and `{second}`")]
    DuplicateEventType {
        /// The event type name.
        name: String,
        /// The version both declare.
        version: u32,
        /// One Rust type.
        first: String,
        /// The other Rust type.
        second: String,
    },

    /// A name or id that is stored in the database (event type, aggregate type, aggregate id,
    /// handler, header) is empty, longer than 255 bytes, or contains a NUL character; or a
    /// header name is not a CloudEvents extension attribute name. The same rules hold on every
    /// backend, and are checked when the event is recorded or staged, before anything is
    /// written.
    #[error("invalid {what} {name:?}: {rule}")]
    InvalidName {
        /// Which kind of name.
        what: &'static str,
        /// The offending name.
        name: String,
        /// The rule it breaks, and how.
        rule: std::borrow::Cow<'static, str>,
    },

    /// A committed event catalog (the JSON of [`Catalog`](crate::catalog::Catalog)) does not
    /// parse.
    #[error("the event catalog does not parse")]
    CatalogFormat {
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Whether the relay should retry the delivery (with back-off) rather than park it as dead.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::HandlerFailed { permanent, .. } => !permanent,
            Error::UnknownEventType { .. }
            | Error::HandlerPanicked { .. }
            | Error::HandlerTimedOut { .. }
            | Error::MissingState { .. } => true,
            Error::UnknownVersion { .. }
            | Error::Deserialize { .. }
            | Error::Serialize { .. }
            | Error::Upcast { .. }
            | Error::DuplicateHandler { .. }
            | Error::DuplicateEventType { .. }
            | Error::InvalidName { .. }
            | Error::CatalogFormat { .. } => false,
        }
    }

    /// A short, stable code for the error, stored next to its message on the outbox row.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::UnknownEventType { .. } => "unknown_event_type",
            Error::UnknownVersion { .. } => "unknown_version",
            Error::Deserialize { .. } => "deserialize",
            Error::Serialize { .. } => "serialize",
            Error::Upcast { .. } => "upcast",
            Error::HandlerFailed { .. } => "handler_failed",
            Error::HandlerPanicked { .. } => "handler_panicked",
            Error::HandlerTimedOut { .. } => "handler_timed_out",
            Error::MissingState { .. } => "missing_state",
            Error::DuplicateHandler { .. } => "duplicate_handler",
            Error::DuplicateEventType { .. } => "duplicate_event_type",
            Error::InvalidName { .. } => "invalid_name",
            Error::CatalogFormat { .. } => "catalog_format",
        }
    }

    /// The error and its chain of sources, joined by `": "`, as stored on the row.
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            out.push_str(": ");
            out.push_str(&s.to_string());
            source = s.source();
        }
        out
    }
}

/// Checks a name or id that will be stored in a `VARCHAR(255)` column: 1 to 255 bytes, no NUL
/// (PostgreSQL cannot store one, and a C client would cut the string there).
///
/// ```
/// assert!(outbox_seaorm_core::check_name("aggregate id", "order-1").is_ok());
/// assert!(outbox_seaorm_core::check_name("aggregate id", "a\0b").is_err());
/// assert!(outbox_seaorm_core::check_name("aggregate id", "").is_err());
/// ```
pub fn check_name(what: &'static str, name: &str) -> Result<()> {
    const RULE: &str = "it must be 1 to 255 bytes long and contain no NUL character";
    let broken = if name.is_empty() {
        format!("{RULE}, and it is empty")
    } else if name.len() > 255 {
        format!("{RULE}, and it is {} bytes long", name.len())
    } else if name.contains('\0') {
        format!("{RULE}, and it contains one")
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        what,
        name: name.to_owned(),
        rule: broken.into(),
    })
}
