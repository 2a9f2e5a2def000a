//! The event catalog: every event a service records (name, version, aggregate type, Rust type,
//! payload schema), who handles it in process, and where routes publish it.
//!
//! It renders as JSON (the [`Catalog`] itself, to commit and compare in CI with
//! [`Catalog::check_against`]) and as an AsyncAPI 3.0 document ([`Catalog::to_asyncapi`]).
//! It needs no database, so it lives here beside the [`Registry`] it reads;
//! `outbox_seaorm::catalog` re-exports it.
//!
//! ```
//! use outbox_seaorm_core::DomainEvent;
//! use outbox_seaorm_core::catalog::Catalog;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, DomainEvent)]
//! #[event(name = "doc.order.placed", version = 2, aggregate = "order")]
//! struct OrderPlaced { order_id: u64 }
//!
//! let catalog = Catalog::new().event::<OrderPlaced>().upcaster("doc.order.placed", 1);
//! let event = &catalog.events[0];
//! assert_eq!((event.name.as_str(), event.version), ("doc.order.placed", 2));
//! assert_eq!(event.aggregate_type.as_deref(), Some("order"));
//! let asyncapi = catalog.to_asyncapi("orders", "1.0.0");
//! assert_eq!(asyncapi["asyncapi"], "3.0.0");
//! ```
//!
//! Schemas come from `schemars`: turn on the `schema` feature and derive
//! `schemars::JsonSchema` next to `DomainEvent`. A type without the derive is listed without a
//! schema rather than failing the build, because Cargo unifies features: a hard bound would
//! break every crate in the build that derives `DomainEvent` alone as soon as one crate turns
//! `schema` on. `#[event(schema)]` makes the derive required for one type.

mod asyncapi;
mod compat;
#[doc(hidden)]
pub mod schema;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use self::compat::BreakingChange;
use crate::error::{Error, Result};
use crate::event::{DomainEvent, EventTypeRegistration, registered_event_types};
use crate::handler::HandlerEntry;
use crate::publish::{Matcher, Route, Transport};
use crate::registry::Registry;

/// Events, handlers, routes and upcasters of a service. Its JSON form is what
/// [`serde_json::to_string_pretty`] writes; lists are sorted so that the file diffs well.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
// A file that is not a catalog (`{}`, an AsyncAPI document, another format) must not read as
// an empty catalog, which every check would pass: `events` is required, other keys refused.
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Catalog {
    /// One entry per event type and version, sorted by name then version.
    pub events: Vec<EventDescription>,
    /// In-process handlers, sorted by name.
    #[serde(default)]
    pub handlers: Vec<HandlerDescription>,
    /// Routes to publishers, in the order they were added.
    #[serde(default)]
    pub routes: Vec<RouteDescription>,
    /// Upcasters, sorted.
    #[serde(default)]
    pub upcasters: Vec<UpcasterDescription>,
}

/// One version of one event type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EventDescription {
    /// The stored event type name.
    pub name: String,
    /// The payload version.
    pub version: u32,
    /// The aggregate type that records it, if declared (`#[event(aggregate = "order")]`).
    #[serde(default)]
    pub aggregate_type: Option<String>,
    /// The Rust type's path, if known.
    #[serde(default)]
    pub rust_type: Option<String>,
    /// The payload's JSON Schema (draft 7), if known.
    #[serde(default)]
    pub schema: Option<Value>,
}

impl EventDescription {
    /// An event without aggregate type, Rust type or schema.
    pub fn new(name: impl Into<String>, version: u32) -> Self {
        Self {
            name: name.into(),
            version,
            aggregate_type: None,
            rust_type: None,
            schema: None,
        }
    }

    /// What `#[derive(DomainEvent)]` registered.
    pub fn from_registration(r: &EventTypeRegistration) -> Self {
        Self {
            name: r.name.to_owned(),
            version: r.version,
            aggregate_type: r.aggregate_type.map(str::to_owned),
            rust_type: Some(r.rust_type.to_owned()),
            schema: (r.schema)(),
        }
    }

