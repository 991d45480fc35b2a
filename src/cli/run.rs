//! `walbust run`: the configuration resolved (file, environment, flags) and the daemon until
//! SIGTERM or SIGINT.

use super::{daemon_runtime, SlotArgs};
use crate::config::{Config, Overrides};
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub slot: SlotArgs,
    /// rules.path
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// A Redis target URL (repeat for several); replaces the configured targets.
    #[arg(long)]
    pub redis: Vec<String>,
    /// http.listen ("" disables)
    #[arg(long)]
    pub listen: Option<String>,
    /// postgres.create_slot
    #[arg(long)]
    pub create_slot: bool,
}

impl RunArgs {
    fn overrides(self) -> Overrides {
        Overrides {
            rules: self.rules,
            redis: self.redis,
            listen: self.listen,
            create_slot: self.create_slot,
            ..self.slot.overrides()
        }
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested; applying what is in flight");
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let file = args.slot.config.clone();
    let config = Config::resolve(file.as_deref(), std::env::vars(), &args.overrides())?;
    let validated = config.validate()?;
    tracing::info!(config = ?validated.config, "starting walbust");
    let summary = daemon_runtime()?.block_on(crate::daemon::run(validated, shutdown_signal()))?;
    eprintln!(
        "walbust stopped: {} transaction(s) applied in {} batch(es){}",
        summary.transactions,
        summary.batches,
        summary
            .applied
            .map(|l| format!(", acknowledged up to {l}"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
