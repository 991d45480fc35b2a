//! `walbust run`: the daemon loop. Wires the stream, the planner, batching and the Redis
//! targets, and owns acknowledgement:
//!
//! ```text
//! stream ──events──▶ planner ──committed txns──▶ batch ──(delay or size)──▶ every Redis target
//!    ▲                                                                           │
//!    └────────────── applied(last end LSN of the batch) ◀── all targets OK ◀─────┘
//! ```
//!
//! A batch is acknowledged only after every target applied it. While Redis is down the batch is
//! retried with backoff; the loop stops taking events, the stream's bounded buffer fills, and
//! the stream stops reading WAL but keeps the replication connection alive. On shutdown the
//! loop applies what is in flight, acknowledges it, and sends the final status update.

use crate::config::{OnGap, Validated};
use crate::metrics::{self, Metrics};
use crate::model::{Change, Event, Lsn, Timestamp};
use crate::plan::{PlannedTxn, Planner};
use crate::rules::eval::EngineOptions;
use crate::rules::{RuleSet, Severity};
use crate::sink::redis::RedisTarget;
use crate::sink::Batch;
use crate::stream::conn::{ConnectOptions, ReplicationConnection};
use crate::stream::replication::{create_slot, quote_literal, Stream, StreamConfig, StreamError, StreamItem};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Rules(String),
    #[error("{0}")]
    Config(String),
    #[error("startup check failed:\n{0}\nfix the rules or the schema, or set rules.allow_unrenderable = true to start anyway")]
    Startup(String),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("cannot listen for HTTP on {0}: {1}")]
    Http(String, std::io::Error),
}

/// What the daemon did, for tests and the shutdown log line.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub transactions: u64,
    pub batches: u64,
    pub applied: Option<Lsn>,
}

/// Startup checks with database access: the schema facts `check --db` uses; errors (a rule that
/// cannot render for its table's replica identity without a fallback, missing tables or
/// columns, tables outside the publication) refuse the start unless allowed.
async fn startup_checks(connect: &ConnectOptions, rules: &RuleSet, config: &Validated) -> Result<(), DaemonError> {
    let mut conn = ReplicationConnection::connect(connect)
        .await
        .map_err(|e| DaemonError::Stream(StreamError::Conn(e)))?;
    let schema = crate::check::read_schema_with(&mut conn, rules, Some(&config.config.postgres.publication))
        .await
        .map_err(|e| DaemonError::Startup(e.to_string()))?;
    let keep = conn.simple_query("SHOW max_slot_wal_keep_size").await;
    conn.close().await;
    if let Ok(keep) = keep {
        if keep.first("max_slot_wal_keep_size") == Some("-1") {
            tracing::warn!(
                "max_slot_wal_keep_size is unlimited: if walbust stops for long, the slot retains WAL until the disk fills; set a limit on the server"
            );
        }
    }
    let diagnostics = crate::check::check_against_schema(rules, &schema);
    let mut errors = Vec::new();
    for d in &diagnostics {
        match d.severity {
            Severity::Warning => tracing::warn!(finding = %d, "startup check"),
            Severity::Error => errors.push(d.to_string()),
        }
    }
    if !errors.is_empty() {
        if config.config.rules.allow_unrenderable {
            for e in &errors {
                tracing::error!(finding = %e, "startup check (allowed by rules.allow_unrenderable)");
            }
        } else {
            return Err(DaemonError::Startup(errors.join("\n")));
        }
    }
    Ok(())
}

