//! The Redis applier: applies a [`Batch`] of deduplicated actions to one Redis target, with
//! the semantics of `docs/redis-protocol.md`:
//!
//! * `delete`: UNLINK (or DEL), in chunks, one pipelined round trip.
//! * `bump`: the version key becomes the commit LSN (decimal) only if greater than what it
//!   holds — one Lua script call for all keys of the batch, so replay never moves it back.
//! * `tags`: the set `<tag_prefix>T` is drained in chunks by a script that pops members and
//!   unlinks them atomically, so a crash halfway leaves the rest in the set for the replay.
//! * `delete_matching`: SCAN MATCH + UNLINK.
//! * `publish`: one PUBLISH per transaction and channel, after the deletes.
//!
//! Everything is idempotent: applying a batch twice is harmless.

use super::{Batch, Sink, SinkFuture};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use std::time::Duration;
use walbust_core::plan::Actions;

/// Sets each version key to its value when the value is greater (compared as decimal
/// integers without leading zeros: by length, then lexicographically — exact for any u64).
const BUMP_SCRIPT: &str = r"
local changed = 0
for i, key in ipairs(KEYS) do
  local new = ARGV[i]
  local cur = redis.call('GET', key)
  if (not cur) or (#cur < #new) or (#cur == #new and cur < new) then
    redis.call('SET', key, new)
    changed = changed + 1
  end
end
return changed
";

/// Pops up to ARGV[1] members of the tag set KEYS[1] and unlinks them, atomically; returns how
/// many it removed (0 when the set is gone).
const TAG_SCRIPT: &str = r"
local members = redis.call('SPOP', KEYS[1], tonumber(ARGV[1]))
if #members > 0 then
  redis.call(ARGV[2], unpack(members))
end
return #members
";

const CHUNK: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis target {target}: {source}")]
    Redis {
        target: String,
        #[source]
        source: redis::RedisError,
    },
}

/// How deletes are issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteCommand {
    #[default]
    Unlink,
    Del,
}

impl DeleteCommand {
    fn name(self) -> &'static str {
        match self {
            DeleteCommand::Unlink => "UNLINK",
            DeleteCommand::Del => "DEL",
        }
    }
}

enum Backend {
    Single {
        client: redis::Client,
        conn: Option<MultiplexedConnection>,
    },
    Cluster {
        client: redis::cluster::ClusterClient,
        conn: Option<redis::cluster_async::ClusterConnection>,
    },
}

/// One Redis target: a standalone server (or primary), or a Redis Cluster.
pub struct RedisTarget {
    /// The URL with any password removed, for logs and metrics.
    pub name: String,
    backend: Backend,
    pub delete_command: DeleteCommand,
    pub tag_prefix: String,
    bump: redis::Script,
    tag: redis::Script,
    pub round_trips: u64,
    /// When set, every new connection makes sure this epoch key exists (see
    /// [`RedisTarget::with_epoch_key`]).
    epoch_key: Option<String>,
    /// New connections that found the epoch key missing (a fresh or restarted target), since
    /// the last [`RedisTarget::take_epoch_resets`].
    epoch_resets: u64,
}

/// The URL without its password.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
            } else {
                url.to_string()
            }
        }
        _ => url.to_string(),
    }
}

impl RedisTarget {
    pub fn new(url: &str, delete_command: DeleteCommand, tag_prefix: &str) -> Result<RedisTarget, RedisError> {
        RedisTarget::with_mode(url, false, delete_command, tag_prefix)
    }

    /// `cluster`: `url` lists one or more seed nodes, comma-separated.
    pub fn with_mode(
        url: &str,
        cluster: bool,
        delete_command: DeleteCommand,
        tag_prefix: &str,
    ) -> Result<RedisTarget, RedisError> {
        RedisTarget::with_tls(url, cluster, None, delete_command, tag_prefix)
    }

