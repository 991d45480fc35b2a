//! The memcached target: deletes and version bumps over memcached's meta protocol, on one
//! connection per server.
//!
//! * **Deletes** are pipelined in quiet mode (`md <key> q` … `mn`): the server answers only
//!   what is not a success (`NF`, a key that was not there, is fine) and `MN` at the end, so a
//!   batch of deletes is one round trip whatever its size.
//! * **Version bumps only move forward**: read with the CAS token (`mg <key> v c`), write the
//!   commit LSN when greater or the value plus one (`ms … C<cas>`, or `ME`, add, when missing),
//!   and go again for the keys another writer changed in between. Pipelined: one round trip
//!   for the reads and one for the writes per round. A key still contended after
//!   `MAX_CAS_ROUNDS` moves forward by an atomic increment (`ma`), so no writer starves walbust.
//! * **Tags and patterns** cannot be held (no sets, no scan): `check --config` and the start
//!   refuse rules that use them for a memcached target (`rules::check::target_notes`).
//! * **Keys** that memcached cannot take as text (spaces, control characters, not ASCII) are
//!   sent base64-encoded (the `b` flag), as memcached's own clients do; a key longer than 250
//!   bytes cannot be stored in memcached at all, so there is nothing to delete: it is counted
//!   and logged.
//! * **Gaps**: `flush_all` (memcached keeps no epoch). No watermark: memcached keeps nothing
//!   across a restart, so a restart cannot bring back anything stale.
//!
//! A memcached pool of several servers is configured as one target per server: each gets
//! every delete, so walbust need not know the clients' key distribution.

use super::{Batch, Sink, SinkError, SinkFuture};
use base64::Engine;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// memcached's longest key.
const MAX_KEY_BYTES: usize = 250;
/// Rounds of read-compare-write for version keys other writers keep changing; keys still
/// contended after them move forward by an atomic increment instead.
const MAX_CAS_ROUNDS: usize = 4;
/// Commands per pipelined write, so one round trip stays bounded.
const PIPELINE_KEYS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum MemcachedError {
    #[error("memcached target {target}: cannot connect: {source}; check memcached[].addr and that memcached runs")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("memcached target {target}: {source}")]
    Io {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("memcached target {target}: no answer within {timeout:?} (memcached[].timeout)")]
    Timeout { target: String, timeout: Duration },
    #[error("memcached target {target}: unexpected answer `{line}` to `{command}`")]
    Protocol {
        target: String,
        command: String,
        line: String,
    },
}

impl MemcachedError {
    pub fn kind(&self) -> &'static str {
        match self {
            MemcachedError::Connect { .. } | MemcachedError::Io { .. } => "connection",
            MemcachedError::Timeout { .. } => "timeout",
            MemcachedError::Protocol { .. } => "other",
        }
    }
}

/// One memcached server.
pub struct MemcachedTarget {
    name: String,
    addr: String,
    timeout: Duration,
    conn: Option<BufStream<TcpStream>>,
    round_trips: u64,
    /// Keys too long for memcached, since the last report.
    too_long: u64,
}

/// A key as the meta protocol takes it: as is, or base64 with the `b` flag.
fn wire_key(key: &str) -> Option<(String, &'static str)> {
    if key.len() > MAX_KEY_BYTES {
        return None;
    }
    let plain = !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic());
    if plain {
        Some((key.to_string(), ""))
    } else {
        Some((base64::engine::general_purpose::STANDARD.encode(key), " b"))
    }
}

/// The value a version key moves to: the commit LSN when greater, else one more (a replay or
/// an older commit still moves it, so readers never keep an entry filled before).
fn next_version(current: Option<&[u8]>, lsn: u64) -> u64 {
    let current = current
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match current {
        Some(c) if c >= lsn => c.saturating_add(1),
        _ => lsn.max(1),
    }
}

impl MemcachedTarget {
    /// `addr`: `host:port` (a `memcached://` prefix is accepted).
    pub fn new(addr: &str, timeout: Duration) -> MemcachedTarget {
        let addr = addr
            .trim_start_matches("memcached://")
            .trim_end_matches('/')
            .to_string();
        MemcachedTarget {
            name: format!("memcached {addr}"),
            addr,
            timeout,
            conn: None,
            round_trips: 0,
            too_long: 0,
        }
    }

    async fn connection(&mut self) -> Result<&mut BufStream<TcpStream>, MemcachedError> {
        if self.conn.is_none() {
            let stream = tokio::time::timeout(self.timeout, TcpStream::connect(&self.addr))
                .await
                .map_err(|_| MemcachedError::Timeout {
                    target: self.name.clone(),
                    timeout: self.timeout,
                })?
                .map_err(|source| MemcachedError::Connect {
                    target: self.name.clone(),
                    source,
                })?;
            let _ = stream.set_nodelay(true);
            self.conn = Some(BufStream::new(stream));
        }
        let name = self.name.clone();
        self.conn.as_mut().ok_or_else(|| MemcachedError::Io {
            target: name,
            source: std::io::Error::other("no connection"),
        })
    }

