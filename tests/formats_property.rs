//! Property (issue: inputs): the same random workload, captured from a real PostgreSQL as
//! test_decoding text, wal2json JSON and a walbust capture (pgoutput), dry-runs to identical
//! actions — with NULLs, NaN and ±Infinity, bytea, arrays, json, timestamps, text with quotes
//! and line breaks, out-of-line TOAST values left unchanged, and a partitioned table whose
//! changes name its partitions.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeMap;
use std::sync::Arc;
use walbust::sample::open_reader;
use walbust::sink::dryrun::{self, OutputFormat};
use walbust::source::conn::ConnectOptions;
use walbust::source::record::{record, RecordOptions, StopAt};
use walbust_testkit::harness::PgInstance;

const SCHEMA: &str = "
CREATE TABLE t (
  id int PRIMARY KEY, n numeric, f float8, ba bytea, arr int[], tarr text[], j jsonb,
  ts timestamptz, d date, txt text, body text
);
ALTER TABLE t ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE ev (id int, region int, val text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE ev_1 PARTITION OF ev FOR VALUES IN (1);
CREATE TABLE ev_2 PARTITION OF ev FOR VALUES IN (2);
CREATE TABLE f (id int PRIMARY KEY, n numeric, txt text, body text);
ALTER TABLE f REPLICA IDENTITY FULL;
ALTER TABLE f ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE PUBLICATION pub FOR TABLE t, ev, f;
";

/// Every column rendered (new image), the key of the old image (DEFAULT identity: the primary
/// key), a `changed` rule on the TOASTed column, and a rule on the partitioned parent.
const RULES: &str = r#"
version: 1
rules:
  - name: values
    table: t
    on: [insert, update]
    delete: ["t:{id}|{n}|{f}|{ba}|{arr}|{tarr}|{j}|{ts}|{d}|{txt}"]
  - name: gone
    table: t
    on: [update, delete]
    delete: ["old:{old.id}"]
  - name: body
    table: t
    on: [update]
    changed: [body]
    delete: ["body:{id}"]
  - name: events
    table: ev
    delete: ["ev:{id}:{region}:{val}"]
  - name: full-old
    table: f
    on: [update, delete]
    delete: ["fold:{old.id}:{old.n}:{old.txt}"]
  - name: full-new
    table: f
    on: [insert, update]
    delete: ["fnew:{id}:{n}:{txt}"]
  - name: full-changed
    table: f
    on: [update]
    changed: [body, txt]
    delete: ["fchanged:{id}"]
"#;

/// `finite`, and NaN and ±Infinity too when `specials` (which wal2json before 2.6 writes as
/// null).
fn with_specials(finite: BoxedStrategy<String>, specials: bool) -> BoxedStrategy<String> {
    if !specials {
        return finite;
    }
    prop_oneof![
        finite,
        Just("'NaN'".to_string()),
        Just("'Infinity'".to_string()),
        Just("'-Infinity'".to_string()),
    ]
    .boxed()
}

fn numeric(specials: bool) -> BoxedStrategy<String> {
    let finite = prop_oneof![
        Just("NULL".to_string()),
        (-1_000_000i64..1_000_000, 0u32..4).prop_map(|(v, scale)| format!("{v}e-{scale}")),
    ];
    with_specials(finite.boxed(), specials)
}

fn float(specials: bool) -> BoxedStrategy<String> {
    let finite = prop_oneof![
        Just("NULL".to_string()),
        (-1000i32..1000).prop_map(|v| format!("{v}.25")),
    ];
    with_specials(finite.boxed(), specials)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        "[a-z '\"\\\\{}:|\r\n\t€é]{0,12}".prop_map(|s| format!("'{}'", s.replace('\'', "''"))),
    ]
}

fn bytea() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        proptest::collection::vec(any::<u8>(), 0..6).prop_map(|b| {
            format!(
                "'\\x{}'::bytea",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            )
        }),
    ]
}

