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
use crate::driver::{
    BlockWrite, Completion, ErrorText, Fault, OutcomeWrite, ReleaseWrite, Written, fault,
};
use crate::entity::MessageStatus;
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
    /// Given back unrun, undoing only this claim (see [`ReleaseWrite::undo_claim`]).
    Unclaim(Vec<i64>),
}

impl Item {
    /// How many messages it is about (without allocating: the gathering loop counts each item).
    fn len(&self) -> usize {
        match self {
            Item::Delivered(_) | Item::Outcome(_) => 1,
            Item::Block(_) => 0,
            Item::Release(v) | Item::Unclaim(v) => v.len(),
        }
    }

    fn seqs(&self) -> Vec<i64> {
        match self {
            Item::Delivered(s) => vec![*s],
            Item::Outcome(o) => vec![o.seq],
            Item::Block(_) => Vec::new(),
            Item::Release(v) | Item::Unclaim(v) => v.clone(),
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
        let mut n = count(&first);
        let mut batches = vec![first];
        let deadline = tokio::time::sleep(shared.settings.flush_after);
        tokio::pin!(deadline);
        while n < limit {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(b) => {
                        n += count(&b);
                        batches.push(b);
                    }
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        let w = write(&shared, &mut batches).await;
        total += w;
        for b in batches {
            if let Some(ack) = b.ack {
                let _ = ack.send(());
            }
        }
    }
    total
}

fn count(batch: &Batch) -> usize {
    batch.items.iter().map(Item::len).sum()
}

/// Writes the batches: all in one transaction; when the database refuses it, split until the
/// batch it refuses is found, whose outcome is recorded as `outcome_unwritable` while the rest
/// commits. A write the database could not take (a lost connection, a deadlock) is retried
/// with back-off for up to one lease (after that the leases have expired and other relays
/// deliver the messages again).
async fn write(shared: &Shared, batches: &mut [Batch]) -> Written {
    let units: Vec<Vec<Item>> = batches
        .iter_mut()
        .map(|b| std::mem::take(&mut b.items))
        .filter(|u| !u.is_empty())
        .collect();
    let seqs: Vec<i64> = units.iter().flatten().flat_map(Item::seqs).collect();
    let give_up = tokio::time::Instant::now() + shared.settings.lease;
    let mut backoff = Duration::from_millis(50);
    let mut total = Written::default();
    let mut todo = units;
    let mut again = false;
    while !todo.is_empty() {
        let (w, left, error) = write_split(shared, todo, again).await;
        total += w;
        todo = left;
        let Some(e) = error else { break };
        // The failed try may have committed before its answer was lost: the next one counts a
        // row this relay already wrote as written, not as lost.
        again = true;
        super::stats::bump(&shared.stats.errors, 1);
        if tokio::time::Instant::now() + backoff < give_up {
            tracing::warn!(relay = %shared.id, error = %e, retry_in = ?backoff, "could not write outcomes");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        } else {
            tracing::error!(
                relay = %shared.id, error = %e, messages = todo.iter().flatten().flat_map(Item::seqs).count(),
                "gave up writing outcomes; these messages will be delivered again"
            );
            break;
        }
    }
    if total.lease_lost > 0 {
        tracing::warn!(
            relay = %shared.id, messages = total.lease_lost,
            "lease expired before the outcome was written: another relay took these over \
             and they may be delivered twice"
        );
    }
    shared.stats.written(&total);
    super::metrics::written(&total);
    super::probe::mark(super::probe::Stage::Written, &seqs);
    shared.held.written(seqs);
    total
}

/// One try of `units`: what was written, the units left and why, when the database could not
/// take them.
async fn write_split(
    shared: &Shared,
    units: Vec<Vec<Item>>,
    again: bool,
) -> (Written, Vec<Vec<Item>>, Option<crate::Error>) {
    let mut written = Written::default();
    let mut stack = vec![units];
    while let Some(mut part) = stack.pop() {
        let c = completion(shared, &part);
        let e = match shared
            .driver
            .complete(&shared.db, &shared.id, &c, again)
            .await
        {
            Ok(w) => {
                written += w;
                continue;
            }
            Err(e) => e,
        };
        if fault(&e) != Fault::Refused {
            stack.push(part);
            return (written, stack.into_iter().flatten().collect(), Some(e));
        }
        if part.len() > 1 {
            let second = part.split_off(part.len() / 2);
            stack.push(second);
            stack.push(part);
            continue;
        }
        // The one message (with what it does to its aggregate) the database refuses: record
        // that, with the database's error, in place of its outcome.
        let fallback = unwritable(shared, &c, &e);
        tracing::error!(
            relay = %shared.id, error = %e, messages = ?c.seqs(),
            "the database refused this outcome: recorded as outcome_unwritable"
        );
        match shared
            .driver
            .complete(&shared.db, &shared.id, &fallback, again)
            .await
        {
            Ok(mut w) => {
                w.unwritable += fallback.outcomes.len() as u64;
                written += w;
            }
            Err(e2) => {
                stack.push(part);
                return (written, stack.into_iter().flatten().collect(), Some(e2));
            }
        }
    }
    (written, Vec::new(), None)
}

/// The completion of `units`.
fn completion(shared: &Shared, units: &[Vec<Item>]) -> Completion {
    let mut c = Completion {
        delete: shared.settings.delivered == DeliveredRows::Delete,
        ..Completion::default()
    };
    let mut tokens = Vec::new();
    for item in units.iter().flatten() {
        match item {
            Item::Delivered(s) => c.delivered.push(*s),
            Item::Outcome(o) => {
                tokens.push(o.token);
                c.outcomes.push(o.clone());
            }
            Item::Block(b) => c.blocks.push(b.clone()),
            Item::Release(v) => c.releases.push(ReleaseWrite {
                seqs: v.clone(),
                undo_claim: false,
            }),
            Item::Unclaim(v) => c.releases.push(ReleaseWrite {
                seqs: v.clone(),
                undo_claim: true,
            }),
        }
    }
    tokens.extend(shared.held.tokens_of(c.seqs()));
    tokens.sort_unstable();
    tokens.dedup();
    c.tokens = tokens;
    c
}

/// `c` with every outcome's error (and every failed delivery's) replaced by the database's
/// refusal, kind `outcome_unwritable`; a message delivered at once becomes such an outcome
/// too. Statuses, attempts and retry times stay: the retry policy still counts exactly.
fn unwritable(shared: &Shared, c: &Completion, e: &crate::Error) -> Completion {
    let text = ErrorText::new(&format!("the database refused this message's outcome: {e}"));
    let error = Some((text, "outcome_unwritable"));
    let mut f = c.clone();
    for seq in std::mem::take(&mut f.delivered) {
        f.outcomes.push(OutcomeWrite {
            seq,
            token: shared.held.token(seq).unwrap_or(0),
            message_id: uuid::Uuid::nil(),
            status: MessageStatus::Delivered,
            retry_in: Duration::ZERO,
            error: None,
            deliveries: Vec::new(),
            ran: true,
            delete: c.delete,
        });
    }
    for o in &mut f.outcomes {
        o.error = error.clone();
        for d in &mut o.deliveries {
            if d.error.is_some() {
                d.error = error.clone();
            }
        }
    }
    f
}
