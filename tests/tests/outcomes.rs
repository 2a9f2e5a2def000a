//! Whatever a handler says, whatever the pool does (#17): hostile error text, outcome writes
//! that fail, lost leases, careful mode under shutdown, panicking groups.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use outbox_seaorm::entity::{MessageStatus, delivery, message};
use outbox_seaorm::{
    Admin, HandlerContext, HandlerEntry, MAX_ERROR_BYTES, Registry, RetryPolicy, UnitOfWork,
};
use outbox_tests::fixtures::{OrderPlaced, order};
use outbox_tests::{TestDb, backend_tests, wait_for};
use sea_orm::{DatabaseConnection, EntityTrait, QueryOrder};

backend_tests!(hostile_error_text_is_stored_sanitized_and_runs_are_exact,);

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_millis(1))
        .max_delay(Duration::from_millis(5))
        .jitter(false)
        .max_attempts(attempts)
}

async fn rows(db: &DatabaseConnection) -> Vec<message::Model> {
    message::Entity::find()
        .order_by_asc(message::Column::Seq)
        .all(db)
        .await
        .unwrap()
}

async fn place(db: &DatabaseConnection, n: usize) -> Vec<order::Model> {
    let uow = UnitOfWork::begin(db).await.unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let mut o = order::Model::place(&format!("c{i}"), i as i64);
        uow.save(&mut o).await.unwrap();
        out.push(o);
    }
    uow.commit().await.unwrap();
    out
}

/// A handler failing with what `error` makes of the order id, counting its runs.
fn failing(
    name: &'static str,
    runs: Arc<AtomicU32>,
    error: fn(&str) -> anyhow::Error,
) -> HandlerEntry {
    HandlerEntry::new(name, move |e: OrderPlaced, _ctx: HandlerContext| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(error(&e.order_id.to_string()))
        }
    })
}

/// A NUL byte (PostgreSQL's `text` refuses it) and 200 KB with a cause (more than MariaDB's
/// `TEXT`): each message ends dead as `handler_failed` after exactly the policy's attempts,
/// its error stored without NUL, within the cap, its cause kept.
async fn hostile_error_text_is_stored_sanitized_and_runs_are_exact(t: TestDb) {
    let nul_runs = Arc::new(AtomicU32::new(0));
    let big_runs = Arc::new(AtomicU32::new(0));
    let registry = Registry::new([
        failing("nul", nul_runs.clone(), |c| {
            anyhow::anyhow!("bad byte \0 in reply for {c}")
        }),
        failing("big", big_runs.clone(), |_| {
            anyhow::anyhow!("the root cause").context("x".repeat(200 * 1024))
        }),
    ])
    .unwrap();
    place(&t.db, 2).await;
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(registry)
        .retry(fast_retry(3))
        .build()
        .await
        .unwrap();
    let admin = Admin::new(t.db.clone());
    wait_for("two dead letters", Duration::from_secs(30), || async {
        relay.drain().await.unwrap();
        (admin.counts().await.unwrap().dead == 2).then_some(())
    })
    .await;
    relay.drain().await.unwrap();
    assert_eq!(
        nul_runs.load(Ordering::SeqCst),
        6,
        "3 attempts × 2 messages"
    );
    assert_eq!(
        big_runs.load(Ordering::SeqCst),
        6,
        "3 attempts × 2 messages"
    );
    assert_eq!(relay.stats().errors, 0, "no outcome write failed");
    for r in rows(&t.db).await {
        assert_eq!(r.status, MessageStatus::Dead);
        assert_eq!(r.attempts, 3);
        assert_eq!(r.last_error_kind.as_deref(), Some("handler_failed"));
        let e = r.last_error.unwrap();
        assert!(
            !e.contains('\0') && e.len() <= MAX_ERROR_BYTES,
            "{}",
            e.len()
        );
    }
    let deliveries = delivery::Entity::find().all(&t.db).await.unwrap();
    assert_eq!(deliveries.len(), 4);
    for d in deliveries {
        assert_eq!(d.attempts, 3, "{}", d.handler);
        assert_eq!(d.last_error_kind.as_deref(), Some("handler_failed"));
        let e = d.last_error.unwrap();
        assert!(
            !e.contains('\0') && e.len() <= MAX_ERROR_BYTES,
            "{}",
            e.len()
        );
        if d.handler == "nul" {
            assert!(e.contains("bad byte \u{FFFD} in reply for "), "{e}");
        } else {
            assert!(
                e.ends_with(": the root cause"),
                "the cause is kept: {}",
                &e[e.len() - 80..]
            );
            assert!(e.contains("bytes cut]"), "the cut is marked");
        }
    }
    t.cleanup().await;
}
