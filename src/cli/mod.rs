//! The `walbust` command line: argument parsing and the subcommands. `src/main.rs` only calls
//! [`main`].

use crate::rules::{self, Diagnostic, Severity};
use crate::sample::{self, InputFormat};
use crate::sink::dryrun::{self, OutputFormat};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

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

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Show which keys, tags and version keys a WAL sample would invalidate, without touching Redis.
    #[command(name = "dry-run")]
    DryRun(DryRunArgs),
    /// Validate rules statically, and against a live schema with --db.
    Check(CheckArgs),
    /// Capture live changes (temporary slot) or a slot's backlog (--peek) into a capture file.
    Record(RecordArgs),
    /// Create the publication (for the rules' tables) and then the replication slot.
    Setup(SetupArgs),
    /// Run the daemon: stream committed changes and apply invalidations to Redis.
    Run(RunArgs),
    /// Show the slot (active pid, confirmed position, lag, retained WAL, wal_status) and the publication.
    Status(StatusArgs),
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
    Docs(DocsArgs),
    /// Which rules and templates can produce a key, from which columns — and which writes (don't) invalidate it.
    Explain(ExplainArgs),
    /// Consistency under faults: writers, cache-aside readers, kill -9/restarts/outages; counts stale entries and lost invalidations.
    Chaos(ChaosArgs),
}

#[derive(clap::Args)]
struct ChaosArgs {
    /// The CI variant (every fault once, about two minutes) instead of the published run.
    #[arg(long)]
    short: bool,
    /// Fault cycles (default: 6 short, 24 full).
    #[arg(long)]
    cycles: Option<usize>,
    /// Seconds of workload between faults.
    #[arg(long)]
    cycle_seconds: Option<u64>,
    /// Faults to inject, round robin (default: all): kill9, redis-restart, redis-stop, terminate-walsender, pg-restart, takeover.
    #[arg(long, value_delimiter = ',')]
    faults: Vec<walbust_testkit::chaos::Fault>,
    /// Keep writing until at least this many transactions committed (default: 0 short, 100000 full).
    #[arg(long)]
    min_writes: Option<u64>,
    #[arg(long)]
    writers: Option<usize>,
    #[arg(long)]
    readers: Option<usize>,
    /// Write transactions per second, all writers together; 0 = unthrottled (default: 600 short, 1000 full).
    #[arg(long)]
    rate: Option<u64>,
    /// Keep walbust's logs here (default: a temp dir, printed).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct StatusArgs {
    #[arg(long, env = "WALBUST_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long)]
    db: Option<String>,
    #[arg(long)]
    slot: Option<String>,
    #[arg(long)]
    publication: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(clap::Args)]
struct DocsArgs {
    #[arg(long, default_value = "rules")]
    rules: PathBuf,
    /// Write to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit with status 1 when --out differs from what the rules generate (for CI).
    #[arg(long, requires = "out")]
    check: bool,
}

#[derive(clap::Args)]
struct ExplainArgs {
    #[arg(long, default_value = "rules")]
    rules: PathBuf,
    /// The cache key as it appears in Redis, e.g. shop:product:42
    key: String,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Configuration file (TOML); settings also come from WALBUST_* variables and the flags below.
    #[arg(long, env = "WALBUST_CONFIG")]
    config: Option<PathBuf>,
    /// postgres.url
    #[arg(long)]
    db: Option<String>,
    /// postgres.slot
    #[arg(long)]
    slot: Option<String>,
    /// postgres.publication
    #[arg(long)]
    publication: Option<String>,
    /// rules.path
    #[arg(long)]
    rules: Option<PathBuf>,
    /// A Redis target URL (repeat for several); replaces the configured targets.
    #[arg(long)]
    redis: Vec<String>,
    /// http.listen ("" disables)
    #[arg(long)]
    listen: Option<String>,
    /// postgres.create_slot
    #[arg(long)]
    create_slot: bool,
}

#[derive(clap::Args)]
struct RecordArgs {
    /// Database (libpq URL or key=value string; sslmode and sslrootcert are honoured).
    #[arg(long, env = "WALBUST_DB")]
    db: String,
    /// Publication whose tables to record.
    #[arg(long)]
    publication: String,
    /// Output file (`-` for stdout).
    #[arg(long)]
    out: PathBuf,
    /// Stop after this many row changes (at the end of the transaction).
    #[arg(long)]
    max_changes: Option<u64>,
    /// Stop after this long (e.g. 30s, 5m), at a transaction boundary.
    #[arg(long, value_parser = parse_duration_arg)]
    duration: Option<std::time::Duration>,
    /// Stop once this LSN is reached.
    #[arg(long, value_parser = parse_lsn_arg)]
    until_lsn: Option<crate::model::Lsn>,
    /// Record the pending backlog of this existing slot without consuming it.
    #[arg(long)]
    peek: Option<String>,
}

