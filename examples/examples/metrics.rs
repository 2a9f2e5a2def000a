//! A relay whose metrics Prometheus can scrape: `/metrics` on `127.0.0.1:9000`
//! (`METRICS_ADDR` to change it), through `metrics-exporter-prometheus`.
//!
//! ```text
//! cargo run -p outbox-examples --example metrics          # then: curl 127.0.0.1:9000/metrics
//! cargo run -p outbox-examples --example metrics -- once  # print the outbox lines and exit
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use outbox_seaorm::{
    DomainEvent, HandlerEntry, HandlerError, Registry, Relay, RetryPolicy, UnitOfWork,
};
use sea_orm::{ConnectOptions, Database};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(name = "invoice.sent")]
struct InvoiceSent {
    number: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::var("METRICS_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9000".into())
        .parse()?;
    // Buckets make the durations Prometheus histograms (aggregatable across relays, usable
    // with `histogram_quantile`); without them the exporter writes summaries.
    PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0, 300.0])?
        .with_http_listener(addr)
        .install()?;
    println!("metrics on http://{addr}/metrics");

    let mut options = ConnectOptions::new("sqlite::memory:");
    options.max_connections(1).sqlx_logging(false);
    let db = Database::connect(options).await?;
    outbox_seaorm::schema::create_tables(&db).await?;

    // Every fifth invoice bounces for good: dead letters to count.
    let mail = HandlerEntry::new("mail-invoice", |e: InvoiceSent, _ctx| async move {
        if e.number.is_multiple_of(5) {
            return Err(HandlerError::permanent(std::io::Error::other("bounced")));
        }
        Ok(())
    });
    let relay = Relay::builder(db.clone())
        .registry(Registry::new([mail])?)
        .retry(RetryPolicy::exponential(Duration::from_millis(10)).max_attempts(2))
        .metrics_interval(Some(Duration::from_millis(200)))
        .spawn()
        .await?;
    for number in 1..=20 {
        let uow = UnitOfWork::begin(&db).await?;
        uow.record(
            "invoice",
            number,
            InvoiceSent { number },
            Default::default(),
        )?;
        uow.commit().await?;
    }
    if std::env::args().nth(1).as_deref() == Some("once") {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let body = reqwest_lite(addr).await?;
        for line in body.lines().filter(|l| l.starts_with("outbox_")) {
            println!("{line}");
        }
    } else {
        tokio::signal::ctrl_c().await?;
    }
    relay.shutdown().await;
    Ok(())
}

/// `GET /metrics` over a plain TCP connection (the example needs no HTTP client crate).
async fn reqwest_lite(addr: SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(_, body)| body.to_owned()))
}
