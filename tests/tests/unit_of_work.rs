//! The write side: what a unit of work leaves in the outbox on commit and on rollback.

use std::collections::HashMap;

use outbox_seaorm::entity::{MessageStatus, message};
use outbox_seaorm::{
    Aggregate, DomainEvent, Error, Events, OutboxConfig, RecordOptions, UnitOfWork, save_aggregate,
    stage_aggregate,
};
use outbox_tests::fixtures::{Counter, OrderCancelled, OrderPlaced, order};
use outbox_tests::{TestDb, backend_tests};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryOrder, Statement,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

backend_tests!(
    commit_writes_every_event_once_in_recording_order,
    explicit_rollback_leaves_no_row,
    rollback_by_drop_leaves_no_row,
    rollback_by_error_leaves_no_row,
    save_upserts_new_and_existing_client_generated_ids,
    insert_and_update_go_through_seaorm,
    every_seaorm_call_on_the_unit_of_work_shares_its_transaction,
    failed_save_puts_the_events_back,
    unserializable_event_is_a_typed_error_and_writes_nothing,
    plain_domain_struct_is_staged,
    save_aggregate_on_a_plain_transaction_is_atomic,
    ad_hoc_event_and_headers,
    delayed_event_keeps_its_not_before_time,
    custom_table_names,
);

async fn messages(db: &DatabaseConnection) -> Vec<message::Model> {
    message::Entity::find()
        .order_by_asc(message::Column::Seq)
        .all(db)
        .await
        .unwrap()
}

async fn count_orders(db: &DatabaseConnection) -> usize {
    order::Entity::find().all(db).await.unwrap().len()
}

async fn commit_writes_every_event_once_in_recording_order(t: TestDb) {
    let mut a = order::Model::place("ada", 1000);
    a.confirm();
    let mut b = order::Model::place("bob", 250);
    let expected: Vec<(Uuid, String)> = a
        .events()
        .iter()
        .chain(b.events().iter())
        .map(|e| (e.message_id, e.event_type.to_owned()))
        .collect();

    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut a).await.unwrap();
    uow.save(&mut b).await.unwrap();
    b.cancel("changed mind");
    uow.save(&mut b).await.unwrap();
    assert_eq!(uow.staged(), 4);
    let correlation = uow.correlation_id();
    uow.commit().await.unwrap();

    assert!(a.events().is_empty() && b.events().is_empty());
    let rows = messages(&t.db).await;
    assert_eq!(rows.len(), 4, "one row per recorded event");
    let got: Vec<(Uuid, String)> = rows
        .iter()
        .take(3)
        .map(|r| (r.id, r.event_type.clone()))
        .collect();
    assert_eq!(got, expected, "recording order");
    assert_eq!(rows[3].event_type, "order.cancelled");
    for r in &rows {
        assert_eq!(r.status, MessageStatus::Pending);
        assert_eq!(r.aggregate_type, "order");
        assert_eq!(r.attempts, 0);
        assert_eq!(
            r.id.get_version(),
            Some(uuid::Version::SortRand),
            "message ids are UUIDv7"
        );
        assert_eq!(r.headers["correlation_id"], correlation.to_string());
        assert!(r.headers.get("causation_id").is_none());
        assert!(r.locked_by.is_none() && r.delivered_at.is_none());
    }
    assert_eq!(rows[0].aggregate_id, a.id.to_string());
    assert_eq!(rows[2].aggregate_id, b.id.to_string());
    let placed: OrderPlaced = serde_json::from_value(rows[0].payload.clone()).unwrap();
    assert_eq!(
        placed,
        OrderPlaced {
            order_id: a.id,
            amount: 1000
        }
    );
    assert_eq!(rows[0].event_version, 1);
    let cancelled: OrderCancelled = serde_json::from_value(rows[3].payload.clone()).unwrap();
    assert_eq!(cancelled.reason, "changed mind");
    assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(rows[0].occurred_at <= rows[1].occurred_at);
    assert_eq!(count_orders(&t.db).await, 2);
    t.cleanup().await;
}

