//! A relay for tests that runs until the outbox has settled.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Utc};
use outbox_seaorm_core::{Registry, RetryPolicy};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use uuid::Uuid;

use super::report::SettleReport;
use crate::admin::{Admin, MessageFilter, MessageSummary};
use crate::config::OutboxConfig;
use crate::entity::MessageStatus;
use crate::error::{Error, Result};
use crate::relay::{DeliveredRows, Relay, RelayBuilder};

/// An outbox and a relay for a test: write with units of work on [`db`](Self::db), then
/// [`settle`](Self::settle) delivers everything, cascades included, and reports what happened.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> outbox_seaorm::Result<()> {
/// use outbox_seaorm::testing::Harness;
///
/// let harness = Harness::new().await?; // in-memory SQLite, handlers from `#[event_handler]`
/// // ... units of work on `harness.db()` ...
/// let report = harness.settle().await?;
/// assert!(report.dead().is_empty());
/// # Ok(()) }
/// ```
pub struct Harness {
    db: DatabaseConnection,
    relay: Relay,
    admin: Admin,
    registry: Registry,
    timeout: Duration,
    cursor: Mutex<Cursor>,
    /// The handlers' and routes' names, to refuse a look-up of a name that is not one.
    names: Arc<BTreeSet<String>>,
}

/// Where the next report starts.
#[derive(Debug, Default)]
struct Cursor {
    /// The last sequence a report covered: each report covers what was written after it...
    reported_up_to: i64,
    /// ...and the messages earlier reports left pending.
    left_pending: Vec<Uuid>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("relay", &self.relay.id())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Harness`].
pub struct HarnessBuilder {
    db: Option<DatabaseConnection>,
    config: OutboxConfig,
    registry: Option<Registry>,
    timeout: Duration,
    create_tables: bool,
    relay: Box<dyn FnOnce(RelayBuilder) -> RelayBuilder + Send>,
}

impl std::fmt::Debug for HarnessBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HarnessBuilder")
            .field("timeout", &self.timeout)
            .field("create_tables", &self.create_tables)
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// A harness over a new in-memory SQLite database with the outbox tables, delivering to the
    /// handlers registered with `#[event_handler]` (and every event type derived in the
    /// program).
    pub async fn new() -> Result<Self> {
        Self::builder().build().await
    }

