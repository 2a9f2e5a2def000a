//! The message being handled, as ambient context for events recorded while handling it.

use std::future::Future;

use uuid::Uuid;

tokio::task_local! {
    static CURRENT: MessageScope;
}

/// The message whose handler is running on this task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageScope {
    /// The message being handled: the causation id of events recorded now.
    pub message_id: Uuid,
    /// Its correlation id, inherited by events recorded now.
    pub correlation_id: Option<Uuid>,
}

/// The message whose handler is running on this task, if any.
pub fn current_message() -> Option<MessageScope> {
    CURRENT.try_with(|m| *m).ok()
}

/// Runs `f` with `scope` as the message being handled.
pub async fn scope<F: Future>(scope: MessageScope, f: F) -> F::Output {
    CURRENT.scope(scope, f).await
}
