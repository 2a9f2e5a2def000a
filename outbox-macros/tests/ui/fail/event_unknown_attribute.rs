use outbox_seaorm_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(nmae = "order.created", version = 0)]
struct OrderCreated {
    id: u64,
}

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(name = "")]
struct Empty;

fn main() {}
