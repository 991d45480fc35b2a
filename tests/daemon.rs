//! `walbust run` end to end against a real PostgreSQL and real redis-servers started by the
//! harness: every action kind, moved products, glob escaping, publish, two targets, a Redis
//! outage, kill -9 and replay, graceful shutdown, HA takeover, metrics.

mod common;

use common::{confirmed, current_lsn};
use redis::Commands;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use walbust::config::{Config, RedisConfig};
use walbust::model::Lsn;
use walbust_testkit::harness::{free_port, PgInstance, PgOptions, RedisInstance};

const RULES: &str = r#"
version: 1
prefix: "t:"
rules:
  - name: product
    table: products
    on: [insert, update, delete, truncate]
    delete: ["product:{id}"]
    bump: ["ver:product:{id}"]
    tags: ["category:{category_id}"]
    delete_matching: ["search:{name}:*"]
    publish: ["inval"]
    redelete_after: 300ms
    fallback:
      bump: ["ver:products"]
"#;

fn pg() -> PgInstance {
    let pg = PgInstance::start_with(PgOptions {
        extra_conf: vec![("wal_sender_timeout".into(), "5s".into())],
        ..PgOptions::default()
    })
    .unwrap();
    pg.create_database("app").unwrap();
    pg.psql(
        "app",
        "CREATE TABLE products (id int PRIMARY KEY, category_id int, name text);
         ALTER TABLE products REPLICA IDENTITY FULL;
         CREATE PUBLICATION pub FOR TABLE products;
         SELECT pg_create_logical_replication_slot('walbust', 'pgoutput');",
    )
    .unwrap();
    pg
}

fn rules_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
    dir
}

fn config(pg: &PgInstance, rules: &Path, redis: &[&RedisInstance], listen: &str) -> Config {
    let mut c = Config::default();
    c.postgres.url = pg.url("app");
    c.postgres.publication = "pub".into();
    c.postgres.status_interval = Duration::from_secs(1);
    c.postgres.reconnect_max_delay = Duration::from_millis(500);
    c.rules.path = rules.to_path_buf();
    c.redis = redis
        .iter()
        .map(|r| RedisConfig {
            url: r.url(),
            ..RedisConfig::default()
        })
        .collect();
    c.http.listen = listen.to_string();
    c.apply.retry_max_delay = Duration::from_millis(200);
    // These tests check acknowledgement itself; the durability window (acknowledgement trails
    // applied work) has its own tests below.
    c.apply.durability_window = Duration::ZERO;
    c.shutdown_timeout = Duration::from_secs(5);
    c
}

type DaemonTask = tokio::task::JoinHandle<Result<walbust::daemon::RunSummary, walbust::daemon::DaemonError>>;

/// Runs the daemon in this process until the returned sender fires (or is dropped).
fn start_daemon(cfg: Config) -> (tokio::sync::oneshot::Sender<()>, DaemonTask) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(walbust::daemon::run(cfg.validate().unwrap(), async {
        let _ = stop_rx.await;
    }));
    (stop_tx, daemon)
}

