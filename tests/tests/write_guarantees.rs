//! The write-side guarantees of issue #8: nothing of an aggregate is persisted without its events
//! (or its events without it), whatever path the caller takes, and each aggregate's events keep
//! their order under concurrent writers.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use outbox_seaorm::entity::message;
use outbox_seaorm::{
    Admin, Aggregate, DomainEvent, DomainEvents, Error, Events, HandlerContext, HandlerEntry,
    HandlerError, OutboxConfig, RecordOptions, Registry, Relay, UnitOfWork,
};
use outbox_tests::fixtures::{Recorder, order};
use outbox_tests::{TestDb, backend_tests, create_entity_table, wait_for};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryOrder,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

backend_tests!(
    auto_increment_aggregate_saved_again_after_a_rollback,
    seaorm_way_saves_are_caught,
    rollback_keeps_state_and_events_together,
    auto_increment_i32_keys_are_generated_and_read_back,
    auto_increment_i64_keys_are_generated_and_read_back,
    concurrent_writers_keep_per_aggregate_order,
    clone_and_original_saved_together_write_each_event_once,
    invalid_aggregate_ids_are_rejected_when_recorded,
    relay_without_outbox_tables_fails_to_start_naming_the_table,
    requeue_wakes_the_relays_of_this_process,
);

// ---------------------------------------------------------------------------------------------
// Fixtures local to this file.

/// An account was opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "wg.account_opened")]
struct AccountOpened {
    name: String,
}

/// An account was renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "wg.account_renamed")]
struct AccountRenamed {
    name: String,
}

/// Something happened to a ticket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "wg.ticket_changed")]
struct TicketChanged {
    title: String,
}

/// One step of a stream, written by one of the concurrent writers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "wg.step")]
struct Step {
    key: String,
    writer: u32,
    n: u32,
}

/// A poisoned-then-fixed message, for the requeue test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(name = "wg.flaky")]
struct Flaky {
    n: u32,
}

/// An aggregate whose SeaORM model has a client-generated string key, recording through
/// `Aggregate::record` (which names the owner at once).
#[allow(unreachable_pub)]
mod account {
    use outbox_seaorm::{Aggregate, DomainEvents, Events};
    use sea_orm::entity::prelude::*;

    use super::{AccountOpened, AccountRenamed};

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, DomainEvents)]
    #[sea_orm(table_name = "wg_accounts")]
    #[domain_events(aggregate = "account", id = id)]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub name: String,
        #[sea_orm(ignore)]
        #[events]
        pub events: Events,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl Model {
        pub fn open(id: &str, name: &str) -> Self {
            let mut a = Self {
                id: id.to_owned(),
                name: name.to_owned(),
                events: Events::new(),
            };
            a.record(AccountOpened {
                name: name.to_owned(),
            });
            a
        }

        pub fn rename(&mut self, name: &str) {
            self.name = name.to_owned();
            self.record(AccountRenamed {
                name: name.to_owned(),
            });
        }
    }
}

/// A ticket with SeaORM's default key: an auto-increment `i32`.
#[allow(unreachable_pub)]
mod ticket32 {
    use outbox_seaorm::{Aggregate, DomainEvents, Events};
    use sea_orm::entity::prelude::*;

    use super::TicketChanged;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, DomainEvents)]
    #[sea_orm(table_name = "wg_tickets32")]
    #[domain_events(aggregate = "ticket")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub title: String,
        #[sea_orm(ignore)]
        #[events]
        pub events: Events,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl Model {
        pub fn open(title: &str) -> Self {
            let mut t = Self {
                id: 0,
                title: title.to_owned(),
                events: Events::new(),
            };
            t.record(TicketChanged {
                title: title.to_owned(),
            });
            t
        }

        pub fn retitle(&mut self, title: &str) {
            self.title = title.to_owned();
            self.record(TicketChanged {
                title: title.to_owned(),
            });
        }
    }
}

/// The same ticket with an auto-increment `i64` key.
#[allow(unreachable_pub)]
mod ticket64 {
    use outbox_seaorm::{Aggregate, DomainEvents, Events};
    use sea_orm::entity::prelude::*;

    use super::TicketChanged;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, DomainEvents)]
    #[sea_orm(table_name = "wg_tickets64")]
    #[domain_events(aggregate = "ticket")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub title: String,
        #[sea_orm(ignore)]
        #[events]
        pub events: Events,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    impl Model {
        pub fn open(title: &str) -> Self {
            let mut t = Self {
                id: 0,
                title: title.to_owned(),
                events: Events::new(),
            };
            t.record(TicketChanged {
                title: title.to_owned(),
            });
            t
        }

        pub fn retitle(&mut self, title: &str) {
            self.title = title.to_owned();
            self.record(TicketChanged {
                title: title.to_owned(),
            });
        }
    }
}

