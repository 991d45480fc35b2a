//! Generates a large synthetic WAL sample over the catalog schema, for benchmarks:
//!
//! ```text
//! cargo run --release --example gen_sample -- --changes 1000000 --format test_decoding > /tmp/big.txt
//! cargo run --release --example gen_sample -- --changes 1000000 --format wal2json > /tmp/big.jsonl
//! ```
//!
//! The lines have exactly the shape test_decoding and wal2json (format-version 2) print.

use std::io::{self, BufWriter, Write};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SynthFormat {
    TestDecoding,
    Wal2Json,
}

/// Writes `changes` row changes in transactions of 5 (product update with a category move
/// under REPLICA IDENTITY FULL, price insert, inventory update, review insert, review delete).
pub fn write_sample(out: &mut dyn Write, format: SynthFormat, changes: u64) -> io::Result<()> {
    let mut xid = 1000u64;
    let mut written = 0u64;
    let mut lsn = 0x1_6B37_4800u64;
    while written < changes {
        xid += 1;
        let ts = format!(
            "2026-11-22 10:{:02}:{:02}.{:06}+00",
            (xid / 60) % 60,
            xid % 60,
            xid % 1_000_000
        );
        match format {
            SynthFormat::TestDecoding => writeln!(out, "BEGIN {xid}")?,
            SynthFormat::Wal2Json => writeln!(out, r#"{{"action":"B","xid":{xid}}}"#)?,
        }
        for step in 0..5u64 {
            if written >= changes {
                break;
            }
            written += 1;
            let n = written;
            let id = n % 50_000 + 1;
            let cat = n % 40 + 1;
            match (format, step) {
                (SynthFormat::TestDecoding, 0) => writeln!(
                    out,
                    "table public.products: UPDATE: old-key: id[bigint]:{id} category_id[bigint]:{cat} sku[text]:'SKU-{id}' name[text]:'Mug {id}' price_cents[integer]:1299 active[boolean]:true new-tuple: id[bigint]:{id} category_id[bigint]:{c2} sku[text]:'SKU-{id}' name[text]:'Mug {id}' price_cents[integer]:1399 active[boolean]:true",
                    c2 = cat + 1
                )?,
                (SynthFormat::TestDecoding, 1) => writeln!(
                    out,
                    "table public.prices: INSERT: product_id[bigint]:{id} currency[text]:'EUR' amount[numeric]:12.90 valid_from[timestamp with time zone]:'2026-11-22 10:00:00+00'"
                )?,
                (SynthFormat::TestDecoding, 2) => writeln!(
                    out,
                    "table public.inventory: UPDATE: product_id[bigint]:{id} warehouse[text]:'berlin' quantity[integer]:{q}",
                    q = n % 100
                )?,
                (SynthFormat::TestDecoding, 3) => writeln!(
                    out,
                    "table public.reviews: INSERT: id[bigint]:{n} product_id[bigint]:{id} rating[smallint]:5 body[text]:'Great mug, it''s big' created_at[timestamp with time zone]:'2026-11-22 10:00:00+00'"
                )?,
                (SynthFormat::TestDecoding, _) => writeln!(out, "table public.reviews: DELETE: id[bigint]:{}", n - 1)?,
                (SynthFormat::Wal2Json, 0) => writeln!(
                    out,
                    r#"{{"action":"U","xid":{xid},"schema":"public","table":"products","columns":[{{"name":"id","type":"bigint","value":{id}}},{{"name":"category_id","type":"bigint","value":{c2}}},{{"name":"sku","type":"text","value":"SKU-{id}"}},{{"name":"name","type":"text","value":"Mug {id}"}},{{"name":"price_cents","type":"integer","value":1399}},{{"name":"active","type":"boolean","value":true}}],"identity":[{{"name":"id","type":"bigint","value":{id}}},{{"name":"category_id","type":"bigint","value":{cat}}},{{"name":"sku","type":"text","value":"SKU-{id}"}},{{"name":"name","type":"text","value":"Mug {id}"}},{{"name":"price_cents","type":"integer","value":1299}},{{"name":"active","type":"boolean","value":true}}]}}"#,
                    c2 = cat + 1
                )?,
                (SynthFormat::Wal2Json, 1) => writeln!(
                    out,
                    r#"{{"action":"I","xid":{xid},"schema":"public","table":"prices","columns":[{{"name":"product_id","type":"bigint","value":{id}}},{{"name":"currency","type":"text","value":"EUR"}},{{"name":"amount","type":"numeric(12,2)","value":12.90}},{{"name":"valid_from","type":"timestamp with time zone","value":"2026-11-22 10:00:00+00"}}]}}"#
                )?,
                (SynthFormat::Wal2Json, 2) => writeln!(
                    out,
                    r#"{{"action":"U","xid":{xid},"schema":"public","table":"inventory","columns":[{{"name":"product_id","type":"bigint","value":{id}}},{{"name":"warehouse","type":"text","value":"berlin"}},{{"name":"quantity","type":"integer","value":{q}}}]}}"#,
                    q = n % 100
                )?,
                (SynthFormat::Wal2Json, 3) => writeln!(
                    out,
                    r#"{{"action":"I","xid":{xid},"schema":"public","table":"reviews","columns":[{{"name":"id","type":"bigint","value":{n}}},{{"name":"product_id","type":"bigint","value":{id}}},{{"name":"rating","type":"smallint","value":5}},{{"name":"body","type":"text","value":"Great mug, it's big"}},{{"name":"created_at","type":"timestamp with time zone","value":"2026-11-22 10:00:00+00"}}]}}"#
                )?,
                (SynthFormat::Wal2Json, _) => writeln!(
                    out,
                    r#"{{"action":"D","xid":{xid},"schema":"public","table":"reviews","identity":[{{"name":"id","type":"bigint","value":{}}}]}}"#,
                    n - 1
                )?,
            }
        }
        lsn += 0x400;
        match format {
            SynthFormat::TestDecoding => writeln!(out, "COMMIT {xid} (at {ts})")?,
            SynthFormat::Wal2Json => writeln!(
                out,
                r#"{{"action":"C","xid":{xid},"timestamp":"{ts}","lsn":"{:X}/{:X}","nextlsn":"{:X}/{:X}"}}"#,
                lsn >> 32,
                lsn & 0xFFFF_FFFF,
                (lsn + 0x30) >> 32,
                (lsn + 0x30) & 0xFFFF_FFFF
            )?,
        }
    }
    Ok(())
}

#[allow(dead_code)]
fn main() -> io::Result<()> {
    let mut changes = 1_000_000u64;
    let mut format = SynthFormat::TestDecoding;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--changes" => {
                changes = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "--changes needs a number"))?
            }
            "--format" => {
                format = match args.next().as_deref() {
                    Some("test_decoding") => SynthFormat::TestDecoding,
                    Some("wal2json") => SynthFormat::Wal2Json,
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "--format test_decoding|wal2json",
                        ))
                    }
                }
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "unknown argument {other}; usage: gen_sample [--changes N] [--format test_decoding|wal2json]"
                    ),
                ))
            }
        }
    }
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    write_sample(&mut out, format, changes)?;
    out.flush()
}
