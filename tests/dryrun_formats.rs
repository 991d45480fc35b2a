//! End to end against a real PostgreSQL (started by the harness): run a workload on the
//! catalog schema, capture it through SQL with test_decoding and with wal2json, and check
//! that dry-run gives identical actions from both formats, and the keys we expect.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use walbust::sample::{self, InputFormat};
use walbust::sink::dryrun::{self, OutputFormat};
use walbust_testkit::harness::PgInstance;

const WORKLOAD: &str = r#"
UPDATE products SET price_cents = price_cents + 100 WHERE id = 1;
UPDATE products SET category_id = 2 WHERE id = 10;
UPDATE products SET description = repeat('long text ', 5000) WHERE id = 4;
UPDATE products SET name = 'Renamed ' || name WHERE id = 4;
BEGIN;
INSERT INTO reviews (id, product_id, rating, body) VALUES (9001, 5, 4, 'it''s fine, "quoted"
and multi-line');
DELETE FROM reviews WHERE id = 9001;
COMMIT;
BEGIN;
UPDATE products SET active = false WHERE id = 6;
ROLLBACK;
UPDATE categories SET name = 'Renamed category' WHERE id = 1;
INSERT INTO categories (id, parent_id, slug, name) VALUES (99, 1, 'tmp', 'Temporary');
DELETE FROM categories WHERE id = 99;
UPDATE prices SET amount = amount * 1.10 WHERE product_id IN (1, 2);
UPDATE prices SET currency = 'CHF' WHERE product_id = 2 AND currency = 'EUR';
UPDATE inventory SET quantity = quantity - 1 WHERE product_id = 1;
TRUNCATE recommendations;
"#;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn setup() -> PgInstance {
    let pg = PgInstance::start().expect("start PostgreSQL (see the harness error for what to install)");
    pg.create_database("catalog").unwrap();
    pg.apply_migrations("catalog", &repo("migrations")).unwrap();
    pg
}

/// Runs SQL that returns one text column per row; rows are separated by a record separator
/// that cannot occur in decoded output, so multi-line values survive.
fn slot_data(pg: &PgInstance, query: &str) -> String {
    let sql = format!("SELECT string_agg(data, E'\\x1e') FROM ({query}) s");
    let out = pg.psql("catalog", &sql).unwrap();
    let out = out.strip_suffix('\n').unwrap_or(&out);
    let mut text = out.replace('\u{1e}', "\n");
    text.push('\n');
    text
}

fn capture(pg: &PgInstance, workload: &str) -> (String, String) {
    pg.psql(
        "catalog",
        "SELECT pg_create_logical_replication_slot('td', 'test_decoding'); SELECT pg_create_logical_replication_slot('wj', 'wal2json');",
    )
    .unwrap();
    pg.psql("catalog", workload).unwrap();
    let td = slot_data(
        pg,
        "SELECT data FROM pg_logical_slot_get_changes('td', NULL, NULL, 'include-xids', '1', 'include-timestamp', '1')",
    );
    let wj = slot_data(
        pg,
        "SELECT data FROM pg_logical_slot_get_changes('wj', NULL, NULL, 'format-version', '2', 'include-xids', '1', 'include-timestamp', '1', 'include-lsn', '1')",
    );
    (td, wj)
}

fn dry_run_json(text: &str, format: InputFormat) -> (Vec<serde_json::Value>, serde_json::Value) {
    let rules = Arc::new(walbust::rules::load_path(&repo("rules")).unwrap().rules);
    let mut reader =
        sample::open_reader("sample", Box::new(std::io::Cursor::new(text.as_bytes().to_vec())), None).unwrap();
    assert_eq!(reader.format(), format, "format detection");
    let mut out = Vec::new();
    let options = dryrun::Options {
        format: OutputFormat::Json,
        explain: false,
        keep_going: false,
        ..Default::default()
    };
    dryrun::run(rules, reader.as_mut(), &mut out, options, &mut |e| {
        panic!("bad line: {e}")
    })
    .unwrap();
    let mut lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = lines.pop().unwrap();
    (lines, summary)
}

/// The actions of a transaction, without the metadata only one format carries.
fn actions(txn: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    [
        "xid",
        "changes",
        "delete",
        "bump",
        "tags",
        "delete_matching",
        "publish",
        "fallbacks",
        "unrenderable",
    ]
    .iter()
    .map(|k| (k.to_string(), txn[*k].clone()))
    .collect()
}

