//! In-process caches following walbust's invalidation feed (issue: beyond one Redis), against a
//! real PostgreSQL, a real daemon and a real redis-server: two nodes in one process, writes
//! through PostgreSQL, a node disconnected across a trim of the feed, a Redis restart. The
//! promise: no node serves an entry older than the last invalidation it could know about — once
//! a node has read the feed up to where walbust appended an invalidation, it serves nothing the
//! invalidation covers; a node that cannot tell what it missed flushes.

mod common;

use common::{db, wait_for};
use std::time::Duration;
use walbust::client::feed::StreamId;
use walbust::client::{Deps, LocalCache, LocalCacheOptions};
use walbust::config::{OnGap, RedisConfig};
use walbust_testkit::harness::{PgInstance, RedisInstance};

const ROWS: i64 = 20;
const FEED: &str = "walbust:feed";

const RULES: &str = r#"
version: 1
prefix: "r:"
rules:
  - name: item
    table: items
    on: [insert, update, delete]
    bump: ["ver:item:{id}"]
    tags: ["group:{grp}"]
"#;

fn pg() -> PgInstance {
    common::database(
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, rev int NOT NULL);
             ALTER TABLE items REPLICA IDENTITY FULL;
             INSERT INTO items SELECT g, g % 4, 1 FROM generate_series(1, {ROWS}) g;"
        ),
        "items",
    )
}

/// The daemon with one Redis target writing the feed (trimmed to about `maxlen` entries).
fn start_daemon(
    pg: &PgInstance,
    redis: &RedisInstance,
    maxlen: u64,
) -> (tokio::sync::oneshot::Sender<()>, tempfile::TempDir) {
    let rules = common::rules_dir(RULES);
    let mut c = common::daemon_config(pg, rules.path());
    c.redis = vec![RedisConfig {
        url: redis.url(),
        feed: FEED.into(),
        feed_maxlen: maxlen,
        ..RedisConfig::default()
    }];
    c.apply.on_gap = OnGap::BumpEpoch;
    let (stop, _daemon) = common::spawn_daemon(c);
    common::wait_streaming(pg);
    (stop, rules)
}

fn node() -> LocalCache {
    LocalCache::new(LocalCacheOptions {
        prefix: "r:".into(),
        block: Duration::from_millis(200),
        max_lag: Duration::from_millis(600),
        ..LocalCacheOptions::default()
    })
}

/// The row as `<rev>`, through the node (cached under `item:<id>`, depending on the row's
/// version key and group tag).
async fn read(node: &LocalCache, db: &tokio_postgres::Client, id: i64) -> i32 {
    let version = format!("ver:item:{id}");
    let tag = format!("group:{}", id % 4);
    let versions = [version.as_str()];
    let tags = [tag.as_str()];
    let deps = Deps {
        versions: &versions,
        tags: &tags,
    };
    let value = node
        .get_or_load(&format!("item:{id}"), deps, || async {
            let row = db
                .query_one("SELECT rev FROM items WHERE id = $1", &[&(id as i32)])
                .await?;
            Ok::<_, tokio_postgres::Error>(row.get::<_, i32>(0).to_string())
        })
        .await
        .unwrap();
    value.parse().unwrap()
}

async fn rev(db: &tokio_postgres::Client, id: i64) -> i32 {
    db.query_one("SELECT rev FROM items WHERE id = $1", &[&(id as i32)])
        .await
        .unwrap()
        .get(0)
}

/// The ID of the last feed entry after `after` that names `key` (waits for one).
async fn feed_has(redis: &mut redis::aio::MultiplexedConnection, key: &str, after: StreamId) -> StreamId {
    let mut found = None;
    wait_for(&format!("an entry for {key} in the feed"), async || {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(FEED)
            .arg(format!("({after}"))
            .arg("+")
            .query_async(redis)
            .await
            .unwrap_or_default();
        found = entries
            .iter()
            .rev()
            .find(|(_, fields)| fields.iter().any(|(_, v)| v.contains(&format!("\"{key}\""))))
            .and_then(|(id, _)| StreamId::parse(id));
        found.is_some()
    })
    .await;
    found.unwrap()
}