    /// `ca_cert`: a PEM root certificate to trust for `rediss://` instead of the system roots.
    pub fn with_tls(
        url: &str,
        cluster: bool,
        ca_cert: Option<Vec<u8>>,
        delete_command: DeleteCommand,
        tag_prefix: &str,
    ) -> Result<RedisTarget, RedisError> {
        let name = url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
        let err = |source| RedisError::Redis {
            target: name.clone(),
            source,
        };
        let backend = if cluster {
            let seeds: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            Backend::Cluster {
                client: redis::cluster::ClusterClient::builder(seeds)
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(10))
                    .build()
                    .map_err(err)?,
                conn: None,
            }
        } else {
            let client = match ca_cert {
                Some(root_cert) => redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                ),
                None => redis::Client::open(url),
            };
            Backend::Single {
                client: client.map_err(err)?,
                conn: None,
            }
        };
        Ok(RedisTarget {
            name,
            backend,
            delete_command,
            tag_prefix: tag_prefix.to_string(),
            bump: redis::Script::new(BUMP_SCRIPT),
            tag: redis::Script::new(TAG_SCRIPT),
            round_trips: 0,
            epoch_key: None,
            epoch_resets: 0,
        })
    }

    /// Makes every new connection check that the epoch key exists and, when it does not, set it
    /// to the current time in microseconds. A Redis that restarted without persistence (or was
    /// flushed) has lost its version keys, and readers would fall back to version 0 — where an
    /// entry loaded before the restart can be filled back after it. A fresh epoch value, never
    /// used before, makes every such entry unreachable. Microseconds rather than `INCR` from
    /// nothing, because a second cold restart would otherwise land on the same epoch again.
    pub fn with_epoch_key(mut self, key: &str) -> RedisTarget {
        self.epoch_key = Some(key.to_string());
        self
    }

    /// How many fresh epochs were set since the last call (for the metric).
    pub fn take_epoch_resets(&mut self) -> u64 {
        std::mem::take(&mut self.epoch_resets)
    }

    fn err(&self, source: redis::RedisError) -> RedisError {
        RedisError::Redis {
            target: self.name.clone(),
            source,
        }
    }

    async fn connection(&mut self) -> Result<Conn, RedisError> {
        let result = match &mut self.backend {
            Backend::Single { client, conn } => {
                if let Some(c) = conn {
                    return Ok(Conn::Single(c.clone()));
                }
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(10)));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Single)
            }
            Backend::Cluster { client, conn } => {
                if let Some(c) = conn {
                    return Ok(Conn::Cluster(c.clone()));
                }
                client.get_async_connection().await.map(Conn::Cluster)
            }
        };
        let mut fresh = result.map_err(|e| self.err(e))?;
        if let Some(key) = self.epoch_key.clone() {
            let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
                .arg(&key)
                .arg(crate::model::Timestamp::now().0)
                .arg("NX")
                .query_async(&mut fresh)
                .await;
            match set {
                Ok(Some(_)) => {
                    self.epoch_resets += 1;
                    tracing::warn!(
                        target = %self.name,
                        epoch_key = %key,
                        "redis target has no epoch key (new, flushed or restarted without persistence); set a fresh epoch so entries filled before are never read again"
                    );
                }
                Ok(None) => {}
                Err(e) => return Err(self.err(e)),
            }
        }
        match (&mut self.backend, &fresh) {
            (Backend::Single { conn, .. }, Conn::Single(c)) => *conn = Some(c.clone()),
            (Backend::Cluster { conn, .. }, Conn::Cluster(c)) => *conn = Some(c.clone()),
            _ => {}
        }
        Ok(fresh)
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    /// Checks the target answers.
    pub async fn ping(&mut self) -> Result<(), RedisError> {
        let mut conn = self.connection().await?;
        let r: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        self.finish(r).map(|_| ())
    }

    /// Drops the connection after an error, so the next attempt reconnects.
    fn finish<T>(&mut self, r: redis::RedisResult<T>) -> Result<T, RedisError> {
        r.map_err(|e| {
            match &mut self.backend {
                Backend::Single { conn, .. } => *conn = None,
                Backend::Cluster { conn, .. } => *conn = None,
            }
            self.err(e)
        })
    }

    /// Applies a batch. Idempotent; on error, applying the same batch again is correct.
    pub async fn apply(&mut self, batch: &Batch) -> Result<(), RedisError> {
        let actions = batch.merged();
        let mut conn = self.connection().await?;
        if let Conn::Cluster(cluster) = &conn {
            return self.apply_cluster(cluster.clone(), actions).await;
        }
        // Patterns first: SCAN needs its own round trips (rare; discouraged by `check`).
        for pattern in &actions.delete_matching {
            self.delete_matching(&mut conn, pattern).await?;
        }
        // Tags (first chunk of each), deletes, bumps and announcements: one pipelined round trip.
        let tags: Vec<&String> = actions.tags.iter().collect();
        let Some(pipe) = self.pipeline(&tags, actions) else {
            return Ok(());
        };
        // Only the tag scripts' replies are kept: how many members each removed.
        let r: redis::RedisResult<Vec<i64>> = pipe.query_async(&mut conn).await;
        self.round_trips += 1;
        let removed = self.finish(r)?;
        // Large tag sets: keep draining in bounded chunks.
        for (key, first) in tags.iter().zip(removed) {
            if first >= CHUNK as i64 {
                self.drain_tag(&mut conn, key).await?;
            }
        }
        Ok(())
    }

    /// SCAN MATCH `pattern` and delete what it finds.
    async fn delete_matching(&mut self, conn: &mut Conn, pattern: &str) -> Result<(), RedisError> {
        let mut cursor: u64 = 0;
        loop {
            let r: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await;
            self.round_trips += 1;
            let (next, keys) = self.finish(r)?;
            if !keys.is_empty() {
                let r: redis::RedisResult<i64> = redis::cmd(self.delete_command.name())
                    .arg(&keys)
                    .query_async(conn)
                    .await;
                self.round_trips += 1;
                self.finish(r)?;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(());
            }
        }
    }

    /// One pipeline for the batch's tags (first chunk each), deletes, bumps and announcements;
    /// `None` when there is nothing to send.
    fn pipeline(&self, tags: &[&String], actions: &Actions) -> Option<redis::Pipeline> {
        let mut pipe = redis::pipe();
        let mut commands = 0;
        for key in tags {
            pipe.cmd("EVAL")
                .arg(TAG_SCRIPT)
                .arg(1)
                .arg(*key)
                .arg(CHUNK)
                .arg(self.delete_command.name());
            commands += 1;
        }
        let deletes: Vec<&String> = actions.delete.iter().collect();
        for chunk in deletes.chunks(CHUNK) {
            pipe.cmd(self.delete_command.name()).arg(chunk).ignore();
            commands += 1;
        }
        let bumps: Vec<(&String, &u64)> = actions.bump.iter().collect();
        for chunk in bumps.chunks(CHUNK) {
            // EVAL (not EVALSHA): a restarted Redis has no script cache, and the script is short.
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(BUMP_SCRIPT).arg(chunk.len());
            for (key, _) in chunk {
                cmd.arg(*key);
            }
            for (_, value) in chunk {
                cmd.arg(value.to_string());
            }
            pipe.add_command(cmd).ignore();
            commands += 1;
        }
        for (channel, payload) in &actions.publish {
            pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
            commands += 1;
        }
        (commands > 0).then_some(pipe)
    }

    /// Pops and unlinks the rest of a large tag set, a chunk at a time.
    async fn drain_tag(&mut self, conn: &mut Conn, key: &str) -> Result<(), RedisError> {
        loop {
            let r: redis::RedisResult<i64> = self
                .tag
                .key(key)
                .arg(CHUNK)
                .arg(self.delete_command.name())
                .invoke_async(conn)
                .await;
            self.round_trips += 1;
            if self.finish(r)? < CHUNK as i64 {
                return Ok(());
            }
        }
    }

    /// Deletes keys (the delayed second delete of `redelete_after`).
    pub async fn delete_keys(&mut self, keys: &[String]) -> Result<(), RedisError> {
        let mut conn = self.connection().await?;
        for chunk in keys.chunks(CHUNK) {
            let r: redis::RedisResult<i64> = redis::cmd(self.delete_command.name())
                .arg(chunk)
                .query_async(&mut conn)
                .await;
            self.round_trips += 1;
            self.finish(r)?;
        }
        Ok(())
    }

    /// Increments the global epoch key (a gap in the slot's history: forget everything).
    pub async fn bump_epoch(&mut self, key: &str) -> Result<i64, RedisError> {
        let mut conn = self.connection().await?;
        let r: redis::RedisResult<i64> = redis::cmd("INCR").arg(key).query_async(&mut conn).await;
        self.finish(r)
    }

    /// The number of keys, for tests and `status`.
    pub async fn keys(&mut self, pattern: &str) -> Result<Vec<String>, RedisError> {
        let mut conn = self.connection().await?;
        let r: redis::RedisResult<Vec<String>> = redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await;
        self.finish(r)
    }

    /// Loads the bump script into the script cache (checks scripting is allowed).
    pub async fn prepare(&mut self) -> Result<(), RedisError> {
        let mut conn = self.connection().await?;
        let r: redis::RedisResult<String> = self.bump.prepare_invoke().load_async(&mut conn).await;
        self.finish(r).map(|_| ())
    }
}

