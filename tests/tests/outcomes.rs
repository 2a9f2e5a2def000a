//! Whatever a handler says, whatever the pool does (#17): hostile error text, outcome writes
//! that fail, lost leases, careful mode under shutdown, panicking groups.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use outbox_seaorm::entity::{MessageStatus, delivery, message};
use outbox_seaorm::{
    Admin, HandlerContext, HandlerEntry, MAX_ERROR_BYTES, Registry, RetryPolicy, UnitOfWork,
};
use outbox_seaorm::{HandlerContextExt, HandlerError};
use outbox_tests::Backend;
use outbox_tests::fixtures::{OrderPlaced, order};
use outbox_tests::{TestDb, backend_tests, wait_for};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, QueryOrder, TransactionTrait};

backend_tests!(
    hostile_error_text_is_stored_sanitized_and_runs_are_exact,
    a_refused_outcome_is_recorded_as_unwritable_and_the_rest_of_the_flush_commits,
    a_starved_pool_past_the_lease_never_runs_a_message_twice_at_once,
    a_starved_application_pool_does_not_cost_the_relay_its_leases,
    a_lost_lease_cancels_the_handler_and_drops_its_outcome,
    shutdown_during_careful_mode_is_bounded_by_the_shutdown_timeout,
);

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

/// A trigger that refuses to store a `handler_failed` outcome whose error mentions "poison":
/// a real refusal by the database, on one row of a flush.
async fn refuse_poison(t: &TestDb) {
    let sql: &[&str] = match t.backend {
        Backend::Postgres => &[
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF NEW.last_error_kind = 'handler_failed' AND NEW.last_error LIKE '%poison%' THEN \
             RAISE EXCEPTION 'refused by trigger'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse BEFORE UPDATE ON outbox_messages FOR EACH ROW \
             EXECUTE FUNCTION refuse_poison()",
        ],
        Backend::MySql => &[
            "CREATE TRIGGER refuse BEFORE UPDATE ON outbox_messages FOR EACH ROW \
             BEGIN IF NEW.last_error_kind = 'handler_failed' AND NEW.last_error LIKE '%poison%' \
             THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by trigger'; END IF; END",
        ],
        Backend::Sqlite => &[
            "CREATE TRIGGER refuse BEFORE UPDATE ON outbox_messages FOR EACH ROW \
             WHEN NEW.last_error_kind = 'handler_failed' AND NEW.last_error LIKE '%poison%' \
             BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END",
        ],
    };
    for s in sql {
        t.db.execute_unprepared(s).await.unwrap();
    }
}

/// Three messages decided into one flush: one delivered at once, one dead whose outcome the
/// database refuses, one to retry. The refused one is recorded as `outcome_unwritable` with
/// the database's error (still dead, its attempt counted), the other two commit as decided,
/// and nothing is reported as lost or delivered twice.
async fn a_refused_outcome_is_recorded_as_unwritable_and_the_rest_of_the_flush_commits(t: TestDb) {
    refuse_poison(&t).await;
    let handler = HandlerEntry::new("h", |e: OrderPlaced, _ctx: HandlerContext| async move {
        match e.amount {
            0 => Ok(()),
            1 => Err(HandlerError::permanent(anyhow::anyhow!("poison pill"))),
            _ => Err(HandlerError::retry(anyhow::anyhow!("try again later"))),
        }
    });
    place(&t.db, 3).await;
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([handler]).unwrap())
        .retry(fast_retry(5))
        .ordering(outbox_seaorm::DeliveryOrder::Unordered)
        // Every verdict lands in one flush.
        .flush_after(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let report = relay.run_once().await.unwrap();
    assert_eq!(report.claimed, 3);
    assert_eq!(
        (
            report.delivered,
            report.dead,
            report.retried,
            report.unwritable
        ),
        (1, 1, 1, 1),
        "{report:?}"
    );
    assert_eq!(report.lease_lost, 0, "nothing reported lost");
    let r = rows(&t.db).await;
    assert_eq!(r[0].status, MessageStatus::Delivered);
    assert_eq!(r[1].status, MessageStatus::Dead);
    assert_eq!(r[1].attempts, 1, "its run counted");
    assert_eq!(r[1].last_error_kind.as_deref(), Some("outcome_unwritable"));
    let e = r[1].last_error.as_deref().unwrap();
    assert!(
        e.contains("refused by trigger"),
        "the database's error: {e}"
    );
    assert!(r[1].locked_by.is_none());
    assert_eq!(r[2].status, MessageStatus::Pending);
    assert_eq!(r[2].last_error_kind.as_deref(), Some("handler_failed"));
    assert!(r[2].locked_by.is_none());
    let d = delivery::Entity::find().all(&t.db).await.unwrap();
    let dead = d.iter().find(|d| d.message_id == r[1].id).unwrap();
    assert_eq!(
        (dead.attempts, dead.last_error_kind.as_deref()),
        (1, Some("outcome_unwritable"))
    );
    assert_eq!(relay.stats().unwritable, 1);
    t.cleanup().await;
}

