//! The catalog as an AsyncAPI 3.0 document.
//!
//! - **Channels**: one per route and rendered destination (a route's template filled with each
//!   event's type, version and, when declared, aggregate type; `{aggregate_id}` stays as a
//!   channel parameter), and one per event type with in-process handlers (address `null`: the
//!   outbox table, not a broker).
//! - **Operations**: `send` per route channel, `receive` per in-process handler.
//! - **Messages**: one per event version and CloudEvents form, since the form decides what the
//!   body is: the payload with `ce-*` (HTTP, NATS), `cloudEvents:*` (AMQP) or `ce_*` (Kafka)
//!   headers in binary
//!   mode, the CloudEvents JSON with the payload as `data` in structured mode, the bare payload
//!   in process.
//! - **Schemas**: each payload schema under `components/schemas/{event}.v{n}`, its
//!   `definitions` hoisted beside it (`{event}.v{n}.{Name}`), since a `$ref` inside a document
//!   resolves against the document, not the embedded schema.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{Catalog, EventDescription, RouteDescription};
use crate::cloudevents::Mode;

pub(super) fn render(catalog: &Catalog, title: &str, version: &str) -> Value {
    let mut doc = Doc::default();
    for event in &catalog.events {
        doc.payload_schema(event);
    }
    for route in &catalog.routes {
        doc.route(catalog, route);
    }
    doc.handlers(catalog);
    let mut components = Map::new();
    components.insert("schemas".into(), Value::Object(doc.schemas));
    components.insert("messages".into(), Value::Object(doc.messages));
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Domain events recorded through the transactional outbox: where routes \
                            publish them and which in-process handlers receive them.",
        },
        "defaultContentType": crate::cloudevents::CONTENT_TYPE,
        "channels": doc.channels,
        "operations": doc.operations,
        "components": components,
    })
}

/// The body and headers a message travels with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// In process: the payload alone.
    Plain,
    /// CloudEvents binary mode with `ce-` headers (HTTP, NATS).
    BinaryHttp,
    /// CloudEvents binary mode with `cloudEvents:` headers (AMQP).
    BinaryAmqp,
    /// CloudEvents binary mode with `ce_` headers (Kafka).
    BinaryKafka,
    /// CloudEvents structured mode: the payload is `data`.
    Structured,
}

impl Form {
    fn of(route: &RouteDescription) -> Self {
        match (
            route.transport.cloudevents,
            route.transport.protocol.as_str(),
        ) {
            (None, _) => Form::Plain,
            (Some(Mode::Structured), _) => Form::Structured,
            (Some(Mode::Binary), "amqp") => Form::BinaryAmqp,
            (Some(Mode::Binary), "kafka") => Form::BinaryKafka,
            (Some(Mode::Binary), _) => Form::BinaryHttp,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Form::Plain => "",
            Form::BinaryHttp => ".ce-binary",
            Form::BinaryAmqp => ".ce-amqp-binary",
            Form::BinaryKafka => ".ce-kafka-binary",
            Form::Structured => ".ce-structured",
        }
    }
}

#[derive(Default)]
struct Doc {
    channels: Map<String, Value>,
    operations: Map<String, Value>,
    schemas: Map<String, Value>,
    messages: Map<String, Value>,
}

