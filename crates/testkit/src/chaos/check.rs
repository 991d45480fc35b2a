//! The final check, after quiescing: every entry a reader would be served is compared with the
//! database, and every probe is counted (lost, or deleted and how long after its COMMIT).

use super::readers::{cache_clients, Item, Mode, FEED_STREAM, LIST_ITEM, LOCAL_MODE, MODES, PRODUCT_VALUE, RECS_ITEM};
use super::report::ModeReport;
use super::shared::{connect_db, Shared, RECS_PRODUCTS};
use super::target::RedisSpec;
use super::ChaosError;
use crate::harness::PgInstance;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use walbust_client::feed::StreamId;
use walbust_client::{CacheClient, Entry, LocalCache};

/// Compares every entry a reader would be served with the database, and counts probes.
pub(super) async fn check(
    pg: &PgInstance,
    redis: &RedisSpec,
    shared: &Shared,
    products: i64,
    fault_windows: &[(Instant, Instant)],
    gap_windows: &[(Instant, Instant)],
) -> Result<Vec<ModeReport>, ChaosError> {
    let db = connect_db(&pg.url("catalog")).await?;
    let expected = expected_values(&db).await?;
    let items = items_to_check(shared, products);

    let clients = cache_clients(redis)
        .await
        .ok_or_else(|| ChaosError::Other("cannot connect to redis for the final check".into()))?;
    // SCAN runs per server: on a Cluster, each node lists its own keys.
    let mut nodes = Vec::new();
    for url in &redis.nodes {
        nodes.push(
            redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await?,
        );
    }
    let probes = Probes::snapshot(shared);
    let mut reports = Vec::new();
    for (mode, mut client) in MODES.into_iter().zip(clients) {
        let mut report = ModeReport {
            mode: mode.label(),
            ..ModeReport::default()
        };
        check_entries(&mut client, mode, &items, &expected, &mut report).await?;
        let mut remaining = HashSet::new();
        for node in &mut nodes {
            remaining.extend(scan(node, &format!("{}probe:*", mode.prefix())).await?);
        }
        let (latencies, steady) = probes.count(mode, &remaining, fault_windows, gap_windows, &mut report);
        record_latencies(&mut report, latencies, steady);
        reports.push(report);
    }
    if let Some(locals) = shared.locals.get() {
        reports.push(check_local_caches(locals, &mut nodes[0], &items, &expected).await?);
    }
    Ok(reports)
}

