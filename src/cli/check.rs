//! `walbust check`: static notes, and with `--db` the schema comparison.

use super::print_diagnostics;
use crate::rules::{self, Diagnostic, Severity};
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Rules file or directory.
    #[arg(long, default_value = crate::config::DEFAULT_RULES_PATH)]
    pub rules: PathBuf,
    /// Also check against this database (libpq URL or key=value string).
    #[arg(long, env = "WALBUST_DB")]
    pub db: Option<String>,
    /// Publication whose coverage to check (with --db).
    #[arg(long)]
    pub publication: Option<String>,
    /// Also check the rules against the targets of this daemon configuration (what a memcached
    /// target cannot hold: tags, patterns).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Exit with status 2 when there are warnings (and no errors).
    #[arg(long)]
    pub strict: bool,
}

pub fn run(args: CheckArgs) -> Result<ExitCode> {
    let loaded = match rules::load_path(&args.rules) {
        Ok(l) => l,
        Err(e) => {
            print_diagnostics(&e.diagnostics);
            summarize(&e.diagnostics, 0);
            return Ok(ExitCode::from(1));
        }
    };
    let mut diagnostics = loaded.warnings.clone();
    diagnostics.extend(crate::rules::check::static_notes(&loaded.rules));
    if let Some(path) = &args.config {
        let config = crate::config::Config::load(path)?;
        let cannot = crate::rules::check::TargetCapabilities {
            tags: false,
            patterns: false,
        };
        for i in 0..config.memcached.len() {
            let target = format!("memcached[{i}] (in {})", path.display());
            diagnostics.extend(crate::rules::check::target_notes(&loaded.rules, &target, cannot));
        }
        // Patterns have no surrogate key: refused unless the target may purge everything.
        let no_patterns = crate::rules::check::TargetCapabilities {
            tags: true,
            patterns: false,
        };
        for (i, p) in config.purge.iter().enumerate() {
            if p.delete_matching == crate::sink::http::PatternPolicy::Refuse {
                let target = format!("purge[{i}] (in {})", path.display());
                diagnostics.extend(crate::rules::check::target_notes(&loaded.rules, &target, no_patterns));
            }
        }
    }
    if let Some(db) = &args.db {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let schema = runtime.block_on(crate::source::schema::read_schema(
            db,
            &loaded.rules,
            args.publication.as_deref(),
        ))?;
        diagnostics.extend(crate::rules::check::check_against_schema(&loaded.rules, &schema));
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
    if errors == 0 && warnings == 0 {
        println!("ok: {rules} rule(s), no warnings");
    } else if errors == 0 {
        println!("passed with {warnings} warning(s) in {rules} rule(s) (--strict fails on warnings)");
    } else {
        println!("{errors} error(s), {warnings} warning(s)");
    }
    errors
}