/// A stream's row, saved through `uow.save` by the concurrent writers (aggregate type
/// `stream`, like the events the writers record and stage for the same keys).
#[allow(unreachable_pub)]
mod stream_row {
    use outbox_seaorm::{DomainEvents, Events};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, DomainEvents)]
    #[sea_orm(table_name = "wg_stream_rows")]
    #[domain_events(aggregate = "stream", id = key)]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub last_writer: i32,
        pub last_n: i32,
        #[sea_orm(ignore)]
        #[events]
        pub events: Events,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A plain domain struct persisted by nobody: its events are staged with `uow.stage`.
#[derive(DomainEvents)]
#[domain_events(aggregate = "stream", id = key)]
struct PlainStream {
    key: String,
    #[events]
    events: Events,
}

async fn messages(db: &DatabaseConnection) -> Vec<message::Model> {
    message::Entity::find()
        .order_by_asc(message::Column::Seq)
        .all(db)
        .await
        .unwrap()
}

fn event_ids<A: Aggregate>(a: &A) -> Vec<Uuid> {
    a.events().iter().map(|e| e.message_id).collect()
}

fn panic_text(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else {
        "<a panic without a message>".to_owned()
    }
}

/// Runs `fut` on its own task and returns its panic message; fails if it did not panic.
async fn panic_of<F>(what: &str, fut: F) -> String
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match tokio::spawn(fut).await {
        Ok(()) => panic!("{what}: expected a panic, got none"),
        Err(e) if e.is_panic() => panic_text(e.into_panic()),
        Err(e) => panic!("{what}: task failed without panicking: {e}"),
    }
}

fn assert_names(what: &str, text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            text.contains(needle),
            "{what}: expected the message to contain {needle:?}, got: {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Saving the SeaORM way is caught.

async fn seaorm_way_saves_are_caught(t: TestDb) {
    // Panicking is opt-in (the default is an ERROR log); these checks read the panic's text.
    outbox_seaorm::on_unsaved_events(outbox_seaorm::UnsavedEvents::Panic);
    create_entity_table(&t.db, account::Entity).await;

    // `model.into_active_model().insert(&uow)`
    let mut a = account::Model::open("acct-insert", "Ada");
    a.rename("Ada L.");
    let db = t.db.clone();
    let text = panic_of("into_active_model().insert", async move {
        let uow = UnitOfWork::begin(&db).await.unwrap();
        a.into_active_model().insert(&uow).await.unwrap();
        uow.commit().await.unwrap();
    })
    .await;
    assert_names(
        "into_active_model().insert",
        &text,
        &[
            "wg.account_opened",
            "wg.account_renamed",
            "account",
            "acct-insert",
        ],
    );

    // `ActiveModel::save(&uow)`
    let a = account::Model::open("acct-am-save", "Bob");
    let db = t.db.clone();
    let text = panic_of("ActiveModel::save", async move {
        let uow = UnitOfWork::begin(&db).await.unwrap();
        let am: account::ActiveModel = a.into();
        am.save(&uow).await.unwrap();
        uow.commit().await.unwrap();
    })
    .await;
    assert_names(
        "ActiveModel::save",
        &text,
        &["wg.account_opened", "account", "acct-am-save"],
    );

    // `Entity::insert(am).exec(&uow)`
    let a = account::Model::open("acct-exec", "Cy");
    let db = t.db.clone();
    let text = panic_of("Entity::insert(..).exec", async move {
        let uow = UnitOfWork::begin(&db).await.unwrap();
        account::Entity::insert(a.into_active_model())
            .exec(&uow)
            .await
            .unwrap();
        uow.commit().await.unwrap();
    })
    .await;
    assert_names(
        "Entity::insert(..).exec",
        &text,
        &["wg.account_opened", "account", "acct-exec"],
    );

    // Events recorded straight into the buffer (the owner is not known yet): the event types
    // are still named.
    let mut anonymous = account::Model {
        id: "acct-anon".into(),
        name: "Di".into(),
        events: Events::new(),
    };
    anonymous.events.record(AccountOpened { name: "Di".into() });
    let db = t.db.clone();
    let text = panic_of("events.record + into_active_model", async move {
        let uow = UnitOfWork::begin(&db).await.unwrap();
        anonymous.into_active_model().insert(&uow).await.unwrap();
        uow.commit().await.unwrap();
    })
    .await;
    assert_names(
        "events.record + into_active_model",
        &text,
        &["wg.account_opened"],
    );

    // A clone written the SeaORM way writes the row; the original's events are reported when
    // it is dropped.
    let original = account::Model::open("acct-clone-insert", "Eve");
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    original
        .clone()
        .into_active_model()
        .insert(&uow)
        .await
        .unwrap();
    uow.commit().await.unwrap();
    let text = match std::panic::catch_unwind(AssertUnwindSafe(move || drop(original))) {
        Ok(()) => panic!("dropping an aggregate with unsaved events did not panic"),
        Err(p) => panic_text(p),
    };
    assert_names(
        "drop after a clone was inserted",
        &text,
        &["wg.account_opened", "account", "acct-clone-insert"],
    );

    // Nothing of the panicking units of work was written; the clone's row was, without events.
    let ids: Vec<String> = account::Entity::find()
        .all(&t.db)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["acct-clone-insert"]);
    assert!(messages(&t.db).await.is_empty());

    // The same model saved through the unit of work: no panic, one outbox row per event.
    let mut a = account::Model::open("acct-uow", "Fay");
    a.rename("Fay G.");
    let recorded = event_ids(&a);
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut a).await.unwrap();
    uow.commit().await.unwrap();
    assert!(a.events().is_empty());
    drop(a);
    let rows = messages(&t.db).await;
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), recorded);
    assert!(
        rows.iter()
            .all(|r| r.aggregate_type == "account" && r.aggregate_id == "acct-uow")
    );
    let stored = account::Entity::find_by_id("acct-uow".to_owned())
        .one(&t.db)
        .await
        .unwrap()
        .expect("row written");
    assert_eq!(stored.name, "Fay G.");
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 2. A unit of work that does not commit keeps state and events together.

