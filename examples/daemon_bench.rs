//! Daemon benchmark with real Redis applies:
//!
//! ```text
//! cargo run --release --example daemon_bench              # all phases
//! cargo run --release --example daemon_bench -- backlog   # or: live, bigtxn
//! ```
//!
//! * backlog: 1,000,000 row changes (100,000 single-row transactions + bulk transactions) drained
//!   by `walbust run` into a real redis-server vs `pg_recvlogical` to /dev/null from a copy of
//!   the same slot, same run.
//! * live: writers at 1,000 and 5,000 transactions/s and as fast as they go; commit-to-applied
//!   latency (p50/p99 from the daemon's histogram) and Redis round trips per transaction.
//! * bigtxn: a 1,000,000-row transaction; peak RSS of this process (daemon included).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use walbust::config::{Config, RedisConfig};
use walbust::model::Lsn;
use walbust_testkit::harness::{free_port, PgInstance, RedisInstance};

const RULES: &str = r#"
version: 1
prefix: "b:"
rules:
  - name: item
    table: items
    on: [insert, update, delete, truncate]
    delete: ["item:{id}", "item:{id}:json"]
    bump: ["ver:item:{id}"]
    tags: ["category:{category}"]
    fallback:
      bump: ["ver:items"]
"#;

struct Setup {
    pg: PgInstance,
    redis: RedisInstance,
    _rules: tempfile_dir::Dir,
    config: Config,
    metrics_port: u16,
}

mod tempfile_dir {
    /// A directory removed on drop (examples can't use dev-dependencies in every build mode).
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn setup() -> Setup {
    // synchronous_commit=on: with it off (the harness default) WAL reaches the walsender only at
    // the WAL writer's pace (up to 200 ms), which would measure PostgreSQL, not walbust.
    let pg = PgInstance::start_with(walbust_testkit::harness::PgOptions {
        extra_conf: vec![("synchronous_commit".into(), "on".into())],
        ..Default::default()
    })
    .expect("start PostgreSQL");
    pg.create_database("bench").unwrap();
    pg.psql(
        "bench",
        "CREATE TABLE items (id bigint PRIMARY KEY, category int, name text, price numeric(10,2));
         CREATE PUBLICATION bench FOR TABLE items;
         SELECT pg_create_logical_replication_slot('walbust', 'pgoutput');",
    )
    .unwrap();
    let redis = RedisInstance::start().expect("start redis-server");
    let dir = std::env::temp_dir().join(format!("walbust-bench-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    let metrics_port = free_port();
    let mut config = Config::default();
    config.postgres.url = pg.url("bench");
    config.postgres.publication = "bench".into();
    config.rules.path = dir.clone();
    config.redis = vec![RedisConfig {
        url: redis.url(),
        ..RedisConfig::default()
    }];
    config.http.listen = format!("127.0.0.1:{metrics_port}");
    config.shutdown_timeout = std::time::Duration::from_secs(10);
    Setup {
        pg,
        redis,
        _rules: tempfile_dir::Dir(dir),
        config,
        metrics_port,
    }
}

fn insert_lsn(pg: &PgInstance) -> Lsn {
    Lsn::parse(pg.psql("bench", "SELECT pg_current_wal_insert_lsn()").unwrap().trim()).unwrap()
}

fn confirmed(pg: &PgInstance, slot: &str) -> Lsn {
    Lsn::parse(
        pg.psql(
            "bench",
            &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"),
        )
        .unwrap()
        .trim(),
    )
    .unwrap_or_default()
}

fn metric(port: u16, name: &str) -> Vec<(String, f64)> {
    use std::io::{Read, Write};
    // Before the daemon's HTTP server is up there is nothing to read.
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return Vec::new();
    };
    let mut out = String::new();
    if write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").is_err() || s.read_to_string(&mut out).is_err() {
        return Vec::new();
    }
    out.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn histogram_quantile(port: u16, q: f64) -> f64 {
    let buckets: Vec<(f64, f64)> = metric(port, "walbust_commit_to_applied_seconds_bucket")
        .into_iter()
        .filter_map(|(k, v)| {
            let le = k.split("le=\"").nth(1)?.trim_end_matches("\"}");
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, v))
        })
        .collect();
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    let rank = (q * total).ceil();
    buckets
        .iter()
        .find(|(_, c)| *c >= rank)
        .map(|b| b.0)
        .unwrap_or(f64::NAN)
}

type Daemon = (
    tokio::task::JoinHandle<Result<walbust::daemon::RunSummary, walbust::daemon::DaemonError>>,
    tokio::sync::oneshot::Sender<()>,
);

fn start_daemon(config: &Config) -> Daemon {
    let validated = config.clone().validate().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(walbust::daemon::run(validated, async {
        let _ = rx.await;
    }));
    (handle, tx)
}

