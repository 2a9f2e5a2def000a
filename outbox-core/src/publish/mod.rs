//! Publishing to brokers and webhooks: the [`Publisher`] trait and the [`Route`]s that say which
//! messages go where.
//!
//! A route is one more delivery of a message, next to its in-process handlers: it has a stable
//! name, its own state, retries and dead letter. Publishers return a [`HandlerError`]; make it
//! [permanent](HandlerError::permanent) for failures no retry can fix (a 4xx from a webhook).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "webhook")]
pub mod webhook;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::handler::{BoxFuture, Handler, HandlerContext, HandlerEntry, HandlerError};

/// Something the relay delivers messages to: a broker, a webhook, a log.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message to `destination` (a subject, a routing key, a URL: the route's
    /// template, rendered for this message). Returns once the receiver has it (a JetStream ack,
    /// a publisher confirm, a 2xx).
    async fn publish(&self, envelope: &Envelope, destination: &str) -> Result<(), HandlerError>;

    /// How `{aggregate_id}` is written into this publisher's destinations. An aggregate id is
    /// data: it must not change a destination's structure (add a NATS subject token, a URL
    /// path segment, a routing-key word). The built-in publishers percent-encode what would;
    /// the default writes it as is.
    fn escape_aggregate_id<'a>(&self, id: &'a str) -> Cow<'a, str> {
        Cow::Borrowed(id)
    }

    /// What the [event catalog](crate::catalog) says about where this publisher sends. The
    /// default is a protocol named `custom`, without CloudEvents.
    fn transport(&self) -> Transport {
        Transport::new("custom")
    }
}

/// Where and how a publisher sends, as the [event catalog](crate::catalog) describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Transport {
    /// `nats`, `amqp`, `kafka`, `http` (webhooks), or a custom publisher's own word. The AsyncAPI
    /// document uses it as the channel's protocol.
    pub protocol: String,
    /// The Kafka record key (`aggregate_id`, `aggregate_type/aggregate_id`, `none`); `None`
    /// elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The AMQP exchange (a template, as the publisher was given it); `None` elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// The CloudEvents `source` the publisher writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Structured or binary CloudEvents; `None` for a publisher that sends something else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudevents: Option<crate::cloudevents::Mode>,
}

impl Transport {
    /// A transport of `protocol`, without exchange, source or CloudEvents.
    pub fn new(protocol: impl Into<String>) -> Self {
        Self {
            protocol: protocol.into(),
            key: None,
            exchange: None,
            source: None,
            cloudevents: None,
        }
    }

    /// Sends CloudEvents in `mode` with `source`.
    pub fn cloudevents(
        mut self,
        mode: crate::cloudevents::Mode,
        source: impl Into<String>,
    ) -> Self {
        self.cloudevents = Some(mode);
        self.source = Some(source.into());
        self
    }

    /// Keys records this way (Kafka).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Publishes to this AMQP exchange (template).
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }
}

/// Percent-encodes `id` where it holds a byte of `set` (and anything that is not ASCII).
#[cfg(any(feature = "nats", feature = "amqp", feature = "webhook"))]
pub(crate) fn percent_encode<'a>(
    id: &'a str,
    set: &'static percent_encoding::AsciiSet,
) -> Cow<'a, str> {
    percent_encoding::utf8_percent_encode(id, set).into()
}

/// Which messages a route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// Every message.
    All,
    /// Messages of these event types.
    EventTypes(Vec<String>),
    /// Messages of aggregates of these types.
    AggregateTypes(Vec<String>),
}

impl Matcher {
    /// Whether `envelope` matches.
    pub fn matches(&self, envelope: &Envelope) -> bool {
        self.matches_types(&envelope.event_type, &envelope.aggregate_type)
    }

    /// Whether a message of `event_type` recorded by an aggregate of `aggregate_type` matches.
    pub fn matches_types(&self, event_type: &str, aggregate_type: &str) -> bool {
        match self {
            Matcher::All => true,
            Matcher::EventTypes(t) => t.iter().any(|t| t == event_type),
            Matcher::AggregateTypes(t) => t.iter().any(|t| t == aggregate_type),
        }
    }
}

/// A template of a destination: `{aggregate_type}`, `{aggregate_id}`, `{event_type}` and
/// `{event_version}` are replaced by the message's values (`"orders.{event_type}"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    AggregateType,
    AggregateId,
    EventType,
    EventVersion,
}

