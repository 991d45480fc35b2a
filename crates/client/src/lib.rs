//! The read side of walbust's Redis protocol (`docs/redis-protocol.md`), for applications:
//! cache-aside reads with version keys, the global epoch and tag sets — and what keeps readers
//! from hurting the database when many miss at once or Redis misbehaves.
//!
//! * **Reads.** One round trip (a script reads the epoch and version keys, builds the versioned
//!   key and GETs it). A reader that loaded old data can only write it under an old version's
//!   key, which no reader looks up any more.
//! * **Leases** (on by default). The first reader to miss a key puts a short-lived placeholder in
//!   it (a lease, memcache-style) and loads; the others poll for its fill and are served that, or
//!   load themselves once the lease expired. walbust's invalidations delete the placeholder (or
//!   move the key's version), so a fill racing an invalidation is dropped: the next reader loads
//!   again. One load per key after an invalidation, however many readers.
//! * **Single-flight.** Within a process (all clones of one client), one load per key at a time;
//!   the other tasks get its value.
//! * **Failures.** Every Redis command has a timeout; a read whose Redis command fails falls
//!   through to the loader, at most `max_concurrent_loads` loads at a time; after a few failures
//!   in a row a circuit skips Redis for a while. Everything is counted ([`Stats`]).
//! * **Redis Cluster** ([`CacheClient::connect_cluster`]): the same protocol with single-key
//!   scripts, epoch and version keys read in one pipeline, tags filed with a command each.
//!
//! * **In-process caches** ([`LocalCache`]): follow the invalidation feed walbust appends to a
//!   Redis Stream ([`feed`]), with gap detection.
//!
//! The scripts serve other languages too ([`READ_SCRIPT`], [`LEASE_READ_SCRIPT`], …).

mod circuit;
mod conn;
pub mod feed;
mod flight;
pub mod local;
mod scripts;
mod stats;

pub use conn::{connection_info, tcp_settings, RedisConnection};
pub use local::{Deps, LocalCache, LocalCacheOptions, LocalStats, Ticket, FEED_CHECK_SCRIPT};
pub use scripts::{
    FILL_SCRIPT, LEASE_FILL_SCRIPT, LEASE_KEY_SCRIPT, LEASE_MARKER, LEASE_READ_SCRIPT, LEASE_RELEASE_SCRIPT,
    READ_SCRIPT, STALE_COPY_SCRIPT, TAG_SCRIPT,
};
pub use stats::Stats;

use circuit::Circuit;
use flight::{Flight, Flights};
use stats::{bump, Counters};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a lease lasts: a loader slower than this lets the next reader load too.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(2);
/// How long a reader waits for another reader's fill before loading itself.
pub const DEFAULT_LEASE_WAIT: Duration = Duration::from_secs(3);
/// The timeout of every Redis command.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// Loads running at once per client (all clones), on every path.
pub const DEFAULT_MAX_CONCURRENT_LOADS: usize = 32;
/// How long a read waits for a load slot before it gives up ([`ClientError::Overloaded`]).
pub const DEFAULT_LOAD_WAIT: Duration = Duration::from_secs(1);
/// Failed Redis commands in a row that open the circuit.
pub const DEFAULT_CIRCUIT_FAILURES: u32 = 3;
/// How long an open circuit skips Redis.
pub const DEFAULT_CIRCUIT_OPEN_FOR: Duration = Duration::from_secs(1);

/// How reads protect the database and themselves. `Default` is what applications should use;
/// [`ReadOptions::unprotected`] is plain cache-aside (every missing reader loads), for
/// comparison.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// Lease length; `None`: no leases.
    pub lease: Option<Duration>,
    pub lease_wait: Duration,
    /// One load per key at a time within the process.
    pub single_flight: bool,
    pub redis_timeout: Duration,
    pub max_concurrent_loads: usize,
    pub load_wait: Duration,
    pub circuit_failures: u32,
    pub circuit_open_for: Duration,
    /// Stale-while-revalidate for version-keyed entries (`None`, the default: off). With a
    /// bound, every fill and every hit keep a copy of the value under `<prefix><key>:swr` that
    /// expires the bound after the value was last known valid; a reader that would wait for
    /// another reader's refill is served that copy instead while it exists. So a copy served is
    /// never older than an invalidation by more than the bound. Costs a `PTTL` per hit (and on
    /// a Cluster one more command per hit).
    pub stale_while_revalidate: Option<Duration>,
}

