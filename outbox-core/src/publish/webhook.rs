//! HTTP webhooks: a JSON POST per message, signed with HMAC-SHA256 per the Standard Webhooks
//! scheme (<https://www.standardwebhooks.com>), so receivers can use its libraries.
//!
//! Every request carries:
//!
//! - `webhook-id`: the message id (dedupe on it);
//! - `webhook-timestamp`: seconds since the Unix epoch when it was sent;
//! - `webhook-signature`: `v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, one
//!   per key while keys rotate, space-separated.
//!
//! Secrets are given as Standard Webhooks writes them, `whsec_` + the base64 of the key
//! ([`WebhookSecret`]), so a receiver configured with the same string verifies with any
//! Standard Webhooks library; [`WebhookSecret::from_raw_key`] takes key bytes.
//!
//! A receiver recomputes the HMAC over the raw body it received, compares it in constant time,
//! and rejects timestamps more than a few minutes away from its clock (replays):
//! [`verify`] does exactly that.
//!
//! Responses: 2xx is delivered; 408, 429, 5xx, timeouts and connection errors are retried;
//! any other 4xx is a permanent failure (the delivery is dead at once), with the status and
//! the start of the response body recorded as the error.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::cloudevents::{self, Mode};
use crate::envelope::Envelope;
use crate::handler::HandlerError;
use crate::publish::Publisher;

type HmacSha256 = Hmac<Sha256>;

/// How much of an error response body is kept on the row.
const BODY_SNIPPET: usize = 2048;

/// A signing key, written `whsec_<base64>` in the Standard Webhooks format.
///
/// ```
/// # use outbox_seaorm_core::publish::webhook::WebhookSecret;
/// let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
/// assert_eq!(secret.key().len(), 24);
/// assert!("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse::<WebhookSecret>().is_err());
/// # Ok::<(), outbox_seaorm_core::publish::webhook::WebhookSecretError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

