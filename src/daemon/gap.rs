//! Gap recovery (`on_gap = bump_epoch`): the slot's history has a gap (lost, or missing after
//! streaming), so the changes in it are unknowable. Every sink's epoch is bumped — every cache
//! key changes — and the slot is recreated so streaming continues from now.

use super::applier::BoxSink;
use super::DaemonError;
use crate::failpoint;
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::sink::SinkFuture;
use crate::source::conn::{ConnectOptions, ReplicationConnection};
use crate::source::slot::{create_slot, quote_literal};
use crate::source::stream::StreamError;
use std::time::Duration;

/// Recovers from a gap, in an order that survives a crash at any step:
///
/// 1. mark the gap on every sink (kept in the target, so the next start sees it);
/// 2. bump the epoch on every sink (readers stop trusting what they cached);
/// 3. drop and recreate the slot (streaming continues from now);
/// 4. bump again: the new slot starts after the first bump, so changes committed in between
///    are covered only by this one;
/// 5. clear the mark.
///
/// A start that finds a mark ([`resume_pending`]) runs the whole recovery again: recreating the
/// slot once more loses nothing the last bump does not cover. Tests stop the process after each
/// step with `WALBUST_FAILPOINT=gap:marked|gap:bumped|gap:slot_recreated|gap:bumped_again`.
pub async fn recover(
    connect: &ConnectOptions,
    slot: &str,
    sinks: &mut [BoxSink],
    metrics: &Metrics,
    retry_max_delay: Duration,
    is_shutdown: &(dyn Fn() -> bool + Sync),
) -> Result<(), DaemonError> {
    tracing::error!(
        slot,
        "the slot's history has a gap; bumping the global epoch (on_gap = bump_epoch) and recreating the slot"
    );
    let retry = Retry {
        max_delay: retry_max_delay,
        is_shutdown,
    };
    retry.each(sinks, "mark the gap", |s| s.mark_gap()).await?;
    failpoint::exit_at("gap:marked");
    retry.each(sinks, "bump the epoch", bump).await?;
    failpoint::exit_at("gap:bumped");
    retry.postgres(|| recreate_slot(connect, slot)).await?;
    failpoint::exit_at("gap:slot_recreated");
    retry.each(sinks, "bump the epoch", bump).await?;
    failpoint::exit_at("gap:bumped_again");
    retry.each(sinks, "clear the gap mark", |s| s.clear_gap()).await?;
    metrics.epoch_bump();
    Ok(())
}

/// At startup, before streaming: a gap mark left by a recovery that did not finish (the process
/// died in it) means the recovery runs again.
pub async fn resume_pending(
    connect: &ConnectOptions,
    slot: &str,
    sinks: &mut [BoxSink],
    metrics: &Metrics,
    retry_max_delay: Duration,
    is_shutdown: &(dyn Fn() -> bool + Sync),
) -> Result<(), DaemonError> {
    let mut pending = Vec::new();
    for sink in sinks.iter_mut() {
        let mut backoff = Backoff::new(Duration::from_millis(50), retry_max_delay);
        loop {
            match sink.gap_pending().await {
                Ok(found) => {
                    if found {
                        pending.push(sink.name().to_string());
                    }
                    break;
                }
                // Nothing was started: a mark, if there is one, stays for the next start.
                Err(_) if is_shutdown() => return Ok(()),
                Err(e) => {
                    tracing::warn!(target = %sink.name(), error = %e, "cannot read the gap mark; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    tracing::error!(
        targets = ?pending,
        "a gap recovery did not finish before walbust stopped; finishing it before streaming"
    );
    recover(connect, slot, sinks, metrics, retry_max_delay, is_shutdown).await
}

fn bump(sink: &mut BoxSink) -> SinkFuture<'_, ()> {
    Box::pin(async move {
        let epoch = sink.bump_epoch().await?;
        tracing::warn!(target = %sink.name(), epoch = ?epoch, "global epoch bumped");
        Ok(())
    })
}

/// Retries one step until it succeeds, or gives up at shutdown (the gap mark stays, so the next
/// start finishes the recovery).
struct Retry<'a> {
    max_delay: Duration,
    is_shutdown: &'a (dyn Fn() -> bool + Sync),
}

impl Retry<'_> {
    /// The PostgreSQL step: a gap is usually found while a failover is still settling.
    async fn postgres<F, Fut>(&self, mut step: F) -> Result<(), DaemonError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), DaemonError>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(200), self.max_delay);
        loop {
            match step().await {
                Ok(()) => return Ok(()),
                Err(e) if (self.is_shutdown)() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot recreate the slot; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    async fn each(
        &self,
        sinks: &mut [BoxSink],
        step: &str,
        mut action: impl for<'s> FnMut(&'s mut BoxSink) -> SinkFuture<'s, ()>,
    ) -> Result<(), DaemonError> {
        for sink in sinks.iter_mut() {
            let mut backoff = Backoff::new(Duration::from_millis(50), self.max_delay);
            loop {
                match action(sink).await {
                    Ok(()) => break,
                    Err(e) if (self.is_shutdown)() => return Err(DaemonError::EpochNotBumped(e)),
                    Err(e) => {
                        tracing::warn!(target = %sink.name(), error = %e, step, "gap recovery step failed; retrying");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        }
        Ok(())
    }
}

async fn recreate_slot(connect: &ConnectOptions, slot: &str) -> Result<(), DaemonError> {
    let conn_err = |e| DaemonError::Stream(StreamError::Conn(e));
    let mut conn = ReplicationConnection::connect(connect).await.map_err(conn_err)?;
    let _ = conn
        .simple_query(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ))
        .await;
    create_slot(&mut conn, slot, false).await.map_err(conn_err)?;
    conn.close().await;
    Ok(())
}
