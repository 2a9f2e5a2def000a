//! CloudEvents 1.0: how an outbox message looks on a broker or a webhook.
//!
//! | CloudEvents attribute | from the outbox row |
//! | --- | --- |
//! | `id` | message id |
//! | `source` | the publisher's configured source (`/orders-service`) |
//! | `type` | event type |
//! | `subject` | aggregate id |
//! | `time` | when the event was recorded |
//! | `datacontenttype` | `application/json` |
//! | `aggregatetype`, `eventversion` | extension attributes |
//! | `aggregateposition` | extension: the position in the aggregate's stream (1, 2, 3, ...) |
//! | `traceparent`, `tracestate` | the distributed-tracing extension (W3C trace context) |
//! | `correlationid`, `causationid` | extension attributes, when set |
//!
//! In **structured** mode the whole event is one JSON document whose `data` is the payload as
//! stored (embedded, never re-parsed). In **binary** mode the body is the payload and every
//! attribute is a header (`ce-id`, ... for HTTP and NATS; `cloudEvents:id`, ... for AMQP;
//! `ce_id`, ... for Kafka). Over
//! HTTP and NATS header values are percent-encoded as the HTTP binding (3.1.3.2) says: space,
//! `"`, `%` and everything outside U+0021–U+007E, as UTF-8 bytes; AMQP strings and Kafka header
//! values carry UTF-8 as is.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::envelope::{Envelope, Headers};
use crate::error::{Error, Result};

/// The `datacontenttype` of every event: payloads are JSON.
pub const CONTENT_TYPE: &str = "application/json";
/// The `Content-Type` of a structured-mode event.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// Structured (one JSON document) or binary (payload body, attributes as headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Mode {
    /// `Content-Type: application/cloudevents+json`, attributes and data in the body.
    #[default]
    Structured,
    /// The body is the payload; attributes travel as headers.
    Binary,
}

/// Which protocol binding's binary-mode headers: names and value encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Binding {
    /// HTTP (webhooks) and NATS: `ce-` headers, values percent-encoded.
    Http,
    /// AMQP: `cloudEvents:` application properties, values as UTF-8 strings.
    Amqp,
    /// Kafka: `ce_` record headers, values as UTF-8 bytes (the Kafka protocol binding, 3.2.3).
    Kafka,
}

impl Binding {
    /// The prefix of the attribute headers.
    pub fn prefix(self) -> &'static str {
        match self {
            Binding::Http => "ce-",
            Binding::Amqp => "cloudEvents:",
            Binding::Kafka => "ce_",
        }
    }

    fn encode(self, value: &str) -> String {
        match self {
            Binding::Http => {
                percent_encoding::utf8_percent_encode(value, HTTP_HEADER_VALUE).to_string()
            }
            Binding::Amqp | Binding::Kafka => value.to_owned(),
        }
    }

    fn decode(self, name: &str, value: String) -> std::result::Result<String, String> {
        match self {
            Binding::Http => percent_encoding::percent_decode_str(&value)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|e| format!("`{name}` is not UTF-8 once percent-decoded: {e}")),
            Binding::Amqp | Binding::Kafka => Ok(value),
        }
    }
}

/// What the HTTP binding percent-encodes in a header value: controls and non-ASCII (always
/// encoded by `utf8_percent_encode`), space, `"` and `%`.
const HTTP_HEADER_VALUE: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'%');

#[derive(Serialize)]
struct Structured<'a> {
    specversion: &'static str,
    id: Uuid,
    source: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    aggregatetype: &'a str,
    eventversion: String,
    aggregateposition: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlationid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causationid: Option<String>,
    /// The headers recorded with `RecordOptions::header`, as extension attributes.
    #[serde(flatten)]
    extensions: &'a BTreeMap<&'a str, &'a str>,
    data: &'a RawValue,
}

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The event as a structured-mode JSON document.
///
/// Fails with [`Error::Deserialize`] if the stored payload is not JSON.
pub fn to_structured(envelope: &Envelope, source: &str) -> Result<Vec<u8>> {
    let data: &RawValue =
        serde_json::from_str(&envelope.payload).map_err(|source| Error::Deserialize {
            event_type: envelope.event_type.clone(),
            source,
        })?;
    let doc = Structured {
        specversion: "1.0",
        id: envelope.message_id,
        source,
        ty: &envelope.event_type,
        subject: &envelope.aggregate_id,
        time: time(&envelope.occurred_at),
        datacontenttype: CONTENT_TYPE,
        aggregatetype: &envelope.aggregate_type,
        eventversion: envelope.event_version.to_string(),
        aggregateposition: envelope.position.to_string(),
        traceparent: envelope.headers.traceparent.as_deref(),
        tracestate: envelope.headers.tracestate.as_deref(),
        correlationid: envelope.headers.correlation_id.map(|u| u.to_string()),
        causationid: envelope.headers.causation_id.map(|u| u.to_string()),
        extensions: &extensions(envelope),
        data,
    };
    Ok(serde_json::to_vec(&doc).expect("strings and raw JSON always serialize"))
}

