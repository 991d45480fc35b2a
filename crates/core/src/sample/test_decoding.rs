//! Reader for test_decoding text, as `pg_recvlogical` writes it (or as
//! `pg_logical_slot_get_changes` returns it, one message per line).
//!
//! ```text
//! BEGIN 529
//! table public.data: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:2 data[text]:'it''s'
//! table public.data, public.other: TRUNCATE: restart_identity cascade
//! COMMIT 529 (at 2026-11-22 10:00:00.123456+00)
//! ```
//!
//! Quoted values may span lines (a value with a newline), so a record continues while a
//! quote is open.

use super::source::{row_change, truncate, EventSource, InputFormat, NamedValue, RelationCache, SampleError};
use crate::model::{Change, CommitInfo, Datum, Event, Op, RowChange, Timestamp, Truncate};
use std::borrow::Cow;
use std::io::BufRead;

pub struct TestDecodingReader {
    source_name: String,
    input: Box<dyn BufRead + Send>,
    line: u64,
    record: String,
    relations: RelationCache,
    /// A line read ahead that starts the next record (after an unclosed quote).
    pushed_back: Option<String>,
    /// The last line read ended in `\r\n`; inside a quoted value the `\r` is part of it.
    last_cr: bool,
}

/// A parse failure inside one record.
enum Bad {
    /// The record ends inside a quoted value: read the next line and try again.
    Incomplete,
    /// A real error: what was expected, and the text found there.
    Expected(&'static str, String),
}

type Parsed<T> = Result<T, Bad>;

fn expected<T>(what: &'static str, at: &str) -> Parsed<T> {
    Err(Bad::Expected(what, truncate(at, 60)))
}

/// An identifier: `"quoted ""x"""` or a bare word ending at one of `stop`.
fn identifier<'a>(s: &'a str, stop: &[char]) -> Parsed<(Cow<'a, str>, &'a str)> {
    if let Some(rest) = s.strip_prefix('"') {
        let mut out: Option<String> = None;
        let bytes = rest.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'"' {
                if bytes.get(i + 1) == Some(&b'"') {
                    let o = out.get_or_insert_with(|| rest[..i].to_string());
                    o.push('"');
                    i += 2;
                    continue;
                }
                let name = match out {
                    Some(o) => Cow::Owned(o),
                    None => Cow::Borrowed(&rest[..i]),
                };
                return Ok((name, &rest[i + 1..]));
            }
            if let Some(o) = &mut out {
                // Push the whole UTF-8 character starting here.
                let ch = rest[i..].chars().next().unwrap_or('\u{fffd}');
                o.push(ch);
                i += ch.len_utf8();
                continue;
            }
            i += 1;
        }
        return Err(Bad::Incomplete);
    }
    let end = s.find(stop).unwrap_or(s.len());
    if end == 0 {
        return expected("an identifier", s);
    }
    Ok((Cow::Borrowed(&s[..end]), &s[end..]))
}

/// `schema.table` (either part possibly quoted).
fn qualified_name(s: &str) -> Parsed<(Cow<'_, str>, Cow<'_, str>, &str)> {
    let (schema, rest) = identifier(s, &['.', ':', ',', ' '])?;
    let Some(rest) = rest.strip_prefix('.') else {
        return expected("`schema.table`", s);
    };
    let (table, rest) = identifier(rest, &[':', ',', ' '])?;
    Ok((schema, table, rest))
}

/// One value after `name[type]:`.
fn value(s: &str) -> Parsed<(Datum, &str)> {
    if let Some(rest) = s.strip_prefix('\'') {
        return quoted(rest);
    }
    if let Some(rest) = s.strip_prefix("B'") {
        let (d, rest) = quoted(rest)?;
        return Ok((d, rest));
    }
    let end = s.find(' ').unwrap_or(s.len());
    let token = &s[..end];
    let datum = match token {
        "null" => Datum::Null,
        "unchanged-toast-datum" => Datum::UnchangedToast,
        "true" => Datum::Text("t".into()),
        "false" => Datum::Text("f".into()),
        "" => return expected("a value", s),
        t => Datum::Text(t.to_string()),
    };
    Ok((datum, &s[end..]))
}

