//! Daemon configuration: `walbust.toml`, overridden by `WALBUST_…` environment variables, then
//! by command-line flags. Unknown keys are errors; validation names the field; secrets are
//! redacted whenever the configuration is printed.

use crate::rules::load::parse_duration;
use crate::rules::RuleSet;
use crate::sink::redis::{redact_url, DeleteCommand};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
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

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// libpq URL or key=value string (password, sslmode, sslrootcert honoured).
    pub url: String,
    pub slot: String,
    pub publication: String,
    /// Create the slot when it does not exist (the publication must exist).
    pub create_slot: bool,
    pub status_interval: String,
    /// Longest wait between reconnection attempts (also how fast a standby takes over).
    pub reconnect_max_delay: String,
    /// Poll slot statistics (retained WAL) this often.
    pub slot_stats_interval: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: String::new(),
            slot: "walbust".into(),
            publication: "walbust".into(),
            create_slot: false,
            status_interval: "10s".into(),
            reconnect_max_delay: "5s".into(),
            slot_stats_interval: "10s".into(),
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
            path: PathBuf::from("rules"),
            tag_prefix: "tag:".into(),
            max_keys_per_transaction: 10_000,
            allow_unrenderable: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplyConfig {
    pub max_batch_delay: String,
    pub max_batch_actions: usize,
    pub delete_command: DeleteCommand,
    pub on_gap: OnGap,
    pub epoch_key: String,
    pub retry_max_delay: String,
    /// Batches of events buffered between the stream and the applier (bounds memory).
    pub buffer_batches: usize,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            max_batch_delay: "1ms".into(),
            max_batch_actions: 5_000,
            delete_command: DeleteCommand::Unlink,
            on_gap: OnGap::Fail,
            epoch_key: "walbust:epoch".into(),
            retry_max_delay: "5s".into(),
            buffer_batches: 16,
        }
    }
}

#[derive(Clone, Deserialize, Default)]
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
            listen: "127.0.0.1:9187".into(),
            ready_max_lag_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The whole configuration file.
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub postgres: PostgresConfig,
    pub rules: RulesConfig,
    pub apply: ApplyConfig,
    pub redis: Vec<RedisConfig>,
    pub http: HttpConfig,
    pub shutdown_timeout: String,
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
            .field("http", &self.http)
            .finish()
    }
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

/// Settings with durations parsed and everything validated.
#[derive(Clone, Debug)]
pub struct Validated {
    pub config: Config,
    pub status_interval: Duration,
    pub reconnect_max_delay: Duration,
    pub slot_stats_interval: Duration,
    pub max_batch_delay: Duration,
    pub retry_max_delay: Duration,
    pub shutdown_timeout: Duration,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if config.shutdown_timeout.is_empty() {
            config.shutdown_timeout = "10s".into();
        }
        Ok(config)
    }

    /// Applies `WALBUST_…` environment variables (from `vars`, usually `std::env::vars()`).
    pub fn apply_env(&mut self, vars: impl Iterator<Item = (String, String)>) -> Result<(), ConfigError> {
        for (key, value) in vars {
            let Some(name) = key.strip_prefix("WALBUST_") else {
                continue;
            };
            let number = |field: &str| {
                value
                    .parse::<u64>()
                    .map_err(|_| invalid(field, format!("expected a number in {key}, found `{value}`")))
            };
            match name {
                "DB" | "POSTGRES_URL" => self.postgres.url = value.clone(),
                "SLOT" => self.postgres.slot = value.clone(),
                "PUBLICATION" => self.postgres.publication = value.clone(),
                "CREATE_SLOT" => self.postgres.create_slot = matches!(value.as_str(), "1" | "true" | "yes"),
                "STATUS_INTERVAL" => self.postgres.status_interval = value.clone(),
                "RULES" => self.rules.path = PathBuf::from(&value),
                "TAG_PREFIX" => self.rules.tag_prefix = value.clone(),
                "MAX_KEYS_PER_TRANSACTION" => {
                    self.rules.max_keys_per_transaction = number("rules.max_keys_per_transaction")? as usize
                }
                "ALLOW_UNRENDERABLE" => self.rules.allow_unrenderable = matches!(value.as_str(), "1" | "true" | "yes"),
                "MAX_BATCH_DELAY" => self.apply.max_batch_delay = value.clone(),
                "MAX_BATCH_ACTIONS" => self.apply.max_batch_actions = number("apply.max_batch_actions")? as usize,
                "ON_GAP" => {
                    self.apply.on_gap = match value.as_str() {
                        "fail" => OnGap::Fail,
                        "bump_epoch" => OnGap::BumpEpoch,
                        _ => {
                            return Err(invalid(
                                "apply.on_gap",
                                format!("{key} must be fail or bump_epoch, not `{value}`"),
                            ))
                        }
                    }
                }
                "REDIS" | "REDIS_URLS" => {
                    self.redis = value
                        .split(',')
                        .filter(|u| !u.trim().is_empty())
                        .map(|u| RedisConfig {
                            url: u.trim().to_string(),
                            ..RedisConfig::default()
                        })
                        .collect()
                }
                "LISTEN" | "HTTP_LISTEN" => self.http.listen = value.clone(),
                "SHUTDOWN_TIMEOUT" => self.shutdown_timeout = value.clone(),
                // Read elsewhere (CLI) or not configuration.
                "LOG_FORMAT" | "CONFIG" => {}
                _ => {
                    return Err(invalid(
                        &key,
                        "unknown walbust environment variable; see docs/configuration.md for the list",
                    ))
                }
            }
        }
        Ok(())
    }

    pub fn validate(self) -> Result<Validated, ConfigError> {
        let duration = |field: &str, text: &str| {
            parse_duration(text).ok_or_else(|| {
                invalid(
                    field,
                    format!("cannot read duration `{text}`; write e.g. 1ms, 10s or 1m"),
                )
            })
        };
        if self.postgres.url.is_empty() {
            return Err(invalid(
                "postgres.url",
                "no database given; set postgres.url in the config, WALBUST_DB, or --db",
            ));
        }
        if self.postgres.slot.is_empty() {
            return Err(invalid("postgres.slot", "empty slot name"));
        }
        if self.postgres.publication.is_empty() {
            return Err(invalid("postgres.publication", "empty publication name"));
        }
        if self.redis.is_empty() {
            return Err(invalid(
                "redis",
                "no Redis target; add a [[redis]] table with url = \"redis://host:6379\" (or WALBUST_REDIS, --redis)",
            ));
        }
        for (i, r) in self.redis.iter().enumerate() {
            let ok = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("unix://");
            if !r.url.split(',').all(|u| ok(u.trim())) {
                return Err(invalid(
                    &format!("redis[{i}].url"),
                    format!("`{}` is not a redis:// URL", redact_url(&r.url)),
                ));
            }
        }
        if self.apply.max_batch_actions == 0 {
            return Err(invalid("apply.max_batch_actions", "must be at least 1"));
        }
        if self.rules.max_keys_per_transaction == 0 {
            return Err(invalid("rules.max_keys_per_transaction", "must be at least 1"));
        }
        Ok(Validated {
            status_interval: duration("postgres.status_interval", &self.postgres.status_interval)?,
            reconnect_max_delay: duration("postgres.reconnect_max_delay", &self.postgres.reconnect_max_delay)?,
            slot_stats_interval: duration("postgres.slot_stats_interval", &self.postgres.slot_stats_interval)?,
            max_batch_delay: duration("apply.max_batch_delay", &self.apply.max_batch_delay)?,
            retry_max_delay: duration("apply.retry_max_delay", &self.apply.retry_max_delay)?,
            shutdown_timeout: duration("shutdown_timeout", &self.shutdown_timeout)?,
            config: self,
        })
    }
}

