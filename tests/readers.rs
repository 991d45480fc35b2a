//! Readers against a real PostgreSQL, a real daemon and real redis-servers (issue: readers):
//! one load per key after walbust invalidates everything at once (leases + single-flight),
//! reads that stay correct while rows change, reads that fall through within their deadline
//! when Redis stops, a fill racing an invalidation, and the same protocol on a Redis Cluster.

mod common;

use common::{db, wait_for};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use walbust::client::{CacheClient, Entry, ReadOptions, Source};
use walbust::config::{OnGap, RedisConfig};
use walbust_testkit::harness::{PgInstance, RedisCluster, RedisInstance};

const KEYS: i64 = 50;

const RULES: &str = r#"
version: 1
prefix: "r:"
rules:
  - name: item
    table: items
    on: [insert, update, delete]
    bump: ["ver:item:{id}"]
    delete: ["plain:{id}"]
    tags: ["group:{grp}"]
"#;

fn pg() -> PgInstance {
    common::database(
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, rev int NOT NULL);
             ALTER TABLE items REPLICA IDENTITY FULL;
             INSERT INTO items SELECT g, g % 5, 1 FROM generate_series(1, {KEYS}) g;"
        ),
        "items",
    )
}

fn start_daemon(pg: &PgInstance, redis: RedisConfig) -> (tokio::sync::oneshot::Sender<()>, tempfile::TempDir) {
    let rules = common::rules_dir(RULES);
    let mut c = common::daemon_config(pg, rules.path());
    c.redis = vec![redis];
    c.apply.on_gap = OnGap::BumpEpoch;
    let (stop, _daemon) = common::spawn_daemon(c);
    // Streaming, so the epoch is set before the first read builds a key with it.
    common::wait_streaming(pg);
    (stop, rules)
}

/// The daemon's target for one redis-server.
fn redis_target(redis: &RedisInstance) -> RedisConfig {
    RedisConfig {
        url: redis.url(),
        ..RedisConfig::default()
    }
}

/// The loader: the row as `<id>:<rev>`, after `delay` (a query that takes a while), counted.
#[derive(Default)]
struct Loads {
    per_key: HashMap<i64, AtomicU64>,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

impl Loads {
    fn new() -> Arc<Loads> {
        Arc::new(Loads {
            per_key: (1..=KEYS).map(|k| (k, AtomicU64::new(0))).collect(),
            ..Loads::default()
        })
    }

    async fn load(
        &self,
        db: &tokio_postgres::Client,
        id: i64,
        delay: Duration,
    ) -> Result<String, tokio_postgres::Error> {
        self.per_key[&id].fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        let rev: i32 = db
            .query_one("SELECT rev FROM items WHERE id = $1", &[&(id as i32)])
            .await?
            .get(0);
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(format!("{id}:{rev}"))
    }

    fn counts(&self) -> Vec<u64> {
        (1..=KEYS).map(|k| self.per_key[&k].load(Ordering::SeqCst)).collect()
    }

