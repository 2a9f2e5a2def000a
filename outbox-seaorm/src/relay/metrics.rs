//! What the relay reports through the [`metrics`] facade. The library installs no exporter:
//! an application that installs one (Prometheus, StatsD, OpenTelemetry) gets these; one that
//! does not pays almost nothing. Names follow the OpenTelemetry messaging conventions where one
//! exists; durations are seconds.
//!
//! | metric | kind | labels |
//! | --- | --- | --- |
//! | `messaging.process.duration` | histogram | `messaging.consumer.group.name` (handler or route), `messaging.destination.name` (event type), `error.type` (on failure) |
//! | `messaging.client.sent.messages` | counter | route name and event type, as above |
//! | `outbox.messages` | counter | `outcome`: delivered, retried, dead, unhandled, left_for_others, released, lease_lost, outcome_unwritable |
//! | `outbox.delivery.lag` | histogram | `messaging.destination.name`: from recording to the last handler done |
//! | `outbox.claim.duration` | histogram | (an empty claim included) |
//! | `outbox.claimed`, `outbox.batches` | counter | messages claimed; claims that found some |
//! | `outbox.backlog`, `outbox.dead_letters`, `outbox.unhandled`, `outbox.unknown_event_type` | gauge | |
//! | `outbox.oldest_pending_age` | gauge | seconds since the oldest pending message was recorded |
//!
//! The gauges come from one cheap query per `metrics_interval`, by one relay at a time (a
//! lock row, as for retention), not from every relay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use metrics::{Label, counter, gauge, histogram};
use tokio_util::sync::CancellationToken;

use outbox_seaorm_core::Error as CoreError;

use super::Shared;
use crate::driver::Written;

const SYSTEM: &str = "outbox";
const LOCK: &str = "metrics";

/// One handler's or route's run of one message.
pub(crate) fn delivery(
    name: &str,
    is_route: bool,
    event_type: &str,
    took: Duration,
    result: &Result<(), CoreError>,
) {
    let mut labels = vec![
        Label::new("messaging.system", SYSTEM),
        Label::new("messaging.consumer.group.name", name.to_owned()),
        Label::new("messaging.destination.name", event_type.to_owned()),
    ];
    if let Err(e) = result {
        labels.push(Label::new("error.type", e.kind()));
    }
    if is_route && result.is_ok() {
        counter!("messaging.client.sent.messages", labels.clone()).increment(1);
    }
    histogram!("messaging.process.duration", labels).record(took.as_secs_f64());
}

/// A message all of whose deliveries are done, recorded at `occurred_at`.
pub(crate) fn delivered(event_type: &str, occurred_at: chrono::DateTime<Utc>) {
    histogram!(
        "outbox.delivery.lag",
        "messaging.destination.name" => event_type.to_owned()
    )
    .record(crate::admin::age(Utc::now(), occurred_at));
}

/// A claim that took `took` and returned `n` messages.
pub(crate) fn claimed(took: Duration, n: usize) {
    histogram!("outbox.claim.duration").record(took.as_secs_f64());
    counter!("outbox.claimed").increment(n as u64);
    if n > 0 {
        counter!("outbox.batches").increment(1);
    }
}

const OUTCOMES: [&str; 8] = [
    "delivered",
    "unhandled",
    "retried",
    "dead",
    "left_for_others",
    "released",
    "lease_lost",
    "outcome_unwritable",
];

/// Describes the metrics and creates every outcome's counter at 0 when a relay starts, so the
/// first dead letter is an increase from 0 that `increase()` in an alert sees, not the first
/// sample of a new series.
pub(crate) fn register() {
    metrics::describe_counter!("outbox.messages", "outbox messages by the verdict written");
    metrics::describe_counter!("outbox.claimed", "outbox messages claimed");
    metrics::describe_counter!("outbox.batches", "claims that found messages");
    metrics::describe_histogram!(
        "outbox.delivery.lag",
        metrics::Unit::Seconds,
        "from recording to the last handler done"
    );
    metrics::describe_histogram!("outbox.claim.duration", metrics::Unit::Seconds, "one claim");
    metrics::describe_histogram!(
        "messaging.process.duration",
        metrics::Unit::Seconds,
        "one handler's or route's run of one message"
    );
    metrics::describe_gauge!("outbox.backlog", "pending outbox messages");
    metrics::describe_gauge!(
        "outbox.oldest_pending_age",
        metrics::Unit::Seconds,
        "age of the oldest pending message that is due"
    );
    metrics::describe_gauge!("outbox.dead_letters", "dead outbox messages");
    metrics::describe_gauge!(
        "outbox.unhandled",
        "outbox messages no handler or route took (not delivered)"
    );
    metrics::describe_gauge!(
        "outbox.unknown_event_type",
        "messages waiting for an event type no relay knows"
    );
    for outcome in OUTCOMES {
        counter!("outbox.messages", "outcome" => outcome).increment(0);
    }
    counter!("outbox.claimed").increment(0);
    counter!("outbox.batches").increment(0);
}

/// What the completer wrote.
pub(crate) fn written(w: &Written) {
    for (outcome, n) in [
        ("delivered", w.delivered),
        ("unhandled", w.unhandled),
        ("retried", w.retried),
        ("dead", w.dead),
        ("left_for_others", w.left_for_others),
        ("released", w.released),
        ("lease_lost", w.lease_lost),
        ("outcome_unwritable", w.unwritable),
    ] {
        if n > 0 {
            counter!("outbox.messages", "outcome" => outcome).increment(n);
        }
    }
}

/// Refreshes the gauges every `every`, when this relay holds the metrics lock.
pub(crate) async fn gauges(shared: Arc<Shared>, every: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let (db, d, id) = (&shared.db, &shared.driver, shared.id.as_str());
        // Held a little longer than the interval: the holder keeps it, another relay takes
        // over within one interval of the holder stopping.
        match d.try_lock(db, LOCK, id, every + every / 2).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::debug!(relay = %id, error = %e.report(), "could not take the metrics lock");
                continue;
            }
        }
        let started = Instant::now();
        match d.gauges(db).await {
            Ok(g) => {
                gauge!("outbox.backlog").set(g.pending as f64);
                gauge!("outbox.dead_letters").set(g.dead as f64);
                gauge!("outbox.unhandled").set(g.unhandled as f64);
                gauge!("outbox.unknown_event_type").set(g.unknown as f64);
                let age = g.oldest.map_or(0.0, |t| crate::admin::age(Utc::now(), t));
                gauge!("outbox.oldest_pending_age").set(age);
                tracing::trace!(relay = %id, took = ?started.elapsed(), "outbox gauges");
            }
            Err(e) => {
                tracing::warn!(relay = %id, error = %e.report(), "could not read the outbox gauges")
            }
        }
    }
}
