//! Relay → broker against the limit, for any [`Broker`]: a plain client loop publishing the
//! same messages (same body, headers, message id, destination per aggregate), every ack
//! awaited, one by one and with a window in flight, against the relay with the broker's route.
//! Between the two, the rows that say where the relay's time goes: the publisher called
//! directly with the same window (its own cost per message), and the relay with a no-op handler
//! instead of the route (what the database lets it reach). Variants alternate round by round;
//! each round publishes to a fresh destination (a stream, a queue), and checks that it holds
//! every message once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use outbox_seaorm::publish::Template;
use outbox_seaorm::{
    DeliveredRows, DeliveryOrder, Envelope, OnFailure, Publisher, Registry, Relay, Route,
};
use outbox_tests::{Backend, TestDb};

use crate::backlog::{noop_registry, pending_left, reset, seed};
use crate::cpu::Cpu;
use crate::{env_num, fresh, server_version};

/// The relay's default concurrency (`RelayBuilder::concurrency`).
const DEFAULT_CONCURRENCY: usize = 16;

/// A broker as the bench drives it.
pub(crate) trait Broker {
    /// A fresh destination of one round (a stream, an exchange and its queue).
    type Target;
    /// The messages of a plain loop, built before the clock starts.
    type Prepared;

    /// What the table calls the broker.
    fn name(&self) -> &'static str;
    /// The broker's process name in `/proc` (its CPU time is reported).
    fn process(&self) -> &'static str;
    async fn open(&self) -> anyhow::Result<Self::Target>;
    /// The publisher the relay's route uses, and the route's destination template.
    fn publisher(&self, target: &Self::Target) -> anyhow::Result<(Arc<dyn Publisher>, String)>;
    /// The plain loop's messages for `envelopes`, as the publisher would send them.
    fn prepare(
        &self,
        target: &Self::Target,
        envelopes: &[Envelope],
    ) -> anyhow::Result<Self::Prepared>;
    /// Publishes `prepared` with `window` acks awaited at once (1: one by one).
    async fn send(&self, prepared: Self::Prepared, window: usize) -> anyhow::Result<()>;
    /// How many messages `target` holds.
    async fn stored(&self, target: &Self::Target) -> anyhow::Result<u64>;
    async fn close(&self, target: Self::Target) -> anyhow::Result<()>;
}