    fn reset(&self) {
        for c in self.per_key.values() {
            c.store(0, Ordering::SeqCst);
        }
    }
}

fn version_entry(key: &str, version: &str) -> (String, String) {
    (key.to_string(), version.to_string())
}

/// `processes` clients (as separate processes would have) × `per_process` readers, each
/// reading every key once, all in the same order and at once (a hot page). Returns every
/// value read.
async fn stampede(
    clients: &[CacheClient],
    per_process: usize,
    db: &Arc<tokio_postgres::Client>,
    loads: &Arc<Loads>,
) -> Vec<String> {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients.len() * per_process));
    let mut tasks = Vec::new();
    for client in clients {
        for _ in 0..per_process {
            let (mut client, db, loads, barrier) = (client.clone(), db.clone(), loads.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut values = Vec::new();
                for id in 1..=KEYS {
                    let (key, version) = version_entry(&format!("item:{id}"), &format!("ver:item:{id}"));
                    let entry = Entry {
                        key: &key,
                        versions: &[&version],
                        tags: &[],
                    };
                    let (value, _) = client
                        .get_or_load(&entry, || loads.load(&db, id, Duration::from_millis(10)))
                        .await
                        .unwrap();
                    values.push(value);
                }
                values
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn epoch(redis: &mut redis::aio::MultiplexedConnection) -> i64 {
    redis::cmd("GET")
        .arg("walbust:epoch")
        .query_async::<Option<i64>>(redis)
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Drops the slot under the daemon: a gap, which it covers by moving the epoch (every
/// version-keyed entry at once — the largest herd walbust can cause).
async fn bump_epoch_through_a_gap(pg: &PgInstance, redis: &mut redis::aio::MultiplexedConnection) {
    let before = epoch(redis).await;
    wait_for("slot dropped", async || {
        let _ = pg.psql(
            "app",
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE active",
        );
        pg.psql("app", "SELECT pg_drop_replication_slot('walbust')").is_ok()
    })
    .await;
    wait_for("epoch moved twice and the gap cleared", async || {
        let gap: bool = redis::cmd("EXISTS")
            .arg("walbust:epoch:gap")
            .query_async(redis)
            .await
            .unwrap();
        epoch(redis).await > before
            && !gap
            && pg
                .psql("app", "SELECT 1 FROM pg_replication_slots WHERE active")
                .is_ok_and(|o| o.trim() == "1")
    })
    .await;
}

/// 200 concurrent readers (4 processes × 50) of 50 hot keys, then an epoch bump through the
/// daemon: with leases and single-flight every key is loaded once; plain cache-aside loads
/// each key about once per reader. Then, with rows changing under them, no reader returns a
/// row older than the last invalidation walbust had applied when its read began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_load_per_key_after_an_epoch_bump_and_never_older_than_the_last_invalidation() {
    let pg = pg();
    let redis = RedisInstance::start().unwrap();
    let (_stop, _rules) = start_daemon(&pg, redis_target(&redis));
    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let db = db(&pg).await;
    let connect = async |options: ReadOptions| {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(
                CacheClient::connect(&redis.url(), "r:")
                    .await
                    .unwrap()
                    .with_options(options.clone()),
            );
        }
        clients
    };
    let loads = Loads::new();

    let mut counts = HashMap::new();
    for (name, options) in [
        ("unprotected", ReadOptions::unprotected()),
        ("leases + single-flight", ReadOptions::default()),
    ] {
        let clients = connect(options).await;
        stampede(&clients, 50, &db, &loads).await;
        bump_epoch_through_a_gap(&pg, &mut raw).await;
        loads.reset();
        let values = stampede(&clients, 50, &db, &loads).await;
        assert!(values.iter().all(|v| v.ends_with(":1")), "rows did not change");
        let per_key = loads.counts();
        eprintln!(
            "{name}: loads per key after the epoch bump: max {}, total {} for {} reads",
            per_key.iter().max().unwrap(),
            per_key.iter().sum::<u64>(),
            values.len()
        );
        counts.insert(name, per_key);
    }
    let protected = &counts["leases + single-flight"];
    assert!(protected.iter().all(|n| *n == 1), "one load per key: {protected:?}");
    let unprotected = &counts["unprotected"];
    assert!(
        unprotected.iter().sum::<u64>() > 4 * KEYS as u64,
        "the comparison stampedes without leases: {unprotected:?}"
    );

    // Rows change under the readers: never older than the last invalidation; with
    // stale-while-revalidate, never older by more than its bound.
    let (reads, violations) = reads_while_rows_change(&redis, &db, &loads, None).await;
    assert!(
        violations.is_empty(),
        "{} stale reads of {reads}, e.g. {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    let bound = Duration::from_millis(300);
    let (reads, violations) = reads_while_rows_change(&redis, &db, &loads, Some(bound)).await;
    assert!(
        violations.is_empty(),
        "{} reads older than the bound, of {reads}, e.g. {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
}

/// 40 readers (4 clients) read random rows for 6 s while a writer updates one row at a time,
/// waits until walbust applied its version bump, and only then publishes the revision as
/// invalidated (and when). A read that began after that must return that revision or a newer
/// one — or, with stale-while-revalidate, a value invalidated at most the bound before it
/// began. Returns the number of reads and the violations.
async fn reads_while_rows_change(
    redis: &RedisInstance,
    db: &Arc<tokio_postgres::Client>,
    loads: &Arc<Loads>,
    stale_bound: Option<Duration>,
) -> (u64, Vec<String>) {
    let options = ReadOptions {
        stale_while_revalidate: stale_bound,
        ..ReadOptions::default()
    };
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(
            CacheClient::connect(&redis.url(), "r:")
                .await
                .unwrap()
                .with_options(options.clone()),
        );
    }
    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Per row: the latest invalidated revision; per (row, revision): when it was invalidated.
    let invalidated: Arc<Vec<AtomicI64>> = Arc::new((0..=KEYS).map(|_| AtomicI64::new(0)).collect());
    let invalidated_at: Arc<std::sync::Mutex<HashMap<(i64, i64), Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load_time = Duration::from_millis(if stale_bound.is_some() { 20 } else { 2 });
    let mut readers = Vec::new();
    for r in 0..40usize {
        let (mut client, db, loads, invalidated, invalidated_at, stop) = (
            clients[r % 4].clone(),
            db.clone(),
            loads.clone(),
            invalidated.clone(),
            invalidated_at.clone(),
            stop.clone(),
        );
        readers.push(tokio::spawn(async move {
            let (mut reads, mut violations) = (0u64, Vec::new());
            let mut id = r as i64 % KEYS + 1;
            while !stop.load(Ordering::SeqCst) {
                id = (id * 7 + 3) % KEYS + 1;
                let floor = invalidated[id as usize].load(Ordering::SeqCst);
                let began = Instant::now();
                let (key, version) = version_entry(&format!("item:{id}"), &format!("ver:item:{id}"));
                let entry = Entry {
                    key: &key,
                    versions: &[&version],
                    tags: &[],
                };
                let (value, source) = client
                    .get_or_load(&entry, || loads.load(&db, id, load_time))
                    .await
                    .unwrap();
                let rev: i64 = value.split(':').nth(1).unwrap().parse().unwrap();
                if rev < floor {
                    // How long before this read the revision it returned was superseded.
                    let superseded = invalidated_at.lock().unwrap().get(&(id, rev + 1)).copied();
                    let late = superseded.map(|at| began.saturating_duration_since(at));
                    let allowed = match (source, stale_bound, late) {
                        (Source::Stale, Some(bound), Some(late)) => late <= bound,
                        _ => false,
                    };
                    if !allowed {
                        violations.push(format!(
                            "item {id}: {source:?} rev {rev} after rev {floor} was invalidated ({late:?} before the read)"
                        ));
                    }
                }
                reads += 1;
            }
            (reads, violations)
        }));
    }
    let mut writes = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        let id = (writes * 13) % KEYS + 1;
        let before: Option<String> = redis::cmd("GET")
            .arg(format!("r:ver:item:{id}"))
            .query_async(&mut raw)
            .await
            .unwrap();
        let rev: i32 = db
            .query_one(
                "UPDATE items SET rev = rev + 1 WHERE id = $1 RETURNING rev",
                &[&(id as i32)],
            )
            .await
            .unwrap()
            .get(0);
        wait_for("the version bump", async || {
            redis::cmd("GET")
                .arg(format!("r:ver:item:{id}"))
                .query_async::<Option<String>>(&mut raw)
                .await
                .unwrap()
                != before
        })
        .await;
        invalidated_at
            .lock()
            .unwrap()
            .insert((id, i64::from(rev)), Instant::now());
        invalidated[id as usize].store(i64::from(rev), Ordering::SeqCst);
        writes += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let (mut reads, mut violations) = (0, Vec::new());
    for r in readers {
        let (n, v) = r.await.unwrap();
        reads += n;
        violations.extend(v);
    }
    let stats = clients[0].stats();
    eprintln!("stale_while_revalidate {stale_bound:?}: {writes} writes, {reads} reads while rows changed; one client's stats {stats:?}");
    assert!(writes > 20 && reads > 1000, "{writes} writes, {reads} reads");
    if stale_bound.is_some() {
        assert!(stats.stale_serves > 0, "no read was served a stale copy: {stats:?}");
    }
    (reads, violations)
}

/// Redis stopped (SIGSTOP) during reads: every read completes from PostgreSQL within its
/// deadline (one Redis timeout, then the loader), loads stay within the limit, the circuit
/// stops trying Redis; once Redis is back and the circuit's pause is over, reads hit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_through_within_their_deadline_when_redis_stops() {
    let pg = pg();
    let redis = RedisInstance::start().unwrap();
    let db = db(&pg).await;
    let options = ReadOptions {
        redis_timeout: Duration::from_millis(100),
        max_concurrent_loads: 4,
        load_wait: Duration::from_secs(5),
        circuit_open_for: Duration::from_secs(1),
        ..ReadOptions::default()
    };
    let client = CacheClient::connect(&redis.url(), "r:")
        .await
        .unwrap()
        .with_options(options.clone());
    let loads = Loads::new();
    let read_all = async |client: &CacheClient| {
        let mut tasks = Vec::new();
        for r in 0..100i64 {
            let (mut client, db, loads) = (client.clone(), db.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                let id = r % 20 + 1;
                let key = format!("item:{id}");
                let entry = Entry {
                    key: &key,
                    versions: &[],
                    tags: &[],
                };
                let started = Instant::now();
                let (value, source) = client
                    .get_or_load(&entry, || loads.load(&db, id, Duration::from_millis(20)))
                    .await
                    .unwrap();
                (value, source, started.elapsed())
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    };
    // Warm, then stop Redis.
    read_all(&client).await;
    let pid = redis.pid().to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    // Every key needs a load now; 20 keys of 20 ms, 4 at a time, behind one 100 ms timeout.
    for round in 0..2 {
        let before = client.stats();
        let reads = read_all(&client).await;
        let slowest = reads.iter().map(|r| r.2).max().unwrap();
        let after = client.stats();
        eprintln!("round {round} with Redis stopped: slowest read {slowest:?}; stats {after:?}");
        assert!(reads.iter().all(|(v, _, _)| v.ends_with(":1")));
        assert!(slowest < Duration::from_millis(900), "a read took {slowest:?}");
        assert!(loads.most_at_once.load(Ordering::SeqCst) <= 4, "load limit");
        if round == 1 {
            // The circuit is open: no read tried Redis.
            assert_eq!(after.redis_errors, before.redis_errors, "the circuit skips Redis");
            assert!(after.fall_throughs >= before.fall_throughs + 20);
        }
    }
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    tokio::time::sleep(options.circuit_open_for + Duration::from_millis(200)).await;
    let hits = client.stats().hits;
    read_all(&client).await;
    assert!(
        client.stats().hits > hits,
        "reads go to Redis again: {:?}",
        client.stats()
    );
}

/// A fill racing an invalidation: the reader holding the lease loads the old row, walbust
/// deletes the key (removing the lease) before the fill — the fill is dropped, and the next
/// read loads the new row. Waiting readers are served the holder's fill, never a second load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_racing_an_invalidation_is_dropped_and_waiters_share_one_load() {
    let pg = pg();
    let redis = RedisInstance::start().unwrap();
    let (_stop, _rules) = start_daemon(&pg, redis_target(&redis));
    let db = db(&pg).await;
    let loads = Loads::new();
    let mut client = CacheClient::connect(&redis.url(), "r:").await.unwrap();
    let entry = Entry {
        key: "plain:1",
        versions: &[],
        tags: &["group:1"],
    };
    // The holder reads rev 1, then the row changes and walbust deletes the key while it waits.
    let (value, source) = client
        .get_or_load(&entry, || async {
            let value = loads.load(&db, 1, Duration::ZERO).await;
            pg.psql("app", "UPDATE items SET rev = 2 WHERE id = 1").unwrap();
            let mut raw = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while redis::cmd("EXISTS").arg("r:plain:1").query::<bool>(&mut raw).unwrap() {
                assert!(Instant::now() < deadline, "walbust never deleted the lease");
                std::thread::sleep(Duration::from_millis(10));
            }
            value
        })
        .await
        .unwrap();
    assert_eq!((value.as_str(), source), ("1:1", Source::Loaded));
    assert_eq!(client.stats().fills_dropped, 1, "{:?}", client.stats());
    let (value, _) = client
        .get_or_load(&entry, || loads.load(&db, 1, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(value, "1:2", "the next read loads the new row");

    // A tag invalidation removes a lease too: the key was filed under its tags with the lease.
    let mut raw = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("DEL").arg("r:plain:1").query(&mut raw).unwrap();
    let members: Vec<String> = redis::cmd("SMEMBERS").arg("r:tag:group:1").query(&mut raw).unwrap();
    assert!(members.contains(&"r:plain:1".to_string()), "{members:?}");

    // Ten readers in other processes (clients) wait for one holder's fill.
    loads.reset();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut client = CacheClient::connect(&redis.url(), "r:").await.unwrap();
        let (db, loads) = (db.clone(), loads.clone());
        tasks.push(tokio::spawn(async move {
            let entry = Entry {
                key: "plain:1",
                versions: &[],
                tags: &["group:1"],
            };
            client
                .get_or_load(&entry, || loads.load(&db, 1, Duration::from_millis(100)))
                .await
                .unwrap()
        }));
    }
    let mut sources = Vec::new();
    for t in tasks {
        let (value, source) = t.await.unwrap();
        assert_eq!(value, "1:2");
        sources.push(source);
    }
    assert_eq!(loads.counts()[0], 1, "one load for ten readers: {sources:?}");
    assert_eq!(sources.iter().filter(|s| **s == Source::Waited).count(), 9);
}

/// The same protocol on a real Redis Cluster, with the daemon writing to it: version-keyed
/// and plain entries, tags, leases (one load for twenty readers), and walbust's invalidations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_fills_on_a_redis_cluster() {
    let pg = pg();
    let cluster = RedisCluster::start(3).expect("start a 3-node Redis Cluster");
    let (_stop, _rules) = start_daemon(
        &pg,
        RedisConfig {
            url: cluster.url(),
            cluster: true,
            ..RedisConfig::default()
        },
    );
    let db = db(&pg).await;
    let loads = Loads::new();
    let seeds: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    let client = CacheClient::connect_cluster(&seeds, "r:").await.unwrap();
    let read =
        |client: &CacheClient, id: i64, plain: bool| read_item(client.clone(), db.clone(), loads.clone(), id, plain);
    // Twenty readers of one key: one load.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = CacheClient::connect_cluster(&seeds, "r:").await.unwrap();
        tasks.push(read(&client, 1, false));
    }
    for (value, _) in futures_join(tasks).await {
        assert_eq!(value, "1:1");
    }
    assert_eq!(loads.counts()[0], 1, "one load on a cluster too");
    for id in 1..=KEYS {
        assert_eq!(read(&client, id, true).await.0, format!("{id}:1"));
        assert_eq!(
            read(&client, id, false).await.1,
            if id == 1 { Source::Cache } else { Source::Loaded }
        );
        assert_eq!(read(&client, id, false).await.1, Source::Cache);
    }
    pg.psql("app", "UPDATE items SET rev = 2").unwrap();
    wait_for("every version bumped and plain key deleted", async || {
        let mut fresh = 0;
        for id in 1..=KEYS {
            if read(&client, id, false).await.0 == format!("{id}:2")
                && read(&client, id, true).await.0 == format!("{id}:2")
            {
                fresh += 1;
            }
        }
        fresh == KEYS
    })
    .await;
    assert_eq!(client.stats().redis_errors, 0, "{:?}", client.stats());
}

/// Reads item `id` as a version-keyed entry (`item:<id>`) or a plain one filed under its
/// group's tag (`plain:<id>`), loading with a 50 ms query.
async fn read_item(
    mut client: CacheClient,
    db: Arc<tokio_postgres::Client>,
    loads: Arc<Loads>,
    id: i64,
    plain: bool,
) -> (String, Source) {
    let (key, version, tag) = (
        format!("item:{id}"),
        format!("ver:item:{id}"),
        format!("group:{}", id % 5),
    );
    let plain_key = format!("plain:{id}");
    let versions = [version.as_str()];
    let tags = [tag.as_str()];
    let entry = match plain {
        false => Entry {
            key: &key,
            versions: &versions,
            tags: &[],
        },
        true => Entry {
            key: &plain_key,
            versions: &[],
            tags: &tags,
        },
    };
    client
        .get_or_load(&entry, || loads.load(&db, id, Duration::from_millis(50)))
        .await
        .unwrap()
}

/// Runs futures concurrently on the runtime and collects their outputs in order.
async fn futures_join<T: Send + 'static>(
    futures: Vec<impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Single-flight alone (leases off): 50 tasks of one process reading one missing key never run
/// two loads of it at once, and most of them are served the one load they joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_never_loads_a_key_twice_at_once() {
    let pg = pg();
    let redis = RedisInstance::start().unwrap();
    let db = db(&pg).await;
    let loads = Loads::new();
    let client = CacheClient::connect(&redis.url(), "r:")
        .await
        .unwrap()
        .with_options(ReadOptions {
            lease: None,
            ..ReadOptions::default()
        });
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (mut client, db, loads, barrier) = (client.clone(), db.clone(), loads.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let entry = Entry {
                key: "plain:1",
                versions: &[],
                tags: &[],
            };
            client
                .get_or_load(&entry, || loads.load(&db, 1, Duration::from_millis(20)))
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, "1:1");
    }
    let stats = client.stats();
    assert_eq!(
        loads.most_at_once.load(Ordering::SeqCst),
        1,
        "never two loads at once: {stats:?}"
    );
    assert!(
        loads.counts()[0] <= 2,
        "{} loads for 50 readers: {stats:?}",
        loads.counts()[0]
    );
    assert!(stats.single_flight_joins >= 40, "{stats:?}");
}
