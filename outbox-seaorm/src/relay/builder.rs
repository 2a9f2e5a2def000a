//! The relay's settings, each with a documented default, and their validation.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;

use outbox_seaorm_core::{Extensions, Registry, RetryPolicy};

use super::decide::Policy;
use super::policy::{DeliveredRows, DeliveryOrder, OnFailure, Retention};
use super::{Relay, RelayHandle, RelayHost, Settings, Shared};
use crate::config::OutboxConfig;
use crate::driver;
use crate::error::{Error, Result};

/// Settings of a relay, each with a documented default. Consumed by [`build`](Self::build) or
/// [`spawn`](Self::spawn).
#[must_use = "a relay builder does nothing until you call `spawn` or `build`"]
pub struct RelayBuilder {
    db: DatabaseConnection,
    config: OutboxConfig,
    registry: Option<Registry>,
    extensions: Extensions,
    id: Option<String>,
    settings: Settings,
    retry: RetryPolicy,
    order: DeliveryOrder,
    max_crashes: u32,
    unknown_type_delay: Duration,
    require_trace_context: bool,
    reserve_connections: u32,
}

impl Relay {
    /// A builder for a relay on `db` and the default tables, with the defaults documented on
    /// each setting.
    pub fn builder(db: DatabaseConnection) -> RelayBuilder {
        Self::builder_with(db, &OutboxConfig::default())
    }

    /// [`builder`](Self::builder) for the tables named by `config`.
    pub fn builder_with(db: DatabaseConnection, config: &OutboxConfig) -> RelayBuilder {
        RelayBuilder {
            db,
            config: config.clone(),
            registry: None,
            extensions: Extensions::new(),
            id: None,
            settings: Settings {
                batch_size: 100,
                poll_interval: Duration::from_secs(1),
                lease: Duration::from_secs(60),
                handler_timeout: Duration::from_secs(30),
                concurrency: 16,
                delivered: DeliveredRows::Keep,
                shutdown_timeout: Duration::from_secs(30),
                retention: Some(Retention::default()),
                window: 200,
                claim_timeout: Duration::from_secs(5),
                flush_after: Duration::from_millis(2),
                metrics_interval: Some(Duration::from_secs(15)),
                cancel_grace: Duration::from_secs(5),
            },
            retry: RetryPolicy::default(),
            order: DeliveryOrder::PerAggregate(OnFailure::Block),
            max_crashes: 3,
            unknown_type_delay: Duration::from_secs(60),
            require_trace_context: false,
            reserve_connections: 5,
        }
    }
}

impl RelayBuilder {
    /// The handlers (default: [`Registry::from_inventory`], every `#[event_handler]` linked in).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// State handlers reach with `ctx.state::<T>()` (a mailer, an HTTP client).
    pub fn state<T: std::any::Any + Send + Sync>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// The name written to `locked_by` (default: the host name and a UUIDv7, unique per
    /// process start even where every container is pid 1). It fences every write of the
    /// relay, so it must be unique among running relays: do not give replicas the same id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Messages claimed per round trip (default 100: large enough to amortize the claim, small
    /// enough that a lease covers the batch). A new batch is claimed once fewer than half a
    /// batch of this relay's messages are still undecided, so a slow message never holds the
    /// others back.
    pub fn batch_size(mut self, n: u32) -> Self {
        self.settings.batch_size = n;
        self
    }

