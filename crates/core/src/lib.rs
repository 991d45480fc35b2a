//! walbust's pure core: everything between the bytes PostgreSQL sends and the deduplicated
//! actions a sink applies, with no I/O beyond reading sample files (no tokio, no network).
//!
//! ```text
//! decode (pgoutput, replication frames) ─┐
//!                                         ├─▶ model::Event ─▶ rules (load, validate, evaluate) ─▶ plan (per txn, batch)
//! sample (test_decoding, wal2json, capture)┘
//! ```
//!
//! * [`bytes`]: the one byte cursor every binary decoder reads with (never panics on short input).
//! * [`decode`]: pgoutput messages and streaming-replication frames.
//! * [`model`]: the change model — relations, rows, commits, LSNs.
//! * [`sample`]: WAL sample readers for `walbust dry-run` and the capture format `walbust record` writes.
//! * [`rules`]: loading and validating YAML rules, evaluating them against changes, checking them against schema facts.
//! * [`plan`]: deduplicated actions per committed transaction, and batches across transactions.
//! * [`catalog`]: the key catalogue (`walbust docs`) and `walbust explain`.

pub mod bytes;
pub mod catalog;
pub mod decode;
pub mod model;
pub mod plan;
pub mod rules;
pub mod sample;
