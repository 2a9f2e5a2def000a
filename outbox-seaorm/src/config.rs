//! Where the outbox lives: validated table names.

use sea_orm::DbBackend;

use crate::error::{Error, Result};

/// The names of the outbox's tables.
///
/// The defaults are `outbox_messages`, `outbox_deliveries`, `outbox_streams`, `outbox_inbox` and
/// `outbox_locks` and `outbox_relays`. Names are validated when they are
/// set (ASCII letters, digits and `_`, not starting with a digit, at most 63 bytes: PostgreSQL's
/// limit), optionally qualified by a schema (`messaging.outbox_messages`), and always quoted in
/// SQL, so a name can never inject SQL.
///
/// Every entry point that takes a connection has a form for the default names and a `_with`
/// form that takes `&OutboxConfig` after the connection: [`UnitOfWork::begin_with`],
/// [`Relay::builder_with`], [`Admin::new_with`], [`Inbox::new_with`],
/// [`schema::create_tables_with`] (and `check_tables_with`, `drop_tables_with`),
/// [`save_aggregate_with`], [`stage_aggregate_with`]; `OutboxMigration::new_with`.
///
/// [`UnitOfWork::begin_with`]: crate::UnitOfWork::begin_with
/// [`Relay::builder_with`]: crate::Relay::builder_with
/// [`Admin::new_with`]: crate::Admin::new_with
/// [`Inbox::new_with`]: crate::Inbox::new_with
/// [`schema::create_tables_with`]: crate::schema::create_tables_with
/// [`save_aggregate_with`]: crate::save_aggregate_with
/// [`stage_aggregate_with`]: crate::stage_aggregate_with
///
/// ```
/// use outbox_seaorm::OutboxConfig;
///
/// let config = OutboxConfig::new().with_prefix("billing_")?;
/// assert_eq!(config.messages_table(), "billing_outbox_messages");
/// assert!(OutboxConfig::new().messages("orders; DROP TABLE x").is_err());
/// # Ok::<(), outbox_seaorm::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutboxConfig {
    messages: String,
    deliveries: String,
    streams: String,
    inbox: String,
    locks: String,
    relays: String,
    pg_notify: bool,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            messages: "outbox_messages".into(),
            deliveries: "outbox_deliveries".into(),
            streams: "outbox_streams".into(),
            inbox: "outbox_inbox".into(),
            locks: "outbox_locks".into(),
            relays: "outbox_relays".into(),
            pg_notify: false,
        }
    }
}

impl OutboxConfig {
    /// The default names.
    pub fn new() -> Self {
        Self::default()
    }

    /// Prefixes every table name as it is set so far: `"billing_"` gives
    /// `billing_outbox_messages`, ..., and a messages table renamed before to `events` becomes
    /// `billing_events`. A schema-qualified name keeps its schema in front (`app.events` becomes
    /// `app.billing_events`). Each call prefixes again.
    ///
    /// ```
    /// use outbox_seaorm::OutboxConfig;
    /// let c = OutboxConfig::new().messages("app.events")?.with_prefix("billing_")?;
    /// assert_eq!(c.messages_table(), "app.billing_events");
    /// assert_eq!(c.deliveries_table(), "billing_outbox_deliveries");
    /// # Ok::<(), outbox_seaorm::Error>(())
    /// ```
    pub fn with_prefix(self, prefix: &str) -> Result<Self> {
        let prefixed = |name: &str| match name.rsplit_once('.') {
            Some((schema, base)) => format!("{schema}.{prefix}{base}"),
            None => format!("{prefix}{name}"),
        };
        let (messages, deliveries, streams, inbox, locks, relays) = (
            prefixed(&self.messages),
            prefixed(&self.deliveries),
            prefixed(&self.streams),
            prefixed(&self.inbox),
            prefixed(&self.locks),
            prefixed(&self.relays),
        );
        self.messages(messages)?
            .deliveries(deliveries)?
            .streams(streams)?
            .inbox(inbox)?
            .locks(locks)?
            .relays(relays)
    }

    /// Sets the messages table (one row per event).
    pub fn messages(mut self, name: impl Into<String>) -> Result<Self> {
        self.messages = validate(name.into())?;
        Ok(self)
    }

    /// Sets the deliveries table (the state of each handler of a message that failed once).
    pub fn deliveries(mut self, name: impl Into<String>) -> Result<Self> {
        self.deliveries = validate(name.into())?;
        Ok(self)
    }