    /// How long an idle relay waits before looking again (default 1 s). Commits in this process
    /// wake it at once; the poll is what finds messages committed elsewhere, and what bounds the
    /// delay when a wake-up is missed.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.settings.poll_interval = d;
        self
    }

    /// How long a claim holds (default 60 s). A task of its own renews it every third of the
    /// lease while the relay holds the message; a relay that dies leaves its messages to the
    /// others once it expires. Lease times are the database's clock, not this process's.
    pub fn lease(mut self, d: Duration) -> Self {
        self.settings.lease = d;
        self
    }

    /// How long a handler may run before it counts as failed (default 30 s). Measured outside
    /// the handler's task, so it fires while the runtime has a free worker; the timed-out task
    /// is aborted at its next `.await` (a handler blocking its thread runs on until it returns:
    /// put blocking work in `spawn_blocking`).
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.settings.handler_timeout = d;
        self
    }

    /// Back-off and attempts before a delivery is dead (default [`RetryPolicy::default`]:
    /// 10 attempts, 1 s doubling to 5 min, jittered).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Delivery order (default: per aggregate, a dead message blocking its aggregate). See
    /// [`DeliveryOrder`].
    pub fn ordering(mut self, order: DeliveryOrder) -> Self {
        self.order = order;
        self
    }

    /// How many messages (unordered) or aggregates (ordered) are handled at once (default 16).
    /// Each runs on its own task. Size the database pool for it: handlers that use the
    /// database need a connection each (`max_connections ≥ concurrency`); the relay's own
    /// writes use connections of their own (see [`reserve_connections`](Self::reserve_connections)).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.settings.concurrency = n;
        self
    }

    /// How long a handler call whose lease was lost may go on after it is cancelled before it
    /// is aborted (default 5 s). The heartbeat finds a lost lease (it lapsed, say while the
    /// relay was starved, and another relay claimed the message): the call's
    /// [`HandlerContext::cancelled`](outbox_seaorm_core::HandlerContext::cancelled) completes,
    /// its outcome is dropped, and after this grace its task is aborted.
    pub fn cancel_grace(mut self, d: Duration) -> Self {
        self.settings.cancel_grace = d;
        self
    }

    /// Connections of the relay's own pool, for its claims, outcome writes and lease renewals
    /// (default 5, plus one for PostgreSQL `LISTEN`; opened when needed): handlers that hold
    /// every connection of the application's pool (`ctx.db()`) cannot make the relay's writes
    /// wait, so a starved pool does not cost the relay its leases. The pool opens the same
    /// database with the application pool's options (and, on PostgreSQL, its search path); an
    /// in-memory SQLite database is shared through the application's pool. `0`: the relay
    /// uses the application's pool for everything; size it `concurrency + 3` or more.
    ///
    /// On PostgreSQL the pool's sessions bound each statement by the
    /// [`claim_timeout`](Self::claim_timeout) (so a claim is a single statement) and commit
    /// asynchronously (`synchronous_commit = off`: no wait for the WAL flush). Nothing the
    /// relay writes needs to survive a crash of the database server: a claim it forgets leaves
    /// the message to be claimed again, a forgotten outcome gets the message delivered again
    /// (at least once, as after a relay crash), and each later write of a relay is fenced by
    /// its claim's token. Your unit of work's commits, on your pool, stay synchronous. On
    /// SQLite the pool's connections use `synchronous = NORMAL` for the same reason (the file
    /// is in WAL mode: a power loss, not a process crash, may forget the relay's last writes).
    pub fn reserve_connections(mut self, n: u32) -> Self {
        self.reserve_connections = n;
        self
    }

    /// Keep delivered rows or delete them (default [`DeliveredRows::Keep`]).
    pub fn delivered_rows(mut self, d: DeliveredRows) -> Self {
        self.settings.delivered = d;
        self
    }

    /// How long [`RelayHandle::shutdown`] lets running messages finish before it gives the
    /// unfinished ones back (default 30 s).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.settings.shutdown_timeout = d;
        self
    }

    /// When delivered rows are deleted (default [`Retention::default`]: after 7 days). Only
    /// matters with [`DeliveredRows::Keep`].
    pub fn retention(mut self, retention: Retention) -> Self {
        self.settings.retention = Some(retention);
        self
    }

    /// Never deletes delivered rows (run [`Relay::run_retention`] yourself, or archive them).
    pub fn without_retention(mut self) -> Self {
        self.settings.retention = None;
        self
    }

    /// How many times relays may die while running one message alone before it is parked as
    /// dead with the error kind `crashed` (default 3). After a relay dies (or hangs past its
    /// lease), the messages it held are run one at a time, with the crash counted against the
    /// running one first, so a message that aborts its process is parked and no other is.
    pub fn max_crashes(mut self, n: u32) -> Self {
        self.max_crashes = n;
        self
    }

    /// Fails [`build`](Self::build) with [`Error::TraceContextUnavailable`] when the relay's
    /// start span gets no OpenTelemetry context (default: no, the relay only logs it). Turn it
    /// on in a service that traces: a `tracing-opentelemetry` layer built on another
    /// `opentelemetry` version than the outbox's is invisible to it, and events would carry no
    /// `traceparent` without any other sign (see `outbox_seaorm_core::trace::propagation`).
    pub fn require_trace_context(mut self, yes: bool) -> Self {
        self.require_trace_context = yes;
        self
    }

    /// How long a message whose event type this process does not know waits before a relay
    /// looks at it again (default 60 s). Such a message was written by a newer version during a
    /// rolling deployment: it is left for a relay that knows its type, without using an
    /// attempt, and counted in [`OutboxCounts::unknown_event_type`](crate::OutboxCounts).
    pub fn unknown_type_delay(mut self, d: Duration) -> Self {
        self.unknown_type_delay = d;
        self
    }

    /// How many available rows an ordered claim looks at to find runs that may go (default
    /// 200). The claim's cost grows with it; a larger window helps when many of the oldest
    /// rows belong to aggregates another relay is working on.
    pub fn claim_window(mut self, n: u32) -> Self {
        self.settings.window = n;
        self
    }

    /// The server-side time limit of a claim statement (default 5 s): a claim left running by
    /// a relay that died cannot go on and lease rows to nobody. On PostgreSQL the relay's own
    /// connections ([`reserve_connections`](Self::reserve_connections)) carry it as their
    /// `statement_timeout`, so it bounds every statement the relay runs there: outcome writes,
    /// lease renewals and retention's batched deletes too (raise it if those need longer).
    pub fn claim_timeout(mut self, d: Duration) -> Self {
        self.settings.claim_timeout = d;
        self
    }

    /// How long decided outcomes may wait to be written together (default 2 ms; or a batch's
    /// worth, whichever comes first). After a crash, at most this much of finished work is
    /// delivered again.
    pub fn flush_after(mut self, d: Duration) -> Self {
        self.settings.flush_after = d;
        self
    }

    /// How often the backlog gauges (`outbox.backlog`, `outbox.oldest_pending_age`,
    /// `outbox.dead_letters`, `outbox.unknown_event_type`) are refreshed through the `metrics`
    /// facade (default 15 s), by one relay at a time; `None` never. The counters and histograms
    /// are reported as things happen. See the README's metrics table.
    pub fn metrics_interval(mut self, every: Option<Duration>) -> Self {
        self.settings.metrics_interval = every;
        self
    }

    /// Validates the settings and the registry, checks the outbox tables, and logs what the
    /// relay will handle. On SQLite it also switches the database file to WAL (kept in the
    /// file; logged at `INFO` when it changes), so that relays and writers in several
    /// processes can share it; an in-memory database stays as it is.
    ///
    /// Fails with [`Error::Schema`] when a table is missing or outdated, with
    /// [`Error::InvalidSetting`] on a setting out of range, and with [`outbox_seaorm_core::Error`]
    /// on duplicate handler names or event types.
    pub async fn build(self) -> Result<Relay> {
        let s = &self.settings;
        let invalid = |what| Err(Error::InvalidSetting(what));
        if s.batch_size == 0 || s.batch_size > 10_000 {
            // Statements bind one parameter per row on MariaDB and SQLite.
            return invalid("batch_size must be 1 to 10000");
        }
        if s.concurrency == 0 {
            return invalid("concurrency must be at least 1");
        }
        if s.lease < Duration::from_millis(100) || s.lease > Duration::from_secs(86_400) {
            return invalid("lease must be between 100 ms and 24 h");
        }
        if s.handler_timeout > Duration::from_secs(86_400)
            || s.poll_interval > Duration::from_secs(86_400)
            || s.shutdown_timeout > Duration::from_secs(86_400)
            || s.cancel_grace > Duration::from_secs(86_400)
            || self.unknown_type_delay > Duration::from_secs(86_400)
        {
            return invalid("durations must be at most 24 h");
        }
        if s.claim_timeout < Duration::from_millis(10) || s.flush_after > s.lease / 4 {
            return invalid("claim_timeout must be at least 10 ms, flush_after at most lease / 4");
        }
        if let Some(id) = &self.id
            && (id.is_empty() || id.len() > 128)
        {
            // It is written to `locked_by VARCHAR(128)`; a truncated id would fence out every
            // write of its own relay.
            return invalid("relay id must be 1 to 128 bytes");
        }
        let registry = match self.registry {
            Some(r) => r,
            None => Registry::from_inventory()?,
        };
        let driver = driver::cached(self.db.get_database_backend(), &self.config);
        driver.check_schema(&self.db).await?;
        driver.prepare_for_relay(&self.db).await?;
        let id = self.id.unwrap_or_else(default_id);
        check_trace_context(&id, self.require_trace_context)?;
        tracing::info!(
            relay = %id,
            handlers = registry.len(),
            routes = registry.routes().count(),
            event_types = registry.event_types().count(),
            "outbox relay ready"
        );
        if registry.is_empty() && registry.routes().next().is_none() {
            tracing::warn!(
                relay = %id,
                "no event handlers are registered: is the crate that defines them linked? \
                 (a crate the binary never names is not; add `use that_crate as _;`)"
            );
        }
        for event_type in registry.event_types_without_handlers() {
            tracing::debug!(relay = %id, event_type, "no handler for event type; its messages are marked unhandled");
        }
        let own = if self.reserve_connections == 0 {
            None
        } else {
            let n = self.reserve_connections + u32::from(driver.listen_channel().is_some());
            match driver
                .reserve(&self.db, n, self.settings.claim_timeout)
                .await
            {
                // Checked: it sees the same tables.
                Ok(Some(own)) => match driver.check_schema(&own).await {
                    Ok(()) => Some(own),
                    Err(e) => {
                        tracing::warn!(
                            relay = %id, error = %e,
                            "the relay's own pool does not see the outbox tables; it shares \
                             the application's pool"
                        );
                        None
                    }
                },
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(
                        relay = %id, error = %e,
                        "could not open the relay's own pool; it shares the application's pool"
                    );
                    None
                }
            }
        };
        let warned = super::untaken::check(&self.db, &self.config, &registry, &id).await;
        let pool = driver.pool_size(&self.db) as usize;
        if own.is_none() && pool < self.settings.concurrency + 3 {
            // Only handlers that use the database need the extra connections; the relay works
            // (serially) even on SeaORM's default single SQLite connection.
            tracing::info!(
                relay = %id, pool, concurrency = self.settings.concurrency,
                "the database pool is smaller than concurrency + 3: handlers that use the \
                 database will wait for connections (size the pool as `concurrency + 3`)"
            );
        }
        let policy = Policy {
            retry: self.retry,
            max_crashes: self.max_crashes,
            unknown_type_delay: self.unknown_type_delay,
            order: self.order,
        };
        let bounded = own.is_some() && driver.reserved_bounds_statements();
        let host = Arc::new(RelayHost {
            db: self.db.clone(),
            config: self.config.clone(),
            driver: driver.clone(),
        });
        Ok(Relay {
            shared: Arc::new(Shared {
                db: own.unwrap_or(self.db),
                bounded,
                driver,
                registry,
                extensions: Arc::new(self.extensions),
                host,
                id,
                settings: self.settings,
                policy,
                stats: Default::default(),
                held: Default::default(),
                chains: Default::default(),
                unhandled_types: std::sync::Mutex::new(warned),
            }),
        })
    }

    /// Builds the relay and runs it on the current Tokio runtime until the handle is shut down
    /// or dropped.
    pub async fn spawn(self) -> Result<RelayHandle> {
        Ok(self.build().await?.spawn())
    }
}