/// Applies a batch to every target, retrying each failed target with backoff until it applies
/// (or shutdown is requested: then returns false and nothing is acknowledged).
async fn apply_everywhere(
    targets: &mut [RedisTarget],
    batch: &Batch,
    metrics: &Metrics,
    retry_max: Duration,
    shutdown_requested: &(dyn Fn() -> bool + Sync),
) -> bool {
    let mut done = vec![false; targets.len()];
    let mut delay = Duration::from_millis(50);
    loop {
        for (i, target) in targets.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            let before = target.round_trips;
            match target.apply(batch).await {
                Ok(()) => {
                    done[i] = true;
                    metrics.actions("delete", &target.name, batch.delete.len() as u64);
                    metrics.actions("bump", &target.name, batch.bump.len() as u64);
                    metrics.actions("tags", &target.name, batch.tags.len() as u64);
                    metrics.actions("delete_matching", &target.name, batch.delete_matching.len() as u64);
                    metrics.actions("publish", &target.name, batch.publish.len() as u64);
                }
                Err(e) => {
                    metrics.redis_error(&target.name);
                    metrics.redis_ok.store(false, Ordering::Relaxed);
                    tracing::warn!(target = %target.name, error = %e, retry_in_ms = delay.as_millis() as u64, "redis apply failed; retrying");
                }
            }
            metrics.round_trips(&target.name, target.round_trips - before);
        }
        if done.iter().all(|d| *d) {
            metrics.redis_ok.store(true, Ordering::Relaxed);
            return true;
        }
        if shutdown_requested() {
            return false;
        }
        // Jittered exponential backoff.
        let jitter = Timestamp::now().0 as u64 % (delay.as_millis() as u64 / 2 + 1);
        tokio::time::sleep(delay / 2 + Duration::from_millis(jitter)).await;
        delay = (delay * 2).min(retry_max);
    }
}

struct Loop {
    planner: Planner,
    batch: Batch,
    batch_started: Option<Instant>,
    change_counts: BTreeMap<(String, &'static str), u64>,
    summary: RunSummary,
}

impl Loop {
    fn record_notes(&self, txn: &PlannedTxn, metrics: &Metrics) {
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
}

/// Runs the daemon until `shutdown` completes or a definite error occurs.
pub async fn run(
    config: Validated,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunSummary, DaemonError> {
    let cfg = &config.config;
    let loaded = crate::rules::load_path(&cfg.rules.path).map_err(|e| DaemonError::Rules(e.to_string()))?;
    for w in &loaded.warnings {
        tracing::warn!(finding = %w, "rules");
    }
    let rules = Arc::new(loaded.rules);
    let connect =
        ConnectOptions::parse(&cfg.postgres.url).map_err(|e| DaemonError::Config(format!("postgres.url: {e}")))?;
    startup_checks(&connect, &rules, &config).await?;

    let metrics = Metrics::new();
    let http_task = if cfg.http.listen.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
            .await
            .map_err(|e| DaemonError::Http(cfg.http.listen.clone(), e))?;
        tracing::info!(listen = %cfg.http.listen, "serving /metrics, /healthz, /readyz");
        Some(tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            cfg.http.ready_max_lag_bytes,
        )))
    };

