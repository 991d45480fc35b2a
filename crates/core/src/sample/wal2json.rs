//! Readers for wal2json output: format-version 2 (JSON Lines, one action per line) and
//! format-version 1 (one JSON object per transaction, possibly pretty-printed).
//!
//! Values keep PostgreSQL's text form: JSON numbers are taken verbatim from the raw JSON
//! (`2.00` stays `2.00`), booleans become `t` / `f`, strings are unescaped.

use super::source::{row_change, truncate, EventSource, InputFormat, NamedValue, RelationCache, SampleError};
#[cfg(test)]
use crate::model::RowChange;
use crate::model::{Change, CommitInfo, Datum, Event, Lsn, Op, Timestamp, Truncate};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::BufRead;

/// A raw JSON value of a column of type `type_name`, as PostgreSQL's text output (what the
/// daemon renders from pgoutput).
fn typed_datum(raw: Option<&RawValue>, type_name: Option<&str>) -> Result<Datum, String> {
    let datum = datum(raw)?;
    match (datum, type_name) {
        // wal2json writes bytea as bare hex; PostgreSQL's text output (and pgoutput) has `\x`.
        (Datum::Text(hex), Some("bytea")) if !hex.starts_with("\\x") => Ok(Datum::Text(format!("\\x{hex}"))),
        (datum, _) => Ok(datum),
    }
}

/// A raw JSON value as PostgreSQL text.
fn datum(raw: Option<&RawValue>) -> Result<Datum, String> {
    let Some(raw) = raw else { return Ok(Datum::Null) };
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text)
            .map(Datum::Text)
            .map_err(|e| format!("invalid string value: {e}")),
        Some(b't') if text == "true" => Ok(Datum::Text("t".into())),
        Some(b'f') if text == "false" => Ok(Datum::Text("f".into())),
        Some(b'n') if text == "null" => Ok(Datum::Null),
        Some(b'-' | b'0'..=b'9') => Ok(Datum::Text(text.to_string())),
        // wal2json prints arrays/objects only for json columns when asked; keep the JSON text.
        Some(_) => Ok(Datum::Text(text.to_string())),
        None => Ok(Datum::Null),
    }
}

#[derive(Deserialize)]
struct V2Column<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(rename = "type", borrow, default)]
    type_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct V2Line<'a> {
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(default)]
    xid: Option<u64>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    lsn: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    nextlsn: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    schema: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    table: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    columns: Option<Vec<V2Column<'a>>>,
    #[serde(borrow, default)]
    identity: Option<Vec<V2Column<'a>>>,
}

fn named<'a>(cols: Vec<V2Column<'a>>) -> Result<Vec<NamedValue<'a>>, String> {
    cols.into_iter()
        .map(|c| {
            Ok(NamedValue {
                value: typed_datum(c.value, c.type_name.as_deref())?,
                name: c.name,
                type_name: c.type_name,
            })
        })
        .collect()
}

/// Reader for wal2json format-version 2.
pub struct Wal2JsonReader {
    source_name: String,
    input: Box<dyn BufRead + Send>,
    line: u64,
    buf: String,
    relations: RelationCache,
    begin_xid: Option<u32>,
    begin_time: Option<Timestamp>,
}

impl Wal2JsonReader {
    pub fn new(source_name: &str, input: Box<dyn BufRead + Send>) -> Wal2JsonReader {
        Wal2JsonReader {
            source_name: source_name.to_string(),
            input,
            line: 0,
            buf: String::with_capacity(1024),
            relations: RelationCache::default(),
            begin_xid: None,
            begin_time: None,
        }
    }

