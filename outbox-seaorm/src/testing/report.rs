//! What a settled outbox holds, with typed look-ups for assertions.

use std::fmt;

use std::collections::BTreeSet;
use std::sync::Arc;

use outbox_seaorm_core::{DomainEvent, Envelope, Upcasters};
use uuid::Uuid;

use super::harness::is_blocked;
use crate::admin::MessageDetail;
use crate::entity::DeliveryStatus;

/// The messages written since the previous report, as [`Harness::settle`] left them.
///
/// [`Harness::settle`]: super::Harness::settle
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SettleReport {
    messages: Vec<MessageDetail>,
    upcasters: Arc<Upcasters>,
    names: Arc<BTreeSet<String>>,
}

/// A handler's or route's failures on one message (it may have succeeded on a retry).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerFailure {
    /// The message.
    pub message_id: Uuid,
    /// Its event type.
    pub event_type: String,
    /// Its aggregate id.
    pub aggregate_id: String,
    /// Where the delivery stands: delivered after a retry, or dead.
    pub status: DeliveryStatus,
    /// Times the handler ran for the message.
    pub attempts: u32,
    /// The last error (`None` once a retry succeeded: the relay keeps only the count).
    pub last_error: Option<String>,
    /// The last error's kind.
    pub last_error_kind: Option<String>,
}

impl SettleReport {
    pub(crate) fn new(
        messages: Vec<MessageDetail>,
        upcasters: Arc<Upcasters>,
        names: Arc<BTreeSet<String>>,
    ) -> Self {
        Self {
            messages,
            upcasters,
            names,
        }
    }

    /// Every message, in outbox order.
    pub fn messages(&self) -> &[MessageDetail] {
        &self.messages
    }

    /// The delivered events of type `E`'s name, decoded as `E` (older versions through the
    /// registry's upcasters, as handlers get them), in outbox order.
    ///
    /// # Panics
    ///
    /// When a payload of `E`'s type does not decode as `E` (a newer version, no upcaster, a
    /// payload that does not fit).
    pub fn delivered<E: DomainEvent>(&self) -> Vec<E> {
        self.decoded::<E>(Some("delivered"))
    }

    /// Every event of type `E` written, whatever became of it, decoded.
    ///
    /// # Panics
    ///
    /// As [`delivered`](Self::delivered).
    pub fn recorded<E: DomainEvent>(&self) -> Vec<E> {
        self.decoded::<E>(None)
    }

    /// The dead letters.
    pub fn dead(&self) -> Vec<&MessageDetail> {
        self.with_status("dead")
    }

    /// The messages no handler or route took (status `unhandled`, not delivered): their event
    /// type has no handler in the harness's registry.
    pub fn unhandled(&self) -> Vec<&MessageDetail> {
        self.with_status("unhandled")
    }

    /// The messages left pending because they are due after the time limit (a `not_before`).
    pub fn scheduled(&self) -> Vec<&MessageDetail> {
        self.with_status("pending")
            .into_iter()
            .filter(|m| !is_blocked(&m.summary))
            .collect()
    }

    /// The messages held behind a dead letter of their aggregate (per-aggregate order with
    /// `OnFailure::Block`): they wait for the dead letter to be requeued or discarded.
    pub fn blocked(&self) -> Vec<&MessageDetail> {
        self.with_status("pending")
            .into_iter()
            .filter(|m| is_blocked(&m.summary))
            .collect()
    }

    /// The messages on which `handler` (a handler or route name) failed at least once: dead,
    /// failed, or delivered after more than one attempt.
    ///
    /// # Panics
    ///
    /// When no handler or route of the harness has that name (a typo would otherwise make
    /// `assert!(report.failed_for("..").is_empty())` pass whatever happened).
    #[track_caller]
    pub fn failed_for(&self, handler: &str) -> Vec<HandlerFailure> {
        assert!(
            self.names.contains(handler),
            "no handler or route is named `{handler}`; the harness's are: {}",
            self.names.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        self.messages
            .iter()
            .flat_map(|m| {
                m.deliveries
                    .iter()
                    .filter(|d| d.handler == handler)
                    // A delivery that succeeded on a retry keeps its attempts, not its error.
                    .filter(|d| d.status != DeliveryStatus::Delivered || d.attempts > 1)
                    .map(|d| HandlerFailure {
                        message_id: m.summary.message_id,
                        event_type: m.summary.event_type.clone(),
                        aggregate_id: m.summary.aggregate_id.clone(),
                        status: d.status,
                        attempts: d.attempts,
                        last_error: d.last_error.clone(),
                        last_error_kind: d.last_error_kind.clone(),
                    })
            })
            .collect()
    }

    /// The event types written, in outbox order (`["order.placed", "stock.reserved"]`).
    pub fn event_types(&self) -> Vec<&str> {
        self.messages
            .iter()
            .map(|m| m.summary.event_type.as_str())
            .collect()
    }

    fn with_status(&self, status: &str) -> Vec<&MessageDetail> {
        self.messages
            .iter()
            .filter(|m| m.summary.status == status)
            .collect()
    }

    fn decoded<E: DomainEvent>(&self, status: Option<&str>) -> Vec<E> {
        self.messages
            .iter()
            .filter(|m| status.is_none_or(|s| m.summary.status == s))
            .filter(|m| m.summary.event_type == E::EVENT_TYPE)
            .map(|m| {
                envelope(m)
                    .decode::<E>(&self.upcasters)
                    .unwrap_or_else(|e| {
                        panic!(
                            "message {} ({} v{}) does not decode as {}: {e}; payload {}",
                            m.summary.message_id,
                            m.summary.event_type,
                            m.summary.event_version,
                            std::any::type_name::<E>(),
                            m.payload
                        )
                    })
            })
            .collect()
    }
}

/// The message as a handler would get it, for decoding.
fn envelope(m: &MessageDetail) -> Envelope {
    let s = &m.summary;
    let mut e = Envelope::new(
        s.message_id,
        s.event_type.clone(),
        u32::try_from(s.event_version).unwrap_or(0),
        m.payload.to_string(),
    );
    e.sequence = s.sequence;
    e.position = s.position;
    e.aggregate_type = s.aggregate_type.clone();
    e.aggregate_id = s.aggregate_id.clone();
    e.occurred_at = s.occurred_at;
    e
}

impl fmt::Display for SettleReport {
    /// One line per message, then one per failed delivery under it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.messages.is_empty() {
            return write!(f, "no messages");
        }
        for (i, m) in self.messages.iter().enumerate() {
            let s = &m.summary;
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "#{} {} v{} (aggregate {} {}): {}",
                s.sequence,
                s.event_type,
                s.event_version,
                s.aggregate_type,
                s.aggregate_id,
                s.status
            )?;
            if is_blocked(s) {
                write!(f, ", blocked behind a dead letter of its aggregate")?;
            }
            if let Some(e) = &s.last_error {
                write!(f, ", last error: {e}")?;
            }
            for d in &m.deliveries {
                write!(
                    f,
                    "\n    {}: {:?} after {} attempt(s)",
                    d.handler, d.status, d.attempts
                )?;
                if let Some(e) = &d.last_error {
                    write!(f, ", last error: {e}")?;
                }
            }
        }
        Ok(())
    }
}
