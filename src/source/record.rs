//! `walbust record`: capture live changes (through a temporary pgoutput slot, so the daemon's
//! slot is untouched) or the pending backlog of an existing slot (`--peek`, without consuming
//! it) into walbust's capture format.

use crate::decode::frames::{parse_server_frame, pg_now_micros, standby_status_update, ServerFrame};
use crate::decode::pgoutput::{parse_message, Message};
use crate::model::{Lsn, Timestamp};
use crate::sample::capture::{CaptureWriter, Header};
use crate::source::conn::{ConnError, ConnectOptions, ReplicationConnection};
use crate::source::slot::{create_slot, quote_ident, quote_literal, slot_info};
use std::future::Future;
use std::io::Write;
use std::time::{Duration, Instant};

/// When to stop a live recording; all at a transaction boundary. None set: until interrupted.
#[derive(Clone, Debug, Default)]
pub struct StopAt {
    pub max_changes: Option<u64>,
    pub duration: Option<Duration>,
    pub until_lsn: Option<Lsn>,
}

#[derive(Clone, Debug)]
pub struct RecordOptions {
    pub connect: ConnectOptions,
    pub publication: String,
    pub stop: StopAt,
    /// Record the backlog of this existing slot without consuming it.
    pub peek: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordSummary {
    pub transactions: u64,
    pub changes: u64,
    pub records: u64,
    pub last_commit_end: Option<Lsn>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("cannot write the capture: {0}")]
    Write(#[from] std::io::Error),
    #[error("publication `{0}` does not exist; create it first (`CREATE PUBLICATION … FOR TABLE …`)")]
    PublicationMissing(String),
    #[error("slot `{0}` does not exist; --peek needs an existing pgoutput slot")]
    SlotMissing(String),
    #[error("slot `{slot}` uses plugin `{plugin}`, not pgoutput; --peek can only record pgoutput slots")]
    WrongPlugin { slot: String, plugin: String },
    #[error("the server sent something walbust cannot decode: {0}")]
    Decode(String),
}

fn header(conn: &ReplicationConnection, options: &RecordOptions, source: String, start: Option<Lsn>) -> Header {
    Header {
        created: Timestamp((pg_now_micros() + 946_684_800_000_000).max(0)).to_string(),
        server_version: conn.parameters.get("server_version").cloned(),
        database: options.connect.config.get_dbname().map(str::to_string),
        publication: Some(options.publication.clone()),
        source: Some(source),
        start_lsn: start.map(|l| l.to_string()),
        ..Header::default()
    }
}

struct Counter {
    summary: RecordSummary,
    in_transaction: bool,
}

impl Counter {
    fn see(&mut self, message: &[u8]) -> Result<(), RecordError> {
        match parse_message(message).map_err(|e| RecordError::Decode(e.to_string()))? {
            Message::Begin { .. } => self.in_transaction = true,
            Message::Commit { end_lsn, .. } => {
                self.in_transaction = false;
                self.summary.transactions += 1;
                self.summary.last_commit_end = Some(end_lsn);
            }
            Message::Insert { .. } | Message::Update { .. } | Message::Delete { .. } | Message::Truncate { .. } => {
                self.summary.changes += 1
            }
            _ => {}
        }
        Ok(())
    }
}

async fn check_publication(conn: &mut ReplicationConnection, publication: &str) -> Result<(), RecordError> {
    let found = conn
        .simple_query(&format!(
            "SELECT 1 AS found FROM pg_catalog.pg_publication WHERE pubname = {}",
            quote_literal(publication)
        ))
        .await?;
    if found.rows.is_empty() {
        return Err(RecordError::PublicationMissing(publication.to_string()));
    }
    Ok(())
}

/// Records into `out`. `interrupt` ends a live recording at the next transaction boundary.
pub async fn record<W: Write>(
    options: &RecordOptions,
    out: W,
    interrupt: impl Future<Output = ()>,
) -> Result<RecordSummary, RecordError> {
    let mut conn = ReplicationConnection::connect(&options.connect).await?;
    check_publication(&mut conn, &options.publication).await?;
    match &options.peek {
        Some(slot) => peek(conn, options, slot, out).await,
        None => live(conn, options, out, interrupt).await,
    }
}

async fn peek<W: Write>(
    mut conn: ReplicationConnection,
    options: &RecordOptions,
    slot: &str,
    out: W,
) -> Result<RecordSummary, RecordError> {
    let info = slot_info(&mut conn, slot)
        .await?
        .ok_or_else(|| RecordError::SlotMissing(slot.to_string()))?;
    if info.plugin != "pgoutput" {
        return Err(RecordError::WrongPlugin {
            slot: slot.to_string(),
            plugin: info.plugin,
        });
    }
    let limit = options
        .stop
        .max_changes
        .map(|n| n.to_string())
        .unwrap_or_else(|| "NULL".into());
    let upto = options
        .stop
        .until_lsn
        .map(|l| format!("'{l}'::pg_lsn"))
        .unwrap_or_else(|| "NULL".into());
    let result = conn
        .simple_query(&format!(
            "SELECT lsn::text AS lsn, data FROM pg_logical_slot_peek_binary_changes({}, {upto}, {limit}, 'proto_version', '1', 'publication_names', {})",
            quote_literal(slot),
            quote_literal(&quote_ident(&options.publication))
        ))
        .await?;
    let mut writer = CaptureWriter::new(
        out,
        &header(&conn, options, format!("peek:{slot}"), info.confirmed_flush_lsn),
    )?;
    let mut counter = Counter {
        summary: RecordSummary::default(),
        in_transaction: false,
    };
    for row in &result.rows {
        let lsn = row
            .first()
            .cloned()
            .flatten()
            .and_then(|s| Lsn::parse(&s))
            .unwrap_or_default();
        let data = row.get(1).cloned().flatten().unwrap_or_default();
        let bytes = decode_bytea_hex(&data)
            .ok_or_else(|| RecordError::Decode(format!("bytea value is not hex: {data:.40}")))?;
        counter.see(&bytes)?;
        writer.message(lsn, &bytes)?;
    }
    counter.summary.records = writer.records();
    writer.finish()?;
    conn.close().await;
    Ok(counter.summary)
}

/// `\x0a1b…` (PostgreSQL's hex bytea output) to bytes.
pub fn decode_bytea_hex(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    hex.chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

async fn live<W: Write>(
    mut conn: ReplicationConnection,
    options: &RecordOptions,
    out: W,
    interrupt: impl Future<Output = ()>,
) -> Result<RecordSummary, RecordError> {
    let slot = format!("walbust_record_{}_{}", std::process::id(), pg_now_micros() % 1_000_000);
    let start = create_slot(&mut conn, &slot, true).await?;
    conn.start_copy_both(&format!(
        "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names {})",
        quote_ident(&slot),
        quote_literal(&quote_ident(&options.publication))
    ))
    .await?;
    let mut writer = CaptureWriter::new(out, &header(&conn, options, "live".into(), Some(start)))?;
    let mut counter = Counter {
        summary: RecordSummary::default(),
        in_transaction: false,
    };
    let started = Instant::now();
    let deadline = options.stop.duration.map(|d| started + d);
    let mut interrupted = false;
    let mut acked = start;
    tokio::pin!(interrupt);
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        let done = |c: &Counter, interrupted: bool, wal_end: Option<Lsn>| {
            if c.in_transaction {
                return false;
            }
            interrupted
                || options.stop.max_changes.is_some_and(|m| c.summary.changes >= m)
                || deadline.is_some_and(|d| Instant::now() >= d)
                || options.stop.until_lsn.is_some_and(|u| {
                    c.summary.last_commit_end.is_some_and(|e| e >= u) || wal_end.is_some_and(|w| w >= u)
                })
        };
        if done(&counter, interrupted, None) {
            break;
        }
        let sleep_until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = &mut interrupt, if !interrupted => interrupted = true,
            _ = tokio::time::sleep_until(sleep_until.into()) => {}
            _ = ticker.tick() => {
                conn.send_copy_data(&standby_status_update(acked, pg_now_micros(), false)).await?;
            }
            data = conn.recv_copy_data() => {
                let Some(data) = data? else { break };
                match parse_server_frame(&data).map_err(|e| RecordError::Decode(e.to_string()))? {
                    ServerFrame::XLogData { start, data, .. } => {
                        counter.see(data)?;
                        writer.message(start, data)?;
                        if !counter.in_transaction {
                            if let Some(end) = counter.summary.last_commit_end {
                                acked = acked.max(end);
                            }
                        }
                    }
                    ServerFrame::Keepalive { wal_end, reply_requested, .. } => {
                        if !counter.in_transaction {
                            acked = acked.max(wal_end);
                        }
                        if reply_requested {
                            conn.send_copy_data(&standby_status_update(acked, pg_now_micros(), false)).await?;
                        }
                        if done(&counter, interrupted, Some(wal_end)) {
                            break;
                        }
                    }
                }
            }
        }
    }
    counter.summary.records = writer.records();
    writer.finish()?;
    // The temporary slot is dropped by the server when this connection closes.
    conn.close().await;
    Ok(counter.summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytea_hex() {
        assert_eq!(decode_bytea_hex("\\x00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_bytea_hex("\\x0"), None);
        assert_eq!(decode_bytea_hex("00"), None);
        assert_eq!(decode_bytea_hex("\\xzz"), None);
    }
}
