//! MariaDB: claims in a `READ COMMITTED` transaction (a locking read with `SKIP LOCKED`, then
//! the lease), each statement bounded by `max_statement_time`; a deadlock is retried at once.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, IsolationLevel, Statement,
    TransactionTrait, Value,
};

use super::sql::{self, Arg, Catalog, Style, seqs};
use super::{
    ClaimOrder, ClaimSpec, Claimed, Driver, NewMessage, per_aggregate, positions, read_claimed,
};
use crate::config::OutboxConfig;
use crate::error::{Error, Result};

const QUERIES: &str = include_str!("mysql.sql");
const SCHEMA: &str = include_str!("mysql_schema.sql");
/// Attempts of a claim that hits a deadlock before the error is returned.
const CONFLICT_ATTEMPTS: u32 = 5;

#[derive(Debug)]
pub(crate) struct MySql {
    sql: Catalog,
    config: OutboxConfig,
    streams: String,
    messages: String,
    conflicts: AtomicU64,
}

impl MySql {
    pub(crate) fn new(config: &OutboxConfig) -> Self {
        let fill = |s: &str| sql::fill_tables(DbBackend::MySql, s, config);
        Self {
            sql: Catalog::load(DbBackend::MySql, Style::Question, QUERIES, config),
            config: config.clone(),
            streams: fill("{streams}"),
            messages: fill("{messages}"),
            conflicts: AtomicU64::new(0),
        }
    }

    /// One claim attempt: lock a window of available rows, keep the runs that may go, lease
    /// them.
    async fn claim_once(
        &self,
        db: &DatabaseConnection,
        spec: &ClaimSpec<'_>,
    ) -> Result<Vec<Claimed>> {
        // READ COMMITTED: InnoDB takes no gap locks, so the locking read does not block writers
        // inserting new outbox rows while the claim runs.
        let txn = db
            .begin_with_config(Some(IsolationLevel::ReadCommitted), None)
            .await?;
        let limit = match spec.order {
            ClaimOrder::Any => spec.limit,
            ClaimOrder::PerAggregate { .. } => spec.window.max(spec.limit),
        };
        let window = txn
            .query_all_raw(bounded(
                self.sql.stmt(
                    "window",
                    &[
                        ("limit", i64::from(limit).into()),
                        ("held", sql::held(spec.held)),
                    ],
                ),
                spec.timeout,
            ))
            .await?;
        let mut rows = window
            .iter()
            .map(read_claimed)
            .collect::<Result<Vec<_>>>()?;
        if let ClaimOrder::PerAggregate { dead_blocks } = spec.order {
            rows = self.runs_at_heads(&txn, rows, dead_blocks, spec).await?;
            rows.truncate(spec.limit as usize);
        }
        if !rows.is_empty() {
            let list: Vec<i64> = rows.iter().map(|c| c.envelope.sequence).collect();
            let stmt = self.sql.stmt(
                "lease",
                &[
                    ("relay", spec.relay.into()),
                    ("token", spec.token.into()),
                    ("lease", self.span(spec.lease)),
                    ("seqs", seqs(&list)),
                ],
            );
            txn.execute_raw(bounded(stmt, spec.timeout)).await?;
            for c in &mut rows {
                c.claims += 1;
                c.token = spec.token;
            }
        }
        txn.commit().await?;
        Ok(rows)
    }

