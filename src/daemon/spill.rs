//! Keys of streamed transactions held on disk until their commit.
//!
//! With protocol 2 streaming a large transaction arrives while it runs and may still abort, so
//! its keys cannot be applied before its commit — but holding them in memory makes walbust's
//! memory grow with the largest transaction. Once a streamed transaction holds
//! `apply.max_batch_actions` keys in memory the daemon takes them out of the planner
//! ([`crate::plan::Planner::take_streamed`]) and appends them here, one anonymous temporary file
//! per streamed transaction (unlinked when created, so nothing is left behind after a crash).
//! At its commit the file is read back in parts of `apply.max_batch_actions` keys, skipping the
//! subtransactions that aborted meanwhile; at its abort the file is dropped. A key that comes
//! again after its part was spilled is applied twice (actions are idempotent).
//!
//! Record format (little endian): `subxid u32, kind u8, len u32, key bytes`, and for `redelete`
//! records a `u64` of milliseconds after the key.
//!
//! When a file cannot be written (disk full) the transaction's keys stay in memory instead,
//! with an error logged: memory grows, no key is lost.

use crate::plan::StreamedKeys;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

const DELETE: u8 = 0;
const BUMP: u8 = 1;
const TAG: u8 = 2;
const TAG_KEY: u8 = 3;
const DELETE_MATCHING: u8 = 4;
const REDELETE: u8 = 5;

#[derive(Debug, thiserror::Error)]
#[error("streamed transaction {xid}: cannot read back its keys spilled to {dir}: {source}; walbust stops without acknowledging it, so it is streamed again at the next start (check the disk of apply.spill_dir)", dir = dir.display())]
pub struct SpillError {
    pub xid: u32,
    pub dir: PathBuf,
    pub source: std::io::Error,
}

/// One streamed transaction's taken-out keys: the first ones in a file, the rest in memory
/// once the file could not be written.
struct Open {
    /// `None` when it could not be created.
    file: Option<File>,
    /// False once a write failed: what comes next stays in `memory`.
    writable: bool,
    /// Records fully written to the file: reading stops there, so a failed write's partial
    /// record at the end is never read.
    file_keys: u64,
    memory: Vec<StreamedKeys>,
    /// Subtransactions aborted after some of their keys were taken out.
    aborted: HashSet<u32>,
}

/// The streamed transactions with keys held outside the planner, by top-level xid.
pub struct Spill {
    dir: PathBuf,
    open: HashMap<u32, Open>,
    /// Reused for encoding, so one write per take-out.
    buf: Vec<u8>,
}

impl Spill {
    /// Files go to `dir` (empty: the system's temporary directory).
    pub fn new(dir: &Path) -> Spill {
        Spill {
            dir: if dir.as_os_str().is_empty() {
                std::env::temp_dir()
            } else {
                dir.to_path_buf()
            },
            open: HashMap::new(),
            buf: Vec::new(),
        }
    }

    /// Appends what the planner took out of streamed transaction `top`; returns how many keys
    /// went to disk (the rest, if any, stayed in memory).
    pub fn hold(&mut self, top: u32, taken: Vec<StreamedKeys>) -> u64 {
        if taken.is_empty() {
            return 0;
        }
        let dir = &self.dir;
        let open = self.open.entry(top).or_insert_with(|| Open {
            file: tempfile::tempfile_in(dir)
                .inspect_err(|e| {
                    tracing::error!(xid = top, dir = %dir.display(), error = %e, "cannot create a file for a streamed transaction's keys (apply.spill_dir); holding them in memory");
                })
                .ok(),
            writable: true,
            file_keys: 0,
            memory: Vec::new(),
            aborted: HashSet::new(),
        });
        let Some(file) = open.file.as_mut().filter(|_| open.writable) else {
            open.memory.extend(taken);
            return 0;
        };
        self.buf.clear();
        let n = encode(&mut self.buf, &taken);
        match file.write_all(&self.buf) {
            Ok(()) => {
                open.file_keys += n;
                n
            }
            Err(e) => {
                tracing::error!(xid = top, dir = %dir.display(), error = %e, "cannot write a streamed transaction's keys to disk (apply.spill_dir); holding the rest of them in memory");
                open.writable = false;
                open.memory.extend(taken);
                0
            }
        }
    }