/// The attributes of the event as binary-mode headers of `binding` (names with its prefix,
/// values encoded as it says). The body is the payload itself.
pub fn binary_headers(
    envelope: &Envelope,
    source: &str,
    binding: Binding,
) -> Vec<(String, String)> {
    let prefix = binding.prefix();
    let mut h = vec![
        (format!("{prefix}specversion"), "1.0".to_owned()),
        (format!("{prefix}id"), envelope.message_id.to_string()),
        (format!("{prefix}source"), source.to_owned()),
        (format!("{prefix}type"), envelope.event_type.clone()),
        (format!("{prefix}subject"), envelope.aggregate_id.clone()),
        (format!("{prefix}time"), time(&envelope.occurred_at)),
        (
            format!("{prefix}aggregatetype"),
            envelope.aggregate_type.clone(),
        ),
        (
            format!("{prefix}eventversion"),
            envelope.event_version.to_string(),
        ),
        (
            format!("{prefix}aggregateposition"),
            envelope.position.to_string(),
        ),
    ];
    if let Some(tp) = &envelope.headers.traceparent {
        h.push((format!("{prefix}traceparent"), tp.clone()));
    }
    if let Some(ts) = &envelope.headers.tracestate {
        h.push((format!("{prefix}tracestate"), ts.clone()));
    }
    if let Some(c) = envelope.headers.correlation_id {
        h.push((format!("{prefix}correlationid"), c.to_string()));
    }
    if let Some(c) = envelope.headers.causation_id {
        h.push((format!("{prefix}causationid"), c.to_string()));
    }
    for (name, value) in extensions(envelope) {
        h.push((format!("{prefix}{name}"), value.to_owned()));
    }
    h.into_iter()
        .map(|(k, v)| (k, binding.encode(&v)))
        .collect()
}

