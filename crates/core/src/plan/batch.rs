//! Batching across transactions: [`Batch`] merges committed transactions into one
//! deduplicated set of actions (a key deleted by five transactions is deleted once; a version
//! key keeps the highest LSN). A sink applies a batch as a whole.

use super::PlannedTxn;
use crate::model::{Lsn, Timestamp};
use std::collections::{HashMap, HashSet};

/// Actions of several committed transactions, deduplicated across them.
#[derive(Debug, Default)]
pub struct Batch {
    pub delete: HashSet<String>,
    /// Version key → the highest commit LSN that bumps it.
    pub bump: HashMap<String, u64>,
    /// Tag set keys (`<prefix><tag_prefix><tag>`).
    pub tags: HashSet<String>,
    pub delete_matching: HashSet<String>,
    /// Keys to delete again after a delay (`redelete_after`), longest delay kept.
    pub redelete: HashMap<String, std::time::Duration>,
    /// `(channel, JSON payload)`, one per transaction and channel.
    pub publish: Vec<(String, String)>,
    pub transactions: u64,
    pub changes: u64,
    /// End LSN of the last transaction: the position to acknowledge once applied.
    pub last_end: Option<Lsn>,
    /// Commit times, for the commit-to-applied latency.
    pub commit_times: Vec<Timestamp>,
    /// The planned transactions themselves, in commit order, when the batch was made with
    /// [`Batch::retaining`] (a printer shows each with its notes); empty otherwise.
    pub retained: Vec<PlannedTxn>,
    retain: bool,
}

impl Batch {
    /// A batch that also keeps each transaction as planned (see [`Batch::retained`]).
    pub fn retaining() -> Batch {
        Batch {
            retain: true,
            ..Batch::default()
        }
    }

    /// Adds a committed transaction, keeping it whole when the batch retains transactions;
    /// otherwise its keys move into the batch without a copy.
    pub fn add_owned(&mut self, txn: PlannedTxn) {
        if self.retain {
            self.add(&txn);
            self.retained.push(txn);
            return;
        }
        self.add_commit(&txn);
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

    /// Adds a committed transaction.
    pub fn add(&mut self, txn: &PlannedTxn) {
        self.add_commit(txn);
        for key in &txn.delete {
            if !self.delete.contains(key) {
                self.delete.insert(key.clone());
            }
        }
        let version = txn.commit.lsn.map(|l| l.0).unwrap_or(0);
        for key in &txn.bump {
            match self.bump.get_mut(key) {
                Some(v) => *v = (*v).max(version),
                None => {
                    self.bump.insert(key.clone(), version);
                }
            }
        }
        for key in &txn.tag_keys {
            if !self.tags.contains(key) {
                self.tags.insert(key.clone());
            }
        }
        for (key, delay) in &txn.redelete {
            let entry = self.redelete.entry(key.clone()).or_default();
            *entry = (*entry).max(*delay);
        }
        for key in &txn.delete_matching {
            if !self.delete_matching.contains(key) {
                self.delete_matching.insert(key.clone());
            }
        }
    }

    /// What every transaction adds besides its keys: counts, announcements, position, time.
    fn add_commit(&mut self, txn: &PlannedTxn) {
        self.transactions += 1;
        self.changes += txn.changes;
        if !txn.publish.is_empty() {
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
        if let Some(end) = txn.commit.end_lsn {
            self.last_end = Some(self.last_end.map_or(end, |l| l.max(end)));
        }
        if let Some(t) = txn.commit.commit_time {
            self.commit_times.push(t);
        }
    }

    /// Number of actions (keys, patterns, announcements) in the batch.
    pub fn actions(&self) -> usize {
        self.delete.len() + self.bump.len() + self.tags.len() + self.delete_matching.len() + self.publish.len()
    }

    pub fn is_empty(&self) -> bool {
        self.transactions == 0
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
            tags: vec![],
            tag_keys: vec![],
            redelete: vec![],
            delete_matching: vec![],
            publish: vec!["ch".into()],
            fallbacks: vec![],
            unrenderable: vec![],
            explain: None,
        }
    }

    #[test]
    fn dedups_across_transactions_and_keeps_highest_version() {
        let mut b = Batch::default();
        b.add(&txn(100, &["k1", "k2"], &["v1"]));
        b.add(&txn(200, &["k1"], &["v1", "v2"]));
        b.add(&txn(150, &[], &["v1"]));
        assert_eq!(b.delete.len(), 2);
        assert_eq!(b.bump["v1"], 200);
        assert_eq!(b.bump["v2"], 200);
        assert_eq!(b.last_end, Some(Lsn(208)));
        assert_eq!(b.publish.len(), 3);
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
        assert_eq!(added.delete, moved.delete);
        assert_eq!(added.bump, moved.bump);
        assert_eq!(added.tags, moved.tags);
        assert_eq!(added.publish, moved.publish);
        assert_eq!(
            (added.last_end, added.transactions),
            (moved.last_end, moved.transactions)
        );
        assert!(moved.retained.is_empty());
        let mut retaining = Batch::retaining();
        retaining.add_owned(txns[0].clone());
        assert_eq!(retaining.retained, vec![txns[0].clone()]);
        assert_eq!(retaining.delete.len(), 2);
    }
}
