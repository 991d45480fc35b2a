//! The one byte cursor every binary decoder uses (pgoutput messages, replication frames, the
//! capture format): big-endian fields, borrowed slices, and a [`Truncated`] error instead of a
//! panic when the input is short.

use crate::model::Lsn;

/// Input ended before a field was complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("truncated: needed {needed} more byte(s) for {what}")]
pub struct Truncated {
    /// The field being read.
    pub what: &'static str,
    /// How many more bytes it needed.
    pub needed: usize,
}

/// Reads fields from the front of a byte slice.
#[derive(Debug, Clone, Copy)]
pub struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf }
    }

    /// What has not been read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Truncated> {
        if self.buf.len() < n {
            return Err(Truncated {
                what,
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Truncated> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, Truncated> {
        Ok(self.take(1, what)?[0])
    }

    pub fn i16(&mut self, what: &'static str) -> Result<i16, Truncated> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    pub fn i32(&mut self, what: &'static str) -> Result<i32, Truncated> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, Truncated> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64, Truncated> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, Truncated> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    pub fn lsn(&mut self, what: &'static str) -> Result<Lsn, Truncated> {
        Ok(Lsn(self.u64(what)?))
    }

    /// The bytes of a NUL-terminated string, without the NUL.
    pub fn cstr_bytes(&mut self, what: &'static str) -> Result<&'a [u8], Truncated> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(Truncated { what, needed: 1 })?;
        let bytes = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(bytes)
    }

    /// A NUL-terminated string. Identifiers are valid in the server encoding; a lossy
    /// placeholder keeps decoding going if one is not.
    pub fn cstr(&mut self, what: &'static str) -> Result<&'a str, Truncated> {
        let bytes = self.cstr_bytes(what)?;
        Ok(std::str::from_utf8(bytes).unwrap_or("\u{fffd}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_fields_and_reports_truncation() {
        let bytes = [0u8, 1, 0, 0, 0, 2, b'h', b'i', 0, 9];
        let mut c = Cursor::new(&bytes);
        assert_eq!(c.i16("a").unwrap(), 1);
        assert_eq!(c.u32("b").unwrap(), 2);
        assert_eq!(c.cstr("c").unwrap(), "hi");
        assert_eq!(c.remaining(), 1);
        assert_eq!(c.i64("d"), Err(Truncated { what: "d", needed: 7 }));
        assert_eq!(c.u8("e").unwrap(), 9);
        assert_eq!(c.cstr("f"), Err(Truncated { what: "f", needed: 1 }));
    }
}
