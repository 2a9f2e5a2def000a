//! PostgreSQL: `FOR UPDATE SKIP LOCKED` claims in one statement, arrays for lists, one round
//! trip to append (stream positions and rows in one statement), optional `NOTIFY`.

use std::fmt::Write as _;
use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement,
    TransactionTrait, Value,
};

use super::sql::{self, Arg, Catalog, Style};
use super::{ClaimOrder, ClaimSpec, Claimed, Driver, NewMessage, per_aggregate, read_claimed};
use crate::config::OutboxConfig;
use crate::error::Result;

const QUERIES: &str = include_str!("postgres.sql");
const SCHEMA: &str = include_str!("postgres_schema.sql");
/// The messages table's fillfactor in `postgres_schema.sql`.
const FILLFACTOR: i32 = 40;

#[derive(Debug)]
pub(crate) struct Postgres {
    sql: Catalog,
    config: OutboxConfig,
    streams: String,
    messages: String,
    notify_channel: Option<String>,
}

impl Postgres {
    pub(crate) fn new(config: &OutboxConfig) -> Self {
        let fill = |s: &str| sql::fill_tables(DbBackend::Postgres, s, config);
        Self {
            sql: Catalog::load(DbBackend::Postgres, Style::Dollar, QUERIES, config),
            config: config.clone(),
            streams: fill("{streams}"),
            messages: fill("{messages}"),
            notify_channel: config
                .notifies()
                .then(|| config.notify_channel().to_owned()),
        }
    }
}

#[async_trait::async_trait]
impl Driver for Postgres {
    fn sql(&self) -> &Catalog {
        &self.sql
    }

    fn config(&self) -> &OutboxConfig {
        &self.config
    }

    fn span(&self, d: Duration) -> Arg {
        Arg::One(Value::Double(Some(d.as_secs_f64())))
    }

    /// Warns when the messages table leaves less room on its pages than this version's schema
    /// (`fillfactor = 40`): a table made by an earlier version through `OutboxMigration`, which
    /// runs once, or by hand. Its claims then move most leased rows to other pages, each with
    /// an entry in every index (BENCHMARKS.md, "Closing #18"). Nothing is changed here: the
    /// `ALTER TABLE` is the operator's to run.
    async fn prepare_for_relay(&self, db: &DatabaseConnection) -> Result<()> {
        let stmt = self.sql.stmt(
            "messages_fillfactor",
            &[("table", self.messages.clone().into())],
        );
        let fillfactor = match db.query_one_raw(stmt).await {
            Ok(row) => row.and_then(|r| r.try_get::<i32>("", "fillfactor").ok()),
            Err(e) => {
                tracing::debug!(error = %e, "could not read the messages table's fillfactor");
                None
            }
        };
        if let Some(fillfactor) = fillfactor.filter(|f| *f > FILLFACTOR) {
            tracing::warn!(
                table = %self.messages, fillfactor,
                "the outbox messages table has fillfactor {fillfactor} (this version creates it \
                 with {FILLFACTOR}): claims run slower, moving the rows they lease to other \
                 pages; run `ALTER TABLE {} SET (fillfactor = {FILLFACTOR})` or `outbox migrate` \
                 (pages written from then on get the room)",
                self.messages
            );
        }
        Ok(())
    }

    fn create_statements(&self) -> Vec<String> {
        sql::statements(&sql::fill_tables(DbBackend::Postgres, SCHEMA, &self.config))
    }

    #[cfg(feature = "postgres")]
    fn pool_size(&self, db: &DatabaseConnection) -> u32 {
        db.get_postgres_connection_pool()
            .options()
            .get_max_connections()
    }

    #[cfg(not(feature = "postgres"))]
    fn pool_size(&self, _: &DatabaseConnection) -> u32 {
        u32::MAX
    }

