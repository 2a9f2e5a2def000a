//! The outbox in a browser: counts, throughput, messages, dead letters, handlers and relays,
//! with bulk requeue and discard. An axum [`Router`] to mount in your service, or served on its
//! own by `outbox dashboard`.
//!
//! ```no_run
//! # async fn f(db: sea_orm::DatabaseConnection) {
//! use outbox_seaorm::dashboard::{self, DashboardConfig};
//!
//! // Behind your own authentication layer, under a path of your choice.
//! let app: axum::Router = axum::Router::new()
//!     .nest("/outbox", dashboard::router(db, DashboardConfig::new().read_only(true)));
//! # let _ = app;
//! # }
//! ```
//!
//! Pages are rendered on the server and read fine without JavaScript; one small script,
//! served from the router (no CDN), refreshes the overview, handlers and relays pages. Every
//! response carries a Content-Security-Policy that allows scripts and styles from the dashboard
//! only. Actions (requeue and discard of every dead letter a filter matches, or of one message
//! from its page) are `POST` forms carrying a CSRF token issued with the page (accepted for an
//! hour, by the router that issued it), refused when the `Origin` (or `Referer`) is another
//! site, refused in read-only mode, and logged (who, what, how many) through `tracing`.
//!
//! Listings are keyset pages (`after` the last sequence shown), so a page costs the same at any
//! depth of a large table. The overview and dead-letter pages count the last hour's deliveries
//! (for the chart and [`Admin::status`](crate::Admin::status)): their cost grows with the
//! delivery rate (about 1 s at a million deliveries an hour on PostgreSQL, `outbox-bench
//! dashboard`); the script waits for one refresh before asking for the next.
//!
//! [`serve`] refuses to listen on a non-loopback address unless authentication is configured
//! ([`DashboardConfig::basic_auth`], [`DashboardConfig::bearer_token`]) or the operator said
//! the network is trusted ([`DashboardConfig::allow_unauthenticated`]).

mod actions;
mod auth;
mod filter;
mod layout;
mod pages;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use sea_orm::DatabaseConnection;

pub use auth::Operator;

use crate::admin::Admin;
use crate::config::OutboxConfig;
use crate::error::{Error, Result};

/// How the dashboard behaves: tables, read-only mode, authentication, trace links.
///
/// ```
/// use outbox_seaorm::dashboard::DashboardConfig;
///
/// let config = DashboardConfig::new()
///     .read_only(true)
///     .basic_auth("ops", "correct horse battery staple")
///     .trace_link("https://grafana.example/explore?traceId={trace_id}");
/// # let _ = config;
/// ```
#[derive(Clone, Default)]
pub struct DashboardConfig {
    outbox: OutboxConfig,
    read_only: bool,
    auth: Option<auth::Auth>,
    allow_unauthenticated: bool,
    trace_link: Option<String>,
}

impl std::fmt::Debug for DashboardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("DashboardConfig")
            .field("outbox", &self.outbox)
            .field("read_only", &self.read_only)
            .field("auth", &self.auth.as_ref().map(auth::Auth::kind))
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .field("trace_link", &self.trace_link)
            .finish()
    }
}

impl DashboardConfig {
    /// The default tables, actions allowed, no authentication of its own (fine on loopback,
    /// or behind the caller's layer).
    pub fn new() -> Self {
        Self::default()
    }

    /// The outbox tables to show.
    pub fn outbox(mut self, config: OutboxConfig) -> Self {
        self.outbox = config;
        self
    }

