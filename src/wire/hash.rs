//! 32-byte hashes (block and transaction ids) and the double SHA-256 the protocol uses everywhere.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// A 32-byte hash in wire (internal, little-endian) byte order.
///
/// `Display` and `FromStr` use the customary reversed hex (`0000...` for block hashes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash256(pub [u8; 32]);

impl Hash256 {
    /// The all-zero hash (the "previous block" of a genesis block, the "stop" of a locator).
    pub const ZERO: Hash256 = Hash256([0; 32]);

    /// Double SHA-256 of `data`.
    pub fn sha256d(data: &[u8]) -> Hash256 {
        Hash256(sha256d(data))
    }

    /// The bytes in wire order.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a hash from a slice of exactly 32 bytes in wire order.
    pub fn from_slice(s: &[u8]) -> Option<Hash256> {
        <[u8; 32]>::try_from(s).ok().map(Hash256)
    }

    /// Whether every byte is zero.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}

/// Double SHA-256 of `data`.
pub fn sha256d(data: &[u8]) -> [u8; 32] {
    let first = Sha256::digest(data);
    Sha256::digest(first).into()
}

/// Double SHA-256 over several pieces, fed in order (no concatenation buffer is built).
pub fn sha256d_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let first = h.finalize();
    Sha256::digest(first).into()
}

/// The 4-byte message checksum: the first four bytes of the double SHA-256 of the payload.
pub fn checksum(payload: &[u8]) -> [u8; 4] {
    let d = sha256d(payload);
    [d[0], d[1], d[2], d[3]]
}

impl fmt::Display for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().rev() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash256({self})")
    }
}

/// Error parsing a hash from hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseHashError;

impl fmt::Display for ParseHashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected 64 hex digits")
    }
}

impl std::error::Error for ParseHashError {}

impl FromStr for Hash256 {
    type Err = ParseHashError;
    /// Parses the customary reversed hex form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = decode_hex(s).ok_or(ParseHashError)?;
        if b.len() != 32 {
            return Err(ParseHashError);
        }
        b.reverse();
        Ok(Hash256(b.try_into().expect("length checked to be 32")))
    }
}

/// Decodes a hex string (either case) into bytes; `None` on odd length or a non-hex digit.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Encodes bytes as lowercase hex.
pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_checksum_is_the_known_constant() {
        assert_eq!(checksum(&[]), [0x5d, 0xf6, 0xe0, 0xe2]);
    }

    #[test]
    fn hex_round_trip_reverses() {
        let h: Hash256 = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
            .parse()
            .unwrap();
        assert_eq!(h.0[31], 0);
        assert_eq!(h.0[0], 0x6f);
        assert_eq!(
            h.to_string(),
            "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
        );
        assert!("zz".parse::<Hash256>().is_err());
        assert!("00".parse::<Hash256>().is_err());
    }

    #[test]
    fn parts_equal_whole() {
        assert_eq!(sha256d_parts(&[b"ab", b"", b"cd"]), sha256d(b"abcd"));
    }
}
