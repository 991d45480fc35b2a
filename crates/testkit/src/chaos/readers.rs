//! The cache-aside readers: the reader protocols ([`Mode`]), the entries they cache ([`Item`])
//! and how each is loaded from the database, the reader tasks, and the keyspace listener that
//! timestamps every probe deletion.

use super::shared::{connect_db, Rng, Shared, RECS_PRODUCTS};
use super::target::RedisSpec;
use super::{ChaosOptions, WorkloadError};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use walbust_client::{CacheClient, Deps, Entry, LocalCache, LocalCacheOptions};

/// The stream walbust appends its invalidations to (`[[redis]] feed`).
pub(super) const FEED_STREAM: &str = "walbust:feed";
/// In-process caches, each followed by its own task; readers share them round robin.
pub(super) const LOCAL_NODES: usize = 2;
/// The report row of the local caches.
pub const LOCAL_MODE: &str = "local caches following the feed (plain rules)";

pub(super) const PRODUCT_VALUE: &str =
    "name || '|' || price_cents || '|' || coalesce(category_id::text, '-') || '|' || rev";
pub(super) const LIST_ITEM: &str = "id || ':' || price_cents";
pub(super) const RECS_ITEM: &str = "recommended_id || ':' || score";

/// The three reader protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Redelete,
    Version,
    /// No rules at all: every probe must stay and entries must go stale — proof that the
    /// checker sees what it is looking for.
    Control,
}

pub(super) const MODES: [Mode; 4] = [Mode::Plain, Mode::Redelete, Mode::Version, Mode::Control];

impl Mode {
    pub(super) fn prefix(self) -> &'static str {
        match self {
            Mode::Plain => "plain:",
            Mode::Redelete => "redel:",
            Mode::Version => "vers:",
            Mode::Control => "ctl:",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Mode::Plain => "plain delete",
            Mode::Redelete => "delete + redelete_after 500ms",
            Mode::Version => "version keys",
            Mode::Control => "control: no rules (must go stale)",
        }
    }
}

/// A cached entry: a product, a category's product list, a product's recommendations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Item {
    Product(i64),
    Category(i64),
    Recs(i64),
}

impl Item {
    pub(super) fn key(self) -> String {
        match self {
            Item::Product(id) => format!("product:{id}"),
            Item::Category(id) => format!("category:{id}:list"),
            Item::Recs(id) => format!("recs:{id}"),
        }
    }

    pub(super) fn versions(self, mode: Mode) -> Vec<String> {
        if mode != Mode::Version {
            return Vec::new();
        }
        match self {
            Item::Product(id) => vec![format!("v:product:{id}")],
            Item::Category(id) => vec![format!("v:category:{id}")],
            Item::Recs(id) => vec![format!("v:recs:{id}"), "v:recs".into()],
        }
    }

    fn tags(self, mode: Mode) -> Vec<String> {
        match (self, mode) {
            (Item::Category(id), Mode::Plain | Mode::Redelete) => vec![format!("category:{id}")],
            // TRUNCATE names no rows: every recommendation list is filed under one tag.
            (Item::Recs(_), Mode::Plain | Mode::Redelete) => vec!["recs".into()],
            _ => Vec::new(),
        }
    }

    async fn load(self, db: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
        let (sql, id) = match self {
            Item::Product(id) => (
                format!("SELECT coalesce((SELECT {PRODUCT_VALUE} FROM products WHERE id = $1), 'none')"),
                id,
            ),
            Item::Category(id) => (
                format!(
                    "SELECT coalesce(string_agg({LIST_ITEM}, ',' ORDER BY id), '') FROM products WHERE category_id = $1"
                ),
                id,
            ),
            Item::Recs(id) => (
                format!(
                    "SELECT coalesce(string_agg({RECS_ITEM}, ',' ORDER BY recommended_id), '') FROM recommendations WHERE product_id = $1"
                ),
                id,
            ),
        };
        Ok(db.query_one(&sql, &[&id]).await?.get(0))
    }
}

fn pick_item(rng: &mut Rng, shared: &Shared, products: i64) -> Item {
    match rng.below(100) {
        0..=59 => Item::Product(1 + rng.below(products as u64) as i64),
        60..=69 => {
            let max = shared.max_inserted.load(Ordering::Relaxed);
            if max >= 100_000 {
                Item::Product(100_000 + rng.below((max - 100_000 + 1) as u64) as i64)
            } else {
                Item::Product(1 + rng.below(products as u64) as i64)
            }
        }
        70..=84 => Item::Category(1 + rng.below(6) as i64),
        _ => Item::Recs(1 + rng.below(RECS_PRODUCTS as u64) as i64),
    }
}

pub(super) async fn cache_clients(redis: &RedisSpec) -> Option<Vec<CacheClient>> {
    let mut clients = Vec::new();
    for mode in MODES {
        let mut client = redis.cache_client(mode.prefix()).await.ok()?;
        client.ttl = Duration::from_secs(3600);
        clients.push(client);
    }
    Some(clients)
}