async fn rollback_keeps_state_and_events_together(t: TestDb) {
    async fn nothing_written(t: &TestDb, o: &order::Model, recorded: &[Uuid], after: &str) {
        assert_eq!(event_ids(o), recorded, "{after}: the events are back");
        assert_eq!(
            order::Entity::find().count(&t.db).await.unwrap(),
            0,
            "{after}: no order row"
        );
        assert!(messages(&t.db).await.is_empty(), "{after}: no outbox row");
    }

    // Panicking is opt-in (the default is an ERROR log); (b) reads the panic's text.
    outbox_seaorm::on_unsaved_events(outbox_seaorm::UnsavedEvents::Panic);
    let mut o = order::Model::place("ada", 100);
    o.confirm();
    let recorded = event_ids(&o);
    assert_eq!(recorded.len(), 2);

    // (a) rolled back
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut o).await.unwrap();
    assert_eq!(uow.staged(), 2);
    uow.rollback().await.unwrap();
    nothing_written(&t, &o, &recorded, "rollback").await;

    // (b) dropped without commit or rollback: rolled back, and reported
    {
        let uow = UnitOfWork::begin(&t.db).await.unwrap();
        uow.save(&mut o).await.unwrap();
        assert_eq!(uow.staged(), 2);
        let text = match std::panic::catch_unwind(AssertUnwindSafe(move || drop(uow))) {
            Ok(()) => panic!("dropping a unit of work holding staged events did not panic"),
            Err(p) => panic_text(p),
        };
        assert_names(
            "drop of a unit of work",
            &text,
            &[
                "2 staged event(s) was dropped without `commit` or `rollback`",
                "order.placed",
                "order.confirmed",
            ],
        );
    }
    nothing_written(&t, &o, &recorded, "drop").await;

    // (c) a commit that fails: the outbox tables it names do not exist
    let missing = OutboxConfig::new().with_prefix("missing_").unwrap();
    let uow = UnitOfWork::begin_with(&t.db, &missing).await.unwrap();
    uow.save(&mut o).await.unwrap();
    let err = uow
        .commit()
        .await
        .expect_err("the outbox tables are missing");
    let shown = err.report();
    assert!(
        shown.contains("missing_outbox"),
        "the error names the missing table: {shown}"
    );
    assert!(
        ["does not exist", "no such table", "doesn't exist"]
            .iter()
            .any(|cause| shown.contains(cause)),
        "the error shows the database's reason: {shown}"
    );
    nothing_written(&t, &o, &recorded, "failed commit").await;

    // The same instance, saved again: state and every event, once.
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut o).await.unwrap();
    assert_eq!(uow.staged(), 2, "each event staged once");
    uow.commit().await.unwrap();
    assert!(o.events().is_empty());
    let stored = order::Entity::find_by_id(o.id)
        .one(&t.db)
        .await
        .unwrap()
        .expect("order row");
    assert_eq!(stored.status, "confirmed");
    let rows = messages(&t.db).await;
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), recorded);
    assert!(rows.iter().all(|r| r.aggregate_id == o.id.to_string()));

    // Saving it once more writes the state and no event again.
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut o).await.unwrap();
    assert_eq!(uow.staged(), 0);
    uow.commit().await.unwrap();
    assert_eq!(messages(&t.db).await.len(), 2);
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Auto-increment keys: generated by the database, read back, used as the aggregate id.

