//! Counters a service exports: what the reads did, shared by every clone of a client.

use std::sync::atomic::{AtomicU64, Ordering};

/// One snapshot of a client's counters (see [`crate::CacheClient::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Reads served from Redis.
    pub hits: u64,
    /// Reads that found no value (and then loaded, waited or fell through).
    pub misses: u64,
    /// Loader calls (every path: lease holder, lease timeout, fall-through).
    pub loads: u64,
    /// Misses that waited for another reader's fill (a lease held elsewhere).
    pub lease_waits: u64,
    /// Waits that ended with this reader loading itself (no fill within `lease_wait`).
    pub lease_timeouts: u64,
    /// Reads served the value another reader (of any process) filled while they waited.
    pub waited_fills: u64,
    /// Fills dropped because the lease was superseded (the key was invalidated while loading).
    pub fills_dropped: u64,
    /// Reads that joined a load already running in this process (single-flight).
    pub single_flight_joins: u64,
    /// Redis commands that failed or timed out.
    pub redis_errors: u64,
    /// Reads answered by the loader alone because Redis was failing or the circuit was open.
    pub fall_throughs: u64,
    /// Reads served a stale-while-revalidate copy while another reader refilled.
    pub stale_serves: u64,
    /// Reads refused because no load slot freed up within `load_wait`.
    pub overloaded: u64,
}

impl Stats {
    /// Prometheus text exposition, one counter per field: `<prefix>_hits_total` …
    pub fn to_prometheus(&self, prefix: &str) -> String {
        let fields = [
            ("hits", self.hits, "reads served from Redis"),
            ("misses", self.misses, "reads that found no value"),
            ("loads", self.loads, "loader calls"),
            (
                "lease_waits",
                self.lease_waits,
                "misses that waited for another reader's fill",
            ),
            (
                "lease_timeouts",
                self.lease_timeouts,
                "lease waits that ended in a load of their own",
            ),
            ("waited_fills", self.waited_fills, "reads served another reader's fill"),
            (
                "fills_dropped",
                self.fills_dropped,
                "fills dropped: the key was invalidated while loading",
            ),
            (
                "single_flight_joins",
                self.single_flight_joins,
                "reads that joined a load in this process",
            ),
            (
                "redis_errors",
                self.redis_errors,
                "Redis commands that failed or timed out",
            ),
            (
                "fall_throughs",
                self.fall_throughs,
                "reads answered by the loader alone (Redis failing)",
            ),
            (
                "overloaded",
                self.overloaded,
                "reads refused: no load slot within load_wait",
            ),
            (
                "stale_serves",
                self.stale_serves,
                "reads served a stale-while-revalidate copy",
            ),
        ];
        let mut out = String::new();
        for (name, value, help) in fields {
            out.push_str(&format!(
                "# HELP {prefix}_{name}_total {help}\n# TYPE {prefix}_{name}_total counter\n{prefix}_{name}_total {value}\n"
            ));
        }
        out
    }
}

/// The live counters behind [`Stats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) lease_waits: AtomicU64,
    pub(crate) lease_timeouts: AtomicU64,
    pub(crate) waited_fills: AtomicU64,
    pub(crate) fills_dropped: AtomicU64,
    pub(crate) single_flight_joins: AtomicU64,
    pub(crate) redis_errors: AtomicU64,
    pub(crate) fall_throughs: AtomicU64,
    pub(crate) overloaded: AtomicU64,
    pub(crate) stale_serves: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            hits: get(&self.hits),
            misses: get(&self.misses),
            loads: get(&self.loads),
            lease_waits: get(&self.lease_waits),
            lease_timeouts: get(&self.lease_timeouts),
            waited_fills: get(&self.waited_fills),
            fills_dropped: get(&self.fills_dropped),
            single_flight_joins: get(&self.single_flight_joins),
            redis_errors: get(&self.redis_errors),
            fall_throughs: get(&self.fall_throughs),
            overloaded: get(&self.overloaded),
            stale_serves: get(&self.stale_serves),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_every_counter_with_help_and_type() {
        let stats = Stats {
            hits: 3,
            fall_throughs: 2,
            ..Stats::default()
        };
        let text = stats.to_prometheus("app_cache");
        assert!(text.contains("# TYPE app_cache_hits_total counter\napp_cache_hits_total 3\n"));
        assert!(text.contains("app_cache_fall_throughs_total 2\n"));
        assert_eq!(text.matches("# HELP").count(), 12);
    }
}
