//! The `outbox` command line: look at an outbox and act on it from a shell.
//!
//! `cargo install outbox-seaorm --features cli` installs it as `outbox`. [`main`] is the whole
//! program, so a service can also ship it inside its own binary (one `fn main` calling it).
//!
//! ```text
//! outbox --database-url postgres://... status [--fail-if dead>0] [--fail-if unhandled>0]
//! outbox list --status dead --handler send-mail --limit 20
//! outbox show <message id or sequence number>
//! outbox requeue --handler send-mail --error-kind handler_timed_out --yes
//! outbox discard <message id>
//! outbox migrate [--check]
//! outbox relays
//! outbox catalog [--format asyncapi|json] [--check committed.json]
//! outbox dashboard --listen 127.0.0.1:8080 [--read-only]
//! ```
//!
//! `outbox catalog` needs no database: it prints the events, handlers and upcasters linked
//! into the binary it runs in. Inside a service's own binary that is the service's catalog;
//! [`main_with_catalog`] adds what only the service knows at run time (its routes). A binary
//! that links no event (the plain `outbox`) refuses to print or check a catalog (exit 1): an
//! empty one, committed or compared, would be wrong.
//!
//! Every command takes `--json`. Exit codes: 0 ok, 1 an error or a failed `--fail-if` check,
//! 2 a usage error.

mod catalog;
mod checks;
mod connect;
mod render;

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use crate::entity::MessageStatus;
use crate::{Admin, MessageFilter, OutboxConfig};
use clap::{Args, Parser, Subcommand};
use sea_orm::{ConnectOptions, Database};
use uuid::Uuid;

/// Look at a transactional outbox and act on it.
#[derive(Parser, Debug)]
#[command(name = "outbox", version, about)]
struct Cli {
    /// The database (`sqlite://path?mode=rw`, `postgres://...`, `mysql://...`).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,
    /// Prefix of every outbox table, as given to `OutboxConfig::with_prefix`.
    #[arg(long, global = true)]
    prefix: Option<String>,
    /// The messages table, when it was renamed on its own.
    #[arg(long, global = true)]
    messages_table: Option<String>,
    /// The deliveries table, when it was renamed on its own.
    #[arg(long, global = true)]
    deliveries_table: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Counts, backlog by aggregate and event type, dead letters by handler and error, relays.
    Status {
        /// Fail (exit 1) when a check holds: `dead>0`, `unhandled>0`, `pending>=1000`,
        /// `oldest_pending_age>300` (seconds, or `5m`, `2h`), `unknown>0`,
        /// `delivered_last_hour<10`, `silent_relays>0`.
        /// Operators: > >= < <= =. Repeatable.
        #[arg(long = "fail-if", value_parser = checks::parse)]
        fail_if: Vec<checks::Check>,
    },
    /// Messages matching the filters, oldest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Only messages after this sequence number (the last one of the previous page).
        #[arg(long)]
        after: Option<i64>,
    },
    /// One message in full: payload, headers, every delivery's state.
    Show {
        /// The message id, or its sequence number (the `seq` column of `outbox list`).
        id: MessageRef,
    },
    /// Put dead messages back in the queue: one by id, or every one the filters match
    /// (`--status unhandled`: the unhandled ones instead).
    Requeue(Action),
    /// Delete messages that will never be delivered: one by id, or every one the filters
    /// match (dead ones, unless `--status pending` or `--status unhandled`).
    Discard(Action),
    /// Create the outbox tables if they do not exist (or, with `--check`, only check them).
    Migrate {
        /// Check the tables without creating anything.
        #[arg(long)]
        check: bool,
    },
    /// The relays recorded: id, host, version, last heartbeat, messages held.
    Relays,
    /// The event catalog of this binary as JSON or AsyncAPI 3.0, or (with `--check`) its
    /// comparison with a committed one. Needs no database.
    Catalog(catalog::CatalogArgs),
    /// Serve the dashboard (see `outbox_seaorm::dashboard`) until interrupted.
    Dashboard(DashboardArgs),
}

#[derive(Args, Debug)]
struct DashboardArgs {
    /// The address to listen on. Anything but loopback needs --basic-auth, --bearer-token or
    /// --i-know-it-is-open.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Show, never act: no requeue or discard.
    #[arg(long)]
    read_only: bool,
    /// Require HTTP basic authentication, `user:password`.
    #[arg(long, env = "OUTBOX_DASHBOARD_BASIC_AUTH", hide_env_values = true)]
    basic_auth: Option<String>,
    /// Require `Authorization: Bearer <token>`.
    #[arg(
        long,
        env = "OUTBOX_DASHBOARD_BEARER_TOKEN",
        hide_env_values = true,
        conflicts_with = "basic_auth"
    )]
    bearer_token: Option<String>,
    /// Serve without authentication on a non-loopback address: the network is trusted, or a
    /// proxy in front authenticates.
    #[arg(long)]
    i_know_it_is_open: bool,
    /// A link from a message to its trace; `{trace_id}` and `{message_id}` are filled in.
    #[arg(long)]
    trace_link: Option<String>,
}

