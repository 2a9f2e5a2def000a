//! Relays keep going through a PostgreSQL restart: nothing is lost, duplicates are counted. In a binary of its own (cargo runs test
//! binaries one at a time, so no other test sees the server go down), and only when
//! `OUTBOX_TEST_PG_RESTART` is set: it restarts the server it is pointed at.

use std::collections::HashSet;
use std::time::Duration;

use outbox_seaorm::{Admin, HandlerContext, HandlerEntry, Registry, Relay};
use outbox_tests::fixtures::{Numbered, Recorder, commit_numbered};
use outbox_tests::{Backend, Server, TestDb, server_url, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_postgres), ignore = "OUTBOX_TEST_POSTGRES_URL is not set")]
#[cfg_attr(
    all(outbox_postgres, not(outbox_pg_restart)),
    ignore = "OUTBOX_TEST_PG_RESTART is not set (set it to 1 to let the test restart PostgreSQL)"
)]
async fn relays_reconnect_and_finish_after_a_postgresql_restart() {
    if server_url(Server::PgRestart).is_none() {
        return;
    }
    outbox_tests::run(Backend::Postgres, body).await;
}

async fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a cluster version");
    let status = tokio::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .await
        .expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster restart failed");
}

async fn postmaster_start(db: &sea_orm::DatabaseConnection) -> String {
    use sea_orm::ConnectionTrait;
    db.query_one_raw(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT pg_postmaster_start_time()::text AS t",
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get("", "t")
    .unwrap()
}

async fn body(t: TestDb) {
    let total = commit_numbered(&t.db, 10, 100).await;
    let seen = Recorder::<String>::new();
    let mut relays = Vec::new();
    for i in 0..2 {
        let seen = seen.clone();
        let handler = HandlerEntry::new("slow", move |_: Numbered, ctx: HandlerContext| {
            let seen = seen.clone();
            async move {
                seen.push(ctx.message_id().to_string());
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, std::io::Error>(())
            }
        });
        relays.push(
            Relay::builder(t.connect_again().await)
                .id(format!("survivor-{i}"))
                .registry(Registry::new([handler]).unwrap())
                .batch_size(10)
                .lease(Duration::from_secs(2))
                .poll_interval(Duration::from_millis(50))
                .spawn()
                .await
                .unwrap(),
        );
    }
    wait_for("deliveries to start", Duration::from_secs(30), || async {
        (seen.len() >= 20).then_some(())
    })
    .await;
    let admin = Admin::new(t.db.clone());
    // The backlog must outlast the restart, or the test proves nothing.
    assert!(
        admin.counts().await.unwrap().pending > 500,
        "most of the backlog is still pending when PostgreSQL goes down"
    );
    let started_before = postmaster_start(&t.db).await;
    restart_postgres().await;
    wait_for(
        "the backlog to drain after the restart",
        Duration::from_secs(120),
        || async {
            match admin.counts().await {
                Ok(c) if c.pending == 0 && c.delivered as usize == total => Some(()),
                _ => None,
            }
        },
    )
    .await;
    assert_ne!(
        postmaster_start(&t.db).await,
        started_before,
        "PostgreSQL really restarted"
    );
    // Errors surface only for statements in flight on a killed connection: sqlx's pool waits
    // out a short outage inside `acquire`. Either way nothing may be lost.
    let errors: u64 = relays.iter().map(|r| r.stats().errors).sum();
    for r in relays {
        r.shutdown().await;
    }
    let all = seen.all();
    let distinct: HashSet<&String> = all.iter().collect();
    eprintln!(
        "{total} events, {} deliveries ({} duplicates), {errors} relay errors during the restart",
        all.len(),
        all.len() - distinct.len()
    );
    assert_eq!(distinct.len(), total, "nothing lost");
    t.cleanup().await;
}