macro_rules! auto_increment_test {
    ($name:ident, $module:ident) => {
        async fn $name(t: TestDb) {
            use $module as ticket;
            create_entity_table(&t.db, ticket::Entity).await;

            // Three new tickets, each saved in its own unit of work.
            let mut tickets: Vec<ticket::Model> = (1..=3)
                .map(|i| ticket::Model::open(&format!("ticket {i}")))
                .collect();
            let mut event_of: HashMap<Uuid, String> = HashMap::new();
            for tk in tickets.iter_mut() {
                let ids = event_ids(tk);
                let uow = UnitOfWork::begin(&t.db).await.unwrap();
                uow.save(tk).await.unwrap();
                assert_ne!(tk.id, 0, "the generated key is read back at once");
                uow.commit().await.unwrap();
                assert!(tk.events().is_empty());
                for id in ids {
                    event_of.insert(id, tk.id.to_string());
                }
            }
            let ids: HashSet<String> = tickets.iter().map(|tk| tk.id.to_string()).collect();
            assert_eq!(ids.len(), 3, "three distinct keys: {ids:?}");
            let stored = ticket::Entity::find()
                .order_by_asc(ticket::Column::Id)
                .all(&t.db)
                .await
                .unwrap();
            assert_eq!(stored.len(), 3, "three rows: {stored:?}");
            for tk in &tickets {
                assert!(stored.contains(tk), "{tk:?} stored as saved");
            }

            // An existing one, changed and saved again: updated.
            tickets[1].retitle("second, renamed");
            event_ids(&tickets[1]).into_iter().for_each(|id| {
                event_of.insert(id, tickets[1].id.to_string());
            });
            let uow = UnitOfWork::begin(&t.db).await.unwrap();
            uow.save(&mut tickets[1]).await.unwrap();
            uow.commit().await.unwrap();

            // One loaded from the database, changed and saved: updated.
            let mut loaded = ticket::Entity::find_by_id(tickets[2].id)
                .one(&t.db)
                .await
                .unwrap()
                .expect("loaded");
            loaded.retitle("third, loaded and renamed");
            event_ids(&loaded).into_iter().for_each(|id| {
                event_of.insert(id, loaded.id.to_string());
            });
            let uow = UnitOfWork::begin(&t.db).await.unwrap();
            uow.save(&mut loaded).await.unwrap();
            uow.commit().await.unwrap();
            let stored = ticket::Entity::find()
                .order_by_asc(ticket::Column::Id)
                .all(&t.db)
                .await
                .unwrap();
            assert_eq!(stored.len(), 3, "updates add no row: {stored:?}");
            assert!(stored.contains(&tickets[1]) && stored.contains(&loaded));

            // `uow.insert` of a new one, then `uow.update` of it.
            let mut fourth = ticket::Model::open("fourth");
            let opened = event_ids(&fourth);
            let uow = UnitOfWork::begin(&t.db).await.unwrap();
            uow.insert(&mut fourth).await.unwrap();
            uow.commit().await.unwrap();
            assert_ne!(fourth.id, 0);
            assert!(!ids.contains(&fourth.id.to_string()), "a new key");
            for id in opened {
                event_of.insert(id, fourth.id.to_string());
            }
            fourth.retitle("fourth, updated");
            event_ids(&fourth).into_iter().for_each(|id| {
                event_of.insert(id, fourth.id.to_string());
            });
            let uow = UnitOfWork::begin(&t.db).await.unwrap();
            uow.update(&mut fourth).await.unwrap();
            uow.commit().await.unwrap();
            let stored = ticket::Entity::find()
                .order_by_asc(ticket::Column::Id)
                .all(&t.db)
                .await
                .unwrap();
            assert_eq!(stored.len(), 4, "{stored:?}");
            assert!(stored.contains(&fourth));

            // Every event says which ticket it belongs to.
            let rows = messages(&t.db).await;
            assert_eq!(rows.len(), event_of.len(), "one outbox row per event");
            for r in &rows {
                assert_eq!(r.aggregate_type, "ticket");
                assert_eq!(
                    Some(&r.aggregate_id),
                    event_of.get(&r.id),
                    "aggregate id of {} ({:?})",
                    r.id,
                    r.payload
                );
                assert_ne!(r.aggregate_id, "0");
            }
            t.cleanup().await;
        }
    };
}

