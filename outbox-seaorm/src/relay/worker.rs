//! Running claimed messages: one group per aggregate run (per message when unordered), each
//! handler call on a task of its own, each verdict turned into what the completer writes.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use outbox_seaorm_core::{HandlerContext, HandlerEntry, dispatch};

use super::Shared;
use super::completer::{Completer, Item};
use super::decide::{self, Ran, Verdict};
use super::metrics;
use super::policy::DeliveryOrder;
use super::stats::bump;
use crate::driver::{BlockWrite, Claimed, DeliveryState, ErrorText, OutcomeWrite};
use crate::entity::{DeliveryStatus, MessageStatus};

/// Per-handler states of the messages of a batch that failed before.
pub(crate) type Prior = HashMap<Uuid, HashMap<String, DeliveryState>>;

/// Splits a batch into groups: in per-aggregate order, the run of each aggregate (in position
/// order) and each delayed message alone; unordered, each message alone.
pub(crate) fn groups(batch: Vec<Claimed>, order: DeliveryOrder) -> Vec<Vec<Claimed>> {
    let mut groups: Vec<Vec<Claimed>> = Vec::new();
    match order {
        DeliveryOrder::Unordered => groups.extend(batch.into_iter().map(|c| vec![c])),
        DeliveryOrder::PerAggregate(_) => {
            let mut index: HashMap<(String, String), usize> = HashMap::new();
            for c in batch {
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
            for g in &mut groups {
                g.sort_by_key(|c| c.envelope.position);
            }
        }
    }
    groups
}

/// How a group runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Alongside other groups; verdicts are queued for the completer.
    Normal,
    /// Alone, after a relay died holding some of these messages: a suspect's crash is counted
    /// before it runs, and every verdict is written before the next message starts, so a crash
    /// is blamed on the message that was running, and on no other.
    Careful,
}

/// Runs a group's messages one after the other. When one holds its aggregate back (a retry,
/// a dead message that blocks, an unknown type), the rest of the group is given back.
/// Returns whether every message left its aggregate free (none held it back or was lost).
pub(crate) async fn run_group(
    shared: &Arc<Shared>,
    group: Vec<Claimed>,
    prior: &Prior,
    out: &Completer,
    mode: Mode,
) -> bool {
    let mut clean = true;
    let mut rest = group.into_iter();
    while let Some(c) = rest.next() {
        let seq = c.envelope.sequence;
        let Some(verdict) = run_message(shared, &c, prior.get(&c.envelope.message_id), mode).await
        else {
            // The lease is gone (another relay holds the message now): nothing to write, and
            // the handler calls, if any ran, have ended.
            shared.held.written([seq]);
            clean = false;
            continue;
        };
        let mut items = vec![item(shared, &c, &verdict, prior)];
        let hold = decide::hold(&verdict, &shared.policy).filter(|_| !c.delayed);
        if let Some(hold) = hold {
            let released: Vec<i64> = rest.by_ref().map(|c| c.envelope.sequence).collect();
            if !released.is_empty() {
                items.push(Item::Release(released.clone()));
            }
            items.push(Item::Block(BlockWrite {
                aggregate_type: c.envelope.aggregate_type.clone(),
                aggregate_id: c.envelope.aggregate_id.clone(),
                after_position: c.envelope.position,
                hold,
            }));
            shared.held.decided(released);
        }
        if hold.is_some() {
            clean = false;
            shared.held.decided([seq]);
        } else {
            shared.held.decided_free([seq]);
        }
        super::probe::mark(super::probe::Stage::Decided, &[seq]);
        match mode {
            Mode::Normal => out.send(items),
            Mode::Careful => out.send_and_wait(items).await,
        }
    }
    clean
}

