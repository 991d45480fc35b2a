//! `[[purge]]` targets end to end: a real PostgreSQL and the daemon in this process, purging a
//! real Varnish with vmod xkey (started by the harness in front of a small origin), and the
//! Fastly and Cloudflare request shapes against a local listener that records every request
//! and answers what the test says (2xx, 503, 401).

mod common;

use common::{confirmed, current_lsn, wait_until};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use walbust::config::Config;
use walbust::sink::http::{PurgeConfig, PurgeKind, PurgeTarget};
use walbust::sink::Sink;
use walbust_testkit::harness::{free_port, PgInstance, PgOptions, VarnishInstance};

const RULES: &str = r#"
version: 1
prefix: "t:"
rules:
  - name: product
    table: products
    on: [insert, update, delete]
    delete: ["product:{id}"]
    tags: ["category:{category_id}"]
"#;

fn pg() -> PgInstance {
    common::database_with(
        PgOptions {
            extra_conf: vec![("wal_sender_timeout".into(), "5s".into())],
            ..PgOptions::default()
        },
        "CREATE TABLE products (id int PRIMARY KEY, category_id int, name text);
         ALTER TABLE products REPLICA IDENTITY FULL;",
        "products",
    )
}

fn rules_dir() -> tempfile::TempDir {
    common::rules_dir(RULES)
}

/// A daemon configuration with `purge` as its only target.
fn config(pg: &PgInstance, rules: &Path, purge: PurgeConfig, listen: &str) -> Config {
    let mut c = common::daemon_config(pg, rules);
    c.postgres.reconnect_max_delay = Duration::from_millis(500);
    c.purge = vec![purge];
    c.http.listen = listen.to_string();
    c.apply.retry_max_delay = Duration::from_millis(300);
    c.apply.durability_window = Duration::ZERO;
    c.shutdown_timeout = Duration::from_secs(5);
    c
}