fn array() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        proptest::collection::vec(
            prop_oneof![Just("NULL".to_string()), (-50i32..50).prop_map(|v| v.to_string())],
            0..4
        )
        .prop_map(|v| format!("ARRAY[{}]::int[]", v.join(","))),
    ]
}

fn text_array() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        proptest::collection::vec("[a-z ,\"{}]{0,4}", 0..3).prop_map(|v| {
            let items: Vec<String> = v.iter().map(|s| format!("'{}'", s.replace('\'', "''"))).collect();
            format!("ARRAY[{}]::text[]", items.join(","))
        }),
    ]
}

fn json() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        Just("'null'::jsonb".to_string()),
        ("[a-z\"\\\\ ]{0,6}", -100i32..100).prop_map(|(s, n)| format!(
            "jsonb_build_object('s', '{}'::text, 'n', {n}, 'a', ARRAY[1, 2])",
            s.replace('\'', "''")
        )),
    ]
}

fn timestamp() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        Just("'infinity'".to_string()),
        (0i64..2_000_000_000, 0u32..1_000_000)
            .prop_map(|(s, us)| format!("to_timestamp({s}) + interval '{us} microseconds'")),
    ]
}

fn date() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        (0i32..40000).prop_map(|d| format!("date '2000-01-01' + {d}"))
    ]
}

/// One statement of the workload.
#[derive(Clone, Debug)]
enum Op {
    Insert(i32, Vec<String>),
    Update(i32, Vec<String>),
    /// Only `txt` changes: the TOASTed body is sent as unchanged.
    Touch(i32, String),
    Delete(i32),
    Event(i32, i32, String),
    EventMove(i32),
    /// REPLICA IDENTITY FULL: old images carry every column (test_decoding leaves NULLs out).
    Full(i32, String, String),
    FullUpdate(i32, String, String),
    FullDelete(i32),
}

fn values(specials: bool) -> impl Strategy<Value = Vec<String>> {
    (
        numeric(specials),
        float(specials),
        bytea(),
        array(),
        text_array(),
        json(),
        timestamp(),
        date(),
        text(),
    )
        .prop_map(|(n, f, ba, arr, tarr, j, ts, d, txt)| vec![n, f, ba, arr, tarr, j, ts, d, txt])
}

fn op(specials: bool) -> impl Strategy<Value = Op> {
    prop_oneof![
        (1i32..8, values(specials)).prop_map(|(id, v)| Op::Insert(id, v)),
        (1i32..8, values(specials)).prop_map(|(id, v)| Op::Update(id, v)),
        (1i32..8, text()).prop_map(|(id, t)| Op::Touch(id, t)),
        (1i32..8).prop_map(Op::Delete),
        (1i32..5, 1i32..3, text()).prop_map(|(id, r, v)| Op::Event(id, r, v)),
        (1i32..5).prop_map(Op::EventMove),
        (1i32..5, numeric(specials), text()).prop_map(|(id, n, t)| Op::Full(id, n, t)),
        (1i32..5, numeric(specials), text()).prop_map(|(id, n, t)| Op::FullUpdate(id, n, t)),
        (1i32..5).prop_map(Op::FullDelete),
    ]
}

const COLUMNS: &str = "n, f, ba, arr, tarr, j, ts, d, txt";

