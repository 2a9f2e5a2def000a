//! When to try a failed delivery again, and when to give up.

use std::time::Duration;

/// Exponential back-off with jitter and a maximum number of attempts, after which a delivery is
/// dead (the Polly `WaitAndRetry` policy of the EF Core outbox, persisted across restarts).
///
/// The delay before attempt `n + 1` is `base · factor^(n-1)`, capped at `max_delay`, then, with
/// jitter on, drawn uniformly from its upper half (`[d/2, d]`): retries of many messages that
/// failed together spread out instead of hitting a recovering broker at the same instant, and
/// the delay still grows.
///
/// ```
/// use std::time::Duration;
/// use outbox_seaorm_core::RetryPolicy;
///
/// let policy = RetryPolicy::exponential(Duration::from_secs(1))
///     .max_attempts(5)
///     .max_delay(Duration::from_secs(60))
///     .jitter(false);
/// assert_eq!(policy.delay_after(1), Duration::from_secs(1));
/// assert_eq!(policy.delay_after(3), Duration::from_secs(4));
/// assert!(policy.is_exhausted(5));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    factor: f64,
    jitter: bool,
}

impl Default for RetryPolicy {
    /// 10 attempts, 1 s doubling to at most 5 min, with jitter: about 6 minutes (4 to 9) from the first
    /// failure to a dead letter, long enough to ride out a broker restart.
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            factor: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The default policy with another first delay.
    pub fn exponential(base_delay: Duration) -> Self {
        Self {
            base_delay: base_delay.min(Duration::from_secs(30 * 86_400)),
            ..Self::default()
        }
    }

    /// Attempts in all, the first included (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The longest delay between two attempts (at most 30 days).
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d.min(Duration::from_secs(30 * 86_400));
        self
    }

    /// The growth factor between delays (at least 1).
    pub fn factor(mut self, f: f64) -> Self {
        self.factor = if f.is_finite() { f.max(1.0) } else { 1.0 };
        self
    }

    /// Whether to randomize delays.
    pub fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// The configured number of attempts.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether `failed_attempts` failures use up the policy.
    pub fn is_exhausted(&self, failed_attempts: u32) -> bool {
        failed_attempts >= self.max_attempts
    }

    /// The delay after the `failed_attempts`-th failure (1-based).
    pub fn delay_after(&self, failed_attempts: u32) -> Duration {
        let exp = failed_attempts.saturating_sub(1).min(64) as i32;
        let secs = self.base_delay.as_secs_f64() * self.factor.powi(exp);
        let capped = secs.min(self.max_delay.as_secs_f64());
        let secs = if self.jitter {
            capped * (0.5 + fastrand::f64() * 0.5)
        } else {
            capped
        };
        Duration::from_secs_f64(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_jitter_stays_in_the_upper_half() {
        let p = RetryPolicy::exponential(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1))
            .jitter(false);
        assert_eq!(p.delay_after(1), Duration::from_millis(100));
        assert_eq!(p.delay_after(2), Duration::from_millis(200));
        assert_eq!(p.delay_after(5), Duration::from_secs(1));
        assert_eq!(p.delay_after(u32::MAX), Duration::from_secs(1));
        let j = p.clone().jitter(true);
        for n in 1..8 {
            let d = j.delay_after(n);
            let full = p.delay_after(n);
            assert!(
                d <= full && d >= full / 2,
                "{d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
    }
}
