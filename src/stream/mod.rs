//! The replication stream: the replication-protocol connection ([`conn`], [`tls`]),
//! pgoutput decoding ([`pgoutput`]) and the streaming replication frames ([`frames`]).
//! Decoding and framing are pure modules — no I/O — so they are tested byte by byte and
//! fuzzed.

pub mod conn;
pub mod frames;
pub mod pgoutput;
pub mod replication;
pub mod tls;
