//! walbust: PostgreSQL logical replication → declarative rules → cache invalidation.
//!
//! ```text
//!  source ──bytes──▶ decode ──Event──▶ rules ──▶ plan ──Batch──▶ sinks (Redis, dry-run printer)
//!  (PostgreSQL)      (core)           (core)    (core)            │
//!     ▲                                                            │ Ok from every sink
//!     └──────────── acknowledge (daemon: the one applied position) ◀┘
//! ```
//!
//! This crate is the daemon and the `walbust` command line. The pure stages — the change
//! model, the byte cursor, pgoutput decoding, sample readers, rules and planning — live in
//! [`walbust_core`] (no tokio, no network) and are re-exported here under their usual names.
//! Applications link only [`walbust_client`] (re-exported as [`client`]); test and demo tooling
//! lives in `walbust-testkit`. See docs/architecture.md.
//!
//! * [`source`]: the replication connection, the stream, slot administration, `record`, `status`.
//! * [`sink`]: the [`sink::Sink`] contract and its targets: Redis and the dry-run printer.
//! * [`daemon`]: `walbust run` — the loop, the applier that owns the applied position, gap recovery.
//! * [`config`]: the configuration file, environment and flag overrides, one `validate()`.
//! * [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.
//! * [`cli`]: the subcommands behind the thin `walbust` binary.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod failpoint;
pub mod metrics;
pub mod retry;
pub mod sink;
pub mod source;

pub use walbust_client as client;
pub use walbust_core::{bytes, catalog, decode, model, plan, rules, sample};
