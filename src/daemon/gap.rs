//! Gap recovery (`on_gap = bump_epoch`): the slot's history has a gap (lost, or missing after
//! streaming), so the changes in it are unknowable. Every sink's epoch is bumped — every cache
//! key changes — and the slot is recreated so streaming continues from now.

use super::applier::BoxSink;
use super::DaemonError;
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::source::conn::{ConnectOptions, ReplicationConnection};
use crate::source::slot::{create_slot, quote_literal};
use crate::source::stream::StreamError;
use std::time::Duration;

/// Drops and recreates the slot, then bumps the epoch on every sink (retrying until each has,
/// or shutdown is requested). The new slot starts now; bumping after its creation covers
/// everything before it.
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
    recreate_slot(connect, slot).await?;
    for sink in sinks.iter_mut() {
        let mut backoff = Backoff::new(Duration::from_millis(50), retry_max_delay);
        loop {
            match sink.bump_epoch().await {
                Ok(epoch) => {
                    tracing::warn!(target = %sink.name(), epoch = ?epoch, "global epoch bumped");
                    break;
                }
                Err(e) if is_shutdown() => return Err(DaemonError::EpochNotBumped(e)),
                Err(e) => {
                    tracing::warn!(target = %sink.name(), error = %e, "epoch bump failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
    metrics.epoch_bump();
    Ok(())
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