#[derive(Args, Debug)]
struct Action {
    /// One message: its id, or its sequence number.
    id: Option<MessageRef>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    yes: bool,
}

#[derive(Args, Debug, Default)]
struct FilterArgs {
    /// pending, delivered, dead or unhandled.
    #[arg(long, value_parser = parse_status)]
    status: Option<MessageStatus>,
    /// Messages with a delivery state for this handler or route.
    #[arg(long)]
    handler: Option<String>,
    /// Messages of this event type.
    #[arg(long)]
    event_type: Option<String>,
    /// Messages of this aggregate type.
    #[arg(long)]
    aggregate_type: Option<String>,
    /// Messages of this aggregate id.
    #[arg(long)]
    aggregate: Option<String>,
    /// Messages whose (or one of whose deliveries') last error is of this kind.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::admin::ERROR_KINDS))]
    error_kind: Option<String>,
    /// Messages recorded since this time (RFC 3339) or this long ago (`30s`, `15m`, `2h`, `7d`).
    #[arg(long, value_parser = checks::parse_since)]
    since: Option<chrono::DateTime<chrono::Utc>>,
}

impl FilterArgs {
    fn filter(&self) -> MessageFilter {
        let mut f = MessageFilter::new();
        if let Some(s) = self.status {
            f = f.status(s);
        }
        if let Some(h) = &self.handler {
            f = f.handler(h);
        }
        if let Some(t) = &self.event_type {
            f = f.event_type(t);
        }
        if let Some(t) = &self.aggregate_type {
            f = f.aggregate_type(t);
        }
        if let Some(a) = &self.aggregate {
            f = f.aggregate_id(a);
        }
        if let Some(k) = &self.error_kind {
            f = f.error_kind(k);
        }
        if let Some(t) = self.since {
            f = f.since(t);
        }
        f
    }

    fn is_empty(&self) -> bool {
        self.filter() == MessageFilter::new()
    }
}

/// A message as an operator names it: by id, or by the sequence number `list` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageRef {
    Id(Uuid),
    Sequence(i64),
}

impl std::str::FromStr for MessageRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(id) = s.parse::<Uuid>() {
            return Ok(Self::Id(id));
        }
        match s.parse::<i64>() {
            Ok(n) if n > 0 => Ok(Self::Sequence(n)),
            _ => Err(format!(
                "`{s}` is neither a message id (a UUID) nor a sequence number (a positive integer)"
            )),
        }
    }
}

impl MessageRef {
    /// The message id: looked up by sequence number when given one.
    async fn resolve(self, admin: &Admin) -> anyhow::Result<Uuid> {
        match self {
            Self::Id(id) => Ok(id),
            Self::Sequence(n) => admin
                .list(&MessageFilter::new().after(n - 1).limit(1))
                .await?
                .into_iter()
                .find(|m| m.sequence == n)
                .map(|m| m.message_id)
                .ok_or_else(|| anyhow::anyhow!("no outbox message has sequence number {n}")),
        }
    }
}

fn parse_status(s: &str) -> Result<MessageStatus, String> {
    MessageStatus::parse(s)
        .ok_or_else(|| format!("`{s}` is not pending, delivered, dead or unhandled"))
}

/// Runs the `outbox` command line with the process's arguments and environment, and returns
/// its exit code: 0 ok, 1 an error or a failed `--fail-if` check, 2 a usage error.
pub fn main() -> ExitCode {
    start(None)
}

/// Like [`main`], with `catalog` for `outbox catalog` instead of
/// [`Catalog::from_inventory`](crate::catalog::Catalog::from_inventory): build it with
/// [`Catalog::from_registry`](crate::catalog::Catalog::from_registry) to include the routes.
pub fn main_with_catalog(catalog: crate::catalog::Catalog) -> ExitCode {
    start(Some(catalog))
}

