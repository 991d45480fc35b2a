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

/// Rules on a partitioned table fire for changes that name its partitions in dry-run too
/// (issue: inputs, finding 8): a capture records the database's partitions, and a
/// test_decoding sample gets them from `--db`. Without either, nothing fires (as before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_maps_partitions_from_the_capture_or_the_database() {
    let pg = PgInstance::start().unwrap();
    pg.create_database("app").unwrap();
    pg.psql(
        "app",
        "CREATE TABLE events (id int, region int, body text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE events_eu PARTITION OF events FOR VALUES IN (1);
         CREATE TABLE events_us PARTITION OF events FOR VALUES IN (2) PARTITION BY RANGE (id);
         CREATE TABLE events_us_low PARTITION OF events_us FOR VALUES FROM (0) TO (1000);
         CREATE PUBLICATION pub FOR TABLE events;",
    )
    .unwrap();
    // Slots in a transaction of their own (after the DDL has committed).
    pg.psql(
        "app",
        "SELECT pg_create_logical_replication_slot('walbust', 'pgoutput'); SELECT pg_create_logical_replication_slot('td', 'test_decoding');",
    )
    .unwrap();
    pg.psql(
        "app",
        // Flushed at COMMIT: decoding reads only flushed WAL, and the peek follows at once.
        "SET synchronous_commit = on; INSERT INTO events VALUES (1, 1, 'a'), (2, 2, 'b'); UPDATE events SET body = 'c' WHERE id = 2;",
    )
    .unwrap();
    let rules = Arc::new(
        walbust::rules::load_str(
            "rules.yaml",
            "version: 1\nrules:\n  - name: events\n    table: events\n    delete: [\"event:{id}\"]\n",
        )
        .unwrap()
        .rules,
    );
    let dry_run = |bytes: Vec<u8>, partitions: Vec<walbust::rules::PartitionOf>| {
        let mut reader = open_reader("sample", Box::new(std::io::Cursor::new(bytes)), None).unwrap();
        let mut out = Vec::new();
        let options = walbust::sink::dryrun::Options {
            format: walbust::sink::dryrun::OutputFormat::Json,
            partitions,
            ..Default::default()
        };
        walbust::sink::dryrun::run(rules.clone(), reader.as_mut(), &mut out, options, &mut |e| {
            panic!("{e}")
        })
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut keys: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|v| {
                v["delete"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|k| k.as_str().map(str::to_string))
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys
    };

    let mut capture = Vec::new();
    record(
        &RecordOptions {
            connect: ConnectOptions::parse(&pg.url("app")).unwrap(),
            publication: "pub".into(),
            stop: StopAt::default(),
            peek: Some("walbust".into()),
        },
        &mut capture,
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(
        dry_run(capture, Vec::new()),
        ["event:1", "event:2"],
        "the capture records the partitions"
    );

    let td = pg
        .psql(
            "app",
            "SELECT string_agg(data, E'\\n') FROM pg_logical_slot_get_changes('td', NULL, NULL, 'include-xids', '1')",
        )
        .unwrap();
    assert!(td.contains("public.events_us_low"), "{td}");
    assert!(
        dry_run(td.clone().into_bytes(), Vec::new()).is_empty(),
        "without --db nothing maps"
    );
    let options = ConnectOptions::parse(&pg.url("app")).unwrap();
    let mut conn = walbust::source::conn::ReplicationConnection::connect(&options)
        .await
        .unwrap();
    let map = walbust::source::schema::partition_map(&mut conn).await.unwrap();
    conn.close().await;
    let us_low = map.iter().find(|p| p.partition.name == "events_us_low").unwrap();
    let names: Vec<&str> = us_low.ancestors.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["events_us", "events"], "nearest first");
    assert_eq!(dry_run(td.into_bytes(), map), ["event:1", "event:2"], "--db maps them");
}
