//! What happens when recorded events are dropped without being saved.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::aggregate::{Owner, PendingEvent};

/// How the process reacts when events are dropped without being saved (see
/// [`on_unsaved_events`]): an aggregate's [`Events`](crate::Events) dropped with events never
/// saved, or a unit of work dropped with staged events without `commit` or `rollback`.
///
/// Either way the `outbox.events.dropped` counter (label `reason`: `unsaved` or
/// `unit_of_work_dropped`) grows by the number of events, through the `metrics` facade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnsavedEvents {
    /// Panic (unless the thread is already panicking). Opt-in, for tests: the mistake fails
    /// the test that makes it. A panic in `Drop` replaces whatever the dropping code was
    /// returning (an error travelling through `?`), so it is never the default.
    Panic,
    /// Log an error with `tracing` (target `outbox::unsaved`), naming the aggregate and the
    /// events. The default, in debug and release builds alike.
    Log,
}

const UNSET: u8 = 0;
const PANIC: u8 = 1;
const LOG: u8 = 2;

static POLICY: AtomicU8 = AtomicU8::new(UNSET);

/// Sets how the process reacts to events dropped unsaved (process-wide). The default is
/// [`UnsavedEvents::Log`]; a test suite that wants the mistake to fail its test opts in to
/// [`UnsavedEvents::Panic`].
///
/// ```
/// use outbox_seaorm_core::{on_unsaved_events, UnsavedEvents};
/// on_unsaved_events(UnsavedEvents::Panic);
/// ```
pub fn on_unsaved_events(policy: UnsavedEvents) {
    POLICY.store(code(policy), Ordering::Relaxed);
}

/// Sets the policy unless one was set already (by [`on_unsaved_events`] or an earlier call):
/// how a test kit turns on panicking without overriding the user's choice.
#[doc(hidden)]
pub fn on_unsaved_events_unless_set(policy: UnsavedEvents) {
    let _ = POLICY.compare_exchange(UNSET, code(policy), Ordering::Relaxed, Ordering::Relaxed);
}

fn code(policy: UnsavedEvents) -> u8 {
    match policy {
        UnsavedEvents::Panic => PANIC,
        UnsavedEvents::Log => LOG,
    }
}

fn policy() -> UnsavedEvents {
    match POLICY.load(Ordering::Relaxed) {
        PANIC => UnsavedEvents::Panic,
        _ => UnsavedEvents::Log,
    }
}

/// Reports events dropped unsaved, per the policy.
pub(crate) fn report(owner: Option<&Owner>, events: &[&PendingEvent]) {
    let aggregate = match owner {
        Some(o) => format!("aggregate `{}` `{}`", o.aggregate_type, o.aggregate_id),
        None => "an aggregate".to_owned(),
    };
    let listed: Vec<String> = events
        .iter()
        .map(|e| format!("{} ({})", e.event_type, e.message_id))
        .collect();
    let message = format!(
        "{n} recorded event(s) of {aggregate} were dropped without being saved: {list}. Save the \
         aggregate through a unit of work (`uow.save`, `uow.insert`, `uow.update` or \
         `uow.stage`): a plain SeaORM call such as `into_active_model().insert(..)` writes the \
         row but not its events. Call `events.discard()` if dropping them is intended.",
        n = events.len(),
        list = listed.join(", "),
    );
    metrics::counter!("outbox.events.dropped", "reason" => "unsaved")
        .increment(events.len() as u64);
    match policy() {
        UnsavedEvents::Panic if !std::thread::panicking() => panic!("{message}"),
        _ => tracing::error!(
            target: "outbox::unsaved",
            aggregate_type = owner.map(|o| o.aggregate_type),
            aggregate_id = owner.map(|o| o.aggregate_id.as_str()),
            events = %listed.join(", "),
            "{message}"
        ),
    }
}

/// Reports a unit of work dropped without `commit` or `rollback` while it held `events`
/// (each with its aggregate, as far as known), per the policy.
pub(crate) fn report_abandoned(events: &[(Option<Owner>, PendingEvent)], recorded: &[String]) {
    let listed: Vec<String> = events
        .iter()
        .map(|(owner, e)| match owner {
            Some(o) => format!(
                "{} ({}) of aggregate `{}` `{}`",
                e.event_type, e.message_id, o.aggregate_type, o.aggregate_id
            ),
            None => format!("{} ({})", e.event_type, e.message_id),
        })
        .chain(recorded.iter().cloned())
        .collect();
    let mut fates = Vec::new();
    if !events.is_empty() {
        fates.push(format!(
            "{} went back to their aggregates (dropping an aggregate that still holds them \
             reports them again)",
            events.len()
        ));
    }
    if !recorded.is_empty() {
        fates.push(format!(
            "{} recorded on the unit of work itself are lost",
            recorded.len()
        ));
    }
    let message = format!(
        "a unit of work holding {n} staged event(s) was dropped without `commit` or \
         `rollback`: it rolled back, nothing of it was written; of its events, {fates}: {list}. \
         Call `uow.commit().await` to write them, or `uow.rollback().await` when dropping the \
         work is intended.",
        n = listed.len(),
        fates = fates.join(", and "),
        list = listed.join(", "),
    );
    metrics::counter!("outbox.events.dropped", "reason" => "unit_of_work_dropped")
        .increment(listed.len() as u64);
    match policy() {
        UnsavedEvents::Panic if !std::thread::panicking() => panic!("{message}"),
        _ => tracing::error!(
            target: "outbox::unsaved",
            events = %listed.join(", "),
            "{message}"
        ),
    }
}
