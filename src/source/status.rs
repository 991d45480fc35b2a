//! `walbust status`: the slot and publication as PostgreSQL sees them — active PID, confirmed
//! position, lag, retained WAL, wal_status, published tables.

use crate::model::Lsn;
use crate::source::conn::{ConnError, ConnectOptions, ReplicationConnection};
use crate::source::slot::quote_literal;
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Status {
    pub slot: String,
    pub slot_exists: bool,
    pub plugin: Option<String>,
    pub active_pid: Option<i64>,
    pub confirmed_flush_lsn: Option<String>,
    pub current_wal_lsn: String,
    pub lag_bytes: Option<i64>,
    pub retained_wal_bytes: Option<i64>,
    pub wal_status: Option<String>,
    pub publication: String,
    pub publication_exists: bool,
    pub publication_tables: Vec<String>,
}

fn col(result: &crate::source::conn::QueryResult, name: &str) -> Option<String> {
    result.first(name).map(str::to_string)
}

/// Reads the status over a (replication-protocol) connection.
pub async fn read(connect: &ConnectOptions, slot: &str, publication: &str) -> Result<Status, ConnError> {
    let mut conn = ReplicationConnection::connect(connect).await?;
    let current = conn.simple_query("SELECT pg_current_wal_lsn()::text AS lsn").await?;
    let mut status = Status {
        slot: slot.to_string(),
        publication: publication.to_string(),
        current_wal_lsn: col(&current, "lsn").unwrap_or_default(),
        ..Status::default()
    };
    let s = conn
        .simple_query(&format!(
            "SELECT plugin::text AS plugin, active_pid::text AS pid, confirmed_flush_lsn::text AS confirmed, \
             (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint::text AS lag, \
             (pg_current_wal_lsn() - restart_lsn)::bigint::text AS retained, wal_status::text AS wal_status \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ))
        .await?;
    if !s.rows.is_empty() {
        status.slot_exists = true;
        status.plugin = col(&s, "plugin");
        status.active_pid = col(&s, "pid").and_then(|v| v.parse().ok());
        status.confirmed_flush_lsn = col(&s, "confirmed");
        status.lag_bytes = col(&s, "lag").and_then(|v| v.parse().ok());
        status.retained_wal_bytes = col(&s, "retained").and_then(|v| v.parse().ok());
        status.wal_status = col(&s, "wal_status");
    }
    let p = conn
        .simple_query(&format!(
            "SELECT 1 AS found FROM pg_catalog.pg_publication WHERE pubname = {}",
            quote_literal(publication)
        ))
        .await?;
    status.publication_exists = !p.rows.is_empty();
    let t = conn
        .simple_query(&format!(
            "SELECT schemaname || '.' || tablename AS t FROM pg_catalog.pg_publication_tables WHERE pubname = {} ORDER BY 1",
            quote_literal(publication)
        ))
        .await?;
    status.publication_tables = t.rows.iter().filter_map(|r| r.first().cloned().flatten()).collect();
    conn.close().await;
    Ok(status)
}

fn bytes(n: Option<i64>) -> String {
    match n {
        None => "-".into(),
        Some(n) if n.abs() >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        Some(n) if n.abs() >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        Some(n) if n.abs() >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        Some(n) => format!("{n} B"),
    }
}

/// Human-readable status.
pub fn text(s: &Status) -> String {
    let mut out = String::new();
    if s.slot_exists {
        let _ = writeln!(
            out,
            "slot {}: plugin {}, {}",
            s.slot,
            s.plugin.as_deref().unwrap_or("?"),
            match s.active_pid {
                Some(pid) => format!("active (pid {pid})"),
                None => "inactive (no walbust is streaming it)".into(),
            }
        );
        let _ = writeln!(
            out,
            "  confirmed {} / current {}: lag {}, retained WAL {}, wal_status {}",
            s.confirmed_flush_lsn.as_deref().unwrap_or("-"),
            s.current_wal_lsn,
            bytes(s.lag_bytes),
            bytes(s.retained_wal_bytes),
            s.wal_status.as_deref().unwrap_or("-")
        );
    } else {
        let _ = writeln!(out, "slot {}: does not exist (create it with `walbust setup`)", s.slot);
    }
    if s.publication_exists {
        let _ = writeln!(
            out,
            "publication {}: {} table(s): {}",
            s.publication,
            s.publication_tables.len(),
            s.publication_tables.join(", ")
        );
    } else {
        let _ = writeln!(out, "publication {}: does not exist", s.publication);
    }
    out
}

/// Parses an LSN column for callers that want numbers.
pub fn lsn(s: &Option<String>) -> Option<Lsn> {
    s.as_deref().and_then(Lsn::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_text() {
        let s = Status {
            slot: "walbust".into(),
            slot_exists: true,
            plugin: Some("pgoutput".into()),
            active_pid: Some(42),
            confirmed_flush_lsn: Some("0/10".into()),
            current_wal_lsn: "0/20".into(),
            lag_bytes: Some(2048),
            retained_wal_bytes: Some(3 << 20),
            wal_status: Some("reserved".into()),
            publication: "pub".into(),
            publication_exists: true,
            publication_tables: vec!["public.t".into()],
        };
        let t = text(&s);
        assert!(
            t.contains("active (pid 42)") && t.contains("lag 2.0 KiB") && t.contains("retained WAL 3.0 MiB"),
            "{t}"
        );
        assert!(t.contains("1 table(s): public.t"));
        assert_eq!(lsn(&s.confirmed_flush_lsn), Some(Lsn(16)));
    }
}
