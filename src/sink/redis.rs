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
//! * the watermark: `<epoch key>:watermark`, a hash of `lsn`, `system`, `timeline` and `at`,
//!   written in the same pipeline once a batch's work is complete in the target (a batch with
//!   tags, whose drain may take more round trips, is recorded with the next pipeline or idle
//!   check). Every reconnect and idle ping reads it back: less than was written is a rollback.
//!
//! Everything is idempotent: applying a batch twice is harmless.

use super::{Batch, Lsn, Origin, Rollback, Sink, SinkFuture, Watermark, WatermarkState};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use std::time::Duration;
use walbust_client::feed::{self, FeedEntry};
use walbust_core::plan::Actions;

/// Moves each version key to a value it never held: the commit position when that is greater
/// (compared as decimal integers without leading zeros: by length, then lexicographically —
/// exact for any u64), else one more than it holds. The second case is a replay (one extra
/// miss, never a return to an old version) or a position of a new timeline after a failover,
/// which can be lower than what the key holds: the version must still change. A key of another
/// type (or a string that is not a number) is replaced; the script returns those keys.
const BUMP_SCRIPT: &str = r"
local wrong = {}
for i, key in ipairs(KEYS) do
  local new = ARGV[i]
  local cur = redis.pcall('GET', key)
  if type(cur) == 'table' and cur.err then
    redis.call('UNLINK', key)
    cur = false
    table.insert(wrong, key)
  end
  if (not cur) or (#cur < #new) or (#cur == #new and cur < new) then
    redis.call('SET', key, new)
  else
    local moved = redis.pcall('INCR', key)
    if type(moved) == 'table' and moved.err then
      redis.call('SET', key, new)
      table.insert(wrong, key)
    end
  end
end
return wrong
";

/// Pops up to ARGV[1] members of the tag set KEYS[1] and unlinks them, atomically; returns how
/// many it removed (0 when the set is gone; -1 when the key was not a set: it is unlinked). When the set may hold more (a full chunk) and a
/// watermark KEYS[2] is given, marks it `draining`: the batch is not complete until the rest is
/// drained in later round trips, so the watermark must not claim it yet.
const TAG_SCRIPT: &str = r"
local members = redis.pcall('SPOP', KEYS[1], tonumber(ARGV[1]))
if type(members) == 'table' and members.err then
  redis.call('UNLINK', KEYS[1])
  return -1
end
if #members > 0 then
  redis.call(ARGV[2], unpack(members))
end
if KEYS[2] and #members >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[2], 'draining', '1')
end
return #members
";

/// Advances the watermark KEYS[1] to ARGV = lsn, system, timeline, at — unless a tag of the same
/// pipeline is still draining (see [`TAG_SCRIPT`]). Returns 1 when it advanced. It never moves
/// back on the same server and timeline: a replay after a rollback applies positions below
/// what the target kept, and lowering the mark would read as a second rollback.
const WATERMARK_SCRIPT: &str = r"
if redis.call('HEXISTS', KEYS[1], 'draining') == 1 then
  return 0
end
local cur = redis.call('HMGET', KEYS[1], 'lsn', 'system', 'timeline')
local lsn = ARGV[1]
if cur[1] and cur[2] == ARGV[2] and cur[3] == ARGV[3] and tonumber(cur[1]) > tonumber(ARGV[1]) then
  lsn = cur[1]
end
redis.call('HSET', KEYS[1], 'lsn', lsn, 'system', ARGV[2], 'timeline', ARGV[3], 'at', ARGV[4])
return 1
";

/// The watermark on a Redis Cluster primary, checked and set in one step: ARGV as
/// [`WATERMARK_SCRIPT`], plus ARGV[5], the position walbust last knew there (0: none). A cluster
/// connection repairs itself without telling (a shard restarted from a snapshot, or empty, looks
/// like a slow round trip), so every batch checks what the shard holds: when it is less than
/// ARGV[5] (or nothing), the shard went back — the script leaves the watermark as it is (a crash
/// now must still find the loss) and returns what it found. Returns the stored position (-1:
/// none) or -2 while a tag drains.
const SHARD_WATERMARK_SCRIPT: &str = r"
if redis.call('HEXISTS', KEYS[1], 'draining') == 1 then
  return -2
end
local cur = redis.call('HMGET', KEYS[1], 'lsn', 'system', 'timeline')
local stored = tonumber(cur[1] or '-1') or -1
local expected = tonumber(ARGV[5])
if expected > 0 and stored < expected then
  return stored
end
local lsn = ARGV[1]
if cur[1] and cur[2] == ARGV[2] and cur[3] == ARGV[3] and stored > tonumber(ARGV[1]) then
  lsn = cur[1]
end
redis.call('HSET', KEYS[1], 'lsn', lsn, 'system', ARGV[2], 'timeline', ARGV[3], 'at', ARGV[4])
return stored
";

/// Moves the epoch KEYS[1] to a value never used before: one more than it holds, or the current
/// time in microseconds (ARGV[1]) when that is greater. Not a plain INCR: a Redis restored from
/// an older snapshot holds an older epoch, and INCR would land on one already handed out — and
/// entries filled under it would be readable again.
const EPOCH_SCRIPT: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local new = math.max(cur + 1, tonumber(ARGV[1]))
redis.call('SET', KEYS[1], string.format('%d', new))
return new
";

const CHUNK: usize = 500;
/// Keys per round trip at most: a batch with more (a streamed transaction's commit) sends its
/// deletes and bumps ahead in round trips of this size, so no single round trip can run into the
/// response timeout.
const ROUND_TRIP_KEYS: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis target {target}: {source}{}", hint(source))]
    Redis {
        target: String,
        #[source]
        source: redis::RedisError,
    },
}

