use outbox_seaorm_core::DomainEvent;
use serde::{Deserialize, Serialize};

// `#[event(schema)]` asks for a JSON Schema; the type does not derive `JsonSchema`.
#[derive(Serialize, Deserialize, DomainEvent)]
#[event(name = "order.created", schema)]
struct OrderCreated {
    id: u64,
}

fn main() {}
