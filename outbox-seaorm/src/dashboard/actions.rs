//! Requeue and discard every dead letter a filter matches: a confirmation page with the
//! count, then a `POST` with the CSRF token, running the same `Admin` calls as the command line.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::Shared;
use super::auth::same;
use super::filter::FilterParams;
use super::layout::{Ctx, ErrorPage, Nav, page};
use crate::entity::MessageStatus;

/// The action asked for and the filter it applies to.
#[derive(Debug, Deserialize)]
pub(super) struct ActionParams {
    #[serde(default)]
    action: String,
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    filter: FilterParams,
}

#[derive(Debug, Clone, Copy)]
enum Verb {
    Requeue,
    Discard,
}

impl Verb {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "requeue" => Some(Verb::Requeue),
            "discard" => Some(Verb::Discard),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Verb::Requeue => "requeue",
            Verb::Discard => "discard",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Verb::Requeue => "requeued",
            Verb::Discard => "discarded",
        }
    }
}

fn read_only() -> ErrorPage {
    ErrorPage::new(
        StatusCode::FORBIDDEN,
        "the dashboard is read-only: actions are disabled",
    )
}

/// How many dead letters the action would touch, and the button that does it.
pub(super) async fn confirm(
    State(dash): State<Shared>,
    ctx: Ctx,
    Query(p): Query<ActionParams>,
) -> Result<Response, ErrorPage> {
    if ctx.read_only {
        return Err(read_only());
    }
    let verb = Verb::parse(&p.action)
        .ok_or_else(|| ErrorPage::new(StatusCode::BAD_REQUEST, "action: requeue or discard"))?;
    // The action takes every match, not a page: count what it will take.
    let mut p = p;
    p.filter.whole();
    let filter = p.filter.filter()?.status(MessageStatus::Dead);
    let count = dash.admin.count(&filter).await?;
    let back = ctx.href(&format!("/dead-letters?{}", p.filter.query(None)));
    let body = html! {
        p #confirm-question {
            @match verb {
                Verb::Requeue => { "Requeue " strong #confirm-count { (count) } " dead message(s)? Their dead deliveries get a fresh retry budget; deliveries that succeeded are not repeated." }
                Verb::Discard => { "Discard " strong #confirm-count { (count) } " dead message(s)? They are deleted for good." }
            }
        }
        @if !p.filter.is_empty() {
            p { "Filter: " code { (p.filter.query(None)) } }
        }
        form method="post" action=(ctx.href(&format!("/dead-letters/{}", verb.name()))) {
            input type="hidden" name="csrf" value=(ctx.csrf);
            (p.filter.hidden())
            button type="submit" #confirm class=(verb.name()) { (verb.name()) " " (count) }
            " "
            a href=(back) { "cancel" }
        }
    };
    let title = format!("Confirm: {} dead letters", verb.name());
    Ok(page(&ctx, &title, Nav::DeadLetters, false, body).into_response())
}

/// The form, or why it did not parse: read only after the read-only check, so a read-only
/// dashboard answers every action with 403 whatever the body.
type ActionForm = Result<Form<ActionParams>, FormRejection>;

/// `POST /dead-letters/requeue`.
pub(super) async fn requeue(
    state: State<Shared>,
    ctx: Ctx,
    form: ActionForm,
) -> Result<Response, ErrorPage> {
    act(state, ctx, form, Verb::Requeue).await
}

/// `POST /dead-letters/discard`.
pub(super) async fn discard(
    state: State<Shared>,
    ctx: Ctx,
    form: ActionForm,
) -> Result<Response, ErrorPage> {
    act(state, ctx, form, Verb::Discard).await
}

async fn act(
    State(dash): State<Shared>,
    ctx: Ctx,
    form: ActionForm,
    verb: Verb,
) -> Result<Response, ErrorPage> {
    let who = ctx.who.as_str();
    if ctx.read_only {
        tracing::warn!(
            who,
            action = verb.name(),
            "outbox dashboard: action refused, read-only"
        );
        return Err(read_only());
    }
    let Form(mut p) = form.map_err(|e| ErrorPage::new(e.status(), e.body_text()))?;
    // Every match, as the confirmation counted them (a page's `after` is not part of it).
    p.filter.whole();
    if !same(p.csrf.as_bytes(), ctx.csrf.as_bytes()) {
        tracing::warn!(
            who,
            action = verb.name(),
            "outbox dashboard: action refused, bad CSRF token"
        );
        return Err(ErrorPage::new(
            StatusCode::FORBIDDEN,
            "the form's token is missing or stale: reload the page and try again",
        ));
    }
    // Dead letters only, as the confirmation counted: discard would otherwise take the
    // filter's status.
    let filter = p.filter.filter()?.status(MessageStatus::Dead);
    let n = match verb {
        Verb::Requeue => dash.admin.requeue_matching(&filter).await?,
        Verb::Discard => dash.admin.discard_matching(&filter).await?,
    };
    tracing::info!(
        who,
        action = verb.name(),
        count = n,
        filter = p.filter.query(None),
        "outbox dashboard: {} dead letters",
        verb.done()
    );
    let mut query = p.filter.query(None);
    if !query.is_empty() {
        query.push('&');
    }
    let to = ctx.href(&format!("/dead-letters?{query}done={}&n={n}", verb.done()));
    Ok(Redirect::to(&to).into_response())
}
