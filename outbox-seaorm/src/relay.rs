//! The relay: claims outbox rows, hands them to their handlers, retries, parks dead letters.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use sea_orm::DatabaseConnection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use outbox_core::{
    Error as CoreError, Extensions, HandlerContext, HandlerEntry, Registry, RetryPolicy, dispatch,
};

use crate::config::OutboxConfig;
use crate::entity::{DeliveryStatus, MessageStatus};
use crate::error::{Error, Result};
use crate::store::{Claimed, DeliveryState, DeliveryWrite, OnFailure, Ordering, Outcome, Store};
use crate::{listen, wake};

/// What happens to a message's row once every handler succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveredRows {
    /// Mark it `delivered` and keep it (history for audits and dashboards); retention deletes it
    /// later.
    Keep,
    /// Delete it at once: fewer writes and a smaller table, no history.
    Delete,
}

/// The relay: start one with [`Relay::builder`].
///
/// Each relay claims batches of available messages under a lease (`locked_by`,
/// `locked_until`), so any number of relays, in one process or many, can run against one
/// outbox. Every handler of a message is a delivery of its own: one that fails is retried alone,
/// with exponential back-off, until it succeeds or the [`RetryPolicy`] gives up and the delivery
/// is dead; the ones that succeeded are not run again.
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    store: Store,
    registry: Registry,
    extensions: Arc<Extensions>,
    id: String,
    batch_size: u32,
    poll_interval: Duration,
    lease: Duration,
    handler_timeout: Duration,
    retry: RetryPolicy,
    ordering: Ordering,
    concurrency: usize,
    delivered: DeliveredRows,
    shutdown_timeout: Duration,
    retention: Option<Retention>,
    listen_channel: Option<String>,
    stats: Stats,
}

/// Settings of a relay, each with a documented default. Consumed by [`build`](Self::build) or
/// [`spawn`](Self::spawn).
#[must_use = "a relay builder does nothing until you call `spawn` or `build`"]
pub struct RelayBuilder {
    db: DatabaseConnection,
    config: OutboxConfig,
    registry: Option<Registry>,
    extensions: Extensions,
    id: Option<String>,
    batch_size: u32,
    poll_interval: Duration,
    lease: Duration,
    handler_timeout: Duration,
    retry: RetryPolicy,
    ordering: Ordering,
    concurrency: usize,
    delivered: DeliveredRows,
    shutdown_timeout: Duration,
    retention: Option<Retention>,
}

/// Deleting delivered rows once they are old enough: in bounded batches (short statements, no
/// long lock on the table), by one relay at a time (a lock row with an expiry in the locks
/// table, so it works on every backend and survives a relay dying mid-round).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    keep_for: Duration,
    inbox_keep_for: Duration,
    every: Duration,
    batch_size: u32,
}

impl Default for Retention {
    /// Delivered rows are kept 7 days (long enough to investigate an incident), inbox rows 30
    /// days (longer than any broker's redelivery or replay window, so a late duplicate is still
    /// recognized), checked every 5 minutes, deleted 1000 at a time.
    fn default() -> Self {
        Self {
            keep_for: Duration::from_secs(7 * 24 * 3600),
            inbox_keep_for: Duration::from_secs(30 * 24 * 3600),
            every: Duration::from_secs(300),
            batch_size: 1000,
        }
    }
}

impl Retention {
    /// Deletes delivered rows older than `keep_for`.
    pub fn delete_delivered_after(keep_for: Duration) -> Self {
        Self {
            keep_for,
            ..Self::default()
        }
    }

    /// Deletes inbox marks older than `keep_for`. Keep them longer than the longest window in
    /// which a broker may redeliver or replay a message, or a late duplicate runs again.
    pub fn inbox_after(mut self, keep_for: Duration) -> Self {
        self.inbox_keep_for = keep_for;
        self
    }

    /// How often a relay tries to run a round.
    pub fn every(mut self, d: Duration) -> Self {
        self.every = d;
        self
    }

    /// Rows deleted per statement.
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = n.max(1);
        self
    }
}

