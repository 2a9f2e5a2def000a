//! What happens when recorded events are dropped without being saved.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::aggregate::{Owner, PendingEvent};

/// How the process reacts when an aggregate's [`Events`](crate::Events) are dropped with
/// events that were never saved (see [`on_unsaved_events`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnsavedEvents {
    /// Panic (unless the thread is already panicking). The default in debug builds, tests
    /// included, so the mistake fails the test that makes it.
    Panic,
    /// Log an error with `tracing` (target `outbox::unsaved`), naming the aggregate and the
    /// events. The default in release builds.
    Log,
}

const UNSET: u8 = 0;
const PANIC: u8 = 1;
const LOG: u8 = 2;

static POLICY: AtomicU8 = AtomicU8::new(UNSET);

/// Sets how the process reacts to events dropped unsaved (process-wide).
///
/// ```
/// use outbox_seaorm_core::{on_unsaved_events, UnsavedEvents};
/// on_unsaved_events(UnsavedEvents::Log);
/// ```
pub fn on_unsaved_events(policy: UnsavedEvents) {
    let v = match policy {
        UnsavedEvents::Panic => PANIC,
        UnsavedEvents::Log => LOG,
    };
    POLICY.store(v, Ordering::Relaxed);
}

fn policy() -> UnsavedEvents {
    match POLICY.load(Ordering::Relaxed) {
        PANIC => UnsavedEvents::Panic,
        LOG => UnsavedEvents::Log,
        _ if cfg!(debug_assertions) => UnsavedEvents::Panic,
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
