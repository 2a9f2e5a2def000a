//! Latency, commit → handler entry: the in-process wake-up, PostgreSQL LISTEN/NOTIFY from
//! another process, and polling; with the time each relay stage took (the relay's stage probe,
//! `outbox_seaorm::__bench`), at p50 and p99, for the wake-up modes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use outbox_seaorm::__bench::Stage;
use outbox_seaorm::{HandlerContext, HandlerEntry, OutboxConfig, Registry, Relay, UnitOfWork};
use outbox_tests::Backend;
use outbox_tests::fixtures::{OrderPlaced, order};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::{env_num, fresh, server_version};
/// (message id, sequence number, handler entry µs).
type Seen = Arc<std::sync::Mutex<Vec<(Uuid, i64, i64)>>>;

/// (stage, µs, sequence numbers) as the relay reported them.
type StageLog = Vec<(Stage, i64, Vec<i64>)>;

static STAGES: std::sync::Mutex<StageLog> = std::sync::Mutex::new(Vec::new());

/// Installs the probe that logs the relay's stages (once per process).
fn record_stages() {
    outbox_seaorm::__bench::install(|stage, seqs| {
        let t = Utc::now().timestamp_micros();
        STAGES.lock().unwrap().push((stage, t, seqs.to_vec()));
    });
}

fn take_stages() -> StageLog {
    std::mem::take(&mut *STAGES.lock().unwrap())
}

const STAGE_NAMES: [(Stage, &str); 6] = [
    (Stage::ClaimStart, "claim_start"),
    (Stage::ClaimSent, "claim_sent"),
    (Stage::ClaimEnd, "claim_end"),
    (Stage::GroupStart, "group_start"),
    (Stage::Decided, "decided"),
    (Stage::Written, "written"),
];

fn stage_name(s: Stage) -> &'static str {
    STAGE_NAMES
        .iter()
        .find(|(x, _)| *x == s)
        .map_or("?", |(_, n)| n)
}

fn stage_of(name: &str) -> Option<Stage> {
    STAGE_NAMES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(s, _)| *s)
}

/// Per event: commit → claim start (waiting for a claim), the claim (on SQLite: the wait for
/// the relay's write gate, then the statement), claim → group start
/// (dispatch: prior states, task spawn, permit), group start → handler entry, and handler
/// entry → outcome written (after the latency measured above, but what holds a batch's rows).
fn breakdown(
    committed: &HashMap<Uuid, i64>,
    entries: &[(Uuid, i64, i64)],
    stages: &StageLog,
) -> Vec<(&'static str, Vec<f64>)> {
    // Claims run one after the other: each claim end pairs with the latest claim start, and
    // the latest claim sent after it (SQLite reports when the statement leaves the write gate;
    // elsewhere it is sent at its start).
    let mut claim: HashMap<i64, (i64, i64, i64)> = HashMap::new();
    let mut first: HashMap<(Stage, i64), i64> = HashMap::new();
    let (mut last_start, mut last_sent) = (None, None);
    for (stage, t, seqs) in stages {
        match stage {
            Stage::ClaimStart => (last_start, last_sent) = (Some(*t), None),
            Stage::ClaimSent => last_sent = Some(*t),
            Stage::ClaimEnd => {
                let start = last_start.unwrap_or(*t);
                for s in seqs {
                    claim
                        .entry(*s)
                        .or_insert((start, last_sent.unwrap_or(start), *t));
                }
            }
            _ => {
                for s in seqs {
                    first.entry((*stage, *s)).or_insert(*t);
                }
            }
        }
    }
    let mut out: Vec<(&'static str, Vec<f64>)> = [
        "commit → claim start",
        "claim: wait for the write gate (SQLite)",
        "claim (statement, round trips)",
        "claim end → group start",
        "group start → handler entry",
        "handler entry → outcome written",
    ]
    .into_iter()
    .map(|n| (n, Vec::new()))
    .collect();
    let ms = |a: i64, b: i64| (b - a).max(0) as f64 / 1000.0;
    for (id, seq, entry) in entries {
        let (Some(c), Some((cs, sent, ce)), Some(g), Some(w)) = (
            committed.get(id),
            claim.get(seq),
            first.get(&(Stage::GroupStart, *seq)),
            first.get(&(Stage::Written, *seq)),
        ) else {
            continue;
        };
        out[0].1.push(ms(*c, *cs));
        out[1].1.push(ms(*cs, *sent));
        out[2].1.push(ms(*sent, *ce));
        out[3].1.push(ms(*ce, *g));
        out[4].1.push(ms(*g, *entry));
        out[5].1.push(ms(*entry, *w));
    }
    out
}

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
                let t = Utc::now().timestamp_micros();
                seen.lock()
                    .unwrap()
                    .push((ctx.message_id(), ctx.envelope().sequence, t));
                Ok::<_, std::convert::Infallible>(())
            }
        },
    )])
    .expect("one handler")
}