/// The rest of a `'…'` literal (after the opening quote), with `''` undoubled.
fn quoted(s: &str) -> Parsed<(Datum, &str)> {
    let bytes = s.as_bytes();
    let mut out = String::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            out.push_str(&s[start..i]);
            if bytes.get(i + 1) == Some(&b'\'') {
                out.push('\'');
                i += 2;
                start = i;
                continue;
            }
            return Ok((Datum::Text(out), &s[i + 1..]));
        }
        i += 1;
    }
    Err(Bad::Incomplete)
}

/// ` name[type]:value name[type]:value …` until the end or `new-tuple:`.
fn tuple(mut s: &str) -> Parsed<(Vec<NamedValue<'_>>, &str)> {
    let mut values = Vec::with_capacity(8);
    loop {
        s = s.strip_prefix(' ').unwrap_or(s);
        if s.is_empty() || s.starts_with("new-tuple:") {
            return Ok((values, s));
        }
        let (name, rest) = identifier(s, &['['])?;
        let Some(rest) = rest.strip_prefix('[') else {
            return expected("`column[type]:value`", s);
        };
        let Some(end) = rest.find("]:") else {
            return expected("`[type]:` after a column name", s);
        };
        let type_name = &rest[..end];
        let (datum, rest) = value(&rest[end + 2..])?;
        if !(rest.is_empty() || rest.starts_with(' ')) {
            return expected("a space between columns", rest);
        }
        values.push(NamedValue {
            name,
            type_name: Some(Cow::Borrowed(type_name)),
            value: datum,
        });
        s = rest;
    }
}

impl TestDecodingReader {
    pub fn new(source_name: &str, input: Box<dyn BufRead + Send>) -> TestDecodingReader {
        TestDecodingReader {
            source_name: source_name.to_string(),
            input,
            line: 0,
            record: String::with_capacity(1024),
            relations: RelationCache::default(),
            pushed_back: None,
            last_cr: false,
        }
    }

    fn error(&self, line: u64, message: String) -> SampleError {
        SampleError {
            source_name: self.source_name.clone(),
            line,
            message,
        }
    }

    /// Appends the next line (without its line ending) to `self.record`; false at EOF.
    fn read_line(&mut self) -> Result<bool, SampleError> {
        if let Some(line) = self.pushed_back.take() {
            self.record.push_str(&line);
            return Ok(true);
        }
        let room = super::source::MAX_RECORD_BYTES.saturating_sub(self.record.len());
        let n = super::source::read_line_bounded(&mut self.input, &mut self.record, room)
            .map_err(|e| self.error(self.line + 1, format!("cannot read: {e}")))?
            .ok_or_else(|| {
                self.error(
                    self.line + 1,
                    format!(
                        "a record longer than {} MiB (a value, or a quote that never closes, in a file that may not be a test_decoding sample); split the sample or check its format",
                        super::source::MAX_RECORD_BYTES >> 20
                    ),
                )
            })?;
        if n == 0 {
            return Ok(false);
        }
        self.line += 1;
        self.last_cr = false;
        if self.record.ends_with('\n') {
            self.record.pop();
            if self.record.ends_with('\r') {
                self.record.pop();
                self.last_cr = true;
            }
        }
        Ok(true)
    }

    /// Continues a record whose quoted value is still open with the next line. Returns false at
    /// the end of the input, or when the next line starts a new record: then the open quote was
    /// never closed, and that line is kept for the next record.
    fn continue_record(&mut self) -> Result<bool, SampleError> {
        // The line ending inside a quoted value is part of the value.
        if self.last_cr {
            self.record.push('\r');
        }
        self.record.push('\n');
        let start = self.record.len();
        if !self.read_line()? {
            return Ok(false);
        }
        if starts_record(&self.record[start..]) {
            self.pushed_back = Some(self.record[start..].to_string());
            self.record.truncate(start);
            return Ok(false);
        }
        Ok(true)
    }

