//! The plan: deduplicated actions per committed transaction.
//!
//! A [`Planner`] consumes [`Event`]s, evaluates each change with the rules [`Engine`], and
//! yields one [`PlannedTxn`] per committed transaction. Aborted or unterminated transactions
//! yield nothing: only committed work is ever applied.

use crate::model::{CommitInfo, Event};
use crate::rules::eval::{Engine, EngineOptions};
use crate::rules::{ActionKind, RuleSet};
use std::collections::HashMap;
use std::sync::Arc;

pub use crate::rules::actions::{Note, TxnPlan};
pub use batch::{Actions, Batch};

mod batch;

/// `((kind, key), names of the rules that produced it)`, sorted by kind and key.
pub type Explanation = Vec<((ActionKind, String), Vec<String>)>;

/// The deduplicated actions of one committed transaction, sorted unless the planner was
/// made [`Planner::unsorted`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlannedTxn {
    pub commit: CommitInfo,
    pub changes: u64,
    pub delete: Vec<String>,
    pub bump: Vec<String>,
    pub tags: Vec<String>,
    /// The Redis set keys of `tags`.
    pub tag_keys: Vec<String>,
    /// Keys to delete once more after a delay (`redelete_after`).
    pub redelete: Vec<(String, std::time::Duration)>,
    pub delete_matching: Vec<String>,
    pub publish: Vec<String>,
    pub fallbacks: Vec<Note>,
    pub unrenderable: Vec<Note>,
    /// `((kind, key), rule names)` when explaining.
    pub explain: Option<Explanation>,
}

impl PlannedTxn {
    /// True when the transaction produced any action, fallback or unrenderable change.
    pub fn has_output(&self) -> bool {
        !(self.delete.is_empty()
            && self.bump.is_empty()
            && self.tags.is_empty()
            && self.delete_matching.is_empty()
            && self.publish.is_empty()
            && self.fallbacks.is_empty()
            && self.unrenderable.is_empty())
    }

    pub fn keys(&self, kind: ActionKind) -> &[String] {
        match kind {
            ActionKind::Delete => &self.delete,
            ActionKind::Bump => &self.bump,
            ActionKind::Tags => &self.tags,
            ActionKind::DeleteMatching => &self.delete_matching,
        }
    }
}

/// Closes the transaction in progress: its actions as a [`PlannedTxn`] (sorted when `sort`,
/// or when announcements carry them); `current` is left empty for the next one.
fn take(current: &mut TxnPlan, commit: CommitInfo, rules: &RuleSet, sort: bool) -> PlannedTxn {
    let sort = sort || !current.publish.is_empty();
    let sorted = |set: &mut crate::rules::actions::KeySet| {
        let mut v: Vec<String> = set.drain().collect();
        if sort {
            v.sort_unstable();
        }
        v
    };
    let explain = current.explain.as_mut().map(|map| {
        let mut entries: Vec<((ActionKind, String), Vec<String>)> = map
            .drain()
            .map(|(k, set)| (k, set.into_iter().map(|i| rules.rules[i].name.clone()).collect()))
            .collect();
        entries.sort();
        entries
    });
    let txn = PlannedTxn {
        commit,
        changes: current.changes,
        delete: sorted(&mut current.delete),
        bump: sorted(&mut current.bump),
        tags: sorted(&mut current.tags),
        tag_keys: sorted(&mut current.tag_keys),
        redelete: {
            let mut v: Vec<(String, std::time::Duration)> = current.redelete.drain().collect();
            v.sort();
            v
        },
        delete_matching: sorted(&mut current.delete_matching),
        publish: std::mem::take(&mut current.publish).into_iter().collect(),
        fallbacks: std::mem::take(&mut current.fallbacks).into_iter().collect(),
        unrenderable: std::mem::take(&mut current.unrenderable).into_iter().collect(),
        explain,
    };
    current.changes = 0;
    current.rule_keys.clear();
    current.escalated.clear();
    txn
}

/// Turns events into planned transactions.
pub struct Planner {
    engine: Engine,
    current: TxnPlan,
    in_transaction: bool,
    /// Changes seen since the last Begin/Commit, for reporting an unterminated tail.
    open_xid: Option<u32>,
    /// The commit LSN of the transaction in progress, when the input says it at BEGIN.
    final_lsn: Option<crate::model::Lsn>,
    /// Sort each transaction's actions (for output people read; see [`Planner::unsorted`]).
    sort: bool,
    /// Streamed transactions in progress (protocol 2): top-level xid → what each of its
    /// (sub)transactions collected, so a subtransaction's abort drops only its own keys.
    streams: HashMap<u32, HashMap<u32, TxnPlan>>,
    /// The streamed transaction of the current stream block.
    stream: Option<u32>,
    explain: bool,
}

