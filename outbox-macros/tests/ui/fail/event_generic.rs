use outbox_seaorm_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
struct Wrapper<T> {
    inner: T,
}

fn main() {}
