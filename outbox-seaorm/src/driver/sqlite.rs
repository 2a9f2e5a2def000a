//! SQLite: one writer at a time, so a claim is one `UPDATE .. RETURNING` and writing
//! transactions begin `IMMEDIATE`; WAL so relays read while a writer writes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, SqliteTransactionMode,
    Statement, TransactionOptions, TransactionTrait, Value,
};

use super::sql::{self, Arg, Catalog, Style};
use super::{
    ClaimOrder, ClaimSpec, Claimed, Driver, NewMessage, per_aggregate, positions, read_claimed,
};
use crate::config::OutboxConfig;
use crate::error::Result;

const QUERIES: &str = include_str!("sqlite.sql");
const SCHEMA: &str = include_str!("sqlite_schema.sql");
/// Times as text that compares in time order: `2026-11-30T10:00:00.123+00:00`.
const TS: &str = "'%Y-%m-%dT%H:%M:%f+00:00'";

#[derive(Debug)]
pub(crate) struct Sqlite {
    sql: Catalog,
    config: OutboxConfig,
    streams: String,
    messages: String,
    now: String,
    /// See [`Driver::relay_write_gate`]: one per database file.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    gates: std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl Sqlite {
    pub(crate) fn new(config: &OutboxConfig) -> Self {
        let now = format!("strftime({TS}, 'now')");
        let source = QUERIES.replace("{now}", &now).replace("{ts}", TS);
        let fill = |s: &str| sql::fill_tables(DbBackend::Sqlite, s, config);
        Self {
            sql: Catalog::load(DbBackend::Sqlite, Style::Question, &source, config),
            config: config.clone(),
            streams: fill("{streams}"),
            messages: fill("{messages}"),
            now,
            gates: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl Driver for Sqlite {
    fn sql(&self) -> &Catalog {
        &self.sql
    }

    fn config(&self) -> &OutboxConfig {
        &self.config
    }

    fn span(&self, d: Duration) -> Arg {
        // Text, not a float: SQLite would print a small float as `1.0e-05`, which is not a
        // valid date modifier.
        Arg::One(format!("{:.6}", d.as_secs_f64()).into())
    }

    fn create_statements(&self) -> Vec<String> {
        sql::statements(&sql::fill_tables(DbBackend::Sqlite, SCHEMA, &self.config))
    }

    #[cfg(feature = "sqlite")]
    async fn reserve(
        &self,
        db: &DatabaseConnection,
        connections: u32,
        _statement_timeout: std::time::Duration,
    ) -> Result<Option<DatabaseConnection>> {
        use sea_orm::sqlx::sqlite::SqlitePoolOptions;
        let main = db.get_sqlite_connection_pool();
        // An in-memory database is shared between connections through SQLite's shared cache,
        // whose table locks do not wait: the relay shares the application's pool there.
        let file = main
            .connect_options()
            .get_filename()
            .to_string_lossy()
            .into_owned();
        if file == ":memory:"
            || file.starts_with("file:sqlx-in-memory")
            || file.contains("mode=memory")
        {
            return Ok(None);
        }
        // `synchronous = NORMAL` (the file is in WAL mode while a relay runs): the relay's
        // commits do not wait for an fsync. A power loss may forget its last claims and
        // outcomes, which are then claimed and delivered again, at least once, as after a relay
        // crash; the application's own connections keep their setting.
        let pool = SqlitePoolOptions::new()
            .max_connections(connections)
            .min_connections(0)
            .acquire_timeout(main.options().get_acquire_timeout())
            .connect_lazy_with(
                (*main.connect_options())
                    .clone()
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal),
            );
        Ok(Some(sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(
            pool,
        )))
    }

    #[cfg(feature = "sqlite")]
    fn pool_size(&self, db: &DatabaseConnection) -> u32 {
        db.get_sqlite_connection_pool()
            .options()
            .get_max_connections()
    }

    #[cfg(not(feature = "sqlite"))]
    fn pool_size(&self, _: &DatabaseConnection) -> u32 {
        u32::MAX
    }

    /// `BEGIN IMMEDIATE`: the write lock is taken (waiting on the busy timeout) at the start,
    /// so a transaction that reads before it writes cannot fail with `SQLITE_BUSY` when another
    /// connection committed in between, as a deferred one would.
    async fn begin_write(&self, db: &DatabaseConnection) -> Result<DatabaseTransaction> {
        Ok(db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?)
    }

    // Without `sqlx-sqlite` no SQLite connection can exist, and SeaORM has no pool to ask.
    #[cfg(feature = "sqlite")]
    async fn relay_write_gate(
        &self,
        db: &DatabaseConnection,
    ) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        // sqlx names each in-memory database uniquely, so the file name tells databases apart.
        let options = db.get_sqlite_connection_pool().connect_options();
        let file = options.get_filename();
        let gate = {
            let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
            // Every relay write passes here: look up without allocating, insert once.
            match gates.get(file) {
                Some(gate) => gate.clone(),
                None => gates.entry(file.to_owned()).or_default().clone(),
            }
        };
        Some(gate.lock_owned().await)
    }

    async fn append(&self, txn: &DatabaseTransaction, rows: &[NewMessage]) -> Result<()> {
        // 11 parameters a row: 500 rows stay far below SQLite's 32766.
        for chunk in rows.chunks(500) {
            let aggregates = per_aggregate(chunk);
            let mut values: Vec<Value> = Vec::new();
            let mut sql = format!(
                "INSERT INTO {} (aggregate_type, aggregate_id, last_position) VALUES ",
                self.streams
            );
            for (i, ((t, a), n)) in aggregates.iter().enumerate() {
                sql.push_str(if i > 0 { ", (?, ?, ?)" } else { "(?, ?, ?)" });
                values.extend([(*t).into(), (*a).into(), (*n).into()]);
            }
            sql.push_str(
                " ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET last_position = \
                 last_position + excluded.last_position RETURNING aggregate_type, aggregate_id, \
                 last_position, blocked_until",
            );
            let streams = txn
                .query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    sql,
                    values,
                ))
                .await?;
            let mut last = HashMap::new();
            let mut blocked: HashMap<(String, String), Option<String>> = HashMap::new();
            for r in &streams {
                let key = (
                    r.try_get::<String>("", "aggregate_type")?,
                    r.try_get::<String>("", "aggregate_id")?,
                );
                last.insert(key.clone(), r.try_get::<i64>("", "last_position")?);
                blocked.insert(key, r.try_get("", "blocked_until")?);
            }
            let positions = positions(chunk, &last);
            let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 11);
            let mut sql = format!(
                "INSERT INTO {} (id, aggregate_type, aggregate_id, position, event_type, \
                 event_version, payload, headers, occurred_at, not_before, available_at) VALUES ",
                self.messages
            );
            for (i, (r, pos)) in chunk.iter().zip(positions).enumerate() {
                let sep = if i > 0 { ", " } else { "" };
                let _ = write!(
                    sql,
                    "{sep}(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, COALESCE(?, max({}, COALESCE(?, ''))))",
                    self.now
                );
                let held = blocked
                    .get(&(r.aggregate_type.clone(), r.aggregate_id.clone()))
                    .cloned()
                    .flatten();
                values.extend([
                    r.id.into(),
                    r.aggregate_type.clone().into(),
                    r.aggregate_id.clone().into(),
                    pos.into(),
                    r.event_type.clone().into(),
                    (r.event_version as i32).into(),
                    r.payload.clone().into(),
                    r.headers.clone().into(),
                    r.occurred_at.into(),
                    r.not_before.into(),
                    r.not_before.into(),
                    held.into(),
                ]);
            }
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                sql,
                values,
            ))
            .await?;
        }
        Ok(())
    }

    async fn claim(&self, db: &DatabaseConnection, spec: &ClaimSpec<'_>) -> Result<Vec<Claimed>> {
        let mut args = vec![
            ("relay", Arg::from(spec.relay)),
            ("lease", self.span(spec.lease)),
            ("limit", i64::from(spec.limit).into()),
            ("token", spec.token.into()),
            ("held", sql::held(spec.held)),
        ];
        let query = match spec.order {
            ClaimOrder::Any => "claim_any",
            ClaimOrder::PerAggregate { dead_blocks } => {
                args.push(("window", i64::from(spec.window.max(spec.limit)).into()));
                args.push(("block", dead_blocks.into()));
                args.push(("passable", sql::held(spec.passable)));
                "claim_ordered"
            }
        };
        // One statement: it waits for the write lock on the busy timeout, which bounds it.
        let rows = {
            let _gate = self.relay_write_gate(db).await;
            db.query_all_raw(self.sql.stmt(query, &args)).await?
        };
        let mut claimed = rows.iter().map(read_claimed).collect::<Result<Vec<_>>>()?;
        for c in &mut claimed {
            c.token = spec.token;
        }
        claimed.sort_by_key(|c| c.envelope.sequence);
        Ok(claimed)
    }

    async fn prepare_for_relay(&self, db: &DatabaseConnection) -> Result<()> {
        // Several processes (relays, writers) on one file need WAL: readers do not block the
        // writer, and the writer does not block readers. The setting is kept in the file.
        let mode = db.query_one_raw(self.sql.stmt("journal_mode", &[])).await?;
        let mode: String = match mode {
            Some(r) => r.try_get_by_index(0)?,
            None => String::new(),
        };
        if !matches!(mode.as_str(), "wal" | "memory") {
            db.execute_unprepared("PRAGMA journal_mode = WAL").await?;
            tracing::info!(previous = %mode, "outbox: switched the SQLite database to WAL");
        }
        Ok(())
    }
}
