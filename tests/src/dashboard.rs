//! What the dashboard tests share: a seeded outbox, requests through the router without a
//! server, and reading numbers out of the pages.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use outbox_seaorm::{Relay, UnitOfWork};
use sea_orm::DatabaseConnection;
use tower::ServiceExt;

use crate::fixtures::{FromANewerVersion, seed_dead_letters};

/// Six `test.numbered` events (`agg-0`..`agg-5`): three dead for the `mail` handler
/// (`handler_failed`), three delivered; then two `test.from-a-newer-version` events pending
/// (no relay knows the type). Returns the relay that drained them (built, not running).
pub async fn seed(db: &DatabaseConnection) -> Relay {
    let relay = seed_dead_letters(db).await;
    relay.drain().await.expect("drain");
    let uow = UnitOfWork::begin(db).await.expect("begin");
    for n in 0..2 {
        uow.record("order", "o-1", FromANewerVersion { n }, Default::default())
            .expect("record");
    }
    uow.commit().await.expect("commit");
    relay.drain().await.expect("drain");
    relay
}

/// A response, its body read.
#[derive(Debug)]
pub struct Page {
    /// The status code.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as text.
    pub body: String,
}

impl Page {
    /// The text of the element with this id, up to its first child tag or its end.
    pub fn text_of(&self, id: &str) -> Option<String> {
        text_of(&self.body, id)
    }

    /// The number in the element with this id.
    ///
    /// # Panics
    ///
    /// When there is no such element or it holds no number.
    pub fn number(&self, id: &str) -> u64 {
        let text = self
            .text_of(id)
            .unwrap_or_else(|| panic!("no element #{id} in {}", self.body));
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("#{id} holds {text:?}, not a number"))
    }

    /// The value of the hidden input `name`.
    pub fn input_value(&self, name: &str) -> Option<String> {
        let at = self.body.find(&format!("name=\"{name}\" value=\""))?;
        let rest = &self.body[at + name.len() + 15..];
        Some(rest[..rest.find('"')?].to_owned())
    }

    /// The `Location` header.
    pub fn location(&self) -> Option<&str> {
        self.headers.get(header::LOCATION)?.to_str().ok()
    }
}

/// The text of the element with `id` in `html`, up to its first child tag or its end.
pub fn text_of(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let rest = &html[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')? + start;
    Some(rest[start..end].to_owned())
}

/// `GET uri` through `app`.
pub async fn get(app: &Router, uri: &str) -> Page {
    send(app, Request::get(uri).body(Body::empty()).expect("request")).await
}

/// `GET /` with an `Authorization` header through `app`.
pub async fn get_as(app: &Router, authorization: &str) -> Page {
    let req = Request::get("/")
        .header(header::AUTHORIZATION, authorization)
        .body(Body::empty())
        .expect("request");
    send(app, req).await
}

/// `POST uri` with a form body through `app`.
pub async fn post_form(app: &Router, uri: &str, form: &str) -> Page {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .expect("request");
    send(app, req).await
}

/// Sends `req` through `app`.
pub async fn send(app: &Router, req: Request<Body>) -> Page {
    let res = app.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 16 << 20)
        .await
        .expect("body");
    Page {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}