    fn parse_row(&mut self, start_line: u64) -> Result<Option<Event>, Bad> {
        let rec = self.record.as_str();
        let rest = &rec["table ".len()..];
        let (schema, table, rest) = qualified_name(rest)?;
        if rest.starts_with(',') {
            // TRUNCATE of several tables.
            let mut names = vec![(schema, table)];
            let mut rest = rest;
            while let Some(r) = rest.strip_prefix(", ") {
                let (s, t, r) = qualified_name(r)?;
                names.push((s, t));
                rest = r;
            }
            let Some(flags) = rest.strip_prefix(": TRUNCATE:") else {
                return expected("`: TRUNCATE:` after a list of tables", rest);
            };
            let relations = names.iter().map(|(s, t)| self.relations.by_name(s, t)).collect();
            return Ok(Some(truncate_event(relations, flags)));
        }
        let Some(rest) = rest.strip_prefix(": ") else {
            return expected("`: ` after the table name", rest);
        };
        let (op, rest) = if let Some(r) = rest.strip_prefix("INSERT:") {
            (Op::Insert, r)
        } else if let Some(r) = rest.strip_prefix("UPDATE:") {
            (Op::Update, r)
        } else if let Some(r) = rest.strip_prefix("DELETE:") {
            (Op::Delete, r)
        } else if let Some(r) = rest.strip_prefix("TRUNCATE:") {
            let rel = self.relations.by_name(&schema, &table);
            return Ok(Some(truncate_event(vec![rel], r)));
        } else {
            return expected("INSERT:, UPDATE:, DELETE: or TRUNCATE:", rest);
        };
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        if rest == "(no-tuple-data)" {
            return match op {
                Op::Delete => {
                    let rel = self.relations.by_name(&schema, &table);
                    Ok(Some(Event::Change(Change::Row(RowChange {
                        relation: rel,
                        op,
                        old: None,
                        new: None,
                    }))))
                }
                _ => expected(
                    "column values (an insert or update without tuple data cannot be mapped)",
                    rest,
                ),
            };
        }
        let _ = start_line;
        let (old, new) = if op == Op::Update {
            if let Some(r) = rest.strip_prefix("old-key:") {
                let (old, r) = tuple(r)?;
                let Some(r) = r.strip_prefix("new-tuple:") else {
                    return expected("`new-tuple:` after the old key", r);
                };
                let (new, r) = tuple(r)?;
                if !r.is_empty() {
                    return expected("end of record", r);
                }
                (Some(old), Some(new))
            } else {
                let (new, r) = tuple(rest)?;
                if !r.is_empty() {
                    return expected("end of record", r);
                }
                (None, Some(new))
            }
        } else {
            let (values, r) = tuple(rest)?;
            if !r.is_empty() {
                return expected("end of record", r);
            }
            if op == Op::Insert {
                (None, Some(values))
            } else {
                (Some(values), None)
            }
        };
        if new.as_ref().is_some_and(|n| n.is_empty())
            || (op == Op::Delete && old.as_ref().is_some_and(|o| o.is_empty()))
        {
            return expected("at least one `column[type]:value`", rest);
        }
        let row = row_change(&mut self.relations, &schema, &table, op, old, new, Datum::Absent);
        Ok(Some(Event::Change(Change::Row(row))))
    }
}

/// Whether a line starts a test_decoding record: `BEGIN <xid>`, `COMMIT <xid>…`, or
/// `table <name>: <OP>:`. A continuation line of a quoted value that looks exactly like one is
/// taken for one: the open quote is then reported as never closed, instead of the value
/// swallowing the rest of the file.
fn starts_record(line: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let line = line.trim_end();
    // With include-xids=0 test_decoding writes a bare BEGIN and COMMIT (maybe with a time).
    if line == "BEGIN" || line == "COMMIT" || line.starts_with("COMMIT (at ") {
        return true;
    }
    if let Some(rest) = line.strip_prefix("BEGIN ") {
        return digits(rest);
    }
    if let Some(rest) = line.strip_prefix("COMMIT ") {
        return digits(rest.split(' ').next().unwrap_or(""));
    }
    let Some(rest) = line.strip_prefix("table ") else {
        return false;
    };
    match qualified_name(rest) {
        Ok((_, _, rest)) => ["INSERT:", "UPDATE:", "DELETE:", "TRUNCATE:"]
            .iter()
            .any(|op| rest.strip_prefix(": ").is_some_and(|r| r.starts_with(op))),
        Err(_) => false,
    }
}

fn truncate_event(relations: Vec<std::sync::Arc<crate::model::Relation>>, flags: &str) -> Event {
    Event::Change(Change::Truncate(Truncate {
        relations,
        cascade: flags.contains("cascade"),
        restart_identity: flags.contains("restart_identity"),
    }))
}

