//! The daemon's CPU path per change, without the network: pgoutput messages as the walsender
//! sends them → decoder → planner (unsorted, as `walbust run` makes it) → batch, with the
//! daemon's part taking (protocol 1) and its spill of streamed transactions (protocol 2).
//! What is left out: reading the socket and the Redis command encoding and round trips.
//!
//! For instruction counts, which are stable on a noisy machine (docs/benchmarks.md), one
//! workload at a time (`WALBUST_BENCH_WORKLOAD`), counting only inside `run` (the messages are
//! built before it):
//! `WALBUST_BENCH_WORKLOAD=single valgrind --tool=callgrind --toggle-collect='daemon_path::run'
//! --callgrind-out-file=/tmp/cg target/release/deps/daemon_path-… --bench`, then the total
//! divided by the changes (`WALBUST_BENCH_CHANGES`, default 300,000).

use std::sync::Arc;
use std::time::Instant;
use walbust::daemon::spill::Spill;
use walbust::decode::pgoutput::build::Message as Msg;
use walbust::decode::pgoutput::Decoder;
use walbust::model::Event;
use walbust::plan::{Batch, Planner};
use walbust::rules::eval::EngineOptions;

/// The rules of `../shared/bench/drain.py`: a delete and a version bump per row.
const RULES: &str = "version: 1\nprefix: \"d:\"\nrules:\n  - name: item\n    table: public.items\n    delete: [\"item:{id}\"]\n    bump: [\"ver:item:{id}\"]\n    fallback:\n      bump: [\"ver:items\"]\n";

/// Transactions per batch: what adaptive batching collected per round trip in the single-row
/// drain (≈ 20).
const TXNS_PER_BATCH: usize = 20;
const MAX_BATCH_ACTIONS: usize = 5_000;

fn relation(xid: Option<i32>) -> Vec<u8> {
    let mut m = Msg::new(b'R');
    if let Some(xid) = xid {
        m = m.i32(xid);
    }
    m.i32(16385)
        .s("public")
        .s("items")
        .u8(b'd')
        .i16(3)
        .u8(1)
        .s("id")
        .i32(23)
        .i32(-1)
        .u8(0)
        .s("price")
        .i32(1700)
        .i32(-1)
        .u8(0)
        .s("category_id")
        .i32(23)
        .i32(-1)
        .0
}

/// `UPDATE items SET price = price + 1 WHERE id = …` as pgoutput sends it (new tuple only).
fn update(xid: Option<i32>, id: u64) -> Vec<u8> {
    let mut m = Msg::new(b'U');
    if let Some(xid) = xid {
        m = m.i32(xid);
    }
    m.i32(16385)
        .u8(b'N')
        .i16(3)
        .text(&id.to_string())
        .text("1234.00")
        .text(&(id % 100).to_string())
        .0
}

/// The messages of `changes` row updates in transactions of `per` rows; `streamed`: as one
/// protocol 2 streamed transaction per `per` rows (blocks of 1,000 changes).
fn messages(changes: u64, per: u64, streamed: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut lsn = 0x1000_0000i64;
    let mut id = 0u64;
    let mut xid = 1000i32;
    let mut first = true;
    while id < changes {
        xid += 1;
        let n = per.min(changes - id);
        if streamed {
            let mut left = n;
            let mut block_first = true;
            while left > 0 {
                out.push(Msg::new(b'S').i32(xid).u8(block_first as u8).0);
                if first {
                    out.push(relation(Some(xid)));
                    first = false;
                }
                for _ in 0..left.min(1_000) {
                    out.push(update(Some(xid), id));
                    id += 1;
                    left -= 1;
                }
                out.push(Msg::new(b'E').0);
                block_first = false;
            }
            lsn += 64 * n as i64;
            out.push(Msg::new(b'c').i32(xid).u8(0).i64(lsn).i64(lsn + 48).i64(1_000_000).0);
        } else {
            lsn += 64 * n as i64;
            out.push(Msg::new(b'B').i64(lsn).i64(1_000_000).i32(xid).0);
            if first {
                out.push(relation(None));
                first = false;
            }
            for _ in 0..n {
                out.push(update(None, id));
                id += 1;
            }
            out.push(Msg::new(b'C').u8(0).i64(lsn).i64(lsn + 48).i64(1_000_000).0);
        }
    }
    out
}