    #[cfg(feature = "postgres")]
    async fn reserve(
        &self,
        db: &DatabaseConnection,
        connections: u32,
        statement_timeout: Duration,
    ) -> Result<Option<DatabaseConnection>> {
        use sea_orm::sqlx::Executor;
        use sea_orm::sqlx::postgres::PgPoolOptions;
        // The search path may come from an `after_connect` of the application's pool, which
        // its options do not show: read it from a connection of that pool, set it on ours.
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT current_setting('search_path') AS p",
            ))
            .await?;
        let Some(row) = row else { return Ok(None) };
        let path: String = row.try_get("", "p")?;
        let main = db.get_postgres_connection_pool();
        let set = format!("SET search_path = {path}");
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .min_connections(0)
            .acquire_timeout(main.options().get_acquire_timeout())
            .after_connect(move |conn, _| {
                let set = set.clone();
                Box::pin(async move {
                    conn.execute(sea_orm::sqlx::AssertSqlSafe(set))
                        .await
                        .map(|_| ())
                })
            })
            // In the startup packet, so they cost no round trip. Every statement of the relay
            // is bounded on the server (a claim left running by a client that died must not
            // go on for minutes and then lease rows to nobody). Commits do not wait for the
            // WAL flush: what a server crash makes the relay forget (a claim, an outcome) is
            // claimed and delivered again, at least once, and every later write is fenced by
            // the claim's token.
            .connect_lazy_with((*main.connect_options()).clone().options([
                (
                    "statement_timeout",
                    statement_timeout.as_millis().max(1).to_string(),
                ),
                ("synchronous_commit", "off".to_owned()),
            ]));
        Ok(Some(
            sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pool),
        ))
    }

    fn reserved_bounds_statements(&self) -> bool {
        true
    }

    fn listen_channel(&self) -> Option<String> {
        self.notify_channel.clone()
    }

    async fn append(&self, txn: &DatabaseTransaction, rows: &[NewMessage]) -> Result<()> {
        // 12 parameters a row, 3 an aggregate: far below PostgreSQL's 65535.
        if let [r] = rows {
            let args = [
                ("id", Arg::from(r.id)),
                ("t", r.aggregate_type.clone().into()),
                ("a", r.aggregate_id.clone().into()),
                ("e", r.event_type.clone().into()),
                ("ver", (r.event_version as i32).into()),
                ("p", r.payload.clone().into()),
                ("h", r.headers.clone().into()),
                ("o", r.occurred_at.into()),
                ("nb", r.not_before.into()),
            ];
            txn.execute_raw(self.sql.stmt("append_one", &args)).await?;
        } else {
            for chunk in rows.chunks(1000) {
                txn.execute_raw(self.append_statement(chunk)).await?;
            }
        }
        if let Some(channel) = &self.notify_channel {
            txn.execute_raw(
                self.sql
                    .stmt("notify", &[("channel", channel.clone().into())]),
            )
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
        // The statement must be bounded on the server: a claim left running by a client that
        // died must not go on for minutes and then lease rows to nobody. The relay's own pool
        // bounds every statement (`reserve`): one round trip. Otherwise a transaction only
        // to set the bound: four.
        let rows = if spec.bounded {
            db.query_all_raw(self.sql.stmt(query, &args)).await?
        } else {
            let txn = db.begin().await?;
            txn.execute_unprepared(&format!(
                "SET LOCAL statement_timeout = {}",
                spec.timeout.as_millis().max(1)
            ))
            .await?;
            let rows = txn.query_all_raw(self.sql.stmt(query, &args)).await?;
            txn.commit().await?;
            rows
        };
        let mut claimed = rows.iter().map(read_claimed).collect::<Result<Vec<_>>>()?;
        for c in &mut claimed {
            c.token = spec.token;
        }
        // RETURNING gives no order guarantee.
        claimed.sort_by_key(|c| c.envelope.sequence);
        Ok(claimed)
    }

    async fn notify(&self, db: &DatabaseConnection) -> Result<()> {
        if let Some(channel) = &self.notify_channel {
            db.execute_raw(
                self.sql
                    .stmt("notify", &[("channel", channel.clone().into())]),
            )
            .await?;
        }
        Ok(())
    }
}

