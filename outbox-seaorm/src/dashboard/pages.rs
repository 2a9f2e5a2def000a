//! The pages that only read: overview, messages, one message, dead letters, handlers, relays.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use super::Shared;
use super::filter::FilterParams;
use super::layout::{Ctx, ErrorPage, Nav, age, chart, duration, encode, page, time};
use crate::admin::{Lag, MessageSummary};
use crate::entity::MessageStatus;

type Page = Result<Markup, ErrorPage>;

/// Counts, the last hour's throughput, the backlog and the dead letters by group.
pub(super) async fn overview(State(dash): State<Shared>, ctx: Ctx) -> Page {
    // `status` reads the pending and dead rows only, never the delivered history, so the page
    // stays cheap to refresh on a large table.
    let status = dash.admin.status().await?;
    let minutes = dash.admin.throughput().await?;
    let delivered: u64 = minutes.iter().map(|m| m.delivered).sum();
    let failed: u64 = minutes.iter().map(|m| m.failed).sum();
    let alive = status.relays.iter().filter(|r| r.is_alive()).count();
    let body = html! {
        section.cards {
            (card("count-pending", "pending", status.pending.to_string(), &ctx.href("/messages?status=pending")))
            (card("count-dead", "dead", status.dead.to_string(), &ctx.href("/dead-letters")))
            (card("count-unhandled", "unhandled (no handler took them)", status.unhandled.to_string(), &ctx.href("/messages?status=unhandled")))
            (card("count-delivered-hour", "delivered, last hour", status.delivered_last_hour.to_string(), &ctx.href("/messages?status=delivered&since=1h")))
            (card("count-unknown", "waiting for a relay that knows the type", status.unknown_event_type.to_string(), &ctx.href("/messages?status=pending&error_kind=unknown_event_type")))
            (card("oldest-pending", "oldest pending", status.oldest_pending_age_secs.map_or_else(|| "-".to_owned(), age), &ctx.href("/messages?status=pending")))
            (card("relays-alive", "relays alive", alive.to_string(), &ctx.href("/relays")))
        }
        section {
            h2 { "Last hour" }
            p {
                span.delivered-key { "delivered " } strong #chart-delivered { (delivered) }
                " · "
                span.failed-key { "failed " } strong #chart-failed { (failed) }
                " (per minute below)"
            }
            (chart(&minutes))
        }
        section {
            h2 { "Backlog" }
            @if status.backlog.is_empty() {
                p.empty { "Nothing pending." }
            } @else {
                table #backlog {
                    thead { tr { th { "aggregate type" } th { "event type" } th.num { "pending" } th.num { "oldest" } } }
                    tbody {
                        @for b in &status.backlog {
                            tr {
                                td { (b.aggregate_type) }
                                td { a href=(ctx.href(&format!("/messages?status=pending&event_type={}&aggregate_type={}", encode(&b.event_type), encode(&b.aggregate_type)))) { (b.event_type) } }
                                td.num { (b.pending) }
                                td.num { (age(b.oldest_age_secs)) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Dead letters by handler and error kind" }
            (dead_groups(&ctx, &status.dead_letters))
        }
    };
    Ok(page(&ctx, "Overview", Nav::Overview, true, body))
}

fn card(id: &str, label: &str, value: String, href: &str) -> Markup {
    html! {
        a.card href=(href) {
            span.value id=(id) { (value) }
            span.label { (label) }
        }
    }
}

fn dead_groups(ctx: &Ctx, groups: &[crate::admin::DeadGroup]) -> Markup {
    html! {
        @if groups.is_empty() {
            p.empty { "No dead letters." }
        } @else {
            table #dead-groups {
                thead { tr { th { "handler" } th { "error kind" } th.num { "dead" } } }
                tbody {
                    @for g in groups {
                        @let q = group_query(g);
                        tr {
                            td { (g.handler.as_deref().unwrap_or("(the message as a whole)")) }
                            td { (g.error_kind.as_deref().unwrap_or("-")) }
                            td.num { a href=(ctx.href(&format!("/dead-letters?{q}"))) { (g.count) } }
                        }
                    }
                }
            }
        }
    }
}

/// The dead-letter filter of one group.
fn group_query(g: &crate::admin::DeadGroup) -> String {
    let mut q = Vec::new();
    if let Some(h) = &g.handler {
        q.push(format!("handler={}", encode(h)));
    }
    if let Some(k) = &g.error_kind {
        q.push(format!("error_kind={}", encode(k)));
    }
    q.join("&")
}

/// Messages matching the filters, oldest first, a keyset page at a time.
pub(super) async fn messages(
    State(dash): State<Shared>,
    ctx: Ctx,
    Query(params): Query<FilterParams>,
) -> Page {
    let filter = params.filter()?;
    let rows = dash.admin.list(&filter).await?;
    let body = html! {
        form.filters method="get" action=(ctx.href("/messages")) {
            label { "status " select name="status" {
                @for s in ["", "pending", "delivered", "dead", "unhandled"] {
                    option value=(s) selected[params.status == s] { (if s.is_empty() { "any" } else { s }) }
                }
            } }
            (params.inputs())
            label { "per page " input type="number" name="limit" min="1" max="500" value=(params.limit); }
            button type="submit" { "Filter" }
        }
        (message_table(&ctx, &rows))
        (next_page(&ctx, "/messages", &params, &rows, &filter))
    };
    Ok(page(&ctx, "Messages", Nav::Messages, false, body))
}

fn message_table(ctx: &Ctx, rows: &[MessageSummary]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.empty #no-messages { "No messages match." }
        } @else {
            table #messages {
                thead { tr {
                    th.num { "seq" } th { "status" } th { "event type" } th { "aggregate" }
                    th.num { "attempts" } th { "last error" } th { "recorded" }
                } }
                tbody {
                    @for m in rows {
                        tr data-seq=(m.sequence) {
                            td.num { a href=(ctx.href(&format!("/messages/{}", m.message_id))) { (m.sequence) } }
                            td { span class=(format!("status {}", m.status)) { (m.status) } }
                            td { (m.event_type) " v" (m.event_version) }
                            td { (m.aggregate_type) " " code { (m.aggregate_id) } }
                            td.num { (m.attempts) }
                            td.error { @if let Some(k) = &m.last_error_kind { code { (k) } " " } (m.last_error.as_deref().unwrap_or("")) }
                            td { (time(m.occurred_at)) }
                        }
                    }
                }
            }
        }
    }
}

/// The link to the next keyset page: rows after the last sequence shown, never an offset.
fn next_page(
    ctx: &Ctx,
    path: &str,
    params: &FilterParams,
    rows: &[MessageSummary],
    filter: &crate::admin::MessageFilter,
) -> Markup {
    let full = filter.limit.is_some_and(|l| rows.len() as u32 >= l);
    html! {
        p.pages {
            @if !params.after.trim().is_empty() {
                a href=(ctx.href(&format!("{path}?{}", params.query(None)))) { "first page" } " "
            }
            @if let (true, Some(last)) = (full, rows.last()) {
                a #next-page rel="next" href=(ctx.href(&format!("{path}?{}", params.query(Some(last.sequence))))) { "next page →" }
            }
        }
    }
}

/// One message: payload, headers, trace link, each handler's state.
pub(super) async fn message(State(dash): State<Shared>, ctx: Ctx, Path(id): Path<String>) -> Page {
    let id = Uuid::parse_str(&id).map_err(|_| {
        ErrorPage::new(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a message id"),
        )
    })?;
    let Some(m) = dash.admin.show(id).await? else {
        return Err(ErrorPage::new(
            StatusCode::NOT_FOUND,
            format!("no outbox message {id}"),
        ));
    };
    let s = &m.summary;
    let trace_link = dash
        .config
        .trace_link
        .as_ref()
        .and_then(|template| trace_link(template, &m.headers, id));
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    // What the admin calls take: requeue a dead or unhandled message; discard one of those, or a pending one
    // no relay holds.
    let can_requeue = s.status == "dead" || s.status == "unhandled";
    let can_discard = can_requeue || (s.status == "pending" && s.locked_by.is_none());
    let body = html! {
        @if !ctx.read_only && (can_requeue || can_discard) {
            @let token = ctx.form_token();
            div #message-actions {
                @if can_requeue {
                    form method="post" action=(ctx.href(&format!("/messages/{id}/requeue"))) {
                        input type="hidden" name="csrf" value=(token);
                        button type="submit" #requeue-one class="requeue" { "requeue" }
                        " its dead deliveries get a fresh retry budget"
                    }
                }
                @if can_discard {
                    form method="post" action=(ctx.href(&format!("/messages/{id}/discard"))) {
                        input type="hidden" name="csrf" value=(token);
                        label { input type="checkbox" name="sure" value="yes" required; " delete it for good" }
                        " "
                        button type="submit" #discard-one class="discard" { "discard" }
                    }
                }
            }
        }
        dl.fields #message-fields {
            dt { "id" } dd { code { (s.message_id) } }
            dt { "sequence" } dd { (s.sequence) }
            dt { "status" } dd { span #message-status class=(format!("status {}", s.status)) { (s.status) } }
            dt { "event" } dd { (s.event_type) " v" (s.event_version) }
            dt { "aggregate" } dd { (s.aggregate_type) " " code { (s.aggregate_id) } " position " (s.position) }
            dt { "attempts" } dd { (s.attempts) }
            dt { "recorded" } dd { (time(s.occurred_at)) }
            dt { "available" } dd { (time(s.available_at)) }
            @if let Some(t) = s.delivered_at { dt { "delivered" } dd { (time(t)) } }
            @if let Some(r) = &s.locked_by { dt { "held by" } dd { code { (r) } } }
            @if let Some(e) = &s.last_error { dt { "last error" } dd.error { @if let Some(k) = &s.last_error_kind { code { (k) } " " } (e) } }
            @if let Some(link) = &trace_link { dt { "trace" } dd { a #trace-link href=(link) rel="noreferrer" { "open the trace" } } }
        }
        h2 { "Deliveries" }
        @if s.status == MessageStatus::Unhandled.as_str() {
            p #unhandled-note { "Not delivered: no handler or route in the relay that ran it takes this event type (is the crate with its handler linked into the relay's binary?). Requeue it once one does." }
        } @else if m.deliveries.is_empty() {
            p.empty { "No per-handler state: every handler succeeded at the first attempt, or none has run yet." }
        } @else {
            table #deliveries {
                thead { tr { th { "handler" } th { "state" } th.num { "attempts" } th { "last error" } } }
                tbody {
                    @for d in &m.deliveries {
                        tr {
                            td { (d.handler) }
                            td { span class=(format!("status {}", d.status.as_str())) { (d.status.as_str()) } }
                            td.num { (d.attempts) }
                            td.error { @if let Some(k) = &d.last_error_kind { code { (k) } " " } (d.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        h2 { "Payload" }
        pre #payload { (pretty(&m.payload)) }
        h2 { "Headers" }
        pre #headers { (pretty(&m.headers)) }
    };
    Ok(page(
        &ctx,
        &format!("Message {}", s.sequence),
        Nav::Messages,
        false,
        body,
    ))
}

/// The template with the trace id of the message's W3C `traceparent`
/// (`00-<trace id>-<span id>-<flags>`) and its id filled in; `None` without a trace.
fn trace_link(template: &str, headers: &serde_json::Value, id: Uuid) -> Option<String> {
    let trace_id = headers
        .get("traceparent")?
        .as_str()?
        .split('-')
        .nth(1)
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))?;
    Some(
        template
            .replace("{trace_id}", trace_id)
            .replace("{message_id}", &id.to_string()),
    )
}

/// What an action just did, shown once after its redirect.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Done {
    done: String,
    n: u64,
}

/// Dead letters: the groups, the filtered list, and the bulk actions.
pub(super) async fn dead_letters(
    State(dash): State<Shared>,
    ctx: Ctx,
    Query(mut params): Query<FilterParams>,
    Query(done): Query<Done>,
) -> Page {
    params.status = MessageStatus::Dead.as_str().to_owned();
    let filter = params.filter()?;
    // Every match, not only those after this page: the count the actions would act on.
    let every = FilterParams {
        after: String::new(),
        ..params.clone()
    };
    let matching = dash.admin.count(&every.filter()?).await?;
    let rows = dash.admin.list(&filter).await?;
    let groups = dash.admin.status().await?.dead_letters;
    let body = html! {
        @if matches!(done.done.as_str(), "requeued" | "discarded") {
            p.notice #action-done { (done.n) " message(s) " (done.done) "." }
        }
        h2 { "By handler and error kind" }
        (dead_groups(&ctx, &groups))
        h2 { "Matching" }
        form.filters method="get" action=(ctx.href("/dead-letters")) {
            (params.inputs())
            button type="submit" { "Filter" }
        }
        p { strong #matching { (matching) } " dead message(s) match." }
        @if !ctx.read_only && matching > 0 {
            div.actions #actions {
                @for (action, label) in [("requeue", "Requeue all matching"), ("discard", "Discard all matching")] {
                    form method="get" action=(ctx.href("/dead-letters/confirm")) {
                        input type="hidden" name="action" value=(action);
                        (params.hidden())
                        button type="submit" id=(format!("{action}-all")) class=(action) { (label) }
                    }
                }
            }
        }
        (message_table(&ctx, &rows))
        (next_page(&ctx, "/dead-letters", &params, &rows, &filter))
    };
    Ok(page(&ctx, "Dead letters", Nav::DeadLetters, false, body))
}

/// Per handler: delivery rows by state and delivery-lag percentiles.
pub(super) async fn handlers(State(dash): State<Shared>, ctx: Ctx) -> Page {
    let report = dash.admin.handler_stats().await?;
    let lag_cells = |lag: &Option<Lag>| match lag {
        Some(l) => html! {
            td.num { (duration(l.p50)) } td.num { (duration(l.p90)) } td.num { (duration(l.p99)) }
            td.num { (duration(l.max)) } td.num { (l.samples) }
        },
        None => {
            html! { td.num { "-" } td.num { "-" } td.num { "-" } td.num { "-" } td.num { "0" } }
        }
    };
    let body = html! {
        p.note {
            "\"Delivered, last hour\" counts the messages of the handler's event type delivered in the last hour, at the first try or after failing; a route's is unknown (which messages it takes is not stored). "
            "The other counts are of the per-handler delivery rows, which exist only for messages that failed at least once (a message delivered at the first try leaves none). "
            "The percentiles are of delivery lag, from the event's recording to the handler's last outcome, over the latest 10 000 rows: the tables store times, not handler run times."
        }
        @if report.handlers.is_empty() {
            p.empty { "No handler has a delivery row, and no running relay reports handlers." }
        } @else {
            table #handlers {
                thead { tr {
                    th { "handler or route" } th.num { "delivered, last hour" } th.num { "delivered after failing" } th.num { "failed (retrying)" } th.num { "dead" }
                    th.num { "lag p50" } th.num { "p90" } th.num { "p99" } th.num { "max" } th.num { "samples" }
                } }
                tbody {
                    @for h in &report.handlers {
                        tr data-handler=(h.handler) {
                            td { a href=(ctx.href(&format!("/messages?handler={}", encode(&h.handler)))) { (h.handler) } }
                            td.num.delivered-hour { @match h.delivered_last_hour { Some(n) => (n), None => span title="a route: which messages it takes is not stored" { "?" } } }
                            td.num.delivered { (h.delivered) }
                            td.num.failed { (h.failed) }
                            td.num.dead { a href=(ctx.href(&format!("/dead-letters?handler={}", encode(&h.handler)))) { (h.dead) } }
                            (lag_cells(&h.lag))
                        }
                    }
                }
            }
        }
        h2 { "All messages delivered in the last hour" }
        table #message-lag {
            thead { tr { th.num { "lag p50" } th.num { "p90" } th.num { "p99" } th.num { "max" } th.num { "samples" } } }
            tbody { tr { (lag_cells(&report.messages)) } }
        }
    };
    Ok(page(&ctx, "Handlers", Nav::Handlers, true, body))
}

/// The relays recorded: heartbeats and the messages they hold.
pub(super) async fn relays(State(dash): State<Shared>, ctx: Ctx) -> Page {
    let relays = dash.admin.relays().await?;
    let body = html! {
        @if relays.is_empty() {
            p.empty { "No relay has registered." }
        } @else {
            table #relays {
                thead { tr {
                    th { "id" } th { "state" } th { "host" } th { "version" } th { "started" }
                    th.num { "last heartbeat" } th.num { "leased messages" } th { "handles" }
                } }
                tbody {
                    @for r in &relays {
                        @let state = if r.stopped_at.is_some() { "stopped" } else if r.is_alive() { "alive" } else { "silent" };
                        tr data-relay=(r.id) {
                            td { code { (r.id) } }
                            td { span class=(format!("status {state}")) { (state) } }
                            td { (r.host) }
                            td { (r.version) }
                            td { (time(r.started_at)) }
                            td.num { (age(r.silent_for.as_secs_f64())) " ago" }
                            td.num.held { (r.held) }
                            td {
                                (r.handles.handlers.len()) " handlers, " (r.handles.routes.len()) " routes"
                                @if !r.handles.cdc_routes.is_empty() {
                                    br;
                                    "published by CDC, not by the relay: "
                                    @for (i, n) in r.handles.cdc_routes.iter().enumerate() {
                                        @if i > 0 { ", " }
                                        code.cdc-route { (n) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&ctx, "Relays", Nav::Relays, true, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_link_takes_the_trace_id_of_the_traceparent() {
        let id = Uuid::nil();
        let headers = serde_json::json!({
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        });
        assert_eq!(
            trace_link("https://t.example/{trace_id}?m={message_id}", &headers, id).as_deref(),
            Some(
                "https://t.example/4bf92f3577b34da6a3ce929d0e0e4736\
                 ?m=00000000-0000-0000-0000-000000000000"
            )
        );
        assert_eq!(trace_link("{trace_id}", &serde_json::json!({}), id), None);
        let forged = serde_json::json!({ "traceparent": "00-\"><script>-x-01" });
        assert_eq!(trace_link("{trace_id}", &forged, id), None, "only hex ids");
    }
}