fn start(catalog: Option<crate::catalog::Catalog>) -> ExitCode {
    let cli = Cli::parse();
    if let Command::Catalog(args) = &cli.command {
        return catalog::run(args, catalog);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            if let Some(h) = e.downcast_ref::<Hinted>() {
                eprintln!("hint: {}", h.hint);
            }
            if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// A wrong combination of arguments that clap cannot see: exit code 2, as clap's own.
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    Usage(msg.into()).into()
}

/// The error and its causes, each said once: SeaORM's errors repeat their source in their
/// own message.
fn chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        // The library's error reports its own sources (`Error::report`: a database error's
        // message already holds what the database said), so the walk stops there.
        let (c, ours) = match cause.downcast_ref::<crate::Error>() {
            Some(ours) => (ours.report(), true),
            None => (cause.to_string(), false),
        };
        if !text.contains(&c) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&c);
        }
        if ours {
            break;
        }
    }
    text
}

/// An error with advice printed after it, given only once the advice's cause was checked.
#[derive(Debug)]
struct Hinted {
    error: anyhow::Error,
    hint: &'static str,
}

impl std::fmt::Display for Hinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&chain(&self.error))
    }
}

impl std::error::Error for Hinted {}

const MISSING_TABLES: &str = "the outbox tables are missing: run `outbox migrate`, or name the \
                              tables with --prefix / --messages-table / --deliveries-table";

/// Whether `e` came from the database (a failed statement), as opposed to a refusal of the
/// outbox's own (a message that is not dead, a usage error).
fn from_database(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<crate::Error>(),
        Some(crate::Error::Db(_) | crate::Error::Schema { .. })
    )
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = config(&cli).map_err(|e| usage(e.to_string()))?;
    let Some(url) = cli.database_url.clone().filter(|u| !u.trim().is_empty()) else {
        return Err(usage(
            "no database: pass --database-url or set DATABASE_URL",
        ));
    };
    // Refused, unknown host, no answer, wrong password: said within seconds, in the driver's
    // own terms (the pool would retry a refused connection, then say only "timed out").
    connect::probe(&url).await?;
    let mut options = ConnectOptions::new(url);
    options
        .sqlx_logging(false)
        // The dashboard answers a browser's parallel requests (page, script, refreshes).
        .max_connections(if matches!(cli.command, Command::Dashboard(_)) {
            5
        } else {
            2
        })
        .connect_timeout(connect::CONNECT_TIMEOUT)
        .acquire_timeout(std::time::Duration::from_secs(10));
    let db = Database::connect(options)
        .await
        .map_err(crate::Error::from)?;
    match execute(cli.command, cli.json, &db, &config).await {
        Err(e) if from_database(&e) => {
            // Say "run outbox migrate" only when the tables are indeed missing or outdated.
            if crate::schema::check_tables_with(&db, &config)
                .await
                .is_err()
            {
                Err(Hinted {
                    error: e,
                    hint: MISSING_TABLES,
                }
                .into())
            } else {
                Err(e)
            }
        }
        other => other,
    }
}

