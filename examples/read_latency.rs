//! Read latency of `walbust::client` against a throwaway redis-server (docs/benchmarks.md):
//! a hit, a miss (this reader takes the lease, loads instantly, fills), and a lease wait
//! (another reader holds the lease and fills 5 ms later; the waiter polls for it).
//!
//! ```text
//! cargo run --release --example read_latency [-- <iterations>]
//! ```

use std::time::{Duration, Instant};
use walbust::client::{CacheClient, Entry, Source};
use walbust_testkit::harness::RedisInstance;

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    format!(
        "p50 {:.3} ms, p99 {:.3} ms ({} reads)",
        at(0.5).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0,
        samples.len()
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iterations: usize = std::env::args().nth(1).map(|n| n.parse()).transpose()?.unwrap_or(5000);
    let redis = RedisInstance::start()?;
    let mut reader = CacheClient::connect(&redis.url(), "bench:").await?;
    let mut holder = CacheClient::connect(&redis.url(), "bench:").await?;
    let mut raw = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let entry = Entry {
        key: "product:1",
        versions: &["ver:product:1"],
        tags: &["category:1"],
    };
    let value = "x".repeat(512);
    let instant = || async { Ok::<_, String>(value.clone()) };

    reader.get_or_load(&entry, instant).await?;
    let mut hits = Vec::new();
    for _ in 0..iterations {
        let start = Instant::now();
        let (_, source) = reader.get_or_load(&entry, instant).await?;
        hits.push(start.elapsed());
        assert_eq!(source, Source::Cache);
    }

    let mut misses = Vec::new();
    for i in 0..iterations {
        let _: () = redis::cmd("SET")
            .arg("bench:ver:product:1")
            .arg(i + 1)
            .query_async(&mut raw)
            .await?;
        let start = Instant::now();
        let (_, source) = reader.get_or_load(&entry, instant).await?;
        misses.push(start.elapsed());
        assert_eq!(source, Source::Loaded);
    }

    // The holder misses first and loads for 5 ms; the waiter starts 1 ms later. Its latency
    // minus the holder's remaining time is what waiting costs (polling, the last GET).
    let (mut waits, mut overheads) = (Vec::new(), Vec::new());
    for i in 0..iterations / 10 {
        let _: () = redis::cmd("SET")
            .arg("bench:ver:product:1")
            .arg(iterations + i + 1)
            .query_async(&mut raw)
            .await?;
        let holder_read = async {
            let result = holder
                .get_or_load(&entry, || async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, String>(value.clone())
                })
                .await;
            (Instant::now(), result)
        };
        let waiter_read = async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let start = Instant::now();
            let result = reader.get_or_load(&entry, instant).await;
            (start, Instant::now(), result)
        };
        let ((filled, held), (start, end, waited)) = tokio::join!(holder_read, waiter_read);
        let (_, held_source) = held?;
        let (_, source) = waited?;
        assert_eq!((held_source, source), (Source::Loaded, Source::Waited));
        waits.push(end - start);
        overheads.push(end.saturating_duration_since(filled.min(end)));
    }
    println!("hit:        {}", percentiles(hits));
    println!("miss:       {} (lease, instant load, fill)", percentiles(misses));
    println!(
        "lease wait: {} (another reader's 5 ms load, joined 1 ms in)",
        percentiles(waits)
    );
    println!("            after the fill landed: {}", percentiles(overheads));
    Ok(())
}
