//! Schema facts for `check --db` and the daemon's startup check, read over a
//! replication-protocol connection (SQL works on it, so TLS and authentication are the
//! daemon's). Comparing them with the rules is pure and lives in
//! [`walbust_core::rules::check`].

use crate::model::{Op, ReplicaIdentity};
use crate::rules::check::{ColumnInfo, PublicationInfo, SchemaInfo, TableInfo};
use crate::rules::{RuleSet, TableName};
use crate::source::conn::{ConnError, ConnectOptions, QueryResult, ReplicationConnection};
use crate::source::slot::quote_literal;
use std::collections::BTreeSet;

#[derive(Debug, thiserror::Error)]
pub enum CheckDbError {
    #[error("cannot check against the database: {0}")]
    Conn(#[from] ConnError),
}

fn column(result: &QueryResult, row: &[Option<String>], name: &str) -> String {
    result
        .columns
        .iter()
        .position(|c| c == name)
        .and_then(|i| row.get(i).cloned().flatten())
        .unwrap_or_default()
}

/// Reads the facts for every rule table (and the publication's tables). Uses a
/// replication-protocol connection (SQL works on it), so TLS and authentication settings are
/// the daemon's.
pub async fn read_schema(url: &str, rules: &RuleSet, publication: Option<&str>) -> Result<SchemaInfo, CheckDbError> {
    let options = ConnectOptions::parse(url)?;
    let mut conn = ReplicationConnection::connect(&options).await?;
    let info = read_schema_with(&mut conn, rules, publication).await?;
    conn.close().await;
    Ok(info)
}

/// [`read_schema`] on an open connection.
pub async fn read_schema_with(
    conn: &mut ReplicationConnection,
    rules: &RuleSet,
    publication: Option<&str>,
) -> Result<SchemaInfo, CheckDbError> {
    let wal_level = conn.simple_query("SHOW wal_level").await?;
    let mut info = SchemaInfo {
        wal_level: wal_level.first("wal_level").unwrap_or("").to_string(),
        ..SchemaInfo::default()
    };
    let all = conn
        .simple_query(
            "SELECT n.nspname || '.' || c.relname AS t FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
        )
        .await?;
    info.all_tables = all.rows.iter().filter_map(|r| r.first().cloned().flatten()).collect();
    let mut wanted: BTreeSet<TableName> = rules.tables().cloned().collect();
    if let Some(name) = publication {
        let publication = read_publication(conn, name).await?;
        wanted.extend(publication.tables.iter().cloned());
        info.publication = Some(publication);
    }
    for table in wanted {
        if let Some(facts) = read_table(conn, &table).await? {
            info.tables.insert(table, facts);
        }
    }
    Ok(info)
}

/// Whether the publication exists, which operations it publishes, and its tables.
async fn read_publication(conn: &mut ReplicationConnection, name: &str) -> Result<PublicationInfo, CheckDbError> {
    let found = conn
        .simple_query(&format!(
            "SELECT pubinsert::text AS i, pubupdate::text AS u, pubdelete::text AS d, pubtruncate::text AS t \
             FROM pg_catalog.pg_publication WHERE pubname = {}",
            quote_literal(name)
        ))
        .await?;
    let mut publication = PublicationInfo {
        name: name.to_string(),
        exists: !found.rows.is_empty(),
        ..PublicationInfo::default()
    };
    let Some(row) = found.rows.first() else {
        return Ok(publication);
    };
    for (col, op) in [
        ("i", Op::Insert),
        ("u", Op::Update),
        ("d", Op::Delete),
        ("t", Op::Truncate),
    ] {
        if column(&found, row, col) == "true" {
            publication.publishes.insert(op);
        }
    }
    let tables = conn
        .simple_query(&format!(
            "SELECT schemaname::text AS s, tablename::text AS t FROM pg_catalog.pg_publication_tables WHERE pubname = {}",
            quote_literal(name)
        ))
        .await?;
    for row in &tables.rows {
        publication.tables.insert(TableName {
            schema: column(&tables, row, "s"),
            name: column(&tables, row, "t"),
        });
    }
    Ok(publication)
}

/// A table's columns and replica identity; `None` when it does not exist.
async fn read_table(conn: &mut ReplicationConnection, table: &TableName) -> Result<Option<TableInfo>, CheckDbError> {
    let rel = conn
        .simple_query(&format!(
            "SELECT c.oid::text AS oid, c.relreplident::text AS ident FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relname = {} AND c.relkind IN ('r', 'p')",
            quote_literal(&table.schema),
            quote_literal(&table.name)
        ))
        .await?;
    let Some(row) = rel.rows.first() else {
        return Ok(None);
    };
    let oid = column(&rel, row, "oid");
    let replica_identity = column(&rel, row, "ident")
        .bytes()
        .next()
        .and_then(ReplicaIdentity::from_code);
    let cols = conn
        .simple_query(&format!(
            "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type, \
             (t.typlen = -1 AND a.attstorage <> 'p')::text AS toastable \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = {oid} AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
        ))
        .await?;
    let columns: Vec<ColumnInfo> = cols
        .rows
        .iter()
        .map(|r| ColumnInfo {
            name: column(&cols, r, "name"),
            type_name: column(&cols, r, "type"),
            toastable: column(&cols, r, "toastable") == "true",
        })
        .collect();
    let identity_columns = match replica_identity {
        Some(ReplicaIdentity::Full) => columns.iter().map(|c| c.name.clone()).collect(),
        Some(ReplicaIdentity::Nothing) | None => BTreeSet::new(),
        Some(ReplicaIdentity::Default) => index_columns(conn, &oid, "i.indisprimary").await?,
        Some(ReplicaIdentity::Index) => index_columns(conn, &oid, "i.indisreplident").await?,
    };
    let tree = conn
        .simple_query(&format!(
            "SELECT n.nspname::text AS s, c.relname::text AS t FROM pg_catalog.pg_partition_tree({oid}) p \
             JOIN pg_catalog.pg_class c ON c.oid = p.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE p.relid <> {oid} ORDER BY p.level, 1, 2"
        ))
        .await?;
    let partitions = tree
        .rows
        .iter()
        .map(|r| TableName {
            schema: column(&tree, r, "s"),
            name: column(&tree, r, "t"),
        })
        .collect();
    Ok(Some(TableInfo {
        columns,
        replica_identity,
        identity_columns,
        partitions,
    }))
}

/// The columns of the table's primary key or replica identity index (`flag`).
async fn index_columns(
    conn: &mut ReplicationConnection,
    oid: &str,
    flag: &str,
) -> Result<BTreeSet<String>, CheckDbError> {
    let idx = conn
        .simple_query(&format!(
            "SELECT a.attname::text AS name FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a \
             ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = {oid} AND {flag}"
        ))
        .await?;
    Ok(idx.rows.iter().map(|r| column(&idx, r, "name")).collect())
}

/// Every partition of the database with its ancestors, nearest first
/// (`pg_partition_ancestors`, PostgreSQL 12+; an older server answers with an error, which the
/// caller reports). For captures and `dry-run --db`: the daemon looks partitions up one at a
/// time as their changes arrive (`daemon::partitions`).
pub async fn partition_map(conn: &mut ReplicationConnection) -> Result<Vec<crate::rules::PartitionOf>, ConnError> {
    let result = conn
        .simple_query(
            "SELECT pn.nspname::text AS ps, pc.relname::text AS pt, n.nspname::text AS s, c.relname::text AS t \
             FROM pg_catalog.pg_class pc \
             JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace \
             CROSS JOIN LATERAL pg_catalog.pg_partition_ancestors(pc.oid) WITH ORDINALITY AS a(relid, ord) \
             JOIN pg_catalog.pg_class c ON c.oid = a.relid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE pc.relispartition AND pc.relkind IN ('r', 'p', 'f') AND a.relid <> pc.oid \
             ORDER BY pn.nspname, pc.relname, a.ord",
        )
        .await?;
    let mut out: Vec<crate::rules::PartitionOf> = Vec::new();
    for row in &result.rows {
        let partition = TableName {
            schema: column(&result, row, "ps"),
            name: column(&result, row, "pt"),
        };
        let ancestor = TableName {
            schema: column(&result, row, "s"),
            name: column(&result, row, "t"),
        };
        match out.last_mut() {
            Some(last) if last.partition == partition => last.ancestors.push(ancestor),
            _ => out.push(crate::rules::PartitionOf {
                partition,
                ancestors: vec![ancestor],
            }),
        }
    }
    Ok(out)
}

/// Every table's replica identity: its columns (primary key, or the identity index) and whether
/// it is FULL — what `dry-run --db` tells text samples (see `walbust_core::sample::hints`).
pub async fn table_hints(conn: &mut ReplicationConnection) -> Result<Vec<crate::sample::hints::TableHint>, ConnError> {
    let result = conn
        .simple_query(
            "SELECT n.nspname::text AS s, c.relname::text AS t, c.relreplident::text AS ident, \
             coalesce((SELECT string_agg(a.attname::text, E'\\x1f' ORDER BY a.attnum) \
               FROM pg_catalog.pg_index i \
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
               WHERE i.indrelid = c.oid \
                 AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))), '') AS keys \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
        )
        .await?;
    Ok(result
        .rows
        .iter()
        .map(|row| {
            let keys = column(&result, row, "keys");
            crate::sample::hints::TableHint {
                table: TableName {
                    schema: column(&result, row, "s"),
                    name: column(&result, row, "t"),
                },
                identity: keys
                    .split('\u{1f}')
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect(),
                full: column(&result, row, "ident") == "f",
            }
        })
        .collect())
}
