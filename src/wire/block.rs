//! Block headers (80 bytes, hash, target from bits, work) and blocks whose transactions are
//! `Bytes` slices of the one buffer the block arrived in.

use super::codec::{
    compact_size_len, put_compact_size, Decode, DecodeErrorKind, DecodeResult, Encode, Reader,
};
use super::hash::{sha256d, Hash256};
use super::tx::Transaction;
use super::u256::U256;
use bytes::{BufMut, Bytes, BytesMut};

/// Size of a serialized block header.
pub const HEADER_LEN: usize = 80;

/// An 80-byte block header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockHeader {
    /// Block version (signed, as in the reference node).
    pub version: i32,
    /// Hash of the previous block's header.
    pub prev_hash: Hash256,
    /// Merkle root of the block's transactions.
    pub merkle_root: Hash256,
    /// Unix time the miner put in.
    pub time: u32,
    /// Target in compact form.
    pub bits: u32,
    /// Proof-of-work nonce.
    pub nonce: u32,
}

impl BlockHeader {
    /// The 80 bytes as serialized.
    pub fn to_array(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.version.to_le_bytes());
        b[4..36].copy_from_slice(&self.prev_hash.0);
        b[36..68].copy_from_slice(&self.merkle_root.0);
        b[68..72].copy_from_slice(&self.time.to_le_bytes());
        b[72..76].copy_from_slice(&self.bits.to_le_bytes());
        b[76..80].copy_from_slice(&self.nonce.to_le_bytes());
        b
    }

    /// Parses 80 bytes.
    pub fn from_array(b: &[u8; HEADER_LEN]) -> BlockHeader {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        BlockHeader {
            version: u32_at(0) as i32,
            prev_hash: Hash256(b[4..36].try_into().expect("32 bytes")),
            merkle_root: Hash256(b[36..68].try_into().expect("32 bytes")),
            time: u32_at(68),
            bits: u32_at(72),
            nonce: u32_at(76),
        }
    }

    /// The block hash: double SHA-256 of the 80 bytes.
    pub fn hash(&self) -> Hash256 {
        Hash256(sha256d(&self.to_array()))
    }

    /// The target encoded by `bits`, or `None` when `bits` is negative, zero or overflows.
    pub fn target(&self) -> Option<U256> {
        target_from_compact(self.bits)
    }

    /// The expected number of hashes to find this block: 2^256 / (target + 1). Zero when the bits
    /// are invalid.
    pub fn work(&self) -> U256 {
        self.target()
            .map(|t| work_from_target(&t))
            .unwrap_or(U256::ZERO)
    }

    /// Whether the header's hash meets the target of its own bits.
    pub fn meets_own_target(&self) -> bool {
        match self.target() {
            Some(t) => U256::from_le_bytes(&self.hash().0) <= t,
            None => false,
        }
    }
}

/// Decodes a compact target ("bits"). `None` for a negative, zero or overflowing value.
pub fn target_from_compact(bits: u32) -> Option<U256> {
    let exp = bits >> 24;
    let mantissa = bits & 0x007f_ffff;
    if bits & 0x0080_0000 != 0 && mantissa != 0 {
        return None; // negative
    }
    if mantissa != 0
        && (exp > 34 || (mantissa > 0xff && exp > 33) || (mantissa > 0xffff && exp > 32))
    {
        return None; // overflow
    }
    let t = if exp <= 3 {
        U256::from_u64((mantissa >> (8 * (3 - exp))) as u64)
    } else {
        U256::from_u64(mantissa as u64).shl(8 * (exp - 3))
    };
    (!t.is_zero()).then_some(t)
}

/// Encodes a target in compact form (the inverse of [`target_from_compact`], rounding down).
pub fn compact_from_target(t: &U256) -> u32 {
    let mut size = t.bits().div_ceil(8);
    let mut compact = if size <= 3 {
        (t.low_u64() << (8 * (3 - size))) as u32
    } else {
        t.shr(8 * (size - 3)).low_u64() as u32
    };
    if compact & 0x0080_0000 != 0 {
        compact >>= 8;
        size += 1;
    }
    compact | (size << 24)
}

