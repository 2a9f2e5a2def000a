//! What happens to a message now: a pure function of its prior state, its handlers' results
//! and the policy. Everything the relay writes about a message comes from here.

use std::collections::HashMap;
use std::time::Duration;

use outbox_seaorm_core::{Error as CoreError, RetryPolicy};

use crate::driver::{DeliveryState, DeliveryWrite, ErrorText, Hold};
use crate::entity::DeliveryStatus;
use crate::relay::policy::{DeliveryOrder, OnFailure};

/// The policy a decision applies.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) retry: RetryPolicy,
    /// Relay deaths while running a message alone before it is parked.
    pub(crate) max_crashes: u32,
    /// How long a message of a type this relay does not know waits for one that does.
    pub(crate) unknown_type_delay: Duration,
    pub(crate) order: DeliveryOrder,
}

/// The verdict on one message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Every delivery has succeeded. `deliveries` is empty when none had run before: then no
    /// per-handler row exists and none is written.
    Delivered { deliveries: Vec<DeliveryWrite> },
    /// A delivery failed and will be tried again after `after`.
    Retry {
        after: Duration,
        error: (ErrorText, &'static str),
        deliveries: Vec<DeliveryWrite>,
    },
    /// A delivery failed for good (attempts used up, or an error no retry can fix) and none
    /// is waiting for a retry.
    Dead {
        error: (ErrorText, &'static str),
        deliveries: Vec<DeliveryWrite>,
    },
    /// The event type is unknown to this process (a newer version wrote it): left untouched
    /// for a relay that knows it, checked again after `after`. No attempt is used.
    LeftForOthers { after: Duration, event_type: String },
    /// Relays died `crashes` times while running it alone: parked as dead without running it
    /// again.
    Crashed { crashes: u32 },
    /// A type this process knows that nothing here handles: complete, nothing ran.
    Unhandled,
}

/// One handler's run.
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) handler: String,
    /// Its runs before this one.
    pub(crate) before: u32,
    pub(crate) result: Result<(), CoreError>,
}

/// Before anything runs: a message of an unknown type is left for others; a message that has
/// killed its relay `crashes` times (counted before this run) is parked.
pub(crate) fn before_running(
    known_type: bool,
    event_type: &str,
    crashes: u32,
    policy: &Policy,
) -> Option<Verdict> {
    if crashes > policy.max_crashes {
        return Some(Verdict::Crashed {
            crashes: crashes - 1,
        });
    }
    if !known_type {
        return Some(Verdict::LeftForOthers {
            after: policy.unknown_type_delay,
            event_type: event_type.to_owned(),
        });
    }
    None
}

/// Which of `handlers` still need to run, with their runs so far: those without a stored
/// state, or whose stored state is a failure to retry.
pub(crate) fn still_to_run<'a>(
    handlers: impl IntoIterator<Item = &'a str>,
    prior: Option<&HashMap<String, DeliveryState>>,
) -> Vec<(&'a str, u32)> {
    handlers
        .into_iter()
        .filter_map(|h| match prior.and_then(|p| p.get(h)) {
            Some(DeliveryState {
                status: DeliveryStatus::Delivered | DeliveryStatus::Dead,
                ..
            }) => None,
            Some(s) => Some((h, s.attempts)),
            None => Some((h, 0)),
        })
        .collect()
}

