//! Retrying: one jittered exponential backoff for reconnecting to PostgreSQL, re-applying a
//! batch to a sink, and bumping the epoch after a gap.

use std::time::Duration;

/// Full-jitter exponential backoff: each delay is random in [current/2, current], then the
/// current delay doubles up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    current: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            current: initial,
            initial,
            max,
        }
    }

    /// Starts over from the initial delay (after a success).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// The delay to wait now.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current.as_millis() as u64;
        let jitter = if base > 1 { random() % (base / 2 + 1) } else { 0 };
        let delay = Duration::from_millis(base / 2 + jitter);
        self.current = (self.current * 2).min(self.max);
        delay
    }
}

/// A random number for jitter: the standard library's randomly keyed hasher, so there is no
/// generator to seed or keep.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_millis(1000));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
