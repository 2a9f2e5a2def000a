//! PostgreSQL claims: bounded on the server however the relay connects.

use outbox_tests::Backend;

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
