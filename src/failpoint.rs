//! Failpoints: `WALBUST_FAILPOINT=<name>` makes the daemon fail at a named step, so tests can
//! check what a crash or a bug at that step leaves behind. Unset in production; checking costs
//! one environment lookup, done at rare steps (gap recovery) or once at start (the applier).

/// The environment variable naming the failpoint to hit.
pub const ENV: &str = "WALBUST_FAILPOINT";

/// Whether the failpoint `name` is set.
pub fn hit(name: &str) -> bool {
    std::env::var(ENV).is_ok_and(|v| v == name)
}

/// Ends the process (exit status 86, as if killed) at `name` when it is set.
pub fn exit_at(name: &str) {
    if hit(name) {
        eprintln!("walbust: stopping at failpoint {name} ({ENV})");
        std::process::exit(86);
    }
}
