//! The subcommands that talk to PostgreSQL without running the daemon: `record`, `setup` and
//! `status`.

use super::{load_rules, runtime, Format, SlotArgs};
use crate::config::Config;
use crate::model::Lsn;
use crate::rules;
use crate::source::conn::ConnectOptions;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct RecordArgs {
    /// Database (libpq URL or key=value string; sslmode and sslrootcert are honoured).
    #[arg(long, env = "WALBUST_DB")]
    pub db: String,
    /// Publication whose tables to record.
    #[arg(long)]
    pub publication: String,
    /// Output file (`-` for stdout).
    #[arg(long)]
    pub out: PathBuf,
    /// Stop after this many row changes (at the end of the transaction).
    #[arg(long)]
    pub max_changes: Option<u64>,
    /// Stop after this long (e.g. 30s, 5m), at a transaction boundary.
    #[arg(long, value_parser = parse_duration_arg)]
    pub duration: Option<std::time::Duration>,
    /// Stop once this LSN is reached.
    #[arg(long, value_parser = parse_lsn_arg)]
    pub until_lsn: Option<crate::model::Lsn>,
    /// Record the pending backlog of this existing slot without consuming it.
    #[arg(long)]
    pub peek: Option<String>,
}

#[derive(clap::Args)]
pub struct SetupArgs {
    #[arg(long, env = "WALBUST_DB")]
    pub db: String,
    #[arg(long, default_value = crate::config::DEFAULT_PUBLICATION)]
    pub publication: String,
    #[arg(long, default_value = crate::config::DEFAULT_SLOT)]
    pub slot: String,
    /// Rules whose tables the publication must cover.
    #[arg(long, default_value = crate::config::DEFAULT_RULES_PATH)]
    pub rules: PathBuf,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub slot: SlotArgs,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    rules::load::parse_duration(text)
        .ok_or_else(|| format!("cannot read duration `{text}`; write e.g. 500ms, 30s or 5m"))
}

fn parse_lsn_arg(text: &str) -> Result<Lsn, String> {
    Lsn::parse(text)
        .ok_or_else(|| format!("cannot read LSN `{text}`; write it as PostgreSQL prints it, e.g. 0/16B3748"))
}

pub fn record(args: RecordArgs) -> Result<ExitCode> {
    let connect = ConnectOptions::parse(&args.db)?;
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

pub fn setup(args: SetupArgs) -> Result<ExitCode> {
    let Some(loaded) = load_rules(Some(&args.rules))? else {
        return Ok(ExitCode::from(1));
    };
    let mut tables: Vec<rules::TableName> = loaded.rules.tables().cloned().collect();
    tables.sort();
    let connect = ConnectOptions::parse(&args.db)?;
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

pub fn status(args: StatusArgs) -> Result<ExitCode> {
    // Only the variables that say where the slot is: `status` needs no Redis or HTTP settings.
    let env = std::env::vars().filter(|(k, _)| {
        matches!(
            k.as_str(),
            "WALBUST_DB" | "WALBUST_POSTGRES_URL" | "WALBUST_SLOT" | "WALBUST_PUBLICATION"
        )
    });
    let file = args.slot.config.clone();
    let config = Config::resolve(file.as_deref(), env, &args.slot.overrides())?;
    if config.postgres.url.is_empty() {
        anyhow::bail!("no database given; pass --config walbust.toml, --db or WALBUST_DB");
    }
    let connect = ConnectOptions::parse(&config.postgres.url)?;
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
