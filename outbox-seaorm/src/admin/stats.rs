//! Throughput over the last hour and per-handler outcomes and lags, for the dashboard.
//!
//! The deliveries table keeps one row per handler only for messages that failed once (a
//! message delivered at the first try leaves none), and stores times, not durations: per-handler
//! row counts are of those rows, and the percentiles are of delivery lag (from the event's
//! recording to the handler's last outcome), not of handler run time. What a handler delivered
//! at the first try is counted from the messages: every message of its event type delivered in
//! the last hour went through it (a delivered message has no delivery left to do).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use super::Admin;
use crate::driver::Series;
use crate::error::Result;

/// How many lag samples a percentile is computed from: the latest ones, so the query stays
/// bounded on a table with millions of delivered rows.
const LAG_SAMPLES: u32 = 10_000;

/// What happened in one minute of the last hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MinuteCounts {
    /// Minutes before the database's now (0 is the current minute).
    pub minutes_ago: u32,
    /// Messages delivered.
    pub delivered: u64,
    /// Deliveries whose latest outcome, recorded in this minute, is a failure (a retry is
    /// due, or the delivery is dead).
    pub failed: u64,
}

/// Percentiles of delivery lag: from an event's recording to its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lag {
    /// How many deliveries the percentiles are of.
    pub samples: u64,
    /// The median.
    pub p50: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The longest.
    pub max: Duration,
}

impl Lag {
    /// The percentiles of `millis` (nearest rank), or `None` when it is empty.
    pub fn of_millis(mut millis: Vec<i64>) -> Option<Self> {
        if millis.is_empty() {
            return None;
        }
        millis.sort_unstable();
        let at = |p: f64| {
            let rank = ((p * millis.len() as f64).ceil() as usize).clamp(1, millis.len());
            Duration::from_millis(u64::try_from(millis[rank - 1]).unwrap_or(0))
        };
        Some(Self {
            samples: millis.len() as u64,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

/// One handler's or route's deliveries, delivery rows and lag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandlerStats {
    /// The handler's or route's name.
    pub handler: String,
    /// Messages it delivered in the last hour, at the first try or after failing: the
    /// messages of its event types (as the relays report them, or as its delivery rows tell)
    /// delivered in the last hour. `None` for a route, or a handler whose event type nothing
    /// tells: the database cannot say which messages it takes.
    pub delivered_last_hour: Option<u64>,
    /// Delivery rows delivered (after failing at least once, or beside a handler that did):
    /// not the deliveries that succeeded at the first try, which leave no row.
    pub delivered: u64,
    /// Delivery rows waiting for a retry.
    pub failed: u64,
    /// Dead delivery rows.
    pub dead: u64,
    /// Delivery lag of its latest delivered rows.
    pub lag: Option<Lag>,
}

/// Every handler's stats, and the delivery lag of all messages delivered in the last hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandlerReport {
    /// By handler name; handlers the running relays know but with no delivery rows are listed
    /// with zeros.
    pub handlers: Vec<HandlerStats>,
    /// Delivery lag of the messages delivered in the last hour, whatever their handlers.
    pub messages: Option<Lag>,
}

impl Admin {
    /// Messages delivered and deliveries failed in each minute of the last hour, by the
    /// database's clock: 60 entries, the current minute first.
    pub async fn throughput(&self) -> Result<Vec<MinuteCounts>> {
        let mut minutes: Vec<MinuteCounts> = (0..60)
            .map(|m| MinuteCounts {
                minutes_ago: m,
                delivered: 0,
                failed: 0,
            })
            .collect();
        for series in [Series::Delivered, Series::Failed] {
            for (ago, n) in self.driver.per_minute(&self.db, series).await? {
                // A row exactly an hour old rounds to minute 60: count it in the oldest one.
                let Ok(i) = usize::try_from(ago.clamp(0, 59)) else {
                    continue;
                };
                match series {
                    Series::Delivered => minutes[i].delivered += n,
                    Series::Failed => minutes[i].failed += n,
                }
            }
        }
        Ok(minutes)
    }

    /// Per-handler delivery rows and lag percentiles (see the module documentation for what
    /// the deliveries table can tell), and the lag of all messages delivered in the last hour.
    pub async fn handler_stats(&self) -> Result<HandlerReport> {
        let mut by_name: ByName = BTreeMap::new();
        let relays = self.relays().await?;
        for relay in relays.iter().filter(|r| r.is_alive()) {
            for (handler, _) in &relay.handles.handlers {
                entry(&mut by_name, handler.clone());
            }
            for route in &relay.handles.routes {
                entry(&mut by_name, route.clone());
            }
        }
        // The event types each handler takes: from what any recorded relay reports, then from
        // its delivery rows. A route's are unknown (its matcher is not stored).
        let routes: BTreeSet<&String> = relays.iter().flat_map(|r| &r.handles.routes).collect();
        let mut takes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (handler, event_type) in relays.iter().flat_map(|r| &r.handles.handlers) {
            takes
                .entry(handler.clone())
                .or_default()
                .insert(event_type.clone());
        }
        for (handler, event_type) in self.handler_event_types().await? {
            takes.entry(handler).or_default().insert(event_type);
        }
        for (handler, status, n) in self.driver.handler_counts(&self.db).await? {
            let (s, _) = entry(&mut by_name, handler);
            match status.as_str() {
                "delivered" => s.delivered += n,
                "failed" => s.failed += n,
                "dead" => s.dead += n,
                _ => {}
            }
        }
        for (handler, ms) in self.driver.handler_lags(&self.db, LAG_SAMPLES).await? {
            entry(&mut by_name, handler).1.push(ms);
        }
        let delivered = self.delivered_last_hour_by_type().await?;
        for (name, (s, _)) in by_name.iter_mut() {
            if routes.contains(name) {
                continue;
            }
            s.delivered_last_hour = takes.get(name).map(|types| {
                types
                    .iter()
                    .map(|t| delivered.get(t).copied().unwrap_or(0))
                    .sum()
            });
        }
        let handlers = by_name
            .into_values()
            .map(|(mut s, lags)| {
                s.lag = Lag::of_millis(lags);
                s
            })
            .collect();
        let messages = Lag::of_millis(self.driver.message_lags(&self.db, LAG_SAMPLES).await?);
        Ok(HandlerReport { handlers, messages })
    }
}

type ByName = BTreeMap<String, (HandlerStats, Vec<i64>)>;

fn entry(by_name: &mut ByName, name: String) -> &mut (HandlerStats, Vec<i64>) {
    by_name.entry(name.clone()).or_insert_with(|| {
        let stats = HandlerStats {
            handler: name,
            delivered_last_hour: None,
            delivered: 0,
            failed: 0,
            dead: 0,
            lag: None,
        };
        (stats, Vec::new())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let lag = Lag::of_millis((1..=100).rev().collect()).unwrap();
        let ms = |d: Duration| d.as_millis();
        assert_eq!(lag.samples, 100);
        assert_eq!(
            (ms(lag.p50), ms(lag.p90), ms(lag.p99), ms(lag.max)),
            (50, 90, 99, 100)
        );
        let one = Lag::of_millis(vec![7]).unwrap();
        assert_eq!((ms(one.p50), ms(one.max)), (7, 7));
        assert_eq!(Lag::of_millis(vec![]), None);
    }
}
