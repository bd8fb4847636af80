//! Primitive encoding: a bounds-checked reader over one `Bytes` buffer (slices, never copies) and
//! the compact-size / var-string writers. Every read failure carries the byte offset it happened at.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// What went wrong while decoding a payload, without the position (see [`DecodeError`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The input ended: `needed` more bytes were required, `available` were left.
    UnexpectedEnd { needed: u64, available: usize },
    /// A compact size that is not in its shortest form (Bitcoin nodes refuse these).
    NonCanonicalCompactSize,
    /// A count or length above what the protocol allows, or more than the bytes left could hold.
    TooMany {
        what: &'static str,
        count: u64,
        max: u64,
    },
    /// A string that is not UTF-8.
    InvalidUtf8,
    /// A field with a value the protocol does not allow.
    Invalid(&'static str),
    /// Bytes left over after a message that must end there.
    TrailingBytes(usize),
}

/// A decoding failure at a byte offset of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Offset from the start of the buffer being decoded.
    pub offset: usize,
    /// What went wrong.
    pub kind: DecodeErrorKind,
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeErrorKind::UnexpectedEnd { needed, available } => {
                write!(f, "unexpected end: needed {needed} bytes, {available} left")
            }
            DecodeErrorKind::NonCanonicalCompactSize => f.write_str("non-canonical compact size"),
            DecodeErrorKind::TooMany { what, count, max } => {
                write!(f, "too many {what}: {count} (at most {max})")
            }
            DecodeErrorKind::InvalidUtf8 => f.write_str("string is not utf-8"),
            DecodeErrorKind::Invalid(what) => write!(f, "invalid {what}"),
            DecodeErrorKind::TrailingBytes(n) => write!(f, "{n} trailing bytes"),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at offset {}", self.kind, self.offset)
    }
}

impl std::error::Error for DecodeError {}

/// Result of a decode step.
pub type DecodeResult<T> = Result<T, DecodeError>;

/// A cursor over one shared buffer. `bytes(n)` hands out zero-copy slices of it.
#[derive(Clone, Debug)]
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    /// A reader at the start of `buf`.
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf, pos: 0 }
    }

    /// Current offset from the start of the buffer.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The unread part as a slice.
    pub fn rest(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// An error of `kind` at the current offset.
    pub fn err(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            offset: self.pos,
            kind,
        }
    }

    /// An error of `kind` at `offset`.
    pub fn err_at(&self, offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { offset, kind }
    }

    fn need(&self, n: usize) -> DecodeResult<()> {
        if self.remaining() < n {
            Err(self.err(DecodeErrorKind::UnexpectedEnd {
                needed: n as u64,
                available: self.remaining(),
            }))
        } else {
            Ok(())
        }
    }

    /// Borrows the next `n` bytes.
    pub fn slice(&mut self, n: usize) -> DecodeResult<&[u8]> {
        self.need(n)?;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The next `n` bytes as a zero-copy `Bytes` slice of the buffer.
    pub fn bytes(&mut self, n: usize) -> DecodeResult<Bytes> {
        self.need(n)?;
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> DecodeResult<()> {
        self.need(n)?;
        self.pos += n;
        Ok(())
    }

    /// A zero-copy slice of the buffer between two offsets already read.
    pub fn slice_between(&self, start: usize, end: usize) -> Bytes {
        self.buf.slice(start..end)
    }

    /// Everything left, zero-copy.
    pub fn take_rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        b
    }

    /// A fixed-size array.
    pub fn array<const N: usize>(&mut self) -> DecodeResult<[u8; N]> {
        Ok(self.slice(N)?.try_into().expect("slice has length N"))
    }

    /// One byte.
    pub fn u8(&mut self) -> DecodeResult<u8> {
        Ok(self.array::<1>()?[0])
    }

    /// Little-endian u16.
    pub fn u16_le(&mut self) -> DecodeResult<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Big-endian u16 (ports in network addresses).
    pub fn u16_be(&mut self) -> DecodeResult<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Little-endian u32.
    pub fn u32_le(&mut self) -> DecodeResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Little-endian i32.
    pub fn i32_le(&mut self) -> DecodeResult<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    /// Little-endian u64.
    pub fn u64_le(&mut self) -> DecodeResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Little-endian i64.
    pub fn i64_le(&mut self) -> DecodeResult<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A Bitcoin compact size (canonical form only).
    pub fn compact_size(&mut self) -> DecodeResult<u64> {
        let start = self.pos;
        let first = self.u8()?;
        let (v, min) = match first {
            0xfd => (self.u16_le()? as u64, 0xfd),
            0xfe => (self.u32_le()? as u64, 0x1_0000),
            0xff => (self.u64_le()?, 0x1_0000_0000),
            n => return Ok(n as u64),
        };
        if v < min {
            return Err(self.err_at(start, DecodeErrorKind::NonCanonicalCompactSize));
        }
        Ok(v)
    }

    /// A count of items that will follow, each at least `min_item_len` bytes, at most `max`.
    ///
    /// Refuses counts that the remaining bytes cannot hold, so a caller may allocate `count` items.
    pub fn count(
        &mut self,
        what: &'static str,
        max: u64,
        min_item_len: usize,
    ) -> DecodeResult<usize> {
        let start = self.pos;
        let n = self.compact_size()?;
        let fits = (self.remaining() / min_item_len.max(1)) as u64;
        if n > max {
            return Err(self.err_at(
                start,
                DecodeErrorKind::TooMany {
                    what,
                    count: n,
                    max,
                },
            ));
        }
        if n > fits {
            return Err(self.err_at(
                start,
                DecodeErrorKind::UnexpectedEnd {
                    needed: n.saturating_mul(min_item_len as u64),
                    available: self.remaining(),
                },
            ));
        }
        Ok(n as usize)
    }

    /// Length-prefixed bytes (at most `max`), zero-copy.
    pub fn var_bytes(&mut self, what: &'static str, max: u64) -> DecodeResult<Bytes> {
        let n = self.count(what, max, 1)?;
        self.bytes(n)
    }

    /// Length-prefixed UTF-8 string of at most `max` bytes.
    pub fn var_str(&mut self, what: &'static str, max: u64) -> DecodeResult<String> {
        let start = self.pos;
        let b = self.var_bytes(what, max)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err_at(start, DecodeErrorKind::InvalidUtf8))
    }

    /// Fails unless every byte has been read.
    pub fn finish(&self) -> DecodeResult<()> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.err(DecodeErrorKind::TrailingBytes(n))),
        }
    }
}

