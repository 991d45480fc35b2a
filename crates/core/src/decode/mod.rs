//! Decoding what the walsender sends: [`frames`] (XLogData, keepalive, status update) wrap
//! [`pgoutput`] messages. Pure: bytes in, events out, never a panic; tested with golden bytes
//! from a real server and fuzzed (`fuzz/`).

pub mod frames;
pub mod pgoutput;
