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

use super::Batch;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use std::time::Duration;

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

/// One Redis target (a standalone server or primary).
pub struct RedisTarget {
    /// The URL with any password removed, for logs and metrics.
    pub name: String,
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    pub delete_command: DeleteCommand,
    pub tag_prefix: String,
    bump: redis::Script,
    tag: redis::Script,
    pub round_trips: u64,
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
        let name = redact_url(url);
        let client = redis::Client::open(url).map_err(|source| RedisError::Redis {
            target: name.clone(),
            source,
        })?;
        Ok(RedisTarget {
            name,
            client,
            conn: None,
            delete_command,
            tag_prefix: tag_prefix.to_string(),
            bump: redis::Script::new(BUMP_SCRIPT),
            tag: redis::Script::new(TAG_SCRIPT),
            round_trips: 0,
        })
    }

    fn err(&self, source: redis::RedisError) -> RedisError {
        RedisError::Redis {
            target: self.name.clone(),
            source,
        }
    }

    async fn connection(&mut self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.err(e))?;
        self.conn = Some(conn.clone());
        Ok(conn)
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
            self.conn = None;
            self.err(e)
        })
    }

    /// Applies a batch. Idempotent; on error, applying the same batch again is correct.
    pub async fn apply(&mut self, batch: &Batch) -> Result<(), RedisError> {
        let mut conn = self.connection().await?;
        // Patterns first: SCAN needs its own round trips (rare; discouraged by `check`).
        for pattern in &batch.delete_matching {
            let mut cursor: u64 = 0;
            loop {
                let r: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await;
                self.round_trips += 1;
                let (next, keys) = self.finish(r)?;
                if !keys.is_empty() {
                    let r: redis::RedisResult<i64> = redis::cmd(self.delete_command.name())
                        .arg(&keys)
                        .query_async(&mut conn)
                        .await;
                    self.round_trips += 1;
                    self.finish(r)?;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        // Tags (first chunk of each), deletes, bumps and announcements: one pipelined round trip.
        let mut pipe = redis::pipe();
        let mut commands = 0;
        let tags: Vec<&String> = batch.tags.iter().collect();
        for key in &tags {
            pipe.cmd("EVAL")
                .arg(TAG_SCRIPT)
                .arg(1)
                .arg(*key)
                .arg(CHUNK)
                .arg(self.delete_command.name());
            commands += 1;
        }
        let deletes: Vec<&String> = batch.delete.iter().collect();
        for chunk in deletes.chunks(CHUNK) {
            pipe.cmd(self.delete_command.name()).arg(chunk).ignore();
            commands += 1;
        }
        let bumps: Vec<(&String, &u64)> = batch.bump.iter().collect();
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
        for (channel, payload) in &batch.publish {
            pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
            commands += 1;
        }
        if commands > 0 {
            // Only the tag scripts' replies are kept: how many members each removed.
            let r: redis::RedisResult<Vec<i64>> = pipe.query_async(&mut conn).await;
            self.round_trips += 1;
            let removed = self.finish(r)?;
            // Large tag sets: keep draining in bounded chunks.
            for (key, first) in tags.iter().zip(removed) {
                let mut last = first;
                while last >= CHUNK as i64 {
                    let r: redis::RedisResult<i64> = self
                        .tag
                        .key(*key)
                        .arg(CHUNK)
                        .arg(self.delete_command.name())
                        .invoke_async(&mut conn)
                        .await;
                    self.round_trips += 1;
                    last = self.finish(r)?;
                }
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://:secret@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("redis://user:secret@host"), "redis://user:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("rediss://u@host"), "rediss://u@host");
    }
}
