//! The logical replication stream: slot checks, START_REPLICATION, decoding, acknowledgement
//! and reconnection, run as a background task that hands events to the consumer.
//!
//! ```text
//!   walsender ──CopyData──▶ stream task ──(bounded channel: batches of events)──▶ consumer
//!       ▲                       │  decode pgoutput, keepalives, status updates        │
//!       └──── status update ◀───┴──────────── applied(lsn) (shared atomic) ◀──────────┘
//! ```
//!
//! # Acknowledgement semantics
//!
//! * The stream yields whole committed transactions (pgoutput protocol 1 sends a transaction
//!   only after it committed): `Begin`, changes, `Commit` — in commit order.
//! * The consumer calls [`Stream::applied`] with a Commit's `end_lsn` once every target has
//!   applied everything up to it. Status updates carry write = flush = apply = the highest
//!   applied position, never more; positions only move forward.
//! * The task replies to keepalives that request it, and sends a status update at least every
//!   `status_interval` (default 10 s), also while the consumer is not taking events
//!   (backpressure: the task stops reading WAL but keeps the connection alive) — with the old
//!   position, so `wal_sender_timeout` never fires.
//! * When nothing is in flight (every forwarded transaction is applied and none is open), the
//!   task acknowledges the keepalive's / XLogData's `wal_end`, so an idle publication or writes
//!   in other databases do not make the slot retain WAL forever.
//! * After a reconnect the server resumes from the slot's confirmed position: the consumer gets
//!   [`StreamItem::Reconnected`] (drop any partial transaction) and then every transaction after
//!   the confirmed position again — at-least-once, none skipped.
//! * Transient errors (connection reset, server restart, walsender terminated, slot active for
//!   another PID) reconnect with exponential backoff and jitter; definite ones (missing slot or
//!   publication, wrong plugin, lost slot, authentication) end the stream with a clear error.

