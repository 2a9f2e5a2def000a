//! Events dropped unsaved under the default policy (`UnsavedEvents::Log`, in every build):
//! reported as one `tracing` error naming the aggregate and its events, never a panic.
//!
//! Its own test binary, because the policy is process-wide: every test here sets `Log`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use outbox_seaorm::staging::Unit;
use outbox_seaorm::{
    Aggregate, DomainEvent, DomainEvents, Events, UnsavedEvents, on_unsaved_events,
};
use sea_orm::IntoActiveModel;
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "rel.opened")]
struct Opened {
    title: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "rel.closed")]
struct Closed;

#[derive(DomainEvents)]
#[domain_events(aggregate = "release_ticket", id = id)]
struct Ticket {
    id: u64,
    #[events]
    events: Events,
}

/// A SeaORM model that is an aggregate, to drop the SeaORM way.
#[allow(unreachable_pub)]
mod note {
    use outbox_seaorm::{DomainEvents, Events};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, DomainEvents)]
    #[sea_orm(table_name = "rel_notes")]
    #[domain_events(aggregate = "note")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub text: String,
        #[sea_orm(ignore)]
        #[events]
        pub events: Events,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One event as a subscriber saw it.
#[derive(Debug, Clone)]
struct Captured {
    level: tracing::Level,
    target: String,
    fields: BTreeMap<String, String>,
}

impl Captured {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// A layer that keeps every event.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    fn unsaved_reports(&self) -> Vec<Captured> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.target == "outbox::unsaved")
            .cloned()
            .collect()
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields: fields.0,
        });
    }
}

/// Runs `f` with the `Log` policy and a capturing subscriber on this thread; returns the
/// reports of unsaved events it produced.
fn reports_of(f: impl FnOnce()) -> Vec<Captured> {
    on_unsaved_events(UnsavedEvents::Log);
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    tracing::subscriber::with_default(subscriber, f);
    capture.unsaved_reports()
}

fn assert_mentions(report: &Captured, needles: &[&str]) {
    let message = report.field("message").unwrap_or_default();
    for needle in needles {
        assert!(
            message.contains(needle),
            "the message names {needle:?}: {message}"
        );
    }
}

#[test]
fn dropping_unsaved_events_logs_one_error_naming_the_aggregate_and_events() {
    let reports = reports_of(|| {
        let mut t = Ticket {
            id: 42,
            events: Events::new(),
        };
        t.record(Opened {
            title: "printer on fire".into(),
        });
        t.record(Closed);
        drop(t);
    });
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = &reports[0];
    assert_eq!(r.level, tracing::Level::ERROR);
    assert_eq!(r.field("aggregate_type"), Some("release_ticket"), "{r:?}");
    assert_eq!(r.field("aggregate_id"), Some("42"), "{r:?}");
    let events = r.field("events").unwrap_or_default();
    assert!(
        events.contains("rel.opened") && events.contains("rel.closed"),
        "{r:?}"
    );
    assert_mentions(r, &["release_ticket", "42", "rel.opened", "rel.closed"]);
}

#[test]
fn a_model_written_the_seaorm_way_is_reported_not_panicked() {
    let reports = reports_of(|| {
        let mut n = note::Model {
            id: "n-1".into(),
            text: "hello".into(),
            events: Events::new(),
        };
        n.record(Opened {
            title: "hello".into(),
        });
        // What `n.into_active_model().insert(&uow)` does first: the events go with the model.
        let _am: note::ActiveModel = n.into_active_model();
    });
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = &reports[0];
    assert_eq!(r.level, tracing::Level::ERROR);
    assert_eq!(r.field("aggregate_type"), Some("note"), "{r:?}");
    assert_eq!(r.field("aggregate_id"), Some("n-1"), "{r:?}");
    assert_mentions(r, &["note", "n-1", "rel.opened"]);
}

#[test]
fn events_recorded_without_an_owner_are_reported_with_their_types() {
    let reports = reports_of(|| {
        let mut t = Ticket {
            id: 7,
            events: Events::new(),
        };
        // Straight into the buffer: the buffer does not know its aggregate.
        t.events.record(Closed);
        drop(t);
    });
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].level, tracing::Level::ERROR);
    assert_mentions(&reports[0], &["rel.closed"]);
}

#[test]
fn discarded_committed_and_given_back_events_are_not_reported() {
    let reports = reports_of(|| {
        // Discarded on purpose.
        let mut t = Ticket {
            id: 1,
            events: Events::new(),
        };
        t.record(Closed);
        assert_eq!(t.events_mut().discard(), 1);
        drop(t);

        // Committed.
        let mut t = Ticket {
            id: 2,
            events: Events::new(),
        };
        t.record(Closed);
        let mut unit = Unit::new();
        assert_eq!(unit.stage(&mut t).unwrap().len(), 1);
        unit.settle(true);
        assert!(t.events().is_empty());
        drop(t);

        // Given back by a unit of work that rolled back: nothing of it was written.
        let mut t = Ticket {
            id: 3,
            events: Events::new(),
        };
        t.record(Closed);
        let mut unit = Unit::new();
        unit.stage(&mut t).unwrap();
        unit.settle(false);
        assert_eq!(t.events().len(), 1);
        drop(t);

        // A clone carries no events, so dropping it reports nothing.
        let mut n = note::Model {
            id: "n-2".into(),
            text: String::new(),
            events: Events::new(),
        };
        n.record(Closed);
        drop(n.clone());
        n.events_mut().discard();
    });
    assert!(reports.is_empty(), "{reports:?}");
}