impl Validated {
    /// The checks that need the loaded rules as well as the configuration.
    pub fn check_rules(&self, rules: &RuleSet) -> Result<(), ConfigError> {
        let patterns = rules.rules.iter().any(|rule| !rule.actions.delete_matching.is_empty());
        for (i, r) in self.config.redis.iter().enumerate() {
            if r.cluster && patterns {
                return Err(invalid(
                    &format!("redis[{i}]"),
                    "delete_matching is not supported on Redis Cluster targets (SCAN is per node); replace those rules' patterns with tags or version keys",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../walbust.toml");
        let config = Config::parse(Path::new("walbust.toml"), text).unwrap();
        let v = config.validate().unwrap();
        assert_eq!(v.max_batch_delay, Duration::from_millis(1));
        assert_eq!(v.config.redis.len(), 1);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_field() {
        let err = Config::parse(Path::new("w.toml"), "[postgres]\nslott = \"x\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("w.toml") && err.contains("slott"), "{err}");
        let mut c = Config::parse(Path::new("w.toml"), "[postgres]\nurl = \"postgres://u:pw@h/db\"\n[[redis]]\nurl = \"redis://h\"\n[apply]\nmax_batch_delay = \"soon\"\n").unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("pw@"), "{dbg}");
        c.apply.max_batch_delay = "soon".into();
        let err = c.clone().validate().err().unwrap().to_string();
        assert!(err.starts_with("apply.max_batch_delay:"), "{err}");
        c.redis.clear();
        assert!(c.validate().err().unwrap().to_string().starts_with("redis:"));
    }

    #[test]
    fn environment_overrides() {
        let mut c = Config::default();
        c.apply_env(
            [
                ("WALBUST_DB".to_string(), "postgres://h/db".to_string()),
                ("WALBUST_REDIS".to_string(), "redis://a,redis://b".to_string()),
                ("WALBUST_ON_GAP".to_string(), "bump_epoch".to_string()),
                ("PATH".to_string(), "/bin".to_string()),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(c.redis.len(), 2);
        assert_eq!(c.apply.on_gap, OnGap::BumpEpoch);
        let err = c
            .apply_env([("WALBUST_NOPE".to_string(), "1".to_string())].into_iter())
            .unwrap_err()
            .to_string();
        assert!(err.contains("WALBUST_NOPE"), "{err}");
        assert_eq!(redact_pg("host=h password=secret user=u"), "host=h password=*** user=u");
    }
}
