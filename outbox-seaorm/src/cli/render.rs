//! What the commands print: JSON with `--json`, tables for humans otherwise.

use crate::{MessageDetail, MessageSummary, RelayInfo, Status};
use chrono::{DateTime, Utc};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

pub(crate) struct Out {
    pub(crate) json: bool,
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    t
}

/// The most characters of an error shown in a table cell: a cell sets its column's width, and
/// an 8 KiB error padded every row of the table to it. Longer errors are printed whole below.
const ERROR_CELL_CHARS: usize = 160;

/// `kind: error` for a table cell, cut to [`ERROR_CELL_CHARS`], and whether it was cut.
fn error_cell(kind: &Option<String>, error: &Option<String>) -> (String, bool) {
    match (kind, error) {
        (Some(k), Some(e)) => {
            let full = format!("{k}: {e}");
            if full.chars().count() <= ERROR_CELL_CHARS {
                (full, false)
            } else {
                let cut: String = full.chars().take(ERROR_CELL_CHARS).collect();
                (format!("{cut}... (whole text below)"), true)
            }
        }
        _ => ("-".into(), false),
    }
}

fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn or_dash(s: Option<&str>) -> String {
    s.unwrap_or("-").to_owned()
}

impl Out {
    fn json<T: Serialize + ?Sized>(&self, v: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }

    pub(crate) fn status(&self, s: &Status) -> anyhow::Result<()> {
        if self.json {
            return self.json(s);
        }
        let mut t = table(&[
            "pending",
            "dead",
            "unhandled",
            "delivered (last hour)",
            "unknown type",
            "oldest pending",
        ]);
        t.add_row(vec![
            s.pending.to_string(),
            s.dead.to_string(),
            s.unhandled.to_string(),
            s.delivered_last_hour.to_string(),
            s.unknown_event_type.to_string(),
            s.oldest_pending_age_secs
                .map_or("-".into(), |a| format!("{a:.0} s")),
        ]);
        println!("{t}");
        if !s.backlog.is_empty() {
            let mut t = table(&["aggregate type", "event type", "pending", "oldest"]);
            for b in &s.backlog {
                t.add_row(vec![
                    b.aggregate_type.clone(),
                    b.event_type.clone(),
                    b.pending.to_string(),
                    format!("{:.0} s", b.oldest_age_secs),
                ]);
            }
            println!("backlog\n{t}");
        }
        if !s.dead_letters.is_empty() {
            let mut t = table(&["handler", "error kind", "dead"]);
            for g in &s.dead_letters {
                t.add_row(vec![
                    g.handler.clone().unwrap_or_else(|| "(message)".into()),
                    or_dash(g.error_kind.as_deref()),
                    g.count.to_string(),
                ]);
            }
            println!("dead letters\n{t}");
        }
        if !s.relays.is_empty() {
            println!("relays\n{}", relays_table(&s.relays));
        }
        Ok(())
    }

    /// `limit`: the page size asked for; a full page may have a next one.
    pub(crate) fn list(&self, messages: &[MessageSummary], limit: u32) -> anyhow::Result<()> {
        if self.json {
            return self.json(messages);
        }
        let mut t = table(&[
            "seq",
            "message id",
            "aggregate",
            "pos",
            "event type",
            "status",
            "attempts",
            "error",
        ]);
        for m in messages {
            t.add_row(vec![
                m.sequence.to_string(),
                m.message_id.to_string(),
                format!("{} {}", m.aggregate_type, m.aggregate_id),
                m.position.to_string(),
                format!("{} v{}", m.event_type, m.event_version),
                m.status.clone(),
                m.attempts.to_string(),
                or_dash(m.last_error_kind.as_deref()),
            ]);
        }
        println!("{t}");
        match messages.last() {
            Some(last) if messages.len() as u64 >= u64::from(limit) => println!(
                "{} message(s); next page: --after {}",
                messages.len(),
                last.sequence
            ),
            Some(_) => println!("{} message(s)", messages.len()),
            None => println!("no message matches"),
        }
        Ok(())
    }

