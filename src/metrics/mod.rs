//! Daemon metrics in the Prometheus text format, and the small HTTP server for `/metrics`,
//! `/healthz` and `/readyz`. Names follow `walbust_<name>_<unit>_total`; labels are bounded
//! (tables, ops, rules, action kinds, targets — never row values).

use crate::source::stream::Progress;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Upper bounds (seconds) of the commit-to-applied latency histogram.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0];

#[derive(Default)]
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.buckets.len() != bounds.len() {
            self.buckets = vec![0; bounds.len()];
        }
        for (i, b) in bounds.iter().enumerate() {
            if value <= *b {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }

    fn render(&self, out: &mut String, name: &str, bounds: &[f64]) {
        for (i, b) in bounds.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.buckets.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }

    /// Approximate quantile from the buckets (upper bound of the bucket holding it).
    fn quantile(&self, bounds: &[f64], q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil() as u64;
        bounds
            .iter()
            .zip(&self.buckets)
            .find(|(_, c)| **c >= rank)
            .map(|(b, _)| *b)
            .or(Some(f64::INFINITY))
    }
}

#[derive(Default)]
struct Inner {
    changes: BTreeMap<(String, &'static str), u64>,
    actions: BTreeMap<(&'static str, String), u64>,
    round_trips: BTreeMap<String, u64>,
    redis_errors: BTreeMap<String, u64>,
    fallbacks: BTreeMap<String, u64>,
    escalations: BTreeMap<String, u64>,
    unrenderable: BTreeMap<String, u64>,
    latency: Histogram,
    batch_actions: Histogram,
}

/// All daemon metrics. The replication position, connection state and reconnects are read
/// from the stream's [`Progress`] when rendered, never copied.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    progress: Arc<Progress>,
    pub transactions: AtomicU64,
    pub batches: AtomicU64,
    pub epoch_bumps: AtomicU64,
    /// New connections that found a target without its epoch key (restarted empty).
    pub epoch_resets: AtomicU64,
    pub slot_retained_wal_bytes: AtomicU64,
    pub slot_lag_bytes: AtomicU64,
    pub redis_ok: AtomicBool,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    pub fn new(progress: Arc<Progress>) -> Arc<Metrics> {
        Arc::new(Metrics {
            progress,
            ..Metrics::default()
        })
    }

    pub fn replication_connected(&self) -> bool {
        self.progress.connected()
    }

    pub fn changes(&self, counts: &BTreeMap<(String, &'static str), u64>) {
        let mut inner = lock(&self.inner);
        for (k, v) in counts {
            *inner.changes.entry(k.clone()).or_default() += v;
        }
    }

    pub fn actions(&self, kind: &'static str, target: &str, n: u64) {
        *lock(&self.inner).actions.entry((kind, target.to_string())).or_default() += n;
    }

    /// A sink applied `batch`: its actions, by kind.
    pub fn applied(&self, target: &str, batch: &walbust_core::plan::Batch) {
        for (kind, n) in [
            ("delete", batch.delete.len()),
            ("bump", batch.bump.len()),
            ("tags", batch.tags.len()),
            ("delete_matching", batch.delete_matching.len()),
            ("publish", batch.publish.len()),
        ] {
            self.actions(kind, target, n as u64);
        }
    }

    pub fn round_trips(&self, target: &str, n: u64) {
        *lock(&self.inner).round_trips.entry(target.to_string()).or_default() += n;
    }

    pub fn redis_error(&self, target: &str) {
        *lock(&self.inner).redis_errors.entry(target.to_string()).or_default() += 1;
    }

    pub fn fallback(&self, rule: &str, escalation: bool) {
        let mut inner = lock(&self.inner);
        let map = if escalation {
            &mut inner.escalations
        } else {
            &mut inner.fallbacks
        };
        *map.entry(rule.to_string()).or_default() += 1;
    }

    pub fn unrenderable(&self, rule: &str) {
        *lock(&self.inner).unrenderable.entry(rule.to_string()).or_default() += 1;
    }

    pub fn latency(&self, seconds: f64) {
        lock(&self.inner).latency.observe(&LATENCY_BUCKETS, seconds);
    }

    pub fn batch(&self, actions: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner).batch_actions.observe(&BATCH_BUCKETS, actions as f64);
    }

    /// (p50, p99) of the commit-to-applied latency, from the histogram buckets.
    pub fn latency_quantiles(&self) -> (Option<f64>, Option<f64>) {
        let inner = lock(&self.inner);
        (
            inner.latency.quantile(&LATENCY_BUCKETS, 0.5),
            inner.latency.quantile(&LATENCY_BUCKETS, 0.99),
        )
    }

    pub fn total_round_trips(&self) -> u64 {
        lock(&self.inner).round_trips.values().sum()
    }

    /// Replication lag: server WAL end minus applied position.
    pub fn lag_bytes(&self) -> u64 {
        self.progress
            .server_wal_end()
            .0
            .saturating_sub(self.progress.applied().0)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let inner = lock(&self.inner);
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            name.to_string()
        };
        let n = family(
            "walbust_changes_total",
            "counter",
            "Row changes received, by table and operation.",
        );
        let mut body = String::new();
        for ((table, op), v) in &inner.changes {
            let _ = writeln!(body, "{n}{{table=\"{}\",op=\"{op}\"}} {v}", esc(table));
        }
        out.push_str(&body);
        let _ = writeln!(
            out,
            "# HELP walbust_transactions_total Committed transactions received.\n# TYPE walbust_transactions_total counter\nwalbust_transactions_total {}",
            self.transactions.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP walbust_actions_total Actions applied, by kind and Redis target.\n# TYPE walbust_actions_total counter");
        for ((kind, target), v) in &inner.actions {
            let _ = writeln!(
                out,
                "walbust_actions_total{{kind=\"{kind}\",target=\"{}\"}} {v}",
                esc(target)
            );
        }
        let _ = writeln!(out, "# HELP walbust_redis_round_trips_total Redis round trips, by target.\n# TYPE walbust_redis_round_trips_total counter");
        for (target, v) in &inner.round_trips {
            let _ = writeln!(out, "walbust_redis_round_trips_total{{target=\"{}\"}} {v}", esc(target));
        }
        let _ = writeln!(out, "# HELP walbust_redis_errors_total Failed Redis applies (retried), by target.\n# TYPE walbust_redis_errors_total counter");
        for (target, v) in &inner.redis_errors {
            let _ = writeln!(out, "walbust_redis_errors_total{{target=\"{}\"}} {v}", esc(target));
        }
        for (name, help, map) in [
            (
                "walbust_fallbacks_total",
                "Changes mapped by a rule's fallback, by rule.",
                &inner.fallbacks,
            ),
            (
                "walbust_escalations_total",
                "Fan-out escalations to a rule's fallback, by rule.",
                &inner.escalations,
            ),
            (
                "walbust_unrenderable_total",
                "Changes a rule could not map and had no fallback for, by rule.",
                &inner.unrenderable,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (rule, v) in map {
                let _ = writeln!(out, "{name}{{rule=\"{}\"}} {v}", esc(rule));
            }
        }
        let _ = writeln!(
            out,
            "# HELP walbust_batch_actions Actions per applied batch.\n# TYPE walbust_batch_actions histogram"
        );
        inner
            .batch_actions
            .render(&mut out, "walbust_batch_actions", &BATCH_BUCKETS);
        let _ = writeln!(out, "# HELP walbust_commit_to_applied_seconds From COMMIT (commit time) to every Redis target's acknowledgement.\n# TYPE walbust_commit_to_applied_seconds histogram");
        inner
            .latency
            .render(&mut out, "walbust_commit_to_applied_seconds", &LATENCY_BUCKETS);
        for (name, kind, help, value) in [
            (
                "walbust_batches_total",
                "counter",
                "Batches applied.",
                self.batches.load(Ordering::Relaxed),
            ),
            (
                "walbust_reconnects_total",
                "counter",
                "Replication reconnects.",
                self.progress.reconnects(),
            ),
            (
                "walbust_epoch_bumps_total",
                "counter",
                "Global epoch bumps after a gap in the slot's history.",
                self.epoch_bumps.load(Ordering::Relaxed),
            ),
            (
                "walbust_redis_epoch_resets_total",
                "counter",
                "Redis connections that found the epoch key missing (target new or restarted empty) and set a fresh epoch.",
                self.epoch_resets.load(Ordering::Relaxed),
            ),
            (
                "walbust_applied_lsn",
                "gauge",
                "Highest position applied by every target (acknowledged to PostgreSQL).",
                self.progress.applied().0,
            ),
            (
                "walbust_replication_lag_bytes",
                "gauge",
                "Server WAL end minus the applied position.",
                self.lag_bytes(),
            ),
            (
                "walbust_slot_retained_wal_bytes",
                "gauge",
                "WAL the slot retains (current WAL LSN minus restart_lsn), polled.",
                self.slot_retained_wal_bytes.load(Ordering::Relaxed),
            ),
            (
                "walbust_slot_confirmed_lag_bytes",
                "gauge",
                "Current WAL LSN minus the slot's confirmed_flush_lsn, polled.",
                self.slot_lag_bytes.load(Ordering::Relaxed),
            ),
            (
                "walbust_replication_connected",
                "gauge",
                "1 while the replication stream is connected.",
                u64::from(self.progress.connected()),
            ),
            (
                "walbust_redis_reachable",
                "gauge",
                "1 when the last apply reached every target.",
                u64::from(self.redis_ok.load(Ordering::Relaxed)),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, ready_max_lag_bytes: u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head (bounded); only the request line matters.
            while len < buf.len() {
                match tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut buf[len..])).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                "/readyz" => {
                    let connected = metrics.replication_connected();
                    let redis = metrics.redis_ok.load(Ordering::Relaxed);
                    let lag = metrics.lag_bytes();
                    let ready = connected && redis && lag <= ready_max_lag_bytes;
                    let body = format!(
                        "replication_connected {connected}\nredis_reachable {redis}\nlag_bytes {lag} (max {ready_max_lag_bytes})\n"
                    );
                    (
                        if ready { "200 OK" } else { "503 Service Unavailable" },
                        "text/plain",
                        body,
                    )
                }
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics, /healthz or /readyz\n".to_string(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        let mut changes = BTreeMap::new();
        changes.insert(("public.products".to_string(), "update"), 3);
        m.changes(&changes);
        m.actions("delete", "redis://h", 5);
        m.latency(0.0015);
        m.latency(0.2);
        m.batch(12);
        m.fallback("r\"1", false);
        let text = m.render();
        assert!(
            text.contains("walbust_changes_total{table=\"public.products\",op=\"update\"} 3"),
            "{text}"
        );
        assert!(text.contains("walbust_actions_total{kind=\"delete\",target=\"redis://h\"} 5"));
        assert!(text.contains("walbust_commit_to_applied_seconds_bucket{le=\"0.002\"} 1"));
        assert!(text.contains("walbust_commit_to_applied_seconds_count 2"));
        assert!(text.contains("walbust_fallbacks_total{rule=\"r\\\"1\"} 1"));
        let (p50, p99) = m.latency_quantiles();
        assert_eq!(p50, Some(0.002));
        assert_eq!(p99, Some(0.25));
    }
}