async fn execute(
    command: Command,
    json: bool,
    db: &sea_orm::DatabaseConnection,
    config: &OutboxConfig,
) -> anyhow::Result<ExitCode> {
    let admin = Admin::new_with(db.clone(), config);
    let out = render::Out { json };
    match command {
        Command::Status { fail_if } => {
            let status = admin.status().await?;
            out.status(&status)?;
            let failed: Vec<String> = fail_if
                .iter()
                .filter(|c| c.holds(&status))
                .map(|c| c.to_string())
                .collect();
            if !failed.is_empty() {
                eprintln!("check failed: {}", failed.join(", "));
                return Ok(ExitCode::from(1));
            }
        }
        Command::List {
            filter,
            limit,
            after,
        } => {
            let mut f = filter.filter().limit(limit);
            if let Some(a) = after {
                f = f.after(a);
            }
            out.list(&admin.list(&f).await?, limit)?;
        }
        Command::Show { id } => {
            let id = id.resolve(&admin).await?;
            match admin.show(id).await? {
                Some(m) => out.show(&m)?,
                None => anyhow::bail!("no outbox message {id}"),
            }
        }
        Command::Requeue(a) => act(&admin, &out, a, Verb::Requeue).await?,
        Command::Discard(a) => act(&admin, &out, a, Verb::Discard).await?,
        Command::Migrate { check } => {
            if !check {
                crate::schema::create_tables_with(db, config).await?;
            }
            crate::schema::check_tables_with(db, config).await?;
            out.note("tables", "the outbox tables are ready")?;
        }
        Command::Relays => out.relays(&admin.relays().await?)?,
        Command::Catalog(_) => unreachable!("`outbox catalog` runs before connecting"),
        Command::Dashboard(args) => dashboard(db.clone(), config.clone(), args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn dashboard(
    db: sea_orm::DatabaseConnection,
    outbox: OutboxConfig,
    args: DashboardArgs,
) -> anyhow::Result<()> {
    // The actions are logged through `tracing` (who, what, how many): print them.
    // Colours only on a terminal: the log is often a file or a collector's pipe.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::INFO)
        .try_init();
    let mut config = crate::dashboard::DashboardConfig::new()
        .outbox(outbox.clone())
        .read_only(args.read_only)
        .allow_unauthenticated(args.i_know_it_is_open);
    if let Some(pair) = &args.basic_auth {
        let Some((user, password)) = pair.split_once(':') else {
            return Err(usage("--basic-auth takes user:password"));
        };
        config = config.basic_auth(user, password);
    }
    if let Some(token) = &args.bearer_token {
        config = config.bearer_token(token);
    }
    if let Some(t) = &args.trace_link {
        config = config.trace_link(t);
    }
    config
        .check_listen(args.listen)
        .map_err(|e| usage(e.to_string()))?;
    // Tables missing: say so now (with the `outbox migrate` hint), not on every page.
    crate::Admin::new_with(db.clone(), &outbox).counts().await?;
    eprintln!(
        "outbox dashboard on http://{} (Ctrl-C to stop)",
        args.listen
    );
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    crate::dashboard::serve(args.listen, db, config, stop).await?;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Verb {
    Requeue,
    Discard,
}

async fn act(admin: &Admin, out: &render::Out, a: Action, verb: Verb) -> anyhow::Result<()> {
    let name = match verb {
        Verb::Requeue => "requeued",
        Verb::Discard => "discarded",
    };
    if matches!(verb, Verb::Requeue)
        && a.filter
            .status
            .is_some_and(|s| !matches!(s, MessageStatus::Dead | MessageStatus::Unhandled))
    {
        return Err(usage(
            "requeue acts on dead messages only, or on unhandled ones with --status unhandled",
        ));
    }
    if let Some(id) = a.id {
        if !a.filter.is_empty() {
            return Err(usage("give a message id or filters, not both"));
        }
        let id = id.resolve(admin).await?;
        let done = match verb {
            Verb::Requeue => admin.requeue(id).await,
            Verb::Discard => admin.discard(id).await,
        };
        if let Err(crate::Error::MessageNotFound { .. }) = done {
            // Say which: no such message, or one in a state the action does not take.
            let rule = match verb {
                Verb::Requeue => "only dead and unhandled messages are requeued",
                Verb::Discard => {
                    "only dead and unhandled messages, and pending ones no relay holds, are discarded"
                }
            };
            return Err(match admin.show(id).await? {
                Some(m) => match &m.summary.locked_by {
                    Some(relay) => anyhow::anyhow!(
                        "message {id} is {} and held by relay {relay}: {rule}",
                        m.summary.status
                    ),
                    None => anyhow::anyhow!("message {id} is {}: {rule}", m.summary.status),
                },
                None => anyhow::anyhow!("no outbox message {id}"),
            });
        }
        done?;
        return out.done(name, 1);
    }
    if a.filter.is_empty() {
        return Err(usage(
            "give a message id, or filters (--handler, --error-kind, ...) to act on every match",
        ));
    }
    let filter = a.filter.filter();
    let status = a.filter.status.unwrap_or(MessageStatus::Dead);
    let matching = admin.count(&filter.clone().status(status)).await?;
    if matching == 0 {
        return out.done(name, 0);
    }
    let question = match verb {
        Verb::Requeue => format!("Requeue {matching} {} message(s)?", status.as_str()),
        Verb::Discard => format!("Discard {matching} {} message(s)?", status.as_str()),
    };
    if !a.yes && !confirm(&question)? {
        anyhow::bail!("aborted: nothing was changed");
    }
    let n = match verb {
        Verb::Requeue => admin.requeue_matching(&filter).await?,
        Verb::Discard => admin.discard_matching(&filter).await?,
    };
    out.done(name, n)
}

/// Asks on the terminal; without one (a script), refuses: pass `--yes`.
fn confirm(question: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    anyhow::ensure!(
        stdin.is_terminal(),
        "{question} Not asking without a terminal: pass --yes"
    );
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

fn config(cli: &Cli) -> anyhow::Result<OutboxConfig> {
    let mut c = match &cli.prefix {
        Some(p) => OutboxConfig::new().with_prefix(p)?,
        None => OutboxConfig::new(),
    };
    if let Some(t) = &cli.messages_table {
        c = c.messages(t)?;
    }
    if let Some(t) = &cli.deliveries_table {
        c = c.deliveries(t)?;
    }
    Ok(c)
}