/// The epoch key when none was configured (`apply.epoch_key`'s default).
pub const DEFAULT_EPOCH_KEY: &str = "walbust:epoch";

impl RedisTarget {
    /// `<epoch key>:gap`: present while a gap is being recovered (see [`Sink::mark_gap`]).
    fn gap_key(&self) -> String {
        let epoch = self.epoch_key.as_deref().unwrap_or(DEFAULT_EPOCH_KEY);
        format!("{epoch}:gap")
    }
}

impl Sink for RedisTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn apply<'a>(&'a mut self, batch: &'a Batch) -> SinkFuture<'a, ()> {
        Box::pin(async move { Ok(RedisTarget::apply(self, batch).await?) })
    }

    fn ping(&mut self) -> SinkFuture<'_, ()> {
        Box::pin(async move { Ok(RedisTarget::ping(self).await?) })
    }

    fn bump_epoch(&mut self) -> SinkFuture<'_, Option<i64>> {
        Box::pin(async move {
            let key = self.epoch_key.clone().unwrap_or_else(|| DEFAULT_EPOCH_KEY.to_string());
            Ok(Some(RedisTarget::bump_epoch(self, &key).await?))
        })
    }

    fn mark_gap(&mut self) -> SinkFuture<'_, ()> {
        Box::pin(async move {
            let key = self.gap_key();
            let mut conn = self.connection().await?;
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg(&key)
                .arg(crate::model::Timestamp::now().to_string())
                .query_async(&mut conn)
                .await;
            Ok(self.finish(r)?)
        })
    }

    fn gap_pending(&mut self) -> SinkFuture<'_, bool> {
        Box::pin(async move {
            let key = self.gap_key();
            let mut conn = self.connection().await?;
            let r: redis::RedisResult<bool> = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await;
            Ok(self.finish(r)?)
        })
    }

    fn clear_gap(&mut self) -> SinkFuture<'_, ()> {
        Box::pin(async move {
            let key = self.gap_key();
            let mut conn = self.connection().await?;
            let r: redis::RedisResult<()> = redis::cmd("DEL").arg(&key).query_async(&mut conn).await;
            Ok(self.finish(r)?)
        })
    }

    fn take_round_trips(&mut self) -> u64 {
        std::mem::take(&mut self.round_trips)
    }

    fn take_epoch_resets(&mut self) -> u64 {
        RedisTarget::take_epoch_resets(self)
    }
}

