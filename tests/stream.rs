//! The replication stream against a real PostgreSQL (started by the harness): values as
//! PostgreSQL text, replica identities, TOAST, TRUNCATE, ALTER TABLE mid-stream, partitions,
//! big transactions, authentication and TLS, resume without loss, idle acknowledgement, and
//! the distinct errors for slot and publication problems.

use std::time::Duration;
use walbust::model::{Change, Datum, Event, Lsn, Op, ReplicaIdentity, RowChange};
use walbust::source::conn::ConnectOptions;
use walbust::source::stream::{Stream, StreamConfig, StreamError, StreamItem};
use walbust_testkit::harness::{PgInstance, PgOptions};

fn config(url: &str, slot: &str, publication: &str) -> StreamConfig {
    let mut c = StreamConfig::new(ConnectOptions::parse(url).unwrap(), slot, publication);
    c.status_interval = Duration::from_millis(500);
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(500);
    c
}

fn pg() -> PgInstance {
    PgInstance::start_with(PgOptions {
        extra_conf: vec![("wal_sender_timeout".into(), "5s".into())],
        ..PgOptions::default()
    })
    .expect("start PostgreSQL")
}

/// Receives events (acknowledging every commit) until `done` holds or the timeout passes.
async fn collect(stream: &mut Stream, events: &mut Vec<Event>, reconnects: &mut u32, done: impl Fn(&[Event]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(events) {
        let item = tokio::time::timeout_at(deadline, stream.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; got {} events: {:?}", events.len(), events.last()));
        match item {
            Some(StreamItem::Events(batch)) => {
                for e in batch {
                    if let Event::Commit(c) = &e {
                        stream.applied(c.end_lsn.unwrap());
                    }
                    events.push(e);
                }
            }
            Some(StreamItem::Reconnected { .. }) => {
                *reconnects += 1;
                // Drop a partial transaction, as the daemon does.
                while let Some(pos) = events.iter().rposition(|e| matches!(e, Event::Begin { .. })) {
                    if events[pos..].iter().any(|e| matches!(e, Event::Commit(_))) {
                        break;
                    }
                    events.truncate(pos);
                }
            }
            Some(StreamItem::Failed(e)) => panic!("stream failed: {e}"),
            Some(other) => panic!("raw-mode item from an events stream: {other:?}"),
            None => panic!("stream ended"),
        }
    }
}

fn rows(events: &[Event]) -> Vec<&RowChange> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Change(Change::Row(r)) => Some(r),
            _ => None,
        })
        .collect()
}

fn commits(events: &[Event]) -> usize {
    events.iter().filter(|e| matches!(e, Event::Commit(_))).count()
}

