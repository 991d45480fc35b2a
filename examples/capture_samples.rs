//! Regenerates the bundled WAL samples from a real PostgreSQL:
//!
//! ```text
//! cargo run --example capture_samples -- [--out samples/]
//! ```
//!
//! Starts a throwaway PostgreSQL (walbust_testkit::harness), applies `migrations/`, creates a
//! test_decoding and a wal2json slot, runs `samples/workload.sql`, and writes what both slots
//! return to `catalog.test_decoding.txt` and `catalog.wal2json.jsonl`.

use std::path::{Path, PathBuf};
use walbust_testkit::harness::PgInstance;

fn slot_lines(pg: &PgInstance, db: &str, query: &str) -> Result<String, Box<dyn std::error::Error>> {
    // Rows are joined with a record separator that cannot occur in decoded output, so values
    // containing newlines survive psql's unaligned output.
    let out = pg.psql(db, &format!("SELECT string_agg(data, E'\\x1e') FROM ({query}) s"))?;
    let out = out.strip_suffix('\n').unwrap_or(&out);
    Ok(out.replace('\u{1e}', "\n") + "\n")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut out_dir = PathBuf::from("samples");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out_dir = PathBuf::from(args.next().ok_or("--out needs a directory")?),
            other => return Err(format!("unknown argument {other}; usage: capture_samples [--out DIR]").into()),
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pg = PgInstance::start()?;
    pg.create_database("catalog")?;
    pg.apply_migrations("catalog", &root.join("migrations"))?;
    pg.psql(
        "catalog",
        "SELECT pg_create_logical_replication_slot('td', 'test_decoding'); SELECT pg_create_logical_replication_slot('wj', 'wal2json');",
    )?;
    pg.psql_file("catalog", &root.join("samples/workload.sql"))?;
    let td = slot_lines(
        &pg,
        "catalog",
        "SELECT data FROM pg_logical_slot_get_changes('td', NULL, NULL, 'include-xids', '1', 'include-timestamp', '1')",
    )?;
    let wj = slot_lines(
        &pg,
        "catalog",
        "SELECT data FROM pg_logical_slot_get_changes('wj', NULL, NULL, 'format-version', '2', 'include-xids', '1', 'include-timestamp', '1', 'include-lsn', '1')",
    )?;
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("catalog.test_decoding.txt"), td)?;
    std::fs::write(out_dir.join("catalog.wal2json.jsonl"), wj)?;
    eprintln!(
        "wrote {}/catalog.test_decoding.txt and catalog.wal2json.jsonl",
        out_dir.display()
    );
    Ok(())
}