    /// Hide the requeue and discard actions and refuse their `POST`s (403). Off by default.
    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }

    /// Require HTTP basic authentication with this user and password.
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some(auth::Auth::basic(user.into(), &password.into()));
        self
    }

    /// Require `Authorization: Bearer <token>`.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.auth = Some(auth::Auth::Bearer(token.into()));
        self
    }

    /// Let [`serve`] listen on a non-loopback address without authentication: the network
    /// in front of it is trusted, or a proxy authenticates. Off by default.
    pub fn allow_unauthenticated(mut self, on: bool) -> Self {
        self.allow_unauthenticated = on;
        self
    }

    /// A link from a message to its trace: `{trace_id}` is replaced by the trace id of the
    /// message's `traceparent`, `{message_id}` by its id.
    pub fn trace_link(mut self, template: impl Into<String>) -> Self {
        self.trace_link = Some(template.into());
        self
    }

    /// Whether listening on `addr` is allowed: a loopback address, or authentication set, or
    /// [`allow_unauthenticated`](Self::allow_unauthenticated).
    ///
    /// # Errors
    ///
    /// [`Error::OpenDashboard`] otherwise; [`Error::InvalidSetting`] for an empty password,
    /// user or token.
    pub fn check_listen(&self, addr: SocketAddr) -> Result<()> {
        // An empty password or token is what an unset environment variable gives: that is no
        // authentication at all (or a lock-out), never what was meant.
        if self.auth.as_ref().is_some_and(auth::Auth::is_empty) {
            return Err(Error::InvalidSetting(
                "dashboard credentials must not be empty (an unset variable?): give basic auth \
                 a user and a password, bearer auth a token",
            ));
        }
        if addr.ip().is_loopback() || self.auth.is_some() || self.allow_unauthenticated {
            Ok(())
        } else {
            Err(Error::OpenDashboard { addr })
        }
    }
}

/// What every page handler shares.
struct Dashboard {
    admin: Admin,
    /// For the table check after a database error.
    db: DatabaseConnection,
    config: DashboardConfig,
    /// The tokens of the action forms, one per rendered page: a page rendered by this router
    /// is the only place a browser can learn one (cross-origin pages cannot read ours).
    tokens: Arc<auth::FormTokens>,
}

type Shared = Arc<Dashboard>;

/// The dashboard's routes, to [`nest`](Router::nest) under a path of your choice (links are
/// relative to where it is mounted). Put your authentication layer on the result, or set one
/// in `config`.
pub fn router(db: DatabaseConnection, config: DashboardConfig) -> Router {
    let state = Arc::new(Dashboard {
        admin: Admin::with_config(db.clone(), config.outbox.clone()),
        db,
        tokens: Arc::default(),
        config,
    });
    let routes = Router::new()
        .route("/", get(pages::overview))
        .route("/messages", get(pages::messages))
        .route("/messages/{id}", get(pages::message))
        .route("/messages/{id}/requeue", post(actions::requeue_one))
        .route("/messages/{id}/discard", post(actions::discard_one))
        .route("/dead-letters", get(pages::dead_letters))
        .route("/dead-letters/confirm", get(actions::confirm))
        .route("/dead-letters/requeue", post(actions::requeue))
        .route("/dead-letters/discard", post(actions::discard))
        .route("/handlers", get(pages::handlers))
        .route("/relays", get(pages::relays))
        .route("/assets/dashboard.js", get(layout::script))
        .route("/assets/dashboard.css", get(layout::style))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            layout::explain_db_failure,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn(auth::security_headers));
    routes.with_state(state)
}

/// Serves the dashboard on `addr` until `shutdown` completes: what `outbox dashboard` runs.
///
/// # Errors
///
/// [`Error::OpenDashboard`] when `addr` is not loopback and no authentication is set (see
/// [`DashboardConfig::check_listen`]); [`Error::Serve`] when it cannot listen.
pub async fn serve(
    addr: SocketAddr,
    db: DatabaseConnection,
    config: DashboardConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.check_listen(addr)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(Error::Serve)?;
    let local = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(%local, read_only = config.read_only, "outbox dashboard listening");
    if config.auth.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            %local,
            read_only = config.read_only,
            "outbox dashboard: serving WITHOUT authentication on a non-loopback address \
             (allowed explicitly): anyone who can reach {local} can read every message{}",
            if config.read_only {
                ""
            } else {
                ", and requeue or discard them"
            }
        );
    }
    let app = router(db, config).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}
