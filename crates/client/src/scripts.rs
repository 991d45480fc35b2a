//! The Lua scripts of the read protocol (docs/redis-protocol.md), shared with other languages.
//!
//! A *lease* is a placeholder value in the entry's own key: `\0walbust:lease:<token>`, with a
//! short expiry. Whoever sets it loads and fills; the fill succeeds only while the placeholder is
//! still its own. walbust's invalidations delete the key (a `delete` rule, a tag drain — the key
//! is filed under its tags when the lease is taken) or move its version, so a fill racing an
//! invalidation is dropped or lands under a key no reader builds any more.

/// The prefix of a lease placeholder: no cached value may start with it.
pub const LEASE_MARKER: &str = "\0walbust:lease:";

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

/// Read with a lease, standalone Redis (one round trip).
/// KEYS: epoch key, version keys…, tag set keys…[, stale copy key]; ARGV: base key (prefixed),
/// number of version keys, lease token, lease milliseconds, entry TTL seconds, stale bound
/// milliseconds (0: no stale-while-revalidate, and no stale copy key).
/// Returns `{key, 'hit', value}`, `{key, 'wait'}` (another reader holds the lease) or
/// `{key, 'lease'}` (this reader holds it now; the key is filed under its tags).
/// With no version keys the key is the base key itself (a plain entry). With a stale bound, a
/// hit keeps the stale copy current: the value was valid now, so a copy that expires within the
/// bound is never older than an invalidation by more than the bound.
pub const LEASE_READ_SCRIPT: &str = r"
local nv = tonumber(ARGV[2])
local swr = tonumber(ARGV[6] or '0')
local last_tag = #KEYS
if swr > 0 then last_tag = #KEYS - 1 end
local key = ARGV[1]
if nv > 0 then
  key = key .. ':e' .. (redis.call('GET', KEYS[1]) or '0')
  for i = 2, nv + 1 do key = key .. ':v' .. (redis.call('GET', KEYS[i]) or '0') end
end
local v = redis.call('GET', key)
if v then
  if string.sub(v, 1, 15) == '\0walbust:lease:' then return {key, 'wait'} end
  if swr > 0 and redis.call('PTTL', KEYS[#KEYS]) < swr / 2 then
    redis.call('SET', KEYS[#KEYS], v, 'PX', swr)
  end
  return {key, 'hit', v}
end
redis.call('SET', key, '\0walbust:lease:' .. ARGV[3], 'PX', tonumber(ARGV[4]))
local ttl = tonumber(ARGV[5])
for i = nv + 2, last_tag do
  redis.call('SADD', KEYS[i], key)
  if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIRE', KEYS[i], ttl * 2) end
end
return {key, 'lease'}
";

/// Keep a stale-while-revalidate copy current (Redis Cluster, after a hit). KEYS: the copy's
/// key; ARGV: the value just read, the bound in milliseconds. Rewrites the copy when less than
/// half the bound is left.
pub const STALE_COPY_SCRIPT: &str = r"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) / 2 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
end
return 1
";

/// Take a lease on one key (Redis Cluster: every script touches one key).
/// KEYS: the (versioned) key; ARGV: lease token, lease milliseconds.
/// Returns `{'hit', value}`, `{'wait'}` or `{'lease'}`.
pub const LEASE_KEY_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  if string.sub(v, 1, 15) == '\0walbust:lease:' then return {'wait'} end
  return {'hit', v}
end
redis.call('SET', KEYS[1], '\0walbust:lease:' .. ARGV[1], 'PX', tonumber(ARGV[2]))
return {'lease'}
";

/// KEYS: tag set key; ARGV: member key, entry TTL seconds. Files the member under the tag (the
/// set lives at least twice the entry's TTL). Used on Redis Cluster, where tag sets and entries
/// are on different slots.
pub const TAG_SCRIPT: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) * 2) end
return 1
";

/// Fill under a lease. KEYS: the key; ARGV: value, TTL seconds, lease token. Sets the value only
/// while the key still holds this reader's lease; returns 1, or 0 when the lease was superseded
/// (the key was invalidated, or the lease expired and another reader took it): the fill is
/// dropped.
pub const LEASE_FILL_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == '\0walbust:lease:' .. ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
  return 1
end
return 0
";

/// Give a lease back (the load failed). KEYS: the key; ARGV: lease token.
pub const LEASE_RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == '\0walbust:lease:' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";
