//! Checks for tests of aggregates and routes, with no database (feature `testing`).
//!
//! - [`assert_recorded!`](crate::assert_recorded) and
//!   [`assert_not_recorded!`](crate::assert_not_recorded): did this aggregate record an event
//!   matching a pattern? A failure lists what was recorded, in order.
//! - [`recorded`]: the events of one type an aggregate recorded, decoded.
//! - [`CapturePublisher`]: a [`Publisher`](crate::publish::Publisher) that keeps what it would
//!   send (destination and CloudEvents attributes) for a test to look at.
//!
//! Events a check looked at are not reported when the aggregate is dropped unsaved: a unit
//! test records events on purpose and never saves them.
//!
//! ```
//! use outbox_seaorm_core::{Aggregate, DomainEvent, DomainEvents, Events};
//! use outbox_seaorm_core::testing::recorded;
//! use outbox_seaorm_core::{assert_not_recorded, assert_recorded};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, DomainEvent)]
//! #[event(name = "kit.order-confirmed")]
//! struct OrderConfirmed { order_id: u64, total_cents: i64 }
//!
//! #[derive(Debug, Serialize, Deserialize, DomainEvent)]
//! #[event(name = "kit.order-cancelled")]
//! struct OrderCancelled { order_id: u64 }
//!
//! #[derive(DomainEvents)]
//! #[domain_events(aggregate = "order", id = id)]
//! struct Order { id: u64, total_cents: i64, #[events] events: Events }
//!
//! impl Order {
//!     fn confirm(&mut self) {
//!         let event = OrderConfirmed { order_id: self.id, total_cents: self.total_cents };
//!         self.record(event);
//!     }
//! }
//!
//! let mut order = Order { id: 7, total_cents: 1250, events: Events::new() };
//! order.confirm();
//!
//! assert_recorded!(order, OrderConfirmed);
//! assert_recorded!(order, OrderConfirmed { total_cents: 1250, .. });
//! let expected = 7;
//! assert_recorded!(order, OrderConfirmed { order_id, .. } if order_id == expected);
//! assert_not_recorded!(order, OrderCancelled);
//! assert_eq!(recorded::<OrderConfirmed>(&order).len(), 1);
//! // `order` is dropped with its event unsaved: not reported, a check looked at it.
//! ```

mod capture;

use std::fmt::Write as _;

use crate::aggregate::{Aggregate, Events, PendingEvent};
use crate::event::DomainEvent;

pub use capture::{CapturePublisher, Published};

/// Something that holds recorded events: an [`Aggregate`] or an [`Events`] buffer.
pub trait RecordedEvents {
    /// The buffer.
    fn recorded_events(&self) -> &Events;

    /// What to call it in a failure message (`order 7`).
    fn describe(&self) -> String {
        "the buffer".to_owned()
    }
}

impl RecordedEvents for Events {
    fn recorded_events(&self) -> &Events {
        self
    }
}

impl<A: Aggregate> RecordedEvents for A {
    fn recorded_events(&self) -> &Events {
        self.events()
    }

    fn describe(&self) -> String {
        format!("{} {}", A::AGGREGATE_TYPE, self.aggregate_id())
    }
}

/// The events of type `E` that `source` recorded and has not committed, decoded, in the order
/// they were recorded.
///
/// # Panics
///
/// When a recorded payload of `E`'s type and version does not decode as `E`.
pub fn recorded<E: DomainEvent>(source: &(impl RecordedEvents + ?Sized)) -> Vec<E> {
    let events = source.recorded_events();
    events.mark_inspected();
    events
        .pending()
        .iter()
        .filter(|p| is_of::<E>(p))
        .map(|p| decode::<E>(p))
        .collect()
}

fn is_of<E: DomainEvent>(p: &PendingEvent) -> bool {
    p.event_type == E::EVENT_TYPE && p.version == E::VERSION
}

