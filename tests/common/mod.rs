//! What the daemon's integration tests share: a database with its tables published and a
//! pgoutput slot (`walbust`), a rules directory, a daemon configuration for both, the daemon as a
//! task with its stop, and polling with a deadline. Each test file uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};
use walbust::config::Config;
use walbust_testkit::harness::{PgInstance, PgOptions};

/// The database every test uses.
pub const DB: &str = "app";

/// PostgreSQL with database [`DB`]: `schema` run, then `tables` published as `pub` and the
/// slot `walbust` created.
pub fn database(schema: &str, tables: &str) -> PgInstance {
    database_with(PgOptions::default(), schema, tables)
}

pub fn database_with(options: PgOptions, schema: &str, tables: &str) -> PgInstance {
    let pg = PgInstance::start_with(options).unwrap();
    pg.create_database(DB).unwrap();
    pg.psql(DB, schema).unwrap();
    pg.psql(
        DB,
        &format!(
            "CREATE PUBLICATION pub FOR TABLE {tables};
             SELECT pg_create_logical_replication_slot('walbust', 'pgoutput');"
        ),
    )
    .unwrap();
    pg
}

/// A directory with `rules.yaml`.
pub fn rules_dir(rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    dir
}

/// The daemon's configuration for `pg` and `rules`, with short timers for tests and no targets
/// (each test adds its own) and no HTTP server.
pub fn daemon_config(pg: &PgInstance, rules: &Path) -> Config {
    let mut c = Config::default();
    c.postgres.url = pg.url(DB);
    c.postgres.publication = "pub".into();
    c.postgres.status_interval = Duration::from_secs(1);
    c.postgres.reconnect_max_delay = Duration::from_millis(300);
    c.rules.path = rules.to_path_buf();
    c.apply.retry_max_delay = Duration::from_millis(200);
    c.http.listen = String::new();
    c
}

pub type DaemonTask = tokio::task::JoinHandle<Result<walbust::daemon::RunSummary, walbust::daemon::DaemonError>>;

/// The daemon as a task; send on (or drop) the sender to stop it.
pub fn spawn_daemon(config: Config) -> (tokio::sync::oneshot::Sender<()>, DaemonTask) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(walbust::daemon::run(config.validate().unwrap(), async {
        let _ = stop_rx.await;
    }));
    (stop_tx, daemon)
}

/// Stops the daemon and waits (at most 15 s) for it to finish.
pub async fn stop_daemon(stop_tx: tokio::sync::oneshot::Sender<()>, daemon: DaemonTask) {
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), daemon).await;
}

/// Until the slot is active: the daemon streams.
pub fn wait_streaming(pg: &PgInstance) {
    wait_until("the daemon to stream", || {
        pg.psql(DB, "SELECT count(*) FROM pg_replication_slots WHERE active")
            .is_ok_and(|n| n.trim() == "1")
    });
}

/// Polls `cond` for up to 30 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls an async `cond` for up to 30 s.
pub async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server's current WAL insert position.
pub fn current_lsn(pg: &PgInstance) -> walbust::model::Lsn {
    walbust::model::Lsn::parse(pg.psql(DB, "SELECT pg_current_wal_insert_lsn()").unwrap().trim()).unwrap()
}

/// The slot's confirmed position: what the daemon acknowledged.
pub fn confirmed(pg: &PgInstance) -> walbust::model::Lsn {
    walbust::model::Lsn::parse(
        pg.psql(
            DB,
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'walbust'",
        )
        .unwrap()
        .trim(),
    )
    .unwrap_or_default()
}

/// A client of database [`DB`].
pub async fn db(pg: &PgInstance) -> std::sync::Arc<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(&pg.url(DB), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    std::sync::Arc::new(client)
}