#[derive(Debug, Clone, Copy)]
enum Variant {
    /// The broker's client directly, `window` publishes awaiting their acks.
    Plain { window: usize },
    /// The outbox's publisher on envelopes, `window` calls at once: no relay, no database.
    Publisher { window: usize },
    /// The relay with the broker's route.
    Relay { order: Order, concurrency: usize },
    /// The relay with a no-op handler and no route: what the database lets it reach.
    RelayNoop { order: Order, concurrency: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Unordered,
    PerAggregate,
}

impl Order {
    fn delivery(self) -> DeliveryOrder {
        match self {
            Order::Unordered => DeliveryOrder::Unordered,
            Order::PerAggregate => DeliveryOrder::PerAggregate(OnFailure::Block),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Order::Unordered => "unordered",
            Order::PerAggregate => "per-aggregate order",
        }
    }
}

impl Variant {
    fn label(self) -> String {
        match self {
            Variant::Plain { window: 1 } => "plain client loop, acks one by one".into(),
            Variant::Plain { window } => {
                format!("plain client loop, {window} in flight (the limit)")
            }
            Variant::Publisher { window } => {
                format!("the outbox's publisher alone, {window} calls at once")
            }
            Variant::Relay { order, concurrency } => {
                format!(
                    "relay → broker, {}, concurrency {concurrency}",
                    order.label()
                )
            }
            Variant::RelayNoop { order, concurrency } => format!(
                "relay → no-op handler (no broker), {}, concurrency {concurrency}",
                order.label()
            ),
        }
    }
}

/// Knobs of a suite, read from `BENCH_<PREFIX>_EVENTS`, `_AGGREGATES`, `_WINDOW`, `_BATCH`
/// and `BENCH_ROUNDS`.
struct Knobs {
    n: u64,
    aggregates: u64,
    window: usize,
    /// The relays' batch size.
    batch: u32,
    rounds: usize,
}

/// Runs the suite against `broker` on `backend` and prints its table.
pub(crate) async fn suite<B: Broker>(
    broker: &B,
    backend: Backend,
    knobs_prefix: &str,
) -> anyhow::Result<()> {
    let knobs = Knobs {
        n: env_num(&format!("BENCH_{knobs_prefix}_EVENTS"), 20_000.0) as u64,
        aggregates: env_num(&format!("BENCH_{knobs_prefix}_AGGREGATES"), 1000.0) as u64,
        window: env_num(&format!("BENCH_{knobs_prefix}_WINDOW"), 100.0).max(1.0) as usize,
        batch: env_num(&format!("BENCH_{knobs_prefix}_BATCH"), 100.0).max(1.0) as u32,
        rounds: env_num("BENCH_ROUNDS", 3.0).max(1.0) as usize,
    };
    let t = fresh(backend).await?;
    let bench = Bench {
        t: &t,
        broker,
        n: knobs.n,
        aggregates: knobs.aggregates,
        batch: knobs.batch,
    };
    let w = knobs.window;
    let mut variants = vec![
        Variant::Plain { window: 1 },
        Variant::Plain { window: w },
        Variant::Publisher { window: w },
    ];
    for order in [Order::Unordered, Order::PerAggregate] {
        variants.push(Variant::RelayNoop {
            order,
            concurrency: w,
        });
        for concurrency in [DEFAULT_CONCURRENCY, w] {
            variants.push(Variant::Relay { order, concurrency });
        }
    }
    // `BENCH_ONLY`: only the variants whose label holds it, to profile one of them.
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        variants.retain(|v| v.label().contains(&only));
    }
    println!(
        "\n## relay → {} vs a plain publish loop, {backend:?} ({}), {} events over {} \
         aggregates, destination per aggregate, structured CloudEvents, batch {}, rows deleted, \
         {} alternating rounds",
        broker.name(),
        server_version(&t.db).await,
        knobs.n,
        knobs.aggregates,
        knobs.batch,
        knobs.rounds,
    );
    let mut secs = vec![0.0; variants.len()];
    let mut cpu = vec![Cpu::default(); variants.len()];
    for round in 0..knobs.rounds {
        // Each round starts with another variant, so drift over the run spreads evenly.
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            let (s, c) = bench.round(variants[i]).await?;
            secs[i] += s;
            cpu[i].add(c);
        }
    }
    print_table(broker, backend, &knobs, &variants, &secs, &cpu);
    t.cleanup().await;
    Ok(())
}

fn print_table<B: Broker>(
    broker: &B,
    backend: Backend,
    knobs: &Knobs,
    variants: &[Variant],
    secs: &[f64],
    cpu: &[Cpu],
) {
    let total = (knobs.n * knobs.rounds as u64) as f64;
    // The plain loop with the window in flight (absent when `BENCH_ONLY` left it out).
    let limit = variants
        .iter()
        .position(|v| matches!(v, Variant::Plain { window } if *window > 1))
        .map(|i| secs[i]);
    let per_k = |s: f64| 1000.0 * 1000.0 * s / total;
    println!(
        "| variant | events/s | vs the limit | CPU ms per 1k events: bench / {} / database server |",
        broker.process()
    );
    println!("|---|---:|---:|---|");
    for (i, v) in variants.iter().enumerate() {
        let database = if backend == Backend::Sqlite {
            "(in the bench)".to_owned()
        } else {
            format!("{:.0}", per_k(cpu[i].database))
        };
        let ratio = limit.map_or("–".to_owned(), |l| format!("{:.0}%", 100.0 * l / secs[i]));
        println!(
            "| {} | {:.0} | {ratio} | {:.0} / {:.0} / {database} |",
            v.label(),
            total / secs[i],
            per_k(cpu[i].bench),
            per_k(cpu[i].broker),
        );
    }
}

/// What a suite shares between rounds.
struct Bench<'a, B> {
    t: &'a TestDb,
    broker: &'a B,
    n: u64,
    aggregates: u64,
    batch: u32,
}