async fn explicit_rollback_leaves_no_row(t: TestDb) {
    let mut o = order::Model::place("ada", 1);
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut o).await.unwrap();
    uow.rollback().await.unwrap();
    assert!(messages(&t.db).await.is_empty());
    assert_eq!(count_orders(&t.db).await, 0);
    t.cleanup().await;
}

async fn rollback_by_drop_leaves_no_row(t: TestDb) {
    {
        let mut o = order::Model::place("ada", 1);
        let uow = UnitOfWork::begin(&t.db).await.unwrap();
        uow.save(&mut o).await.unwrap();
        assert_eq!(uow.staged(), 1);
    }
    assert!(messages(&t.db).await.is_empty());
    assert_eq!(count_orders(&t.db).await, 0);
    t.cleanup().await;
}

async fn rollback_by_error_leaves_no_row(t: TestDb) {
    async fn place_twice(db: &DatabaseConnection) -> Result<(), Error> {
        let mut first = order::Model::place("ada", 1);
        let uow = UnitOfWork::begin(db).await?;
        uow.save(&mut first).await?;
        // A second insert of the same primary key fails; `?` returns and the unit of work is
        // dropped with it.
        let mut dup = first.clone();
        dup.events = Events::new();
        uow.insert(&mut dup).await?;
        uow.commit().await
    }
    let err = place_twice(&t.db).await.unwrap_err();
    assert!(matches!(err, Error::Db(_)), "{err:?}");
    assert!(messages(&t.db).await.is_empty());
    assert_eq!(count_orders(&t.db).await, 0);
    t.cleanup().await;
}

async fn save_upserts_new_and_existing_client_generated_ids(t: TestDb) {
    let mut o = order::Model::place("ada", 100);
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut o).await.unwrap();
    uow.commit().await.unwrap();

    // Load it back, as a later request would: the events field comes back empty.
    let mut loaded = order::Entity::find_by_id(o.id)
        .one(&t.db)
        .await
        .unwrap()
        .unwrap();
    assert!(loaded.events.is_empty());
    loaded.confirm();
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut loaded).await.unwrap();
    uow.commit().await.unwrap();

    let stored = order::Entity::find_by_id(o.id)
        .one(&t.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, "confirmed");
    assert_eq!(count_orders(&t.db).await, 1);
    let types: Vec<String> = messages(&t.db)
        .await
        .into_iter()
        .map(|m| m.event_type)
        .collect();
    assert_eq!(types, ["order.placed", "order.confirmed"]);
    t.cleanup().await;
}

async fn insert_and_update_go_through_seaorm(t: TestDb) {
    let mut o = order::Model::place("ada", 5);
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.insert(&mut o).await.unwrap();
    o.confirm();
    uow.update(&mut o).await.unwrap();
    uow.commit().await.unwrap();
    assert_eq!(messages(&t.db).await.len(), 2);

    // Updating a row that does not exist fails, and nothing of that unit is written.
    let mut ghost = order::Model::place("ghost", 1);
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    let err = uow.update(&mut ghost).await.unwrap_err();
    assert!(matches!(err, Error::RowMissing { .. }), "{err:?}");
    drop(uow);
    assert_eq!(messages(&t.db).await.len(), 2);
    assert_eq!(ghost.events().len(), 1, "the failed update keeps the event");
    ghost.events.discard();
    t.cleanup().await;
}