fn conn(redis: &RedisInstance) -> redis::Connection {
    redis::Client::open(redis.url()).unwrap().get_connection().unwrap()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With a daemon running on_gap = bump_epoch: an insert is applied, the slot is dropped under
/// the daemon (walsender first), the epoch must go up by one and the next insert must be
/// applied from the new slot. Returns the epoch before the gap.
fn stream_across_a_dropped_slot(pg: &PgInstance, c: &mut redis::Connection) -> i64 {
    pg.psql("app", "INSERT INTO products VALUES (1, 1, 'a')").unwrap();
    wait_until("first insert", || version(c, "t:ver:product:1").is_some());
    let epoch: i64 = c.get::<_, Option<i64>>("walbust:epoch").unwrap().unwrap();
    drop_slot_under_the_daemon(pg);
    // Bumped before the slot is recreated and again after (the second covers what committed
    // in between); the gap mark is cleared last.
    wait_until("epoch bumped", || {
        c.get::<_, Option<i64>>("walbust:epoch").unwrap() >= Some(epoch + 2)
            && !c.exists::<_, bool>("walbust:epoch:gap").unwrap()
    });
    pg.psql("app", "INSERT INTO products VALUES (2, 1, 'b')").unwrap();
    wait_until("insert after the gap", || version(c, "t:ver:product:2").is_some());
    epoch
}

/// Drops the slot under a streaming daemon: its walsender is terminated until the drop succeeds.
fn drop_slot_under_the_daemon(pg: &PgInstance) {
    wait_until("slot dropped", || {
        let _ = pg.psql(
            "app",
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE active",
        );
        pg.psql("app", "SELECT pg_drop_replication_slot('walbust')").is_ok()
    });
}

fn version(c: &mut redis::Connection, key: &str) -> Option<u64> {
    c.get::<_, Option<String>>(key).unwrap().map(|v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_every_action_kind_to_two_targets_and_survives_a_redis_outage() {
    let pg = pg();
    let mut r1 = RedisInstance::start().unwrap();
    let r2 = RedisInstance::start().unwrap();
    let rules = rules_dir();
    let port = free_port();
    let cfg = config(&pg, rules.path(), &[&r1, &r2], &format!("127.0.0.1:{port}"));
    let validated = cfg.validate().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(walbust::daemon::run(validated, async {
        let _ = stop_rx.await;
    }));

    // Caches the application filled.
    let mut c1 = conn(&r1);
    let mut c2 = conn(&r2);
    for c in [&mut c1, &mut c2] {
        let _: () = redis::pipe()
            .set("t:product:1", "cached")
            .set("t:page:cat5:a", "x")
            .set("t:page:cat5:b", "x")
            .sadd("t:tag:category:5", &["t:page:cat5:a", "t:page:cat5:b"])
            .set("t:page:cat7:a", "x")
            .sadd("t:tag:category:7", "t:page:cat7:a")
            .set("t:search:Mug:1", "x")
            .set("t:search:Mug:2", "x")
            .set("t:search:Other:1", "x")
            .query(c)
            .unwrap();
    }
    // Subscribe to the announcements.
    let mut sub = redis::Client::open(r1.url()).unwrap().get_connection().unwrap();
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe("inval").unwrap();
    pubsub.set_read_timeout(Some(Duration::from_secs(30))).unwrap();

    pg.psql("app", "INSERT INTO products VALUES (1, 5, 'Mug')").unwrap();
    let msg: String = pubsub.get_message().unwrap().get_payload().unwrap();
    let payload: serde_json::Value = serde_json::from_str(&msg).unwrap();
    assert!(
        payload["delete"].as_array().unwrap().iter().any(|k| k == "t:product:1"),
        "{payload}"
    );
    assert!(
        payload["lsn"].is_string() && payload["commit_time"].is_string(),
        "{payload}"
    );
    let insert_commit = current_lsn(&pg);
    for c in [&mut c1, &mut c2] {
        wait_until("insert effects", || !c.exists::<_, bool>("t:product:1").unwrap());
        assert!(!c.exists::<_, bool>("t:page:cat5:a").unwrap(), "tag members deleted");
        assert!(!c.exists::<_, bool>("t:tag:category:5").unwrap(), "tag set deleted");
        assert!(!c.exists::<_, bool>("t:search:Mug:1").unwrap() && !c.exists::<_, bool>("t:search:Mug:2").unwrap());
        assert!(c.exists::<_, bool>("t:search:Other:1").unwrap(), "pattern is exact");
        let v = version(c, "t:ver:product:1").unwrap();
        assert!(v > 0 && v <= insert_commit.0, "version is the commit LSN: {v}");
    }

    // redelete_after: a stale fill right after the delete is deleted again.
    let _: () = c1.set("t:product:1", "stale fill").unwrap();
    wait_until("delayed re-delete", || !c1.exists::<_, bool>("t:product:1").unwrap());

    // A product moved between categories invalidates both category lists.
    let v_before = version(&mut c1, "t:ver:product:1").unwrap();
    pg.psql("app", "UPDATE products SET category_id = 7 WHERE id = 1")
        .unwrap();
    let _: () = c1.set("t:page:cat5:c", "x").unwrap();
    let _: () = c1.sadd("t:tag:category:5", "t:page:cat5:c").unwrap();
    wait_until("move effects", || !c1.exists::<_, bool>("t:page:cat7:a").unwrap());
    wait_until("old category", || !c1.exists::<_, bool>("t:page:cat5:c").unwrap());
    assert!(
        version(&mut c1, "t:ver:product:1").unwrap() > v_before,
        "versions only move forward"
    );

    // The walsender is terminated: the daemon reconnects and goes on.
    pg.psql("app", "SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
        .unwrap();

    // A glob metacharacter in a value cannot widen the pattern.
    let _: () = c1.set("t:search:Other:2", "x").unwrap();
    let _: () = c1.set("t:search:*:1", "x").unwrap();
    pg.psql("app", "INSERT INTO products VALUES (2, 5, '*')").unwrap();
    wait_until("glob insert", || version(&mut c1, "t:ver:product:2").is_some());
    assert!(
        !c1.exists::<_, bool>("t:search:*:1").unwrap(),
        "the literal key is gone"
    );
    assert!(
        c1.exists::<_, bool>("t:search:Other:2").unwrap(),
        "other keys survive a `*` value"
    );

    // Redis down for a few seconds: nothing lost, applied when it returns.
    r1.stop_keep_port();
    pg.psql("app", "UPDATE products SET name = 'Cup' WHERE id = 1").unwrap();
    pg.psql("app", "DELETE FROM products WHERE id = 2").unwrap();
    let during = current_lsn(&pg);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        confirmed(&pg) < during,
        "not acknowledged while a target is down ({} >= {during}); metrics:\n{}",
        confirmed(&pg),
        http_get(port, "/metrics")
    );
    r1.restart().unwrap();
    let mut c1 = conn(&r1);
    wait_until("replay after the outage", || {
        version(&mut c1, "t:ver:product:2").is_some()
    });
    wait_until("version of product 1 after outage", || {
        version(&mut c1, "t:ver:product:1").is_some()
    });
    wait_until("acknowledged after apply", || confirmed(&pg) >= during);
    // The second target kept up throughout and got the same versions.
    assert!(version(&mut c2, "t:ver:product:2").unwrap() >= version(&mut c1, "t:ver:product:2").unwrap());

    // TRUNCATE applies the fallback.
    pg.psql("app", "TRUNCATE products").unwrap();
    wait_until("truncate fallback", || version(&mut c1, "t:ver:products").is_some());

    // Metrics and readiness.
    let metrics = http_get(port, "/metrics");
    assert!(
        metrics.contains("walbust_changes_total{table=\"public.products\",op=\"insert\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("walbust_commit_to_applied_seconds_count"), "{metrics}");
    assert!(
        metrics.contains("walbust_redis_errors_total{kind=\"connection\",target="),
        "{metrics}"
    );
    assert!(http_get(port, "/healthz").starts_with("HTTP/1.1 200"));
    wait_until("ready", || http_get(port, "/readyz").starts_with("HTTP/1.1 200"));

    // Graceful shutdown acknowledges everything applied.
    let last = current_lsn(&pg);
    let _ = stop_tx.send(());
    let summary = tokio::time::timeout(Duration::from_secs(20), daemon)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(summary.transactions >= 6, "{summary:?}");
    assert!(
        confirmed(&pg) >= last,
        "final status update acknowledged the applied position"
    );
}

/// The response, or nothing while the server is not listening yet.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Waits (30 s at most) for a daemon that is expected to stop by itself.
fn wait_for_exit(child: &mut Child, log: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "still running; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_daemon(config: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "walbust=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn write_config(dir: &Path, pg: &PgInstance, rules: &Path, redis: &RedisInstance) -> std::path::PathBuf {
    let path = dir.join("walbust.toml");
    std::fs::write(
        &path,
        format!(
            "shutdown_timeout = \"5s\"\n[postgres]\nurl = \"{}\"\npublication = \"pub\"\nstatus_interval = \"1s\"\nreconnect_max_delay = \"500ms\"\n[rules]\npath = \"{}\"\n[apply]\nretry_max_delay = \"200ms\"\ndurability_window = \"0s\"\n[[redis]]\nurl = \"{}\"\n[http]\nlisten = \"\"\n",
            pg.url("app"),
            rules.display(),
            redis.url()
        ),
    )
    .unwrap();
    path
}

#[test]
fn kill_9_replays_without_loss_sigterm_acknowledges_and_a_standby_takes_over() {
    let pg = pg();
    let redis = RedisInstance::start().unwrap();
    let rules = rules_dir();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &pg, rules.path(), &redis);
    let mut c = conn(&redis);

    // Two instances on the same slot: one streams, the other waits for the slot.
    let first_log = dir.path().join("first.log");
    let mut first = spawn_daemon(&config, &first_log);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg
        .psql(
            "app",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walbust' AND active",
        )
        .unwrap()
        .trim()
        != "1"
    {
        assert!(
            Instant::now() < deadline,
            "first instance not streaming; its log:\n{}",
            std::fs::read_to_string(&first_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut standby = spawn_daemon(&config, &dir.path().join("standby.log"));
    std::thread::sleep(Duration::from_millis(500));

    // Many transactions; kill -9 the active instance in the middle of them.
    pg.psql(
        "app",
        "DO $$ BEGIN FOR i IN 1..2000 LOOP INSERT INTO products VALUES (i, i % 10, 'p' || i); COMMIT; END LOOP; END $$;",
    )
    .unwrap();
    first.kill().unwrap();
    let _ = first.wait();
    let killed_at = Instant::now();
    pg.psql(
        "app",
        "DO $$ BEGIN FOR i IN 1..2000 LOOP UPDATE products SET name = 'q' || i WHERE id = i; COMMIT; END LOOP; END $$;",
    )
    .unwrap();
    let end = current_lsn(&pg);
    // The standby takes over and applies everything: every product has a version at least as
    // new as its last update (replay is harmless, versions monotonic).
    wait_until("standby caught up", || confirmed(&pg) >= end);
    let takeover = killed_at.elapsed();
    assert!(takeover < Duration::from_secs(20), "takeover took {takeover:?}");
    let updates: Vec<(i32, u64)> = (1..=2000)
        .map(|i| (i, version(&mut c, &format!("t:ver:product:{i}")).unwrap_or(0)))
        .collect();
    let missing: Vec<i32> = updates.iter().filter(|(_, v)| *v == 0).map(|(i, _)| *i).collect();
    assert!(missing.is_empty(), "products without a version: {missing:?}");
    // Every version is at least the LSN of the product's update transaction: the updates ran
    // after the inserts, so all versions are above the LSN before the update loop started.
    let min_version = updates.iter().map(|(_, v)| *v).min().unwrap();
    assert!(min_version > 0);

    // SIGTERM: graceful, acknowledges what it applied, exits 0.
    pg.psql("app", "UPDATE products SET name = 'last' WHERE id = 1")
        .unwrap();
    let last = current_lsn(&pg);
    wait_until("last update applied", || {
        version(&mut c, "t:ver:product:1").unwrap_or(0) >= last.0.saturating_sub(4096)
    });
    let status = Command::new("kill")
        .args(["-TERM", &standby.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = standby.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    assert!(confirmed(&pg) >= last, "acknowledged on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_to_a_three_node_redis_cluster() {
    let pg = pg();
    let mut cluster = walbust_testkit::harness::RedisCluster::start(3).expect("start a 3-node Redis Cluster");
    let rules = tempfile::tempdir().unwrap();
    // delete_matching is refused on cluster targets; the other kinds apply across slots.
    std::fs::write(
        rules.path().join("rules.yaml"),
        RULES.replace("    delete_matching: [\"search:{name}:*\"]\n", ""),
    )
    .unwrap();
    let mut cfg = config(&pg, rules.path(), &[], "");
    cfg.redis = vec![RedisConfig {
        url: cluster.url(),
        cluster: true,
        ..RedisConfig::default()
    }];
    let (stop_tx, daemon) = start_daemon(cfg);
    let client = redis::cluster::ClusterClient::new(vec![cluster.nodes[0].url()]).unwrap();
    let mut c = client.get_connection().unwrap();
    for i in 1..=50 {
        let _: () = c.set(format!("t:product:{i}"), "cached").unwrap();
        let _: () = c.set(format!("t:page:{i}"), "x").unwrap();
        let _: () = c.sadd("t:tag:category:3", format!("t:page:{i}")).unwrap();
    }
    pg.psql(
        "app",
        "INSERT INTO products SELECT g, 3, 'p' || g FROM generate_series(1, 50) g",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: usize = (1..=50)
            .filter(|i| c.exists::<_, bool>(format!("t:product:{i}")).unwrap())
            .count();
        let versions: usize = (1..=50)
            .filter(|i| c.exists::<_, bool>(format!("t:ver:product:{i}")).unwrap())
            .count();
        if left == 0 && versions == 50 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} keys left, {versions} versions");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!c.exists::<_, bool>("t:tag:category:3").unwrap(), "tag set drained");
    assert!(
        !(1..=50).any(|i| c.exists::<_, bool>(format!("t:page:{i}")).unwrap()),
        "tag members deleted across slots"
    );

    // Regression (issue: durability, finding 4): a shard other than the epoch key's restarts
    // empty. Its version keys are gone; only its own watermark can tell. The epoch moves.
    let epoch: i64 = c.get("walbust:epoch").unwrap();
    let other = cluster
        .nodes
        .iter()
        .position(|node| {
            let mut direct = redis::Client::open(node.url()).unwrap().get_connection().unwrap();
            redis::cmd("GET")
                .arg("walbust:epoch")
                .query::<Option<i64>>(&mut direct)
                .is_err()
        })
        .expect("a node that does not hold the epoch key");
    tokio::task::block_in_place(|| cluster.nodes[other].restart()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: Option<i64> = c.get("walbust:epoch").ok().flatten();
        if now > Some(epoch) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the epoch did not move after a shard restarted empty"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_unrenderable_rules_unless_allowed_and_bumps_the_epoch_on_a_gap() {
    let pg = pg();
    pg.psql(
        "app",
        "CREATE TABLE reviews (id int PRIMARY KEY, product_id int); ALTER PUBLICATION pub ADD TABLE reviews;",
    )
    .unwrap();
    let redis = RedisInstance::start().unwrap();
    // A DELETE on reviews carries only `id`: this rule cannot render without a fallback.
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("rules.yaml"),
        "version: 1\nprefix: \"t:\"\nrules:\n  - name: reviews\n    table: reviews\n    delete: [\"reviews:{product_id}\"]\n",
    )
    .unwrap();
    let cfg = config(&pg, rules.path(), &[&redis], "");
    let err = walbust::daemon::run(cfg.clone().validate().unwrap(), std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("startup check failed") && err.contains("product_id"),
        "{err}"
    );
    assert!(err.contains("allow_unrenderable"), "{err}");

    // on_gap = bump_epoch: the slot disappears under a running daemon.
    let rules = rules_dir();
    let mut cfg = config(&pg, rules.path(), &[&redis], "");
    cfg.apply.on_gap = walbust::config::OnGap::BumpEpoch;
    let (stop_tx, daemon) = start_daemon(cfg);
    let mut c = conn(&redis);
    let epoch = stream_across_a_dropped_slot(&pg, &mut c);
    // The daemon gave the new target a fresh epoch when it connected.
    assert!(epoch > 1_000_000_000_000_000, "a microsecond timestamp: {epoch}");
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_over_tls_with_a_configured_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (ca_cert, cert, key) = walbust_testkit::harness::make_test_certs(certs.path(), "IP:127.0.0.1").unwrap();
    let tls_port = free_port().to_string();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let redis = RedisInstance::start_with_args(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-auth-clients",
        "no",
    ])
    .expect("redis-server with TLS");
    let mut plain = conn(&redis);
    let _: () = plain.set("t:product:7", "cached").unwrap();

    let pg = pg();
    let rules = rules_dir();
    let mut cfg = config(&pg, rules.path(), &[], "");
    cfg.redis = vec![RedisConfig {
        url: format!("rediss://127.0.0.1:{tls_port}"),
        ca_cert: Some(ca_cert),
        ..RedisConfig::default()
    }];
    let (stop_tx, daemon) = start_daemon(cfg);
    pg.psql("app", "INSERT INTO products VALUES (7, 1, 'tls')").unwrap();
    wait_until("applied over TLS", || !plain.exists::<_, bool>("t:product:7").unwrap());
    assert!(version(&mut plain, "t:ver:product:7").is_some());
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
}

/// Regression: after a Redis restart without persistence the version keys are gone, readers
/// fall back to version 0, and an entry loaded before the restart could be filled back under
/// it and served stale (found by `walbust chaos`). The daemon now notices the missing epoch key
/// — within a second even when idle — and sets a fresh one, which no earlier entry carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_gets_a_fresh_epoch_even_when_idle() {
    let pg = pg();
    let mut redis = RedisInstance::start().unwrap();
    let rules = rules_dir();
    let port = free_port();
    let cfg = config(&pg, rules.path(), &[&redis], &format!("127.0.0.1:{port}"));
    let (stop_tx, daemon) = start_daemon(cfg);
    let mut c = conn(&redis);
    let mut first = None;
    wait_until("epoch set at start", || {
        first = c.get::<_, Option<i64>>("walbust:epoch").unwrap();
        first.is_some()
    });
    redis.restart().unwrap();
    let mut c = conn(&redis);
    let started = Instant::now();
    let mut second = None;
    wait_until("fresh epoch after the restart", || {
        second = c.get::<_, Option<i64>>("walbust:epoch").unwrap();
        second.is_some()
    });
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(second > first, "{second:?} after {first:?}");
    // Both fresh epochs are counted: at the first connection and after the restart.
    wait_until("epoch resets in the metrics", || {
        http_get(port, "/metrics").contains("walbust_redis_epoch_resets_total 2")
    });
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
}

/// Regression: with `create_slot = true` a slot dropped under a running daemon (or missing on a
/// promoted standby) used to be recreated silently on reconnect — the changes in between were
/// skipped with no epoch bump. Now only the first connection may create the slot; afterwards a
/// missing slot is a gap for `on_gap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_slot_never_hides_a_gap_after_streaming() {
    let pg = pg();
    pg.psql("app", "SELECT pg_drop_replication_slot('walbust')").unwrap();
    let redis = RedisInstance::start().unwrap();
    let rules = rules_dir();
    let mut cfg = config(&pg, rules.path(), &[&redis], "");
    cfg.postgres.create_slot = true;
    cfg.apply.on_gap = walbust::config::OnGap::BumpEpoch;
    let (stop_tx, daemon) = start_daemon(cfg);
    let mut c = conn(&redis);
    // The first connection creates the slot (a first deployment).
    wait_until("slot created", || {
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walbust'",
        )
        .map(|out| out.trim() == "1")
        .unwrap_or(false)
    });
    stream_across_a_dropped_slot(&pg, &mut c);
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
}

/// Regression: a slot dropped under a daemon that never received a change (a quiet database)
/// was taken for a first start — the daemon ended with "slot does not exist" instead of
/// covering the gap with an epoch bump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_on_a_quiet_database_is_a_gap() {
    let pg = pg();
    let redis = RedisInstance::start().unwrap();
    let rules = rules_dir();
    let mut cfg = config(&pg, rules.path(), &[&redis], "");
    cfg.apply.on_gap = walbust::config::OnGap::BumpEpoch;
    let (stop_tx, daemon) = start_daemon(cfg);
    let mut c = conn(&redis);
    wait_until("streaming", || {
        pg.psql("app", "SELECT count(*) FROM pg_replication_slots WHERE active")
            .is_ok_and(|n| n.trim() == "1")
    });
    let epoch: i64 = c.get::<_, Option<i64>>("walbust:epoch").unwrap().unwrap_or(0);
    drop_slot_under_the_daemon(&pg);
    wait_until("epoch moved", || {
        c.get::<_, Option<i64>>("walbust:epoch").unwrap() > Some(epoch)
    });
    pg.psql("app", "INSERT INTO products VALUES (1, 1, 'a')").unwrap();
    wait_until("streaming from the new slot", || {
        version(&mut c, "t:ver:product:1").is_some()
    });
    assert!(!daemon.is_finished());
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
}

/// Readiness on a quiet database: with the slot streaming and Redis answering, `/readyz` is
/// 200 before any change arrives, and turns 503 when Redis stops answering (issue: durability,
/// finding 8 — it used to wait for the first applied change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_on_an_idle_database_and_not_ready_without_redis() {
    let pg = pg();
    let redis = RedisInstance::start().unwrap();
    let rules = rules_dir();
    let port = free_port();
    let config = config(&pg, rules.path(), &[&redis], &format!("127.0.0.1:{port}"))
        .validate()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(walbust::daemon::run(config, async {
        let _ = stopped.await;
    }));
    let readyz = move || {
        let out = http_get(port, "/readyz");
        (out.starts_with("HTTP/1.1 200"), out)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ready, out) = tokio::task::spawn_blocking(readyz)
            .await
            .unwrap_or((false, String::new()));
        if ready {
            assert!(
                out.contains("replication_connected true") && out.contains("redis_reachable true"),
                "{out}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready on an idle database within 10 s:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Redis gone (a stopped one is noticed the same way, after the response timeout).
    let pid = redis.pid();
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ready, out) = tokio::task::spawn_blocking(readyz)
            .await
            .unwrap_or((true, String::new()));
        if !ready {
            assert!(out.contains("redis_reachable false"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "still ready with Redis stopped:\n{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(());
    daemon.await.unwrap().unwrap();
}

/// Gap recovery survives a crash at every step (issue: durability, finding 2) — the most
/// dangerous one right after recreating the slot, before the bump that covers the changes
/// committed while it recreated it. The next start finds the gap mark, finishes the recovery
/// (bumps again) before streaming, and clears the mark.
#[test]
fn a_crash_inside_gap_recovery_is_finished_at_the_next_start() {
    crash_inside_gap_recovery_at("gap:slot_recreated", true);
}

#[test]
fn a_crash_after_marking_the_gap_is_finished_at_the_next_start() {
    crash_inside_gap_recovery_at("gap:marked", false);
}

#[test]
fn a_crash_after_the_first_bump_is_finished_at_the_next_start() {
    crash_inside_gap_recovery_at("gap:bumped", true);
}

#[test]
fn a_crash_after_the_second_bump_is_finished_at_the_next_start() {
    crash_inside_gap_recovery_at("gap:bumped_again", true);
}

/// Runs walbust with the failpoint `step` (it exits with 86 there), drops the slot under it,
/// then starts it again and checks the recovery is finished before streaming.
fn crash_inside_gap_recovery_at(step: &str, bumped_before_the_crash: bool) {
    let pg = pg();
    let redis = RedisInstance::start().unwrap();
    let rules = rules_dir();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &pg, rules.path(), &redis);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("[apply]\n", "[apply]\non_gap = \"bump_epoch\"\n")).unwrap();
    let mut c = conn(&redis);
    let spawn = |log: &str, failpoint: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_walbust"));
        command
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "walbust=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap());
        if let Some(step) = failpoint {
            command.env("WALBUST_FAILPOINT", step);
        }
        command.spawn().unwrap()
    };
    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();

    let mut first = spawn("first.log", Some(step));
    pg.psql("app", "INSERT INTO products VALUES (1, 1, 'a')").unwrap();
    wait_until("first insert", || version(&mut c, "t:ver:product:1").is_some());
    let epoch: i64 = c.get::<_, Option<i64>>("walbust:epoch").unwrap().unwrap();
    drop_slot_under_the_daemon(&pg);
    let status = wait_for_exit(&mut first, &dir.path().join("first.log"));
    assert_eq!(status.code(), Some(86), "log:\n{}", log("first.log"));
    // Stopped inside the recovery: the mark is there.
    let bumped_once = c.get::<_, Option<i64>>("walbust:epoch").unwrap().unwrap();
    assert_eq!(
        bumped_once > epoch,
        bumped_before_the_crash,
        "{bumped_once} after {epoch} at {step}"
    );
    assert!(c.exists::<_, bool>("walbust:epoch:gap").unwrap());
    pg.psql("app", "INSERT INTO products VALUES (2, 1, 'b')").unwrap();

    let mut second = spawn("second.log", None);
    wait_until("the recovery finished at start", || {
        c.get::<_, Option<i64>>("walbust:epoch").unwrap() > Some(bumped_once)
            && !c.exists::<_, bool>("walbust:epoch:gap").unwrap()
    });
    assert!(
        log("second.log").contains("did not finish"),
        "the start says it finishes a recovery:\n{}",
        log("second.log")
    );
    pg.psql("app", "INSERT INTO products VALUES (3, 1, 'c')").unwrap();
    wait_until("streaming after the recovery", || {
        version(&mut c, "t:ver:product:3").is_some()
    });
    second.kill().unwrap();
    let _ = second.wait();
}

/// An applier that fails ends the daemon with an error and a non-zero exit (issue: durability,
/// finding 2): it used to hand back no targets, after which batches were "applied" to none.
#[test]
fn a_failed_applier_is_fatal() {
    let pg = pg();
    let redis = RedisInstance::start().unwrap();
    let rules = rules_dir();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &pg, rules.path(), &redis);
    let log = dir.path().join("walbust.log");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(["run", "--config"])
        .arg(&config)
        .env("WALBUST_FAILPOINT", "applier:panic")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let before = confirmed(&pg);
    wait_until("streaming", || {
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walbust' AND active",
        )
        .map(|out| out.trim() == "1")
        .unwrap_or(false)
    });
    for i in 1..=3 {
        pg.psql("app", &format!("INSERT INTO products VALUES ({i}, 1, 'p')"))
            .unwrap();
    }
    let status = wait_for_exit(&mut daemon, &log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "exit {status:?}; log:\n{text}");
    assert!(text.contains("apply task failed"), "log:\n{text}");
    // Nothing it did not apply was acknowledged.
    assert_eq!(confirmed(&pg), before);
    let mut c = conn(&redis);
    assert_eq!(version(&mut c, "t:ver:product:1"), None);
}

/// Fills a cached entry for products 1..=n, snapshots Redis (SAVE), updates the products and
/// waits until walbust deleted every entry. Returns the position after the updates.
fn fill_snapshot_update(pg: &PgInstance, c: &mut redis::Connection, n: i32) -> Lsn {
    for i in 1..=n {
        let _: () = c.set(format!("t:product:{i}"), "cached before the update").unwrap();
    }
    let _: () = redis::cmd("SAVE").query(c).unwrap();
    pg.psql(
        "app",
        &format!("UPDATE products SET name = name || '!' WHERE id <= {n}"),
    )
    .unwrap();
    let after = current_lsn(pg);
    wait_until("entries deleted after the update", || {
        (1..=n).all(|i| !c.exists::<_, bool>(format!("t:product:{i}")).unwrap())
    });
    after
}

fn cached_entries(c: &mut redis::Connection, n: i32) -> usize {
    (1..=n)
        .filter(|i| c.exists::<_, bool>(format!("t:product:{i}")).unwrap())
        .count()
}

/// Regression (issue: durability, finding 1): entries filled, `SAVE`, rows updated (walbust
/// deletes the entries), Redis killed -9 and restarted from its snapshot: the deleted entries
/// came back and stayed stale. Now every pipeline writes a watermark; the restored one is
/// older than what was written, and — the acknowledged position trailing by the durability
/// window — everything lost is replayed from the slot: the entries are deleted again, without
/// an epoch bump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restored_from_an_older_snapshot_is_replayed_from_the_slot() {
    let pg = pg();
    let mut redis = RedisInstance::start().unwrap();
    let rules = rules_dir();
    let port = free_port();
    let mut cfg = config(&pg, rules.path(), &[&redis], &format!("127.0.0.1:{port}"));
    cfg.apply.durability_window = walbust::config::DEFAULT_DURABILITY_WINDOW;
    let (stop_tx, daemon) = start_daemon(cfg);
    let mut c = conn(&redis);
    pg.psql(
        "app",
        "INSERT INTO products SELECT i, 1, 'p' || i FROM generate_series(1, 100) i",
    )
    .unwrap();
    wait_until("inserts applied", || version(&mut c, "t:ver:product:100").is_some());
    let epoch: i64 = c.get("walbust:epoch").unwrap();
    let updated = fill_snapshot_update(&pg, &mut c, 100);
    // Applied, and not acknowledged yet: it is inside the window.
    assert!(
        confirmed(&pg) < updated,
        "acknowledged before the durability window passed"
    );
    std::thread::sleep(Duration::from_secs(1));
    redis.restart_from_snapshot().unwrap();
    let mut c = conn(&redis);
    assert_eq!(
        cached_entries(&mut c, 100),
        100,
        "the snapshot brought the entries back"
    );
    wait_until("restored entries deleted again", || cached_entries(&mut c, 100) == 0);
    wait_until("rollback counted", || {
        http_get(port, "/metrics").contains(&format!(
            "walbust_redis_rollbacks_total{{target=\"{}\"}} 1",
            redis.url()
        ))
    });
    assert_eq!(c.get::<_, i64>("walbust:epoch").unwrap(), epoch, "replayed, not bumped");
    // The position is acknowledged once the window passed after the replay.
    wait_until("acknowledged after the window", || confirmed(&pg) >= updated);
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
}

/// The same restore when the loss is older than the durability window (running), and while
/// walbust was stopped (at startup): the slot cannot replay it, so the target's epoch is bumped
/// and the rollback counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_older_than_the_window_bumps_the_epoch_running_and_at_startup() {
    let pg = pg();
    let mut redis = RedisInstance::start().unwrap();
    let rules = rules_dir();
    let port = free_port();
    let mut cfg = config(&pg, rules.path(), &[&redis], &format!("127.0.0.1:{port}"));
    cfg.apply.durability_window = Duration::from_millis(500);
    let start = start_daemon;
    let (stop_tx, daemon) = start(cfg.clone());
    let mut c = conn(&redis);
    pg.psql(
        "app",
        "INSERT INTO products SELECT i, 1, 'p' || i FROM generate_series(1, 20) i",
    )
    .unwrap();
    wait_until("inserts applied", || version(&mut c, "t:ver:product:20").is_some());
    let updated = fill_snapshot_update(&pg, &mut c, 20);
    wait_until("acknowledged after the window", || confirmed(&pg) >= updated);
    let epoch: i64 = c.get("walbust:epoch").unwrap();
    redis.restart_from_snapshot().unwrap();
    let mut c = conn(&redis);
    wait_until("epoch bumped after the restore", || {
        c.get::<_, i64>("walbust:epoch").unwrap() > epoch
    });
    let metrics = http_get(port, "/metrics");
    assert!(metrics.contains("walbust_redis_rollbacks_total"), "{metrics}");
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();

    // Stopped: a snapshot, more applied and acknowledged, then the restore while walbust is down.
    let mut c = conn(&redis);
    let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
    let (stop_tx, daemon) = start(cfg.clone());
    pg.psql("app", "UPDATE products SET name = 'later' WHERE id = 1")
        .unwrap();
    let later = current_lsn(&pg);
    wait_until("acknowledged", || confirmed(&pg) >= later);
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
    let epoch: i64 = c.get("walbust:epoch").unwrap();
    redis.restart_from_snapshot().unwrap();
    let mut c = conn(&redis);
    let (stop_tx, daemon) = start(cfg);
    wait_until("epoch bumped at startup", || {
        c.get::<_, i64>("walbust:epoch").unwrap() > epoch
    });
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
}

/// Regression (issue: durability, findings 3 and 6): a version key holding more than the new
/// commit position (positions of a new timeline after a failover start lower) was left as it
/// was, so entries filled after the failover never changed again; a tag or version key of the
/// wrong type (WRONGTYPE) failed the batch forever. Now the version always moves, and a key of
/// the wrong type is replaced and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_always_move_and_wrong_types_are_replaced_and_counted() {
    let pg = pg();
    let redis = RedisInstance::start().unwrap();
    let rules = rules_dir();
    let port = free_port();
    let cfg = config(&pg, rules.path(), &[&redis], &format!("127.0.0.1:{port}"));
    let (stop_tx, daemon) = start_daemon(cfg);
    let mut c = conn(&redis);
    // Ahead of any position this server will reach soon: as after a failover to a new timeline.
    let ahead: u64 = 1 << 50;
    let _: () = c.set("t:ver:product:1", ahead.to_string()).unwrap();
    let _: () = c.hset("t:ver:product:2", "not", "a string").unwrap();
    let _: () = c.set("t:tag:category:9", "not a set").unwrap();
    pg.psql(
        "app",
        "INSERT INTO products VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 9, 'c')",
    )
    .unwrap();
    wait_until("applied", || version(&mut c, "t:ver:product:3").is_some());
    assert_eq!(version(&mut c, "t:ver:product:1"), Some(ahead + 1), "the version moved");
    assert!(
        version(&mut c, "t:ver:product:2").is_some(),
        "the hash was replaced by a version"
    );
    assert!(
        !c.exists::<_, bool>("t:tag:category:9").unwrap(),
        "the string tag was unlinked"
    );
    // A second change moves it again, whatever the position.
    pg.psql("app", "UPDATE products SET name = 'z' WHERE id = 1").unwrap();
    wait_until("moved again", || version(&mut c, "t:ver:product:1") > Some(ahead + 1));
    let metrics = http_get(port, "/metrics");
    assert!(
        metrics.contains(&format!(
            "walbust_redis_errors_total{{kind=\"wrongtype\",target=\"{}\"}} 2",
            redis.url()
        )),
        "{metrics}"
    );
    assert!(
        http_get(port, "/readyz").starts_with("HTTP/1.1 200"),
        "a replaced key is not an outage"
    );
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
}

/// Regression (issue: durability, finding 5): an instance that reached PostgreSQL but not Redis
/// kept the slot forever, and a standby that reached Redis never took over. Now it releases
/// the slot after `apply.release_slot_after`.
#[test]
fn an_instance_that_cannot_apply_releases_the_slot_to_a_standby() {
    let pg = pg();
    let mut unreachable = RedisInstance::start().unwrap();
    let reachable = RedisInstance::start().unwrap();
    let rules = rules_dir();
    let (first_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let with_release = |dir: &Path, redis: &RedisInstance| {
        let path = write_config(dir, &pg, rules.path(), redis);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("[apply]\n", "[apply]\nrelease_slot_after = \"1s\"\n"),
        )
        .unwrap();
        path
    };
    let first_config = with_release(first_dir.path(), &unreachable);
    let standby_config = with_release(standby_dir.path(), &reachable);
    let first_log = first_dir.path().join("first.log");
    let mut first = spawn_daemon(&first_config, &first_log);
    wait_until("first instance streaming", || {
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walbust' AND active",
        )
        .unwrap()
        .trim()
            == "1"
    });
    let mut standby = spawn_daemon(&standby_config, &standby_dir.path().join("standby.log"));
    std::thread::sleep(Duration::from_millis(500));
    // The first instance loses its Redis; a change arrives.
    unreachable.stop_keep_port();
    pg.psql("app", "INSERT INTO products VALUES (42, 1, 'x')").unwrap();
    let mut c = conn(&reachable);
    wait_until("the standby took over and applied", || {
        version(&mut c, "t:ver:product:42").is_some()
    });
    let log = std::fs::read_to_string(&first_log).unwrap_or_default();
    assert!(log.contains("releasing the slot"), "{log}");
    for child in [&mut first, &mut standby] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Regression (issue: durability, finding 3): PostgreSQL fails over to an asynchronous standby
/// (`pg_basebackup -R`) that is behind what walbust applied. The slot is not on the standby: a
/// gap, so the epoch moves. Commit positions of the new timeline are lower than the versions
/// walbust stored before: a max-only bump left those version keys unchanged, and entries filled
/// after the failover were never invalidated again. Now every bump changes the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_standby_behind_walbust_moves_the_epoch_and_versions_keep_moving() {
    let mut pg = pg();
    let mut standby = pg.standby().unwrap();
    let redis = RedisInstance::start().unwrap();
    let rules = rules_dir();
    let mut cfg = config(&pg, rules.path(), &[&redis], "");
    cfg.apply.on_gap = walbust::config::OnGap::BumpEpoch;
    let (stop_tx, daemon) = start_daemon(cfg);
    let mut c = conn(&redis);
    // walbust applies far ahead of what the standby got (the base backup).
    pg.psql(
        "app",
        "INSERT INTO products SELECT i, 1, repeat('x', 200) FROM generate_series(2, 3000) i;
         UPDATE products SET name = name || 'y';
         INSERT INTO products VALUES (1, 1, 'before the failover');",
    )
    .unwrap();
    wait_until("applied on the old primary", || {
        version(&mut c, "t:ver:product:1").is_some()
    });
    let before = version(&mut c, "t:ver:product:1").unwrap();
    let epoch: i64 = c.get("walbust:epoch").unwrap();

    tokio::task::block_in_place(|| standby.take_over_as_primary(&mut pg)).unwrap();
    let timeline = standby
        .psql("app", "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
        .unwrap();
    assert!(
        timeline.trim() != "00000001",
        "promoted to a new timeline, got {timeline}"
    );
    wait_until("epoch moved: the slot's history has a gap", || {
        c.get::<_, i64>("walbust:epoch").unwrap() > epoch
    });
    // The epoch moves before the slot is recreated (gap recovery: mark, bump, new slot, bump):
    // a write before the new slot exists is in the gap, so wait for walbust to stream from it.
    wait_until("streaming from the new slot", || {
        standby
            .psql("app", "SELECT count(*) FROM pg_replication_slots WHERE active")
            .is_ok_and(|n| n.trim() == "1")
    });
    // Product 1 does not exist on the standby: the new timeline inserts it again, at a lower
    // position than the version walbust stored on the old one.
    standby
        .psql("app", "INSERT INTO products VALUES (1, 1, 'after the failover')")
        .unwrap();
    let new_position: u64 = Lsn::parse(standby.psql("app", "SELECT pg_current_wal_lsn()").unwrap().trim())
        .unwrap()
        .0;
    assert!(
        new_position < before,
        "the new timeline is behind: {new_position} vs {before}"
    );
    wait_until("the version moved after the failover", || {
        version(&mut c, "t:ver:product:1") > Some(before)
    });
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
}

/// `wait_replicas`: a batch counts as applied only once the replica has it. With the replica
/// gone, nothing is acknowledged (the batch is retried); once it is back, everything is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_nothing_is_acknowledged_that_the_replica_does_not_have() {
    let pg = pg();
    let primary = RedisInstance::start().unwrap();
    let replicaof = primary.port().to_string();
    let mut replica = RedisInstance::start_with_args(&["--replicaof", "127.0.0.1", &replicaof]).unwrap();
    let rules = rules_dir();
    let mut cfg = config(&pg, rules.path(), &[&primary], "");
    cfg.redis[0].wait_replicas = 1;
    cfg.redis[0].wait_timeout = Duration::from_millis(200);
    let (stop_tx, daemon) = start_daemon(cfg);
    let mut on_replica = conn(&replica);
    pg.psql("app", "INSERT INTO products VALUES (1, 1, 'a')").unwrap();
    let first = current_lsn(&pg);
    wait_until("on the replica", || {
        version(&mut on_replica, "t:ver:product:1").is_some()
    });
    wait_until("acknowledged", || confirmed(&pg) >= first);

    replica.stop_keep_port();
    pg.psql("app", "INSERT INTO products VALUES (2, 1, 'b')").unwrap();
    let second = current_lsn(&pg);
    let mut on_primary = conn(&primary);
    wait_until("applied on the primary", || {
        version(&mut on_primary, "t:ver:product:2").is_some()
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(confirmed(&pg) < second, "acknowledged without a replica");
    replica.restart().unwrap();
    wait_until("acknowledged once the replica is back", || confirmed(&pg) >= second);
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
}

/// Regression (issue: durability, finding 6): an error retrying cannot fix (NOPERM) is said at
/// ERROR, counted by kind, and makes the daemon not ready — and nothing is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_error_is_counted_by_kind_and_makes_the_daemon_not_ready() {
    let pg = pg();
    let redis = RedisInstance::start().unwrap();
    let mut admin = conn(&redis);
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "limited", "on", ">secret", "~*", "+@all", "-unlink", "-del"][..])
        .query(&mut admin)
        .unwrap();
    let rules = rules_dir();
    let port = free_port();
    let mut cfg = config(&pg, rules.path(), &[&redis], &format!("127.0.0.1:{port}"));
    cfg.redis[0].url = format!("redis://limited:secret@127.0.0.1:{}", redis.port());
    let (stop_tx, daemon) = start_daemon(cfg);
    wait_until("ready", || http_get(port, "/readyz").starts_with("HTTP/1.1 200"));
    pg.psql("app", "INSERT INTO products VALUES (1, 1, 'a')").unwrap();
    let after = current_lsn(&pg);
    wait_until("permission errors counted", || {
        http_get(port, "/metrics").contains("walbust_redis_errors_total{kind=\"permission\"")
    });
    wait_until("not ready", || http_get(port, "/readyz").starts_with("HTTP/1.1 503"));
    assert!(confirmed(&pg) < after, "nothing acknowledged");
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), daemon).await;
}