use super::conn::{ConnError, ConnectOptions, ReplicationConnection};
use super::frames::{parse_server_frame, pg_now_micros, standby_status_update, ServerFrame};
use super::pgoutput::{DecodeError, Decoder};
use crate::model::{Event, Lsn};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Stream settings.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub connect: ConnectOptions,
    pub slot: String,
    pub publication: String,
    /// Create the publication (for all tables of `tables`) and the slot when missing.
    pub create_slot: bool,
    pub status_interval: Duration,
    /// Events per batch handed to the consumer.
    pub batch_events: usize,
    /// Batches buffered between the task and the consumer (bounds memory).
    pub channel_batches: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl StreamConfig {
    pub fn new(connect: ConnectOptions, slot: &str, publication: &str) -> StreamConfig {
        StreamConfig {
            connect,
            slot: slot.to_string(),
            publication: publication.to_string(),
            create_slot: false,
            status_interval: Duration::from_secs(10),
            batch_events: 1024,
            channel_batches: 16,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Why the stream stopped or had to reconnect.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("replication slot `{0}` does not exist; create it with `walbust setup` (or set create_slot), after the publication")]
    SlotMissing(String),
    #[error("replication slot `{slot}` uses plugin `{plugin}`; walbust needs a pgoutput slot: drop it or choose another slot name")]
    WrongPlugin { slot: String, plugin: String },
    #[error("replication slot `{slot}` belongs to database `{database}`, not `{connected}`; connect to `{database}` or use another slot")]
    WrongDatabase {
        slot: String,
        database: String,
        connected: String,
    },
    #[error("replication slot `{0}` is lost (wal_status = lost): the WAL it needed was removed, so changes since its position are unknown; drop and recreate the slot, and invalidate the whole cache (walbust's on_gap = \"bump_epoch\" does that)")]
    SlotLost(String),
    #[error("replication slot `{slot}` is active for PID {pid}: another walbust (or client) holds it; will retry until it is released")]
    SlotActive { slot: String, pid: String },
    #[error("publication `{0}` does not exist; create it (before the slot) with `walbust setup` or `CREATE PUBLICATION … FOR TABLE …`")]
    PublicationMissing(String),
    #[error("the server runs with wal_level = {0}; logical replication needs `ALTER SYSTEM SET wal_level = logical` and a restart")]
    WalLevel(String),
    #[error("the rules name tables that do not exist in this database: {}; create them (apply your migrations) or fix the rules' `table` fields", .0.join(", "))]
    TablesMissing(Vec<String>),
    #[error("cannot decode the replication stream at {lsn}: {source}")]
    Decode { lsn: Lsn, source: DecodeError },
    #[error("the server ended the replication stream")]
    Ended,
}

impl StreamError {
    pub fn is_transient(&self) -> bool {
        match self {
            StreamError::Conn(e) => e.is_transient(),
            StreamError::SlotActive { .. } | StreamError::Ended => true,
            _ => false,
        }
    }
}

/// What the consumer receives.
#[derive(Debug)]
pub enum StreamItem {
    /// Decoded events, in order.
    Events(Vec<Event>),
    /// The connection was lost and re-established: discard any partial transaction; everything
    /// after the last acknowledged position is sent again.
    Reconnected { error: String },
    /// The stream stopped for good.
    Failed(StreamError),
}

/// Shared progress between the consumer and the stream task.
#[derive(Debug, Default)]
pub struct Progress {
    applied: AtomicU64,
    /// The last position reported to the server.
    reported: AtomicU64,
    reconnects: AtomicU64,
    /// The server's WAL end as last seen (keepalive or XLogData).
    server_wal_end: AtomicU64,
    connected: std::sync::atomic::AtomicBool,
}

impl Progress {
    /// Reports that everything up to `lsn` is applied (same as [`Stream::applied`]).
    pub fn mark_applied(&self, lsn: Lsn) {
        self.applied.fetch_max(lsn.0, Ordering::AcqRel);
    }
    pub fn applied(&self) -> Lsn {
        Lsn(self.applied.load(Ordering::Acquire))
    }
    pub fn reported(&self) -> Lsn {
        Lsn(self.reported.load(Ordering::Acquire))
    }
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
    pub fn server_wal_end(&self) -> Lsn {
        Lsn(self.server_wal_end.load(Ordering::Acquire))
    }
    /// True while streaming (after START_REPLICATION succeeded, until the connection ends).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// A running replication stream.
pub struct Stream {
    rx: mpsc::Receiver<StreamItem>,
    progress: Arc<Progress>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    /// Starts the background task; it connects (and reconnects) by itself.
    pub fn start(config: StreamConfig) -> Stream {
        let (tx, rx) = mpsc::channel(config.channel_batches.max(1));
        let progress = Arc::new(Progress::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(run(config, tx, progress.clone(), shutdown_rx));
        Stream {
            rx,
            progress,
            shutdown,
            task,
        }
    }

    pub async fn recv(&mut self) -> Option<StreamItem> {
        self.rx.recv().await
    }

    /// Reports that everything up to `lsn` (a Commit's `end_lsn`) is applied. Never moves back.
    pub fn applied(&self, lsn: Lsn) {
        self.progress.applied.fetch_max(lsn.0, Ordering::AcqRel);
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Stops reading, sends a final status update with the applied position, closes.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        drop(self.rx);
        let _ = self.task.await;
    }
}

struct Backoff {
    current: Duration,
    initial: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Backoff {
            current: initial,
            initial,
            max,
            seed,
        }
    }
    fn reset(&mut self) {
        self.current = self.initial;
    }
    /// Full jitter: a random delay in [current/2, current], then double.
    fn next(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let base = self.current.as_millis() as u64;
        let jitter = if base > 1 { self.seed % (base / 2 + 1) } else { 0 };
        let delay = Duration::from_millis(base / 2 + jitter);
        self.current = (self.current * 2).min(self.max);
        delay
    }
}

async fn run(
    config: StreamConfig,
    tx: mpsc::Sender<StreamItem>,
    progress: Arc<Progress>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    let mut streamed = false;
    loop {
        let mut session = Session::new(&config, &tx, &progress);
        // `create_slot` applies to the first connection only: once this process has streamed
        // from the slot, a missing slot means its history has a gap (dropped, lost, or a failover
        // to a server that never had it) — reported, for `on_gap` to decide, never silently
        // recreated.
        session.may_create_slot = !streamed;
        let result = session.run(&mut shutdown, &mut backoff).await;
        streamed |= session.started;
        progress.connected.store(false, Ordering::Release);
        match result {
            Ok(()) => return,
            Err(e) if e.is_transient() && !*shutdown.borrow() => {
                tracing::warn!(error = %e, "replication connection lost; reconnecting");
                progress.reconnects.fetch_add(1, Ordering::Relaxed);
                if session.started && tx.send(StreamItem::Reconnected { error: e.to_string() }).await.is_err() {
                    return;
                }
                let delay = backoff.next();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Err(e) => {
                if !*shutdown.borrow() {
                    tracing::error!(error = %e, "replication stream stopped");
                    let _ = tx.send(StreamItem::Failed(e)).await;
                }
                return;
            }
        }
    }
}

struct Session<'a> {
    config: &'a StreamConfig,
    tx: &'a mpsc::Sender<StreamItem>,
    progress: &'a Progress,
    decoder: Decoder,
    /// End LSN of the last Commit handed to the consumer.
    forwarded_end: Lsn,
    in_transaction: bool,
    /// Latest server WAL end seen (keepalive or XLogData).
    server_wal_end: Lsn,
    /// The position last sent to the server.
    reported: Lsn,
    last_status: Instant,
    started: bool,
    may_create_slot: bool,
}

impl<'a> Session<'a> {
    fn new(config: &'a StreamConfig, tx: &'a mpsc::Sender<StreamItem>, progress: &'a Progress) -> Session<'a> {
        Session {
            config,
            tx,
            progress,
            decoder: Decoder::new(),
            forwarded_end: Lsn(0),
            in_transaction: false,
            server_wal_end: Lsn(0),
            reported: progress.reported(),
            last_status: Instant::now(),
            started: false,
            may_create_slot: true,
        }
    }

    /// The position to report: applied, or the server's WAL end when nothing is in flight.
    fn ack_position(&self) -> Lsn {
        ack_position(
            self.progress.applied(),
            self.forwarded_end,
            self.in_transaction,
            self.server_wal_end,
            self.reported,
        )
    }

    async fn send_status(&mut self, conn: &mut ReplicationConnection, reply: bool) -> Result<(), StreamError> {
        let position = self.ack_position();
        conn.send_copy_data(&standby_status_update(position, pg_now_micros(), reply))
            .await?;
        self.reported = position;
        self.progress.reported.fetch_max(position.0, Ordering::AcqRel);
        self.last_status = Instant::now();
        Ok(())
    }

    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>, backoff: &mut Backoff) -> Result<(), StreamError> {
        let mut conn = ReplicationConnection::connect(&self.config.connect).await?;
        preflight(&mut conn, self.config, self.may_create_slot).await?;
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '1', publication_names {})",
            quote_ident(&self.config.slot),
            quote_literal(&quote_ident(&self.config.publication))
        );
        conn.start_copy_both(&command)
            .await
            .map_err(|e| classify(e, self.config))?;
        self.started = true;
        self.progress.connected.store(true, Ordering::Release);
        backoff.reset();
        tracing::info!(slot = %self.config.slot, publication = %self.config.publication, target = conn.target(), "replication started");
        let mut batch: Vec<Event> = Vec::with_capacity(self.config.batch_events);
        let mut status_timer = tokio::time::interval(self.config.status_interval);
        status_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Report newly applied positions promptly (at most every 100 ms), so the slot releases
        // WAL and `confirmed_flush_lsn` follows the applier closely.
        let mut ack_timer = tokio::time::interval(Duration::from_millis(100));
        ack_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if !batch.is_empty() && (batch.len() >= self.config.batch_events || !conn.has_buffered_message()) {
                let events = std::mem::replace(&mut batch, Vec::with_capacity(self.config.batch_events));
                self.deliver(&mut conn, events, shutdown, &mut status_timer).await?;
                if *shutdown.borrow() {
                    return self.finish(conn).await;
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => return self.finish(conn).await,
                _ = status_timer.tick() => {
                    self.send_status(&mut conn, false).await?;
                }
                _ = ack_timer.tick() => {
                    if self.ack_position() > self.reported {
                        self.send_status(&mut conn, false).await?;
                    }
                }
                data = conn.recv_copy_data() => {
                    let Some(data) = data.map_err(|e| classify(e, self.config))? else {
                        return Err(StreamError::Ended);
                    };
                    match parse_server_frame(&data).map_err(|source| StreamError::Decode { lsn: self.server_wal_end, source })? {
                        ServerFrame::XLogData { start, wal_end, data, .. } => {
                            self.server_wal_end = self.server_wal_end.max(wal_end);
                            self.progress.server_wal_end.fetch_max(wal_end.0, Ordering::AcqRel);
                            let event = self
                                .decoder
                                .decode(data)
                                .map_err(|source| StreamError::Decode { lsn: start, source })?;
                            if let Some(event) = event {
                                match &event {
                                    Event::Begin { .. } => self.in_transaction = true,
                                    Event::Commit(info) => {
                                        self.in_transaction = false;
                                        if let Some(end) = info.end_lsn {
                                            self.forwarded_end = self.forwarded_end.max(end);
                                        }
                                    }
                                    _ => {}
                                }
                                batch.push(event);
                            }
                        }
                        ServerFrame::Keepalive { wal_end, reply_requested, .. } => {
                            self.server_wal_end = self.server_wal_end.max(wal_end);
                            self.progress.server_wal_end.fetch_max(wal_end.0, Ordering::AcqRel);
                            let idle_advance = self.ack_position() > self.reported;
                            if reply_requested || idle_advance || self.last_status.elapsed() >= self.config.status_interval {
                                self.send_status(&mut conn, false).await?;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Hands a batch to the consumer; while it is busy (channel full), keep the connection
    /// alive with status updates and stop reading WAL.
    async fn deliver(
        &mut self,
        conn: &mut ReplicationConnection,
        events: Vec<Event>,
        shutdown: &mut watch::Receiver<bool>,
        status_timer: &mut tokio::time::Interval,
    ) -> Result<(), StreamError> {
        let mut events = Some(events);
        loop {
            tokio::select! {
                biased;
                permit = self.tx.reserve() => {
                    match permit {
                        Ok(permit) => {
                            permit.send(StreamItem::Events(events.take().unwrap_or_default()));
                            return Ok(());
                        }
                        Err(_) => {
                            // The consumer is gone: stop.
                            return Ok(());
                        }
                    }
                }
                _ = shutdown.changed() => return Ok(()),
                _ = status_timer.tick() => self.send_status(conn, false).await?,
            }
        }
    }

    async fn finish(&mut self, mut conn: ReplicationConnection) -> Result<(), StreamError> {
        let _ = self.send_status(&mut conn, false).await;
        conn.close().await;
        Ok(())
    }
}

/// The acknowledgement decision, pure so it can be table-tested:
/// report what is applied; when nothing is in flight, report the server's WAL end instead;
/// never go backwards.
pub fn ack_position(applied: Lsn, forwarded_end: Lsn, in_transaction: bool, server_wal_end: Lsn, reported: Lsn) -> Lsn {
    let idle = !in_transaction && applied >= forwarded_end;
    let position = if idle { applied.max(server_wal_end) } else { applied };
    position.max(reported)
}

/// Maps server errors from START_REPLICATION to the distinct errors operators need.
fn classify(e: ConnError, config: &StreamConfig) -> StreamError {
    if let Some(server) = e.server() {
        let m = &server.message;
        if server.code == "55006" || m.contains("is active for PID") {
            let pid = m.rsplit(' ').next().unwrap_or("?").to_string();
            return StreamError::SlotActive {
                slot: config.slot.clone(),
                pid,
            };
        }
        if server.code == "42704" && m.contains("replication slot") {
            return StreamError::SlotMissing(config.slot.clone());
        }
        if server.code == "42704" && m.contains("publication") {
            return StreamError::PublicationMissing(config.publication.clone());
        }
        if m.contains("can no longer get changes") || m.contains("has been invalidated") {
            return StreamError::SlotLost(config.slot.clone());
        }
        if m.contains("wal_level") {
            return StreamError::WalLevel("not logical".into());
        }
    }
    StreamError::Conn(e)
}

/// Checks the server and slot before streaming; creates publication and slot when asked.
async fn preflight(
    conn: &mut ReplicationConnection,
    config: &StreamConfig,
    may_create_slot: bool,
) -> Result<(), StreamError> {
    let wal_level = conn.simple_query("SHOW wal_level").await?;
    let level = wal_level.first("wal_level").unwrap_or("").to_string();
    if level != "logical" {
        return Err(StreamError::WalLevel(level));
    }
    let publication = conn
        .simple_query(&format!(
            "SELECT 1 AS found FROM pg_catalog.pg_publication WHERE pubname = {}",
            quote_literal(&config.publication)
        ))
        .await?;
    if publication.rows.is_empty() {
        return Err(StreamError::PublicationMissing(config.publication.clone()));
    }
    let slot = slot_info(conn, &config.slot).await?;
    let slot = match slot {
        Some(s) => s,
        None if config.create_slot && may_create_slot => {
            create_slot(conn, &config.slot, false).await?;
            slot_info(conn, &config.slot)
                .await?
                .ok_or_else(|| StreamError::SlotMissing(config.slot.clone()))?
        }
        None => return Err(StreamError::SlotMissing(config.slot.clone())),
    };
    if slot.plugin != "pgoutput" {
        return Err(StreamError::WrongPlugin {
            slot: config.slot.clone(),
            plugin: slot.plugin,
        });
    }
    let connected = conn.parameters.get("database").cloned();
    let current_db = conn.simple_query("SELECT current_database() AS db").await?;
    let current = current_db.first("db").unwrap_or("").to_string();
    if slot.database != current {
        return Err(StreamError::WrongDatabase {
            slot: config.slot.clone(),
            database: slot.database,
            connected: connected.unwrap_or(current),
        });
    }
    if slot.wal_status.as_deref() == Some("lost") {
        return Err(StreamError::SlotLost(config.slot.clone()));
    }
    if let Some(pid) = slot.active_pid {
        return Err(StreamError::SlotActive {
            slot: config.slot.clone(),
            pid,
        });
    }
    Ok(())
}

/// What `pg_replication_slots` says about a slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: String,
    pub database: String,
    pub active_pid: Option<String>,
    pub wal_status: Option<String>,
    pub confirmed_flush_lsn: Option<Lsn>,
}

pub async fn slot_info(conn: &mut ReplicationConnection, slot: &str) -> Result<Option<SlotInfo>, ConnError> {
    let result = conn
        .simple_query(&format!(
            "SELECT coalesce(plugin, '') AS plugin, coalesce(database::text, '') AS database, active_pid::text AS active_pid, \
             wal_status, confirmed_flush_lsn::text AS confirmed_flush_lsn \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ))
        .await?;
    let Some(row) = result.rows.first() else {
        return Ok(None);
    };
    let col = |name: &str| {
        result
            .columns
            .iter()
            .position(|c| c == name)
            .and_then(|i| row.get(i).cloned().flatten())
    };
    Ok(Some(SlotInfo {
        plugin: col("plugin").unwrap_or_default(),
        database: col("database").unwrap_or_default(),
        active_pid: col("active_pid"),
        wal_status: col("wal_status"),
        confirmed_flush_lsn: col("confirmed_flush_lsn").and_then(|s| Lsn::parse(&s)),
    }))
}

/// Creates a pgoutput slot (the publication must exist first, or changes before it are lost).
pub async fn create_slot(conn: &mut ReplicationConnection, slot: &str, temporary: bool) -> Result<Lsn, ConnError> {
    let command = format!(
        "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
        quote_ident(slot),
        if temporary { " TEMPORARY" } else { "" }
    );
    let result = conn.simple_query(&command).await?;
    Ok(result
        .first("consistent_point")
        .and_then(Lsn::parse)
        .unwrap_or_default())
}

/// What `walbust setup` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SetupReport {
    pub publication_created: bool,
    pub tables_added: Vec<String>,
    pub slot_created: Option<Lsn>,
}

/// Creates the publication (for `tables`, adding missing ones to an existing publication) and
/// then the slot — in that order, so the slot never starts before its publication exists.
pub async fn setup(
    connect: &ConnectOptions,
    publication: &str,
    slot: &str,
    tables: &[crate::rules::TableName],
) -> Result<SetupReport, StreamError> {
    let mut conn = ReplicationConnection::connect(connect).await?;
    let level = conn.simple_query("SHOW wal_level").await?;
    let level = level.first("wal_level").unwrap_or("").to_string();
    if level != "logical" {
        return Err(StreamError::WalLevel(level));
    }
    let mut report = SetupReport::default();
    let qualified = |t: &crate::rules::TableName| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
    let mut missing = Vec::new();
    for table in tables {
        let found = conn
            .simple_query(&format!(
                "SELECT (to_regclass({}) IS NOT NULL)::text AS found",
                quote_literal(&qualified(table))
            ))
            .await?;
        if found.first("found") != Some("true") {
            missing.push(table.to_string());
        }
    }
    if !missing.is_empty() {
        return Err(StreamError::TablesMissing(missing));
    }
    let exists = conn
        .simple_query(&format!(
            "SELECT puballtables::text AS all FROM pg_catalog.pg_publication WHERE pubname = {}",
            quote_literal(publication)
        ))
        .await?;
    if exists.rows.is_empty() {
        let list: Vec<String> = tables.iter().map(qualified).collect();
        let sql = if list.is_empty() {
            format!("CREATE PUBLICATION {}", quote_ident(publication))
        } else {
            format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(publication),
                list.join(", ")
            )
        };
        conn.simple_query(&sql).await?;
        report.publication_created = true;
    } else if exists.first("all") != Some("true") {
        let covered = conn
            .simple_query(&format!(
                "SELECT schemaname::text AS s, tablename::text AS t FROM pg_catalog.pg_publication_tables WHERE pubname = {}",
                quote_literal(publication)
            ))
            .await?;
        for table in tables {
            let present = covered.rows.iter().any(|r| {
                r.first().cloned().flatten().as_deref() == Some(table.schema.as_str())
                    && r.get(1).cloned().flatten().as_deref() == Some(table.name.as_str())
            });
            if !present {
                conn.simple_query(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(publication),
                    qualified(table)
                ))
                .await?;
                report.tables_added.push(table.to_string());
            }
        }
    }
    match slot_info(&mut conn, slot).await? {
        Some(info) if info.plugin != "pgoutput" => {
            return Err(StreamError::WrongPlugin {
                slot: slot.to_string(),
                plugin: info.plugin,
            })
        }
        Some(_) => {}
        None => report.slot_created = Some(create_slot(&mut conn, slot, false).await?),
    }
    conn.close().await;
    Ok(report)
}

/// Double-quotes an identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Single-quotes a literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_decisions() {
        let l = Lsn;
        // Applied position is reported while a transaction is in flight.
        assert_eq!(ack_position(l(100), l(200), false, l(500), l(0)), l(100));
        // Idle: everything forwarded is applied → acknowledge the server's WAL end.
        assert_eq!(ack_position(l(200), l(200), false, l(500), l(0)), l(500));
        // Inside an open transaction we never jump ahead.
        assert_eq!(ack_position(l(200), l(200), true, l(500), l(0)), l(200));
        // Never backwards.
        assert_eq!(ack_position(l(100), l(200), false, l(0), l(150)), l(150));
        assert_eq!(ack_position(l(0), l(0), false, l(0), l(0)), l(0));
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let first = b.next();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            assert!(b.next() <= Duration::from_millis(1000));
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
