//! `walbust record` against a real PostgreSQL: a live capture (temporary slot) and a peek of a
//! slot's backlog both dry-run to exactly the actions the daemon's stream plans for the same
//! changes, and peeking does not consume the slot.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use walbust::model::{Event, Lsn};
use walbust::plan::{PlannedTxn, Planner};
use walbust::sample::{open_reader, InputFormat};
use walbust::source::conn::ConnectOptions;
use walbust::source::record::{record, RecordOptions, StopAt};
use walbust::source::stream::{Stream, StreamConfig, StreamItem};
use walbust_testkit::harness::PgInstance;

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn rules() -> Arc<walbust::rules::RuleSet> {
    Arc::new(walbust::rules::load_path(&repo("rules")).unwrap().rules)
}

fn plan_capture(bytes: Vec<u8>) -> Vec<PlannedTxn> {
    let mut reader = open_reader("capture", Box::new(std::io::Cursor::new(bytes)), None).unwrap();
    assert_eq!(reader.format(), InputFormat::Capture);
    let mut planner = Planner::new(rules(), false);
    let mut out = Vec::new();
    while let Some(event) = reader.next_event().unwrap() {
        out.extend(planner.push(&event));
    }
    out
}

fn setup_catalog(pg: &PgInstance) {
    pg.create_database("catalog").unwrap();
    pg.apply_migrations("catalog", &repo("migrations")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_dry_run_to_exactly_what_the_daemon_plans() {
    let pg = PgInstance::start().unwrap();
    setup_catalog(&pg);
    pg.psql(
        "catalog",
        "SELECT pg_create_logical_replication_slot('walbust', 'pgoutput')",
    )
    .unwrap();
    let url = pg.url("catalog");
    let options = RecordOptions {
        connect: ConnectOptions::parse(&url).unwrap(),
        publication: "walbust_catalog".into(),
        stop: StopAt::default(),
        peek: None,
    };

    // A live recording runs while the workload writes; it stops at a known LSN.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let live_options = options.clone();
    let live = tokio::spawn(async move {
        let mut out = Vec::new();
        let summary = record(&live_options, &mut out, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
        (summary, out)
    });
    // Wait for the temporary slot to exist, so the workload is after its start.
    for _ in 0..200 {
        let n = pg
            .psql(
                "catalog",
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'walbust_record_%'",
            )
            .unwrap();
        if n.trim() == "1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    pg.psql_file("catalog", &repo("samples/workload.sql")).unwrap();
    let end = Lsn::parse(pg.psql("catalog", "SELECT pg_current_wal_lsn()").unwrap().trim()).unwrap();

    // Peek the daemon slot's backlog: same changes, slot not consumed.
    let confirmed_before = pg
        .psql(
            "catalog",
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'walbust'",
        )
        .unwrap();
    let mut peeked = Vec::new();
    let peek_summary = record(
        &RecordOptions {
            peek: Some("walbust".into()),
            ..options.clone()
        },
        &mut peeked,
        std::future::pending(),
    )
    .await
    .unwrap();
    let confirmed_after = pg
        .psql(
            "catalog",
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'walbust'",
        )
        .unwrap();
    assert_eq!(confirmed_before, confirmed_after, "--peek does not consume the slot");
    assert!(peek_summary.transactions >= 15, "{peek_summary:?}");

    // The daemon's view: stream the slot and plan with the same rules.
    let mut stream = Stream::start(StreamConfig::new(
        ConnectOptions::parse(&url).unwrap(),
        "walbust",
        "walbust_catalog",
    ));
    let mut planner = Planner::new(rules(), false);
    let mut daemon = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while daemon
        .last()
        .is_none_or(|t: &PlannedTxn| t.commit.end_lsn.unwrap() < end)
    {
        let item = tokio::time::timeout_at(deadline, stream.recv())
            .await
            .expect("stream timed out");
        let Some(StreamItem::Events(batch)) = item else {
            panic!("unexpected {item:?}")
        };
        for event in batch {
            if let Event::Commit(c) = &event {
                stream.applied(c.end_lsn.unwrap());
            }
            daemon.extend(planner.push(&event));
        }
        if daemon.len() >= peek_summary.transactions as usize {
            break;
        }
    }
    stream.shutdown().await;
    let _ = stop_tx.send(());
    let (live_summary, live_bytes) = live.await.unwrap();
    assert_eq!(live_summary.transactions, peek_summary.transactions);

    let from_peek = plan_capture(peeked);
    let from_live = plan_capture(live_bytes);
    assert_eq!(from_peek.len(), daemon.len());
    assert_eq!(from_peek, daemon, "peek capture plans exactly like the daemon");
    assert_eq!(from_live, daemon, "live capture plans exactly like the daemon");
    let deletes: Vec<&String> = daemon.iter().flat_map(|t| &t.delete).collect();
    assert!(deletes.iter().any(|k| *k == "shop:product:1"), "{deletes:?}");
    assert!(daemon
        .iter()
        .all(|t| t.commit.lsn.is_some() && t.commit.commit_time.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_recording_stops_after_max_changes_at_a_transaction_boundary() {
    let pg = PgInstance::start().unwrap();
    pg.create_database("app").unwrap();
    pg.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t;",
    )
    .unwrap();
    let options = RecordOptions {
        connect: ConnectOptions::parse(&pg.url("app")).unwrap(),
        publication: "pub".into(),
        stop: StopAt {
            max_changes: Some(5),
            ..StopAt::default()
        },
        peek: None,
    };
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        let s = record(&options, &mut out, std::future::pending()).await.unwrap();
        (s, out)
    });
    for _ in 0..200 {
        if pg
            .psql(
                "app",
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'walbust_record_%'",
            )
            .unwrap()
            .trim()
            == "1"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // 3 changes, then a 4-row transaction that crosses the limit, then more.
    pg.psql(
        "app",
        "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); INSERT INTO t VALUES (3);",
    )
    .unwrap();
    pg.psql("app", "INSERT INTO t SELECT generate_series(4, 7);").unwrap();
    pg.psql("app", "INSERT INTO t VALUES (8);").unwrap();
    let (summary, bytes) = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        summary.changes, 7,
        "stopped after the transaction that reached the limit"
    );
    assert_eq!(summary.transactions, 4);
    assert!(bytes.starts_with(b"WALBUST-CAPTURE 1\n"));
    // The temporary slot is gone with the connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM pg_replication_slots")
            .unwrap()
            .trim(),
        "0"
    );
}
