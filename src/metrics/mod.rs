//! Daemon metrics, kept in a [`prometheus_client`] registry and exposed by [`http`] on
//! `/metrics` (OpenMetrics text), beside `/healthz` and `/readyz`. Names follow
//! `walbust_<name>_<unit>_total`; labels are bounded (tables, ops, rules, action kinds,
//! targets — never row values). The replication position, connection state and reconnects are
//! read from the stream's [`Progress`] at each scrape, never copied.

pub mod http;

pub use http::serve;

use crate::plan::Batch;
use crate::source::stream::Progress;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Upper bounds (seconds) of the commit-to-applied latency histogram.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the actions-per-batch histogram.
const BATCH_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableOp {
    table: String,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindTarget {
    kind: &'static str,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

/// Gauges set from [`Progress`] and the daemon's state just before each scrape.
#[derive(Default)]
struct Gauges {
    applied_lsn: Gauge,
    replication_lag_bytes: Gauge,
    slot_retained_wal_bytes: Gauge,
    slot_confirmed_lag_bytes: Gauge,
    replication_connected: Gauge,
    redis_reachable: Gauge,
    reconnects: Counter,
}

/// All daemon metrics.
pub struct Metrics {
    registry: Registry,
    progress: Arc<Progress>,
    changes: Family<TableOp, Counter>,
    transactions: Counter,
    spilled_keys: Counter,
    actions: Family<KindTarget, Counter>,
    round_trips: Family<TargetLabel, Counter>,
    redis_errors: Family<KindTarget, Counter>,
    redis_rollbacks: Family<TargetLabel, Counter>,
    fallbacks: Family<RuleLabel, Counter>,
    escalations: Family<RuleLabel, Counter>,
    unrenderable: Family<RuleLabel, Counter>,
    batches: Counter,
    batch_actions: Histogram,
    latency: Histogram,
    epoch_bumps: Counter,
    epoch_resets: Counter,
    gauges: Gauges,
    /// Whether the last apply or ping reached every target.
    redis_ok: AtomicBool,
    /// One scrape at a time: the gauges are set from the live state just before encoding.
    scrape: Mutex<()>,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    pub fn new(progress: Arc<Progress>) -> Arc<Metrics> {
        let mut m = Metrics {
            registry: Registry::default(),
            progress,
            changes: Family::default(),
            transactions: Counter::default(),
            spilled_keys: Counter::default(),
            actions: Family::default(),
            round_trips: Family::default(),
            redis_errors: Family::default(),
            redis_rollbacks: Family::default(),
            fallbacks: Family::default(),
            escalations: Family::default(),
            unrenderable: Family::default(),
            batches: Counter::default(),
            batch_actions: Histogram::new(BATCH_BUCKETS),
            latency: Histogram::new(LATENCY_BUCKETS),
            epoch_bumps: Counter::default(),
            epoch_resets: Counter::default(),
            gauges: Gauges::default(),
            redis_ok: AtomicBool::new(false),
            scrape: Mutex::new(()),
        };
        m.register();
        Arc::new(m)
    }

    /// Names and help texts (counters get their `_total` suffix from the exposition).
    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "walbust_changes",
            "Row changes received, by table and operation",
            self.changes.clone(),
        );
        r.register(
            "walbust_transactions",
            "Committed transactions received",
            self.transactions.clone(),
        );
        r.register(
            "walbust_streamed_keys_spilled",
            "Keys of streamed transactions written to disk until their commit (apply.spill_dir)",
            self.spilled_keys.clone(),
        );
        r.register(
            "walbust_actions",
            "Actions applied, by kind and target",
            self.actions.clone(),
        );
        r.register(
            "walbust_redis_rollbacks",
            "Times a target was found holding less than it was sent (older snapshot, lost AOF writes, promoted replica, restart empty), by target",
            self.redis_rollbacks.clone(),
        );
        r.register(
            "walbust_redis_round_trips",
            "Redis round trips, by target",
            self.round_trips.clone(),
        );
        r.register(
            "walbust_redis_errors",
            "Redis errors by target and kind: connection, timeout, permission, configuration, readonly, out_of_memory, other (the batch is retried), and wrongtype (a key of the wrong type was replaced)",
            self.redis_errors.clone(),
        );
        r.register(
            "walbust_fallbacks",
            "Changes mapped by a rule's fallback, by rule",
            self.fallbacks.clone(),
        );
        r.register(
            "walbust_escalations",
            "Fan-out escalations to a rule's fallback, by rule",
            self.escalations.clone(),
        );
        r.register(
            "walbust_unrenderable",
            "Changes a rule could not map and had no fallback for, by rule",
            self.unrenderable.clone(),
        );
        r.register("walbust_batches", "Batches applied", self.batches.clone());
        r.register(
            "walbust_batch_actions",
            "Actions per applied batch",
            self.batch_actions.clone(),
        );
        r.register(
            "walbust_commit_to_applied_seconds",
            "From COMMIT (commit time) to every target's acknowledgement",
            self.latency.clone(),
        );
        r.register(
            "walbust_reconnects",
            "Replication reconnects",
            self.gauges.reconnects.clone(),
        );
        r.register(
            "walbust_epoch_bumps",
            "Global epoch bumps after a gap in the slot's history",
            self.epoch_bumps.clone(),
        );
        r.register(
            "walbust_redis_epoch_resets",
            "Redis connections that found the epoch key missing (target new or restarted empty) and set a fresh epoch",
            self.epoch_resets.clone(),
        );
        self.register_gauges();
    }

    fn register_gauges(&mut self) {
        let (r, g) = (&mut self.registry, &self.gauges);
        for (name, help, gauge) in [
            (
                "walbust_applied_lsn",
                "Highest position applied by every target (acknowledged to PostgreSQL)",
                &g.applied_lsn,
            ),
            (
                "walbust_replication_lag_bytes",
                "Server WAL end minus the applied position",
                &g.replication_lag_bytes,
            ),
            (
                "walbust_slot_retained_wal_bytes",
                "WAL the slot retains (current WAL LSN minus restart_lsn), polled",
                &g.slot_retained_wal_bytes,
            ),
            (
                "walbust_slot_confirmed_lag_bytes",
                "Current WAL LSN minus the slot's confirmed_flush_lsn, polled",
                &g.slot_confirmed_lag_bytes,
            ),
            (
                "walbust_replication_connected",
                "1 while the replication stream is connected",
                &g.replication_connected,
            ),
            (
                "walbust_redis_reachable",
                "1 when the last apply or idle ping reached every target",
                &g.redis_reachable,
            ),
        ] {
            r.register(name, help, gauge.clone());
        }
    }

    pub fn changes(&self, table: &str, op: &'static str, n: u64) {
        self.changes
            .get_or_create(&TableOp {
                table: table.to_string(),
                op,
            })
            .inc_by(n);
    }

    pub fn transaction(&self) {
        self.transactions.inc();
    }

    pub fn spilled_keys(&self, n: u64) {
        self.spilled_keys.inc_by(n);
    }

    pub fn actions(&self, kind: &'static str, target: &str, n: u64) {
        self.actions
            .get_or_create(&KindTarget {
                kind,
                target: target.to_string(),
            })
            .inc_by(n);
    }

    /// A sink applied `batch`: its actions, by kind.
    pub fn applied(&self, target: &str, batch: &Batch) {
        let actions = batch.merged();
        for (kind, n) in [
            ("delete", actions.delete.len()),
            ("bump", actions.bump.len()),
            ("tags", actions.tags.len()),
            ("delete_matching", actions.delete_matching.len()),
            ("publish", actions.publish.len()),
        ] {
            self.actions(kind, target, n as u64);
        }
    }

    pub fn round_trips(&self, target: &str, n: u64) {
        self.round_trips.get_or_create(&target_label(target)).inc_by(n);
    }

    /// An apply to `target` failed (it is retried).
    pub fn redis_error(&self, target: &str, kind: &'static str) {
        self.redis_errors
            .get_or_create(&KindTarget {
                kind,
                target: target.to_string(),
            })
            .inc();
        if kind != "wrongtype" {
            self.redis_ok.store(false, Ordering::Relaxed);
        }
    }

    /// Every target applied the last batch, or answered the last ping.
    pub fn redis_rollback(&self, target: &str) {
        self.redis_rollbacks.get_or_create(&target_label(target)).inc();
    }

    pub fn redis_reached(&self) {
        self.redis_ok.store(true, Ordering::Relaxed);
    }

    /// A target did not answer a ping.
    pub fn redis_unreachable(&self) {
        self.redis_ok.store(false, Ordering::Relaxed);
    }

    pub fn redis_ok(&self) -> bool {
        self.redis_ok.load(Ordering::Relaxed)
    }

    pub fn fallback(&self, rule: &str, escalation: bool) {
        let family = if escalation { &self.escalations } else { &self.fallbacks };
        family.get_or_create(&rule_label(rule)).inc();
    }

    pub fn unrenderable(&self, rule: &str) {
        self.unrenderable.get_or_create(&rule_label(rule)).inc();
    }

    pub fn latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    pub fn batch(&self, actions: usize) {
        self.batches.inc();
        self.batch_actions.observe(actions as f64);
    }

    pub fn batches(&self) -> u64 {
        self.batches.get()
    }

    pub fn epoch_bump(&self) {
        self.epoch_bumps.inc();
    }

    pub fn epoch_resets(&self, n: u64) {
        self.epoch_resets.inc_by(n);
    }

    /// The polled slot statistics.
    pub fn slot_stats(&self, retained_wal_bytes: Option<u64>, confirmed_lag_bytes: Option<u64>) {
        if let Some(v) = retained_wal_bytes {
            self.gauges.slot_retained_wal_bytes.set(to_i64(v));
        }
        if let Some(v) = confirmed_lag_bytes {
            self.gauges.slot_confirmed_lag_bytes.set(to_i64(v));
        }
    }

    pub fn replication_connected(&self) -> bool {
        self.progress.connected()
    }

    /// Replication lag: server WAL end minus applied position.
    pub fn lag_bytes(&self) -> u64 {
        self.progress
            .server_wal_end()
            .0
            .saturating_sub(self.progress.applied().0)
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let g = &self.gauges;
        g.applied_lsn.set(to_i64(self.progress.applied().0));
        g.replication_lag_bytes.set(to_i64(self.lag_bytes()));
        g.replication_connected.set(i64::from(self.replication_connected()));
        g.redis_reachable.set(i64::from(self.redis_ok()));
        let reconnects = self.progress.reconnects();
        g.reconnects.inc_by(reconnects.saturating_sub(g.reconnects.get()));
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn target_label(target: &str) -> TargetLabel {
    TargetLabel {
        target: target.to_string(),
    }
}

fn rule_label(rule: &str) -> RuleLabel {
    RuleLabel { rule: rule.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() {
        let m = Metrics::new(Arc::new(Progress::default()));
        m.changes("public.products", "update", 3);
        m.actions("delete", "redis://h", 5);
        m.latency(0.0015);
        m.latency(0.2);
        m.batch(12);
        m.fallback("r\"1", false);
        m.epoch_resets(2);
        let text = m.render();
        for expected in [
            "walbust_changes_total{table=\"public.products\",op=\"update\"} 3",
            "walbust_actions_total{kind=\"delete\",target=\"redis://h\"} 5",
            "walbust_commit_to_applied_seconds_bucket{le=\"0.002\"} 1",
            "walbust_commit_to_applied_seconds_count 2",
            "walbust_fallbacks_total{rule=\"r\\\"1\"} 1",
            "walbust_redis_epoch_resets_total 2",
            "walbust_batches_total 1",
            "walbust_applied_lsn 0",
            "walbust_replication_connected 0",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in\n{text}");
        }
    }
}