    /// The rows of `window` that form runs starting at their aggregate's head, and the delayed
    /// ones (outside the order), in sequence order.
    async fn runs_at_heads(
        &self,
        txn: &DatabaseTransaction,
        window: Vec<Claimed>,
        dead_blocks: bool,
        spec: &ClaimSpec<'_>,
    ) -> Result<Vec<Claimed>> {
        // The first window row of each aggregate, and how far its run goes without a gap.
        let mut runs: HashMap<(String, String), (i64, i64)> = HashMap::new();
        for c in window.iter().filter(|c| !c.delayed) {
            let key = (
                c.envelope.aggregate_type.clone(),
                c.envelope.aggregate_id.clone(),
            );
            let run = runs
                .entry(key)
                .or_insert((c.envelope.position, c.envelope.position - 1));
            if c.envelope.position == run.1 + 1 {
                run.1 += 1;
            }
        }
        let mut ok: HashMap<(String, String), (i64, i64)> = HashMap::new();
        if !runs.is_empty() {
            let mut sql = format!(
                "SELECT aggregate_type, aggregate_id, MIN(position) AS head FROM {} WHERE (",
                self.messages
            );
            let mut values: Vec<Value> = Vec::new();
            for (i, (t, a)) in runs.keys().enumerate() {
                let sep = if i > 0 { " OR " } else { "" };
                let _ = write!(sql, "{sep}(aggregate_type = ? AND aggregate_id = ?)");
                values.extend([t.clone().into(), a.clone().into()]);
            }
            let _ = write!(
                sql,
                ") AND not_before IS NULL AND (status = 'pending'{})",
                if dead_blocks {
                    " OR status = 'dead'"
                } else {
                    ""
                }
            );
            // Rows this relay runs in the aggregate's chain do not hold the run back: it is
            // queued behind them (see the relay's `chain`).
            if !spec.passable.is_empty() {
                sql.push_str(" AND seq NOT IN (");
                for (i, s) in spec.passable.iter().enumerate() {
                    sql.push_str(if i > 0 { ", ?" } else { "?" });
                    values.push((*s).into());
                }
                sql.push(')');
            }
            sql.push_str(" GROUP BY aggregate_type, aggregate_id");
            let stmt = Statement::from_sql_and_values(DbBackend::MySql, sql, values);
            for r in txn.query_all_raw(bounded(stmt, spec.timeout)).await? {
                let key = (
                    r.try_get::<String>("", "aggregate_type")?,
                    r.try_get::<String>("", "aggregate_id")?,
                );
                let head: i64 = r.try_get("", "head")?;
                if let Some(run) = runs.get(&key)
                    && run.0 == head
                {
                    ok.insert(key, *run);
                }
            }
        }
        Ok(window
            .into_iter()
            .filter(|c| {
                c.delayed
                    || ok
                        .get(&(
                            c.envelope.aggregate_type.clone(),
                            c.envelope.aggregate_id.clone(),
                        ))
                        .is_some_and(|(_, last)| c.envelope.position <= *last)
            })
            .collect())
    }
}

/// `stmt`, bounded on the server by `timeout`.
fn bounded(mut stmt: Statement, timeout: Duration) -> Statement {
    stmt.sql = format!(
        "SET STATEMENT max_statement_time = {:.3} FOR {}",
        timeout.as_secs_f64().max(0.001),
        stmt.sql
    );
    stmt
}

/// Refuses a server other than MariaDB 10.6 or later (`version` is `SELECT VERSION()`, such as
/// `10.11.6-MariaDB-0+deb12u1`; MySQL says `8.0.36`).
fn check_server(version: &str) -> Result<()> {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    let major = parts.next().flatten().unwrap_or(0);
    let minor = parts.next().flatten().unwrap_or(0);
    if version.contains("MariaDB") && (major, minor) >= (10, 6) {
        Ok(())
    } else {
        Err(Error::UnsupportedServer {
            version: version.to_owned(),
        })
    }
}

/// A deadlock (1213) or a lock wait timeout (1205), by error number: the transaction was
/// rolled back and may simply be tried again.
fn is_conflict(e: &Error) -> bool {
    super::fault(e) == super::Fault::Transient
}

#[async_trait::async_trait]
impl Driver for MySql {
    fn sql(&self) -> &Catalog {
        &self.sql
    }

    fn config(&self) -> &OutboxConfig {
        &self.config
    }

    fn span(&self, d: Duration) -> Arg {
        Arg::One(Value::BigInt(Some(
            d.as_micros().min(i64::MAX as u128) as i64
        )))
    }

    fn create_statements(&self) -> Vec<String> {
        sql::statements(&sql::fill_tables(DbBackend::MySql, SCHEMA, &self.config))
    }

    #[cfg(feature = "mysql")]
    fn pool_size(&self, db: &DatabaseConnection) -> u32 {
        db.get_mysql_connection_pool()
            .options()
            .get_max_connections()
    }

    #[cfg(not(feature = "mysql"))]
    fn pool_size(&self, _: &DatabaseConnection) -> u32 {
        u32::MAX
    }

