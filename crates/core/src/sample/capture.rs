//! walbust's capture format: raw pgoutput messages as the walsender sent them, so a dry-run of
//! a capture decodes exactly what the daemon decodes. See `docs/capture-format.md`.
//!
//! ```text
//! WALBUST-CAPTURE 1\n                       magic and format version (text, so `head -1` shows it)
//! {"format":"walbust-capture",...}\n        one JSON line of metadata
//! records until end of file:
//!   u8   kind  = b'w' (a pgoutput message)
//!   u64  start LSN of the XLogData frame (big-endian; 0 when unknown)
//!   u32  length (big-endian)
//!   [u8] the pgoutput message (Relation messages included, so the file is self-contained)
//! ```

use super::source::{EventSource, InputFormat, SampleError};
use crate::bytes::Cursor;
use crate::decode::pgoutput::Decoder;
use crate::model::{Event, Lsn};
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Read, Write};

pub const MAGIC: &str = "WALBUST-CAPTURE";
pub const VERSION: u32 = 1;
const RECORD_PGOUTPUT: u8 = b'w';
/// Messages larger than this are refused when reading (a corrupt length would otherwise
/// allocate without bound). PostgreSQL's own limit for one field is 1 GB.
const MAX_RECORD: u32 = 1 << 30;

/// Capture metadata (the JSON line after the magic).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub created: String,
    #[serde(default)]
    pub server_version: Option<String>,
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub publication: Option<String>,
    /// `live` (temporary slot) or `peek:<slot>`.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub start_lsn: Option<String>,
    /// The database's partitions and their ancestors when the capture was made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<crate::rules::PartitionOf>,
}

/// Writes a capture.
pub struct CaptureWriter<W: Write> {
    out: W,
    records: u64,
}

impl<W: Write> CaptureWriter<W> {
    pub fn new(mut out: W, header: &Header) -> io::Result<CaptureWriter<W>> {
        writeln!(out, "{MAGIC} {VERSION}")?;
        let mut header = header.clone();
        header.format = "walbust-capture".into();
        header.version = VERSION;
        serde_json::to_writer(&mut out, &header).map_err(io::Error::from)?;
        out.write_all(b"\n")?;
        Ok(CaptureWriter { out, records: 0 })
    }

