//! Streaming replication CopyData frames: XLogData and primary keepalive from the server,
//! standby status update to it. Pure encoding/decoding; never panics on input.

use super::pgoutput::DecodeError;
use crate::bytes::Cursor;
use crate::model::Lsn;

/// A CopyData payload sent by the walsender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame<'a> {
    /// `w`: WAL data — one pgoutput message.
    XLogData {
        start: Lsn,
        /// Current end of WAL on the server.
        wal_end: Lsn,
        send_time: i64,
        data: &'a [u8],
    },
    /// `k`: primary keepalive.
    Keepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
}

pub fn parse_server_frame(bytes: &[u8]) -> Result<ServerFrame<'_>, DecodeError> {
    let mut c = Cursor::new(bytes);
    match c.u8("replication frame type")? {
        b'w' => Ok(ServerFrame::XLogData {
            start: c.lsn("XLogData start")?,
            wal_end: c.lsn("XLogData wal_end")?,
            send_time: c.i64("XLogData send_time")?,
            data: c.rest(),
        }),
        b'k' => Ok(ServerFrame::Keepalive {
            wal_end: c.lsn("keepalive wal_end")?,
            send_time: c.i64("keepalive send_time")?,
            reply_requested: c.u8("keepalive reply flag")? != 0,
        }),
        other => Err(DecodeError::UnknownMessage(other as char)),
    }
}

/// Encodes a standby status update (`r`). walbust reports the same position as written,
/// flushed and applied: the highest position whose invalidations every target confirmed.
pub fn standby_status_update(applied: Lsn, client_time_pg_micros: i64, reply_requested: bool) -> [u8; 34] {
    let mut out = [0u8; 34];
    out[0] = b'r';
    out[1..9].copy_from_slice(&applied.0.to_be_bytes());
    out[9..17].copy_from_slice(&applied.0.to_be_bytes());
    out[17..25].copy_from_slice(&applied.0.to_be_bytes());
    out[25..33].copy_from_slice(&client_time_pg_micros.to_be_bytes());
    out[33] = u8::from(reply_requested);
    out
}

/// Microseconds since 2000-01-01 UTC, the protocol's clock.
pub fn pg_now_micros() -> i64 {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    since_unix - 946_684_800_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xlogdata_and_keepalive() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&1u64.to_be_bytes());
        w.extend_from_slice(&2u64.to_be_bytes());
        w.extend_from_slice(&3u64.to_be_bytes());
        w.extend_from_slice(b"Bxyz");
        assert_eq!(
            parse_server_frame(&w).unwrap(),
            ServerFrame::XLogData {
                start: Lsn(1),
                wal_end: Lsn(2),
                send_time: 3,
                data: b"Bxyz"
            }
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&0x10u64.to_be_bytes());
        k.extend_from_slice(&0u64.to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_server_frame(&k).unwrap(),
            ServerFrame::Keepalive {
                wal_end: Lsn(0x10),
                send_time: 0,
                reply_requested: true
            }
        );
        assert!(parse_server_frame(b"k\0").is_err());
        assert!(parse_server_frame(b"").is_err());
        assert!(parse_server_frame(b"q").is_err());
    }

    #[test]
    fn status_update_layout() {
        let b = standby_status_update(Lsn(0x0102), 7, true);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[1..9], &0x0102u64.to_be_bytes());
        assert_eq!(&b[17..25], &0x0102u64.to_be_bytes());
        assert_eq!(&b[25..33], &7i64.to_be_bytes());
        assert_eq!(b[33], 1);
    }

    proptest::proptest! {
        #[test]
        fn frames_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse_server_frame(&bytes);
        }
    }
}
