//! What a crash, a hang or a poison message does to the messages around it: relays in
//! processes of their own, killed, aborted, blocked, or with clocks that disagree.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use outbox_seaorm::{Admin, HandlerContext, HandlerEntry, Registry, Relay, UnitOfWork};
use outbox_tests::fixtures::{
    Counter, Numbered, Recorder, commit_numbered, create_relay_log, order_violations, relay_log,
};
use outbox_tests::{Backend, Server, TestDb, backend_tests, server_url, wait_for};
use tokio::process::{Child, Command};

backend_tests!(
    timeout = 240;
    a_blocking_handler_costs_only_its_own_message,
    a_poison_message_that_aborts_its_process_is_the_only_one_parked,
    finished_messages_are_not_delivered_again_after_a_kill,
    relays_killed_faster_than_their_leases_expire_lose_nothing,
);

/// A relay process (see `src/bin/relay-worker.rs`) on `url`.
fn worker(url: &str, name: &str, lease_ms: u64, delay_ms: u64, env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_relay-worker"))
        .args([url, name, &lease_ms.to_string(), &delay_ms.to_string()])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn relay-worker")
}

async fn kill(w: &mut Child) {
    w.start_kill().ok();
    w.wait().await.ok();
}

async fn a_blocking_handler_costs_only_its_own_message(t: TestDb) {
    // One message's handler blocks its thread for twice the lease (a synchronous call); a
    // second relay runs meanwhile. The first relay's heartbeat runs on a task of its own, so
    // its lease holds and the second relay never takes the message.
    let total = commit_numbered(&t.db, 20, 2).await;
    let seen = Recorder::<String>::new();
    let lease = Duration::from_millis(600);
    let handler = |seen: Recorder<String>| {
        HandlerEntry::new("log", move |e: Numbered, ctx: HandlerContext| {
            let seen = seen.clone();
            async move {
                if e.key == "agg-0" && e.n == 1 {
                    std::thread::sleep(lease * 2);
                }
                seen.push(ctx.message_id().to_string());
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let relay = |seen| async {
        Relay::builder(t.connect_again().await)
            .registry(Registry::new([handler(seen)]).unwrap())
            .lease(lease)
            .handler_timeout(lease * 10)
            .poll_interval(Duration::from_millis(50))
            .spawn()
            .await
            .unwrap()
    };
    let a = relay(seen.clone()).await;
    let b = relay(seen.clone()).await;
    let admin = Admin::new(t.db.clone());
    wait_for("delivery", Duration::from_secs(30), || async {
        (admin.counts().await.unwrap().delivered as usize == total).then_some(())
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
    let all = seen.all();
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), total);
    assert_eq!(all.len(), total, "no message delivered twice");
    t.cleanup().await;
}

async fn a_poison_message_that_aborts_its_process_is_the_only_one_parked(t: TestDb) {
    create_relay_log(&t.db).await;
    let innocent = commit_numbered(&t.db, 20, 5).await;
    let mut poison = Counter::new("poison");
    poison.bump();
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    uow.stage(&mut poison).unwrap();
    uow.commit().await.unwrap();
    let admin = Admin::new(t.db.clone());
    let env = [("RELAY_POISON", "poison"), ("RELAY_BATCH", "30")];
    let mut crashes = 0;
    let mut w = worker(&t.url, "w0", 500, 1, &env);
    // Restart the relay whenever it dies, up to 25 times, until everything else is delivered.
    loop {
        let c = admin.counts().await.unwrap();
        if c.delivered as usize == innocent && c.dead == 1 {
            break;
        }
        if let Ok(Some(status)) = w.try_wait() {
            assert!(!status.success(), "the worker only ends by aborting");
            crashes += 1;
            assert!(crashes <= 25, "still not settled after 25 crashes: {c:?}");
            w = worker(&t.url, &format!("w{crashes}"), 500, 1, &env);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill(&mut w).await;
    let dead = admin.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "only the poison message is dead: {dead:?}");
    assert_eq!(dead[0].aggregate_id, "poison");
    assert_eq!(dead[0].last_error_kind.as_deref(), Some("crashed"));
    let log = relay_log(&t.db).await;
    let distinct: HashSet<&str> = log.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(distinct.len(), innocent, "every innocent message delivered");
    assert!(
        crashes >= 3,
        "the poison message crashed its relay {crashes} times"
    );
    eprintln!(
        "{:?}: the poison message crashed {crashes} relays; {} deliveries of {innocent} messages",
        t.backend,
        log.len()
    );
    t.cleanup().await;
}

async fn finished_messages_are_not_delivered_again_after_a_kill(t: TestDb) {
    // 4 messages at a time, 30 ms each, verdicts written within 2 ms: a relay killed at any
    // moment has at most 4 messages running and a few decided but unwritten, and only those
    // are delivered again; everything it finished before is not.
    create_relay_log(&t.db).await;
    let total = commit_numbered(&t.db, 200, 1).await;
    let admin = Admin::new(t.db.clone());
    let env = [("RELAY_BATCH", "50"), ("RELAY_CONCURRENCY", "4")];
    let mut duplicates_allowed = 0;
    for round in 0..2 {
        let mut w = worker(&t.url, &format!("k{round}"), 800, 30, &env);
        let before = admin.counts().await.unwrap().delivered;
        wait_for("progress", Duration::from_secs(30), || async {
            (admin.counts().await.unwrap().delivered >= before + 40).then_some(())
        })
        .await;
        kill(&mut w).await;
        duplicates_allowed += 4 + 4;
    }
    let mut w = worker(&t.url, "last", 800, 1, &env);
    wait_for("the rest", Duration::from_secs(60), || async {
        (admin.counts().await.unwrap().delivered as usize == total).then_some(())
    })
    .await;
    kill(&mut w).await;
    let log = relay_log(&t.db).await;
    let distinct: HashSet<&str> = log.iter().map(|l| l.0.as_str()).collect();
    let duplicates = log.len() - distinct.len();
    eprintln!(
        "{:?}: 2 kills, {duplicates} messages delivered again",
        t.backend
    );
    assert_eq!(distinct.len(), total);
    assert!(
        duplicates <= duplicates_allowed,
        "{duplicates} delivered again; only the messages in flight may be"
    );
    t.cleanup().await;
}

async fn relays_killed_faster_than_their_leases_expire_lose_nothing(t: TestDb) {
    // Four relay processes, one killed at random every 0.3-0.9 s (leases last 2 s) while a
    // writer keeps committing, for a minute (`OUTBOX_TEST_KILL_SECS`).
    let secs: u64 = std::env::var("OUTBOX_TEST_KILL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // The lease, `OUTBOX_TEST_KILL_LEASE_MS` (default 2000).
    let lease_ms: u64 = std::env::var("OUTBOX_TEST_KILL_LEASE_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    create_relay_log(&t.db).await;
    let admin = Admin::new(t.db.clone());
    let env = [("RELAY_BATCH", "20"), ("RELAY_POOL", "6")];
    let mut spawned = 0;
    let mut spawn = || {
        spawned += 1;
        worker(&t.url, &format!("r{spawned}"), lease_ms, 2, &env)
    };
    let mut workers: Vec<Child> = (0..4).map(|_| spawn()).collect();
    let stop = Arc::new(tokio::sync::Notify::new());
    let writer = {
        let db = t.connect_again().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut counters: Vec<Counter> =
                (0..20).map(|i| Counter::new(&format!("agg-{i}"))).collect();
            let mut committed = 0usize;
            loop {
                let uow = UnitOfWork::begin(&db).await.unwrap();
                for c in counters.iter_mut().skip(committed % 3).step_by(3) {
                    c.bump();
                    uow.stage(c).unwrap();
                }
                let n = uow.staged();
                uow.commit().await.unwrap();
                committed += n;
                tokio::select! {
                    _ = stop.notified() => return committed,
                    _ = tokio::time::sleep(Duration::from_millis(25)) => {}
                }
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut kills = 0;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300 + fastrand::u64(..600))).await;
        let victim = fastrand::usize(..workers.len());
        kill(&mut workers[victim]).await;
        workers[victim] = spawn();
        kills += 1;
    }
    stop.notify_one();
    let committed = writer.await.unwrap();
    wait_for("the backlog to drain", Duration::from_secs(120), || async {
        let c = admin.counts().await.unwrap();
        (c.pending == 0).then_some(())
    })
    .await;
    for w in &mut workers {
        kill(w).await;
    }
    let counts = admin.counts().await.unwrap();
    let log = relay_log(&t.db).await;
    let distinct: HashSet<&str> = log.iter().map(|l| l.0.as_str()).collect();
    eprintln!(
        "{:?}: {kills} kills in {secs} s (leases {lease_ms} ms), {committed} events, {} \
         deliveries, {} dead",
        t.backend,
        log.len(),
        counts.dead
    );
    assert_eq!(counts.dead, 0, "no message is dead: none ever failed");
    assert_eq!(distinct.len(), committed, "no message lost");
    assert_eq!(counts.delivered as usize, committed);
    assert_eq!(
        order_violations(&log),
        0,
        "first deliveries in aggregate order"
    );
    t.cleanup().await;
}

/// Two relays whose clocks are 30 s ahead and 30 s behind (libfaketime), with leases of 2 s
/// and handlers slower than a third of that: a lease compared with a relay's own clock would
/// look expired to the one ahead at once. Leases are the database server's time, so nothing is
/// taken early and nothing is delivered twice. (Not SQLite: an embedded database has no clock
/// of its own, and the processes of one host share one clock anyway.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(outbox_faketime),
    ignore = "OUTBOX_TEST_FAKETIME is not set (install Debian's faketime)"
)]
async fn relays_with_skewed_clocks_take_no_lease_early() {
    let Some(lib) = server_url(Server::Faketime) else {
        return;
    };
    for backend in [Backend::Postgres, Backend::MySql] {
        let Some(t) = TestDb::new(backend).await else {
            continue;
        };
        create_relay_log(&t.db).await;
        let total = commit_numbered(&t.db, 40, 3).await;
        let skewed = |name: &str, offset: &str| {
            Command::new(env!("CARGO_BIN_EXE_relay-worker"))
                .args([t.url.as_str(), name, "2000", "300"])
                .env("LD_PRELOAD", &lib)
                .env("FAKETIME", offset)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("RELAY_CONCURRENCY", "4")
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn a relay under faketime")
        };
        let mut ahead = skewed("ahead", "+30s");
        let mut behind = skewed("behind", "-30s");
        let admin = Admin::new(t.db.clone());
        wait_for("delivery", Duration::from_secs(90), || async {
            (admin.counts().await.unwrap().delivered as usize == total).then_some(())
        })
        .await;
        kill(&mut ahead).await;
        kill(&mut behind).await;
        let log = relay_log(&t.db).await;
        let mut by_relay: HashMap<&str, usize> = HashMap::new();
        for l in &log {
            *by_relay.entry(l.3.as_str()).or_default() += 1;
        }
        eprintln!("skewed clocks on {backend:?}: deliveries by relay {by_relay:?}");
        assert_eq!(log.len(), total, "no message delivered twice, none lost");
        assert_eq!(by_relay.len(), 2, "both relays worked: {by_relay:?}");
        t.cleanup().await;
    }
}