auto_increment_test!(
    auto_increment_i32_keys_are_generated_and_read_back,
    ticket32
);
auto_increment_test!(
    auto_increment_i64_keys_are_generated_and_read_back,
    ticket64
);

/// A new auto-increment aggregate whose unit of work rolled back, saved again after another
/// one was committed: it must become a row of its own, with its events, and leave the other
/// ticket alone (the key read back from the rolled-back insert was never committed).
async fn auto_increment_aggregate_saved_again_after_a_rollback(t: TestDb) {
    create_entity_table(&t.db, ticket32::Entity).await;
    let mut a = ticket32::Model::open("a");
    let a_events = event_ids(&a);
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut a).await.unwrap();
    let tentative = a.id;
    uow.rollback().await.unwrap();
    assert_eq!(event_ids(&a), a_events, "the event is back");

    let mut b = ticket32::Model::open("b");
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut b).await.unwrap();
    uow.commit().await.unwrap();

    // Saved again, `a` is inserted under the key it was given: events recorded since may
    // carry it in their payloads. Where another row took that key meanwhile (SQLite reuses
    // rolled-back keys), that fails loudly instead of writing events about someone else's row.
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    let retried = uow.save(&mut a).await;
    let stored = |db: DatabaseConnection| async move {
        ticket32::Entity::find()
            .order_by_asc(ticket32::Column::Id)
            .all(&db)
            .await
            .unwrap()
    };
    if b.id == tentative {
        let err = retried.expect_err("the key is taken: the insert must fail");
        drop(uow);
        assert!(!err.to_string().is_empty());
        assert_eq!(event_ids(&a), a_events, "nothing written, the events stay");
        let rows = stored(t.db.clone()).await;
        assert_eq!(rows, [b.clone()], "b is untouched");
        assert_eq!(messages(&t.db).await.len(), 1, "only b's event");
        a.events_mut().discard();
    } else {
        retried.unwrap();
        uow.commit().await.unwrap();
        assert_eq!(
            a.id, tentative,
            "inserted again under the key its events may carry"
        );
        let rows = stored(t.db.clone()).await;
        let titles: Vec<(i32, &str)> = rows.iter().map(|s| (s.id, s.title.as_str())).collect();
        assert_eq!(rows.len(), 2, "a and b are two rows: {titles:?}");
        assert!(rows.contains(&a) && rows.contains(&b), "{titles:?}");
        let all = messages(&t.db).await;
        let a_rows: Vec<&message::Model> =
            all.iter().filter(|r| a_events.contains(&r.id)).collect();
        assert_eq!(a_rows.len(), 1);
        assert_eq!(a_rows[0].aggregate_id, tentative.to_string());
        assert_eq!(all.len(), 2);
    }
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Concurrent writers keep per-aggregate order.

const WRITERS: u32 = 8;
const AGGREGATES: usize = 5;
/// Events each writer records on each aggregate: 8 × 25 = 200 per aggregate.
const PER_WRITER: u32 = 25;

/// One writer: `PER_WRITER` rounds, each recording one event on every aggregate through small
/// units of work of 1 to 3 aggregates, taking turns between `record`, `stage` and `save`.
/// Returns the ids of the events it committed. It locks nothing itself; at most one `save` per
/// unit of work, so the only row locks two writers can wait on are the stream rows' (the
/// library's) and one aggregate row each.
async fn writer(db: DatabaseConnection, w: u32, keys: Vec<String>) -> Vec<Uuid> {
    let mut plains: Vec<PlainStream> = keys
        .iter()
        .map(|k| PlainStream {
            key: k.clone(),
            events: Events::new(),
        })
        .collect();
    let mut models: Vec<stream_row::Model> = keys
        .iter()
        .map(|k| stream_row::Model {
            key: k.clone(),
            last_writer: w as i32,
            last_n: 0,
            events: Events::new(),
        })
        .collect();
    let mut committed = Vec::new();
    for n in 1..=PER_WRITER {
        let rotated: Vec<usize> = (0..AGGREGATES)
            .map(|i| (i + (w + n) as usize) % AGGREGATES)
            .collect();
        let sizes: &[usize] = if (w + n).is_multiple_of(2) {
            &[2, 3]
        } else {
            &[1, 2, 2]
        };
        let mut start = 0;
        for (c, size) in sizes.iter().enumerate() {
            let chunk = &rotated[start..start + size];
            start += size;
            let uow = UnitOfWork::begin(&db).await.unwrap();
            let mut ids = Vec::new();
            let mut saved = false;
            for &a in chunk {
                let step = Step {
                    key: keys[a].clone(),
                    writer: w,
                    n,
                };
                match (w as usize + n as usize + a + c) % 3 {
                    0 => ids.push(
                        uow.record("stream", &keys[a], step, RecordOptions::new())
                            .unwrap(),
                    ),
                    2 if !saved => {
                        saved = true;
                        let m = &mut models[a];
                        m.last_writer = w as i32;
                        m.last_n = n as i32;
                        ids.push(m.record(step));
                        uow.save(m).await.unwrap();
                    }
                    _ => {
                        ids.push(plains[a].record(step));
                        uow.stage(&mut plains[a]).unwrap();
                    }
                }
            }
            uow.commit()
                .await
                .unwrap_or_else(|e| panic!("writer {w}, round {n}: commit failed: {e}"));
            committed.extend(ids);
        }
    }
    committed
}