/// `COMMIT 529 (at 2026-…)`, `COMMIT (at …)`, `COMMIT 529`, `COMMIT`.
fn commit(rest: &str) -> Option<CommitInfo> {
    let rest = rest.trim();
    let (xid_part, time_part) = match rest.find("(at ") {
        Some(i) => (rest[..i].trim(), Some(rest[i + 4..].trim_end_matches(')'))),
        None => (rest, None),
    };
    let xid = if xid_part.is_empty() {
        None
    } else {
        Some(xid_part.parse().ok()?)
    };
    let commit_time = match time_part {
        Some(t) => Some(Timestamp::parse_pg(t)?),
        None => None,
    };
    Some(CommitInfo {
        xid,
        lsn: None,
        end_lsn: None,
        commit_time,
    })
}

impl EventSource for TestDecodingReader {
    fn next_event(&mut self) -> Result<Option<Event>, SampleError> {
        loop {
            self.record.clear();
            if !self.read_line()? {
                return Ok(None);
            }
            let start_line = self.line;
            let rec = self.record.as_str();
            if rec.trim().is_empty() {
                continue;
            }
            if let Some(rest) = rec.strip_prefix("BEGIN") {
                let rest = rest.trim();
                if rest.is_empty() {
                    return Ok(Some(Event::Begin {
                        xid: None,
                        final_lsn: None,
                    }));
                }
                return match rest.parse() {
                    Ok(xid) => Ok(Some(Event::Begin {
                        xid: Some(xid),
                        final_lsn: None,
                    })),
                    Err(_) => Err(self.error(
                        start_line,
                        format!("expected `BEGIN <xid>` but found `{}`", truncate(rec, 60)),
                    )),
                };
            }
            if let Some(rest) = rec.strip_prefix("COMMIT") {
                return match commit(rest) {
                    Some(info) => Ok(Some(Event::Commit(info))),
                    None => Err(self.error(
                        start_line,
                        format!(
                            "expected `COMMIT [<xid>] [(at <timestamp>)]` but found `{}`",
                            truncate(rec, 60)
                        ),
                    )),
                };
            }
            if rec.starts_with("message:") {
                continue;
            }
            if !rec.starts_with("table ") {
                return Err(self.error(
                    start_line,
                    format!(
                        "expected `BEGIN`, `COMMIT` or `table <schema>.<name>: <OP>:` but found `{}`",
                        truncate(rec, 60)
                    ),
                ));
            }
            loop {
                match self.parse_row(start_line) {
                    Ok(Some(event)) => return Ok(Some(event)),
                    Ok(None) => break,
                    Err(Bad::Incomplete) => {
                        // A quoted value continues on the next lines; it can only close on a
                        // line with a quote, so lines without one are not parsed again (a long
                        // value stays linear).
                        loop {
                            if !self.continue_record()? {
                                let message = match &self.pushed_back {
                                    Some(_) => format!(
                                        "a quoted value that starts on this line is not closed before line {}, which starts a new record; this record is skipped",
                                        self.line
                                    ),
                                    None => "the sample ends inside a quoted value that starts on this line; the file was cut short".into(),
                                };
                                return Err(self.error(start_line, message));
                            }
                            // Values are '…', identifiers "…": either can be the one still open.
                            let last_line = self.record.rsplit('\n').next().unwrap_or("");
                            if last_line.contains(['\'', '"']) {
                                break;
                            }
                        }
                    }
                    Err(Bad::Expected(what, found)) => {
                        return Err(self.error(start_line, format!("expected {what} but found `{found}`")));
                    }
                }
            }
        }
    }

    fn format(&self) -> InputFormat {
        InputFormat::TestDecoding
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Lsn, Relation};
    use std::sync::Arc;

    fn read_all(text: &str) -> Vec<Result<Event, SampleError>> {
        let mut r = TestDecodingReader::new("s.txt", Box::new(std::io::Cursor::new(text.as_bytes().to_vec())));
        crate::sample::source::read_all(&mut r)
    }

    fn events(text: &str) -> Vec<Event> {
        read_all(text).into_iter().map(|e| e.unwrap()).collect()
    }

    fn row(e: &Event) -> &RowChange {
        match e {
            Event::Change(Change::Row(r)) => r,
            other => panic!("not a row: {other:?}"),
        }
    }

    fn t(s: &str) -> Datum {
        Datum::Text(s.into())
    }

