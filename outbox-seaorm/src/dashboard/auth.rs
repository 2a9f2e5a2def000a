//! Who may look and act: basic or bearer authentication, the CSRF token of the action forms,
//! and the security headers of every response.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
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
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
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
    subtle::ConstantTimeEq::ct_eq(a, b).into()
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
}
