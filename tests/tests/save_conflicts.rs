//! Saves that collide with something: another row's unique key, the same instance in two
//! open units of work. Each fails at once and loudly, and writes nothing.

use std::time::Duration;

use outbox_seaorm::{Aggregate, DomainEvent, Error, UnitOfWork};
use outbox_tests::{Backend, TestDb, backend_tests, create_entity_table};
use sea_orm::{EntityTrait, QueryOrder};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

backend_tests!(
    a_new_row_whose_unique_key_is_taken_fails_and_leaves_the_other_row_alone,
    the_same_instance_in_two_open_units_of_work_is_refused_at_once,
    concurrent_units_of_work_saving_new_rows_all_commit,
);

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "sc.customer.registered")]
struct Registered {
    email: String,
}

mod customer {
    use outbox_seaorm::{DomainEvents, Events};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, DomainEvents)]
    #[sea_orm(table_name = "sc_customers")]
    #[domain_events(aggregate = "customer")]
    pub(crate) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub(crate) id: Uuid,
        #[sea_orm(unique)]
        pub(crate) email: String,
        pub(crate) name: String,
        #[sea_orm(ignore)]
        #[events]
        pub(crate) events: Events,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn register(email: &str, name: &str) -> customer::Model {
    let mut c = customer::Model {
        id: Uuid::now_v7(),
        email: email.into(),
        name: name.into(),
        events: Default::default(),
    };
    c.record(Registered {
        email: email.into(),
    });
    c
}

async fn outbox_rows(t: &TestDb) -> usize {
    outbox_seaorm::entity::message::Entity::find()
        .all(&t.db)
        .await
        .unwrap()
        .len()
}

async fn a_new_row_whose_unique_key_is_taken_fails_and_leaves_the_other_row_alone(t: TestDb) {
    // MariaDB's ON DUPLICATE KEY UPDATE fires on any unique key: an upsert there would have
    // overwritten Ada's row with Mallory's name and delivered an event about a row that does
    // not exist.
    create_entity_table(&t.db, customer::Entity).await;
    let mut ada = register("a@x", "Ada");
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut ada).await.unwrap();
    uow.commit().await.unwrap();

    let mut mallory = register("a@x", "Mallory");
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    let err = uow.save(&mut mallory).await.unwrap_err();
    assert!(matches!(err, Error::Db(_)), "{err}");
    assert!(
        err.report().to_lowercase().contains("unique"),
        "{}",
        err.report()
    );
    drop(uow);
    let rows = customer::Entity::find()
        .order_by_asc(customer::Column::Id)
        .all(&t.db)
        .await
        .unwrap();
    assert_eq!(rows, [ada], "Ada's row is untouched");
    assert_eq!(outbox_rows(&t).await, 1, "only Ada's event");
    assert_eq!(
        mallory.events().len(),
        1,
        "Mallory's event stays on the aggregate"
    );
    mallory.events_mut().discard();

    // An existing row is still updated by `save`.
    let mut ada = rows.into_iter().next().unwrap();
    ada.name = "Ada L.".into();
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut ada).await.unwrap();
    uow.commit().await.unwrap();
    let stored = customer::Entity::find_by_id(ada.id)
        .one(&t.db)
        .await
        .unwrap();
    assert_eq!(stored.unwrap().name, "Ada L.");
    t.cleanup().await;
}

async fn the_same_instance_in_two_open_units_of_work_is_refused_at_once(t: TestDb) {
    if t.backend == Backend::Sqlite {
        // SQLite has one writer: the second unit of work cannot even begin until the first
        // ends, so the instance cannot be in two at once.
        return t.cleanup().await;
    }
    create_entity_table(&t.db, customer::Entity).await;
    let mut c = register("c@x", "Cy");
    let first = UnitOfWork::begin(&t.db).await.unwrap();
    first.save(&mut c).await.unwrap();
    // Without the check the second save would wait for the first one's row lock, held by
    // this very task: for ever on PostgreSQL, 50 s then an error on MariaDB.
    let second = UnitOfWork::begin(&t.db).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), second.save(&mut c))
        .await
        .expect("refused at once, not waiting for a lock");
    assert!(
        matches!(refused, Err(Error::StagedElsewhere { .. })),
        "{refused:?}"
    );
    drop(second);
    first.commit().await.unwrap();
    assert!(c.events().is_empty(), "committed by the first");
    assert_eq!(outbox_rows(&t).await, 1);

    // Once the first has ended, the instance can be saved again.
    c.name = "Cyrus".into();
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut c).await.unwrap();
    uow.commit().await.unwrap();
    t.cleanup().await;
}

async fn concurrent_units_of_work_saving_new_rows_all_commit(t: TestDb) {
    // Time-ordered keys all land at the end of the index. A save that looked the key up with
    // `FOR UPDATE` before inserting took a gap lock there on MariaDB, and two such units of
    // work deadlocked (1213) on each other's gap.
    create_entity_table(&t.db, customer::Entity).await;
    let tasks: Vec<_> = (0..6)
        .map(|w| {
            let db = t.db.clone();
            tokio::spawn(async move {
                for i in 0..15 {
                    let mut c = register(&format!("{w}-{i}@x"), "N");
                    let uow = UnitOfWork::begin(&db).await?;
                    uow.save(&mut c).await?;
                    // Hold the unit of work open so that the others' saves interleave.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    uow.commit().await?;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("every unit of work commits");
    }
    let rows = customer::Entity::find().all(&t.db).await.unwrap().len();
    assert_eq!(rows, 90);
    assert_eq!(outbox_rows(&t).await, 90);
    t.cleanup().await;
}
