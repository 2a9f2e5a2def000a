//! Latency, commit → handler entry: the in-process wake-up, PostgreSQL LISTEN/NOTIFY from
//! another process, and polling.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use outbox_seaorm::{HandlerContext, HandlerEntry, OutboxConfig, Registry, Relay, UnitOfWork};
use outbox_tests::Backend;
use outbox_tests::fixtures::{OrderPlaced, order};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::{env_num, fresh, server_version};
type Seen = Arc<std::sync::Mutex<Vec<(Uuid, i64)>>>;

/// Waits until `count` events reached the handler, or none came for 30 s.
async fn wait_for(seen: &Seen, count: usize) {
    let (mut last, mut since) = (0, std::time::Instant::now());
    loop {
        let n = seen.lock().unwrap().len();
        if n >= count {
            return;
        }
        if n > last {
            (last, since) = (n, std::time::Instant::now());
        } else if since.elapsed() > Duration::from_secs(30) {
            eprintln!("warning: only {n} of {count} events reached the handler");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Failed claims back off (hundreds of ms): they show in the tail, so say so.
fn report_errors(s: &outbox_seaorm::RelayStats) {
    if s.errors > 0 {
        eprintln!("note: the relay's claims failed {} times: {s:?}", s.errors);
    }
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.95), p(0.99), *v.last().unwrap())
}

/// Commits `count` events at `rate` per second; returns (message id, commit-returned µs).
async fn produce_steady(
    db: &DatabaseConnection,
    config: &OutboxConfig,
    count: usize,
    rate: f64,
) -> anyhow::Result<Vec<(Uuid, i64)>> {
    let start = tokio::time::Instant::now();
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let mut o = order::Model::place("latency", i as i64 + 1);
        let id = o.events.iter().next().unwrap().message_id;
        let uow = UnitOfWork::begin_with(db, config).await?;
        uow.save(&mut o).await?;
        uow.commit().await?;
        out.push((id, Utc::now().timestamp_micros()));
    }
    Ok(out)
}

fn latency_registry(seen: Seen) -> Registry {
    Registry::new([HandlerEntry::new(
        "latency",
        move |_: OrderPlaced, ctx: HandlerContext| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push((ctx.message_id(), Utc::now().timestamp_micros()));
                Ok::<_, std::convert::Infallible>(())
            }
        },
    )])
    .expect("one handler")
}

/// `latency-relay <db url> <pg_notify 0|1> <poll ms> <count>`: a relay in its own process that
/// prints `<message id> <handler entry µs>` for each event, then exits.
pub(crate) async fn relay_child(args: &[String]) -> anyhow::Result<()> {
    let [url, notify, poll_ms, count] = args else {
        anyhow::bail!("usage: latency-relay <url> <notify> <poll ms> <count>");
    };
    let count: usize = count.parse()?;
    let mut opts = sea_orm::ConnectOptions::new(url.clone());
    opts.sqlx_logging(false);
    let db = sea_orm::Database::connect(opts).await?;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let relay = Relay::builder_with(db, &OutboxConfig::new().pg_notify(notify == "1"))
        .registry(latency_registry(seen.clone()))
        .poll_interval(Duration::from_millis(poll_ms.parse()?))
        .without_retention()
        .spawn()
        .await?;
    println!("ready");
    wait_for(&seen, count).await;
    report_errors(&relay.stats());
    relay.shutdown().await;
    for (id, t) in seen.lock().unwrap().iter() {
        println!("{id} {t}");
    }
    Ok(())
}

pub(crate) async fn suite(backend: Backend) -> anyhow::Result<()> {
    let count = env_num("BENCH_LATENCY_EVENTS", 10_000.0) as usize;
    let rate = env_num("BENCH_LATENCY_RATE", 500.0);
    let probe = fresh(backend).await?;
    println!(
        "\n## latency commit → handler entry, {backend:?} ({}), {count} events at {rate}/s",
        server_version(&probe.db).await
    );
    probe.cleanup().await;
    println!("| wake-up | p50 ms | p95 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    let mut modes = vec![("in-process (same process, commit wakes the relay)", 0u8)];
    if backend == Backend::Postgres {
        modes.push(("LISTEN/NOTIFY (relay in another process)", 1));
    }
    modes.push(("polling only, 100 ms (relay in another process)", 2));
    modes.push(("polling only, 1 s default (relay in another process)", 3));
    for (label, mode) in modes {
        let t = fresh(backend).await?;
        let config = OutboxConfig::new().pg_notify(mode == 1);
        let (commits, entries) = if mode == 0 {
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let relay = Relay::builder(t.connect_again().await)
                .registry(latency_registry(seen.clone()))
                .without_retention()
                .spawn()
                .await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let commits = produce_steady(&t.db, &config, count, rate).await?;
            wait_for(&seen, count).await;
            report_errors(&relay.stats());
            relay.shutdown().await;
            let entries = seen.lock().unwrap().clone();
            (commits, entries)
        } else {
            let poll = match mode {
                1 => "1000",
                2 => "100",
                _ => "1000",
            };
            let mut child = tokio::process::Command::new(std::env::current_exe()?)
                .args([
                    "latency-relay",
                    &t.url,
                    if mode == 1 { "1" } else { "0" },
                    poll,
                    &count.to_string(),
                ])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line).await?;
            anyhow::ensure!(line.trim() == "ready", "relay child: {line}");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let commits = produce_steady(&t.db, &config, count, rate).await?;
            let mut rest = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut rest).await?;
            child.wait().await?;
            let entries = rest
                .lines()
                .filter_map(|l| {
                    let (id, t) = l.split_once(' ')?;
                    Some((id.parse().ok()?, t.parse().ok()?))
                })
                .collect();
            (commits, entries)
        };
        let committed: HashMap<Uuid, i64> = commits.into_iter().collect();
        let lat: Vec<f64> = entries
            .iter()
            .filter_map(|(id, t)| committed.get(id).map(|c| (*t - *c).max(0) as f64 / 1000.0))
            .collect();
        let (p50, p95, p99, max) = percentiles(lat);
        println!("| {label} | {p50:.2} | {p95:.2} | {p99:.2} | {max:.1} |");
        t.cleanup().await;
    }
    Ok(())
}
