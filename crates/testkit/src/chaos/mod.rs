//! `walbust chaos`: the consistency harness (docs/consistency.md).
//!
//! It starts a throwaway PostgreSQL and redis-server, the catalog schema, and walbust as child
//! processes (`walbust run`, so faults can kill them), then runs writers and cache-aside readers
//! side by side for three reader protocols over the same workload:
//!
//! * `plain`: readers fill `plain:<key>`, rules delete it (tags for lists);
//! * `redelete`: the same with `redelete_after: 500ms`;
//! * `version`: readers build keys from version keys and the epoch ([`crate::client`]), rules
//!   bump them.
//!
//! Faults are injected on a schedule (kill -9 of walbust, Redis cold restart, Redis SIGSTOP,
//! pg_terminate_backend of the walsender, PostgreSQL fast restart, takeover by a standby walbust).
//! At the end the harness quiesces (writers stop, the slot's confirmed position reaches the
//! server's current LSN) and compares every entry a reader would be served with the database.
//!
//! Lost invalidations are detected with *probes*: before COMMIT a writer sets one probe key per
//! mode that only that write's invalidation deletes (`probe:p:<rev>`, where `rev` is a fresh
//! sequence value the write stores in the row). A probe still present after quiescing is an
//! invalidation that never happened. Keyspace notifications (`del` events) timestamp each probe's
//! deletion: the commit-to-Redis latency, measured from the moment COMMIT was sent.

use crate::harness::{HarnessError, PgInstance, PgOptions, RedisInstance};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use walbust_client::{CacheClient, Entry};

const MIGRATIONS: [&str; 2] = [
    include_str!("../../../../migrations/001_catalog.sql"),
    include_str!("../../../../migrations/002_seed.sql"),
];

/// Each write stores a fresh `rev`, so every write has probe keys of its own; inserted
/// products get ids from 100000 up.
const CHAOS_SCHEMA: &str = "
CREATE SEQUENCE chaos_rev;
CREATE SEQUENCE chaos_product_id START 100000;
ALTER TABLE products ADD COLUMN rev bigint NOT NULL DEFAULT nextval('chaos_rev');
ALTER TABLE recommendations ADD COLUMN rev bigint NOT NULL DEFAULT nextval('chaos_rev');
";

/// Rules for the three reader protocols, one file (and key prefix) each.
const RULES: [(&str, &str); 3] = [
    (
        "plain.yaml",
        r#"version: 1
prefix: "plain:"
rules:
  - name: plain-product
    table: public.products
    on: [insert, update, delete]
    delete: ["product:{id}"]
    tags: ["category:{category_id}"]
  - name: plain-recs
    table: public.recommendations
    on: [insert, update, delete, truncate]
    delete: ["recs:{product_id}"]
    fallback:
      tags: ["recs"]
"#,
    ),
    (
        "redelete.yaml",
        r#"version: 1
prefix: "redel:"
rules:
  - name: redel-product
    table: public.products
    on: [insert, update, delete]
    delete: ["product:{id}"]
    tags: ["category:{category_id}"]
    redelete_after: 500ms
  - name: redel-recs
    table: public.recommendations
    on: [insert, update, delete, truncate]
    delete: ["recs:{product_id}"]
    redelete_after: 500ms
    fallback:
      tags: ["recs"]
"#,
    ),
    (
        "version.yaml",
        r#"version: 1
prefix: "vers:"
rules:
  - name: vers-product
    table: public.products
    on: [insert, update, delete]
    bump: ["v:product:{id}", "v:category:{category_id}"]
  - name: vers-recs
    table: public.recommendations
    on: [insert, update, delete, truncate]
    bump: ["v:recs:{product_id}"]
    fallback:
      bump: ["v:recs"]
"#,
    ),
];

/// Probe rules, one copy per mode prefix: deleted by the same transaction's actions as the
/// mode's cache keys (same batch, same pipeline).
const PROBE_RULES: &str = r#"
  - name: MODE-probe-write
    table: public.products
    on: [insert, update]
    delete: ["probe:p:{rev}"]
  - name: MODE-probe-delete
    table: public.products
    on: [delete]
    delete: ["probe:d:{id}"]
  - name: MODE-probe-recs
    table: public.recommendations
    on: [insert, update, truncate]
    delete: ["probe:r:{rev}"]
    fallback:
      tags: ["probe-truncate"]
"#;

const PRODUCT_VALUE: &str = "name || '|' || price_cents || '|' || coalesce(category_id::text, '-') || '|' || rev";
const LIST_ITEM: &str = "id || ':' || price_cents";
const RECS_ITEM: &str = "recommended_id || ':' || score";

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{0}\nthe chaos harness needs PostgreSQL server binaries and redis-server: `apt-get install -y postgresql redis-server`")]
    Harness(#[from] HarnessError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// The faults the harness injects, one per cycle, round robin over [`ChaosOptions::faults`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of the active walbust, restarted at once.
    Kill9,
    /// Redis restarted without persistence (cold cache).
    RedisRestart,
    /// Redis SIGSTOP for 2 s.
    RedisStop,
    /// pg_terminate_backend of the walsender.
    TerminateWalsender,
    /// PostgreSQL fast restart.
    PgRestart,
    /// A standby walbust takes over from the active one (kill -9).
    Takeover,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::Kill9,
        Fault::RedisRestart,
        Fault::RedisStop,
        Fault::TerminateWalsender,
        Fault::PgRestart,
        Fault::Takeover,
    ];

    /// The name `--faults` takes.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill9",
            Fault::RedisRestart => "redis-restart",
            Fault::RedisStop => "redis-stop",
            Fault::TerminateWalsender => "terminate-walsender",
            Fault::PgRestart => "pg-restart",
            Fault::Takeover => "takeover",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill -9 walbust, restart",
            Fault::RedisRestart => "redis restart (cold cache)",
            Fault::RedisStop => "redis SIGSTOP 2 s",
            Fault::TerminateWalsender => "pg_terminate_backend(walsender)",
            Fault::PgRestart => "postgresql fast restart",
            Fault::Takeover => "takeover by standby walbust",
        }
    }
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        Fault::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
            format!("unknown fault `{s}`; expected one of {}", names.join(", "))
        })
    }
}

