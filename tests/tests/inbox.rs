//! The inbox: effects once per consumer and message, whatever the broker redelivers.

use std::sync::Arc;
use std::time::Duration;

use outbox_seaorm::core::{Envelope, Extensions, HandlerContext, Headers, Upcasters, dispatch};
use outbox_seaorm::{ExactlyOnce, HandlerEntry, HandlerError, Inbox, Processed};
use outbox_tests::{TestDb, backend_tests};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use uuid::Uuid;

backend_tests!(
    a_message_processed_twice_has_its_effect_once,
    two_racing_deliveries_on_two_connections_run_the_effect_once,
    failed_work_leaves_no_mark_so_a_retry_runs_it,
    in_process_handler_asks_for_exactly_once,
    old_inbox_marks_are_deleted,
);

async fn bump(db: &impl ConnectionTrait, key: &str) -> Result<(), sea_orm::DbErr> {
    let sql = match db.get_database_backend() {
        DbBackend::MySql => {
            "INSERT INTO counters (k, v) VALUES (?, 1) ON DUPLICATE KEY UPDATE v = v + 1"
        }
        DbBackend::Postgres => {
            "INSERT INTO counters (k, v) VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET v = counters.v + 1"
        }
        _ => "INSERT INTO counters (k, v) VALUES (?, 1) ON CONFLICT (k) DO UPDATE SET v = v + 1",
    };
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        sql,
        [key.to_owned().into()],
    ))
    .await
    .map(|_| ())
}

async fn counter(db: &DatabaseConnection, key: &str) -> i64 {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => "SELECT v FROM counters WHERE k = $1",
        _ => "SELECT v FROM counters WHERE k = ?",
    };
    db.query_one_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        sql,
        [key.to_owned().into()],
    ))
    .await
    .unwrap()
    .map(|r| r.try_get::<i32>("", "v").unwrap() as i64)
    .unwrap_or(0)
}

async fn a_message_processed_twice_has_its_effect_once(t: TestDb) {
    let inbox = Inbox::new(t.db.clone());
    let id = Uuid::now_v7();
    for expected_duplicate in [false, true] {
        let outcome = inbox
            .process("billing", id, |uow| {
                Box::pin(async move {
                    bump(uow, "charges").await?;
                    Ok::<_, outbox_seaorm::Error>("charged")
                })
            })
            .await
            .unwrap();
        assert_eq!(outcome.is_duplicate(), expected_duplicate);
    }
    // Another consumer of the same message has its own mark.
    let other = inbox
        .process("audit", id, |uow| {
            Box::pin(async move {
                bump(uow, "audits").await?;
                Ok::<_, outbox_seaorm::Error>(())
            })
        })
        .await
        .unwrap();
    assert_eq!(other, Processed::Done(()));
    assert_eq!(counter(&t.db, "charges").await, 1);
    assert_eq!(counter(&t.db, "audits").await, 1);
    t.cleanup().await;
}

async fn two_racing_deliveries_on_two_connections_run_the_effect_once(t: TestDb) {
    let id = Uuid::now_v7();
    let a = Inbox::new(t.db.clone());
    let b = Inbox::new(t.connect_again().await);
    let (ra, rb) = tokio::join!(
        a.process("shipping", id, ship),
        b.process("shipping", id, ship)
    );
    let outcomes = [ra.unwrap(), rb.unwrap()];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_duplicate()).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(counter(&t.db, "shipments").await, 1);
    t.cleanup().await;
}

fn ship(
    uow: &outbox_seaorm::UnitOfWork,
) -> outbox_seaorm::core::BoxFuture<'_, Result<(), outbox_seaorm::Error>> {
    Box::pin(async move {
        bump(uow, "shipments").await?;
        // Hold the transaction open so the other delivery arrives while it runs.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    })
}

async fn failed_work_leaves_no_mark_so_a_retry_runs_it(t: TestDb) {
    let inbox = Inbox::new(t.db.clone());
    let id = Uuid::now_v7();
    let failed = inbox
        .process("mailer", id, |uow| {
            Box::pin(async move {
                bump(uow, "mails").await?;
                Err::<(), _>(outbox_seaorm::Error::InvalidSetting("smtp down"))
            })
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(
        counter(&t.db, "mails").await,
        0,
        "rolled back with the mark"
    );
    let retried = inbox
        .process("mailer", id, |uow| {
            Box::pin(async move {
                bump(uow, "mails").await?;
                Ok::<_, outbox_seaorm::Error>(())
            })
        })
        .await
        .unwrap();
    assert_eq!(retried, Processed::Done(()));
    assert_eq!(counter(&t.db, "mails").await, 1);
    t.cleanup().await;
}

async fn in_process_handler_asks_for_exactly_once(t: TestDb) {
    let handler = HandlerEntry::erased("ledger", "test.any", LedgerHandler);
    let mut extensions = Extensions::new();
    extensions.insert(t.db.clone());
    let extensions = Arc::new(extensions);
    let envelope = Arc::new(Envelope {
        message_id: Uuid::now_v7(),
        sequence: 1,
        aggregate_type: "account".into(),
        aggregate_id: "1".into(),
        event_type: "test.any".into(),
        event_version: 1,
        payload: "{}".into(),
        headers: Headers::default(),
        occurred_at: chrono::Utc::now(),
    });
    // The same message delivered twice (a relay crashed after the first handling).
    for attempt in 1..=2 {
        let ctx = HandlerContext::new(
            envelope.clone(),
            "ledger".into(),
            attempt,
            extensions.clone(),
            Arc::new(Upcasters::new()),
        );
        dispatch::invoke(&handler, &ctx, Duration::from_secs(10))
            .await
            .unwrap();
    }
    assert_eq!(counter(&t.db, "ledger").await, 1);
    t.cleanup().await;
}

struct LedgerHandler;

impl outbox_seaorm::core::Handler for LedgerHandler {
    fn call<'a>(
        &'a self,
        ctx: &'a HandlerContext,
    ) -> outbox_seaorm::core::BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            ctx.exactly_once(|uow| {
                Box::pin(async move {
                    bump(uow, "ledger").await.map_err(HandlerError::retry)?;
                    Ok(())
                })
            })
            .await?;
            Ok(())
        })
    }
}

async fn old_inbox_marks_are_deleted(t: TestDb) {
    let inbox = Inbox::new(t.db.clone());
    for _ in 0..5 {
        inbox
            .process("c", Uuid::now_v7(), |_| {
                Box::pin(async { Ok::<_, outbox_seaorm::Error>(()) })
            })
            .await
            .unwrap();
    }
    let none = inbox
        .delete_processed_before(chrono::Utc::now() - chrono::Duration::hours(1), 100)
        .await
        .unwrap();
    assert_eq!(none, 0, "recent marks are kept");
    let all = inbox
        .delete_processed_before(chrono::Utc::now() + chrono::Duration::seconds(1), 3)
        .await
        .unwrap();
    assert_eq!(all, 3, "bounded by the limit");
    t.cleanup().await;
}
