//! The relay: claims outbox rows, runs their handlers, retries, parks dead letters.
//!
//! How it runs (the way River and graphile-worker run jobs):
//!
//! - **Claim** ([`engine`]): batches under a lease, in per-aggregate order runs of messages
//!   that start at their aggregate's head; a new claim as soon as fewer than half a batch of
//!   the relay's messages are still undecided.
//! - **Chain** ([`chain`]): in per-aggregate order, a claim may take an aggregate's next run
//!   while this relay still runs the earlier one; it is queued on the aggregate's chain and
//!   starts only if the earlier ones left the aggregate free, or is given back.
//! - **Run** ([`worker`]): each group (an aggregate's run, or one message) on a task of its
//!   own, each handler call on a task of its own with its timeout measured from outside; a
//!   slow or blocking handler holds only its own message.
//! - **Decide** ([`decide`]): a pure function of the message's prior state, its handlers'
//!   results and the policy.
//! - **Write** ([`completer`]): verdicts are written a few milliseconds after they are made,
//!   one transaction per batch (split to find a message the database refuses, recorded as
//!   `outcome_unwritable`), fenced by the claim's token; the leases of everything still held
//!   are renewed by a heartbeat task ([`lease`]), which cancels the handler calls of leases it
//!   finds lost.
//! - **Report** ([`metrics`]): counters and histograms through the `metrics` facade, and
//!   gauges from one cheap query per interval by one relay at a time.
//! - **After a crash**: messages claimed before by a relay that never wrote their outcome are
//!   run one at a time, with a crash counted against each before it runs, so only a message
//!   that really kills its process is parked.

mod builder;
mod chain;
mod completer;
mod decide;
mod engine;
mod lease;
mod metrics;
mod policy;
pub(crate) mod probe;
mod retention;
mod stats;
mod untaken;
mod worker;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use outbox_seaorm_core::{Extensions, HandlerContext, Registry};

use crate::config::OutboxConfig;
use crate::driver::Driver;
use crate::error::Result;
use crate::listen;

pub use builder::RelayBuilder;
pub use policy::{DeliveredRows, DeliveryOrder, OnFailure, Retention};
pub use retention::RetentionReport;
pub use stats::{BatchReport, RelayStats};

/// The relay: start one with [`Relay::builder`].
///
/// Each relay claims batches of available messages under a lease (`locked_by`,
/// `locked_until`), so any number of relays, in one process or many, can run against one
/// outbox. Every handler of a message is a delivery of its own: one that fails is retried alone,
/// with exponential back-off, until it succeeds or the [`RetryPolicy`](outbox_seaorm_core::RetryPolicy)
/// gives up and the delivery is dead; the ones that succeeded are not run again.
pub struct Relay {
    shared: Arc<Shared>,
}

/// What the relay's tasks share.
pub(crate) struct Shared {
    pub(crate) db: DatabaseConnection,
    /// `db` bounds each statement on the server by the claim timeout (the relay's own pool on
    /// PostgreSQL): claims need no transaction to bound them.
    pub(crate) bounded: bool,
    pub(crate) driver: Arc<dyn Driver>,
    pub(crate) registry: Registry,
    pub(crate) extensions: Arc<Extensions>,
    pub(crate) host: Arc<RelayHost>,
    pub(crate) id: String,
    pub(crate) settings: Settings,
    pub(crate) policy: decide::Policy,
    pub(crate) stats: stats::Stats,
    pub(crate) held: lease::Held,
    /// The aggregate chains running (per-aggregate order).
    pub(crate) chains: chain::Chains,
    /// Event types already reported as handled by nothing here.
    pub(crate) unhandled_types: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Shared {
    /// Whether `event_type` is reported as unhandled for the first time.
    pub(crate) fn first_unhandled(&self, event_type: &str) -> bool {
        let mut seen = self
            .unhandled_types
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        seen.insert(event_type.to_owned())
    }
}

/// The relay's settings (see [`RelayBuilder`] for each one's meaning and default).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) batch_size: u32,
    pub(crate) poll_interval: Duration,
    pub(crate) lease: Duration,
    pub(crate) handler_timeout: Duration,
    pub(crate) concurrency: usize,
    pub(crate) delivered: DeliveredRows,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) retention: Option<Retention>,
    pub(crate) window: u32,
    pub(crate) claim_timeout: Duration,
    pub(crate) flush_after: Duration,
    pub(crate) metrics_interval: Option<Duration>,
    pub(crate) cancel_grace: Duration,
}

