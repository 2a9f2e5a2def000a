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
}

/// The messages a relay holds: claimed and not yet written.
#[derive(Debug)]
pub(crate) struct Held {
    map: Mutex<HashMap<i64, State>>,
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
    fn lock(&self) -> MutexGuard<'_, HashMap<i64, State>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn claimed(&self, seqs: impl IntoIterator<Item = i64>) {
        self.lock()
            .extend(seqs.into_iter().map(|s| (s, State::Open)));
    }

    pub(crate) fn decided(&self, seqs: impl IntoIterator<Item = i64>) {
        {
            let mut m = self.lock();
            for s in seqs {
                if let Some(st) = m.get_mut(&s) {
                    *st = State::Decided;
                }
            }
        }
        self.decided.send_modify(|n| *n = n.wrapping_add(1));
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

    /// Messages claimed and not decided.
    pub(crate) fn open(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .lock()
            .iter()
            .filter(|(_, st)| **st == State::Open)
            .map(|(s, _)| *s)
            .collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn open_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|st| **st == State::Open)
            .count()
    }

    /// Every message held (its lease must be kept).
    pub(crate) fn all(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.lock().keys().copied().collect();
        v.sort_unstable();
        v
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
        let held = shared.held.all();
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
            .extend_leases(&shared.db, &shared.id, &held, shared.settings.lease)
            .await;
        match result {
            Ok(n) if (n as usize) < held.len() => tracing::debug!(
                relay = %shared.id, held = held.len(), extended = n,
                "some leases were already written or taken over"
            ),
            Ok(_) => {}
            Err(e) => warn_lease(&shared.id, &e),
        }
    }
}

fn warn_lease(relay: &str, e: &Error) {
    tracing::warn!(relay = %relay, error = %e.report(), "could not extend leases");
}
