//! The consistency harness against a three-node Redis Cluster (`walbust chaos --cluster`):
//! each shard restarted empty in turn, then one shard restored from an older snapshot. Fails
//! on any lost invalidation or stale version-keyed entry. (Its own test binary, so it does not
//! run beside the single-server harness on a two-core machine.)

use walbust_testkit::chaos::{ChaosOptions, Fault};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_invalidation_is_lost_when_cluster_shards_restart_or_go_back() {
    let options = ChaosOptions {
        cluster: true,
        faults: vec![
            Fault::RedisRestart,
            Fault::RedisRestart,
            Fault::RedisRestart,
            Fault::RdbRestore,
        ],
        cycles: 4,
        cycle: std::time::Duration::from_secs(6),
        ..ChaosOptions::short(env!("CARGO_BIN_EXE_walbust").into())
    };
    let mut progress = std::io::stderr();
    let report = walbust_testkit::chaos::run(options, &mut progress).await.unwrap();
    eprintln!("{}", report.to_markdown());
    assert!(report.writes > 500, "too few writes: {}", report.writes);
    let failures = report.failures();
    assert!(failures.is_empty(), "{failures:#?}");
}