/// Decides one message: runs the handlers that have not succeeded yet (each on its own task)
/// unless the message is left for another relay or parked. `None` when the relay lost it.
async fn run_message(
    shared: &Arc<Shared>,
    c: &Claimed,
    prior: Option<&HashMap<String, DeliveryState>>,
    mode: Mode,
) -> Option<Verdict> {
    let envelope = &c.envelope;
    let mut crashes = c.crashes;
    if mode == Mode::Careful && c.claims > 1 {
        // Counted before it runs alone: if this process dies now, the count stands.
        match shared
            .driver
            .count_crash(&shared.db, &shared.id, envelope.sequence, c.token)
            .await
        {
            Ok(true) => crashes += 1,
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(relay = %shared.id, error = %e.report(), "could not count a crash; running the message anyway");
            }
        }
    }
    let known = shared.registry.understands(envelope);
    if let Some(v) = decide::before_running(known, &envelope.event_type, crashes, &shared.policy) {
        match &v {
            Verdict::Crashed { crashes } => tracing::error!(
                relay = %shared.id, message_id = %envelope.message_id, crashes,
                "parking a message that killed its relay while running alone"
            ),
            _ => tracing::debug!(
                relay = %shared.id, message_id = %envelope.message_id,
                event_type = %envelope.event_type,
                "event type unknown here; leaving the message for a relay that knows it"
            ),
        }
        return Some(v);
    }
    let entries: Vec<&HandlerEntry> = shared.registry.deliveries_for(envelope).collect();
    if entries.is_empty() && shared.registry.published_by_cdc(envelope) {
        // Change data capture publishes it and nothing here runs: complete, as the README's
        // hand-off says (the relay does not check what the capture did).
        return Some(decide::decide(
            Vec::new(),
            false,
            prior.is_some_and(|p| !p.is_empty()),
            &shared.policy,
        ));
    }
    if entries.is_empty() {
        bump(&shared.stats.unhandled, 1);
        if shared.first_unhandled(&envelope.event_type) {
            tracing::warn!(
                relay = %shared.id, event_type = %envelope.event_type,
                "no handler or route in this relay takes this event type: its messages are \
                 marked `unhandled`, not delivered (is the crate with its handler linked? a \
                 crate the binary never names is not: add `use that_crate as _;`; then \
                 `outbox requeue --status unhandled` delivers them) (logged once per type)"
            );
        }
        return Some(Verdict::Unhandled);
    }
    let to_run = decide::still_to_run(entries.iter().map(|e| e.name()), prior);
    let dead_before = entries.iter().any(|e| {
        prior
            .and_then(|p| p.get(e.name()))
            .is_some_and(|s| s.status == DeliveryStatus::Dead)
    });
    // Cancelled when the heartbeat finds the lease lost: handlers see it on their context.
    let cancel = tokio_util::sync::CancellationToken::new();
    if !shared.held.running(envelope.sequence, &cancel) {
        return None;
    }
    let envelope = c.envelope.clone();
    let calls = to_run.into_iter().map(|(name, before)| {
        let entry = entries
            .iter()
            .find(|e| e.name() == name)
            .expect("to_run names come from entries");
        let ctx = HandlerContext::new(
            envelope.clone(),
            Arc::from(name),
            before + 1,
            shared.extensions.clone(),
            shared.registry.upcasters().clone(),
        )
        .with_host(shared.host.clone())
        .with_cancellation(cancel.clone());
        let timeout = shared.settings.handler_timeout;
        let is_route = shared.registry.routes().any(|r| r.name() == name);
        let event_type = &envelope.event_type;
        async move {
            let started = std::time::Instant::now();
            let result = dispatch::invoke(entry, &ctx, timeout).await;
            metrics::delivery(name, is_route, event_type, started.elapsed(), &result);
            Ran {
                handler: name.to_owned(),
                before,
                result,
            }
        }
    });
    let grace = shared.settings.cancel_grace;
    let runs = tokio::select! {
        runs = futures_util::future::join_all(calls) => runs,
        // Dropping the calls aborts their tasks.
        () = async { cancel.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(
                relay = %shared.id, message_id = %envelope.message_id, grace = ?grace,
                "lease lost: handler calls that did not stop within the grace period are aborted"
            );
            return None;
        }
    };
    if cancel.is_cancelled() {
        // Another relay holds the message now: this run's outcome is not ours to write.
        return None;
    }
    let had_rows = prior.is_some_and(|p| !p.is_empty());
    let verdict = decide::decide(runs, dead_before, had_rows, &shared.policy);
    if let Verdict::Delivered { .. } = &verdict {
        metrics::delivered(&envelope.event_type, envelope.occurred_at);
    }
    if let Verdict::Dead { error, .. } = &verdict {
        tracing::error!(
            relay = %shared.id, message_id = %envelope.message_id, error = %error.0,
            "message is dead"
        );
    }
    Some(verdict)
}

/// What the completer writes for `verdict`.
fn item(shared: &Shared, c: &Claimed, verdict: &Verdict, prior: &Prior) -> Item {
    let had_rows = prior
        .get(&c.envelope.message_id)
        .is_some_and(|p| !p.is_empty());
    let outcome = |status, retry_in, error: Option<(ErrorText, &'static str)>, deliveries, ran| {
        Item::Outcome(OutcomeWrite {
            seq: c.envelope.sequence,
            token: c.token,
            message_id: c.envelope.message_id,
            status,
            retry_in,
            error,
            deliveries,
            ran,
            delete: shared.settings.delivered == super::DeliveredRows::Delete,
        })
    };
    let now = std::time::Duration::ZERO;
    match verdict.clone() {
        Verdict::Delivered { deliveries } if deliveries.is_empty() && !had_rows => {
            Item::Delivered(c.envelope.sequence)
        }
        Verdict::Delivered { deliveries } => {
            outcome(MessageStatus::Delivered, now, None, deliveries, true)
        }
        Verdict::Retry {
            after,
            error,
            deliveries,
        } => outcome(MessageStatus::Pending, after, Some(error), deliveries, true),
        Verdict::Dead { error, deliveries } => {
            outcome(MessageStatus::Dead, now, Some(error), deliveries, true)
        }
        Verdict::LeftForOthers { after, event_type } => outcome(
            MessageStatus::Pending,
            after,
            Some((
                ErrorText::new(&format!(
                    "no relay that knows event type `{event_type}` has taken this message yet \
                     (relay `{}` does not know it)",
                    shared.id
                )),
                "unknown_event_type",
            )),
            Vec::new(),
            false,
        ),
        Verdict::Unhandled => outcome(MessageStatus::Unhandled, now, None, Vec::new(), false),
        Verdict::Crashed { crashes } => outcome(
            MessageStatus::Dead,
            now,
            Some((
                ErrorText::new(&format!(
                    "relays died {crashes} times while running this message alone; parked \
                     without running it again (requeue it once the cause is fixed)"
                )),
                "crashed",
            )),
            Vec::new(),
            false,
        ),
    }
}
