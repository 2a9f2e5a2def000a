//! The one error type of `outbox-seaorm`.

use uuid::Uuid;

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while saving events, relaying them or administering the outbox.
///
/// Every variant's message says what happened in one line; the foreign error that caused it
/// (SeaORM's, serde's, I/O) is its [`source`](std::error::Error::source), not repeated in the
/// message. [`report`](Error::report) joins the message and its sources
/// (`database error: Custom Error: no such table: outbox_messages`), for a log line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database returned an error (or the connection was lost).
    ///
    /// # Handling
    ///
    /// On the write side the transaction is rolled back and nothing was written; the events
    /// are back in their aggregates, so retrying the whole unit of work with the same
    /// instances writes them. The relay logs it, backs off and reconnects by itself.
    // The cleaned cause is part of the message, and SeaORM's error is the source for code that
    // inspects it; `report()` does not print it a second time.
    #[error("database error: {}", db_message(.0))]
    Db(#[from] sea_orm::DbErr),

    /// An event could not be recorded, decoded or handled, or the handler registry is invalid.
    #[error(transparent)]
    Event(#[from] outbox_seaorm_core::Error),

    /// An outbox table is missing, or lacks a column this version uses (it was created by an
    /// older version).
    ///
    /// # Handling
    ///
    /// Create the tables: add [`OutboxMigration`](crate::OutboxMigration) to your
    /// `sea-orm-migration` `Migrator`, or call
    /// [`schema::create_tables`](crate::schema::create_tables) at start-up.
    #[error(
        "the outbox table `{table}` is missing or outdated ({}); create the outbox tables \
         with `OutboxMigration` in your migrator or `outbox_seaorm::schema::create_tables`",
        db_message(.cause)
    )]
    Schema {
        /// The table's configured name.
        table: String,
        /// What the database said when it was read.
        #[source]
        cause: sea_orm::DbErr,
    },

    /// `update` (or `save` of a database-generated key) found no row with the aggregate's key:
    /// it was deleted, or never inserted.
    ///
    /// # Handling
    ///
    /// Nothing was written. Reload the aggregate, or insert it with
    /// [`UnitOfWork::insert`](crate::UnitOfWork::insert).
    #[error(
        "no row of aggregate `{aggregate_type}` `{aggregate_id}` to update: it was deleted or \
         never inserted"
    )]
    RowMissing {
        /// The aggregate type.
        aggregate_type: &'static str,
        /// The key it holds.
        aggregate_id: String,
    },

    /// The same instance is in another unit of work that has not ended: it wrote the
    /// aggregate's row or staged its events. Nothing was written.
    ///
    /// # Handling
    ///
    /// Commit or roll back the first unit of work, then save again.
    #[error(
        "aggregate `{aggregate_type}` `{aggregate_id}` is in another unit of work that has not \
         ended yet (it wrote the row or staged the events): end that one first"
    )]
    StagedElsewhere {
        /// The aggregate type.
        aggregate_type: &'static str,
        /// The aggregate id.
        aggregate_id: String,
    },

    /// `update` of an aggregate whose database-generated key came from a unit of work that did
    /// not commit: no row has that key (or another row got it since).
    ///
    /// # Handling
    ///
    /// Save it with [`UnitOfWork::save`](crate::UnitOfWork::save) or
    /// [`insert`](crate::UnitOfWork::insert), which insert it again with a new key.
    #[error(
        "aggregate `{aggregate_type}` `{aggregate_id}` has a generated key from a unit of work \
         that did not commit: save or insert it again instead of updating it"
    )]
    KeyNotCommitted {
        /// The aggregate type.
        aggregate_type: &'static str,
        /// The key it holds.
        aggregate_id: String,
    },

    /// A table name given to [`OutboxConfig`](crate::OutboxConfig) is not a plain identifier.
    #[error("invalid table name `{name}`: {reason}")]
    InvalidTableName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// No outbox message has this id in a state the operation applies to (only dead and
    /// unhandled messages are requeued; those, or pending ones no relay holds, are discarded).
    #[error(
        "no outbox message {message_id} to {operation}: it does not exist, or it is not {state}"
    )]
    MessageNotFound {
        /// The id asked for.
        message_id: Uuid,
        /// What was attempted (`"requeue"`, ...).
        operation: &'static str,
        /// The state the operation needs.
        state: &'static str,
    },

    /// The relay was given an invalid setting.
    #[error("invalid relay setting: {0}")]
    InvalidSetting(&'static str),

    /// The dashboard was asked to listen on an address other machines can reach, without
    /// authentication.
    ///
    /// # Handling
    ///
    /// Listen on a loopback address, set basic or bearer authentication in the
    /// `DashboardConfig`, put your own authenticating layer in front (then mount
    /// `dashboard::router` yourself), or, if the network is private, say so with
    /// `DashboardConfig::allow_unauthenticated`.
    #[cfg(feature = "dashboard")]
    #[error(
        "refusing to serve the outbox dashboard on {addr} without authentication: set basic or \
         bearer auth, or allow it explicitly (`DashboardConfig::allow_unauthenticated`, \
         `--i-know-it-is-open` on the command line)"
    )]
    OpenDashboard {
        /// The address asked for.
        addr: std::net::SocketAddr,
    },

    /// A Kafka consumer could not be created or subscribed (`consume_kafka`): a bad
    /// setting, an invalid topic name.
    #[cfg(feature = "kafka")]
    #[error("kafka consumer error")]
    Kafka(#[source] rdkafka::error::KafkaError),

    /// The dashboard could not listen or serve.
    #[cfg(feature = "dashboard")]
    #[error("dashboard server error")]
    Serve(#[source] std::io::Error),

    /// The relay was told to require trace context
    /// ([`RelayBuilder::require_trace_context`](crate::RelayBuilder::require_trace_context)) and
    /// its start span has no OpenTelemetry context the outbox can read.
    #[error("trace context is required but not available: {reason}")]
    TraceContextUnavailable {
        /// What is missing, with the versions the outbox needs.
        reason: String,
    },

    /// The `mysql` backend is connected to a server other than MariaDB 10.6 or later (MySQL,
    /// or an older MariaDB): the driver's statements use MariaDB's syntax (`SET STATEMENT ..
    /// FOR`, `SKIP LOCKED` as MariaDB has it), and are tested on MariaDB only.
    ///
    /// # Handling
    ///
    /// Use MariaDB 10.6 or later, or PostgreSQL or SQLite.
    #[error(
        "the outbox's `mysql` backend needs MariaDB 10.6 or later; the server is `{version}` \
         (MySQL is not supported)"
    )]
    UnsupportedServer {
        /// What the server says it is (`SELECT VERSION()`).
        version: String,
    },

    /// A test harness (`testing::Harness::settle`) gave up with messages still pending: their
    /// time ran out, or nothing in the test can deliver them.
    #[cfg(feature = "testing")]
    #[error("the outbox did not settle after {waited:?}: {reason}\n{}", pending_lines(.pending))]
    NotSettled {
        /// How long it waited.
        waited: std::time::Duration,
        /// Why it stopped waiting.
        reason: String,
        /// The messages still pending.
        pending: Vec<crate::MessageSummary>,
    },
}