/// Counts runs, and the most that ran at once.
#[derive(Default)]
struct Runs {
    total: AtomicU32,
    now: AtomicU32,
    most: AtomicU32,
}

impl Runs {
    fn start(&self) -> u32 {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        self.total.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn end(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Holds every connection of the relay's pool (of 2) for `hold`, then one of them for
/// `then`: the relay's own writes wait, and then take turns on one connection (the claim loop,
/// waiting longest, first).
async fn starve(ctx: &HandlerContext, hold: Duration, then: Duration) {
    let db = ctx.db().unwrap();
    let a = db.begin().await.unwrap();
    let b = db.begin().await.unwrap();
    tokio::time::sleep(hold).await;
    drop(a);
    tokio::time::sleep(then).await;
    drop(b);
}

/// The handler takes the relay's whole pool for three leases: the heartbeat cannot renew the
/// lease, which lapses; when the pool is free the relay claims again, and must not claim the
/// message it is still running.
async fn a_starved_pool_past_the_lease_never_runs_a_message_twice_at_once(t: TestDb) {
    let runs = Arc::new(Runs::default());
    let handler = {
        let runs = runs.clone();
        HandlerEntry::new("starver", move |_: OrderPlaced, ctx: HandlerContext| {
            let runs = runs.clone();
            async move {
                runs.start();
                // Still running while the relay claims again.
                starve(
                    &ctx,
                    Duration::from_millis(1500),
                    Duration::from_millis(700),
                )
                .await;
                runs.end();
                Ok::<(), anyhow::Error>(())
            }
        })
    };
    place(&t.db, 1).await;
    let pool = t.connect_sized(2).await;
    let relay = outbox_seaorm::Relay::builder(pool)
        // The relay's writes share the starved pool.
        .reserve_connections(0)
        .registry(Registry::new([handler]).unwrap())
        .lease(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(20))
        .handler_timeout(Duration::from_secs(10))
        .spawn()
        .await
        .unwrap();
    let admin = Admin::new(t.db.clone());
    wait_for("delivery", Duration::from_secs(20), || async {
        (admin.counts().await.unwrap().delivered == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stats = relay.stats();
    relay.shutdown().await;
    assert_eq!(
        stats.claimed, 1,
        "never claimed again while it ran: {stats:?}"
    );
    assert_eq!(
        runs.most.load(Ordering::SeqCst),
        1,
        "never two runs at once"
    );
    assert_eq!(runs.total.load(Ordering::SeqCst), 1, "run once: {stats:?}");
    assert_eq!(rows(&t.db).await[0].attempts, 1);
    t.cleanup().await;
}

/// With its own connections (the default), a relay whose handler holds the whole
/// application pool for three leases keeps its lease: another relay never gets the message.
async fn a_starved_application_pool_does_not_cost_the_relay_its_leases(t: TestDb) {
    let runs = Arc::new(Runs::default());
    let handler = {
        let runs = runs.clone();
        move || {
            let runs = runs.clone();
            HandlerEntry::new("starver", move |_: OrderPlaced, ctx: HandlerContext| {
                let runs = runs.clone();
                async move {
                    runs.start();
                    starve(&ctx, Duration::from_millis(1500), Duration::ZERO).await;
                    runs.end();
                    Ok::<(), anyhow::Error>(())
                }
            })
        }
    };
    place(&t.db, 1).await;
    let a = outbox_seaorm::Relay::builder(t.connect_sized(2).await)
        .registry(Registry::new([handler()]).unwrap())
        .lease(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(20))
        .handler_timeout(Duration::from_secs(10))
        .spawn()
        .await
        .unwrap();
    wait_for("A runs it", Duration::from_secs(10), || async {
        (runs.total.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let b = outbox_seaorm::Relay::builder(t.connect_sized(4).await)
        .registry(Registry::new([handler()]).unwrap())
        .lease(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(20))
        .spawn()
        .await
        .unwrap();
    let admin = Admin::new(t.db.clone());
    wait_for("delivery", Duration::from_secs(20), || async {
        (admin.counts().await.unwrap().delivered == 1).then_some(())
    })
    .await;
    let (sa, sb) = (a.stats(), b.stats());
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(runs.total.load(Ordering::SeqCst), 1, "A: {sa:?}, B: {sb:?}");
    assert_eq!(
        (sa.delivered, sa.cancelled, sa.lease_lost),
        (1, 0, 0),
        "{sa:?}"
    );
    assert_eq!(sb.claimed, 0, "{sb:?}");
    t.cleanup().await;
}

/// Relay A's pool is starved past the lease; relay B claims the message and delivers it. A's
/// heartbeat then finds the lease lost: its handler call is cancelled (the handler sees it on
/// its context), and A writes nothing about the message.
async fn a_lost_lease_cancels_the_handler_and_drops_its_outcome(t: TestDb) {
    let runs = Arc::new(Runs::default());
    let saw_cancel = Arc::new(AtomicU32::new(0));
    let handler = {
        let (runs, saw_cancel) = (runs.clone(), saw_cancel.clone());
        move || {
            let (runs, saw_cancel) = (runs.clone(), saw_cancel.clone());
            HandlerEntry::new("slow", move |_: OrderPlaced, ctx: HandlerContext| {
                let (runs, saw_cancel) = (runs.clone(), saw_cancel.clone());
                async move {
                    if runs.start() == 1 {
                        starve(&ctx, Duration::from_millis(1500), Duration::ZERO).await;
                        let cancelled =
                            tokio::time::timeout(Duration::from_secs(5), ctx.cancelled())
                                .await
                                .is_ok();
                        if cancelled {
                            saw_cancel.fetch_add(1, Ordering::SeqCst);
                        }
                        runs.end();
                        // A handler that stops cleanly: its outcome is dropped anyway.
                        return Err(anyhow::anyhow!("stopped: cancelled"));
                    }
                    runs.end();
                    Ok(())
                }
            })
        }
    };
    place(&t.db, 1).await;
    let a = outbox_seaorm::Relay::builder(t.connect_sized(2).await)
        .id("relay-a")
        // The relay's writes share the starved pool.
        .reserve_connections(0)
        .registry(Registry::new([handler()]).unwrap())
        .lease(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(20))
        .handler_timeout(Duration::from_secs(20))
        .spawn()
        .await
        .unwrap();
    let admin = Admin::new(t.db.clone());
    wait_for("A runs it", Duration::from_secs(10), || async {
        (runs.total.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // B starts once A holds the message, and claims it when the lease lapses.
    let b = outbox_seaorm::Relay::builder(t.connect_sized(4).await)
        .id("relay-b")
        .registry(Registry::new([handler()]).unwrap())
        .lease(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(20))
        .spawn()
        .await
        .unwrap();
    wait_for(
        "B delivers it, A's call is cancelled",
        Duration::from_secs(20),
        || async {
            (admin.counts().await.unwrap().delivered == 1 && saw_cancel.load(Ordering::SeqCst) == 1)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sa, sb) = (a.stats(), b.stats());
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(sa.cancelled, 1, "{sa:?}");
    assert_eq!(
        (sa.retried, sa.dead, sa.delivered),
        (0, 0, 0),
        "A wrote nothing: {sa:?}"
    );
    assert_eq!(sb.delivered, 1, "{sb:?}");
    let r = &rows(&t.db).await[0];
    assert_eq!(r.status, MessageStatus::Delivered);
    assert!(r.last_error.is_none(), "A's error was not written");
    t.cleanup().await;
}

/// Messages a dead relay held run one at a time (careful mode); a shutdown meanwhile stops
/// within the shutdown timeout, not after the handler's, and gives the messages back.
async fn shutdown_during_careful_mode_is_bounded_by_the_shutdown_timeout(t: TestDb) {
    let started = Arc::new(AtomicU32::new(0));
    let handler = {
        let started = started.clone();
        HandlerEntry::new("stuck", move |_: OrderPlaced, _ctx: HandlerContext| {
            let started = started.clone();
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<(), anyhow::Error>(())
            }
        })
    };
    place(&t.db, 3).await;
    // As a relay that died holding them leaves them: claimed once, lease expired.
    let mut stmt = "UPDATE outbox_messages SET claims = 1, locked_by = 'dead-relay', \
                    locked_until = '2000-01-01 00:00:00'"
        .to_owned();
    if t.backend == Backend::Sqlite {
        stmt = stmt.replace("'2000-01-01 00:00:00'", "'2000-01-01T00:00:00.000+00:00'");
    }
    t.db.execute_unprepared(&stmt).await.unwrap();
    let relay = outbox_seaorm::Relay::builder(t.db.clone())
        .registry(Registry::new([handler]).unwrap())
        .handler_timeout(Duration::from_secs(50))
        .shutdown_timeout(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(20))
        .spawn()
        .await
        .unwrap();
    wait_for("careful mode runs one", Duration::from_secs(10), || async {
        (started.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let stats = relay.stats();
    assert_eq!(stats.suspects, 3, "{stats:?}");
    let t0 = std::time::Instant::now();
    relay.shutdown().await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_eq!(started.load(Ordering::SeqCst), 1, "one at a time");
    for r in rows(&t.db).await {
        assert_eq!(r.status, MessageStatus::Pending);
        assert!(r.locked_by.is_none(), "given back: {:?}", r.locked_by);
    }
    t.cleanup().await;
}