#[derive(clap::Args)]
struct SetupArgs {
    #[arg(long, env = "WALBUST_DB")]
    db: String,
    #[arg(long, default_value = "walbust")]
    publication: String,
    #[arg(long, default_value = "walbust")]
    slot: String,
    /// Rules whose tables the publication must cover.
    #[arg(long, default_value = "rules")]
    rules: PathBuf,
}

#[derive(clap::Args)]
struct DryRunArgs {
    /// Rules file or directory (default: ./rules, else the bundled catalog rules).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// WAL sample: test_decoding text, wal2json JSON lines, or `-` for stdin (default: the bundled catalog sample).
    #[arg(long)]
    wal: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Sample format; detected from the first line when not given.
    #[arg(long, value_parser = parse_input_format)]
    input_format: Option<InputFormat>,
    /// Name the rule that produced each action.
    #[arg(long)]
    explain: bool,
    /// Report bad sample lines and continue.
    #[arg(long)]
    keep_going: bool,
    /// Exit with status 2 when a change could not be mapped and its rule has no fallback.
    #[arg(long)]
    strict: bool,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Rules file or directory.
    #[arg(long, default_value = "rules")]
    rules: PathBuf,
    /// Also check against this database (libpq URL or key=value string).
    #[arg(long, env = "WALBUST_DB")]
    db: Option<String>,
    /// Publication whose coverage to check (with --db).
    #[arg(long)]
    publication: Option<String>,
    /// Exit with status 2 when there are warnings (and no errors).
    #[arg(long)]
    strict: bool,
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    rules::load::parse_duration(text)
        .ok_or_else(|| format!("cannot read duration `{text}`; write e.g. 500ms, 30s or 5m"))
}

fn parse_lsn_arg(text: &str) -> Result<crate::model::Lsn, String> {
    crate::model::Lsn::parse(text)
        .ok_or_else(|| format!("cannot read LSN `{text}`; write it as PostgreSQL prints it, e.g. 0/16B3748"))
}

fn parse_input_format(text: &str) -> Result<InputFormat, String> {
    InputFormat::parse(text)
        .ok_or_else(|| format!("unknown input format `{text}`; use test_decoding, wal2json, wal2json-v1 or capture"))
}

const BUNDLED_RULES: &str = "rules";
const BUNDLED_SAMPLE: &str = "samples/catalog.wal2json.jsonl";
const EMBEDDED_RULES: &str = include_str!("../../rules/catalog.yaml");
const EMBEDDED_SAMPLE: &str = include_str!("../../samples/catalog.wal2json.jsonl");

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

