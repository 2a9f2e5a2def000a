//! Events, aggregates and handler recorders the tests share.

use std::sync::{Arc, Mutex};

use outbox_seaorm::{DomainEvent, DomainEvents, Events, HandlerEntry};
use schemars::JsonSchema;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An order was placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent, JsonSchema)]
#[event(name = "order.placed", version = 1, aggregate = "order")]
pub struct OrderPlaced {
    /// The order.
    pub order_id: Uuid,
    /// Amount in cents.
    pub amount: i64,
}

/// An order was confirmed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent, JsonSchema)]
#[event(name = "order.confirmed", aggregate = "order")]
pub struct OrderConfirmed {
    /// The order.
    pub order_id: Uuid,
}

/// An order was cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent, JsonSchema)]
#[event(name = "order.cancelled", aggregate = "order")]
pub struct OrderCancelled {
    /// The order.
    pub order_id: Uuid,
    /// Why.
    pub reason: String,
}

/// A numbered event, for ordering tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent, JsonSchema)]
#[event(name = "test.numbered", aggregate = "counter")]
pub struct Numbered {
    /// The aggregate.
    pub key: String,
    /// Its position in the aggregate's history.
    pub n: u32,
}

/// An event of a type this binary does not know, as if a newer version of the service had
/// written it: `DomainEvent` is implemented by hand, so no registry lists the type unless a
/// handler of it is registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FromANewerVersion {
    /// A number.
    pub n: u32,
}

impl DomainEvent for FromANewerVersion {
    const EVENT_TYPE: &'static str = "test.from-a-newer-version";
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

/// Creates `relay_log`, where handlers in other processes record each delivery they get.
pub async fn create_relay_log(db: &DatabaseConnection) {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => {
            "CREATE TABLE IF NOT EXISTS relay_log (id BIGSERIAL PRIMARY KEY, message_id VARCHAR(36) NOT NULL, \
             k VARCHAR(64) NOT NULL, n INTEGER NOT NULL, relay VARCHAR(64) NOT NULL)"
        }
        DbBackend::MySql => {
            "CREATE TABLE IF NOT EXISTS relay_log (id BIGINT AUTO_INCREMENT PRIMARY KEY, message_id VARCHAR(36) NOT NULL, \
             k VARCHAR(64) NOT NULL, n INT NOT NULL, relay VARCHAR(64) NOT NULL)"
        }
        _ => {
            "CREATE TABLE IF NOT EXISTS relay_log (id INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, \
             k TEXT NOT NULL, n INTEGER NOT NULL, relay TEXT NOT NULL)"
        }
    };
    db.execute_unprepared(sql).await.expect("relay_log");
}

/// Appends one delivery to `relay_log`.
pub async fn log_delivery(
    db: &impl ConnectionTrait,
    message_id: Uuid,
    event: &Numbered,
    relay: &str,
) -> Result<(), sea_orm::DbErr> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "INSERT INTO relay_log (message_id, k, n, relay) VALUES ($1, $2, $3, $4)"
        }
        _ => "INSERT INTO relay_log (message_id, k, n, relay) VALUES (?, ?, ?, ?)",
    };
    db.execute_raw(sea_orm::Statement::from_sql_and_values(
        backend,
        sql,
        [
            message_id.to_string().into(),
            event.key.clone().into(),
            (event.n as i32).into(),
            relay.to_owned().into(),
        ],
    ))
    .await
    .map(|_| ())
}

/// The rows of `relay_log` in insertion order: (message id, key, n, relay).
pub async fn relay_log(db: &DatabaseConnection) -> Vec<(String, String, u32, String)> {
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT message_id, k, n, relay FROM relay_log ORDER BY id",
        ))
        .await
        .expect("read relay_log");
    rows.iter()
        .map(|r| {
            (
                r.try_get("", "message_id").unwrap(),
                r.try_get("", "k").unwrap(),
                r.try_get::<i32>("", "n").unwrap() as u32,
                r.try_get("", "relay").unwrap(),
            )
        })
        .collect()
}