    fn parse_line(&mut self) -> Result<Option<Event>, String> {
        let text = self.buf.trim_end_matches(['\n', '\r']);
        let line: V2Line<'_> = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        let xid = line.xid.map(|x| x as u32);
        let time = |t: &Option<Cow<'_, str>>| -> Result<Option<Timestamp>, String> {
            match t {
                Some(t) => Timestamp::parse_pg(t)
                    .map(Some)
                    .ok_or_else(|| format!("expected a timestamp but found `{}`", truncate(t, 40))),
                None => Ok(None),
            }
        };
        let lsn = |t: &Option<Cow<'_, str>>| -> Result<Option<Lsn>, String> {
            match t {
                Some(t) => Lsn::parse(t)
                    .map(Some)
                    .ok_or_else(|| format!("expected an LSN like 0/16B3748 but found `{}`", truncate(t, 40))),
                None => Ok(None),
            }
        };
        match line.action.as_ref() {
            "B" => {
                self.begin_xid = xid;
                self.begin_time = time(&line.timestamp)?;
                Ok(Some(Event::Begin { xid, final_lsn: None }))
            }
            "C" => {
                let info = CommitInfo {
                    xid: xid.or(self.begin_xid),
                    lsn: lsn(&line.lsn)?,
                    end_lsn: lsn(&line.nextlsn)?,
                    commit_time: time(&line.timestamp)?.or(self.begin_time),
                };
                self.begin_xid = None;
                self.begin_time = None;
                Ok(Some(Event::Commit(info)))
            }
            "M" => Ok(None),
            action @ ("I" | "U" | "D" | "T") => {
                let schema = line
                    .schema
                    .ok_or_else(|| format!("expected field `schema` in action {action}"))?;
                let table = line
                    .table
                    .ok_or_else(|| format!("expected field `table` in action {action}"))?;
                if action == "T" {
                    let relation = self.relations.by_name(&schema, &table);
                    return Ok(Some(Event::Change(Change::Truncate(Truncate {
                        relations: vec![relation],
                        cascade: false,
                        restart_identity: false,
                    }))));
                }
                let op = match action {
                    "I" => Op::Insert,
                    "U" => Op::Update,
                    _ => Op::Delete,
                };
                let new = match op {
                    Op::Delete => None,
                    _ => {
                        Some(named(line.columns.ok_or_else(|| {
                            format!("expected field `columns` in action {action}")
                        })?)?)
                    }
                };
                let old = match (op, line.identity) {
                    (Op::Delete, None) => None,
                    (_, Some(identity)) => Some(named(identity)?),
                    (_, None) => None,
                };
                // wal2json leaves unchanged TOAST columns out of an update's new tuple.
                let missing_new = if op == Op::Update {
                    Datum::UnchangedToast
                } else {
                    Datum::Absent
                };
                let row = row_change(&mut self.relations, &schema, &table, op, old, new, missing_new);
                Ok(Some(Event::Change(Change::Row(row))))
            }
            other => Err(format!(
                "expected action B, C, I, U, D, T or M but found `{}`",
                truncate(other, 20)
            )),
        }
    }
}

impl EventSource for Wal2JsonReader {
    fn next_event(&mut self) -> Result<Option<Event>, SampleError> {
        loop {
            self.buf.clear();
            let n = super::source::read_line_bounded(&mut self.input, &mut self.buf, super::source::MAX_RECORD_BYTES)
                .map_err(|e| SampleError {
                    source_name: self.source_name.clone(),
                    line: self.line + 1,
                    message: format!("cannot read: {e}"),
                })?
                .ok_or_else(|| SampleError {
                    source_name: self.source_name.clone(),
                    line: self.line + 1,
                    message: format!(
                        "a line longer than {} MiB; wal2json writes one change per line (format-version 2): check the file's format",
                        super::source::MAX_RECORD_BYTES >> 20
                    ),
                })?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            if self.buf.trim().is_empty() {
                continue;
            }
            match self.parse_line() {
                Ok(Some(event)) => return Ok(Some(event)),
                Ok(None) => continue,
                Err(message) => {
                    return Err(SampleError {
                        source_name: self.source_name.clone(),
                        line: self.line,
                        message,
                    })
                }
            }
        }
    }

    fn format(&self) -> InputFormat {
        InputFormat::Wal2JsonV2
    }
}

#[derive(Deserialize)]
struct V1Keys {
    #[serde(default)]
    keynames: Vec<String>,
    #[serde(default)]
    keytypes: Vec<String>,
    #[serde(default)]
    keyvalues: Vec<Option<Box<RawValue>>>,
}

#[derive(Deserialize)]
struct V1Change {
    kind: String,
    schema: String,
    table: String,
    #[serde(default)]
    columnnames: Vec<String>,
    #[serde(default)]
    columntypes: Vec<String>,
    #[serde(default)]
    columnvalues: Vec<Option<Box<RawValue>>>,
    #[serde(default)]
    oldkeys: Option<V1Keys>,
}