/// 2^256 / (target + 1), computed as (!target / (target + 1)) + 1.
pub fn work_from_target(t: &U256) -> U256 {
    let denom = match t.checked_add(&U256::ONE) {
        Some(d) => d,
        None => return U256::ONE,
    };
    let (q, _) = t
        .not()
        .div_rem(&denom)
        .expect("denominator is at least one");
    q.saturating_add(&U256::ONE)
}

impl Encode for BlockHeader {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_slice(&self.to_array());
    }
    fn encoded_len(&self) -> usize {
        HEADER_LEN
    }
}

impl Decode for BlockHeader {
    fn decode(r: &mut Reader) -> DecodeResult<Self> {
        Ok(BlockHeader::from_array(&r.array::<HEADER_LEN>()?))
    }
}

/// A block: its header and its transactions, all slices of the `raw` buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The parsed header.
    pub header: BlockHeader,
    /// The transactions, in block order.
    pub txs: Vec<Transaction>,
    raw: Bytes,
}

/// Smallest possible transaction: version, one-byte input and output counts, lock time.
const MIN_TX_LEN: usize = 10;

impl Block {
    /// Builds a block from parts (serializes once).
    pub fn new(header: BlockHeader, txs: Vec<Transaction>) -> Block {
        let len = HEADER_LEN
            + compact_size_len(txs.len() as u64)
            + txs.iter().map(|t| t.raw().len()).sum::<usize>();
        let mut b = BytesMut::with_capacity(len);
        header.encode(&mut b);
        put_compact_size(&mut b, txs.len() as u64);
        for t in &txs {
            b.put_slice(t.raw());
        }
        Block::decode_all(b.freeze()).expect("a block serialized from valid parts decodes")
    }

    /// The serialized block (the `block` message payload).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The block hash.
    pub fn hash(&self) -> Hash256 {
        self.header.hash()
    }

    /// The merkle root computed from the transactions' ids.
    pub fn compute_merkle_root(&self) -> Hash256 {
        merkle_root(self.txs.iter().map(|t| t.txid()).collect())
    }
}

/// The merkle root of a list of transaction ids (Bitcoin's, which repeats the last of an odd row).
pub fn merkle_root(mut row: Vec<Hash256>) -> Hash256 {
    if row.is_empty() {
        return Hash256::ZERO;
    }
    while row.len() > 1 {
        if row.len() % 2 == 1 {
            row.push(*row.last().expect("row is not empty"));
        }
        row = row
            .chunks(2)
            .map(|p| {
                let mut cat = [0u8; 64];
                cat[..32].copy_from_slice(&p[0].0);
                cat[32..].copy_from_slice(&p[1].0);
                Hash256(sha256d(&cat))
            })
            .collect();
    }
    row[0]
}

impl Encode for Block {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_slice(&self.raw);
    }
    fn encoded_len(&self) -> usize {
        self.raw.len()
    }
}

impl Decode for Block {
    fn decode(r: &mut Reader) -> DecodeResult<Self> {
        let start = r.offset();
        let header = BlockHeader::decode(r)?;
        let n = r.count("transactions", u64::MAX, MIN_TX_LEN)?;
        if n == 0 {
            return Err(r.err(DecodeErrorKind::Invalid("block with no transactions")));
        }
        let mut txs = Vec::with_capacity(n);
        for _ in 0..n {
            txs.push(Transaction::decode(r)?);
        }
        let raw = r.slice_between(start, r.offset());
        Ok(Block { header, txs, raw })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_round_trip_and_known_work() {
        let t = target_from_compact(0x1d00ffff).unwrap();
        assert_eq!(compact_from_target(&t), 0x1d00ffff);
        // work of a difficulty-1 block is 0x100010001
        assert_eq!(work_from_target(&t), U256::from_u64(0x1_0001_0001));
        let reg = target_from_compact(0x207fffff).unwrap();
        assert_eq!(compact_from_target(&reg), 0x207fffff);
        assert_eq!(work_from_target(&reg), U256::from_u64(2));
        assert!(target_from_compact(0x04923456).is_none()); // negative
        assert!(target_from_compact(0xff123456).is_none()); // overflow
        assert!(target_from_compact(0).is_none());
    }
}
