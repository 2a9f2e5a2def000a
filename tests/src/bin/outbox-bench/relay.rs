//! Relay throughput: drain rate, unordered and ordered, against a minimal raw claim+mark loop.

use std::time::{Duration, Instant};

use outbox_seaorm::{DeliveredRows, DeliveryOrder, OnFailure};
use outbox_tests::{Backend, TestDb};
use sea_orm::sqlx::{self, Row};
use sea_orm::{DatabaseConnection, DbBackend};

use crate::backlog::{Noop, drain_with_relays, reset, seed};
use crate::{env_num, fresh, server_version};

pub(crate) async fn suite(backend: Backend) -> anyhow::Result<()> {
    let t = fresh(backend).await?;
    let n = env_num("BENCH_EVENTS", 100_000.0) as u64;
    println!(
        "\n## relay throughput, {backend:?} ({}), backlog {n} over 1000 aggregates, no-op handler, batch 100",
        server_version(&t.db).await
    );
    println!(
        "| relays | rows leave by | relay unordered ev/s | relay ordered ev/s | raw claim+mark ev/s \
         | ordered vs unordered | unordered vs raw | ordered vs raw |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    let relay_counts: Vec<usize> = match std::env::var("BENCH_RELAYS") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) if backend == Backend::Sqlite => vec![1, 2],
        Err(_) => vec![1, 2, 4],
    };
    // The raw loop exists for PostgreSQL and SQLite.
    let with_raw = backend != Backend::MySql;
    for relays in relay_counts {
        for (label, delivered) in [
            ("update", DeliveredRows::Keep),
            ("delete", DeliveredRows::Delete),
        ] {
            let delete = delivered == DeliveredRows::Delete;
            let run = |kind: u8| {
                let t = &t;
                async move {
                    reset(&t.db).await?;
                    seed(&t.db, n, 1000, "pending").await?;
                    match kind {
                        0 => {
                            drain_with_relays(t, relays, DeliveryOrder::Unordered, delivered, n)
                                .await
                        }
                        1 => {
                            drain_with_relays(
                                t,
                                relays,
                                DeliveryOrder::PerAggregate(OnFailure::Block),
                                delivered,
                                n,
                            )
                            .await
                        }
                        _ => drain_raw(t, relays, delete, n).await,
                    }
                }
            };
            let unordered = run(0).await?;
            let ordered = run(1).await?;
            let raw = if with_raw { run(2).await? } else { f64::NAN };
            let pct = |a: f64, b: f64| {
                if b.is_nan() {
                    "-".to_owned()
                } else {
                    format!("{:.0}%", 100.0 * a / b)
                }
            };
            println!(
                "| {relays} | {label} | {unordered:.0} | {ordered:.0} | {} | {} | {} | {} |",
                if with_raw {
                    format!("{raw:.0}")
                } else {
                    "-".into()
                },
                pct(ordered, unordered),
                pct(unordered, raw),
                pct(ordered, raw),
            );
        }
    }
    t.cleanup().await;
    Ok(())
}

/// The limit: the relay's unordered claim and one mark statement per batch, in a minimal
/// loop of raw statements (each loop with its own pool, as each relay).
async fn drain_raw(t: &TestDb, loops: usize, delete: bool, n: u64) -> anyhow::Result<f64> {
    let mut pools = Vec::new();
    for _ in 0..loops {
        pools.push(t.connect_again().await);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, db) in pools.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            raw_loop(&db, &format!("raw-{i}"), delete).await
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn raw_loop(db: &DatabaseConnection, me: &str, delete: bool) -> anyhow::Result<()> {
    // SQLite answers a writer that lost the race for the lock with SQLITE_BUSY; the relay backs
    // off and retries, and so does the baseline.
    loop {
        match raw_loop_once(db, me, delete).await {
            Err(e) if e.to_string().contains("database is locked") => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other,
        }
    }
}

/// Reads the claimed rows as the relay must: the sequence, and the payload deserialized.
fn claimed_seqs<R: Row>(rows: &[R]) -> anyhow::Result<Vec<i64>>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    let mut seqs = Vec::with_capacity(rows.len());
    for r in rows {
        seqs.push(r.try_get::<i64, _>("seq")?);
        let payload: String = r.try_get("payload")?;
        let _: Noop = serde_json::from_str(&payload)?;
    }
    Ok(seqs)
}

async fn raw_loop_once(db: &DatabaseConnection, me: &str, delete: bool) -> anyhow::Result<()> {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            loop {
                let rows = sqlx::query(
                    "UPDATE outbox_messages AS o SET locked_by = $1, \
                     locked_until = now() + make_interval(secs => 60), claims = o.claims + 1 \
                     FROM (SELECT seq FROM outbox_messages WHERE status = 'pending' \
                     AND available_at <= now() AND (locked_until IS NULL OR locked_until < now()) \
                     ORDER BY seq LIMIT 100 FOR UPDATE SKIP LOCKED) AS c WHERE o.seq = c.seq \
                     RETURNING o.seq, o.id, o.aggregate_type, o.aggregate_id, o.position, \
                     o.event_type, o.event_version, o.payload::text AS payload, \
                     o.headers::text AS headers, o.occurred_at, o.not_before, o.attempts, \
                     o.claims, o.crashes, o.last_error_kind",
                )
                .bind(me)
                .fetch_all(pool)
                .await?;
                if rows.is_empty() {
                    return Ok(());
                }
                let seqs = claimed_seqs(&rows)?;
                if delete {
                    sqlx::query(
                        "DELETE FROM outbox_messages WHERE seq = ANY($1) AND locked_by = $2",
                    )
                    .bind(&seqs)
                    .bind(me)
                    .execute(pool)
                    .await?;
                } else {
                    sqlx::query(
                        "UPDATE outbox_messages SET status = 'delivered', delivered_at = now(), \
                         locked_by = NULL, locked_until = NULL, attempts = attempts + 1, \
                         claims = 0 WHERE seq = ANY($1) AND locked_by = $2",
                    )
                    .bind(&seqs)
                    .bind(me)
                    .execute(pool)
                    .await?;
                }
            }
        }
        DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            loop {
                let rows = sqlx::query(
                    "UPDATE outbox_messages SET locked_by = ?, \
                     locked_until = strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '+60 seconds'), \
                     claims = claims + 1 WHERE seq IN (SELECT seq FROM outbox_messages \
                     INDEXED BY outbox_messages_pending WHERE status = 'pending' \
                     AND available_at <= strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now') \
                     AND (locked_until IS NULL \
                     OR locked_until < strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')) \
                     ORDER BY seq LIMIT 100) RETURNING seq, id, aggregate_type, aggregate_id, \
                     position, event_type, event_version, payload, headers, occurred_at, \
                     not_before, attempts, claims, crashes, last_error_kind",
                )
                .bind(me)
                .fetch_all(pool)
                .await?;
                if rows.is_empty() {
                    return Ok(());
                }
                let list = serde_json::to_string(&claimed_seqs(&rows)?)?;
                let sql = if delete {
                    "DELETE FROM outbox_messages WHERE seq IN (SELECT value FROM json_each(?)) \
                     AND locked_by = ?"
                } else {
                    "UPDATE outbox_messages SET status = 'delivered', \
                     delivered_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), \
                     locked_by = NULL, locked_until = NULL, attempts = attempts + 1, claims = 0 \
                     WHERE seq IN (SELECT value FROM json_each(?)) AND locked_by = ?"
                };
                sqlx::query(sql).bind(list).bind(me).execute(pool).await?;
            }
        }
        _ => anyhow::bail!("no raw claim loop for MariaDB"),
    }
}