/// Regression (issue: durability, finding 7): a large transaction is applied in parts as it
/// arrives (memory bounded by the batch, not the transaction), every key applied, and its
/// position acknowledged only once it is applied whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_is_applied_in_parts_with_every_key() {
    let batches = apply_a_20k_row_transaction(1000).await;
    assert!(batches >= 20, "one transaction went out in {batches} batches");
}

/// A batch larger than one round trip's worth (here one batch of 40,000 keys) goes out in
/// several round trips, so none can run into the response timeout — every key applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_a_round_trip_is_split_with_every_key() {
    let batches = apply_a_20k_row_transaction(1_000_000).await;
    assert!(batches <= 3, "one large batch expected, {batches} went out");
}

/// Inserts 20,000 products in one transaction with `max_batch_actions`, checks every version
/// key was applied and the position acknowledged; returns `walbust_batches_total`.
async fn apply_a_20k_row_transaction(max_batch_actions: usize) -> u64 {
    let pg = pg();
    let redis = RedisInstance::start().unwrap();
    // Without the keyspace scans of delete_matching (one SCAN per product would dominate).
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("rules.yaml"),
        RULES.replace("    delete_matching: [\"search:{name}:*\"]\n", ""),
    )
    .unwrap();
    let port = free_port();
    let mut cfg = config(&pg, rules.path(), &[&redis], &format!("127.0.0.1:{port}"));
    cfg.apply.max_batch_actions = max_batch_actions;
    cfg.rules.max_keys_per_transaction = 1_000_000;
    // Parts are how protocol 1 bounds a large transaction (PostgreSQL before 14, or streaming
    // off); a streamed one is applied at its commit.
    cfg.postgres.streaming = false;
    let (stop_tx, daemon) = start_daemon(cfg);
    pg.psql(
        "app",
        "INSERT INTO products SELECT g, g % 7, 'p' || g FROM generate_series(1, 20000) g",
    )
    .unwrap();
    let after = current_lsn(&pg);
    let mut c = conn(&redis);
    wait_until("acknowledged", || confirmed(&pg) >= after);
    let versions = (1..=20000)
        .filter(|i| version(&mut c, &format!("t:ver:product:{i}")).is_some())
        .count();
    assert_eq!(versions, 20000, "every key applied");
    let metrics = http_get(port, "/metrics");
    let batches: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("walbust_batches_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let round_trips: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("walbust_redis_round_trips_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    if max_batch_actions > 40_000 {
        assert!(round_trips >= 3, "40,000 keys in {round_trips} round trips");
    }
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
    batches
}

