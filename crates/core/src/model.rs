//! The change model: what every input (test_decoding text, wal2json, pgoutput) is turned into,
//! and what the rules engine consumes.
//!
//! A stream of [`Event`]s describes committed transactions: `Begin`, any number of `Change`s,
//! then `Commit`. Rows are stored positionally, aligned with the columns of their
//! [`Relation`]; a column the change does not carry (non-key column of a key-only old image,
//! or a column wal2json left out) is [`Datum::Absent`]. Values are always PostgreSQL's text
//! output, exactly as pgoutput carries them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The PostgreSQL server a position belongs to: LSNs compare only within one system identifier
/// and timeline (after a failover or a point-in-time restore they start over).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub system: String,
    pub timeline: u32,
}

/// A WAL position (PostgreSQL `pg_lsn`), printed as `X/Y` in upper-case hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `16/B374D848` style positions.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.split_once('/')?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return None;
        }
        let hi = u32::from_str_radix(hi, 16).ok()?;
        let lo = u32::from_str_radix(lo, 16).ok()?;
        Some(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// One column value of one row image.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Datum {
    /// The change does not carry this column (e.g. a non-identity column of an old key image).
    Absent,
    /// SQL NULL.
    Null,
    /// pgoutput 'u' / test_decoding `unchanged-toast-datum`: the value did not change and was
    /// not sent. Its value is only known if the old image carries it.
    UnchangedToast,
    /// PostgreSQL's text output of the value.
    Text(String),
}

impl Datum {
    /// The value when the image really carries one (NULL counts as carried).
    pub fn is_known(&self) -> bool {
        matches!(self, Datum::Null | Datum::Text(_))
    }
}

/// `pg_class.relreplident`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    Default,
    Nothing,
    Full,
    Index,
}

impl ReplicaIdentity {
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            b'd' => Some(Self::Default),
            b'n' => Some(Self::Nothing),
            b'f' => Some(Self::Full),
            b'i' => Some(Self::Index),
            _ => None,
        }
    }
}

/// One column of a relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// Type name as the input spells it (`integer`, `character varying`), when known.
    pub type_name: Option<String>,
    /// Type OID (pgoutput), when known.
    pub type_oid: Option<u32>,
    /// Part of the replica identity, when known.
    pub is_key: bool,
}

impl Column {
    pub fn named(name: impl Into<String>) -> Column {
        Column {
            name: name.into(),
            type_name: None,
            type_oid: None,
            is_key: false,
        }
    }
}

static NEXT_RELATION_ID: AtomicU64 = AtomicU64::new(1);

/// A table as the stream describes it at some point in time. A new `Relation` value (with a
/// new [`Relation::id`]) is made whenever the column list changes, so compiled rules can be
/// cached by id.
#[derive(Debug, PartialEq, Eq)]
pub struct Relation {
    /// Process-unique id of this relation *version*; never reused.
    pub id: u64,
    /// PostgreSQL relation OID, when the input carries it (pgoutput).
    pub oid: Option<u32>,
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    pub replica_identity: Option<ReplicaIdentity>,
    /// The columns are only those the changes seen so far carried (sample formats describe no
    /// tables), not the table's definition (pgoutput's Relation message).
    pub columns_inferred: bool,
}

impl Relation {
    pub fn new(schema: impl Into<String>, name: impl Into<String>, columns: Vec<Column>) -> Relation {
        Relation {
            id: NEXT_RELATION_ID.fetch_add(1, Ordering::Relaxed),
            oid: None,
            schema: schema.into(),
            name: name.into(),
            columns,
            replica_identity: None,
            columns_inferred: false,
        }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// `schema.name`, quoting neither part (for messages).
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Row operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An INSERT, UPDATE or DELETE of one row.
///
/// * INSERT: `new` is set, `old` is `None`.
/// * UPDATE: `new` is set; `old` is set when the WAL carries an old image (key changed, or
///   REPLICA IDENTITY FULL), with [`Datum::Absent`] for the columns it does not carry.
/// * DELETE: `old` is set (identity columns, or every column under FULL); `new` is `None`.
///   `old` may be `None` for REPLICA IDENTITY NOTHING.
///
/// Both row vectors have exactly `relation.columns.len()` entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowChange {
    pub relation: Arc<Relation>,
    pub op: Op,
    pub old: Option<Vec<Datum>>,
    pub new: Option<Vec<Datum>>,
}

/// A TRUNCATE of one or more tables in one statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    pub relations: Vec<Arc<Relation>>,
    pub cascade: bool,
    pub restart_identity: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Row(RowChange),
    Truncate(Truncate),
}

