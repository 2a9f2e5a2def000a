//! PostgreSQL claims: bounded on the server however the relay connects.

use outbox_tests::Backend;
use tracing_subscriber::layer::SubscriberExt;

/// A claim is bounded on the server by `claim_timeout`, on the relay's own pool (where the
/// bound is a session setting and the claim a single statement) and on the application's
/// (where it is set in a transaction around the claim): a claim stuck behind a lock fails
/// with the server's timeout instead of waiting for the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_postgres), ignore = "OUTBOX_TEST_POSTGRES_URL is not set")]
async fn a_stuck_claim_is_cancelled_by_the_server_with_or_without_the_relays_own_pool() {
    outbox_tests::run(Backend::Postgres, |t| async move {
        use sea_orm::{ConnectionTrait, TransactionTrait};
        for reserve in [5, 0] {
            let relay = outbox_seaorm::Relay::builder(t.connect_again().await)
                .reserve_connections(reserve)
                .claim_timeout(std::time::Duration::from_millis(200))
                .build()
                .await
                .unwrap();
            // Another session holds the table: the claim waits for its lock.
            let blocker = t.db.begin().await.unwrap();
            blocker
                .execute_unprepared("LOCK TABLE outbox_messages IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            let err = relay.run_once().await.unwrap_err();
            blocker.rollback().await.unwrap();
            assert!(
                err.to_string().contains("statement timeout"),
                "reserve_connections({reserve}): {err}"
            );
            // Once the lock is gone, the same relay claims again.
            relay.run_once().await.unwrap();
        }
    })
    .await;
}

/// A claim's lease update stays on the row's page (a HOT update: no index entry, nothing for
/// later claims to step over) even when it claims every row of the page: the messages table
/// leaves room for a second version of each row (`fillfactor = 40`). The same claim on a
/// table at the earlier fillfactor 70 moved most rows to other pages: checked too, so this
/// test sees the difference it is about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_postgres), ignore = "OUTBOX_TEST_POSTGRES_URL is not set")]
async fn a_claim_updates_every_row_of_its_pages_in_place() {
    use outbox_seaorm::{HandlerContext, HandlerEntry, Registry, Relay};
    use outbox_tests::fixtures::{Numbered, commit_numbered};
    use sea_orm::{ConnectionTrait, Statement};
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    let warnings = Warnings::default();
    let _log =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    outbox_tests::run(Backend::Postgres, |t| async move {
        let pages = |t: &outbox_tests::TestDb| {
            let db = t.db.clone();
            async move {
                let rows = db
                    .query_all_raw(Statement::from_string(
                        db.get_database_backend(),
                        "SELECT seq, CAST((ctid::text::point)[0] AS BIGINT) AS page, \
                         locked_by IS NOT NULL AS claimed FROM outbox_messages",
                    ))
                    .await
                    .unwrap();
                rows.iter()
                    .map(|r| {
                        let seq: i64 = r.try_get("", "seq").unwrap();
                        let page: i64 = r.try_get("", "page").unwrap();
                        let claimed: bool = r.try_get("", "claimed").unwrap();
                        (seq, (page, claimed))
                    })
                    .collect::<HashMap<i64, (i64, bool)>>()
            }
        };
        let reloptions =
            t.db.query_one_raw(Statement::from_string(
                t.db.get_database_backend(),
                "SELECT array_to_string(reloptions, ',') AS o FROM pg_class \
                 WHERE oid = 'outbox_messages'::regclass",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<String>("", "o")
            .unwrap();
        assert!(reloptions.contains("fillfactor=40"), "{reloptions}");
        for (fillfactor, all_in_place) in [(40, true), (70, false)] {
            t.db.execute_unprepared(&format!(
                "TRUNCATE outbox_messages, outbox_streams; \
                 ALTER TABLE outbox_messages SET (fillfactor = {fillfactor})"
            ))
            .await
            .unwrap();
            commit_numbered(&t.db, 100, 2).await;
            let before = pages(&t).await;
            // The handlers wait until the pages are read: the rows stay claimed meanwhile.
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            let handler = {
                let gate = gate.clone();
                HandlerEntry::new("wait", move |_: Numbered, _ctx: HandlerContext| {
                    let gate = gate.clone();
                    async move {
                        gate.acquire().await.unwrap().forget();
                        Ok::<_, std::io::Error>(())
                    }
                })
            };
            let warned_before = warnings.count("has fillfactor");
            let relay = Relay::builder(t.connect_again().await)
                .registry(Registry::new([handler]).unwrap())
                .batch_size(100)
                .build()
                .await
                .unwrap();
            // A table left at an earlier fillfactor is named at start, with the fix.
            assert_eq!(
                warnings.count("has fillfactor") - warned_before,
                usize::from(!all_in_place),
                "fillfactor {fillfactor}: {:?}",
                warnings.all()
            );
            let run = tokio::spawn(async move { relay.run_once().await });
            let after = outbox_tests::wait_for("the claim", Duration::from_secs(30), || async {
                let p = pages(&t).await;
                (p.values().filter(|(_, claimed)| *claimed).count() == 100).then_some(p)
            })
            .await;
            let claimed: Vec<i64> = after
                .iter()
                .filter(|(_, (_, c))| *c)
                .map(|(s, _)| *s)
                .collect();
            let moved = claimed
                .iter()
                .filter(|s| before[*s].0 != after[*s].0)
                .count();
            let claimed_pages: std::collections::HashSet<i64> =
                claimed.iter().map(|s| before[s].0).collect();
            gate.add_permits(1000);
            run.await.unwrap().unwrap();
            if all_in_place {
                assert_eq!(
                    moved,
                    0,
                    "fillfactor {fillfactor}: {moved} of 100 claimed rows left their page \
                     ({} pages)",
                    claimed_pages.len()
                );
            } else {
                assert!(
                    moved > 0,
                    "fillfactor {fillfactor}: every claimed row stayed on its page; the \
                     comparison shows nothing"
                );
            }
        }
        t.cleanup().await;
    })
    .await;
}

/// The WARN events' messages, for the test above.
#[derive(Clone, Default)]
struct Warnings(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Warnings {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn count(&self, part: &str) -> usize {
        self.all().iter().filter(|m| m.contains(part)).count()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut m = Message(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(m.0);
        }
    }
}