/// How long and how hard to run.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// The `walbust` executable to run as the daemon under test.
    pub walbust_bin: PathBuf,
    /// Fault cycles: each runs the workload for `cycle`, then injects the next fault.
    pub cycles: usize,
    /// Which faults, in order (round robin over the cycles).
    pub faults: Vec<Fault>,
    pub cycle: Duration,
    /// Keep writing (without further faults) until at least this many transactions committed.
    pub min_writes: u64,
    pub writers: usize,
    pub readers: usize,
    /// Write transactions per second, all writers together (0: as fast as they go — which
    /// measures an overloaded machine rather than walbust).
    pub rate: u64,
    /// Seeded products (ids 1..=products); inserts add more.
    pub products: i64,
    pub seed: u64,
    /// Where walbust's logs go (kept); a temp dir when unset.
    pub log_dir: Option<PathBuf>,
}

impl ChaosOptions {
    /// The CI variant: every fault once, about two minutes.
    pub fn short(walbust_bin: PathBuf) -> ChaosOptions {
        ChaosOptions {
            walbust_bin,
            cycles: 6,
            faults: Fault::ALL.to_vec(),
            cycle: Duration::from_secs(8),
            min_writes: 0,
            writers: 3,
            readers: 3,
            rate: 600,
            products: 200,
            seed: 1,
            log_dir: None,
        }
    }

    /// The published figures: ≥ 20 fault cycles and ≥ 100,000 writes.
    pub fn full(walbust_bin: PathBuf) -> ChaosOptions {
        ChaosOptions {
            cycles: 24,
            cycle: Duration::from_secs(8),
            min_writes: 100_000,
            writers: 4,
            readers: 4,
            rate: 1000,
            ..ChaosOptions::short(walbust_bin)
        }
    }
}

/// The three reader protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Redelete,
    Version,
    /// No rules at all: every probe must stay and entries must go stale — proof that the
    /// checker sees what it is looking for.
    Control,
}

const MODES: [Mode; 4] = [Mode::Plain, Mode::Redelete, Mode::Version, Mode::Control];

impl Mode {
    fn prefix(self) -> &'static str {
        match self {
            Mode::Plain => "plain:",
            Mode::Redelete => "redel:",
            Mode::Version => "vers:",
            Mode::Control => "ctl:",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Mode::Plain => "plain delete",
            Mode::Redelete => "delete + redelete_after 500ms",
            Mode::Version => "version keys",
            Mode::Control => "control: no rules (must go stale)",
        }
    }
}

/// A cached entry: a product, a category's product list, a product's recommendations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Item {
    Product(i64),
    Category(i64),
    Recs(i64),
}

impl Item {
    fn key(self) -> String {
        match self {
            Item::Product(id) => format!("product:{id}"),
            Item::Category(id) => format!("category:{id}:list"),
            Item::Recs(id) => format!("recs:{id}"),
        }
    }

    fn versions(self, mode: Mode) -> Vec<String> {
        if mode != Mode::Version {
            return Vec::new();
        }
        match self {
            Item::Product(id) => vec![format!("v:product:{id}")],
            Item::Category(id) => vec![format!("v:category:{id}")],
            Item::Recs(id) => vec![format!("v:recs:{id}"), "v:recs".into()],
        }
    }

    fn tags(self, mode: Mode) -> Vec<String> {
        match (self, mode) {
            (Item::Category(id), Mode::Plain | Mode::Redelete) => vec![format!("category:{id}")],
            // TRUNCATE names no rows: every recommendation list is filed under one tag.
            (Item::Recs(_), Mode::Plain | Mode::Redelete) => vec!["recs".into()],
            _ => Vec::new(),
        }
    }

    async fn load(self, db: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
        let (sql, id) = match self {
            Item::Product(id) => (
                format!("SELECT coalesce((SELECT {PRODUCT_VALUE} FROM products WHERE id = $1), 'none')"),
                id,
            ),
            Item::Category(id) => (
                format!(
                    "SELECT coalesce(string_agg({LIST_ITEM}, ',' ORDER BY id), '') FROM products WHERE category_id = $1"
                ),
                id,
            ),
            Item::Recs(id) => (
                format!(
                    "SELECT coalesce(string_agg({RECS_ITEM}, ',' ORDER BY recommended_id), '') FROM recommendations WHERE product_id = $1"
                ),
                id,
            ),
        };
        Ok(db.query_one(&sql, &[&id]).await?.get(0))
    }
}

/// xorshift64*: a deterministic, dependency-free generator for the workload.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// State shared by writers, readers, the event listener and the fault loop.
#[derive(Default)]
struct Shared {
    stop_writers: AtomicBool,
    stop_readers: AtomicBool,
    stop_listener: AtomicBool,
    writes: AtomicU64,
    row_changes: AtomicU64,
    reads: AtomicU64,
    write_errors: AtomicU64,
    read_errors: AtomicU64,
    /// Committed transactions per [`WriteKind`].
    committed_by_kind: [AtomicU64; 7],
    /// Highest product id inserted so far (readers read those too).
    max_inserted: AtomicI64,
    /// Probe suffix (`probe:p:17`) → when its transaction's COMMIT was sent.
    probes: Mutex<HashMap<String, Instant>>,
    /// Probes of commits whose outcome is unknown (the connection broke during COMMIT).
    ambiguous: Mutex<HashSet<String>>,
    /// Full probe key → when its first `del` event arrived.
    deleted: Mutex<HashMap<String, Instant>>,
}

/// One fault injected, and how long the system took to have walbust streaming again.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FaultRecord {
    pub cycle: usize,
    pub fault: &'static str,
    pub at_seconds: f64,
    /// Until the slot was active again (walbust streaming), when that applies.
    pub recovered_after_ms: Option<u64>,
}

