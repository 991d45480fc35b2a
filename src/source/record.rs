//! `walbust record`: capture live changes (through a temporary pgoutput slot, so the daemon's
//! slot is untouched) or the pending backlog of an existing slot (`--peek`, without consuming
//! it) into walbust's capture format.

use crate::decode::frames::pg_now_micros;
use crate::decode::pgoutput::{parse_message, Message};
use crate::model::{Lsn, Timestamp};
use crate::sample::capture::{CaptureWriter, Header};
use crate::source::conn::{ConnError, ConnectOptions, ReplicationConnection};
use crate::source::slot::{quote_ident, quote_literal, slot_info};
use crate::source::stream::{Progress, RawMessage, Stream, StreamConfig, StreamError, StreamItem};
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
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
    Decode(#[from] crate::decode::pgoutput::DecodeError),
    #[error("pg_logical_slot_peek_binary_changes returned a bytea value that is not hex: {0:.40}")]
    PeekNotHex(String),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("internal error: the recording stream sent {0}")]
    Unexpected(String),
}

/// The database's partitions for the header, so a dry-run of the capture maps them as the
/// daemon does; a server without `pg_partition_ancestors` (before 12) has none to record.
async fn partitions(conn: &mut ReplicationConnection) -> Result<Vec<crate::rules::PartitionOf>, RecordError> {
    match crate::source::schema::partition_map(conn).await {
        Ok(map) => Ok(map),
        Err(e) if e.server().is_some() => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn header(server_version: Option<String>, options: &RecordOptions, source: String, start: Option<Lsn>) -> Header {
    Header {
        created: Timestamp((pg_now_micros() + 946_684_800_000_000).max(0)).to_string(),
        server_version,
        database: options.connect.config.get_dbname().map(str::to_string),
        publication: Some(options.publication.clone()),
        source: Some(source),
        start_lsn: start.map(|l| l.to_string()),
        ..Header::default()
    }
}

#[derive(Default)]
struct Counter {
    summary: RecordSummary,
    in_transaction: bool,
}

impl Counter {
    fn see(&mut self, message: &[u8]) -> Result<(), RecordError> {
        match parse_message(message)? {
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
    let header = Header {
        partitions: partitions(&mut conn).await?,
        ..header(
            conn.parameters.get("server_version").cloned(),
            options,
            format!("peek:{slot}"),
            info.confirmed_flush_lsn,
        )
    };
    let mut writer = CaptureWriter::new(out, &header)?;
    let mut counter = Counter::default();
    for row in &result.rows {
        let lsn = row
            .first()
            .cloned()
            .flatten()
            .and_then(|s| Lsn::parse(&s))
            .unwrap_or_default();
        let data = row.get(1).cloned().flatten().unwrap_or_default();
        let bytes = decode_bytea_hex(&data).ok_or_else(|| RecordError::PeekNotHex(data.clone()))?;
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

/// Status updates while recording (the temporary slot needs no more).
const RECORD_STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// A live recording: the daemon's [`Stream`] from a temporary slot, in raw mode, written
/// message by message; each committed transaction written is acknowledged like an applied one.
async fn live<W: Write>(
    mut conn: ReplicationConnection,
    options: &RecordOptions,
    out: W,
    interrupt: impl Future<Output = ()>,
) -> Result<RecordSummary, RecordError> {
    let slot = format!("walbust_record_{}_{}", std::process::id(), pg_now_micros() % 1_000_000);
    let server_version = conn.parameters.get("server_version").cloned();
    let partitions = partitions(&mut conn).await?;
    conn.close().await;
    let mut config = StreamConfig::new(options.connect.clone(), &slot, &options.publication);
    config.temporary_slot = true;
    config.raw_messages = true;
    config.status_interval = RECORD_STATUS_INTERVAL;
    let progress = Arc::new(Progress::default());
    let mut stream = Stream::start_with(config, progress.clone());
    let mut recording = Recording {
        options,
        out: Some(out),
        writer: None,
        server_version,
        partitions,
        counter: Counter::default(),
        deadline: options.stop.duration.map(|d| Instant::now() + d),
        interrupted: false,
    };
    let result = recording.follow(&mut stream, &progress, interrupt).await;
    // The temporary slot is dropped by the server when the stream's connection closes.
    stream.shutdown().await;
    // What was recorded is written out (and its write errors seen) even when the stream failed.
    let summary = recording.finish(&progress);
    result?;
    summary
}

struct Recording<'a, W: Write> {
    options: &'a RecordOptions,
    /// Until the first message: the header names the temporary slot's start, known only once
    /// the stream created it.
    out: Option<W>,
    writer: Option<CaptureWriter<W>>,
    server_version: Option<String>,
    partitions: Vec<crate::rules::PartitionOf>,
    counter: Counter,
    deadline: Option<Instant>,
    interrupted: bool,
}

impl<W: Write> Recording<'_, W> {
    async fn follow(
        &mut self,
        stream: &mut Stream,
        progress: &Progress,
        interrupt: impl Future<Output = ()>,
    ) -> Result<(), RecordError> {
        tokio::pin!(interrupt);
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        while !self.done(None) {
            tokio::select! {
                _ = &mut interrupt, if !self.interrupted => self.interrupted = true,
                _ = ticker.tick() => {}
                item = stream.recv() => match item {
                    Some(StreamItem::Messages(messages)) => {
                        for message in messages {
                            self.write(&message, progress)?;
                            if self.done(None) {
                                return Ok(());
                            }
                        }
                    }
                    Some(StreamItem::Idle { wal_end }) => {
                        if self.done(Some(wal_end)) {
                            return Ok(());
                        }
                    }
                    // The server ended the stream (CopyDone): the recording ends there.
                    Some(StreamItem::Failed(StreamError::Ended)) => return Ok(()),
                    Some(StreamItem::Failed(e)) => return Err(RecordError::Stream(e)),
                    // A temporary slot's stream ends instead of reconnecting, and raw mode sends
                    // no events.
                    Some(other) => return Err(RecordError::Unexpected(format!("{other:?}"))),
                    None => return Ok(()),
                }
            }
        }
        Ok(())
    }

    /// Whether to stop here: only at a transaction boundary.
    fn done(&self, idle_wal_end: Option<Lsn>) -> bool {
        let c = &self.counter;
        if c.in_transaction {
            return false;
        }
        let stop = &self.options.stop;
        self.interrupted
            || stop.max_changes.is_some_and(|m| c.summary.changes >= m)
            || self.deadline.is_some_and(|d| Instant::now() >= d)
            || stop.until_lsn.is_some_and(|u| {
                c.summary.last_commit_end.is_some_and(|e| e >= u) || idle_wal_end.is_some_and(|w| w >= u)
            })
    }

    fn header(&self, progress: &Progress) -> Header {
        Header {
            partitions: self.partitions.clone(),
            ..header(
                self.server_version.clone(),
                self.options,
                "live".into(),
                progress.temporary_slot_start(),
            )
        }
    }

    fn write(&mut self, message: &RawMessage, progress: &Progress) -> Result<(), RecordError> {
        if self.writer.is_none() {
            if let Some(out) = self.out.take() {
                self.writer = Some(CaptureWriter::new(out, &self.header(progress))?);
            }
        }
        self.counter.see(&message.data)?;
        if let Some(writer) = &mut self.writer {
            writer.message(message.lsn, &message.data)?;
        }
        if !self.counter.in_transaction {
            if let Some(end) = self.counter.summary.last_commit_end {
                progress.mark_applied(end);
            }
        }
        Ok(())
    }

    fn finish(mut self, progress: &Progress) -> Result<RecordSummary, RecordError> {
        let header = self.header(progress);
        let writer = match (self.writer.take(), self.out.take()) {
            (Some(writer), _) => writer,
            (None, Some(out)) => CaptureWriter::new(out, &header)?,
            (None, None) => return Ok(self.counter.summary),
        };
        self.counter.summary.records = writer.records();
        writer.finish()?;
        Ok(self.counter.summary)
    }
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