impl Default for ReadOptions {
    fn default() -> ReadOptions {
        ReadOptions {
            lease: Some(DEFAULT_LEASE),
            lease_wait: DEFAULT_LEASE_WAIT,
            single_flight: true,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            max_concurrent_loads: DEFAULT_MAX_CONCURRENT_LOADS,
            load_wait: DEFAULT_LOAD_WAIT,
            circuit_failures: DEFAULT_CIRCUIT_FAILURES,
            circuit_open_for: DEFAULT_CIRCUIT_OPEN_FOR,
            stale_while_revalidate: None,
        }
    }
}

impl ReadOptions {
    /// Plain cache-aside: no leases, no single-flight, no load limit to speak of.
    pub fn unprotected() -> ReadOptions {
        ReadOptions {
            lease: None,
            single_flight: false,
            max_concurrent_loads: tokio::sync::Semaphore::MAX_PERMITS,
            ..ReadOptions::default()
        }
    }
}

/// What to read: a cache key, the version keys its data depends on, and its tags — all
/// without the rules prefix (`product:42`, `ver:product:42`, `category:5`). With no version
/// keys the entry is plain: stored under exactly `<prefix><key>`, for `delete` rules.
#[derive(Clone, Debug)]
pub struct Entry<'a> {
    pub key: &'a str,
    pub versions: &'a [&'a str],
    pub tags: &'a [&'a str],
}

/// Where a value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Cached in Redis.
    Cache,
    /// This read loaded it and filled it.
    Loaded,
    /// Another reader loaded it while this one waited (a lease elsewhere, or single-flight).
    Waited,
    /// Loaded and not cached: Redis failed, the circuit is open, or a lease wait timed out.
    Uncached,
    /// A copy loaded at most `stale_while_revalidate` ago, served while another reader
    /// refills the entry.
    Stale,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError<E: std::fmt::Display> {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("loading the value failed: {0}")]
    Load(E),
    /// The load this read joined (single-flight) failed.
    #[error("loading the value failed (in a load this read joined): {0}")]
    LoadFailedElsewhere(String),
    /// Every load slot stayed busy (`max_concurrent_loads`) for `load_wait`.
    #[error(
        "no load slot within {0:?}: max_concurrent_loads loads are running (the database is slow or the cache cold)"
    )]
    Overloaded(Duration),
}

/// What every clone of a client shares.
struct Guards {
    options: ReadOptions,
    flights: Arc<Flights>,
    loads: tokio::sync::Semaphore,
    circuit: Circuit,
    counters: Counters,
}

impl Guards {
    fn new(options: ReadOptions) -> Guards {
        Guards {
            flights: Arc::new(Flights::default()),
            loads: tokio::sync::Semaphore::new(options.max_concurrent_loads.max(1)),
            circuit: Circuit::new(options.circuit_failures, options.circuit_open_for),
            counters: Counters::default(),
            options,
        }
    }

    /// A Redis command under the timeout; failures feed the circuit and the counters.
    async fn redis<T>(&self, command: impl Future<Output = redis::RedisResult<T>>) -> Option<T> {
        match tokio::time::timeout(self.options.redis_timeout, command).await {
            Ok(Ok(value)) => {
                self.circuit.success();
                Some(value)
            }
            _ => {
                bump(&self.counters.redis_errors);
                self.circuit.failure();
                None
            }
        }
    }

