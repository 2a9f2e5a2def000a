use outbox_seaorm_core::{event_handler, HandlerContext};

struct NotAnEvent;

#[event_handler]
async fn handles_nothing(_event: NotAnEvent, _ctx: &HandlerContext) -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