/// Regression (issue: inputs, finding 8): changes of a partitioned table arrive under the
/// partition's name, so a rule on the parent never fired (and the startup check asked for the
/// parent to be added to a publication that already covered it). Now the parent's rules apply
/// to every partition, including one attached while walbust runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_on_a_partitioned_table_apply_to_its_partitions() {
    let pg = pg();
    pg.psql(
        "app",
        "CREATE TABLE events (id int PRIMARY KEY, kind text) PARTITION BY RANGE (id);
         CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (1000);
         ALTER PUBLICATION pub ADD TABLE events;",
    )
    .unwrap();
    let redis = RedisInstance::start().unwrap();
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("rules.yaml"),
        "version: 1\nprefix: \"t:\"\nrules:\n  - name: event\n    table: events\n    delete: [\"event:{id}\"]\n",
    )
    .unwrap();
    let cfg = config(&pg, rules.path(), &[&redis], "");
    let (stop_tx, daemon) = start_daemon(cfg);
    let mut c = conn(&redis);
    for id in [5, 1500] {
        let _: () = c.set(format!("t:event:{id}"), "cached").unwrap();
    }
    pg.psql("app", "INSERT INTO events VALUES (5, 'a')").unwrap();
    wait_until("a partition's change invalidated by the parent's rule", || {
        !c.exists::<_, bool>("t:event:5").unwrap()
    });
    pg.psql(
        "app",
        "CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (1000) TO (2000);
         INSERT INTO events VALUES (1500, 'b');",
    )
    .unwrap();
    wait_until("a partition attached while running", || {
        !c.exists::<_, bool>("t:event:1500").unwrap()
    });
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
}

