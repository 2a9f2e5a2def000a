//! Timestamps of the stages a message passes through in the relay, for the latency benchmark's
//! per-stage breakdown (BENCHMARKS.md). Nothing happens unless a probe is installed: each stage
//! costs one atomic load.

use std::sync::OnceLock;

/// A point a message passes in the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The claim loop sends a claim (no sequence numbers).
    ClaimStart,
    /// The claim statement goes to the database (no sequence numbers). Reported on SQLite
    /// only, after the wait for the relay's write gate; elsewhere the claim is sent at once.
    ClaimSent,
    /// The claim returned these messages.
    ClaimEnd,
    /// A group task got its permit and starts running these messages.
    GroupStart,
    /// The message's fate is decided and queued for the completer.
    Decided,
    /// The completer wrote these messages' fates.
    Written,
}

type Probe = Box<dyn Fn(Stage, &[i64]) + Send + Sync>;

static PROBE: OnceLock<Probe> = OnceLock::new();

/// Installs the process's probe, called at each stage with the sequence numbers concerned.
/// Returns `false` when one was installed already (the first stays).
pub fn install(probe: impl Fn(Stage, &[i64]) + Send + Sync + 'static) -> bool {
    PROBE.set(Box::new(probe)).is_ok()
}

/// Whether a probe is installed: callers skip gathering what only the probe would read.
#[inline]
pub(crate) fn enabled() -> bool {
    PROBE.get().is_some()
}

/// Reports `stage` for `seqs` to the probe, if one is installed.
#[inline]
pub(crate) fn mark(stage: Stage, seqs: &[i64]) {
    if let Some(p) = PROBE.get() {
        p(stage, seqs);
    }
}
