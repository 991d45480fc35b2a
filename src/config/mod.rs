//! Daemon configuration: `walbust.toml`, overridden by `WALBUST_…` environment variables, then
//! by command-line flags ([`Config::resolve`]). Defaults are the named constants below; durations
//! are typed (written `500ms`, `10s`, `1m` as in the rules); unknown keys are errors; every check
//! lives in [`Config::validate`] and names the field; secrets are redacted whenever the
//! configuration is printed.

use crate::rules::load::parse_duration;
use crate::rules::RuleSet;
pub mod purge;

use self::purge::{PatternPolicy, PurgeConfig};
use crate::sink::redis::{redact_url, DeleteCommand};
use crate::source::conn::ConnectOptions;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_SLOT: &str = "walbust";
pub const DEFAULT_PUBLICATION: &str = "walbust";
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);
pub const DEFAULT_SLOT_STATS_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_RULES_PATH: &str = "rules";
pub const DEFAULT_TAG_PREFIX: &str = "tag:";
pub const DEFAULT_MAX_KEYS_PER_TRANSACTION: usize = 10_000;
/// A batch queued behind a round trip in flight cannot go before it returns anyway; queueing it
/// early only splits what could be one round trip into two (measured: at 3,000 commits/s on two
/// cores 1 ms gave walbust − pg_recvlogical p50 6.5 ms, 20 ms gave 1.7 ms; docs/benchmarks.md).
pub const DEFAULT_MAX_BATCH_DELAY: Duration = Duration::from_millis(20);
pub const DEFAULT_MAX_BATCH_ACTIONS: usize = 5_000;
pub const DEFAULT_EPOCH_KEY: &str = crate::sink::redis::DEFAULT_EPOCH_KEY;
pub const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(5);
pub const DEFAULT_BUFFER_BATCHES: usize = 16;
pub const DEFAULT_BUFFER_BYTES: usize = 64 << 20;
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9187";
pub const DEFAULT_READY_MAX_LAG_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long applied work stays unacknowledged: covers AOF `appendfsync everysec` (up to ~1 s
/// lost) with margin. See docs/consistency.md for sizing against RDB `save` intervals.
pub const DEFAULT_DURABILITY_WINDOW: Duration = Duration::from_secs(5);
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(1);
/// `memcached[].timeout`: one round trip at most.
pub const DEFAULT_MEMCACHED_TIMEOUT: Duration = Duration::from_secs(2);
/// `redis[].feed_maxlen`: entries the invalidation feed keeps (about).
pub const DEFAULT_FEED_MAXLEN: u64 = walbust_client::feed::DEFAULT_FEED_MAXLEN;
pub const DEFAULT_DECODING_WORK_MEM: &str = "1MB";
/// On where the server supports it (PostgreSQL 14+): a large transaction's keys are collected
/// while it runs, so little is left to do after its COMMIT; what it holds past
/// `apply.max_batch_actions` keys waits on disk (`apply.spill_dir`), so memory stays flat.
pub const DEFAULT_STREAMING: bool = true;
/// An instance that cannot apply for this long releases the slot for a standby.
pub const DEFAULT_RELEASE_SLOT_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("postgres.url: {0}")]
    PostgresUrl(#[source] crate::source::conn::ConnError),
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Durations in the configuration file, written as in the rules (`500ms`, `10s`, `1.5s`, `1m`).
pub(crate) mod duration_text {
    use super::parse_duration;
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("cannot read duration `{text}`; write e.g. 1ms, 10s or 1m"))
        })
    }
}

/// What to do when the slot's history has a gap (slot lost or recreated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnGap {
    /// Stop with an error; an operator decides.
    #[default]
    Fail,
    /// Increment the global epoch key (clients include it in every cache key: forget everything)
    /// and continue from a new slot.
    BumpEpoch,
}

