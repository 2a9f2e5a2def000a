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
    let secs = seconds(s).ok_or_else(|| {
        format!("`{s}`: expected an RFC 3339 time or a duration like 15m (s, m, h or d)")
    })?;
    Ok(Utc::now() - chrono::Duration::milliseconds((secs * 1000.0) as i64))
}