impl RedisError {
    /// What kind of failure, for `walbust_redis_errors_total{kind}` and for how loudly to say
    /// it: `permission` and `configuration` do not go away by retrying.
    pub fn kind(&self) -> &'static str {
        let RedisError::Redis { source, .. } = self;
        error_kind(source)
    }
}

fn error_kind(e: &redis::RedisError) -> &'static str {
    match e.code() {
        Some("NOPERM" | "NOAUTH" | "WRONGPASS") => return "permission",
        Some("MOVED" | "ASK" | "CROSSSLOT" | "CLUSTERDOWN") => return "configuration",
        Some("READONLY") => return "readonly",
        Some("WRONGTYPE") => return "wrongtype",
        Some("OOM") => return "out_of_memory",
        _ => {}
    }
    let text = e.to_string();
    if text.contains("cluster support disabled") || text.contains("NOSCRIPT") || text.contains("unknown command") {
        return "configuration";
    }
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return "permission";
    }
    if e.is_timeout() {
        return "timeout";
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        return "connection";
    }
    "other"
}

/// What to do about errors that retrying does not fix.
fn hint(e: &redis::RedisError) -> &'static str {
    match error_kind(e) {
        "permission" => "; the user lacks a permission walbust needs (UNLINK/DEL, SET, GET, INCR, HSET, HGET, HMGET, HDEL, SPOP, SCAN, PUBLISH, EVAL, WAIT on its keys): fix the ACL or the password",
        "configuration" => "; the target's mode does not match the configuration: set redis[].cluster to whether it is a Redis Cluster, and allow scripting (EVAL)",
        "readonly" => "; the target is a read-only replica: point redis[].url at the primary",
        "out_of_memory" => "; the target is out of memory (maxmemory with noeviction): raise maxmemory or use an evicting policy",
        _ => "",
    }
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
    /// The server the positions belong to (written into the watermark).
    origin: Origin,
    /// The highest position whose work is complete in the target.
    complete: Option<Lsn>,
    /// The watermark known to be in the target (what a rollback is measured against).
    in_target: Option<Lsn>,
    /// Redis Cluster: one watermark per primary, so any shard's rollback or empty restart is
    /// seen (refreshed from the topology on every new connection).
    shard_marks: Vec<ShardMark>,
    /// Redis Cluster: which primary serves which slots, for one pipeline per node.
    slot_owners: Vec<SlotOwner>,
    /// A rollback seen and not yet taken by the daemon.
    rollback: Option<Rollback>,
    /// Keys of the wrong type replaced, since the last [`Sink::take_wrong_types`].
    wrong_types: u64,
    /// `WAIT <replicas> <timeout>` after every pipeline: the batch counts as applied only once
    /// that many replicas have it.
    wait: Option<(u32, Duration)>,
    /// The invalidation feed for in-process caches (see [`RedisTarget::with_feed`]).
    feed: Option<Feed>,
}

