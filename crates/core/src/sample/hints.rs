//! What a database can tell about its tables that text samples leave out (`dry-run --db`):
//! which columns form each table's replica identity, and whether it is FULL. test_decoding
//! marks no key columns and leaves NULLs out of old images; wal2json's `identity` carries the
//! key but not whether the identity is FULL. With the hints a text sample plans as pgoutput does:
//! an update that sends no old key keeps its key (the old key's values are the new ones), and a
//! column missing from a FULL identity's old image is NULL.

use super::source::{EventSource, InputFormat, SampleError};
use crate::model::{Change, Datum, Event, Op, Relation, ReplicaIdentity};
use crate::rules::TableName;
use std::collections::HashMap;
use std::sync::Arc;

/// One table's replica identity.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableHint {
    pub table: TableName,
    /// The identity's columns (primary key, or the `REPLICA IDENTITY USING INDEX` index);
    /// empty for FULL or NOTHING.
    pub identity: Vec<String>,
    /// `REPLICA IDENTITY FULL`: old images carry every column.
    pub full: bool,
}

/// An [`EventSource`] whose inferred relations (text samples) get the hints' key columns, and
/// whose FULL-identity old images get NULL for the columns they leave out.
pub struct Hinted<'a> {
    inner: &'a mut dyn EventSource,
    hints: HashMap<(String, String), TableHint>,
    /// Inferred relation (by address) → the same with key columns marked.
    patched: HashMap<usize, Arc<Relation>>,
}

impl<'a> Hinted<'a> {
    pub fn new(inner: &'a mut dyn EventSource, hints: &[TableHint]) -> Hinted<'a> {
        Hinted {
            inner,
            hints: hints
                .iter()
                .map(|h| ((h.table.schema.clone(), h.table.name.clone()), h.clone()))
                .collect(),
            patched: HashMap::new(),
        }
    }

    fn relation(&mut self, relation: &Arc<Relation>, hint: &TableHint) -> Arc<Relation> {
        let address = Arc::as_ptr(relation) as usize;
        self.patched
            .entry(address)
            .or_insert_with(|| {
                // A relation version of its own (compiled rules are cached by version).
                let mut columns = relation.columns.clone();
                for column in &mut columns {
                    column.is_key = hint.identity.contains(&column.name);
                }
                let mut patched = Relation::new(relation.schema.clone(), relation.name.clone(), columns);
                patched.columns_inferred = true;
                if hint.full {
                    patched.replica_identity = Some(ReplicaIdentity::Full);
                }
                Arc::new(patched)
            })
            .clone()
    }
}

impl EventSource for Hinted<'_> {
    fn next_event(&mut self) -> Result<Option<Event>, SampleError> {
        let mut event = self.inner.next_event()?;
        if let Some(Event::Change(Change::Row(row))) = &mut event {
            if row.relation.columns_inferred {
                let key = (row.relation.schema.clone(), row.relation.name.clone());
                if let Some(hint) = self.hints.get(&key).cloned() {
                    row.relation = self.relation(&row.relation, &hint);
                    if hint.full && matches!(row.op, Op::Update | Op::Delete) {
                        if let Some(old) = &mut row.old {
                            for value in old.iter_mut().filter(|v| **v == Datum::Absent) {
                                *value = Datum::Null;
                            }
                        }
                    }
                }
            }
        }
        Ok(event)
    }

    fn format(&self) -> InputFormat {
        self.inner.format()
    }

    fn partitions(&self) -> &[crate::rules::PartitionOf] {
        self.inner.partitions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "BEGIN 1
table public.f: UPDATE: old-key: id[integer]:1 txt[text]:'a' new-tuple: id[integer]:1 n[numeric]:2 txt[text]:'b'
table public.t: UPDATE: id[integer]:3 txt[text]:'c'
COMMIT 1
";

    fn rows(hints: &[TableHint]) -> Vec<crate::model::RowChange> {
        let mut reader =
            crate::sample::open_reader("s", Box::new(std::io::Cursor::new(SAMPLE.as_bytes())), None).unwrap();
        let mut hinted = Hinted::new(reader.as_mut(), hints);
        let mut out = Vec::new();
        while let Some(event) = hinted.next_event().unwrap() {
            if let Event::Change(Change::Row(row)) = event {
                out.push(row);
            }
        }
        out
    }

    fn hint(name: &str, identity: &[&str], full: bool) -> TableHint {
        TableHint {
            table: TableName {
                schema: "public".into(),
                name: name.into(),
            },
            identity: identity.iter().map(|s| s.to_string()).collect(),
            full,
        }
    }

    #[test]
    fn full_old_images_get_null_for_left_out_columns_and_keys_are_marked() {
        let plain = rows(&[]);
        assert_eq!(
            plain[0].old.as_ref().unwrap()[1],
            Datum::Absent,
            "test_decoding leaves NULL n out"
        );
        assert!(!plain[1].relation.columns[0].is_key);

        let hinted = rows(&[hint("f", &[], true), hint("t", &["id"], false)]);
        let f = &hinted[0];
        let n = f.relation.column_index("n").unwrap();
        assert_eq!(f.old.as_ref().unwrap()[n], Datum::Null);
        assert_eq!(f.relation.replica_identity, Some(ReplicaIdentity::Full));
        let t = &hinted[1];
        assert!(t.relation.columns[t.relation.column_index("id").unwrap()].is_key);
        assert!(!t.relation.columns[t.relation.column_index("txt").unwrap()].is_key);
        assert_ne!(t.relation.id, plain[1].relation.id, "a relation version of its own");
    }
}
