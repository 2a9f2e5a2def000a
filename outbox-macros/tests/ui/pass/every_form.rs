use outbox_seaorm_core::{event_handler, DomainEvent, DomainEvents, Events, HandlerContext, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(name = "order.created", version = 2, aggregate = "order")]
pub struct OrderCreated {
    id: u64,
}

#[derive(Serialize, Deserialize, DomainEvent)]
enum Lifecycle {
    Started,
    Stopped { reason: String },
}

#[derive(Serialize, Deserialize, DomainEvent, schemars::JsonSchema)]
#[event(name = "order.shipped", schema)]
pub struct OrderShipped {
    id: u64,
}

#[derive(DomainEvents)]
#[domain_events(aggregate = "order", id = id)]
struct Order {
    id: u64,
    #[events]
    events: Events,
}

#[derive(DomainEvents)]
struct Machine<T> {
    id: String,
    _state: T,
    #[events]
    recorded: Events,
}

#[event_handler]
async fn with_context(_event: OrderCreated, _ctx: &HandlerContext) -> anyhow::Result<()> {
    Ok(())
}

#[event_handler(name = "event-only")]
async fn event_only(_event: Lifecycle) {}

#[event_handler]
pub async fn typed_error(_event: OrderCreated) -> Result<(), HandlerError> {
    Err(HandlerError::permanent(std::io::Error::other("no")))
}

fn main() {
    use outbox_seaorm_core::Aggregate;
    assert_eq!(<OrderCreated as DomainEvent>::EVENT_TYPE, "order.created");
    assert_eq!(<OrderCreated as DomainEvent>::VERSION, 2);
    assert_eq!(<Lifecycle as DomainEvent>::EVENT_TYPE, "Lifecycle");
    assert_eq!(<Order as Aggregate>::AGGREGATE_TYPE, "order");
    assert_eq!(<Machine<u8> as Aggregate>::AGGREGATE_TYPE, "Machine");
    let m = Machine { id: "m1".into(), _state: 0u8, recorded: Events::new() };
    assert_eq!(m.aggregate_id(), "m1");
    let entries = [with_context::handler(), event_only::handler(), typed_error::handler()];
    // The default name is `module::path::fn_name`.
    assert!(entries[0].name().ends_with("::with_context"));
    assert_eq!(entries[1].name(), "event-only");
    assert!(entries[2].name().ends_with("::typed_error"));
    assert_eq!(entries[2].event_type(), "order.created");
}