/// What the daemon's loop does with each message (`daemon::Daemon::on_events`), minus the
/// applier: returns the keys batched.
#[inline(never)]
fn run(rules: &Arc<walbust::rules::RuleSet>, messages: &[Vec<u8>], spill: &mut Spill) -> u64 {
    let options = EngineOptions {
        max_keys_per_transaction: 10_000_000,
        ..EngineOptions::default()
    };
    let mut planner = Planner::with_options(rules.clone(), false, options).unsorted();
    let mut decoder = Decoder::new();
    let mut batch = Batch::default();
    let mut keys = 0u64;
    let mut hand_over = |batch: &mut Batch| {
        keys += batch.actions() as u64;
        std::hint::black_box(batch.merged());
        batch.clear();
    };
    for bytes in messages {
        let Some(event) = decoder.decode(bytes).expect("decodes") else {
            continue;
        };
        if let Event::StreamAbort { xid, subxid } = &event {
            spill.abort(*xid, *subxid);
        }
        if let Some(txn) = planner.push(&event) {
            if let Event::StreamCommit(info) = &event {
                if let Some(mut held) = info.xid.and_then(|xid| spill.take(xid).expect("read back")) {
                    while let Some(part) = held.next_part(MAX_BATCH_ACTIONS).expect("read back") {
                        batch.add_part(part.into_part(info));
                        if batch.actions() >= MAX_BATCH_ACTIONS {
                            hand_over(&mut batch);
                        }
                    }
                }
            }
            batch.add_owned(txn);
            if batch.transactions as usize >= TXNS_PER_BATCH || batch.actions() >= MAX_BATCH_ACTIONS {
                hand_over(&mut batch);
            }
        } else if matches!(event, Event::StreamChange { .. }) {
            if planner.streamed_keys() >= MAX_BATCH_ACTIONS {
                if let Some((top, taken)) = planner.take_streamed() {
                    spill.hold(top, taken);
                }
            }
        } else if planner.pending_keys() >= MAX_BATCH_ACTIONS {
            if let Some(part) = planner.take_part() {
                batch.add_part(part);
                hand_over(&mut batch);
            }
        }
    }
    hand_over(&mut batch);
    keys
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it in test mode with a tiny size.
    let test_mode = !std::env::args().any(|a| a == "--bench");
    let changes: u64 = if test_mode {
        2_000
    } else {
        std::env::var("WALBUST_BENCH_CHANGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300_000)
    };
    let rules = Arc::new(walbust::rules::load_str("bench.yaml", RULES).expect("rules load").rules);
    let spill_dir = tempfile::tempdir().expect("a temporary directory");
    // `WALBUST_BENCH_WORKLOAD=single|multi|bulk|streamed`: one workload (for callgrind).
    let only = std::env::var("WALBUST_BENCH_WORKLOAD").ok();
    for (key, name, per, streamed) in [
        ("single", "single-row transactions", 1, false),
        ("multi", "10-row transactions", 10, false),
        ("bulk", "100,000-row transactions, protocol 1 (parts)", 100_000, false),
        (
            "streamed",
            "100,000-row transactions, streamed (keys spilled)",
            100_000,
            true,
        ),
    ] {
        if only.as_deref().is_some_and(|only| only != key) {
            continue;
        }
        let messages = messages(changes, per, streamed);
        let mut spill = Spill::new(spill_dir.path());
        let start = Instant::now();
        let keys = run(&rules, &messages, &mut spill);
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(keys, 2 * changes, "{name}: every change's two keys batched");
        println!(
            "daemon path, {name}: {changes} changes in {secs:.3} s = {:.0} changes/s",
            changes as f64 / secs
        );
    }
}
