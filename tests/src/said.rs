//! What the library and the `outbox` command line say in the cases the README's "What you will
//! see when…" lists: one constant per message, with `<placeholders>`. The tests fill them in
//! and assert the output; `cli.rs` checks that the README holds each one verbatim.

/// `outbox requeue <id>` of a message that is not dead (here: delivered).
pub const REQUEUE_NOT_DEAD: &str =
    "error: message <id> is delivered: only dead and unhandled messages are requeued";

/// `outbox requeue <id>` / `discard <id>` of an id no message has.
pub const NO_SUCH_MESSAGE: &str = "error: no outbox message <id>";

/// `outbox show <n>` of a sequence number no message has.
pub const NO_SUCH_SEQUENCE: &str = "error: no outbox message has sequence number <n>";

/// Any command on PostgreSQL when the tables are missing: the server's words only.
pub const PG_TABLE_MISSING: &str = "error: database error: relation \"<table>\" does not exist";

/// The hint after a database error, given only once the tables were checked and are missing.
pub const MIGRATE_HINT: &str = "hint: the outbox tables are missing: run `outbox migrate`, or \
                                name the tables with --prefix / --messages-table / \
                                --deliveries-table";

/// Nothing listens on the port.
pub const REFUSED: &str = "error: cannot connect to the database at <host>:<port>: connection \
                           refused (is the server running, and listening on this port?)";

/// The host name does not resolve.
pub const UNKNOWN_HOST: &str =
    "error: cannot connect to the database at <host>:<port>: unknown host `<host>`";

/// A wrong password or an unknown user.
pub const AUTH_FAILED: &str = "error: cannot connect to the database at <host>:<port>: \
                               authentication failed for user `<user>` (<the server's message>)";

/// Something accepts the connection and never answers.
pub const NO_ANSWER: &str = "error: cannot connect to the database at <host>:<port>: no answer \
                             within 3 s (a firewall dropping packets, or a server that does not \
                             accept connections)";

/// `--limit 0`.
pub const LIMIT_ZERO: &str = "error: invalid value '0' for '--limit <LIMIT>': 0 is not in 1..=1000";

/// `--error-kind nonsense`: the first line.
pub const UNKNOWN_ERROR_KIND: &str =
    "error: invalid value 'nonsense' for '--error-kind <ERROR_KIND>'";

/// `--error-kind nonsense`: the second line.
pub const ERROR_KINDS: &str = "  [possible values: handler_failed, handler_timed_out, \
                               handler_panicked, deserialize, unknown_version, \
                               unknown_event_type, upcast, missing_state, serialize, \
                               invalid_name, duplicate_handler, duplicate_event_type, \
                               catalog_format, delivery_dead, crashed, outcome_unwritable]";

/// `outbox catalog` in a binary that links no event.
pub const NO_EVENTS: &str = "error: this binary knows no event types, so it has no catalog to \
                             print or to check: run `outbox catalog` from the service's own \
                             binary, which links its events, e.g. a `src/bin/outbox.rs` holding \
                             `fn main() -> std::process::ExitCode { \
                             outbox_seaorm::cli::main_with_catalog(outbox_seaorm::catalog::Catalog::from_registry(&registry)) }` \
                             (or `outbox_seaorm::cli::main()`, without the routes)";

/// A header name that is not a CloudEvents extension attribute name.
pub const BAD_HEADER: &str = "invalid header \"x-tenant\": a header travels as a CloudEvents \
                              extension attribute, so its name may hold only a-z and 0-9";

/// Two handlers under one name: an `#[event_handler]` and an entry built by hand.
pub const DUPLICATE_HANDLER: &str = "two handlers are registered under the name `<name>`, fn \
                                     `<module::path::fn>` and the entry built at <file>:<line>: \
                                     give one of them another name (`#[event_handler(name = \
                                     \"...\")]`)";

/// A dashboard action posted from another site's page.
pub const FOREIGN_ORIGIN: &str = "the form was sent from <origin> (origin), not from this \
                                  dashboard (<host>): actions are taken only from the \
                                  dashboard's own pages (behind a proxy, pass the Host header \
                                  through or set X-Forwarded-Host)";

/// A dashboard action with a token this dashboard did not issue in the last hour.
pub const STALE_TOKEN: &str = "the form's token is missing, stale (over an hour old, or from \
                               before a restart) or from another dashboard: reload the page and \
                               try again";

/// The dashboard's requeue of a message that is no longer dead (here: pending).
pub const DASHBOARD_NOT_DEAD: &str =
    "message <id> is pending: only dead and unhandled messages are requeued";

/// `outbox dashboard --i-know-it-is-open` off loopback: the WARN line's message.
pub const OPEN_DASHBOARD: &str = "outbox dashboard: serving WITHOUT authentication on a \
                                  non-loopback address (allowed explicitly): anyone who can \
                                  reach <addr> can read every message, and requeue or discard \
                                  them";

/// Every message above, for the README check.
pub const ALL: [&str; 19] = [
    REQUEUE_NOT_DEAD,
    NO_SUCH_MESSAGE,
    NO_SUCH_SEQUENCE,
    PG_TABLE_MISSING,
    MIGRATE_HINT,
    REFUSED,
    UNKNOWN_HOST,
    AUTH_FAILED,
    NO_ANSWER,
    LIMIT_ZERO,
    UNKNOWN_ERROR_KIND,
    ERROR_KINDS,
    NO_EVENTS,
    BAD_HEADER,
    DUPLICATE_HANDLER,
    FOREIGN_ORIGIN,
    STALE_TOKEN,
    DASHBOARD_NOT_DEAD,
    OPEN_DASHBOARD,
];

/// `template` with each `<placeholder>` replaced.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(template.to_owned(), |t, (k, v)| {
        t.replace(&format!("<{k}>"), v)
    })
}
