//! The frame every page shares (navigation, assets), the request context pages render with,
//! the throughput chart, and the formatting of times and counts.

use std::time::Duration;

use axum::extract::{FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::Shared;
use super::auth::Who;
use crate::admin::MinuteCounts;
use crate::error::Error;

const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

/// Where the dashboard is mounted, who is asking, and what they may do.
pub(super) struct Ctx {
    /// The mount path without a trailing slash (`""` at the root, `"/outbox"` when nested).
    pub(super) base: String,
    pub(super) who: String,
    pub(super) read_only: bool,
    tokens: std::sync::Arc<super::auth::FormTokens>,
}

impl Ctx {
    /// The link to a page of the dashboard (`""` is the overview).
    pub(super) fn href(&self, path: &str) -> String {
        if path.is_empty() && self.base.is_empty() {
            "/".to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// A fresh CSRF token for a form of the page being rendered.
    pub(super) fn form_token(&self) -> String {
        self.tokens.issue()
    }

    /// Whether a submitted form's token was issued by this dashboard, recently.
    pub(super) fn accepts(&self, token: &str) -> bool {
        self.tokens.accepts(token)
    }
}

impl FromRequestParts<Shared> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, dash: &Shared) -> Result<Self, Self::Rejection> {
        let inner = parts.uri.path().to_owned();
        let full = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| inner.clone(), |o| o.path().to_owned());
        // `nest` strips the mount path from the URI; the original keeps it.
        let base = if inner == "/" {
            full.trim_end_matches('/').to_owned()
        } else {
            full.strip_suffix(&inner).unwrap_or_default().to_owned()
        };
        Ok(Ctx {
            base,
            who: parts
                .extensions
                .get::<Who>()
                .map_or_else(|| "unknown".to_owned(), |w| w.0.clone()),
            read_only: dash.config.read_only,
            tokens: dash.tokens.clone(),
        })
    }
}

/// A page that could not be rendered, with its status code.
#[derive(Debug)]
pub(super) struct ErrorPage {
    pub(super) status: StatusCode,
    pub(super) message: String,
    /// A database error: [`explain_db_failure`] checks the tables before the page goes out.
    db_failed: bool,
}

impl ErrorPage {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            db_failed: false,
        }
    }
}

const DB_FAILED: &str =
    "the outbox could not be read: a database error (the details are in the server's log)";

const TABLES_MISSING: &str = "the outbox tables are missing: run `outbox migrate` (or add \
                              `OutboxMigration` to your migrator)";

impl From<Error> for ErrorPage {
    fn from(e: Error) -> Self {
        let report = e.report();
        tracing::error!(error = %report, "outbox dashboard: query failed");
        // The database's own words (server source lines, schema names) are for the log; the
        // page says what to do, once the tables are checked (`explain_db_failure`).
        if matches!(e, Error::Db(_) | Error::Schema { .. }) {
            Self {
                db_failed: true,
                ..Self::new(StatusCode::INTERNAL_SERVER_ERROR, DB_FAILED)
            }
        } else {
            Self::new(StatusCode::INTERNAL_SERVER_ERROR, report)
        }
    }
}

/// Marks the response of a page that failed on a database error.
#[derive(Clone, Copy)]
struct DbFailed;

/// After a page failed on a database error, checks the outbox tables: only when they are
/// missing or outdated does the page say to run `outbox migrate`.
pub(super) async fn explain_db_failure(
    axum::extract::State(dash): axum::extract::State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let res = next.run(req).await;
    if res.extensions().get::<DbFailed>().is_none() {
        return res;
    }
    match crate::schema::check_tables(&dash.db, &dash.config.outbox).await {
        Err(_) => ErrorPage::new(StatusCode::INTERNAL_SERVER_ERROR, TABLES_MISSING).into_response(),
        Ok(()) => res,
    }
}