impl Doc {
    /// Adds the payload schema of `event` (if any) and its definitions to the components.
    fn payload_schema(&mut self, event: &EventDescription) {
        let Some(schema) = &event.schema else { return };
        let base = event_key(event);
        let mut schema = schema.clone();
        let defs = schema
            .as_object_mut()
            .and_then(|o| {
                o.remove("$schema");
                o.remove("definitions").or_else(|| o.remove("$defs"))
            })
            .and_then(|d| match d {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .unwrap_or_default();
        let renamed: BTreeMap<String, String> = defs
            .keys()
            .map(|name| (name.clone(), key(&format!("{base}.{name}"))))
            .collect();
        rewrite_refs(&mut schema, &renamed);
        for (name, mut def) in defs {
            rewrite_refs(&mut def, &renamed);
            self.schemas.insert(renamed[&name].clone(), def);
        }
        self.schemas.insert(base, schema);
    }

    /// The message of `event` in `form`, added to the components once; returns its key.
    fn message(&mut self, event: &EventDescription, form: Form) -> String {
        let base = event_key(event);
        let id = format!("{base}{}", form.suffix());
        if self.messages.contains_key(&id) {
            return id;
        }
        let payload = event
            .schema
            .as_ref()
            .map(|_| json!({ "$ref": format!("#/components/schemas/{base}") }));
        let mut message = json!({
            "name": event.name,
            "title": format!("{} v{}", event.name, event.version),
            "contentType": crate::cloudevents::CONTENT_TYPE,
        });
        if let Some(rust_type) = &event.rust_type {
            message["summary"] = json!(format!("`{rust_type}`"));
        }
        match form {
            Form::Plain => {
                if let Some(p) = payload {
                    message["payload"] = p;
                }
            }
            Form::BinaryHttp | Form::BinaryAmqp | Form::BinaryKafka => {
                let prefix = match form {
                    Form::BinaryAmqp => "cloudEvents:",
                    Form::BinaryKafka => "ce_",
                    _ => "ce-",
                };
                message["headers"] = attributes(prefix, event);
                if let Some(p) = payload {
                    message["payload"] = p;
                }
            }
            Form::Structured => {
                message["contentType"] = json!(crate::cloudevents::STRUCTURED_CONTENT_TYPE);
                let mut envelope = attributes("", event);
                envelope["properties"]["datacontenttype"] =
                    json!({ "const": crate::cloudevents::CONTENT_TYPE });
                envelope["properties"]["data"] = payload.unwrap_or_else(|| json!({}));
                envelope["required"]
                    .as_array_mut()
                    .expect("attributes() lists required attributes")
                    .push(json!("data"));
                message["payload"] = envelope;
            }
        }
        self.messages.insert(id.clone(), message);
        id
    }

    fn route(&mut self, catalog: &Catalog, route: &RouteDescription) {
        let form = Form::of(route);
        // Rendered address → message keys, in catalog order.
        let mut by_address: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for event in catalog.events.iter().filter(|e| route.takes(e)) {
            let address = fill(&route.destination, event);
            let message = self.message(event, form);
            by_address.entry(address).or_default().push(message);
        }
        if by_address.is_empty() {
            // No known event goes there (yet): still show where the route sends.
            by_address.insert(route.destination.clone(), Vec::new());
        }
        for (address, messages) in by_address {
            let channel_id = key(&format!("{}.{address}", route.name));
            let mut channel = json!({
                "address": address,
                "title": format!("route `{}`", route.name),
                "description": format!(
                    "Route `{}` publishes here over {} (destination template `{}`).",
                    route.name, route.transport.protocol, route.destination
                ),
                "messages": message_refs(&messages),
            });
            let parameters = parameters(&address);
            if !parameters.is_empty() {
                channel["parameters"] = Value::Object(parameters);
            }
            if route.transport.protocol == "amqp" {
                let exchange = route.transport.exchange.clone().unwrap_or_default();
                channel["bindings"] = json!({ "amqp": {
                    "is": "routingKey",
                    "exchange": { "name": exchange },
                    "bindingVersion": "0.3.0",
                }});
            }
            if route.transport.protocol == "kafka" {
                // The key is not a channel field of the Kafka binding: an `x-` extension, and
                // said in the description.
                let record_key = route.transport.key.clone().unwrap_or_else(|| "none".into());
                channel["bindings"] = json!({ "kafka": {
                    "topic": address,
                    "x-key": record_key,
                    "bindingVersion": "0.5.0",
                }});
                if let Some(d) = channel["description"].as_str() {
                    channel["description"] = json!(format!("{d} Record key: {record_key}."));
                }
            }
            let mut operation = json!({
                "action": "send",
                "title": format!("route `{}`", route.name),
                "channel": { "$ref": format!("#/channels/{channel_id}") },
                "messages": operation_refs(&channel_id, &messages),
            });
            if route.transport.protocol == "http" {
                operation["bindings"] =
                    json!({ "http": { "method": "POST", "bindingVersion": "0.3.0" } });
            }
            self.channels.insert(channel_id.clone(), channel);
            self.operations.insert(channel_id, operation);
        }
    }

    fn handlers(&mut self, catalog: &Catalog) {
        for handler in &catalog.handlers {
            let channel_id = key(&format!("in-process.{}", handler.event_type));
            if !self.channels.contains_key(&channel_id) {
                // Every stored version reaches the handler (upcast to its own).
                let versions: Vec<_> = catalog
                    .events
                    .iter()
                    .filter(|e| e.name == handler.event_type)
                    .collect();
                let messages: Vec<_> = versions
                    .into_iter()
                    .map(|e| self.message(e, Form::Plain))
                    .collect();
                self.channels.insert(
                    channel_id.clone(),
                    json!({
                        "address": null,
                        "title": format!("in-process `{}`", handler.event_type),
                        "description": "Delivered by the relay from the outbox table to \
                                        in-process handlers.",
                        "messages": message_refs(&messages),
                    }),
                );
            }
            let messages: Vec<String> = self.channels[&channel_id]["messages"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            self.operations.insert(
                key(&format!("handler.{}", handler.name)),
                json!({
                    "action": "receive",
                    "title": format!("handler `{}`", handler.name),
                    "description": format!(
                        "Handles `{}` as version {}.",
                        handler.event_type, handler.event_version
                    ),
                    "channel": { "$ref": format!("#/channels/{channel_id}") },
                    "messages": operation_refs(&channel_id, &messages),
                }),
            );
        }
    }
}

/// The CloudEvents attributes the outbox sets (see [`crate::cloudevents`]), as a schema of
/// headers named `{prefix}{attribute}`.
fn attributes(prefix: &str, event: &EventDescription) -> Value {
    let string = |description: &str| json!({ "type": "string", "description": description });
    let mut properties = Map::new();
    let mut add = |name: &str, schema: Value| {
        properties.insert(format!("{prefix}{name}"), schema);
    };
    add("specversion", json!({ "const": "1.0" }));
    add("id", string("The outbox message id (a UUID)."));
    add("source", string("The publisher's configured source."));
    add("type", json!({ "const": event.name }));
    add("subject", string("The aggregate id."));
    add("time", json!({ "type": "string", "format": "date-time" }));
    add(
        "eventversion",
        json!({ "const": event.version.to_string() }),
    );
    add("aggregatetype", string("The aggregate type."));
    add(
        "aggregateposition",
        string("The position in the aggregate's stream."),
    );
    add(
        "traceparent",
        string("W3C trace context, when recorded in a span."),
    );
    add("tracestate", string("W3C trace state."));
    add("correlationid", string("Correlation id, when set."));
    add("causationid", string("Causation id, when set."));
    let required: Vec<_> = ["specversion", "id", "source", "type"]
        .iter()
        .map(|a| json!(format!("{prefix}{a}")))
        .collect();
    json!({ "type": "object", "properties": properties, "required": required })
}

/// `template` with what is known of `event` filled in; the rest stays as `{placeholder}`.
fn fill(template: &str, event: &EventDescription) -> String {
    let mut out = template
        .replace("{event_type}", &event.name)
        .replace("{event_version}", &event.version.to_string());
    if let Some(a) = &event.aggregate_type {
        out = out.replace("{aggregate_type}", a);
    }
    out
}

fn parameters(address: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, description) in [
        (
            "aggregate_id",
            "The aggregate id, escaped for the transport.",
        ),
        ("aggregate_type", "The aggregate type."),
        ("event_type", "The event type."),
        ("event_version", "The event version."),
    ] {
        if address.contains(&format!("{{{name}}}")) {
            out.insert(name.into(), json!({ "description": description }));
        }
    }
    out
}

fn message_refs(messages: &[String]) -> Value {
    Value::Object(
        messages
            .iter()
            .map(|m| {
                let r = json!({ "$ref": format!("#/components/messages/{m}") });
                (m.clone(), r)
            })
            .collect(),
    )
}

fn operation_refs(channel_id: &str, messages: &[String]) -> Value {
    messages
        .iter()
        .map(|m| json!({ "$ref": format!("#/channels/{channel_id}/messages/{m}") }))
        .collect()
}

fn event_key(event: &EventDescription) -> String {
    key(&format!("{}.v{}", event.name, event.version))
}

/// A component or channel key: AsyncAPI allows letters, digits, `.`, `-` and `_` (and `/`
/// would need escaping in every `$ref`).
fn key(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Points `#/definitions/X` (or `#/$defs/X`) at the hoisted `#/components/schemas/...`.
fn rewrite_refs(schema: &mut Value, renamed: &BTreeMap<String, String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref") {
                let name = r
                    .strip_prefix("#/definitions/")
                    .or_else(|| r.strip_prefix("#/$defs/"))
                    .map(|n| n.replace("~1", "/").replace("~0", "~"));
                if let Some(new) = name.and_then(|n| renamed.get(&n)) {
                    *r = format!("#/components/schemas/{new}");
                }
            }
            for v in map.values_mut() {
                rewrite_refs(v, renamed);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, renamed)),
        _ => {}
    }
}
