//! In-process wake-up: a commit that wrote outbox rows wakes the relays of this process.

use std::sync::LazyLock;

use tokio::sync::watch;

// A generation counter rather than `Notify`: a relay that is busy when a commit lands sees the
// changed generation when it next waits, so no wake-up is lost between two polls.
static SIGNAL: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

/// Tells the relays of this process that new messages were committed.
pub(crate) fn notify() {
    SIGNAL.send_modify(|n| *n = n.wrapping_add(1));
}

/// A receiver whose `changed()` resolves after the next [`notify`].
pub(crate) fn subscribe() -> watch::Receiver<u64> {
    SIGNAL.subscribe()
}