async fn concurrent_writers_keep_per_aggregate_order(t: TestDb) {
    create_entity_table(&t.db, stream_row::Entity).await;
    let keys: Vec<String> = (0..AGGREGATES).map(|i| format!("agg-{i}")).collect();
    // The aggregates' rows exist before the writers start (they are upserted from then on).
    for k in &keys {
        stream_row::Entity::insert(
            stream_row::Model {
                key: k.clone(),
                last_writer: -1,
                last_n: 0,
                events: Events::new(),
            }
            .into_active_model(),
        )
        .exec(&t.db)
        .await
        .unwrap();
    }

    // (aggregate id, position, message id, writer, n), in delivery order.
    let log = Recorder::<(String, i64, Uuid, u32, u32)>::new();
    let handler = {
        let log = log.clone();
        HandlerEntry::new("ordered", move |e: Step, ctx: HandlerContext| {
            let log = log.clone();
            async move {
                assert_eq!(ctx.aggregate_id(), e.key);
                log.push((
                    ctx.aggregate_id().to_owned(),
                    ctx.position(),
                    ctx.message_id(),
                    e.writer,
                    e.n,
                ));
                Ok::<_, std::convert::Infallible>(())
            }
        })
    };
    let relay = Relay::builder(t.db.clone())
        .registry(Registry::new([handler]).unwrap())
        .concurrency(4)
        .spawn()
        .await
        .unwrap();

    let started = Instant::now();
    let pools = [t.connect_again().await, t.connect_again().await];
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(pools[w as usize % 2].clone(), w, keys.clone())))
        .collect();
    let mut committed: HashSet<Uuid> = HashSet::new();
    for w in writers {
        committed.extend(w.await.unwrap());
    }
    let written = started.elapsed();
    let total = (WRITERS * PER_WRITER) as usize * AGGREGATES;
    assert_eq!(committed.len(), total);

    wait_for("every event delivered", Duration::from_secs(90), || async {
        let seen: HashSet<Uuid> = log.all().iter().map(|e| e.2).collect();
        (seen.len() >= total).then_some(())
    })
    .await;
    relay.shutdown().await;
    let delivered = started.elapsed();

    let all = log.all();
    let mut first: Vec<&(String, i64, Uuid, u32, u32)> = Vec::new();
    let mut seen = HashSet::new();
    for e in &all {
        if seen.insert(e.2) {
            first.push(e);
        }
    }
    assert_eq!(
        seen, committed,
        "exactly the committed events were delivered"
    );
    let mut positions: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut by_writer: HashMap<(&str, u32), Vec<u32>> = HashMap::new();
    for (agg, position, _, w, n) in &first {
        positions.entry(agg.as_str()).or_default().push(*position);
        by_writer.entry((agg.as_str(), *w)).or_default().push(*n);
    }
    let per_aggregate = (WRITERS * PER_WRITER) as i64;
    for (agg, got) in &positions {
        let expected: Vec<i64> = (1..=per_aggregate).collect();
        if *got != expected {
            let out_of_order = got.windows(2).filter(|w| w[1] != w[0] + 1).count();
            panic!(
                "{agg}: positions in first-delivery order are not 1..={per_aggregate} \
                 ({out_of_order} breaks): {got:?}"
            );
        }
    }
    assert_eq!(positions.len(), AGGREGATES);
    for ((agg, w), ns) in &by_writer {
        let expected: Vec<u32> = (1..=PER_WRITER).collect();
        assert_eq!(
            ns, &expected,
            "{agg}: writer {w}'s events in recording order"
        );
    }
    eprintln!(
        "{total} events by {WRITERS} writers: written in {written:?}, delivered in \
         {delivered:?} ({} redeliveries)",
        all.len() - total
    );
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Clones do not duplicate pending events.