/// What the relay gives the handlers it calls, for [`HandlerContextExt`] and the inbox.
#[derive(Debug)]
pub(crate) struct RelayHost {
    pub(crate) db: DatabaseConnection,
    pub(crate) config: OutboxConfig,
    pub(crate) driver: Arc<dyn Driver>,
}

impl Relay {
    /// The relay's id, as written to `locked_by`.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The relay's counters so far.
    pub fn stats(&self) -> RelayStats {
        self.shared
            .stats
            .snapshot(self.shared.driver.conflicts_retried())
    }

    /// Claims and handles one batch, writes what happened, and returns it (no background
    /// task).
    pub async fn run_once(&self) -> Result<BatchReport> {
        engine::run_once(&self.shared).await
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
        let retention = self.shared.settings.retention.clone().unwrap_or_default();
        retention::round(&self.shared, &retention).await
    }

    /// Runs the relay on the current Tokio runtime: the claim loop, its completer and
    /// heartbeat, and the retention and PostgreSQL `LISTEN` tasks when they are configured.
    pub fn spawn(self) -> RelayHandle {
        let cancel = CancellationToken::new();
        let shared = self.shared;
        metrics::register();
        if let Some(retention) = shared.settings.retention.clone() {
            tokio::spawn(retention::run(shared.clone(), retention, cancel.clone()));
        }
        if let Some(every) = shared.settings.metrics_interval {
            tokio::spawn(metrics::gauges(shared.clone(), every, cancel.clone()));
        }
        if let Some(channel) = shared.driver.listen_channel() {
            tokio::spawn(listen::run(
                shared.db.clone(),
                channel,
                shared.id.clone(),
                cancel.clone(),
            ));
        }
        let task = tokio::spawn(engine::run(shared.clone(), cancel.clone()));
        RelayHandle {
            cancel,
            task: Some(task),
            shared,
        }
    }
}

/// A running relay. Dropping it asks the relay to stop (running messages still finish in the
/// background); [`shutdown`](Self::shutdown) also waits until it has.
#[must_use = "dropping the handle stops the relay"]
pub struct RelayHandle {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl RelayHandle {
    /// Stops claiming, lets running messages finish (up to the shutdown timeout, after which
    /// the unfinished ones are given back), writes every outcome, and waits for the relay to
    /// end.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!(relay = %self.shared.id, error = %e, "relay task ended abnormally");
        }
    }

    /// The relay's counters so far.
    pub fn stats(&self) -> RelayStats {
        self.shared
            .stats
            .snapshot(self.shared.driver.conflicts_retried())
    }

    /// The relay's id, as written to `locked_by`.
    pub fn id(&self) -> &str {
        &self.shared.id
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if self.task.is_some() {
            // `let _ = ...spawn().await?` drops the handle at once, which stops the relay.
            tracing::warn!(
                relay = %self.shared.id,
                "the RelayHandle was dropped, so the relay stops; keep the handle while it \
                 should run, and call shutdown() to stop it"
            );
        }
        self.cancel.cancel();
    }
}

impl fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayHandle")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.shared.id)
            .field("handlers", &self.shared.registry.len())
            .finish_non_exhaustive()
    }
}

/// The relay that built `ctx`.
pub(crate) fn host(ctx: &HandlerContext) -> outbox_seaorm_core::Result<&RelayHost> {
    ctx.host::<RelayHost>()
        .ok_or(outbox_seaorm_core::Error::MissingState {
            type_name: "outbox_seaorm relay (this context was not built by a relay)",
        })
}
