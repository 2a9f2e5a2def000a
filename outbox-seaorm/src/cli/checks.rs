//! `--fail-if` checks (`dead>0`) and `--since` times.

use std::fmt;

use crate::Status;
pub(crate) use crate::since::parse_since;
use crate::since::seconds;

/// A condition on the status that makes `outbox status` exit 1.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Check {
    metric: Metric,
    op: Op,
    value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Pending,
    Dead,
    Unhandled,
    Unknown,
    OldestPendingAge,
    DeliveredLastHour,
    SilentRelays,
}

const METRICS: [(&str, Metric); 7] = [
    ("pending", Metric::Pending),
    ("dead", Metric::Dead),
    ("unhandled", Metric::Unhandled),
    ("unknown", Metric::Unknown),
    ("oldest_pending_age", Metric::OldestPendingAge),
    ("delivered_last_hour", Metric::DeliveredLastHour),
    ("silent_relays", Metric::SilentRelays),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
}

const OPS: [(&str, Op); 5] = [
    (">=", Op::Ge),
    ("<=", Op::Le),
    (">", Op::Gt),
    ("<", Op::Lt),
    ("=", Op::Eq),
];

/// Parses `metric op number`, e.g. `dead>0`, `oldest_pending_age>=300`.
pub(crate) fn parse(s: &str) -> Result<Check, String> {
    let names: Vec<&str> = METRICS.iter().map(|(n, _)| *n).collect();
    let (at, (op_text, op)) = OPS
        .iter()
        .filter_map(|(t, op)| s.find(t).map(|i| (i, (*t, *op))))
        .min_by_key(|(i, (t, _))| (*i, std::cmp::Reverse(t.len())))
        .ok_or_else(|| format!("`{s}`: expected <metric><op><number>, like dead>0"))?;
    let name = s[..at].trim();
    let metric = METRICS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, m)| *m)
        .ok_or_else(|| {
            format!(
                "unknown metric `{name}`; expected one of {}",
                names.join(", ")
            )
        })?;
    let right = s[at + op_text.len()..].trim();
    let value = match metric {
        // An age: seconds, or with a unit as `--since` takes (`5m`).
        Metric::OldestPendingAge => seconds(right),
        _ => right.parse().ok(),
    }
    .ok_or_else(|| format!("`{s}`: the right side is not a number"))?;
    Ok(Check { metric, op, value })
}

impl Check {
    /// Whether the condition holds for `status` (then the check fails).
    pub(crate) fn holds(&self, status: &Status) -> bool {
        let v = match self.metric {
            Metric::Pending => status.pending as f64,
            Metric::Dead => status.dead as f64,
            Metric::Unhandled => status.unhandled as f64,
            Metric::Unknown => status.unknown_event_type as f64,
            Metric::OldestPendingAge => status.oldest_pending_age_secs.unwrap_or(0.0),
            Metric::DeliveredLastHour => status.delivered_last_hour as f64,
            Metric::SilentRelays => status
                .relays
                .iter()
                .filter(|r| r.stopped_at.is_none() && !r.is_alive())
                .count() as f64,
        };
        match self.op {
            Op::Gt => v > self.value,
            Op::Ge => v >= self.value,
            Op::Lt => v < self.value,
            Op::Le => v <= self.value,
            Op::Eq => v == self.value,
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = METRICS
            .iter()
            .find(|(_, m)| *m == self.metric)
            .map_or("", |(n, _)| n);
        let op = OPS
            .iter()
            .find(|(_, o)| *o == self.op)
            .map_or("", |(t, _)| t);
        write!(f, "{name}{op}{}", self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_checks_and_refuses_the_rest() {
        assert_eq!(parse("dead>0").unwrap().to_string(), "dead>0");
        assert_eq!(parse("unhandled>0").unwrap().to_string(), "unhandled>0");
        assert_eq!(
            parse("oldest_pending_age >= 300").unwrap().to_string(),
            "oldest_pending_age>=300"
        );
        assert!(parse("dead").is_err());
        assert!(
            parse("deaths>0")
                .unwrap_err()
                .contains("pending, dead, unhandled")
        );
        assert!(parse("dead>x").is_err());
        assert_eq!(
            parse("oldest_pending_age>5m").unwrap().to_string(),
            "oldest_pending_age>300"
        );
        assert!(parse("oldest_pending_age>5w").is_err());
        assert!(parse("dead>5m").is_err(), "a count takes no unit");
        assert!(parse_since("15m").is_ok());
        assert!(parse_since("2026-01-01T00:00:00Z").is_ok());
        assert!(parse_since("15 minutes").is_err());
    }
}
