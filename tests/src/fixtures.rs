//! Events, aggregates and handler recorders the tests share.

use std::sync::{Arc, Mutex};

use outbox_seaorm::{DomainEvent, DomainEvents, Events, HandlerContext, HandlerEntry};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An order was placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "order.placed", version = 1)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: Uuid,
    /// Amount in cents.
    pub amount: i64,
}

/// An order was confirmed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "order.confirmed")]
pub struct OrderConfirmed {
    /// The order.
    pub order_id: Uuid,
}

/// An order was cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "order.cancelled")]
pub struct OrderCancelled {
    /// The order.
    pub order_id: Uuid,
    /// Why.
    pub reason: String,
}

/// A numbered event, for ordering tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "test.numbered")]
pub struct Numbered {
    /// The aggregate.
    pub key: String,
    /// Its position in the aggregate's history.
    pub n: u32,
}

/// The `orders` table, whose model is the aggregate.
pub mod order {
    use outbox_seaorm::{DomainEvents, Events};
    use sea_orm::entity::prelude::*;

    use super::{OrderCancelled, OrderConfirmed, OrderPlaced};

    /// An order.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, DomainEvents)]
    #[sea_orm(table_name = "orders")]
    #[domain_events(aggregate = "order", id = id)]
    pub struct Model {
        /// Client-generated id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// Customer.
        pub customer: String,
        /// Amount in cents.
        pub amount: i64,
        /// `placed`, `confirmed` or `cancelled`.
        pub status: String,
        /// Recorded events.
        #[sea_orm(ignore)]
        #[events]
        pub events: Events,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl Model {
        /// Places a new order.
        pub fn place(customer: &str, amount: i64) -> Self {
            let mut order = Self {
                id: Uuid::now_v7(),
                customer: customer.to_owned(),
                amount,
                status: "placed".into(),
                events: Events::new(),
            };
            let order_id = order.id;
            order.events.record(OrderPlaced { order_id, amount });
            order
        }

        /// Confirms it.
        pub fn confirm(&mut self) {
            self.status = "confirmed".into();
            self.events.record(OrderConfirmed { order_id: self.id });
        }

        /// Cancels it.
        pub fn cancel(&mut self, reason: &str) {
            self.status = "cancelled".into();
            self.events.record(OrderCancelled {
                order_id: self.id,
                reason: reason.to_owned(),
            });
        }
    }
}

/// A plain domain struct (not a SeaORM model) that records events.
#[derive(Debug, DomainEvents)]
#[domain_events(aggregate = "counter", id = key)]
pub struct Counter {
    /// Its id.
    pub key: String,
    /// Its value.
    pub value: u32,
    /// Recorded events.
    #[events]
    pub events: Events,
}

impl Counter {
    /// A counter at zero.
    pub fn new(key: &str) -> Self {
        Self {
            key: key.to_owned(),
            value: 0,
            events: Events::new(),
        }
    }

    /// Adds one and records it.
    pub fn bump(&mut self) {
        self.value += 1;
        self.events.record(Numbered {
            key: self.key.clone(),
            n: self.value,
        });
    }
}

/// Creates the fixture tables.
pub async fn create_tables(db: &DatabaseConnection) {
    crate::create_entity_table(db, order::Entity).await;
    let counters = match db.get_database_backend() {
        DbBackend::MySql => {
            "CREATE TABLE IF NOT EXISTS counters (k VARCHAR(64) PRIMARY KEY, v INT NOT NULL)"
        }
        _ => "CREATE TABLE IF NOT EXISTS counters (k VARCHAR(64) PRIMARY KEY, v INTEGER NOT NULL)",
    };
    db.execute_unprepared(counters).await.expect("counters");
}

/// Records what a handler received, in order.
#[derive(Clone, Default)]
pub struct Recorder<T> {
    seen: Arc<Mutex<Vec<T>>>,
}

impl<T: Clone> Recorder<T> {
    /// An empty recorder.
    pub fn new() -> Self {
        Self {
            seen: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Adds one.
    pub fn push(&self, v: T) {
        self.seen.lock().unwrap().push(v);
    }

    /// Everything so far.
    pub fn all(&self) -> Vec<T> {
        self.seen.lock().unwrap().clone()
    }

    /// How many so far.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Whether none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A handler of `E` that records every event it gets and succeeds.
pub fn recording<E>(name: &str, recorder: Recorder<E>) -> HandlerEntry
where
    E: DomainEvent + Clone + Sync,
{
    HandlerEntry::new(name.to_owned(), move |event: E, _ctx: HandlerContext| {
        let recorder = recorder.clone();
        async move {
            recorder.push(event);
            Ok::<_, std::convert::Infallible>(())
        }
    })
}