async fn wait_confirmed(pg: &PgInstance, slot: &str, end: Lsn) {
    while confirmed(pg, slot) < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn backlog(s: &Setup) {
    s.pg.psql("bench", "SELECT pg_copy_logical_replication_slot('walbust', 'recv');")
        .unwrap();
    s.pg.psql(
        "bench",
        "DO $$ BEGIN FOR i IN 1..100000 LOOP INSERT INTO items VALUES (i, i % 40, 'item ' || i, 9.99); COMMIT; END LOOP; END $$;",
    )
    .unwrap();
    let mut next = 100_001u64;
    for n in [
        200_000u64, 100_000, 100_000, 100_000, 100_000, 100_000, 100_000, 100_000,
    ] {
        s.pg.psql(
            "bench",
            &format!(
                "INSERT INTO items SELECT g, g % 40, 'item ' || g, 19.99 FROM generate_series({next}, {}) g;",
                next + n - 1
            ),
        )
        .unwrap();
        next += n;
    }
    let end = insert_lsn(&s.pg);
    let t = Instant::now();
    let status = std::process::Command::new(s.pg.bin_dir().join("pg_recvlogical"))
        .args([
            "-d",
            &s.pg.conn_string("bench"),
            "--slot",
            "recv",
            "--start",
            "--no-loop",
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=bench",
            "-f",
            "/dev/null",
        ])
        .args(["--endpos", &end.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let recv = t.elapsed();
    let t = Instant::now();
    let (handle, stop) = start_daemon(&s.config);
    // Drained = every change applied to Redis (the daemon's applied position reached the end).
    while (metric(s.metrics_port, "walbust_applied_lsn")
        .first()
        .map(|m| m.1)
        .unwrap_or(0.0) as u64)
        < end.0
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ours = t.elapsed();
    wait_confirmed(&s.pg, "walbust", end).await;
    let _ = stop.send(());
    let summary = handle.await.unwrap().unwrap();
    println!(
        "backlog 1,000,000 changes: pg_recvlogical {:.2} s, walbust with Redis applies {:.2} s, ratio {:.2}; {} transactions in {} batches",
        recv.as_secs_f64(),
        ours.as_secs_f64(),
        ours.as_secs_f64() / recv.as_secs_f64(),
        summary.transactions,
        summary.batches
    );
}

async fn live(s: &Setup, tps: u64, seconds: u64) {
    let (handle, stop) = start_daemon(&s.config);
    // Let the daemon connect and drain earlier work.
    let start_lsn = insert_lsn(&s.pg);
    wait_confirmed(&s.pg, "walbust", start_lsn).await;
    let rt_before: f64 = metric(s.metrics_port, "walbust_redis_round_trips_total")
        .iter()
        .map(|m| m.1)
        .sum();
    let tx_before: f64 = metric(s.metrics_port, "walbust_transactions_total")
        .iter()
        .map(|m| m.1)
        .sum();
    // Writers run in pgbench (a separate process), so they do not share the daemon's CPU
    // scheduling; `-R` sets the rate, no `-R` is as fast as they go.
    let script = std::env::temp_dir().join(format!("walbust-bench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "\\set id random(1, 100000)\nUPDATE items SET price = price + 0.01 WHERE id = :id;\n",
    )
    .unwrap();
    let mut cmd = std::process::Command::new(s.pg.bin_dir().join("pgbench"));
    cmd.args(["-n", "-c", "4", "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &s.pg.port().to_string(),
            "-U",
            "postgres",
            "bench",
        ]);
    if tps > 0 {
        cmd.args(["-R", &tps.to_string()]);
    }
    let t = Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let elapsed = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&script);
    let report = String::from_utf8_lossy(&out.stdout);
    let achieved = report
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let written = Arc::new(AtomicU64::new((achieved * elapsed) as u64));
    let _ = AtomicBool::new(false);
    let end = insert_lsn(&s.pg);
    wait_confirmed(&s.pg, "walbust", end).await;
    let rt: f64 = metric(s.metrics_port, "walbust_redis_round_trips_total")
        .iter()
        .map(|m| m.1)
        .sum::<f64>()
        - rt_before;
    let txs: f64 = metric(s.metrics_port, "walbust_transactions_total")
        .iter()
        .map(|m| m.1)
        .sum::<f64>()
        - tx_before;
    let p50 = histogram_quantile(s.metrics_port, 0.5);
    let p99 = histogram_quantile(s.metrics_port, 0.99);
    let label = if tps == 0 { "max".to_string() } else { tps.to_string() };
    println!(
        "live {label} tps target: {:.0} tps achieved, latency p50 <= {:.1} ms, p99 <= {:.1} ms, {:.3} Redis round trips/transaction",
        written.load(Ordering::Relaxed) as f64 / elapsed.max(1e-9),
        p50 * 1000.0,
        p99 * 1000.0,
        rt / txs.max(1.0)
    );
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}

async fn bigtxn(s: &Setup) {
    let (handle, stop) = start_daemon(&s.config);
    s.pg.psql(
        "bench",
        "INSERT INTO items SELECT g, g % 40, 'big ' || g, 1.00 FROM generate_series(5000001, 6000000) g;",
    )
    .unwrap();
    let end = insert_lsn(&s.pg);
    let t = Instant::now();
    wait_confirmed(&s.pg, "walbust", end).await;
    println!(
        "1,000,000-row transaction applied in {:.2} s (fan-out breaker: rule fallback); peak RSS of the daemon process {:.1} MB",
        t.elapsed().as_secs_f64(),
        walbust_testkit::harness::peak_rss_mb()
    );
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let phase = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let s = setup();
    if phase == "all" || phase == "backlog" {
        backlog(&s).await;
    }
    if phase == "all" || phase == "live" {
        if phase == "live" {
            s.pg.psql(
                "bench",
                "INSERT INTO items SELECT g, g % 40, 'item ' || g, 9.99 FROM generate_series(1, 100000) g;",
            )
            .unwrap();
        }
        live(&s, 1_000, 10).await;
        live(&s, 5_000, 10).await;
        live(&s, 0, 10).await;
    }
    if phase == "all" || phase == "bigtxn" {
        bigtxn(&s).await;
    }
    println!(
        "peak RSS of this process (daemon included): {:.1} MB",
        walbust_testkit::harness::peak_rss_mb()
    );
    drop(s.redis);
}