fn text(d: &Datum) -> &str {
    match d {
        Datum::Text(s) => s,
        other => panic!("not text: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_identities_toast_truncate_alter_and_partitions() {
    let pg = pg();
    pg.create_database("app").unwrap();
    pg.psql(
        "app",
        r#"
        CREATE TYPE mood AS ENUM ('sad', 'happy');
        CREATE TABLE typed (id int2 PRIMARY KEY, i4 int4, i8 int8, n numeric(10,2), s text, b boolean, ts timestamptz,
                            d date, u uuid, j jsonb, a int[], by bytea, m mood, z text);
        CREATE TABLE dflt (id int PRIMARY KEY, cat int, body text);
        CREATE TABLE full_t (id int PRIMARY KEY, cat int, body text);
        ALTER TABLE full_t REPLICA IDENTITY FULL;
        CREATE TABLE idx_t (id serial PRIMARY KEY, a int NOT NULL, b text NOT NULL, v int);
        CREATE UNIQUE INDEX idx_t_ab ON idx_t (a, b);
        ALTER TABLE idx_t REPLICA IDENTITY USING INDEX idx_t_ab;
        CREATE TABLE nothing_t (id int, v int);
        ALTER TABLE nothing_t REPLICA IDENTITY NOTHING;
        CREATE TABLE parted (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
        CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu');
        CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us');
        CREATE PUBLICATION pub FOR TABLE typed, dflt, full_t, idx_t, nothing_t, parted WITH (publish_via_partition_root = true);
        "#,
    )
    .unwrap();
    let mut stream = Stream::start({
        let mut c = config(&pg.url("app"), "walbust", "pub");
        c.create_slot = true;
        c
    });
    // Wait until the slot exists before writing, so the writes are after its start.
    for _ in 0..100 {
        if pg
            .psql(
                "app",
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walbust'",
            )
            .unwrap()
            .trim()
            == "1"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.psql(
        "app",
        r#"
        INSERT INTO typed VALUES (1, -5, 9007199254740993, 2.00, E'it''s "q"\n\tü', true, '2026-11-22 10:00:00.5+00', '2026-11-22',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"k": [1, 2]}', '{1,2,3}', '\x0001ff', 'happy', NULL);
        INSERT INTO dflt VALUES (1, 5, (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 300) i));
        INSERT INTO full_t VALUES (1, 5, (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 300) i));
        UPDATE dflt SET cat = 6 WHERE id = 1;
        UPDATE full_t SET cat = 6 WHERE id = 1;
        UPDATE dflt SET id = 2 WHERE id = 1;
        DELETE FROM dflt WHERE id = 2;
        DELETE FROM full_t WHERE id = 1;
        INSERT INTO idx_t (a, b, v) VALUES (1, 'x', 10);
        DELETE FROM idx_t WHERE a = 1;
        INSERT INTO nothing_t VALUES (1, 1);
        INSERT INTO parted VALUES (1, 'eu', 1), (2, 'us', 2);
        ALTER TABLE dflt ADD COLUMN extra text DEFAULT 'new';
        INSERT INTO dflt (id, cat) VALUES (3, 7);
        ALTER TABLE dflt DROP COLUMN body;
        INSERT INTO dflt (id, cat) VALUES (4, 8);
        TRUNCATE dflt, full_t RESTART IDENTITY;
        "#,
    )
    .unwrap();
    let mut events = Vec::new();
    let mut reconnects = 0;
    collect(&mut stream, &mut events, &mut reconnects, |e| commits(e) >= 15).await;
    let rows = rows(&events);

    // Every common type as PostgreSQL's text output.
    let t = rows[0].new.as_ref().unwrap();
    let values: Vec<&str> = t[..13].iter().map(text).collect();
    assert_eq!(
        values,
        [
            "1",
            "-5",
            "9007199254740993",
            "2.00",
            "it's \"q\"\n\tü",
            "t",
            "2026-11-22 10:00:00.5+00",
            "2026-11-22",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            r#"{"k": [1, 2]}"#,
            "{1,2,3}",
            "\\x0001ff",
            "happy"
        ]
    );
    assert_eq!(t[13], Datum::Null);

    // DEFAULT: update without key change has no old row; the TOASTed body is unchanged.
    let upd = rows[3];
    assert_eq!((upd.relation.name.as_str(), upd.op), ("dflt", Op::Update));
    assert!(upd.old.is_none());
    assert_eq!(upd.new.as_ref().unwrap()[2], Datum::UnchangedToast);
    // FULL: whole old row, TOAST value known from it.
    let full = rows[4];
    assert_eq!(full.relation.replica_identity, Some(ReplicaIdentity::Full));
    assert_eq!(text(&full.old.as_ref().unwrap()[1]), "5");
    assert_eq!(text(&full.old.as_ref().unwrap()[2]).len(), 9600);
    // Primary key change: key-only old row.
    let pk = rows[5];
    assert_eq!(
        pk.old.as_ref().unwrap(),
        &vec![Datum::Text("1".into()), Datum::Absent, Datum::Absent]
    );
    assert_eq!(text(&pk.new.as_ref().unwrap()[0]), "2");
    // DELETE under DEFAULT carries the key; under FULL everything.
    assert_eq!(rows[6].old.as_ref().unwrap()[1], Datum::Absent);
    assert_eq!(text(&rows[7].old.as_ref().unwrap()[1]), "6");
    // USING INDEX: the index columns.
    let idx_del = rows[9];
    assert_eq!(idx_del.relation.replica_identity, Some(ReplicaIdentity::Index));
    let old = idx_del.old.as_ref().unwrap();
    assert_eq!((&old[0], text(&old[1]), text(&old[2])), (&Datum::Absent, "1", "x"));
    // NOTHING: inserts stream (PostgreSQL refuses updates and deletes on such a published table).
    let nothing = rows.iter().find(|r| r.relation.name == "nothing_t").unwrap();
    assert_eq!(nothing.relation.replica_identity, Some(ReplicaIdentity::Nothing));
    assert!(nothing.relation.columns.iter().all(|c| !c.is_key));
    // Partitions published via the root.
    let parted: Vec<_> = rows.iter().filter(|r| r.relation.name == "parted").collect();
    assert_eq!(parted.len(), 2);
    // ALTER TABLE mid-stream: new relation versions.
    let after_add = rows
        .iter()
        .find(|r| {
            r.relation.name == "dflt"
                && r.new
                    .as_ref()
                    .is_some_and(|n| n.first() == Some(&Datum::Text("3".into())))
        })
        .unwrap();
    assert_eq!(
        after_add
            .relation
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["id", "cat", "body", "extra"]
    );
    assert_eq!(text(&after_add.new.as_ref().unwrap()[3]), "new");
    let after_drop = rows
        .iter()
        .find(|r| {
            r.relation.name == "dflt"
                && r.new
                    .as_ref()
                    .is_some_and(|n| n.first() == Some(&Datum::Text("4".into())))
        })
        .unwrap();
    assert_eq!(
        after_drop
            .relation
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["id", "cat", "extra"]
    );
    // Multi-table TRUNCATE with RESTART IDENTITY.
    let truncate = events
        .iter()
        .find_map(|e| match e {
            Event::Change(Change::Truncate(t)) => Some(t),
            _ => None,
        })
        .unwrap();
    assert_eq!(truncate.relations.len(), 2);
    assert!(truncate.restart_identity && !truncate.cascade);
    // Commit metadata.
    let Event::Commit(c) = events.iter().rev().find(|e| matches!(e, Event::Commit(_))).unwrap() else {
        unreachable!()
    };
    assert!(c.lsn.is_some() && c.end_lsn > c.lsn && c.commit_time.is_some() && c.xid.is_some());
    assert_eq!(reconnects, 0);
    stream.shutdown().await;
}

async fn wait_for_walsender(pg: &PgInstance, db: &str) {
    for _ in 0..200 {
        if pg.psql(db, "SELECT count(*) FROM pg_stat_replication").unwrap().trim() != "0" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no walsender appeared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_walsender_termination_and_server_restart_without_loss() {
    let mut pg = pg();
    pg.create_database("app").unwrap();
    pg.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v int); CREATE PUBLICATION pub FOR TABLE t; SELECT pg_create_logical_replication_slot('walbust', 'pgoutput');",
    )
    .unwrap();
    let mut stream = Stream::start(config(&pg.url("app"), "walbust", "pub"));
    let mut events = Vec::new();
    let mut reconnects = 0;
    let mut expected = 0;
    for round in 0..3 {
        let base = round * 100;
        for i in 0..50 {
            pg.psql("app", &format!("INSERT INTO t VALUES ({}, {i})", base + i))
                .unwrap();
        }
        expected += 50;
        // Apply what was sent before disrupting, as a running daemon would; a fast shutdown
        // waits until the walsender's last position is acknowledged.
        let want = expected;
        collect(&mut stream, &mut events, &mut reconnects, |e| rows(e).len() >= want).await;
        if round == 0 {
            wait_for_walsender(&pg, "app").await;
            pg.psql("app", "SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
                .unwrap();
        }
        if round == 1 {
            pg.restart(true).unwrap();
        }
        for i in 50..60 {
            pg.psql("app", &format!("INSERT INTO t VALUES ({}, {i})", base + i))
                .unwrap();
        }
        expected += 10;
        let want = expected;
        collect(&mut stream, &mut events, &mut reconnects, |e| {
            let ids: std::collections::BTreeSet<String> = rows(e)
                .iter()
                .map(|r| text(&r.new.as_ref().unwrap()[0]).to_string())
                .collect();
            ids.len() >= want
        })
        .await;
    }
    let ids: std::collections::BTreeSet<i32> = rows(&events)
        .iter()
        .map(|r| text(&r.new.as_ref().unwrap()[0]).parse().unwrap())
        .collect();
    let want: std::collections::BTreeSet<i32> = (0..3).flat_map(|r| (0..60).map(move |i| r * 100 + i)).collect();
    assert_eq!(ids, want, "every committed insert was delivered (at least once)");
    assert!(
        reconnects >= 2,
        "reconnected after termination and restart: {reconnects}"
    );
    assert!(stream.progress().reconnects() >= 2);
    stream.shutdown().await;
    // The final status update acknowledged the last applied position.
    let confirmed = pg
        .psql(
            "app",
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'walbust'",
        )
        .unwrap();
    let last_end = events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Commit(c) => c.end_lsn,
            _ => None,
        })
        .unwrap();
    assert!(
        Lsn::parse(confirmed.trim()).unwrap() >= last_end,
        "{confirmed} vs {last_end}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_acknowledges_writes_in_other_databases() {
    let pg = pg();
    pg.create_database("app").unwrap();
    pg.create_database("other").unwrap();
    pg.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t; SELECT pg_create_logical_replication_slot('walbust', 'pgoutput');",
    )
    .unwrap();
    let mut stream = Stream::start(config(&pg.url("app"), "walbust", "pub"));
    wait_for_walsender(&pg, "app").await;
    pg.psql(
        "other",
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;",
    )
    .unwrap();
    let target = Lsn::parse(pg.psql("other", "SELECT pg_current_wal_lsn()").unwrap().trim()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let confirmed = pg
            .psql(
                "app",
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'walbust'",
            )
            .unwrap();
        if Lsn::parse(confirmed.trim()).is_some_and(|c| c >= target) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "confirmed_flush_lsn stuck at {confirmed} (< {target})"
        );
        // Keep the channel drained like a consumer would.
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.recv()).await;
    }
    stream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200k_row_transaction_streams_through() {
    let pg = pg();
    pg.create_database("app").unwrap();
    pg.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE t; SELECT pg_create_logical_replication_slot('walbust', 'pgoutput');",
    )
    .unwrap();
    pg.psql(
        "app",
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200000) g;",
    )
    .unwrap();
    let mut stream = Stream::start(config(&pg.url("app"), "walbust", "pub"));
    let mut count = 0usize;
    let mut committed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !committed {
        match tokio::time::timeout_at(deadline, stream.recv())
            .await
            .expect("timed out")
        {
            Some(StreamItem::Events(batch)) => {
                for e in batch {
                    match e {
                        Event::Change(_) => count += 1,
                        Event::Commit(c) => {
                            committed = true;
                            stream.applied(c.end_lsn.unwrap());
                        }
                        _ => {}
                    }
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(count, 200_000);
    stream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_and_publication_problems_get_distinct_errors() {
    let pg = pg();
    pg.create_database("app").unwrap();
    pg.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t;",
    )
    .unwrap();
    async fn first_failure(config: StreamConfig) -> StreamError {
        let mut stream = Stream::start(config);
        match tokio::time::timeout(Duration::from_secs(30), stream.recv())
            .await
            .expect("timed out")
        {
            Some(StreamItem::Failed(e)) => e,
            Some(other) => panic!("expected a failure, got {other:?}"),
            None => panic!("stream ended without an error"),
        }
    }
    let e = first_failure(config(&pg.url("app"), "missing", "pub")).await;
    assert!(matches!(e, StreamError::SlotMissing(_)), "{e}");
    assert!(e.to_string().contains("walbust setup"), "{e}");

    pg.psql(
        "app",
        "SELECT pg_create_logical_replication_slot('walbust', 'pgoutput')",
    )
    .unwrap();
    let e = first_failure(config(&pg.url("app"), "walbust", "nopub")).await;
    assert!(matches!(e, StreamError::PublicationMissing(_)), "{e}");

    pg.psql(
        "app",
        "SELECT pg_create_logical_replication_slot('td', 'test_decoding')",
    )
    .unwrap();
    let e = first_failure(config(&pg.url("app"), "td", "pub")).await;
    assert!(matches!(e, StreamError::WrongPlugin { .. }), "{e}");

    // A slot held by another consumer is retryable: the second stream keeps waiting, then
    // takes over when the first one stops.
    let mut holder = Stream::start(config(&pg.url("app"), "walbust", "pub"));
    wait_for_walsender(&pg, "app").await;
    let err = StreamError::SlotActive {
        slot: "walbust".into(),
        pid: "1".into(),
    };
    assert!(err.is_transient());
    let mut second = Stream::start(config(&pg.url("app"), "walbust", "pub"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    pg.psql("app", "INSERT INTO t VALUES (1)").unwrap();
    // The holder gets it; the second is still waiting.
    let mut events = Vec::new();
    let mut reconnects = 0;
    collect(&mut holder, &mut events, &mut reconnects, |e| commits(e) >= 1).await;
    holder.shutdown().await;
    pg.psql("app", "INSERT INTO t VALUES (2)").unwrap();
    let mut events = Vec::new();
    collect(&mut second, &mut events, &mut reconnects, |e| {
        rows(e)
            .iter()
            .any(|r| r.new.as_ref().is_some_and(|n| n[0] == Datum::Text("2".into())))
    })
    .await;
    second.shutdown().await;

    drop(pg);

    // wal_level below logical.
    let replica = PgInstance::start_with(PgOptions {
        extra_conf: vec![("wal_level".into(), "replica".into())],
        ..PgOptions::default()
    })
    .unwrap();
    let e = first_failure(config(&replica.url("postgres"), "walbust", "pub")).await;
    assert!(matches!(e, StreamError::WalLevel(_)), "{e}");
    assert!(e.to_string().contains("wal_level = logical"), "{e}");
}