async fn caught_up(node: &LocalCache, to: StreamId) {
    wait_for("the node to read the feed", async || {
        node.position().is_some_and(|p| p >= to)
    })
    .await;
}

async fn last_id(redis: &mut redis::aio::MultiplexedConnection) -> StreamId {
    let id: Option<String> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(FEED)
        .query_async::<redis::Value>(redis)
        .await
        .ok()
        .and_then(|info| match info {
            redis::Value::Array(pairs) => pairs.chunks(2).find_map(|p| match p {
                [redis::Value::BulkString(name), redis::Value::BulkString(id)] if name == b"last-generated-id" => {
                    Some(String::from_utf8_lossy(id).into_owned())
                }
                _ => None,
            }),
            _ => None,
        });
    id.and_then(|i| StreamId::parse(&i)).unwrap_or(StreamId::ZERO)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_drop_what_a_committed_write_invalidated_once_they_read_the_feed() {
    let pg = pg();
    let redis = RedisInstance::start().unwrap();
    let (_stop, _rules) = start_daemon(&pg, &redis, 100_000);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let db = db(&pg).await;
    let nodes = [node(), node()];
    let _followers: Vec<_> = nodes.iter().map(|n| n.follow(client.clone())).collect();
    for n in &nodes {
        wait_for("the node to follow", async || n.position().is_some()).await;
    }
    for n in &nodes {
        for id in 1..=ROWS {
            assert_eq!(read(n, &db, id).await, 1);
        }
        // Served from the node now.
        assert_eq!(n.get("item:1").as_deref(), Some("1"));
    }

    // One row: its version key.
    db.execute("UPDATE items SET rev = rev + 1 WHERE id = 1", &[])
        .await
        .unwrap();
    let at = feed_has(&mut raw, "r:ver:item:1", StreamId::ZERO).await;
    for n in &nodes {
        caught_up(n, at).await;
        assert_eq!(n.get("item:1"), None, "invalidated by the feed");
        assert_eq!(read(n, &db, 1).await, 2);
        assert_eq!(n.get("item:2").as_deref(), Some("1"), "other rows stay cached");
    }

    // A group: its tag (every row of group 2, through one tag entry).
    db.execute("UPDATE items SET rev = rev + 1 WHERE grp = 2", &[])
        .await
        .unwrap();
    let at = feed_has(&mut raw, "r:tag:group:2", at).await;
    for n in &nodes {
        caught_up(n, at).await;
        for id in (1..=ROWS).filter(|id| id % 4 == 2) {
            assert_eq!(read(n, &db, id).await, rev(&db, id).await, "row {id}");
        }
        assert_eq!(n.stats().gap_flushes, 0, "no gap while following: {:?}", n.stats());
    }

    // Many writes while both read: once a node has read past a write's entry, it never serves
    // the row from before it.
    for round in 0..30 {
        let id = 1 + (round % ROWS);
        let before = last_id(&mut raw).await;
        db.execute("UPDATE items SET rev = rev + 1 WHERE id = $1", &[&(id as i32)])
            .await
            .unwrap();
        let committed = rev(&db, id).await;
        let at = feed_has(&mut raw, &format!("r:ver:item:{id}"), before).await;
        for n in &nodes {
            caught_up(n, at).await;
            assert!(
                read(n, &db, id).await >= committed,
                "row {id} older than its last invalidation"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_disconnected_across_a_trim_flushes_and_serves_nothing_meanwhile() {
    let pg = pg();
    // Small stream nodes, so `MAXLEN ~` trims after a few entries.
    let redis = RedisInstance::start_with_args(&["--stream-node-max-entries", "4"]).unwrap();
    let (_stop, _rules) = start_daemon(&pg, &redis, 8);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let db = db(&pg).await;
    let (a, b) = (node(), node());
    let follow_a = a.follow(client.clone());
    let follow_b = b.follow(client.clone());
    for n in [&a, &b] {
        wait_for("the node to follow", async || n.position().is_some()).await;
        for id in 1..=ROWS {
            read(n, &db, id).await;
        }
    }
    // Both read a first invalidation, so B's position is an entry of the feed.
    db.execute("UPDATE items SET grp = grp WHERE id = 1", &[])
        .await
        .unwrap();
    let at = feed_has(&mut raw, "r:ver:item:1", StreamId::ZERO).await;
    caught_up(&b, at).await;
    read(&b, &db, 1).await;
    // B loses its connection (its follower stops); writes go on, one entry each, and the feed
    // is trimmed past B's position.
    follow_b.abort();
    let b_at = b.position().unwrap();
    for _ in 0..3 {
        for id in 1..=ROWS {
            let before = last_id(&mut raw).await;
            db.execute("UPDATE items SET rev = rev + 1 WHERE id = $1", &[&(id as i32)])
                .await
                .unwrap();
            feed_has(&mut raw, &format!("r:ver:item:{id}"), before).await;
        }
    }
    let at = feed_has(&mut raw, &format!("r:ver:item:{ROWS}"), StreamId::ZERO).await;
    let first: Vec<(String, redis::Value)> = redis::cmd("XRANGE")
        .arg(FEED)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut raw)
        .await
        .unwrap();
    let first = StreamId::parse(&first[0].0).unwrap();
    assert!(first > b_at, "the feed was trimmed past B ({first} > {b_at})");

    // Meanwhile B serves nothing from its cache (it cannot know what it misses) …
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(b.get("item:1"), None);
    assert!(b.stats().unfollowed_reads > 0);
    assert!(!b.is_empty(), "entries are kept while disconnected");
    // … and A, which kept following, serves only what is current.
    caught_up(&a, at).await;
    for id in 1..=ROWS {
        assert_eq!(read(&a, &db, id).await, 4, "node A, row {id}");
    }

    // B comes back: the entries between its position and the trim are gone, so it flushes.
    let _follow_b = b.follow(client.clone());
    caught_up(&b, at).await;
    assert!(b.stats().gap_flushes >= 1, "{:?}", b.stats());
    for id in 1..=ROWS {
        assert_eq!(read(&b, &db, id).await, 4, "node B, row {id}");
    }
    follow_a.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_flushes_every_node_and_the_feed_goes_on() {
    let pg = pg();
    let mut redis = RedisInstance::start().unwrap();
    let (_stop, _rules) = start_daemon(&pg, &redis, 100_000);
    let client = redis::Client::open(redis.url()).unwrap();
    let db = db(&pg).await;
    let nodes = [node(), node()];
    let _followers: Vec<_> = nodes.iter().map(|n| n.follow(client.clone())).collect();
    for n in &nodes {
        wait_for("the node to follow", async || n.position().is_some()).await;
        for id in 1..=ROWS {
            read(n, &db, id).await;
        }
    }
    db.execute("UPDATE items SET rev = rev + 1 WHERE id = 3", &[])
        .await
        .unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    feed_has(&mut raw, "r:ver:item:3", StreamId::ZERO).await;

    // Restarted empty: the stream (and every position in it) is gone.
    redis.restart().unwrap();
    for n in &nodes {
        wait_for("the node to flush", async || n.stats().gap_flushes >= 1).await;
        assert!(n.is_empty() || n.get("item:1").is_none());
    }
    // Writes after the restart reach the nodes through the new stream.
    for n in &nodes {
        read(n, &db, 4).await;
    }
    db.execute("UPDATE items SET rev = rev + 5 WHERE id = 4", &[])
        .await
        .unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let at = feed_has(&mut raw, "r:ver:item:4", StreamId::ZERO).await;
    assert!(last_id(&mut raw).await >= at);
    for n in &nodes {
        caught_up(n, at).await;
        assert_eq!(read(n, &db, 4).await, 6);
    }
}
