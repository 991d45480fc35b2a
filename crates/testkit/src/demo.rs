//! `walbust demo`: a throwaway PostgreSQL (wal_level=logical) and redis-server from the
//! machine's binaries, the catalog schema and rules, the daemon, and a scripted series of
//! writes — printing, for each, the SQL, the keys that disappeared or changed version, and how
//! long it took from COMMIT to Redis. Everything is cleaned up afterwards.

use crate::harness::{PgInstance, RedisInstance};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::time::{Duration, Instant};
use walbust_core::model::Lsn;

const MIGRATIONS: [(&str, &str); 2] = [
    ("001_catalog.sql", include_str!("../../../migrations/001_catalog.sql")),
    ("002_seed.sql", include_str!("../../../migrations/002_seed.sql")),
];
const RULES: &str = include_str!("../../../rules/catalog.yaml");

const STEPS: [(&str, &str); 6] = [
    ("an admin changes a price", "UPDATE products SET price_cents = 1299 WHERE id = 1;"),
    ("a product moves from mugs to kettles", "UPDATE products SET category_id = 3 WHERE id = 2;"),
    ("a customer adds a review", "INSERT INTO reviews (id, product_id, rating, body) VALUES (500, 3, 5, 'Lovely');"),
    ("a moderator deletes a review (DEFAULT identity: fallback)", "DELETE FROM reviews WHERE id = 1;"),
    (
        "a batch job reprices the garden tools",
        "UPDATE prices SET amount = round(amount * 1.10, 2) WHERE product_id IN (SELECT id FROM products WHERE category_id = 5);",
    ),
    ("the recommendations job starts over", "TRUNCATE recommendations;"),
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}\nthe demo needs PostgreSQL server binaries (with wal_level=logical support) and redis-server: `apt-get install -y postgresql redis-server`")]
    Harness(#[from] crate::harness::HarnessError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the daemon stopped: {0}")]
    Daemon(#[source] BoxError),
    #[error("the demo's reader: {0}")]
    Reader(#[from] walbust_client::ClientError<tokio_postgres::Error>),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the daemon task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot write: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

fn snapshot(conn: &mut redis::Connection) -> Result<BTreeMap<String, String>, redis::RedisError> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("shop:*").query(conn)?;
    let mut out = BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(conn)?;
        let value = if kind == "string" {
            redis::cmd("GET")
                .arg(&key)
                .query::<Option<String>>(conn)?
                .unwrap_or_default()
        } else {
            format!("({kind})")
        };
        out.insert(key, value);
    }
    Ok(out)
}

/// Fills the cache the way an application would after reading every page once.
fn warm(conn: &mut redis::Connection) -> Result<(), redis::RedisError> {
    let mut pipe = redis::pipe();
    for id in 1..=20 {
        pipe.set(format!("shop:product:{id}"), "<html>").ignore();
        pipe.set(format!("shop:product:{id}:json"), "{}").ignore();
        pipe.set(format!("shop:product:sku:SKU-{id:04}"), "{}").ignore();
        pipe.set(format!("shop:price:{id}:EUR"), "1").ignore();
        pipe.set(format!("shop:price:{id}:USD"), "1").ignore();
        pipe.set(format!("shop:stock:{id}"), "1").ignore();
        pipe.set(format!("shop:reviews:{id}"), "[]").ignore();
        pipe.set(format!("shop:recs:{id}"), "[]").ignore();
    }
    for c in 1..=6 {
        let page = format!("shop:page:category:{c}:1");
        pipe.set(&page, "<html>").ignore();
        pipe.sadd(format!("shop:tag:category:{c}"), &page).ignore();
        pipe.set(format!("shop:category:{c}:page"), "<html>").ignore();
    }
    pipe.set("shop:nav:tree", "<nav>").ignore();
    pipe.query(conn)
}

fn insert_lsn(pg: &PgInstance) -> Result<Lsn, DemoError> {
    let text = pg.psql("catalog", "SELECT pg_current_wal_insert_lsn()")?;
    Lsn::parse(text.trim()).ok_or_else(|| DemoError::Other(format!("unexpected LSN `{}`", text.trim())))
}

/// What the demo's daemon streams from and applies to: slot `walbust`, no HTTP listener, a
/// short shutdown timeout.
/// The last step: 100 readers (4 processes' worth of clients) ask for product 1 the moment its
/// price changes — once with plain cache-aside, once with walbust::client's leases and
/// single-flight — and the loads that reached PostgreSQL are counted.
async fn stampede_avoided<T>(
    out: &mut (dyn Write + Send),
    pg: &PgInstance,
    redis_url: &str,
    daemon: &tokio::task::JoinHandle<T>,
) -> Result<(), DemoError> {
    let (db, db_connection) = tokio_postgres::connect(&pg.url("catalog"), tokio_postgres::NoTls).await?;
    tokio::spawn(db_connection);
    let db = std::sync::Arc::new(db);
    writeln!(
        out,
        "{}. 100 readers ask for product 1 right after an admin changes its price (a hot page)",
        STEPS.len() + 1
    )?;
    let mut loads_by_mode = Vec::new();
    for (price, options) in [
        (1399, walbust_client::ReadOptions::unprotected()),
        (1499, walbust_client::ReadOptions::default()),
    ] {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(
                walbust_client::CacheClient::connect(redis_url, "shop:")
                    .await?
                    .with_options(options.clone()),
            );
        }
        let mut probe = clients[0].clone();
        let entry = walbust_client::Entry {
            key: "product:1:json",
            versions: &["ver:product:1"],
            tags: &[],
        };
        let (old_key, _) = probe.read(&entry).await?;
        pg.psql(
            "catalog",
            &format!("UPDATE products SET price_cents = {price} WHERE id = 1"),
        )?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while probe.read(&entry).await?.0 == old_key {
            if Instant::now() > deadline || daemon.is_finished() {
                return Err(DemoError::Other("walbust did not apply the change within 20 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let loads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut readers = Vec::new();
        for i in 0..100 {
            let (mut client, db, loads) = (clients[i % 4].clone(), db.clone(), loads.clone());
            readers.push(tokio::spawn(async move {
                let entry = walbust_client::Entry {
                    key: "product:1:json",
                    versions: &["ver:product:1"],
                    tags: &[],
                };
                client
                    .get_or_load(&entry, || async {
                        loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        // A query that takes a moment, as a product page does.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        db.query_one("SELECT price_cents FROM products WHERE id = 1", &[])
                            .await
                            .map(|row| row.get::<_, i32>(0).to_string())
                    })
                    .await
            }));
        }
        for r in readers {
            r.await??;
        }
        loads_by_mode.push(loads.load(std::sync::atomic::Ordering::SeqCst));
    }
    writeln!(
        out,
        "   plain cache-aside: {} loads reached PostgreSQL; walbust::client (leases + single-flight): {} load\n",
        loads_by_mode[0], loads_by_mode[1]
    )?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct DemoDaemon {
    pub postgres_url: String,
    pub publication: String,
    pub rules_dir: std::path::PathBuf,
    pub redis_url: String,
}

/// Why the daemon stopped, as the binary reports it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the daemon reports when it stops: transactions applied, batches.
pub type DaemonSummary = (u64, u64);

/// Runs the demo, writing the report to `out`. `start_daemon` runs walbust's daemon for the
/// given [`DemoDaemon`] until the shutdown future completes (the binary passes
/// `walbust::daemon::run`; the testkit does not depend on the daemon).
pub async fn run<F, Fut>(out: &mut (dyn Write + Send), start_daemon: F) -> Result<(), DemoError>
where
    F: FnOnce(DemoDaemon, Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<DaemonSummary, BoxError>> + Send + 'static,
{
    writeln!(
        out,
        "starting a throwaway PostgreSQL (wal_level=logical) and redis-server …"
    )?;
    // synchronous_commit=on: WAL reaches the walsender at COMMIT, as on a production primary.
    let pg = PgInstance::start_with(crate::harness::PgOptions {
        extra_conf: vec![("synchronous_commit".into(), "on".into())],
        ..Default::default()
    })?;
    let redis = RedisInstance::start()?;
    pg.create_database("catalog")?;
    for (_, sql) in MIGRATIONS {
        pg.psql("catalog", sql)?;
    }
    pg.psql(
        "catalog",
        "SELECT pg_create_logical_replication_slot('walbust', 'pgoutput')",
    )?;
    let rules_dir = std::env::temp_dir().join(format!("walbust-demo-rules-{}", std::process::id()));
    std::fs::create_dir_all(&rules_dir)?;
    std::fs::write(rules_dir.join("catalog.yaml"), RULES)?;

    let daemon_spec = DemoDaemon {
        postgres_url: pg.url("catalog"),
        publication: "walbust_catalog".into(),
        rules_dir: rules_dir.clone(),
        redis_url: redis.url(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(start_daemon(
        daemon_spec,
        Box::pin(async {
            let _ = stop_rx.await;
        }),
    ));
    writeln!(
        out,
        "PostgreSQL on port {}, Redis on port {}; walbust is streaming slot `walbust` with rules/catalog.yaml\n",
        pg.port(),
        redis.port()
    )?;

    let mut conn = redis::Client::open(redis.url())?.get_connection()?;
    // walbust gives a new Redis its epoch when it connects; readers start after that.
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis::cmd("EXISTS").arg("walbust:epoch").query::<i64>(&mut conn)? == 0 {
        if Instant::now() > deadline || daemon.is_finished() {
            return Err(DemoError::Other("walbust did not connect to Redis within 20 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    warm(&mut conn)?;
    let slot_confirmed = |pg: &PgInstance| -> Result<Lsn, DemoError> {
        let text = pg.psql(
            "catalog",
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'walbust'",
        )?;
        Ok(Lsn::parse(text.trim()).unwrap_or_default())
    };
    // An application reader using walbust::client: product 1's JSON, versioned by its version key.
    let (db, db_connection) = tokio_postgres::connect(&pg.url("catalog"), tokio_postgres::NoTls).await?;
    tokio::spawn(db_connection);
    let mut reader = walbust_client::CacheClient::connect(&redis.url(), "shop:").await?;
    let reader_entry = walbust_client::Entry {
        key: "product:1:json",
        versions: &["ver:product:1"],
        tags: &[],
    };
    let load_product = || async {
        db.query_one(
            "SELECT row_to_json(p)::text FROM (SELECT id, name, price_cents FROM products WHERE id = 1) p",
            &[],
        )
        .await
        .map(|row| row.get::<_, String>(0))
    };
    for (i, (what, sql)) in STEPS.iter().enumerate() {
        let reader_before = if i == 0 {
            reader.get_or_load(&reader_entry, load_product).await?;
            let (key, cached) = reader.read(&reader_entry).await?;
            Some((key, cached.unwrap_or_default()))
        } else {
            None
        };
        let before = snapshot(&mut conn)?;
        writeln!(out, "{}. {what}\n   SQL: {sql}", i + 1)?;
        let start = Instant::now();
        pg.psql("catalog", sql)?;
        let committed = start.elapsed();
        // Watch Redis until the invalidation shows, then wait for the acknowledgement.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut invalidated = None;
        loop {
            if invalidated.is_none() && snapshot(&mut conn)? != before {
                invalidated = Some(start.elapsed());
            }
            if invalidated.is_some() && slot_confirmed(&pg)? >= insert_lsn(&pg)? {
                break;
            }
            if Instant::now() > deadline || daemon.is_finished() {
                return Err(DemoError::Other("walbust did not apply the change within 20 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let applied = invalidated.unwrap_or_default();
        let acknowledged = start.elapsed();
        let after = snapshot(&mut conn)?;
        let gone: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
        let bumped: Vec<String> = after
            .iter()
            .filter(|(k, v)| k.contains(":ver:") && before.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        if !gone.is_empty() {
            let list: Vec<&str> = gone.iter().map(|s| s.as_str()).collect();
            writeln!(out, "   deleted: {}", list.join(", "))?;
        }
        if !bumped.is_empty() {
            writeln!(out, "   version keys: {}", bumped.join(", "))?;
        }
        if let Some((old_key, old_value)) = reader_before {
            let (value, source) = reader.get_or_load(&reader_entry, load_product).await?;
            let (new_key, _) = reader.read(&reader_entry).await?;
            writeln!(
                out,
                "   a reader (walbust::client) had {old_value} cached at {old_key};\n   its next read went to {new_key}: {source:?} {value}"
            )?;
        }
        writeln!(
            out,
            "   psql returned after {:.1} ms; Redis changed after {:.1} ms; PostgreSQL had the acknowledgement after {:.1} ms\n",
            committed.as_secs_f64() * 1000.0,
            applied.as_secs_f64() * 1000.0,
            acknowledged.as_secs_f64() * 1000.0
        )?;
        // Refill for the next step, as readers would.
        warm(&mut conn)?;
    }
    stampede_avoided(out, &pg, &redis.url(), &daemon).await?;
    let _ = stop_tx.send(());
    match daemon.await {
        Ok(Ok((transactions, batches))) => writeln!(
            out,
            "walbust applied {transactions} transaction(s) in {batches} batch(es); cleaning up."
        )?,
        Ok(Err(e)) => return Err(DemoError::Daemon(e)),
        Err(e) => return Err(DemoError::Task(e)),
    }
    let _ = std::fs::remove_dir_all(&rules_dir);
    drop(redis);
    drop(pg);
    Ok(())
}
