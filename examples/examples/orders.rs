//! An orders service on a SQLite file: orders are placed, confirmed and cancelled; every change
//! records domain events that are saved in the same transaction as the order, and a relay
//! delivers them to in-process handlers. One unit of work is rolled back (no message leaves),
//! one handler fails once and is retried, one always fails and ends as a dead letter.
//!
//! ```text
//! cargo run -p outbox-examples --example orders
//! ```
//!
//! `ORDERS_DB` overrides the database file (default `target/orders-example.db`, recreated on
//! every run).
//!
//! The same binary prints its event catalog (events with their JSON Schemas, handlers) instead
//! of running, as JSON or AsyncAPI 3.0, or checks it against a committed one:
//!
//! ```text
//! cargo run -p outbox-examples --example orders -- catalog asyncapi
//! cargo run -p outbox-examples --example orders -- catalog json > examples/orders.catalog.json
//! cargo run -p outbox-examples --example orders -- catalog check examples/orders.catalog.json
//! ```
//!
//! CI runs the check against the committed `examples/orders.catalog.json`; after a deliberate
//! change, regenerate it with the second line. A normal run ends by validating every stored
//! payload against its event's schema in the catalog.

// A binary: nothing in it is reachable from outside, `pub` only satisfies SeaORM's derives.
#![allow(unreachable_pub)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use outbox_seaorm::catalog::Catalog;
use outbox_seaorm::{
    Admin, DomainEvent, HandlerContext, OutboxMigration, Relay, RetryPolicy, UnitOfWork,
    event_handler,
};
use schemars::JsonSchema;
use sea_orm::entity::prelude::*;
use sea_orm::{ConnectOptions, Database};
use sea_orm_migration::prelude::*;
use serde::{Deserialize, Serialize};

// ---- Domain events -------------------------------------------------------------------------

/// A customer placed an order.
#[derive(Debug, Serialize, Deserialize, DomainEvent, JsonSchema)]
#[event(name = "order.placed", version = 1, aggregate = "order")]
pub struct OrderPlaced {
    order_id: Uuid,
    customer: String,
    amount_cents: i64,
}

/// Payment went through; the order is confirmed.
#[derive(Debug, Serialize, Deserialize, DomainEvent, JsonSchema)]
#[event(name = "order.confirmed", version = 1, aggregate = "order")]
pub struct OrderConfirmed {
    order_id: Uuid,
    customer: String,
}

/// The order was cancelled.
#[derive(Debug, Serialize, Deserialize, DomainEvent, JsonSchema)]
#[event(name = "order.cancelled", version = 1, aggregate = "order")]
pub struct OrderCancelled {
    order_id: Uuid,
    reason: String,
}

// ---- The aggregate: a SeaORM model that records events ------------------------------------

mod order {
    use outbox_seaorm::{DomainEvents, Events};
    use sea_orm::entity::prelude::*;

    use super::{OrderCancelled, OrderConfirmed, OrderPlaced};

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, DomainEvents)]
    #[sea_orm(table_name = "orders")]
    #[domain_events(aggregate = "order", id = id)]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub customer: String,
        pub amount_cents: i64,
        pub status: String,
        #[sea_orm(ignore)]
        #[events]
        pub events: Events,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    /// Business rules, with the events they record.
    impl Model {
        pub fn place(customer: &str, amount_cents: i64) -> Result<Self, String> {
            if amount_cents <= 0 {
                return Err(format!("an order of {amount_cents} cents is not an order"));
            }
            let mut order = Self {
                id: Uuid::now_v7(),
                customer: customer.into(),
                amount_cents,
                status: "placed".into(),
                events: Events::new(),
            };
            order.events.record(OrderPlaced {
                order_id: order.id,
                customer: customer.into(),
                amount_cents,
            });
            Ok(order)
        }

        pub fn confirm(&mut self) {
            self.status = "confirmed".into();
            self.events.record(OrderConfirmed {
                order_id: self.id,
                customer: self.customer.clone(),
            });
        }

        pub fn cancel(&mut self, reason: &str) {
            self.status = "cancelled".into();
            self.events.record(OrderCancelled {
                order_id: self.id,
                reason: reason.into(),
            });
        }
    }
}

// ---- Migrations: the application's own, plus the outbox's ---------------------------------

struct CreateOrders;

impl MigrationName for CreateOrders {
    fn name(&self) -> &str {
        "m20261129_000000_create_orders"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateOrders {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = sea_orm::Schema::new(manager.get_database_backend());
        manager
            .create_table(schema.create_table_from_entity(order::Entity))
            .await
    }
}

struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateOrders), Box::new(OutboxMigration::default())]
    }
}

// ---- Handlers, registered through inventory and dispatched by event type name -------------

static RESERVATION_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

#[event_handler(name = "print-placed")]
async fn print_placed(event: OrderPlaced, ctx: &HandlerContext) -> anyhow::Result<()> {
    println!(
        "  [handler] order {} placed by {} for {:.2} EUR (message {})",
        short(event.order_id),
        event.customer,
        event.amount_cents as f64 / 100.0,
        short(ctx.message_id()),
    );
    Ok(())
}

