//! The invalidation feed's entry format: what walbust appends to a Redis Stream (`XADD`) after
//! each applied batch, and what [`crate::LocalCache`] reads back. Both sides use this module, so
//! the format has one definition (docs/redis-protocol.md describes it for other languages).
//!
//! An entry carries the Redis keys a batch of committed transactions invalidated, as JSON
//! arrays of strings in separate fields:
//!
//! | field | what |
//! |---|---|
//! | `lsn` | end of the last committed transaction the entry covers (`0/1A2B3C`); absent for a part of a large transaction still in progress |
//! | `d` | deleted keys |
//! | `v` | version keys bumped |
//! | `t` | tag set keys whose members were deleted (`<prefix><tag_prefix><tag>`) |
//! | `m` | `delete_matching` patterns (a follower cannot match them: it flushes) |
//! | `flush` | everything is invalid (the epoch moved: a gap); the value says why |
//!
//! A batch with more keys than [`MAX_KEYS_PER_ENTRY`] is split over several entries.

/// The stream key when a target names none.
pub const DEFAULT_FEED_STREAM: &str = "walbust:feed";
/// Entries kept (approximately: `XADD … MAXLEN ~`).
pub const DEFAULT_FEED_MAXLEN: u64 = 100_000;
/// Keys per entry at most, so one entry stays small for followers.
pub const MAX_KEYS_PER_ENTRY: usize = 1_000;

pub const FIELD_LSN: &str = "lsn";
pub const FIELD_DELETE: &str = "d";
pub const FIELD_VERSIONS: &str = "v";
pub const FIELD_TAGS: &str = "t";
pub const FIELD_PATTERNS: &str = "m";
pub const FIELD_FLUSH: &str = "flush";

/// One feed entry, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedEntry {
    pub lsn: Option<String>,
    pub delete: Vec<String>,
    pub versions: Vec<String>,
    pub tags: Vec<String>,
    pub patterns: Vec<String>,
    pub flush: Option<String>,
}

/// An entry that cannot be read: the follower flushes (coarser, never narrower).
#[derive(Debug, thiserror::Error)]
#[error("feed entry field `{field}` is not a JSON array of strings: {source}")]
pub struct FeedFormatError {
    pub field: String,
    #[source]
    pub source: serde_json::Error,
}

impl FeedEntry {
    /// An entry that invalidates everything.
    pub fn flush(reason: &str) -> FeedEntry {
        FeedEntry {
            flush: Some(reason.to_string()),
            ..FeedEntry::default()
        }
    }

    /// Keys of every kind in the entry.
    pub fn len(&self) -> usize {
        self.delete.len() + self.versions.len() + self.tags.len() + self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.flush.is_none()
    }

    /// The `field value …` pairs of `XADD` (empty arrays left out).
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = Vec::with_capacity(4);
        if let Some(lsn) = &self.lsn {
            fields.push((FIELD_LSN, lsn.clone()));
        }
        for (name, keys) in [
            (FIELD_DELETE, &self.delete),
            (FIELD_VERSIONS, &self.versions),
            (FIELD_TAGS, &self.tags),
            (FIELD_PATTERNS, &self.patterns),
        ] {
            if !keys.is_empty() {
                // Serializing strings cannot fail.
                fields.push((name, serde_json::to_string(keys).unwrap_or_default()));
            }
        }
        if let Some(reason) = &self.flush {
            fields.push((FIELD_FLUSH, reason.clone()));
        }
        fields
    }

    /// Reads an entry's fields as `XREAD` returns them. Unknown fields are skipped (a newer
    /// walbust may add some); a known field that does not parse is an error.
    pub fn from_fields<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<FeedEntry, FeedFormatError> {
        let mut entry = FeedEntry::default();
        for (name, value) in fields {
            let keys = match name {
                FIELD_LSN => {
                    entry.lsn = Some(String::from_utf8_lossy(value).into_owned());
                    continue;
                }
                FIELD_FLUSH => {
                    entry.flush = Some(String::from_utf8_lossy(value).into_owned());
                    continue;
                }
                FIELD_DELETE => &mut entry.delete,
                FIELD_VERSIONS => &mut entry.versions,
                FIELD_TAGS => &mut entry.tags,
                FIELD_PATTERNS => &mut entry.patterns,
                _ => continue,
            };
            *keys = serde_json::from_slice(value).map_err(|source| FeedFormatError {
                field: name.to_string(),
                source,
            })?;
        }
        Ok(entry)
    }
}

