//! The plan: deduplicated actions per committed transaction.
//!
//! A [`Planner`] consumes [`Event`]s, evaluates each change with the rules [`Engine`], and
//! yields one [`PlannedTxn`] per committed transaction. Aborted or unterminated transactions
//! yield nothing: only committed work is ever applied.

use crate::model::{CommitInfo, Event, Op};
use crate::rules::eval::{Engine, EngineOptions};
use crate::rules::{ActionKind, RuleSet};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// A fallback taken, or a change that could not be mapped at all.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Note {
    pub rule: String,
    pub table: String,
    pub op: Op,
    pub reason: String,
}

/// Actions collected for the transaction in progress.
#[derive(Debug, Default)]
pub struct TxnPlan {
    pub changes: u64,
    pub delete: HashSet<String>,
    pub bump: HashSet<String>,
    pub tags: HashSet<String>,
    /// Redis set keys of the tags (`<prefix><tag_prefix><tag>`).
    pub tag_keys: HashSet<String>,
    pub delete_matching: HashSet<String>,
    pub publish: BTreeSet<String>,
    pub fallbacks: BTreeSet<Note>,
    pub unrenderable: BTreeSet<Note>,
    /// Deleted keys to delete again after a delay (rules with `redelete_after`).
    pub redelete: HashMap<String, std::time::Duration>,
    /// Distinct keys added per rule in this transaction (for the fan-out breaker).
    rule_keys: HashMap<usize, usize>,
    /// Rules that exceeded the fan-out limit in this transaction (their fallback applies).
    escalated: HashSet<usize>,
    /// Which rules produced each action, when explaining.
    explain: Option<HashMap<(ActionKind, String), BTreeSet<usize>>>,
}

impl TxnPlan {
    pub fn with_explain(explain: bool) -> TxnPlan {
        TxnPlan {
            explain: explain.then(HashMap::new),
            ..TxnPlan::default()
        }
    }

    fn set(&mut self, kind: ActionKind) -> &mut HashSet<String> {
        match kind {
            ActionKind::Delete => &mut self.delete,
            ActionKind::Bump => &mut self.bump,
            ActionKind::Tags => &mut self.tags,
            ActionKind::DeleteMatching => &mut self.delete_matching,
        }
    }

    /// Adds one rendered key; duplicates cost a lookup, not an allocation.
    /// Returns whether the key was new in this transaction.
    pub fn add(&mut self, kind: ActionKind, key: &str, rule: usize) -> bool {
        let set = self.set(kind);
        let new = !set.contains(key);
        if new {
            set.insert(key.to_string());
        }
        if let Some(explain) = &mut self.explain {
            explain.entry((kind, key.to_string())).or_default().insert(rule);
        }
        new
    }

    /// Adds a tag and the key of its Redis set.
    pub fn add_tag(&mut self, tag: &str, tag_key: &str, rule: usize) -> bool {
        if !self.tag_keys.contains(tag_key) {
            self.tag_keys.insert(tag_key.to_string());
        }
        self.add(ActionKind::Tags, tag, rule)
    }

    /// Counts distinct keys added by `rule`; returns the total in this transaction.
    pub fn count_keys(&mut self, rule: usize, n: usize) -> usize {
        let c = self.rule_keys.entry(rule).or_default();
        *c += n;
        *c
    }

    pub fn is_escalated(&self, rule: usize) -> bool {
        self.escalated.contains(&rule)
    }

    pub fn escalate(&mut self, rule: usize) {
        self.escalated.insert(rule);
    }

    pub fn add_publish(&mut self, channel: &str) {
        if !self.publish.contains(channel) {
            self.publish.insert(channel.to_string());
        }
    }

    fn take(&mut self, commit: CommitInfo, rules: &RuleSet) -> PlannedTxn {
        let sorted = |set: &mut HashSet<String>| {
            let mut v: Vec<String> = set.drain().collect();
            v.sort_unstable();
            v
        };
        let explain = self.explain.as_mut().map(|map| {
            let mut entries: Vec<((ActionKind, String), Vec<String>)> = map
                .drain()
                .map(|(k, set)| (k, set.into_iter().map(|i| rules.rules[i].name.clone()).collect()))
                .collect();
            entries.sort();
            entries
        });
        let txn = PlannedTxn {
            commit,
            changes: self.changes,
            delete: sorted(&mut self.delete),
            bump: sorted(&mut self.bump),
            tags: sorted(&mut self.tags),
            tag_keys: sorted(&mut self.tag_keys),
            redelete: {
                let mut v: Vec<(String, std::time::Duration)> = self.redelete.drain().collect();
                v.sort();
                v
            },
            delete_matching: sorted(&mut self.delete_matching),
            publish: std::mem::take(&mut self.publish).into_iter().collect(),
            fallbacks: std::mem::take(&mut self.fallbacks).into_iter().collect(),
            unrenderable: std::mem::take(&mut self.unrenderable).into_iter().collect(),
            explain,
        };
        self.changes = 0;
        self.rule_keys.clear();
        self.escalated.clear();
        txn
    }

    fn clear(&mut self) {
        self.changes = 0;
        self.delete.clear();
        self.bump.clear();
        self.tags.clear();
        self.tag_keys.clear();
        self.redelete.clear();
        self.rule_keys.clear();
        self.escalated.clear();
        self.delete_matching.clear();
        self.publish.clear();
        self.fallbacks.clear();
        self.unrenderable.clear();
        if let Some(e) = &mut self.explain {
            e.clear();
        }
    }
}

/// `((kind, key), names of the rules that produced it)`, sorted by kind and key.
pub type Explanation = Vec<((ActionKind, String), Vec<String>)>;

/// The deduplicated, sorted actions of one committed transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// Turns events into planned transactions.
pub struct Planner {
    engine: Engine,
    current: TxnPlan,
    in_transaction: bool,
    /// Changes seen since the last Begin/Commit, for reporting an unterminated tail.
    open_xid: Option<u32>,
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
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Feeds one event; returns the planned transaction at its commit.
    pub fn push(&mut self, event: &Event) -> Option<PlannedTxn> {
        match event {
            Event::Begin { xid } => {
                self.current.clear();
                self.in_transaction = true;
                self.open_xid = *xid;
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
                Some(self.current.take(info, self.engine.rules()))
            }
            Event::Rollback => {
                self.current.clear();
                self.in_transaction = false;
                self.open_xid = None;
                None
            }
        }
    }

    /// At end of input: the number of changes of a transaction that never committed (they
    /// were not planned), if any.
    pub fn unterminated(&self) -> Option<(Option<u32>, u64)> {
        self.in_transaction.then_some((self.open_xid, self.current.changes))
    }
}
