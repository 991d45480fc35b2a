//! Batching across transactions: [`Batch`] merges committed transactions into one
//! deduplicated set of [`Actions`] (a key deleted by five transactions is deleted once; a
//! version key keeps the highest LSN). A sink applies a batch as a whole.
//!
//! A batch made with [`Batch::retaining`] keeps the transactions themselves (a printer shows
//! each with its notes) and merges them only when a sink asks for [`Batch::merged`]; the daemon's
//! batches merge as transactions arrive, moving their keys in without a copy.

use super::PlannedTxn;
use crate::model::{Lsn, Timestamp};
use crate::rules::actions::{KeyMap, KeySet};
use std::sync::OnceLock;
use std::time::Duration;

/// The deduplicated actions of a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Actions {
    pub delete: KeySet,
    /// Version key → the highest commit LSN that bumps it.
    pub bump: KeyMap<u64>,
    /// Tag set keys (`<prefix><tag_prefix><tag>`).
    pub tags: KeySet,
    pub delete_matching: KeySet,
    /// Keys to delete again after a delay (`redelete_after`), longest delay kept.
    pub redelete: KeyMap<Duration>,
    /// `(channel, JSON payload)`, one per transaction and channel.
    pub publish: Vec<(String, String)>,
}

impl Actions {
    /// Number of actions (keys, patterns, announcements).
    pub fn len(&self) -> usize {
        self.delete.len() + self.bump.len() + self.tags.len() + self.delete_matching.len() + self.publish.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Merges a transaction, moving its keys in.
    fn merge_owned(&mut self, txn: PlannedTxn) {
        self.announce(&txn);
        let version = txn.commit.lsn.map(|l| l.0).unwrap_or(0);
        self.delete.extend(txn.delete);
        for key in txn.bump {
            let v = self.bump.entry(key).or_default();
            *v = (*v).max(version);
        }
        self.tags.extend(txn.tag_keys);
        for (key, delay) in txn.redelete {
            let entry = self.redelete.entry(key).or_default();
            *entry = (*entry).max(delay);
        }
        self.delete_matching.extend(txn.delete_matching);
    }

    /// Merges a transaction, copying the keys it does not have yet.
    fn merge(&mut self, txn: &PlannedTxn) {
        self.announce(txn);
        let copy_new = |set: &mut KeySet, keys: &[String]| {
            for key in keys {
                if !set.contains(key) {
                    set.insert(key.clone());
                }
            }
        };
        copy_new(&mut self.delete, &txn.delete);
        copy_new(&mut self.tags, &txn.tag_keys);
        copy_new(&mut self.delete_matching, &txn.delete_matching);
        let version = txn.commit.lsn.map(|l| l.0).unwrap_or(0);
        for key in &txn.bump {
            match self.bump.get_mut(key) {
                Some(v) => *v = (*v).max(version),
                None => {
                    self.bump.insert(key.clone(), version);
                }
            }
        }
        for (key, delay) in &txn.redelete {
            let entry = self.redelete.entry(key.clone()).or_default();
            *entry = (*entry).max(*delay);
        }
    }

    /// One announcement per channel the transaction publishes to.
    fn announce(&mut self, txn: &PlannedTxn) {
        if txn.publish.is_empty() {
            return;
        }
        let payload = serde_json::json!({
            "lsn": txn.commit.lsn.map(|l| l.to_string()),
            "commit_time": txn.commit.commit_time.map(|t| t.to_string()),
            "delete": txn.delete,
            "bump": txn.bump,
            "tags": txn.tags,
        })
        .to_string();
        for channel in &txn.publish {
            self.publish.push((channel.clone(), payload.clone()));
        }
    }
}

/// Committed transactions on their way to the sinks, deduplicated across them.
#[derive(Debug, Default)]
pub struct Batch {
    /// The merged actions (batches that do not retain transactions).
    merged: Actions,
    /// The planned transactions themselves, in commit order ([`Batch::retaining`]).
    retained: Vec<PlannedTxn>,
    /// `merged`, computed from `retained` on first use.
    retained_merged: OnceLock<Actions>,
    retain: bool,
    pub transactions: u64,
    /// Parts of transactions still in progress ([`Batch::add_part`]).
    pub parts: u64,
    pub changes: u64,
    /// End LSN of the last transaction: the position to acknowledge once applied.
    pub last_end: Option<Lsn>,
    /// Commit times, for the commit-to-applied latency.
    pub commit_times: Vec<Timestamp>,
}

impl Batch {
    /// A batch that keeps each transaction as planned (see [`Batch::retained`]).
    pub fn retaining() -> Batch {
        Batch {
            retain: true,
            ..Batch::default()
        }
    }