fn sql(op: &Op) -> String {
    match op {
        Op::Insert(id, v) => format!(
            "INSERT INTO t (id, {COLUMNS}, body) VALUES ({id}, {}, repeat('body {id} ', 1000)) ON CONFLICT (id) DO NOTHING;",
            v.join(", ")
        ),
        Op::Update(id, v) => {
            let sets: Vec<String> = COLUMNS.split(", ").zip(v).map(|(c, v)| format!("{c} = {v}")).collect();
            format!("UPDATE t SET {}, body = body || 'x' WHERE id = {id};", sets.join(", "))
        }
        Op::Touch(id, txt) => format!("UPDATE t SET txt = {txt} WHERE id = {id};"),
        Op::Delete(id) => format!("DELETE FROM t WHERE id = {id};"),
        Op::Event(id, region, val) => format!(
            "INSERT INTO ev VALUES ({id}, {region}, {val}) ON CONFLICT (id, region) DO UPDATE SET val = EXCLUDED.val;"
        ),
        // Moves a row to the other partition: a DELETE there and an INSERT here.
        Op::Full(id, n, txt) => format!(
            "INSERT INTO f VALUES ({id}, {n}, {txt}, repeat('f{id} ', 1000)) ON CONFLICT (id) DO NOTHING;"
        ),
        Op::FullUpdate(id, n, txt) => format!("UPDATE f SET n = {n}, txt = {txt} WHERE id = {id};"),
        Op::FullDelete(id) => format!("DELETE FROM f WHERE id = {id};"),
        Op::EventMove(id) => format!("UPDATE ev SET region = 3 - region WHERE id = {id} AND NOT EXISTS (SELECT 1 FROM ev e WHERE e.id = {id} AND e.region = 3 - ev.region);"),
    }
}

/// Each transaction's actions (deduplicated keys per kind), without what only one format carries.
fn dry_run(bytes: Vec<u8>, db: &Db) -> Vec<BTreeMap<String, serde_json::Value>> {
    let rules = Arc::new(walbust::rules::load_str("rules.yaml", RULES).unwrap().rules);
    let mut reader = open_reader("sample", Box::new(std::io::Cursor::new(bytes)), None).unwrap();
    let mut out = Vec::new();
    let options = dryrun::Options {
        format: OutputFormat::Json,
        partitions: db.partitions.clone(),
        tables: db.tables.clone(),
        ..Default::default()
    };
    dryrun::run(rules, reader.as_mut(), &mut out, options, &mut |e| {
        panic!("bad sample: {e}")
    })
    .unwrap();
    let mut txns: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    txns.pop();
    txns.iter()
        .map(|t| {
            ["changes", "delete", "fallbacks", "unrenderable"]
                .iter()
                .map(|k| (k.to_string(), t[*k].clone()))
                .collect()
        })
        .collect()
}

/// What `dry-run --db` reads from the database.
#[derive(Default)]
struct Db {
    partitions: Vec<walbust::rules::PartitionOf>,
    tables: Vec<walbust::sample::hints::TableHint>,
}

fn slot_text(pg: &PgInstance, query: &str) -> String {
    let sql = format!("SELECT string_agg(data, E'\\x1e') FROM ({query}) s");
    let out = pg.psql("app", &sql).unwrap();
    let out = out.strip_suffix('\n').unwrap_or(&out);
    let mut text = out.replace('\u{1e}', "\n");
    text.push('\n');
    text
}

/// Workloads per run (each a few transactions on a real server, about 0.1 s).
const CASES: u32 = 16;

