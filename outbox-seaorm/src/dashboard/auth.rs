//! Who may look and act: basic or bearer authentication, the CSRF token of the action forms,
//! and the security headers of every response.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::Shared;

/// Scripts, styles and images from the dashboard only, no inline script, no framing: an
/// injected `<script>` in a payload or an error message would not run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The authentication the dashboard checks itself.
#[derive(Clone)]
pub(super) enum Auth {
    /// HTTP basic: the user, and the whole `Authorization` value expected.
    Basic { user: String, expected: String },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl Auth {
    pub(super) fn basic(user: String, password: &str) -> Self {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Auth::Basic {
            user,
            expected: format!("Basic {encoded}"),
        }
    }

    /// A user, password or token that is empty.
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Auth::Basic { user, expected } => {
                let encoded_colon_only =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
                user.is_empty() || expected == &format!("Basic {encoded_colon_only}")
            }
            Auth::Bearer(token) => token.trim().is_empty(),
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Auth::Basic { .. } => "basic",
            Auth::Bearer(_) => "bearer",
        }
    }
}

/// Who is operating, as the caller's own authentication layer knows them: insert it into the
/// request's extensions and the action log names them.
///
/// ```
/// # fn f(db: sea_orm::DatabaseConnection) -> axum::Router {
/// use axum::{extract::Request, middleware::Next};
/// use outbox_seaorm::dashboard::{self, DashboardConfig, Operator};
///
/// async fn sso(mut req: Request, next: Next) -> axum::response::Response {
///     // ... authenticate, then:
///     req.extensions_mut().insert(Operator("ada@example.com".into()));
///     next.run(req).await
/// }
/// dashboard::router(db, DashboardConfig::new()).layer(axum::middleware::from_fn(sso))
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator(pub String);

/// Who made a request, for the action log: the authenticated user and the peer address.
#[derive(Debug, Clone)]
pub(super) struct Who(pub(super) String);

/// The `Authorization` value with its scheme written as we compare it (`Basic`, `Bearer`): the
/// scheme name is case-insensitive (RFC 7235), the credentials are not.
fn normalize_scheme(value: &[u8]) -> Vec<u8> {
    let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
        Some(i) => (&value[..i], value[i..].trim_ascii_start()),
        None => (value, &b""[..]),
    };
    let scheme: &[u8] = if scheme.eq_ignore_ascii_case(b"basic") {
        b"Basic"
    } else if scheme.eq_ignore_ascii_case(b"bearer") {
        b"Bearer"
    } else {
        scheme
    };
    let mut out = scheme.to_vec();
    if !rest.is_empty() {
        out.push(b' ');
        out.extend_from_slice(rest);
    }
    out
}

/// Checks the configured authentication, and records who is asking.
pub(super) async fn authenticate(
    State(dash): State<Shared>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.to_string());
    let user = match &dash.config.auth {
        None => match req.extensions().get::<Operator>() {
            Some(Operator(name)) => name.clone(),
            None => "unauthenticated".to_owned(),
        },
        Some(auth) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes)
                .map(normalize_scheme)
                .unwrap_or_default();
            let given = given.as_slice();
            let (ok, user) = match auth {
                Auth::Basic { user, expected } => (same(given, expected.as_bytes()), user.clone()),
                Auth::Bearer(token) => (
                    same(given, format!("Bearer {token}").as_bytes()),
                    "bearer token".to_owned(),
                ),
            };
            if !ok {
                tracing::warn!(peer, "outbox dashboard: authentication failed");
                let mut res = (StatusCode::UNAUTHORIZED, "authentication required").into_response();
                if let Auth::Basic { .. } = auth {
                    res.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"outbox dashboard\""),
                    );
                }
                return res;
            }
            user
        }
    };
    let who = match peer {
        Some(p) => format!("{user}@{p}"),
        None => user,
    };
    req.extensions_mut().insert(Who(who));
    next.run(req).await
}

/// Adds the CSP and the other headers that keep the pages from being framed, sniffed or
/// cached.
pub(super) async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: with `no-referrer` a browser sends `Origin: null` on
    // the dashboard's own forms, and the origin check could not tell them from a foreign page.
    // Other sites still get no `Referer`.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// How long a form's token is accepted after the page was rendered.
pub(super) const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// At most this many live tokens (the oldest go first): a page rendered in a loop cannot
/// grow the store without bound.
const MAX_TOKENS: usize = 10_000;

/// The CSRF tokens of the action forms: a fresh one for every page that renders a form, each
/// accepted for [`TOKEN_LIFETIME`]. A token leaked from one page (a screenshot, a proxy log)
/// stops working within the hour, and a restart invalidates all of them.
#[derive(Default)]
pub(super) struct FormTokens {
    live: Mutex<(HashMap<String, Instant>, VecDeque<String>)>,
}