impl Template {
    /// Parses a template. Fails on an unknown `{placeholder}` or an unclosed `{`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| TemplateError {
                template: template.to_owned(),
                reason: "a `{` is not closed".into(),
            })?;
            parts.push(match &after[..close] {
                "aggregate_type" => Part::AggregateType,
                "aggregate_id" => Part::AggregateId,
                "event_type" => Part::EventType,
                "event_version" => Part::EventVersion,
                other => {
                    return Err(TemplateError {
                        template: template.to_owned(),
                        reason: format!(
                            "unknown placeholder `{{{other}}}`; expected `{{aggregate_type}}`, \
                             `{{aggregate_id}}`, `{{event_type}}` or `{{event_version}}`"
                        ),
                    });
                }
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The destination of `envelope`, the aggregate id written as is.
    pub fn render(&self, envelope: &Envelope) -> String {
        self.render_with(envelope, Cow::Borrowed)
    }

    /// The destination of `envelope`, the aggregate id written through `escape_id` (see
    /// [`Publisher::escape_aggregate_id`]). Type names are the developer's and go as they are.
    pub fn render_with<'e>(
        &self,
        envelope: &'e Envelope,
        escape_id: impl Fn(&'e str) -> Cow<'e, str>,
    ) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::AggregateType => out.push_str(&envelope.aggregate_type),
                Part::AggregateId => out.push_str(&escape_id(&envelope.aggregate_id)),
                Part::EventType => out.push_str(&envelope.event_type),
                Part::EventVersion => out.push_str(&envelope.event_version.to_string()),
            }
        }
        out
    }
}

/// The template as written: `parse(t.to_string())` gives `t` back.
impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.parts {
            match p {
                Part::Text(t) => f.write_str(t)?,
                Part::AggregateType => f.write_str("{aggregate_type}")?,
                Part::AggregateId => f.write_str("{aggregate_id}")?,
                Part::EventType => f.write_str("{event_type}")?,
                Part::EventVersion => f.write_str("{event_version}")?,
            }
        }
        Ok(())
    }
}

/// A destination template that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid destination template `{template}`: {reason}")]
pub struct TemplateError {
    /// The template.
    pub template: String,
    /// What is wrong.
    pub reason: String,
}

/// Messages matching a [`Matcher`], published by a [`Publisher`] to a templated destination.
///
/// ```
/// # use outbox_seaorm_core::{Envelope, HandlerError, Registry};
/// # use outbox_seaorm_core::publish::{Publisher, Route};
/// struct Log;
/// #[async_trait::async_trait]
/// impl Publisher for Log {
///     async fn publish(&self, e: &Envelope, destination: &str) -> Result<(), HandlerError> {
///         println!("{destination}: {}", e.payload);
///         Ok(())
///     }
/// }
///
/// let route = Route::new("orders-to-log", Log)
///     .aggregate_types(["order"])
///     .destination("orders.{event_type}")?;
/// let registry = Registry::new([])?.with_route(route)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Route {
    pub(crate) name: String,
    pub(crate) matcher: Matcher,
    pub(crate) template: Template,
    pub(crate) publisher: Arc<dyn Publisher>,
    pub(crate) timeout: Option<std::time::Duration>,
    pub(crate) published_by_cdc: bool,
}

impl Route {
    /// A route named `name` (stored with its delivery state: keep it stable) to `publisher`,
    /// taking every message to the destination `{event_type}` until told otherwise.
    pub fn new(name: impl Into<String>, publisher: impl Publisher) -> Self {
        Self::shared(name, Arc::new(publisher))
    }

    /// Like [`new`](Self::new), for a publisher shared by several routes.
    pub fn shared(name: impl Into<String>, publisher: Arc<dyn Publisher>) -> Self {
        Self {
            name: name.into(),
            matcher: Matcher::All,
            template: Template {
                parts: vec![Part::EventType],
            },
            publisher,
            timeout: None,
            published_by_cdc: false,
        }
    }

