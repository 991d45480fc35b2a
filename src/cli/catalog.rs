//! The subcommands about the rules themselves: `docs`, `explain` and `schema`.

use super::{load_rules, Format};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct DocsArgs {
    #[arg(long, default_value = crate::config::DEFAULT_RULES_PATH)]
    pub rules: PathBuf,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Exit with status 1 when --out differs from what the rules generate (for CI).
    #[arg(long, requires = "out")]
    pub check: bool,
}

#[derive(clap::Args)]
pub struct ExplainArgs {
    #[arg(long, default_value = crate::config::DEFAULT_RULES_PATH)]
    pub rules: PathBuf,
    /// The cache key as it appears in Redis, e.g. shop:product:42
    pub key: String,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn docs(args: DocsArgs) -> Result<ExitCode> {
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

pub fn explain(args: ExplainArgs) -> Result<ExitCode> {
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

pub fn schema() -> Result<ExitCode> {
    println!(
        "{}",
        serde_json::to_string_pretty(&crate::rules::schema::rules_schema())?
    );
    Ok(ExitCode::SUCCESS)
}
