//! The pause between two attempts at something that failed and will be
//! tried again (a broker connection, a consumer, a Redis write): one policy
//! for every retry loop, so they all behave alike and are tuned in one
//! place.
//!
//! The pause doubles after each failure, from `first` up to `max`, and is
//! then drawn at random from its upper half (`[d/2, d]`): replicas that
//! lost a broker at the same moment do not all knock again at the same
//! instant when it comes back (a thundering herd), while the bound on the
//! wait stays `max`. A success resets it.

use std::time::Duration;

use rand::RngExt as _;
use tokio_util::sync::CancellationToken;

/// Exponential, capped, jittered back-off. Not shared between loops: each
/// retry loop owns one.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Pauses from about `first` after the first failure, doubling up to
    /// `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            failures: 0,
        }
    }

    /// The pause before the next attempt (after one more failure).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.ceiling(self.failures);
        self.failures = self.failures.saturating_add(1);
        jitter(delay)
    }

    /// Sleeps the next pause; false if `shutdown` fired first (stop trying).
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// After a success: the next failure waits about `first` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The pause before attempt `attempt` (1 = the first retry) of a loop
    /// kept by someone else (a client library's reconnect callback).
    pub fn delay_for(&self, attempt: u32) -> Duration {
        jitter(self.ceiling(attempt.saturating_sub(1)))
    }

    /// `first · 2^failures`, at most `max`, before jitter.
    fn ceiling(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// A random duration in `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap_within_the_upper_half() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        for ceiling in [100, 200, 400, 800, 1000, 1000, 1000] {
            let d = b.next_delay();
            assert!(
                d >= ceiling * MS / 2 && d <= ceiling * MS,
                "{d:?} vs {ceiling}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= 100 * MS);
    }

    #[test]
    fn delays_are_spread() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: std::collections::HashSet<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
        assert!(b.delay_for(u32::MAX) <= Duration::from_secs(60));
        assert!(b.delay_for(1) <= Duration::from_secs(5));
    }

    #[tokio::test]
    async fn wait_stops_at_shutdown() {
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(!b.wait(&shutdown).await);
    }
}
