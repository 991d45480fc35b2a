//! Throughput benchmark: rule evaluation alone, and sample parsing + evaluation for
//! test_decoding and wal2json input. Run with `cargo bench --bench pipeline`
//! (`WALBUST_BENCH_CHANGES` sets the size, default 1,000,000). Prints changes/second.

#[path = "../examples/gen_sample.rs"]
mod gen_sample;

use gen_sample::{write_sample, SynthFormat};
use std::sync::Arc;
use std::time::Instant;
use walbust::model::Event;
use walbust::plan::Planner;
use walbust::sample::{self, InputFormat};
use walbust::sink::dryrun::{self, OutputFormat};

fn rules() -> Arc<walbust::rules::RuleSet> {
    let text = include_str!("../rules/catalog.yaml");
    Arc::new(
        walbust::rules::load_str("rules/catalog.yaml", text)
            .expect("bundled rules load")
            .rules,
    )
}

fn best_of<F: FnMut() -> u64>(runs: usize, mut f: F) -> (f64, u64) {
    let mut best = f64::MAX;
    let mut count = 0;
    for _ in 0..runs {
        let start = Instant::now();
        count = f();
        best = best.min(start.elapsed().as_secs_f64());
    }
    (best, count)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it in test mode with a tiny size.
    let test_mode = !std::env::args().any(|a| a == "--bench");
    let changes: u64 = if test_mode {
        1_000
    } else {
        std::env::var("WALBUST_BENCH_CHANGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000)
    };
    let runs = if test_mode { 1 } else { 3 };
    let rules = rules();

    for (name, format, input) in [
        ("test_decoding", SynthFormat::TestDecoding, InputFormat::TestDecoding),
        ("wal2json", SynthFormat::Wal2Json, InputFormat::Wal2JsonV2),
    ] {
        let mut data = Vec::new();
        write_sample(&mut data, format, changes).expect("generate sample");

        // Decode once into memory so evaluation can be timed on its own.
        let mut events: Vec<Event> = Vec::new();
        let mut reader = sample::open_reader("bench", Box::new(std::io::Cursor::new(data.clone())), Some(input))
            .expect("open reader");
        while let Some(event) = reader.next_event().expect("synthetic sample parses") {
            events.push(event);
        }
        let (secs, n) = best_of(runs, || {
            let mut planner = Planner::new(rules.clone(), false);
            let mut keys = 0u64;
            let mut changes = 0u64;
            for event in &events {
                if let Some(txn) = planner.push(event) {
                    keys += (txn.delete.len() + txn.bump.len() + txn.tags.len()) as u64;
                    changes += txn.changes;
                }
            }
            std::hint::black_box(keys);
            changes
        });
        println!(
            "rules evaluation ({name} events): {n} changes in {secs:.3} s = {:.0} changes/s",
            n as f64 / secs
        );
        drop(events);

        let (secs, n) = best_of(runs, || {
            let mut reader = sample::open_reader("bench", Box::new(std::io::Cursor::new(data.clone())), Some(input))
                .expect("open reader");
            let options = dryrun::Options {
                format: OutputFormat::Json,
                explain: false,
                keep_going: false,
                ..Default::default()
            };
            let summary = dryrun::run(
                rules.clone(),
                reader.as_mut(),
                &mut std::io::sink(),
                options,
                &mut |_| {},
            )
            .expect("dry-run");
            summary.changes
        });
        println!(
            "parse + evaluate + JSON output ({name}): {n} changes in {secs:.3} s = {:.0} changes/s ({:.1} MB/s)",
            n as f64 / secs,
            data.len() as f64 / secs / 1e6
        );
    }
}
