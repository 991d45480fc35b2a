//! The dry-run sink: plans a WAL sample through the rules and prints what would be applied,
//! per committed transaction, as readable text or JSON Lines. Streams: memory is bounded by
//! the largest transaction's distinct keys, not by the sample size.

use crate::model::Event;
use crate::plan::{Note, PlannedTxn, Planner};
use crate::rules::{ActionKind, RuleSet};
use crate::sample::{EventSource, SampleError};
use serde::Serialize;
use std::io::{self, Write};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub format: OutputFormat,
    /// Name the rule that produced each action (text output).
    pub explain: bool,
    /// Report bad sample lines and go on instead of stopping at the first.
    pub keep_going: bool,
}

/// Totals over a sample; per-transaction arrays are counted after deduplication.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub transactions: u64,
    pub changes: u64,
    pub delete: u64,
    pub bump: u64,
    pub tags: u64,
    pub delete_matching: u64,
    pub publish: u64,
    pub fallbacks: u64,
    pub unrenderable: u64,
    /// Sample lines skipped with `--keep-going`.
    pub skipped_lines: u64,
    /// Changes of a final transaction that never committed (not planned).
    pub uncommitted_changes: u64,
}

impl Summary {
    fn add(&mut self, txn: &PlannedTxn) {
        self.transactions += 1;
        self.changes += txn.changes;
        self.delete += txn.delete.len() as u64;
        self.bump += txn.bump.len() as u64;
        self.tags += txn.tags.len() as u64;
        self.delete_matching += txn.delete_matching.len() as u64;
        self.publish += txn.publish.len() as u64;
        self.fallbacks += txn.fallbacks.len() as u64;
        self.unrenderable += txn.unrenderable.len() as u64;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    #[error("{0}\nhint: fix the sample, force the format with --input-format, or pass --keep-going to skip bad lines")]
    Sample(#[from] SampleError),
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
}

/// Plans every event of `source` and writes the result to `out`. Bad sample lines go to
/// `on_skip` when `keep_going` is set.
pub fn run(
    rules: Arc<RuleSet>,
    source: &mut dyn EventSource,
    out: &mut dyn Write,
    options: Options,
    on_skip: &mut dyn FnMut(&SampleError),
) -> Result<Summary, DryRunError> {
    let mut planner = Planner::new(rules, options.explain);
    let mut summary = Summary::default();
    let mut event_slot: Option<Event>;
    loop {
        event_slot = match source.next_event() {
            Ok(Some(event)) => Some(event),
            Ok(None) => None,
            Err(e) if options.keep_going => {
                summary.skipped_lines += 1;
                on_skip(&e);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let Some(event) = &event_slot else { break };
        if let Some(txn) = planner.push(event) {
            summary.add(&txn);
            if txn.has_output() {
                match options.format {
                    OutputFormat::Json => write_json(out, &txn)?,
                    OutputFormat::Text => write_text(out, &txn, options.explain)?,
                }
            }
        }
    }
    if let Some((_, changes)) = planner.unterminated() {
        summary.uncommitted_changes = changes;
    }
    match options.format {
        OutputFormat::Json => {
            serde_json::to_writer(&mut *out, &serde_json::json!({ "summary": &summary })).map_err(io::Error::from)?;
            out.write_all(b"\n")?;
        }
        OutputFormat::Text => write_text_summary(out, &summary)?,
    }
    out.flush()?;
    Ok(summary)
}

#[derive(Serialize)]
struct NoteJson<'a> {
    rule: &'a str,
    table: &'a str,
    op: &'a str,
    reason: &'a str,
}

#[derive(Serialize)]
struct TxnJson<'a> {
    xid: Option<u32>,
    lsn: Option<String>,
    commit_time: Option<String>,
    changes: u64,
    delete: &'a [String],
    bump: &'a [String],
    tags: &'a [String],
    delete_matching: &'a [String],
    publish: &'a [String],
    fallbacks: Vec<NoteJson<'a>>,
    unrenderable: Vec<NoteJson<'a>>,
}

fn notes(notes: &[Note]) -> Vec<NoteJson<'_>> {
    notes
        .iter()
        .map(|n| NoteJson {
            rule: &n.rule,
            table: &n.table,
            op: n.op.as_str(),
            reason: &n.reason,
        })
        .collect()
}

/// One JSON object for one planned transaction (the `dry-run --format json` line).
pub fn txn_json(txn: &PlannedTxn) -> serde_json::Value {
    serde_json::to_value(to_json(txn)).unwrap_or(serde_json::Value::Null)
}

fn to_json(txn: &PlannedTxn) -> TxnJson<'_> {
    TxnJson {
        xid: txn.commit.xid,
        lsn: txn.commit.lsn.map(|l| l.to_string()),
        commit_time: txn.commit.commit_time.map(|t| t.to_string()),
        changes: txn.changes,
        delete: &txn.delete,
        bump: &txn.bump,
        tags: &txn.tags,
        delete_matching: &txn.delete_matching,
        publish: &txn.publish,
        fallbacks: notes(&txn.fallbacks),
        unrenderable: notes(&txn.unrenderable),
    }
}