/// A connection to either kind of target.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Redis Cluster hash slot of a key (CRC16/XMODEM of the key or its `{hash tag}`, mod 16384).
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            key[open + 1..]
                .iter()
                .position(|&b| b == b'}')
                .filter(|&len| len > 0)
                .map(|len| &key[open + 1..open + 1 + len])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

impl RedisTarget {
    /// Redis Cluster: no cross-slot commands. Keys are grouped per hash slot into pipelines sent
    /// concurrently; a tag set is drained by reading members, unlinking them, and only then
    /// removing them from the set (a crash halfway leaves the rest for the replay).
    async fn apply_cluster(
        &mut self,
        conn: redis::cluster_async::ClusterConnection,
        actions: &Actions,
    ) -> Result<(), RedisError> {
        if !actions.delete_matching.is_empty() {
            return Err(self.err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "delete_matching is not supported on Redis Cluster targets (SCAN is per node); use tags or version keys",
            ))));
        }
        let mut per_slot: std::collections::HashMap<u16, redis::Pipeline> = std::collections::HashMap::new();
        for key in &actions.delete {
            per_slot
                .entry(key_slot(key.as_bytes()))
                .or_default()
                .cmd(self.delete_command.name())
                .arg(key)
                .ignore();
        }
        for (key, version) in &actions.bump {
            per_slot
                .entry(key_slot(key.as_bytes()))
                .or_default()
                .cmd("EVAL")
                .arg(BUMP_SCRIPT)
                .arg(1)
                .arg(key)
                .arg(version.to_string())
                .ignore();
        }
        self.run_pipelines(&conn, per_slot).await?;
        for tag in &actions.tags {
            loop {
                let mut c = conn.clone();
                let r: redis::RedisResult<Vec<String>> =
                    redis::cmd("SRANDMEMBER").arg(tag).arg(CHUNK).query_async(&mut c).await;
                self.round_trips += 1;
                let members = self.finish(r)?;
                if members.is_empty() {
                    break;
                }
                let mut per_slot: std::collections::HashMap<u16, redis::Pipeline> = std::collections::HashMap::new();
                for m in &members {
                    per_slot
                        .entry(key_slot(m.as_bytes()))
                        .or_default()
                        .cmd(self.delete_command.name())
                        .arg(m)
                        .ignore();
                }
                self.run_pipelines(&conn, per_slot).await?;
                let r: redis::RedisResult<i64> = redis::cmd("SREM").arg(tag).arg(&members).query_async(&mut c).await;
                self.round_trips += 1;
                self.finish(r)?;
            }
        }
        for (channel, payload) in &actions.publish {
            let mut c = conn.clone();
            let r: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async(&mut c)
                .await;
            self.round_trips += 1;
            self.finish(r)?;
        }
        Ok(())
    }

    async fn run_pipelines(
        &mut self,
        conn: &redis::cluster_async::ClusterConnection,
        pipelines: std::collections::HashMap<u16, redis::Pipeline>,
    ) -> Result<(), RedisError> {
        let mut tasks = tokio::task::JoinSet::new();
        for (_, pipe) in pipelines {
            let mut c = conn.clone();
            tasks.spawn(async move { pipe.query_async::<()>(&mut c).await });
            self.round_trips += 1;
        }
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(e) => {
                    first_error = first_error.or(Some(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "apply task failed",
                        e.to_string(),
                    ))))
                }
            }
        }
        match first_error {
            Some(e) => self.finish(Err(e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_slots() {
        // Known values from the Redis Cluster specification.
        assert_eq!(key_slot(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"a"), key_slot(b"b"));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://:secret@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("redis://user:secret@host"), "redis://user:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("rediss://u@host"), "rediss://u@host");
    }
}
