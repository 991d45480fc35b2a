//! `cargo +nightly fuzz run pgoutput`: arbitrary bytes through the replication frame parser and
//! the pgoutput decoder (with a relation known) must give errors, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use walbust_core::decode::frames::parse_server_frame;
use walbust_core::decode::pgoutput::Decoder;

fuzz_target!(|data: &[u8]| {
    let _ = parse_server_frame(data);
    let mut decoder = Decoder::new();
    // A relation with OID 1 and two columns, so Insert/Update/Delete paths are reachable.
    let relation = b"R\x00\x00\x00\x01public\x00t\x00d\x00\x02\x01id\x00\x00\x00\x00\x17\xff\xff\xff\xff\x00v\x00\x00\x00\x00\x19\xff\xff\xff\xff";
    let _ = decoder.decode(relation);
    for chunk in data.split(|&b| b == 0xFF) {
        let _ = decoder.decode(chunk);
    }
});
