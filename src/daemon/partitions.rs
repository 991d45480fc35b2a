//! Partitions of partitioned tables that have rules. pgoutput names the partition a row lives
//! in (unless the publication sets `publish_via_partition_root`), so a rule on the parent
//! `events` would never see the changes of `events_2026_12`. The first change of a relation no
//! rule names is looked up in the catalog (`pg_partition_ancestors`, PostgreSQL 12+), once per
//! relation version: when an ancestor has rules, they apply to it. A partition attached while
//! walbust runs is found the same way, at its first change. The lookup is retried until the
//! catalog answers: a change is never evaluated without the rules that may apply to it.

use crate::model::{Change, Event, Relation};
use crate::retry::Backoff;
use crate::rules::eval::Engine;
use crate::rules::TableName;
use crate::source::conn::{ConnError, ConnectOptions, ReplicationConnection};
use std::collections::HashSet;
use std::time::Duration;

pub struct PartitionResolver {
    connect: ConnectOptions,
    conn: Option<ReplicationConnection>,
    /// Relation versions already looked at.
    seen: HashSet<u64>,
    /// The last relation looked at: consecutive changes are mostly of one table.
    last: u64,
    retry_max_delay: Duration,
}

impl PartitionResolver {
    pub fn new(connect: ConnectOptions, retry_max_delay: Duration) -> PartitionResolver {
        PartitionResolver {
            connect,
            conn: None,
            seen: HashSet::new(),
            last: 0,
            retry_max_delay,
        }
    }

    /// Looks up every relation of `events` seen for the first time. Returns false when
    /// `is_shutdown` said to stop while the catalog did not answer.
    pub async fn resolve(
        &mut self,
        events: &[Event],
        engine: &mut Engine,
        is_shutdown: &(dyn Fn() -> bool + Sync),
    ) -> bool {
        for event in events {
            let (Event::Change(change) | Event::StreamChange { change, .. }) = event else {
                continue;
            };
            let relations: &[std::sync::Arc<Relation>] = match change {
                Change::Row(row) => std::slice::from_ref(&row.relation),
                Change::Truncate(t) => &t.relations,
            };
            for relation in relations {
                if relation.id == self.last || self.seen.contains(&relation.id) {
                    self.last = relation.id;
                    continue;
                }
                if !engine.has_rules_for(relation) {
                    if let Some(oid) = relation.oid {
                        let Some(parent) = self.parent_with_rules(oid, engine, is_shutdown).await else {
                            return false;
                        };
                        if let Some(parent) = parent {
                            tracing::info!(partition = %relation.qualified_name(), parent = %parent, "changes of this partition get the rules of its partitioned table");
                            engine.set_partition_parent(
                                TableName {
                                    schema: relation.schema.clone(),
                                    name: relation.name.clone(),
                                },
                                parent,
                            );
                        }
                    }
                }
                self.seen.insert(relation.id);
                self.last = relation.id;
            }
        }
        true
    }

    /// The nearest ancestor of `oid` that has rules (`Some(None)`: none); `None` at shutdown.
    async fn parent_with_rules(
        &mut self,
        oid: u32,
        engine: &Engine,
        is_shutdown: &(dyn Fn() -> bool + Sync),
    ) -> Option<Option<TableName>> {
        let mut backoff = Backoff::new(Duration::from_millis(50), self.retry_max_delay);
        loop {
            match self.ancestors(oid).await {
                Ok(ancestors) => {
                    return Some(
                        ancestors
                            .into_iter()
                            .find(|t| !engine.rules().rules_for(&t.schema, &t.name).is_empty()),
                    )
                }
                Err(e) if e.server().is_some() => {
                    // The server answered with an error (e.g. PostgreSQL before 12): no
                    // partitions to map.
                    tracing::warn!(error = %e, "cannot look up partition ancestors; changes of partitions get only their own rules");
                    return Some(None);
                }
                Err(e) => {
                    self.conn = None;
                    if is_shutdown() {
                        return None;
                    }
                    tracing::warn!(error = %e, "cannot look up whether a relation is a partition; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// The ancestors of `oid`, nearest first (not itself).
    async fn ancestors(&mut self, oid: u32) -> Result<Vec<TableName>, ConnError> {
        if self.conn.is_none() {
            self.conn = Some(ReplicationConnection::connect(&self.connect).await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Vec::new());
        };
        let found = conn
            .simple_query(&format!(
                "SELECT n.nspname::text AS s, c.relname::text AS t \
                 FROM pg_catalog.pg_partition_ancestors({oid}) WITH ORDINALITY AS a(relid, ord) \
                 JOIN pg_catalog.pg_class c ON c.oid = a.relid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE a.relid <> {oid} ORDER BY a.ord"
            ))
            .await?;
        Ok(found
            .rows
            .iter()
            .filter_map(|row| {
                Some(TableName {
                    schema: row.first()?.clone()?,
                    name: row.get(1)?.clone()?,
                })
            })
            .collect())
    }
}
