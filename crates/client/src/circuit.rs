//! The circuit around Redis: after `failures` consecutive failed or timed-out commands, reads
//! stop trying Redis for `open_for` and go to the loader directly; the first read after that
//! tries again (one failure opens it again, one success closes it).

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct Circuit {
    failures_to_open: u32,
    open_for: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl Circuit {
    pub(crate) fn new(failures_to_open: u32, open_for: Duration) -> Circuit {
        Circuit {
            failures_to_open: failures_to_open.max(1),
            open_for,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether reads should skip Redis now.
    pub(crate) fn is_open(&self) -> bool {
        self.state().open_until.is_some_and(|until| Instant::now() < until)
    }

    pub(crate) fn success(&self) {
        let mut state = self.state();
        state.consecutive_failures = 0;
        state.open_until = None;
    }

    pub(crate) fn failure(&self) {
        let mut state = self.state();
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        if state.consecutive_failures >= self.failures_to_open {
            state.open_until = Some(Instant::now() + self.open_for);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_a_success_closes_it() {
        let circuit = Circuit::new(3, Duration::from_secs(60));
        circuit.failure();
        circuit.failure();
        circuit.success();
        circuit.failure();
        circuit.failure();
        assert!(!circuit.is_open(), "failures were not consecutive");
        circuit.failure();
        assert!(circuit.is_open());
        circuit.success();
        assert!(!circuit.is_open());
    }

    #[test]
    fn after_open_for_it_lets_a_read_try_and_one_failure_opens_it_again() {
        let circuit = Circuit::new(2, Duration::from_millis(1));
        circuit.failure();
        circuit.failure();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!circuit.is_open(), "half open: a read may try");
        circuit.failure();
        assert!(circuit.is_open());
    }
}