    /// Sets the aggregate type.
    pub fn aggregate_type(mut self, aggregate_type: impl Into<String>) -> Self {
        self.aggregate_type = Some(aggregate_type.into());
        self
    }

    /// Sets the payload schema.
    pub fn schema(mut self, schema: Value) -> Self {
        self.schema = Some(schema);
        self
    }
}

/// An in-process handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HandlerDescription {
    /// Its stable name.
    pub name: String,
    /// The event type it handles.
    pub event_type: String,
    /// The version its argument type declares.
    pub event_version: u32,
}

impl HandlerDescription {
    /// The description of `entry`.
    pub fn of(entry: &HandlerEntry) -> Self {
        Self {
            name: entry.name().to_owned(),
            event_type: entry.event_type().to_owned(),
            event_version: entry.event_version(),
        }
    }
}

/// A route: which messages, to which destination template, over which transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RouteDescription {
    /// Its stable name.
    pub name: String,
    /// Which messages it takes.
    pub takes: Takes,
    /// The destination template (`orders.{event_type}`): a subject, a routing key, a URL.
    pub destination: String,
    /// What the publisher says about itself.
    pub transport: Transport,
}

impl RouteDescription {
    /// The description of `route`.
    pub fn of(route: &Route) -> Self {
        Self {
            name: route.name().to_owned(),
            takes: match route.matcher() {
                Matcher::All => Takes::All,
                Matcher::EventTypes(t) => Takes::EventTypes(t.clone()),
                Matcher::AggregateTypes(t) => Takes::AggregateTypes(t.clone()),
            },
            destination: route.template().to_string(),
            transport: route.transport(),
        }
    }

    /// Whether the route takes `event`. A route by aggregate type takes an event only when the
    /// event declares its aggregate type.
    pub fn takes(&self, event: &EventDescription) -> bool {
        match &self.takes {
            Takes::All => true,
            Takes::EventTypes(t) => t.contains(&event.name),
            Takes::AggregateTypes(t) => {
                event.aggregate_type.as_ref().is_some_and(|a| t.contains(a))
            }
        }
    }
}

/// Which messages a route takes, as written in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Takes {
    /// Every message.
    All,
    /// Messages of these event types.
    EventTypes(Vec<String>),
    /// Messages of aggregates of these types.
    AggregateTypes(Vec<String>),
}

/// An upcaster step: it reads `from_version` of `event_type` and returns the next version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UpcasterDescription {
    /// The event type.
    pub event_type: String,
    /// The version it reads.
    pub from_version: u32,
}

impl Catalog {
    /// An empty catalog, to fill from an explicit list ([`event`](Self::event),
    /// [`handler`](Self::handler), [`route`](Self::route), [`upcaster`](Self::upcaster)).
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything the linked crates registered: events derived with `DomainEvent`, handlers
    /// of `#[event_handler]`, upcasters of [`upcaster!`](crate::upcaster). Routes are built at
    /// run time: use [`from_registry`](Self::from_registry) to include them.
    ///
    /// Fails as [`Registry::from_inventory`] does (duplicate names).
    pub fn from_inventory() -> Result<Self> {
        Ok(Self::from_registry(&Registry::from_inventory()?))
    }

    /// What `registry` delivers: its handlers, routes and upcasters, and every event type it
    /// knows (with what `#[derive(DomainEvent)]` registered about it, when it was derived).
    pub fn from_registry(registry: &Registry) -> Self {
        let mut catalog = Self::new();
        for r in registered_event_types() {
            catalog.add_event(EventDescription::from_registration(r));
        }
        for (name, versions) in registry.event_types() {
            for &v in versions {
                catalog.add_event(EventDescription::new(name, v));
            }
        }
        catalog.handlers = registry
            .handlers()
            .iter()
            .map(HandlerDescription::of)
            .collect();
        catalog.routes = registry.route_descriptions.clone();
        for (event_type, from) in registry.upcasters().steps() {
            catalog = catalog.upcaster(event_type, from);
        }
        catalog.sort();
        catalog
    }