impl<B: Broker> Bench<'_, B> {
    /// Runs one variant once: its seconds, and the CPU the processes used meanwhile.
    async fn round(&self, v: Variant) -> anyhow::Result<(f64, Cpu)> {
        if let Variant::RelayNoop { order, concurrency } = v {
            return self.relay(noop_registry(), order, concurrency).await;
        }
        let target = self.broker.open().await?;
        let (publisher, template) = self.broker.publisher(&target)?;
        let measured = match v {
            Variant::Plain { window } => {
                let prepared = self.broker.prepare(&target, &self.envelopes())?;
                let start = self.start();
                self.broker.send(prepared, window).await?;
                self.stop(start)
            }
            Variant::Publisher { window } => {
                self.publisher_alone(publisher.as_ref(), &template, window)
                    .await?
            }
            Variant::Relay { order, concurrency } => {
                let route = Route::shared("bench-broker", publisher).destination(&template)?;
                let registry = Registry::new([])?.with_route(route)?;
                self.relay(registry, order, concurrency).await?
            }
            Variant::RelayNoop { .. } => unreachable!("returned above"),
        };
        // Every message is there once: nothing lost, no duplicate slipped through.
        let stored = self.broker.stored(&target).await?;
        anyhow::ensure!(
            stored == self.n,
            "{}: {stored} messages arrived, not {}",
            v.label(),
            self.n
        );
        self.broker.close(target).await?;
        Ok(measured)
    }

    /// The messages the relay publishes for the seeded backlog (see `backlog::seed`): message
    /// `i` of aggregate `i % aggregates` at position `i / aggregates + 1`.
    fn envelopes(&self) -> Vec<Envelope> {
        (1..=self.n)
            .map(|i| {
                let mut e = Envelope::new(uuid::Uuid::new_v4(), "bench.noop", 1, r#"{"n":1}"#);
                e.sequence = i as i64;
                e.position = (i / self.aggregates + 1) as i64;
                e.aggregate_type = "bench".into();
                e.aggregate_id = (i % self.aggregates).to_string();
                e
            })
            .collect()
    }

    /// The publisher as the relay calls it, without the relay: what it costs per message over
    /// the plain loop (serializing, headers, rendering the destination).
    async fn publisher_alone(
        &self,
        publisher: &dyn Publisher,
        template: &str,
        window: usize,
    ) -> anyhow::Result<(f64, Cpu)> {
        let template = Template::parse(template)?;
        let envelopes = self.envelopes();
        let start = self.start();
        let mut acks = futures_util::stream::iter(envelopes.iter().map(|e| {
            let template = &template;
            async move { publisher.publish(e, &template.render(e)).await }
        }))
        .buffer_unordered(window);
        while let Some(r) = acks.next().await {
            r.map_err(|e| anyhow::anyhow!("publish: {e}"))?;
        }
        Ok(self.stop(start))
    }

    /// One relay drains the seeded backlog; pools and schema checks before the clock starts.
    async fn relay(
        &self,
        registry: Registry,
        order: Order,
        concurrency: usize,
    ) -> anyhow::Result<(f64, Cpu)> {
        reset(&self.t.db).await?;
        seed(&self.t.db, self.n, self.aggregates, "pending").await?;
        let relay = Relay::builder(self.t.connect_again().await)
            .id("bench-broker")
            .registry(registry)
            .batch_size(self.batch)
            .concurrency(concurrency)
            .ordering(order.delivery())
            .delivered_rows(DeliveredRows::Delete)
            .poll_interval(Duration::from_millis(20))
            .without_retention()
            .build()
            .await?;
        let start = self.start();
        let handle = relay.spawn();
        loop {
            let s = handle.stats();
            if s.delivered + s.dead >= self.n {
                break;
            }
            if start.0.elapsed() > Duration::from_secs(600) {
                anyhow::bail!("relay → {} stalled: {s:?}", self.broker.name());
            }
            // Short: the poll's granularity is part of the measured time.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let measured = self.stop(start);
        let dead = handle.stats().dead;
        handle.shutdown().await;
        anyhow::ensure!(dead == 0, "{dead} messages went dead");
        anyhow::ensure!(!pending_left(&self.t.db).await?, "pending messages left");
        Ok(measured)
    }

    fn cpu(&self) -> Cpu {
        let database = match self.t.backend {
            Backend::Postgres => Some("postgres"),
            Backend::MySql => Some("mariadbd"),
            // In this process.
            Backend::Sqlite => None,
        };
        Cpu::now(self.broker.process(), database)
    }

    fn start(&self) -> (Instant, Cpu) {
        (Instant::now(), self.cpu())
    }

    fn stop(&self, (started, cpu): (Instant, Cpu)) -> (f64, Cpu) {
        let secs = started.elapsed().as_secs_f64();
        (secs, cpu.until(self.cpu()))
    }
}
