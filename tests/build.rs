//! Sets `--cfg outbox_<name>` (`outbox_postgres`, `outbox_mysql`, `outbox_nats`, `outbox_amqp`,
//! `outbox_pg_restart`, `outbox_rabbitmq_restart`, `outbox_faketime`, `outbox_chromium`, `outbox_debezium`,
//! `outbox_kafka`, `outbox_tansu`) for each test server whose variable is set
//! or which `OUTBOX_TEST_REQUIRE` names. Tests of a server without its cfg are `#[ignore]`d with
//! the missing variable as the reason, so a default `cargo test` counts them as ignored rather
//! than passed. An unknown name in `OUTBOX_TEST_REQUIRE` fails the build.

#[path = "src/servers.rs"]
#[allow(dead_code, unreachable_pub)]
mod servers;

use servers::{REQUIRE_VAR, Server, parse_required};

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/servers.rs");
    println!("cargo::rerun-if-env-changed={REQUIRE_VAR}");
    for server in Server::ALL {
        println!("cargo::rerun-if-env-changed={}", server.var());
        println!("cargo::rustc-check-cfg=cfg(outbox_{})", server.name());
    }
    let required = match std::env::var(REQUIRE_VAR) {
        Ok(list) => match parse_required(&list) {
            Ok(required) => required,
            Err(e) => {
                println!("cargo::error={e}");
                return;
            }
        },
        Err(_) => Vec::new(),
    };
    for server in Server::ALL {
        if server.configured().is_some() || required.contains(&server) {
            println!("cargo::rustc-cfg=outbox_{}", server.name());
        }
    }
}