    /// A harness to configure: another database, an explicit registry, relay settings.
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder {
            db: None,
            config: OutboxConfig::default(),
            registry: None,
            timeout: Duration::from_secs(10),
            create_tables: true,
            relay: Box::new(|b| b),
        }
    }

    /// The database: run units of work and queries on it.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The harness's relay, to run one batch at a time with [`Relay::run_once`].
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// An [`Admin`] on the harness's outbox.
    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// Delivers every pending message, and the messages their handlers write in turn, until
    /// none is left to deliver, waiting for retries; gives up after the harness's timeout (10 s
    /// unless [`HarnessBuilder::timeout`] says otherwise).
    ///
    /// Settled means nothing more will happen without someone acting: messages recorded with a
    /// `not_before` later than the time limit are left pending ([`SettleReport::scheduled`]),
    /// and so are those held behind a dead letter of their aggregate
    /// ([`SettleReport::blocked`]). The report covers the messages written since the last
    /// report, and again those an earlier report left pending.
    ///
    /// # Errors
    ///
    /// [`Error::NotSettled`], listing what is still pending, when the time runs out or when a
    /// pending message has an event type this harness's registry does not know (nothing here
    /// would ever deliver it).
    pub async fn settle(&self) -> Result<SettleReport> {
        self.settle_within(self.timeout).await
    }

    /// [`settle`](Self::settle) with its own time limit.
    pub async fn settle_within(&self, timeout: Duration) -> Result<SettleReport> {
        let started = Instant::now();
        let horizon = Utc::now() + timeout;
        loop {
            // `drain` returns when its batch is done; a hung handler or a transaction that
            // holds the database would keep it past the time limit, so it gets what is left.
            let left = timeout.saturating_sub(started.elapsed()) + Duration::from_secs(2);
            match tokio::time::timeout(left, self.relay.drain()).await {
                Ok(drained) => drained?,
                Err(_elapsed) => return Err(self.stuck(started).await),
            };
            let pending = self.all(MessageFilter::new().status(MessageStatus::Pending), 0);
            let mut waiting = Vec::new();
            let mut unknown = Vec::new();
            for m in pending.await? {
                if !self.registry.knows(&m.event_type)
                    || m.last_error_kind.as_deref() == Some("unknown_event_type")
                {
                    unknown.push(m);
                } else if !is_blocked(&m) && !is_scheduled_after(&m, horizon) {
                    waiting.push(m);
                }
            }
            if !unknown.is_empty() {
                let mut types: Vec<&str> = unknown.iter().map(|m| m.event_type.as_str()).collect();
                types.sort_unstable();
                types.dedup();
                return Err(Error::NotSettled {
                    waited: started.elapsed(),
                    reason: format!(
                        "this harness's registry does not know the event type(s) {}: derive \
                         `DomainEvent` for them in the test's program, or add them with \
                         `Registry::with_event`",
                        types.join(", ")
                    ),
                    pending: unknown,
                });
            }
            if waiting.is_empty() {
                break;
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(Error::NotSettled {
                    waited,
                    reason: "the time ran out".into(),
                    pending: waiting,
                });
            }
            // Sleep until the earliest retry is due (within what is left), then drain again.
            let next = waiting.iter().map(|m| m.available_at).min();
            let until_next = next
                .and_then(|t| (t - Utc::now()).to_std().ok())
                .unwrap_or_default();
            let nap = until_next
                .clamp(Duration::from_millis(1), Duration::from_millis(200))
                .min(timeout - waited);
            tokio::time::sleep(nap).await;
        }
        self.report().await
    }

    /// The error for a batch that did not finish in time, with what is pending if the database
    /// still answers.
    async fn stuck(&self, started: Instant) -> Error {
        let listing = self.all(MessageFilter::new().status(MessageStatus::Pending), 0);
        let pending = match tokio::time::timeout(Duration::from_secs(1), listing).await {
            Ok(Ok(pending)) => pending,
            _ => Vec::new(),
        };
        Error::NotSettled {
            waited: started.elapsed(),
            reason: "a batch was still running when the time ran out: a handler is hung or \
                     slower than the time limit (set `.relay(|r| r.handler_timeout(..))`), or a \
                     transaction still open holds the database (commit or drop every \
                     `UnitOfWork` before `settle`; the messages the stuck batch claimed are \
                     claimable again once its lease of 2 s runs out)"
                .into(),
            pending,
        }
    }

    async fn report(&self) -> Result<SettleReport> {
        let (after, carried) = {
            let cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
            (cursor.reported_up_to, cursor.left_pending.clone())
        };
        // Messages left pending by earlier reports (scheduled, blocked) come again, in their
        // current state, so the report that sees them delivered or dead has them.
        let mut messages = Vec::new();
        for id in carried {
            if let Some(detail) = self.admin.show(id).await? {
                messages.push(detail);
            }
        }
        let summaries = self.all(MessageFilter::new(), after).await?;
        for s in &summaries {
            // Gone only if something deleted it meanwhile (retention, a discard by the test).
            if let Some(detail) = self.admin.show(s.message_id).await? {
                messages.push(detail);
            }
        }
        messages.sort_by_key(|m| m.summary.sequence);
        let mut cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = summaries.last() {
            cursor.reported_up_to = last.sequence;
        }
        cursor.left_pending = messages
            .iter()
            .filter(|m| m.summary.status == "pending")
            .map(|m| m.summary.message_id)
            .collect();
        drop(cursor);
        Ok(SettleReport::new(
            messages,
            self.registry.upcasters().clone(),
            self.names.clone(),
        ))
    }

    /// Every message the filter matches after sequence `after`, page by page.
    async fn all(&self, filter: MessageFilter, mut after: i64) -> Result<Vec<MessageSummary>> {
        const PAGE: u32 = 500;
        let mut out = Vec::new();
        loop {
            let page = self
                .admin
                .list(&filter.clone().after(after).limit(PAGE))
                .await?;
            let full = page.len() == PAGE as usize;
            if let Some(last) = page.last() {
                after = last.sequence;
            }
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }
}