/// Compares what the in-process caches would serve, once they read the whole feed, with the
/// database.
async fn check_local_caches(
    locals: &[LocalCache],
    redis: &mut redis::aio::MultiplexedConnection,
    items: &[Item],
    expected: &HashMap<Item, String>,
) -> Result<ModeReport, ChaosError> {
    let info: redis::Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(FEED_STREAM)
        .query_async(redis)
        .await?;
    let last = match info {
        redis::Value::Array(pairs) => pairs.chunks(2).find_map(|p| match p {
            [redis::Value::BulkString(name), redis::Value::BulkString(id)] if name == b"last-generated-id" => {
                StreamId::parse(&String::from_utf8_lossy(id))
            }
            _ => None,
        }),
        _ => None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in locals {
        while last.is_some_and(|last| node.position().is_none_or(|p| p < last)) {
            if Instant::now() > deadline {
                return Err(ChaosError::Other(
                    "a local cache did not read the whole feed within 30 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut report = ModeReport {
        mode: LOCAL_MODE,
        ..ModeReport::default()
    };
    for (n, node) in locals.iter().enumerate() {
        for item in items {
            let Some(cached) = node.get(&item.key()) else { continue };
            report.entries_checked += 1;
            let want = expected.get(item).cloned().unwrap_or_else(|| match item {
                Item::Product(_) => "none".into(),
                _ => String::new(),
            });
            if *cached != *want {
                report.stale_entries += 1;
                if report.stale_examples.len() < 5 {
                    report.stale_examples.push(format!(
                        "node {n}, {}: cached `{cached}`, database `{want}`",
                        item.key()
                    ));
                }
            }
        }
    }
    for (n, node) in locals.iter().enumerate() {
        let s = node.stats();
        report.notes.push(format!(
            "node {n}: {} hits, {} misses, {} reads not served while the feed was not followed, {} inserts refused (an invalidation came during the load), {} entries invalidated, {} gap flushes, {} flush entries, {} feed entries",
            s.hits, s.misses, s.unfollowed_reads, s.inserts_refused, s.invalidated, s.gap_flushes, s.feed_flushes, s.feed_entries
        ));
    }
    Ok(report)
}

/// What the database holds for each entry (products that do not exist and empty lists are
/// absent).
async fn expected_values(db: &tokio_postgres::Client) -> Result<HashMap<Item, String>, tokio_postgres::Error> {
    let mut expected: HashMap<Item, String> = HashMap::new();
    for row in db
        .query(&format!("SELECT id, {PRODUCT_VALUE} FROM products"), &[])
        .await?
    {
        expected.insert(Item::Product(row.get(0)), row.get(1));
    }
    for row in db
        .query(
            &format!("SELECT category_id, string_agg({LIST_ITEM}, ',' ORDER BY id) FROM products WHERE category_id IS NOT NULL GROUP BY category_id"),
            &[],
        )
        .await?
    {
        expected.insert(Item::Category(row.get(0)), row.get(1));
    }
    for row in db
        .query(
            &format!("SELECT product_id, string_agg({RECS_ITEM}, ',' ORDER BY recommended_id) FROM recommendations GROUP BY product_id"),
            &[],
        )
        .await?
    {
        expected.insert(Item::Recs(row.get(0)), row.get(1));
    }
    Ok(expected)
}

/// Every entry a reader may have cached: the categories' lists, the recommendation lists, the
/// seeded products and the inserted ones.
fn items_to_check(shared: &Shared, products: i64) -> Vec<Item> {
    let max_inserted = shared.max_inserted.load(Ordering::Relaxed);
    let mut items: Vec<Item> = (1..=6).map(Item::Category).collect();
    items.extend((1..=RECS_PRODUCTS).map(Item::Recs));
    items.extend((1..=products).map(Item::Product));
    if max_inserted >= 100_000 {
        items.extend((100_000..=max_inserted).map(Item::Product));
    }
    items
}

/// Compares the entries `mode`'s readers would be served with the database.
async fn check_entries(
    client: &mut CacheClient,
    mode: Mode,
    items: &[Item],
    expected: &HashMap<Item, String>,
    report: &mut ModeReport,
) -> Result<(), redis::RedisError> {
    for item in items {
        let versions = item.versions(mode);
        let key = item.key();
        let versions: Vec<&str> = versions.iter().map(String::as_str).collect();
        let entry = Entry {
            key: &key,
            versions: &versions,
            tags: &[],
        };
        let (versioned, cached) = client.read(&entry).await?;
        let Some(cached) = cached else { continue };
        report.entries_checked += 1;
        let want = expected.get(item).cloned().unwrap_or_else(|| match item {
            Item::Product(_) => "none".into(),
            _ => String::new(),
        });
        if cached != want {
            report.stale_entries += 1;
            if report.stale_examples.len() < 5 {
                report
                    .stale_examples
                    .push(format!("{versioned}: cached `{cached}`, database `{want}`"));
            }
        }
    }
    Ok(())
}

/// The probes of the run, taken from [`Shared`] once the workload stopped.
struct Probes {
    /// Probe suffix (`probe:p:17`) → when its transaction's COMMIT was sent.
    sent: HashMap<String, Instant>,
    /// Probes of commits whose outcome is unknown: not checked.
    ambiguous: HashSet<String>,
    /// Full probe key → when its first `del` event arrived.
    deleted: HashMap<String, Instant>,
}

impl Probes {
    fn snapshot(shared: &Shared) -> Probes {
        Probes {
            sent: shared.probes.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            ambiguous: shared.ambiguous.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            deleted: shared.deleted.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Counts `mode`'s probes into `report` (checked, lost: still among `remaining`, or lost
    /// in a gap when committed inside one of `gap_windows`); returns the COMMIT-to-deletion
    /// latencies of those whose deletion was seen, all of them and those committed outside
    /// `fault_windows`.
    fn count(
        &self,
        mode: Mode,
        remaining: &HashSet<String>,
        fault_windows: &[(Instant, Instant)],
        gap_windows: &[(Instant, Instant)],
        report: &mut ModeReport,
    ) -> (Vec<Duration>, Vec<Duration>) {
        let within =
            |windows: &[(Instant, Instant)], at: &Instant| windows.iter().any(|(from, to)| at >= from && at <= to);
        let mut latencies = Vec::new();
        let mut steady = Vec::new();
        for (probe, sent) in &self.sent {
            if self.ambiguous.contains(probe) {
                continue;
            }
            report.invalidations_checked += 1;
            let key = format!("{}{probe}", mode.prefix());
            if remaining.contains(&key) && within(gap_windows, sent) {
                report.lost_in_gap += 1;
            } else if remaining.contains(&key) {
                report.lost += 1;
                if report.lost_examples.len() < 5 {
                    report.lost_examples.push(key);
                }
            } else if let Some(at) = self.deleted.get(&key) {
                if *at >= *sent {
                    latencies.push(at.duration_since(*sent));
                    if !within(fault_windows, sent) {
                        steady.push(at.duration_since(*sent));
                    }
                }
            }
        }
        (latencies, steady)
    }
}

/// Fills the latency figures of `report`: over every measured probe, and over those committed
/// between faults (`steady`).
fn record_latencies(report: &mut ModeReport, mut latencies: Vec<Duration>, mut steady: Vec<Duration>) {
    latencies.sort();
    steady.sort();
    let within = |l: &[Duration], limit: Duration| l.iter().filter(|d| **d <= limit).count() as u64;
    let quantile_ms = |l: &[Duration], q: f64| {
        l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    report.measured = latencies.len() as u64;
    report.within_100ms = within(&latencies, Duration::from_millis(100));
    report.within_1s = within(&latencies, Duration::from_secs(1));
    report.within_10s = within(&latencies, Duration::from_secs(10));
    report.p50_ms = quantile_ms(&latencies, 0.5);
    report.p99_ms = quantile_ms(&latencies, 0.99);
    report.max_ms = quantile_ms(&latencies, 1.0);
    report.steady_measured = steady.len() as u64;
    report.steady_within_100ms = within(&steady, Duration::from_millis(100));
    report.steady_p99_ms = quantile_ms(&steady, 0.99);
}

async fn scan(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Result<Vec<String>, redis::RedisError> {
    let mut cursor = 0u64;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        out.extend(keys);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_lost_measured_or_skipped_and_fault_windows_leave_the_steady_figures() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let probes = Probes {
            sent: [
                ("probe:p:1", at(0)),
                ("probe:p:2", at(0)),
                ("probe:p:3", at(1000)),
                ("probe:p:4", at(0)),
                ("probe:p:5", at(0)),
            ]
            .into_iter()
            .map(|(p, t)| (p.to_string(), t))
            .collect(),
            ambiguous: ["probe:p:5".to_string()].into(),
            deleted: [("plain:probe:p:2", at(40)), ("plain:probe:p:3", at(1300))]
                .into_iter()
                .map(|(k, t)| (k.to_string(), t))
                .collect(),
        };
        let remaining: HashSet<String> = ["plain:probe:p:1".to_string()].into();
        let mut report = ModeReport::default();
        // probe 3 was committed during a fault; probe 4's deletion was not seen.
        let (latencies, steady) = probes.count(Mode::Plain, &remaining, &[(at(900), at(1100))], &[], &mut report);
        assert_eq!(
            (report.invalidations_checked, report.lost, report.lost_in_gap),
            (4, 1, 0)
        );
        assert_eq!(report.lost_examples, ["plain:probe:p:1"]);
        let mut latencies = latencies;
        latencies.sort();
        assert_eq!(latencies, [Duration::from_millis(40), Duration::from_millis(300)]);
        assert_eq!(steady, [Duration::from_millis(40)]);

        // The same probe left in place inside a gap is counted apart, not as lost.
        let mut report = ModeReport::default();
        probes.count(Mode::Plain, &remaining, &[], &[(at(0), at(10))], &mut report);
        assert_eq!((report.lost, report.lost_in_gap), (0, 1));
    }

    #[test]
    fn latency_figures_count_within_limits_and_take_quantiles_of_the_sorted_latencies() {
        let ms = |l: &[u64]| l.iter().map(|m| Duration::from_millis(*m)).collect::<Vec<_>>();
        let mut report = ModeReport::default();
        record_latencies(
            &mut report,
            ms(&[20000, 5, 1000, 50, 9000, 100, 150, 900, 1500, 10000]),
            ms(&[200, 30]),
        );
        assert_eq!(
            (
                report.measured,
                report.within_100ms,
                report.within_1s,
                report.within_10s
            ),
            (10, 3, 6, 9)
        );
        assert_eq!(
            (report.p50_ms, report.p99_ms, report.max_ms),
            (1000.0, 20000.0, 20000.0)
        );
        assert_eq!(
            (report.steady_measured, report.steady_within_100ms, report.steady_p99_ms),
            (2, 1, 200.0)
        );
        let mut empty = ModeReport::default();
        record_latencies(&mut empty, Vec::new(), Vec::new());
        assert_eq!((empty.measured, empty.p50_ms, empty.steady_p99_ms), (0, 0.0, 0.0));
    }
}