impl FormTokens {
    /// A new token for one rendered form.
    pub(super) fn issue(&self) -> String {
        let token = new_token();
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let (by_token, order) = &mut *live;
        while let Some(oldest) = order.front() {
            let expired = by_token
                .get(oldest)
                .is_none_or(|t| now.duration_since(*t) > TOKEN_LIFETIME);
            if !expired && order.len() < MAX_TOKENS {
                break;
            }
            if let Some(gone) = order.pop_front() {
                by_token.remove(&gone);
            }
        }
        by_token.insert(token.clone(), now);
        order.push_back(token.clone());
        token
    }

    /// Whether `token` was issued by this dashboard less than [`TOKEN_LIFETIME`] ago.
    pub(super) fn accepts(&self, token: &str) -> bool {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.0
            .get(token)
            .is_some_and(|issued| issued.elapsed() <= TOKEN_LIFETIME)
    }
}

/// Whether an action `POST` comes from a page of this dashboard, by its `Origin` (or, without
/// one, its `Referer`): the host must be the request's `Host` or `X-Forwarded-Host` (a proxy in
/// front). Requests with neither (a script, `curl`) pass: the token still guards them.
///
/// # Errors
///
/// The text of the refusal: who sent it and what was expected.
pub(super) fn check_origin(headers: &HeaderMap) -> Result<(), String> {
    let sent_by = |name: header::HeaderName| {
        headers
            .get(&name)
            .map(|v| (name, String::from_utf8_lossy(v.as_bytes()).into_owned()))
    };
    let Some((name, value)) = sent_by(header::ORIGIN).or_else(|| sent_by(header::REFERER)) else {
        return Ok(());
    };
    // `scheme://host[:port]` and what follows: the authority is between `//` and the next `/`.
    let authority = value
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
        .unwrap_or("");
    let hosts: Vec<&str> = [header::HOST.as_str(), "x-forwarded-host"]
        .iter()
        .filter_map(|h| headers.get(*h)?.to_str().ok())
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .collect();
    if !authority.is_empty() && hosts.iter().any(|h| h.eq_ignore_ascii_case(authority)) {
        Ok(())
    } else {
        Err(format!(
            "the form was sent from {value} ({name}), not from this dashboard ({}): actions \
             are taken only from the dashboard's own pages (behind a proxy, pass the Host \
             header through or set X-Forwarded-Host)",
            if hosts.is_empty() {
                "no Host header".to_owned()
            } else {
                hosts.join(", ")
            }
        ))
    }
}

/// A fresh unguessable token: 244 random bits from the operating system.
pub(super) fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Compares in time independent of where the first difference is, so a token or password
/// cannot be guessed byte by byte from response times.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_expects_the_encoded_pair() {
        let Auth::Basic { expected, .. } = Auth::basic("ops".into(), "pw") else {
            unreachable!()
        };
        assert_eq!(expected, "Basic b3BzOnB3");
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert_ne!(new_token(), new_token());
        assert_eq!(new_token().len(), 64);
    }

    #[test]
    fn form_tokens_are_accepted_when_issued_here_only() {
        let tokens = FormTokens::default();
        let a = tokens.issue();
        let b = tokens.issue();
        assert_ne!(a, b);
        assert!(tokens.accepts(&a) && tokens.accepts(&b));
        assert!(!tokens.accepts("x") && !tokens.accepts(""));
        assert!(!FormTokens::default().accepts(&a), "another dashboard's");
        for _ in 0..MAX_TOKENS {
            tokens.issue();
        }
        assert!(!tokens.accepts(&a), "the oldest go first");
    }

    #[test]
    fn the_origin_must_be_this_host() {
        let with = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            check_origin(&h)
        };
        assert!(with(&[("host", "ops:8080")]).is_ok(), "no Origin: a script");
        assert!(with(&[("host", "ops:8080"), ("origin", "http://ops:8080")]).is_ok());
        assert!(
            with(&[
                ("host", "127.0.0.1:8080"),
                ("x-forwarded-host", "ops.example"),
                ("origin", "https://ops.example")
            ])
            .is_ok()
        );
        assert!(
            with(&[
                ("host", "ops:8080"),
                ("referer", "http://ops:8080/dead-letters?x=1")
            ])
            .is_ok()
        );
        assert_eq!(
            with(&[("host", "ops:8080"), ("origin", "https://evil.example")]).unwrap_err(),
            "the form was sent from https://evil.example (origin), not from this dashboard \
             (ops:8080): actions are taken only from the dashboard's own pages (behind a \
             proxy, pass the Host header through or set X-Forwarded-Host)"
        );
        assert!(with(&[("host", "ops:8080"), ("origin", "null")]).is_err());
        assert!(with(&[("host", "ops:8080"), ("origin", "http://ops:8080.evil")]).is_err());
    }
}
