//! An in-process cache that follows walbust's invalidation feed (a Redis Stream, see
//! [`crate::feed`]) and cannot drift: every node applies the same sequence of invalidations,
//! and a node that cannot know whether it missed one flushes instead of guessing.
//!
//! * **Bounded** in entries and bytes (oldest inserted evicted first), each entry with a TTL.
//! * **Following.** [`LocalCache::follow`] reads the stream from the last entry ID it applied
//!   (`XREAD BLOCK`); after a disconnect it resumes from that ID, so nothing appended meanwhile
//!   is skipped.
//! * **Gaps are never silent.** After every read the follower checks the stream (one script: the
//!   epoch key, `XINFO STREAM`): trimmed past the position it read from (`max-deleted-entry-id`),
//!   gone or behind it (Redis restarted or restored), or the epoch changed → flush everything,
//!   counted in [`LocalStats::gap_flushes`].
//! * **Not followed, not served.** A node whose last successful check is older than
//!   `max_lag` serves no hits (its reads go to the loader) until it has read the feed again:
//!   it cannot know what it missed.
//! * **Races with loads.** A load takes a [`Ticket`] before reading the source; an insert is
//!   refused when an invalidation of its key or of one of its dependencies (or a flush) was
//!   applied after the ticket — the value may predate it.
//!
//! Names passed in are without the rules prefix, as for [`crate::Entry`]: the key
//! `product:42`, version keys `ver:product:42`, tags `category:5`.

