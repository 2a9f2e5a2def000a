//! Aggregate chains: in per-aggregate order, the runs of one aggregate that this relay holds,
//! run one after the other on one task.
//!
//! Without chains, the next run of an aggregate can only be claimed once the database shows
//! its earlier messages delivered: the relay claims, runs, writes, and only then claims the
//! aggregate again, so with few aggregates it spends much of its time waiting for its own
//! writes. With chains, a claim may take the next run of an aggregate whose earlier messages
//! this relay is still running (the claim passes them as *passable*, see
//! [`Held::passable`](super::lease::Held::passable)); the new run is queued behind them and
//! starts only if every earlier one left the aggregate free. When one holds the aggregate back
//! (a retry, a dead message, a lost lease), the chain breaks: what is queued on it, and what
//! a claim in flight returns for it, is given back without running.
//!
//! A claim records which chains were live when it started ([`Chains::snapshot`]); a run it
//! returns is only admitted behind the same chain, or behind one that ended cleanly since.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::worker::Prior;
use crate::driver::Claimed;

/// A run of one aggregate's messages, with the per-handler states of its batch.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) group: Vec<Claimed>,
    pub(crate) prior: Arc<Prior>,
}

/// The aggregate of a claimed message.
pub(crate) fn key_of(c: &Claimed) -> Key {
    (
        c.envelope.aggregate_type.clone(),
        c.envelope.aggregate_id.clone(),
    )
}

/// An aggregate: (type, id).
pub(crate) type Key = (String, String);

/// The chains live when a claim started: aggregate → chain id.
pub(crate) type Snapshot = HashMap<Key, u64>;

#[derive(Debug)]
struct Chain {
    id: u64,
    queue: VecDeque<Run>,
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<Key, Chain>,
    next_id: u64,
    /// Chains that ended with every run leaving the aggregate free, since the last snapshot.
    ended_clean: HashSet<u64>,
}

/// The relay's live chains.
#[derive(Debug, Default)]
pub(crate) struct Chains {
    inner: Mutex<Inner>,
}

/// What to do with a claimed run.
#[derive(Debug)]
pub(crate) enum Admit {
    /// Start a chain (with this id) on a task of its own, running this run first.
    Start(u64, Run),
    /// Queued behind the aggregate's live chain.
    Queued,
    /// Give it back: the chain it was claimed behind broke.
    GiveBack(Run),
}

/// What a chain's task does after a run.
#[derive(Debug)]
pub(crate) enum Next {
    Run(Run),
    /// The chain ended.
    Done,
    /// The chain broke: give these runs back.
    GiveBack(Vec<Run>),
}

impl Chains {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live chains, taken before a claim's passable messages are read.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut inner = self.lock();
        inner.ended_clean.clear();
        inner.live.iter().map(|(k, c)| (k.clone(), c.id)).collect()
    }

    /// Admits `run` of aggregate `key`, returned by a claim that started with `snapshot`.
    pub(crate) fn admit(&self, key: Key, run: Run, snapshot: &Snapshot) -> Admit {
        let mut inner = self.lock();
        let behind = snapshot.get(&key).copied();
        if let Some(chain) = inner.live.get_mut(&key) {
            if behind == Some(chain.id) {
                chain.queue.push_back(run);
                return Admit::Queued;
            }
            // Claimed behind another chain of this aggregate, or behind none while one runs:
            // not behind anything this relay can vouch for.
            return Admit::GiveBack(run);
        }
        match behind {
            // The database saw nothing of this aggregate in the way.
            None => {}
            // Behind a chain that ended with its aggregate free.
            Some(id) if inner.ended_clean.contains(&id) => {}
            // Behind a chain that broke.
            Some(_) => return Admit::GiveBack(run),
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.live.insert(
            key,
            Chain {
                id,
                queue: VecDeque::new(),
            },
        );
        Admit::Start(id, run)
    }

    /// After a run of chain `id` of `key`: the next queued run, or the end of the chain.
    /// `clean`: every message of the run left the aggregate free.
    pub(crate) fn after_run(&self, key: &Key, id: u64, clean: bool) -> Next {
        let mut inner = self.lock();
        let Some(chain) = inner.live.get_mut(key).filter(|c| c.id == id) else {
            return Next::Done;
        };
        if clean && let Some(run) = chain.queue.pop_front() {
            return Next::Run(run);
        }
        let chain = inner.live.remove(key).expect("found above");
        if clean {
            inner.ended_clean.insert(id);
            Next::Done
        } else {
            Next::GiveBack(chain.queue.into_iter().collect())
        }
    }
}