    let mut targets = Vec::new();
    let mut redelete_targets = Vec::new();
    let redeletes = rules.rules.iter().any(|rule| rule.redelete_after.is_some());
    for (i, r) in cfg.redis.iter().enumerate() {
        let ca = match &r.ca_cert {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                DaemonError::Config(format!("redis[{i}].ca_cert: cannot read {}: {e}", path.display()))
            })?),
            None => None,
        };
        let connect = |ca: Option<Vec<u8>>| {
            RedisTarget::with_tls(&r.url, r.cluster, ca, cfg.apply.delete_command, &cfg.rules.tag_prefix)
                .map_err(|e| DaemonError::Config(format!("redis[{i}].url: {e}")))
        };
        let target = connect(ca.clone())?.with_epoch_key(&cfg.apply.epoch_key);
        if r.cluster && rules.rules.iter().any(|rule| !rule.actions.delete_matching.is_empty()) {
            return Err(DaemonError::Config(format!(
                "redis[{i}]: delete_matching is not supported on Redis Cluster targets (SCAN is per node); replace those rules' patterns with tags or version keys"
            )));
        }
        targets.push(target);
        if redeletes {
            redelete_targets.push(connect(ca)?);
        }
    }
    for target in &mut targets {
        if let Err(e) = target.ping().await {
            tracing::warn!(target = %target.name, error = %e, "redis not reachable yet; changes will wait");
        }
    }

    let stats_task = tokio::spawn(poll_slot_stats(
        connect.clone(),
        cfg.postgres.slot.clone(),
        config.slot_stats_interval,
        metrics.clone(),
    ));

    let stream_config = |connect: &ConnectOptions| {
        let mut s = StreamConfig::new(connect.clone(), &cfg.postgres.slot, &cfg.postgres.publication);
        s.create_slot = cfg.postgres.create_slot;
        s.status_interval = config.status_interval;
        s.backoff_max = config.reconnect_max_delay;
        s.channel_batches = cfg.apply.buffer_batches.max(1);
        s
    };
    let mut stream = Stream::start(stream_config(&connect));
    let engine_options = EngineOptions {
        tag_prefix: cfg.rules.tag_prefix.clone(),
        max_keys_per_transaction: cfg.rules.max_keys_per_transaction,
    };
    let mut state = Loop {
        planner: Planner::with_options(rules.clone(), false, engine_options),
        batch: Batch::default(),
        batch_started: None,
        change_counts: BTreeMap::new(),
        summary: RunSummary::default(),
    };
    // Shutdown is watched by its own task, so a request is seen even while a batch is being
    // retried against an unreachable Redis.
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        redeletes: (!redelete_targets.is_empty()).then(|| start_redeleter(redelete_targets)),
        ..Shared::default()
    });
    let on_shutdown = shared.clone();
    let shutdown_timeout = config.shutdown_timeout;
    let shutdown_task = tokio::spawn(async move {
        shutdown.await;
        on_shutdown.stop.store(true, Ordering::SeqCst);
        on_shutdown.give_up_at.store(
            Timestamp::now().0 + shutdown_timeout.as_micros() as i64,
            Ordering::SeqCst,
        );
        let _ = shutdown_tx.send(true);
    });
    let is_shutdown = || shared.stop.load(Ordering::SeqCst);
    let mut streamed_once = false;
    // Applying runs in its own task, so the next batch is planned while the previous one is
    // applied; batches are applied (and acknowledged) strictly in order.
    let mut applier = Applier::start(
        targets,
        stream.progress(),
        metrics.clone(),
        config.clone(),
        shared.clone(),
    );

    let result: Result<(), DaemonError> = loop {
        if is_shutdown() {
            break Ok(());
        }
        let progress = stream.progress();
        metrics
            .replication_connected
            .store(progress.connected(), Ordering::Relaxed);
        metrics
            .server_wal_end
            .store(progress.server_wal_end().0, Ordering::Relaxed);
        let deadline = state.batch_started.map(|t| t + config.max_batch_delay);
        let flush_due = state.batch.actions() >= cfg.apply.max_batch_actions;
        if flush_due || deadline.is_some_and(|d| Instant::now() >= d) {
            let batch = std::mem::take(&mut state.batch);
            state.batch_started = None;
            tokio::select! {
                sent = applier.tx.send(batch) => {
                    if sent.is_err() {
                        break Ok(());
                    }
                }
                _ = async { let _ = shutdown_rx.wait_for(|stop| *stop).await; } => break Ok(()),
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = async { let _ = shutdown_rx.wait_for(|stop| *stop).await; } => break Ok(()),
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {}
            item = stream.recv() => match item {
                Some(StreamItem::Events(events)) => {
                    streamed_once = true;
                    for event in &events {
                        if let Event::Change(change) = event {
                            count_change(&mut state.change_counts, change);
                        }
                        if let Some(txn) = state.planner.push(event) {
                            metrics.transactions.fetch_add(1, Ordering::Relaxed);
                            state.record_notes(&txn, &metrics);
                            if state.batch.is_empty() {
                                state.batch_started = Some(Instant::now());
                            }
                            state.batch.add(&txn);
                            state.summary.transactions += 1;
                        }
                    }
                    metrics.changes(&state.change_counts);
                    state.change_counts.clear();
                }
                Some(StreamItem::Reconnected { error }) => {
                    metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %error, "replication reconnected; replaying from the last acknowledged position");
                    // A partial transaction will be sent again in full.
                    state.planner.push(&Event::Rollback);
                }
                Some(StreamItem::Failed(e)) => {
                    let gap = matches!(e, StreamError::SlotLost(_)) || (streamed_once && matches!(e, StreamError::SlotMissing(_)));
                    if gap && cfg.apply.on_gap == OnGap::BumpEpoch {
                        // Nothing more from the old slot; what was already batched is real
                        // committed work and is applied first. Then forget everything.
                        state.batch.clear();
                        state.batch_started = None;
                        state.planner.push(&Event::Rollback);
                        let mut targets = applier.finish().await;
                        if let Err(e) = recover_gap(&connect, &cfg.postgres.slot, &mut targets, &cfg.apply.epoch_key, &metrics, &config, &is_shutdown).await {
                            applier = Applier::start(targets, stream.progress(), metrics.clone(), config.clone(), shared.clone());
                            break Err(e);
                        }
                        stream.shutdown().await;
                        stream = Stream::start(stream_config(&connect));
                        applier = Applier::start(targets, stream.progress(), metrics.clone(), config.clone(), shared.clone());
                        continue;
                    }
                    break Err(DaemonError::Stream(e));
                }
                None => break Err(DaemonError::Stream(StreamError::Ended)),
            }
        }
    };

    // Graceful: apply what is in flight (bounded by shutdown_timeout), acknowledge, final status.
    if shared.give_up_at.load(Ordering::SeqCst) == 0 {
        shared.give_up_at.store(
            Timestamp::now().0 + config.shutdown_timeout.as_micros() as i64,
            Ordering::SeqCst,
        );
    }
    if result.is_ok() && !state.batch.is_empty() {
        let batch = std::mem::take(&mut state.batch);
        let _ = tokio::time::timeout(config.shutdown_timeout, applier.tx.send(batch)).await;
    }
    let _ = tokio::time::timeout(config.shutdown_timeout + Duration::from_secs(1), applier.finish()).await;
    let applied = shared.applied.load(Ordering::SeqCst);
    if applied > 0 {
        state.summary.applied = Some(Lsn(applied));
    }
    stream.shutdown().await;
    stats_task.abort();
    shutdown_task.abort();
    if let Some(t) = http_task {
        t.abort();
    }
    state.summary.batches = metrics.batches.load(Ordering::Relaxed);
    tracing::info!(transactions = state.summary.transactions, applied = ?state.summary.applied.map(|l| l.to_string()), "walbust stopped");
    result.map(|_| state.summary)
}

