//! A publisher that keeps what it is given, for tests of routes.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::cloudevents;
use crate::envelope::Envelope;
use crate::event::DomainEvent;
use crate::handler::HandlerError;
use crate::publish::Publisher;

/// One message a [`CapturePublisher`] was given.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Published {
    /// The destination the route rendered for it (subject, routing key, URL).
    pub destination: String,
    /// The message.
    pub envelope: Envelope,
    /// The message as a structured-mode CloudEvent, as the built-in publishers send it
    /// (`specversion`, `id`, `source`, `type`, `subject`, `time`, extensions and `data`).
    pub cloudevent: serde_json::Value,
}

impl Published {
    /// A CloudEvents attribute (`"type"`, `"subject"`, `"traceparent"`, an extension).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.cloudevent.get(name).and_then(|v| v.as_str())
    }

    /// The payload decoded as `E`, if the message is of `E`'s type and version.
    ///
    /// # Panics
    ///
    /// When it is of `E`'s type and version but does not decode as `E`.
    pub fn event<E: DomainEvent>(&self) -> Option<E> {
        if self.envelope.event_type != E::EVENT_TYPE || self.envelope.event_version != E::VERSION {
            return None;
        }
        Some(
            serde_json::from_str(&self.envelope.payload).unwrap_or_else(|e| {
                panic!(
                    "a published {} does not decode as {}: {e}",
                    self.envelope.event_type,
                    std::any::type_name::<E>()
                )
            }),
        )
    }
}

/// A [`Publisher`] that sends nothing and keeps every message it is given, with the destination
/// its route rendered and the CloudEvents attributes a broker would have received.
///
/// Clones share what they captured: give one to a [`Route`](crate::publish::Route) and keep
/// another to look at.
///
/// ```
/// use outbox_seaorm_core::publish::Route;
/// use outbox_seaorm_core::testing::CapturePublisher;
///
/// let capture = CapturePublisher::new();
/// let route = Route::new("orders-to-nats", capture.clone())
///     .aggregate_types(["order"])
///     .destination("orders.{event_type}")?;
/// // ... run the relay with `route` in its registry, then:
/// assert!(capture.published().is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct CapturePublisher {
    inner: Arc<Mutex<State>>,
    source: Arc<str>,
}

#[derive(Debug, Default)]
struct State {
    published: Vec<Published>,
    fail_next: u32,
}

impl Default for CapturePublisher {
    fn default() -> Self {
        Self::new()
    }
}

impl CapturePublisher {
    /// An empty capture whose CloudEvents `source` is `/outbox-test`.
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            source: Arc::from("/outbox-test"),
        }
    }

    /// Sets the CloudEvents `source` attribute, as the real publisher's would be.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Arc::from(source.into());
        self
    }

    /// Makes the next `n` publishes fail with a retryable error (a broker that is down), so
    /// a test can watch the route retry.
    pub fn fail_next(&self, n: u32) {
        self.state().fail_next = n;
    }

    /// Everything captured, in the order it was published.
    pub fn published(&self) -> Vec<Published> {
        self.state().published.clone()
    }

    /// What was published to `destination`.
    pub fn to(&self, destination: &str) -> Vec<Published> {
        self.state()
            .published
            .iter()
            .filter(|p| p.destination == destination)
            .cloned()
            .collect()
    }

    /// The events of type `E` published, decoded, in order.
    pub fn events<E: DomainEvent>(&self) -> Vec<E> {
        self.state()
            .published
            .iter()
            .filter_map(Published::event::<E>)
            .collect()
    }

    /// The events of type `E` published to `destination`, decoded.
    ///
    /// # Panics
    ///
    /// When there are none, listing what was published.
    #[track_caller]
    pub fn assert_published<E: DomainEvent>(&self, destination: &str) -> Vec<E> {
        let found: Vec<E> = self
            .to(destination)
            .iter()
            .filter_map(Published::event::<E>)
            .collect();
        if found.is_empty() {
            panic!(
                "no {} v{} was published to `{destination}`\n{}",
                E::EVENT_TYPE,
                E::VERSION,
                self.listing()
            );
        }
        found
    }

    /// Forgets what was captured.
    pub fn clear(&self) {
        self.state().published.clear();
    }

    /// What was published, one line each: destination, type, subject.
    pub fn listing(&self) -> String {
        let state = self.state();
        if state.published.is_empty() {
            return "published: nothing".to_owned();
        }
        let mut out = format!("published, in order ({}):", state.published.len());
        for (i, p) in state.published.iter().enumerate() {
            let _ = write!(
                out,
                "\n  {}. {} <- {} v{} (aggregate {} {}) {}",
                i + 1,
                p.destination,
                p.envelope.event_type,
                p.envelope.event_version,
                p.envelope.aggregate_type,
                p.envelope.aggregate_id,
                p.envelope.payload
            );
        }
        out
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; keep its data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl Publisher for CapturePublisher {
    async fn publish(&self, envelope: &Envelope, destination: &str) -> Result<(), HandlerError> {
        {
            let mut state = self.state();
            if state.fail_next > 0 {
                state.fail_next -= 1;
                return Err(HandlerError::retry(std::io::Error::other(
                    "capture publisher told to fail (fail_next)",
                )));
            }
        }
        // The same document the structured-mode publishers send, so a test sees the attributes
        // a consumer would (a payload that is not JSON fails here as it would there).
        let doc =
            cloudevents::to_structured(envelope, &self.source).map_err(HandlerError::permanent)?;
        let cloudevent = serde_json::from_slice(&doc).expect("to_structured writes JSON");
        self.state().published.push(Published {
            destination: destination.to_owned(),
            envelope: envelope.clone(),
            cloudevent,
        });
        Ok(())
    }

    fn escape_aggregate_id<'a>(&self, id: &'a str) -> Cow<'a, str> {
        Cow::Borrowed(id)
    }
}
