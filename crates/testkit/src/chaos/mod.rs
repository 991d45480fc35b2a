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
//!
//! The harness is split by what each part owns: `writers` (the write workload against
//! PostgreSQL and its probes), `readers` (the reader protocols, the cache-aside readers and the
//! keyspace listener), `faults` (the faults and their injection), `processes` (the walbust
//! daemons and the PostgreSQL and Redis controls the faults use), `check` (the final comparison
//! and probe count), `report` (the report, its rendering and what fails a run) and `shared`
//! (the state the tasks share). This module holds the options and runs it all.

mod check;
mod faults;
mod processes;
mod readers;
mod report;
mod shared;
mod target;
mod writers;

pub use faults::Fault;
pub use readers::Mode;
pub use report::{ChaosReport, DaemonLatency, FaultRecord, ModeReport};

use crate::harness::{HarnessError, PgInstance};
use check::check;
use faults::inject;
use processes::{prepare_daemons, quiesce, start_database, wait_active, Daemon};
use readers::{listen_for_deletions, reader, start_local_caches};
use shared::{blocking, Shared};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use target::{RedisSpec, Target};
use writers::{truncater, writer, WRITE_KINDS};

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

/// Why one write or read of the workload failed: logged at debug level, counted, and retried;
/// never fatal. Displays as the error it keeps as its source.
#[derive(Debug, thiserror::Error)]
enum WorkloadError {
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Read(#[from] walbust_client::ClientError<tokio_postgres::Error>),
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
    /// walbust's `wait_replicas` for the Redis target (the harness runs one replica, which
    /// [`Fault::RedisPromote`] promotes).
    pub wait_replicas: u32,
    /// Run against a three-node Redis Cluster instead of one server (Redis faults then hit the
    /// shards in turn).
    pub cluster: bool,
}

impl ChaosOptions {
    /// The CI variant: every fault once, about two minutes.
    pub fn short(walbust_bin: PathBuf) -> ChaosOptions {
        ChaosOptions {
            walbust_bin,
            cycles: Fault::ALL.len(),
            faults: Fault::ALL.to_vec(),
            cycle: Duration::from_secs(8),
            min_writes: 0,
            writers: 3,
            readers: 3,
            rate: 600,
            products: 200,
            seed: 1,
            log_dir: None,
            wait_replicas: 0,
            cluster: false,
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

/// Runs the harness and reports; the caller decides what fails (see [`ChaosReport::failures`]).
pub async fn run(options: ChaosOptions, progress: &mut (dyn std::io::Write + Send)) -> Result<ChaosReport, ChaosError> {
    let started = Instant::now();
    let mut rig = Rig::start(&options, progress).await?;
    let shared = Arc::new(Shared::default());
    let workload = Workload::spawn(&options, &shared, &rig.pg.url("catalog"), &rig.target.spec());
    let cycles = fault_cycles(&options, &mut rig, &shared, started, progress).await?;
    let deadline = Instant::now() + Duration::from_secs(900);
    while shared.writes.load(Ordering::Relaxed) < options.min_writes && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let quiesce_ms = workload.wind_down(&shared, &rig.pg, &rig.work).await?;

    let modes = check(
        &rig.pg,
        &rig.target.spec(),
        &shared,
        options.products,
        &cycles.windows,
        &cycles.gap_windows,
    )
    .await?;
    for follower in shared.followers.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
        follower.abort();
    }
    for d in &mut rig.daemons {
        d.kill9();
    }
    let report = ChaosReport {
        quiesce_ms,
        faults: cycles.faults,
        modes,
        walbust_latency: rig.daemon_latency.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        ..counters(&options, &shared, started)
    };
    // Logs are kept when asked for, or when something failed.
    if options.log_dir.is_none() && report.failures().is_empty() {
        let _ = std::fs::remove_dir_all(&rig.work);
    }
    Ok(report)
}

/// The processes under test and where their files go. Dropped in field order: the daemons
/// first, then Redis, then PostgreSQL.
struct Rig {
    daemons: Vec<Daemon>,
    daemon_latency: Arc<Mutex<DaemonLatency>>,
    /// walbust's rules, configs and logs.
    work: PathBuf,
    target: Target,
    pg: PgInstance,
}

impl Rig {
    /// Starts PostgreSQL, Redis and the first walbust, and waits until it streams.
    async fn start(options: &ChaosOptions, progress: &mut (dyn std::io::Write + Send)) -> Result<Rig, ChaosError> {
        let pg = blocking(|| start_database(options.products))?;
        let target = blocking(|| Target::start(options.cluster))?;

        let work = tempdir_for(options)?;
        let daemon_latency = Arc::new(Mutex::new(DaemonLatency::default()));
        let mut daemons = prepare_daemons(&work, &pg, &target.spec(), &daemon_latency, options.wait_replicas)?;
        daemons[0].spawn(&options.walbust_bin)?;
        if wait_active(&pg, Duration::from_secs(30), None).await.is_none() {
            return Err(ChaosError::Other(format!(
                "walbust did not start streaming within 30 s; see {}",
                daemons[0].log.display()
            )));
        }
        writeln!(
            progress,
            "PostgreSQL :{}, {}, walbust logs in {}",
            pg.port(),
            target.describe(),
            work.display()
        )?;
        Ok(Rig {
            daemons,
            daemon_latency,
            work,
            target,
            pg,
        })
    }
}

/// The workload's tasks: the deletion listener (a thread), the writers and the truncater, the
/// readers.
struct Workload {
    listeners: Vec<std::thread::JoinHandle<()>>,
    writers: Vec<tokio::task::JoinHandle<()>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    fn spawn(options: &ChaosOptions, shared: &Arc<Shared>, db_url: &str, redis: &RedisSpec) -> Workload {
        // Every node publishes the deletions of its own keys.
        let listeners = redis
            .nodes
            .iter()
            .map(|url| {
                let (shared, url) = (shared.clone(), url.clone());
                std::thread::spawn(move || listen_for_deletions(shared, url))
            })
            .collect();
        let mut writers = Vec::new();
        for i in 0..options.writers {
            writers.push(tokio::spawn(writer(
                i,
                shared.clone(),
                db_url.to_string(),
                redis.clone(),
                options.clone(),
            )));
        }
        writers.push(tokio::spawn(truncater(
            shared.clone(),
            db_url.to_string(),
            redis.clone(),
            options.products,
        )));
        start_local_caches(shared, redis);
        let mut readers = Vec::new();
        for i in 0..options.readers {
            readers.push(tokio::spawn(reader(
                i,
                shared.clone(),
                db_url.to_string(),
                redis.clone(),
                options.clone(),
            )));
        }
        Workload {
            listeners,
            writers,
            readers,
        }
    }

    /// Stops the workload. Quiesce: writers stop; walbust's confirmed position reaches the
    /// server's current LSN (returns how long that took). Then the readers and the listener stop.
    async fn wind_down(self, shared: &Shared, pg: &PgInstance, work: &Path) -> Result<u64, ChaosError> {
        shared.stop_writers.store(true, Ordering::Relaxed);
        for t in self.writers {
            let _ = t.await;
        }
        let quiesce_ms = quiesce(pg, work).await?;
        // Let the delayed re-deletes run, then stop reading and let the last events arrive.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        shared.stop_readers.store(true, Ordering::Relaxed);
        for t in self.readers {
            let _ = t.await;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        shared.stop_listener.store(true, Ordering::Relaxed);
        for listener in self.listeners {
            let _ = listener.join();
        }
        Ok(quiesce_ms)
    }
}

/// How long before a gap fault a commit may still be unapplied, so lost with the slot: walbust's
/// commit-to-applied time at worst under the harness's load on two cores (debug build, right
/// after another fault's recovery).
const GAP_LEAD: Duration = Duration::from_secs(2);

/// What the fault cycles did: the faults, their windows (from a fault's start until 3 s after
/// it was injected) and the windows of gaps (from the fault's start until 1 s after walbust
/// streamed again).
struct Cycles {
    faults: Vec<FaultRecord>,
    windows: Vec<(Instant, Instant)>,
    gap_windows: Vec<(Instant, Instant)>,
}

/// The fault cycles: the workload runs for [`ChaosOptions::cycle`], then the next fault is
/// injected.
async fn fault_cycles(
    options: &ChaosOptions,
    rig: &mut Rig,
    shared: &Shared,
    started: Instant,
    progress: &mut (dyn std::io::Write + Send),
) -> Result<Cycles, ChaosError> {
    let mut cycles = Cycles {
        faults: Vec::new(),
        windows: Vec::new(),
        gap_windows: Vec::new(),
    };
    let mut injected = std::collections::HashMap::<Fault, usize>::new();
    for cycle in 0..options.cycles {
        tokio::time::sleep(options.cycle).await;
        let at = started.elapsed().as_secs_f64();
        let fault_start = Instant::now();
        let fault = match options.faults.as_slice() {
            [] => Fault::ALL[cycle % Fault::ALL.len()],
            faults => faults[cycle % faults.len()],
        };
        let occurrence = injected.entry(fault).or_default();
        let spec = rig.target.spec();
        let epoch_before = if fault.is_gap() { epoch(&spec).await } else { None };
        let recovered = inject(
            fault,
            *occurrence,
            &mut rig.pg,
            &mut rig.target,
            &mut rig.daemons,
            &options.walbust_bin,
        )
        .await?;
        *occurrence += 1;
        let epoch_moved = match fault.is_gap() {
            true => Some(epoch_moved(&spec, epoch_before).await),
            false => None,
        };
        if fault.is_gap() {
            // A dropped slot (or a lost primary) also takes what walbust had not applied yet
            // when it went: commits from up to GAP_LEAD before the fault are in the gap too.
            cycles.gap_windows.push((
                fault_start.checked_sub(GAP_LEAD).unwrap_or(fault_start),
                Instant::now() + Duration::from_secs(1),
            ));
        }
        let label = fault.label();
        cycles
            .windows
            .push((fault_start, Instant::now() + Duration::from_secs(3)));
        writeln!(
            progress,
            "cycle {:>2}: {label:<34} {} writes so far{}",
            cycle + 1,
            shared.writes.load(Ordering::Relaxed),
            recovered
                .map(|d| format!(", streaming again after {} ms", d.as_millis()))
                .unwrap_or_default()
        )?;
        cycles.faults.push(FaultRecord {
            cycle: cycle + 1,
            fault: label,
            at_seconds: at,
            recovered_after_ms: recovered.map(|d| d.as_millis() as u64),
            epoch_moved,
        });
    }
    Ok(cycles)
}

/// The epoch (`walbust:epoch`) on `redis`, if it can be read.
async fn epoch(redis: &RedisSpec) -> Option<i64> {
    let mut conn = redis.connect().await.ok()?;
    redis::cmd("GET")
        .arg("walbust:epoch")
        .query_async(&mut conn)
        .await
        .ok()?
}

/// Whether the epoch moved past `before` within 10 s.
async fn epoch_moved(redis: &RedisSpec, before: Option<i64>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(now) = epoch(redis).await {
            if before.is_none_or(|b| now > b) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The report's counters: the run's duration and what the workload did.
fn counters(options: &ChaosOptions, shared: &Shared, started: Instant) -> ChaosReport {
    let ambiguous = shared.ambiguous.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
    ChaosReport {
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
        ..ChaosReport::default()
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