/// Figures for one reader protocol.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ModeReport {
    pub mode: &'static str,
    /// Entries a reader would be served at the end, compared with the database.
    pub entries_checked: u64,
    pub stale_entries: u64,
    pub stale_examples: Vec<String>,
    /// Committed changes whose invalidation was checked (probes).
    pub invalidations_checked: u64,
    /// Probes still present after quiescing: invalidations that never happened.
    pub lost: u64,
    pub lost_examples: Vec<String>,
    /// Probes whose deletion event was seen (the rest were wiped by a Redis cold restart
    /// before walbust got to them, or deleted while the listener was reconnecting).
    pub measured: u64,
    pub within_100ms: u64,
    pub within_1s: u64,
    pub within_10s: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The same for commits outside fault windows (from a fault's start until 3 s after
    /// it was injected): walbust between faults.
    pub steady_measured: u64,
    pub steady_within_100ms: u64,
    pub steady_p99_ms: f64,
}

/// The outcome of a run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ChaosReport {
    pub seconds: f64,
    /// The writers' pace (transactions/s; 0 = unthrottled).
    pub rate: u64,
    pub writes: u64,
    pub row_changes: u64,
    pub reads: u64,
    pub write_errors: u64,
    pub read_errors: u64,
    pub ambiguous_commits: u64,
    /// Committed transactions per kind of write (price, move, insert, …).
    pub committed_by_kind: Vec<(String, u64)>,
    pub quiesce_ms: u64,
    pub faults: Vec<FaultRecord>,
    pub modes: Vec<ModeReport>,
    /// walbust's own commit-to-applied histogram over every process of the run.
    pub walbust_latency: DaemonLatency,
}

impl ChaosReport {
    /// What fails the run: any lost invalidation, any stale entry with version keys.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, n) in &self.committed_by_kind {
            if *n == 0 {
                out.push(format!(
                    "no `{kind}` write committed: the workload did not run as designed"
                ));
            }
        }
        for m in &self.modes {
            if m.mode == Mode::Control.label() {
                // Probes set before a Redis cold restart are wiped by it, so not all of them stay.
                if m.lost == 0 || m.stale_entries == 0 {
                    out.push(format!(
                        "the control (no rules) should lose invalidations and go stale, but lost {} of {} and has {} stale entries: the checker is blind",
                        m.lost, m.invalidations_checked, m.stale_entries
                    ));
                }
                continue;
            }
            if m.lost > 0 {
                out.push(format!(
                    "{}: {} lost invalidations (e.g. {:?})",
                    m.mode, m.lost, m.lost_examples
                ));
            }
            if m.mode == Mode::Version.label() && m.stale_entries > 0 {
                out.push(format!(
                    "{}: {} stale entries (e.g. {:?})",
                    m.mode, m.stale_entries, m.stale_examples
                ));
            }
            if m.invalidations_checked == 0 {
                out.push(format!("{}: no invalidation was checked", m.mode));
            }
        }
        out
    }

    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "{} transactions (paced at {}/s; {} row changes) and {} cache reads per mode in {:.0} s, {} faults; quiesced in {} ms; {} commits with unknown outcome excluded\n\n",
            self.writes,
            self.rate,
            self.row_changes,
            self.reads,
            self.seconds,
            self.faults.len(),
            self.quiesce_ms,
            self.ambiguous_commits
        );
        let kinds: Vec<String> = self.committed_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        s.push_str(&format!(
            "transactions by kind: {}; failed attempts (rolled back, retried): {} writes, {} reads\n\n",
            kinds.join(", "),
            self.write_errors,
            self.read_errors
        ));
        s.push_str("| mode | stale entries at the end | entries checked | invalidations checked | lost | measured | ≤ 100 ms | ≤ 1 s | ≤ 10 s | p50 | p99 | max | between faults: ≤ 100 ms | between faults: p99 |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for m in &self.modes {
            let pct = |n: u64| pct_of(n, m.measured);
            if m.mode == Mode::Control.label() {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | - | - | - | - | - | - | - | - | - |\n",
                    m.mode, m.stale_entries, m.entries_checked, m.invalidations_checked, m.lost
                ));
                continue;
            }
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} ms | {:.1} ms | {:.0} ms | {} of {} | {:.1} ms |\n",
                m.mode,
                m.stale_entries,
                m.entries_checked,
                m.invalidations_checked,
                m.lost,
                m.measured,
                pct(m.within_100ms),
                pct(m.within_1s),
                pct(m.within_10s),
                m.p50_ms,
                m.p99_ms,
                m.max_ms,
                pct_of(m.steady_within_100ms, m.steady_measured),
                m.steady_measured,
                m.steady_p99_ms
            ));
        }
        let l = &self.walbust_latency;
        s.push_str(&format!(
            "\nwalbust's own histogram (`walbust_commit_to_applied_seconds`, commit timestamp to every target's acknowledgement, all processes): {} transactions applied (replays included), ≤ 10 ms {}, ≤ 100 ms {}, ≤ 1 s {}\n",
            l.transactions,
            pct_of(l.within_10ms, l.transactions),
            pct_of(l.within_100ms, l.transactions),
            pct_of(l.within_1s, l.transactions)
        ));
        s.push_str("\n| cycle | fault | at | walbust streaming again after |\n|---|---|---|---|\n");
        for f in &self.faults {
            s.push_str(&format!(
                "| {} | {} | {:.1} s | {} |\n",
                f.cycle,
                f.fault,
                f.at_seconds,
                f.recovered_after_ms
                    .map(|ms| format!("{ms} ms"))
                    .unwrap_or_else(|| "-".into())
            ));
        }
        s
    }
}

fn pct_of(n: u64, of: u64) -> String {
    if of == 0 {
        "-".to_string()
    } else {
        format!("{:.3} %", 100.0 * n as f64 / of as f64)
    }
}

/// A walbust daemon process (`walbust run`), killable.
struct Daemon {
    name: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    http_port: u16,
    /// walbust's own commit-to-applied histogram, summed over the processes killed so far.
    latency: Arc<Mutex<DaemonLatency>>,
}

/// walbust's own view of latency (`walbust_commit_to_applied_seconds`: PostgreSQL's commit
/// timestamp to every target's acknowledgement), scraped from `/metrics` before each kill.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DaemonLatency {
    pub transactions: u64,
    pub within_10ms: u64,
    pub within_100ms: u64,
    pub within_1s: u64,
}