#[derive(Deserialize)]
struct V1Txn {
    #[serde(default)]
    xid: Option<u64>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    nextlsn: Option<String>,
    #[serde(default)]
    change: Vec<V1Change>,
    /// Only format-version 2 has it: its presence means the wrong reader was chosen.
    #[serde(default)]
    action: Option<serde::de::IgnoredAny>,
}

/// Reader for wal2json format-version 1. A framing error ends the stream (a JSON stream
/// cannot be resynchronised after garbage).
pub struct Wal2JsonV1Reader {
    source_name: String,
    stream: serde_json::StreamDeserializer<'static, serde_json::de::IoRead<Box<dyn BufRead + Send>>, V1Txn>,
    pending: VecDeque<Event>,
    relations: RelationCache,
    done: bool,
}

impl Wal2JsonV1Reader {
    pub fn new(source_name: &str, input: Box<dyn BufRead + Send>) -> Wal2JsonV1Reader {
        Wal2JsonV1Reader {
            source_name: source_name.to_string(),
            stream: serde_json::Deserializer::from_reader(input).into_iter(),
            pending: VecDeque::new(),
            relations: RelationCache::default(),
            done: false,
        }
    }

    fn columns(
        names: Vec<String>,
        types: Vec<String>,
        values: Vec<Option<Box<RawValue>>>,
    ) -> Result<Vec<NamedValue<'static>>, String> {
        if names.len() != values.len() {
            return Err(format!("{} column names but {} values", names.len(), values.len()));
        }
        let mut types = types.into_iter();
        names
            .into_iter()
            .zip(values)
            .map(|(name, value)| {
                let type_name = types.next();
                Ok(NamedValue {
                    name: Cow::Owned(name),
                    value: typed_datum(value.as_deref(), type_name.as_deref())?,
                    type_name: type_name.map(Cow::Owned),
                })
            })
            .collect()
    }

    fn expand(&mut self, txn: V1Txn) -> Result<(), String> {
        let xid = txn.xid.map(|x| x as u32);
        self.pending.push_back(Event::Begin { xid, final_lsn: None });
        for change in txn.change {
            let op = match change.kind.as_str() {
                "insert" => Op::Insert,
                "update" => Op::Update,
                "delete" => Op::Delete,
                "message" => continue,
                other => {
                    return Err(format!(
                        "expected change kind insert, update or delete but found `{other}`"
                    ))
                }
            };
            let new = match op {
                Op::Delete => None,
                _ => Some(Self::columns(
                    change.columnnames,
                    change.columntypes,
                    change.columnvalues,
                )?),
            };
            let old = match change.oldkeys {
                Some(k) => Some(Self::columns(k.keynames, k.keytypes, k.keyvalues)?),
                None => None,
            };
            let missing_new = if op == Op::Update {
                Datum::UnchangedToast
            } else {
                Datum::Absent
            };
            let row = row_change(
                &mut self.relations,
                &change.schema,
                &change.table,
                op,
                old,
                new,
                missing_new,
            );
            self.pending.push_back(Event::Change(Change::Row(row)));
        }
        let commit_time = match &txn.timestamp {
            Some(t) => Some(Timestamp::parse_pg(t).ok_or_else(|| format!("expected a timestamp but found `{t}`"))?),
            None => None,
        };
        self.pending.push_back(Event::Commit(CommitInfo {
            xid,
            lsn: None,
            end_lsn: txn.nextlsn.as_deref().and_then(Lsn::parse),
            commit_time,
        }));
        Ok(())
    }
}

