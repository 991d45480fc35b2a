//! `cargo +nightly fuzz run rules`: arbitrary bytes as a rules file must give rules or
//! diagnostics, never a panic, and never unbounded work (aliases are limited).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = walbust_core::rules::load_str("fuzz.yaml", &String::from_utf8_lossy(data));
});