async fn every_seaorm_call_on_the_unit_of_work_shares_its_transaction(t: TestDb) {
    let mut o = order::Model::place("ada", 7);
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut o).await.unwrap();
    // A plain SeaORM insert, a raw statement and a nested transaction, all on the unit of work.
    // (These orders' events are discarded: a plain SeaORM write does not stage them.)
    let mut other = order::Model::place("bob", 8);
    other.events.discard();
    let am: order::ActiveModel = other.into();
    am.insert(&uow).await.unwrap();
    uow.execute_raw(Statement::from_string(
        uow.get_database_backend(),
        "INSERT INTO counters (k, v) VALUES ('x', 1)",
    ))
    .await
    .unwrap();
    let nested = uow.begin().await.unwrap();
    let mut third = order::Model::place("cy", 9);
    third.events.discard();
    let third: order::ActiveModel = third.into();
    third.insert(&nested).await.unwrap();
    nested.commit().await.unwrap();
    assert_eq!(
        order::Entity::find().all(&uow).await.unwrap().len(),
        3,
        "reads on the unit of work see its own writes"
    );
    uow.rollback().await.unwrap();

    assert_eq!(count_orders(&t.db).await, 0);
    assert!(messages(&t.db).await.is_empty());
    let counters =
        t.db.query_all_raw(Statement::from_string(
            t.db.get_database_backend(),
            "SELECT k FROM counters",
        ))
        .await
        .unwrap();
    assert!(counters.is_empty());
    t.cleanup().await;
}

async fn failed_save_puts_the_events_back(t: TestDb) {
    let mut existing = order::Model::place("ada", 1);
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut existing).await.unwrap();
    uow.commit().await.unwrap();

    let mut dup = existing.clone();
    dup.events = Events::new();
    dup.confirm();
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    assert!(uow.insert(&mut dup).await.is_err());
    assert_eq!(dup.events().len(), 1, "the event is still recorded");
    assert_eq!(uow.staged(), 0);
    drop(uow);
    dup.events.discard();
    t.cleanup().await;
}

/// An event whose map has non-string keys, which JSON cannot represent.
#[derive(Serialize, Deserialize, DomainEvent)]
#[event(name = "test.unserializable")]
struct Unserializable {
    by_pair: HashMap<(u8, u8), u8>,
}

async fn unserializable_event_is_a_typed_error_and_writes_nothing(t: TestDb) {
    let mut o = order::Model::place("ada", 1);
    o.events.record(Unserializable {
        by_pair: HashMap::from([((1, 2), 3)]),
    });
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    let err = uow.save(&mut o).await.unwrap_err();
    match &err {
        Error::Event(outbox_seaorm::core::Error::Serialize { event_type, .. }) => {
            assert_eq!(event_type, "test.unserializable")
        }
        other => panic!("expected a serialize error, got {other:?}"),
    }
    assert_eq!(o.events().len(), 2, "nothing was taken, nothing lost");
    assert_eq!(uow.staged(), 0);
    uow.commit().await.unwrap();
    assert!(messages(&t.db).await.is_empty());
    assert_eq!(
        count_orders(&t.db).await,
        0,
        "checked before the row was written"
    );
    o.events.discard();
    t.cleanup().await;
}

async fn plain_domain_struct_is_staged(t: TestDb) {
    let mut c = Counter::new("visits");
    c.bump();
    c.bump();
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.execute_raw(Statement::from_sql_and_values(
        uow.get_database_backend(),
        match uow.get_database_backend() {
            sea_orm::DbBackend::Postgres => "INSERT INTO counters (k, v) VALUES ($1, $2)",
            _ => "INSERT INTO counters (k, v) VALUES (?, ?)",
        },
        [c.key.clone().into(), (c.value as i32).into()],
    ))
    .await
    .unwrap();
    assert_eq!(uow.stage(&mut c).unwrap(), 2);
    uow.commit().await.unwrap();
    let rows = messages(&t.db).await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.aggregate_type == "counter" && r.aggregate_id == "visits")
    );
    assert_eq!(rows[1].payload["n"], 2);
    t.cleanup().await;
}

