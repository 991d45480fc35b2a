//! `cargo +nightly fuzz run wal2json`: arbitrary bytes as wal2json (format-version 2 lines and
//! version 1 objects) must give events or errors naming the line, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use walbust_core::sample::{open_reader, InputFormat};

fuzz_target!(|data: &[u8]| {
    for format in [InputFormat::Wal2JsonV2, InputFormat::Wal2JsonV1] {
        if let Ok(mut reader) = open_reader("fuzz", Box::new(std::io::Cursor::new(data.to_vec())), Some(format)) {
            for _ in 0..10_000 {
                match reader.next_event() {
                    Ok(None) => break,
                    Ok(Some(_)) | Err(_) => {}
                }
            }
        }
    }
});