/// Reads a compact size at the start of `b` without a [`Reader`]: the value and its length.
/// For bytes already validated; does not check for the canonical form.
pub fn compact_size_at(b: &[u8]) -> Option<(u64, usize)> {
    let le = |n: usize| -> Option<u64> {
        let s = b.get(1..1 + n)?;
        Some(s.iter().rev().fold(0u64, |acc, x| acc << 8 | *x as u64))
    };
    match *b.first()? {
        0xfd => Some((le(2)?, 3)),
        0xfe => Some((le(4)?, 5)),
        0xff => Some((le(8)?, 9)),
        n => Some((n as u64, 1)),
    }
}

/// Length of the compact size encoding of `n`.
pub fn compact_size_len(n: u64) -> usize {
    match n {
        0..=0xfc => 1,
        0xfd..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Writes a compact size.
pub fn put_compact_size(buf: &mut impl BufMut, n: u64) {
    match n {
        0..=0xfc => buf.put_u8(n as u8),
        0xfd..=0xffff => {
            buf.put_u8(0xfd);
            buf.put_u16_le(n as u16);
        }
        0x1_0000..=0xffff_ffff => {
            buf.put_u8(0xfe);
            buf.put_u32_le(n as u32);
        }
        _ => {
            buf.put_u8(0xff);
            buf.put_u64_le(n);
        }
    }
}

/// Writes length-prefixed bytes.
pub fn put_var_bytes(buf: &mut impl BufMut, b: &[u8]) {
    put_compact_size(buf, b.len() as u64);
    buf.put_slice(b);
}

/// Types with a wire encoding.
pub trait Encode {
    /// Appends the encoding to `buf`.
    fn encode(&self, buf: &mut BytesMut);
    /// Exact length of the encoding.
    fn encoded_len(&self) -> usize;
    /// The encoding in a fresh buffer.
    fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut b);
        b.freeze()
    }
}

/// Types that decode from a [`Reader`].
pub trait Decode: Sized {
    /// Reads one value.
    fn decode(r: &mut Reader) -> DecodeResult<Self>;
    /// Decodes a whole buffer: the value must use every byte.
    fn decode_all(b: Bytes) -> DecodeResult<Self> {
        let mut r = Reader::new(b);
        let v = Self::decode(&mut r)?;
        r.finish()?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_size_boundaries() {
        for n in [
            0u64,
            0xfc,
            0xfd,
            0xffff,
            0x10000,
            0xffff_ffff,
            0x1_0000_0000,
            u64::MAX,
        ] {
            let mut b = BytesMut::new();
            put_compact_size(&mut b, n);
            assert_eq!(b.len(), compact_size_len(n));
            let mut r = Reader::new(b.freeze());
            assert_eq!(r.compact_size().unwrap(), n);
            r.finish().unwrap();
        }
    }

    #[test]
    fn non_canonical_refused_with_offset() {
        let mut r = Reader::new(Bytes::from_static(&[0, 0xfd, 0x10, 0x00]));
        r.u8().unwrap();
        let e = r.compact_size().unwrap_err();
        assert_eq!(e.offset, 1);
        assert_eq!(e.kind, DecodeErrorKind::NonCanonicalCompactSize);
    }

    #[test]
    fn count_refuses_what_cannot_fit() {
        // claims 1,000,000 items of 36 bytes with 3 bytes left: refused before any allocation
        let mut r = Reader::new(Bytes::from_static(&[0xfe, 0x40, 0x42, 0x0f, 0x00, 1, 2, 3]));
        assert!(matches!(
            r.count("inventory", u64::MAX, 36).unwrap_err().kind,
            DecodeErrorKind::UnexpectedEnd { .. }
        ));
        let mut r = Reader::new(Bytes::from_static(&[0x05, 1, 2, 3, 4, 5]));
        assert!(matches!(
            r.count("x", 4, 1).unwrap_err().kind,
            DecodeErrorKind::TooMany {
                count: 5,
                max: 4,
                ..
            }
        ));
    }
}