/// A warehouse call that times out the first time: the relay retries it alone.
#[event_handler(name = "reserve-stock")]
async fn reserve_stock(event: OrderPlaced, ctx: &HandlerContext) -> anyhow::Result<()> {
    if RESERVATION_ATTEMPTS.fetch_add(1, Ordering::SeqCst) == 0 {
        println!(
            "  [handler] warehouse timed out reserving stock for {} (attempt {})",
            short(event.order_id),
            ctx.attempt()
        );
        anyhow::bail!("warehouse: 504 gateway timeout");
    }
    println!(
        "  [handler] stock reserved for {} (attempt {})",
        short(event.order_id),
        ctx.attempt()
    );
    Ok(())
}

#[event_handler(name = "send-confirmation-email")]
async fn send_confirmation(event: OrderConfirmed) -> anyhow::Result<()> {
    println!(
        "  [handler] confirmation email to {} for order {}",
        event.customer,
        short(event.order_id)
    );
    Ok(())
}

/// A refund service that is down for the whole run: its deliveries end as dead letters.
#[event_handler(name = "refund-payment")]
async fn refund_payment(event: OrderCancelled, ctx: &HandlerContext) -> anyhow::Result<()> {
    println!(
        "  [handler] refund for {} failed (attempt {}): payment service unavailable",
        short(event.order_id),
        ctx.attempt()
    );
    anyhow::bail!("payment service unavailable")
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[24..].to_owned()
}

// ---- The service --------------------------------------------------------------------------