    /// Takes only these event types.
    pub fn event_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.matcher = Matcher::EventTypes(types.into_iter().map(Into::into).collect());
        self
    }

    /// Takes only messages of these aggregate types.
    pub fn aggregate_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.matcher = Matcher::AggregateTypes(types.into_iter().map(Into::into).collect());
        self
    }

    /// The destination template (subject, routing key, URL).
    pub fn destination(mut self, template: &str) -> Result<Self, TemplateError> {
        self.template = Template::parse(template)?;
        Ok(self)
    }

    /// Overrides the relay's timeout for this route.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// With `true`, change data capture publishes this route's messages instead of the relay:
    /// Debezium's outbox event router reading the messages table (README, "Debezium"). The relay
    /// then never publishes it, runs only the in-process handlers of its messages, and lists it
    /// as published by CDC in `outbox relays` and the dashboard.
    ///
    /// Keep the route defined, publisher and all, and flip this flag (from your configuration)
    /// to move its publishing between the relay and CDC: the README's cut-over says in which
    /// order, so that no message is missed.
    pub fn published_by_cdc(mut self, yes: bool) -> Self {
        self.published_by_cdc = yes;
        self
    }

    /// Whether [`published_by_cdc`](Self::published_by_cdc) hands it to change data capture.
    pub fn is_published_by_cdc(&self) -> bool {
        self.published_by_cdc
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it matches.
    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// Its destination template.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// What its publisher says about where it sends.
    pub fn transport(&self) -> Transport {
        self.publisher.transport()
    }

    pub(crate) fn into_entry(self) -> Result<(Matcher, HandlerEntry)> {
        crate::error::check_name("route", &self.name)?;
        let mut entry = HandlerEntry::erased(
            self.name.clone(),
            "*",
            RouteHandler {
                template: self.template,
                publisher: self.publisher,
            },
        );
        if let Some(t) = self.timeout {
            entry = entry.timeout(t);
        }
        entry.defined_at = format!("route `{}`", self.name).into();
        Ok((self.matcher, entry))
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("matcher", &self.matcher)
            .field("template", &self.template)
            .field("published_by_cdc", &self.published_by_cdc)
            .finish_non_exhaustive()
    }
}

struct RouteHandler {
    template: Template,
    publisher: Arc<dyn Publisher>,
}

impl Handler for RouteHandler {
    fn call<'a>(&'a self, ctx: &'a HandlerContext) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let envelope = ctx.envelope();
            let destination = self
                .template
                .render_with(envelope, |id| self.publisher.escape_aggregate_id(id));
            self.publisher.publish(envelope, &destination).await
        })
    }
}

impl From<TemplateError> for Error {
    fn from(e: TemplateError) -> Self {
        Error::InvalidName {
            what: "destination template",
            name: e.template,
            rule: e.reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_and_reject_unknown_placeholders() {
        let t =
            Template::parse("orders.{aggregate_type}.{event_type}.v{event_version}/{aggregate_id}")
                .unwrap();
        let e = Envelope {
            message_id: uuid::Uuid::nil(),
            sequence: 1,
            position: 1,
            aggregate_type: "order".into(),
            aggregate_id: "7".into(),
            event_type: "order.placed".into(),
            event_version: 2,
            payload: "{}".into(),
            headers: Default::default(),
            occurred_at: chrono::Utc::now(),
        };
        assert_eq!(t.render(&e), "orders.order.order.placed.v2/7");
        assert!(Template::parse("x.{nope}").is_err());
        assert!(Template::parse("x.{event_type").is_err());
        assert_eq!(Template::parse("plain").unwrap().render(&e), "plain");
        let written = "orders.{aggregate_type}.{event_type}.v{event_version}/{aggregate_id}";
        assert_eq!(Template::parse(written).unwrap().to_string(), written);
    }

    struct Nowhere;
    #[async_trait::async_trait]
    impl Publisher for Nowhere {
        async fn publish(&self, _: &Envelope, _: &str) -> Result<(), HandlerError> {
            panic!("a route published by CDC was published by the relay")
        }
    }

    #[test]
    fn a_route_published_by_cdc_takes_its_messages_but_is_never_delivered() {
        let route = |name: &str, cdc: bool| {
            Route::new(name, Nowhere)
                .aggregate_types(["order"])
                .published_by_cdc(cdc)
        };
        let registry = crate::Registry::new([])
            .unwrap()
            .with_route(route("orders-out", true))
            .unwrap();
        let e = Envelope {
            message_id: uuid::Uuid::nil(),
            sequence: 1,
            position: 1,
            aggregate_type: "order".into(),
            aggregate_id: "7".into(),
            event_type: "a.type.nobody.knows".into(),
            event_version: 1,
            payload: "{}".into(),
            headers: Default::default(),
            occurred_at: chrono::Utc::now(),
        };
        assert_eq!(registry.deliveries_for(&e).count(), 0);
        assert_eq!(registry.routes().count(), 0);
        assert_eq!(registry.cdc_routes().collect::<Vec<_>>(), ["orders-out"]);
        // It takes the message: a relay does not leave it for another relay that knows the type.
        assert!(registry.understands(&e));
        // Its name is taken for routes delivered by the relay, and the other way round.
        let clash = registry.clone().with_route(route("orders-out", false));
        assert!(matches!(clash, Err(crate::Error::DuplicateHandler { .. })));
        let relayed = crate::Registry::new([])
            .unwrap()
            .with_route(route("orders-out", false))
            .unwrap();
        assert!(relayed.with_route(route("orders-out", true)).is_err());
    }
}