/// `latency-relay <db url> <pg_notify 0|1> <poll ms> <count>`: a relay in its own process that
/// prints `<message id> <handler entry µs> <sequence>` for each event and `stage <name> <µs>
/// <seq,seq,..>` for each stage, then exits.
pub(crate) async fn relay_child(args: &[String]) -> anyhow::Result<()> {
    let [url, notify, poll_ms, count] = args else {
        anyhow::bail!("usage: latency-relay <url> <notify> <poll ms> <count>");
    };
    let count: usize = count.parse()?;
    record_stages();
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
    for (id, seq, t) in seen.lock().unwrap().iter() {
        println!("{id} {t} {seq}");
    }
    for (stage, t, seqs) in take_stages() {
        let seqs: Vec<String> = seqs.iter().map(i64::to_string).collect();
        println!("stage {} {t} {}", stage_name(stage), seqs.join(","));
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
    record_stages();
    let mut stage_tables = Vec::new();
    modes.push(("polling only, 100 ms (relay in another process)", 2));
    modes.push(("polling only, 1 s default (relay in another process)", 3));
    for (label, mode) in modes {
        let t = fresh(backend).await?;
        let config = OutboxConfig::new().pg_notify(mode == 1);
        take_stages();
        let (commits, entries, stages) = if mode == 0 {
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
            (commits, entries, take_stages())
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
            let mut entries = Vec::new();
            let mut stages = Vec::new();
            for l in rest.lines() {
                let f: Vec<&str> = l.split(' ').collect();
                match f.as_slice() {
                    ["stage", name, t, seqs] => {
                        let (Some(stage), Ok(t)) = (stage_of(name), t.parse()) else {
                            continue;
                        };
                        let seqs = seqs.split(',').filter_map(|s| s.parse().ok()).collect();
                        stages.push((stage, t, seqs));
                    }
                    [id, t, seq] => {
                        if let (Ok(id), Ok(t), Ok(seq)) = (id.parse(), t.parse(), seq.parse()) {
                            entries.push((id, seq, t));
                        }
                    }
                    _ => {}
                }
            }
            (commits, entries, stages)
        };
        let committed: HashMap<Uuid, i64> = commits.into_iter().collect();
        let lat: Vec<f64> = entries
            .iter()
            .filter_map(|(id, _, t)| committed.get(id).map(|c| (*t - *c).max(0) as f64 / 1000.0))
            .collect();
        let (p50, p95, p99, max) = percentiles(lat);
        println!("| {label} | {p50:.2} | {p95:.2} | {p99:.2} | {max:.1} |");
        if mode <= 1 {
            stage_tables.push((label, breakdown(&committed, &entries, &stages)));
        }
        t.cleanup().await;
    }
    for (label, table) in stage_tables {
        println!("\n### where the time goes: {label}");
        println!("| stage | p50 ms | p99 ms | max ms | events |");
        println!("|---|---:|---:|---:|---:|");
        for (name, v) in table {
            let n = v.len();
            let (p50, _, p99, max) = percentiles(v);
            println!("| {name} | {p50:.2} | {p99:.2} | {max:.1} | {n} |");
        }
    }
    Ok(())
}
