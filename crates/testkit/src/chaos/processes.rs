//! The processes under test and their control: the walbust daemons run as child processes
//! (`walbust run`, their rules and configs), the throwaway PostgreSQL they stream from (schema,
//! seed, slot), and the PostgreSQL and Redis controls the faults and the quiescing use (which
//! daemon streams the slot, terminating its walsender, pausing Redis, waiting for the slot).

use super::report::DaemonLatency;
use super::shared::blocking;
use super::target::RedisSpec;
use super::writers::reseed_recs_sql;
use super::ChaosError;
use crate::harness::{HarnessError, PgInstance, PgOptions, RedisInstance};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
      tags: ["{{pt}}"]
"#;

/// A walbust daemon process (`walbust run`), killable.
pub(super) struct Daemon {
    pub(super) name: String,
    config: PathBuf,
    pub(super) log: PathBuf,
    child: Option<Child>,
    http_port: u16,
    /// walbust's own commit-to-applied histogram, summed over the processes killed so far.
    latency: Arc<Mutex<DaemonLatency>>,
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
    pub(super) fn spawn(&mut self, bin: &Path) -> Result<(), ChaosError> {
        self.spawn_with_failpoint(bin, None)
    }

    /// Starts the daemon; with `failpoint`, it exits at that step (`WALBUST_FAILPOINT`).
    pub(super) fn spawn_with_failpoint(&mut self, bin: &Path, failpoint: Option<&str>) -> Result<(), ChaosError> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut command = Command::new(bin);
        if let Some(step) = failpoint {
            command.env("WALBUST_FAILPOINT", step);
        }
        let child = command
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

    pub(super) fn kill9(&mut self) {
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

    /// Waits up to `timeout` for the process to exit by itself; its exit code.
    pub(super) async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return status.code();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub(super) fn running(&mut self) -> bool {
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

pub(super) async fn wait_active(pg: &PgInstance, timeout: Duration, other_than: Option<&str>) -> Option<Duration> {
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

/// A gap (slot lost, failover) is recovered with an epoch bump (`on_gap = "bump_epoch"`): the
/// default, `fail`, stops the daemon for an operator, which a fault run cannot measure.
fn daemon_config(
    pg: &PgInstance,
    redis: &RedisSpec,
    rules: &Path,
    name: &str,
    http_port: u16,
    wait_replicas: u32,
) -> String {
    // The invalidation feed the local-cache readers follow (standalone Redis only).
    let feed = if redis.cluster {
        String::new()
    } else {
        format!("feed = \"{}\"", super::readers::FEED_STREAM)
    };
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
on_gap = "bump_epoch"
[[redis]]
url = "{}"
cluster = {}
wait_replicas = {wait_replicas}
{feed}
[http]
listen = "127.0.0.1:{http_port}"
"#,
        pg.url("catalog"),
        rules.display(),
        redis.daemon_url(),
        redis.cluster
    )
}

/// The index of the daemon streaming the slot (the first one when none is).
pub(super) fn active_index(pg: &PgInstance, daemons: &[Daemon]) -> usize {
    let active = blocking(|| active_daemon(pg));
    daemons
        .iter()
        .position(|d| Some(&d.name) == active.as_ref())
        .unwrap_or(0)
}

/// pg_terminate_backend of the walsender streaming the slot, if any.
/// Drops the slot under the streaming walbust (terminating its walsender until the drop
/// succeeds): the changes until walbust creates it again are a gap.
pub(super) fn drop_slot(pg: &PgInstance) -> Result<(), HarnessError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = terminate_walsender(pg);
        match pg.psql("catalog", "SELECT pg_drop_replication_slot('walbust')") {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

pub(super) fn terminate_walsender(pg: &PgInstance) -> Result<(), HarnessError> {
    pg.psql(
        "catalog",
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'walbust' AND active_pid IS NOT NULL",
    )
    .map(|_| ())
}

/// SIGSTOP of redis-server for `pause`, then SIGCONT.
pub(super) async fn pause_redis(redis: &RedisInstance, pause: Duration) {
    let pid = redis.pid().to_string();
    let _ = Command::new("kill").args(["-STOP", &pid]).status();
    tokio::time::sleep(pause).await;
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
}

/// A throwaway PostgreSQL with the catalog schema, the chaos columns, `products` seeded
/// products, recommendations and the slot.
pub(super) fn start_database(products: i64) -> Result<PgInstance, HarnessError> {
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
pub(super) fn prepare_daemons(
    work: &Path,
    pg: &PgInstance,
    redis: &RedisSpec,
    latency: &Arc<Mutex<DaemonLatency>>,
    wait_replicas: u32,
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
        std::fs::write(
            &config,
            daemon_config(pg, redis, &rules, name, http_port, wait_replicas),
        )?;
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
pub(super) async fn quiesce(pg: &PgInstance, work: &Path) -> Result<u64, ChaosError> {
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
}