/// What a retention round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Delivered messages deleted.
    pub deleted: usize,
    /// Inbox marks deleted.
    pub inbox_deleted: usize,
    /// `true` when another relay held the retention lock, so this one did nothing.
    pub skipped: bool,
}

const RETENTION_LOCK: &str = "retention";

impl Relay {
    /// A builder for a relay on `db`, with the defaults documented on each setting.
    pub fn builder(db: DatabaseConnection) -> RelayBuilder {
        RelayBuilder {
            db,
            config: OutboxConfig::default(),
            registry: None,
            extensions: Extensions::new(),
            id: None,
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            handler_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            ordering: Ordering::PerAggregate(OnFailure::Block),
            concurrency: 16,
            delivered: DeliveredRows::Keep,
            shutdown_timeout: Duration::from_secs(30),
            retention: Some(Retention::default()),
        }
    }
}

impl RelayBuilder {
    /// The outbox tables (default: [`OutboxConfig::default`]).
    pub fn config(mut self, config: OutboxConfig) -> Self {
        self.config = config;
        self
    }

    /// The handlers (default: [`Registry::from_inventory`], every `#[event_handler]` linked in).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// State handlers reach with `ctx.state::<T>()` (a mailer, an HTTP client). The relay's
    /// `DatabaseConnection` is always there.
    pub fn state<T: std::any::Any + Send + Sync>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// The name written to `locked_by` (default: `relay-<pid>-<random>`, unique per relay).
    /// It fences every write of the relay, so it must be unique among running relays: do not
    /// give replicas the same id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Messages claimed per round trip (default 100: large enough to amortize the claim, small
    /// enough that a lease covers the batch).
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = n;
        self
    }

    /// How long an idle relay waits before looking again (default 1 s). Commits in this process
    /// wake it at once; the poll is what finds messages committed elsewhere, and what bounds the
    /// delay when a wake-up is missed.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// How long a claim holds (default 60 s). It is renewed while the batch runs; a relay that
    /// dies leaves its rows to the others once it expires.
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }

    /// How long a handler may run before it counts as failed (default 30 s).
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.handler_timeout = d;
        self
    }

    /// Back-off and attempts before a delivery is dead (default [`RetryPolicy::default`]:
    /// 10 attempts, 1 s doubling to 5 min, jittered).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Delivery order (default: per aggregate, a dead message blocking its aggregate). See
    /// [`Ordering`].
    pub fn ordering(mut self, ordering: Ordering) -> Self {
        self.ordering = ordering;
        self
    }

    /// How many messages (unordered) or aggregates (ordered) are handled at once (default 16).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Keep delivered rows or delete them (default [`DeliveredRows::Keep`]).
    pub fn delivered_rows(mut self, d: DeliveredRows) -> Self {
        self.delivered = d;
        self
    }

    /// How long [`RelayHandle::shutdown`] lets the batch in flight finish before it gives the
    /// unfinished messages back (default 30 s).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// When delivered rows are deleted (default [`Retention::default`]: after 7 days). Only
    /// matters with [`DeliveredRows::Keep`].
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Never deletes delivered rows (run [`Relay::run_retention`] yourself, or archive them).
    pub fn without_retention(mut self) -> Self {
        self.retention = None;
        self
    }

    /// Validates the settings and the registry, and logs what the relay will handle.
    ///
    /// Fails on duplicate handler names or event types ([`outbox_core::Error`]), and on a zero
    /// batch size, lease or concurrency.
    pub fn build(self) -> Result<Relay> {
        if self.batch_size == 0 {
            return Err(Error::InvalidSetting("batch_size must be at least 1"));
        }
        if self.concurrency == 0 {
            return Err(Error::InvalidSetting("concurrency must be at least 1"));
        }
        if self.batch_size > 10_000 {
            // Statements bind one parameter per row (padded to a power of two): more would
            // pass SQLite's and PostgreSQL's parameter limits.
            return Err(Error::InvalidSetting("batch_size must be at most 10000"));
        }
        if self.lease < Duration::from_millis(100) || self.lease > Duration::from_secs(86_400) {
            return Err(Error::InvalidSetting(
                "lease must be between 100 ms and 24 h",
            ));
        }
        if self.handler_timeout > Duration::from_secs(86_400)
            || self.poll_interval > Duration::from_secs(86_400)
            || self.shutdown_timeout > Duration::from_secs(86_400)
        {
            return Err(Error::InvalidSetting(
                "handler_timeout, poll_interval and shutdown_timeout must be at most 24 h",
            ));
        }
        if let Some(id) = &self.id
            && (id.is_empty() || id.len() > 128)
        {
            // It is written to `locked_by VARCHAR(128)`; a truncated id would fence out every
            // write of its own relay.
            return Err(Error::InvalidSetting("relay id must be 1 to 128 bytes"));
        }
        let registry = match self.registry {
            Some(r) => r,
            None => Registry::from_inventory()?,
        };
        let id = self
            .id
            .unwrap_or_else(|| format!("relay-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        let mut extensions = self.extensions;
        extensions.insert(self.db.clone());
        extensions.insert(self.config.clone());
        tracing::info!(
            relay = %id,
            handlers = registry.len(),
            event_types = registry.event_types().count(),
            "outbox relay ready"
        );
        if registry.is_empty() {
            tracing::warn!(
                relay = %id,
                "no event handlers are registered: is the crate that defines them linked? \
                 (a crate the binary never names is not; add `use that_crate as _;`)"
            );
        }
        for event_type in registry.event_types_without_handlers() {
            tracing::warn!(relay = %id, event_type, "no handler for event type");
        }
        let listen_channel = (self.db.get_database_backend() == sea_orm::DbBackend::Postgres
            && self.config.notifies())
        .then(|| self.config.notify_channel().to_owned());
        Ok(Relay {
            inner: Arc::new(Inner {
                store: Store::new(self.db.get_database_backend(), &self.config),
                db: self.db,
                registry,
                extensions: Arc::new(extensions),
                id,
                batch_size: self.batch_size,
                poll_interval: self.poll_interval,
                lease: self.lease,
                handler_timeout: self.handler_timeout,
                retry: self.retry,
                ordering: self.ordering,
                concurrency: self.concurrency,
                delivered: self.delivered,
                shutdown_timeout: self.shutdown_timeout,
                retention: self.retention,
                listen_channel,
                stats: Stats::default(),
            }),
        })
    }

    /// Builds the relay and runs it on the current Tokio runtime until the handle is shut down
    /// or dropped.
    pub fn spawn(self) -> Result<RelayHandle> {
        Ok(self.build()?.spawn())
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Messages claimed.
    pub claimed: usize,
    /// Messages whose every delivery succeeded.
    pub delivered: usize,
    /// Messages scheduled for another attempt.
    pub retried: usize,
    /// Messages that became dead.
    pub dead: usize,
    /// Messages given back untouched (behind a failed message of their aggregate).
    pub released: usize,
    /// Messages another relay had taken over when this one wrote their outcome (lease expired).
    pub lease_lost: usize,
}

impl std::ops::AddAssign for BatchReport {
    fn add_assign(&mut self, o: Self) {
        self.claimed += o.claimed;
        self.delivered += o.delivered;
        self.retried += o.retried;
        self.dead += o.dead;
        self.released += o.released;
        self.lease_lost += o.lease_lost;
    }
}

/// Counters of a relay since it started.
#[derive(Debug, Default)]
struct Stats {
    polls: AtomicU64,
    batches: AtomicU64,
    claimed: AtomicU64,
    delivered: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    released: AtomicU64,
    lease_lost: AtomicU64,
    errors: AtomicU64,
}

/// A snapshot of a relay's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Claims attempted, empty ones included.
    pub polls: u64,
    /// Batches that claimed at least one message.
    pub batches: u64,
    /// Messages claimed.
    pub claimed: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Messages that became dead.
    pub dead: u64,
    /// Messages given back untouched.
    pub released: u64,
    /// Outcomes not written because the lease had passed to another relay.
    pub lease_lost: u64,
    /// Database errors the loop recovered from.
    pub errors: u64,
}

impl Stats {
    fn add(&self, r: &BatchReport) {
        let add = |c: &AtomicU64, n: usize| c.fetch_add(n as u64, AtomicOrdering::Relaxed);
        if r.claimed > 0 {
            self.batches.fetch_add(1, AtomicOrdering::Relaxed);
        }
        add(&self.claimed, r.claimed);
        add(&self.delivered, r.delivered);
        add(&self.retried, r.retried);
        add(&self.dead, r.dead);
        add(&self.released, r.released);
        add(&self.lease_lost, r.lease_lost);
    }

    fn snapshot(&self) -> RelayStats {
        let get = |c: &AtomicU64| c.load(AtomicOrdering::Relaxed);
        RelayStats {
            polls: get(&self.polls),
            batches: get(&self.batches),
            claimed: get(&self.claimed),
            delivered: get(&self.delivered),
            retried: get(&self.retried),
            dead: get(&self.dead),
            released: get(&self.released),
            lease_lost: get(&self.lease_lost),
            errors: get(&self.errors),
        }
    }
}

/// A running relay. Dropping it asks the relay to stop (the batch in flight still finishes in
/// the background); [`shutdown`](Self::shutdown) also waits until it has.
#[must_use = "dropping the handle stops the relay"]
pub struct RelayHandle {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    inner: Arc<Inner>,
}

impl RelayHandle {
    /// Stops claiming, lets the batch in flight finish (up to the shutdown timeout, after which
    /// its unfinished messages are given back), and waits for the relay to end.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!(relay = %self.inner.id, error = %e, "relay task ended abnormally");
        }
    }

    /// The relay's counters so far.
    pub fn stats(&self) -> RelayStats {
        self.inner.stats.snapshot()
    }

    /// The relay's id, as written to `locked_by`.
    pub fn id(&self) -> &str {
        &self.inner.id
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayHandle")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.inner.id)
            .field("handlers", &self.inner.registry.len())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// The relay's id, as written to `locked_by`.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The relay's counters so far.
    pub fn stats(&self) -> RelayStats {
        self.inner.stats.snapshot()
    }

    /// Claims and handles one batch, then returns what it did (no waiting, no background task).
    pub async fn run_once(&self) -> Result<BatchReport> {
        self.inner.run_batch(&CancellationToken::new()).await
    }

    /// Runs batches until none is available right now (messages waiting for a retry later are
    /// left for later).
    pub async fn drain(&self) -> Result<BatchReport> {
        let mut total = BatchReport::default();
        loop {
            let r = self.run_once().await?;
            total += r;
            if r.claimed == 0 {
                return Ok(total);
            }
        }
    }

    /// Runs one retention round now (if no other relay is running one) and returns what it did.
    pub async fn run_retention(&self) -> Result<RetentionReport> {
        let retention = self.inner.retention.clone().unwrap_or_default();
        self.inner.retention_round(&retention).await
    }

    /// Runs the relay on the current Tokio runtime: the claim loop, and the retention and
    /// PostgreSQL `LISTEN` tasks when they are configured.
    pub fn spawn(self) -> RelayHandle {
        let cancel = CancellationToken::new();
        let inner = self.inner.clone();
        if let Some(retention) = inner.retention.clone() {
            tokio::spawn(inner.clone().retention_loop(retention, cancel.clone()));
        }
        if let Some(channel) = inner.listen_channel.clone() {
            tokio::spawn(listen::run(
                inner.db.clone(),
                channel,
                inner.id.clone(),
                cancel.clone(),
            ));
        }
        let task = tokio::spawn(inner.clone().run(cancel.clone()));
        RelayHandle {
            cancel,
            task: Some(task),
            inner,
        }
    }
}

