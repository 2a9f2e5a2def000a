//! Benchmarks of the outbox against the physical limit, printed as tables.
//!
//! ```text
//! cargo run --release -p outbox-tests --bin outbox-bench -- <suite> [sqlite] [postgres] [mariadb]
//! ```
//!
//! Suites:
//!
//! - `write`: unit of work vs raw SQL giving the same guarantee (order row, stream upsert that
//!   hands out the position, outbox row), vs the plain two-row transaction, vs plain SeaORM.
//! - `relay`: drain rate, unordered and ordered, vs a minimal raw-SQL claim+mark loop.
//! - `latency`: commit → handler entry (in-process wake-up, LISTEN/NOTIFY, polling).
//! - `scale`: claim cost with delivered history and a large backlog; relay RSS.
//! - `order`: ordered vs unordered drain at 10, 1 000 and 100 000 aggregates.
//! - `big`: the drain of 1M pending rows vs 100k with `DeliveredRows::Delete`.
//! - `dashboard`: each dashboard page's response time with `BENCH_BIG` delivered rows.
//! - `kafka`: relay → Kafka vs a plain producer loop sending the same records to the same
//!   broker (`OUTBOX_TEST_KAFKA_URL`; `BENCH_KAFKA_EVENTS`, default 20000, over
//!   `BENCH_KAFKA_AGGREGATES`, default 1000).
//! - `nats`: relay → NATS JetStream vs a plain async-nats loop publishing the same messages,
//!   acks one by one and `BENCH_NATS_WINDOW` (default 100) in flight (`OUTBOX_TEST_NATS_URL`;
//!   `BENCH_NATS_EVENTS`, default 20000, over `BENCH_NATS_AGGREGATES`, default 1000; the
//!   relays' batch size `BENCH_NATS_BATCH`, default 100; `BENCH_ONLY=<part of a row's name>`
//!   runs only the rows whose name holds it, to profile one).
//! - `amqp`: relay → RabbitMQ vs a plain lapin loop publishing the same messages, publisher
//!   confirms one by one and `BENCH_AMQP_WINDOW` (default 100) in flight
//!   (`OUTBOX_TEST_AMQP_URL`; `BENCH_AMQP_EVENTS`, default 20000, `BENCH_AMQP_AGGREGATES`,
//!   `BENCH_AMQP_BATCH`).
//!
//! Servers come from `OUTBOX_TEST_POSTGRES_URL` / `OUTBOX_TEST_MYSQL_URL`; without backends
//! the suite runs on SQLite and PostgreSQL. Knobs: `BENCH_SECS` (seconds per measured write
//! round, default 2), `BENCH_ROUNDS` (default 3), `BENCH_WRITERS` (writer counts, comma list,
//! default 1,2,4,8), `BENCH_EVENTS` (relay backlog, default 100000), `BENCH_RELAYS` (relay
//! counts, comma list), `BENCH_LATENCY_EVENTS` (default 10000), `BENCH_LATENCY_RATE` (commits a second, default 500),
//! `BENCH_ORDER_EVENTS` (default 20000), `BENCH_ORDER_ROUNDS` (default 2), `BENCH_HISTORY` (the
//! most delivered history in `scale`, default 1000000), `BENCH_SCALE_PENDING` (default 20000),
//! `BENCH_BIG` (the big backlog of `scale` and `big`, default 1000000; `big`'s small one is a
//! tenth of it), `BENCH_BIG_VACUUM` (seconds: `big` runs VACUUM that often), `BENCH_POLL_MS`
//! (the relays' poll interval in the drains, default 20). Results vary with the machine:
//! compare ratios measured in one run, where variants alternate round by round so drift
//! cancels out.

#[path = "outbox-bench/amqp.rs"]
mod amqp;
#[path = "outbox-bench/backlog.rs"]
mod backlog;
#[path = "outbox-bench/big.rs"]
mod big;
#[path = "outbox-bench/broker.rs"]
mod broker;
#[path = "outbox-bench/cpu.rs"]
mod cpu;
#[path = "outbox-bench/dashboard.rs"]
mod dashboard;
#[path = "outbox-bench/kafka.rs"]
mod kafka;
#[path = "outbox-bench/latency.rs"]
mod latency;
#[path = "outbox-bench/nats.rs"]
mod nats;
#[path = "outbox-bench/order.rs"]
mod order;
#[path = "outbox-bench/relay.rs"]
mod relay;
#[path = "outbox-bench/scale.rs"]
mod scale;
#[path = "outbox-bench/write.rs"]
mod write;

use chrono::Utc;
use outbox_tests::{Backend, TestDb};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

const USAGE: &str = "usage: outbox-bench <write|relay|latency|scale|order|big|dashboard|kafka|nats|amqp> [sqlite] [postgres] [mariadb]";

