//! `walbust demo` end to end: it starts its own PostgreSQL and Redis, runs the scripted writes
//! and reports the invalidations.

#[test]
fn demo_shows_every_scripted_invalidation() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walbust"))
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "shop:product:1, shop:product:1:json",
        "shop:tag:category:2",
        "shop:tag:category:3",
        "deleted: shop:reviews:3",
        "shop:ver:reviews =",
        "shop:price:13:EUR",
        "shop:ver:recommendations =",
        "Redis changed after",
        "a reader (walbust::client) had {\"id\":1,\"name\":\"Product 1\",\"price_cents\":1050} cached",
        "Loaded {\"id\":1,\"name\":\"Product 1\",\"price_cents\":1299}",
        "walbust::client (leases + single-flight): 1 load",
        "cleaning up",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}` in:\n{stdout}");
    }
}