fn all_keys(txns: &[serde_json::Value], field: &str) -> Vec<String> {
    txns.iter()
        .flat_map(|t| {
            t[field]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn test_decoding_and_wal2json_give_identical_actions() {
    let pg = setup();
    let old_category = pg
        .psql("catalog", "SELECT category_id FROM products WHERE id = 10")
        .unwrap()
        .trim()
        .to_string();
    let (td, wj) = capture(&pg, WORKLOAD);

    let (td_txns, td_summary) = dry_run_json(&td, InputFormat::TestDecoding);
    let (wj_txns, wj_summary) = dry_run_json(&wj, InputFormat::Wal2JsonV2);

    assert_eq!(td_txns.len(), wj_txns.len(), "transactions\n{td}\n---\n{wj}");
    for (a, b) in td_txns.iter().zip(&wj_txns) {
        assert_eq!(actions(a), actions(b), "same transaction from both formats");
    }
    for field in [
        "transactions",
        "changes",
        "delete",
        "bump",
        "tags",
        "fallbacks",
        "unrenderable",
    ] {
        assert_eq!(
            td_summary["summary"][field], wj_summary["summary"][field],
            "summary {field}"
        );
    }
    // wal2json carries LSNs and commit times, test_decoding only times.
    assert!(wj_txns
        .iter()
        .all(|t| t["lsn"].is_string() && t["commit_time"].is_string()));
    assert!(td_txns
        .iter()
        .all(|t| t["lsn"].is_null() && t["commit_time"].is_string()));

    let deletes = all_keys(&td_txns, "delete");
    let tags = all_keys(&td_txns, "tags");
    let bumps = all_keys(&td_txns, "bump");
    // Price change on product 1.
    assert!(deletes.contains(&"shop:product:1".to_string()), "{deletes:?}");
    assert!(bumps.contains(&"shop:ver:product:1".to_string()), "{bumps:?}");
    // Product 10 moved to category 2: both category lists (products is REPLICA IDENTITY FULL).
    assert_ne!(old_category, "2");
    assert!(tags.contains(&format!("shop:category:{old_category}")), "{tags:?}");
    assert!(tags.contains(&"shop:category:2".to_string()), "{tags:?}");
    // A deleted category falls back (DEFAULT identity: its slug is unknown).
    assert!(bumps.contains(&"shop:ver:categories".to_string()), "{bumps:?}");
    // The rolled-back update of product 6 never appears.
    assert!(!deletes.contains(&"shop:product:6".to_string()), "{deletes:?}");
    // Review insert renders, review delete (identity: id only) falls back.
    assert!(deletes.contains(&"shop:reviews:5".to_string()), "{deletes:?}");
    assert!(bumps.contains(&"shop:ver:reviews".to_string()), "{bumps:?}");
    // Primary key change on a price row: both the old and the new currency key.
    assert!(deletes.contains(&"shop:price:2:EUR".to_string()), "{deletes:?}");
    assert!(deletes.contains(&"shop:price:2:CHF".to_string()), "{deletes:?}");
    // TRUNCATE applies the fallback.
    assert!(bumps.contains(&"shop:ver:recommendations".to_string()), "{bumps:?}");
    let truncate_fallback = td_txns
        .iter()
        .flat_map(|t| t["fallbacks"].as_array().unwrap().clone())
        .any(|f| f["op"] == "truncate" && f["table"] == "public.recommendations");
    assert!(truncate_fallback);
    // The description-only TOAST update followed by a rename: the keys render.
    assert!(deletes.contains(&"shop:product:4".to_string()));
    assert_eq!(td_summary["summary"]["unrenderable"], 0);
}

#[test]
fn check_db_reports_replica_identity_and_publication_findings() {
    let pg = setup();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(["check", "--rules"])
        .arg(repo("rules"))
        .args(["--db", &pg.url("catalog"), "--publication", "walbust_catalog"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("publication `walbust_catalog` covers"), "{stdout}");
    // reviews keeps REPLICA IDENTITY DEFAULT: deletes use the fallback.
    assert!(
        stderr.contains("rule `product-reviews`") && stderr.contains("DELETE"),
        "{stderr}"
    );

    // A rule on a column outside the identity with no fallback is an error.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\nrules:\n  - name: r\n    table: reviews\n    delete: [\"reviews:{product_id}\", \"x:{nope}\"]\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(["check", "--rules"])
        .arg(&bad)
        .args(["--db", &pg.url("catalog")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad.yaml:3:5: error:"), "{stderr}");
    assert!(stderr.contains("column `nope` does not exist"), "{stderr}");
    assert!(stderr.contains("add a `fallback`"), "{stderr}");
}

#[test]
fn status_reports_slot_and_publication() {
    let pg = setup();
    let status = |slot: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_walbust"))
            .args([
                "status",
                "--db",
                &pg.url("catalog"),
                "--slot",
                slot,
                "--publication",
                "walbust_catalog",
            ])
            .args(["--format", "json"])
            .output()
            .unwrap()
    };
    let out = status("walbust");
    assert_eq!(out.status.code(), Some(1), "no slot yet");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["slot_exists"], false);
    assert_eq!(json["publication_tables"].as_array().unwrap().len(), 6);
    pg.psql(
        "catalog",
        "SELECT pg_create_logical_replication_slot('walbust', 'pgoutput')",
    )
    .unwrap();
    pg.psql("catalog", "UPDATE products SET price_cents = price_cents + 1")
        .unwrap();
    let out = status("walbust");
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["plugin"], "pgoutput");
    assert!(json["lag_bytes"].as_i64().unwrap() >= 0, "{json}");
    assert!(json["retained_wal_bytes"].as_i64().unwrap() > 0, "{json}");
    assert_eq!(json["wal_status"], "reserved");
}