    #[test]
    fn values_of_every_kind() {
        let ev = events(concat!(
            "BEGIN 529\n",
            "table public.data: INSERT: id[integer]:1 data[text]:'it''s' flag[boolean]:true n[numeric]:2.00 ",
            "t[timestamp with time zone]:'2026-11-22 10:00:00+00' a[integer[]]:'{1,2}' b[bit varying]:B'101' ",
            "x[text]:null big[text]:unchanged-toast-datum f[boolean]:false back[text]:'a\\b'\n",
            "COMMIT 529 (at 2026-11-22 10:00:00.123456+00)\n",
        ));
        assert_eq!(
            ev[0],
            Event::Begin {
                xid: Some(529),
                final_lsn: None
            }
        );
        let r = row(&ev[1]);
        assert_eq!(r.op, Op::Insert);
        assert_eq!(
            r.new.as_ref().unwrap(),
            &vec![
                t("1"),
                t("it's"),
                t("t"),
                t("2.00"),
                t("2026-11-22 10:00:00+00"),
                t("{1,2}"),
                t("101"),
                Datum::Null,
                Datum::UnchangedToast,
                t("f"),
                t("a\\b"),
            ]
        );
        assert_eq!(
            r.relation.columns[4].type_name.as_deref(),
            Some("timestamp with time zone")
        );
        assert_eq!(r.relation.columns[5].type_name.as_deref(), Some("integer[]"));
        let Event::Commit(c) = &ev[2] else { panic!() };
        assert_eq!(c.xid, Some(529));
        assert_eq!(c.lsn, None::<Lsn>);
        assert_eq!(c.commit_time.unwrap().to_string(), "2026-11-22T10:00:00.123456Z");
    }

    #[test]
    fn quoted_identifiers_and_multiline_values() {
        let ev = events(
            "BEGIN\ntable forum.\"Tags\": INSERT: \"My Col\"[text]:'line one\nline ''two''\n' id[integer]:5\r\nCOMMIT\r\n",
        );
        let r = row(&ev[1]);
        assert_eq!(r.relation.schema, "forum");
        assert_eq!(r.relation.name, "Tags");
        assert_eq!(r.relation.columns[0].name, "My Col");
        assert_eq!(r.new.as_ref().unwrap()[0], t("line one\nline 'two'\n"));
        assert_eq!(
            ev[0],
            Event::Begin {
                xid: None,
                final_lsn: None
            }
        );
        assert!(matches!(&ev[2], Event::Commit(c) if c.xid.is_none() && c.commit_time.is_none()));
        let ev = events("table \"we\"\"ird\".\"a b\": INSERT: \"x\"\"y\"[\"MyEnum\"]:'v'\n");
        let r = row(&ev[0]);
        assert_eq!(
            (r.relation.schema.as_str(), r.relation.name.as_str()),
            ("we\"ird", "a b")
        );
        assert_eq!(r.relation.columns[0].name, "x\"y");
        assert_eq!(r.relation.columns[0].type_name.as_deref(), Some("\"MyEnum\""));
    }

    #[test]
    fn updates_deletes_and_relations() {
        let ev = events(concat!(
            "table public.p: INSERT: id[integer]:1 cat[integer]:5\n",
            "table public.p: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:2 cat[integer]:5\n",
            "table public.p: UPDATE: id[integer]:2 cat[integer]:6\n",
            "table public.p: DELETE: id[integer]:2\n",
            "table public.p: DELETE: (no-tuple-data)\n",
            "table public.p: INSERT: id[integer]:3 cat[integer]:5 extra[text]:'x'\n",
        ));
        let rel: &Arc<Relation> = &row(&ev[0]).relation;
        let upd = row(&ev[1]);
        assert!(Arc::ptr_eq(rel, &upd.relation));
        assert_eq!(upd.old.as_ref().unwrap(), &vec![t("1"), Datum::Absent]);
        assert_eq!(upd.new.as_ref().unwrap(), &vec![t("2"), t("5")]);
        assert!(row(&ev[2]).old.is_none());
        let del = row(&ev[3]);
        assert!(Arc::ptr_eq(rel, &del.relation), "key-only delete reuses the relation");
        assert_eq!(del.old.as_ref().unwrap(), &vec![t("2"), Datum::Absent]);
        assert!(row(&ev[4]).old.is_none());
        let altered = row(&ev[5]);
        assert_ne!(
            altered.relation.id, rel.id,
            "a new column list is a new relation version"
        );
        assert_eq!(altered.relation.columns.len(), 3);
    }

