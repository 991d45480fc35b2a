//! `walbust dry-run`: a WAL sample through the rules into the dry-run printer.

use super::{load_rules, Format};
use crate::sample::{self, InputFormat};
use crate::sink::dryrun::{self, OutputFormat};
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct DryRunArgs {
    /// Rules file or directory (default: ./rules, else the bundled catalog rules).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// WAL sample: test_decoding text, wal2json JSON lines, or `-` for stdin (default: the bundled catalog sample).
    #[arg(long)]
    pub wal: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Sample format; detected from the first line when not given.
    #[arg(long, value_parser = parse_input_format)]
    pub input_format: Option<InputFormat>,
    /// Name the rule that produced each action.
    #[arg(long)]
    pub explain: bool,
    /// Report bad sample lines and continue.
    #[arg(long)]
    pub keep_going: bool,
    /// Exit with status 2 when a change could not be mapped and its rule has no fallback.
    #[arg(long)]
    pub strict: bool,
    /// The daemon's configuration file: plan exactly as it will (rules path when --rules is not
    /// given, `rules.tag_prefix`, `rules.max_keys_per_transaction`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// PostgreSQL URL: look up the database's partitions (rules on a partitioned table then apply
    /// to changes that name its partitions, as in the daemon; a walbust capture records them) and
    /// replica identities (test_decoding and wal2json samples then plan as pgoutput: key columns,
    /// NULLs left out of FULL old images).
    #[arg(long)]
    pub db: Option<String>,
}

fn parse_input_format(text: &str) -> Result<InputFormat, String> {
    InputFormat::parse(text)
        .ok_or_else(|| format!("unknown input format `{text}`; use test_decoding, wal2json, wal2json-v1 or capture"))
}

const BUNDLED_SAMPLE: &str = "samples/catalog.wal2json.jsonl";
const EMBEDDED_SAMPLE: &str = include_str!("../../samples/catalog.wal2json.jsonl");

pub fn run(args: DryRunArgs) -> Result<ExitCode> {
    let config = match &args.config {
        Some(path) => Some(crate::config::Config::load(path)?),
        None => None,
    };
    let rules_path = args
        .rules
        .clone()
        .or_else(|| config.as_ref().map(|c| c.rules.path.clone()));
    let Some(loaded) = load_rules(rules_path.as_deref())? else {
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
    let (partitions, tables) = match &args.db {
        Some(url) => super::runtime()?
            .block_on(async {
                let options = crate::source::conn::ConnectOptions::parse(url)?;
                let mut conn = crate::source::conn::ReplicationConnection::connect(&options).await?;
                let partitions = crate::source::schema::partition_map(&mut conn).await;
                let tables = crate::source::schema::table_hints(&mut conn).await;
                conn.close().await;
                Ok::<_, crate::source::conn::ConnError>((partitions?, tables?))
            })
            .with_context(|| {
                format!(
                    "cannot read partitions and replica identities from {}",
                    crate::config::redact_pg(url)
                )
            })?,
        None => (Vec::new(), Vec::new()),
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
        engine: match &config {
            Some(c) => crate::rules::eval::EngineOptions {
                tag_prefix: c.rules.tag_prefix.clone(),
                max_keys_per_transaction: c.rules.max_keys_per_transaction,
            },
            None => Default::default(),
        },
        partitions,
        tables,
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
