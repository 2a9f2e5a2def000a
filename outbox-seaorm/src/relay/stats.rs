//! What a relay has done since it started.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::driver::Written;

/// What one [`Relay::run_once`](crate::Relay::run_once) or [`Relay::drain`](crate::Relay::drain)
/// did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchReport {
    /// Messages claimed.
    pub claimed: usize,
    /// Messages whose every delivery succeeded.
    pub delivered: usize,
    /// Messages of a type this process knows that nothing here handles: marked `unhandled`
    /// without running anything (not delivered).
    pub unhandled: usize,
    /// Messages scheduled for another attempt.
    pub retried: usize,
    /// Messages that became dead.
    pub dead: usize,
    /// Messages given back untouched (behind a failed message of their aggregate, or at
    /// shutdown).
    pub released: usize,
    /// Messages of an event type this process does not know, left for a relay that does.
    pub left_for_others: usize,
    /// Messages another relay had taken over when this one wrote their outcome (lease expired).
    pub lease_lost: usize,
    /// Messages whose outcome the database refused, recorded with the error kind
    /// `outcome_unwritable` (also counted under their verdict).
    pub unwritable: usize,
}

impl BatchReport {
    pub(crate) fn add_written(&mut self, w: &Written) {
        self.delivered += w.delivered as usize;
        self.unhandled += w.unhandled as usize;
        self.retried += w.retried as usize;
        self.dead += w.dead as usize;
        self.left_for_others += w.left_for_others as usize;
        self.released += w.released as usize;
        self.lease_lost += w.lease_lost as usize;
        self.unwritable += w.unwritable as usize;
    }
}

impl std::ops::AddAssign for BatchReport {
    fn add_assign(&mut self, o: Self) {
        self.claimed += o.claimed;
        self.delivered += o.delivered;
        self.unhandled += o.unhandled;
        self.retried += o.retried;
        self.dead += o.dead;
        self.released += o.released;
        self.left_for_others += o.left_for_others;
        self.lease_lost += o.lease_lost;
        self.unwritable += o.unwritable;
    }
}

/// A snapshot of a relay's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Claims attempted, empty ones included.
    pub polls: u64,
    /// Claims that returned at least one message.
    pub batches: u64,
    /// Messages claimed.
    pub claimed: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages of a type nothing in this process handles, marked `unhandled` at once.
    pub unhandled: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Messages that became dead.
    pub dead: u64,
    /// Messages given back untouched.
    pub released: u64,
    /// Messages of an unknown event type left for another relay.
    pub left_for_others: u64,
    /// Messages run alone because a relay died (or hung) while holding them before.
    pub suspects: u64,
    /// Outcomes not written because the lease had passed to another relay.
    pub lease_lost: u64,
    /// Outcomes the database refused, recorded with the error kind `outcome_unwritable`.
    pub unwritable: u64,
    /// Handler calls cancelled because the heartbeat found their message's lease lost (their
    /// outcomes dropped).
    pub cancelled: u64,
    /// Group tasks that panicked; their messages were given back.
    pub group_panics: u64,
    /// Messages claimed behind earlier ones of their aggregate that this relay was still
    /// running (per-aggregate order), given back unrun because an earlier one held the
    /// aggregate back (a retry, a message left for a relay that knows its event type, a dead
    /// message under [`OnFailure::Block`](crate::OnFailure::Block), a lost lease), because
    /// their chain stopped early (shutdown), or while a relay's crash was being sorted out.
    /// They are counted in `released` too.
    pub chain_given_back: u64,
    /// Claims retried at once after a deadlock (MariaDB).
    pub conflicts_retried: u64,
    /// Database errors the relay recovered from.
    pub errors: u64,
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) polls: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) claimed: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) unhandled: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) left_for_others: AtomicU64,
    pub(crate) suspects: AtomicU64,
    pub(crate) lease_lost: AtomicU64,
    pub(crate) unwritable: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) group_panics: AtomicU64,
    pub(crate) chain_given_back: AtomicU64,
    pub(crate) errors: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    pub(crate) fn written(&self, w: &Written) {
        bump(&self.delivered, w.delivered);
        bump(&self.retried, w.retried);
        bump(&self.dead, w.dead);
        bump(&self.left_for_others, w.left_for_others);
        bump(&self.released, w.released);
        bump(&self.lease_lost, w.lease_lost);
        bump(&self.unwritable, w.unwritable);
    }

    pub(crate) fn snapshot(&self, conflicts_retried: u64) -> RelayStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayStats {
            polls: get(&self.polls),
            batches: get(&self.batches),
            claimed: get(&self.claimed),
            delivered: get(&self.delivered),
            unhandled: get(&self.unhandled),
            retried: get(&self.retried),
            dead: get(&self.dead),
            released: get(&self.released),
            left_for_others: get(&self.left_for_others),
            suspects: get(&self.suspects),
            lease_lost: get(&self.lease_lost),
            unwritable: get(&self.unwritable),
            cancelled: get(&self.cancelled),
            group_panics: get(&self.group_panics),
            chain_given_back: get(&self.chain_given_back),
            conflicts_retried,
            errors: get(&self.errors),
        }
    }
}
