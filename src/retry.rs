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
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Backoff {
            current: initial,
            initial,
            max,
            seed,
        }
    }

    /// Starts over from the initial delay (after a success).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// The delay to wait now.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: jitter only, no need for a cryptographic generator.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let base = self.current.as_millis() as u64;
        let jitter = if base > 1 { self.seed % (base / 2 + 1) } else { 0 };
        let delay = Duration::from_millis(base / 2 + jitter);
        self.current = (self.current * 2).min(self.max);
        delay
    }
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