/// The headers recorded with `RecordOptions::header` that can be extension attributes (rows
/// written before names were checked may hold others: they stay on the row, off the wire).
fn extensions(envelope: &Envelope) -> BTreeMap<&str, &str> {
    envelope
        .headers
        .extra
        .iter()
        .filter(|(k, _)| crate::extension_name::is_extension_name(k))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Reads a structured-mode event back into an [`Envelope`] (for consumers).
pub fn from_structured(body: &[u8]) -> Result<Envelope> {
    let mut doc: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(body).map_err(|source| Error::Deserialize {
            event_type: "cloudevent".into(),
            source,
        })?;
    let data = doc
        .remove("data")
        .map(|d| d.get().to_owned())
        .unwrap_or_else(|| "null".into());
    let attrs: BTreeMap<String, String> = doc
        .into_iter()
        .filter_map(|(k, v)| serde_json::from_str::<String>(v.get()).ok().map(|s| (k, s)))
        .collect();
    envelope_from(attrs, data)
}

/// Reads a binary-mode event of `binding` back into an [`Envelope`]: `headers` are the
/// message's headers (name, raw value); those with the binding's prefix are its attributes,
/// decoded as the binding says. Others are ignored.
pub fn from_binary<N, V>(
    binding: Binding,
    headers: impl IntoIterator<Item = (N, V)>,
    body: &[u8],
) -> Result<Envelope>
where
    N: AsRef<str>,
    V: Into<String>,
{
    let data = String::from_utf8(body.to_vec()).map_err(|e| Error::Deserialize {
        event_type: "cloudevent".into(),
        source: serde::de::Error::custom(e),
    })?;
    let prefix = binding.prefix();
    let mut attrs = BTreeMap::new();
    for (name, raw) in headers {
        // Header names are case-insensitive in HTTP and NATS.
        let name = name.as_ref();
        let Some(attr) = name
            .get(..prefix.len())
            .filter(|p| p.eq_ignore_ascii_case(prefix))
            .map(|_| name[prefix.len()..].to_ascii_lowercase())
        else {
            continue;
        };
        let value = binding
            .decode(&attr, raw.into())
            .map_err(|e| Error::Deserialize {
                event_type: "cloudevent".into(),
                source: serde::de::Error::custom(e),
            })?;
        attrs.insert(attr, value);
    }
    envelope_from(attrs, data)
}

/// An envelope from the attributes of an event (by name, without prefix) and its data.
fn envelope_from(attrs: BTreeMap<String, String>, payload: String) -> Result<Envelope> {
    let attr = |name: &str| attrs.get(name).cloned();
    let extra = attrs
        .iter()
        .filter(|(k, _)| crate::extension_name::is_extension_name(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let missing = |name: &str| Error::Deserialize {
        event_type: attr("type").unwrap_or_else(|| "cloudevent".into()),
        source: serde::de::Error::custom(format!("missing CloudEvents attribute `{name}`")),
    };
    let bad = |name: &str, e: String| Error::Deserialize {
        event_type: attr("type").unwrap_or_else(|| "cloudevent".into()),
        source: serde::de::Error::custom(format!("bad CloudEvents attribute `{name}`: {e}")),
    };
    let get = |name: &str| attr(name).ok_or_else(|| missing(name));
    let uuid = |name: &str| -> Result<Option<Uuid>> {
        attr(name)
            .map(|s| s.parse().map_err(|e: uuid::Error| bad(name, e.to_string())))
            .transpose()
    };
    Ok(Envelope {
        message_id: get("id")?
            .parse()
            .map_err(|e: uuid::Error| bad("id", e.to_string()))?,
        sequence: 0,
        position: match attr("aggregateposition") {
            Some(v) => v
                .parse()
                .map_err(|e| bad("aggregateposition", format!("{e}")))?,
            None => 0,
        },
        aggregate_type: attr("aggregatetype").unwrap_or_default(),
        aggregate_id: attr("subject").unwrap_or_default(),
        event_type: get("type")?,
        event_version: match attr("eventversion") {
            Some(v) => v.parse().map_err(|e| bad("eventversion", format!("{e}")))?,
            None => 1,
        },
        payload,
        headers: Headers {
            correlation_id: uuid("correlationid")?,
            causation_id: uuid("causationid")?,
            traceparent: attr("traceparent"),
            tracestate: attr("tracestate"),
            extra,
        },
        occurred_at: match attr("time") {
            Some(t) => DateTime::parse_from_rfc3339(&t)
                .map_err(|e| bad("time", e.to_string()))?
                .with_timezone(&Utc),
            None => Utc::now(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            message_id: Uuid::now_v7(),
            sequence: 7,
            position: 3,
            aggregate_type: "order".into(),
            aggregate_id: "42".into(),
            event_type: "order.placed".into(),
            event_version: 2,
            payload: r#"{"amount": 5, "note": "a \"quoted\" word"}"#.into(),
            headers: Headers {
                correlation_id: Some(Uuid::now_v7()),
                causation_id: None,
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
                tracestate: Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into()),
                extra: Default::default(),
            },
            occurred_at: Utc::now(),
        }
    }

    #[test]
    fn structured_round_trips_and_embeds_the_payload_as_is() {
        let e = envelope();
        let bytes = to_structured(&e, "/orders").unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.contains(r#""data":{"amount": 5, "note": "a \"quoted\" word"}"#),
            "{text}"
        );
        let back = from_structured(&bytes).unwrap();
        assert_eq!(back.message_id, e.message_id);
        assert_eq!(back.event_type, e.event_type);
        assert_eq!(back.aggregate_id, "42");
        assert_eq!(back.aggregate_type, "order");
        assert_eq!(back.event_version, 2);
        assert_eq!(back.position, 3);
        assert_eq!(back.headers.correlation_id, e.headers.correlation_id);
        assert_eq!(back.headers.traceparent, e.headers.traceparent);
        assert_eq!(back.headers.tracestate, e.headers.tracestate);
        let a: serde_json::Value = serde_json::from_str(&back.payload).unwrap();
        let b: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            back.occurred_at.timestamp_micros(),
            e.occurred_at.timestamp_micros()
        );
    }

    #[test]
    fn binary_round_trips() {
        let e = envelope();
        for binding in [Binding::Http, Binding::Amqp, Binding::Kafka] {
            let headers: BTreeMap<String, String> =
                binary_headers(&e, "/orders", binding).into_iter().collect();
            let back = from_binary(binding, headers.clone(), e.payload.as_bytes()).unwrap();
            assert_eq!(back.message_id, e.message_id);
            assert_eq!(back.payload, e.payload);
            assert_eq!(back.event_version, 2);
            assert_eq!(back.headers.traceparent, e.headers.traceparent);
            assert_eq!(back.headers.tracestate, e.headers.tracestate);
            assert_eq!(back.headers.correlation_id, e.headers.correlation_id);
            assert_eq!(back.position, e.position);
            assert_eq!(back.aggregate_type, e.aggregate_type);
        }
    }

    #[test]
    fn http_header_values_are_percent_encoded_as_the_binding_says() {
        let mut e = envelope();
        for id in ["acct%41 b/1", "Zürich €5 \"x\"", "plain-1"] {
            e.aggregate_id = id.into();
            let headers: BTreeMap<String, String> = binary_headers(&e, "/orders", Binding::Http)
                .into_iter()
                .collect();
            let sent = &headers["ce-subject"];
            assert!(
                sent.bytes()
                    .all(|b| (0x21..=0x7e).contains(&b) && b != b'"'),
                "{sent}"
            );
            let back = from_binary(Binding::Http, headers.clone(), b"{}").unwrap();
            assert_eq!(back.aggregate_id, id);
            let amqp: BTreeMap<String, String> = binary_headers(&e, "/orders", Binding::Amqp)
                .into_iter()
                .collect();
            assert_eq!(amqp["cloudEvents:subject"], id, "AMQP strings are UTF-8");
        }
        assert_eq!(
            binary_headers(&e, "/orders", Binding::Http)
                .into_iter()
                .find(|(k, _)| k == "ce-subject")
                .unwrap()
                .1,
            "plain-1"
        );
        let mut bad = BTreeMap::new();
        bad.insert("ce-id".to_owned(), e.message_id.to_string());
        bad.insert("ce-type".to_owned(), "t".to_owned());
        bad.insert("ce-subject".to_owned(), "%FF".to_owned());
        assert!(from_binary(Binding::Http, bad, b"{}").is_err());
    }

    #[test]
    fn recorded_headers_travel_as_extension_attributes() {
        let mut e = envelope();
        e.headers.extra.insert("tenant".into(), "Zürich €5".into());
        // A name stored before names were checked stays off the wire.
        e.headers
            .extra
            .insert("x-old".into(), "kept on the row".into());
        let doc: serde_json::Value =
            serde_json::from_slice(&to_structured(&e, "/o").unwrap()).unwrap();
        assert_eq!(doc["tenant"], "Zürich €5");
        assert!(doc.get("x-old").is_none());
        let back = from_structured(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(
            back.headers.extra.get("tenant").map(String::as_str),
            Some("Zürich €5")
        );
        for binding in [Binding::Http, Binding::Amqp] {
            let headers = binary_headers(&e, "/o", binding);
            let name = format!("{}tenant", binding.prefix());
            assert!(headers.iter().any(|(k, _)| *k == name), "{headers:?}");
            assert!(!headers.iter().any(|(k, _)| k.ends_with("x-old")));
            let back = from_binary(binding, headers, b"{}").unwrap();
            assert_eq!(
                back.headers.extra.get("tenant").map(String::as_str),
                Some("Zürich €5")
            );
        }
    }

    #[test]
    fn a_payload_that_is_not_json_is_a_typed_error() {
        let mut e = envelope();
        e.payload = "{not json".into();
        assert!(matches!(
            to_structured(&e, "/x"),
            Err(Error::Deserialize { .. })
        ));
        assert!(from_structured(b"[]").is_err());
        assert!(from_structured(br#"{"specversion":"1.0"}"#).is_err());
    }
}