impl IntoResponse for ErrorPage {
    fn into_response(self) -> Response {
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { "outbox: error" } }
                body { h1 { (self.status.as_u16()) " " (self.status.canonical_reason().unwrap_or("")) } p.error { (self.message) } }
            }
        };
        let mut res = (self.status, body).into_response();
        if self.db_failed {
            res.extensions_mut().insert(DbFailed);
        }
        res
    }
}

/// Which navigation entry is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    Overview,
    Messages,
    DeadLetters,
    Handlers,
    Relays,
}

/// The page frame. `live` pages are refreshed in place by the script every few seconds.
pub(super) fn page(ctx: &Ctx, title: &str, nav: Nav, live: bool, body: Markup) -> Markup {
    let entries = [
        (Nav::Overview, "", "Overview"),
        (Nav::Messages, "/messages", "Messages"),
        (Nav::DeadLetters, "/dead-letters", "Dead letters"),
        (Nav::Handlers, "/handlers", "Handlers"),
        (Nav::Relays, "/relays", "Relays"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "outbox: " (title) }
                link rel="stylesheet" href=(ctx.href("/assets/dashboard.css"));
                script src=(ctx.href("/assets/dashboard.js")) defer {}
            }
            body {
                header {
                    strong { "outbox" }
                    nav {
                        @for (n, path, label) in entries {
                            a href=(ctx.href(path)) class=[(n == nav).then_some("current")] { (label) }
                        }
                    }
                    @if ctx.read_only { span.badge #read-only { "read-only" } }
                    span #live-status {}
                }
                main data-refresh=[live.then_some("5")] {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The embedded script (a file, so the CSP can forbid inline scripts).
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The embedded stylesheet.
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Delivered (green) and failed (red) per minute over the last hour, oldest on the left, as
/// inline SVG: no script needed to see it.
pub(super) fn chart(minutes: &[MinuteCounts]) -> Markup {
    const W: u64 = 10;
    const H: u64 = 120;
    let max = minutes
        .iter()
        .map(|m| m.delivered.max(m.failed))
        .max()
        .unwrap_or(0)
        .max(1);
    let height = |n: u64| n * H / max;
    let slots = minutes.len() as u64;
    html! {
        svg #throughput-chart viewBox=(format!("0 0 {} {}", slots * W, H + 16)) role="img"
            aria-label="delivered and failed per minute over the last hour" {
            line.axis x1="0" y1=(H) x2=(slots * W) y2=(H) {}
            @for m in minutes {
                @let x = (slots - 1 - u64::from(m.minutes_ago)) * W;
                @if m.delivered > 0 {
                    rect.delivered x=(x + 1) y=(H - height(m.delivered)) width="4" height=(height(m.delivered)) {
                        title { (m.delivered) " delivered, " (m.minutes_ago) " min ago" }
                    }
                }
                @if m.failed > 0 {
                    rect.failed x=(x + 5) y=(H - height(m.failed)) width="4" height=(height(m.failed)) {
                        title { (m.failed) " failed, " (m.minutes_ago) " min ago" }
                    }
                }
            }
            text x="0" y=(H + 14) { "60 min ago" }
            text x=(slots * W) y=(H + 14) text-anchor="end" { "now" }
        }
    }
}

/// `12s`, `4m 05s`, `3h 20m`, `2d 4h`.
pub(super) fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A short duration: `850 ms`, `2.4 s`, then as [`age`].
pub(super) fn duration(d: Duration) -> String {
    match d.as_millis() {
        0..1000 => format!("{} ms", d.as_millis()),
        1000..60_000 => format!("{:.1} s", d.as_secs_f64()),
        _ => age(d.as_secs_f64()),
    }
}

/// A time in UTC, to the second.
pub(super) fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
pub(super) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_ages_durations_and_query_values() {
        assert_eq!(age(5.2), "5s");
        assert_eq!(age(125.0), "2m 05s");
        assert_eq!(age(7300.0), "2h 01m");
        assert_eq!(age(90_000.0), "1d 1h");
        assert_eq!(duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration(Duration::from_millis(2400)), "2.4 s");
        assert_eq!(encode("a b/é&x=1"), "a%20b%2F%C3%A9%26x%3D1");
    }
}