impl Postgres {
    /// One statement: upsert the stream rows (taking positions, locking them until commit),
    /// then insert the rows at `last_position - n + k`, in recording order.
    fn append_statement(&self, rows: &[NewMessage]) -> Statement {
        let aggregates = per_aggregate(rows);
        let mut values: Vec<Value> = Vec::with_capacity(rows.len() * 12 + aggregates.len() * 3);
        let p = |v: Value, values: &mut Vec<Value>| {
            values.push(v);
            format!("${}", values.len())
        };
        let mut sql = format!(
            "WITH s AS (INSERT INTO {} AS s (aggregate_type, aggregate_id, last_position) VALUES ",
            self.streams
        );
        for (i, ((t, a), n)) in aggregates.iter().enumerate() {
            let (t, a, n) = (
                p((*t).into(), &mut values),
                p((*a).into(), &mut values),
                p((*n).into(), &mut values),
            );
            let sep = if i > 0 { ", " } else { "" };
            let _ = write!(sql, "{sep}({t}, {a}, {n}::bigint)");
        }
        let _ = write!(
            sql,
            " ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET last_position = \
             s.last_position + excluded.last_position RETURNING s.aggregate_type, \
             s.aggregate_id, s.last_position, s.blocked_until) INSERT INTO {} (id, \
             aggregate_type, aggregate_id, position, event_type, event_version, payload, \
             headers, occurred_at, not_before, available_at) SELECT v.id, v.t, v.a, \
             s.last_position - v.n + v.k, v.e, v.ver, v.p, v.h, v.o, v.nb, COALESCE(v.nb, \
             GREATEST(now(), s.blocked_until)) FROM (VALUES ",
            self.messages
        );
        let mut seen: Vec<((&str, &str), i64)> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let key = (r.aggregate_type.as_str(), r.aggregate_id.as_str());
            let n = aggregates
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(1, |(_, n)| *n);
            let k = match seen.iter_mut().find(|(k, _)| *k == key) {
                Some((_, k)) => {
                    *k += 1;
                    *k
                }
                None => {
                    seen.push((key, 1));
                    1
                }
            };
            let cols = [
                format!("{}::uuid", p(r.id.into(), &mut values)),
                format!(
                    "{}::varchar",
                    p(r.aggregate_type.clone().into(), &mut values)
                ),
                format!("{}::varchar", p(r.aggregate_id.clone().into(), &mut values)),
                format!("{}::bigint", p(k.into(), &mut values)),
                format!("{}::bigint", p(n.into(), &mut values)),
                format!("{}::varchar", p(r.event_type.clone().into(), &mut values)),
                format!("{}::int", p((r.event_version as i32).into(), &mut values)),
                // Bound as text and cast: stored as written, not normalized through jsonb.
                format!("CAST({} AS json)", p(r.payload.clone().into(), &mut values)),
                format!("CAST({} AS json)", p(r.headers.clone().into(), &mut values)),
                format!("{}::timestamptz", p(r.occurred_at.into(), &mut values)),
                format!("{}::timestamptz", p(r.not_before.into(), &mut values)),
                format!("{}::int", p((i as i32).into(), &mut values)),
            ];
            let sep = if i > 0 { ", " } else { "" };
            let _ = write!(sql, "{sep}({})", cols.join(", "));
        }
        sql.push_str(
            ") AS v(id, t, a, k, n, e, ver, p, h, o, nb, ord) JOIN s ON s.aggregate_type = v.t \
             AND s.aggregate_id = v.a ORDER BY v.ord",
        );
        Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
    }
}

#[cfg(test)]
mod tests {
    use super::{FILLFACTOR, SCHEMA};

    #[test]
    fn the_fillfactor_the_relay_expects_is_the_schemas() {
        let set = format!("fillfactor = {FILLFACTOR}");
        assert_eq!(
            SCHEMA.matches(&set).count(),
            2,
            "CREATE and ALTER both set {set}"
        );
    }
}
