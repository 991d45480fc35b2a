//! The `walbust` command line: argument parsing and dispatch. Each subcommand lives in its own
//! module; `src/main.rs` only calls [`main`].

mod catalog;
mod check;
mod dry_run;
mod run;
mod source;
mod tools;

use crate::rules::{self, Diagnostic, Severity};
use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "walbust", version, about = "Cache invalidation from PostgreSQL logical replication", long_about = None)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WALBUST_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where the daemon's slot is: shared by `run` and `status`, which read the same configuration.
#[derive(clap::Args)]
pub struct SlotArgs {
    /// Configuration file (TOML); settings also come from WALBUST_* variables and the flags.
    #[arg(long, env = "WALBUST_CONFIG")]
    pub config: Option<PathBuf>,
    /// postgres.url
    #[arg(long)]
    pub db: Option<String>,
    /// postgres.slot
    #[arg(long)]
    pub slot: Option<String>,
    /// postgres.publication
    #[arg(long)]
    pub publication: Option<String>,
}

impl SlotArgs {
    fn overrides(self) -> crate::config::Overrides {
        crate::config::Overrides {
            db: self.db,
            slot: self.slot,
            publication: self.publication,
            ..Default::default()
        }
    }
}

/// Output format of the subcommands that print reports.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Show which keys, tags and version keys a WAL sample would invalidate, without touching Redis.
    #[command(name = "dry-run")]
    DryRun(dry_run::DryRunArgs),
    /// Validate rules statically, and against a live schema with --db.
    Check(check::CheckArgs),
    /// Capture live changes (temporary slot) or a slot's backlog (--peek) into a capture file.
    Record(source::RecordArgs),
    /// Create the publication (for the rules' tables) and then the replication slot.
    Setup(source::SetupArgs),
    /// Run the daemon: stream committed changes and apply invalidations to Redis.
    Run(run::RunArgs),
    /// Show the slot (active pid, confirmed position, lag, retained WAL, wal_status) and the publication.
    Status(source::StatusArgs),
    /// Watch it live: throwaway PostgreSQL and Redis, the catalog rules, scripted writes and their invalidations.
    Demo,
    /// Print the JSON Schema of the rules format (for editors and CI).
    Schema,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
    /// Print a Markdown catalogue of every key, tag and version key the rules invalidate.
    Docs(catalog::DocsArgs),
    /// Which rules and templates can produce a key, from which columns — and which writes (don't) invalidate it.
    Explain(catalog::ExplainArgs),
    /// Consistency under faults: writers, cache-aside readers, kill -9/restarts/outages; counts stale entries and lost invalidations.
    Chaos(tools::ChaosArgs),
}

/// Parses the arguments, runs the subcommand, and turns its result into the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own report; only errors from the daemon inside it are of interest.
    // The chaos harness's own Redis Cluster connections repair themselves after every shard
    // fault, which redis-rs reports at WARN: noise in a report about walbust.
    let default_level = match cli.command {
        Command::Demo => "error",
        Command::Chaos(_) => "warn,redis=error",
        _ => "warn",
    };
    init_logging(cli.log_format, default_level);
    let result = match cli.command {
        Command::DryRun(args) => dry_run::run(args),
        Command::Check(args) => check::run(args),
        Command::Record(args) => source::record(args),
        Command::Setup(args) => source::setup(args),
        Command::Run(args) => run::run(args),
        Command::Status(args) => source::status(args),
        Command::Completions { shell } => completions(shell),
        Command::Man => man(),
        Command::Demo => tools::demo(),
        Command::Chaos(args) => tools::chaos(args),
        Command::Schema => catalog::schema(),
        Command::Docs(args) => catalog::docs(args),
        Command::Explain(args) => catalog::explain(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: log files and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    clap_complete::generate(
        shell,
        &mut <Cli as clap::CommandFactory>::command(),
        "walbust",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}

fn man() -> Result<ExitCode> {
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut std::io::stdout())?;
    Ok(ExitCode::SUCCESS)
}

/// The daemon's runtime: one thread. Its tasks (stream, planner loop, applier, HTTP) hand work
/// to each other all the time; on one thread that is a queue push, across worker threads it
/// was a futex wake-up and a context switch per hand-over — the largest share of walbust's CPU
/// on single-row transactions.
fn daemon_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// The runtime of the other async subcommands (two workers: the machines walbust runs on are
/// small).
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn print_diagnostics(diagnostics: &[Diagnostic]) {
    let stderr = std::io::stderr();
    let mut err = stderr.lock();
    for d in diagnostics {
        let _ = writeln!(err, "{d}");
    }
}

const BUNDLED_RULES: &str = crate::config::DEFAULT_RULES_PATH;
const EMBEDDED_RULES: &str = include_str!("../../rules/catalog.yaml");

/// Loads the rules at `path`, or `./rules`, or the bundled catalog rules. `None` when they have
/// errors (already printed).
fn load_rules(path: Option<&Path>) -> Result<Option<rules::load::Loaded>> {
    let result = match path {
        Some(p) => rules::load_path(p),
        None if Path::new(BUNDLED_RULES).exists() => rules::load_path(Path::new(BUNDLED_RULES)),
        None => {
            eprintln!("note: no ./rules here; using the bundled catalog rules (pass --rules to use yours)");
            rules::load_str("<bundled>/rules/catalog.yaml", EMBEDDED_RULES)
        }
    };
    match result {
        Ok(loaded) => Ok(Some(loaded)),
        Err(e) => {
            print_diagnostics(&e.diagnostics);
            let errors = e.diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
            eprintln!(
                "error: the rules have {errors} error(s); fix them and run again (`walbust check` lists them too)"
            );
            Ok(None)
        }
    }
}