    /// Sends `request` and reads `replies` answers (plus the value line after each `VA`), or
    /// until `MN` when `replies` is `None`. Drops the connection on any failure.
    async fn round_trip(&mut self, request: &[u8], replies: Option<usize>) -> Result<Vec<Reply>, MemcachedError> {
        let timeout = self.timeout;
        let target = self.name.clone();
        let conn = self.connection().await?;
        let exchange = async {
            conn.write_all(request).await?;
            conn.flush().await?;
            let mut out = Vec::new();
            let mut line = String::new();
            loop {
                if replies.is_some_and(|n| out.len() >= n) {
                    return Ok(out);
                }
                line.clear();
                if conn.read_line(&mut line).await? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "memcached closed the connection",
                    ));
                }
                let text = line.trim_end();
                if text == "MN" && replies.is_none() {
                    return Ok(out);
                }
                let mut reply = Reply {
                    line: text.to_string(),
                    value: None,
                };
                if let Some(rest) = text.strip_prefix("VA ") {
                    let size: usize = rest.split(' ').next().and_then(|s| s.parse().ok()).unwrap_or(0);
                    let mut value = vec![0; size + 2];
                    conn.read_exact(&mut value).await?;
                    value.truncate(size);
                    reply.value = Some(value);
                }
                out.push(reply);
            }
        };
        let result = tokio::time::timeout(timeout, exchange).await;
        self.round_trips += 1;
        match result {
            Ok(Ok(replies)) => Ok(replies),
            Ok(Err(source)) => {
                self.conn = None;
                Err(MemcachedError::Io { target, source })
            }
            Err(_) => {
                self.conn = None;
                Err(MemcachedError::Timeout { target, timeout })
            }
        }
    }

    fn protocol(&mut self, command: &str, line: &str) -> MemcachedError {
        self.conn = None;
        MemcachedError::Protocol {
            target: self.name.clone(),
            command: command.to_string(),
            line: line.to_string(),
        }
    }

    /// Deletes `keys`, quietly pipelined.
    pub async fn delete(&mut self, keys: &[&String]) -> Result<(), MemcachedError> {
        for chunk in keys.chunks(PIPELINE_KEYS) {
            let mut request = Vec::with_capacity(chunk.len() * 32);
            for key in chunk {
                match wire_key(key) {
                    Some((key, flag)) => request.extend_from_slice(format!("md {key}{flag} q\r\n").as_bytes()),
                    None => self.too_long += 1,
                }
            }
            request.extend_from_slice(b"mn\r\n");
            for reply in self.round_trip(&request, None).await? {
                // Quiet mode leaves out successes; a key that was not there is as good.
                if reply.line != "NF" && reply.line != "HD" {
                    return Err(self.protocol("md", &reply.line));
                }
            }
        }
        Ok(())
    }

    /// Moves each version key forward to at least its LSN (see [`next_version`]).
    pub async fn bump(&mut self, bumps: &[(&String, u64)]) -> Result<(), MemcachedError> {
        let mut pending: Vec<(String, &'static str, u64)> = Vec::new();
        for (key, lsn) in bumps {
            match wire_key(key) {
                Some((key, flag)) => pending.push((key, flag, *lsn)),
                None => self.too_long += 1,
            }
        }
        for _ in 0..MAX_CAS_ROUNDS {
            if pending.is_empty() {
                return Ok(());
            }
            let mut retry = Vec::new();
            for chunk in pending.chunks(PIPELINE_KEYS) {
                let mut reads = Vec::with_capacity(chunk.len() * 32);
                for (key, flag, _) in chunk {
                    reads.extend_from_slice(format!("mg {key}{flag} v c\r\n").as_bytes());
                }
                let found = self.round_trip(&reads, Some(chunk.len())).await?;
                let mut writes = Vec::with_capacity(chunk.len() * 48);
                for ((key, flag, lsn), reply) in chunk.iter().zip(&found) {
                    let (value, condition) = if reply.line == "EN" {
                        (next_version(None, *lsn), "ME".to_string())
                    } else if let Some(cas) = reply
                        .line
                        .strip_prefix("VA ")
                        .and_then(|r| r.split(' ').find_map(|t| t.strip_prefix('c')).map(str::to_string))
                    {
                        (next_version(reply.value.as_deref(), *lsn), format!("C{cas}"))
                    } else {
                        return Err(self.protocol("mg", &reply.line));
                    };
                    let value = value.to_string();
                    writes.extend_from_slice(
                        format!("ms {key}{flag} {} {condition} T0\r\n{value}\r\n", value.len()).as_bytes(),
                    );
                }
                let written = self.round_trip(&writes, Some(chunk.len())).await?;
                for (entry, reply) in chunk.iter().zip(&written) {
                    match reply.line.as_str() {
                        "HD" => {}
                        // Changed (EX), deleted (NF) or added (NS) by someone else meanwhile.
                        "EX" | "NF" | "NS" => retry.push(entry.clone()),
                        other => return Err(self.protocol("ms", other)),
                    }
                }
            }
            pending = retry;
        }
        if pending.is_empty() {
            return Ok(());
        }
        self.increment_forward(&pending).await
    }

    /// Keys that lost every compare-and-set round to other writers: read once more, then
    /// `ma` (an atomic increment) by what is missing to the LSN (at least 1), creating a
    /// missing key at the LSN. Since the others only move the value forward too, it ends at or
    /// past the LSN, and it always moves: no writer can starve walbust.
    async fn increment_forward(&mut self, pending: &[(String, &'static str, u64)]) -> Result<(), MemcachedError> {
        for chunk in pending.chunks(PIPELINE_KEYS) {
            let mut reads = Vec::with_capacity(chunk.len() * 32);
            for (key, flag, _) in chunk {
                reads.extend_from_slice(format!("mg {key}{flag} v\r\n").as_bytes());
            }
            let found = self.round_trip(&reads, Some(chunk.len())).await?;
            let mut increments = Vec::with_capacity(chunk.len() * 48);
            for ((key, flag, lsn), reply) in chunk.iter().zip(&found) {
                let current = reply
                    .value
                    .as_deref()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let delta = match current {
                    Some(c) if c < *lsn => lsn - c,
                    Some(_) => 1,
                    // Created meanwhile by another writer at any value: adding the LSN passes it.
                    None => (*lsn).max(1),
                };
                increments.extend_from_slice(format!("ma {key}{flag} N0 J{lsn} D{delta}\r\n").as_bytes());
            }
            for reply in self.round_trip(&increments, Some(chunk.len())).await? {
                if reply.line != "HD" {
                    return Err(self.protocol("ma", &reply.line));
                }
            }
        }
        Ok(())
    }

    /// Everything goes (a gap: memcached has no epoch).
    pub async fn flush_all(&mut self) -> Result<(), MemcachedError> {
        let replies = self.round_trip(b"flush_all\r\n", Some(1)).await?;
        match replies.first().map(|r| r.line.as_str()) {
            Some("OK") => Ok(()),
            other => Err(self.protocol("flush_all", other.unwrap_or(""))),
        }
    }

    async fn apply_batch(&mut self, batch: &Batch) -> Result<(), MemcachedError> {
        let actions = batch.merged();
        let deletes: Vec<&String> = actions.delete.iter().collect();
        if !deletes.is_empty() {
            self.delete(&deletes).await?;
        }
        let bumps: Vec<(&String, u64)> = actions.bump.iter().map(|(k, v)| (k, *v)).collect();
        if !bumps.is_empty() {
            self.bump(&bumps).await?;
        }
        if !actions.tags.is_empty() || !actions.delete_matching.is_empty() {
            // Refused at startup; reaching here means rules changed under a running daemon.
            return Err(self.protocol("tags/delete_matching", "not supported by memcached"));
        }
        let too_long = std::mem::take(&mut self.too_long);
        if too_long > 0 {
            tracing::warn!(
                target = %self.name,
                keys = too_long,
                "keys longer than memcached's 250 bytes cannot be stored there, so there was nothing to delete"
            );
        }
        Ok(())
    }
}

/// One answer line, with the value that follows a `VA`.
struct Reply {
    line: String,
    value: Option<Vec<u8>>,
}

impl Sink for MemcachedTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn apply<'a>(&'a mut self, batch: &'a Batch) -> SinkFuture<'a, ()> {
        Box::pin(async move { Ok(self.apply_batch(batch).await?) })
    }

    fn ping(&mut self) -> SinkFuture<'_, ()> {
        Box::pin(async move {
            self.round_trip(b"mn\r\n", None).await?;
            Ok(())
        })
    }

    fn bump_epoch(&mut self) -> SinkFuture<'_, Option<i64>> {
        Box::pin(async move {
            self.flush_all().await?;
            Ok(None)
        })
    }

    fn take_round_trips(&mut self) -> u64 {
        std::mem::take(&mut self.round_trips)
    }
}

impl From<MemcachedError> for SinkError {
    fn from(e: MemcachedError) -> SinkError {
        SinkError::Memcached(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_only_move_forward() {
        assert_eq!(next_version(None, 100), 100);
        assert_eq!(next_version(Some(b"50"), 100), 100);
        assert_eq!(next_version(Some(b"100"), 100), 101, "a replay still moves it");
        assert_eq!(next_version(Some(b"900"), 100), 901, "never back");
        assert_eq!(next_version(Some(b"junk"), 100), 100);
        assert_eq!(next_version(None, 0), 1);
    }

    #[test]
    fn keys_memcached_cannot_take_as_text_go_base64() {
        assert_eq!(wire_key("shop:product:1"), Some(("shop:product:1".into(), "")));
        let (encoded, flag) = wire_key("a key\n").unwrap();
        assert_eq!(flag, " b");
        assert_eq!(
            base64::engine::general_purpose::STANDARD.decode(encoded).unwrap(),
            b"a key\n"
        );
        assert_eq!(wire_key(&"x".repeat(251)), None);
        assert!(wire_key("ü").unwrap().1 == " b");
    }
}
