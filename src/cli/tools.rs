//! The tooling subcommands, built on `walbust-testkit`: `demo` and `chaos`.

use super::runtime;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// The CI variant (every fault once, about two minutes) instead of the published run.
    #[arg(long)]
    pub short: bool,
    /// Fault cycles (default: 6 short, 24 full).
    #[arg(long)]
    pub cycles: Option<usize>,
    /// Seconds of workload between faults.
    #[arg(long)]
    pub cycle_seconds: Option<u64>,
    /// Faults to inject, round robin (default: all): kill9, redis-restart, redis-stop, terminate-walsender, pg-restart, takeover, rdb-restore, aof-kill9, redis-promote, pg-promote, gap-kill9.
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<walbust_testkit::chaos::Fault>,
    /// Keep writing until at least this many transactions committed (default: 0 short, 100000 full).
    #[arg(long)]
    pub min_writes: Option<u64>,
    #[arg(long)]
    pub writers: Option<usize>,
    #[arg(long)]
    pub readers: Option<usize>,
    /// Write transactions per second, all writers together; 0 = unthrottled (default: 600 short, 1000 full).
    #[arg(long)]
    pub rate: Option<u64>,
    /// walbust's `wait_replicas` for the Redis target (the harness runs one replica; `redis-promote` promotes it).
    #[arg(long, default_value_t = 0)]
    pub wait_replicas: u32,
    /// Run against a three-node Redis Cluster (Redis faults hit the shards in turn; default faults: all but redis-promote).
    #[arg(long)]
    pub cluster: bool,
    /// Keep walbust's logs here (default: a temp dir, printed).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
}

pub fn chaos(args: ChaosArgs) -> Result<ExitCode> {
    let bin = std::env::current_exe().context("cannot find the walbust executable to run as the daemon")?;
    let mut options = if args.short {
        walbust_testkit::chaos::ChaosOptions::short(bin)
    } else {
        walbust_testkit::chaos::ChaosOptions::full(bin)
    };
    options.cycles = args.cycles.unwrap_or(options.cycles);
    options.cycle = args
        .cycle_seconds
        .map(std::time::Duration::from_secs)
        .unwrap_or(options.cycle);
    options.min_writes = args.min_writes.unwrap_or(options.min_writes);
    options.writers = args.writers.unwrap_or(options.writers);
    options.readers = args.readers.unwrap_or(options.readers);
    options.rate = args.rate.unwrap_or(options.rate);
    if args.cluster {
        options.cluster = true;
        options.faults = walbust_testkit::chaos::Fault::cluster_faults();
        options.cycles = args.cycles.unwrap_or(if args.short {
            options.faults.len()
        } else {
            options.cycles
        });
    }
    if !args.faults.is_empty() {
        options.faults = args.faults;
    }
    options.log_dir = args.log_dir;
    options.wait_replicas = args.wait_replicas;
    let report = runtime()?.block_on(async {
        let mut progress = std::io::stderr();
        walbust_testkit::chaos::run(options, &mut progress).await
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_markdown());
    }
    let failures = report.failures();
    for f in &failures {
        eprintln!("FAILED: {f}");
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn demo() -> Result<ExitCode> {
    runtime()?.block_on(async {
        let mut out = std::io::stdout();
        walbust_testkit::demo::run(&mut out, demo_daemon).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the daemon for `walbust demo`.
fn demo_daemon(
    spec: walbust_testkit::demo::DemoDaemon,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> impl std::future::Future<Output = Result<walbust_testkit::demo::DaemonSummary, walbust_testkit::demo::BoxError>>
       + Send
       + 'static {
    use crate::config::{Config, RedisConfig};
    let mut config = Config::default();
    config.postgres.url = spec.postgres_url;
    config.postgres.publication = spec.publication;
    config.rules.path = spec.rules_dir;
    config.redis = vec![RedisConfig::url(spec.redis_url)];
    config.http.listen = String::new();
    config.shutdown_timeout = std::time::Duration::from_secs(5);
    async move {
        let validated = config.validate()?;
        let summary = crate::daemon::run(validated, shutdown).await?;
        Ok((summary.transactions, summary.batches))
    }
}
