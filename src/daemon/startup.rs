//! Before streaming: the startup check against the live schema, and the sinks built from the
//! configuration.

use super::applier::BoxSink;
use super::DaemonError;
use crate::config::{ConfigError, Validated};
use crate::rules::{RuleSet, Severity};
use crate::sink::http::{HttpError, PurgeConfig, PurgeTarget};
use crate::sink::redis::RedisTarget;
use crate::source::conn::{ConnectOptions, ReplicationConnection};
use crate::source::stream::StreamError;

/// Startup checks with database access: the schema facts `check --db` uses; errors (a rule that
/// cannot render for its table's replica identity without a fallback, missing tables or
/// columns, tables outside the publication) refuse the start unless allowed.
pub async fn check_schema(connect: &ConnectOptions, rules: &RuleSet, config: &Validated) -> Result<(), DaemonError> {
    let mut conn = ReplicationConnection::connect(connect)
        .await
        .map_err(|e| DaemonError::Stream(StreamError::Conn(e)))?;
    let schema = crate::source::schema::read_schema_with(&mut conn, rules, Some(&config.postgres.publication)).await?;
    let keep = conn.simple_query("SHOW max_slot_wal_keep_size").await;
    conn.close().await;
    if let Ok(keep) = keep {
        if keep.first("max_slot_wal_keep_size") == Some("-1") {
            tracing::warn!(
                "max_slot_wal_keep_size is unlimited: if walbust stops for long, the slot retains WAL until the disk fills; set a limit on the server"
            );
        }
    }
    let mut errors = Vec::new();
    for d in crate::rules::check::check_against_schema(rules, &schema) {
        match d.severity {
            Severity::Warning => tracing::warn!(finding = %d, "startup check"),
            Severity::Error => errors.push(d.to_string()),
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    if !config.rules.allow_unrenderable {
        return Err(DaemonError::Startup(errors.join("\n")));
    }
    for e in &errors {
        tracing::error!(finding = %e, "startup check (allowed by rules.allow_unrenderable)");
    }
    Ok(())
}

/// The configured targets: one sink per `[[redis]]` and `[[purge]]` entry, and — when a rule uses
/// `redelete_after` — a second connection per target for the delayed re-deletes.
pub struct Targets {
    pub sinks: Vec<BoxSink>,
    pub redelete: Vec<RedisTarget>,
}

pub fn build_targets(config: &Validated, rules: &RuleSet) -> Result<Targets, DaemonError> {
    let cfg = &config.config;
    let redeletes = rules.rules.iter().any(|rule| rule.redelete_after.is_some());
    let mut targets = Targets {
        sinks: Vec::new(),
        redelete: Vec::new(),
    };
    for (i, r) in cfg.redis.iter().enumerate() {
        let ca = match &r.ca_cert {
            Some(path) => Some(std::fs::read(path).map_err(|source| DaemonError::CaCert {
                field: format!("redis[{i}].ca_cert"),
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let connect = |ca: Option<Vec<u8>>| {
            RedisTarget::with_tls(&r.url, r.cluster, ca, cfg.apply.delete_command, &cfg.rules.tag_prefix).map_err(
                |source| DaemonError::Target {
                    field: format!("redis[{i}].url"),
                    source,
                },
            )
        };
        // The applier pings it first thing (and logs when it does not answer).
        let mut target = connect(ca.clone())?
            .with_epoch_key(&cfg.apply.epoch_key)
            .with_wait(r.wait_replicas, r.wait_timeout);
        if !r.feed.is_empty() {
            target = target.with_feed(&r.feed, r.feed_maxlen);
        }
        targets.sinks.push(Box::new(target));
        if redeletes {
            let mut redelete = connect(ca)?;
            if !r.feed.is_empty() {
                redelete = redelete.with_feed(&r.feed, r.feed_maxlen);
            }
            targets.redelete.push(redelete);
        }
    }
    for m in &cfg.memcached {
        targets
            .sinks
            .push(Box::new(crate::sink::memcached::MemcachedTarget::new(
                &m.addr, m.timeout,
            )));
    }
    for (i, p) in cfg.purge.iter().enumerate() {
        targets.sinks.push(Box::new(purge_target(i, p, config, rules)?));
    }
    Ok(targets)
}

/// A `[[purge]]` entry's sink, with its token read from the environment.
fn purge_target(i: usize, p: &PurgeConfig, config: &Validated, rules: &RuleSet) -> Result<PurgeTarget, DaemonError> {
    if !p.coalesce.is_zero() && p.coalesce > config.apply.max_batch_delay {
        tracing::warn!(
            target = %p.target_name(i),
            "purge[{i}].coalesce ({:?}) is longer than apply.max_batch_delay ({:?}): what commits during the wait goes as separate batches; raise apply.max_batch_delay to coalesce it",
            p.coalesce,
            config.apply.max_batch_delay
        );
    }
    let token = p.token_env.as_ref().and_then(|name| std::env::var(name).ok());
    PurgeTarget::new(i, p, token, rules, &config.rules.tag_prefix).map_err(|e| {
        DaemonError::Config(match e {
            HttpError::Setup { field, message, .. } => ConfigError::Invalid { field, message },
            other => ConfigError::Invalid {
                field: format!("purge[{i}]"),
                message: other.to_string(),
            },
        })
    })
}