/// Held behind a dead letter of its aggregate (per-aggregate order, `OnFailure::Block`): the
/// relay moved it to the end of time, and only an operator's requeue or discard frees it.
pub(super) fn is_blocked(m: &MessageSummary) -> bool {
    m.available_at.year() >= 9999
}

/// Recorded with a `not_before` later than `horizon`, never tried.
fn is_scheduled_after(m: &MessageSummary, horizon: DateTime<Utc>) -> bool {
    m.attempts == 0 && m.last_error.is_none() && m.available_at > horizon
}

impl HarnessBuilder {
    /// Uses this database instead of a new in-memory SQLite one (any backend).
    pub fn db(mut self, db: DatabaseConnection) -> Self {
        self.db = Some(db);
        self
    }

    /// The outbox tables' names.
    pub fn config(mut self, config: OutboxConfig) -> Self {
        self.config = config;
        self
    }

    /// Delivers to these handlers and routes instead of the ones from `inventory`.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// How long [`Harness::settle`] waits at most (10 s by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether to create the outbox tables (yes by default; they are created only if missing).
    pub fn create_tables(mut self, yes: bool) -> Self {
        self.create_tables = yes;
        self
    }

    /// Adjusts the relay: state for handlers (`|b| b.state(mailer)`), a retry policy, an
    /// ordering. The harness's own defaults are applied first: retries after 5 ms doubling up
    /// to 100 ms, a handler timeout equal to the harness's time limit, a 2 s lease, delivered
    /// rows kept (the report reads them), no retention, no metrics.
    pub fn relay(
        mut self,
        adjust: impl FnOnce(RelayBuilder) -> RelayBuilder + Send + 'static,
    ) -> Self {
        self.relay = Box::new(adjust);
        self
    }

    /// Connects (when no database was given), creates the tables and builds the relay.
    ///
    /// It also makes events dropped unsaved (and units of work dropped with staged events)
    /// panic, so the mistake fails the test that makes it, unless the process chose a policy
    /// with [`on_unsaved_events`](crate::on_unsaved_events) before: call
    /// `on_unsaved_events(UnsavedEvents::Log)` first in a test that checks an error returned
    /// through `?` past a dropped aggregate.
    pub async fn build(self) -> Result<Harness> {
        outbox_seaorm_core::on_unsaved_events_unless_set(outbox_seaorm_core::UnsavedEvents::Panic);
        let db = match self.db {
            Some(db) => db,
            None => {
                // sqlx names each `sqlite::memory:` pool's database and shares it between the
                // pool's connections; it lives while one connection does, so keep one for good.
                let mut options = ConnectOptions::new("sqlite::memory:");
                options
                    .max_connections(20)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .sqlx_logging(false);
                Database::connect(options).await?
            }
        };
        if self.create_tables {
            crate::schema::create_tables_with(&db, &self.config).await?;
        }
        let registry = match self.registry {
            Some(r) => r,
            None => Registry::from_inventory()?,
        };
        let defaults = Relay::builder_with(db.clone(), &self.config)
            .registry(registry.clone())
            .retry(
                RetryPolicy::exponential(Duration::from_millis(5))
                    .max_delay(Duration::from_millis(100))
                    .jitter(false),
            )
            .delivered_rows(DeliveredRows::Keep)
            // A hung handler fails within the time limit, and a batch abandoned by a settle that
            // gave up gives its messages back soon.
            .handler_timeout(self.timeout)
            .lease(Duration::from_secs(2))
            .without_retention()
            .metrics_interval(None);
        let relay = (self.relay)(defaults).build().await?;
        let names = registry
            .handlers()
            .iter()
            .chain(registry.routes())
            .map(|h| h.name().to_owned())
            .collect();
        Ok(Harness {
            names: Arc::new(names),
            admin: Admin::new_with(db.clone(), &self.config),
            db,
            relay,
            registry,
            timeout: self.timeout,
            cursor: Mutex::default(),
        })
    }
}