#[test]
fn test_decoding_wal2json_and_pgoutput_dry_run_alike() {
    let pg = PgInstance::start().unwrap();
    pg.create_database("app").unwrap();
    pg.psql("app", SCHEMA).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(async {
        let mut conn =
            walbust::source::conn::ReplicationConnection::connect(&ConnectOptions::parse(&pg.url("app")).unwrap())
                .await
                .unwrap();
        let db = Db {
            partitions: walbust::source::schema::partition_map(&mut conn).await.unwrap(),
            tables: walbust::source::schema::table_hints(&mut conn).await.unwrap(),
        };
        conn.close().await;
        db
    });
    let t = db.tables.iter().find(|h| h.table.name == "t").unwrap();
    assert_eq!((t.identity.as_slice(), t.full), (["id".to_string()].as_slice(), false));
    assert!(db.tables.iter().any(|h| h.table.name == "f" && h.full));
    // wal2json before 2.6 writes numeric NaN and ±Infinity as JSON null (no way to tell them from
    // NULL); 2.6 has `numeric-data-types-as-string`. Without it, workloads with such values are
    // compared between test_decoding and pgoutput only.
    let numeric_as_string = match pg.psql(
        "app",
        "SELECT pg_create_logical_replication_slot('probe', 'wal2json'); SELECT count(*) FROM pg_logical_slot_peek_changes('probe', NULL, NULL, 'numeric-data-types-as-string', '1');",
    ) {
        Ok(_) => ", 'numeric-data-types-as-string', '1'",
        Err(_) => "",
    };
    let _ = pg.psql("app", "SELECT pg_drop_replication_slot('probe')");
    let compared_wal2json = std::cell::Cell::new(0);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let workload = |specials| proptest::collection::vec(proptest::collection::vec(op(specials), 1..5), 4..10);
    let workload = prop_oneof![workload(true), workload(false)];
    runner
        .run(&workload, |transactions| {
            // A case that failed half-way leaves its slots: start clean.
            pg.psql(
                "app",
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots; TRUNCATE t, ev, f;",
            )
            .unwrap();
            pg.psql(
                "app",
                "SELECT pg_create_logical_replication_slot('td', 'test_decoding'), pg_create_logical_replication_slot('wj', 'wal2json'), pg_create_logical_replication_slot('po', 'pgoutput');",
            )
            .unwrap();
            let mut script = String::from("SET synchronous_commit = on;\n");
            for txn in &transactions {
                script.push_str("BEGIN;\n");
                for op in txn {
                    script.push_str(&sql(op));
                    script.push('\n');
                }
                script.push_str("COMMIT;\n");
            }
            pg.psql("app", &script).unwrap();
            let td = slot_text(
                &pg,
                "SELECT data FROM pg_logical_slot_get_changes('td', NULL, NULL, 'include-xids', '1', 'include-timestamp', '1')",
            );
            let wj = slot_text(
                &pg,
                &format!("SELECT data FROM pg_logical_slot_get_changes('wj', NULL, NULL, 'format-version', '2', 'include-xids', '1', 'include-timestamp', '1', 'include-lsn', '1'{numeric_as_string})"
                ),
            );
            let mut capture = Vec::new();
            runtime
                .block_on(record(
                    &RecordOptions {
                        connect: ConnectOptions::parse(&pg.url("app")).unwrap(),
                        publication: "pub".into(),
                        stop: StopAt::default(),
                        peek: Some("po".into()),
                    },
                    &mut capture,
                    std::future::pending(),
                ))
                .unwrap();
            pg.psql(
                "app",
                "SELECT pg_drop_replication_slot('td'), pg_drop_replication_slot('wj'), pg_drop_replication_slot('po'); TRUNCATE t, ev, f;",
            )
            .unwrap();
            // pgoutput needs no database: its Relation messages and the capture's header say it.
            let from_pgoutput = dry_run(capture, &Db::default());
            let from_test_decoding = dry_run(td.clone().into_bytes(), &db);
            let from_wal2json = dry_run(wj.clone().into_bytes(), &db);
            if from_wal2json != from_pgoutput || from_test_decoding != from_pgoutput {
                // Kept for a look at what the formats sent.
                let dir = std::env::temp_dir();
                let _ = std::fs::write(dir.join("walbust-formats.wal2json.jsonl"), &wj);
                let _ = std::fs::write(dir.join("walbust-formats.test_decoding.txt"), &td);
            }
            let numeric_specials = transactions.iter().flatten().any(|op| match op {
                Op::Insert(_, v) | Op::Update(_, v) => v[..2].iter().any(|x| x.contains("NaN") || x.contains("Infinity")),
                Op::Full(_, n, _) | Op::FullUpdate(_, n, _) => n.contains("NaN") || n.contains("Infinity"),
                _ => false,
            });
            if !numeric_as_string.is_empty() || !numeric_specials {
                compared_wal2json.set(compared_wal2json.get() + 1);
                prop_assert_eq!(&from_wal2json, &from_pgoutput, "wal2json vs pgoutput");
            }
            prop_assert_eq!(&from_test_decoding, &from_pgoutput, "test_decoding vs pgoutput");
            Ok(())
        })
        .unwrap();
    eprintln!(
        "wal2json compared in {} of {CASES} cases (numeric-data-types-as-string: {})",
        compared_wal2json.get(),
        !numeric_as_string.is_empty()
    );
}
