//! The dashboard over a shop's outbox on SQLite: several handlers, some of them failing, so
//! every page has something to show (delivered, pending, retrying, dead, timed out), then a
//! relay and a writer keep running so the overview moves.
//!
//! ```text
//! cargo run -p outbox-examples --example dashboard
//! # open http://127.0.0.1:8080/outbox
//! ```
//!
//! `DASHBOARD_ADDR` changes the address (default `127.0.0.1:8080`), `DASHBOARD_DB` the database
//! file (default `target/dashboard-example.db`, recreated on every run). `--once` seeds, fetches
//! the overview once, prints what it shows and exits (what CI runs).

use std::time::Duration;

use axum::Router;
use axum::response::Redirect;
use outbox_seaorm::dashboard::{self, DashboardConfig};
use outbox_seaorm::{
    Admin, DomainEvent, HandlerEntry, HandlerError, Registry, Relay, RetryPolicy, UnitOfWork,
};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// A customer placed an order.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "order.placed", version = 1)]
struct OrderPlaced {
    order_id: Uuid,
    customer: String,
    amount_cents: i64,
}

/// The payment went through.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "payment.captured", version = 1)]
struct PaymentCaptured {
    order_id: Uuid,
    amount_cents: i64,
}

/// The parcel left the warehouse.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "order.shipped", version = 1)]
struct OrderShipped {
    order_id: Uuid,
    carrier: String,
}

/// No handler takes it: its messages complete without being delivered anywhere.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(name = "order.gift-wrapped", version = 1)]
struct GiftWrapped {
    order_id: Uuid,
}

/// The handlers: one always works, one bounces some mail for good (dead letters), the
/// warehouse answers 503 for some payments (retrying), the ledger hangs on one carrier (timed
/// out, retrying).
fn registry() -> Registry {
    Registry::new([
        HandlerEntry::new("update-search-index", |_: OrderPlaced, _ctx| async move {
            Ok::<_, std::io::Error>(())
        }),
        HandlerEntry::new(
            "send-confirmation-email",
            |e: OrderPlaced, _ctx| async move {
                if e.customer.ends_with("@bounce.example") {
                    return Err(HandlerError::permanent(std::io::Error::other(format!(
                        "smtp 550: mailbox {} unavailable",
                        e.customer
                    ))));
                }
                Ok(())
            },
        ),
        HandlerEntry::new("notify-warehouse", |e: PaymentCaptured, _ctx| async move {
            if e.amount_cents % 5 == 0 {
                return Err(HandlerError::retry(std::io::Error::other(
                    "warehouse: 503 service unavailable",
                )));
            }
            Ok(())
        }),
        HandlerEntry::new("post-to-ledger", |e: OrderShipped, _ctx| async move {
            if e.carrier == "pigeon" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok::<_, std::io::Error>(())
        }),
    ])
    .expect("distinct handler names")
}

fn relay(db: &DatabaseConnection) -> outbox_seaorm::RelayBuilder {
    Relay::builder(db.clone())
        .registry(registry())
        .handler_timeout(Duration::from_millis(200))
        // Long enough that the failed deliveries are still retrying while you look.
        .retry(RetryPolicy::exponential(Duration::from_secs(600)).max_attempts(3))
}

/// One order's story: placed, maybe paid, maybe shipped, in one unit of work each.
async fn order(db: &DatabaseConnection, n: u64) -> anyhow::Result<()> {
    let id = Uuid::now_v7();
    let customer = if n % 9 == 4 {
        format!("customer{n}@bounce.example")
    } else {
        format!("customer{n}@shop.example")
    };
    let amount_cents = 1_000 + (n as i64 * 37) % 9_000;
    let uow = UnitOfWork::begin(db).await?;
    let placed = OrderPlaced {
        order_id: id,
        customer,
        amount_cents,
    };
    uow.record("order", id, placed, Default::default())?;
    if !n.is_multiple_of(5) {
        let paid = PaymentCaptured {
            order_id: id,
            amount_cents,
        };
        uow.record("order", id, paid, Default::default())?;
    }
    if n.is_multiple_of(3) {
        let carrier = if n.is_multiple_of(21) {
            "pigeon"
        } else {
            "dhl"
        };
        let shipped = OrderShipped {
            order_id: id,
            carrier: carrier.into(),
        };
        uow.record("order", id, shipped, Default::default())?;
    }
    if n % 40 == 7 {
        uow.record(
            "order",
            id,
            GiftWrapped { order_id: id },
            Default::default(),
        )?;
    }
    uow.commit().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,outbox_seaorm=info".into()),
        )
        .with_target(false)
        // Colours on a terminal only: a log written to a file keeps no escape codes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let once = std::env::args().any(|a| a == "--once");
    let addr: std::net::SocketAddr = std::env::var("DASHBOARD_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".into())
        .parse()?;
    let path =
        std::env::var("DASHBOARD_DB").unwrap_or_else(|_| "target/dashboard-example.db".into());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    if let Some(dir) = std::path::Path::new(&path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = ConnectOptions::new(format!("sqlite://{path}?mode=rwc"));
    options.sqlx_logging(false);
    let db = Database::connect(options).await?;
    outbox_seaorm::schema::create_tables(&db, &Default::default()).await?;

    // History: 150 orders, delivered as far as their handlers let them.
    for n in 0..150 {
        order(&db, n).await?;
    }
    relay(&db).build().await?.drain().await?;
    // A backlog the relay has not seen yet, and a relay (with a writer) that keeps going.
    for n in 150..180 {
        order(&db, n).await?;
    }
    let running = relay(&db)
        .poll_interval(Duration::from_secs(2))
        .spawn()
        .await?;
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            for n in 180.. {
                tokio::time::sleep(Duration::from_secs(3)).await;
                if let Err(e) = order(&db, n).await {
                    tracing::warn!(error = %e, "could not record an order");
                }
            }
        })
    };

    let app = Router::new()
        .route(
            "/",
            axum::routing::get(|| async { Redirect::to("/outbox") }),
        )
        .nest(
            "/outbox",
            dashboard::router(
                db.clone(),
                DashboardConfig::new().trace_link("http://localhost:16686/trace/{trace_id}"),
            ),
        );
    let config = DashboardConfig::new();
    config.check_listen(addr)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!("outbox dashboard: http://{local}/outbox  (database {path})");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    if once {
        let page = fetch(local, "/outbox").await?;
        anyhow::ensure!(page.starts_with("HTTP/1.1 200"), "overview: {page}");
        let counts = Admin::new(db.clone()).counts().await?;
        println!(
            "overview served: {} pending, {} delivered, {} dead",
            counts.pending, counts.delivered, counts.dead
        );
    } else {
        tokio::signal::ctrl_c().await?;
    }
    writer.abort();
    server.abort();
    running.shutdown().await;
    Ok(())
}

/// A plain HTTP/1.1 GET, so the check needs no HTTP client.
async fn fetch(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    conn.read_to_string(&mut out).await?;
    Ok(out)
}