/// The response, or nothing while the server is not listening yet.
fn http_get(port: u16, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `/product/<id>` carries `product:<id>`; `/category/<id>` carries `category:<id>`.
fn varnish() -> VarnishInstance {
    VarnishInstance::start(Arc::new(|path: &str| {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        match (parts.next(), parts.next()) {
            (Some(kind), Some(id)) => format!("{kind}:{id}"),
            _ => "other".to_string(),
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_cached_by_varnish_misses_after_its_row_changes() {
    let pg = pg();
    pg.psql("app", "INSERT INTO products VALUES (1, 5, 'a'), (2, 6, 'b')")
        .unwrap();
    let varnish = varnish();
    let rules = rules_dir();
    let mut purge = PurgeConfig::new(PurgeKind::Xkey, varnish.url());
    purge.strip_prefix = "t:".into();
    let port = free_port();
    let cfg = config(&pg, rules.path(), purge, &format!("127.0.0.1:{port}"));
    let (stop_tx, daemon) = common::spawn_daemon(cfg);
    wait_until("ready", || http_get(port, "/readyz").starts_with("HTTP/1.1 200"));
    // The inserts above are applied first (the slot predates them): cache only after that.
    let after_inserts = current_lsn(&pg);
    wait_until("inserts applied", || confirmed(&pg) >= after_inserts);

    let pages = ["/product/1", "/product/2", "/category/5"];
    let first: Vec<String> = pages.iter().map(|p| varnish.get(p).unwrap().body).collect();
    for (page, body) in pages.iter().zip(&first) {
        let again = varnish.get(page).unwrap();
        assert!(again.is_hit(), "{page} is served from the cache: {again:?}");
        assert_eq!(&again.body, body);
    }

    pg.psql("app", "UPDATE products SET name = 'a2' WHERE id = 1").unwrap();
    let after = current_lsn(&pg);
    wait_until("product 1 purged", || {
        varnish.get("/product/1").unwrap().body != first[0]
    });
    // Its tag's page too, by the tag's name; the other product's page stays cached.
    let category = varnish.get("/category/5").unwrap();
    assert_ne!(category.body, first[2], "{category:?}");
    let other = varnish.get("/product/2").unwrap();
    assert!(other.is_hit() && other.body == first[1], "{other:?}");
    wait_until("acknowledged", || confirmed(&pg) >= after);
    common::stop_daemon(stop_tx, daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_bans_everything_from_varnish() {
    let varnish = varnish();
    let first = varnish.get("/product/7").unwrap();
    assert!(varnish.get("/product/7").unwrap().is_hit());
    let mut target = PurgeTarget::new(
        0,
        &PurgeConfig::new(PurgeKind::Xkey, varnish.url()),
        None,
        &walbust::rules::RuleSet::default(),
        "tag:",
    )
    .unwrap();
    assert_eq!(target.bump_epoch().await.unwrap(), None);
    let after = varnish.get("/product/7").unwrap();
    assert!(!after.is_hit() && after.body != first.body, "{after:?}");
    assert_eq!(target.take_round_trips(), 1);
}

/// One request as the listener saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
    answered: u16,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The keys of a JSON purge body (`surrogate_keys` or `tags`).
    fn keys(&self, field: &str) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        v[field]
            .as_array()
            .map(|a| a.iter().filter_map(|k| k.as_str().map(String::from)).collect())
            .unwrap_or_default()
    }
}

/// A local stand-in for a CDN's purge API: records every request, answers `status`.
struct Listener {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    fn start() -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, status2, stop2) = (seen.clone(), status.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = answer(stream, &seen2, status2.load(Ordering::Relaxed));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Listener {
            port,
            seen,
            status,
            stop,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn answer_with(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(stream: TcpStream, seen: &Mutex<Vec<Seen>>, status: u16) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    seen.lock().unwrap().push(Seen {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        answered: status,
    });
    let text = if status == 200 {
        r#"{"status":"ok"}"#
    } else {
        r#"{"msg":"no"}"#
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastly_purges_go_in_batches_of_256_and_a_503_holds_the_position_until_retried() {
    let pg = pg();
    let listener = Listener::start();
    std::env::set_var("WALBUST_TEST_FASTLY_TOKEN", "fastly-secret");
    let mut purge = PurgeConfig::new(
        PurgeKind::Fastly,
        format!("http://127.0.0.1:{}/service/SVC/purge", listener.port),
    );
    purge.token_env = Some("WALBUST_TEST_FASTLY_TOKEN".into());
    purge.strip_prefix = "t:".into();
    purge.rate_limit = Some(0.0);
    let rules = rules_dir();
    let port = free_port();
    let (stop_tx, daemon) = common::spawn_daemon(config(&pg, rules.path(), purge, &format!("127.0.0.1:{port}")));
    wait_until("ready", || http_get(port, "/readyz").starts_with("HTTP/1.1 200"));

    // 600 rows in one transaction, all in category 1: 601 keys.
    pg.psql(
        "app",
        "INSERT INTO products SELECT g, 1, 'p' FROM generate_series(1, 600) g",
    )
    .unwrap();
    let after = current_lsn(&pg);
    wait_until("acknowledged", || confirmed(&pg) >= after);
    let seen = listener.seen();
    assert!(seen.len() >= 3, "{seen:?}");
    let mut keys = BTreeSet::new();
    for s in &seen {
        assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", "/service/SVC/purge"));
        assert_eq!(s.header("fastly-key"), Some("fastly-secret"));
        assert_eq!(s.header("content-type"), Some("application/json"));
        let batch = s.keys("surrogate_keys");
        assert!(!batch.is_empty() && batch.len() <= 256, "{}", batch.len());
        keys.extend(batch);
    }
    let mut expected: BTreeSet<String> = (1..=600).map(|i| format!("product:{i}")).collect();
    expected.insert("category:1".into());
    assert_eq!(keys, expected);

    // A 503: retried, and nothing acknowledged until a 2xx.
    listener.answer_with(503);
    let before = listener.seen().len();
    pg.psql("app", "UPDATE products SET name = 'q' WHERE id = 1").unwrap();
    let after = current_lsn(&pg);
    wait_until("retried", || listener.seen().len() >= before + 3);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(confirmed(&pg) < after, "not acknowledged while every purge gets a 503");
    listener.answer_with(200);
    wait_until("acknowledged after a 2xx", || confirmed(&pg) >= after);
    let last = listener.seen().pop().unwrap();
    assert_eq!(last.answered, 200);
    assert_eq!(last.keys("surrogate_keys"), ["category:1", "product:1"]);
    let metrics = http_get(port, "/metrics");
    assert!(metrics.contains("kind=\"unavailable\""), "{metrics}");
    common::stop_daemon(stop_tx, daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_purges_by_tag_and_a_401_is_a_permission_error() {
    let pg = pg();
    let listener = Listener::start();
    std::env::set_var("WALBUST_TEST_CF_TOKEN", "cf-secret");
    let mut purge = PurgeConfig::new(
        PurgeKind::Cloudflare,
        format!("http://127.0.0.1:{}/client/v4/zones/Z/purge_cache", listener.port),
    );
    purge.token_env = Some("WALBUST_TEST_CF_TOKEN".into());
    purge.surrogate_keys = vec![walbust::sink::http::KeySource::Tags];
    let rules = rules_dir();
    let port = free_port();
    let (stop_tx, daemon) = common::spawn_daemon(config(&pg, rules.path(), purge, &format!("127.0.0.1:{port}")));
    wait_until("ready", || http_get(port, "/readyz").starts_with("HTTP/1.1 200"));

    pg.psql(
        "app",
        "INSERT INTO products SELECT g, g, 'p' FROM generate_series(1, 250) g",
    )
    .unwrap();
    let after = current_lsn(&pg);
    wait_until("acknowledged", || confirmed(&pg) >= after);
    let seen = listener.seen();
    let mut tags = BTreeSet::new();
    for s in &seen {
        assert_eq!(
            (s.method.as_str(), s.path.as_str()),
            ("POST", "/client/v4/zones/Z/purge_cache")
        );
        assert_eq!(s.header("authorization"), Some("Bearer cf-secret"));
        assert_eq!(s.header("content-type"), Some("application/json"));
        let batch = s.keys("tags");
        assert!(!batch.is_empty() && batch.len() <= 100, "{}", batch.len());
        tags.extend(batch);
    }
    assert!(seen.len() >= 3, "{seen:?}");
    let expected: BTreeSet<String> = (1..=250).map(|i| format!("category:{i}")).collect();
    assert_eq!(tags, expected);

    listener.answer_with(401);
    pg.psql("app", "UPDATE products SET name = 'q' WHERE id = 1").unwrap();
    let after = current_lsn(&pg);
    wait_until("permission errors counted", || {
        http_get(port, "/metrics").contains("walbust_redis_errors_total{kind=\"permission\"")
    });
    wait_until("not ready", || http_get(port, "/readyz").starts_with("HTTP/1.1 503"));
    assert!(confirmed(&pg) < after, "nothing acknowledged");
    // The refused requests reached the service (and nothing behind them was acknowledged).
    let refused = listener.seen().iter().filter(|s| s.answered == 401).count();
    assert!(refused >= 1);
    listener.answer_with(200);
    wait_until("acknowledged once the token is fixed", || confirmed(&pg) >= after);
    common::stop_daemon(stop_tx, daemon).await;
}

fn batch_of(keys: &[&str]) -> walbust::sink::Batch {
    let mut batch = walbust::sink::Batch::default();
    batch.add(&walbust::plan::PlannedTxn {
        commit: Default::default(),
        changes: 1,
        delete: keys.iter().map(|k| k.to_string()).collect(),
        ..Default::default()
    });
    batch
}

#[tokio::test]
async fn rounds_are_spaced_by_coalesce_and_requests_by_the_rate_limit() {
    let listener = Listener::start();
    let url = format!("http://127.0.0.1:{}/service/S/purge", listener.port);
    let mut config = PurgeConfig::new(PurgeKind::Fastly, url);
    config.token_env = Some("UNUSED".into());
    config.coalesce = Duration::from_millis(400);
    config.rate_limit = Some(0.0);
    let rules = walbust::rules::RuleSet::default();
    let mut target = PurgeTarget::new(0, &config, Some("t".into()), &rules, "tag:").unwrap();
    let started = Instant::now();
    target.apply(&batch_of(&["a"])).await.unwrap();
    target.apply(&batch_of(&["b"])).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    // 5 requests per second, bursts of 5: 7 requests take at least 2/5 s.
    config.coalesce = Duration::ZERO;
    config.rate_limit = Some(5.0);
    config.max_keys_per_request = Some(1);
    let mut target = PurgeTarget::new(0, &config, Some("t".into()), &rules, "tag:").unwrap();
    let started = Instant::now();
    target
        .apply(&batch_of(&["1", "2", "3", "4", "5", "6", "7"]))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(380),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(target.take_round_trips(), 7);
    assert_eq!(listener.seen().len(), 9);
}

#[tokio::test]
async fn a_missing_token_refuses_the_start_naming_the_field() {
    let pg_url = "postgres://walbust@127.0.0.1:1/app";
    let mut c = Config::default();
    c.postgres.url = pg_url.into();
    let mut purge = PurgeConfig::new(PurgeKind::Fastly, "https://api.fastly.com/service/S/purge");
    purge.token_env = Some("WALBUST_TEST_TOKEN_NEVER_SET".into());
    c.purge = vec![purge];
    let validated = c.validate().unwrap();
    let err = walbust::daemon::startup::build_targets(&validated, &walbust::rules::RuleSet::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("purge[0].token_env:") && err.contains("WALBUST_TEST_TOKEN_NEVER_SET"),
        "{err}"
    );
}