async fn save_aggregate_on_a_plain_transaction_is_atomic(t: TestDb) {
    let mut kept = order::Model::place("ada", 1);
    let txn = t.db.begin().await.unwrap();
    let a = save_aggregate(&txn, &mut kept).await.unwrap();
    let mut c = Counter::new("k");
    c.bump();
    let b = stage_aggregate(&txn, &mut c).await.unwrap();
    txn.commit().await.unwrap();
    a.committed();
    b.committed();
    assert!(kept.events().is_empty() && c.events().is_empty());

    let mut dropped = order::Model::place("bob", 2);
    let txn = t.db.begin().await.unwrap();
    let written = save_aggregate(&txn, &mut dropped).await.unwrap();
    txn.rollback().await.unwrap();
    drop(written);
    assert_eq!(
        dropped.events().len(),
        1,
        "rolled back: the event is back on the aggregate"
    );

    let rows = messages(&t.db).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].aggregate_id, kept.id.to_string());
    assert_eq!(rows[1].aggregate_type, "counter");
    assert_eq!(count_orders(&t.db).await, 1);
    t.cleanup().await;
}

async fn ad_hoc_event_and_headers(t: TestDb) {
    let mut uow = UnitOfWork::begin(&t.db).await.unwrap();
    let request_id = Uuid::now_v7();
    uow.set_correlation_id(request_id);
    let id = uow
        .record(
            "payment",
            42,
            OrderCancelled {
                order_id: Uuid::nil(),
                reason: "fraud".into(),
            },
            RecordOptions::new().header("tenant", "acme"),
        )
        .unwrap();
    // A header becomes a CloudEvents extension attribute: its name must be one.
    for bad in ["x-tenant", "id"] {
        let refused = uow.record(
            "payment",
            42,
            OrderCancelled {
                order_id: Uuid::nil(),
                reason: "fraud".into(),
            },
            RecordOptions::new().header(bad, "acme"),
        );
        assert!(
            matches!(
                refused,
                Err(outbox_seaorm::Error::Event(
                    outbox_seaorm::core::Error::InvalidName { .. }
                ))
            ),
            "{bad}: {refused:?}"
        );
        if bad == "x-tenant" {
            assert_eq!(
                refused.unwrap_err().to_string(),
                outbox_tests::said::BAD_HEADER
            );
        }
    }
    assert_eq!(uow.staged(), 1, "the refused ones were not staged");
    uow.commit().await.unwrap();
    let rows = messages(&t.db).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, id);
    assert_eq!(rows[0].aggregate_type, "payment");
    assert_eq!(rows[0].aggregate_id, "42");
    assert_eq!(rows[0].headers["tenant"], "acme");
    assert_eq!(rows[0].headers["correlation_id"], request_id.to_string());
    t.cleanup().await;
}

async fn delayed_event_keeps_its_not_before_time(t: TestDb) {
    let at = chrono::Utc::now() + chrono::Duration::hours(1);
    let mut o = order::Model::place("ada", 1);
    o.events.record_with(
        OrderCancelled {
            order_id: o.id,
            reason: "unpaid".into(),
        },
        RecordOptions::new().not_before(at),
    );
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.save(&mut o).await.unwrap();
    uow.commit().await.unwrap();
    let rows = messages(&t.db).await;
    assert!(rows[0].not_before.is_none());
    let stored = rows[1].not_before.expect("not_before");
    assert!(
        (stored - at).num_milliseconds().abs() < 1,
        "{stored} vs {at}"
    );
    assert_eq!(rows[1].available_at, stored);
    t.cleanup().await;
}

async fn custom_table_names(t: TestDb) {
    let config = OutboxConfig::new().with_prefix("billing_").unwrap();
    outbox_seaorm::schema::create_tables(&t.db, &config)
        .await
        .unwrap();
    let mut o = order::Model::place("ada", 1);
    let uow = UnitOfWork::begin_with(&t.db, &config).await.unwrap();
    uow.save(&mut o).await.unwrap();
    uow.commit().await.unwrap();
    assert!(messages(&t.db).await.is_empty(), "default table untouched");
    let n =
        t.db.query_one_raw(Statement::from_string(
            t.db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM billing_outbox_messages",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(n, 1);
    outbox_seaorm::schema::drop_tables(&t.db, &config)
        .await
        .unwrap();
    t.cleanup().await;
}