async fn clone_and_original_saved_together_write_each_event_once(t: TestDb) {
    create_entity_table(&t.db, account::Entity).await;
    let mut original = account::Model::open("acct-cloned", "Ada");
    original.rename("Ada B.");
    let mut copy = original.clone();
    assert!(copy.events().is_empty(), "a clone starts without events");
    assert_eq!(original.events().len(), 2);
    copy.rename("Ada C.");
    let mut recorded = event_ids(&copy);
    recorded.extend(event_ids(&original));

    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut copy).await.unwrap();
    uow.save(&mut original).await.unwrap();
    assert_eq!(uow.staged(), 3);
    uow.commit().await.expect("no duplicate outbox id");
    assert!(copy.events().is_empty() && original.events().is_empty());

    let rows = messages(&t.db).await;
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), recorded);
    let stored = account::Entity::find_by_id("acct-cloned".to_owned())
        .one(&t.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.name, "Ada B.", "the last save wins");

    // A clone of a model whose events a unit of work holds carries none of them either.
    let mut again = account::Model::open("acct-cloned-2", "Bo");
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut again).await.unwrap();
    let mut copy = again.clone();
    uow.save(&mut copy).await.unwrap();
    assert_eq!(uow.staged(), 1);
    uow.commit().await.unwrap();
    assert_eq!(messages(&t.db).await.len(), 4);
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Ids are validated when recorded, with the same rules on every backend.

fn assert_invalid_id(what: &str, id: &str, result: Result<impl std::fmt::Debug, Error>) {
    match result {
        Err(Error::Event(outbox_seaorm::EventError::InvalidName {
            what: kind, name, ..
        })) => {
            assert_eq!(kind, "aggregate id", "{what}");
            assert_eq!(name, id, "{what}");
        }
        other => panic!("{what} with id {id:?}: expected InvalidName, got {other:?}"),
    }
}

