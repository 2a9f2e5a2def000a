//! The inbox: effects once per consumer and message, whatever the broker redelivers.

use std::time::Duration;

use outbox_seaorm::{
    HandlerContext, HandlerContextExt, HandlerEntry, HandlerError, Inbox, Processed, Registry,
    Relay, RetryPolicy, UnitOfWork,
};
use outbox_tests::{TestDb, backend_tests, wait_for};
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
            .process("billing", id, async |uow| {
                bump(uow, "charges").await?;
                Ok::<_, outbox_seaorm::Error>("charged")
            })
            .await
            .unwrap();
        assert_eq!(outcome.is_duplicate(), expected_duplicate);
    }
    // Another consumer of the same message has its own mark.
    let other = inbox
        .process("audit", id, async |uow| {
            bump(uow, "audits").await?;
            Ok::<_, outbox_seaorm::Error>(())
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

async fn ship(uow: &outbox_seaorm::UnitOfWork) -> Result<(), outbox_seaorm::Error> {
    bump(uow, "shipments").await?;
    // Hold the transaction open so the other delivery arrives while it runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

async fn failed_work_leaves_no_mark_so_a_retry_runs_it(t: TestDb) {
    let inbox = Inbox::new(t.db.clone());
    let id = Uuid::now_v7();
    let failed = inbox
        .process("mailer", id, async |uow| {
            bump(uow, "mails").await?;
            Err::<(), _>(outbox_seaorm::Error::InvalidSetting("smtp down"))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(
        counter(&t.db, "mails").await,
        0,
        "rolled back with the mark"
    );
    let retried = inbox
        .process("mailer", id, async |uow| {
            bump(uow, "mails").await?;
            Ok::<_, outbox_seaorm::Error>(())
        })
        .await
        .unwrap();
    assert_eq!(retried, Processed::Done(()));
    assert_eq!(counter(&t.db, "mails").await, 1);
    t.cleanup().await;
}

async fn in_process_handler_asks_for_exactly_once(t: TestDb) {
    // The handler's effect commits, then the handler fails: the relay runs it again, and the
    // inbox keeps the effect from happening twice.
    let registry =
        Registry::new([HandlerEntry::erased("ledger", "test.any", LedgerHandler)]).unwrap();
    let relay = Relay::builder(t.db.clone())
        .registry(registry)
        .retry(RetryPolicy::exponential(Duration::from_millis(1)).jitter(false))
        .build()
        .await
        .unwrap();
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.record("account", 1, Any {}, Default::default())
        .unwrap();
    uow.commit().await.unwrap();
    let report = wait_for("the retry", Duration::from_secs(10), || async {
        let r = relay.drain().await.unwrap();
        (r.delivered == 1).then_some(r)
    })
    .await;
    assert_eq!(report.retried, 1, "{report:?}");
    assert_eq!(counter(&t.db, "ledger").await, 1);
    t.cleanup().await;
}

#[derive(serde::Serialize, serde::Deserialize, outbox_seaorm::DomainEvent)]
#[event(name = "test.any")]
struct Any {}

struct LedgerHandler;

impl outbox_seaorm::Handler for LedgerHandler {
    fn call<'a>(
        &'a self,
        ctx: &'a HandlerContext,
    ) -> outbox_seaorm::BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            ctx.exactly_once(async |uow| {
                bump(uow, "ledger").await?;
                Ok(())
            })
            .await?;
            if ctx.attempt() == 1 {
                return Err(HandlerError::retry(std::io::Error::other(
                    "failed after the effect",
                )));
            }
            Ok(())
        })
    }
}

async fn old_inbox_marks_are_deleted(t: TestDb) {
    let inbox = Inbox::new(t.db.clone());
    for _ in 0..5 {
        inbox
            .process("c", Uuid::now_v7(), async |_| {
                Ok::<_, outbox_seaorm::Error>(())
            })
            .await
            .unwrap();
    }
    let none = inbox
        .delete_processed_before(Duration::from_secs(3600), 100)
        .await
        .unwrap();
    assert_eq!(none, 0, "recent marks are kept");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let all = inbox
        .delete_processed_before(Duration::from_millis(10), 3)
        .await
        .unwrap();
    assert_eq!(all, 3, "bounded by the limit");
    t.cleanup().await;
}