/// A commit timestamp in microseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0),
        )
    }

    /// From PostgreSQL's epoch (2000-01-01) in microseconds, as pgoutput sends it.
    pub fn from_pg_micros(micros: i64) -> Timestamp {
        Timestamp(micros.saturating_add(946_684_800_000_000))
    }

    /// Parses PostgreSQL's ISO output `2026-11-22 10:00:00.123456+00` (also `T` separator,
    /// `Z`, `+05:30`, `-08` offsets and 0–9 fraction digits).
    pub fn parse_pg(text: &str) -> Option<Timestamp> {
        let b = text.trim().as_bytes();
        let num = |s: &[u8]| -> Option<i64> {
            if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(s).ok()?.parse().ok()
        };
        if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b' ' || b[10] == b'T') {
            return None;
        }
        if b[13] != b':' || b[16] != b':' {
            return None;
        }
        let year = num(&b[0..4])?;
        let month = num(&b[5..7])?;
        let day = num(&b[8..10])?;
        let hour = num(&b[11..13])?;
        let minute = num(&b[14..16])?;
        let second = num(&b[17..19])?;
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let mut rest = &b[19..];
        let mut micros = 0i64;
        if let Some(frac) = rest.strip_prefix(b".") {
            let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return None;
            }
            let mut value = 0i64;
            for (i, d) in frac[..digits].iter().enumerate() {
                if i < 6 {
                    value = value * 10 + i64::from(d - b'0');
                }
            }
            for _ in digits..6 {
                value *= 10;
            }
            micros = value;
            rest = &frac[digits..];
        }
        let offset_seconds = match rest {
            b"" | b"Z" | b"z" => 0,
            [sign @ (b'+' | b'-'), tail @ ..] => {
                let (h, m, s) = match tail.len() {
                    2 => (num(tail)?, 0, 0),
                    4 => (num(&tail[0..2])?, num(&tail[2..4])?, 0),
                    5 if tail[2] == b':' => (num(&tail[0..2])?, num(&tail[3..5])?, 0),
                    8 if tail[2] == b':' && tail[5] == b':' => {
                        (num(&tail[0..2])?, num(&tail[3..5])?, num(&tail[6..8])?)
                    }
                    _ => return None,
                };
                let total = h * 3600 + m * 60 + s;
                if *sign == b'-' {
                    -total
                } else {
                    total
                }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
        Some(Timestamp(secs * 1_000_000 + micros))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with microseconds: `2026-11-22T10:00:00.123456Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let in_day = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            in_day / 3600,
            (in_day / 60) % 60,
            in_day % 60
        )
    }
}

/// Transaction metadata known at commit. Fields an input format lacks are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitInfo {
    pub xid: Option<u32>,
    /// LSN of the commit record.
    pub lsn: Option<Lsn>,
    /// End of the commit record: the position to acknowledge once applied.
    pub end_lsn: Option<Lsn>,
    pub commit_time: Option<Timestamp>,
}

/// One step of a change stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A transaction starts. Changes until the matching `Commit` belong to it.
    Begin {
        xid: Option<u32>,
        /// The LSN its commit record will have (pgoutput says so at BEGIN): what its version
        /// bumps become, known before the transaction's end.
        final_lsn: Option<Lsn>,
    },
    Change(Change),
    /// The transaction committed; its changes take effect.
    Commit(CommitInfo),
    /// The transaction was aborted (only some inputs can say so); its changes are discarded.
    /// Also: the stream restarted, and every transaction in progress is sent again.
    Rollback,
    /// Protocol 2 streaming of in-progress transactions: changes of transaction `xid` follow
    /// (as [`Event::StreamChange`]) until [`Event::StreamStop`]; blocks of several transactions
    /// interleave, and regular transactions come between blocks.
    StreamStart {
        xid: u32,
    },
    /// A change of the streamed (sub)transaction `xid`.
    StreamChange {
        xid: u32,
        change: Change,
    },
    StreamStop,
    /// The streamed transaction (`xid` in the info) committed: its changes take effect.
    StreamCommit(CommitInfo),
    /// The streamed subtransaction `subxid` of `xid` aborted (`subxid == xid`: all of `xid`).
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        let lsn = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/0"), Some(Lsn(0)));
        assert_eq!(Lsn::parse("0/"), None);
        assert_eq!(Lsn::parse("x/1"), None);
        assert_eq!(Lsn::parse("123456789/1"), None);
    }

    #[test]
    fn timestamps_parse_and_print_utc() {
        let t = Timestamp::parse_pg("2026-11-22 10:00:00.123456+00").unwrap();
        assert_eq!(t.to_string(), "2026-11-22T10:00:00.123456Z");
        let t = Timestamp::parse_pg("2026-11-22 12:30:00.5+02:30").unwrap();
        assert_eq!(t.to_string(), "2026-11-22T10:00:00.500000Z");
        let t = Timestamp::parse_pg("2026-01-01 01:00:00-02").unwrap();
        assert_eq!(t.to_string(), "2026-01-01T03:00:00.000000Z");
        let t = Timestamp::parse_pg("2024-02-29T23:59:59Z").unwrap();
        assert_eq!(t.to_string(), "2024-02-29T23:59:59.000000Z");
        assert_eq!(Timestamp::parse_pg("2026-13-01 00:00:00"), None);
        assert_eq!(Timestamp::parse_pg("yesterday"), None);
        assert_eq!(Timestamp::from_pg_micros(0).to_string(), "2000-01-01T00:00:00.000000Z");
    }
}