/// `<host>-<uuidv7>`: unique per process start, and says where the relay runs.
fn default_id() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    let host = if host.is_empty() {
        "relay".into()
    } else {
        host
    };
    format!("{host}-{}", uuid::Uuid::now_v7())
}

/// Says at start whether trace context reaches the outbox, and fails when it was required and
/// does not: a layer of another `opentelemetry` version would otherwise only show as events
/// with no `traceparent`.
fn check_trace_context(relay: &str, required: bool) -> Result<()> {
    use outbox_seaorm_core::trace::{self, Propagation};

    let start = tracing::info_span!("outbox.relay.start", relay = %relay);
    let state = trace::propagation(&start);
    let _entered = start.enter();
    let reason = match state {
        Propagation::Active => {
            tracing::info!(
                opentelemetry = trace::OPENTELEMETRY_VERSION,
                "trace context propagates: events carry the traceparent of the span they are \
                 recorded in"
            );
            return Ok(());
        }
        Propagation::FeatureOff => "the `opentelemetry` feature of outbox-seaorm is off".to_owned(),
        _ => format!(
            "the relay's start span has no OpenTelemetry context: no tracing-opentelemetry {} \
             layer (opentelemetry {}) is installed in the subscriber, or the installed one is \
             built on another opentelemetry version (`cargo tree -i opentelemetry` lists each; \
             they must be the same), or its tracer is a no-op one (no tracer provider set up), \
             or the subscriber filters out INFO spans of target `outbox_seaorm`",
            trace::TRACING_OPENTELEMETRY_VERSION,
            trace::OPENTELEMETRY_VERSION
        ),
    };
    if required {
        return Err(Error::TraceContextUnavailable { reason });
    }
    tracing::info!("trace context is not propagated: {reason}");
    Ok(())
}
