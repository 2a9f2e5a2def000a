use outbox_seaorm_core::{event_handler, DomainEvent, HandlerContext};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
struct Pinged;

#[event_handler]
async fn context_by_value(_event: Pinged, _ctx: HandlerContext) {}

#[event_handler]
async fn returns_a_number(_event: Pinged) -> u32 {
    7
}

fn main() {}