    /// Calls the loader within the load limit.
    async fn load<F, Fut, E>(&self, load: F) -> Result<String, ClientError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
        E: std::fmt::Display,
    {
        let permit = match tokio::time::timeout(self.options.load_wait, self.loads.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                bump(&self.counters.overloaded);
                return Err(ClientError::Overloaded(self.options.load_wait));
            }
        };
        bump(&self.counters.loads);
        let value = load().await.map_err(ClientError::Load);
        drop(permit);
        value
    }
}

/// What a leased read found.
enum Leased {
    Hit(String),
    /// Another reader holds the lease.
    Wait,
    /// This reader holds it.
    Lease,
}

/// A value, where it came from, and since when it is known fresh: the start of the Redis read
/// or load that produced it (a value another reader filled under a lease this read saw is as
/// fresh as that read).
struct Fetched {
    value: String,
    source: Source,
    since: Instant,
}

impl Fetched {
    fn new(value: String, source: Source, since: Instant) -> Fetched {
        Fetched { value, source, since }
    }
}

/// How waiting for another reader's fill ended.
enum Waited {
    Filled(String),
    /// The key is empty again (invalidated, or the lease expired unfilled).
    Gone,
    TimedOut,
    RedisFailed,
}

/// Cache-aside reads following walbust's protocol. Clones share the connection, the
/// single-flight table, the load limit, the circuit and the counters.
#[derive(Clone)]
pub struct CacheClient {
    conn: RedisConnection,
    /// The rules file's `prefix` (`shop:`).
    pub prefix: String,
    /// `apply.epoch_key` of the daemon.
    pub epoch_key: String,
    /// `rules.tag_prefix` of the daemon.
    pub tag_prefix: String,
    pub ttl: Duration,
    /// Fraction of the TTL added at random (0.1 = up to +10 %).
    pub jitter: f64,
    guards: Arc<Guards>,
    scripts: Arc<Scripts>,
}

struct Scripts {
    read: redis::Script,
    fill: redis::Script,
    lease_read: redis::Script,
    lease_key: redis::Script,
    lease_fill: redis::Script,
    lease_release: redis::Script,
    tag: redis::Script,
    stale_copy: redis::Script,
}