/// State shared between the loop, the applier and the shutdown watcher.
#[derive(Default)]
struct Shared {
    stop: std::sync::atomic::AtomicBool,
    /// Unix microseconds after which a failing apply stops retrying (0: never; set at shutdown).
    give_up_at: std::sync::atomic::AtomicI64,
    /// Highest end LSN every target applied.
    applied: std::sync::atomic::AtomicU64,
    /// Keys to delete again, with when (`redelete_after`).
    redeletes: Option<tokio::sync::mpsc::UnboundedSender<(tokio::time::Instant, Vec<String>)>>,
}

const IDLE_PING_INTERVAL: Duration = Duration::from_secs(1);

/// Counts the targets' fresh epochs (see [`RedisTarget::with_epoch_key`]) in the metrics.
fn record_epoch_resets(targets: &mut [RedisTarget], metrics: &Metrics) {
    let resets: u64 = targets.iter_mut().map(RedisTarget::take_epoch_resets).sum();
    metrics.epoch_resets.fetch_add(resets, Ordering::Relaxed);
}

/// The apply task: takes batches in order, applies each to every target (retrying), then
/// acknowledges its last commit's end LSN.
struct Applier {
    tx: tokio::sync::mpsc::Sender<Batch>,
    task: tokio::task::JoinHandle<Vec<RedisTarget>>,
}

