//! The messages a relay holds, and the heartbeat that keeps their leases while they run.
//!
//! The heartbeat is a task of its own: a handler that blocks its thread, or a slow batch,
//! cannot stop it, so a live relay never loses its leases to another relay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Claimed, its fate not decided yet (queued or running).
    Open,
    /// Decided; the completer has not written it yet.
    Decided,
    /// Its lease passed to another relay while it was open: its handler calls are cancelled,
    /// it is not run (again) and nothing is written about it.
    Lost,
}

#[derive(Debug)]
struct Entry {
    state: State,
    /// The token of the claim that returned it.
    token: i64,
    /// Cancels its handler calls, while they run.
    cancel: Option<CancellationToken>,
    /// Runs in an aggregate chain of this relay ([`super::chain`]) and has not held its
    /// aggregate back (so far): a later run of its aggregate may be claimed behind it.
    passable: bool,
}

/// The messages a relay holds: claimed and not yet written.
#[derive(Debug)]
pub(crate) struct Held {
    map: Mutex<HashMap<i64, Entry>>,
    /// Bumped when a message is decided: room for another claim.
    decided: watch::Sender<u64>,
    /// Bumped when the completer wrote: the database changed (followers may be free).
    written: watch::Sender<u64>,
}

impl Default for Held {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
            decided: watch::channel(0).0,
            written: watch::channel(0).0,
        }
    }
}

impl Held {
    fn lock(&self) -> MutexGuard<'_, HashMap<i64, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages claimed under the claim `token`.
    pub(crate) fn claimed(&self, seqs: impl IntoIterator<Item = i64>, token: i64) {
        self.lock().extend(seqs.into_iter().map(|s| {
            (
                s,
                Entry {
                    state: State::Open,
                    token,
                    cancel: None,
                    passable: false,
                },
            )
        }));
    }

    /// The message is about to run with `cancel` on its handlers' contexts. `false` when its
    /// lease was lost already: then it must not run.
    pub(crate) fn running(&self, seq: i64, cancel: &CancellationToken) -> bool {
        match self.lock().get_mut(&seq) {
            Some(e) if e.state == State::Lost => false,
            Some(e) => {
                e.cancel = Some(cancel.clone());
                true
            }
            None => true,
        }
    }

    /// Marks the open ones of `seqs` lost and cancels their handler calls. Returns how many
    /// were running.
    pub(crate) fn lost(&self, seqs: &[i64]) -> u64 {
        let mut running = 0;
        let mut m = self.lock();
        for s in seqs {
            if let Some(e) = m.get_mut(s)
                && e.state == State::Open
            {
                e.state = State::Lost;
                if let Some(c) = e.cancel.take() {
                    c.cancel();
                    running += 1;
                }
            }
        }
        running
    }

    /// These messages run in an aggregate chain: until one of them holds its aggregate back,
    /// a claim may take the next run of their aggregates (see [`Held::passable`]).
    pub(crate) fn chained(&self, seqs: impl IntoIterator<Item = i64>) {
        let mut m = self.lock();
        for s in seqs {
            if let Some(e) = m.get_mut(&s)
                && e.state == State::Open
            {
                e.passable = true;
            }
        }
    }

    /// Their fates are decided, and they hold their aggregates back (a retry, a dead message,
    /// a release) or run outside any chain.
    pub(crate) fn decided(&self, seqs: impl IntoIterator<Item = i64>) {
        self.decide(seqs, false);
    }

    /// Their fates are decided and leave their aggregates free (delivered, unhandled): a
    /// chained one stays passable until written.
    pub(crate) fn decided_free(&self, seqs: impl IntoIterator<Item = i64>) {
        self.decide(seqs, true);
    }