    /// Appends one pgoutput message.
    pub fn message(&mut self, start: Lsn, message: &[u8]) -> io::Result<()> {
        let mut head = [0u8; 13];
        head[0] = RECORD_PGOUTPUT;
        head[1..9].copy_from_slice(&start.0.to_be_bytes());
        head[9..13].copy_from_slice(&(message.len() as u32).to_be_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(message)?;
        self.records += 1;
        Ok(())
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a capture as change-model events, through the same decoder the daemon uses.
pub struct CaptureReader {
    source_name: String,
    input: Box<dyn BufRead + Send>,
    decoder: Decoder,
    header: Header,
    record: u64,
    offset: u64,
    buf: Vec<u8>,
    failed: bool,
}

impl CaptureReader {
    pub fn open(source_name: &str, mut input: Box<dyn BufRead + Send>) -> Result<CaptureReader, SampleError> {
        let err = |line: u64, message: String| SampleError {
            source_name: source_name.to_string(),
            line,
            message,
        };
        let mut magic = String::new();
        input
            .read_line(&mut magic)
            .map_err(|e| err(1, format!("cannot read: {e}")))?;
        let mut parts = magic.trim_end().splitn(2, ' ');
        if parts.next() != Some(MAGIC) {
            return Err(err(
                1,
                format!("expected `{MAGIC} <version>` (a walbust capture) at the start of the file"),
            ));
        }
        match parts.next().and_then(|v| v.parse::<u32>().ok()) {
            Some(VERSION) => {}
            Some(v) => {
                return Err(err(
                    1,
                    format!("capture format version {v} is newer than this walbust reads ({VERSION}); upgrade walbust"),
                ))
            }
            None => return Err(err(1, "missing capture format version after the magic".into())),
        }
        let mut line = String::new();
        input
            .read_line(&mut line)
            .map_err(|e| err(2, format!("cannot read: {e}")))?;
        let header: Header =
            serde_json::from_str(line.trim_end()).map_err(|e| err(2, format!("invalid capture header JSON: {e}")))?;
        let offset = (magic.len() + line.len()) as u64;
        Ok(CaptureReader {
            source_name: source_name.to_string(),
            input,
            decoder: Decoder::new(),
            header,
            record: 0,
            offset,
            buf: Vec::new(),
            failed: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn error(&self, message: String) -> SampleError {
        SampleError {
            source_name: self.source_name.clone(),
            // Binary records have no lines: count records (the header is lines 1–2).
            line: self.record + 2,
            message: format!("record {} (byte offset {}): {message}", self.record, self.offset),
        }
    }

    /// Reads exactly `n` bytes; `Ok(false)` on a clean end of file before the first byte.
    fn read_exact_or_eof(&mut self, n: usize) -> Result<bool, SampleError> {
        self.buf.resize(n, 0);
        let mut filled = 0;
        while filled < n {
            match self.input.read(&mut self.buf[filled..n]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    return Err(self.error(format!(
                        "the capture ends in the middle of a record ({filled} of {n} bytes); it was cut short"
                    )))
                }
                Ok(k) => filled += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.error(format!("cannot read: {e}"))),
            }
        }
        Ok(true)
    }
}

impl EventSource for CaptureReader {
    fn next_event(&mut self) -> Result<Option<Event>, SampleError> {
        loop {
            if self.failed {
                // A framing error leaves no way to find the next record boundary.
                return Ok(None);
            }
            self.record += 1;
            match self.read_exact_or_eof(13) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
            // The 13 bytes were read, so the cursor cannot come up short.
            let mut head = Cursor::new(&self.buf[..13]);
            let (kind, len) = match (
                head.u8("record kind"),
                head.lsn("record start"),
                head.u32("record length"),
            ) {
                (Ok(kind), Ok(_), Ok(len)) => (kind, len),
                _ => (0, 0),
            };
            if kind != RECORD_PGOUTPUT {
                self.failed = true;
                return Err(self.error(format!("unknown record kind {:?}; the file is corrupt", kind as char)));
            }
            if len > MAX_RECORD {
                self.failed = true;
                return Err(self.error(format!("record length {len} is implausible; the file is corrupt")));
            }
            match self.read_exact_or_eof(len as usize) {
                Ok(true) => {}
                Ok(false) if len == 0 => {}
                Ok(false) => {
                    self.failed = true;
                    return Err(self.error("the capture ends after a record header; it was cut short".into()));
                }
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
            self.offset += 13 + u64::from(len);
            let decoded = self.decoder.decode(&self.buf[..len as usize]);
            match decoded {
                Ok(Some(event)) => return Ok(Some(event)),
                Ok(None) => continue,
                Err(e) => return Err(self.error(format!("cannot decode pgoutput message: {e}"))),
            }
        }
    }

    fn format(&self) -> InputFormat {
        InputFormat::Capture
    }

    fn partitions(&self) -> &[crate::rules::PartitionOf] {
        &self.header.partitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, Datum};

    fn relation() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16385u32.to_be_bytes());
        m.extend_from_slice(b"public\0t\0");
        m.push(b'd');
        m.extend_from_slice(&1i16.to_be_bytes());
        m.push(1);
        m.extend_from_slice(b"id\0");
        m.extend_from_slice(&23u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        m
    }

    fn insert(v: &str) -> Vec<u8> {
        let mut m = vec![b'I'];
        m.extend_from_slice(&16385u32.to_be_bytes());
        m.push(b'N');
        m.extend_from_slice(&1i16.to_be_bytes());
        m.push(b't');
        m.extend_from_slice(&(v.len() as i32).to_be_bytes());
        m.extend_from_slice(v.as_bytes());
        m
    }

    fn capture() -> Vec<u8> {
        let mut w = CaptureWriter::new(Vec::new(), &Header::default()).unwrap();
        let mut begin = vec![b'B'];
        begin.extend_from_slice(&[0; 16]);
        begin.extend_from_slice(&7u32.to_be_bytes());
        w.message(Lsn(1), &begin).unwrap();
        w.message(Lsn(2), &relation()).unwrap();
        w.message(Lsn(3), &insert("42")).unwrap();
        let mut commit = vec![b'C', 0];
        commit.extend_from_slice(&[0; 24]);
        w.message(Lsn(4), &commit).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let bytes = capture();
        assert!(bytes.starts_with(b"WALBUST-CAPTURE 1\n"));
        let mut r = CaptureReader::open("c", Box::new(std::io::Cursor::new(bytes))).unwrap();
        assert_eq!(r.header().format, "walbust-capture");
        assert_eq!(
            r.next_event().unwrap(),
            Some(Event::Begin {
                xid: Some(7),
                final_lsn: Some(Lsn(0))
            })
        );
        let Some(Event::Change(Change::Row(row))) = r.next_event().unwrap() else {
            panic!()
        };
        assert_eq!(row.new.unwrap(), vec![Datum::Text("42".into())]);
        assert!(matches!(r.next_event().unwrap(), Some(Event::Commit(_))));
        assert_eq!(r.next_event().unwrap(), None);
    }

    #[test]
    fn truncated_capture_is_an_error_naming_the_record() {
        let mut bytes = capture();
        bytes.truncate(bytes.len() - 5);
        let mut r = CaptureReader::open("c.cap", Box::new(std::io::Cursor::new(bytes))).unwrap();
        let mut err = None;
        for _ in 0..10 {
            match r.next_event() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let err = err.expect("an error").to_string();
        assert!(
            err.contains("c.cap") && err.contains("record 4") && err.contains("cut short"),
            "{err}"
        );
    }

    #[test]
    fn wrong_magic_or_version() {
        assert!(CaptureReader::open("c", Box::new(std::io::Cursor::new(b"hello\n".to_vec()))).is_err());
        let e = CaptureReader::open("c", Box::new(std::io::Cursor::new(b"WALBUST-CAPTURE 9\n{}\n".to_vec())))
            .err()
            .unwrap();
        assert!(e.to_string().contains("upgrade"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_records_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut bytes = b"WALBUST-CAPTURE 1\n{\"format\":\"walbust-capture\",\"version\":1,\"created\":\"\"}\n".to_vec();
            bytes.extend(body);
            if let Ok(mut r) = CaptureReader::open("c", Box::new(std::io::Cursor::new(bytes))) {
                for _ in 0..100 {
                    if let Ok(None) = r.next_event() {
                        break;
                    }
                }
            }
        }
    }
}
