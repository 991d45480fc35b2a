//! The dry-run printer: a sink that prints what would be applied — per committed transaction,
//! as readable text or JSON Lines — and `walbust dry-run`, which plans a WAL sample through the
//! rules into it. Streams: memory is bounded by
//! the largest transaction's distinct keys, not by the sample size.

use super::{Batch, Sink, SinkError, SinkFuture};
use crate::model::CommitInfo;
use crate::plan::{Note, PlannedTxn, Planner};
use crate::rules::eval::EngineOptions;
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

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub format: OutputFormat,
    /// Name the rule that produced each action (text output).
    pub explain: bool,
    /// Report bad sample lines and go on instead of stopping at the first.
    pub keep_going: bool,
    /// How the daemon evaluates (tag prefix, fan-out limit), so dry-run plans as it will.
    pub engine: EngineOptions,
    /// Partitions and their ancestors (`dry-run --db`), added to what the sample records: rules
    /// on a partitioned table apply to its partitions' changes, as in the daemon.
    pub partitions: Vec<crate::rules::PartitionOf>,
    /// Replica identities (`dry-run --db`): text samples then plan as pgoutput does.
    pub tables: Vec<crate::sample::hints::TableHint>,
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
    /// Not a `#[source]`: the message already says it, and error chains would print it twice.
    #[error("{0}\nhint: fix the sample, force the format with --input-format, or pass --keep-going to skip bad lines")]
    Sample(SampleError),
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
}

impl From<SampleError> for DryRunError {
    fn from(e: SampleError) -> DryRunError {
        DryRunError::Sample(e)
    }
}

/// The dry-run printer: a [`Sink`] that writes what each batch would apply instead of applying
/// it. Batches made with [`Batch::retaining`] are printed transaction by transaction (with
/// notes and explanations); any other batch is printed as one block of its merged actions.
pub struct Printer<'w> {
    out: &'w mut (dyn Write + Send),
    options: Options,
    summary: Summary,
}

impl<'w> Printer<'w> {
    pub fn new(out: &'w mut (dyn Write + Send), options: Options) -> Printer<'w> {
        Printer {
            out,
            options,
            summary: Summary::default(),
        }
    }

    fn print(&mut self, batch: &Batch) -> io::Result<()> {
        for txn in batch.retained() {
            self.summary.add(txn);
            if txn.has_output() {
                match self.options.format {
                    OutputFormat::Json => write_json(&mut *self.out, txn)?,
                    OutputFormat::Text => write_text(&mut *self.out, txn, self.options.explain)?,
                }
            }
        }
        if batch.retained().is_empty() && !batch.is_empty() {
            let txn = merged(batch);
            self.summary.add(&txn);
            // One block, but every transaction merged into it counts.
            self.summary.transactions += batch.transactions.saturating_sub(1);
            match self.options.format {
                OutputFormat::Json => write_json(&mut *self.out, &txn)?,
                OutputFormat::Text => write_text(&mut *self.out, &txn, false)?,
            }
        }
        Ok(())
    }

    /// Writes the summary and returns it.
    pub fn finish(self) -> io::Result<Summary> {
        match self.options.format {
            OutputFormat::Json => {
                serde_json::to_writer(&mut *self.out, &serde_json::json!({ "summary": &self.summary }))
                    .map_err(io::Error::from)?;
                self.out.write_all(b"\n")?;
            }
            OutputFormat::Text => write_text_summary(&mut *self.out, &self.summary)?,
        }
        self.out.flush()?;
        Ok(self.summary)
    }
}

impl Sink for Printer<'_> {
    fn name(&self) -> &str {
        "dry-run"
    }

    fn apply<'a>(&'a mut self, batch: &'a Batch) -> SinkFuture<'a, ()> {
        let result = self.print(batch).map_err(SinkError::from);
        Box::pin(std::future::ready(result))
    }

    fn bump_epoch(&mut self) -> SinkFuture<'_, Option<i64>> {
        let result = writeln!(self.out, "  {:<16} every cache key (epoch bump)", "EPOCH").map_err(SinkError::from);
        Box::pin(std::future::ready(result.map(|_| None)))
    }
}

