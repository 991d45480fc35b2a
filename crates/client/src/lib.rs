//! The read side of walbust's Redis protocol (`docs/redis-protocol.md`), for applications:
//! cache-aside reads with version keys, the global epoch and tag sets.
//!
//! A read is one round trip (a script reads the epoch and version keys, builds the versioned
//! key and GETs it); a miss loads the value and fills it with a TTL (with jitter, so entries
//! filled together do not expire together) and files the key under its tags, in one more round
//! trip. A reader that loaded old data can only write it under an old version's key, which no
//! reader looks up any more: the stale-fill race is harmless.
//!
//! Standalone Redis (the scripts touch several keys). The same two scripts serve other
//! languages: [`READ_SCRIPT`] and [`FILL_SCRIPT`].

use redis::aio::MultiplexedConnection;
use std::future::Future;
use std::time::Duration;

/// KEYS: epoch key, version keys…; ARGV: base key (prefixed). Returns `{versioned key, value}`
/// (value is false on a miss). Missing epoch/versions count as 0.
pub const READ_SCRIPT: &str = r"
local key = ARGV[1] .. ':e' .. (redis.call('GET', KEYS[1]) or '0')
for i = 2, #KEYS do
  key = key .. ':v' .. (redis.call('GET', KEYS[i]) or '0')
end
return {key, redis.call('GET', key)}
";

/// KEYS: versioned key, tag set keys…; ARGV: value, ttl seconds. Sets the value with the TTL
/// and adds the key to every tag set (which lives at least as long).
pub const FILL_SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('TTL', KEYS[i]) < tonumber(ARGV[2]) then
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[2]) * 2)
  end
end
return 1
";

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
    Cache,
    Loaded,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError<E: std::fmt::Display> {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("loading the value failed: {0}")]
    Load(E),
}

/// Cache-aside reads following walbust's protocol.
#[derive(Clone)]
pub struct CacheClient {
    conn: MultiplexedConnection,
    /// The rules file's `prefix` (`shop:`).
    pub prefix: String,
    /// `apply.epoch_key` of the daemon.
    pub epoch_key: String,
    /// `rules.tag_prefix` of the daemon.
    pub tag_prefix: String,
    pub ttl: Duration,
    /// Fraction of the TTL added at random (0.1 = up to +10 %).
    pub jitter: f64,
    read: redis::Script,
    fill: redis::Script,
}

impl CacheClient {
    pub async fn connect(url: &str, prefix: &str) -> redis::RedisResult<CacheClient> {
        let conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
        Ok(CacheClient {
            conn,
            prefix: prefix.to_string(),
            epoch_key: "walbust:epoch".into(),
            tag_prefix: "tag:".into(),
            ttl: Duration::from_secs(3600),
            jitter: 0.1,
            read: redis::Script::new(READ_SCRIPT),
            fill: redis::Script::new(FILL_SCRIPT),
        })
    }

    fn ttl_seconds(&self) -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let spread = self.ttl.as_secs_f64() * self.jitter * (f64::from(nanos % 1000) / 1000.0);
        (self.ttl.as_secs_f64() + spread).max(1.0) as u64
    }

    /// The versioned key and the cached value, if any (one round trip).
    ///
    /// An entry without version keys is a *plain* entry: it is read and filled under exactly
    /// `<prefix><key>`, the name a `delete` rule renders, with no epoch (so the epoch does not
    /// cover it: use version keys where a gap or a cold Redis must invalidate everything).
    pub async fn read(&mut self, entry: &Entry<'_>) -> redis::RedisResult<(String, Option<String>)> {
        if entry.versions.is_empty() {
            let key = format!("{}{}", self.prefix, entry.key);
            let value: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut self.conn).await?;
            return Ok((key, value));
        }
        let mut invocation = self.read.key(&self.epoch_key);
        for v in entry.versions {
            invocation.key(format!("{}{v}", self.prefix));
        }
        invocation.arg(format!("{}{}", self.prefix, entry.key));
        invocation.invoke_async(&mut self.conn).await
    }

    /// Stores a loaded value under the versioned key and files it under the entry's tags.
    pub async fn fill(&mut self, versioned_key: &str, entry: &Entry<'_>, value: &str) -> redis::RedisResult<()> {
        let mut invocation = self.fill.key(versioned_key);
        for t in entry.tags {
            invocation.key(format!("{}{}{t}", self.prefix, self.tag_prefix));
        }
        invocation.arg(value).arg(self.ttl_seconds());
        let _: i64 = invocation.invoke_async(&mut self.conn).await?;
        Ok(())
    }

    /// Cache-aside: the cached value, or `load()`'s, filled for the next reader.
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
        let (key, cached) = self.read(entry).await?;
        if let Some(value) = cached {
            return Ok((value, Source::Cache));
        }
        let value = load().await.map_err(ClientError::Load)?;
        self.fill(&key, entry, &value).await?;
        Ok((value, Source::Loaded))
    }
}