    /// A streamed (sub)transaction aborted: its keys are not applied.
    pub fn abort(&mut self, xid: u32, subxid: u32) {
        if xid == subxid {
            self.open.remove(&xid);
        } else if let Some(open) = self.open.get_mut(&xid) {
            open.aborted.insert(subxid);
        }
    }

    /// Every transaction in progress is forgotten (the stream restarts: the server sends them
    /// again from the start).
    pub fn clear(&mut self) {
        self.open.clear();
    }

    /// The keys held for `xid`, at its commit, to be read in parts.
    pub fn take(&mut self, xid: u32) -> Result<Option<SpilledKeys>, SpillError> {
        let Some(open) = self.open.remove(&xid) else {
            return Ok(None);
        };
        let file = match open.file {
            Some(mut file) => {
                file.rewind().map_err(|source| SpillError {
                    xid,
                    dir: self.dir.clone(),
                    source,
                })?;
                Some(BufReader::with_capacity(256 * 1024, file))
            }
            None => None,
        };
        Ok(Some(SpilledKeys {
            xid,
            dir: self.dir.clone(),
            file,
            file_left: open.file_keys,
            memory: open.memory,
            aborted: open.aborted,
        }))
    }
}

/// Appends the records of `taken` to `out`; returns how many.
fn encode(out: &mut Vec<u8>, taken: &[StreamedKeys]) -> u64 {
    let mut n = 0;
    for keys in taken {
        let mut put = |kind: u8, key: &str, extra: &[u8]| {
            out.extend_from_slice(&keys.subxid.to_le_bytes());
            out.push(kind);
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(extra);
            n += 1;
        };
        for (kind, set) in [
            (DELETE, &keys.delete),
            (BUMP, &keys.bump),
            (TAG, &keys.tags),
            (TAG_KEY, &keys.tag_keys),
            (DELETE_MATCHING, &keys.delete_matching),
        ] {
            for key in set {
                put(kind, key, &[]);
            }
        }
        for (key, after) in &keys.redelete {
            put(REDELETE, key, &(after.as_millis() as u64).to_le_bytes());
        }
    }
    n
}

/// A committed streamed transaction's held keys, read back in parts: the file's, then what
/// stayed in memory.
pub struct SpilledKeys {
    xid: u32,
    dir: PathBuf,
    file: Option<BufReader<File>>,
    file_left: u64,
    memory: Vec<StreamedKeys>,
    aborted: HashSet<u32>,
}

impl SpilledKeys {
    /// The next part of at most `max_keys` keys from the file (or one take-out from memory),
    /// of subtransactions that did not abort; `None` when all were read.
    pub fn next_part(&mut self, max_keys: usize) -> Result<Option<StreamedKeys>, SpillError> {
        let mut part = StreamedKeys::default();
        let mut taken = 0;
        while let Some(reader) = self.file.as_mut().filter(|_| self.file_left > 0) {
            if taken >= max_keys.max(1) {
                return Ok(Some(part));
            }
            let (subxid, kind, key, after) = read_record(reader).map_err(|source| SpillError {
                xid: self.xid,
                dir: self.dir.clone(),
                source,
            })?;
            self.file_left -= 1;
            if self.aborted.contains(&subxid) {
                continue;
            }
            taken += 1;
            match kind {
                DELETE => part.delete.push(key),
                BUMP => part.bump.push(key),
                TAG => part.tags.push(key),
                TAG_KEY => part.tag_keys.push(key),
                DELETE_MATCHING => part.delete_matching.push(key),
                _ => part.redelete.push((key, after)),
            }
        }
        if taken > 0 {
            return Ok(Some(part));
        }
        while let Some(keys) = self.memory.pop() {
            if !self.aborted.contains(&keys.subxid) {
                return Ok(Some(keys));
            }
        }
        Ok(None)
    }
}