    /// Adds `E`, with what its derive registered (aggregate type, Rust type, schema).
    pub fn event<E: DomainEvent>(self) -> Self {
        let registered = registered_event_types()
            .find(|r| r.name == E::EVENT_TYPE && r.version == E::VERSION)
            .map(EventDescription::from_registration);
        self.with_event(registered.unwrap_or_else(|| {
            let mut e = EventDescription::new(E::EVENT_TYPE, E::VERSION);
            e.rust_type = Some(std::any::type_name::<E>().to_owned());
            e
        }))
    }

    /// Adds an event described by hand (one of another service, a payload without a Rust type).
    pub fn with_event(mut self, event: EventDescription) -> Self {
        self.add_event(event);
        self.sort();
        self
    }

    /// Adds an in-process handler.
    pub fn handler(mut self, entry: &HandlerEntry) -> Self {
        self.handlers.push(HandlerDescription::of(entry));
        self.sort();
        self
    }

    /// Adds a route.
    pub fn route(mut self, route: &Route) -> Self {
        self.routes.push(RouteDescription::of(route));
        self
    }

    /// Adds an upcaster step from `from_version` of `event_type`.
    pub fn upcaster(mut self, event_type: impl Into<String>, from_version: u32) -> Self {
        let step = UpcasterDescription {
            event_type: event_type.into(),
            from_version,
        };
        if !self.upcasters.contains(&step) {
            self.upcasters.push(step);
            self.upcasters.sort();
        }
        self
    }

    /// The event `name` at `version`.
    pub fn find(&self, name: &str, version: u32) -> Option<&EventDescription> {
        self.events
            .iter()
            .find(|e| e.name == name && e.version == version)
    }

    /// Events the catalog has no payload schema for (`name` v`version`): derive
    /// `schemars::JsonSchema` on them, with the `schema` feature on.
    pub fn events_without_schema(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e.schema.is_none())
            .map(|e| format!("{} v{}", e.name, e.version))
            .collect()
    }

    /// The JSON form (what to commit for [`check_against`](Self::check_against)).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a catalog is plain JSON data")
    }

    /// Reads the JSON form back. Fails with [`Error::CatalogFormat`].
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|source| Error::CatalogFormat { source })
    }

    /// The AsyncAPI 3.0 document: channels from the routes' destinations and the in-process
    /// handlers, one message per event version with its CloudEvents attributes and payload
    /// schema. `title` and `version` are the document's `info`.
    pub fn to_asyncapi(&self, title: &str, version: &str) -> Value {
        asyncapi::render(self, title, version)
    }

    /// Compares this (current) catalog with a committed one and lists what would break
    /// readers of payloads the committed one describes: a field removed, retyped or made
    /// required in the same event version, or a version dropped with no upcaster from it to a
    /// version still here. Adding events, versions, optional fields is fine.
    pub fn check_against(&self, committed: &Catalog) -> Result<(), Vec<BreakingChange>> {
        let changes = compat::breaking_changes(committed, self);
        if changes.is_empty() {
            Ok(())
        } else {
            Err(changes)
        }
    }

    /// Adds `event` unless its name and version are there already; a registration (with a
    /// Rust type) wins over a bare name, whichever came first.
    fn add_event(&mut self, event: EventDescription) {
        match self
            .events
            .iter_mut()
            .find(|e| e.name == event.name && e.version == event.version)
        {
            Some(known) if known.rust_type.is_none() => *known = event,
            Some(_) => {}
            None => self.events.push(event),
        }
    }

    fn sort(&mut self) {
        self.events
            .sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        self.handlers.sort_by(|a, b| a.name.cmp(&b.name));
    }
}
