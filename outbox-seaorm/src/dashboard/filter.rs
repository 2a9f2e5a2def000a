//! The filters of the messages and dead-letter pages, as a query string: the same filters as
//! the command line's (`--status`, `--handler`, `--event-type`, `--aggregate-type`,
//! `--aggregate`, `--error-kind`, `--since`), plus the keyset page (`after`, `limit`).

use axum::http::StatusCode;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{ErrorPage, encode};
use crate::admin::MessageFilter;
use crate::entity::MessageStatus;

/// The filter fields as a form sends them: empty fields mean "any".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(super) struct FilterParams {
    pub(super) status: String,
    pub(super) handler: String,
    pub(super) event_type: String,
    pub(super) aggregate_type: String,
    pub(super) aggregate: String,
    pub(super) error_kind: String,
    pub(super) since: String,
    pub(super) after: String,
    pub(super) limit: String,
}

/// The text fields, with their labels, in form order.
const FIELDS: [(&str, &str); 6] = [
    ("handler", "handler or route"),
    ("event_type", "event type"),
    ("aggregate_type", "aggregate type"),
    ("aggregate", "aggregate id"),
    ("error_kind", "error kind"),
    ("since", "since (15m, 2h, RFC 3339)"),
];

impl FilterParams {
    fn field(&self, name: &str) -> &str {
        match name {
            "status" => &self.status,
            "handler" => &self.handler,
            "event_type" => &self.event_type,
            "aggregate_type" => &self.aggregate_type,
            "aggregate" => &self.aggregate,
            "error_kind" => &self.error_kind,
            "since" => &self.since,
            "after" => &self.after,
            "limit" => &self.limit,
            _ => "",
        }
    }

    /// The filter these parameters describe (its status, after and limit included).
    pub(super) fn filter(&self) -> Result<MessageFilter, ErrorPage> {
        let bad = |m: String| ErrorPage::new(StatusCode::BAD_REQUEST, m);
        // No stored name or id holds a NUL, and PostgreSQL refuses one in a query.
        if [
            &self.handler,
            &self.event_type,
            &self.aggregate_type,
            &self.aggregate,
            &self.error_kind,
        ]
        .iter()
        .any(|v| v.contains('\0'))
        {
            return Err(bad("a filter value contains a NUL character".into()));
        }
        let mut f = MessageFilter::new();
        if let Some(s) = set(&self.status) {
            let s = MessageStatus::parse(s).ok_or_else(|| {
                bad(format!(
                    "`{s}` is not pending, delivered, dead or unhandled"
                ))
            })?;
            f = f.status(s);
        }
        if let Some(h) = set(&self.handler) {
            f = f.handler(h);
        }
        if let Some(t) = set(&self.event_type) {
            f = f.event_type(t);
        }
        if let Some(t) = set(&self.aggregate_type) {
            f = f.aggregate_type(t);
        }
        if let Some(a) = set(&self.aggregate) {
            f = f.aggregate_id(a);
        }
        if let Some(k) = set(&self.error_kind) {
            f = f.error_kind(k);
        }
        if let Some(s) = set(&self.since) {
            f = f.since(crate::since::parse_since(s).map_err(bad)?);
        }
        if let Some(a) = set(&self.after) {
            f = f.after(
                a.parse()
                    .map_err(|_| bad(format!("after: `{a}` is not a sequence")))?,
            );
        }
        let limit = match set(&self.limit) {
            Some(l) => l
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=500).contains(n))
                .ok_or_else(|| bad(format!("limit: `{l}` is not a number from 1 to 500")))?,
            None => 50,
        };
        Ok(f.limit(limit))
    }

    /// Drops the page (`after`, `limit`): what is left selects every match, as an action on
    /// "all matching" must.
    pub(super) fn whole(&mut self) {
        self.after.clear();
        self.limit.clear();
    }

    /// Whether no condition is set (status, page and limit aside).
    pub(super) fn is_empty(&self) -> bool {
        FIELDS
            .iter()
            .all(|(name, _)| self.field(name).trim().is_empty())
    }

    /// The set fields as a query string (without `?`), with `after` replaced by `after`.
    pub(super) fn query(&self, after: Option<i64>) -> String {
        let after = after.map(|a| a.to_string());
        [
            "status",
            "handler",
            "event_type",
            "aggregate_type",
            "aggregate",
            "error_kind",
            "since",
            "limit",
        ]
        .iter()
        .map(|name| (*name, self.field(name).trim()))
        .chain(after.as_deref().map(|a| ("after", a)))
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
    }

    /// The form's text inputs, filled with the current values.
    pub(super) fn inputs(&self) -> Markup {
        html! {
            @for (name, label) in FIELDS {
                label { (label) " " input type="text" name=(name) value=(self.field(name)); }
            }
        }
    }

    /// The set fields as hidden inputs, to carry the filter through a confirmation form.
    pub(super) fn hidden(&self) -> Markup {
        html! {
            @for (name, _) in FIELDS {
                @if !self.field(name).trim().is_empty() {
                    input type="hidden" name=(name) value=(self.field(name).trim());
                }
            }
        }
    }
}

/// The trimmed value, if any.
fn set(s: &str) -> Option<&str> {
    Some(s.trim()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_filter_and_the_next_page_link() {
        let p = FilterParams {
            status: "dead".into(),
            handler: "send mail".into(),
            limit: "20".into(),
            ..Default::default()
        };
        let f = p.filter().unwrap();
        assert_eq!(
            f,
            MessageFilter::new()
                .status(MessageStatus::Dead)
                .handler("send mail")
                .limit(20)
        );
        assert_eq!(
            p.query(Some(42)),
            "status=dead&handler=send%20mail&limit=20&after=42"
        );
        assert!(!p.is_empty());
        assert!(FilterParams::default().is_empty());
        let bad = FilterParams {
            status: "gone".into(),
            ..Default::default()
        };
        assert!(bad.filter().is_err());
    }
}