/// Splits a batch's keys into entries of at most `max_keys` keys; the position goes on the
/// last entry only (the batch is complete once it is written).
pub fn entries<'a>(
    lsn: Option<String>,
    delete: impl Iterator<Item = &'a String>,
    versions: impl Iterator<Item = &'a String>,
    tags: impl Iterator<Item = &'a String>,
    patterns: impl Iterator<Item = &'a String>,
    max_keys: usize,
) -> Vec<FeedEntry> {
    let max_keys = max_keys.max(1);
    let mut out = vec![FeedEntry::default()];
    fn add<'k>(
        out: &mut Vec<FeedEntry>,
        max_keys: usize,
        keys: impl Iterator<Item = &'k String>,
        pick: fn(&mut FeedEntry) -> &mut Vec<String>,
    ) {
        for key in keys {
            if out.last().is_none_or(|e| e.len() >= max_keys) {
                out.push(FeedEntry::default());
            }
            if let Some(entry) = out.last_mut() {
                pick(entry).push(key.clone());
            }
        }
    }
    add(&mut out, max_keys, delete, |e| &mut e.delete);
    add(&mut out, max_keys, versions, |e| &mut e.versions);
    add(&mut out, max_keys, tags, |e| &mut e.tags);
    add(&mut out, max_keys, patterns, |e| &mut e.patterns);
    if let Some(last) = out.last_mut() {
        last.lsn = lsn;
    }
    out.retain(|e| !e.is_empty() || e.lsn.is_some());
    out
}

/// A stream entry ID (`<ms>-<seq>`), ordered as Redis orders them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// `1700000000000-3`; `None` for anything else.
    pub fn parse(text: &str) -> Option<StreamId> {
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let entry = FeedEntry {
            lsn: Some("0/16B3748".into()),
            delete: vec!["shop:product:1".into(), "odd \"key\"\n".into()],
            versions: vec!["shop:ver:product:1".into()],
            tags: vec![],
            patterns: vec!["shop:search:*".into()],
            flush: None,
        };
        let fields = entry.fields();
        assert!(
            fields.iter().all(|(name, _)| *name != FIELD_TAGS),
            "empty arrays are left out"
        );
        let decoded = FeedEntry::from_fields(fields.iter().map(|(n, v)| (*n, v.as_bytes()))).unwrap();
        assert_eq!(decoded, entry);
    }

    #[test]
    fn a_field_that_does_not_parse_is_an_error_and_unknown_fields_are_skipped() {
        let err = FeedEntry::from_fields([(FIELD_DELETE, &b"not json"[..])]).unwrap_err();
        assert!(err.to_string().contains("`d`"), "{err}");
        let entry = FeedEntry::from_fields([("future", &b"x"[..]), (FIELD_FLUSH, &b"epoch"[..])]).unwrap();
        assert_eq!(entry, FeedEntry::flush("epoch"));
    }

    #[test]
    fn large_batches_split_and_the_position_goes_last() {
        let delete: Vec<String> = (0..2_500).map(|i| format!("k{i}")).collect();
        let versions = vec!["v1".to_string()];
        let none: Vec<String> = Vec::new();
        let out = entries(
            Some("0/10".into()),
            delete.iter(),
            versions.iter(),
            none.iter(),
            none.iter(),
            1_000,
        );
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|e| e.len() <= 1_000));
        assert_eq!(out.iter().map(FeedEntry::len).sum::<usize>(), 2_501);
        assert!(out[..2].iter().all(|e| e.lsn.is_none()));
        assert_eq!(out[2].lsn.as_deref(), Some("0/10"));
        assert_eq!(out[2].versions, versions);
    }

    #[test]
    fn stream_ids_order_numerically() {
        let a = StreamId::parse("9-5").unwrap();
        let b = StreamId::parse("10-0").unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "10-0");
        assert_eq!(StreamId::parse("10"), None);
        assert_eq!(StreamId::parse("x-1"), None);
    }
}
