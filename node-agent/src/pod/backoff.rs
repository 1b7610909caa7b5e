//! kubelet's CrashLoopBackOff: a container that keeps exiting waits 10 s before its first
//! restart, doubling to at most 300 s; the delay resets once a container has run for
//! 10 minutes (twice the cap) without exiting.

use std::time::Duration;

/// First delay (`backOffPeriod`).
pub const INITIAL: Duration = Duration::from_secs(10);
/// Cap (`MaxContainerBackOff`).
pub const MAX: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting restarts with no delay history.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// One container's back-off: the delay its next restart waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backoff {
    /// The delay applied to the last restart (zero before the first).
    pub last: Duration,
}

impl Backoff {
    /// The delay before restarting a container that ran for `ran` and exited; updates the
    /// history. `initial` and `max` are kubelet's 10 s and 300 s unless configured shorter.
    pub fn next(&mut self, ran: Duration, initial: Duration, max: Duration) -> Duration {
        let reset_after = max.saturating_mul(2);
        let delay = if self.last.is_zero() || ran >= reset_after {
            initial
        } else {
            self.last.saturating_mul(2).min(max)
        };
        self.last = delay;
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets_after_a_long_run() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(1);
        let seq: Vec<u64> = (0..8)
            .map(|_| b.next(short, INITIAL, MAX).as_secs())
            .collect();
        assert_eq!(seq, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(b.next(RESET_AFTER, INITIAL, MAX), INITIAL);
        assert_eq!(b.next(short, INITIAL, MAX).as_secs(), 20);
    }
}