impl EventSource for Wal2JsonV1Reader {
    fn next_event(&mut self) -> Result<Option<Event>, SampleError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            if self.done {
                return Ok(None);
            }
            match self.stream.next() {
                None => return Ok(None),
                Some(Ok(txn)) if txn.action.is_some() => {
                    self.done = true;
                    return Err(SampleError {
                        source_name: self.source_name.clone(),
                        line: 0,
                        message: "this is wal2json format-version 2 (one object per line with an \"action\"), not format-version 1: use --input-format wal2json, or leave the format to detection".into(),
                    });
                }
                Some(Ok(txn)) => {
                    if let Err(message) = self.expand(txn) {
                        self.pending.clear();
                        return Err(SampleError {
                            source_name: self.source_name.clone(),
                            line: 0,
                            message,
                        });
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Err(SampleError {
                        source_name: self.source_name.clone(),
                        line: e.line() as u64,
                        message: format!("invalid wal2json (format-version 1) JSON: {e}"),
                    });
                }
            }
        }
    }

    fn format(&self) -> InputFormat {
        InputFormat::Wal2JsonV1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(text: &str) -> Vec<Result<Event, SampleError>> {
        let mut r = Wal2JsonReader::new("w.jsonl", Box::new(std::io::Cursor::new(text.as_bytes().to_vec())));
        crate::sample::source::read_all(&mut r)
    }

    fn t(s: &str) -> Datum {
        Datum::Text(s.into())
    }

    fn row(e: &Result<Event, SampleError>) -> &RowChange {
        match e {
            Ok(Event::Change(Change::Row(r))) => r,
            other => panic!("not a row: {other:?}"),
        }
    }

    #[test]
    fn bytea_is_rendered_as_postgres_text() {
        let ev = read_all(concat!(
            r#"{"action":"I","schema":"public","table":"b","columns":[{"name":"ba","type":"bytea","value":"0102ff"}]}"#,
            "\n",
            r#"{"action":"I","schema":"public","table":"b","columns":[{"name":"ba","type":"bytea","value":"\\x0a"}]}"#,
            "\n",
        ));
        assert_eq!(row(&ev[0]).new.as_ref().unwrap()[0], t("\\x0102ff"));
        assert_eq!(row(&ev[1]).new.as_ref().unwrap()[0], t("\\x0a"));
    }

    #[test]
    fn values_keep_postgres_text() {
        let out = read_all(concat!(
            r#"{"action":"B","xid":529,"timestamp":"2026-11-22 10:00:00.123456+00","lsn":"0/16B3748","nextlsn":"0/16B3778"}"#,
            "\n",
            r#"{"action":"I","xid":529,"schema":"public","table":"data","columns":[{"name":"id","type":"integer","value":1},{"name":"n","type":"numeric(10,2)","value":2.00},{"name":"ok","type":"boolean","value":true},{"name":"s","type":"text","value":"a \"q\"\n\u00fc"},{"name":"z","type":"text","value":null},{"name":"e","type":"real","value":1e5}]}"#,
            "\n\n",
            r#"{"action":"C","xid":529,"timestamp":"2026-11-22 10:00:00.123456+00","lsn":"0/16B3748","nextlsn":"0/16B3778"}"#,
            "\n",
        ));
        assert_eq!(
            out[0].as_ref().unwrap(),
            &Event::Begin {
                xid: Some(529),
                final_lsn: None
            }
        );
        let r = row(&out[1]);
        assert_eq!(
            r.new.as_ref().unwrap(),
            &vec![t("1"), t("2.00"), t("t"), t("a \"q\"\nü"), Datum::Null, t("1e5")]
        );
        assert_eq!(r.relation.columns[1].type_name.as_deref(), Some("numeric(10,2)"));
        let Ok(Event::Commit(c)) = &out[2] else { panic!() };
        assert_eq!(c.xid, Some(529));
        assert_eq!(c.lsn.unwrap().to_string(), "0/16B3748");
        assert_eq!(c.end_lsn.unwrap().to_string(), "0/16B3778");
        assert_eq!(c.commit_time.unwrap().to_string(), "2026-11-22T10:00:00.123456Z");
    }

    #[test]
    fn updates_deletes_truncates() {
        let out = read_all(concat!(
            r#"{"action":"I","schema":"public","table":"p","columns":[{"name":"id","type":"integer","value":1},{"name":"body","type":"text","value":"x"}]}"#,
            "\n",
            r#"{"action":"U","schema":"public","table":"p","columns":[{"name":"id","type":"integer","value":2}],"identity":[{"name":"id","type":"integer","value":1}]}"#,
            "\n",
            r#"{"action":"D","schema":"public","table":"p","identity":[{"name":"id","type":"integer","value":2}]}"#,
            "\n",
            r#"{"action":"T","schema":"public","table":"p"}"#,
            "\n",
            r#"{"action":"M","transactional":true,"prefix":"x","content":"y"}"#,
            "\n",
        ));
        assert_eq!(out.len(), 4);
        let upd = row(&out[1]);
        assert!(std::sync::Arc::ptr_eq(&row(&out[0]).relation, &upd.relation));
        assert_eq!(upd.new.as_ref().unwrap(), &vec![t("2"), Datum::UnchangedToast]);
        assert_eq!(upd.old.as_ref().unwrap(), &vec![t("1"), Datum::Absent]);
        let del = row(&out[2]);
        assert!(del.new.is_none());
        assert_eq!(del.old.as_ref().unwrap(), &vec![t("2"), Datum::Absent]);
        assert!(matches!(&out[3], Ok(Event::Change(Change::Truncate(t))) if t.relations[0].name == "p"));
    }

    #[test]
    fn errors_name_line_and_field() {
        let out = read_all(concat!(
            r#"{"action":"B"}"#,
            "\n",
            "{not json\n",
            r#"{"action":"I","table":"p","columns":[]}"#,
            "\n",
            r#"{"action":"X"}"#,
            "\n",
            r#"{"action":"C"}"#,
            "\n",
        ));
        let errs: Vec<String> = out
            .iter()
            .filter_map(|e| e.as_ref().err())
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("w.jsonl:2: invalid JSON"), "{}", errs[0]);
        assert!(
            errs[1].starts_with("w.jsonl:3: expected field `schema` in action I"),
            "{}",
            errs[1]
        );
        assert!(errs[2].starts_with("w.jsonl:4: expected action"), "{}", errs[2]);
        assert!(matches!(out.last(), Some(Ok(Event::Commit(_)))));
    }

    /// Regression (issue: inputs, finding 12): a format-version 2 file read as version 1 gave
    /// transactions without changes and exit 0.
    #[test]
    fn a_version_2_file_read_as_version_1_is_an_error() {
        let text = "{\"action\":\"B\",\"xid\":1}\n{\"action\":\"C\"}\n";
        let mut r = Wal2JsonV1Reader::new("v2.json", Box::new(std::io::Cursor::new(text.as_bytes().to_vec())));
        let err = r.next_event().unwrap_err();
        assert!(err.message.contains("format-version 2"), "{}", err.message);
    }

    #[test]
    fn format_version_1() {
        let text = r#"{
  "xid": 529, "timestamp": "2026-11-22 10:00:00+00", "nextlsn": "0/16B3778",
  "change": [
    {"kind": "insert", "schema": "public", "table": "t", "columnnames": ["id", "n", "b"], "columntypes": ["integer", "numeric", "boolean"], "columnvalues": [1, 2.00, false]},
    {"kind": "delete", "schema": "public", "table": "t", "oldkeys": {"keynames": ["id"], "keytypes": ["integer"], "keyvalues": [1]}}
  ]
}
{"xid": 530, "change": []}
"#;
        let mut r = Wal2JsonV1Reader::new("v1.json", Box::new(std::io::Cursor::new(text.as_bytes().to_vec())));
        let mut events = Vec::new();
        while let Some(e) = r.next_event().unwrap() {
            events.push(e);
        }
        assert_eq!(events.len(), 6);
        let Event::Change(Change::Row(ins)) = &events[1] else {
            panic!()
        };
        assert_eq!(ins.new.as_ref().unwrap(), &vec![t("1"), t("2.00"), t("f")]);
        let Event::Change(Change::Row(del)) = &events[2] else {
            panic!()
        };
        assert_eq!(del.old.as_ref().unwrap(), &vec![t("1"), Datum::Absent, Datum::Absent]);
        let Event::Commit(c) = &events[3] else { panic!() };
        assert_eq!(c.xid, Some(529));
        let mut bad = Wal2JsonV1Reader::new(
            "v1.json",
            Box::new(std::io::Cursor::new(b"{\"xid\": 1,\n oops}".to_vec())),
        );
        let err = bad.next_event().unwrap_err();
        assert!(err.to_string().starts_with("v1.json:2:"), "{err}");
        assert_eq!(bad.next_event().unwrap(), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_lines_never_panic(text in ".{0,300}") {
            let _ = read_all(&text);
            let _ = read_all(&format!("{{\"action\":\"I\",\"schema\":\"s\",\"table\":\"t\",\"columns\":[{text}]}}"));
            let mut r = Wal2JsonV1Reader::new("v1", Box::new(std::io::Cursor::new(text.into_bytes())));
            for _ in 0..100 { if let Ok(None) = r.next_event() { break } }
        }
    }
}
