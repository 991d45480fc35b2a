//! The memcached target against a real memcached (and, end to end, a real PostgreSQL and the
//! daemon): deletes pipelined in quiet mode (also of keys memcached cannot take as text),
//! version keys that only move forward under concurrent writers, `flush_all` for a gap, and
//! tags refused by `check --config` and at startup.

mod common;

use common::wait_until;
use std::time::Duration;
use walbust::config::{Config, MemcachedConfig};
use walbust::sink::memcached::MemcachedTarget;
use walbust::sink::Sink;
use walbust_testkit::harness::{MemcachedInstance, PgInstance};

const RULES: &str = r#"
version: 1
prefix: "m:"
rules:
  - name: product
    table: products
    on: [insert, update, delete]
    delete: ["product:{id}", "by-name:{name}"]
    bump: ["ver:product:{id}"]
"#;

const TAG_RULES: &str = r#"
version: 1
rules:
  - name: product
    table: products
    on: [update]
    delete: ["product:{id}"]
    tags: ["category:{id}"]
"#;

fn pg() -> PgInstance {
    common::database(
        "CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price int NOT NULL);
         ALTER TABLE products REPLICA IDENTITY FULL;
         INSERT INTO products VALUES (1, 'blue shirt', 10), (2, 'hat', 20);",
        "products",
    )
}

fn b64(key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_update_deletes_its_keys_and_moves_versions_forward_in_memcached() {
    let pg = pg();
    let memcached = MemcachedInstance::start().unwrap();
    let rules = common::rules_dir(RULES);
    let mut c = common::daemon_config(&pg, rules.path());
    c.memcached = vec![MemcachedConfig::addr(memcached.addr())];
    let (stop_tx, daemon) = common::spawn_daemon(c);

    memcached.set("m:product:1", "cached");
    memcached.set("m:product:2", "cached");
    // A key with a space: only reachable base64-encoded.
    let spaced = b64("m:by-name:blue shirt");
    memcached.command(&format!("ms {spaced} b 6 T0\r\ncached\r\nmn\r\n"));
    // A version far ahead of any LSN (another writer, or a clock): it must not go back.
    memcached.set("m:ver:product:2", "900000000000000000");

    pg.psql("app", "UPDATE products SET price = price + 1").unwrap();
    wait_until("the deletes", || memcached.get("m:product:1").is_none());
    assert_eq!(memcached.get("m:product:2"), None);
    let spaced_left = memcached.command(&format!("mg {spaced} b v\r\nmn\r\n")).unwrap();
    assert!(!spaced_left.contains("cached"), "{spaced_left}");
    wait_until("the bumps", || memcached.get("m:ver:product:1").is_some());
    let v1: u64 = memcached.get("m:ver:product:1").unwrap().parse().unwrap();
    assert!(v1 > 0, "a missing version key starts at the commit LSN");
    assert_eq!(memcached.get("m:ver:product:2").as_deref(), Some("900000000000000001"));

    // Another commit moves version 1 again (to its own, higher LSN).
    pg.psql("app", "UPDATE products SET price = price + 1 WHERE id = 1")
        .unwrap();
    wait_until("the second bump", || {
        memcached
            .get("m:ver:product:1")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| v > v1)
    });
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
}

#[tokio::test]
async fn versions_only_move_forward_while_another_writer_changes_them() {
    let memcached = MemcachedInstance::start().unwrap();
    let key = "ver:contended".to_string();
    // A competing writer increments the key with compare-and-set as fast as it can.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let competitor = {
        let stop = stop.clone();
        let addr = memcached.addr();
        std::thread::spawn(move || {
            use std::io::{BufRead, BufReader, Write};
            let stream = std::net::TcpStream::connect(addr).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut line = String::new();
            let mut writes = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writer.write_all(b"mg ver:contended v c\r\n").unwrap();
                line.clear();
                reader.read_line(&mut line).unwrap();
                if !line.starts_with("VA ") {
                    continue;
                }
                let cas = line
                    .split(' ')
                    .find_map(|t| t.trim().strip_prefix('c'))
                    .unwrap()
                    .to_string();
                let mut value = String::new();
                reader.read_line(&mut value).unwrap();
                let next = (value.trim().parse::<u64>().unwrap() + 1).to_string();
                writer
                    .write_all(format!("ms ver:contended {} C{cas}\r\n{next}\r\n", next.len()).as_bytes())
                    .unwrap();
                line.clear();
                reader.read_line(&mut line).unwrap();
                writes += 1;
            }
            writes
        })
    };
    let mut target = MemcachedTarget::new(&memcached.addr(), Duration::from_secs(2));
    let mut last = 0;
    for lsn in (1..=200u64).map(|i| i * 1_000) {
        target.bump(&[(&key, lsn)]).await.unwrap();
        let now: u64 = memcached.get(&key).unwrap().parse().unwrap();
        assert!(now >= lsn, "bump to {lsn} left {now}");
        assert!(now > last, "moved back or stood still: {last} -> {now}");
        last = now;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = competitor.join().unwrap();
    assert!(writes > 0, "the competitor wrote");
}

#[tokio::test]
async fn a_gap_flushes_everything() {
    let memcached = MemcachedInstance::start().unwrap();
    memcached.set("a", "1");
    memcached.set("b", "2");
    let mut target = MemcachedTarget::new(&memcached.addr(), Duration::from_secs(2));
    target.ping().await.unwrap();
    Sink::bump_epoch(&mut target).await.unwrap();
    assert_eq!(memcached.get("a"), None);
    assert_eq!(memcached.get("b"), None);
}

#[tokio::test]
async fn tags_are_refused_for_memcached_targets_by_check_and_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, TAG_RULES).unwrap();
    let config_path = dir.path().join("walbust.toml");
    std::fs::write(
        &config_path,
        "[postgres]\nurl = \"postgres://x@127.0.0.1:1/db\"\n\n[[memcached]]\naddr = \"127.0.0.1:11211\"\n",
    )
    .unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(["check", "--rules"])
        .arg(&rules)
        .arg("--config")
        .arg(&config_path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("rules.yaml:4:"), "names the file and line: {text}");
    assert!(
        text.contains("rule `product`.tags") && text.contains("memcached[0]") && text.contains("cannot hold tags"),
        "{text}"
    );

    let mut c = Config::load(&config_path).unwrap();
    c.rules.path = rules.clone();
    let err = walbust::daemon::run(c.validate().unwrap(), async {}).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("memcached[0]") && message.contains("cannot hold tags"),
        "{message}"
    );
}

#[tokio::test]
async fn a_batch_of_deletes_is_one_round_trip() {
    let memcached = MemcachedInstance::start().unwrap();
    let keys: Vec<String> = (0..5_000).map(|i| format!("k:{i}")).collect();
    let mut set = String::new();
    for key in &keys[..100] {
        set.push_str(&format!("ms {key} 1 T0\r\nx\r\n"));
    }
    set.push_str("mn\r\n");
    memcached.command(&set);
    assert_eq!(memcached.get("k:7").as_deref(), Some("x"));
    let mut batch = walbust::sink::Batch::default();
    batch.add_owned(walbust::plan::PlannedTxn {
        delete: keys.clone(),
        ..Default::default()
    });
    let mut target = MemcachedTarget::new(&memcached.addr(), Duration::from_secs(2));
    Sink::apply(&mut target, &batch).await.unwrap();
    assert_eq!(target.take_round_trips(), 1, "5,000 quiet deletes and one mn");
    assert!(keys[..100].iter().all(|k| memcached.get(k).is_none()));
}
