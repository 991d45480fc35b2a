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
pub use super::error::StreamError;
use super::slot::{create_slot, identify_system, quote_ident, quote_literal, slot_info};
use crate::decode::frames::{parse_server_frame, pg_now_micros, standby_status_update, ServerFrame};
use crate::decode::pgoutput::Decoder;
pub use crate::model::Origin;
use crate::model::{Event, Lsn};
use crate::retry::Backoff;
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
    /// Bytes of WAL messages buffered between the task and the consumer, at most: a batch is
    /// handed over at `buffer_bytes / channel_batches` bytes or `batch_events` events, whichever
    /// comes first, so wide rows cannot make the buffer grow by their width.
    pub buffer_bytes: usize,
    /// Batches buffered between the task and the consumer (bounds memory).
    pub channel_batches: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Stream from a temporary slot named `slot`, created on the streaming connection (it ends
    /// with the connection: a lost connection ends the stream instead of reconnecting).
    pub temporary_slot: bool,
    /// Hand the consumer the raw pgoutput messages ([`StreamItem::Messages`], for captures)
    /// instead of decoded events.
    pub raw_messages: bool,
    /// Protocol 2 with `streaming = on` where the server supports it (PostgreSQL 14+): a large
    /// transaction's changes arrive while it runs, not all after its commit.
    pub streaming: bool,
    /// With `streaming`: `logical_decoding_work_mem` for this walsender (empty: the server's).
    pub decoding_work_mem: String,
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
            buffer_bytes: 64 << 20,
            channel_batches: 16,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            temporary_slot: false,
            raw_messages: false,
            streaming: false,
            decoding_work_mem: String::new(),
        }
    }
}

/// What the consumer receives.
#[derive(Debug)]
pub enum StreamItem {
    /// Decoded events, in order.
    Events(Vec<Event>),
    /// Raw pgoutput messages, in order (with [`StreamConfig::raw_messages`]).
    Messages(Vec<RawMessage>),
    /// With [`StreamConfig::raw_messages`]: the server has nothing more up to `wal_end` (a
    /// keepalive), and every message before it was delivered ahead of this item.
    Idle { wal_end: Lsn },
    /// The connection was lost and re-established: discard any partial transaction; everything
    /// after the last acknowledged position is sent again.
    Reconnected { error: String },
    /// The stream stopped for good.
    Failed(StreamError),
}

/// One pgoutput message as the walsender sent it.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// The XLogData start position.
    pub lsn: Lsn,
    pub data: Vec<u8>,
}

/// The replication position: the one place that holds how far every sink has applied. The
/// applier writes it ([`Progress::mark_applied`], only after every sink returned `Ok`); the
/// stream task reads it to acknowledge; metrics and `/readyz` read it. It outlives a stream (a
/// restarted stream after gap recovery gets the same one).
///
/// # Durability window
///
/// What a target applied is acknowledged to PostgreSQL only once it has been applied for
/// `durability_window` ([`Progress::acknowledgeable`]): a Redis that loses its last second of
/// writes (AOF `everysec`, a snapshot restore, a promoted lagging replica) has lost only
/// positions the slot can still send again. When a target reports such a loss, the applier
/// calls [`Progress::rewind_for_replay`]: applied positions not yet acknowledged are forgotten,
/// the generation moves on (batches planned before are applied but no longer count), and the
/// daemon restarts the stream from the slot.
#[derive(Debug, Default)]
pub struct Progress {
    applied: AtomicU64,
    /// The last position reported to the server.
    reported: AtomicU64,
    reconnects: AtomicU64,
    /// The server's WAL end as last seen (keepalive or XLogData).
    server_wal_end: AtomicU64,
    connected: std::sync::atomic::AtomicBool,
    /// Where a temporary slot this stream created started (0: none created).
    temporary_slot_start: AtomicU64,
    /// Applied positions not yet older than the durability window, oldest first.
    window: std::sync::Mutex<Window>,
    /// Moves on at every rewind; batches planned in an older generation do not count.
    generation: AtomicU64,
    /// Wakes the daemon when a rewind asks for the stream to be restarted from the slot.
    replay: tokio::sync::Notify,
    /// The server the stream last connected to.
    origin: std::sync::Mutex<Option<Origin>>,
    /// Counts [`Progress::set_origin`] calls, so readers fetch the origin only when it changed.
    origin_changes: AtomicU64,
}

