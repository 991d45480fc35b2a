//! Replication drain benchmark: walbust's stream vs `pg_recvlogical`, same backlog, same run.
//!
//! ```text
//! cargo run --release --example drain_bench            # 1,000,000 row changes
//! WALBUST_DRAIN_SINGLE=10000 WALBUST_DRAIN_BULK=100000 cargo run --release --example drain_bench
//! ```
//!
//! Builds a backlog of single-row transactions plus bulk transactions (one of 200,000 rows),
//! with four pgoutput slots at the same LSN (copies of one) before it. Then drains two slots with
//! pg_recvlogical (proto_version 1, to /dev/null) and two with walbust's stream into a null
//! sink, alternating, and reports the times, the ratio and walbust's peak RSS.

use std::time::{Duration, Instant};
use walbust::model::{Event, Lsn};
use walbust::source::conn::ConnectOptions;
use walbust::source::stream::{Stream, StreamConfig, StreamItem};
use walbust_testkit::harness::PgInstance;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn drain_walbust(url: &str, slot: &str, end: Lsn) -> (Duration, u64) {
    let start = Instant::now();
    let mut stream = Stream::start(StreamConfig::new(ConnectOptions::parse(url).unwrap(), slot, "bench"));
    let mut changes = 0u64;
    loop {
        match stream.recv().await {
            Some(StreamItem::Events(batch)) => {
                let mut last = None;
                for event in &batch {
                    match event {
                        Event::Change(_) => changes += 1,
                        Event::Commit(c) => last = c.end_lsn,
                        _ => {}
                    }
                }
                drop(batch);
                if let Some(l) = last {
                    stream.applied(l);
                    if l >= end {
                        break;
                    }
                }
            }
            Some(StreamItem::Reconnected { error }) => panic!("reconnected during benchmark: {error}"),
            Some(StreamItem::Failed(e)) => panic!("stream failed: {e}"),
            Some(other) => panic!("raw-mode item from an events stream: {other:?}"),
            None => panic!("stream ended"),
        }
    }
    let elapsed = start.elapsed();
    stream.shutdown().await;
    (elapsed, changes)
}

fn drain_recvlogical(pg: &PgInstance, slot: &str, end: Lsn) -> Duration {
    let start = Instant::now();
    let status = std::process::Command::new(pg.bin_dir().join("pg_recvlogical"))
        .args(["-d", &pg.conn_string("bench"), "--slot", slot, "--start", "--no-loop"])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=bench",
            "-f",
            "/dev/null",
        ])
        .args(["--endpos", &end.to_string()])
        .status()
        .expect("run pg_recvlogical");
    assert!(status.success(), "pg_recvlogical failed");
    start.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let single = env_u64("WALBUST_DRAIN_SINGLE", 100_000);
    let bulk = env_u64("WALBUST_DRAIN_BULK", 900_000);
    let pg = PgInstance::start().expect("start PostgreSQL");
    pg.create_database("bench").unwrap();
    pg.psql(
        "bench",
        "CREATE TABLE items (id bigint PRIMARY KEY, category int, name text, price numeric(10,2));
         CREATE PUBLICATION bench FOR TABLE items;
         SELECT pg_create_logical_replication_slot('w1', 'pgoutput');
         SELECT pg_copy_logical_replication_slot('w1', 'r1');
         SELECT pg_copy_logical_replication_slot('w1', 'w2');
         SELECT pg_copy_logical_replication_slot('w1', 'r2');",
    )
    .unwrap();
    let slots = pg
        .psql(
            "bench",
            "SELECT count(DISTINCT confirmed_flush_lsn) FROM pg_replication_slots",
        )
        .unwrap();
    eprintln!("slots at {} distinct LSN(s)", slots.trim());
    let t = Instant::now();
    pg.psql(
        "bench",
        &format!(
            "DO $$ BEGIN FOR i IN 1..{single} LOOP
                 INSERT INTO items VALUES (i, i % 40, 'item ' || i, 9.99); COMMIT;
             END LOOP; END $$;"
        ),
    )
    .unwrap();
    // Bulk: one 200,000-row transaction (or all of `bulk` when smaller), then 100,000-row ones.
    let mut next = single + 1;
    let mut left = bulk;
    let mut first = true;
    while left > 0 {
        let n = if first { left.min(200_000) } else { left.min(100_000) };
        first = false;
        pg.psql(
            "bench",
            &format!(
                "INSERT INTO items SELECT g, g % 40, 'item ' || g, 19.99 FROM generate_series({next}, {}) g;",
                next + n - 1
            ),
        )
        .unwrap();
        next += n;
        left -= n;
    }
    let end = Lsn::parse(pg.psql("bench", "SELECT pg_current_wal_lsn()").unwrap().trim()).unwrap();
    eprintln!(
        "backlog of {} row changes built in {:.1?}, ends at {end}",
        single + bulk,
        t.elapsed()
    );

    let url = pg.url("bench");
    let r1 = drain_recvlogical(&pg, "r1", end);
    let (w1, changes) = drain_walbust(&url, "w1", end).await;
    let (w2, _) = drain_walbust(&url, "w2", end).await;
    let r2 = drain_recvlogical(&pg, "r2", end);
    assert_eq!(changes, single + bulk, "walbust saw every change");
    let recv = r1.min(r2);
    let ours = w1.min(w2);
    println!(
        "pg_recvlogical drain: {:.3} s, {:.3} s (best {:.3} s)",
        r1.as_secs_f64(),
        r2.as_secs_f64(),
        recv.as_secs_f64()
    );
    println!(
        "walbust drain:        {:.3} s, {:.3} s (best {:.3} s)",
        w1.as_secs_f64(),
        w2.as_secs_f64(),
        ours.as_secs_f64()
    );
    println!(
        "ratio walbust / pg_recvlogical: {:.3}; {:.0} changes/s; walbust peak RSS {:.1} MB",
        ours.as_secs_f64() / recv.as_secs_f64(),
        changes as f64 / ours.as_secs_f64(),
        walbust_testkit::harness::peak_rss_mb()
    );
}