fn decode<E: DomainEvent>(p: &PendingEvent) -> E {
    let json = match &p.payload {
        Ok(json) => json,
        Err(e) => panic!("event {} failed to serialize: {}", p.event_type, e.0),
    };
    serde_json::from_str(json).unwrap_or_else(|e| {
        panic!(
            "a recorded {} v{} does not decode as {}: {e}; payload {json}",
            p.event_type,
            p.version,
            std::any::type_name::<E>()
        )
    })
}

/// Runs a check built by [`assert_recorded!`](crate::assert_recorded) or
/// [`assert_not_recorded!`](crate::assert_not_recorded).
#[doc(hidden)]
#[track_caller]
pub fn __check_recorded<E: DomainEvent>(
    source: &(impl RecordedEvents + ?Sized),
    pattern: &str,
    matches: impl Fn(E) -> bool,
    expected: bool,
) {
    let events = source.recorded_events();
    events.mark_inspected();
    let pending = events.pending();
    let hit = pending
        .iter()
        .position(|p| is_of::<E>(p) && matches(decode::<E>(p)));
    match (expected, hit) {
        (true, Some(_)) | (false, None) => {}
        (true, None) => panic!(
            "no event matching `{pattern}` was recorded on {}\n{}",
            source.describe(),
            listing(&pending, None)
        ),
        (false, Some(i)) => panic!(
            "an event matching `{pattern}` was recorded on {} (#{})\n{}",
            source.describe(),
            i + 1,
            listing(&pending, Some(i))
        ),
    }
}

/// The events recorded, numbered in order, one per line.
fn listing(pending: &[PendingEvent], mark: Option<usize>) -> String {
    if pending.is_empty() {
        return "recorded: nothing (events leave an aggregate when its unit of work commits: \
                check before the commit, or on the settled harness's report)"
            .to_owned();
    }
    let mut out = format!("recorded, in order ({}):", pending.len());
    for (i, p) in pending.iter().enumerate() {
        let payload = match &p.payload {
            Ok(json) => json.clone(),
            Err(e) => format!("<failed to serialize: {}>", e.0),
        };
        let arrow = if mark == Some(i) { "->" } else { "  " };
        let _ = write!(
            out,
            "\n{arrow} {}. {} v{} {payload}",
            i + 1,
            p.event_type,
            p.version
        );
    }
    out
}

/// What [`assert_recorded!`](crate::assert_recorded) and
/// [`assert_not_recorded!`](crate::assert_not_recorded) expand to.
#[doc(hidden)]
#[macro_export]
macro_rules! __check_recorded {
    ($expected:literal; $source:expr, $($ty:ident)::+ { $($fields:tt)* } $(if $guard:expr)?) => {{
        // A pattern binds names, it does not compare: `order_id: id` would match anything
        // and leave `id` unused, so an unused binding is an error here.
        #[deny(unused_variables)]
        let matches =
            |__event: $($ty)::+| ::core::matches!(__event, $($ty)::+ { $($fields)* } $(if $guard)?);
        $crate::testing::__check_recorded::<$($ty)::+>(
            &$source,
            ::core::stringify!($($ty)::+ { $($fields)* } $(if $guard)?),
            matches,
            $expected,
        )
    }};
}

/// Asserts that an aggregate (or an [`Events`](crate::Events) buffer) recorded an event
/// matching a pattern, and lists what it recorded when it did not.
///
/// The pattern is a struct pattern of a [`DomainEvent`](crate::DomainEvent) type, with an
/// optional guard: `OrderConfirmed`, `OrderConfirmed { total_cents: 1250, .. }`,
/// `OrderConfirmed { order_id, .. } if order_id == id`. Compare with a variable in the guard:
/// in a pattern, `order_id: id` binds a new `id` and matches anything, so the macro makes that
/// unused binding a compile error:
///
/// ```compile_fail
/// # use outbox_seaorm_core::{assert_recorded, DomainEvent, Events};
/// # #[derive(serde::Serialize, serde::Deserialize, DomainEvent)]
/// # #[event(name = "order.confirmed")]
/// # struct OrderConfirmed { order_id: u64 }
/// # let mut events = Events::new();
/// # events.record(OrderConfirmed { order_id: 7 });
/// let id = 999;
/// assert_recorded!(events, OrderConfirmed { order_id: id }); // error: unused variable `id`
/// ```
///
/// Events leave an aggregate when its unit of work commits: check before committing, or on
/// the harness's report in `outbox_seaorm::testing`. See [`testing`](crate::testing) for an
/// example.
#[macro_export]
macro_rules! assert_recorded {
    ($source:expr, $($ty:ident)::+ $(if $guard:expr)? $(,)?) => {
        $crate::assert_recorded!($source, $($ty)::+ { .. } $(if $guard)?)
    };
    ($source:expr, $($ty:ident)::+ { $($fields:tt)* } $(if $guard:expr)? $(,)?) => {
        $crate::__check_recorded!(true; $source, $($ty)::+ { $($fields)* } $(if $guard)?)
    };
}

