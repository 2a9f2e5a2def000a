//! Acting on every message a filter matches: requeue and discard in batches.

use uuid::Uuid;

use super::Admin;
use super::filter::MessageFilter;
use crate::entity::MessageStatus;
use crate::error::Result;

impl Admin {
    /// Requeues every dead message the filter matches (see [`Admin::requeue`]), in batches;
    /// returns how many. Only dead messages are requeued, or, when the filter's status is
    /// [`MessageStatus::Unhandled`], only unhandled ones (any other status is ignored).
    pub async fn requeue_matching(&self, filter: &MessageFilter) -> Result<u64> {
        let status = match filter.status {
            Some(MessageStatus::Unhandled) => MessageStatus::Unhandled,
            _ => MessageStatus::Dead,
        };
        self.act_on_matching(filter, status, |id| async move {
            self.driver.requeue(&self.db, id, None).await
        })
        .await
    }

    /// Discards every message the filter matches that may be discarded (dead, unhandled, or
    /// pending and not held by a relay; see [`Admin::discard`]); returns how many. Without a
    /// status in the filter, dead ones.
    pub async fn discard_matching(&self, filter: &MessageFilter) -> Result<u64> {
        let status = filter.status.unwrap_or(MessageStatus::Dead);
        self.act_on_matching(filter, status, |id| async move {
            self.driver.discard(&self.db, id).await
        })
        .await
    }

    async fn act_on_matching<F, Fut>(
        &self,
        filter: &MessageFilter,
        status: MessageStatus,
        act: F,
    ) -> Result<u64>
    where
        F: Fn(Uuid) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut page = MessageFilter {
            status: Some(status),
            limit: Some(500),
            after: None,
            ..filter.clone()
        };
        let mut done = 0;
        loop {
            let batch = self.list(&page).await?;
            let Some(last) = batch.last() else { break };
            page.after = Some(last.sequence);
            for m in &batch {
                match act(m.message_id).await {
                    Ok(()) => done += 1,
                    // Taken by a relay, requeued or discarded by someone else meanwhile.
                    Err(crate::Error::MessageNotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if done > 0 {
            self.wake().await?;
        }
        Ok(done)
    }
}
