//! Completing claimed messages: what the relay decided (delivered, released, retried, dead,
//! held streams) written in one transaction and fenced by the relay's claims; the same sequence
//! of the driver's named statements on every database, so methods of any driver rather than of
//! the trait.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction};

use super::Driver;
use super::sql::{Arg, seqs};
use super::types::{Completion, Hold, OutcomeWrite, Written};
use crate::entity::MessageStatus;
use crate::error::Result;

impl dyn Driver {
    /// Writes what the relay decided, in one transaction, fenced by `relay` and the tokens of
    /// its claims. `again`: an earlier try of (part of) this completion failed and may have
    /// committed, so a row this relay already wrote is counted as written, not as lost.
    pub(crate) async fn complete(
        &self,
        db: &DatabaseConnection,
        relay: &str,
        c: &Completion,
        again: bool,
    ) -> Result<Written> {
        let _gate = self.relay_write_gate(db).await;
        let mut w = Written::default();
        let sql = self.sql();
        let tokens = seqs(&c.tokens);
        let mut missed: Vec<i64> = Vec::new();
        let delivered = |c: &Completion| {
            let q = if c.delete {
                "delete_now"
            } else {
                "mark_delivered"
            };
            sql.stmt(
                q,
                &[
                    ("seqs", seqs(&c.delivered)),
                    ("relay", relay.into()),
                    ("tokens", tokens.clone()),
                ],
            )
        };
        let only_delivered = c.releases.iter().all(|r| r.seqs.is_empty())
            && c.outcomes.is_empty()
            && c.blocks.is_empty();
        if only_delivered {
            // The common flush (every message delivered at the first try) is one statement,
            // atomic on its own: no transaction around it, two round trips fewer.
            if c.delivered.is_empty() {
                return Ok(w);
            }
            let n = db.execute_raw(delivered(c)).await?.rows_affected();
            w.delivered += n;
            w.lease_lost += self.lost(db, &c.delivered, n, c, relay, again).await?;
            return Ok(w);
        }
        let txn = self.begin_write(db).await?;
        if !c.delivered.is_empty() {
            let n = txn.execute_raw(delivered(c)).await?.rows_affected();
            w.delivered += n;
            w.lease_lost += self.lost(&txn, &c.delivered, n, c, relay, again).await?;
        }
        // Releases go first: a failed message's hold then covers its released followers too.
        for r in &c.releases {
            if r.seqs.is_empty() {
                continue;
            }
            let q = if r.undo_claim { "unclaim" } else { "release" };
            let stmt = sql.stmt(
                q,
                &[
                    ("seqs", seqs(&r.seqs)),
                    ("relay", relay.into()),
                    ("tokens", tokens.clone()),
                ],
            );
            let n = txn.execute_raw(stmt).await?.rows_affected();
            w.released += n;
            w.lease_lost += self.lost(&txn, &r.seqs, n, c, relay, again).await?;
        }
        for o in &c.outcomes {
            if self.write_outcome(&txn, relay, o).await? {
                w.count(o);
            } else {
                missed.push(o.seq);
            }
        }
        for b in &c.blocks {
            let args = [
                ("aggregate_type", Arg::from(b.aggregate_type.clone())),
                ("aggregate_id", b.aggregate_id.clone().into()),
                ("position", b.after_position.into()),
                (
                    "after",
                    self.span(match b.hold {
                        Hold::For(d) => d,
                        Hold::Forever => Duration::ZERO,
                    }),
                ),
            ];
            let (stream, followers) = match b.hold {
                Hold::For(_) => ("hold_stream", "hold_followers"),
                Hold::Forever => ("block_stream", "block_followers"),
            };
            txn.execute_raw(sql.stmt(stream, &args)).await?;
            txn.execute_raw(sql.stmt(followers, &args)).await?;
        }
        w.lease_lost += self.lost(&txn, &missed, 0, c, relay, again).await?;
        txn.commit().await?;
        Ok(w)
    }

    /// How many of `seqs` the relay lost, when a fenced write of them changed `changed` rows:
    /// taken over by another relay. A row the relay held under its claim is always changed, so
    /// on a first try every unchanged row is lost; on a retry (`again`), an unchanged row may
    /// be one this relay wrote in the try whose commit was not confirmed, which its fate tells.
    async fn lost(
        &self,
        conn: &impl ConnectionTrait,
        seqs_written: &[i64],
        changed: u64,
        c: &Completion,
        relay: &str,
        again: bool,
    ) -> Result<u64> {
        let unchanged = (seqs_written.len() as u64).saturating_sub(changed);
        if unchanged == 0 {
            return Ok(0);
        }
        if !again {
            return Ok(unchanged);
        }
        let rows = conn
            .query_all_raw(self.sql().stmt("fates", &[("seqs", seqs(seqs_written))]))
            .await?;
        let mut lost = 0u64;
        for r in &rows {
            let token: Option<i64> = r.try_get("", "claim_token")?;
            let locked_by: Option<String> = r.try_get("", "locked_by")?;
            let ours = token.is_some_and(|t| c.tokens.contains(&t))
                && (locked_by.is_none() || locked_by.as_deref() == Some(relay));
            if !ours {
                lost += 1;
            }
        }
        // A missing row was deleted by this relay's earlier try (delete mode) or by whoever
        // took it over: not told apart, counted as written.
        Ok(lost)
    }

    /// Writes one outcome with its per-handler states. Returns `false` when `relay` no longer
    /// held the message under the claim it ran in.
    pub(crate) async fn write_outcome(
        &self,
        txn: &DatabaseTransaction,
        relay: &str,
        o: &OutcomeWrite,
    ) -> Result<bool> {
        let sql = self.sql();
        if o.delete && o.status == MessageStatus::Delivered {
            // Delivery rows describe nothing once the message is gone. Deleted first, and only
            // while this relay still holds the message.
            let args = [
                ("seq", Arg::from(o.seq)),
                ("relay", relay.into()),
                ("token", o.token.into()),
            ];
            txn.execute_raw(sql.stmt("delete_deliveries_held", &args))
                .await?;
            let n = txn
                .execute_raw(sql.stmt("delete_held", &args))
                .await?
                .rows_affected();
            return Ok(n == 1);
        }
        let (err, kind) = match &o.error {
            Some((e, k)) => (Some(e.as_str().to_owned()), Some((*k).to_owned())),
            None => (None, None),
        };
        let stmt = sql.stmt(
            "write_outcome",
            &[
                ("status", o.status.as_str().into()),
                ("after", self.span(o.retry_in)),
                ("error", err.into()),
                ("kind", kind.into()),
                ("ran", i32::from(o.ran).into()),
                ("seq", o.seq.into()),
                ("relay", relay.into()),
                ("token", o.token.into()),
            ],
        );
        if txn.execute_raw(stmt).await?.rows_affected() == 0 {
            return Ok(false);
        }
        for d in &o.deliveries {
            let (err, kind) = match &d.error {
                Some((e, k)) => (Some(e.as_str().to_owned()), Some((*k).to_owned())),
                None => (None, None),
            };
            let stmt = sql.stmt(
                "upsert_delivery",
                &[
                    ("message_id", o.message_id.into()),
                    ("handler", d.handler.clone().into()),
                    ("status", d.status.as_str().into()),
                    ("attempts", (d.attempts.min(i32::MAX as u32) as i32).into()),
                    ("error", err.into()),
                    ("kind", kind.into()),
                ],
            );
            txn.execute_raw(stmt).await?;
        }
        Ok(true)
    }
}
