//! walbust: PostgreSQL logical replication -> declarative rules -> Redis cache invalidation.
//!
//! Pipeline stages, each its own module:
//! [`sample`] (WAL sample readers) → [`model`] (the change model) → [`rules`] (load,
//! validate, evaluate) → [`plan`] (deduplicated actions per transaction) → sinks
//! ([`dryrun`] printer). [`check`] validates rules statically and against a live schema;
//! [`harness`] starts throwaway PostgreSQL and Redis servers for tests and demos.

pub mod capture;
pub mod catalog;
pub mod chaos;
pub mod check;
pub mod client;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dryrun;
pub mod harness;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod record;
pub mod rules;
pub mod sample;
pub mod sink;
pub mod status;
pub mod stream;