impl DaemonLatency {
    fn add_scrape(&mut self, metrics: &str) {
        // The bucket bound may be written `1` or `1.0` (OpenMetrics): compare it as a number.
        let value = |name: &str| -> u64 {
            let (head, bound) = match name.split_once("le=\"") {
                Some((head, rest)) => (head, rest.split('"').next().and_then(|b| b.parse::<f64>().ok())),
                None => (name, None),
            };
            metrics
                .lines()
                .find_map(|l| {
                    let rest = l.strip_prefix(head)?;
                    match bound {
                        None => Some(rest),
                        Some(want) => {
                            let (le, rest) = rest.strip_prefix("le=\"")?.split_once("\"}")?;
                            (le.parse::<f64>().ok()? == want).then_some(rest)
                        }
                    }
                })
                .and_then(|rest| rest.trim().parse::<f64>().ok())
                .map(|v| v as u64)
                .unwrap_or(0)
        };
        self.transactions += value("walbust_commit_to_applied_seconds_count ");
        self.within_10ms += value("walbust_commit_to_applied_seconds_bucket{le=\"0.01\"} ");
        self.within_100ms += value("walbust_commit_to_applied_seconds_bucket{le=\"0.1\"} ");
        self.within_1s += value("walbust_commit_to_applied_seconds_bucket{le=\"1\"} ");
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

impl Daemon {
    fn spawn(&mut self, bin: &Path) -> Result<(), ChaosError> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "walbust=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| ChaosError::Other(format!("cannot start {}: {e}", bin.display())))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // What this process applied is counted before it dies.
            if let Some(metrics) = http_get(self.http_port, "/metrics") {
                self.latency
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add_scrape(&metrics);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The application_name of the walbust instance streaming the slot, if any.
fn active_daemon(pg: &PgInstance) -> Option<String> {
    let out = pg
        .psql(
            "catalog",
            "SELECT coalesce((SELECT a.application_name FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE s.slot_name = 'walbust'), '')",
        )
        .ok()?;
    let name = out.trim().to_string();
    (!name.is_empty()).then_some(name)
}

async fn wait_active(pg: &PgInstance, timeout: Duration, other_than: Option<&str>) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(name) = blocking(|| active_daemon(pg)) {
            if other_than != Some(name.as_str()) {
                return Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn daemon_config(pg: &PgInstance, redis: &RedisInstance, rules: &Path, name: &str, http_port: u16) -> String {
    format!(
        r#"shutdown_timeout = "5s"
[postgres]
url = "{}?application_name={name}"
slot = "walbust"
publication = "walbust_catalog"
status_interval = "1s"
reconnect_max_delay = "1s"
slot_stats_interval = "5s"
[rules]
path = "{}"
[apply]
max_batch_delay = "1ms"
retry_max_delay = "1s"
[[redis]]
url = "{}"
[http]
listen = "127.0.0.1:{http_port}"
"#,
        pg.url("catalog"),
        rules.display(),
        redis.url()
    )
}

async fn connect_db(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// What one write transaction did.
#[derive(Clone, Copy)]
enum WriteKind {
    Price,
    Move,
    Insert,
    Delete,
    Recs,
    Bulk,
    Truncate,
}

const WRITE_KINDS: [&str; 7] = ["price", "move", "insert", "delete", "recs", "bulk", "truncate"];

/// One write transaction: the change, its probes set in Redis, then COMMIT.
async fn write_once(
    db: &mut tokio_postgres::Client,
    redis: &mut redis::aio::MultiplexedConnection,
    rng: &mut Rng,
    shared: &Shared,
    products: i64,
) -> Result<(), String> {
    let kind = match rng.below(100) {
        0..=54 => WriteKind::Price,
        55..=64 => WriteKind::Move,
        65..=73 => WriteKind::Insert,
        74..=80 => WriteKind::Delete,
        81..=95 => WriteKind::Recs,
        _ => WriteKind::Bulk,
    };
    let id = 1 + rng.below(products as u64) as i64;
    let category = 1 + rng.below(6) as i64;
    let e = |e: tokio_postgres::Error| e.to_string();
    let tx = db.transaction().await.map_err(e)?;
    // Every changed row returns its new `rev` (its `id` for deletes): one probe per row.
    let probes = match kind {
        WriteKind::Price => probes_of(
            &tx,
            "p",
            "UPDATE products SET price_cents = price_cents + 1, rev = nextval('chaos_rev') WHERE id = $1 RETURNING rev",
            &[&id],
        )
        .await?,
        WriteKind::Move => {
            probes_of(
                &tx,
                "p",
                "UPDATE products SET category_id = $2, rev = nextval('chaos_rev') WHERE id = $1 RETURNING rev",
                &[&id, &category],
            )
            .await?
        }
        WriteKind::Insert => {
            let new_id: i64 = tx
                .query_one("SELECT nextval('chaos_product_id')", &[])
                .await
                .map_err(e)?
                .get(0);
            let probes = probes_of(
                &tx,
                "p",
                "INSERT INTO products (id, category_id, sku, name, price_cents) VALUES ($1, $2, 'CH-' || $1::bigint, 'new ' || $1::bigint, 500) RETURNING rev",
                &[&new_id, &category],
            )
            .await?;
            shared.max_inserted.fetch_max(new_id, Ordering::Relaxed);
            probes
        }
        WriteKind::Delete => {
            probes_of(
                &tx,
                "d",
                "DELETE FROM products WHERE id = (SELECT min(id) FROM products WHERE id >= 100000) RETURNING id",
                &[],
            )
            .await?
        }
        WriteKind::Recs => {
            let product = 1 + rng.below(RECS_PRODUCTS as u64) as i64;
            probes_of(
                &tx,
                "r",
                "UPDATE recommendations SET score = score + 1, rev = nextval('chaos_rev') WHERE product_id = $1 RETURNING rev",
                &[&product],
            )
            .await?
        }
        // Written by the truncater task, never picked here.
        WriteKind::Truncate => Vec::new(),
        WriteKind::Bulk => {
            // Half of a category's seeded products: about 17 rows.
            let residue = rng.below(2) as i64;
            probes_of(
                &tx,
                "p",
                "UPDATE products SET price_cents = price_cents + 1, rev = nextval('chaos_rev') WHERE category_id = $1 AND id % 2 = $2 AND id <= $3 RETURNING rev",
                &[&category, &residue, &products],
            )
            .await?
        }
    };
    let rows = probes.len() as u64;
    commit_with_probes(tx, redis, shared, probes, rows, kind).await
}

/// Runs a statement that returns one bigint per changed row (a `rev` or an `id`) and names the
/// probe of each: `probe:<kind>:<value>`.
async fn probes_of(
    tx: &tokio_postgres::Transaction<'_>,
    kind: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<String>, String> {
    let rows = tx.query(sql, params).await.map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .map(|r| format!("probe:{kind}:{}", r.get::<_, i64>(0)))
        .collect())
}

/// Sets the probes of every mode, then commits; registers the probes with the COMMIT time.
async fn commit_with_probes(
    tx: tokio_postgres::Transaction<'_>,
    redis: &mut redis::aio::MultiplexedConnection,
    shared: &Shared,
    probes: Vec<String>,
    rows: u64,
    kind: WriteKind,
) -> Result<(), String> {
    if !probes.is_empty() {
        let mut pipe = redis::pipe();
        for probe in &probes {
            for mode in MODES {
                let key = format!("{}{probe}", mode.prefix());
                pipe.set(&key, 1).ignore();
                if probe.starts_with("probe:t:") {
                    // The TRUNCATE fallback invalidates this tag.
                    pipe.sadd(format!("{}tag:probe-truncate", mode.prefix()), &key).ignore();
                }
            }
        }
        // Redis unavailable: the transaction rolls back (dropped), nothing unprobed commits.
        pipe.query_async::<()>(redis).await.map_err(|e| e.to_string())?;
    }
    let sent = Instant::now();
    match tx.commit().await {
        Ok(()) => {
            let mut registered = shared.probes.lock().unwrap_or_else(|p| p.into_inner());
            for probe in probes {
                registered.insert(probe, sent);
            }
            shared.writes.fetch_add(1, Ordering::Relaxed);
            shared.row_changes.fetch_add(rows, Ordering::Relaxed);
            shared.committed_by_kind[kind as usize].fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(err) => {
            shared
                .ambiguous
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(probes);
            Err(err.to_string())
        }
    }
}

const RECS_PRODUCTS: i64 = 40;

fn reseed_recs_sql(products: i64) -> String {
    format!(
        "INSERT INTO recommendations (product_id, recommended_id, score) SELECT p, ((p + k) % {products}) + 1, k FROM generate_series(1, {RECS_PRODUCTS}) AS p, generate_series(1, 3) AS k"
    )
}

async fn writer(index: usize, shared: Arc<Shared>, db_url: String, redis_url: String, options: ChaosOptions) {
    let mut rng = Rng::new(options.seed.wrapping_add(index as u64 * 7919));
    let mut db: Option<tokio_postgres::Client> = None;
    let mut redis: Option<redis::aio::MultiplexedConnection> = None;
    let interval = (options.rate > 0).then(|| Duration::from_secs_f64(options.writers as f64 / options.rate as f64));
    let mut next = Instant::now();
    while !shared.stop_writers.load(Ordering::Relaxed) {
        if let Some(interval) = interval {
            // Paced; a writer that fell behind (an outage) does not burst to catch up.
            next = (next + interval).max(Instant::now() - Duration::from_millis(100));
            tokio::time::sleep_until(next.into()).await;
        }
        if db.as_ref().is_none_or(|c| c.is_closed()) {
            db = connect_db(&db_url).await.ok();
        }
        if redis.is_none() {
            redis = match redis::Client::open(redis_url.as_str()) {
                Ok(c) => c.get_multiplexed_async_connection().await.ok(),
                Err(_) => None,
            };
        }
        let (Some(d), Some(r)) = (db.as_mut(), redis.as_mut()) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if let Err(e) = write_once(d, r, &mut rng, &shared, options.products).await {
            tracing::debug!(writer = index, error = %e, "write failed");
            shared.write_errors.fetch_add(1, Ordering::Relaxed);
            redis = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every few seconds: TRUNCATE recommendations and rebuild them, in one transaction.
async fn truncater(shared: Arc<Shared>, db_url: String, redis_url: String, products: i64) {
    let mut db: Option<tokio_postgres::Client> = None;
    let mut n = 0u64;
    while !shared.stop_writers.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if db.as_ref().is_none_or(|c| c.is_closed()) {
            db = connect_db(&db_url).await.ok();
        }
        let Some(d) = db.as_mut() else { continue };
        let Ok(client) = redis::Client::open(redis_url.as_str()) else {
            continue;
        };
        let Ok(mut redis) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        n += 1;
        let result: Result<(), String> = async {
            let tx = d.transaction().await.map_err(|e| e.to_string())?;
            tx.batch_execute(&format!("TRUNCATE recommendations; {}", reseed_recs_sql(products)))
                .await
                .map_err(|e| e.to_string())?;
            commit_with_probes(
                tx,
                &mut redis,
                &shared,
                vec![format!("probe:t:{n}")],
                3 * RECS_PRODUCTS as u64,
                WriteKind::Truncate,
            )
            .await
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "truncate failed");
            shared.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn pick_item(rng: &mut Rng, shared: &Shared, products: i64) -> Item {
    match rng.below(100) {
        0..=59 => Item::Product(1 + rng.below(products as u64) as i64),
        60..=69 => {
            let max = shared.max_inserted.load(Ordering::Relaxed);
            if max >= 100_000 {
                Item::Product(100_000 + rng.below((max - 100_000 + 1) as u64) as i64)
            } else {
                Item::Product(1 + rng.below(products as u64) as i64)
            }
        }
        70..=84 => Item::Category(1 + rng.below(6) as i64),
        _ => Item::Recs(1 + rng.below(RECS_PRODUCTS as u64) as i64),
    }
}

async fn cache_clients(redis_url: &str) -> Option<Vec<CacheClient>> {
    let mut clients = Vec::new();
    for mode in MODES {
        let mut client = CacheClient::connect(redis_url, mode.prefix()).await.ok()?;
        client.ttl = Duration::from_secs(3600);
        clients.push(client);
    }
    Some(clients)
}

/// Reads one entry through the protocol of `mode`, loading from the database on a miss.
async fn read_through(
    client: &mut CacheClient,
    item: Item,
    mode: Mode,
    db: &tokio_postgres::Client,
) -> Result<(), String> {
    let versions = item.versions(mode);
    let tags = item.tags(mode);
    let key = item.key();
    let versions: Vec<&str> = versions.iter().map(String::as_str).collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let entry = Entry {
        key: &key,
        versions: &versions,
        tags: &tags,
    };
    client
        .get_or_load(&entry, || item.load(db))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn reader(index: usize, shared: Arc<Shared>, db_url: String, redis_url: String, options: ChaosOptions) {
    let mut rng = Rng::new(options.seed.wrapping_add(1_000_003 + index as u64 * 104_729));
    let mut db: Option<tokio_postgres::Client> = None;
    let mut clients: Option<Vec<CacheClient>> = None;
    while !shared.stop_readers.load(Ordering::Relaxed) {
        if db.as_ref().is_none_or(|c| c.is_closed()) {
            db = connect_db(&db_url).await.ok();
        }
        if clients.is_none() {
            clients = cache_clients(&redis_url).await;
        }
        let (Some(d), Some(cs)) = (db.as_ref(), clients.as_mut()) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let item = pick_item(&mut rng, &shared, options.products);
        let first = rng.below(MODES.len() as u64) as usize;
        let mut failed = false;
        for k in 0..MODES.len() {
            let m = (first + k) % MODES.len();
            if let Err(e) = read_through(&mut cs[m], item, MODES[m], d).await {
                tracing::debug!(reader = index, error = %e, "read failed");
                shared.read_errors.fetch_add(1, Ordering::Relaxed);
                failed = true;
                break;
            }
        }
        if failed {
            clients = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else {
            shared.reads.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Subscribes to `del` keyspace events and timestamps every probe deletion; reconnects after
/// a Redis restart.
fn listen_for_deletions(shared: Arc<Shared>, redis_url: String) {
    while !shared.stop_listener.load(Ordering::Relaxed) {
        let connection = redis::Client::open(redis_url.as_str()).and_then(|c| c.get_connection());
        let Ok(mut connection) = connection else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let mut pubsub = connection.as_pubsub();
        if pubsub.subscribe("__keyevent@0__:del").is_err()
            || pubsub.set_read_timeout(Some(Duration::from_millis(200))).is_err()
        {
            continue;
        }
        while !shared.stop_listener.load(Ordering::Relaxed) {
            match pubsub.get_message() {
                Ok(msg) => {
                    let now = Instant::now();
                    if let Ok(key) = msg.get_payload::<String>() {
                        // Control probes are never deleted by walbust: no need to track them.
                        if key.contains(":probe:") && !key.starts_with("ctl:") {
                            shared
                                .deleted
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(key)
                                .or_insert(now);
                        }
                    }
                }
                Err(e) if e.is_timeout() => {}
                Err(_) => break,
            }
        }
    }
}

/// Runs the harness and reports; the caller decides what fails (see [`ChaosReport::failures`]).
pub async fn run(options: ChaosOptions, progress: &mut (dyn std::io::Write + Send)) -> Result<ChaosReport, ChaosError> {
    let started = Instant::now();
    let mut pg = blocking(|| start_database(options.products))?;
    let mut redis = blocking(|| RedisInstance::start_with_args(&["--notify-keyspace-events", "Eg"]))?;

    let work = tempdir_for(&options)?;
    let daemon_latency = Arc::new(Mutex::new(DaemonLatency::default()));
    let mut daemons = prepare_daemons(&work, &pg, &redis, &daemon_latency)?;
    daemons[0].spawn(&options.walbust_bin)?;
    if wait_active(&pg, Duration::from_secs(30), None).await.is_none() {
        return Err(ChaosError::Other(format!(
            "walbust did not start streaming within 30 s; see {}",
            daemons[0].log.display()
        )));
    }
    writeln!(
        progress,
        "PostgreSQL :{}, Redis :{}, walbust logs in {}",
        pg.port(),
        redis.port(),
        work.display()
    )?;

    let shared = Arc::new(Shared::default());
    let db_url = pg.url("catalog");
    let redis_url = redis.url();
    let listener = {
        let (shared, url) = (shared.clone(), redis_url.clone());
        std::thread::spawn(move || listen_for_deletions(shared, url))
    };
    let mut tasks = Vec::new();
    for i in 0..options.writers {
        tasks.push(tokio::spawn(writer(
            i,
            shared.clone(),
            db_url.clone(),
            redis_url.clone(),
            options.clone(),
        )));
    }
    tasks.push(tokio::spawn(truncater(
        shared.clone(),
        db_url.clone(),
        redis_url.clone(),
        options.products,
    )));
    let mut reader_tasks = Vec::new();
    for i in 0..options.readers {
        reader_tasks.push(tokio::spawn(reader(
            i,
            shared.clone(),
            db_url.clone(),
            redis_url.clone(),
            options.clone(),
        )));
    }

    let mut faults = Vec::new();
    let mut windows = Vec::new();
    for cycle in 0..options.cycles {
        tokio::time::sleep(options.cycle).await;
        let at = started.elapsed().as_secs_f64();
        let fault_start = Instant::now();
        let fault = match options.faults.as_slice() {
            [] => Fault::ALL[cycle % Fault::ALL.len()],
            faults => faults[cycle % faults.len()],
        };
        let recovered = inject(fault, &mut pg, &mut redis, &mut daemons, &options.walbust_bin).await?;
        let fault = fault.label();
        windows.push((fault_start, Instant::now() + Duration::from_secs(3)));
        writeln!(
            progress,
            "cycle {:>2}: {fault:<34} {} writes so far{}",
            cycle + 1,
            shared.writes.load(Ordering::Relaxed),
            recovered
                .map(|d| format!(", streaming again after {} ms", d.as_millis()))
                .unwrap_or_default()
        )?;
        faults.push(FaultRecord {
            cycle: cycle + 1,
            fault,
            at_seconds: at,
            recovered_after_ms: recovered.map(|d| d.as_millis() as u64),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    while shared.writes.load(Ordering::Relaxed) < options.min_writes && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Quiesce: writers stop; walbust's confirmed position reaches the server's current LSN.
    shared.stop_writers.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let quiesce_ms = quiesce(&pg, &work).await?;
    // Let the delayed re-deletes run, then stop reading and let the last events arrive.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    shared.stop_readers.store(true, Ordering::Relaxed);
    for t in reader_tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    shared.stop_listener.store(true, Ordering::Relaxed);
    let _ = listener.join();

    let modes = check(&pg, &redis, &shared, options.products, &windows).await?;
    for d in &mut daemons {
        d.kill9();
    }
    let ambiguous = shared.ambiguous.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
    let report = ChaosReport {
        seconds: started.elapsed().as_secs_f64(),
        rate: options.rate,
        writes: shared.writes.load(Ordering::Relaxed),
        row_changes: shared.row_changes.load(Ordering::Relaxed),
        reads: shared.reads.load(Ordering::Relaxed),
        write_errors: shared.write_errors.load(Ordering::Relaxed),
        read_errors: shared.read_errors.load(Ordering::Relaxed),
        ambiguous_commits: ambiguous,
        committed_by_kind: WRITE_KINDS
            .iter()
            .zip(&shared.committed_by_kind)
            .map(|(k, n)| (k.to_string(), n.load(Ordering::Relaxed)))
            .collect(),
        quiesce_ms,
        faults,
        modes,
        walbust_latency: daemon_latency.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };
    // Logs are kept when asked for, or when something failed.
    if options.log_dir.is_none() && report.failures().is_empty() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(report)
}

/// A throwaway PostgreSQL with the catalog schema, the chaos columns, `products` seeded
/// products, recommendations and the slot.
fn start_database(products: i64) -> Result<PgInstance, HarnessError> {
    let pg = PgInstance::start_with(PgOptions {
        extra_conf: vec![
            ("synchronous_commit".into(), "on".into()),
            ("max_wal_senders".into(), "10".into()),
        ],
        ..Default::default()
    })?;
    pg.create_database("catalog")?;
    for sql in MIGRATIONS {
        pg.psql("catalog", sql)?;
    }
    pg.psql("catalog", CHAOS_SCHEMA)?;
    pg.psql(
        "catalog",
        &format!(
            "INSERT INTO products (id, category_id, sku, name, price_cents) SELECT i, (i % 6) + 1, 'CH-' || i, 'chaos ' || i, 1000 + i FROM generate_series(21, {products}) AS i; DELETE FROM recommendations; {}",
            reseed_recs_sql(products)
        ),
    )?;
    pg.psql(
        "catalog",
        "SELECT pg_create_logical_replication_slot('walbust', 'pgoutput')",
    )?;
    Ok(pg)
}

/// Writes the rules (one file per mode, with its probe rules) and one config per walbust
/// instance into `work`.
fn prepare_daemons(
    work: &Path,
    pg: &PgInstance,
    redis: &RedisInstance,
    latency: &Arc<Mutex<DaemonLatency>>,
) -> Result<Vec<Daemon>, ChaosError> {
    let rules = work.join("rules");
    std::fs::create_dir_all(&rules)?;
    for (file, text) in RULES {
        let mode_name = file.trim_end_matches(".yaml");
        let probes = PROBE_RULES.replace("MODE", mode_name);
        std::fs::write(rules.join(file), format!("{text}{probes}"))?;
    }
    let mut daemons = Vec::new();
    for name in ["walbust-a", "walbust-b"] {
        let config = work.join(format!("{name}.toml"));
        let http_port = crate::harness::free_port();
        std::fs::write(&config, daemon_config(pg, redis, &rules, name, http_port))?;
        daemons.push(Daemon {
            name: name.into(),
            config,
            log: work.join(format!("{name}.log")),
            child: None,
            http_port,
            latency: latency.clone(),
        });
    }
    Ok(daemons)
}

/// Waits until the slot's confirmed position reaches the server's current LSN (walbust applied
/// everything committed so far); returns how long that took.
async fn quiesce(pg: &PgInstance, work: &Path) -> Result<u64, ChaosError> {
    let start = Instant::now();
    let target = blocking(|| pg.psql("catalog", "SELECT pg_current_wal_lsn()"))?;
    let target = walbust_core::model::Lsn::parse(target.trim())
        .ok_or_else(|| ChaosError::Other(format!("unexpected LSN `{}`", target.trim())))?;
    loop {
        let confirmed = blocking(|| {
            pg.psql(
                "catalog",
                "SELECT coalesce(confirmed_flush_lsn::text, '0/0') FROM pg_replication_slots WHERE slot_name = 'walbust'",
            )
        })?;
        if walbust_core::model::Lsn::parse(confirmed.trim()).is_some_and(|c| c >= target) {
            return Ok(start.elapsed().as_millis() as u64);
        }
        if start.elapsed() > Duration::from_secs(600) {
            return Err(ChaosError::Other(format!(
                "walbust did not confirm {target} within 600 s (confirmed {}): it did not keep up with the writers; see the logs in {}",
                confirmed.trim(),
                work.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tempdir_for(options: &ChaosOptions) -> Result<PathBuf, ChaosError> {
    let dir = match &options.log_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!(
            "walbust-chaos-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        )),
    };
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Injects fault number `cycle` (round robin over the six kinds).
/// Injects one fault; returns how long until walbust streamed again, where that applies.
async fn inject(
    fault: Fault,
    pg: &mut PgInstance,
    redis: &mut RedisInstance,
    daemons: &mut [Daemon],
    bin: &Path,
) -> Result<Option<Duration>, ChaosError> {
    let recover = Duration::from_secs(30);
    match fault {
        Fault::Kill9 => {
            let active = blocking(|| active_daemon(pg));
            let index = daemons
                .iter()
                .position(|d| Some(&d.name) == active.as_ref())
                .unwrap_or(0);
            daemons[index].kill9();
            daemons[index].spawn(bin)?;
            Ok(wait_active(pg, recover, None).await)
        }
        Fault::RedisRestart => {
            blocking(|| redis.restart())?;
            Ok(None)
        }
        Fault::RedisStop => {
            let pid = redis.pid().to_string();
            let _ = Command::new("kill").args(["-STOP", &pid]).status();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = Command::new("kill").args(["-CONT", &pid]).status();
            Ok(None)
        }
        Fault::TerminateWalsender => {
            blocking(|| {
                pg.psql(
                    "catalog",
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'walbust' AND active_pid IS NOT NULL",
                )
            })?;
            Ok(wait_active(pg, recover, None).await)
        }
        Fault::PgRestart => {
            blocking(|| pg.restart(true))?;
            Ok(wait_active(pg, recover, None).await)
        }
        Fault::Takeover => {
            // A standby instance is running (started now if needed); the active one dies.
            for d in daemons.iter_mut() {
                if !d.running() {
                    d.spawn(bin)?;
                }
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let active = blocking(|| active_daemon(pg));
            let index = daemons
                .iter()
                .position(|d| Some(&d.name) == active.as_ref())
                .unwrap_or(0);
            let killed = daemons[index].name.clone();
            daemons[index].kill9();
            let took = wait_active(pg, recover, Some(&killed)).await;
            // The old active instance comes back as the new standby.
            daemons[index].spawn(bin)?;
            Ok(took)
        }
    }
}

/// Compares every entry a reader would be served with the database, and counts probes.
async fn check(
    pg: &PgInstance,
    redis: &RedisInstance,
    shared: &Shared,
    products: i64,
    fault_windows: &[(Instant, Instant)],
) -> Result<Vec<ModeReport>, ChaosError> {
    let db = connect_db(&pg.url("catalog")).await?;
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
    let max_inserted = shared.max_inserted.load(Ordering::Relaxed);
    let mut items: Vec<Item> = (1..=6).map(Item::Category).collect();
    items.extend((1..=RECS_PRODUCTS).map(Item::Recs));
    items.extend((1..=products).map(Item::Product));
    if max_inserted >= 100_000 {
        items.extend((100_000..=max_inserted).map(Item::Product));
    }

    let clients = cache_clients(&redis.url())
        .await
        .ok_or_else(|| ChaosError::Other("cannot connect to redis for the final check".into()))?;
    let mut raw = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let probes = shared.probes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ambiguous = shared.ambiguous.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let deleted = shared.deleted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut reports = Vec::new();
    for (mode, mut client) in MODES.into_iter().zip(clients) {
        let mut report = ModeReport {
            mode: mode.label(),
            ..ModeReport::default()
        };
        for item in &items {
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
        let remaining: HashSet<String> = scan(&mut raw, &format!("{}probe:*", mode.prefix()))
            .await?
            .into_iter()
            .collect();
        let mut latencies = Vec::new();
        let mut steady = Vec::new();
        for (probe, sent) in &probes {
            if ambiguous.contains(probe) {
                continue;
            }
            report.invalidations_checked += 1;
            let key = format!("{}{probe}", mode.prefix());
            if remaining.contains(&key) {
                report.lost += 1;
                if report.lost_examples.len() < 5 {
                    report.lost_examples.push(key);
                }
            } else if let Some(at) = deleted.get(&key) {
                if *at >= *sent {
                    latencies.push(at.duration_since(*sent));
                    if !fault_windows.iter().any(|(from, to)| sent >= from && sent <= to) {
                        steady.push(at.duration_since(*sent));
                    }
                }
            }
        }
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
        reports.push(report);
    }
    Ok(reports)
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
    fn every_mode_rules_file_loads_without_warnings() {
        for (file, text) in RULES {
            let full = format!("{text}{}", PROBE_RULES.replace("MODE", file.trim_end_matches(".yaml")));
            let loaded = walbust_core::rules::load::load_str(file, &full).unwrap_or_else(|e| panic!("{file}: {e:?}"));
            assert!(loaded.warnings.is_empty(), "{file}: {:?}", loaded.warnings);
        }
    }

    #[test]
    fn fault_names_round_trip_and_unknown_names_list_the_valid_ones() {
        for fault in Fault::ALL {
            assert_eq!(fault.name().parse::<Fault>(), Ok(fault));
        }
        let err = "reboot".parse::<Fault>().unwrap_err();
        assert!(err.contains("kill9") && err.contains("takeover"), "{err}");
    }

    #[test]
    fn scrapes_walbusts_latency_histogram() {
        let metrics = "walbust_commit_to_applied_seconds_bucket{le=\"0.01\"} 90\n\
                       walbust_commit_to_applied_seconds_bucket{le=\"0.1\"} 99\n\
                       walbust_commit_to_applied_seconds_bucket{le=\"1\"} 100\n\
                       walbust_commit_to_applied_seconds_count 100\n";
        let mut latency = DaemonLatency::default();
        latency.add_scrape(metrics);
        // OpenMetrics writes the bounds as floats.
        latency.add_scrape(&metrics.replace("le=\"1\"", "le=\"1.0\""));
        assert_eq!(
            (
                latency.transactions,
                latency.within_10ms,
                latency.within_100ms,
                latency.within_1s
            ),
            (200, 180, 198, 200)
        );
    }

    fn mode(mode: Mode, stale: u64, lost: u64) -> ModeReport {
        ModeReport {
            mode: mode.label(),
            stale_entries: stale,
            invalidations_checked: 10,
            lost,
            ..ModeReport::default()
        }
    }

    #[test]
    fn fails_on_loss_on_stale_version_entries_and_on_a_blind_control() {
        let report = |modes| ChaosReport {
            committed_by_kind: vec![("price".into(), 1)],
            modes,
            ..ChaosReport::default()
        };
        let healthy = report(vec![
            mode(Mode::Plain, 2, 0),
            mode(Mode::Redelete, 1, 0),
            mode(Mode::Version, 0, 0),
            mode(Mode::Control, 5, 7),
        ]);
        // Stale plain entries are reported, not failed: that race is the plain protocol's.
        assert!(healthy.failures().is_empty(), "{:?}", healthy.failures());
        let lost = report(vec![mode(Mode::Plain, 0, 1), mode(Mode::Control, 5, 7)]);
        assert!(lost.failures()[0].contains("lost"));
        let stale = report(vec![mode(Mode::Version, 1, 0), mode(Mode::Control, 5, 7)]);
        assert!(stale.failures()[0].contains("stale"));
        let blind = report(vec![mode(Mode::Version, 0, 0), mode(Mode::Control, 0, 0)]);
        assert!(blind.failures()[0].contains("blind"));
        let mut idle = healthy.clone();
        idle.committed_by_kind.push(("truncate".into(), 0));
        assert!(idle.failures()[0].contains("truncate"));
    }
}