    fn decide(&self, seqs: impl IntoIterator<Item = i64>, free: bool) {
        {
            let mut m = self.lock();
            for s in seqs {
                if let Some(e) = m.get_mut(&s)
                    && e.state == State::Open
                {
                    e.state = State::Decided;
                    e.cancel = None;
                    e.passable &= free;
                }
            }
        }
        self.decided.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Held messages a claim may treat as no obstacle to the next run of their aggregate:
    /// running in a chain, or decided without holding their aggregate back, and not lost.
    /// What a claim returns behind them is queued on their chain, or given back if the chain
    /// broke meanwhile ([`super::chain::Chains::admit`]).
    pub(crate) fn passable(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.passable && e.state != State::Lost)
            .map(|(s, _)| *s)
            .collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn written(&self, seqs: impl IntoIterator<Item = i64>) {
        {
            let mut m = self.lock();
            for s in seqs {
                m.remove(&s);
            }
        }
        self.written.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Forgets the lost ones of `seqs` (nothing will be written about them).
    pub(crate) fn forget_lost(&self, seqs: &[i64]) {
        let mut m = self.lock();
        for s in seqs {
            if m.get(s).is_some_and(|e| e.state == State::Lost) {
                m.remove(s);
            }
        }
    }

    /// The claim token of a held message.
    pub(crate) fn token(&self, seq: i64) -> Option<i64> {
        self.lock().get(&seq).map(|e| e.token)
    }

    /// The distinct claim tokens of `seqs`.
    pub(crate) fn tokens_of(&self, seqs: impl IntoIterator<Item = i64>) -> Vec<i64> {
        let m = self.lock();
        let mut v: Vec<i64> = seqs
            .into_iter()
            .filter_map(|s| m.get(&s).map(|e| e.token))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Messages claimed and not decided.
    pub(crate) fn open(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.state == State::Open)
            .map(|(s, _)| *s)
            .collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn open_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| e.state == State::Open)
            .count()
    }

    /// Every message held, lost ones too: a claim of this relay skips them all.
    pub(crate) fn all(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.lock().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The messages whose lease must be kept (all but the lost), and their claims' tokens.
    fn to_extend(&self) -> (Vec<i64>, Vec<i64>) {
        let m = self.lock();
        let mut seqs = Vec::new();
        let mut tokens = Vec::new();
        for (s, e) in m.iter().filter(|(_, e)| e.state != State::Lost) {
            seqs.push(*s);
            tokens.push(e.token);
        }
        seqs.sort_unstable();
        tokens.sort_unstable();
        tokens.dedup();
        (seqs, tokens)
    }

    pub(crate) fn on_decided(&self) -> watch::Receiver<u64> {
        self.decided.subscribe()
    }

    pub(crate) fn on_written(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }
}

/// Extends the leases of every held message every third of the lease, until cancelled; with
/// `announce`, also refreshes the relay's row in the relays table.
pub(crate) async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken, announce: bool) {
    let mut tick = tokio::time::interval(shared.settings.lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (held, tokens) = shared.held.to_extend();
        if announce
            && let Err(e) = shared
                .driver
                .relay_heartbeat(&shared.db, &shared.id, held.len())
                .await
        {
            tracing::debug!(relay = %shared.id, error = %e.report(), "could not record the relay's heartbeat");
        }
        if held.is_empty() {
            continue;
        }
        let result = shared
            .driver
            .extend_leases(
                &shared.db,
                &shared.id,
                &held,
                &tokens,
                shared.settings.lease,
            )
            .await;
        match result {
            Ok(kept) if kept.len() < held.len() => {
                let gone: Vec<i64> = held.into_iter().filter(|s| !kept.contains(s)).collect();
                // Only open messages matter: a decided one was written meanwhile, or its
                // write is fenced and counted as lost by the completer.
                let cancelled = shared.held.lost(&gone);
                if cancelled > 0 {
                    super::stats::bump(&shared.stats.cancelled, cancelled);
                    tracing::warn!(
                        relay = %shared.id, cancelled,
                        "lost the lease on running messages (it lapsed and another relay \
                         claimed them): their handler calls are cancelled and their outcomes \
                         dropped"
                    );
                }
            }
            Ok(_) => {}
            Err(e) => warn_lease(&shared.id, &e),
        }
    }
}

fn warn_lease(relay: &str, e: &Error) {
    tracing::warn!(relay = %relay, error = %e.report(), "could not extend leases");
}