fn write_json(out: &mut dyn Write, txn: &PlannedTxn) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &to_json(txn)).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

fn write_text(out: &mut dyn Write, txn: &PlannedTxn, explain: bool) -> io::Result<()> {
    write!(out, "transaction")?;
    match txn.commit.xid {
        Some(xid) => write!(out, " {xid}")?,
        None => write!(out, " (no xid)")?,
    }
    if let Some(lsn) = txn.commit.lsn {
        write!(out, " at {lsn}")?;
    }
    if let Some(time) = txn.commit.commit_time {
        write!(out, ", committed {time}")?;
    }
    writeln!(
        out,
        ", {} change{}",
        txn.changes,
        if txn.changes == 1 { "" } else { "s" }
    )?;
    for kind in ActionKind::ALL {
        for key in txn.keys(kind) {
            write!(out, "  {:<16} {key}", kind.field())?;
            if let Some(explain) = txn.explain.as_ref().filter(|_| explain) {
                if let Ok(i) = explain.binary_search_by(|((k, key2), _)| (*k, key2.as_str()).cmp(&(kind, key.as_str())))
                {
                    write!(out, "  <- {}", explain[i].1.join(", "))?;
                }
            }
            writeln!(out)?;
        }
    }
    for channel in &txn.publish {
        writeln!(out, "  {:<16} {channel}", "publish")?;
    }
    for note in &txn.fallbacks {
        writeln!(
            out,
            "  {:<16} rule {} on {} {}: {}",
            "FALLBACK", note.rule, note.op, note.table, note.reason
        )?;
    }
    for note in &txn.unrenderable {
        writeln!(
            out,
            "  {:<16} rule {} on {} {}: {} (no fallback: add one to the rule)",
            "UNRENDERABLE", note.rule, note.op, note.table, note.reason
        )?;
    }
    Ok(())
}

fn write_text_summary(out: &mut dyn Write, s: &Summary) -> io::Result<()> {
    writeln!(
        out,
        "summary: {} transactions, {} changes -> {} delete, {} bump, {} tags, {} delete_matching, {} publish; {} fallbacks, {} unrenderable",
        s.transactions, s.changes, s.delete, s.bump, s.tags, s.delete_matching, s.publish, s.fallbacks, s.unrenderable
    )?;
    if s.skipped_lines > 0 {
        writeln!(out, "skipped {} bad sample line(s) (--keep-going)", s.skipped_lines)?;
    }
    if s.uncommitted_changes > 0 {
        writeln!(
            out,
            "the sample ends inside a transaction: {} change(s) without COMMIT were not planned",
            s.uncommitted_changes
        )?;
    }
    Ok(())
}
