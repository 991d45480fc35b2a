//! Slot and publication administration: what a slot is (`pg_replication_slots`), creating it,
//! `walbust setup` (publication first, then slot), and SQL quoting.

use super::conn::{ConnError, ConnectOptions, ReplicationConnection};
use super::error::StreamError;
use crate::model::Lsn;
use crate::rules::TableName;

/// What `pg_replication_slots` says about a slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: String,
    pub database: String,
    pub active_pid: Option<String>,
    pub wal_status: Option<String>,
    pub confirmed_flush_lsn: Option<Lsn>,
}

/// `IDENTIFY_SYSTEM`: the server's system identifier and timeline (what positions belong to).
pub async fn identify_system(conn: &mut ReplicationConnection) -> Result<crate::model::Origin, ConnError> {
    let identity = conn.simple_query("IDENTIFY_SYSTEM").await?;
    Ok(crate::model::Origin {
        system: identity.first("systemid").unwrap_or_default().to_string(),
        timeline: identity.first("timeline").and_then(|t| t.parse().ok()).unwrap_or(0),
    })
}

pub async fn slot_info(conn: &mut ReplicationConnection, slot: &str) -> Result<Option<SlotInfo>, ConnError> {
    let result = conn
        .simple_query(&format!(
            "SELECT coalesce(plugin, '') AS plugin, coalesce(database::text, '') AS database, active_pid::text AS active_pid, \
             wal_status, confirmed_flush_lsn::text AS confirmed_flush_lsn \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ))
        .await?;
    let Some(row) = result.rows.first() else {
        return Ok(None);
    };
    let col = |name: &str| {
        result
            .columns
            .iter()
            .position(|c| c == name)
            .and_then(|i| row.get(i).cloned().flatten())
    };
    Ok(Some(SlotInfo {
        plugin: col("plugin").unwrap_or_default(),
        database: col("database").unwrap_or_default(),
        active_pid: col("active_pid"),
        wal_status: col("wal_status"),
        confirmed_flush_lsn: col("confirmed_flush_lsn").and_then(|s| Lsn::parse(&s)),
    }))
}

/// Creates a pgoutput slot (the publication must exist first, or changes before it are lost).
pub async fn create_slot(conn: &mut ReplicationConnection, slot: &str, temporary: bool) -> Result<Lsn, ConnError> {
    let command = format!(
        "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
        quote_ident(slot),
        if temporary { " TEMPORARY" } else { "" }
    );
    let result = conn.simple_query(&command).await?;
    Ok(result
        .first("consistent_point")
        .and_then(Lsn::parse)
        .unwrap_or_default())
}

/// What `walbust setup` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SetupReport {
    pub publication_created: bool,
    pub tables_added: Vec<String>,
    pub slot_created: Option<Lsn>,
}

/// Creates the publication (for `tables`, adding missing ones to an existing publication) and
/// then the slot — in that order, so the slot never starts before its publication exists.
pub async fn setup(
    connect: &ConnectOptions,
    publication: &str,
    slot: &str,
    tables: &[TableName],
) -> Result<SetupReport, StreamError> {
    let mut conn = ReplicationConnection::connect(connect).await?;
    let level = conn.simple_query("SHOW wal_level").await?;
    let level = level.first("wal_level").unwrap_or("").to_string();
    if level != "logical" {
        return Err(StreamError::WalLevel(level));
    }
    check_tables_exist(&mut conn, tables).await?;
    let mut report = SetupReport::default();
    let exists = conn
        .simple_query(&format!(
            "SELECT puballtables::text AS all FROM pg_catalog.pg_publication WHERE pubname = {}",
            quote_literal(publication)
        ))
        .await?;
    if exists.rows.is_empty() {
        create_publication(&mut conn, publication, tables).await?;
        report.publication_created = true;
    } else if exists.first("all") != Some("true") {
        report.tables_added = add_missing_tables(&mut conn, publication, tables).await?;
    }
    match slot_info(&mut conn, slot).await? {
        Some(info) if info.plugin != "pgoutput" => {
            return Err(StreamError::WrongPlugin {
                slot: slot.to_string(),
                plugin: info.plugin,
            })
        }
        Some(_) => {}
        None => report.slot_created = Some(create_slot(&mut conn, slot, false).await?),
    }
    conn.close().await;
    Ok(report)
}

async fn check_tables_exist(conn: &mut ReplicationConnection, tables: &[TableName]) -> Result<(), StreamError> {
    let mut missing = Vec::new();
    for table in tables {
        let found = conn
            .simple_query(&format!(
                "SELECT (to_regclass({}) IS NOT NULL)::text AS found",
                quote_literal(&table.quoted())
            ))
            .await?;
        if found.first("found") != Some("true") {
            missing.push(table.to_string());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StreamError::TablesMissing(missing))
    }
}

async fn create_publication(
    conn: &mut ReplicationConnection,
    publication: &str,
    tables: &[TableName],
) -> Result<(), StreamError> {
    let sql = if tables.is_empty() {
        format!("CREATE PUBLICATION {}", quote_ident(publication))
    } else {
        let list: Vec<String> = tables.iter().map(TableName::quoted).collect();
        format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote_ident(publication),
            list.join(", ")
        )
    };
    conn.simple_query(&sql).await?;
    Ok(())
}

/// Adds the tables an existing publication lacks; returns their names.
async fn add_missing_tables(
    conn: &mut ReplicationConnection,
    publication: &str,
    tables: &[TableName],
) -> Result<Vec<String>, StreamError> {
    let covered = conn
        .simple_query(&format!(
            "SELECT schemaname::text AS s, tablename::text AS t FROM pg_catalog.pg_publication_tables WHERE pubname = {}",
            quote_literal(publication)
        ))
        .await?;
    let mut added = Vec::new();
    for table in tables {
        let present = covered.rows.iter().any(|r| {
            r.first().cloned().flatten().as_deref() == Some(table.schema.as_str())
                && r.get(1).cloned().flatten().as_deref() == Some(table.name.as_str())
        });
        if !present {
            conn.simple_query(&format!(
                "ALTER PUBLICATION {} ADD TABLE {}",
                quote_ident(publication),
                table.quoted()
            ))
            .await?;
            added.push(table.to_string());
        }
    }
    Ok(added)
}

pub use crate::rules::quote_ident;

/// Single-quotes a literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