impl Applier {
    fn start(
        mut targets: Vec<RedisTarget>,
        progress: Arc<crate::stream::replication::Progress>,
        metrics: Arc<Metrics>,
        config: Validated,
        shared: Arc<Shared>,
    ) -> Applier {
        // One batch applying, one waiting: bounded memory, overlap of planning and applying.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(1);
        let task = tokio::spawn(async move {
            loop {
                // Idle: ping every target each second, so a Redis that restarted empty is noticed
                // (and given a fresh epoch) within a second, not at the next write.
                let batch = match tokio::time::timeout(IDLE_PING_INTERVAL, rx.recv()).await {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(_) => {
                        for target in targets.iter_mut() {
                            if let Err(e) = target.ping().await {
                                tracing::debug!(target = %target.name, error = %e, "idle ping failed");
                            }
                        }
                        record_epoch_resets(&mut targets, &metrics);
                        continue;
                    }
                };
                let give_up = || {
                    let at = shared.give_up_at.load(Ordering::SeqCst);
                    at != 0 && Timestamp::now().0 >= at
                };
                if !apply_everywhere(&mut targets, &batch, &metrics, config.retry_max_delay, &give_up).await {
                    tracing::warn!(
                        "shutdown timeout reached before Redis applied a batch; it will be replayed on restart"
                    );
                    break;
                }
                record_epoch_resets(&mut targets, &metrics);
                let now = Timestamp::now().0;
                for t in &batch.commit_times {
                    metrics.latency(((now - t.0).max(0) as f64) / 1e6);
                }
                metrics.batch(batch.actions());
                if let Some(end) = batch.last_end {
                    progress.mark_applied(end);
                    metrics.applied_lsn.fetch_max(end.0, Ordering::Relaxed);
                    shared.applied.fetch_max(end.0, Ordering::SeqCst);
                }
                if let Some(redeletes) = &shared.redeletes {
                    schedule_redeletes(&batch, redeletes);
                }
            }
            targets
        });
        Applier { tx, task }
    }

    /// Applies what was sent, then returns the targets.
    async fn finish(self) -> Vec<RedisTarget> {
        drop(self.tx);
        self.task.await.unwrap_or_default()
    }
}

fn count_change(counts: &mut BTreeMap<(String, &'static str), u64>, change: &Change) {
    match change {
        Change::Row(r) => {
            let key = (r.relation.qualified_name(), r.op.as_str());
            *counts.entry(key).or_default() += 1;
        }
        Change::Truncate(t) => {
            for rel in &t.relations {
                *counts.entry((rel.qualified_name(), "truncate")).or_default() += 1;
            }
        }
    }
}

/// `redelete_after`: delete the keys once more after their delay, narrowing the window in which
/// a reader that loaded the old row before the commit can put a stale value back. Best effort on
/// fresh connections: the first delete is what was acknowledged.
fn schedule_redeletes(
    batch: &Batch,
    redeletes: &tokio::sync::mpsc::UnboundedSender<(tokio::time::Instant, Vec<String>)>,
) {
    let mut by_delay: BTreeMap<Duration, Vec<String>> = BTreeMap::new();
    for (key, delay) in &batch.redelete {
        by_delay.entry(*delay).or_default().push(key.clone());
    }
    let now = tokio::time::Instant::now();
    for (delay, keys) in by_delay {
        let _ = redeletes.send((now + delay, keys));
    }
}

/// The delayed re-deletes (`redelete_after`, best effort): one long-lived task with its own
/// connection per target; keys that fall due together are merged and deleted in one pipelined
/// round trip per target. (A connection per batch cost a TCP handshake per batch on Redis.)
fn start_redeleter(
    mut targets: Vec<RedisTarget>,
) -> tokio::sync::mpsc::UnboundedSender<(tokio::time::Instant, Vec<String>)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<String>)>();
    tokio::spawn(async move {
        let mut due: BTreeMap<tokio::time::Instant, Vec<String>> = BTreeMap::new();
        loop {
            let next = due.keys().next().copied();
            let wait = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = rx.recv() => match message {
                    Some((at, keys)) => due.entry(at).or_default().extend(keys),
                    None => break,
                },
                _ = wait => {
                    let now = tokio::time::Instant::now();
                    let mut keys = Vec::new();
                    while let Some(entry) = due.first_entry() {
                        if *entry.key() > now {
                            break;
                        }
                        keys.extend(entry.remove());
                    }
                    keys.sort_unstable();
                    keys.dedup();
                    for target in targets.iter_mut() {
                        if let Err(e) = target.delete_keys(&keys).await {
                            tracing::warn!(target = %target.name, error = %e, keys = keys.len(), "delayed re-delete failed");
                        }
                    }
                }
            }
        }
    });
    tx
}

