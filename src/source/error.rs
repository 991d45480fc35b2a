//! Why the replication source stopped or had to reconnect: transient errors (reconnect with
//! backoff) and definite ones, each with what the operator should do.

use super::conn::ConnError;
use crate::decode::pgoutput::DecodeError;
use crate::model::Lsn;

/// Why the stream stopped or had to reconnect.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("replication slot `{0}` does not exist; create it with `walbust setup` (or set create_slot), after the publication")]
    SlotMissing(String),
    #[error("replication slot `{slot}` uses plugin `{plugin}`; walbust needs a pgoutput slot: drop it or choose another slot name")]
    WrongPlugin { slot: String, plugin: String },
    #[error("replication slot `{slot}` belongs to database `{database}`, not `{connected}`; connect to `{database}` or use another slot")]
    WrongDatabase {
        slot: String,
        database: String,
        connected: String,
    },
    #[error("replication slot `{0}` is lost (wal_status = lost): the WAL it needed was removed, so changes since its position are unknown; drop and recreate the slot, and invalidate the whole cache (walbust's on_gap = \"bump_epoch\" does that)")]
    SlotLost(String),
    #[error("replication slot `{slot}` is active for PID {pid}: another walbust (or client) holds it; will retry until it is released")]
    SlotActive { slot: String, pid: String },
    #[error("publication `{0}` does not exist; create it (before the slot) with `walbust setup` or `CREATE PUBLICATION … FOR TABLE …`")]
    PublicationMissing(String),
    #[error("the server runs with wal_level = {0}; logical replication needs `ALTER SYSTEM SET wal_level = logical` and a restart")]
    WalLevel(String),
    #[error("the rules name tables that do not exist in this database: {}; create them (apply your migrations) or fix the rules' `table` fields", .0.join(", "))]
    TablesMissing(Vec<String>),
    #[error("cannot decode the replication stream at {lsn}: {source}")]
    Decode { lsn: Lsn, source: DecodeError },
    #[error("the server ended the replication stream")]
    Ended,
    #[error("the server is not the one streamed from before (system identifier {before_system} timeline {before_timeline}, now {now_system} timeline {now_timeline}): a failover or restore, so LSNs start over and changes in between may be missing; on_gap = \"bump_epoch\" invalidates everything and continues")]
    OriginChanged {
        before_system: String,
        before_timeline: u32,
        now_system: String,
        now_timeline: u32,
    },
}

impl StreamError {
    pub fn is_transient(&self) -> bool {
        match self {
            StreamError::Conn(e) => e.is_transient(),
            StreamError::SlotActive { .. } | StreamError::Ended => true,
            _ => false,
        }
    }
}
