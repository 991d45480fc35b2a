//! What the harness's tasks share: the counters and probe registers ([`Shared`]), the
//! workload's deterministic generator ([`Rng`]), and two helpers every task uses (a database
//! connection, blocking calls from async code).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::Mutex;
use std::time::Instant;

/// Products that have recommendations (ids 1..=RECS_PRODUCTS): what writers change and readers
/// read.
pub(super) const RECS_PRODUCTS: i64 = 40;

/// xorshift64*: a deterministic, dependency-free generator for the workload.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// State shared by writers, readers, the event listener and the fault loop.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) stop_writers: AtomicBool,
    pub(super) stop_readers: AtomicBool,
    pub(super) stop_listener: AtomicBool,
    pub(super) writes: AtomicU64,
    pub(super) row_changes: AtomicU64,
    pub(super) reads: AtomicU64,
    pub(super) write_errors: AtomicU64,
    pub(super) read_errors: AtomicU64,
    /// Committed transactions per [`WriteKind`](super::writers::WriteKind).
    pub(super) committed_by_kind: [AtomicU64; 7],
    /// Highest product id inserted so far (readers read those too).
    pub(super) max_inserted: AtomicI64,
    /// Probe suffix (`probe:p:17`) → when its transaction's COMMIT was sent.
    pub(super) probes: Mutex<HashMap<String, Instant>>,
    /// Probes of commits whose outcome is unknown (the connection broke during COMMIT).
    pub(super) ambiguous: Mutex<HashSet<String>>,
    /// Full probe key → when its first `del` event arrived.
    pub(super) deleted: Mutex<HashMap<String, Instant>>,
    /// In-process caches following walbust's feed (standalone Redis only), with their
    /// followers.
    pub(super) locals: std::sync::OnceLock<Vec<walbust_client::LocalCache>>,
    pub(super) followers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

pub(super) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

pub(super) async fn connect_db(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic_and_stays_below_its_bound() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            let n = a.below(6);
            assert_eq!(n, b.below(6));
            assert!(n < 6);
        }
        // A bound of 0 is treated as 1.
        assert_eq!(a.below(0), 0);
    }
}