/// Asserts that an aggregate (or an [`Events`](crate::Events) buffer) recorded no event
/// matching a pattern (the patterns of [`assert_recorded!`](crate::assert_recorded)).
#[macro_export]
macro_rules! assert_not_recorded {
    ($source:expr, $($ty:ident)::+ $(if $guard:expr)? $(,)?) => {
        $crate::assert_not_recorded!($source, $($ty)::+ { .. } $(if $guard)?)
    };
    ($source:expr, $($ty:ident)::+ { $($fields:tt)* } $(if $guard:expr)? $(,)?) => {
        $crate::__check_recorded!(false; $source, $($ty)::+ { $($fields)* } $(if $guard)?)
    };
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use crate::{Events, RecordOptions};

    #[derive(Debug, Serialize, Deserialize)]
    struct Placed {
        n: u32,
    }
    impl crate::DomainEvent for Placed {
        const EVENT_TYPE: &'static str = "test.placed";
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Shipped {
        n: u32,
    }
    impl crate::DomainEvent for Shipped {
        const EVENT_TYPE: &'static str = "test.shipped";
    }

    fn two() -> Events {
        let mut events = Events::new();
        events.record(Placed { n: 1 });
        events.record_with(Placed { n: 2 }, RecordOptions::new());
        events
    }

    #[test]
    fn patterns_and_guards_match_recorded_events() {
        let events = two();
        assert_recorded!(events, Placed);
        assert_recorded!(events, Placed { n: 2 });
        let want = 1;
        assert_recorded!(events, Placed { n, .. } if n == want);
        assert_not_recorded!(events, Placed { n: 3 });
        assert_not_recorded!(events, Shipped);
        assert_eq!(
            super::recorded::<Placed>(&events)
                .iter()
                .map(|p| p.n)
                .collect::<Vec<_>>(),
            [1, 2]
        );
    }

    #[test]
    fn a_miss_lists_what_was_recorded_in_order() {
        let events = two();
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_recorded!(events, Placed { n: 9 });
        }))
        .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.starts_with("no event matching `Placed { n: 9 }` was recorded on the buffer"),
            "{msg}"
        );
        assert!(msg.contains("recorded, in order (2):"), "{msg}");
        let first = msg.find(r#"1. test.placed v1 {"n":1}"#).expect(msg);
        let second = msg.find(r#"2. test.placed v1 {"n":2}"#).expect(msg);
        assert!(first < second, "{msg}");
    }

    #[test]
    fn an_unexpected_match_is_pointed_at() {
        let events = two();
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_not_recorded!(events, Placed { n: 2 });
        }))
        .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("was recorded on the buffer (#2)"), "{msg}");
        assert!(msg.contains(r#"-> 2. test.placed v1 {"n":2}"#), "{msg}");
    }

    #[test]
    fn inspected_events_are_not_reported_when_dropped_but_later_ones_are() {
        crate::on_unsaved_events(crate::UnsavedEvents::Panic);
        let events = two();
        assert_recorded!(events, Placed);
        drop(events); // would panic if the inspected events were reported

        let mut events = two();
        assert_recorded!(events, Placed);
        events.record(Shipped { n: 3 });
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(events)));
        let msg = dropped.unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.contains("1 recorded event(s)"), "{msg}");
        assert!(msg.contains("test.shipped"), "{msg}");
    }
}