/// Protocol 2 streaming (issue: speed): a transaction larger than `logical_decoding_work_mem`
/// is streamed while it runs. Its keys are applied at its commit, nothing of an aborted
/// subtransaction or of an aborted transaction is applied, and the position is acknowledged only
/// after the commit. Keys held in memory until the commit (`max_batch_actions` above them all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_transactions_apply_at_commit_and_drop_what_aborted() {
    streamed_transactions(None).await;
}

/// The same with the keys waiting on disk (`apply.spill_dir`): a streamed transaction that
/// holds `max_batch_actions` keys spills them, reads them back at its commit, and still drops
/// what its aborted subtransaction and the aborted transaction spilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_transactions_spilled_to_disk_apply_at_commit_and_drop_what_aborted() {
    streamed_transactions(Some(250)).await;
}

async fn streamed_transactions(spill_at: Option<usize>) {
    let pg = PgInstance::start_with(PgOptions {
        extra_conf: vec![
            ("wal_sender_timeout".into(), "5s".into()),
            ("logical_decoding_work_mem".into(), "64kB".into()),
        ],
        ..PgOptions::default()
    })
    .unwrap();
    if pg
        .psql("postgres", "SHOW server_version_num")
        .unwrap()
        .trim()
        .parse::<u32>()
        .unwrap_or(0)
        < 140000
    {
        eprintln!("PostgreSQL before 14 streams nothing; skipped");
        return;
    }
    pg.create_database("app").unwrap();
    pg.psql(
        "app",
        "CREATE TABLE products (id int PRIMARY KEY, category_id int, name text);
         CREATE PUBLICATION pub FOR TABLE products;
         SELECT pg_create_logical_replication_slot('walbust', 'pgoutput');",
    )
    .unwrap();
    let redis = RedisInstance::start().unwrap();
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("rules.yaml"),
        "version: 1\nprefix: \"t:\"\nrules:\n  - name: p\n    table: products\n    delete: [\"product:{id}\"]\n",
    )
    .unwrap();
    let port = free_port();
    let mut cfg = config(&pg, rules.path(), &[&redis], &format!("127.0.0.1:{port}"));
    cfg.rules.max_keys_per_transaction = 1_000_000;
    cfg.postgres.streaming = true;
    cfg.postgres.decoding_work_mem = "64kB".into();
    let spill_dir = tempfile::tempdir().unwrap();
    cfg.apply.spill_dir = spill_dir.path().to_path_buf();
    cfg.apply.max_batch_actions = spill_at.unwrap_or(100_000);
    let (stop_tx, daemon) = start_daemon(cfg);
    let mut c = conn(&redis);
    for id in 1..=9000 {
        let _: () = c.set(format!("t:product:{id}"), "cached").unwrap();
    }
    // Committed: ids 1..=3000 (top level) and 6001..=9000 (a released savepoint); rolled back
    // to a savepoint: 3001..=6000.
    pg.psql(
        "app",
        "BEGIN;
         INSERT INTO products SELECT g, 1, repeat('x', 100) FROM generate_series(1, 3000) g;
         SAVEPOINT a;
         INSERT INTO products SELECT g, 1, repeat('x', 100) FROM generate_series(3001, 6000) g;
         ROLLBACK TO SAVEPOINT a;
         SAVEPOINT b;
         INSERT INTO products SELECT g, 1, repeat('x', 100) FROM generate_series(6001, 9000) g;
         RELEASE SAVEPOINT b;
         COMMIT;",
    )
    .unwrap();
    let committed = current_lsn(&pg);
    // An aborted streamed transaction.
    for id in 20001..=23000 {
        let _: () = c.set(format!("t:product:{id}"), "cached").unwrap();
    }
    pg.psql(
        "app",
        "BEGIN; INSERT INTO products SELECT g, 1, repeat('x', 100) FROM generate_series(20001, 23000) g; ROLLBACK;",
    )
    .unwrap();
    pg.psql("app", "INSERT INTO products VALUES (99999, 1, 'marker')")
        .unwrap();
    let _: () = c.set("t:product:99999", "cached").unwrap();
    pg.psql("app", "UPDATE products SET name = 'm' WHERE id = 99999")
        .unwrap();
    wait_until("the marker after everything", || {
        !c.exists::<_, bool>("t:product:99999").unwrap()
    });
    wait_until("acknowledged", || confirmed(&pg) >= committed);
    let present = |c: &mut redis::Connection, ids: std::ops::RangeInclusive<i32>| {
        ids.filter(|id| c.exists::<_, bool>(format!("t:product:{id}")).unwrap())
            .count()
    };
    assert_eq!(present(&mut c, 1..=3000), 0, "top-level keys applied");
    assert_eq!(present(&mut c, 6001..=9000), 0, "released subtransaction applied");
    assert_eq!(present(&mut c, 3001..=6000), 3000, "rolled-back subtransaction dropped");
    assert_eq!(present(&mut c, 20001..=23000), 3000, "aborted transaction dropped");
    let streamed: String = pg
        .psql(
            "app",
            "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'walbust'",
        )
        .unwrap();
    assert!(
        streamed.trim().parse::<u64>().unwrap_or(0) >= 1,
        "the server streamed: {streamed}"
    );
    let metrics = http_get(port, "/metrics");
    let spilled: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("walbust_streamed_keys_spilled_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no spill counter in\n{metrics}"));
    if spill_at.is_some() {
        // Each of the three 3,000-row parts and the aborted transaction went over 250 keys.
        assert!(spilled >= 4 * 2_000, "spilled {spilled} keys");
    } else {
        assert_eq!(spilled, 0);
    }
    assert_eq!(
        std::fs::read_dir(spill_dir.path()).unwrap().count(),
        0,
        "spill files are anonymous: nothing is left in the directory"
    );
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
}

