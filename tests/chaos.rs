//! The short variant of the consistency harness (`walbust chaos --short`): every fault once
//! against real PostgreSQL, Redis and walbust processes. Fails on any lost invalidation, any
//! stale entry with version keys, or a checker that cannot see staleness (the control).

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_invalidation_is_lost_and_version_keys_never_serve_stale_entries_under_faults() {
    let options = walbust_testkit::chaos::ChaosOptions::short(env!("CARGO_BIN_EXE_walbust").into());
    let mut progress = std::io::stderr();
    let report = walbust_testkit::chaos::run(options, &mut progress).await.unwrap();
    eprintln!("{}", report.to_markdown());
    assert_eq!(report.faults.len(), walbust_testkit::chaos::Fault::ALL.len());
    assert!(report.writes > 500, "too few writes: {}", report.writes);
    let failures = report.failures();
    assert!(failures.is_empty(), "{failures:#?}");
}
