//! Confirm an order and deliver its event: the README's program.

use outbox_seaorm::{
    Aggregate, DomainEvent, DomainEvents, Events, HandlerContext, Relay, UnitOfWork, event_handler,
};
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(name = "order.confirmed", version = 1)] // the stored name: stable, pinned
struct OrderConfirmed {
    order_id: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, DomainEvents)]
#[sea_orm(table_name = "orders")]
#[domain_events(aggregate = "order", id = id)]
struct Model {
    #[sea_orm(primary_key)]
    id: i32, // auto-increment: read back on save
    status: String,
    #[sea_orm(ignore)]
    #[events]
    events: Events, // recorded, not committed yet
}
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
enum Relation {}
impl ActiveModelBehavior for ActiveModel {}

impl Model {
    fn confirm(&mut self) {
        self.status = "confirmed".into();
        self.record(OrderConfirmed { order_id: self.id });
    }
}

#[event_handler(name = "send-confirmation")] // registered through `inventory`
async fn send_confirmation(event: OrderConfirmed, ctx: &HandlerContext) -> anyhow::Result<()> {
    println!(
        "order {} confirmed (message {}, position {})",
        event.order_id,
        ctx.message_id(),
        ctx.position()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = sea_orm::Database::connect("sqlite://orders.db?mode=rwc").await?;
    outbox_seaorm::schema::create_tables(&db).await?; // or OutboxMigration
    db.execute_unprepared("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT NOT NULL)").await?;

    let mut order = Model {
        id: 0,
        status: "new".into(),
        events: Events::new(),
    };
    let uow = UnitOfWork::begin(&db).await?; // a transaction: every SeaORM call works on `&uow`
    uow.save(&mut order).await?; // inserted; `order.id` is now the generated key
    order.confirm(); // records OrderConfirmed { order_id: order.id }
    uow.save(&mut order).await?; // updated; the event is staged
    uow.commit().await?; // the outbox row is written, then COMMIT

    let relay = Relay::builder(db).build().await?; // checks the tables; `.spawn()` runs it in the background
    relay.drain().await?; // delivers what is available now: prints the line above
    Ok(())
}