    async fn check_schema(&self, db: &DatabaseConnection) -> Result<()> {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::MySql,
                "SELECT VERSION() AS v",
            ))
            .await?;
        let version: String = match row {
            Some(r) => r.try_get("", "v")?,
            None => String::new(),
        };
        check_server(&version)?;
        super::check_tables(self, db).await
    }

    #[cfg(feature = "mysql")]
    async fn reserve(
        &self,
        db: &DatabaseConnection,
        connections: u32,
        _statement_timeout: std::time::Duration,
    ) -> Result<Option<DatabaseConnection>> {
        use sea_orm::sqlx::mysql::MySqlPoolOptions;
        let main = db.get_mysql_connection_pool();
        let pool = MySqlPoolOptions::new()
            .max_connections(connections)
            .min_connections(0)
            .acquire_timeout(main.options().get_acquire_timeout())
            .connect_lazy_with((*main.connect_options()).clone());
        let ours = sea_orm::SqlxMySqlConnector::from_sqlx_mysql_pool(pool);
        // The same database (an `after_connect` of the application's pool could select
        // another one, which its options do not show).
        let q = || Statement::from_string(DbBackend::MySql, "SELECT DATABASE() AS d");
        let name = |r: Option<sea_orm::QueryResult>| -> Result<Option<String>> {
            Ok(match r {
                Some(r) => r.try_get("", "d")?,
                None => None,
            })
        };
        if name(db.query_one_raw(q()).await?)? != name(ours.query_one_raw(q()).await?)? {
            return Ok(None);
        }
        Ok(Some(ours))
    }

    fn upsert_on_key(&self) -> bool {
        false
    }

    fn conflicts_retried(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    async fn append(&self, txn: &DatabaseTransaction, rows: &[NewMessage]) -> Result<()> {
        for chunk in rows.chunks(500) {
            let aggregates = per_aggregate(chunk);
            let mut values: Vec<Value> = Vec::new();
            let mut upsert = format!(
                "INSERT INTO {} (aggregate_type, aggregate_id, last_position) VALUES ",
                self.streams
            );
            let mut select = format!(
                "SELECT aggregate_type, aggregate_id, last_position, blocked_until FROM {} WHERE ",
                self.streams
            );
            let mut keys: Vec<Value> = Vec::new();
            for (i, ((t, a), n)) in aggregates.iter().enumerate() {
                upsert.push_str(if i > 0 { ", (?, ?, ?)" } else { "(?, ?, ?)" });
                select.push_str(if i > 0 {
                    " OR (aggregate_type = ? AND aggregate_id = ?)"
                } else {
                    "(aggregate_type = ? AND aggregate_id = ?)"
                });
                values.extend([(*t).into(), (*a).into(), (*n).into()]);
                keys.extend([(*t).into(), (*a).into()]);
            }
            upsert.push_str(
                " ON DUPLICATE KEY UPDATE last_position = last_position + VALUES(last_position)",
            );
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::MySql,
                upsert,
                values,
            ))
            .await?;
            // The rows are locked by this transaction, which sees its own update.
            let streams = txn
                .query_all_raw(Statement::from_sql_and_values(
                    DbBackend::MySql,
                    select,
                    keys,
                ))
                .await?;
            let mut last = HashMap::new();
            let mut blocked = HashMap::new();
            for r in &streams {
                let key = (
                    r.try_get::<String>("", "aggregate_type")?,
                    r.try_get::<String>("", "aggregate_id")?,
                );
                last.insert(key.clone(), r.try_get::<i64>("", "last_position")?);
                blocked.insert(
                    key,
                    r.try_get::<Option<chrono::DateTime<chrono::Utc>>>("", "blocked_until")?,
                );
            }
            let positions = positions(chunk, &last);
            let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 11);
            let mut sql = format!(
                "INSERT INTO {} (id, aggregate_type, aggregate_id, position, event_type, \
                 event_version, payload, headers, occurred_at, not_before, available_at) VALUES ",
                self.messages
            );
            for (i, (r, pos)) in chunk.iter().zip(positions).enumerate() {
                sql.push_str(if i > 0 { ", " } else { "" });
                sql.push_str(
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, COALESCE(?, GREATEST(UTC_TIMESTAMP(6), \
                     COALESCE(?, '1970-01-01'))))",
                );
                let held = blocked
                    .get(&(r.aggregate_type.clone(), r.aggregate_id.clone()))
                    .copied()
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
                DbBackend::MySql,
                sql,
                values,
            ))
            .await?;
        }
        Ok(())
    }

    async fn claim(&self, db: &DatabaseConnection, spec: &ClaimSpec<'_>) -> Result<Vec<Claimed>> {
        let mut attempt = 1;
        loop {
            match self.claim_once(db, spec).await {
                Err(e) if attempt < CONFLICT_ATTEMPTS && is_conflict(&e) => {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mariadb_10_6_or_later_is_accepted() {
        for ok in [
            "10.6.0-MariaDB",
            "10.11.6-MariaDB-0+deb12u1",
            "11.4.2-MariaDB-log",
        ] {
            assert!(check_server(ok).is_ok(), "{ok}");
        }
        for refused in [
            "8.0.36",
            "8.4.0-commercial",
            "10.5.23-MariaDB",
            "5.5.5-10.3.39-MariaDB",
            "",
        ] {
            let e = check_server(refused).unwrap_err().to_string();
            assert!(e.contains("MariaDB 10.6 or later"), "{e}");
        }
    }
}