impl OnGap {
    fn parse(text: &str) -> Option<OnGap> {
        match text {
            "fail" => Some(OnGap::Fail),
            "bump_epoch" => Some(OnGap::BumpEpoch),
            _ => None,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// libpq URL or key=value string (password, sslmode, sslrootcert honoured).
    pub url: String,
    pub slot: String,
    pub publication: String,
    /// Create the slot when it does not exist (the publication must exist).
    pub create_slot: bool,
    #[serde(with = "duration_text")]
    pub status_interval: Duration,
    /// Longest wait between reconnection attempts (also how fast a standby takes over).
    #[serde(with = "duration_text")]
    pub reconnect_max_delay: Duration,
    /// Poll slot statistics (retained WAL) this often.
    #[serde(with = "duration_text")]
    pub slot_stats_interval: Duration,
    /// Stream large transactions while they run (protocol 2, PostgreSQL 14+): their keys are
    /// collected as they arrive and applied at their commit.
    pub streaming: bool,
    /// With streaming: `logical_decoding_work_mem` for walbust's walsender, so a large
    /// transaction streams early and little is left after its COMMIT (empty: the server's).
    pub decoding_work_mem: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: String::new(),
            slot: DEFAULT_SLOT.into(),
            publication: DEFAULT_PUBLICATION.into(),
            create_slot: false,
            status_interval: DEFAULT_STATUS_INTERVAL,
            reconnect_max_delay: DEFAULT_RECONNECT_MAX_DELAY,
            slot_stats_interval: DEFAULT_SLOT_STATS_INTERVAL,
            streaming: DEFAULT_STREAMING,
            decoding_work_mem: DEFAULT_DECODING_WORK_MEM.into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    pub path: PathBuf,
    pub tag_prefix: String,
    pub max_keys_per_transaction: usize,
    /// Start even when a rule can be unrenderable for its table's replica identity and has no
    /// fallback (such changes are then logged and counted at runtime).
    pub allow_unrenderable: bool,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            path: PathBuf::from(DEFAULT_RULES_PATH),
            tag_prefix: DEFAULT_TAG_PREFIX.into(),
            max_keys_per_transaction: DEFAULT_MAX_KEYS_PER_TRANSACTION,
            allow_unrenderable: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplyConfig {
    #[serde(with = "duration_text")]
    pub max_batch_delay: Duration,
    pub max_batch_actions: usize,
    pub delete_command: DeleteCommand,
    pub on_gap: OnGap,
    pub epoch_key: String,
    #[serde(with = "duration_text")]
    pub retry_max_delay: Duration,
    /// Batches of events buffered between the stream and the applier (bounds memory).
    pub buffer_batches: usize,
    /// Bytes of WAL messages buffered between the stream and the applier, at most (bounds
    /// memory whatever the row width).
    pub buffer_bytes: usize,
    /// Applied positions are acknowledged to PostgreSQL only this long after every target
    /// applied them, so what a target loses within it can be replayed from the slot.
    #[serde(with = "duration_text")]
    pub durability_window: Duration,
    /// An instance whose targets have not applied a batch for this long releases the slot, so
    /// a standby that reaches them can take over; it streams again (or waits as the standby)
    /// once it applies again. `0s`: never release.
    #[serde(with = "duration_text")]
    pub release_slot_after: Duration,
    /// Where a streamed transaction's keys wait for its commit once it holds
    /// `max_batch_actions` of them (empty: the system's temporary directory).
    pub spill_dir: PathBuf,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            max_batch_delay: DEFAULT_MAX_BATCH_DELAY,
            max_batch_actions: DEFAULT_MAX_BATCH_ACTIONS,
            delete_command: DeleteCommand::Unlink,
            on_gap: OnGap::Fail,
            epoch_key: DEFAULT_EPOCH_KEY.into(),
            retry_max_delay: DEFAULT_RETRY_MAX_DELAY,
            buffer_batches: DEFAULT_BUFFER_BATCHES,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            durability_window: DEFAULT_DURABILITY_WINDOW,
            release_slot_after: DEFAULT_RELEASE_SLOT_AFTER,
            spill_dir: PathBuf::new(),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://…` or `rediss://…` (TLS); for a cluster, seed nodes separated by commas.
    pub url: String,
    /// A Redis Cluster: cluster-aware routing, no cross-slot commands.
    #[serde(default)]
    pub cluster: bool,
    /// PEM CA certificate to verify a `rediss://` server with (default: system roots).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// After every pipeline, `WAIT` for this many replicas before the batch counts as applied
    /// (0: do not wait). For a Redis whose replica may be promoted.
    #[serde(default)]
    pub wait_replicas: u32,
    /// How long one `WAIT` may take; a batch not acknowledged by enough replicas in time is
    /// applied again.
    #[serde(default = "default_wait_timeout", with = "duration_text")]
    pub wait_timeout: Duration,
    /// Append every applied batch's keys to this Redis Stream, the invalidation feed that
    /// in-process caches follow (`walbust_client::LocalCache`); empty: no feed.
    #[serde(default)]
    pub feed: String,
    /// Entries the feed keeps, approximately (`XADD … MAXLEN ~`); a follower that falls further
    /// behind flushes.
    #[serde(default = "default_feed_maxlen")]
    pub feed_maxlen: u64,
}

fn default_feed_maxlen() -> u64 {
    DEFAULT_FEED_MAXLEN
}

fn default_wait_timeout() -> Duration {
    DEFAULT_WAIT_TIMEOUT
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            cluster: false,
            ca_cert: None,
            wait_replicas: 0,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            feed: String::new(),
            feed_maxlen: DEFAULT_FEED_MAXLEN,
        }
    }
}

impl RedisConfig {
    /// A target with default settings.
    pub fn url(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            ..RedisConfig::default()
        }
    }
}

