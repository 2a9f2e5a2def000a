//! The completer: writes fates as they are decided, a few at a time, so a crash loses only
//! the messages still running and the few decided in the last moments.
//!
//! It collects what the workers decide until `batch_size` messages or `flush_after` have
//! passed, whichever comes first, then writes them with one [`Driver::complete`]
//! (fenced by the relay's lease, as every write of a relay is).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::Shared;
use crate::driver::{BlockWrite, Completion, OutcomeWrite, ReleaseWrite, Written};
use crate::relay::policy::DeliveredRows;

/// Something to write about one or more held messages.
#[derive(Debug)]
pub(crate) enum Item {
    /// Every delivery succeeded at the first try.
    Delivered(i64),
    Outcome(OutcomeWrite),
    Block(BlockWrite),
    /// Given back without an outcome.
    Release(Vec<i64>),
}

impl Item {
    fn seqs(&self) -> Vec<i64> {
        match self {
            Item::Delivered(s) => vec![*s],
            Item::Outcome(o) => vec![o.seq],
            Item::Block(_) => Vec::new(),
            Item::Release(v) => v.clone(),
        }
    }
}

struct Batch {
    items: Vec<Item>,
    /// Told once the items are written.
    ack: Option<oneshot::Sender<()>>,
}

/// Sends items to the completer.
#[derive(Clone)]
pub(crate) struct Completer {
    tx: mpsc::UnboundedSender<Batch>,
}

impl Completer {
    /// Starts a completer for `shared`'s relay. It ends, after writing everything sent, when
    /// every [`Completer`] is dropped; its task returns what it wrote.
    pub(crate) fn spawn(shared: Arc<Shared>) -> (Self, JoinHandle<Written>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, tokio::spawn(run(shared, rx)))
    }

    /// Queues `items` (the fate of a message and what it does to its aggregate), to be written
    /// together.
    pub(crate) fn send(&self, items: Vec<Item>) {
        let _ = self.tx.send(Batch { items, ack: None });
    }

    /// Queues `items` and waits until they are written (or could not be).
    pub(crate) async fn send_and_wait(&self, items: Vec<Item>) {
        let (ack, done) = oneshot::channel();
        if self
            .tx
            .send(Batch {
                items,
                ack: Some(ack),
            })
            .is_ok()
        {
            let _ = done.await;
        }
    }
}

async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Batch>) -> Written {
    let mut total = Written::default();
    let limit = shared.settings.batch_size as usize;
    while let Some(first) = rx.recv().await {
        let mut batches = vec![first];
        let deadline = tokio::time::sleep(shared.settings.flush_after);
        tokio::pin!(deadline);
        while count(&batches) < limit {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(b) => batches.push(b),
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        let w = write(&shared, &mut batches).await;
        total = add(total, w);
        for b in batches {
            if let Some(ack) = b.ack {
                let _ = ack.send(());
            }
        }
    }
    total
}

fn count(batches: &[Batch]) -> usize {
    batches
        .iter()
        .flat_map(|b| &b.items)
        .map(|i| i.seqs().len())
        .sum()
}

/// Writes the batches, retrying a failed write with back-off for up to one lease (after that
/// the leases have expired and other relays deliver the messages again).
async fn write(shared: &Shared, batches: &mut [Batch]) -> Written {
    let mut c = Completion {
        delete: shared.settings.delivered == DeliveredRows::Delete,
        ..Completion::default()
    };
    let mut seqs = Vec::new();
    for item in batches.iter_mut().flat_map(|b| b.items.drain(..)) {
        seqs.extend(item.seqs());
        match item {
            Item::Delivered(s) => c.delivered.push(s),
            Item::Outcome(o) => c.outcomes.push(o),
            Item::Block(b) => c.blocks.push(b),
            Item::Release(v) => c.releases.push(ReleaseWrite { seqs: v }),
        }
    }
    let give_up = tokio::time::Instant::now() + shared.settings.lease;
    let mut backoff = Duration::from_millis(50);
    let written = loop {
        match shared.driver.complete(&shared.db, &shared.id, &c).await {
            Ok(w) => break w,
            Err(e) if tokio::time::Instant::now() + backoff < give_up => {
                super::stats::bump(&shared.stats.errors, 1);
                tracing::warn!(relay = %shared.id, error = %e.report(), retry_in = ?backoff, "could not write outcomes");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                super::stats::bump(&shared.stats.errors, 1);
                tracing::error!(
                    relay = %shared.id, error = %e.report(), messages = seqs.len(),
                    "gave up writing outcomes; these messages will be delivered again"
                );
                break Written::default();
            }
        }
    };
    if written.lease_lost > 0 {
        tracing::warn!(
            relay = %shared.id, messages = written.lease_lost,
            "lease expired before the outcome was written: another relay took these over \
             and they may be delivered twice"
        );
    }
    shared.stats.written(&written);
    super::metrics::written(&written);
    shared.held.written(seqs);
    written
}

fn add(a: Written, b: Written) -> Written {
    Written {
        delivered: a.delivered + b.delivered,
        unhandled: a.unhandled + b.unhandled,
        retried: a.retried + b.retried,
        dead: a.dead + b.dead,
        left_for_others: a.left_for_others + b.left_for_others,
        released: a.released + b.released,
        lease_lost: a.lease_lost + b.lease_lost,
    }
}
