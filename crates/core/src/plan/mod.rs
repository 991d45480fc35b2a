//! The plan: deduplicated actions per committed transaction.
//!
//! A [`Planner`] consumes [`Event`]s, evaluates each change with the rules [`Engine`], and
//! yields one [`PlannedTxn`] per committed transaction. Aborted or unterminated transactions
//! yield nothing: only committed work is ever applied.

use crate::model::{CommitInfo, Event};
use crate::rules::actions::FastState;
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

/// The keys one streamed (sub)transaction collected so far, taken out of the planner
/// ([`Planner::take_streamed`]) to be held elsewhere until the transaction's commit — the
/// daemon spills them to disk, so a streamed transaction's memory does not grow with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamedKeys {
    /// The (sub)transaction that produced them: its abort drops them.
    pub subxid: u32,
    pub delete: Vec<String>,
    pub bump: Vec<String>,
    pub tags: Vec<String>,
    pub tag_keys: Vec<String>,
    pub delete_matching: Vec<String>,
    pub redelete: Vec<(String, std::time::Duration)>,
}

impl StreamedKeys {
    pub fn len(&self) -> usize {
        self.delete.len()
            + self.bump.len()
            + self.tags.len()
            + self.tag_keys.len()
            + self.delete_matching.len()
            + self.redelete.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys as a part of the transaction committing with `commit` (its commit LSN, which
    /// version bumps take; no end position: that comes with the transaction itself).
    pub fn into_part(self, commit: &CommitInfo) -> PlannedTxn {
        PlannedTxn {
            commit: CommitInfo {
                xid: commit.xid,
                lsn: commit.lsn,
                end_lsn: None,
                commit_time: None,
            },
            delete: self.delete,
            bump: self.bump,
            tags: self.tags,
            tag_keys: self.tag_keys,
            delete_matching: self.delete_matching,
            redelete: self.redelete,
            ..PlannedTxn::default()
        }
    }
}

/// A streamed transaction in progress: what each of its (sub)transactions collected, and how
/// many keys that is (so the daemon can tell when to take them out without counting).
#[derive(Default)]
struct Streamed {
    subs: HashMap<u32, TxnPlan, FastState>,
    keys: usize,
}

fn held_keys(plan: &TxnPlan) -> usize {
    plan.delete.len()
        + plan.bump.len()
        + plan.tags.len()
        + plan.tag_keys.len()
        + plan.delete_matching.len()
        + plan.redelete.len()
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
    /// Streamed transactions in progress (protocol 2) by top-level xid, with what each of its
    /// (sub)transactions collected, so a subtransaction's abort drops only its own keys.
    streams: HashMap<u32, Streamed, FastState>,
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
            streams: HashMap::default(),
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
                let streamed = self.streams.entry(top).or_default();
                let plan = streamed
                    .subs
                    .entry(*subxid)
                    .or_insert_with(|| TxnPlan::with_explain(explain));
                let before = held_keys(plan);
                self.engine.evaluate(change, plan);
                streamed.keys += held_keys(plan) - before;
                None
            }
            Event::StreamAbort { xid, subxid } => {
                if xid == subxid {
                    self.streams.remove(xid);
                } else if let Some(streamed) = self.streams.get_mut(xid) {
                    if let Some(plan) = streamed.subs.remove(subxid) {
                        streamed.keys -= held_keys(&plan);
                    }
                }
                None
            }
            Event::StreamCommit(info) => {
                let top = info.xid?;
                let mut merged = TxnPlan::with_explain(self.explain);
                for (_, plan) in self.streams.remove(&top).unwrap_or_default().subs {
                    merged.absorb(plan);
                }
                Some(take(&mut merged, info.clone(), self.engine.rules(), self.sort))
            }
        }
    }

    /// Keys held for the streamed transaction of the current stream block (0 outside one).
    pub fn streamed_keys(&self) -> usize {
        self.stream.and_then(|top| self.streams.get(&top)).map_or(0, |s| s.keys)
    }

    /// Takes the keys held for the streamed transaction of the current stream block out of the
    /// planner, per (sub)transaction: its top-level xid and the keys, to be held elsewhere and
    /// applied at its commit (after what [`Planner::push`] returns at its StreamCommit is
    /// planned, or before: both are the same transaction). What the transaction needs besides
    /// keys stays here (the fan-out breaker's counts, announcements, fallback notes), so the
    /// commit still reports them once. `None` outside a stream block.
    pub fn take_streamed(&mut self) -> Option<(u32, Vec<StreamedKeys>)> {
        let top = self.stream?;
        let streamed = self.streams.get_mut(&top)?;
        streamed.keys = 0;
        let drain = |set: &mut crate::rules::actions::KeySet| set.drain().collect::<Vec<String>>();
        let taken = streamed
            .subs
            .iter_mut()
            .map(|(subxid, plan)| StreamedKeys {
                subxid: *subxid,
                delete: drain(&mut plan.delete),
                bump: drain(&mut plan.bump),
                tags: drain(&mut plan.tags),
                tag_keys: drain(&mut plan.tag_keys),
                delete_matching: drain(&mut plan.delete_matching),
                redelete: plan.redelete.drain().collect(),
            })
            .filter(|keys| !keys.is_empty())
            .collect();
        Some((top, taken))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, Column, Datum, Lsn, Op, Relation, RowChange};

    const RULES: &str = "version: 1\nrules:\n  - name: p\n    table: products\n    delete: [\"product:{id}\"]\n";

    fn planner() -> Planner {
        let rules = Arc::new(crate::rules::load_str("r.yaml", RULES).unwrap().rules);
        Planner::new(rules, false)
    }

    fn insert(subxid: u32, id: u32) -> Event {
        let relation = Arc::new(Relation::new("public", "products", vec![Column::named("id")]));
        Event::StreamChange {
            xid: subxid,
            change: Change::Row(RowChange {
                relation,
                op: Op::Insert,
                old: None,
                new: Some(vec![Datum::Text(id.to_string())]),
            }),
        }
    }

    fn commit(xid: u32) -> Event {
        Event::StreamCommit(CommitInfo {
            xid: Some(xid),
            lsn: Some(Lsn(0x100)),
            end_lsn: Some(Lsn(0x108)),
            commit_time: None,
        })
    }

    /// Keys taken out while a transaction streams are what it collected, tagged with the
    /// (sub)transaction that produced them; what stays is applied at its commit, and a
    /// subtransaction aborted after a take-out drops only what it collected since.
    #[test]
    fn streamed_keys_taken_out_are_tagged_by_subtransaction() {
        let mut p = planner();
        assert_eq!(p.take_streamed(), None, "outside a stream block");
        p.push(&Event::StreamStart { xid: 10 });
        p.push(&insert(10, 1));
        p.push(&insert(11, 2));
        p.push(&insert(11, 2));
        assert_eq!(p.streamed_keys(), 2, "deduplicated");
        let (top, mut taken) = p.take_streamed().unwrap();
        assert_eq!(top, 10);
        taken.sort_by_key(|k| k.subxid);
        assert_eq!(
            taken.iter().map(|k| (k.subxid, k.delete.clone())).collect::<Vec<_>>(),
            vec![(10, vec!["product:1".to_string()]), (11, vec!["product:2".to_string()])]
        );
        assert_eq!(p.streamed_keys(), 0);
        p.push(&insert(11, 3));
        p.push(&insert(12, 4));
        assert_eq!(p.streamed_keys(), 2);
        p.push(&Event::StreamStop);
        assert_eq!(p.streamed_keys(), 0, "outside a block nothing is counted");
        p.push(&Event::StreamAbort { xid: 10, subxid: 11 });
        p.push(&Event::StreamStart { xid: 10 });
        assert_eq!(p.streamed_keys(), 1, "the aborted subtransaction's keys are gone");
        p.push(&Event::StreamStop);
        let txn = p.push(&commit(10)).unwrap();
        assert_eq!(txn.delete, vec!["product:4".to_string()]);
        assert_eq!(txn.changes, 2, "the aborted subtransaction's changes are not counted");
        assert_eq!(txn.commit.end_lsn, Some(Lsn(0x108)));
    }

    #[test]
    fn a_taken_out_part_carries_the_commit_lsn_but_no_position() {
        let keys = StreamedKeys {
            subxid: 7,
            bump: vec!["ver:1".into()],
            ..StreamedKeys::default()
        };
        let Event::StreamCommit(info) = commit(7) else {
            unreachable!()
        };
        let part = keys.into_part(&info);
        assert_eq!(part.commit.lsn, Some(Lsn(0x100)));
        assert_eq!(part.commit.end_lsn, None);
        assert_eq!(part.bump, vec!["ver:1".to_string()]);
    }
}