/// Where the fates of a batch's messages are collected as they are decided.
type FateSink = std::sync::Mutex<Vec<(i64, Uuid, Fate)>>;

/// What became of one message in a batch.
enum Fate {
    /// Every delivery succeeded at the first attempt: no per-handler rows exist.
    Delivered,
    /// Written as an outcome (retry, dead, or delivered after earlier failures).
    Outcome(Outcome),
    /// Not attempted: given back.
    Released,
}

impl Inner {
    async fn retention_loop(self: Arc<Self>, retention: Retention, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(retention.every) => {}
            }
            match self.retention_round(&retention).await {
                Ok(r) if r.deleted > 0 || r.inbox_deleted > 0 => tracing::info!(
                    relay = %self.id, deleted = r.deleted, inbox_deleted = r.inbox_deleted,
                    "outbox retention round"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(relay = %self.id, error = %report(&e), "outbox retention failed")
                }
            }
        }
    }

    async fn retention_round(&self, retention: &Retention) -> Result<RetentionReport> {
        // The lock outlives a slow round by a wide margin and is renewed between batches; a
        // relay that dies holding it blocks retention for at most this long.
        let hold = Duration::from_secs(120);
        let now = Utc::now();
        if !self
            .store
            .try_lock(&self.db, RETENTION_LOCK, &self.id, now, now + hold)
            .await?
        {
            return Ok(RetentionReport {
                skipped: true,
                ..Default::default()
            });
        }
        let cutoff = now - retention.keep_for;
        let inbox_cutoff = now - retention.inbox_keep_for;
        let mut deleted = 0;
        let mut inbox_deleted = 0;
        let result = async {
            loop {
                let n = self
                    .store
                    .delete_delivered(&self.db, cutoff, retention.batch_size)
                    .await?;
                deleted += n;
                let m = self
                    .store
                    .delete_inbox_before(&self.db, inbox_cutoff, retention.batch_size)
                    .await?;
                inbox_deleted += m;
                if n < retention.batch_size as usize && m < retention.batch_size as usize {
                    return Ok(());
                }
                let now = Utc::now();
                if !self
                    .store
                    .try_lock(&self.db, RETENTION_LOCK, &self.id, now, now + hold)
                    .await?
                {
                    return Ok(());
                }
            }
        }
        .await;
        self.store
            .unlock(&self.db, RETENTION_LOCK, &self.id)
            .await?;
        result.map(|()| RetentionReport {
            deleted,
            inbox_deleted,
            skipped: false,
        })
    }

    async fn run(self: Arc<Self>, cancel: CancellationToken) {
        tracing::info!(relay = %self.id, "outbox relay started");
        let mut wake = wake::subscribe();
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            wake.borrow_and_update();
            match self.run_batch(&cancel).await {
                Ok(report) => {
                    failures = 0;
                    // A full batch means more is probably waiting: go again at once.
                    if report.claimed as u32 >= self.batch_size {
                        continue;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = wake.changed() => {}
                        _ = tokio::time::sleep(self.poll_interval) => {}
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.stats.errors.fetch_add(1, AtomicOrdering::Relaxed);
                    let backoff = Duration::from_millis(100)
                        .saturating_mul(1 << failures.min(7))
                        .min(Duration::from_secs(10));
                    tracing::warn!(
                        relay = %self.id, error = %report(&e), retry_in = ?backoff,
                        "outbox relay batch failed"
                    );
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
        tracing::info!(relay = %self.id, "outbox relay stopped");
    }

    async fn run_batch(&self, cancel: &CancellationToken) -> Result<BatchReport> {
        self.stats.polls.fetch_add(1, AtomicOrdering::Relaxed);
        let now = Utc::now();
        let claimed = self
            .store
            .claim(
                &self.db,
                &self.id,
                now,
                now + self.lease,
                self.batch_size,
                self.ordering,
            )
            .await?;
        if claimed.is_empty() {
            return Ok(BatchReport::default());
        }
        let seqs: Vec<i64> = claimed.iter().map(|c| c.envelope.sequence).collect();
        // Per-handler rows exist only for messages that failed before (a requeue resets the
        // claim count but keeps the error), so the common batch costs no extra query.
        let retried_ids: Vec<Uuid> = claimed
            .iter()
            .filter(|c| c.failed_before || c.claims > 1)
            .map(|c| c.envelope.message_id)
            .collect();
        let prior = self.store.deliveries(&self.db, &retried_ids).await?;

        // Fates land here as each message is decided, so a shutdown that cuts the batch short
        // still writes what finished (its handlers are not run again) and gives back the rest.
        let sink = std::sync::Mutex::new(Vec::with_capacity(seqs.len()));
        let processing = self.process(claimed, &prior, &sink);
        tokio::pin!(processing);
        let mut heartbeat = tokio::time::interval(self.lease / 3);
        heartbeat.tick().await;
        let deadline = async {
            cancel.cancelled().await;
            tokio::time::sleep(self.shutdown_timeout).await;
        };
        tokio::pin!(deadline);
        let finished = loop {
            tokio::select! {
                () = &mut processing => break true,
                _ = heartbeat.tick() => {
                    let until = Utc::now() + self.lease;
                    if let Err(e) = self.store.extend_lease(&self.db, &self.id, &seqs, until).await {
                        tracing::warn!(relay = %self.id, error = %report(&e), "could not extend lease");
                    }
                }
                _ = &mut deadline => break false,
            }
        };
        let fates = std::mem::take(&mut *sink.lock().unwrap_or_else(|p| p.into_inner()));
        let r = if finished {
            self.write(fates).await?
        } else {
            let decided: std::collections::HashSet<i64> = fates.iter().map(|f| f.0).collect();
            let unfinished: Vec<i64> = seqs
                .iter()
                .copied()
                .filter(|s| !decided.contains(s))
                .collect();
            tracing::warn!(
                relay = %self.id, finished = fates.len(), unfinished = unfinished.len(),
                "shutdown timeout: writing what finished, giving back the rest"
            );
            let mut r = self.write(fates).await?;
            self.store.release(&self.db, &self.id, &unfinished).await?;
            r.claimed += unfinished.len();
            r.released += unfinished.len();
            r
        };
        self.stats.add(&r);
        Ok(r)
    }

    /// Handles the batch: one group per aggregate (ordered) or per message (unordered), groups
    /// concurrently, the messages of a group one after the other.
    async fn process(
        &self,
        claimed: Vec<Claimed>,
        prior: &HashMap<Uuid, HashMap<String, DeliveryState>>,
        sink: &FateSink,
    ) {
        let mut groups: Vec<Vec<Claimed>> = Vec::new();
        match self.ordering {
            Ordering::Unordered => groups.extend(claimed.into_iter().map(|c| vec![c])),
            Ordering::PerAggregate(_) => {
                let mut index: HashMap<(String, String), usize> = HashMap::new();
                for c in claimed {
                    if c.delayed {
                        groups.push(vec![c]);
                        continue;
                    }
                    let key = (
                        c.envelope.aggregate_type.clone(),
                        c.envelope.aggregate_id.clone(),
                    );
                    match index.get(&key) {
                        Some(&i) => groups[i].push(c),
                        None => {
                            index.insert(key, groups.len());
                            groups.push(vec![c]);
                        }
                    }
                }
            }
        }
        let mut running = futures_util::stream::iter(
            groups
                .into_iter()
                .map(|group| self.process_group(group, prior, sink)),
        )
        .buffer_unordered(self.concurrency);
        while running.next().await.is_some() {}
    }

    async fn process_group(
        &self,
        group: Vec<Claimed>,
        prior: &HashMap<Uuid, HashMap<String, DeliveryState>>,
        sink: &FateSink,
    ) {
        let push = |seq, id, fate| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((seq, id, fate))
        };
        let mut stopped = false;
        for c in group {
            let key = (c.envelope.sequence, c.envelope.message_id);
            if stopped {
                push(key.0, key.1, Fate::Released);
                continue;
            }
            let fate = self.handle(c, prior.get(&key.1)).await;
            stopped = match (&fate, self.ordering) {
                (Fate::Delivered | Fate::Released, _) => false,
                (Fate::Outcome(o), Ordering::PerAggregate(on_failure)) => match o.status {
                    MessageStatus::Delivered => false,
                    MessageStatus::Dead => on_failure == OnFailure::Block,
                    MessageStatus::Pending => true,
                },
                (Fate::Outcome(_), Ordering::Unordered) => false,
            };
            push(key.0, key.1, fate);
        }
    }

    /// Runs the handlers of one message that have not succeeded yet, and decides its fate.
    async fn handle(
        &self,
        claimed: Claimed,
        prior: Option<&HashMap<String, DeliveryState>>,
    ) -> Fate {
        let now = Utc::now();
        let envelope = Arc::new(claimed.envelope);
        let handlers: Vec<&HandlerEntry> = self.registry.deliveries_for(&envelope).collect();
        if handlers.is_empty() {
            let err = CoreError::UnknownEventType {
                event_type: envelope.event_type.clone(),
            };
            tracing::warn!(
                relay = %self.id, message_id = %envelope.message_id,
                event_type = %envelope.event_type, "no handler for message"
            );
            return Fate::Outcome(self.message_failure(now, claimed.claims, &err));
        }
        // A message claimed far more often than the policy allows attempts keeps killing or
        // stalling its relays before an outcome is written: park it instead of looping forever.
        if claimed.claims > self.retry.attempts().saturating_mul(2).max(3) {
            let err = format!(
                "claimed {} times without an outcome: a relay may crash or hang while handling it",
                claimed.claims
            );
            return Fate::Outcome(Outcome {
                status: MessageStatus::Dead,
                available_at: now,
                error: Some((err, "claims_exhausted")),
                deliveries: Vec::new(),
            });
        }

        let empty = HashMap::new();
        let prior = prior.unwrap_or(&empty);
        let to_run: Vec<(&HandlerEntry, u32)> = handlers
            .iter()
            .filter_map(|h| match prior.get(h.name()) {
                Some(DeliveryState {
                    status: DeliveryStatus::Delivered | DeliveryStatus::Dead,
                    ..
                }) => None,
                Some(s) => Some((*h, s.attempts)),
                None => Some((*h, 0)),
            })
            .collect();
        let dead_before = handlers.iter().any(|h| {
            matches!(
                prior.get(h.name()),
                Some(DeliveryState {
                    status: DeliveryStatus::Dead,
                    ..
                })
            )
        });

        let calls: FuturesUnordered<_> = to_run
            .iter()
            .map(|(h, failed)| {
                let ctx = HandlerContext::new(
                    envelope.clone(),
                    Arc::from(h.name()),
                    failed + 1,
                    self.extensions.clone(),
                    self.registry.upcasters().clone(),
                );
                async move {
                    let result = dispatch::invoke(h, &ctx, self.handler_timeout).await;
                    (*h, *failed, result)
                }
            })
            .collect();
        let results: Vec<_> = calls.collect().await;
        // Back-off counts from when the handlers finished, not from when they started: a
        // handler that timed out after 30 s must not be due again at once.
        let now = Utc::now();

        if prior.is_empty() && results.iter().all(|(_, _, r)| r.is_ok()) {
            return Fate::Delivered;
        }

        let mut deliveries = Vec::with_capacity(results.len());
        let mut retry_after: Option<u32> = None;
        let mut first_error: Option<(String, &'static str)> = None;
        let mut any_dead = dead_before;
        for (h, failed, result) in results {
            match result {
                Ok(()) => deliveries.push(DeliveryWrite {
                    handler: h.name().to_owned(),
                    status: DeliveryStatus::Delivered,
                    attempts: failed,
                    error: None,
                }),
                Err(e) => {
                    let attempts = failed + 1;
                    let dead = !e.is_retryable() || self.retry.is_exhausted(attempts);
                    let error = (e.report(), e.kind());
                    if dead {
                        any_dead = true;
                        tracing::error!(
                            relay = %self.id, message_id = %envelope.message_id,
                            handler = h.name(), attempts, error = %error.0,
                            "delivery is dead"
                        );
                    } else {
                        retry_after = Some(retry_after.map_or(attempts, |a| a.max(attempts)));
                    }
                    first_error.get_or_insert_with(|| error.clone());
                    deliveries.push(DeliveryWrite {
                        handler: h.name().to_owned(),
                        status: if dead {
                            DeliveryStatus::Dead
                        } else {
                            DeliveryStatus::Failed
                        },
                        attempts,
                        error: Some(error),
                    });
                }
            }
        }
        deliveries.sort_by(|a, b| a.handler.cmp(&b.handler));
        let (status, available_at) = match retry_after {
            Some(attempts) => (
                MessageStatus::Pending,
                now + self.retry.delay_after(attempts),
            ),
            None if any_dead => (MessageStatus::Dead, now),
            None => (MessageStatus::Delivered, now),
        };
        if status == MessageStatus::Dead && first_error.is_none() {
            first_error = Some((
                "a delivery of this message is dead; requeue it to retry".to_owned(),
                "delivery_dead",
            ));
        }
        Fate::Outcome(Outcome {
            status,
            available_at,
            error: first_error,
            deliveries,
        })
    }

    /// The outcome of a failure that concerns the message as a whole (no handler at all).
    fn message_failure(&self, now: DateTime<Utc>, claims: u32, err: &CoreError) -> Outcome {
        let dead = !err.is_retryable() || self.retry.is_exhausted(claims);
        Outcome {
            status: if dead {
                MessageStatus::Dead
            } else {
                MessageStatus::Pending
            },
            available_at: if dead {
                now
            } else {
                now + self.retry.delay_after(claims)
            },
            error: Some((err.report(), err.kind())),
            deliveries: Vec::new(),
        }
    }

    /// Writes the fates of a batch: one statement for every plain success, one transaction per
    /// other outcome, one statement for the released.
    async fn write(&self, fates: Vec<(i64, Uuid, Fate)>) -> Result<BatchReport> {
        let now = Utc::now();
        let mut report = BatchReport {
            claimed: fates.len(),
            ..Default::default()
        };
        let delete = self.delivered == DeliveredRows::Delete;
        let mut done = Vec::new();
        let mut with_rows = Vec::new();
        let mut released = Vec::new();
        let mut outcomes = Vec::new();
        for (seq, id, fate) in fates {
            match fate {
                Fate::Delivered => done.push((seq, id)),
                Fate::Outcome(o) if o.status == MessageStatus::Delivered && delete => {
                    done.push((seq, id));
                    with_rows.push(id);
                }
                Fate::Outcome(o) => outcomes.push((seq, id, o)),
                Fate::Released => released.push(seq),
            }
        }
        if !done.is_empty() {
            let n = self
                .store
                .complete(&self.db, &self.id, now, &done, delete, &with_rows)
                .await? as usize;
            report.delivered += n;
            report.lease_lost += done.len().saturating_sub(n);
        }
        // Released rows go back before any outcome is written: an outcome ends the lease of an
        // aggregate's earlier message, and until then its later ones must stay covered.
        if !released.is_empty() {
            self.store.release(&self.db, &self.id, &released).await?;
            report.released += released.len();
        }
        for (seq, id, outcome) in outcomes {
            if self
                .store
                .record_outcome(&self.db, &self.id, now, (seq, id), &outcome)
                .await?
            {
                match outcome.status {
                    MessageStatus::Delivered => report.delivered += 1,
                    MessageStatus::Pending => report.retried += 1,
                    MessageStatus::Dead => report.dead += 1,
                }
            } else {
                report.lease_lost += 1;
            }
        }
        if report.lease_lost > 0 {
            tracing::warn!(
                relay = %self.id, messages = report.lease_lost,
                "lease expired before the outcome was written: another relay took these over \
                 and they may be delivered twice"
            );
        }
        Ok(report)
    }
}

fn report(e: &Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What a relay adds to the [`HandlerContext`] of the handlers it calls.
pub trait HandlerContextExt {
    /// The relay's database connection: begin a [`UnitOfWork`](crate::UnitOfWork) on it and the
    /// events you record are caused by the message being handled.
    ///
    /// Fails with [`outbox_core::Error::MissingState`] for a context that no relay built.
    fn db(&self) -> outbox_core::Result<&DatabaseConnection>;
}

impl HandlerContextExt for HandlerContext {
    fn db(&self) -> outbox_core::Result<&DatabaseConnection> {
        self.state::<DatabaseConnection>()
    }
}
