//! The evaluator's output: the deduplicated actions collected for the transaction in
//! progress ([`TxnPlan`]), and the notes on changes that fell back or could not be mapped.
//! The planner ([`crate::plan`]) turns it into a [`crate::plan::PlannedTxn`] at COMMIT.

use super::ActionKind;
use crate::model::Op;
use std::collections::{BTreeSet, HashMap, HashSet};

/// The hasher of the per-change key sets: keys are hashed several times per change (the
/// transaction's set, then the batch's), and SipHash was a tenth of the daemon's CPU. foldhash
/// is seeded per process, so crafted keys cannot be aimed at it.
pub type FastState = foldhash::fast::RandomState;
/// A set of rendered keys.
pub type KeySet = HashSet<String, FastState>;
/// Rendered keys to something.
pub type KeyMap<V> = HashMap<String, V, FastState>;

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
    pub delete: KeySet,
    pub bump: KeySet,
    pub tags: KeySet,
    /// Redis set keys of the tags (`<prefix><tag_prefix><tag>`).
    pub tag_keys: KeySet,
    pub delete_matching: KeySet,
    pub publish: BTreeSet<String>,
    pub fallbacks: BTreeSet<Note>,
    pub unrenderable: BTreeSet<Note>,
    /// Deleted keys to delete again after a delay (rules with `redelete_after`).
    pub redelete: KeyMap<std::time::Duration>,
    /// Distinct keys added per rule in this transaction (for the fan-out breaker).
    pub(crate) rule_keys: HashMap<usize, usize, FastState>,
    /// Rules that exceeded the fan-out limit in this transaction (their fallback applies).
    pub(crate) escalated: HashSet<usize, FastState>,
    /// Which rules produced each action, when explaining.
    pub(crate) explain: Option<HashMap<(ActionKind, String), BTreeSet<usize>>>,
}

impl TxnPlan {
    pub fn with_explain(explain: bool) -> TxnPlan {
        TxnPlan {
            explain: explain.then(HashMap::new),
            ..TxnPlan::default()
        }
    }

    fn set(&mut self, kind: ActionKind) -> &mut KeySet {
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

    /// Takes in what `other` collected (the subtransactions of a streamed transaction, merged
    /// at its commit).
    pub fn absorb(&mut self, other: TxnPlan) {
        self.changes += other.changes;
        self.delete.extend(other.delete);
        self.bump.extend(other.bump);
        self.tags.extend(other.tags);
        self.tag_keys.extend(other.tag_keys);
        self.delete_matching.extend(other.delete_matching);
        self.publish.extend(other.publish);
        self.fallbacks.extend(other.fallbacks);
        self.unrenderable.extend(other.unrenderable);
        for (key, delay) in other.redelete {
            let entry = self.redelete.entry(key).or_default();
            *entry = (*entry).max(delay);
        }
        for (rule, n) in other.rule_keys {
            *self.rule_keys.entry(rule).or_default() += n;
        }
        self.escalated.extend(other.escalated);
        if let (Some(mine), Some(theirs)) = (&mut self.explain, other.explain) {
            for (key, rules) in theirs {
                mine.entry(key).or_default().extend(rules);
            }
        }
    }

    /// Forgets everything collected (a rollback, or the next BEGIN).
    pub fn clear(&mut self) {
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