/// Redis Cluster (issue: speed): a batch goes as one pipeline per node, not one per hash slot —
/// 2,000 deletes and 2,000 version bumps over three nodes in a handful of round trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_batch_goes_as_one_pipeline_per_node() {
    use walbust::sink::Sink;
    let cluster = walbust_testkit::harness::RedisCluster::start(3).expect("start a 3-node Redis Cluster");
    let mut target = cluster_target(&cluster);
    let client = redis::cluster::ClusterClient::new(vec![cluster.nodes[0].url()]).unwrap();
    let mut c = client.get_connection().unwrap();
    let keys: Vec<String> = (0..2000).map(|i| format!("k:{i}")).collect();
    for key in &keys {
        let _: () = c.set(key, "cached").unwrap();
    }
    let batch = cluster_batch(keys.clone(), (0..2000).map(|i| format!("v:{i}")).collect());
    target.apply(&batch).await.unwrap();
    let round_trips = target.take_round_trips();
    assert!(round_trips <= 10, "{round_trips} round trips for 4,000 keys on 3 nodes");
    assert!(
        keys.iter().all(|k| !c.exists::<_, bool>(k).unwrap()),
        "every key deleted"
    );
    assert!(
        (0..2000).all(|i| c.exists::<_, bool>(format!("v:{i}")).unwrap()),
        "every version bumped"
    );
}

