//! Throwaway PostgreSQL (`wal_level=logical`), Redis and Varnish servers on free ports in temp
//! dirs, for tests, benchmarks and `walbust demo`. Never touches services already running on the
//! machine. When run as root, PostgreSQL runs as the `postgres` OS user (it refuses root).
//! Servers stop (and their directories are removed) on drop, also when a test panics.
//!
//! [`PgInstance`] (with [`PgOptions`]) lives in `postgres`, [`RedisInstance`] and
//! [`RedisCluster`] in `redis`, [`VarnishInstance`] and its [`Origin`] in `varnish`,
//! [`make_test_certs`] in `certs`; this module holds the errors, the free ports and the helpers
//! they share, and [`peak_rss_mb`] for benchmarks.

mod certs;
mod memcached;
mod postgres;
mod redis;
mod varnish;

pub use self::certs::make_test_certs;
pub use self::memcached::MemcachedInstance;
pub use self::postgres::{PgInstance, PgOptions};
pub use self::redis::{RedisCluster, RedisInstance};
pub use self::varnish::{KeysFor, Origin, Response, VarnishInstance, VARNISH_VCL};

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("PostgreSQL server binaries not found (looked in $WALBUST_PG_BINDIR, `pg_config --bindir`, /usr/lib/postgresql/*/bin); install them with `apt-get install -y postgresql`")]
    PgMissing,
    #[error("redis-server not found on PATH; install it with `apt-get install -y redis-server`")]
    RedisMissing,
    #[error("varnishd not found (/usr/sbin/varnishd or on PATH); install it with `apt-get install -y varnish varnish-modules`")]
    VarnishMissing,
    #[error("memcached not found on PATH; install it with `apt-get install -y memcached`")]
    MemcachedMissing,
    #[error("running as root, but there is no `postgres` OS user to run PostgreSQL as (PostgreSQL refuses root); install the postgresql package or run as another user")]
    NoPostgresUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0} did not become ready in time; its log ends with:\n{1}")]
    NotReady(String, String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free TCP port on 127.0.0.1, never the same twice in this process.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if port == 0 {
            continue;
        }
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

fn unique_dir(kind: &str) -> Result<PathBuf, HarnessError> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("walbust-{kind}-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Peak resident memory of this process in MB (`VmHWM`), for benchmarks.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .unwrap_or(0.0)
        / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_not_handed_out_twice() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
    }
}
