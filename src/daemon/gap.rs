//! Gap recovery (`on_gap = bump_epoch`): the slot's history has a gap (lost, or missing after
//! streaming), so the changes in it are unknowable. Every sink's epoch is bumped — every cache
//! key changes — and the slot is recreated so streaming continues from now.

use super::applier::BoxSink;
use super::DaemonError;
use crate::failpoint;
use crate::metrics::Metrics;
use crate::model::{Lsn, Origin};
use crate::retry::Backoff;
use crate::sink::SinkFuture;
use crate::sink::WatermarkState;
use crate::source::conn::{ConnectOptions, ReplicationConnection};
use crate::source::slot::{create_slot, identify_system, quote_literal, slot_info};
use crate::source::stream::{Progress, StreamError};
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
/// A start that finds a mark ([`Recovery::resume_pending`]) runs the whole recovery again:
/// recreating the slot once more loses nothing the last bump does not cover. Tests stop the
/// process after each step with
/// `WALBUST_FAILPOINT=gap:marked|gap:bumped|gap:slot_recreated|gap:bumped_again`.
pub struct Recovery<'a> {
    pub connect: &'a ConnectOptions,
    pub slot: &'a str,
    pub metrics: &'a Metrics,
    pub retry_max_delay: Duration,
    pub is_shutdown: &'a (dyn Fn() -> bool + Sync),
}