/// Redis Cluster (issue: speed): a slot moved to another node after walbust read the topology
/// is still applied. The old owner answers MOVED to the per-node pipeline; the cluster client
/// follows it (walbust's own fallback — those slots again, one pipeline each through the
/// cluster client — covers a client that would not: with the fallback removed this still
/// passes on redis-rs 1.8, so both layers are kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_after_the_topology_was_read_is_applied_through_the_redirect() {
    let cluster = walbust_testkit::harness::RedisCluster::start(3).expect("start a 3-node Redis Cluster");
    let mut target = cluster_target(&cluster);
    // The target reads the topology with its first batch.
    target
        .apply(&cluster_batch(vec!["k:warm".into()], vec![]))
        .await
        .unwrap();

    // Move the (empty) slot of `k:moved` to another node.
    let slot = walbust::sink::redis::key_slot(b"k:moved");
    let mut nodes = Vec::new();
    for node in &cluster.nodes {
        let mut c = redis::Client::open(node.url()).unwrap().get_connection().unwrap();
        let id: String = redis::cmd("CLUSTER").arg("MYID").query(&mut c).unwrap();
        let owns = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query::<redis::Value>(&mut c)
            .is_ok_and(|v| owner_port(&v, slot) == Some(node.port()));
        nodes.push((c, id, owns));
    }
    let from = nodes.iter().position(|n| n.2).expect("the slot's owner");
    let to = (from + 1) % nodes.len();
    let to_id = nodes[to].1.clone();
    // The new owner first, then the old one, then the rest (an empty slot moves at once).
    for i in [to, from, (from + 2) % nodes.len()] {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&to_id)
            .query(&mut nodes[i].0)
            .unwrap();
    }
    let client = redis::cluster::ClusterClient::new(vec![cluster.nodes[to].url()]).unwrap();
    let mut c = client.get_connection().unwrap();
    let _: () = c.set("k:moved", "cached").unwrap();
    let on_new_owner: bool = redis::cmd("EXISTS").arg("k:moved").query(&mut nodes[to].0).unwrap();
    assert!(on_new_owner, "the slot moved to node {to}");

    target
        .apply(&cluster_batch(vec!["k:moved".into()], vec!["v:moved{k:moved}".into()]))
        .await
        .unwrap();
    assert!(!c.exists::<_, bool>("k:moved").unwrap(), "deleted on the new owner");
    assert!(
        c.exists::<_, bool>("v:moved{k:moved}").unwrap(),
        "version bumped on the new owner"
    );
}

