use outbox_seaorm_core::{event_handler, DomainEvent, HandlerContext};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
struct Pinged;

#[event_handler]
fn not_async(_event: Pinged, _ctx: &HandlerContext) -> anyhow::Result<()> {
    Ok(())
}

#[event_handler]
async fn no_event() {}

#[event_handler(nam = "x")]
async fn too_many(_event: Pinged, _ctx: &HandlerContext, _extra: u32) {}

fn main() {}
