//! Polls the slot's retained WAL and confirmed lag for the metrics (a lagging or dead
//! consumer makes its slot retain WAL until the disk fills: operators alert on this).

use crate::metrics::Metrics;
use crate::source::conn::{ConnectOptions, ReplicationConnection};
use crate::source::slot::quote_literal;
use std::sync::Arc;
use std::time::Duration;

pub async fn poll(connect: ConnectOptions, slot: String, every: Duration, metrics: Arc<Metrics>) {
    let query = format!(
        "SELECT coalesce(pg_current_wal_lsn() - restart_lsn, 0)::bigint::text AS retained, \
         coalesce(pg_current_wal_lsn() - confirmed_flush_lsn, 0)::bigint::text AS lag \
         FROM pg_replication_slots WHERE slot_name = {}",
        quote_literal(&slot)
    );
    let mut conn: Option<ReplicationConnection> = None;
    loop {
        if conn.is_none() {
            conn = ReplicationConnection::connect(&connect).await.ok();
        }
        if let Some(c) = &mut conn {
            match c.simple_query(&query).await {
                Ok(r) => {
                    let bytes = |column| {
                        r.first(column)
                            .and_then(|v| v.parse::<i64>().ok())
                            .map(|v| v.max(0) as u64)
                    };
                    metrics.slot_stats(bytes("retained"), bytes("lag"));
                }
                Err(_) => conn = None,
            }
        }
        tokio::time::sleep(every).await;
    }
}
