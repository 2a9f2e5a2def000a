//! Requeue and discard every dead letter a filter matches (a confirmation page with the
//! count, then a `POST`), or one message from its page, with a CSRF token and an `Origin`
//! check, running the same `Admin` calls as the command line.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::Shared;
use super::auth::check_origin;
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
            input type="hidden" name="csrf" value=(ctx.form_token());
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
    headers: HeaderMap,
    form: ActionForm,
) -> Result<Response, ErrorPage> {
    act(state, ctx, headers, form, Verb::Requeue).await
}

/// `POST /dead-letters/discard`.
pub(super) async fn discard(
    state: State<Shared>,
    ctx: Ctx,
    headers: HeaderMap,
    form: ActionForm,
) -> Result<Response, ErrorPage> {
    act(state, ctx, headers, form, Verb::Discard).await
}

/// What every action checks before it acts, in this order: read-only mode (before the body
/// is read), the sender's origin, the form's token. Each refusal is logged with who asked.
fn guard(ctx: &Ctx, headers: &HeaderMap, token: Option<&str>, verb: Verb) -> Result<(), ErrorPage> {
    let who = ctx.who.as_str();
    if ctx.read_only {
        tracing::warn!(
            who,
            action = verb.name(),
            "outbox dashboard: action refused, read-only"
        );
        return Err(read_only());
    }
    let Some(token) = token else {
        return Ok(());
    };
    if let Err(why) = check_origin(headers) {
        tracing::warn!(
            who,
            action = verb.name(),
            "outbox dashboard: action refused, {why}"
        );
        return Err(ErrorPage::new(StatusCode::FORBIDDEN, why));
    }
    if !ctx.accepts(token) {
        tracing::warn!(
            who,
            action = verb.name(),
            "outbox dashboard: action refused, bad CSRF token"
        );
        return Err(ErrorPage::new(
            StatusCode::FORBIDDEN,
            "the form's token is missing, stale (over an hour old, or from before a restart) or \
             from another dashboard: reload the page and try again",
        ));
    }
    Ok(())
}

async fn act(
    State(dash): State<Shared>,
    ctx: Ctx,
    headers: HeaderMap,
    form: ActionForm,
    verb: Verb,
) -> Result<Response, ErrorPage> {
    let who = ctx.who.as_str();
    guard(&ctx, &headers, None, verb)?;
    let Form(mut p) = form.map_err(|e| ErrorPage::new(e.status(), e.body_text()))?;
    // Every match, as the confirmation counted them (a page's `after` is not part of it).
    p.filter.whole();
    guard(&ctx, &headers, Some(&p.csrf), verb)?;
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

/// The form of one message's action: the token, and for a discard the box that says "for
/// good".
#[derive(Debug, Deserialize)]
pub(super) struct OneParams {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    sure: String,
}

type OneForm = Result<Form<OneParams>, FormRejection>;

/// `POST /messages/{id}/requeue`.
pub(super) async fn requeue_one(
    state: State<Shared>,
    ctx: Ctx,
    headers: HeaderMap,
    id: Path<String>,
    form: OneForm,
) -> Result<Response, ErrorPage> {
    act_one(state, ctx, headers, id, form, Verb::Requeue).await
}

/// `POST /messages/{id}/discard`.
pub(super) async fn discard_one(
    state: State<Shared>,
    ctx: Ctx,
    headers: HeaderMap,
    id: Path<String>,
    form: OneForm,
) -> Result<Response, ErrorPage> {
    act_one(state, ctx, headers, id, form, Verb::Discard).await
}

async fn act_one(
    State(dash): State<Shared>,
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: OneForm,
    verb: Verb,
) -> Result<Response, ErrorPage> {
    guard(&ctx, &headers, None, verb)?;
    let Form(p) = form.map_err(|e| ErrorPage::new(e.status(), e.body_text()))?;
    guard(&ctx, &headers, Some(&p.csrf), verb)?;
    let id = uuid::Uuid::parse_str(&id).map_err(|_| {
        ErrorPage::new(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a message id"),
        )
    })?;
    if matches!(verb, Verb::Discard) && p.sure != "yes" {
        return Err(ErrorPage::new(
            StatusCode::BAD_REQUEST,
            "tick \"delete it for good\" to discard the message",
        ));
    }
    let done = match verb {
        Verb::Requeue => dash.admin.requeue(id).await,
        Verb::Discard => dash.admin.discard(id).await,
    };
    if let Err(crate::Error::MessageNotFound { .. }) = done {
        // Say which: gone, or in a state the action does not take (another operator or the
        // relay got there first).
        let rule = match verb {
            Verb::Requeue => "only dead and unhandled messages are requeued",
            Verb::Discard => {
                "only dead and unhandled messages, and pending ones no relay holds, are discarded"
            }
        };
        return Err(match dash.admin.show(id).await? {
            Some(m) => ErrorPage::new(
                StatusCode::CONFLICT,
                format!("message {id} is {}: {rule}", m.summary.status),
            ),
            None => ErrorPage::new(StatusCode::NOT_FOUND, format!("no outbox message {id}")),
        });
    }
    done?;
    tracing::info!(
        who = ctx.who.as_str(),
        action = verb.name(),
        message_id = %id,
        "outbox dashboard: {} message {id}",
        verb.done()
    );
    let to = match verb {
        Verb::Requeue => ctx.href(&format!("/messages/{id}")),
        Verb::Discard => ctx.href("/dead-letters?done=discarded&n=1"),
    };
    Ok(Redirect::to(&to).into_response())
}