    /// Adds a committed transaction: kept whole when the batch retains transactions, otherwise
    /// merged with its keys moved in.
    pub fn add_owned(&mut self, txn: PlannedTxn) {
        self.count(&txn);
        if self.retain {
            self.retained_merged = OnceLock::new();
            self.retained.push(txn);
        } else {
            self.merged.merge_owned(txn);
        }
    }

    /// Adds the part of a large transaction planned so far ([`super::Planner::take_part`]): its
    /// actions, not a position (that comes with the transaction's last part, at its commit).
    pub fn add_part(&mut self, part: PlannedTxn) {
        self.parts += 1;
        self.changes += part.changes;
        if self.retain {
            self.retained_merged = OnceLock::new();
            self.retained.push(part);
        } else {
            self.merged.merge_owned(part);
        }
    }

    /// Adds a committed transaction, copying what it needs.
    pub fn add(&mut self, txn: &PlannedTxn) {
        if self.retain {
            self.add_owned(txn.clone());
        } else {
            self.count(txn);
            self.merged.merge(txn);
        }
    }

    /// Counts, position and time: what every transaction adds besides its actions.
    fn count(&mut self, txn: &PlannedTxn) {
        self.transactions += 1;
        self.changes += txn.changes;
        if let Some(end) = txn.commit.end_lsn {
            self.last_end = Some(self.last_end.map_or(end, |l| l.max(end)));
        }
        if let Some(t) = txn.commit.commit_time {
            self.commit_times.push(t);
        }
    }

    /// The deduplicated actions of every transaction in the batch: what a sink applies.
    pub fn merged(&self) -> &Actions {
        if !self.retain {
            return &self.merged;
        }
        self.retained_merged.get_or_init(|| {
            let mut actions = Actions::default();
            for txn in &self.retained {
                actions.merge(txn);
            }
            actions
        })
    }

    /// The transactions as planned, in commit order, when the batch was made with
    /// [`Batch::retaining`]; empty otherwise.
    pub fn retained(&self) -> &[PlannedTxn] {
        &self.retained
    }

    /// Number of actions (keys, patterns, announcements) in the batch.
    pub fn actions(&self) -> usize {
        self.merged().len()
    }

    pub fn is_empty(&self) -> bool {
        self.transactions == 0 && self.parts == 0
    }

    pub fn clear(&mut self) {
        *self = Batch {
            retain: self.retain,
            ..Batch::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CommitInfo;

    fn txn(lsn: u64, delete: &[&str], bump: &[&str]) -> PlannedTxn {
        PlannedTxn {
            commit: CommitInfo {
                xid: Some(1),
                lsn: Some(Lsn(lsn)),
                end_lsn: Some(Lsn(lsn + 8)),
                commit_time: None,
            },
            changes: 1,
            delete: delete.iter().map(|s| s.to_string()).collect(),
            bump: bump.iter().map(|s| s.to_string()).collect(),
            publish: vec!["ch".into()],
            ..Default::default()
        }
    }

    #[test]
    fn dedups_across_transactions_and_keeps_highest_version() {
        let mut b = Batch::default();
        b.add(&txn(100, &["k1", "k2"], &["v1"]));
        b.add(&txn(200, &["k1"], &["v1", "v2"]));
        b.add(&txn(150, &[], &["v1"]));
        assert_eq!(b.merged().delete.len(), 2);
        assert_eq!(b.merged().bump["v1"], 200);
        assert_eq!(b.merged().bump["v2"], 200);
        assert_eq!(b.last_end, Some(Lsn(208)));
        assert_eq!(b.merged().publish.len(), 3);
        assert_eq!(b.transactions, 3);
        assert_eq!(b.actions(), 2 + 2 + 3);
    }

    #[test]
    fn moving_a_transaction_in_merges_like_adding_it() {
        let txns = [
            txn(100, &["k1", "k2"], &["v1"]),
            txn(200, &["k1"], &["v1", "v2"]),
            txn(150, &[], &["v1"]),
        ];
        let (mut added, mut moved) = (Batch::default(), Batch::default());
        for t in &txns {
            added.add(t);
            moved.add_owned(t.clone());
        }
        assert_eq!(added.merged(), moved.merged());
        assert_eq!(
            (added.last_end, added.transactions),
            (moved.last_end, moved.transactions)
        );
        assert!(moved.retained().is_empty());
        let mut retaining = Batch::retaining();
        for t in &txns {
            retaining.add_owned(t.clone());
        }
        assert_eq!(retaining.retained(), &txns[..]);
        // A sink that applies a retaining batch sees the same merged actions.
        assert_eq!(retaining.merged(), moved.merged());
        assert_eq!(retaining.last_end, moved.last_end);
    }
}