impl Planner {
    pub fn new(rules: Arc<RuleSet>, explain: bool) -> Planner {
        Planner::with_options(rules, explain, EngineOptions::default())
    }

    pub fn with_options(rules: Arc<RuleSet>, explain: bool, options: EngineOptions) -> Planner {
        Planner {
            engine: Engine::with_options(rules, options),
            current: TxnPlan::with_explain(explain),
            in_transaction: false,
            open_xid: None,
            final_lsn: None,
            sort: true,
            streams: HashMap::new(),
            stream: None,
            explain,
        }
    }

    /// Leaves each transaction's actions in no particular order: for the daemon, which merges
    /// them into a batch at once, sorting would be work thrown away.
    pub fn unsorted(mut self) -> Planner {
        self.sort = false;
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Feeds one event; returns the planned transaction at its commit.
    pub fn push(&mut self, event: &Event) -> Option<PlannedTxn> {
        match event {
            Event::Begin { xid, final_lsn } => {
                self.current.clear();
                self.in_transaction = true;
                self.open_xid = *xid;
                self.final_lsn = *final_lsn;
                None
            }
            Event::Change(change) => {
                // Inputs without BEGIN lines still describe committed work only if a COMMIT
                // follows; treat the change as opening a transaction.
                self.in_transaction = true;
                self.engine.evaluate(change, &mut self.current);
                None
            }
            Event::Commit(info) => {
                let mut info = info.clone();
                if info.xid.is_none() {
                    info.xid = self.open_xid;
                }
                self.in_transaction = false;
                self.open_xid = None;
                Some(take(&mut self.current, info, self.engine.rules(), self.sort))
            }
            Event::Rollback => {
                self.current.clear();
                self.in_transaction = false;
                self.open_xid = None;
                // The server sends every transaction in progress again after a restart.
                self.streams.clear();
                self.stream = None;
                None
            }
            Event::StreamStart { xid } => {
                self.stream = Some(*xid);
                None
            }
            Event::StreamStop => {
                self.stream = None;
                None
            }
            Event::StreamChange { xid: subxid, change } => {
                let top = self.stream.unwrap_or(*subxid);
                let explain = self.explain;
                let plan = self
                    .streams
                    .entry(top)
                    .or_default()
                    .entry(*subxid)
                    .or_insert_with(|| TxnPlan::with_explain(explain));
                self.engine.evaluate(change, plan);
                None
            }
            Event::StreamAbort { xid, subxid } => {
                if xid == subxid {
                    self.streams.remove(xid);
                } else if let Some(subs) = self.streams.get_mut(xid) {
                    subs.remove(subxid);
                }
                None
            }
            Event::StreamCommit(info) => {
                let top = info.xid?;
                let mut merged = TxnPlan::with_explain(self.explain);
                for (_, plan) in self.streams.remove(&top).unwrap_or_default() {
                    merged.absorb(plan);
                }
                Some(take(&mut merged, info.clone(), self.engine.rules(), self.sort))
            }
        }
    }

    /// Keys collected so far for the transaction in progress.
    pub fn pending_keys(&self) -> usize {
        let c = &self.current;
        c.delete.len() + c.bump.len() + c.tag_keys.len() + c.delete_matching.len()
    }

    /// Takes out the actions collected so far for the transaction in progress, so a huge
    /// transaction is applied in parts as it arrives instead of held whole (its position is
    /// still acknowledged only at its commit, so a crash replays it whole). `None` outside a
    /// transaction, or when the input did not say the commit LSN at BEGIN (version bumps need
    /// it). A key that comes again after a part was taken is applied again (harmless); the
    /// fan-out breaker keeps counting across parts, and announcements go out per part.
    pub fn take_part(&mut self) -> Option<PlannedTxn> {
        if !self.in_transaction {
            return None;
        }
        let lsn = self.final_lsn?;
        let rule_keys = std::mem::take(&mut self.current.rule_keys);
        let escalated = std::mem::take(&mut self.current.escalated);
        let publish = self.current.publish.clone();
        let commit = CommitInfo {
            xid: self.open_xid,
            lsn: Some(lsn),
            end_lsn: None,
            commit_time: None,
        };
        let part = take(&mut self.current, commit, self.engine.rules(), self.sort);
        self.current.rule_keys = rule_keys;
        self.current.escalated = escalated;
        self.current.publish = publish;
        Some(part)
    }

    /// At end of input: the number of changes of a transaction that never committed (they
    /// were not planned), if any.
    pub fn unterminated(&self) -> Option<(Option<u32>, u64)> {
        self.in_transaction.then_some((self.open_xid, self.current.changes))
    }
}
