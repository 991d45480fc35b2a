//! Sinks: where planned work goes. Every target — the Redis applier ([`redis`]), memcached
//! ([`memcached`]), HTTP caches and CDNs purged by surrogate key ([`http`]), the dry-run printer
//! ([`dryrun`]), and any new one — implements [`Sink`] and keeps its delivery contract.
//!
//! # The delivery contract
//!
//! * **Unit.** A sink receives [`Batch`]es: the deduplicated actions of one or more committed
//!   transactions, in commit order, never a partial or aborted transaction.
//! * **Progress.** The daemon acknowledges a batch's last commit to PostgreSQL only after every
//!   sink returned `Ok` from [`Sink::apply`] for it (and for every batch before it). `Ok` means
//!   the actions are durable in the target as far as the target can promise.
//! * **Retries and replay (at-least-once).** On `Err` the daemon applies the *same* batch to
//!   that sink again, with backoff, until it succeeds; after a crash or a reconnect, batches
//!   after the acknowledged position are delivered again. So `apply` must be idempotent:
//!   applying a batch, or any earlier batch, twice must leave the target as applying it once.
//! * **Coarser, never narrower.** A sink that cannot perform an action exactly performs a
//!   coarser one (more invalidated) or fails; it never skips an action silently.
//! * **Gaps.** [`Sink::bump_epoch`] invalidates everything the target holds; the daemon calls it
//!   when the slot's history has a gap (`on_gap = bump_epoch`). A sink with state keeps a gap
//!   mark ([`Sink::mark_gap`]) from before the slot is touched until the bump, so a crash in
//!   between is finished at the next start.
//!
//! * **Watermark.** A sink with state writes, with its applied work, how far it applied
//!   ([`Watermark`]: the position and the PostgreSQL system and timeline it belongs to), and
//!   reports through [`Sink::take_rollback`] when the target later holds less than it was sent
//!   (a restore from an older snapshot, lost AOF writes, a promoted lagging replica, a restart
//!   empty). The daemon then replays from the slot, or bumps the epoch when the loss is older
//!   than what the slot still holds.
//!
//! To add a target: implement [`Sink`], build it from its configuration entry in
//! `daemon::targets`, and test it against the real service (see docs/architecture.md).

pub mod dryrun;
pub mod http;
pub mod memcached;
pub mod redis;

pub use walbust_core::model::{Lsn, Origin};
pub use walbust_core::plan::Batch;

use std::future::Future;
use std::pin::Pin;

/// What a sink's async methods return.
pub type SinkFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SinkError>> + Send + 'a>>;

/// A sink could not apply (the batch will be applied again) or cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Redis(#[from] self::redis::RedisError),
    #[error(transparent)]
    Memcached(self::memcached::MemcachedError),
    #[error(transparent)]
    Http(#[from] self::http::HttpError),
    #[error("cannot write: {0}")]
    Io(#[from] std::io::Error),
}

/// How far a target applied, as the target itself keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub lsn: Lsn,
    pub origin: Origin,
}

/// What [`Sink::read_watermark`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatermarkState {
    /// The sink keeps no state (a printer): nothing can be lost.
    NotKept,
    /// The target holds no watermark: new, emptied, or never written by this version.
    Missing,
    Found(Watermark),
}

/// A target found holding less than it was sent: `had` is the watermark written to it, `now`
/// what it holds (`None`: nothing, the target is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollback {
    pub had: Lsn,
    pub now: Option<Lsn>,
}

impl SinkError {
    /// The failure's kind for metrics and logs (`connection`, `timeout`, `permission`,
    /// `configuration`, `readonly`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Redis(e) => e.kind(),
            SinkError::Http(e) => e.kind(),
            SinkError::Memcached(e) => e.kind(),
            SinkError::Io(_) => "io",
        }
    }

    /// Retrying alone will not fix it: an operator must (it is still retried, loudly).
    pub fn needs_operator(&self) -> bool {
        matches!(
            self.kind(),
            "permission" | "configuration" | "readonly" | "out_of_memory"
        )
    }
}

/// A target of planned invalidations. See the module documentation for the contract.
pub trait Sink: Send {
    /// A name for logs and metric labels (no secrets).
    fn name(&self) -> &str;

    /// Applies every action of `batch`. Idempotent; on `Err` the same batch comes again.
    fn apply<'a>(&'a mut self, batch: &'a Batch) -> SinkFuture<'a, ()>;

    /// Checks the target answers (while idle). The default has nothing to check.
    fn ping(&mut self) -> SinkFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Invalidates everything the target holds (a gap in the slot's history); returns the new
    /// epoch where the target keeps one.
    fn bump_epoch(&mut self) -> SinkFuture<'_, Option<i64>>;

    /// Records, in the target itself so it survives a crash of walbust, that a gap is being
    /// recovered and not yet covered by [`Sink::bump_epoch`]. The default keeps nothing (for
    /// sinks without state, such as the printer).
    fn mark_gap(&mut self) -> SinkFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Whether a gap recorded by [`Sink::mark_gap`] is still pending.
    fn gap_pending(&mut self) -> SinkFuture<'_, bool> {
        Box::pin(async { Ok(false) })
    }

    /// The gap is covered: forget the mark.
    fn clear_gap(&mut self) -> SinkFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// The server the positions of the following batches belong to (written with the watermark).
    fn set_origin(&mut self, _origin: &Origin) {}

    /// Reads the target's watermark (at startup, before streaming); a sink that keeps one starts
    /// comparing against it.
    fn read_watermark(&mut self) -> SinkFuture<'_, WatermarkState> {
        Box::pin(async { Ok(WatermarkState::NotKept) })
    }

    /// A rollback found since the last call (checked on every reconnect and idle ping).
    fn take_rollback(&mut self) -> Option<Rollback> {
        None
    }

    /// Keys of the wrong type the sink replaced since the last call (for metrics).
    fn take_wrong_types(&mut self) -> u64 {
        0
    }

    /// Round trips to the target since the last call (for metrics).
    fn take_round_trips(&mut self) -> u64 {
        0
    }

    /// Times the target was found restarted empty since the last call (for metrics).
    fn take_epoch_resets(&mut self) -> u64 {
        0
    }
}