/// Where a target appends its invalidation feed.
#[derive(Clone, Debug)]
struct Feed {
    stream: String,
    maxlen: u64,
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
                    .tcp_settings(walbust_client::tcp_settings())
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(10))
                    .build()
                    .map_err(err)?,
                conn: None,
            }
        } else {
            let info = walbust_client::connection_info(url).map_err(err)?;
            let client = match ca_cert {
                Some(root_cert) => redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                ),
                None => redis::Client::open(info),
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
            origin: Origin::default(),
            complete: None,
            in_target: None,
            shard_marks: Vec::new(),
            slot_owners: Vec::new(),
            rollback: None,
            wrong_types: 0,
            wait: None,
            feed: None,
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

    /// Makes every pipeline end with `WAIT replicas timeout`: a batch is applied only once that
    /// many replicas acknowledged it, so promoting one of them loses nothing acknowledged.
    pub fn with_wait(mut self, replicas: u32, timeout: Duration) -> RedisTarget {
        self.wait = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Makes every applied batch append its keys to the Redis Stream `stream` (trimmed to about
    /// `maxlen` entries), after the deletes and bumps and in the same pipeline, so a node that
    /// reads an entry finds the keys already gone from Redis (see `walbust_client::feed`).
    pub fn with_feed(mut self, stream: &str, maxlen: u64) -> RedisTarget {
        self.feed = Some(Feed {
            stream: stream.to_string(),
            maxlen,
        });
        self
    }

    /// The batch's keys as feed entries (none without a feed).
    fn feed_entries(&self, actions: &Actions, lsn: Option<Lsn>) -> Vec<FeedEntry> {
        if self.feed.is_none() || actions.is_empty() {
            return Vec::new();
        }
        feed::entries(
            lsn.map(|l| l.to_string()),
            actions.delete.iter(),
            actions.bump.keys(),
            actions.tags.iter(),
            actions.delete_matching.iter(),
            feed::MAX_KEYS_PER_ENTRY,
        )
    }

    /// `XADD` of each entry into `pipe` (replies ignored); returns the number of commands.
    fn add_feed(&self, pipe: &mut redis::Pipeline, entries: &[FeedEntry]) -> usize {
        let Some(f) = &self.feed else { return 0 };
        for entry in entries {
            let cmd = pipe
                .cmd("XADD")
                .arg(&f.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(f.maxlen)
                .arg("*");
            for (name, value) in entry.fields() {
                cmd.arg(name).arg(value);
            }
            cmd.ignore();
        }
        entries.len()
    }

    /// Appends `entries` in a round trip of their own.
    async fn send_feed(&mut self, conn: &mut Conn, entries: &[FeedEntry]) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        if self.add_feed(&mut pipe, entries) == 0 {
            return Ok(());
        }
        let r: redis::RedisResult<()> = pipe.query_async(conn).await;
        self.round_trips += 1;
        self.finish(r)
    }

    /// `<epoch key>:watermark`, kept only by targets with an epoch key (not by the second
    /// connection used for delayed re-deletes).
    fn watermark_key(&self) -> Option<String> {
        self.epoch_key.as_ref().map(|epoch| format!("{epoch}:watermark"))
    }

    /// The watermark goes last in a pipeline: a target loses a suffix of what it was sent (AOF,
    /// replication) or keeps a point in time (RDB), so a watermark it holds covers everything
    /// sent before it.
    fn add_watermark(&self, pipe: &mut redis::Pipeline, key: &str, lsn: Lsn) {
        pipe.cmd("EVAL")
            .arg(WATERMARK_SCRIPT)
            .arg(1)
            .arg(key)
            .arg(lsn.0)
            .arg(&self.origin.system)
            .arg(self.origin.timeline)
            .arg(crate::model::Timestamp::now().0)
            .ignore();
    }

    /// Reads the watermark back (and writes a completed position not yet recorded). Less than
    /// was written before is a rollback, kept for [`Sink::take_rollback`]. Without a watermark
    /// this is a PING.
    async fn check_watermark(&mut self, conn: &mut Conn) -> Result<(), RedisError> {
        if let (Conn::Cluster(cluster), Some(_)) = (&*conn, self.watermark_key()) {
            return self.check_shard_watermarks(cluster.clone()).await;
        }
        let Some(key) = self.watermark_key() else {
            let r: redis::RedisResult<String> = redis::cmd("PING").query_async(conn).await;
            return self.finish(r).map(|_| ());
        };
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(&key).arg("lsn");
        let write = self.complete.filter(|c| Some(*c) > self.in_target);
        if let Some(lsn) = write {
            self.add_watermark(&mut pipe, &key, lsn);
        }
        let r: redis::RedisResult<(Option<String>,)> = pipe.query_async(conn).await;
        self.round_trips += 1;
        let (stored,) = self.finish(r)?;
        let stored = stored.and_then(|v| v.parse::<u64>().ok()).map(Lsn);
        if let Some(had) = self.in_target {
            if stored.is_none_or(|now| now < had) {
                self.rollback = Some(Rollback { had, now: stored });
                // Measured from what it holds now; the replay or the bump writes it again.
                self.complete = stored;
                self.in_target = stored;
            }
        }
        if self.rollback.is_none() {
            self.in_target = self.in_target.max(write);
        }
        Ok(())
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
        if let Conn::Cluster(cluster) = &fresh {
            self.refresh_shards(cluster.clone()).await?;
        }
        // A reconnect may be to a server that restarted or was replaced: compare before use.
        if self.in_target.is_some() || self.shard_marks.iter().any(|m| m.in_target.is_some()) {
            self.check_watermark(&mut fresh).await?;
        }
        Ok(fresh)
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    /// Checks the target answers, and that it still holds what it was sent (the watermark).
    pub async fn ping(&mut self) -> Result<(), RedisError> {
        let mut conn = self.connection().await?;
        self.check_watermark(&mut conn).await
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
            self.apply_cluster(cluster.clone(), actions, batch.last_end).await?;
            let entries = self.feed_entries(actions, batch.last_end);
            self.send_feed(&mut conn, &entries).await?;
            // A shard found rolled back: the batch is replayed with everything after the
            // acknowledged position, so it does not complete here.
            if self.rollback.is_none() {
                self.completed(batch.last_end);
            }
            return Ok(());
        }
        // Patterns first: SCAN needs its own round trips (rare; discouraged by `check`).
        for pattern in &actions.delete_matching {
            self.delete_matching(&mut conn, pattern).await?;
        }
        // Tags (first chunk of each), deletes, bumps and announcements: one pipelined round trip.
        let tags: Vec<&String> = actions.tags.iter().collect();
        let ahead = actions.delete.len() + actions.bump.len() > ROUND_TRIP_KEYS;
        if ahead {
            self.apply_keys_ahead(&mut conn, actions).await?;
        }
        let feed_entries = self.feed_entries(actions, batch.last_end);
        let Some(mut pipe) = self.pipeline(&tags, actions, !ahead, &feed_entries) else {
            self.completed(batch.last_end);
            return Ok(());
        };
        // The watermark goes with the work it covers (see TAG_SCRIPT for tags that need more
        // round trips to drain).
        let watermark_key = self.watermark_key();
        let watermark = match (&watermark_key, batch.last_end) {
            (Some(key), Some(end)) => {
                self.add_watermark(&mut pipe, key, end);
                Some(end)
            }
            _ => None,
        };
        if let Some((replicas, timeout)) = self.wait {
            pipe.cmd("WAIT").arg(replicas).arg(timeout.as_millis() as u64);
        }
        // Replies kept: each tag script's (members removed, -1 for a key that was not a set),
        // each bump chunk's (keys of the wrong type it replaced), then WAIT's.
        let r: redis::RedisResult<Vec<redis::Value>> = pipe.query_async(&mut conn).await;
        self.round_trips += 1;
        let mut replies = self.finish(r)?;
        let wait_reply = match self.wait {
            Some(_) => replies.pop().and_then(|v| redis::from_redis_value::<i64>(v).ok()),
            None => None,
        };
        let bumps = replies.split_off(tags.len().min(replies.len()));
        let removed: Vec<i64> = replies
            .into_iter()
            .map(|v| redis::from_redis_value::<i64>(v).unwrap_or(0))
            .collect();
        let mut wrong: Vec<String> = tags
            .iter()
            .zip(&removed)
            .filter(|(_, n)| **n < 0)
            .map(|(key, _)| (*key).clone())
            .collect();
        for reply in bumps {
            wrong.extend(redis::from_redis_value::<Vec<String>>(reply).unwrap_or_default());
        }
        self.replaced_wrong_types(&wrong);
        if let (Some((replicas, timeout)), Some(acknowledged)) = (self.wait, wait_reply) {
            if acknowledged < i64::from(replicas) {
                return Err(self.err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "WAIT: not enough replicas acknowledged the batch",
                    format!(
                        "{acknowledged} of {replicas} within {timeout:?} (redis[].wait_replicas); applying it again"
                    ),
                ))));
            }
        }
        // Large tag sets: keep draining in bounded chunks; then the watermark may advance.
        let mut drained = false;
        for (key, first) in tags.iter().zip(removed) {
            if first >= CHUNK as i64 {
                self.drain_tag(&mut conn, key).await?;
                drained = true;
            }
        }
        if let (true, Some(key), Some(end)) = (drained, &watermark_key, watermark) {
            let mut pipe = redis::pipe();
            pipe.cmd("HDEL").arg(key).arg("draining").ignore();
            // Again after the drain: a node that reloaded a drained key from Redis in between
            // drops it now.
            self.add_feed(&mut pipe, &feed_entries);
            self.add_watermark(&mut pipe, key, end);
            let r: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
            self.round_trips += 1;
            self.finish(r)?;
        }
        self.in_target = self.in_target.max(watermark);
        self.completed(batch.last_end);
        Ok(())
    }

    /// Keys that held another type than walbust writes there (a tag that is not a set, a
    /// version key that is not a number) were unlinked and written again: said and counted,
    /// because something else writes walbust's keys.
    fn replaced_wrong_types(&mut self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        self.wrong_types += keys.len() as u64;
        tracing::warn!(
            target = %self.name,
            keys = ?keys,
            "keys of the wrong type (WRONGTYPE: a tag that is not a set, a version key that is not a number) were unlinked and written again; find what else writes these keys"
        );
    }

    /// Everything up to `end` is complete in the target.
    fn completed(&mut self, end: Option<Lsn>) {
        self.complete = self.complete.max(end);
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
    /// `keys`: include the deletes and bumps (false when [`RedisTarget::apply_keys_ahead`] sent
    /// them already).
    /// `feed`: entries appended after the keys (see [`RedisTarget::with_feed`]).
    fn pipeline(&self, tags: &[&String], actions: &Actions, keys: bool, feed: &[FeedEntry]) -> Option<redis::Pipeline> {
        let mut pipe = redis::pipe();
        let mut commands = 0;
        let watermark = self.watermark_key();
        if let (Some(key), false) = (&watermark, tags.is_empty()) {
            // A mark left by an attempt that failed halfway: this attempt drains again.
            pipe.cmd("HDEL").arg(key).arg("draining").ignore();
        }
        for key in tags {
            let cmd = pipe.cmd("EVAL").arg(TAG_SCRIPT);
            match &watermark {
                Some(watermark) => cmd.arg(2).arg(*key).arg(watermark),
                None => cmd.arg(1).arg(*key),
            };
            cmd.arg(CHUNK).arg(self.delete_command.name());
            commands += 1;
        }
        if keys {
            let deletes: Vec<&String> = actions.delete.iter().collect();
            let bumps: Vec<(&String, &u64)> = actions.bump.iter().collect();
            commands += self.add_keys(&mut pipe, &deletes, &bumps);
        }
        for (channel, payload) in &actions.publish {
            pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
            commands += 1;
        }
        commands += self.add_feed(&mut pipe, feed);
        (commands > 0).then_some(pipe)
    }

    /// Deletes (one command per [`CHUNK`] keys) and bump scripts into `pipe`; bump replies are
    /// kept (keys of the wrong type). Returns the number of commands.
    fn add_keys(&self, pipe: &mut redis::Pipeline, deletes: &[&String], bumps: &[(&String, &u64)]) -> usize {
        let mut commands = 0;
        for chunk in deletes.chunks(CHUNK) {
            pipe.cmd(self.delete_command.name()).arg(chunk).ignore();
            commands += 1;
        }
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
            pipe.add_command(cmd);
            commands += 1;
        }
        commands
    }

    /// A batch larger than one round trip's worth: its deletes and bumps go ahead in round trips
    /// of [`ROUND_TRIP_KEYS`] keys (idempotent; the watermark waits for the last pipeline).
    async fn apply_keys_ahead(&mut self, conn: &mut Conn, actions: &Actions) -> Result<(), RedisError> {
        let deletes: Vec<&String> = actions.delete.iter().collect();
        let bumps: Vec<(&String, &u64)> = actions.bump.iter().collect();
        let delete_chunks = deletes.chunks(ROUND_TRIP_KEYS).map(|d| (d, &[][..]));
        let bump_chunks = bumps.chunks(ROUND_TRIP_KEYS).map(|b| (&[][..], b));
        for (deletes, bumps) in delete_chunks.chain(bump_chunks) {
            let mut pipe = redis::pipe();
            self.add_keys(&mut pipe, deletes, bumps);
            let r: redis::RedisResult<Vec<redis::Value>> = pipe.query_async(conn).await;
            self.round_trips += 1;
            let mut wrong = Vec::new();
            for reply in self.finish(r)? {
                wrong.extend(redis::from_redis_value::<Vec<String>>(reply).unwrap_or_default());
            }
            self.replaced_wrong_types(&wrong);
        }
        Ok(())
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
        if self.feed.is_some() {
            let nothing = std::iter::empty;
            let entries = feed::entries(
                None,
                keys.iter(),
                nothing(),
                nothing(),
                nothing(),
                feed::MAX_KEYS_PER_ENTRY,
            );
            self.send_feed(&mut conn, &entries).await?;
        }
        Ok(())
    }

    /// Moves the global epoch key to a value never used before (a gap in the slot's history:
    /// forget everything).
    pub async fn bump_epoch(&mut self, key: &str) -> Result<i64, RedisError> {
        let mut conn = self.connection().await?;
        let r: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(EPOCH_SCRIPT)
            .arg(1)
            .arg(key)
            .arg(crate::model::Timestamp::now().0)
            .query_async(&mut conn)
            .await;
        let epoch = self.finish(r)?;
        // Followers flush at once instead of at their next epoch check.
        self.send_feed(&mut conn, &[FeedEntry::flush("epoch")]).await?;
        Ok(epoch)
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

    fn set_origin(&mut self, origin: &Origin) {
        if self.origin != *origin {
            self.origin = origin.clone();
        }
    }

    fn read_watermark(&mut self) -> SinkFuture<'_, WatermarkState> {
        Box::pin(async move {
            let Some(key) = self.watermark_key() else {
                return Ok(WatermarkState::NotKept);
            };
            let mut conn = self.connection().await?;
            if let Conn::Cluster(cluster) = &conn {
                return Ok(self.read_shard_watermarks(cluster.clone()).await?);
            }
            // A `draining` mark left by a process that stopped halfway through a large tag
            // belongs to a batch after the watermark, which the slot sends again.
            let r: redis::RedisResult<(StoredWatermark,)> = redis::pipe()
                .cmd("HMGET")
                .arg(&key)
                .arg("lsn")
                .arg("system")
                .arg("timeline")
                .cmd("HDEL")
                .arg(&key)
                .arg("draining")
                .ignore()
                .query_async(&mut conn)
                .await;
            let ((lsn, system, timeline),) = self.finish(r)?;
            let Some(lsn) = lsn.and_then(|l| l.parse::<u64>().ok()).map(Lsn) else {
                return Ok(WatermarkState::Missing);
            };
            self.in_target = Some(lsn);
            self.complete = Some(lsn);
            Ok(WatermarkState::Found(Watermark {
                lsn,
                origin: Origin {
                    system: system.unwrap_or_default(),
                    timeline: timeline.unwrap_or(0),
                },
            }))
        })
    }

    fn take_rollback(&mut self) -> Option<Rollback> {
        self.rollback.take()
    }

    fn take_wrong_types(&mut self) -> u64 {
        std::mem::take(&mut self.wrong_types)
    }
}