use crate::feed::{FeedEntry, StreamId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DEFAULT_LOCAL_MAX_ENTRIES: usize = 10_000;
pub const DEFAULT_LOCAL_MAX_BYTES: usize = 64 << 20;
pub const DEFAULT_LOCAL_TTL: Duration = Duration::from_secs(60);
/// How long one `XREAD` blocks waiting for entries (also how often an idle follower checks).
pub const DEFAULT_FEED_BLOCK: Duration = Duration::from_millis(500);
/// A node whose feed was last checked longer ago than this serves no hits.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(2);
/// Invalidated names remembered for refusing racing inserts; a ticket older than what is
/// remembered is refused (coarser).
const RECENT_NAMES: usize = 16_384;
/// Entries read per `XREAD`.
const READ_COUNT: usize = 512;

/// The epoch key and what `XINFO STREAM` says about the feed, in one round trip:
/// `{epoch, last-generated-id, max-deleted-entry-id, first-entry id, entries-added, length}`
/// (false where absent; the Redis 7 fields are absent before 7.0).
pub const FEED_CHECK_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {epoch or false, false, false, false, false, 0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, deleted, first, added, length = false, false, false, false, 0
for i = 1, #info, 2 do
  local name = info[i]
  if name == 'last-generated-id' then last = info[i + 1]
  elseif name == 'max-deleted-entry-id' then deleted = info[i + 1]
  elseif name == 'entries-added' then added = info[i + 1]
  elseif name == 'length' then length = info[i + 1]
  elseif name == 'first-entry' and info[i + 1] then first = info[i + 1][1] end
end
return {epoch or false, last, deleted, first, added, length}
"#;

#[derive(Clone, Debug)]
pub struct LocalCacheOptions {
    pub max_entries: usize,
    pub max_bytes: usize,
    pub ttl: Duration,
    /// The rules file's `prefix` (`shop:`).
    pub prefix: String,
    /// `rules.tag_prefix` of the daemon.
    pub tag_prefix: String,
    /// The target's `feed` stream key.
    pub stream: String,
    /// `apply.epoch_key` of the daemon.
    pub epoch_key: String,
    pub block: Duration,
    pub max_lag: Duration,
}

impl Default for LocalCacheOptions {
    fn default() -> LocalCacheOptions {
        LocalCacheOptions {
            max_entries: DEFAULT_LOCAL_MAX_ENTRIES,
            max_bytes: DEFAULT_LOCAL_MAX_BYTES,
            ttl: DEFAULT_LOCAL_TTL,
            prefix: String::new(),
            tag_prefix: "tag:".into(),
            stream: crate::feed::DEFAULT_FEED_STREAM.into(),
            epoch_key: "walbust:epoch".into(),
            block: DEFAULT_FEED_BLOCK,
            max_lag: DEFAULT_MAX_LAG,
        }
    }
}

/// What a local cache did ([`LocalCache::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalStats {
    pub hits: u64,
    pub misses: u64,
    /// Reads not served because the feed was not followed within `max_lag`.
    pub unfollowed_reads: u64,
    pub inserts: u64,
    /// Inserts refused: an invalidation of the key (or a flush) came after the load's ticket.
    pub inserts_refused: u64,
    /// Entries removed by feed entries.
    pub invalidated: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub feed_entries: u64,
    /// Flushes because continuity could not be proven (trimmed past, restarted, epoch moved,
    /// an unreadable entry, a pattern).
    pub gap_flushes: u64,
    /// Flushes the feed asked for (`flush` entries).
    pub feed_flushes: u64,
    pub feed_errors: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    unfollowed_reads: AtomicU64,
    inserts: AtomicU64,
    inserts_refused: AtomicU64,
    invalidated: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
    feed_entries: AtomicU64,
    gap_flushes: AtomicU64,
    feed_flushes: AtomicU64,
    feed_errors: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Taken before a load; see [`LocalCache::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

struct Slot {
    value: Arc<str>,
    deps: Vec<String>,
    expires: Instant,
    bytes: usize,
    inserted: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Slot>,
    /// Dependency name (version key or tag set key) → the cache keys that depend on it.
    dependents: HashMap<String, HashSet<String>>,
    /// Insert order, for eviction (stale pairs skipped).
    order: VecDeque<(u64, String)>,
    bytes: usize,
    inserts: u64,
    /// Invalidations applied (each feed entry and flush is one).
    applied: u64,
    flushed_at: u64,
    /// Names invalidated at each applied sequence, for tickets; `forgotten`: the highest
    /// sequence no longer here.
    recent: VecDeque<(u64, Vec<String>)>,
    recent_names: usize,
    forgotten: u64,
    /// The feed position applied and the epoch seen with it.
    position: Option<StreamId>,
    epoch: Option<String>,
    followed_until: Option<Instant>,
}

impl State {
    fn remove(&mut self, key: &str) -> bool {
        let Some(slot) = self.entries.remove(key) else {
            return false;
        };
        self.bytes -= slot.bytes;
        for dep in &slot.deps {
            if let Some(set) = self.dependents.get_mut(dep) {
                set.remove(key);
                if set.is_empty() {
                    self.dependents.remove(dep);
                }
            }
        }
        true
    }

    fn flush(&mut self) {
        self.entries.clear();
        self.dependents.clear();
        self.order.clear();
        self.bytes = 0;
        self.applied += 1;
        self.flushed_at = self.applied;
    }

    /// Removes what `names` invalidate (entries with that key, entries depending on it);
    /// returns how many.
    fn invalidate(&mut self, names: Vec<String>) -> u64 {
        self.applied += 1;
        let mut removed = 0;
        for name in &names {
            if self.remove(name) {
                removed += 1;
            }
            if let Some(keys) = self.dependents.remove(name) {
                for key in keys {
                    if self.remove(&key) {
                        removed += 1;
                    }
                }
            }
        }
        self.recent_names += names.len();
        self.recent.push_back((self.applied, names));
        while self.recent_names > RECENT_NAMES {
            let Some((seq, names)) = self.recent.pop_front() else {
                break;
            };
            self.recent_names -= names.len();
            self.forgotten = seq;
        }
        removed
    }

    /// Whether a value loaded under `ticket` may still be valid for `key` and `deps`.
    fn still_valid(&self, ticket: Ticket, key: &str, deps: &[String]) -> bool {
        if self.flushed_at > ticket.0 || self.forgotten > ticket.0 {
            return false;
        }
        !self
            .recent
            .iter()
            .rev()
            .take_while(|(seq, _)| *seq > ticket.0)
            .any(|(_, names)| names.iter().any(|n| n == key || deps.contains(n)))
    }
}

struct Shared {
    options: LocalCacheOptions,
    state: Mutex<State>,
    counters: Counters,
}

/// An in-process cache kept coherent by walbust's feed. Clones share the entries.
#[derive(Clone)]
pub struct LocalCache {
    shared: Arc<Shared>,
}

/// What [`LocalCache::get_or_load`] depends on: version keys and tags, without the prefix.
#[derive(Clone, Copy, Debug, Default)]
pub struct Deps<'a> {
    pub versions: &'a [&'a str],
    pub tags: &'a [&'a str],
}

impl LocalCache {
    pub fn new(options: LocalCacheOptions) -> LocalCache {
        LocalCache {
            shared: Arc::new(Shared {
                options,
                state: Mutex::new(State::default()),
                counters: Counters::default(),
            }),
        }
    }

    pub fn options(&self) -> &LocalCacheOptions {
        &self.shared.options
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps consistent enough to flush.
        self.shared.state.lock().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            state.flush();
            state
        })
    }

    fn full(&self, name: &str) -> String {
        format!("{}{}", self.shared.options.prefix, name)
    }

    fn deps(&self, deps: Deps<'_>) -> Vec<String> {
        let o = &self.shared.options;
        deps.versions
            .iter()
            .map(|v| format!("{}{v}", o.prefix))
            .chain(deps.tags.iter().map(|t| format!("{}{}{t}", o.prefix, o.tag_prefix)))
            .collect()
    }

    /// The cached value, when the feed is followed and the entry neither invalidated nor
    /// expired.
    pub fn get(&self, key: &str) -> Option<Arc<str>> {
        let full = self.full(key);
        let now = Instant::now();
        let mut state = self.state();
        if state.followed_until.is_none_or(|until| now > until) {
            bump(&self.shared.counters.unfollowed_reads, 1);
            return None;
        }
        match state.entries.get(&full) {
            Some(slot) if slot.expires > now => {
                bump(&self.shared.counters.hits, 1);
                Some(slot.value.clone())
            }
            Some(_) => {
                state.remove(&full);
                bump(&self.shared.counters.expirations, 1);
                bump(&self.shared.counters.misses, 1);
                None
            }
            None => {
                bump(&self.shared.counters.misses, 1);
                None
            }
        }
    }

    /// Take before reading the source of a value that will be inserted.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.state().applied)
    }

    /// Caches `value` loaded after `ticket` was taken; refused (false) when something it
    /// depends on was invalidated since, or it does not fit.
    pub fn insert(&self, ticket: Ticket, key: &str, value: &str, deps: Deps<'_>) -> bool {
        let full = self.full(key);
        let deps = self.deps(deps);
        let bytes = full.len() + value.len() + deps.iter().map(String::len).sum::<usize>();
        let o = &self.shared.options;
        let mut state = self.state();
        if !state.still_valid(ticket, &full, &deps) || bytes > o.max_bytes {
            bump(&self.shared.counters.inserts_refused, 1);
            return false;
        }
        state.remove(&full);
        state.inserts += 1;
        let inserted = state.inserts;
        for dep in &deps {
            state.dependents.entry(dep.clone()).or_default().insert(full.clone());
        }
        state.order.push_back((inserted, full.clone()));
        state.bytes += bytes;
        state.entries.insert(
            full,
            Slot {
                value: Arc::from(value),
                deps,
                expires: Instant::now() + o.ttl,
                bytes,
                inserted,
            },
        );
        let mut evicted = 0;
        while state.entries.len() > o.max_entries || state.bytes > o.max_bytes {
            let Some((seq, key)) = state.order.pop_front() else {
                break;
            };
            if state.entries.get(&key).is_some_and(|s| s.inserted == seq) {
                state.remove(&key);
                evicted += 1;
            }
        }
        // Stale order pairs (replaced or invalidated entries) do not pile up.
        if state.order.len() > 2 * state.entries.len() + 64 {
            let State { order, entries, .. } = &mut *state;
            order.retain(|(seq, key)| entries.get(key).is_some_and(|s| s.inserted == *seq));
        }
        drop(state);
        bump(&self.shared.counters.inserts, 1);
        bump(&self.shared.counters.evictions, evicted);
        true
    }

    /// The value from this cache, or from `load` (then cached unless invalidated meanwhile).
    pub async fn get_or_load<F, Fut, E>(&self, key: &str, deps: Deps<'_>, load: F) -> Result<Arc<str>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<String, E>>,
    {
        if let Some(value) = self.get(key) {
            return Ok(value);
        }
        let ticket = self.ticket();
        let value = load().await?;
        self.insert(ticket, key, &value, deps);
        Ok(Arc::from(value))
    }

    pub fn len(&self) -> usize {
        self.state().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last feed entry ID applied (`None` before the first read).
    pub fn position(&self) -> Option<StreamId> {
        self.state().position
    }

    pub fn stats(&self) -> LocalStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LocalStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            unfollowed_reads: get(&c.unfollowed_reads),
            inserts: get(&c.inserts),
            inserts_refused: get(&c.inserts_refused),
            invalidated: get(&c.invalidated),
            evictions: get(&c.evictions),
            expirations: get(&c.expirations),
            feed_entries: get(&c.feed_entries),
            gap_flushes: get(&c.gap_flushes),
            feed_flushes: get(&c.feed_flushes),
            feed_errors: get(&c.feed_errors),
        }
    }

    /// Applies feed entries read after `from`, in order.
    fn apply_entries(&self, entries: Vec<(StreamId, Result<FeedEntry, String>)>) {
        let c = &self.shared.counters;
        let mut state = self.state();
        for (id, entry) in entries {
            bump(&c.feed_entries, 1);
            match entry {
                Ok(entry) if entry.flush.is_some() => {
                    state.flush();
                    bump(&c.feed_flushes, 1);
                }
                Ok(entry) if !entry.patterns.is_empty() => {
                    // Patterns cannot be matched against entries cheaply: coarser.
                    state.flush();
                    bump(&c.gap_flushes, 1);
                }
                Ok(entry) => {
                    let mut names = entry.delete;
                    names.extend(entry.versions);
                    names.extend(entry.tags);
                    let removed = state.invalidate(names);
                    bump(&c.invalidated, removed);
                }
                Err(_) => {
                    state.flush();
                    bump(&c.feed_errors, 1);
                    bump(&c.gap_flushes, 1);
                }
            }
            state.position = Some(id);
        }
    }

    /// Compares the stream with what this node applied (see the module doc); flushes on any
    /// doubt. `read_from`: the position the last read started at.
    fn check(&self, read_from: Option<StreamId>, found: Checked) {
        let mut state = self.state();
        let gap = match read_from {
            // First contact: nothing cached could be older than the feed.
            None => !state.entries.is_empty(),
            Some(from) => {
                let epoch_moved = found.epoch != state.epoch;
                let position = state.position.unwrap_or(from);
                let gone_or_behind = match found.last {
                    None => position != StreamId::ZERO,
                    Some(last) => last < position,
                };
                // XDEL moves max-deleted-entry-id; trimming (MAXLEN) only the first entry: once
                // it is after the position read from, entries after it may be gone. From the
                // start (nothing read yet), any entry deleted at all may have been unread.
                let deleted = found.max_deleted.is_some_and(|d| d > from);
                let trimmed = match found.first {
                    Some(_) if from == StreamId::ZERO => found.added.is_none_or(|added| added > found.length),
                    Some(first) => first > from,
                    None => false,
                };
                epoch_moved || gone_or_behind || deleted || trimmed
            }
        };
        if gap || read_from.is_none() {
            if gap {
                state.flush();
                bump(&self.shared.counters.gap_flushes, 1);
            }
            state.position = Some(found.last.unwrap_or(StreamId::ZERO));
        }
        state.epoch = found.epoch;
        state.followed_until = Some(Instant::now() + self.shared.options.max_lag);
    }

    /// Marks the feed as not followed (a failed read): hits stop at once.
    fn lost_contact(&self) {
        self.state().followed_until = None;
        bump(&self.shared.counters.feed_errors, 1);
    }

    /// Follows the feed on `client`'s server until the task is aborted, reconnecting with
    /// backoff; resumes from the last applied ID.
    pub fn follow(&self, client: redis::Client) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(50);
            loop {
                if let Err(_e) = cache.follow_once(&client).await {
                    cache.lost_contact();
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    continue;
                }
                delay = Duration::from_millis(50);
            }
        })
    }

    /// One connection's worth of following; returns on the first error.
    async fn follow_once(&self, client: &redis::Client) -> redis::RedisResult<()> {
        let o = &self.shared.options;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(o.block + Duration::from_secs(2)));
        let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        let script = redis::Script::new(FEED_CHECK_SCRIPT);
        // Where this node stands before anything is read on this connection.
        let position = self.position();
        let found = Checked::query(&script, &mut conn, o).await?;
        self.check(position, found);
        loop {
            let from = self.position().unwrap_or(StreamId::ZERO);
            let reply: redis::Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(o.block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&o.stream)
                .arg(from.to_string())
                .query_async(&mut conn)
                .await?;
            self.apply_entries(parse_xread(reply));
            let found = Checked::query(&script, &mut conn, o).await?;
            self.check(Some(from), found);
        }
    }
}

/// What the check script found.
struct Checked {
    epoch: Option<String>,
    last: Option<StreamId>,
    max_deleted: Option<StreamId>,
    first: Option<StreamId>,
    /// Entries ever added and held now (`None`: before Redis 7).
    added: Option<u64>,
    length: u64,
}

impl Checked {
    async fn query(
        script: &redis::Script,
        conn: &mut redis::aio::MultiplexedConnection,
        o: &LocalCacheOptions,
    ) -> redis::RedisResult<Checked> {
        type Reply = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<u64>,
            u64,
        );
        let (epoch, last, deleted, first, added, length): Reply =
            script.key(&o.stream).key(&o.epoch_key).invoke_async(conn).await?;
        let id = |s: Option<String>| s.as_deref().and_then(StreamId::parse);
        Ok(Checked {
            epoch,
            last: id(last),
            // Redis reports 0-0 when nothing was ever deleted.
            max_deleted: id(deleted),
            first: id(first),
            added,
            length,
        })
    }
}

/// Entries of an `XREAD` reply (RESP2 arrays or RESP3 maps); an entry that does not parse is
/// kept as an error (the cache flushes for it).
fn parse_xread(reply: redis::Value) -> Vec<(StreamId, Result<FeedEntry, String>)> {
    use redis::Value;
    let streams: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else { continue };
        for entry in entries {
            let Value::Array(parts) = entry else { continue };
            let Some(id) = parts.first().and_then(text).and_then(|s| StreamId::parse(&s)) else {
                continue;
            };
            let fields: Vec<(String, Vec<u8>)> = match parts.get(1) {
                Some(Value::Array(flat)) => flat
                    .chunks(2)
                    .filter_map(|pair| match pair {
                        [name, Value::BulkString(value)] => Some((text(name)?, value.clone())),
                        _ => None,
                    })
                    .collect(),
                Some(Value::Map(pairs)) => pairs
                    .iter()
                    .filter_map(|(name, value)| match value {
                        Value::BulkString(value) => Some((text(name)?, value.clone())),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let entry = FeedEntry::from_fields(fields.iter().map(|(n, v)| (n.as_str(), v.as_slice())))
                .map_err(|e| e.to_string());
            out.push((id, entry));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn followed() -> LocalCache {
        let cache = LocalCache::new(LocalCacheOptions {
            prefix: "shop:".into(),
            ..LocalCacheOptions::default()
        });
        cache.check(
            None,
            Checked {
                epoch: Some("1".into()),
                last: None,
                max_deleted: None,
                first: None,
                added: None,
                length: 0,
            },
        );
        cache
    }

    fn entry(delete: &[&str], versions: &[&str], tags: &[&str]) -> Result<FeedEntry, String> {
        let own = |s: &[&str]| s.iter().map(|k| k.to_string()).collect();
        Ok(FeedEntry {
            delete: own(delete),
            versions: own(versions),
            tags: own(tags),
            ..FeedEntry::default()
        })
    }

    #[test]
    fn feed_entries_remove_keys_and_their_dependents() {
        let cache = followed();
        let t = cache.ticket();
        let deps = Deps {
            versions: &["ver:product:1"],
            tags: &["category:5"],
        };
        assert!(cache.insert(t, "product:1", "a", deps));
        assert!(cache.insert(
            t,
            "page:1",
            "b",
            Deps {
                versions: &[],
                tags: &["category:5"]
            }
        ));
        assert!(cache.insert(t, "page:2", "c", Deps::default()));
        assert_eq!(cache.get("product:1").as_deref(), Some("a"));
        cache.apply_entries(vec![(
            StreamId { ms: 1, seq: 0 },
            entry(&[], &["shop:ver:product:1"], &[]),
        )]);
        assert_eq!(cache.get("product:1"), None);
        assert_eq!(cache.get("page:1").as_deref(), Some("b"));
        cache.apply_entries(vec![(
            StreamId { ms: 2, seq: 0 },
            entry(&[], &[], &["shop:tag:category:5"]),
        )]);
        assert_eq!(cache.get("page:1"), None);
        cache.apply_entries(vec![(StreamId { ms: 3, seq: 0 }, entry(&["shop:page:2"], &[], &[]))]);
        assert_eq!(cache.get("page:2"), None);
        assert_eq!(cache.stats().invalidated, 3);
        assert_eq!(cache.position(), Some(StreamId { ms: 3, seq: 0 }));
    }

    #[test]
    fn an_insert_loaded_before_an_invalidation_is_refused() {
        let cache = followed();
        let before = cache.ticket();
        cache.apply_entries(vec![(StreamId { ms: 1, seq: 0 }, entry(&["shop:product:1"], &[], &[]))]);
        assert!(!cache.insert(before, "product:1", "old", Deps::default()));
        // Another key is unaffected; a ticket taken after is fine.
        assert!(cache.insert(before, "product:2", "x", Deps::default()));
        assert!(cache.insert(cache.ticket(), "product:1", "new", Deps::default()));
        assert_eq!(cache.stats().inserts_refused, 1);
    }

    #[test]
    fn gaps_flush_and_unfollowed_nodes_serve_nothing() {
        let cache = followed();
        assert!(cache.insert(cache.ticket(), "k", "v", Deps::default()));
        let at = StreamId { ms: 10, seq: 0 };
        cache.apply_entries(vec![(at, entry(&["shop:other"], &[], &[]))]);
        // Trimmed past where the read started: flush.
        cache.check(
            Some(at),
            Checked {
                epoch: Some("1".into()),
                last: Some(StreamId { ms: 20, seq: 0 }),
                max_deleted: Some(StreamId { ms: 15, seq: 0 }),
                first: Some(StreamId { ms: 16, seq: 0 }),
                added: None,
                length: 0,
            },
        );
        assert!(cache.is_empty());
        assert_eq!(cache.stats().gap_flushes, 1);
        assert_eq!(cache.position(), Some(StreamId { ms: 20, seq: 0 }));
        // The epoch moved: flush again.
        assert!(cache.insert(cache.ticket(), "k", "v", Deps::default()));
        let last = Some(StreamId { ms: 20, seq: 0 });
        let same = |epoch: &str| Checked {
            epoch: Some(epoch.into()),
            last,
            max_deleted: Some(StreamId::ZERO),
            first: last,
            added: None,
            length: 0,
        };
        cache.check(last, same("1"));
        assert_eq!(cache.len(), 1, "no gap, no flush");
        cache.check(last, same("2"));
        assert!(cache.is_empty());
        // Stream gone (a restart): flush.
        assert!(cache.insert(cache.ticket(), "k", "v", Deps::default()));
        cache.check(
            last,
            Checked {
                epoch: Some("2".into()),
                last: None,
                max_deleted: None,
                first: None,
                added: None,
                length: 0,
            },
        );
        assert!(cache.is_empty());
        assert_eq!(cache.stats().gap_flushes, 3);
        // Lost contact: no hits until checked again.
        assert!(cache.insert(cache.ticket(), "k", "v", Deps::default()));
        cache.lost_contact();
        assert_eq!(cache.get("k"), None);
        assert_eq!(cache.stats().unfollowed_reads, 1);
    }

    #[test]
    fn bounded_in_entries_and_bytes() {
        let cache = LocalCache::new(LocalCacheOptions {
            max_entries: 3,
            max_bytes: 100,
            ..LocalCacheOptions::default()
        });
        cache.check(
            None,
            Checked {
                epoch: None,
                last: None,
                max_deleted: None,
                first: None,
                added: None,
                length: 0,
            },
        );
        for i in 0..10 {
            cache.insert(cache.ticket(), &format!("k{i}"), "v", Deps::default());
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get("k9").is_some() && cache.get("k0").is_none());
        cache.insert(cache.ticket(), "big", &"x".repeat(80), Deps::default());
        assert!(cache.state().bytes <= 100);
        assert!(!cache.insert(cache.ticket(), "huge", &"x".repeat(200), Deps::default()));
    }
}