/// A webhook secret that is not `whsec_` followed by the base64 of a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid webhook secret: {0} (expected `whsec_` followed by base64, as Standard Webhooks writes secrets; use WebhookSecret::from_raw_key for key bytes)"
)]
pub struct WebhookSecretError(&'static str);

impl WebhookSecret {
    /// Parses `whsec_<base64>`.
    pub fn parse(secret: &str) -> Result<Self, WebhookSecretError> {
        let b64 = secret
            .trim()
            .strip_prefix("whsec_")
            .ok_or(WebhookSecretError("no `whsec_` prefix"))?;
        let key = BASE64
            .decode(b64)
            .map_err(|_| WebhookSecretError("the part after `whsec_` is not base64"))?;
        if key.is_empty() {
            return Err(WebhookSecretError("the key is empty"));
        }
        Ok(Self { key })
    }

    /// Key bytes as they are (a receiver must be given them the same way, not as `whsec_`).
    pub fn from_raw_key(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into() }
    }

    /// The key bytes: what [`sign`] and [`verify`] take.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl std::str::FromStr for WebhookSecret {
    type Err = WebhookSecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// POSTs messages to the route's destination (a URL template).
#[derive(Debug, Clone)]
pub struct WebhookPublisher {
    client: reqwest::Client,
    /// Every key signs (key rotation): the first, then those added with `also_sign_with`.
    secrets: Vec<WebhookSecret>,
    source: String,
    mode: Mode,
}

impl WebhookPublisher {
    /// A publisher signing with `secret`, with CloudEvents `source`, structured mode and a
    /// 10 s timeout per request (a slow receiver counts as failed and is retried).
    pub fn new(secret: WebhookSecret, source: impl Into<String>) -> Self {
        Self::with_client(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a default HTTP client builds"),
            secret,
            source,
        )
    }

    /// Like [`new`](Self::new) with your own client (proxies, timeouts, TLS roots).
    pub fn with_client(
        client: reqwest::Client,
        secret: WebhookSecret,
        source: impl Into<String>,
    ) -> Self {
        Self {
            client,
            secrets: vec![secret],
            source: source.into(),
            mode: Mode::Structured,
        }
    }

    /// Signs with `secret` too (key rotation): each request carries one `v1,` signature per
    /// key, so receivers holding either key verify. Drop the old key once every receiver has
    /// the new one.
    pub fn also_sign_with(mut self, secret: WebhookSecret) -> Self {
        self.secrets.push(secret);
        self
    }

    /// Structured (default) or binary CloudEvents (`ce-*` headers).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
}

/// The HMAC of what Standard Webhooks signs: `{id}.{timestamp}.{body}`.
fn mac(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` value for a request, with one key ([`WebhookSecret::key`]).
pub fn sign(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", BASE64.encode(tag))
}

/// Why a received webhook was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No `v1` signature in the header matches the body.
    #[error("no signature matches the body")]
    Mismatch,
    /// The timestamp is further from now than the tolerance.
    #[error("timestamp {timestamp} is outside the tolerance")]
    Stale {
        /// The received timestamp.
        timestamp: i64,
    },
}

/// Verifies a received webhook with one key ([`WebhookSecret::key`]): `signatures` is the
/// `webhook-signature` header (several space-separated `v1,...` values are allowed, for key
/// rotation), `body` the raw body.
pub fn verify(
    secret: &[u8],
    id: &str,
    timestamp: i64,
    body: &[u8],
    signatures: &str,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let now = unix_now();
    if now.abs_diff(timestamp) > tolerance.as_secs() {
        return Err(SignatureError::Stale { timestamp });
    }
    for sig in signatures.split_whitespace() {
        let Some(b64) = sig.strip_prefix("v1,") else {
            continue;
        };
        let Ok(raw) = BASE64.decode(b64) else {
            continue;
        };
        // Constant-time comparison.
        if mac(secret, id, timestamp, body).verify_slice(&raw).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`): an id is one path
/// segment (or query value), whatever it holds.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[async_trait::async_trait]
impl Publisher for WebhookPublisher {
    /// Percent-encoded as a URL path segment: `a/b c` becomes `a%2Fb%20c`.
    fn escape_aggregate_id<'a>(&self, id: &'a str) -> std::borrow::Cow<'a, str> {
        crate::publish::percent_encode(id, PATH_SEGMENT)
    }

    fn transport(&self) -> crate::publish::Transport {
        crate::publish::Transport::new("http").cloudevents(self.mode, self.source.clone())
    }

    async fn publish(&self, envelope: &Envelope, url: &str) -> Result<(), HandlerError> {
        // URL parsers resolve `.` and `..` segments, encoded or not (`%2E%2E`): an aggregate id
        // that is one of them would post somewhere else. Refuse rather than guess.
        let path = url.split_once("://").map_or(url, |(_, rest)| rest);
        let path = path.split(['?', '#']).next().unwrap_or(path);
        if path.split('/').skip(1).any(|seg| {
            let seg = seg.to_ascii_lowercase().replace("%2e", ".");
            seg == "." || seg == ".."
        }) {
            return Err(HandlerError::permanent(format!(
                "the webhook URL `{url}` has a `.` or `..` path segment (an aggregate id?): \
                 it would be resolved to another path"
            )));
        }
        let id = envelope.message_id.to_string();
        let mut request = self.client.post(url);
        let body = match self.mode {
            Mode::Structured => {
                request = request.header("content-type", cloudevents::STRUCTURED_CONTENT_TYPE);
                cloudevents::to_structured(envelope, &self.source)?
            }
            Mode::Binary => {
                request = request.header("content-type", cloudevents::CONTENT_TYPE);
                for (k, v) in
                    cloudevents::binary_headers(envelope, &self.source, cloudevents::Binding::Http)
                {
                    request = request.header(k, v);
                }
                envelope.payload.clone().into_bytes()
            }
        };
        let timestamp = unix_now();
        let response = request
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                self.secrets
                    .iter()
                    .map(|k| sign(k.key(), &id, timestamp, &body))
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .body(body)
            .send()
            .await
            .map_err(HandlerError::retry)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let snippet: String = text.chars().take(BODY_SNIPPET).collect();
        let message = format!("{url} answered {status}: {snippet}");
        let retryable = status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT;
        Err(if retryable {
            HandlerError::retry(message)
        } else {
            HandlerError::permanent(message)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_tampered_body_or_old_timestamp_does_not() {
        let secret = b"whsec-test";
        let now = unix_now();
        let sig = sign(secret, "msg-1", now, b"{\"a\":1}");
        let tol = Duration::from_secs(300);
        assert_eq!(
            verify(secret, "msg-1", now, b"{\"a\":1}", &sig, tol),
            Ok(())
        );
        assert_eq!(
            verify(secret, "msg-1", now, b"{\"a\":2}", &sig, tol),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", "msg-1", now, b"{\"a\":1}", &sig, tol),
            Err(SignatureError::Mismatch)
        );
        let old = now - 3600;
        let old_sig = sign(secret, "msg-1", old, b"{}");
        assert_eq!(
            verify(secret, "msg-1", old, b"{}", &old_sig, tol),
            Err(SignatureError::Stale { timestamp: old })
        );
        // Key rotation: any of several signatures may match.
        let both = format!("v1,AAAA {sig}");
        assert_eq!(
            verify(secret, "msg-1", now, b"{\"a\":1}", &both, tol),
            Ok(())
        );
    }
}