const SUITES: [&str; 10] = [
    "write",
    "relay",
    "latency",
    "scale",
    "order",
    "big",
    "dashboard",
    "kafka",
    "nats",
    "amqp",
];

const HELP: &str = "
Benchmarks of the outbox, printed as tables. Without a backend: SQLite and PostgreSQL.

suites:
  write      unit of work vs raw SQL with the same guarantee, vs plain SeaORM
  relay      drain rate, unordered and ordered, vs a minimal raw-SQL loop
  latency    commit to handler entry (wake-up, LISTEN/NOTIFY, polling)
  scale      claim cost with delivered history and a large backlog; relay RSS
  order      ordered vs unordered drain at 10, 1 000 and 100 000 aggregates
  big        the drain of a large pending backlog
  dashboard  each dashboard page's response time
  kafka      relay → Kafka vs a plain producer loop (OUTBOX_TEST_KAFKA_URL)
  nats       relay → NATS JetStream vs a plain publish loop (OUTBOX_TEST_NATS_URL)
  amqp       relay → RabbitMQ vs a plain publish loop (OUTBOX_TEST_AMQP_URL)

servers: OUTBOX_TEST_POSTGRES_URL, OUTBOX_TEST_MYSQL_URL, OUTBOX_TEST_KAFKA_URL,
  OUTBOX_TEST_NATS_URL, OUTBOX_TEST_AMQP_URL
knobs (environment): BENCH_SECS, BENCH_ROUNDS, BENCH_WRITERS, BENCH_EVENTS, BENCH_RELAYS,
  BENCH_LATENCY_EVENTS, BENCH_LATENCY_RATE, BENCH_ORDER_EVENTS, BENCH_ORDER_ROUNDS,
  BENCH_HISTORY, BENCH_SCALE_PENDING, BENCH_BIG, BENCH_BIG_VACUUM, BENCH_POLL_MS,
  BENCH_KAFKA_EVENTS, BENCH_KAFKA_AGGREGATES, BENCH_NATS_EVENTS, BENCH_NATS_AGGREGATES,
  BENCH_NATS_WINDOW, BENCH_NATS_BATCH, BENCH_AMQP_EVENTS, BENCH_AMQP_AGGREGATES,
  BENCH_AMQP_WINDOW, BENCH_AMQP_BATCH, BENCH_ONLY
  (see the doc comment of tests/src/bin/outbox-bench.rs for their defaults)";

fn env_num(var: &str, default: f64) -> f64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(suite) = args.first().cloned() else {
        eprintln!("{USAGE}\n{HELP}");
        std::process::exit(2);
    };
    if matches!(suite.as_str(), "-h" | "--help" | "help") {
        println!("{USAGE}\n{HELP}");
        return Ok(());
    }
    if !SUITES.contains(&suite.as_str()) && suite != "latency-relay" {
        eprintln!("unknown suite `{suite}`\n{USAGE}");
        std::process::exit(2);
    }
    if suite == "latency-relay" {
        return latency::relay_child(&args[1..]).await;
    }
    let mut backends: Vec<Backend> = args[1..]
        .iter()
        .map(|b| match b.as_str() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "pg" => Ok(Backend::Postgres),
            "mariadb" | "mysql" => Ok(Backend::MySql),
            other => Err(anyhow::anyhow!(
                "unknown backend `{other}` (sqlite, postgres, mariadb)\n{USAGE}"
            )),
        })
        .collect::<Result<_, _>>()?;
    if backends.is_empty() {
        backends = vec![Backend::Sqlite, Backend::Postgres];
    }
    print_machine();
    for backend in backends {
        match suite.as_str() {
            "write" => write::suite(backend).await?,
            "relay" => relay::suite(backend).await?,
            "latency" => latency::suite(backend).await?,
            "scale" => scale::suite(backend).await?,
            "order" => order::suite(backend).await?,
            "big" => big::suite(backend).await?,
            "dashboard" => dashboard::suite(backend).await?,
            "kafka" => kafka::suite(backend).await?,
            "nats" => nats::suite(backend).await?,
            "amqp" => amqp::suite(backend).await?,
            other => anyhow::bail!("unknown suite {other}\n{USAGE}"),
        }
    }
    Ok(())
}

fn print_machine() {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "# machine: {cores} cores, {}",
        Utc::now().format("%Y-%m-%d")
    );
}

async fn fresh(backend: Backend) -> anyhow::Result<TestDb> {
    TestDb::new(backend)
        .await
        .ok_or_else(|| anyhow::anyhow!("{backend:?} is not configured (see OUTBOX_TEST_*_URL)"))
}

async fn server_version(db: &DatabaseConnection) -> String {
    let sql = match db.get_database_backend() {
        sea_orm::DbBackend::Sqlite => "SELECT sqlite_version() AS v",
        _ => "SELECT version() AS v",
    };
    db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .ok()
        .flatten()
        .and_then(|r| r.try_get::<String>("", "v").ok())
        .unwrap_or_default()
}