/// One memcached server (a pool: one entry per server; each gets every delete).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemcachedConfig {
    /// `host:port` (`memcached://host:port` accepted).
    pub addr: String,
    /// One round trip at most; past it the batch is applied again.
    #[serde(default = "default_memcached_timeout", with = "duration_text")]
    pub timeout: Duration,
}

fn default_memcached_timeout() -> Duration {
    DEFAULT_MEMCACHED_TIMEOUT
}

impl MemcachedConfig {
    pub fn addr(addr: impl Into<String>) -> MemcachedConfig {
        MemcachedConfig {
            addr: addr.into(),
            timeout: DEFAULT_MEMCACHED_TIMEOUT,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address for /metrics, /healthz and /readyz; empty disables the server.
    pub listen: String,
    /// /readyz fails when the replication lag exceeds this many bytes.
    pub ready_max_lag_bytes: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: DEFAULT_HTTP_LISTEN.into(),
            ready_max_lag_bytes: DEFAULT_READY_MAX_LAG_BYTES,
        }
    }
}

/// The whole configuration file.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub postgres: PostgresConfig,
    pub rules: RulesConfig,
    pub apply: ApplyConfig,
    pub redis: Vec<RedisConfig>,
    /// HTTP caches and CDNs purged by surrogate key (`[[purge]]`, see `sink::http`).
    pub purge: Vec<PurgeConfig>,
    pub memcached: Vec<MemcachedConfig>,
    pub http: HttpConfig,
    #[serde(with = "duration_text")]
    pub shutdown_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            postgres: PostgresConfig::default(),
            rules: RulesConfig::default(),
            apply: ApplyConfig::default(),
            redis: Vec::new(),
            purge: Vec::new(),
            memcached: Vec::new(),
            http: HttpConfig::default(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("postgres.url", &redact_pg(&self.postgres.url))
            .field("postgres.slot", &self.postgres.slot)
            .field("postgres.publication", &self.postgres.publication)
            .field("rules", &self.rules)
            .field("apply", &self.apply)
            .field(
                "redis",
                &self.redis.iter().map(|r| redact_url(&r.url)).collect::<Vec<_>>(),
            )
            .field("purge", &self.purge)
            .field("memcached", &self.memcached)
            .field("http", &self.http)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

/// Rules the configured targets cannot perform (tags or patterns on memcached; patterns on
/// purge targets that may not purge everything): `(target field, findings)` per target, for
/// `check --config` and the start.
pub fn target_notes(config: &Config, rules: &RuleSet) -> Vec<(String, String)> {
    use walbust_core::rules::check::TargetCapabilities;
    let memcached = config.memcached.iter().enumerate().map(|(i, _)| {
        let can = TargetCapabilities {
            tags: false,
            patterns: false,
        };
        (format!("memcached[{i}]"), can, "")
    });
    // A pattern has no surrogate key: only a purge target allowed to purge everything takes one.
    let purge = config
        .purge
        .iter()
        .enumerate()
        .filter(|(_, p)| p.delete_matching == PatternPolicy::Refuse)
        .map(|(i, _)| {
            let can = TargetCapabilities {
                tags: true,
                patterns: false,
            };
            (
                format!("purge[{i}]"),
                can,
                "\nor set delete_matching = \"purge_all\" on this target to purge everything for every batch with a pattern",
            )
        });
    memcached
        .chain(purge)
        .filter_map(|(field, can, hint)| {
            let notes = walbust_core::rules::check::target_notes(rules, &field, can);
            (!notes.is_empty()).then(|| {
                let text = notes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("\n");
                (field, format!("{text}{hint}"))
            })
        })
        .collect()
}

/// A connection string with its password replaced.
pub fn redact_pg(url: &str) -> String {
    if url.contains("://") {
        return redact_url(url);
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***".to_string()
            } else {
                kv.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Settings from command-line flags; they win over the environment and the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub db: Option<String>,
    pub slot: Option<String>,
    pub publication: Option<String>,
    pub rules: Option<PathBuf>,
    /// Replaces the configured targets when not empty.
    pub redis: Vec<String>,
    pub listen: Option<String>,
    pub create_slot: bool,
}

/// A configuration that passed [`Config::validate`].
#[derive(Clone, Debug)]
pub struct Validated {
    pub config: Config,
    /// `postgres.url`, parsed.
    pub connect: ConnectOptions,
}

impl std::ops::Deref for Validated {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

/// Environment variables that are not configuration: read by the command line, or a test
/// failpoint (`WALBUST_FAILPOINT`, see `daemon::gap`).
const ENV_NOT_CONFIGURATION: [&str; 3] = ["LOG_FORMAT", "CONFIG", "FAILPOINT"];

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// What a command runs with: the file (or the defaults), then `WALBUST_…` variables from
    /// `env`, then `flags`. Not validated yet.
    pub fn resolve(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.apply_overrides(flags);
        Ok(config)
    }

    /// Applies command-line flags.
    pub fn apply_overrides(&mut self, flags: &Overrides) {
        let set = |target: &mut String, value: &Option<String>| {
            if let Some(v) = value {
                target.clone_from(v);
            }
        };
        set(&mut self.postgres.url, &flags.db);
        set(&mut self.postgres.slot, &flags.slot);
        set(&mut self.postgres.publication, &flags.publication);
        set(&mut self.http.listen, &flags.listen);
        if let Some(rules) = &flags.rules {
            self.rules.path.clone_from(rules);
        }
        if !flags.redis.is_empty() {
            self.redis = flags.redis.iter().map(RedisConfig::url).collect();
        }
        self.postgres.create_slot |= flags.create_slot;
    }

    /// Applies `WALBUST_…` environment variables (from `vars`, usually `std::env::vars()`).
    pub fn apply_env(&mut self, vars: impl Iterator<Item = (String, String)>) -> Result<(), ConfigError> {
        for (key, value) in vars {
            let Some(name) = key.strip_prefix("WALBUST_") else {
                continue;
            };
            if ENV_NOT_CONFIGURATION.contains(&name) {
                continue;
            }
            self.apply_env_var(name, &key, value)?;
        }
        Ok(())
    }

    fn apply_env_var(&mut self, name: &str, key: &str, value: String) -> Result<(), ConfigError> {
        let number = |field: &str| {
            value
                .parse::<usize>()
                .map_err(|_| invalid(field, format!("expected a number in {key}, found `{value}`")))
        };
        let duration = |field: &str| {
            parse_duration(&value).ok_or_else(|| {
                invalid(
                    field,
                    format!("cannot read duration `{value}` in {key}; write e.g. 1ms, 10s or 1m"),
                )
            })
        };
        let flag = matches!(value.as_str(), "1" | "true" | "yes");
        match name {
            "DB" | "POSTGRES_URL" => self.postgres.url = value,
            "SLOT" => self.postgres.slot = value,
            "PUBLICATION" => self.postgres.publication = value,
            "CREATE_SLOT" => self.postgres.create_slot = flag,
            "STREAMING" => self.postgres.streaming = flag,
            "STATUS_INTERVAL" => self.postgres.status_interval = duration("postgres.status_interval")?,
            "RULES" => self.rules.path = PathBuf::from(value),
            "TAG_PREFIX" => self.rules.tag_prefix = value,
            "MAX_KEYS_PER_TRANSACTION" => {
                self.rules.max_keys_per_transaction = number("rules.max_keys_per_transaction")?
            }
            "ALLOW_UNRENDERABLE" => self.rules.allow_unrenderable = flag,
            "MAX_BATCH_DELAY" => self.apply.max_batch_delay = duration("apply.max_batch_delay")?,
            "MAX_BATCH_ACTIONS" => self.apply.max_batch_actions = number("apply.max_batch_actions")?,
            "DURABILITY_WINDOW" => self.apply.durability_window = duration("apply.durability_window")?,
            "RELEASE_SLOT_AFTER" => self.apply.release_slot_after = duration("apply.release_slot_after")?,
            "SPILL_DIR" => self.apply.spill_dir = PathBuf::from(value),
            "ON_GAP" => {
                self.apply.on_gap = OnGap::parse(&value).ok_or_else(|| {
                    invalid(
                        "apply.on_gap",
                        format!("{key} must be fail or bump_epoch, not `{value}`"),
                    )
                })?
            }
            "REDIS" | "REDIS_URLS" => {
                self.redis = value
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(RedisConfig::url)
                    .collect()
            }
            "LISTEN" | "HTTP_LISTEN" => self.http.listen = value,
            "SHUTDOWN_TIMEOUT" => self.shutdown_timeout = duration("shutdown_timeout")?,
            _ => {
                return Err(invalid(
                    key,
                    "unknown walbust environment variable; see docs/configuration.md for the list",
                ))
            }
        }
        Ok(())
    }

    /// Every check the configuration alone decides, each naming its field.
    pub fn validate(self) -> Result<Validated, ConfigError> {
        if self.postgres.url.is_empty() {
            return Err(invalid(
                "postgres.url",
                "no database given; set postgres.url in the config, WALBUST_DB, or --db",
            ));
        }
        let connect = ConnectOptions::parse(&self.postgres.url).map_err(ConfigError::PostgresUrl)?;
        for (field, value) in [
            ("postgres.slot", &self.postgres.slot),
            ("postgres.publication", &self.postgres.publication),
            ("apply.epoch_key", &self.apply.epoch_key),
        ] {
            if value.is_empty() {
                return Err(invalid(field, "must not be empty"));
            }
        }
        self.validate_redis()?;
        for (i, p) in self.purge.iter().enumerate() {
            p.validate(i)?;
        }
        for (field, value) in [
            ("apply.max_batch_actions", self.apply.max_batch_actions),
            ("apply.buffer_batches", self.apply.buffer_batches),
            ("apply.buffer_bytes", self.apply.buffer_bytes),
            ("rules.max_keys_per_transaction", self.rules.max_keys_per_transaction),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        // Zero would mean a timer that never waits: a busy loop against the server.
        for (field, value) in [
            ("postgres.status_interval", self.postgres.status_interval),
            ("postgres.reconnect_max_delay", self.postgres.reconnect_max_delay),
            ("postgres.slot_stats_interval", self.postgres.slot_stats_interval),
            ("apply.retry_max_delay", self.apply.retry_max_delay),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be longer than zero, e.g. 1s"));
            }
        }
        let spill = &self.apply.spill_dir;
        if !spill.as_os_str().is_empty() && !spill.is_dir() {
            return Err(invalid(
                "apply.spill_dir",
                format!(
                    "{} is not a directory; create it, or leave apply.spill_dir empty for the system's temporary directory",
                    spill.display()
                ),
            ));
        }
        Ok(Validated { config: self, connect })
    }

    fn validate_redis(&self) -> Result<(), ConfigError> {
        if self.redis.is_empty() && self.memcached.is_empty() && self.purge.is_empty() {
            return Err(invalid(
                "redis",
                "no target; add a [[redis]] table with url = \"redis://host:6379\" (or WALBUST_REDIS, --redis), a [[memcached]] table with addr = \"host:11211\", or a [[purge]] table for an HTTP cache or CDN",
            ));
        }
        for (i, m) in self.memcached.iter().enumerate() {
            let addr = m.addr.trim_start_matches("memcached://").trim_end_matches('/');
            if addr
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            {
                return Err(invalid(
                    &format!("memcached[{i}].addr"),
                    format!("`{}` is not host:port; write e.g. addr = \"127.0.0.1:11211\"", m.addr),
                ));
            }
            if m.timeout.is_zero() {
                return Err(invalid(
                    &format!("memcached[{i}].timeout"),
                    "must be longer than zero, e.g. 2s",
                ));
            }
        }
        let is_redis_url =
            |u: &str| u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("unix://");
        for (i, r) in self.redis.iter().enumerate() {
            if !r.url.split(',').all(|u| is_redis_url(u.trim())) {
                return Err(invalid(
                    &format!("redis[{i}].url"),
                    format!("`{}` is not a redis:// URL", redact_url(&r.url)),
                ));
            }
            if r.wait_replicas > 0 && r.wait_timeout.is_zero() {
                return Err(invalid(
                    &format!("redis[{i}].wait_timeout"),
                    "must be longer than zero when wait_replicas is set (WAIT 0 blocks forever), e.g. 1s",
                ));
            }
            if !r.feed.is_empty() && r.feed_maxlen == 0 {
                return Err(invalid(
                    &format!("redis[{i}].feed_maxlen"),
                    "must be at least 1 (entries the feed keeps), e.g. 100000",
                ));
            }
            if let Some(path) = &r.ca_cert {
                if !path.is_file() {
                    return Err(invalid(
                        &format!("redis[{i}].ca_cert"),
                        format!(
                            "{} is not a readable file; give the path of a PEM CA certificate",
                            path.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Validated {
    /// Rules some target cannot perform: `(target field, the findings)` per such target.
    pub fn target_notes(&self, rules: &RuleSet) -> Vec<(String, String)> {
        target_notes(&self.config, rules)
    }

    /// The checks that need the loaded rules as well as the configuration.
    pub fn check_rules(&self, rules: &RuleSet) -> Result<(), ConfigError> {
        if let Some(notes) = self.target_notes(rules).into_iter().next() {
            return Err(ConfigError::Invalid {
                field: notes.0,
                message: notes.1,
            });
        }
        let patterns = rules.rules.iter().any(|rule| !rule.actions.delete_matching.is_empty());
        match self.redis.iter().position(|r| r.cluster) {
            Some(i) if patterns => Err(invalid(
                &format!("redis[{i}]"),
                "delete_matching is not supported on Redis Cluster targets (SCAN is per node); replace those rules' patterns with tags or version keys",
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../../walbust.toml");
        let config = Config::parse(Path::new("walbust.toml"), text).unwrap();
        let v = config.validate().unwrap();
        assert_eq!(v.apply.max_batch_delay, DEFAULT_MAX_BATCH_DELAY);
        assert_eq!(v.redis.len(), 1);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_field() {
        let err = Config::parse(Path::new("w.toml"), "[postgres]\nslott = \"x\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("w.toml") && err.contains("slott"), "{err}");
        let err = Config::parse(Path::new("w.toml"), "[apply]\nmax_batch_delay = \"soon\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("w.toml") && err.contains("line 2") && err.contains("max_batch_delay") && err.contains("soon"),
            "{err}"
        );
        let mut c = Config::parse(
            Path::new("w.toml"),
            "[postgres]\nurl = \"postgres://u:pw@h/db\"\n[[redis]]\nurl = \"redis://h\"\n",
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("pw@"), "{dbg}");
        c.apply.max_batch_actions = 0;
        let err = c.clone().validate().err().unwrap().to_string();
        assert!(err.starts_with("apply.max_batch_actions:"), "{err}");
        c.apply.max_batch_actions = 1;
        c.postgres.status_interval = Duration::ZERO;
        let err = c.clone().validate().err().unwrap().to_string();
        assert!(err.starts_with("postgres.status_interval:"), "{err}");
        c.postgres.status_interval = DEFAULT_STATUS_INTERVAL;
        c.apply.spill_dir = PathBuf::from("/nonexistent/walbust-spill");
        let err = c.clone().validate().err().unwrap().to_string();
        assert!(
            err.starts_with("apply.spill_dir:") && err.contains("is not a directory; create it"),
            "{err}"
        );
        c.apply.spill_dir = PathBuf::new();
        c.redis.clear();
        assert!(c.validate().err().unwrap().to_string().starts_with("redis:"));
    }

    /// Streaming is on unless the config says otherwise (the stream uses protocol 1 on servers
    /// before 14 whatever this says).
    #[test]
    fn streaming_is_on_by_default() {
        assert!(Config::default().postgres.streaming);
        let c = Config::parse(Path::new("w.toml"), "[postgres]\nstreaming = false\n").unwrap();
        assert!(!c.postgres.streaming);
    }

    #[test]
    fn a_config_with_only_purge_targets_is_valid_and_patterns_are_refused_unless_purged_all() {
        let text = "[postgres]\nurl = \"postgres://h/db\"\n[[purge]]\nkind = \"cloudflare\"\nurl = \"https://api.cloudflare.com/client/v4/zones/Z/purge_cache\"\ntoken_env = \"CF_TOKEN\"\ncoalesce = \"5ms\"\nrate_limit = 0.5\n";
        let c = Config::parse(Path::new("w.toml"), text).unwrap();
        let v = c.clone().validate().unwrap();
        assert_eq!(v.purge[0].max_keys_per_request(), 100);
        assert_eq!(v.purge[0].coalesce, Duration::from_millis(5));
        assert!(format!("{v:?}").contains("CF_TOKEN"));
        let rules = crate::rules::load_str(
            "r.yaml",
            "version: 1\nrules:\n  - name: p\n    table: products\n    delete_matching: [\"search:*\"]\n",
        )
        .unwrap()
        .rules;
        let err = v.check_rules(&rules).unwrap_err().to_string();
        assert!(err.starts_with("purge[0]:") && err.contains("purge_all"), "{err}");
        let mut c = c;
        c.purge[0].delete_matching = PatternPolicy::PurgeAll;
        c.clone().validate().unwrap().check_rules(&rules).unwrap();
        c.purge.clear();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("[[redis]]") && err.contains("[[purge]]") && err.contains("[[memcached]]"),
            "{err}"
        );
        let err = Config::parse(
            Path::new("w.toml"),
            "[[purge]]\nkind = \"akamai\"\nurl = \"http://x/\"\n",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("akamai") && err.contains("xkey"), "{err}");
    }

    #[test]
    fn environment_then_flags_override_the_file() {
        let env = [
            ("WALBUST_DB".to_string(), "postgres://h/db".to_string()),
            ("WALBUST_REDIS".to_string(), "redis://a,redis://b".to_string()),
            ("WALBUST_ON_GAP".to_string(), "bump_epoch".to_string()),
            ("WALBUST_MAX_BATCH_DELAY".to_string(), "5ms".to_string()),
            ("WALBUST_SLOT".to_string(), "from_env".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let flags = Overrides {
            slot: Some("from_flag".into()),
            ..Overrides::default()
        };
        let c = Config::resolve(None, env.into_iter(), &flags).unwrap();
        assert_eq!(c.redis.len(), 2);
        assert_eq!(c.apply.on_gap, OnGap::BumpEpoch);
        assert_eq!(c.apply.max_batch_delay, Duration::from_millis(5));
        assert_eq!(c.postgres.slot, "from_flag");
        assert_eq!(c.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        let mut c = c;
        let err = c
            .apply_env([("WALBUST_NOPE".to_string(), "1".to_string())].into_iter())
            .unwrap_err()
            .to_string();
        assert!(err.contains("WALBUST_NOPE"), "{err}");
        let err = c
            .apply_env([("WALBUST_SHUTDOWN_TIMEOUT".to_string(), "later".to_string())].into_iter())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("shutdown_timeout:") && err.contains("later"), "{err}");
        assert_eq!(redact_pg("host=h password=secret user=u"), "host=h password=*** user=u");
    }
}
