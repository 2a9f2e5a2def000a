//! What an operator sees and does: status, listings with filters, one message in full, and
//! requeue or discard of everything a filter matches.

use outbox_seaorm::RecordOptions;
use outbox_seaorm::entity::{DeliveryStatus, MessageStatus, message};
use outbox_seaorm::{Admin, MessageFilter, UnitOfWork};
use outbox_tests::fixtures::{FromANewerVersion, Numbered, seed_dead_letters};
use outbox_tests::{TestDb, backend_tests};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

backend_tests!(status_lists_and_bulk_actions_see_what_is_in_the_outbox,);

async fn status_lists_and_bulk_actions_see_what_is_in_the_outbox(t: TestDb) {
    let relay = seed_dead_letters(&t.db).await;
    relay.drain().await.unwrap();
    // Written by a newer version: no relay here knows the type, so these wait.
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    for n in 0..2 {
        uow.record("order", "o-1", FromANewerVersion { n }, Default::default())
            .unwrap();
    }
    uow.commit().await.unwrap();
    relay.drain().await.unwrap();
    let admin = Admin::new(t.db.clone());

    let status = admin.status().await.unwrap();
    assert_eq!((status.pending, status.dead), (2, 3), "{status:?}");
    assert_eq!(status.delivered_last_hour, 3);
    assert_eq!(
        status.unknown_event_type, 1,
        "the first one waits; the second is behind it"
    );
    assert_eq!(status.backlog.len(), 1);
    assert_eq!(status.backlog[0].event_type, "test.from-a-newer-version");
    assert_eq!(status.backlog[0].pending, 2);
    assert!(status.oldest_pending_age_secs.is_some());
    let mail = status
        .dead_letters
        .iter()
        .find(|g| g.handler.as_deref() == Some("mail"))
        .expect("dead letters of `mail`");
    assert_eq!(
        (mail.count, mail.error_kind.as_deref()),
        (3, Some("handler_failed"))
    );

    // Listings: filters, keyset pages, counts.
    let dead = MessageFilter::new()
        .status(MessageStatus::Dead)
        .handler("mail");
    let all = admin.list(&dead).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|m| m.aggregate_id.as_str()).collect();
    assert_eq!(ids, ["agg-0", "agg-2", "agg-4"]);
    assert_eq!(admin.count(&dead).await.unwrap(), 3);
    let first = admin.list(&dead.clone().limit(2)).await.unwrap();
    let rest = admin
        .list(&dead.clone().after(first[1].sequence))
        .await
        .unwrap();
    assert_eq!((first.len(), rest.len()), (2, 1));
    assert_eq!(rest[0].message_id, all[2].message_id);
    let by_kind = MessageFilter::new().error_kind("handler_failed");
    assert_eq!(admin.count(&by_kind).await.unwrap(), 3);
    let of_one = MessageFilter::new()
        .aggregate_type("counter")
        .aggregate_id("agg-1");
    let one = admin.list(&of_one).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].status, "delivered");
    assert!(
        admin
            .list(&MessageFilter::new().event_type("nope"))
            .await
            .unwrap()
            .is_empty()
    );

    // One message in full.
    let shown = admin.show(all[0].message_id).await.unwrap().expect("found");
    assert_eq!(shown.payload["key"], "agg-0");
    assert!(
        shown.headers.get("correlation_id").is_some(),
        "{:?}",
        shown.headers
    );
    assert_eq!(shown.deliveries.len(), 1);
    assert_eq!(shown.deliveries[0].status, DeliveryStatus::Dead);
    assert_eq!(shown.deliveries[0].attempts, 1);
    assert!(admin.show(Uuid::now_v7()).await.unwrap().is_none());

    // Act on everything a filter matches.
    let requeued = admin
        .requeue_matching(&MessageFilter::new().handler("mail").aggregate_id("agg-0"))
        .await
        .unwrap();
    assert_eq!(requeued, 1);
    let discarded = admin.discard_matching(&dead).await.unwrap();
    assert_eq!(discarded, 2, "the requeued one is pending now, not dead");
    let status = admin.status().await.unwrap();
    assert_eq!((status.pending, status.dead), (3, 0), "{status:?}");

    // A delayed message recorded long ago is not late before its time; a message dead as a
    // whole, whatever its kind, is in the dead-letter groups.
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    let later = chrono::Utc::now() + chrono::Duration::days(1);
    let delayed = uow
        .record(
            "later",
            "l-1",
            Numbered {
                key: "l-1".into(),
                n: 1,
            },
            RecordOptions::new().not_before(later),
        )
        .unwrap();
    uow.commit().await.unwrap();
    message::Entity::update_many()
        .filter(message::Column::Status.eq(MessageStatus::Pending))
        .col_expr(
            message::Column::OccurredAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::minutes(10)),
        )
        .exec(&t.db)
        .await
        .unwrap();
    let status = admin.status().await.unwrap();
    let oldest = status.oldest_pending_age_secs.unwrap();
    assert!(
        (550.0..700.0).contains(&oldest),
        "the due messages are 10 minutes old, the delayed one is not late: {status:?}"
    );
    message::Entity::update_many()
        .col_expr(message::Column::Status, Expr::value(MessageStatus::Dead))
        .col_expr(message::Column::LastErrorKind, Expr::value("upcast"))
        .filter(message::Column::Id.eq(delayed))
        .exec(&t.db)
        .await
        .unwrap();
    let status = admin.status().await.unwrap();
    assert!(
        status
            .dead_letters
            .iter()
            .any(|g| g.handler.is_none() && g.error_kind.as_deref() == Some("upcast")),
        "{status:?}"
    );
    t.cleanup().await;
}
