//! What the outbox writes and reads, as the drivers see it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use outbox_seaorm_core::Envelope;

use super::ErrorText;
use crate::entity::{DeliveryStatus, MessageStatus};

/// A new row of the messages table.
#[derive(Debug, Clone)]
pub(crate) struct NewMessage {
    pub(crate) id: Uuid,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) event_type: String,
    pub(crate) event_version: u32,
    pub(crate) payload: String,
    pub(crate) headers: String,
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) not_before: Option<DateTime<Utc>>,
}

/// How a claim respects the order of each aggregate's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimOrder {
    /// Any available message.
    Any,
    /// Only runs of messages that start at their aggregate's head (its first undelivered
    /// message); `dead_blocks`: a dead message is still the head.
    PerAggregate { dead_blocks: bool },
}

/// What to claim.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimSpec<'a> {
    pub(crate) relay: &'a str,
    pub(crate) limit: u32,
    pub(crate) lease: Duration,
    pub(crate) order: ClaimOrder,
    /// How many available rows an ordered claim looks at (a bounded prefix of the pending
    /// rows, in sequence order).
    pub(crate) window: u32,
    /// The server-side time limit of each claim statement.
    pub(crate) timeout: Duration,
    /// The connection bounds every statement by `timeout` already (the relay's own pool, where
    /// [`Driver::reserved_bounds_statements`](super::Driver::reserved_bounds_statements)).
    pub(crate) bounded: bool,
    /// Written on every row claimed; every later write of the relay about them must match it.
    pub(crate) token: i64,
    /// Rows the relay still holds or runs: never claimed again by it, even if their lease
    /// lapsed (a relay never runs one message twice at once).
    pub(crate) held: &'a [i64],
    /// Held rows that do not hold their aggregate's next run back (per-aggregate order): they
    /// run in one of the relay's aggregate chains, which the next run will be queued on.
    pub(crate) passable: &'a [i64],
}

/// A row a relay claimed.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    /// Shared with its handlers' contexts as it is: no copy of the payload per message.
    pub(crate) envelope: Arc<Envelope>,
    /// Times it was claimed since its last outcome, this claim included: more than 1 means a
    /// relay claimed it before and never wrote what happened (it died, or hung past its lease).
    pub(crate) claims: u32,
    /// Times a relay died while running it alone.
    pub(crate) crashes: u32,
    /// Delayed messages stand outside their aggregate's order.
    pub(crate) delayed: bool,
    /// Whether an earlier attempt failed, so per-handler states may exist.
    pub(crate) failed_before: bool,
    /// The claim's token (see [`ClaimSpec::token`]).
    pub(crate) token: i64,
}

/// A handler's stored state for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeliveryState {
    pub(crate) status: DeliveryStatus,
    pub(crate) attempts: u32,
}

/// A row to upsert into the deliveries table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryWrite {
    pub(crate) handler: String,
    pub(crate) status: DeliveryStatus,
    pub(crate) attempts: u32,
    pub(crate) error: Option<(ErrorText, &'static str)>,
}

/// The new state of a message that did not simply succeed at once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutcomeWrite {
    pub(crate) seq: i64,
    /// The token of the claim it was run under.
    pub(crate) token: i64,
    pub(crate) message_id: Uuid,
    pub(crate) status: MessageStatus,
    /// For a pending message: when it is available again, from now.
    pub(crate) retry_in: Duration,
    pub(crate) error: Option<(ErrorText, &'static str)>,
    pub(crate) deliveries: Vec<DeliveryWrite>,
    /// Whether its handlers ran (counted in `attempts`); a message left for another relay
    /// did not run.
    pub(crate) ran: bool,
    /// Delete the row (and its delivery rows) instead of marking it delivered.
    pub(crate) delete: bool,
}

/// How long an aggregate's later messages wait behind a failed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Until the failed message's retry.
    For(Duration),
    /// Until an operator requeues or discards the dead message.
    Forever,
}

/// An aggregate whose later messages must wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockWrite {
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) after_position: i64,
    pub(crate) hold: Hold,
}

/// Messages given back without an outcome (behind a failed message of their aggregate, or at
/// shutdown). They are not counted as claimed without an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReleaseWrite {
    pub(crate) seqs: Vec<i64>,
    /// Undo only this claim (its count goes back one) rather than clear the count: a message a
    /// relay died holding stays marked as such (`claims > 1`), to run alone when next claimed.
    pub(crate) undo_claim: bool,
}

/// Everything the completer writes at once.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Completion {
    /// Messages whose every delivery succeeded at the first try (no delivery rows).
    pub(crate) delivered: Vec<i64>,
    /// Delete delivered rows instead of marking them.
    pub(crate) delete: bool,
    pub(crate) outcomes: Vec<OutcomeWrite>,
    pub(crate) blocks: Vec<BlockWrite>,
    pub(crate) releases: Vec<ReleaseWrite>,
    /// The tokens of the claims of every message in it (lists are fenced by these).
    pub(crate) tokens: Vec<i64>,
}

impl Completion {
    /// Every message it writes about.
    pub(crate) fn seqs(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.delivered.clone();
        v.extend(self.outcomes.iter().map(|o| o.seq));
        v.extend(self.releases.iter().flat_map(|r| r.seqs.iter().copied()));
        v
    }
}

/// What a completion wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    /// Messages marked delivered (or deleted).
    pub(crate) delivered: u64,
    /// Messages of a type nothing handled, marked unhandled without running anything.
    pub(crate) unhandled: u64,
    /// Messages scheduled for another attempt.
    pub(crate) retried: u64,
    /// Messages that became dead.
    pub(crate) dead: u64,
    /// Messages left for a relay that knows their type (pending, not run).
    pub(crate) left_for_others: u64,
    /// Messages given back.
    pub(crate) released: u64,
    /// Messages this relay no longer held (its lease had passed to another relay).
    pub(crate) lease_lost: u64,
    /// Messages whose outcome the database refused: recorded as `outcome_unwritable`.
    pub(crate) unwritable: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, b: Self) {
        self.delivered += b.delivered;
        self.unhandled += b.unhandled;
        self.retried += b.retried;
        self.dead += b.dead;
        self.left_for_others += b.left_for_others;
        self.released += b.released;
        self.lease_lost += b.lease_lost;
        self.unwritable += b.unwritable;
    }
}

impl Written {
    pub(crate) fn count(&mut self, o: &OutcomeWrite) {
        match (o.status, o.ran) {
            (MessageStatus::Delivered, _) => self.delivered += 1,
            (MessageStatus::Unhandled, _) => self.unhandled += 1,
            (MessageStatus::Dead, _) => self.dead += 1,
            (MessageStatus::Pending, true) => self.retried += 1,
            (MessageStatus::Pending, false) => self.left_for_others += 1,
        }
    }
}
