//! Connecting, and saying why a connection failed: refused, unknown host, no answer,
//! authentication failed, as the driver reported it and within seconds.
//!
//! sqlx's pool retries a refused connection until its acquire timeout and then reports only
//! "pool timed out while waiting for an open connection". So the command line first opens one
//! connection itself, with a short timeout, and reads the driver's own error.

use std::time::Duration;

use sea_orm::sqlx::{self, ConnectOptions as _, Connection as _};

/// How long the first connection may take before the server counts as not answering.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the database could not be reached, in one sentence.
#[derive(Debug)]
pub(super) struct ConnectFailed(pub(super) String);

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectFailed {}

/// Opens and closes one connection to a PostgreSQL or MySQL `url` (SQLite has no server to
/// reach; a URL this cannot parse is left to the pool, which reports it).
pub(super) async fn probe(url: &str) -> Result<(), ConnectFailed> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Ok(opts) = url.parse::<sqlx::postgres::PgConnectOptions>() else {
            return Ok(());
        };
        let at = Server {
            host: opts.get_host().to_owned(),
            port: opts.get_port(),
            user: opts.get_username().to_owned(),
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, opts.connect()).await {
            Ok(Ok(c)) => {
                let _ = c.close().await;
                Ok(())
            }
            Ok(Err(e)) => Err(at.explain(e).await),
            Err(_) => Err(at.silent()),
        }
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        let Ok(opts) = url.parse::<sqlx::mysql::MySqlConnectOptions>() else {
            return Ok(());
        };
        let at = Server {
            host: opts.get_host().to_owned(),
            port: opts.get_port(),
            user: opts.get_username().to_owned(),
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, opts.connect()).await {
            Ok(Ok(c)) => {
                let _ = c.close().await;
                Ok(())
            }
            Ok(Err(e)) => Err(at.explain(e).await),
            Err(_) => Err(at.silent()),
        }
    } else {
        Ok(())
    }
}

struct Server {
    host: String,
    port: u16,
    user: String,
}

/// SQLSTATE classes and MySQL error numbers that mean "who you are was refused".
const PG_AUTH_CODES: [&str; 2] = ["28P01", "28000"];
const MYSQL_AUTH_NUMBERS: [u16; 3] = [1045, 1044, 1698];

impl Server {
    fn say(&self, why: impl std::fmt::Display) -> ConnectFailed {
        ConnectFailed(format!(
            "cannot connect to the database at {}:{}: {why}",
            self.host, self.port
        ))
    }

    fn silent(&self) -> ConnectFailed {
        self.say(format_args!(
            "no answer within {} s (a firewall dropping packets, or a server that does not \
             accept connections)",
            CONNECT_TIMEOUT.as_secs()
        ))
    }

    async fn explain(&self, e: sqlx::Error) -> ConnectFailed {
        match &e {
            sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                self.say("connection refused (is the server running, and listening on this port?)")
            }
            sqlx::Error::Io(io) => {
                // A host name that does not resolve fails inside the connect with a
                // resolver's text; look it up again to say so only when it is the cause.
                let unix_socket = self.host.starts_with('/');
                if !unix_socket
                    && tokio::net::lookup_host((self.host.as_str(), self.port))
                        .await
                        .is_err()
                {
                    self.say(format_args!("unknown host `{}`", self.host))
                } else {
                    self.say(io)
                }
            }
            sqlx::Error::Database(d) => {
                let auth = match d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                    Some(m) => MYSQL_AUTH_NUMBERS.contains(&m.number()),
                    None => d
                        .code()
                        .is_some_and(|c| PG_AUTH_CODES.contains(&c.as_ref())),
                };
                if auth {
                    self.say(format_args!(
                        "authentication failed for user `{}` ({})",
                        self.user,
                        d.message()
                    ))
                } else {
                    self.say(d.message())
                }
            }
            other => self.say(other),
        }
    }
}