/// walbust's target for a test cluster.
fn cluster_target(cluster: &walbust_testkit::harness::RedisCluster) -> walbust::sink::redis::RedisTarget {
    walbust::sink::redis::RedisTarget::with_mode(
        &cluster.url(),
        true,
        walbust::sink::redis::DeleteCommand::Unlink,
        "tag:",
    )
    .unwrap()
}

/// One committed transaction's deletes and bumps as a batch.
fn cluster_batch(delete: Vec<String>, bump: Vec<String>) -> walbust::plan::Batch {
    let mut batch = walbust::plan::Batch::default();
    batch.add_owned(walbust::plan::PlannedTxn {
        commit: walbust::model::CommitInfo {
            xid: Some(1),
            lsn: Some(Lsn(100)),
            end_lsn: Some(Lsn(108)),
            commit_time: None,
        },
        changes: (delete.len() + bump.len()) as u64,
        delete,
        bump,
        ..Default::default()
    });
    batch
}

/// The port of the node serving `slot` in a `CLUSTER SLOTS` reply.
fn owner_port(slots: &redis::Value, slot: u16) -> Option<u16> {
    let redis::Value::Array(ranges) = slots else {
        return None;
    };
    ranges.iter().find_map(|range| {
        let redis::Value::Array(parts) = range else { return None };
        let int = |v: &redis::Value| match v {
            redis::Value::Int(n) => Some(*n),
            _ => None,
        };
        let (start, end) = (int(parts.first()?)?, int(parts.get(1)?)?);
        if !(start..=end).contains(&i64::from(slot)) {
            return None;
        }
        let redis::Value::Array(node) = parts.get(2)? else {
            return None;
        };
        int(node.get(1)?).map(|p| p as u16)
    })
}