fn read_record(reader: &mut impl Read) -> std::io::Result<(u32, u8, String, Duration)> {
    let mut head = [0u8; 9];
    reader.read_exact(&mut head)?;
    let subxid = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let kind = head[4];
    let len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
    let mut key = vec![0u8; len];
    reader.read_exact(&mut key)?;
    let key = String::from_utf8(key).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let after = if kind == REDELETE {
        let mut ms = [0u8; 8];
        reader.read_exact(&mut ms)?;
        Duration::from_millis(u64::from_le_bytes(ms))
    } else {
        Duration::ZERO
    };
    if kind > REDELETE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unknown record kind {kind}"),
        ));
    }
    Ok((subxid, kind, key, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(subxid: u32, delete: &[&str]) -> StreamedKeys {
        StreamedKeys {
            subxid,
            delete: delete.iter().map(|s| s.to_string()).collect(),
            ..StreamedKeys::default()
        }
    }

    fn read_all(spill: &mut Spill, xid: u32, max: usize) -> Vec<StreamedKeys> {
        let mut out = Vec::new();
        let mut held = spill.take(xid).unwrap().expect("held");
        while let Some(part) = held.next_part(max).unwrap() {
            out.push(part);
        }
        out
    }

    /// What was held comes back whole, in parts of the size asked, every kind with its key,
    /// without what an aborted subtransaction collected.
    #[test]
    fn held_keys_come_back_in_parts_without_aborted_subtransactions() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(dir.path());
        let mut spilled = spill.hold(
            10,
            vec![
                keys(10, &["a", "b", "c"]),
                StreamedKeys {
                    subxid: 11,
                    bump: vec!["v".into()],
                    tags: vec!["t".into()],
                    tag_keys: vec!["tk".into()],
                    delete_matching: vec!["m:*".into()],
                    redelete: vec![("r".into(), Duration::from_millis(1500))],
                    ..keys(11, &["x"])
                },
                keys(12, &["gone"]),
            ],
        );
        spilled += spill.hold(10, vec![keys(12, &["gone too"]), keys(10, &["d"])]);
        spilled += spill.hold(20, vec![keys(20, &["other"])]);
        spill.abort(10, 12);
        spill.abort(20, 20);
        assert!(
            spill.take(20).unwrap().is_none(),
            "an aborted transaction's file is dropped"
        );
        let parts = read_all(&mut spill, 10, 3);
        assert_eq!(parts.len(), 4, "10 keys in parts of at most 3");
        assert!(parts.iter().all(|p| p.len() <= 3));
        let mut all = StreamedKeys::default();
        for p in parts {
            all.delete.extend(p.delete);
            all.bump.extend(p.bump);
            all.tags.extend(p.tags);
            all.tag_keys.extend(p.tag_keys);
            all.delete_matching.extend(p.delete_matching);
            all.redelete.extend(p.redelete);
        }
        all.delete.sort();
        assert_eq!(all.delete, vec!["a", "b", "c", "d", "x"]);
        assert_eq!(all.bump, vec!["v"]);
        assert_eq!(all.tags, vec!["t"]);
        assert_eq!(all.tag_keys, vec!["tk"]);
        assert_eq!(all.delete_matching, vec!["m:*"]);
        assert_eq!(all.redelete, vec![("r".to_string(), Duration::from_millis(1500))]);
        assert_eq!(spilled, 13);
        assert!(spill.take(10).unwrap().is_none(), "taken once");
    }

    /// A directory that cannot hold files: the keys stay in memory and still come back.
    #[test]
    fn keys_stay_in_memory_when_the_directory_cannot_hold_files() {
        let mut spill = Spill::new(Path::new("/nonexistent/walbust-spill"));
        let spilled = spill.hold(5, vec![keys(5, &["a"]), keys(6, &["b"])]);
        spill.abort(5, 6);
        let parts = read_all(&mut spill, 5, 100);
        assert_eq!(parts, vec![keys(5, &["a"])]);
        assert_eq!(spilled, 0, "nothing went to disk");
    }

    #[test]
    fn clear_forgets_every_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(dir.path());
        spill.hold(1, vec![keys(1, &["a"])]);
        spill.clear();
        assert!(spill.take(1).unwrap().is_none());
    }
}
