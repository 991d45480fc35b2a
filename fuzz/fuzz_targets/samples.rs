//! `cargo +nightly fuzz run samples`: arbitrary bytes as a WAL sample in every format must give
//! errors, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use walbust_core::sample::{open_reader, InputFormat};

fuzz_target!(|data: &[u8]| {
    for format in [InputFormat::TestDecoding, InputFormat::Wal2JsonV2, InputFormat::Wal2JsonV1, InputFormat::Capture] {
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
