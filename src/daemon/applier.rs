//! The applier: takes batches in commit order, applies each to every sink (retrying each
//! failed sink with backoff until it applies), and only then advances the applied position —
//! the one place that does ([`Progress::mark_applied`]).

use super::redelete::Redeleter;
use crate::failpoint;
use crate::metrics::Metrics;
use crate::model::Timestamp;
use crate::retry::Backoff;
use crate::sink::{Batch, Rollback, Sink, SinkError, SinkFuture};
use crate::source::stream::Progress;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A sink as the daemon holds it.
pub type BoxSink = Box<dyn Sink>;

/// While idle, every sink is pinged this often, so a Redis that restarted empty is noticed
/// (and given a fresh epoch) within a second, not at the next write.
const IDLE_PING_INTERVAL: Duration = Duration::from_secs(1);
/// First delay before applying a failed batch again.
const RETRY_INITIAL_DELAY: Duration = Duration::from_millis(50);

/// When a failing apply stops retrying: never until shutdown, then after the shutdown timeout.
#[derive(Default)]
pub struct GiveUp {
    /// Unix microseconds; 0 = never.
    at: AtomicI64,
}

impl GiveUp {
    /// Gives up `after` from now (kept if already set).
    pub fn arm(&self, after: Duration) {
        let at = Timestamp::now().0 + after.as_micros() as i64;
        let _ = self.at.compare_exchange(0, at, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn due(&self) -> bool {
        let at = self.at.load(Ordering::SeqCst);
        at != 0 && Timestamp::now().0 >= at
    }
}

/// What the apply task needs besides its sinks.
#[derive(Clone)]
pub struct ApplierContext {
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
    pub retry_max_delay: Duration,
    pub give_up: Arc<GiveUp>,
    pub redeleter: Option<Redeleter>,
    /// Since when a batch has been failing to apply (`None`: applying), for
    /// `apply.release_slot_after`.
    pub stalled: Arc<tokio::sync::watch::Sender<Option<std::time::Instant>>>,
}

/// A batch as the daemon hands it over: with the [`Progress`] generation it was planned in (a
/// batch planned before a rewind is applied, but its position no longer counts).
pub struct Queued {
    pub generation: u64,
    pub batch: Batch,
}

/// The running apply task.
pub struct Applier {
    pub tx: tokio::sync::mpsc::Sender<Queued>,
    task: tokio::task::JoinHandle<Vec<BoxSink>>,
    /// True while the task has a round trip in flight (applying a batch, or pinging).
    busy: tokio::sync::watch::Receiver<bool>,
}

/// What the daemon loop waits for from the applier.
pub enum ApplierEvent {
    /// The task started or finished a round trip: whether it is idle now is for
    /// [`Applier::is_idle`] to say.
    BusyChanged,
    /// The task ended by itself (a failure; it only ends when asked).
    Ended(Result<(), ApplierFailed>),
}

/// The apply task ended abnormally; its sinks are gone with it.
#[derive(Debug, thiserror::Error)]
#[error("the apply task failed: {0}; nothing after the last acknowledged position was acknowledged")]
pub struct ApplierFailed(#[from] tokio::task::JoinError);

impl Applier {
    pub fn start(sinks: Vec<BoxSink>, context: ApplierContext) -> Applier {
        // One batch applying, one waiting: bounded memory, overlap of planning and applying.
        let (tx, rx) = tokio::sync::mpsc::channel::<Queued>(1);
        let (busy_tx, busy) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(apply_loop(sinks, rx, busy_tx, context));
        Applier { tx, task, busy }
    }

    /// Whether a batch sent now would go out at once: no round trip in flight, nothing queued.
    /// Marks the current state seen, so [`Applier::next_event`] waits for the next change.
    pub fn is_idle(&mut self) -> bool {
        let busy = *self.busy.borrow_and_update();
        !busy && self.tx.capacity() == self.tx.max_capacity()
    }

    /// Waits for the task in `slot` to start or finish a round trip (when `want_idle`) or to end
    /// by itself; an ended task leaves `None` behind. Pending while no task runs.
    pub async fn next_event(slot: &mut Option<Applier>, want_idle: bool) -> ApplierEvent {
        let Some(applier) = slot else {
            return std::future::pending().await;
        };
        tokio::select! {
            ended = &mut applier.task => {
                *slot = None;
                ApplierEvent::Ended(ended.map(|_| ()).map_err(ApplierFailed))
            }
            changed = applier.busy.changed(), if want_idle => match changed {
                Ok(()) => ApplierEvent::BusyChanged,
                // The task dropped its end: it is ending; the next wait sees how.
                Err(_) => std::future::pending().await,
            },
        }
    }

    /// Applies what was sent, then hands the sinks back.
    pub async fn finish(self) -> Result<Vec<BoxSink>, ApplierFailed> {
        drop(self.tx);
        Ok(self.task.await?)
    }
}

async fn apply_loop(
    mut sinks: Vec<BoxSink>,
    mut rx: tokio::sync::mpsc::Receiver<Queued>,
    busy: tokio::sync::watch::Sender<bool>,
    context: ApplierContext,
) -> Vec<BoxSink> {
    // Reachability is known from the start, not from the first applied change: an idle
    // daemon with every target answering is ready.
    ping_all(&mut sinks, &context.metrics, true).await;
    // Read once: the environment is not consulted per batch.
    let panic_failpoint = failpoint::hit("applier:panic");
    // The origin is handed to the sinks when it changes, not read per batch.
    let mut origin_seen = u64::MAX;
    loop {
        busy.send_replace(false);
        let Queued { generation, batch } = match tokio::time::timeout(IDLE_PING_INTERVAL, rx.recv()).await {
            Ok(Some(queued)) => queued,
            Ok(None) => break,
            Err(_) => {
                busy.send_replace(true);
                let warn = context.metrics.redis_ok();
                let answered = ping_all(&mut sinks, &context.metrics, warn).await;
                if !recover_rollbacks(&mut sinks, &context).await {
                    break;
                }
                if answered {
                    // Each ping read the target's watermark back: nothing was lost until now.
                    context.progress.confirm_targets();
                }
                continue;
            }
        };
        busy.send_replace(true);
        if panic_failpoint {
            panic!("failpoint applier:panic");
        }
        let origin_changes = context.progress.origin_changes();
        if origin_changes != origin_seen {
            origin_seen = origin_changes;
            if let Some(origin) = context.progress.origin() {
                for sink in sinks.iter_mut() {
                    sink.set_origin(&origin);
                }
            }
        }
        if !apply_everywhere(&mut sinks, &batch, &context).await {
            tracing::warn!(
                "shutdown timeout reached before every target applied a batch; it will be replayed on restart"
            );
            break;
        }
        record_epoch_resets(&mut sinks, &context.metrics);
        let now = Timestamp::now().0;
        for t in &batch.commit_times {
            context.metrics.latency(((now - t.0).max(0) as f64) / 1e6);
        }
        context.metrics.batch(batch.actions());
        // A target found rolled back while applying: the rewind makes this batch not count.
        if !recover_rollbacks(&mut sinks, &context).await {
            break;
        }
        // Every target applied and was checked (its watermark, or its connection unbroken).
        context.progress.confirm_targets();
        if let Some(end) = batch.last_end {
            context.progress.mark_applied_in(generation, end);
        }
        if let Some(redeleter) = &context.redeleter {
            redeleter.schedule(&batch);
        }
    }
    sinks
}

/// Pings every sink; the result is what `/readyz` reports as reachability. Failures are
/// logged at WARN when `warn` (at startup, and once per outage), else at DEBUG. Returns whether
/// every sink answered.
async fn ping_all(sinks: &mut [BoxSink], metrics: &Metrics, warn: bool) -> bool {
    let mut all_answered = true;
    for sink in sinks.iter_mut() {
        if let Err(e) = sink.ping().await {
            all_answered = false;
            if warn {
                tracing::warn!(target = %sink.name(), error = %e, "target not reachable; changes will wait");
            } else {
                tracing::debug!(target = %sink.name(), error = %e, "target still not reachable");
            }
        }
    }
    if all_answered {
        metrics.redis_reached();
    } else {
        metrics.redis_unreachable();
    }
    record_epoch_resets(sinks, metrics);
    all_answered
}

/// Targets found holding less than they were sent (see `Sink::take_rollback`). Everything not
/// yet acknowledged is replayed from the slot (the durability window keeps the acknowledged
/// position behind what targets applied, so an everysec AOF or a recent snapshot loses only
/// replayable positions); a target that lost more than that gets a new epoch. Returns false when
/// shutdown came before a needed epoch bump (then nothing more is acknowledged).
async fn recover_rollbacks(sinks: &mut [BoxSink], context: &ApplierContext) -> bool {
    let rollbacks: Vec<(usize, Rollback)> = sinks
        .iter_mut()
        .enumerate()
        .filter_map(|(i, sink)| sink.take_rollback().map(|r| (i, r)))
        .collect();
    if rollbacks.is_empty() {
        return true;
    }
    let acknowledged = context.progress.rewind_for_replay();
    for (i, rollback) in rollbacks {
        let sink = &mut sinks[i];
        context.metrics.redis_rollback(sink.name());
        let now = rollback
            .now
            .map_or_else(|| "nothing (empty)".to_string(), |l| l.to_string());
        if rollback.now.is_some_and(|now| now >= acknowledged) {
            tracing::warn!(
                target = %sink.name(),
                had = %rollback.had,
                now = %now,
                acknowledged = %acknowledged,
                "redis target went back (restored from an older snapshot, lost AOF writes, or a promoted replica); replaying everything after the acknowledged position from the slot"
            );
            continue;
        }
        tracing::error!(
            target = %sink.name(),
            had = %rollback.had,
            now = %now,
            acknowledged = %acknowledged,
            "redis target went back further than the slot can replay (the loss is older than apply.durability_window); bumping the epoch on this target so nothing it lost is read again, and replaying the rest"
        );
        let mut backoff = Backoff::new(RETRY_INITIAL_DELAY, context.retry_max_delay);
        loop {
            match sink.bump_epoch().await {
                Ok(epoch) => {
                    context.metrics.epoch_bump();
                    tracing::warn!(target = %sink.name(), epoch = ?epoch, "epoch bumped after a rollback");
                    break;
                }
                Err(e) => {
                    tracing::warn!(target = %sink.name(), error = %e, "cannot bump the epoch after a rollback; retrying");
                    if context.give_up.due() {
                        return false;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
    true
}

/// Counts the sinks' fresh epochs (see `RedisTarget::with_epoch_key`) in the metrics.
fn record_epoch_resets(sinks: &mut [BoxSink], metrics: &Metrics) {
    let resets: u64 = sinks.iter_mut().map(|s| s.take_epoch_resets()).sum();
    metrics.epoch_resets(resets);
}

/// Applies a batch to every sink, retrying each failed sink with backoff until it applies.
/// Returns false when the shutdown timeout passed first: then nothing is acknowledged.
async fn apply_everywhere(sinks: &mut [BoxSink], batch: &Batch, context: &ApplierContext) -> bool {
    let metrics = &context.metrics;
    let mut done = vec![false; sinks.len()];
    let mut backoff = Backoff::new(RETRY_INITIAL_DELAY, context.retry_max_delay);
    loop {
        // Every target that still needs the batch gets it at the same time: with several
        // targets a batch takes the slowest round trip, not their sum.
        let applying: Vec<(usize, SinkFuture<'_, ()>)> = sinks
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| !done[*i])
            .map(|(i, sink)| (i, sink.apply(batch)))
            .collect();
        let (indices, futures): (Vec<usize>, Vec<_>) = applying.into_iter().unzip();
        let results = join_all(futures).await;
        for (i, result) in indices.into_iter().zip(results) {
            let sink = &mut sinks[i];
            match result {
                Ok(()) => {
                    done[i] = true;
                    metrics.applied(sink.name(), batch);
                }
                Err(e) => {
                    metrics.redis_error(sink.name(), e.kind());
                    if e.needs_operator() {
                        // Said at every retry: nothing behind it is applied until it is fixed.
                        tracing::error!(target = %sink.name(), kind = e.kind(), error = %e, "apply failed and will keep failing until the target or the configuration is fixed; invalidations wait (not acknowledged)");
                    } else {
                        tracing::warn!(target = %sink.name(), kind = e.kind(), error = %e, "apply failed; retrying");
                    }
                }
            }
            for _ in 0..sink.take_wrong_types() {
                metrics.redis_error(sink.name(), "wrongtype");
            }
            let round_trips = sink.take_round_trips();
            metrics.round_trips(sink.name(), round_trips);
        }
        if done.iter().all(|d| *d) {
            metrics.redis_reached();
            context.stalled.send_if_modified(|since| since.take().is_some());
            return true;
        }
        context.stalled.send_if_modified(|since| {
            let first = since.is_none();
            since.get_or_insert_with(std::time::Instant::now);
            first
        });
        if context.give_up.due() {
            return false;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Runs the futures concurrently on this task and returns their results in order.
async fn join_all<'a, T>(mut futures: Vec<SinkFuture<'a, T>>) -> Vec<Result<T, SinkError>> {
    let mut results: Vec<Option<Result<T, SinkError>>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, result) in futures.iter_mut().zip(results.iter_mut()) {
            if result.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => *result = Some(r),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_all_runs_together_and_keeps_the_order() {
        let started = std::time::Instant::now();
        let futures: Vec<SinkFuture<'static, u32>> = (0..3u32)
            .map(|i| -> SinkFuture<'static, u32> {
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if i == 1 {
                        Err(SinkError::Io(std::io::Error::other("target 1 down")))
                    } else {
                        Ok(i)
                    }
                })
            })
            .collect();
        let results = join_all(futures).await;
        // Concurrently: about one sleep, not three.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(results[0], Ok(0)));
        assert!(results[1].is_err());
        assert!(matches!(results[2], Ok(2)));
    }
}
