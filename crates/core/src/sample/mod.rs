//! WAL sample readers: turn captured samples (test_decoding text, wal2json JSON, walbust
//! captures) into change-model [`Event`]s, streaming — memory stays flat whatever the size.
//!
//! Samples do not declare relations, so the text readers keep a relation cache built from the
//! column lists they see (a new column list makes a new relation version, as ALTER TABLE does).

pub mod capture;
pub mod hints;
mod source;
pub mod test_decoding;
pub mod wal2json;

use source::truncate;
pub use source::{EventSource, InputFormat, SampleError};

use std::io::BufRead;
use std::path::Path;

/// Detects the format from the first non-empty line.
pub fn detect(first_line: &str) -> Option<InputFormat> {
    let line = first_line.trim_start_matches('\u{feff}').trim();
    if line.starts_with(capture::MAGIC) {
        Some(InputFormat::Capture)
    } else if line.starts_with('{') {
        if line.contains("\"action\"") {
            Some(InputFormat::Wal2JsonV2)
        } else {
            Some(InputFormat::Wal2JsonV1)
        }
    } else if line.starts_with("BEGIN") || line.starts_with("COMMIT") || line.starts_with("table ") {
        Some(InputFormat::TestDecoding)
    } else {
        None
    }
}

/// Opens a reader over `input`; `format: None` detects it from the first non-empty line.
pub fn open_reader(
    source_name: &str,
    mut input: Box<dyn BufRead + Send>,
    format: Option<InputFormat>,
) -> Result<Box<dyn EventSource + Send>, SampleError> {
    let format = match format {
        Some(f) => f,
        None => {
            let buf = input.fill_buf().map_err(|e| SampleError {
                source_name: source_name.to_string(),
                line: 1,
                message: format!("cannot read: {e}"),
            })?;
            let text = String::from_utf8_lossy(&buf[..buf.len().min(4096)]);
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            if first.is_empty() {
                // An empty sample is a valid (empty) test_decoding sample.
                InputFormat::TestDecoding
            } else {
                detect(first).ok_or_else(|| SampleError {
                    source_name: source_name.to_string(),
                    line: 1,
                    message: format!(
                        "cannot tell the sample format from `{}`; pass --input-format test_decoding|wal2json|wal2json-v1|capture",
                        truncate(first, 60)
                    ),
                })?
            }
        }
    };
    Ok(match format {
        InputFormat::TestDecoding => Box::new(test_decoding::TestDecodingReader::new(source_name, input)),
        InputFormat::Wal2JsonV2 => Box::new(wal2json::Wal2JsonReader::new(source_name, input)),
        InputFormat::Wal2JsonV1 => Box::new(wal2json::Wal2JsonV1Reader::new(source_name, input)),
        InputFormat::Capture => Box::new(capture::CaptureReader::open(source_name, input)?),
    })
}

/// Opens a sample file (`-` is standard input).
pub fn open_path(path: &Path, format: Option<InputFormat>) -> Result<Box<dyn EventSource + Send>, SampleError> {
    let name = path.display().to_string();
    if name == "-" {
        return open_reader(
            "<stdin>",
            Box::new(std::io::BufReader::with_capacity(256 * 1024, std::io::stdin())),
            format,
        );
    }
    let file = std::fs::File::open(path).map_err(|e| SampleError {
        source_name: name.clone(),
        line: 0,
        message: format!("cannot open the WAL sample: {e}"),
    })?;
    open_reader(
        &name,
        Box::new(std::io::BufReader::with_capacity(256 * 1024, file)),
        format,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        assert_eq!(detect("BEGIN 1"), Some(InputFormat::TestDecoding));
        assert_eq!(
            detect("table public.t: INSERT: id[integer]:1"),
            Some(InputFormat::TestDecoding)
        );
        assert_eq!(detect(r#"{"action":"B"}"#), Some(InputFormat::Wal2JsonV2));
        assert_eq!(detect(r#"{"xid":1,"change":[]}"#), Some(InputFormat::Wal2JsonV1));
        assert_eq!(detect("{"), Some(InputFormat::Wal2JsonV1));
        assert_eq!(detect("WALBUST-CAPTURE 1"), Some(InputFormat::Capture));
        assert_eq!(detect("hello"), None);
        let err = open_reader(
            "s.txt",
            Box::new(std::io::Cursor::new(b"\n\nhello world\n".to_vec())),
            None,
        )
        .err()
        .unwrap();
        assert!(err.to_string().starts_with("s.txt:1: cannot tell"), "{err}");
        assert_eq!(InputFormat::parse("wal2json"), Some(InputFormat::Wal2JsonV2));
    }
}
