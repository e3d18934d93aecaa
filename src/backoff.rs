//! One jittered exponential backoff for every retry loop (a stream's setup waiting for Redis,
//! the Redis subscriber reconnecting).
//!
//! After a deploy or an outage thousands of clients and several processes retry at once; a
//! backoff without jitter keeps them in lockstep, each retry a new thundering herd. Each delay
//! here is drawn at random in the upper half of the current step ("equal jitter": never less
//! than half the step, so the growth stays exponential), and the step doubles up to the cap.
//! The randomness comes from the standard library's per-process hasher keys: this needs spread,
//! not a cryptographic generator, and so no dependency.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// The delays of one retry loop.
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // `reset` is the subscriber's
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
    keys: RandomState,
    draws: u64,
}

impl Backoff {
    /// Steps from `min`, doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            step: min,
            keys: RandomState::new(),
            draws: 0,
        }
    }

    /// The next delay: random in `[step / 2, step]`; then the step doubles (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        self.draws += 1;
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let spread = (step - half).as_micros() as u64;
        if spread == 0 {
            return step;
        }
        half + Duration::from_micros(self.keys.hash_one(self.draws) % (spread + 1))
    }

    /// Back to the first step, after a success.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// The step the next delay is drawn from (without drawing it).
    #[cfg(test)]
    fn step(&self) -> Duration {
        self.step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_within_their_jitter() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut step = Duration::from_millis(50);
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(Duration::from_secs(2));
            assert_eq!(b.step(), step);
        }
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(50));
    }

    #[test]
    fn two_loops_do_not_retry_in_lockstep() {
        // Two processes (two loops with their own keys) at the capped step: their delays differ.
        let mut a = Backoff::new(Duration::from_secs(2), Duration::from_secs(2));
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(2));
        let same = (0..20).filter(|_| a.next_delay() == b.next_delay()).count();
        assert!(same < 3, "{same} of 20 delays were equal");
        let delays: std::collections::HashSet<Duration> = (0..20).map(|_| a.next_delay()).collect();
        assert!(
            delays.len() > 15,
            "only {} distinct delays in 20",
            delays.len()
        );
    }
}