/// Commits `aggregates × per_aggregate` numbered events, `per_txn` aggregates' next event per
/// transaction, so every aggregate's history spans many transactions. Returns the total.
pub async fn commit_numbered(
    db: &DatabaseConnection,
    aggregates: u32,
    per_aggregate: u32,
) -> usize {
    let mut counters: Vec<Counter> = (0..aggregates)
        .map(|i| Counter::new(&format!("agg-{i}")))
        .collect();
    for _ in 0..per_aggregate {
        let uow = outbox_seaorm::UnitOfWork::begin(db).await.expect("begin");
        for c in &mut counters {
            c.bump();
            uow.stage(c).expect("stage");
        }
        uow.commit().await.expect("commit");
    }
    (aggregates * per_aggregate) as usize
}

/// Six `test.numbered` events on aggregates `agg-0`..`agg-5`, committed, and a relay (built,
/// not running) whose `mail` handler fails for good on the even ones, with one attempt: after
/// a drain, three are dead and three delivered.
pub async fn seed_dead_letters(db: &DatabaseConnection) -> outbox_seaorm::Relay {
    let uow = outbox_seaorm::UnitOfWork::begin(db).await.expect("begin");
    for i in 0..6 {
        let e = Numbered {
            key: format!("agg-{i}"),
            n: i,
        };
        uow.record("counter", format!("agg-{i}"), e, Default::default())
            .expect("record");
    }
    uow.commit().await.expect("commit");
    let mail = HandlerEntry::new("mail", |e: Numbered, _ctx| async move {
        if e.n.is_multiple_of(2) {
            return Err(outbox_seaorm::HandlerError::permanent(
                std::io::Error::other("mailbox full"),
            ));
        }
        Ok(())
    });
    outbox_seaorm::Relay::builder(db.clone())
        .registry(outbox_seaorm::Registry::new([mail]).expect("one handler"))
        .retry(
            outbox_seaorm::RetryPolicy::exponential(std::time::Duration::from_millis(1))
                .max_attempts(1),
        )
        .build()
        .await
        .expect("relay")
}

/// Aggregate ids that would change a destination's shape or a header's bytes if written raw.
pub const AWKWARD_IDS: [&str; 7] = [
    "a.b",
    "x*y>z#w",
    "a/b c",
    "acct%41 b/1",
    "Zürich €5 \"x\"",
    "q?x=1#f",
    "plain",
];

/// Commits one [`Numbered`] event per id (aggregate type `acct`), each with the header
/// `tenant = "acme <id>"`, in one unit of work.
pub async fn commit_awkward(db: &DatabaseConnection, ids: &[&str]) {
    let uow = outbox_seaorm::UnitOfWork::begin(db).await.expect("begin");
    for (n, id) in ids.iter().enumerate() {
        let e = Numbered {
            key: (*id).into(),
            n: n as u32,
        };
        let options = outbox_seaorm::RecordOptions::new().header("tenant", format!("acme {id}"));
        uow.record("acct", *id, e, options).expect("record");
    }
    uow.commit().await.expect("commit");
}

/// How many messages were delivered for the first time after a later message of the same key
/// had been: the order guarantee (0 expected).
pub fn order_violations(log: &[(String, String, u32, String)]) -> usize {
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut max_first: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    let mut violations = 0;
    for (id, k, n, _) in log {
        if !seen.insert(id.as_str()) {
            continue;
        }
        let m = max_first.entry(k.as_str()).or_insert(0);
        if *n < *m {
            violations += 1;
        }
        *m = (*m).max(*n);
    }
    violations
}

/// How many redeliveries came after a later message of the same key was delivered: a relay
/// killed mid-run leaves its handled but unacknowledged messages to be delivered again, so a
/// consumer may see 5 6 5 6 7. Allowed by at-least-once; deduplicating by message id restores
/// 5 6 7.
pub fn replays_after_later(log: &[(String, String, u32, String)]) -> usize {
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut max_seen: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    let mut replays = 0;
    for (id, k, n, _) in log {
        let m = max_seen.entry(k.as_str()).or_insert(0);
        if !seen.insert(id.as_str()) && *n < *m {
            replays += 1;
        }
        *m = (*m).max(*n);
    }
    replays
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
    HandlerEntry::with_state(
        name.to_owned(),
        recorder,
        |event: E, _ctx, recorder| async move {
            recorder.push(event);
            Ok::<_, std::convert::Infallible>(())
        },
    )
}
