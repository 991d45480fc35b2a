//! The replication source: everything that talks to PostgreSQL. The protocol connection
//! ([`conn`], with [`tls`]), the streaming loop with acknowledgement and reconnection
//! ([`stream`]), slot and publication administration ([`slot`]), schema facts for checks
//! ([`schema`]), and the commands built on them: [`record`] and [`status`]. Decoding the bytes
//! is pure and lives in [`walbust_core::decode`].

pub mod conn;
pub mod error;
pub mod record;
pub mod schema;
pub mod slot;
pub mod status;
pub mod stream;
pub mod tls;