impl Chains {
    /// Ends chain `id` of `key` whose task stopped before it ended (aborted at shutdown, or
    /// dropped with a foreground batch): returns what was queued on it, to give back. A chain
    /// left live would have later runs queued on it that nothing runs.
    pub(crate) fn abandon(&self, key: &Key, id: u64) -> Vec<Run> {
        let mut inner = self.lock();
        if inner.live.get(key).is_some_and(|c| c.id == id) {
            let chain = inner.live.remove(key).expect("found above");
            return chain.queue.into_iter().collect();
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: &str) -> Key {
        ("order".to_owned(), a.to_owned())
    }

    fn run() -> Run {
        Run {
            group: Vec::new(),
            prior: Arc::default(),
        }
    }

    #[test]
    fn a_run_is_admitted_behind_the_chain_it_was_claimed_behind_only() {
        let chains = Chains::default();
        let Admit::Start(first, _) = chains.admit(key("a"), run(), &Snapshot::new()) else {
            panic!("no chain yet: starts one");
        };
        let snap = chains.snapshot();
        assert!(matches!(
            chains.admit(key("a"), run(), &snap),
            Admit::Queued
        ));
        // A run claimed when no chain was live, while one runs now: not vouched for.
        assert!(matches!(
            chains.admit(key("a"), run(), &Snapshot::new()),
            Admit::GiveBack(_)
        ));
        // The queued run comes next, then the chain ends cleanly.
        assert!(matches!(
            chains.after_run(&key("a"), first, true),
            Next::Run(_)
        ));
        assert!(matches!(
            chains.after_run(&key("a"), first, true),
            Next::Done
        ));
        // A claim that started while it was live may start the next chain.
        assert!(matches!(
            chains.admit(key("a"), run(), &snap),
            Admit::Start(..)
        ));
    }

    #[test]
    fn an_abandoned_chain_gives_back_its_queue_and_admits_nothing_behind_it() {
        let chains = Chains::default();
        let Admit::Start(id, _) = chains.admit(key("a"), run(), &Snapshot::new()) else {
            panic!("starts");
        };
        let snap = chains.snapshot();
        assert!(matches!(
            chains.admit(key("a"), run(), &snap),
            Admit::Queued
        ));
        assert_eq!(chains.abandon(&key("a"), id).len(), 1);
        assert!(matches!(
            chains.admit(key("a"), run(), &snap),
            Admit::GiveBack(_)
        ));
        assert!(chains.abandon(&key("a"), id).is_empty());
    }

    #[test]
    fn a_broken_chain_gives_back_its_queue_and_what_was_claimed_behind_it() {
        let chains = Chains::default();
        let Admit::Start(id, _) = chains.admit(key("a"), run(), &Snapshot::new()) else {
            panic!("starts");
        };
        let snap = chains.snapshot();
        assert!(matches!(
            chains.admit(key("a"), run(), &snap),
            Admit::Queued
        ));
        let Next::GiveBack(queued) = chains.after_run(&key("a"), id, false) else {
            panic!("a run that held its aggregate back breaks the chain");
        };
        assert_eq!(queued.len(), 1);
        // A claim in flight behind the broken chain returns a run: given back.
        assert!(matches!(
            chains.admit(key("a"), run(), &snap),
            Admit::GiveBack(_)
        ));
        // A later claim, which saw no chain (the database holds the aggregate back), starts
        // one only if the database let the run through.
        let later = chains.snapshot();
        assert!(matches!(
            chains.admit(key("a"), run(), &later),
            Admit::Start(..)
        ));
    }
}
