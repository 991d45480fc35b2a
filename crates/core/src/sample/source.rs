//! What every sample reader shares: the [`EventSource`] trait, [`SampleError`] (file and line),
//! the [`InputFormat`] names, and the relation cache that text formats build from the column
//! lists they see.

use crate::model::{Column, Datum, Event, Relation};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    TestDecoding,
    Wal2JsonV2,
    Wal2JsonV1,
    Capture,
}

impl InputFormat {
    pub fn parse(s: &str) -> Option<InputFormat> {
        match s {
            "test_decoding" | "test-decoding" => Some(InputFormat::TestDecoding),
            "wal2json" | "wal2json-v2" | "wal2json2" => Some(InputFormat::Wal2JsonV2),
            "wal2json-v1" | "wal2json1" => Some(InputFormat::Wal2JsonV1),
            "capture" | "walbust" => Some(InputFormat::Capture),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            InputFormat::TestDecoding => "test_decoding",
            InputFormat::Wal2JsonV2 => "wal2json",
            InputFormat::Wal2JsonV1 => "wal2json-v1",
            InputFormat::Capture => "capture",
        }
    }
}

/// One bad spot in a sample: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}:{line}: {message}")]
pub struct SampleError {
    pub source_name: String,
    pub line: u64,
    pub message: String,
}

/// A stream of events read from a sample.
pub trait EventSource {
    /// The next event; `Ok(None)` at the end. After an error the reader has skipped the
    /// offending record and can continue (`--keep-going`).
    fn next_event(&mut self) -> Result<Option<Event>, SampleError>;
    fn format(&self) -> InputFormat;
    /// Partitions and their ancestors, when the sample says (a capture records them).
    fn partitions(&self) -> &[crate::rules::PartitionOf] {
        &[]
    }
}

pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max).collect();
        s.push('…');
        s
    }
}

/// One column of a tuple as a reader parsed it.
pub(crate) struct NamedValue<'a> {
    pub name: std::borrow::Cow<'a, str>,
    pub type_name: Option<std::borrow::Cow<'a, str>>,
    pub value: Datum,
}

/// Relation versions seen so far, by schema and name.
/// The longest record a sample reader takes (a line, or a test_decoding record with multi-line
/// values): PostgreSQL values can be large, a sample that is not text can be endless.
pub const MAX_RECORD_BYTES: usize = 256 << 20;

/// Reads one line into `out`, at most `room` bytes of it; `Ok(None)` when it is longer.
pub(crate) fn read_line_bounded(
    input: &mut dyn std::io::BufRead,
    out: &mut String,
    room: usize,
) -> std::io::Result<Option<usize>> {
    use std::io::{BufRead, Read};
    let n = input.take(room as u64 + 1).read_line(out)?;
    Ok((n <= room || out.ends_with('\n')).then_some(n))
}

#[derive(Default)]
pub(crate) struct RelationCache {
    relations: Vec<Arc<Relation>>,
}

impl RelationCache {
    /// The relation for a row whose main tuple has `main` columns (and whose old image, if
    /// any, has `extra` columns). Reuses the cached version when it has every column.
    pub fn resolve(
        &mut self,
        schema: &str,
        name: &str,
        main: &[NamedValue<'_>],
        extra: &[NamedValue<'_>],
    ) -> Arc<Relation> {
        let position = self.relations.iter().position(|r| r.schema == schema && r.name == name);
        if let Some(i) = position {
            let rel = &self.relations[i];
            let same = rel.columns.len() == main.len() && rel.columns.iter().zip(main).all(|(c, v)| c.name == v.name);
            let covered = || {
                main.iter()
                    .chain(extra)
                    .all(|v| rel.columns.iter().any(|c| c.name == v.name))
            };
            if (same && extra.iter().all(|v| rel.columns.iter().any(|c| c.name == v.name))) || covered() {
                return rel.clone();
            }
        }
        let mut columns: Vec<Column> = Vec::with_capacity(main.len());
        for v in main.iter().chain(extra) {
            if !columns.iter().any(|c| c.name == v.name) {
                columns.push(Column {
                    name: v.name.to_string(),
                    type_name: v.type_name.as_ref().map(|t| t.to_string()),
                    type_oid: None,
                    is_key: false,
                });
            }
        }
        let mut rel = Relation::new(schema, name, columns);
        rel.columns_inferred = true;
        let rel = Arc::new(rel);
        match position {
            Some(i) => self.relations[i] = rel.clone(),
            None => self.relations.push(rel.clone()),
        }
        rel
    }

    /// A relation by name alone (TRUNCATE names tables without columns).
    pub fn by_name(&mut self, schema: &str, name: &str) -> Arc<Relation> {
        if let Some(rel) = self.relations.iter().find(|r| r.schema == schema && r.name == name) {
            return rel.clone();
        }
        let rel = Arc::new(Relation::new(schema, name, Vec::new()));
        self.relations.push(rel.clone());
        rel
    }
}

/// Builds a row change from the named columns of its images: resolves the relation version
/// from them and aligns both images with its columns. Columns an image does not carry are
/// `Absent`, except that a column missing from an UPDATE's new image is `missing_new` (wal2json
/// leaves unchanged TOAST values out).
pub(crate) fn row_change(
    relations: &mut RelationCache,
    schema: &str,
    table: &str,
    op: crate::model::Op,
    old: Option<Vec<NamedValue<'_>>>,
    new: Option<Vec<NamedValue<'_>>>,
    missing_new: Datum,
) -> crate::model::RowChange {
    let relation = {
        let empty = Vec::new();
        let main = new.as_ref().or(old.as_ref()).unwrap_or(&empty);
        let extra = if new.is_some() {
            old.as_deref().unwrap_or(&[])
        } else {
            &[]
        };
        relations.resolve(schema, table, main, extra)
    };
    let new = new.map(|n| align(&relation, n, missing_new));
    let old = old.map(|o| align(&relation, o, Datum::Absent));
    crate::model::RowChange { relation, op, old, new }
}

/// Reads every event (and error) of a source, bounded, for tests.
#[cfg(test)]
pub(crate) fn read_all(source: &mut dyn EventSource) -> Vec<Result<Event, SampleError>> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        match source.next_event() {
            Ok(Some(e)) => out.push(Ok(e)),
            Ok(None) => break,
            Err(e) => out.push(Err(e)),
        }
    }
    out
}

/// Aligns named values with the relation's columns; columns not given get `missing`.
pub(crate) fn align(rel: &Relation, values: Vec<NamedValue<'_>>, missing: Datum) -> Vec<Datum> {
    let same_order =
        rel.columns.len() == values.len() && rel.columns.iter().zip(&values).all(|(c, v)| c.name == v.name);
    if same_order {
        return values.into_iter().map(|v| v.value).collect();
    }
    let mut row = vec![missing; rel.columns.len()];
    for v in values {
        if let Some(i) = rel.column_index(&v.name) {
            row[i] = v.value;
        }
    }
    row
}

#[cfg(test)]
mod limit_tests {
    use super::read_line_bounded;

    /// Regression (issue: inputs, limits): a line is read only up to the limit, and a longer
    /// one is refused instead of growing memory with the input.
    #[test]
    fn lines_longer_than_the_limit_are_refused() {
        let mut input = std::io::Cursor::new(b"short\nmuch longer than ten\n".to_vec());
        let mut out = String::new();
        assert_eq!(read_line_bounded(&mut input, &mut out, 10).unwrap(), Some(6));
        out.clear();
        assert_eq!(read_line_bounded(&mut input, &mut out, 10).unwrap(), None);
        assert!(out.len() <= 11, "read only up to the limit: {out:?}");
    }
}