/// A gap in the slot's history: bump the epoch on every target (so every cache key changes),
/// then drop and recreate the slot and stream on from its new position.
async fn recover_gap(
    connect: &ConnectOptions,
    slot: &str,
    targets: &mut [RedisTarget],
    epoch_key: &str,
    metrics: &Metrics,
    config: &Validated,
    is_shutdown: &(dyn Fn() -> bool + Sync),
) -> Result<(), DaemonError> {
    tracing::error!(
        slot,
        "the slot's history has a gap; bumping the global epoch (on_gap = bump_epoch) and recreating the slot"
    );
    let mut conn = ReplicationConnection::connect(connect)
        .await
        .map_err(|e| DaemonError::Stream(StreamError::Conn(e)))?;
    let _ = conn
        .simple_query(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ))
        .await;
    // The new slot starts now; bumping the epoch after its creation covers everything before.
    create_slot(&mut conn, slot, false)
        .await
        .map_err(|e| DaemonError::Stream(StreamError::Conn(e)))?;
    conn.close().await;
    let mut delay = Duration::from_millis(50);
    for target in targets.iter_mut() {
        loop {
            match target.bump_epoch(epoch_key).await {
                Ok(epoch) => {
                    tracing::warn!(target = %target.name, epoch, "global epoch bumped");
                    break;
                }
                Err(e) => {
                    if is_shutdown() {
                        return Err(DaemonError::Config(format!(
                            "shutdown before the epoch was bumped: {e}"
                        )));
                    }
                    tracing::warn!(target = %target.name, error = %e, "epoch bump failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(config.retry_max_delay);
                }
            }
        }
    }
    metrics.epoch_bumps.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Polls the slot's retained WAL and confirmed lag for the metrics.
async fn poll_slot_stats(connect: ConnectOptions, slot: String, every: Duration, metrics: Arc<Metrics>) {
    let mut conn: Option<ReplicationConnection> = None;
    loop {
        if conn.is_none() {
            conn = ReplicationConnection::connect(&connect).await.ok();
        }
        if let Some(c) = &mut conn {
            let q = format!(
                "SELECT coalesce(pg_current_wal_lsn() - restart_lsn, 0)::bigint::text AS retained, \
                 coalesce(pg_current_wal_lsn() - confirmed_flush_lsn, 0)::bigint::text AS lag \
                 FROM pg_replication_slots WHERE slot_name = {}",
                quote_literal(&slot)
            );
            match c.simple_query(&q).await {
                Ok(r) => {
                    if let Some(v) = r.first("retained").and_then(|v| v.parse::<i64>().ok()) {
                        metrics
                            .slot_retained_wal_bytes
                            .store(v.max(0) as u64, Ordering::Relaxed);
                    }
                    if let Some(v) = r.first("lag").and_then(|v| v.parse::<i64>().ok()) {
                        metrics.slot_lag_bytes.store(v.max(0) as u64, Ordering::Relaxed);
                    }
                }
                Err(_) => conn = None,
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The commit time as the stream reported it, for latency (exposed for tests).
pub fn latency_seconds(commit: Timestamp) -> f64 {
    ((Timestamp::now().0 - commit.0).max(0) as f64) / 1e6
}
