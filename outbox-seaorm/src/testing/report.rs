//! What a settled outbox holds, with typed look-ups for assertions.

use std::fmt;

use outbox_core::DomainEvent;
use uuid::Uuid;

use super::harness::is_blocked;
use crate::admin::MessageDetail;
use crate::entity::DeliveryStatus;

/// The messages written since the previous report, as [`Harness::settle`] left them.
///
/// [`Harness::settle`]: super::Harness::settle
#[derive(Debug, Clone)]
pub struct SettleReport {
    messages: Vec<MessageDetail>,
}

/// A handler's or route's failures on one message (it may have succeeded on a retry).
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub(crate) fn new(messages: Vec<MessageDetail>) -> Self {
        Self { messages }
    }

    /// Every message, in outbox order.
    pub fn messages(&self) -> &[MessageDetail] {
        &self.messages
    }

    /// The delivered events of type `E` (its type name and version), decoded, in outbox order.
    ///
    /// # Panics
    ///
    /// When a payload of `E`'s type and version does not decode as `E`.
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
    pub fn failed_for(&self, handler: &str) -> Vec<HandlerFailure> {
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
            .filter(|m| {
                m.summary.event_type == E::EVENT_TYPE
                    && u32::try_from(m.summary.event_version).ok() == Some(E::VERSION)
            })
            .map(|m| {
                serde_json::from_value(m.payload.clone()).unwrap_or_else(|e| {
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
