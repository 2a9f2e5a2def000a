use outbox_seaorm_core::{DomainEvents, Events};

#[derive(DomainEvents)]
#[domain_events(aggregate = "order")]
struct Order {
    id: u64,
    events: Events,
}

#[derive(DomainEvents)]
#[domain_events(agregate = "cart", id = key)]
struct Cart {
    id: u64,
    #[events]
    events: Events,
}

#[derive(DomainEvents)]
struct NoId {
    key: u64,
    #[events]
    events: Events,
}

#[derive(DomainEvents)]
struct WrongBuffer {
    id: u64,
    #[events]
    events: Vec<String>,
}

fn main() {}