/// `catalog [json|asyncapi|check FILE]`: the catalog of this service, from what its derives and
/// handlers registered. A service with routes would build it with `Catalog::from_registry`.
fn print_catalog(args: &[String]) -> anyhow::Result<std::process::ExitCode> {
    let catalog = Catalog::from_inventory()?;
    let doc = match args.first().map(String::as_str) {
        None | Some("json") => catalog.to_json(),
        Some("asyncapi") => catalog.to_asyncapi("orders", env!("CARGO_PKG_VERSION")),
        Some("check") => {
            let path = args
                .get(1)
                .ok_or_else(|| anyhow::anyhow!("check needs a file"))?;
            let committed = Catalog::from_json(&std::fs::read_to_string(path)?)?;
            return Ok(match catalog.check_against(&committed) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(changes) => {
                    for c in changes {
                        eprintln!("breaking: {c}");
                    }
                    std::process::ExitCode::FAILURE
                }
            });
        }
        Some(other) => anyhow::bail!("`{other}`: expected json, asyncapi or check FILE"),
    };
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(std::process::ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("catalog") {
        return print_catalog(&args[1..]);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG")
                .unwrap_or_else(|_| "warn,outbox_seaorm=info,outbox_seaorm_core=error".into()),
        )
        .with_target(false)
        // Colours on a terminal only: a log written to a file keeps no escape codes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    let path = std::env::var("ORDERS_DB").unwrap_or_else(|_| "target/orders-example.db".into());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    if let Some(dir) = std::path::Path::new(&path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = ConnectOptions::new(format!("sqlite://{path}?mode=rwc"));
    options.sqlx_logging(false);
    let db = Database::connect(options).await?;
    Migrator::up(&db, None).await?;
    println!("database: {path} (migrated)");

    // The relay runs in the background; commits in this process wake it at once.
    let relay = Relay::builder(db.clone())
        .retry(
            RetryPolicy::exponential(Duration::from_millis(100))
                .max_attempts(3)
                .jitter(false),
        )
        .spawn()
        .await?;

    println!("\n1. placing three orders, each in its own unit of work");
    let mut orders = Vec::new();
    for (customer, cents) in [("ada", 4_200), ("grace", 1_999), ("linus", 12_000)] {
        let mut order = order::Model::place(customer, cents).map_err(anyhow::Error::msg)?;
        let uow = UnitOfWork::begin(&db).await?;
        uow.save(&mut order).await?;
        uow.commit().await?;
        orders.push(order);
    }

    println!("2. confirming two orders and cancelling one, all in one unit of work");
    let uow = UnitOfWork::begin(&db).await?;
    orders[0].confirm();
    orders[1].confirm();
    orders[2].cancel("customer changed their mind");
    for order in &mut orders {
        uow.save(order).await?;
    }
    uow.commit().await?;

    println!("3. a unit of work that fails halfway is rolled back: no order, no message");
    let rolled_back = async {
        let uow = UnitOfWork::begin(&db).await?;
        let mut ok = order::Model::place("margaret", 500).map_err(anyhow::Error::msg)?;
        uow.save(&mut ok).await?;
        // The second order breaks a business rule; `?` drops the unit of work: ROLLBACK. The
        // drop is logged at ERROR with the events it held: a dropped unit of work cannot tell
        // an error path from a forgotten commit (`uow.rollback()` says the rollback is meant).
        let mut bad = order::Model::place("margaret", -1).map_err(anyhow::Error::msg)?;
        uow.save(&mut bad).await?;
        uow.commit().await?;
        anyhow::Ok(())
    }
    .await;
    println!("   rolled back: {}", rolled_back.unwrap_err());

    let admin = Admin::new(db.clone());
    let counts = loop {
        let c = admin.counts().await?;
        if c.pending == 0 {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stats = relay.stats();
    relay.shutdown().await;

    println!("\nsummary");
    println!(
        "  orders stored:       {}",
        order::Entity::find().count(&db).await?
    );
    println!("  messages delivered:  {}", counts.delivered);
    println!("  messages dead:       {}", counts.dead);
    println!(
        "  relay:               {} claimed, {} retries scheduled, {} batches",
        stats.claimed, stats.retried, stats.batches
    );
    for dead in admin.dead_letters(10).await? {
        println!(
            "  dead letter {} ({} of {} {}):",
            short(dead.message_id),
            dead.event_type,
            dead.aggregate_type,
            dead.aggregate_id
                .parse()
                .map(short)
                .unwrap_or(dead.aggregate_id.clone()),
        );
        for d in dead.deliveries {
            println!(
                "    {:<24} {:?} after {} attempts: {}",
                d.handler,
                d.status,
                d.attempts,
                d.last_error.unwrap_or_default()
            );
        }
        println!("    (requeue it with Admin::requeue once the payment service is back)");
    }

    check_payloads(&db).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Every stored payload against its event's JSON Schema in the catalog: what a service's own
/// test can do to keep the published contract honest.
async fn check_payloads(db: &sea_orm::DatabaseConnection) -> anyhow::Result<()> {
    use outbox_seaorm::entity::message;

    let catalog = Catalog::from_inventory()?;
    let rows = message::Entity::find().all(db).await?;
    for row in &rows {
        let version = <u32 as TryFrom<i32>>::try_from(row.event_version)?;
        let schema = catalog
            .find(&row.event_type, version)
            .and_then(|e| e.schema.as_ref())
            .ok_or_else(|| anyhow::anyhow!("{} v{version}: no schema", row.event_type))?;
        let validator = jsonschema::validator_for(schema)?;
        if let Err(e) = validator.validate(&row.payload) {
            anyhow::bail!("{} v{version} payload {}: {e}", row.event_type, row.payload);
        }
    }
    println!(
        "  payloads:            {} of {} match their event's schema in the catalog",
        rows.len(),
        rows.len()
    );
    Ok(())
}

// ---- Tests of the aggregate and the handlers (`cargo test -p outbox-examples --example orders`)

#[cfg(test)]
mod tests {
    use outbox_seaorm::testing::{Harness, assert_not_recorded, assert_recorded};
    use outbox_seaorm::{RetryPolicy, UnitOfWork, entity::DeliveryStatus};
    use sea_orm::ConnectionTrait;

    use super::*;

    #[test]
    fn confirming_an_order_records_order_confirmed() {
        let mut order = order::Model::place("ada", 4_200).unwrap();
        order.confirm();
        assert_recorded!(
            order,
            OrderPlaced {
                amount_cents: 4_200,
                ..
            }
        );
        assert_recorded!(order, OrderConfirmed { customer, .. } if customer == "ada");
        assert_not_recorded!(order, OrderCancelled);
    }

    #[tokio::test]
    async fn handlers_deliver_retry_the_warehouse_and_park_the_refund() -> anyhow::Result<()> {
        // The handlers registered above with #[event_handler], on an in-memory SQLite outbox.
        let harness = Harness::builder()
            .relay(|r| r.retry(RetryPolicy::exponential(Duration::from_millis(1)).max_attempts(3)))
            .build()
            .await?;
        let db = harness.db();
        let schema = sea_orm::Schema::new(db.get_database_backend());
        db.execute(&schema.create_table_from_entity(order::Entity))
            .await?;

        let mut kept = order::Model::place("ada", 4_200).map_err(anyhow::Error::msg)?;
        let mut dropped = order::Model::place("linus", 12_000).map_err(anyhow::Error::msg)?;
        kept.confirm();
        dropped.cancel("customer changed their mind");
        let uow = UnitOfWork::begin(db).await?;
        uow.save(&mut kept).await?;
        uow.save(&mut dropped).await?;
        uow.commit().await?;

        let report = harness.settle().await?;
        assert_eq!(report.delivered::<OrderPlaced>().len(), 2, "{report}");
        assert_eq!(report.delivered::<OrderConfirmed>()[0].customer, "ada");
        // The warehouse timed out once; the retry reserved the stock.
        let warehouse = report.failed_for("reserve-stock");
        assert_eq!(warehouse.len(), 1, "{report}");
        assert_eq!(warehouse[0].status, DeliveryStatus::Delivered);
        assert_eq!(warehouse[0].attempts, 2);
        // The refund service is down: the cancellation is a dead letter after three attempts.
        let dead = report.dead();
        assert_eq!(dead.len(), 1, "{report}");
        assert_eq!(dead[0].summary.event_type, "order.cancelled");
        assert_eq!(report.failed_for("refund-payment")[0].attempts, 3);
        Ok(())
    }
}