async fn invalid_aggregate_ids_are_rejected_when_recorded(t: TestDb) {
    create_entity_table(&t.db, account::Entity).await;
    let bad = [
        "a\0b".to_owned(),
        String::new(),
        "x".repeat(256),
        // 128 characters, 256 bytes: too long in bytes, whatever the column counts.
        "é".repeat(128),
    ];
    for id in &bad {
        let uow = UnitOfWork::begin(&t.db).await.unwrap();
        let recorded = uow.record(
            "account",
            id,
            AccountOpened { name: "x".into() },
            RecordOptions::new(),
        );
        assert_invalid_id("uow.record", id, recorded);
        assert_eq!(uow.staged(), 0);

        let mut a = account::Model::open(id, "x");
        let saved = uow.save(&mut a).await;
        assert_invalid_id("uow.save", id, saved);
        assert_eq!(a.events().len(), 1, "the event stays on the aggregate");

        let mut plain = PlainStream {
            key: id.clone(),
            events: Events::new(),
        };
        plain.record(AccountOpened { name: "x".into() });
        assert_invalid_id("uow.stage", id, uow.stage(&mut plain));
        assert_eq!(uow.staged(), 0);
        uow.commit().await.unwrap();

        assert_eq!(
            account::Entity::find().count(&t.db).await.unwrap(),
            0,
            "{id:?}: no row was written"
        );
        assert!(messages(&t.db).await.is_empty());
        a.events_mut().discard();
        plain.events_mut().discard();
    }

    // An invalid aggregate type is rejected the same way.
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    match uow.record(
        "",
        "id",
        AccountOpened { name: "x".into() },
        RecordOptions::new(),
    ) {
        Err(Error::Event(outbox_seaorm::EventError::InvalidName { what, .. })) => {
            assert_eq!(what, "aggregate type")
        }
        other => panic!("expected InvalidName for an empty aggregate type, got {other:?}"),
    }
    drop(uow);

    // The longest valid ids (255 bytes, ASCII or not) are stored intact everywhere.
    let good = ["y".repeat(255), format!("{}a", "é".repeat(127))];
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    let mut accounts = Vec::new();
    for id in &good {
        uow.record(
            "account",
            id,
            AccountRenamed { name: "y".into() },
            RecordOptions::new(),
        )
        .unwrap();
        let mut a = account::Model::open(id, "y");
        uow.save(&mut a).await.unwrap();
        accounts.push(a);
    }
    uow.commit().await.unwrap();
    let stored: HashSet<String> = messages(&t.db)
        .await
        .into_iter()
        .map(|m| m.aggregate_id)
        .collect();
    assert_eq!(stored, good.iter().cloned().collect::<HashSet<_>>());
    assert_eq!(account::Entity::find().count(&t.db).await.unwrap(), 2);
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 7. A relay without its tables says which table and how to create it.

async fn relay_without_outbox_tables_fails_to_start_naming_the_table(t: TestDb) {
    fn check(err: Error, table: &str) {
        let shown = err.report();
        match &err {
            Error::Schema { table: named, .. } => assert_eq!(named, table, "{shown}"),
            other => panic!("expected Error::Schema for {table}, got {other:?}"),
        }
        assert!(shown.contains(table), "{shown}");
        assert!(
            shown.contains("create_tables") || shown.contains("OutboxMigration"),
            "says how to create it: {shown}"
        );
        assert!(
            ["does not exist", "no such table", "doesn't exist"]
                .iter()
                .any(|cause| shown.contains(cause)),
            "shows the database's reason: {shown}"
        );
    }
    fn registry() -> Registry {
        Registry::new(Vec::<HandlerEntry>::new()).unwrap()
    }

    // One table missing.
    t.db.execute_unprepared("DROP TABLE outbox_streams")
        .await
        .unwrap();
    match Relay::builder(t.db.clone())
        .registry(registry())
        .build()
        .await
    {
        Ok(_) => panic!("a relay was built without the outbox_streams table"),
        Err(e) => check(e, "outbox_streams"),
    }

    // All of them missing.
    outbox_seaorm::schema::drop_tables(&t.db).await.unwrap();
    match Relay::builder(t.db.clone())
        .registry(registry())
        .build()
        .await
    {
        Ok(_) => panic!("a relay was built without the outbox tables"),
        Err(e) => check(e, "outbox_messages"),
    }
    match Relay::builder(t.db.clone())
        .registry(registry())
        .spawn()
        .await
    {
        Ok(handle) => {
            handle.shutdown().await;
            panic!("a relay was spawned without the outbox tables");
        }
        Err(e) => check(e, "outbox_messages"),
    }
    t.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 8. `Admin::requeue` wakes this process's relays.

async fn requeue_wakes_the_relays_of_this_process(t: TestDb) {
    let calls = Arc::new(AtomicU32::new(0));
    let delivered = Recorder::<Uuid>::new();
    let handler = {
        let (calls, delivered) = (calls.clone(), delivered.clone());
        HandlerEntry::new("flaky", move |_: Flaky, ctx: HandlerContext| {
            let (calls, delivered) = (calls.clone(), delivered.clone());
            async move {
                if calls.fetch_add(1, AtomicOrdering::SeqCst) == 0 {
                    return Err(HandlerError::permanent(std::io::Error::other(
                        "bad template",
                    )));
                }
                delivered.push(ctx.message_id());
                Ok(())
            }
        })
    };
    let relay = Relay::builder(t.db.clone())
        .registry(Registry::new([handler]).unwrap())
        .poll_interval(Duration::from_secs(60))
        .spawn()
        .await
        .unwrap();

    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    let id = uow
        .record("flaky", "f-1", Flaky { n: 1 }, RecordOptions::new())
        .unwrap();
    uow.commit().await.unwrap();
    let admin = Admin::new(t.db.clone());
    wait_for(
        "the message to go dead",
        Duration::from_secs(10),
        || async { (admin.counts().await.unwrap().dead == 1).then_some(()) },
    )
    .await;
    assert_eq!(calls.load(AtomicOrdering::SeqCst), 1);

    let requeued = Instant::now();
    admin.requeue(id).await.unwrap();
    wait_for(
        "the requeued message to be delivered",
        Duration::from_secs(5),
        || async { (!delivered.is_empty()).then_some(()) },
    )
    .await;
    let took = requeued.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "delivered {took:?} after the requeue"
    );
    assert_eq!(delivered.all(), [id]);
    // The outcome is written just after the handler returns.
    wait_for(
        "the delivery to be recorded",
        Duration::from_secs(5),
        || async {
            let c = admin.counts().await.unwrap();
            (c.delivered == 1).then_some(c)
        },
    )
    .await;
    let counts = admin.counts().await.unwrap();
    assert_eq!((counts.dead, counts.pending), (0, 0), "{counts:?}");
    relay.shutdown().await;
    t.cleanup().await;
}
