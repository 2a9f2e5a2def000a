//! The relay's policies: delivery order, what a dead message does to its aggregate, what
//! happens to delivered rows, and how long they are kept.

use std::time::Duration;

/// The order in which a relay delivers the messages of one aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryOrder {
    /// Messages are claimed in sequence order but delivered independently: the highest
    /// throughput, no order guarantee between messages of one aggregate.
    Unordered,
    /// The messages of one aggregate reach each handler in the order of their positions
    /// (commit order), across transactions and writers.
    PerAggregate(OnFailure),
}

/// In [`DeliveryOrder::PerAggregate`], what a message that failed for good does to the later
/// messages of its aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnFailure {
    /// They wait until the dead message is requeued (and delivered) or discarded: order is
    /// never broken. A message waiting for a retry always holds its aggregate back.
    Block,
    /// The dead message is parked and the aggregate goes on with the next one.
    Park,
}

/// What happens to a message's row once every handler succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveredRows {
    /// Mark it `delivered` and keep it (history for audits and dashboards); retention deletes it
    /// later.
    Keep,
    /// Delete it at once: fewer writes and a smaller table, no history.
    Delete,
}

/// Deleting delivered rows once they are old enough: in bounded batches (short statements, no
/// long lock on the table), by one relay at a time (a lock row with an expiry in the locks
/// table, so it works on every backend and survives a relay dying mid-round).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub(crate) keep_for: Duration,
    pub(crate) inbox_keep_for: Duration,
    pub(crate) every: Duration,
    pub(crate) batch_size: u32,
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