#[derive(Debug, Default)]
struct Window {
    length: Duration,
    applied: std::collections::VecDeque<(Instant, u64)>,
    /// The highest position applied at least `length` ago.
    durable: u64,
    /// When every target last answered a round trip that would have shown a rollback (see
    /// [`Progress::confirm_targets`]); `None` before the first.
    confirmed: Option<Instant>,
}

impl Window {
    fn advance(&mut self, now: Instant) -> u64 {
        // The window runs on confirmed time: a target that stopped answering (down, hanging, or
        // restarting from an older snapshot) may still turn out to have lost what it was sent.
        let Some(confirmed) = self.confirmed.map(|c| c.min(now)) else {
            return self.durable;
        };
        while let Some(&(at, lsn)) = self.applied.front() {
            if confirmed.saturating_duration_since(at) < self.length {
                break;
            }
            self.durable = self.durable.max(lsn);
            self.applied.pop_front();
        }
        self.durable
    }
}

impl Progress {
    /// Positions become acknowledgeable `window` after they were applied.
    pub fn with_durability_window(window: Duration) -> Progress {
        let progress = Progress::default();
        progress.lock_window().length = window;
        progress
    }

    fn lock_window(&self) -> std::sync::MutexGuard<'_, Window> {
        // A panic while holding it leaves plain data behind: keep using it.
        self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every target answered a round trip that would have shown a rollback (a batch with its
    /// watermark, or an idle check), and rollbacks were handled. A position becomes durable
    /// only once a confirmation came `window` after it was applied: a target that is down or
    /// hanging cannot say what it lost, and a clock that kept running would acknowledge
    /// positions its crash may have taken (found with a Redis Cluster shard restored from a
    /// snapshot while walbust waited on it for longer than the window).
    pub fn confirm_targets(&self) {
        self.lock_window().confirmed = Some(Instant::now());
    }

    /// Reports that everything up to `lsn` is applied (same as [`Stream::applied`]).
    pub fn mark_applied(&self, lsn: Lsn) {
        let mut window = self.lock_window();
        self.applied.fetch_max(lsn.0, Ordering::AcqRel);
        if window.length.is_zero() {
            window.durable = window.durable.max(lsn.0);
        } else if window.applied.back().is_none_or(|&(_, last)| last < lsn.0) {
            window.applied.push_back((Instant::now(), lsn.0));
        }
    }

    /// [`Progress::mark_applied`] for a batch planned in `generation`: ignored when a rewind
    /// happened since (the batch was applied, but what came before it may not have been).
    pub fn mark_applied_in(&self, generation: u64, lsn: Lsn) -> bool {
        if generation != self.generation() {
            return false;
        }
        self.mark_applied(lsn);
        true
    }

    /// The highest position every target applied at least the durability window ago: what may
    /// be acknowledged to PostgreSQL.
    pub fn acknowledgeable(&self) -> Lsn {
        Lsn(self.lock_window().advance(Instant::now()))
    }

    /// Decides the position to report from the acknowledgeable one and records it as reported,
    /// atomically with respect to [`Progress::rewind_for_replay`].
    pub fn claim_report(&self, decide: impl FnOnce(Lsn) -> Lsn) -> Lsn {
        let mut window = self.lock_window();
        let position = decide(Lsn(window.advance(Instant::now())));
        self.reported.fetch_max(position.0, Ordering::AcqRel);
        position
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A target lost applied work that the slot can still send: forget every applied position
    /// after the acknowledged one, move to a new generation, and wake the daemon to restart the
    /// stream from the slot. Returns the position replay starts after.
    pub fn rewind_for_replay(&self) -> Lsn {
        let mut window = self.lock_window();
        let reported = self.reported.load(Ordering::Acquire);
        window.applied.clear();
        window.durable = window.durable.min(reported);
        self.applied.store(reported, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(window);
        self.replay.notify_one();
        Lsn(reported)
    }

    /// Completes when [`Progress::rewind_for_replay`] asked for a replay.
    pub async fn replay_requested(&self) {
        self.replay.notified().await
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
    /// The server the stream last connected to (system identifier and timeline).
    pub fn origin(&self) -> Option<Origin> {
        self.origin.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn set_origin(&self, origin: Origin) {
        *self.origin.lock().unwrap_or_else(|p| p.into_inner()) = Some(origin);
        self.origin_changes.fetch_add(1, Ordering::AcqRel);
    }

    /// How many times the origin was set: compare with a kept value to see whether it changed.
    pub fn origin_changes(&self) -> u64 {
        self.origin_changes.load(Ordering::Acquire)
    }
    /// Forgets the positions of a slot that is gone (gap recovery): the new slot's positions
    /// start over, and nothing reported on the old one may be reported on it.
    pub fn restart_for_new_slot(&self) {
        let mut window = self.lock_window();
        window.applied.clear();
        window.durable = 0;
        self.applied.store(0, Ordering::Release);
        self.reported.store(0, Ordering::Release);
        self.server_wal_end.store(0, Ordering::Release);
        *self.origin.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Where the temporary slot started, once the stream created it.
    pub fn temporary_slot_start(&self) -> Option<Lsn> {
        Some(Lsn(self.temporary_slot_start.load(Ordering::Acquire))).filter(|l| l.0 > 0)
    }
    /// True while streaming (after START_REPLICATION succeeded, until the connection ends).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// A running replication stream.
pub struct Stream {
    config: StreamConfig,
    /// While released ([`Stream::release`]): keeps the channel open so `recv` waits.
    parked: Option<mpsc::Sender<StreamItem>>,
    rx: mpsc::Receiver<StreamItem>,
    progress: Arc<Progress>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    /// Starts the background task; it connects (and reconnects) by itself.
    pub fn start(config: StreamConfig) -> Stream {
        Stream::start_with(config, Arc::new(Progress::default()))
    }

    /// [`Stream::start`] reporting into an existing [`Progress`].
    pub fn start_with(config: StreamConfig, progress: Arc<Progress>) -> Stream {
        let (tx, rx) = mpsc::channel(config.channel_batches.max(1));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(run(config.clone(), tx, progress.clone(), shutdown_rx));
        Stream {
            config,
            parked: None,
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
        self.progress.mark_applied(lsn);
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Ends this stream (final status update, slot released) and starts it again from the
    /// slot's acknowledged position: everything after it is sent again.
    pub async fn restart(&mut self) {
        let (tx, shutdown_rx) = self.stop_task().await;
        self.parked = None;
        self.task = tokio::spawn(run(self.config.clone(), tx, self.progress.clone(), shutdown_rx));
    }

    /// Ends this stream and releases the slot (another instance may take it) until
    /// [`Stream::restart`]; meanwhile `recv` waits.
    pub async fn release(&mut self) {
        let (tx, _) = self.stop_task().await;
        self.parked = Some(tx);
    }

    /// Stops the running task (final status update, connection closed) and gives a fresh
    /// channel and shutdown signal for the next one.
    async fn stop_task(&mut self) -> (mpsc::Sender<StreamItem>, watch::Receiver<bool>) {
        let (tx, rx) = mpsc::channel(self.config.channel_batches.max(1));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let _ = self.shutdown.send(true);
        self.rx = rx;
        let old = std::mem::replace(&mut self.shutdown, shutdown);
        let task = std::mem::replace(&mut self.task, tokio::spawn(std::future::ready(())));
        let _ = task.await;
        drop(old);
        (tx, shutdown_rx)
    }

    /// Stops reading, sends a final status update with the applied position, closes.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        drop(self.rx);
        let _ = self.task.await;
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
            // A temporary slot died with its connection: nothing to reconnect to.
            Err(e) if e.is_transient() && !*shutdown.borrow() && !(config.temporary_slot && session.started) => {
                tracing::warn!(error = %e, "replication connection lost; reconnecting");
                if session.started {
                    // A reconnect is a lost stream, not a failed attempt (a standby polling a
                    // slot held by another instance is not flapping).
                    progress.reconnects.fetch_add(1, Ordering::Relaxed);
                    if tx.send(StreamItem::Reconnected { error: e.to_string() }).await.is_err() {
                        return;
                    }
                }
                let delay = backoff.next_delay();
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
    /// Streamed transactions started and not yet committed or aborted.
    open_streams: std::collections::HashSet<u32>,
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
            open_streams: std::collections::HashSet::new(),
            reported: progress.reported(),
            last_status: Instant::now(),
            started: false,
            may_create_slot: true,
        }
    }

    /// The position to report: applied (and older than the durability window), or the
    /// server's WAL end when nothing is in flight.
    fn ack_position(&self) -> Lsn {
        ack_position(
            self.progress.acknowledgeable(),
            self.forwarded_end,
            self.in_transaction || !self.open_streams.is_empty(),
            self.server_wal_end,
            self.reported,
        )
    }

    async fn send_status(&mut self, conn: &mut ReplicationConnection, reply: bool) -> Result<(), StreamError> {
        let (forwarded_end, in_transaction, server_wal_end, reported) = (
            self.forwarded_end,
            self.in_transaction || !self.open_streams.is_empty(),
            self.server_wal_end,
            self.reported,
        );
        // Decided and recorded as reported in one step, so a rewind never misses a position
        // that is about to reach the server.
        let position = self.progress.claim_report(|acknowledgeable| {
            ack_position(acknowledgeable, forwarded_end, in_transaction, server_wal_end, reported)
        });
        conn.send_copy_data(&standby_status_update(position, pg_now_micros(), reply))
            .await?;
        self.reported = position;
        self.last_status = Instant::now();
        Ok(())
    }

    /// Connects, checks, and starts streaming from the slot.
    async fn start(&mut self) -> Result<ReplicationConnection, StreamError> {
        let mut conn = ReplicationConnection::connect(&self.config.connect).await?;
        if self.config.temporary_slot {
            check_server(&mut conn, self.config).await?;
            let start = create_slot(&mut conn, &self.config.slot, true).await?;
            self.progress.temporary_slot_start.store(start.0, Ordering::Release);
        } else {
            preflight(&mut conn, self.config, self.may_create_slot).await?;
        }
        self.check_origin(&mut conn).await?;
        let streaming = self.config.streaming && !self.config.raw_messages && server_major(&conn) >= 14;
        if streaming && !self.config.decoding_work_mem.is_empty() {
            // The walsender streams a transaction once it holds this much of it: the less it
            // holds back, the less is left to send after the COMMIT.
            conn.simple_query(&format!(
                "SET logical_decoding_work_mem = {}",
                quote_literal(&self.config.decoding_work_mem)
            ))
            .await?;
        }
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '{}', publication_names {}{})",
            quote_ident(&self.config.slot),
            if streaming { 2 } else { 1 },
            quote_literal(&quote_ident(&self.config.publication)),
            if streaming { ", streaming 'on'" } else { "" }
        );
        conn.start_copy_both(&command)
            .await
            .map_err(|e| classify(e, self.config))?;
        self.started = true;
        self.progress.connected.store(true, Ordering::Release);
        tracing::info!(slot = %self.config.slot, publication = %self.config.publication, target = conn.target(), "replication started");
        Ok(conn)
    }

    /// IDENTIFY_SYSTEM: the first connection records the server; a later one to a different
    /// system or timeline (a promoted standby, a restore) is a gap — its LSNs are not
    /// comparable with what was acknowledged before.
    async fn check_origin(&mut self, conn: &mut ReplicationConnection) -> Result<(), StreamError> {
        let now = identify_system(conn).await?;
        match self.progress.origin() {
            Some(before) if before != now => Err(StreamError::OriginChanged {
                before_system: before.system,
                before_timeline: before.timeline,
                now_system: now.system,
                now_timeline: now.timeline,
            }),
            _ => {
                self.progress.set_origin(now);
                Ok(())
            }
        }
    }

    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>, backoff: &mut Backoff) -> Result<(), StreamError> {
        let mut conn = self.start().await?;
        backoff.reset();
        let mut pending = Pending::new(self.config.batch_events);
        let mut status_timer = tokio::time::interval(self.config.status_interval);
        status_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Report newly applied positions promptly (at most every 100 ms), so the slot releases
        // WAL and `confirmed_flush_lsn` follows the applier closely.
        let mut ack_timer = tokio::time::interval(Duration::from_millis(100));
        ack_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch_bytes = self.config.buffer_bytes / self.config.channel_batches.max(1);
            if !pending.is_empty()
                && (pending.len() >= self.config.batch_events
                    || pending.bytes >= batch_bytes
                    || !conn.has_buffered_message())
            {
                let items = pending.take(self.config.raw_messages);
                for item in items.into_iter().flatten() {
                    self.deliver(&mut conn, item, shutdown, &mut status_timer).await?;
                }
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
                    self.on_frame(&mut conn, &data, &mut pending).await?;
                    // What that read brought along goes without another trip through this
                    // select: its futures and wakers cost more than decoding a message. The
                    // timers are looked at again once a batch is full.
                    while pending.len() < self.config.batch_events && pending.bytes < batch_bytes {
                        match conn.try_recv_copy_data().map_err(|e| classify(e, self.config))? {
                            Some(Some(data)) => self.on_frame(&mut conn, &data, &mut pending).await?,
                            Some(None) => return Err(StreamError::Ended),
                            None => break,
                        }
                    }
                }
            }
        }
    }

    async fn on_frame(
        &mut self,
        conn: &mut ReplicationConnection,
        data: &[u8],
        pending: &mut Pending,
    ) -> Result<(), StreamError> {
        let frame = parse_server_frame(data).map_err(|source| StreamError::Decode {
            lsn: self.server_wal_end,
            source,
        })?;
        match frame {
            ServerFrame::XLogData {
                start, wal_end, data, ..
            } => {
                self.saw_wal_end(wal_end);
                let event = self
                    .decoder
                    .decode(data)
                    .map_err(|source| StreamError::Decode { lsn: start, source })?;
                if let Some(event) = &event {
                    self.track(event);
                }
                // What the message costs buffered: its bytes (decoded values are about as
                // large) plus the event's fixed part.
                pending.bytes += data.len() + EVENT_OVERHEAD_BYTES;
                if self.config.raw_messages {
                    pending.raw.push(RawMessage {
                        lsn: start,
                        data: data.to_vec(),
                    });
                } else if let Some(event) = event {
                    pending.events.push(event);
                }
            }
            ServerFrame::Keepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                self.saw_wal_end(wal_end);
                if self.config.raw_messages {
                    pending.idle = Some(wal_end);
                }
                let idle_advance = self.ack_position() > self.reported;
                if reply_requested || idle_advance || self.last_status.elapsed() >= self.config.status_interval {
                    self.send_status(conn, false).await?;
                }
            }
        }
        Ok(())
    }

    fn saw_wal_end(&mut self, wal_end: Lsn) {
        self.server_wal_end = self.server_wal_end.max(wal_end);
        self.progress.server_wal_end.fetch_max(wal_end.0, Ordering::AcqRel);
    }

    /// Transaction boundaries, for the acknowledgement decision. A streamed transaction in
    /// progress counts as in flight until its commit or abort.
    fn track(&mut self, event: &Event) {
        match event {
            Event::Begin { .. } => self.in_transaction = true,
            Event::Commit(info) => {
                self.in_transaction = false;
                if let Some(end) = info.end_lsn {
                    self.forwarded_end = self.forwarded_end.max(end);
                }
            }
            Event::StreamStart { xid } => {
                self.open_streams.insert(*xid);
            }
            Event::StreamCommit(info) => {
                if let Some(xid) = info.xid {
                    self.open_streams.remove(&xid);
                }
                if let Some(end) = info.end_lsn {
                    self.forwarded_end = self.forwarded_end.max(end);
                }
            }
            Event::StreamAbort { xid, subxid } if xid == subxid => {
                self.open_streams.remove(xid);
            }
            _ => {}
        }
    }

    /// Hands a batch to the consumer; while it is busy (channel full), keep the connection
    /// alive with status updates and stop reading WAL.
    async fn deliver(
        &mut self,
        conn: &mut ReplicationConnection,
        item: StreamItem,
        shutdown: &mut watch::Receiver<bool>,
        status_timer: &mut tokio::time::Interval,
    ) -> Result<(), StreamError> {
        let mut item = Some(item);
        loop {
            tokio::select! {
                biased;
                permit = self.tx.reserve() => {
                    match permit {
                        Ok(permit) => {
                            if let Some(item) = item.take() {
                                permit.send(item);
                            }
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

/// What was read and not yet handed to the consumer.
struct Pending {
    events: Vec<Event>,
    raw: Vec<RawMessage>,
    /// A keepalive's WAL end, delivered after the messages before it (raw mode).
    idle: Option<Lsn>,
    capacity: usize,
    /// Approximate bytes of what is pending.
    bytes: usize,
}

/// The fixed part of a buffered event beyond its message bytes (the enum, vectors, counts).
const EVENT_OVERHEAD_BYTES: usize = 96;

impl Pending {
    fn new(capacity: usize) -> Pending {
        Pending {
            events: Vec::with_capacity(capacity),
            raw: Vec::new(),
            idle: None,
            capacity,
            bytes: 0,
        }
    }

    fn len(&self) -> usize {
        self.events.len() + self.raw.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0 && self.idle.is_none()
    }

    /// What to hand over, in order (no allocation per delivery: this runs per batch).
    fn take(&mut self, raw: bool) -> [Option<StreamItem>; 2] {
        self.bytes = 0;
        if !raw {
            let events = std::mem::replace(&mut self.events, Vec::with_capacity(self.capacity));
            return [Some(StreamItem::Events(events)), None];
        }
        let messages = (!self.raw.is_empty()).then(|| StreamItem::Messages(std::mem::take(&mut self.raw)));
        let idle = self.idle.take().map(|wal_end| StreamItem::Idle { wal_end });
        [messages, idle]
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

/// The server's major version from its startup parameters (0 when unknown).
fn server_major(conn: &ReplicationConnection) -> u32 {
    conn.parameters
        .get("server_version")
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|major| major.parse().ok())
        .unwrap_or(0)
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

/// Checks the server before streaming: logical WAL, and the publication exists.
async fn check_server(conn: &mut ReplicationConnection, config: &StreamConfig) -> Result<(), StreamError> {
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
    Ok(())
}

/// Checks the server and slot before streaming; creates the slot when asked.
async fn preflight(
    conn: &mut ReplicationConnection,
    config: &StreamConfig,
    may_create_slot: bool,
) -> Result<(), StreamError> {
    check_server(conn, config).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_positions_are_acknowledgeable_only_after_the_durability_window() {
        let progress = Progress::with_durability_window(Duration::from_millis(200));
        progress.mark_applied(Lsn(100));
        progress.confirm_targets();
        assert_eq!(progress.applied(), Lsn(100));
        assert_eq!(progress.acknowledgeable(), Lsn(0), "inside the window");
        std::thread::sleep(Duration::from_millis(120));
        progress.mark_applied(Lsn(200));
        std::thread::sleep(Duration::from_millis(100));
        progress.confirm_targets();
        assert_eq!(
            progress.acknowledgeable(),
            Lsn(100),
            "the first is older than the window"
        );
        std::thread::sleep(Duration::from_millis(120));
        progress.confirm_targets();
        assert_eq!(progress.acknowledgeable(), Lsn(200));
        // Zero window: at once.
        let at_once = Progress::default();
        at_once.mark_applied(Lsn(7));
        assert_eq!(at_once.acknowledgeable(), Lsn(7));
    }

    /// Regression (a Redis Cluster shard restored from a snapshot while walbust waited on it
    /// for longer than the window): a position becomes durable only once the targets confirmed
    /// `window` after it was applied.
    #[test]
    fn the_window_runs_on_confirmed_time() {
        let progress = Progress::with_durability_window(Duration::from_millis(50));
        progress.mark_applied(Lsn(100));
        progress.confirm_targets();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(progress.acknowledgeable(), Lsn(0), "no confirmation since");
        progress.confirm_targets();
        assert_eq!(progress.acknowledgeable(), Lsn(100));
        progress.mark_applied(Lsn(200));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(progress.acknowledgeable(), Lsn(100), "the targets went quiet");
        progress.confirm_targets();
        assert_eq!(progress.acknowledgeable(), Lsn(200));
    }

    #[test]
    fn a_rewind_forgets_unacknowledged_positions_and_batches_planned_before_it() {
        let progress = Progress::with_durability_window(Duration::from_millis(50));
        progress.mark_applied(Lsn(100));
        std::thread::sleep(Duration::from_millis(60));
        progress.confirm_targets();
        let reported = progress.claim_report(|ack| ack);
        assert_eq!(reported, Lsn(100));
        progress.mark_applied(Lsn(300));
        let generation = progress.generation();
        assert_eq!(progress.rewind_for_replay(), Lsn(100));
        assert_eq!(progress.applied(), Lsn(100));
        std::thread::sleep(Duration::from_millis(60));
        progress.confirm_targets();
        assert_eq!(progress.acknowledgeable(), Lsn(100), "300 was forgotten");
        // A batch planned before the rewind and applied after it does not count.
        assert!(!progress.mark_applied_in(generation, Lsn(400)));
        assert_eq!(progress.applied(), Lsn(100));
        assert!(progress.mark_applied_in(progress.generation(), Lsn(400)));
        assert_eq!(progress.applied(), Lsn(400));
    }

    #[test]
    fn a_new_slot_is_never_acknowledged_with_the_old_slots_positions() {
        let progress = Progress::default();
        progress.mark_applied(Lsn(500));
        progress.reported.store(500, Ordering::Release);
        progress.server_wal_end.store(500, Ordering::Release);
        // After a failover the new slot starts at 300, below what was reported on the old one.
        progress.restart_for_new_slot();
        let first = ack_position(progress.applied(), Lsn(0), false, Lsn(300), progress.reported());
        assert_eq!(first, Lsn(300));
        // While a transaction of the new slot is in flight nothing ahead of it is reported.
        assert_eq!(
            ack_position(progress.applied(), Lsn(320), true, Lsn(400), progress.reported()),
            Lsn(0)
        );
    }

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
}