fn lease_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}.{nanos:x}.{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn is_lease(value: &str) -> bool {
    value.starts_with(LEASE_MARKER)
}

impl CacheClient {
    /// A client for a standalone Redis, with [`ReadOptions::default`].
    pub async fn connect(url: &str, prefix: &str) -> redis::RedisResult<CacheClient> {
        Ok(CacheClient::with_connection(
            RedisConnection::single(url).await?,
            prefix,
        ))
    }

    /// A client for a Redis Cluster (seed node URLs), with [`ReadOptions::default`].
    pub async fn connect_cluster(seeds: &[&str], prefix: &str) -> redis::RedisResult<CacheClient> {
        Ok(CacheClient::with_connection(
            RedisConnection::cluster(seeds).await?,
            prefix,
        ))
    }

    /// A client over a connection already made.
    pub fn with_connection(conn: RedisConnection, prefix: &str) -> CacheClient {
        CacheClient {
            conn,
            prefix: prefix.to_string(),
            epoch_key: "walbust:epoch".into(),
            tag_prefix: "tag:".into(),
            ttl: Duration::from_secs(3600),
            jitter: 0.1,
            guards: Arc::new(Guards::new(ReadOptions::default())),
            scripts: Arc::new(Scripts {
                read: redis::Script::new(READ_SCRIPT),
                fill: redis::Script::new(FILL_SCRIPT),
                lease_read: redis::Script::new(LEASE_READ_SCRIPT),
                lease_key: redis::Script::new(LEASE_KEY_SCRIPT),
                lease_fill: redis::Script::new(LEASE_FILL_SCRIPT),
                lease_release: redis::Script::new(LEASE_RELEASE_SCRIPT),
                tag: redis::Script::new(TAG_SCRIPT),
                stale_copy: redis::Script::new(STALE_COPY_SCRIPT),
            }),
        }
    }

    /// The same connection with other read options (and counters, single-flight table, load
    /// limit and circuit of its own, shared by its clones).
    pub fn with_options(mut self, options: ReadOptions) -> CacheClient {
        self.guards = Arc::new(Guards::new(options));
        self
    }

    pub fn options(&self) -> &ReadOptions {
        &self.guards.options
    }

    /// The counters so far (all clones together).
    pub fn stats(&self) -> Stats {
        self.guards.counters.snapshot()
    }

    fn ttl_seconds(&self) -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let spread = self.ttl.as_secs_f64() * self.jitter * (f64::from(nanos % 1000) / 1000.0);
        (self.ttl.as_secs_f64() + spread).max(1.0) as u64
    }

    fn base_key(&self, entry: &Entry<'_>) -> String {
        format!("{}{}", self.prefix, entry.key)
    }

    /// The stale-while-revalidate bound, for a version-keyed entry when it is on.
    fn stale_bound(&self, entry: &Entry<'_>) -> Option<Duration> {
        self.guards
            .options
            .stale_while_revalidate
            .filter(|_| !entry.versions.is_empty())
    }

    /// Where the stale-while-revalidate copy of a version-keyed entry lives.
    fn stale_key(&self, entry: &Entry<'_>) -> String {
        format!("{}{}:swr", self.prefix, entry.key)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}{}{tag}", self.prefix, self.tag_prefix)
    }

    /// The key an entry lives under now: `<prefix><key>` for a plain entry, else
    /// `<prefix><key>:e<epoch>:v<version>…` (one MGET, which a Redis Cluster connection splits
    /// by slot).
    async fn versioned_key(&mut self, entry: &Entry<'_>) -> redis::RedisResult<String> {
        let base = self.base_key(entry);
        if entry.versions.is_empty() {
            return Ok(base);
        }
        let mut mget = redis::cmd("MGET");
        mget.arg(&self.epoch_key);
        for v in entry.versions {
            mget.arg(format!("{}{v}", self.prefix));
        }
        let values: Vec<Option<String>> = mget.query_async(&mut self.conn).await?;
        let mut key = base;
        for (i, value) in values.iter().enumerate() {
            key.push_str(if i == 0 { ":e" } else { ":v" });
            key.push_str(value.as_deref().unwrap_or("0"));
        }
        Ok(key)
    }

    /// The versioned key and the cached value, if any (one round trip on a standalone Redis).
    /// A lease placeholder reads as no value.
    ///
    /// An entry without version keys is a *plain* entry: it is read and filled under exactly
    /// `<prefix><key>`, the name a `delete` rule renders, with no epoch (so the epoch does not
    /// cover it: use version keys where a gap or a cold Redis must invalidate everything).
    pub async fn read(&mut self, entry: &Entry<'_>) -> redis::RedisResult<(String, Option<String>)> {
        let (key, value) = if entry.versions.is_empty() || self.conn.is_cluster() {
            let key = self.versioned_key(entry).await?;
            let value: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut self.conn).await?;
            (key, value)
        } else {
            let mut invocation = self.scripts.read.key(&self.epoch_key);
            for v in entry.versions {
                invocation.key(format!("{}{v}", self.prefix));
            }
            invocation.arg(self.base_key(entry));
            invocation.invoke_async(&mut self.conn).await?
        };
        Ok((key, value.filter(|v| !is_lease(v))))
    }

    /// Stores a loaded value under the versioned key and files it under the entry's tags
    /// (unconditionally: no lease).
    pub async fn fill(&mut self, versioned_key: &str, entry: &Entry<'_>, value: &str) -> redis::RedisResult<()> {
        let ttl = self.ttl_seconds();
        if self.conn.is_cluster() {
            for t in entry.tags {
                self.file_under_tag(&self.tag_key(t), versioned_key, ttl).await?;
            }
            return redis::cmd("SET")
                .arg(versioned_key)
                .arg(value)
                .arg("EX")
                .arg(ttl)
                .query_async(&mut self.conn)
                .await;
        }
        let mut invocation = self.scripts.fill.key(versioned_key);
        for t in entry.tags {
            invocation.key(self.tag_key(t));
        }
        invocation.arg(value).arg(ttl);
        let _: i64 = invocation.invoke_async(&mut self.conn).await?;
        Ok(())
    }

    async fn file_under_tag(&mut self, tag_key: &str, member: &str, ttl: u64) -> redis::RedisResult<()> {
        let mut invocation = self.scripts.tag.key(tag_key);
        invocation.arg(member).arg(ttl);
        let _: i64 = invocation.invoke_async(&mut self.conn).await?;
        Ok(())
    }

    /// Reads `entry`, taking the lease on a miss (filed under the entry's tags before anything
    /// is loaded, so a tag invalidation from now on removes the placeholder).
    async fn lease_read(
        &mut self,
        entry: &Entry<'_>,
        token: &str,
        lease: Duration,
    ) -> redis::RedisResult<(String, Leased)> {
        let lease_ms = lease.as_millis().max(1) as u64;
        let ttl = self.ttl_seconds();
        let reply: Vec<String> = if self.conn.is_cluster() {
            let key = self.versioned_key(entry).await?;
            let mut invocation = self.scripts.lease_key.key(&key);
            invocation.arg(token).arg(lease_ms);
            let mut reply: Vec<String> = invocation.invoke_async(&mut self.conn).await?;
            if let (Some("hit"), Some(value), Some(bound)) =
                (reply.first().map(String::as_str), reply.get(1), self.stale_bound(entry))
            {
                // Off the read's path: one more command per hit on a Cluster.
                let (scripts, mut conn) = (self.scripts.clone(), self.conn.clone());
                let (copy_key, value) = (self.stale_key(entry), value.clone());
                tokio::spawn(async move {
                    let mut copy = scripts.stale_copy.key(copy_key);
                    copy.arg(value).arg(bound.as_millis().max(1) as u64);
                    let _: redis::RedisResult<i64> = copy.invoke_async(&mut conn).await;
                });
            }
            if reply.first().map(String::as_str) == Some("lease") {
                for t in entry.tags {
                    self.file_under_tag(&self.tag_key(t), &key, ttl).await?;
                }
            }
            reply.insert(0, key);
            reply
        } else {
            let mut invocation = self.scripts.lease_read.key(&self.epoch_key);
            for v in entry.versions {
                invocation.key(format!("{}{v}", self.prefix));
            }
            for t in entry.tags {
                invocation.key(self.tag_key(t));
            }
            let stale_ms = self.stale_bound(entry).map_or(0, |b| b.as_millis().max(1) as u64);
            if stale_ms > 0 {
                invocation.key(self.stale_key(entry));
            }
            invocation
                .arg(self.base_key(entry))
                .arg(entry.versions.len())
                .arg(token)
                .arg(lease_ms)
                .arg(ttl)
                .arg(stale_ms);
            invocation.invoke_async(&mut self.conn).await?
        };
        let mut reply = reply.into_iter();
        let key = reply.next().unwrap_or_default();
        let found = match (reply.next().as_deref(), reply.next()) {
            (Some("hit"), Some(value)) => Leased::Hit(value),
            (Some("wait"), _) => Leased::Wait,
            (Some("lease"), _) => Leased::Lease,
            _ => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "unexpected lease script reply",
                )))
            }
        };
        Ok((key, found))
    }

    /// Polls `key` until another reader's fill shows up, the key empties, or `lease_wait`.
    async fn wait_for_fill(&mut self, key: &str) -> Waited {
        let guards = self.guards.clone();
        let deadline = Instant::now() + guards.options.lease_wait;
        // Short at first (most loads are quick), growing by half each time up to 10 ms: a
        // fill is seen within about a third of the time waited so far.
        let mut pause = Duration::from_micros(500);
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_millis(10));
            let value: Option<Option<String>> = guards
                .redis(redis::cmd("GET").arg(key).query_async(&mut self.conn))
                .await;
            match value {
                None => return Waited::RedisFailed,
                Some(None) => return Waited::Gone,
                Some(Some(v)) if !is_lease(&v) => return Waited::Filled(v),
                Some(Some(_)) if Instant::now() >= deadline => return Waited::TimedOut,
                Some(Some(_)) => {}
            }
        }
    }

    /// Cache-aside: the cached value, or `load()`'s, filled for the next reader — with the
    /// protections of [`ReadOptions`] (leases, single-flight, timeouts, load limit, circuit).
    pub async fn get_or_load<F, Fut, E>(
        &mut self,
        entry: &Entry<'_>,
        load: F,
    ) -> Result<(String, Source), ClientError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
        E: std::fmt::Display,
    {
        if !self.guards.options.single_flight {
            return self.fetch(entry, load).await.map(|f| (f.value, f.source));
        }
        // A load that began before this read may predate an invalidation this read must see:
        // only an outcome fresh since this read began is taken; otherwise this read waits for
        // that load to end and starts (or joins) the next one. Still one load at a time.
        let started = Instant::now();
        let flight_key = format!("{}\u{1f}{}", self.base_key(entry), entry.versions.join("\u{1f}"));
        loop {
            match self.guards.flights.join(&flight_key) {
                Flight::Leader(leader) => {
                    let result = self.fetch(entry, load).await;
                    leader.finish(match &result {
                        Ok(f) => Ok((f.value.clone(), f.since)),
                        Err(e) => Err(e.to_string()),
                    });
                    return result.map(|f| (f.value, f.source));
                }
                Flight::Follower(slot) => match flight::follow(slot).await {
                    Some(Ok((value, since))) if since >= started => {
                        bump(&self.guards.counters.single_flight_joins);
                        return Ok((value, Source::Waited));
                    }
                    Some(Err(message)) => return Err(ClientError::LoadFailedElsewhere(message)),
                    // Too old for this read, or the leader was cancelled: go again.
                    Some(Ok(_)) | None => continue,
                },
            }
        }
    }

    /// One read for this process: Redis (with a lease), or the loader alone when Redis fails.
    async fn fetch<F, Fut, E>(&mut self, entry: &Entry<'_>, load: F) -> Result<Fetched, ClientError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
        E: std::fmt::Display,
    {
        let guards = self.guards.clone();
        let counters = &guards.counters;
        let mut since = Instant::now();
        if guards.circuit.is_open() {
            return self.fall_through(load, since).await;
        }
        let Some(lease) = guards.options.lease else {
            return self.fetch_without_lease(entry, load).await;
        };
        let token = lease_token();
        // A lease can be invalidated before its holder fills it; each time the key empties,
        // the waiters try again (one of them takes the next lease). Three times in a row: load.
        for attempt in 0..3 {
            since = Instant::now();
            let Some((key, found)) = guards.redis(self.lease_read(entry, &token, lease)).await else {
                return self.fall_through(load, since).await;
            };
            if attempt == 0 && !matches!(found, Leased::Hit(_)) {
                bump(&counters.misses);
            }
            match found {
                Leased::Hit(value) => {
                    bump(&counters.hits);
                    return Ok(Fetched::new(value, Source::Cache, since));
                }
                Leased::Lease => {
                    let (value, source) = self.load_under_lease(&key, &token, load).await?;
                    if let Some(bound) = self.stale_bound(entry) {
                        if source == Source::Loaded {
                            let mut copy = redis::cmd("SET");
                            copy.arg(self.stale_key(entry))
                                .arg(&value)
                                .arg("PX")
                                .arg(bound.as_millis().max(1) as u64);
                            let _ = guards.redis(copy.query_async::<()>(&mut self.conn)).await;
                        }
                    }
                    return Ok(Fetched::new(value, source, since));
                }
                Leased::Wait => {
                    if let Some(bound) = self.stale_bound(entry) {
                        let copy: Option<Option<String>> = guards
                            .redis(redis::cmd("GET").arg(self.stale_key(entry)).query_async(&mut self.conn))
                            .await;
                        if let Some(Some(value)) = copy {
                            bump(&counters.stale_serves);
                            // Not fresh since anything this process's other readers could use.
                            let since = Instant::now().checked_sub(bound).unwrap_or(since);
                            return Ok(Fetched::new(value, Source::Stale, since));
                        }
                    }
                    bump(&counters.lease_waits);
                    match self.wait_for_fill(&key).await {
                        Waited::Filled(value) => {
                            bump(&counters.waited_fills);
                            return Ok(Fetched::new(value, Source::Waited, since));
                        }
                        Waited::Gone => continue,
                        Waited::RedisFailed => return self.fall_through(load, since).await,
                        Waited::TimedOut => {
                            bump(&counters.lease_timeouts);
                            let value = guards.load(load).await?;
                            return Ok(Fetched::new(value, Source::Uncached, since));
                        }
                    }
                }
            }
        }
        let value = guards.load(load).await?;
        Ok(Fetched::new(value, Source::Uncached, since))
    }

    async fn load_under_lease<F, Fut, E>(
        &mut self,
        key: &str,
        token: &str,
        load: F,
    ) -> Result<(String, Source), ClientError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
        E: std::fmt::Display,
    {
        let guards = self.guards.clone();
        let value = match guards.load(load).await {
            Ok(value) => value,
            Err(e) => {
                // Let the next reader load at once rather than after the lease.
                self.release_lease(key, token).await;
                return Err(e);
            }
        };
        if is_lease(&value) {
            self.release_lease(key, token).await;
            return Ok((value, Source::Uncached));
        }
        let mut fill = self.scripts.lease_fill.key(key);
        fill.arg(&value).arg(self.ttl_seconds()).arg(token);
        match guards.redis(fill.invoke_async::<i64>(&mut self.conn)).await {
            Some(1) => Ok((value, Source::Loaded)),
            Some(_) => {
                bump(&guards.counters.fills_dropped);
                Ok((value, Source::Loaded))
            }
            None => Ok((value, Source::Uncached)),
        }
    }

    /// Gives the lease on `key` back (while it is still this reader's).
    async fn release_lease(&mut self, key: &str, token: &str) {
        let mut release = self.scripts.lease_release.key(key);
        release.arg(token);
        let guards = self.guards.clone();
        let _: Option<i64> = guards.redis(release.invoke_async(&mut self.conn)).await;
    }

    /// Plain cache-aside (no lease): read, load on a miss, fill.
    async fn fetch_without_lease<F, Fut, E>(&mut self, entry: &Entry<'_>, load: F) -> Result<Fetched, ClientError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
        E: std::fmt::Display,
    {
        let guards = self.guards.clone();
        let since = Instant::now();
        let Some((key, cached)) = guards.redis(self.read(entry)).await else {
            return self.fall_through(load, since).await;
        };
        if let Some(value) = cached {
            bump(&guards.counters.hits);
            return Ok(Fetched::new(value, Source::Cache, since));
        }
        bump(&guards.counters.misses);
        let value = guards.load(load).await?;
        if is_lease(&value) || guards.redis(self.fill(&key, entry, &value)).await.is_none() {
            return Ok(Fetched::new(value, Source::Uncached, since));
        }
        Ok(Fetched::new(value, Source::Loaded, since))
    }

    /// Redis is failing or the circuit is open: the loader alone, within the load limit.
    async fn fall_through<F, Fut, E>(&self, load: F, since: Instant) -> Result<Fetched, ClientError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
        E: std::fmt::Display,
    {
        bump(&self.guards.counters.fall_throughs);
        let value = self.guards.load(load).await?;
        Ok(Fetched::new(value, Source::Uncached, since))
    }
}
