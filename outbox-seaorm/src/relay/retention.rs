//! Retention: deleting delivered rows and old inbox marks, by one relay at a time.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;
use super::policy::Retention;
use crate::error::Result;

/// What a retention round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionReport {
    /// Delivered messages deleted (unhandled ones are kept: see `MessageStatus::Unhandled`).
    pub deleted: usize,
    /// Inbox marks deleted.
    pub inbox_deleted: usize,
    /// `true` when another relay held the retention lock, so this one did nothing.
    pub skipped: bool,
}

const LOCK: &str = "retention";
/// The lock outlives a slow round by a wide margin and is renewed between batches; a relay
/// that dies holding it blocks retention for at most this long.
const HOLD: Duration = Duration::from_secs(120);

pub(crate) async fn run(shared: Arc<Shared>, retention: Retention, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(retention.every) => {}
        }
        match round(&shared, &retention).await {
            Ok(r) if r.deleted > 0 || r.inbox_deleted > 0 => tracing::info!(
                relay = %shared.id, deleted = r.deleted, inbox_deleted = r.inbox_deleted,
                "outbox retention round"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(relay = %shared.id, error = %e.report(), "outbox retention failed")
            }
        }
    }
}

pub(crate) async fn round(shared: &Shared, retention: &Retention) -> Result<RetentionReport> {
    let (db, d, id) = (&shared.db, &shared.driver, shared.id.as_str());
    if !d.try_lock(db, LOCK, id, HOLD).await? {
        return Ok(RetentionReport {
            skipped: true,
            ..Default::default()
        });
    }
    let mut report = RetentionReport::default();
    let result = async {
        loop {
            let n = d
                .delete_delivered(db, retention.keep_for, retention.batch_size)
                .await?;
            report.deleted += n;
            let m = d
                .delete_inbox(db, retention.inbox_keep_for, retention.batch_size)
                .await?;
            report.inbox_deleted += m;
            if n < retention.batch_size as usize && m < retention.batch_size as usize {
                return Ok(());
            }
            if !d.try_lock(db, LOCK, id, HOLD).await? {
                return Ok(());
            }
        }
    }
    .await;
    d.unlock(db, LOCK, id).await?;
    result.map(|()| report)
}