/// Reads one entry through the protocol of `mode`, loading from the database on a miss.
async fn read_through(
    client: &mut CacheClient,
    item: Item,
    mode: Mode,
    db: &tokio_postgres::Client,
) -> Result<(), WorkloadError> {
    let versions = item.versions(mode);
    let tags = item.tags(mode);
    let key = item.key();
    let versions: Vec<&str> = versions.iter().map(String::as_str).collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let entry = Entry {
        key: &key,
        versions: &versions,
        tags: &tags,
    };
    client.get_or_load(&entry, || item.load(db)).await?;
    Ok(())
}

/// Starts the in-process caches and their followers (standalone Redis: the feed's check
/// script reads the epoch key and the stream together).
pub(super) fn start_local_caches(shared: &Shared, redis: &RedisSpec) {
    if redis.cluster {
        return;
    }
    let Ok(client) = redis::Client::open(redis.nodes[0].as_str()) else {
        return;
    };
    let nodes: Vec<LocalCache> = (0..LOCAL_NODES)
        .map(|_| {
            LocalCache::new(LocalCacheOptions {
                prefix: Mode::Plain.prefix().into(),
                stream: FEED_STREAM.into(),
                ttl: Duration::from_secs(3600),
                ..LocalCacheOptions::default()
            })
        })
        .collect();
    let mut followers = shared.followers.lock().unwrap_or_else(|p| p.into_inner());
    followers.extend(nodes.iter().map(|n| n.follow(client.clone())));
    let _ = shared.locals.set(nodes);
}

/// Reads one entry through an in-process cache, with the plain rules' keys and tags.
async fn read_local(node: &LocalCache, item: Item, db: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    let tags = item.tags(Mode::Plain);
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let deps = Deps {
        versions: &[],
        tags: &tags,
    };
    node.get_or_load(&item.key(), deps, || item.load(db)).await?;
    Ok(())
}

pub(super) async fn reader(index: usize, shared: Arc<Shared>, db_url: String, redis: RedisSpec, options: ChaosOptions) {
    let mut rng = Rng::new(options.seed.wrapping_add(1_000_003 + index as u64 * 104_729));
    let mut db: Option<tokio_postgres::Client> = None;
    let mut clients: Option<Vec<CacheClient>> = None;
    while !shared.stop_readers.load(Ordering::Relaxed) {
        if db.as_ref().is_none_or(|c| c.is_closed()) {
            db = connect_db(&db_url).await.ok();
        }
        if clients.is_none() {
            clients = cache_clients(&redis).await;
        }
        let (Some(d), Some(cs)) = (db.as_ref(), clients.as_mut()) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let item = pick_item(&mut rng, &shared, options.products);
        let first = rng.below(MODES.len() as u64) as usize;
        let mut failed = false;
        for k in 0..MODES.len() {
            let m = (first + k) % MODES.len();
            if let Err(e) = read_through(&mut cs[m], item, MODES[m], d).await {
                tracing::debug!(reader = index, error = %e, "read failed");
                shared.read_errors.fetch_add(1, Ordering::Relaxed);
                failed = true;
                break;
            }
        }
        if let (false, Some(locals)) = (failed, shared.locals.get()) {
            if let Err(e) = read_local(&locals[index % locals.len()], item, d).await {
                tracing::debug!(reader = index, error = %e, "local read failed");
                shared.read_errors.fetch_add(1, Ordering::Relaxed);
                failed = true;
            }
        }
        if failed {
            clients = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else {
            shared.reads.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Subscribes to `del` keyspace events of one server (a Cluster: one node, one listener each)
/// and timestamps every probe deletion; reconnects after a Redis restart.
pub(super) fn listen_for_deletions(shared: Arc<Shared>, redis_url: String) {
    while !shared.stop_listener.load(Ordering::Relaxed) {
        let connection = redis::Client::open(redis_url.as_str()).and_then(|c| c.get_connection());
        let Ok(mut connection) = connection else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let mut pubsub = connection.as_pubsub();
        if pubsub.subscribe("__keyevent@0__:del").is_err()
            || pubsub.set_read_timeout(Some(Duration::from_millis(200))).is_err()
        {
            continue;
        }
        while !shared.stop_listener.load(Ordering::Relaxed) {
            match pubsub.get_message() {
                Ok(msg) => {
                    let now = Instant::now();
                    if let Ok(key) = msg.get_payload::<String>() {
                        // Control probes are never deleted by walbust: no need to track them.
                        if key.contains(":probe:") && !key.starts_with("ctl:") {
                            shared
                                .deleted
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(key)
                                .or_insert(now);
                        }
                    }
                }
                Err(e) if e.is_timeout() => {}
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_version_keys_only_with_the_version_protocol_and_tags_only_without() {
        let recs = Item::Recs(3);
        assert_eq!(recs.key(), "recs:3");
        assert_eq!(recs.versions(Mode::Version), ["v:recs:3", "v:recs"]);
        assert!(recs.versions(Mode::Plain).is_empty());
        assert_eq!(recs.tags(Mode::Redelete), ["recs"]);
        assert!(recs.tags(Mode::Version).is_empty());
        assert_eq!(Item::Category(2).key(), "category:2:list");
        assert_eq!(Item::Category(2).tags(Mode::Plain), ["category:2"]);
        assert!(Item::Product(5).tags(Mode::Plain).is_empty());
        assert!(Item::Product(5).versions(Mode::Control).is_empty());
    }
}