/// A batch's merged actions, sorted, as one planned transaction for printing.
fn merged(batch: &Batch) -> PlannedTxn {
    let actions = batch.merged();
    let sorted = |set: &crate::rules::actions::KeySet| {
        let mut v: Vec<String> = set.iter().cloned().collect();
        v.sort_unstable();
        v
    };
    let mut bump: Vec<String> = actions.bump.keys().cloned().collect();
    bump.sort_unstable();
    PlannedTxn {
        commit: CommitInfo {
            xid: None,
            lsn: None,
            end_lsn: batch.last_end,
            commit_time: None,
        },
        changes: batch.changes,
        delete: sorted(&actions.delete),
        bump,
        tags: sorted(&actions.tags),
        delete_matching: sorted(&actions.delete_matching),
        publish: actions.publish.iter().map(|(channel, _)| channel.clone()).collect(),
        ..Default::default()
    }
}

/// The printer's futures are ready at once: poll one without a runtime.
fn ready_now<T>(mut future: SinkFuture<'_, T>) -> Result<T, SinkError> {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => unreachable!("the dry-run printer never waits"),
    }
}

/// Plans every event of `source` and writes the result to `out`, one retaining batch per
/// committed transaction through the [`Printer`]. Bad sample lines go to `on_skip` when
/// `keep_going` is set.
pub fn run(
    rules: Arc<RuleSet>,
    source: &mut dyn EventSource,
    out: &mut (dyn Write + Send),
    mut options: Options,
    on_skip: &mut dyn FnMut(&SampleError),
) -> Result<Summary, DryRunError> {
    let mut planner = Planner::with_options(rules, options.explain, options.engine.clone());
    planner.engine_mut().map_partitions(source.partitions());
    planner.engine_mut().map_partitions(&options.partitions);
    let tables = std::mem::take(&mut options.tables);
    let mut hinted;
    let source: &mut dyn EventSource = if tables.is_empty() {
        source
    } else {
        hinted = crate::sample::hints::Hinted::new(source, &tables);
        &mut hinted
    };
    let keep_going = options.keep_going;
    let mut printer = Printer::new(out, options);
    let mut skipped_lines = 0;
    loop {
        let event = match source.next_event() {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(e) if keep_going => {
                skipped_lines += 1;
                on_skip(&e);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(txn) = planner.push(&event) {
            let mut batch = Batch::retaining();
            batch.add_owned(txn);
            ready_now(printer.apply(&batch)).map_err(|e| match e {
                SinkError::Io(e) => DryRunError::Output(e),
                other => DryRunError::Output(io::Error::other(other)),
            })?;
        }
    }
    printer.summary.skipped_lines = skipped_lines;
    if let Some((_, changes)) = planner.unterminated() {
        printer.summary.uncommitted_changes = changes;
    }
    Ok(printer.finish()?)
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
    for (label, notes, tail) in [
        ("FALLBACK", &txn.fallbacks, ""),
        ("UNRENDERABLE", &txn.unrenderable, " (no fallback: add one to the rule)"),
    ] {
        for note in notes {
            writeln!(
                out,
                "  {label:<16} rule {} on {} {}: {}{tail}",
                note.rule, note.op, note.table, note.reason
            )?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Lsn;

    fn txn(lsn: u64, delete: &[&str]) -> PlannedTxn {
        PlannedTxn {
            commit: CommitInfo {
                xid: Some(7),
                lsn: Some(Lsn(lsn)),
                end_lsn: Some(Lsn(lsn + 8)),
                commit_time: None,
            },
            changes: 1,
            delete: delete.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// The printer keeps the sink contract for any batch: a daemon batch (merged, no
    /// transactions kept) is printed as one block of its actions, none left out.
    #[test]
    fn prints_every_action_of_a_merged_batch() {
        let mut batch = Batch::default();
        batch.add_owned(txn(100, &["b", "a"]));
        batch.add_owned(txn(200, &["a", "c"]));
        let mut out = Vec::new();
        let mut printer = Printer::new(&mut out, Options::default());
        ready_now(printer.apply(&batch)).unwrap();
        let summary = printer.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        for key in ["a", "b", "c"] {
            assert!(text.contains(&format!("delete           {key}\n")), "{text}");
        }
        assert_eq!((summary.transactions, summary.changes, summary.delete), (2, 2, 3));
    }
}