/// The verdict after the handlers that still had to run ran. `dead_before`: a delivery of this
/// message was already dead (it stays dead until requeued); `had_rows`: per-handler rows exist
/// for this message.
pub(crate) fn decide(
    runs: Vec<Ran>,
    dead_before: bool,
    had_rows: bool,
    policy: &Policy,
) -> Verdict {
    if !had_rows && !dead_before && runs.iter().all(|r| r.result.is_ok()) {
        return Verdict::Delivered {
            deliveries: Vec::new(),
        };
    }
    let mut deliveries = Vec::with_capacity(runs.len());
    let mut retry_after: Option<Duration> = None;
    let mut first_error: Option<(ErrorText, &'static str)> = None;
    let mut dead = dead_before;
    for r in runs {
        let attempts = r.before + 1;
        match r.result {
            Ok(()) => deliveries.push(DeliveryWrite {
                handler: r.handler,
                status: DeliveryStatus::Delivered,
                attempts,
                error: None,
            }),
            Err(e) => {
                let failures = attempts;
                let gives_up = !e.is_retryable() || policy.retry.is_exhausted(failures);
                // The one place a handler's error becomes stored text.
                let error = (ErrorText::from_error(&e), e.kind());
                if gives_up {
                    dead = true;
                } else {
                    let d = policy.retry.delay_after(failures);
                    retry_after = Some(retry_after.map_or(d, |a| a.max(d)));
                }
                first_error.get_or_insert_with(|| error.clone());
                deliveries.push(DeliveryWrite {
                    handler: r.handler,
                    status: if gives_up {
                        DeliveryStatus::Dead
                    } else {
                        DeliveryStatus::Failed
                    },
                    attempts,
                    error: Some(error),
                });
            }
        }
    }
    deliveries.sort_by(|a, b| a.handler.cmp(&b.handler));
    match (retry_after, dead) {
        (Some(after), _) => Verdict::Retry {
            after,
            error: first_error.expect("a retry follows an error"),
            deliveries,
        },
        (None, true) => Verdict::Dead {
            error: first_error.unwrap_or_else(|| {
                (
                    ErrorText::new("a delivery of this message is dead; requeue it to retry"),
                    "delivery_dead",
                )
            }),
            deliveries,
        },
        (None, false) => Verdict::Delivered { deliveries },
    }
}

/// How long the aggregate's later messages wait behind this verdict, in per-aggregate order
/// (`None`: they may go on).
pub(crate) fn hold(verdict: &Verdict, policy: &Policy) -> Option<Hold> {
    let DeliveryOrder::PerAggregate(on_failure) = policy.order else {
        return None;
    };
    match verdict {
        Verdict::Delivered { .. } | Verdict::Unhandled => None,
        Verdict::Retry { after, .. } | Verdict::LeftForOthers { after, .. } => {
            Some(Hold::For(*after))
        }
        Verdict::Dead { .. } | Verdict::Crashed { .. } => match on_failure {
            OnFailure::Block => Some(Hold::Forever),
            OnFailure::Park => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(order: DeliveryOrder) -> Policy {
        Policy {
            retry: RetryPolicy::exponential(Duration::from_secs(1))
                .max_attempts(3)
                .jitter(false),
            max_crashes: 2,
            unknown_type_delay: Duration::from_secs(60),
            order,
        }
    }

    fn ok(h: &str, before: u32) -> Ran {
        Ran {
            handler: h.into(),
            before,
            result: Ok(()),
        }
    }

    fn failed(h: &str, before: u32) -> Ran {
        Ran {
            handler: h.into(),
            before,
            result: Err(CoreError::HandlerTimedOut {
                handler: h.into(),
                timeout: Duration::from_secs(1),
            }),
        }
    }

    fn permanent(h: &str) -> Ran {
        Ran {
            handler: h.into(),
            before: 0,
            result: Err(CoreError::UnknownVersion {
                event_type: "e".into(),
                stored: 3,
                expected: 1,
            }),
        }
    }

    const BLOCK: DeliveryOrder = DeliveryOrder::PerAggregate(OnFailure::Block);
    const PARK: DeliveryOrder = DeliveryOrder::PerAggregate(OnFailure::Park);

    #[test]
    fn all_succeeding_at_once_writes_no_delivery_rows() {
        let v = decide(vec![ok("a", 0), ok("b", 0)], false, false, &policy(BLOCK));
        assert_eq!(v, Verdict::Delivered { deliveries: vec![] });
        assert_eq!(hold(&v, &policy(BLOCK)), None);
    }

    #[test]
    fn success_after_failures_writes_the_rows_with_runs_counted() {
        let v = decide(vec![ok("a", 2)], false, true, &policy(BLOCK));
        let Verdict::Delivered { deliveries } = v else {
            panic!("{v:?}")
        };
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0].attempts, 3);
        assert_eq!(deliveries[0].status, DeliveryStatus::Delivered);
    }

    #[test]
    fn a_failure_retries_with_backoff_and_holds_the_aggregate() {
        let v = decide(
            vec![ok("a", 0), failed("b", 1)],
            false,
            false,
            &policy(BLOCK),
        );
        let Verdict::Retry {
            after,
            error,
            deliveries,
        } = &v
        else {
            panic!("{v:?}")
        };
        assert_eq!(*after, Duration::from_secs(2), "second failure: base × 2");
        assert_eq!(error.1, "handler_timed_out");
        assert_eq!(deliveries[0].status, DeliveryStatus::Delivered);
        assert_eq!(deliveries[1].status, DeliveryStatus::Failed);
        assert_eq!(deliveries[1].attempts, 2);
        assert_eq!(
            hold(&v, &policy(BLOCK)),
            Some(Hold::For(Duration::from_secs(2)))
        );
        assert_eq!(hold(&v, &policy(DeliveryOrder::Unordered)), None);
    }

    #[test]
    fn the_last_attempt_is_dead_and_blocks_or_parks() {
        let v = decide(vec![failed("a", 2)], false, true, &policy(BLOCK));
        assert!(
            matches!(&v, Verdict::Dead { deliveries, .. } if deliveries[0].status == DeliveryStatus::Dead)
        );
        assert_eq!(hold(&v, &policy(BLOCK)), Some(Hold::Forever));
        assert_eq!(hold(&v, &policy(PARK)), None);
    }

    #[test]
    fn a_permanent_error_is_dead_at_once() {
        let v = decide(vec![permanent("a")], false, false, &policy(BLOCK));
        assert!(matches!(v, Verdict::Dead { ref error, .. } if error.1 == "unknown_version"));
    }

    #[test]
    fn one_retrying_delivery_keeps_the_message_pending_even_if_another_died() {
        let v = decide(
            vec![permanent("a"), failed("b", 0)],
            false,
            false,
            &policy(PARK),
        );
        assert!(matches!(v, Verdict::Retry { .. }), "{v:?}");
    }

    #[test]
    fn a_dead_delivery_from_before_keeps_the_message_dead() {
        let v = decide(vec![ok("b", 0)], true, true, &policy(BLOCK));
        assert!(
            matches!(v, Verdict::Dead { ref error, .. } if error.1 == "delivery_dead"),
            "{v:?}"
        );
    }

    #[test]
    fn unknown_types_are_left_for_others_without_an_attempt() {
        let p = policy(BLOCK);
        let v = before_running(false, "order.v2", 0, &p).unwrap();
        assert_eq!(
            v,
            Verdict::LeftForOthers {
                after: Duration::from_secs(60),
                event_type: "order.v2".into()
            }
        );
        assert_eq!(hold(&v, &p), Some(Hold::For(Duration::from_secs(60))));
        assert_eq!(before_running(true, "order.v1", 0, &p), None);
    }

    #[test]
    fn crashes_beyond_the_limit_park_the_message() {
        let p = policy(PARK);
        assert_eq!(before_running(true, "e", 2, &p), None, "2 crashes allowed");
        let v = before_running(true, "e", 3, &p).unwrap();
        assert_eq!(v, Verdict::Crashed { crashes: 2 });
        assert_eq!(hold(&v, &policy(BLOCK)), Some(Hold::Forever));
    }

    #[test]
    fn handlers_that_succeeded_or_died_do_not_run_again() {
        let mut prior = HashMap::new();
        let state = |status, attempts| DeliveryState { status, attempts };
        prior.insert("a".to_owned(), state(DeliveryStatus::Delivered, 1));
        prior.insert("b".to_owned(), state(DeliveryStatus::Failed, 2));
        prior.insert("c".to_owned(), state(DeliveryStatus::Dead, 3));
        let run = still_to_run(["a", "b", "c", "d"], Some(&prior));
        assert_eq!(run, [("b", 2), ("d", 0)]);
        assert_eq!(still_to_run(["a"], None), [("a", 0)]);
    }
}