/// Parses the arguments, runs the subcommand, and turns its result into the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own report; only errors from the daemon inside it are of interest.
    let default_level = if matches!(cli.command, Command::Demo) {
        "error"
    } else {
        "warn"
    };
    init_logging(cli.log_format, default_level);
    let result = match cli.command {
        Command::DryRun(args) => dry_run(args),
        Command::Check(args) => check(args),
        Command::Record(args) => record(args),
        Command::Setup(args) => setup(args),
        Command::Run(args) => run_daemon(args),
        Command::Status(args) => status(args),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "walbust",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let man = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            match man.render(&mut std::io::stdout()) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => Err(e.into()),
            }
        }
        Command::Demo => (|| -> Result<ExitCode> {
            runtime()?.block_on(async {
                let mut out = std::io::stdout();
                walbust_testkit::demo::run(&mut out, demo_daemon).await
            })?;
            Ok(ExitCode::SUCCESS)
        })(),
        Command::Chaos(args) => chaos(args),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&rules::schema::rules_schema()).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Docs(args) => docs(args),
        Command::Explain(args) => explain(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn print_diagnostics(diagnostics: &[Diagnostic]) {
    let stderr = std::io::stderr();
    let mut err = stderr.lock();
    for d in diagnostics {
        let _ = writeln!(err, "{d}");
    }
}

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

fn dry_run(args: DryRunArgs) -> Result<ExitCode> {
    let Some(loaded) = load_rules(args.rules.as_deref())? else {
        return Ok(ExitCode::from(1));
    };
    let rules = Arc::new(loaded.rules);
    let mut source = match &args.wal {
        Some(path) => sample::open_path(path, args.input_format)?,
        None if Path::new(BUNDLED_SAMPLE).exists() => sample::open_path(Path::new(BUNDLED_SAMPLE), args.input_format)?,
        None => {
            eprintln!("note: no ./{BUNDLED_SAMPLE} here; using the bundled catalog sample (pass --wal to use yours)");
            sample::open_reader(
                "<bundled>/samples/catalog.wal2json.jsonl",
                Box::new(std::io::Cursor::new(EMBEDDED_SAMPLE.as_bytes())),
                args.input_format,
            )?
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout);
    let options = dryrun::Options {
        format: match args.format {
            Format::Text => OutputFormat::Text,
            Format::Json => OutputFormat::Json,
        },
        explain: args.explain,
        keep_going: args.keep_going,
    };
    let mut on_skip = |e: &sample::SampleError| eprintln!("skipped: {e}");
    let summary = dryrun::run(rules, source.as_mut(), &mut out, options, &mut on_skip).context("dry-run stopped")?;
    out.flush().context("cannot write output")?;
    if summary.unrenderable > 0 {
        tracing::warn!(
            unrenderable = summary.unrenderable,
            "some changes could not be mapped and their rules have no fallback"
        );
        if args.strict {
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs) -> Result<ExitCode> {
    let loaded = match rules::load_path(&args.rules) {
        Ok(l) => l,
        Err(e) => {
            print_diagnostics(&e.diagnostics);
            summarize(&e.diagnostics, 0);
            return Ok(ExitCode::from(1));
        }
    };
    let mut diagnostics = loaded.warnings.clone();
    diagnostics.extend(crate::check::static_notes(&loaded.rules));
    if let Some(db) = &args.db {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let schema = runtime.block_on(crate::check::read_schema(
            db,
            &loaded.rules,
            args.publication.as_deref(),
        ))?;
        diagnostics.extend(crate::check::check_against_schema(&loaded.rules, &schema));
        if let Some(publication) = &schema.publication {
            if publication.exists {
                let tables: Vec<String> = publication.tables.iter().map(|t| t.to_string()).collect();
                println!("publication `{}` covers: {}", publication.name, tables.join(", "));
            }
        }
    } else if args.publication.is_some() {
        eprintln!("note: --publication is checked only together with --db");
    }
    print_diagnostics(&diagnostics);
    let errors = summarize(&diagnostics, loaded.rules.rules.len());
    let warnings = diagnostics.len() - errors;
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else if warnings > 0 && args.strict {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn summarize(diagnostics: &[Diagnostic], rules: usize) -> usize {
    let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    let warnings = diagnostics.len() - errors;
    if errors == 0 {
        println!("ok: {rules} rule(s), {warnings} warning(s)");
    } else {
        println!("{errors} error(s), {warnings} warning(s)");
    }
    errors
}

fn chaos(args: ChaosArgs) -> Result<ExitCode> {
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
    if !args.faults.is_empty() {
        options.faults = args.faults;
    }
    options.log_dir = args.log_dir;
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

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn record(args: RecordArgs) -> Result<ExitCode> {
    let connect = crate::source::conn::ConnectOptions::parse(&args.db)?;
    let options = crate::source::record::RecordOptions {
        connect,
        publication: args.publication,
        stop: crate::source::record::StopAt {
            max_changes: args.max_changes,
            duration: args.duration,
            until_lsn: args.until_lsn,
        },
        peek: args.peek,
    };
    let out: Box<dyn Write + Send> = if args.out.as_os_str() == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    } else {
        Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?,
        ))
    };
    let summary = runtime()?.block_on(async {
        let interrupt = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        crate::source::record::record(&options, out, interrupt).await
    })?;
    eprintln!(
        "recorded {} transaction(s), {} change(s), {} message(s){}",
        summary.transactions,
        summary.changes,
        summary.records,
        summary
            .last_commit_end
            .map(|l| format!(" up to {l}"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

fn setup(args: SetupArgs) -> Result<ExitCode> {
    let Some(loaded) = load_rules(Some(&args.rules))? else {
        return Ok(ExitCode::from(1));
    };
    let mut tables: Vec<rules::TableName> = loaded.rules.tables().cloned().collect();
    tables.sort();
    let connect = crate::source::conn::ConnectOptions::parse(&args.db)?;
    let report = runtime()?.block_on(crate::source::slot::setup(
        &connect,
        &args.publication,
        &args.slot,
        &tables,
    ))?;
    if report.publication_created {
        println!(
            "created publication `{}` for {} table(s)",
            args.publication,
            tables.len()
        );
    }
    for t in &report.tables_added {
        println!("added {t} to publication `{}`", args.publication);
    }
    match report.slot_created {
        Some(lsn) => println!("created replication slot `{}` (pgoutput) at {lsn}", args.slot),
        None => println!("replication slot `{}` already exists", args.slot),
    }
    Ok(ExitCode::SUCCESS)
}

fn run_daemon(args: RunArgs) -> Result<ExitCode> {
    use crate::config::{Config, RedisConfig};
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if config.shutdown_timeout.is_empty() {
        config.shutdown_timeout = "10s".into();
    }
    config.apply_env(std::env::vars())?;
    if let Some(db) = args.db {
        config.postgres.url = db;
    }
    if let Some(slot) = args.slot {
        config.postgres.slot = slot;
    }
    if let Some(p) = args.publication {
        config.postgres.publication = p;
    }
    if let Some(r) = args.rules {
        config.rules.path = r;
    }
    if !args.redis.is_empty() {
        config.redis = args
            .redis
            .into_iter()
            .map(|url| RedisConfig {
                url,
                ..RedisConfig::default()
            })
            .collect();
    }
    if let Some(l) = args.listen {
        config.http.listen = l;
    }
    if args.create_slot {
        config.postgres.create_slot = true;
    }
    let validated = config.validate()?;
    tracing::info!(config = ?validated.config, "starting walbust");
    let summary = runtime()?.block_on(async move {
        let shutdown = async {
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
        };
        crate::daemon::run(validated, shutdown).await
    })?;
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

fn docs(args: DocsArgs) -> Result<ExitCode> {
    let Some(loaded) = load_rules(Some(&args.rules))? else {
        return Ok(ExitCode::from(1));
    };
    let text = crate::catalog::markdown(&loaded.rules);
    match &args.out {
        None => print!("{text}"),
        Some(path) if args.check => {
            let current = std::fs::read_to_string(path).unwrap_or_default();
            if current != text {
                eprintln!(
                    "{} is out of date with the rules; regenerate it with `walbust docs --rules {} --out {}`",
                    path.display(),
                    args.rules.display(),
                    path.display()
                );
                return Ok(ExitCode::from(1));
            }
        }
        Some(path) => std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn explain(args: ExplainArgs) -> Result<ExitCode> {
    let Some(loaded) = load_rules(Some(&args.rules))? else {
        return Ok(ExitCode::from(1));
    };
    let found = crate::catalog::explain(&loaded.rules, &args.key);
    match args.format {
        Format::Text => print!("{}", crate::catalog::explain_text(&args.key, &found)),
        Format::Json => {
            let items: Vec<serde_json::Value> = found
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "rule": e.rule,
                        "table": e.table,
                        "kind": e.kind.field(),
                        "template": e.template,
                        "values": e.values.iter().map(|(c, v)| serde_json::json!({"column": c, "value": v})).collect::<Vec<_>>(),
                        "fallback": e.fallback,
                        "operations": e.operations.iter().map(|o| o.as_str()).collect::<Vec<_>>(),
                        "notes": e.notes,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&items)?);
        }
    }
    Ok(if found.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn status(args: StatusArgs) -> Result<ExitCode> {
    use crate::config::Config;
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    config.apply_env(std::env::vars().filter(|(k, _)| {
        matches!(
            k.as_str(),
            "WALBUST_DB" | "WALBUST_POSTGRES_URL" | "WALBUST_SLOT" | "WALBUST_PUBLICATION"
        )
    }))?;
    if let Some(db) = args.db {
        config.postgres.url = db;
    }
    if let Some(slot) = args.slot {
        config.postgres.slot = slot;
    }
    if let Some(p) = args.publication {
        config.postgres.publication = p;
    }
    if config.postgres.url.is_empty() {
        anyhow::bail!("no database given; pass --config walbust.toml, --db or WALBUST_DB");
    }
    let connect = crate::source::conn::ConnectOptions::parse(&config.postgres.url)?;
    let status = runtime()?.block_on(crate::source::status::read(
        &connect,
        &config.postgres.slot,
        &config.postgres.publication,
    ))?;
    match args.format {
        Format::Text => print!("{}", crate::source::status::text(&status)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
    }
    Ok(if status.slot_exists && status.publication_exists {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs the daemon for `walbust demo`.
fn demo_daemon(
    spec: walbust_testkit::demo::DemoDaemon,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> impl std::future::Future<Output = Result<walbust_testkit::demo::DaemonSummary, String>> + Send + 'static {
    use crate::config::{Config, RedisConfig};
    let mut config = Config::default();
    config.postgres.url = spec.postgres_url;
    config.postgres.publication = spec.publication;
    config.rules.path = spec.rules_dir;
    config.redis = vec![RedisConfig {
        url: spec.redis_url,
        ..RedisConfig::default()
    }];
    config.http.listen = String::new();
    config.shutdown_timeout = "5s".into();
    async move {
        let validated = config.validate().map_err(|e| e.to_string())?;
        let summary = crate::daemon::run(validated, shutdown)
            .await
            .map_err(|e| e.to_string())?;
        Ok((summary.transactions, summary.batches))
    }
}