impl Recovery<'_> {
    pub async fn recover(&self, sinks: &mut [BoxSink]) -> Result<(), DaemonError> {
        tracing::error!(
            slot = self.slot,
            "the slot's history has a gap; bumping the global epoch (on_gap = bump_epoch) and recreating the slot"
        );
        self.on_every_sink(sinks, "mark the gap", |s| s.mark_gap()).await?;
        failpoint::exit_at("gap:marked");
        self.on_every_sink(sinks, "bump the epoch", bump).await?;
        failpoint::exit_at("gap:bumped");
        self.recreate_slot().await?;
        failpoint::exit_at("gap:slot_recreated");
        self.on_every_sink(sinks, "bump the epoch", bump).await?;
        failpoint::exit_at("gap:bumped_again");
        self.on_every_sink(sinks, "clear the gap mark", |s| s.clear_gap())
            .await?;
        self.metrics.epoch_bump();
        Ok(())
    }

    /// At startup, before streaming: a gap mark left by a recovery that did not finish (the
    /// process died in it) means the recovery runs again.
    pub async fn resume_pending(&self, sinks: &mut [BoxSink]) -> Result<(), DaemonError> {
        let pending = self.pending(sinks).await;
        if pending.is_empty() {
            return Ok(());
        }
        tracing::error!(
            targets = ?pending,
            "a gap recovery did not finish before walbust stopped; finishing it before streaming"
        );
        self.recover(sinks).await
    }

    /// At startup, before streaming: does every target still hold what it was last sent? Its
    /// watermark is compared with the server (system identifier and timeline) and the slot's
    /// confirmed position, which is where streaming resumes. A target behind that position, last
    /// written from another server or timeline, or without a watermark while it kept its epoch
    /// (restored from a snapshot older than this version's watermarks), has lost what the slot
    /// cannot send again: its epoch is bumped. Records the server in `progress`, so a stream
    /// that then reaches a different one reports the change.
    pub async fn check_watermarks(&self, sinks: &mut [BoxSink], progress: &Progress) -> Result<(), DaemonError> {
        let (origin, confirmed) = self.server_position().await?;
        progress.set_origin(origin.clone());
        for sink in sinks.iter_mut() {
            let mut backoff = self.backoff();
            let state = loop {
                match sink.read_watermark().await {
                    Ok(state) => break state,
                    Err(e) => {
                        if !self
                            .wait_to_retry(&mut backoff, sink.name(), "read the watermark", &e)
                            .await
                        {
                            return Ok(());
                        }
                    }
                }
            };
            let fresh_epoch = sink.take_epoch_resets();
            self.metrics.epoch_resets(fresh_epoch);
            let lost = match (&state, confirmed) {
                (WatermarkState::NotKept, _) => None,
                (WatermarkState::Missing, None) => None,
                (WatermarkState::Missing, Some(_)) if fresh_epoch > 0 => None,
                (WatermarkState::Missing, Some(_)) => Some(
                    "it holds an epoch but no watermark (first start of a walbust that writes one, or restored from a snapshot older than it)".to_string(),
                ),
                (WatermarkState::Found(w), _) if !w.origin.system.is_empty() && w.origin != origin => Some(format!(
                    "it was last written from system {} timeline {}, the server is now system {} timeline {} (failover or restore)",
                    w.origin.system, w.origin.timeline, origin.system, origin.timeline
                )),
                (WatermarkState::Found(w), None) => Some(format!(
                    "it was written up to {} from a slot that no longer exists",
                    w.lsn
                )),
                (WatermarkState::Found(w), Some(confirmed)) if w.lsn < confirmed => Some(format!(
                    "it holds work up to {}, the slot resumes after {confirmed}: it went back further than apply.durability_window (restored from an older snapshot or replica), or the slot was recreated after a gap",
                    w.lsn
                )),
                (WatermarkState::Found(_), Some(_)) => None,
            };
            let Some(reason) = lost else { continue };
            self.metrics.redis_rollback(sink.name());
            tracing::error!(target = %sink.name(), reason = %reason, "redis target lost invalidations the slot cannot replay; bumping its epoch");
            let mut backoff = self.backoff();
            loop {
                match bump(sink).await {
                    Ok(()) => break,
                    Err(e) => {
                        if !self
                            .wait_to_retry(&mut backoff, sink.name(), "bump the epoch", &e)
                            .await
                        {
                            return Err(DaemonError::EpochNotBumped(e));
                        }
                    }
                }
            }
            self.metrics.epoch_bump();
        }
        Ok(())
    }

    /// The server's identity and the slot's confirmed position (`None`: no slot yet).
    async fn server_position(&self) -> Result<(Origin, Option<Lsn>), DaemonError> {
        let mut backoff = self.backoff();
        loop {
            match read_server_position(self.connect, self.slot).await {
                Ok(found) => return Ok(found),
                Err(e) if self.wait_to_retry(&mut backoff, "postgres", "read the slot", &e).await => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The sinks that hold a gap mark (empty when shutdown came first: the marks stay).
    async fn pending(&self, sinks: &mut [BoxSink]) -> Vec<String> {
        let mut pending = Vec::new();
        for sink in sinks.iter_mut() {
            let mut backoff = self.backoff();
            loop {
                match sink.gap_pending().await {
                    Ok(true) => pending.push(sink.name().to_string()),
                    Ok(false) => {}
                    // Nothing was started: a mark, if there is one, stays for the next start.
                    Err(e) => {
                        if self
                            .wait_to_retry(&mut backoff, sink.name(), "read the gap mark", &e)
                            .await
                        {
                            continue;
                        }
                        return Vec::new();
                    }
                }
                break;
            }
        }
        pending
    }

    /// Runs one step on every sink, each retried until it succeeds or shutdown comes (then the
    /// mark stays, and the next start finishes the recovery).
    async fn on_every_sink(
        &self,
        sinks: &mut [BoxSink],
        step: &str,
        mut action: impl for<'s> FnMut(&'s mut BoxSink) -> SinkFuture<'s, ()>,
    ) -> Result<(), DaemonError> {
        for sink in sinks.iter_mut() {
            let mut backoff = self.backoff();
            while let Err(e) = action(sink).await {
                if !self.wait_to_retry(&mut backoff, sink.name(), step, &e).await {
                    return Err(DaemonError::EpochNotBumped(e));
                }
            }
        }
        Ok(())
    }

    /// Drops and recreates the slot, retried: a gap is usually found while a failover is still
    /// settling.
    async fn recreate_slot(&self) -> Result<(), DaemonError> {
        let mut backoff = self.backoff();
        loop {
            match recreate_slot(self.connect, self.slot).await {
                Ok(()) => return Ok(()),
                Err(e)
                    if self
                        .wait_to_retry(&mut backoff, "postgres", "recreate the slot", &e)
                        .await => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(Duration::from_millis(50), self.retry_max_delay)
    }

    /// After a failed step: false at shutdown; otherwise logs and waits before the next try.
    async fn wait_to_retry(
        &self,
        backoff: &mut Backoff,
        target: &str,
        step: &str,
        error: &(dyn std::fmt::Display + Sync),
    ) -> bool {
        if (self.is_shutdown)() {
            return false;
        }
        tracing::warn!(target, error = %error, step, "gap recovery step failed; retrying");
        tokio::time::sleep(backoff.next_delay()).await;
        true
    }
}

fn bump(sink: &mut BoxSink) -> SinkFuture<'_, ()> {
    Box::pin(async move {
        let epoch = sink.bump_epoch().await?;
        tracing::warn!(target = %sink.name(), epoch = ?epoch, "global epoch bumped");
        Ok(())
    })
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

async fn read_server_position(connect: &ConnectOptions, slot: &str) -> Result<(Origin, Option<Lsn>), DaemonError> {
    let conn_err = |e| DaemonError::Stream(StreamError::Conn(e));
    let mut conn = ReplicationConnection::connect(connect).await.map_err(conn_err)?;
    let origin = identify_system(&mut conn).await.map_err(conn_err)?;
    let found = slot_info(&mut conn, slot).await.map_err(conn_err)?;
    conn.close().await;
    Ok((origin, found.map(|s| s.confirmed_flush_lsn.unwrap_or(Lsn(0)))))
}