/// One line per pending message, for [`Error::NotSettled`].
#[cfg(feature = "testing")]
fn pending_lines(pending: &[crate::MessageSummary]) -> String {
    let mut out = format!("still pending ({}):", pending.len());
    for m in pending {
        out.push_str(&format!(
            "\n  #{} {} v{} (aggregate {} {}), {} attempt(s), next at {}{}",
            m.sequence,
            m.event_type,
            m.event_version,
            m.aggregate_type,
            m.aggregate_id,
            m.attempts,
            m.available_at.format("%H:%M:%S%.3f"),
            m.last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default(),
        ));
    }
    out
}

/// What the database said, without the layers' labels around it: SeaORM's "Execution Error: ",
/// sqlx's "error returned from database: ", and PostgreSQL's " at line 948" (a line of the
/// server's own C source, which tells an operator nothing).
pub(crate) fn db_message(e: &sea_orm::DbErr) -> String {
    use sea_orm::{DbErr, RuntimeErr};
    match e {
        DbErr::Conn(r) | DbErr::Exec(r) | DbErr::Query(r) => match r {
            #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
            RuntimeErr::SqlxError(s) => match s.as_ref() {
                sea_orm::sqlx::Error::Database(d) => d.message().to_owned(),
                other => other.to_string(),
            },
            RuntimeErr::Internal(m) => m.clone(),
            #[allow(unreachable_patterns)]
            other => other.to_string(),
        },
        DbErr::Custom(m) => m.clone(),
        other => other.to_string(),
    }
}

impl Error {
    /// The message with the messages of its sources, as one line. A database error's message
    /// already holds what the database said (without the driver's labels), so its source is
    /// not repeated.
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        if matches!(self, Error::Db(_) | Error::Schema { .. }) {
            return out;
        }
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            out.push_str(": ");
            out.push_str(&s.to_string());
            source = s.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_error_is_the_source_and_the_report_shows_it_once() {
        let e = Error::from(sea_orm::DbErr::Custom(
            "no such table: outbox_messages".into(),
        ));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            e.to_string(),
            "database error: no such table: outbox_messages"
        );
        assert_eq!(e.report(), e.to_string());
    }
}