    #[test]
    fn truncate_forms() {
        let ev = events(concat!(
            "table public.a: TRUNCATE: (no-flags)\n",
            "table public.a, s.\"B\": TRUNCATE: restart_identity cascade\n",
        ));
        let Event::Change(Change::Truncate(t1)) = &ev[0] else {
            panic!()
        };
        assert_eq!(t1.relations.len(), 1);
        assert!(!t1.cascade && !t1.restart_identity);
        let Event::Change(Change::Truncate(t2)) = &ev[1] else {
            panic!()
        };
        assert_eq!(t2.relations.len(), 2);
        assert_eq!(t2.relations[1].name, "B");
        assert!(t2.cascade && t2.restart_identity);
    }

    #[test]
    fn messages_are_skipped() {
        let ev = events("BEGIN 1\nmessage: transactional: 1 prefix: foo, sz: 3 content:abc\nCOMMIT 1\n");
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn errors_name_the_line_and_reader_continues() {
        let out = read_all(concat!(
            "BEGIN 1\n",
            "table public.t: INSERT: v[text]:'multi\nline'\n",
            "tabel public.x: INSERT: id[integer]:1\n",
            "table public.t: UPSERT: id[integer]:1\n",
            "table public.t: INSERT: id[integer]1\n",
            "COMMIT 1\n",
        ));
        let errs: Vec<String> = out
            .iter()
            .filter_map(|e| e.as_ref().err())
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("s.txt:4: expected `BEGIN`, `COMMIT` or `table"),
            "{}",
            errs[0]
        );
        assert!(errs[1].starts_with("s.txt:5: expected INSERT:"), "{}", errs[1]);
        assert!(errs[2].starts_with("s.txt:6: expected `[type]:`"), "{}", errs[2]);
        assert!(matches!(out.last(), Some(Ok(Event::Commit(_)))));
        let out = read_all("table public.t: INSERT: v[text]:'never closed\nmore\n");
        let err = out[0].as_ref().unwrap_err().to_string();
        assert!(err.starts_with("s.txt:1:") && err.contains("cut short"), "{err}");
        let out = read_all("COMMIT x\n");
        assert!(out[0].is_err());
    }

    #[test]
    fn an_unclosed_quote_does_not_swallow_the_rest() {
        let mut text = String::from("BEGIN 1\ntable public.t: INSERT: v[text]:'trunc\nCOMMIT 1\n");
        for i in 2..=300 {
            text.push_str(&format!(
                "BEGIN {i}\ntable public.t: INSERT: id[integer]:{i}\nCOMMIT {i}\n"
            ));
        }
        let out = read_all(&text);
        let errs: Vec<String> = out
            .iter()
            .filter_map(|e| e.as_ref().err())
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("s.txt:2:") && errs[0].contains("not closed before line 3"),
            "{}",
            errs[0]
        );
        let commits = out.iter().filter(|e| matches!(e, Ok(Event::Commit(_)))).count();
        assert_eq!(commits, 300);
    }

    #[test]
    fn a_long_multiline_value_is_read_in_linear_time() {
        let lines = 40_000;
        let value = vec!["some text"; lines].join("\n");
        let text = format!("BEGIN 1\ntable public.t: INSERT: v[text]:'{value}' id[integer]:1\nCOMMIT 1\n");
        let started = std::time::Instant::now();
        let ev = events(&text);
        assert_eq!(row(&ev[1]).new.as_ref().unwrap()[0], t(&value));
        // Quadratic re-parsing took tens of seconds here.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn identifiers_across_lines_and_records_without_xids() {
        let ev = events("table public.\"a\nb\": INSERT: id[integer]:1\nCOMMIT 5\n");
        assert_eq!(row(&ev[0]).relation.name, "a\nb");
        let out = read_all("BEGIN\ntable public.t: INSERT: v[text]:'open\nCOMMIT\nBEGIN\ntable public.t: INSERT: id[integer]:2\nCOMMIT\n");
        let errs = out.iter().filter(|e| e.is_err()).count();
        let commits = out.iter().filter(|e| matches!(e, Ok(Event::Commit(_)))).count();
        assert_eq!((errs, commits), (1, 2), "{out:?}");
    }

    #[test]
    fn carriage_returns_inside_values_are_kept() {
        let ev = events("table public.t: INSERT: v[text]:'a\r\nb' id[integer]:1\r\n");
        assert_eq!(row(&ev[0]).new.as_ref().unwrap()[0], t("a\r\nb"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,300}") {
            let _ = read_all(&text);
            let _ = read_all(&format!("table public.t: INSERT: {text}"));
            let _ = read_all(&format!("table public.t: UPDATE: old-key: {text}"));
        }
    }
}
