//! The set of handlers a relay dispatches to, by event type name.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::catalog::RouteDescription;
use crate::envelope::Envelope;
use crate::error::{Error, Result, check_name};
use crate::event::{EventTypeRegistration, registered_event_types};
use crate::handler::{HandlerEntry, HandlerRegistration};
use crate::publish::{Matcher, Route};
use crate::upcast::Upcasters;

/// Handlers by event type, routes to publishers, plus the upcasters and the event types the
/// process knows.
///
/// Build it from everything `#[event_handler]` registered ([`Registry::from_inventory`]) or
/// from an explicit list ([`Registry::new`]), which is what tests want. Both validate: handler
/// names are unique, no two Rust types claim one event type name and version.
#[derive(Debug, Clone)]
pub struct Registry {
    handlers: Vec<HandlerEntry>,
    by_event_type: HashMap<String, Vec<usize>>,
    event_types: BTreeMap<String, Vec<u32>>,
    routes: Vec<(Matcher, HandlerEntry)>,
    /// Routes that change data capture publishes (`Route::published_by_cdc`): never delivered
    /// by the relay, but they take their messages all the same.
    cdc_routes: Vec<(Matcher, HandlerEntry)>,
    /// What the catalog says about each route, in the order of `routes`: a route's template
    /// and publisher are erased into its handler.
    pub(crate) route_descriptions: Vec<RouteDescription>,
    upcasters: Arc<Upcasters>,
}

impl Registry {
    /// A registry of exactly these handlers (no upcasters; add them with
    /// [`Registry::with_upcasters`]). It knows every event type derived with `DomainEvent` in
    /// the linked crates, as [`Registry::from_inventory`] does: a message of such a type that
    /// none of these handlers handles completes at once instead of waiting for a relay that
    /// knows the type.
    ///
    /// Fails with [`Error::DuplicateHandler`] when two share a name.
    pub fn new(handlers: impl IntoIterator<Item = HandlerEntry>) -> Result<Self> {
        let event_types: Vec<_> = registered_event_types().copied().collect();
        Self::build(
            handlers.into_iter().collect(),
            &event_types,
            Upcasters::new(),
        )
    }

    /// Every handler registered with `#[event_handler]`, every upcaster registered with
    /// [`upcaster!`](crate::upcaster) and every event type derived with `DomainEvent`, in the
    /// crates linked into this binary.
    ///
    /// A crate whose only content is handlers and that the binary never names is not linked, and
    /// its handlers are missing here: name it (`use my_handlers as _;`).
    pub fn from_inventory() -> Result<Self> {
        let handlers = inventory::iter::<HandlerRegistration>
            .into_iter()
            .map(HandlerEntry::from_registration)
            .collect();
        let event_types: Vec<_> = registered_event_types().copied().collect();
        Self::build(handlers, &event_types, Upcasters::from_inventory())
    }

    fn build(
        mut handlers: Vec<HandlerEntry>,
        event_types: &[EventTypeRegistration],
        upcasters: Upcasters,
    ) -> Result<Self> {
        // inventory's order is unspecified: sort, so dispatch order, logs and errors are
        // stable.
        handlers.sort_by(|a, b| (&a.name, &a.defined_at).cmp(&(&b.name, &b.defined_at)));
        for pair in handlers.windows(2) {
            if pair[0].name == pair[1].name {
                return Err(Error::DuplicateHandler {
                    name: pair[0].name.to_string(),
                    first: pair[0].defined_at.to_string(),
                    second: pair[1].defined_at.to_string(),
                });
            }
        }
        let mut by_event_type: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, h) in handlers.iter().enumerate() {
            check_name("handler", &h.name)?;
            check_name("event type", &h.event_type)?;
            by_event_type
                .entry(h.event_type.to_string())
                .or_default()
                .push(i);
        }

        let mut seen: HashMap<(&str, u32), &str> = HashMap::new();
        let mut types: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for t in event_types {
            check_name("event type", t.name)?;
            if let Some(first) = seen.insert((t.name, t.version), t.rust_type) {
                if first != t.rust_type {
                    let (first, second) = if first < t.rust_type {
                        (first, t.rust_type)
                    } else {
                        (t.rust_type, first)
                    };
                    return Err(Error::DuplicateEventType {
                        name: t.name.to_owned(),
                        version: t.version,
                        first: first.to_owned(),
                        second: second.to_owned(),
                    });
                }
                continue;
            }
            types.entry(t.name.to_owned()).or_default().push(t.version);
        }
        for h in &handlers {
            types
                .entry(h.event_type.to_string())
                .or_default()
                .push(h.event_version);
        }
        for versions in types.values_mut() {
            versions.sort_unstable();
            versions.dedup();
        }