    pub(crate) fn show(&self, m: &MessageDetail) -> anyhow::Result<()> {
        if self.json {
            return self.json(m);
        }
        let s = &m.summary;
        let mut long_errors: Vec<(String, String)> = Vec::new();
        let (last_error, cut) = error_cell(&s.last_error_kind, &s.last_error);
        if cut {
            long_errors.push((
                "message".into(),
                format!(
                    "{}: {}",
                    or_dash(s.last_error_kind.as_deref()),
                    or_dash(s.last_error.as_deref())
                ),
            ));
        }
        let mut t = table(&["field", "value"]);
        let rows: [(&str, String); 12] = [
            ("message id", s.message_id.to_string()),
            ("sequence", s.sequence.to_string()),
            (
                "aggregate",
                format!("{} {}", s.aggregate_type, s.aggregate_id),
            ),
            ("position", s.position.to_string()),
            ("event", format!("{} v{}", s.event_type, s.event_version)),
            ("status", s.status.clone()),
            ("attempts", s.attempts.to_string()),
            ("occurred at", time(&s.occurred_at)),
            ("available at", time(&s.available_at)),
            (
                "delivered at",
                s.delivered_at.as_ref().map_or("-".into(), time),
            ),
            ("held by", or_dash(s.locked_by.as_deref())),
            ("last error", last_error),
        ];
        for (k, v) in rows {
            t.add_row(vec![k.to_owned(), v]);
        }
        println!("{t}");
        println!("payload\n{}", serde_json::to_string_pretty(&m.payload)?);
        println!("headers\n{}", serde_json::to_string_pretty(&m.headers)?);
        if !m.deliveries.is_empty() {
            let mut t = table(&["handler", "status", "attempts", "last error"]);
            for d in &m.deliveries {
                let (error, cut) = error_cell(&d.last_error_kind, &d.last_error);
                if cut {
                    long_errors.push((
                        format!("delivery {}", d.handler),
                        format!(
                            "{}: {}",
                            or_dash(d.last_error_kind.as_deref()),
                            or_dash(d.last_error.as_deref())
                        ),
                    ));
                }
                t.add_row(vec![
                    d.handler.clone(),
                    d.status.as_str().to_owned(),
                    d.attempts.to_string(),
                    error,
                ]);
            }
            println!("deliveries\n{t}");
        }
        for (whose, text) in long_errors {
            println!("last error of the {whose}, whole\n{text}");
        }
        Ok(())
    }

    pub(crate) fn relays(&self, relays: &[RelayInfo]) -> anyhow::Result<()> {
        if self.json {
            return self.json(relays);
        }
        if relays.is_empty() {
            println!("no relay recorded");
        } else {
            println!("{}", relays_table(relays));
        }
        Ok(())
    }

    pub(crate) fn note(&self, key: &str, text: &str) -> anyhow::Result<()> {
        if self.json {
            return self.json(&serde_json::json!({ key: "ok" }));
        }
        println!("{text}");
        Ok(())
    }

    pub(crate) fn done(&self, what: &str, n: u64) -> anyhow::Result<()> {
        if self.json {
            return self.json(&serde_json::json!({ what: n }));
        }
        println!("{what}: {n}");
        Ok(())
    }
}

fn relays_table(relays: &[RelayInfo]) -> Table {
    let mut t = table(&[
        "relay",
        "host",
        "version",
        "state",
        "last heartbeat",
        "held",
        "handles",
    ]);
    for r in relays {
        let state = match (r.stopped_at, r.is_alive()) {
            (Some(_), _) => "stopped".to_owned(),
            (None, true) => "running".to_owned(),
            (None, false) => format!("SILENT {:.0} s", r.silent_for.as_secs_f64()),
        };
        let handles: Vec<String> = r
            .handles
            .handlers
            .iter()
            .map(|(h, e)| format!("{h} ({e})"))
            .chain(r.handles.routes.iter().map(|n| format!("{n} (route)")))
            .chain(
                r.handles
                    .cdc_routes
                    .iter()
                    .map(|n| format!("{n} (route published by CDC, not by the relay)")),
            )
            .collect();
        t.add_row(vec![
            r.id.clone(),
            r.host.clone(),
            r.version.clone(),
            state,
            time(&r.heartbeat_at),
            r.held.to_string(),
            handles.join(", "),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_is_cut_in_its_cell_and_a_short_one_kept() {
        let kind = Some("handler_failed".to_owned());
        let (cell, cut) = error_cell(&kind, &Some("boom".to_owned()));
        assert_eq!((cell.as_str(), cut), ("handler_failed: boom", false));
        let (cell, cut) = error_cell(&kind, &Some("é".repeat(10_000)));
        assert!(cut);
        assert!(cell.chars().count() < ERROR_CELL_CHARS + 30, "{cell}");
        assert!(cell.ends_with("... (whole text below)"));
        assert_eq!(error_cell(&None, &None), ("-".to_owned(), false));
    }
}