/// The watermark's `lsn`, `system` and `timeline` fields as stored.
type StoredWatermark = (Option<String>, Option<String>, Option<u32>);

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

/// A cluster shard's watermark key and what it is known to hold.
struct ShardMark {
    key: String,
    in_target: Option<Lsn>,
}

/// A range of hash slots and the primary serving it.
struct SlotOwner {
    start: u16,
    end: u16,
    host: String,
    port: u16,
}

/// A short hash tag whose key slot is `slot` (the first decimal number that lands there).
pub fn tag_for_slot(slot: u16) -> String {
    (0u32..)
        .map(|n| n.to_string())
        .find(|tag| key_slot(tag.as_bytes()) == slot)
        .unwrap_or_default()
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
        last_end: Option<Lsn>,
    ) -> Result<(), RedisError> {
        if !actions.delete_matching.is_empty() {
            return Err(self.err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "delete_matching is not supported on Redis Cluster targets (SCAN is per node); use tags or version keys",
            ))));
        }
        let mut per_slot = self.unlink_per_slot(&actions.delete);
        // Version keys: one script call per hash slot for all of its keys.
        let mut bumps_per_slot: std::collections::HashMap<u16, Vec<(&String, &u64)>> = std::collections::HashMap::new();
        for (key, version) in &actions.bump {
            bumps_per_slot
                .entry(key_slot(key.as_bytes()))
                .or_default()
                .push((key, version));
        }
        for (slot, bumps) in bumps_per_slot {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(BUMP_SCRIPT).arg(bumps.len());
            for (key, _) in &bumps {
                cmd.arg(*key);
            }
            for (_, version) in &bumps {
                cmd.arg(version.to_string());
            }
            per_slot.entry(slot).or_default().add_command(cmd).ignore();
        }
        self.run_pipelines(&conn, per_slot).await?;
        // A tag's members: read a chunk, unlink them, remove them from the set, unlink them
        // again. A crash before the SREM leaves them in the set for the replay; a reader that
        // refilled a member between the first UNLINK and the SREM (and filed it under the tag
        // again) is caught by the second UNLINK, instead of being dropped from the set with its
        // stale value in place.
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
                self.run_pipelines(&conn, self.unlink_per_slot(&members)).await?;
                let r: redis::RedisResult<i64> = redis::cmd("SREM").arg(tag).arg(&members).query_async(&mut c).await;
                self.round_trips += 1;
                self.finish(r)?;
                self.run_pipelines(&conn, self.unlink_per_slot(&members)).await?;
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
        if let Some(end) = last_end {
            // Last, on every primary: each shard's watermark covers what was sent to it.
            self.write_shard_watermarks(&conn, end).await?;
        }
        Ok(())
    }

    /// Writes `end` as every primary's watermark with [`SHARD_WATERMARK_SCRIPT`], all primaries
    /// at once. A primary holding less than walbust last wrote there is a rollback (kept for
    /// [`Sink::take_rollback`]; the batch then does not count).
    async fn write_shard_watermarks(
        &mut self,
        conn: &redis::cluster_async::ClusterConnection,
        end: Lsn,
    ) -> Result<(), RedisError> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, mark) in self.shard_marks.iter().enumerate() {
            let mut script = redis::cmd("EVAL");
            script
                .arg(SHARD_WATERMARK_SCRIPT)
                .arg(1)
                .arg(&mark.key)
                .arg(end.0)
                .arg(&self.origin.system)
                .arg(self.origin.timeline)
                .arg(crate::model::Timestamp::now().0)
                .arg(mark.in_target.map_or(0, |l| l.0));
            let mut c = conn.clone();
            tasks.spawn(async move { (i, script.query_async::<i64>(&mut c).await) });
            self.round_trips += 1;
        }
        let mut replies = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (i, reply) = joined.map_err(|e| {
                self.err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "watermark task failed",
                    e.to_string(),
                )))
            })?;
            replies.push((i, self.finish(reply)?));
        }
        for (i, stored) in replies {
            let mark = &mut self.shard_marks[i];
            let now = u64::try_from(stored).ok().map(Lsn);
            match mark.in_target {
                Some(had) if stored != -2 && now.is_none_or(|now| now < had) => {
                    self.rollback = Some(Rollback { had, now });
                    mark.in_target = now;
                    self.complete = self.complete.min(now);
                }
                _ if stored == -2 => {}
                _ => mark.in_target = mark.in_target.max(Some(end)),
            }
        }
        Ok(())
    }

    /// Reads the topology (`CLUSTER SLOTS`): which primary serves which slots (for one
    /// pipeline per node), and one watermark key per primary, with a hash tag in a slot it
    /// serves. Marks of primaries that remain keep what they know.
    async fn refresh_shards(&mut self, conn: redis::cluster_async::ClusterConnection) -> Result<(), RedisError> {
        let mut c = conn;
        let r: redis::RedisResult<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await;
        self.round_trips += 1;
        let ranges = self.finish(r)?;
        let mut owners: Vec<SlotOwner> = Vec::new();
        for range in ranges {
            let Ok(fields) = redis::from_redis_value::<Vec<redis::Value>>(range) else {
                continue;
            };
            let mut fields = fields.into_iter();
            let (Some(start), Some(end), Some(primary)) = (fields.next(), fields.next(), fields.next()) else {
                continue;
            };
            let (Ok(start), Ok(end), Ok(primary)) = (
                redis::from_redis_value::<u16>(start),
                redis::from_redis_value::<u16>(end),
                redis::from_redis_value::<Vec<redis::Value>>(primary),
            ) else {
                continue;
            };
            let mut primary = primary.into_iter();
            let (Some(Ok(host)), Some(Ok(port))) = (
                primary.next().map(redis::from_redis_value::<String>),
                primary.next().map(redis::from_redis_value::<u16>),
            ) else {
                continue;
            };
            owners.push(SlotOwner { start, end, host, port });
        }
        // Sorted by first slot: `owner` looks a slot up by binary search (once per slot of a batch).
        owners.sort_by_key(|o| o.start);
        self.slot_owners = owners;
        let Some(base) = self.watermark_key() else {
            return Ok(());
        };
        let mut primaries: Vec<(&str, u16, u16)> = Vec::new();
        for o in &self.slot_owners {
            if !primaries.iter().any(|(h, p, _)| *h == o.host && *p == o.port) {
                primaries.push((&o.host, o.port, o.start));
            }
        }
        let old = std::mem::take(&mut self.shard_marks);
        let mut marks = Vec::new();
        for (_, _, slot) in primaries {
            let key = format!("{base}:{{{}}}", tag_for_slot(slot));
            let in_target = old.iter().find(|m| m.key == key).and_then(|m| m.in_target);
            if !marks.iter().any(|m: &ShardMark| m.key == key) {
                marks.push(ShardMark { key, in_target });
            }
        }
        self.shard_marks = marks;
        Ok(())
    }

    /// The primary serving `slot`, as last read from `CLUSTER SLOTS`.
    fn owner(&self, slot: u16) -> Option<(&str, u16)> {
        let after = self.slot_owners.partition_point(|o| o.start <= slot);
        let o = self.slot_owners.get(after.checked_sub(1)?)?;
        (slot <= o.end).then_some((o.host.as_str(), o.port))
    }

    /// The lowest watermark over the primaries (`Missing` when any has none).
    async fn read_shard_watermarks(
        &mut self,
        conn: redis::cluster_async::ClusterConnection,
    ) -> Result<WatermarkState, RedisError> {
        let mut lowest: Option<Watermark> = None;
        let mut missing = false;
        for i in 0..self.shard_marks.len() {
            let mut c = conn.clone();
            let r: redis::RedisResult<StoredWatermark> = redis::cmd("HMGET")
                .arg(&self.shard_marks[i].key)
                .arg("lsn")
                .arg("system")
                .arg("timeline")
                .query_async(&mut c)
                .await;
            let (lsn, system, timeline) = self.finish(r)?;
            let lsn = lsn.and_then(|l| l.parse::<u64>().ok()).map(Lsn);
            self.shard_marks[i].in_target = lsn;
            let Some(lsn) = lsn else {
                missing = true;
                continue;
            };
            if lowest.as_ref().is_none_or(|w| lsn < w.lsn) {
                lowest = Some(Watermark {
                    lsn,
                    origin: Origin {
                        system: system.unwrap_or_default(),
                        timeline: timeline.unwrap_or(0),
                    },
                });
            }
        }
        match lowest {
            Some(w) if !missing => {
                self.complete = Some(w.lsn);
                Ok(WatermarkState::Found(w))
            }
            _ => Ok(WatermarkState::Missing),
        }
    }

    /// [`RedisTarget::check_watermark`] on every primary of a cluster.
    async fn check_shard_watermarks(
        &mut self,
        conn: redis::cluster_async::ClusterConnection,
    ) -> Result<(), RedisError> {
        let write = self.complete;
        for i in 0..self.shard_marks.len() {
            let key = self.shard_marks[i].key.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("HGET").arg(&key).arg("lsn");
            let write = write.filter(|c| Some(*c) > self.shard_marks[i].in_target);
            if let Some(lsn) = write {
                self.add_watermark(&mut pipe, &key, lsn);
            }
            let mut c = conn.clone();
            let r: redis::RedisResult<(Option<String>,)> = pipe.query_async(&mut c).await;
            self.round_trips += 1;
            let (stored,) = self.finish(r)?;
            let stored = stored.and_then(|v| v.parse::<u64>().ok()).map(Lsn);
            let mark = &mut self.shard_marks[i];
            match mark.in_target {
                Some(had) if stored.is_none_or(|now| now < had) => {
                    self.rollback = Some(Rollback { had, now: stored });
                    mark.in_target = stored;
                    self.complete = self.complete.min(stored);
                }
                _ => mark.in_target = mark.in_target.max(write),
            }
        }
        Ok(())
    }

    /// One pipeline per hash slot unlinking `keys`.
    fn unlink_per_slot<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k String>,
    ) -> std::collections::HashMap<u16, redis::Pipeline> {
        let mut per_slot: std::collections::HashMap<u16, redis::Pipeline> = std::collections::HashMap::new();
        for key in keys {
            per_slot
                .entry(key_slot(key.as_bytes()))
                .or_default()
                .cmd(self.delete_command.name())
                .arg(key)
                .ignore();
        }
        per_slot
    }

    /// Runs per-slot pipelines as one pipeline per node (all at once): a node takes a pipeline
    /// across the slots it serves. A node that answers with an error (MOVED after a resharding,
    /// or anything else) gets its slots' pipelines again one by one through the cluster client,
    /// which follows redirects, and the topology is read again. Slots of no known node go that
    /// way directly.
    async fn run_pipelines(
        &mut self,
        conn: &redis::cluster_async::ClusterConnection,
        pipelines: std::collections::HashMap<u16, redis::Pipeline>,
    ) -> Result<(), RedisError> {
        let mut per_node: std::collections::HashMap<(String, u16), Vec<(u16, redis::Pipeline)>> =
            std::collections::HashMap::new();
        let mut per_slot = std::collections::HashMap::new();
        for (slot, pipe) in pipelines {
            match self.owner(slot) {
                Some((host, port)) => per_node.entry((host.to_string(), port)).or_default().push((slot, pipe)),
                None => {
                    per_slot.insert(slot, pipe);
                }
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for ((host, port), slots) in per_node {
            let mut merged = redis::pipe();
            for (_, pipe) in &slots {
                for cmd in pipe.cmd_iter() {
                    merged.add_command(cmd.clone());
                }
            }
            let count = merged.len();
            let mut c = conn.clone();
            tasks.spawn(async move {
                let route = redis::cluster_routing::SingleNodeRoutingInfo::ByAddress { host, port };
                let reply = c.route_pipeline(merged, 0, count, route).await;
                (slots, reply)
            });
            self.round_trips += 1;
        }
        let mut first_error = None;
        let mut redirected = false;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, Ok(values))) if !values.iter().any(|v| matches!(v, redis::Value::ServerError(_))) => {}
                // The node refused some of it (moved slots, …): those slots go through the
                // cluster client, which follows redirects.
                Ok((slots, Ok(_))) => {
                    redirected = true;
                    per_slot.extend(slots);
                }
                Ok((_, Err(e))) => first_error = first_error.or(Some(e)),
                Err(e) => {
                    first_error = first_error.or(Some(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "apply task failed",
                        e.to_string(),
                    ))))
                }
            }
        }
        if let Some(e) = first_error {
            return self.finish(Err(e));
        }
        if redirected {
            self.refresh_shards(conn.clone()).await?;
        }
        self.run_slot_pipelines(conn, per_slot).await
    }

    /// One pipeline per hash slot through the cluster client (it follows MOVED and ASK).
    async fn run_slot_pipelines(
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
    fn a_slot_is_found_in_its_range_and_a_gap_has_no_owner() {
        let mut target = RedisTarget::with_mode("redis://127.0.0.1:1", true, DeleteCommand::Unlink, "tag:").unwrap();
        let owner = |start, end, port| SlotOwner {
            start,
            end,
            host: "10.0.0.1".into(),
            port,
        };
        // Out of order, as CLUSTER SLOTS may list them; 6000..=6999 served by nobody.
        let mut owners = vec![owner(7000, 16383, 3), owner(0, 5460, 1), owner(5461, 5999, 2)];
        owners.sort_by_key(|o| o.start);
        target.slot_owners = owners;
        assert_eq!(target.owner(0), Some(("10.0.0.1", 1)));
        assert_eq!(target.owner(5460), Some(("10.0.0.1", 1)));
        assert_eq!(target.owner(5461), Some(("10.0.0.1", 2)));
        assert_eq!(target.owner(6500), None);
        assert_eq!(target.owner(16383), Some(("10.0.0.1", 3)));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://:secret@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("redis://user:secret@host"), "redis://user:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("rediss://u@host"), "rediss://u@host");
    }
}
