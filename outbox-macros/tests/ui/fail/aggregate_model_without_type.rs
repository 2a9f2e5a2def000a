use outbox_seaorm_core::{DomainEvents, Events};

// A SeaORM entity's model: its identifier would be every entity's aggregate type.
#[derive(DomainEvents)]
struct Model {
    id: u64,
    #[events]
    events: Events,
}

fn main() {}