        Ok(Self {
            handlers,
            by_event_type,
            event_types: types,
            routes: Vec::new(),
            cdc_routes: Vec::new(),
            route_descriptions: Vec::new(),
            upcasters: Arc::new(upcasters),
        })
    }

    /// Adds a route to a publisher. Its name shares the namespace of handler names (both key
    /// delivery state), so a clash is [`Error::DuplicateHandler`].
    ///
    /// A route [`published_by_cdc`](Route::published_by_cdc) is kept apart: the relay never
    /// delivers it ([`deliveries_for`](Self::deliveries_for) leaves it out), and lists it in
    /// [`cdc_routes`](Self::cdc_routes).
    pub fn with_route(mut self, route: Route) -> Result<Self> {
        let description = RouteDescription::of(&route);
        let cdc = route.is_published_by_cdc();
        let (matcher, entry) = route.into_entry()?;
        let taken = self
            .handlers
            .iter()
            .chain(self.routes.iter().map(|(_, r)| r))
            .chain(self.cdc_routes.iter().map(|(_, r)| r))
            .find(|h| h.name == entry.name);
        if let Some(first) = taken {
            return Err(Error::DuplicateHandler {
                name: entry.name.to_string(),
                first: first.defined_at.to_string(),
                second: entry.defined_at.to_string(),
            });
        }
        if cdc {
            self.cdc_routes.push((matcher, entry));
        } else {
            self.routes.push((matcher, entry));
        }
        self.route_descriptions.push(description);
        Ok(self)
    }

    /// The names of the routes that change data capture publishes, in the order they were
    /// added.
    pub fn cdc_routes(&self) -> impl Iterator<Item = &str> {
        self.cdc_routes.iter().map(|(_, e)| e.name())
    }

    /// Every delivery of `envelope`: the handlers of its event type, then the routes it matches.
    pub fn deliveries_for<'a>(
        &'a self,
        envelope: &'a Envelope,
    ) -> impl Iterator<Item = &'a HandlerEntry> + 'a {
        self.handlers_for(&envelope.event_type).chain(
            self.routes
                .iter()
                .filter(|(m, _)| m.matches(envelope))
                .map(|(_, e)| e),
        )
    }

    /// Whether a handler or a route (one change data capture publishes included) takes
    /// messages of `event_type` recorded by aggregates of `aggregate_type` (when none does, a
    /// relay marks them `unhandled`).
    pub fn takes(&self, event_type: &str, aggregate_type: &str) -> bool {
        self.handlers_for(event_type).next().is_some()
            || self
                .routes
                .iter()
                .chain(&self.cdc_routes)
                .any(|(m, _)| m.matches_types(event_type, aggregate_type))
    }

    /// Whether a route that change data capture publishes takes `envelope`: with no handler
    /// and no other route, the relay completes it as delivered (it does not check what the
    /// capture did), not as unhandled.
    pub fn published_by_cdc(&self, envelope: &Envelope) -> bool {
        self.cdc_routes.iter().any(|(m, _)| m.matches(envelope))
    }

    /// The routes, in the order they were added.
    pub fn routes(&self) -> impl Iterator<Item = &HandlerEntry> {
        self.routes.iter().map(|(_, e)| e)
    }

    /// Declares an event type this process knows without handling it, so that its messages
    /// are marked `unhandled` at once instead of waiting for a relay that knows the type.
    /// [`Registry::from_inventory`] knows every type derived with `DomainEvent` already.
    pub fn with_event<E: crate::DomainEvent>(mut self) -> Self {
        let versions = self
            .event_types
            .entry(E::EVENT_TYPE.to_owned())
            .or_default();
        if !versions.contains(&E::VERSION) {
            versions.push(E::VERSION);
            versions.sort_unstable();
        }
        self
    }

    /// Whether this process knows `event_type`: a type derived with `DomainEvent` in a linked
    /// crate, declared with [`with_event`](Self::with_event), or handled by a handler.
    ///
    /// A relay leaves a message of a type it does not know for a relay that does (a newer
    /// version during a rolling deployment) instead of failing it.
    pub fn knows(&self, event_type: &str) -> bool {
        self.event_types.contains_key(event_type)
    }

    /// Whether this process can decide what `envelope` needs: it knows the event type (see
    /// [`knows`](Self::knows)), or a route takes the message (a route forwards the payload as
    /// it is stored, without the Rust type).
    pub fn understands(&self, envelope: &Envelope) -> bool {
        self.knows(&envelope.event_type)
            || self.routes.iter().any(|(m, _)| m.matches(envelope))
            || self.cdc_routes.iter().any(|(m, _)| m.matches(envelope))
    }

    /// Replaces the upcasters.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = Arc::new(upcasters);
        self
    }

    /// The handlers of `event_type`, sorted by name.
    pub fn handlers_for<'a>(
        &'a self,
        event_type: &str,
    ) -> impl Iterator<Item = &'a HandlerEntry> + 'a {
        self.by_event_type
            .get(event_type)
            .into_iter()
            .flatten()
            .map(|&i| &self.handlers[i])
    }

    /// Every handler, sorted by name.
    pub fn handlers(&self) -> &[HandlerEntry] {
        &self.handlers
    }

    /// Number of handlers.
    pub fn len(&self) -> usize {
        self.handlers.len()
    }

    /// Whether there are no handlers.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    /// Every event type the process knows (derived or handled), with its versions.
    pub fn event_types(&self) -> impl Iterator<Item = (&str, &[u32])> {
        self.event_types
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Event types that were derived with `DomainEvent` but that no handler handles and no
    /// route takes by event type (a route by aggregate type may still take them).
    pub fn event_types_without_handlers(&self) -> impl Iterator<Item = &str> {
        self.event_types
            .keys()
            .map(String::as_str)
            .filter(|t| !self.by_event_type.contains_key(*t))
            .filter(|t| {
                let takes = |m: &Matcher| match m {
                    Matcher::All | Matcher::AggregateTypes(_) => true,
                    Matcher::EventTypes(types) => types.iter().any(|x| x == t),
                };
                !self.routes.iter().any(|(m, _)| takes(m))
                    && !self.cdc_routes.iter().any(|(m, _)| takes(m))
            })
    }

    /// The upcasters handlers decode through.
    pub fn upcasters(&self) -> &Arc<Upcasters> {
        &self.upcasters
    }
}