    /// Sets the streams table (one row per aggregate: the last position handed out, and whether
    /// its delivery is held back by a failed message).
    pub fn streams(mut self, name: impl Into<String>) -> Result<Self> {
        self.streams = validate(name.into())?;
        Ok(self)
    }

    /// Sets the inbox table (messages a consumer has processed).
    pub fn inbox(mut self, name: impl Into<String>) -> Result<Self> {
        self.inbox = validate(name.into())?;
        Ok(self)
    }

    /// Sets the relays table (each running relay, its heartbeat and what it handles, for the
    /// command line and the dashboard).
    pub fn relays(mut self, name: impl Into<String>) -> Result<Self> {
        self.relays = validate(name.into())?;
        Ok(self)
    }

    /// Sets the locks table (which instance runs retention).
    pub fn locks(mut self, name: impl Into<String>) -> Result<Self> {
        self.locks = validate(name.into())?;
        Ok(self)
    }

    /// On PostgreSQL, have each commit that writes outbox rows `NOTIFY` the relays (on a channel
    /// named after the messages table), and have relays `LISTEN`, so relays in other processes
    /// wake at once instead of at their next poll. Off by default: PostgreSQL serializes the
    /// commits of notifying transactions cluster-wide (see BENCHMARKS.md for the cost).
    /// A lost notification only delays a message until the next poll. Ignored elsewhere.
    pub fn pg_notify(mut self, on: bool) -> Self {
        self.pg_notify = on;
        self
    }

    /// Whether commits notify relays on PostgreSQL.
    pub fn notifies(&self) -> bool {
        self.pg_notify
    }

    /// The PostgreSQL notification channel: the messages table's unqualified name.
    pub fn notify_channel(&self) -> &str {
        base_name(&self.messages)
    }

    /// The messages table's name, unquoted.
    pub fn messages_table(&self) -> &str {
        &self.messages
    }

    /// The deliveries table's name, unquoted.
    pub fn deliveries_table(&self) -> &str {
        &self.deliveries
    }

    /// The streams table's name, unquoted.
    pub fn streams_table(&self) -> &str {
        &self.streams
    }

    /// The inbox table's name, unquoted.
    pub fn inbox_table(&self) -> &str {
        &self.inbox
    }

    /// The locks table's name, unquoted.
    pub fn locks_table(&self) -> &str {
        &self.locks
    }

    /// The relays table's name, unquoted.
    pub fn relays_table(&self) -> &str {
        &self.relays
    }
}

fn validate(name: String) -> Result<String> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.split('.').count() > 2 {
        Some("only `table` or `schema.table` is allowed")
    } else {
        name.split('.').find_map(|part| {
            let mut bytes = part.bytes();
            match bytes.next() {
                None => Some("a part is empty"),
                Some(b) if !(b.is_ascii_alphabetic() || b == b'_') => {
                    Some("it must start with a letter or `_`")
                }
                _ if part.len() > 63 => Some("a part is longer than 63 bytes"),
                _ if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                    Some("only ASCII letters, digits and `_` are allowed")
                }
                _ => None,
            }
        })
    };
    match reason {
        Some(reason) => Err(Error::InvalidTableName { name, reason }),
        None => Ok(name),
    }
}

/// Quotes a validated (possibly schema-qualified) name for `backend`.
pub(crate) fn quote(backend: DbBackend, name: &str) -> String {
    let q = match backend {
        DbBackend::MySql => '`',
        _ => '"',
    };
    name.split('.')
        .map(|p| format!("{q}{p}{q}"))
        .collect::<Vec<_>>()
        .join(".")
}

/// The unqualified part of a name, for naming indexes after their table.
pub(crate) fn base_name(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_qualified_names_and_rejects_the_rest() {
        assert!(OutboxConfig::new().messages("outbox").is_ok());
        assert!(OutboxConfig::new().messages("app.outbox_2").is_ok());
        assert!(OutboxConfig::new().messages("_x").is_ok());
        for bad in [
            "",
            "1x",
            "a.b.c",
            "a..b",
            "x y",
            "x\"",
            "x;",
            "é",
            &"a".repeat(64),
        ] {
            let err = OutboxConfig::new().messages(bad).unwrap_err();
            assert!(
                matches!(err, Error::InvalidTableName { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn quotes_per_backend() {
        assert_eq!(quote(DbBackend::Postgres, "app.t"), "\"app\".\"t\"");
        assert_eq!(quote(DbBackend::MySql, "t"), "`t`");
        assert_eq!(base_name("app.t"), "t");
    }
}
