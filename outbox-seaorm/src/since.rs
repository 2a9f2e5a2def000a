//! Times as operators type them, for the command line's `--since` and the dashboard's filter.

use chrono::{DateTime, Utc};

/// `300`, `300s`, `5m`, `2h`, `1d` in seconds.
pub(crate) fn seconds(s: &str) -> Option<f64> {
    let (n, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = n.trim().parse().ok()?;
    let scale = match unit {
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return None,
    };
    Some(n * scale)
}

/// An RFC 3339 time, or a duration ago: `30s`, `15m`, `2h`, `7d`.
pub(crate) fn parse_since(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let expected =
        || format!("`{s}`: expected an RFC 3339 time or a duration like 15m (s, m, h or d)");
    let secs = seconds(s).ok_or_else(expected)?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}`: a duration ago must be zero or more"));
    }
    // Durations past what a time can hold (`999999999999999d`) are an input error, not a panic.
    chrono::Duration::try_milliseconds((secs * 1000.0).min(i64::MAX as f64) as i64)
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .ok_or_else(|| format!("`{s}`: too far back"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_ago_and_times_parse_and_absurd_ones_are_errors() {
        assert!(parse_since("15m").unwrap() < Utc::now());
        assert!(parse_since("2026-11-30T10:00:00Z").is_ok());
        for bad in [
            "999999999999999d",
            "18446744073709551615s",
            "-5m",
            "nan",
            "inf",
            "x",
        ] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }
}
