//! `walbust run`: the daemon. Wires the stream, the planner, batching and the sinks:
//!
//! ```text
//! source::Stream ──events──▶ Planner ──committed txns──▶ Batch ──(delay or size)──▶ Applier ──▶ every sink
//!        ▲                                                                               │
//!        └──────── acknowledge ◀── Progress::mark_applied(last end LSN) ◀── all sinks Ok ◀┘
//! ```
//!
//! A batch is acknowledged only after every sink applied it ([`applier`], the one place that
//! advances the applied position). While a sink is down the batch is retried with backoff; the
//! loop stops taking events, the stream's bounded buffer fills, and the stream stops reading
//! WAL but keeps the replication connection alive. On shutdown the loop applies what is in
//! flight, acknowledges it, and sends the final status update. A gap in the slot's history is
//! handled by [`gap`]; the startup check and the sinks come from [`startup`]. A streamed
//! transaction's keys wait for its commit on disk ([`spill`]) once they are a batch's worth.

pub mod applier;
pub mod gap;
pub mod partitions;
pub mod redelete;
pub mod slot_stats;
pub mod spill;
pub mod startup;

use crate::config::{ConfigError, OnGap, Validated};
use crate::metrics::{self, Metrics};
use crate::model::{Change, Event, Lsn, Timestamp};
use crate::plan::{PlannedTxn, Planner};
use crate::rules::eval::EngineOptions;
use crate::sink::{Batch, SinkError};
use crate::source::conn::ConnectOptions;
use crate::source::stream::{Progress, Stream, StreamConfig, StreamError, StreamItem};
use applier::{Applier, ApplierContext, ApplierEvent, ApplierFailed, GiveUp, Queued};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Rules(#[from] crate::rules::RulesError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{field}: cannot read {}: {source}", path.display())]
    CaCert {
        field: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{field}: {source}")]
    Target {
        field: String,
        source: crate::sink::redis::RedisError,
    },
    #[error("startup check failed:\n{0}\nfix the rules or the schema, or set rules.allow_unrenderable = true to start anyway")]
    Startup(String),
    #[error("startup check: {0}")]
    Schema(#[from] crate::source::schema::CheckDbError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("cannot listen for HTTP on {0}: {1}")]
    Http(String, std::io::Error),
    #[error("shutdown before the epoch was bumped after a gap: {0}; the gap is reported again at the next start")]
    EpochNotBumped(SinkError),
    #[error(transparent)]
    Applier(#[from] ApplierFailed),
    #[error(transparent)]
    Spill(#[from] spill::SpillError),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// What the daemon did, for tests and the shutdown log line.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub transactions: u64,
    pub batches: u64,
    pub applied: Option<Lsn>,
}

/// Runs the daemon until `shutdown` completes or a definite error occurs.
pub async fn run(
    config: Validated,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunSummary, DaemonError> {
    let cfg = &config.config;
    let loaded = crate::rules::load_path(&cfg.rules.path)?;
    for w in &loaded.warnings {
        tracing::warn!(finding = %w, "rules");
    }
    let rules = Arc::new(loaded.rules);
    config.check_rules(&rules)?;
    let connect = config.connect.clone();
    startup::check_schema(&connect, &rules, &config).await?;

    let progress = Arc::new(Progress::with_durability_window(cfg.apply.durability_window));
    let metrics = Metrics::new(progress.clone());
    let http_task = start_http(&config, &metrics).await?;
    let mut targets = startup::build_targets(&config, &rules)?;
    let stop = Stop::watch(shutdown, cfg.shutdown_timeout);
    let resumed = gap::Recovery {
        connect: &connect,
        slot: &cfg.postgres.slot,
        metrics: &metrics,
        retry_max_delay: cfg.apply.retry_max_delay,
        is_shutdown: &|| stop.requested(),
    }
    .resume_pending(&mut targets.sinks)
    .await;
    let resumed = match resumed {
        Ok(()) => {
            gap::Recovery {
                connect: &connect,
                slot: &cfg.postgres.slot,
                metrics: &metrics,
                retry_max_delay: cfg.apply.retry_max_delay,
                is_shutdown: &|| stop.requested(),
            }
            .check_watermarks(&mut targets.sinks, &progress)
            .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = resumed {
        stop.task.abort();
        if let Some(t) = http_task {
            t.abort();
        }
        return Err(e);
    }
    let stats_task = tokio::spawn(slot_stats::poll(
        connect.clone(),
        cfg.postgres.slot.clone(),
        cfg.postgres.slot_stats_interval,
        metrics.clone(),
    ));
    let context = ApplierContext {
        progress: progress.clone(),
        metrics: metrics.clone(),
        retry_max_delay: cfg.apply.retry_max_delay,
        give_up: stop.give_up.clone(),
        redeleter: (!targets.redelete.is_empty()).then(|| redelete::Redeleter::start(targets.redelete)),
        stalled: Arc::new(tokio::sync::watch::channel(None).0),
    };
    let slot_release = SlotRelease {
        after: (!cfg.apply.release_slot_after.is_zero()).then_some(cfg.apply.release_slot_after),
        stalled: context.stalled.subscribe(),
        released: false,
    };
    let mut daemon = Daemon {
        stream: Stream::start_with(stream_config(&config, &connect), progress.clone()),
        applier: Some(Applier::start(targets.sinks, context.clone())),
        planner: Planner::with_options(rules, false, engine_options(&config)).unsorted(),
        spill: spill::Spill::new(&cfg.apply.spill_dir),
        batch: Batch::default(),
        batch_started: None,
        change_counts: ChangeCounts::default(),
        summary: RunSummary::default(),
        streamed_once: false,
        generation: progress.generation(),
        slot_release,
        partitions: partitions::PartitionResolver::new(connect.clone(), cfg.apply.retry_max_delay),
        config,
        connect,
        context,
        stop,
    };
    let result = daemon.stream_loop().await;
    let (summary, applier_failed) = daemon.finish(result.is_ok()).await;
    let result = result.and(applier_failed.map_or(Ok(()), Err));
    stats_task.abort();
    if let Some(t) = http_task {
        t.abort();
    }
    tracing::info!(transactions = summary.transactions, applied = ?summary.applied.map(|l| l.to_string()), "walbust stopped");
    result.map(|_| summary)
}

fn stream_config(config: &Validated, connect: &ConnectOptions) -> StreamConfig {
    let cfg = &config.config;
    let mut s = StreamConfig::new(connect.clone(), &cfg.postgres.slot, &cfg.postgres.publication);
    s.create_slot = cfg.postgres.create_slot;
    s.streaming = cfg.postgres.streaming;
    s.decoding_work_mem = cfg.postgres.decoding_work_mem.clone();
    s.status_interval = cfg.postgres.status_interval;
    s.backoff_max = cfg.postgres.reconnect_max_delay;
    s.channel_batches = cfg.apply.buffer_batches.max(1);
    s.buffer_bytes = cfg.apply.buffer_bytes;
    s
}

fn engine_options(config: &Validated) -> EngineOptions {
    EngineOptions {
        tag_prefix: config.rules.tag_prefix.clone(),
        max_keys_per_transaction: config.rules.max_keys_per_transaction,
    }
}

async fn start_http(
    config: &Validated,
    metrics: &Arc<Metrics>,
) -> Result<Option<tokio::task::JoinHandle<()>>, DaemonError> {
    let http = &config.config.http;
    if http.listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&http.listen)
        .await
        .map_err(|e| DaemonError::Http(http.listen.clone(), e))?;
    tracing::info!(listen = %http.listen, "serving /metrics, /healthz, /readyz");
    Ok(Some(tokio::spawn(metrics::serve(
        listener,
        metrics.clone(),
        http.ready_max_lag_bytes,
    ))))
}

/// Shutdown, watched by its own task so a request is seen even while a batch is being retried
/// against an unreachable target. Once requested, a failing apply gives up after the shutdown
/// timeout.
struct Stop {
    requested: Arc<AtomicBool>,
    rx: tokio::sync::watch::Receiver<bool>,
    give_up: Arc<GiveUp>,
    timeout: Duration,
    task: tokio::task::JoinHandle<()>,
}

impl Stop {
    fn watch(shutdown: impl Future<Output = ()> + Send + 'static, timeout: Duration) -> Stop {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let requested = Arc::new(AtomicBool::new(false));
        let give_up = Arc::new(GiveUp::default());
        let (flag, armed) = (requested.clone(), give_up.clone());
        let task = tokio::spawn(async move {
            shutdown.await;
            flag.store(true, Ordering::SeqCst);
            armed.arm(timeout);
            let _ = tx.send(true);
        });
        Stop {
            requested,
            rx,
            give_up,
            timeout,
            task,
        }
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    async fn wait(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

/// The loop's state: the stream it reads, the transaction being planned, the batch being
/// collected, and the applier it hands batches to.
struct Daemon {
    config: Validated,
    connect: ConnectOptions,
    stream: Stream,
    planner: Planner,
    /// Keys of streamed transactions waiting on disk for their commit.
    spill: spill::Spill,
    batch: Batch,
    batch_started: Option<Instant>,
    change_counts: ChangeCounts,
    summary: RunSummary,
    /// `None` only while gap recovery holds the sinks.
    applier: Option<Applier>,
    context: ApplierContext,
    stop: Stop,
    /// Whether this process streamed from the slot (a change, or a reconnect after streaming):
    /// after that, a missing slot is a gap, not a first start.
    streamed_once: bool,
    /// The [`Progress`] generation the current stream's batches belong to.
    generation: u64,
    slot_release: SlotRelease,
    partitions: partitions::PartitionResolver,
}

/// `apply.release_slot_after`: an instance that cannot apply for that long gives the slot up,
/// so a standby that reaches the targets takes over; once it applies again it streams again
/// (or, the slot being taken, waits as the standby).
struct SlotRelease {
    after: Option<Duration>,
    stalled: tokio::sync::watch::Receiver<Option<Instant>>,
    released: bool,
}

impl SlotRelease {
    /// Completes with `true` when the slot should be released, `false` when it should be taken
    /// back.
    async fn next(&mut self) -> bool {
        loop {
            let since = *self.stalled.borrow_and_update();
            match (since, self.released, self.after) {
                (Some(since), false, Some(after)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until((since + after).into()) => return true,
                        changed = self.stalled.changed() => if changed.is_err() {
                            return std::future::pending().await;
                        },
                    }
                }
                (None, true, _) => return false,
                _ => {
                    if self.stalled.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                }
            }
        }
    }
}

impl Daemon {
    /// Adaptive batching: committed transactions go to the applier at once when it has no round
    /// trip in flight; while it has, they collect into the next batch, which goes when it is done
    /// — or when the batch reaches `max_batch_actions` or has waited `max_batch_delay` (caps, so
    /// a slow target cannot hold a batch back forever).
    async fn stream_loop(&mut self) -> Result<(), DaemonError> {
        let progress = self.context.progress.clone();
        loop {
            if self.stop.requested() {
                return Ok(());
            }
            let pending = !self.batch.is_empty();
            let deadline = self.batch_started.map(|t| t + self.config.apply.max_batch_delay);
            let flush_due = self.batch.actions() >= self.config.apply.max_batch_actions
                || deadline.is_some_and(|d| Instant::now() >= d)
                || (pending && self.applier.as_mut().is_some_and(Applier::is_idle));
            if pending && flush_due {
                if !self.flush().await? {
                    return Ok(());
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = self.stop.wait() => return Ok(()),
                event = Applier::next_event(&mut self.applier, pending) => match event {
                    ApplierEvent::BusyChanged => {}
                    ApplierEvent::Ended(ended) => {
                        ended?;
                        return Err(DaemonError::Internal("the apply task ended before shutdown"));
                    }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {}
                _ = progress.replay_requested() => self.replay_from_slot().await,
                release = self.slot_release.next() => self.release_or_take_back(release).await,
                item = self.stream.recv() => match item {
                    Some(StreamItem::Events(events)) => {
                        let stop = &self.stop;
                        if !self.partitions.resolve(&events, self.planner.engine_mut(), &|| stop.requested()).await {
                            return Ok(());
                        }
                        if !self.on_events(&events).await? {
                            return Ok(());
                        }
                    }
                    Some(StreamItem::Messages(_)) | Some(StreamItem::Idle { .. }) => {
                        return Err(DaemonError::Internal("the stream sent raw messages; the daemon asks for events"))
                    }
                    Some(StreamItem::Reconnected { error }) => {
                        tracing::warn!(error = %error, "replication reconnected; replaying from the last acknowledged position");
                        // A partial transaction will be sent again in full.
                        self.forget_in_progress();
                        // Only a stream that started sends this: from now on a missing slot is
                        // a gap, even on a database that never sent a change.
                        self.streamed_once = true;
                    }
                    Some(StreamItem::Failed(e)) => self.on_failed(e).await?,
                    None => return Err(DaemonError::Stream(StreamError::Ended)),
                }
            }
        }
    }

    /// A target lost applied work the slot still holds (the applier rewound [`Progress`]):
    /// drop what was planned from the current stream and stream again from the slot's
    /// acknowledged position, so every transaction after it is applied again.
    async fn replay_from_slot(&mut self) {
        self.generation = self.context.progress.generation();
        self.forget_in_progress();
        self.batch = Batch::default();
        self.batch_started = None;
        self.stream.restart().await;
        tracing::info!(from = %self.context.progress.reported(), "streaming again from the slot");
    }

    async fn release_or_take_back(&mut self, release: bool) {
        self.slot_release.released = release;
        if release {
            tracing::error!(
                after = ?self.slot_release.after,
                "the targets have not applied for apply.release_slot_after; releasing the slot so a standby that reaches them can take over (this instance streams again once it applies)"
            );
            self.stream.release().await;
        } else {
            tracing::warn!(
                "the targets apply again; streaming again from the slot (or waiting while a standby holds it)"
            );
            self.forget_in_progress();
            self.stream.restart().await;
        }
    }

    /// Hands the batch to the applier: `Ok(false)` when shutdown ended the wait, an error when
    /// the applier is gone (it failed: nothing after the acknowledged position is lost, and the
    /// daemon must not go on as if it applied).
    async fn flush(&mut self) -> Result<bool, DaemonError> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_started = None;
        let Some(applier) = &self.applier else { return Ok(false) };
        let queued = Queued {
            generation: self.generation,
            batch,
        };
        // While the applier retries a failing batch this waits; the slot may be released
        // meanwhile (and taken back when it applies).
        let sent = {
            let tx = applier.tx.clone();
            let send = tx.send(queued);
            tokio::pin!(send);
            loop {
                tokio::select! {
                    sent = &mut send => break sent.is_ok(),
                    _ = self.stop.wait() => return Ok(false),
                    release = self.slot_release.next() => self.release_or_take_back(release).await,
                }
            }
        };
        if sent || self.stop.requested() {
            return Ok(sent);
        }
        let Some(applier) = self.applier.take() else {
            return Ok(false);
        };
        applier.finish().await?;
        Err(DaemonError::Internal("the apply task ended before shutdown"))
    }

    /// Transactions in progress are forgotten: the stream starts again from the slot, and the
    /// server sends them again from their start.
    fn forget_in_progress(&mut self) {
        self.planner.push(&Event::Rollback);
        self.spill.clear();
    }

    /// Plans the events; committed transactions join the batch. `Ok(false)` when shutdown ended
    /// a wait for the applier.
    async fn on_events(&mut self, events: &[Event]) -> Result<bool, DaemonError> {
        self.streamed_once = true;
        let max_actions = self.config.apply.max_batch_actions;
        for event in events {
            match event {
                Event::Change(change) | Event::StreamChange { change, .. } => self.change_counts.count(change),
                Event::StreamAbort { xid, subxid } => self.spill.abort(*xid, *subxid),
                Event::Rollback => self.spill.clear(),
                _ => {}
            }
            if let Some(txn) = self.planner.push(event) {
                if let Event::StreamCommit(info) = event {
                    if !self.add_spilled(info).await? {
                        return Ok(false);
                    }
                }
                self.context.metrics.transaction();
                record_notes(&txn, &self.context.metrics);
                if self.batch.is_empty() {
                    self.batch_started = Some(Instant::now());
                }
                self.batch.add_owned(txn);
                self.summary.transactions += 1;
            } else if matches!(event, Event::StreamChange { .. }) {
                // A streamed transaction may still abort, so its keys wait for its commit — on
                // disk once it holds a batch's worth, so memory does not grow with it.
                if self.planner.streamed_keys() >= max_actions {
                    if let Some((top, taken)) = self.planner.take_streamed() {
                        let spilled = self.spill.hold(top, taken);
                        self.context.metrics.spilled_keys(spilled);
                    }
                }
            } else if self.planner.pending_keys() >= max_actions {
                // A large transaction goes out in parts as it arrives: memory stays bounded by
                // the batch size, not the transaction's (its position only at its commit).
                if let Some(part) = self.planner.take_part() {
                    record_notes(&part, &self.context.metrics);
                    if self.batch.is_empty() {
                        self.batch_started = Some(Instant::now());
                    }
                    self.batch.add_part(part);
                }
            }
        }
        self.change_counts.flush_into(&self.context.metrics);
        Ok(true)
    }

    /// At a streamed transaction's commit: what it held on disk joins the batch in parts of
    /// `max_batch_actions` keys, a full batch going to the applier before the next part is
    /// read, ahead of the transaction itself (which carries its position).
    async fn add_spilled(&mut self, commit: &crate::model::CommitInfo) -> Result<bool, DaemonError> {
        let Some(mut held) = commit.xid.map(|xid| self.spill.take(xid)).transpose()?.flatten() else {
            return Ok(true);
        };
        let max_actions = self.config.apply.max_batch_actions;
        while let Some(keys) = held.next_part(max_actions)? {
            if self.batch.is_empty() {
                self.batch_started = Some(Instant::now());
            }
            self.batch.add_part(keys.into_part(commit));
            if self.batch.actions() >= max_actions && !self.flush().await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The stream stopped for good. A gap in the slot's history with `on_gap = bump_epoch`
    /// recovers (what was already batched is committed work and is applied first); anything
    /// else ends the daemon.
    async fn on_failed(&mut self, e: StreamError) -> Result<(), DaemonError> {
        let gap = matches!(e, StreamError::SlotLost(_) | StreamError::OriginChanged { .. })
            || (self.streamed_once && matches!(e, StreamError::SlotMissing(_)));
        if !gap || self.config.apply.on_gap != OnGap::BumpEpoch {
            return Err(DaemonError::Stream(e));
        }
        self.forget_in_progress();
        if !self.batch.is_empty() && !self.flush().await? {
            return Ok(());
        }
        let Some(applier) = self.applier.take() else {
            return Ok(());
        };
        let mut sinks = applier.finish().await?;
        let recovered = gap::Recovery {
            connect: &self.connect,
            slot: &self.config.postgres.slot,
            metrics: &self.context.metrics,
            retry_max_delay: self.config.apply.retry_max_delay,
            is_shutdown: &|| self.stop.requested(),
        }
        .recover(&mut sinks)
        .await;
        if recovered.is_ok() {
            // Positions of the old slot mean nothing on the new one (after a failover they can
            // be ahead of it): start over while the applier is stopped and the old stream has
            // ended (it reported the failure), so nothing reports an old position again.
            self.context.progress.restart_for_new_slot();
        }
        self.applier = Some(Applier::start(sinks, self.context.clone()));
        recovered?;
        let restarted = Stream::start_with(
            stream_config(&self.config, &self.connect),
            self.context.progress.clone(),
        );
        std::mem::replace(&mut self.stream, restarted).shutdown().await;
        Ok(())
    }

    /// Graceful end: apply what is in flight (bounded by the shutdown timeout), acknowledge,
    /// send the final status update.
    async fn finish(mut self, clean: bool) -> (RunSummary, Option<DaemonError>) {
        let timeout = self.stop.timeout;
        self.stop.give_up.arm(timeout);
        if clean && !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            if let Some(applier) = &self.applier {
                let queued = Queued {
                    generation: self.generation,
                    batch,
                };
                let _ = tokio::time::timeout(timeout, applier.tx.send(queued)).await;
            }
        }
        let mut failed = None;
        if let Some(applier) = self.applier.take() {
            match tokio::time::timeout(timeout + Duration::from_secs(1), applier.finish()).await {
                Ok(Err(e)) => failed = Some(DaemonError::from(e)),
                Err(_) => tracing::warn!("the apply task did not finish within the shutdown timeout"),
                Ok(Ok(_)) => {}
            }
        }
        let applied = self.context.progress.applied();
        self.summary.applied = (applied.0 > 0).then_some(applied);
        self.stream.shutdown().await;
        self.stop.task.abort();
        self.summary.batches = self.context.metrics.batches();
        (self.summary, failed)
    }
}

/// One place for what a fallback or an unmappable change leaves behind: the log line and the
/// metric together.
fn record_notes(txn: &PlannedTxn, metrics: &Metrics) {
    for note in &txn.fallbacks {
        let escalation = note.reason.starts_with("fan-out");
        metrics.fallback(&note.rule, escalation);
        tracing::info!(rule = %note.rule, table = %note.table, op = %note.op, lsn = ?txn.commit.lsn.map(|l| l.to_string()), reason = %note.reason, "fallback applied");
    }
    for note in &txn.unrenderable {
        metrics.unrenderable(&note.rule);
        tracing::error!(rule = %note.rule, table = %note.table, op = %note.op, lsn = ?txn.commit.lsn.map(|l| l.to_string()), reason = %note.reason, "change could not be mapped and the rule has no fallback; nothing was invalidated for it");
    }
}

/// Changes received per table and operation, counted per change without formatting or
/// allocating (by relation version id), named once per relation for the metric.
#[derive(Default)]
struct ChangeCounts {
    counts: HashMap<(u64, &'static str), u64, crate::rules::actions::FastState>,
    names: HashMap<u64, String, crate::rules::actions::FastState>,
}

impl ChangeCounts {
    fn count(&mut self, change: &Change) {
        match change {
            Change::Row(r) => self.add(&r.relation, r.op.as_str()),
            Change::Truncate(t) => {
                for rel in &t.relations {
                    self.add(rel, "truncate");
                }
            }
        }
    }

    fn add(&mut self, relation: &crate::model::Relation, op: &'static str) {
        *self.counts.entry((relation.id, op)).or_default() += 1;
        self.names
            .entry(relation.id)
            .or_insert_with(|| relation.qualified_name());
    }

    fn flush_into(&mut self, metrics: &Metrics) {
        for ((id, op), n) in self.counts.drain() {
            if let Some(table) = self.names.get(&id) {
                metrics.changes(table, op, n);
            }
        }
    }
}

/// The commit time as the stream reported it, for latency (exposed for tests).
pub fn latency_seconds(commit: Timestamp) -> f64 {
    ((Timestamp::now().0 - commit.0).max(0) as f64) / 1e6
}
