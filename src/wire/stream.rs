//! Blocks checked as their bytes arrive, in pieces of any size: the header, each transaction's
//! id, the merkle root (with the duplicate-id mutation the SV node refuses) and the frame
//! checksum, with memory that does not depend on the block's size. This is how a block bigger
//! than [`crate::config::Config::block_file_threshold`] goes from a socket to a file without
//! ever being whole in memory, and how a stored one is listed from its file.
//!
//! Pure code: the caller feeds bytes and decides where they go.

use super::block::{BlockHeader, HEADER_LEN};
use super::hash::Hash256;
use sha2::{Digest, Sha256};
use std::fmt;

/// Why a streamed block was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// Its transactions do not parse (at this offset in the block).
    Malformed { offset: u64, what: &'static str },
    /// The block declares no transactions.
    NoTransactions,
    /// Bytes after the last transaction.
    TrailingBytes { offset: u64 },
    /// The block ended before its last transaction did.
    Truncated { size: u64 },
    /// The merkle root of the transactions is not the header's.
    BadMerkleRoot { header: Hash256, computed: Hash256 },
    /// Two equal ids side by side in the merkle tree (SV: `bad-txns-duplicate`).
    Mutated,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Malformed { offset, what } => {
                write!(f, "malformed block at byte {offset}: {what}")
            }
            StreamError::NoTransactions => f.write_str("block with no transactions"),
            StreamError::TrailingBytes { offset } => {
                write!(f, "bytes after the last transaction at byte {offset}")
            }
            StreamError::Truncated { size } => {
                write!(f, "block ends at byte {size}, inside a transaction")
            }
            StreamError::BadMerkleRoot { header, computed } => write!(
                f,
                "merkle root {computed} of the transactions is not the header's {header}"
            ),
            StreamError::Mutated => f.write_str("duplicate transaction ids (mutated merkle tree)"),
        }
    }
}

impl std::error::Error for StreamError {}

fn hash_pair(a: &Hash256, b: &Hash256) -> Hash256 {
    let mut cat = [0u8; 64];
    cat[..32].copy_from_slice(&a.0);
    cat[32..].copy_from_slice(&b.0);
    Hash256::sha256d(&cat)
}

/// Bitcoin's merkle root computed one id at a time, keeping one hash per level (64 levels: any
/// count): the same root as [`super::block::merkle_root`], and it notices the mutation that
/// repeats ids to make another list with the same root (CVE-2012-2459).
#[derive(Clone, Debug, Default)]
pub struct MerkleStream {
    inner: Vec<Hash256>,
    count: u64,
    mutated: bool,
}

impl MerkleStream {
    /// An empty tree.
    pub fn new() -> MerkleStream {
        MerkleStream::default()
    }

    /// Adds the next id.
    pub fn push(&mut self, id: Hash256) {
        let mut h = id;
        let mut level = 0;
        let mut c = self.count;
        self.count += 1;
        // every set low bit is a complete subtree waiting at that level for its right sibling
        while c & 1 == 1 {
            if self.inner[level] == h {
                self.mutated = true;
            }
            h = hash_pair(&self.inner[level], &h);
            c >>= 1;
            level += 1;
        }
        if self.inner.len() <= level {
            self.inner.resize(level + 1, Hash256::ZERO);
        }
        self.inner[level] = h;
    }

    /// How many ids were added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The root (zero for no ids) and whether the tree was mutated.
    pub fn finish(&self) -> (Hash256, bool) {
        let count = self.count;
        if count == 0 {
            return (Hash256::ZERO, false);
        }
        // The lowest set bit is the lowest pending subtree; an odd row there is paired with
        // itself (Bitcoin's rule), the carry combines it with the pending subtrees above it,
        // and so on up to the top.
        let mut level = count.trailing_zeros() as usize;
        let mut h = self.inner[level];
        let mut c = count;
        while c != 1u64 << level {
            h = hash_pair(&h, &h);
            c += 1u64 << level;
            level += 1;
            while c & (1u64 << level) == 0 {
                h = hash_pair(&self.inner[level], &h);
                level += 1;
            }
        }
        (h, self.mutated)
    }
}

/// Where a transaction's parse stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Version,
    /// First byte after the version: an input count, or BIP144's marker.
    Marker,
    /// After a zero byte: the witness flag, or the output count of a tx with no inputs.
    Flag,
    InCount,
    Prevout,
    InScriptLen,
    InScript,
    Sequence,
    OutCount,
    Value,
    OutScriptLen,
    OutScript,
    WitItems,
    WitLen,
    WitData,
    LockTime,
}

/// One transaction's id computed from its bytes fed in pieces: a resumable parse of its layout
/// (the same rules as [`super::tx::tx_extent`], BIP144 included) that hashes what the id covers.
#[derive(Clone)]
pub struct TxStream {
    st: St,
    /// Bytes still to pass in a fixed-size field or a script.
    left: u64,
    /// A compact size being read.
    var: [u8; 9],
    var_have: usize,
    ins: u64,
    in_i: u64,
    outs: u64,
    out_i: u64,
    items: u64,
    item_i: u64,
    witness: bool,
    hasher: Sha256,
    size: u64,
}

impl fmt::Debug for TxStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxStream")
            .field("st", &self.st)
            .field("size", &self.size)
            .finish()
    }
}

impl Default for TxStream {
    fn default() -> TxStream {
        TxStream::new()
    }
}

/// What a step of [`TxStream::feed`] came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxFeed {
    /// Every byte was used; the transaction goes on.
    More,
    /// The transaction ended after this many of the bytes; its id and length.
    Done {
        used: usize,
        txid: Hash256,
        len: u64,
    },
}

impl TxStream {
    /// A transaction about to start.
    pub fn new() -> TxStream {
        TxStream {
            st: St::Version,
            left: 4,
            var: [0; 9],
            var_have: 0,
            ins: 0,
            in_i: 0,
            outs: 0,
            out_i: 0,
            items: 0,
            item_i: 0,
            witness: false,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Whether no byte of it has arrived.
    pub fn is_fresh(&self) -> bool {
        self.size == 0
    }

    fn hashed(st: St) -> bool {
        !matches!(st, St::WitItems | St::WitLen | St::WitData)
    }

    /// Reads a compact size byte by byte; `Some` once whole.
    fn var_byte(&mut self, b: u8) -> Option<u64> {
        self.var[self.var_have] = b;
        self.var_have += 1;
        let need = match self.var[0] {
            0xfd => 3,
            0xfe => 5,
            0xff => 9,
            _ => 1,
        };
        if self.var_have < need {
            return None;
        }
        self.var_have = 0;
        let n = if need == 1 {
            self.var[0] as u64
        } else {
            self.var[1..need]
                .iter()
                .rev()
                .fold(0u64, |acc, x| acc << 8 | *x as u64)
        };
        Some(n)
    }

    /// State after the inputs (or after an input's script and sequence).
    fn after_input(&mut self) {
        self.in_i += 1;
        if self.in_i < self.ins {
            self.st = St::Prevout;
            self.left = 36;
        } else {
            self.st = St::OutCount;
        }
    }

    fn after_output(&mut self) {
        self.out_i += 1;
        if self.out_i < self.outs {
            self.st = St::Value;
            self.left = 8;
        } else {
            self.after_outputs();
        }
    }

    fn after_outputs(&mut self) {
        if self.witness && self.ins > 0 {
            self.in_i = 0;
            self.st = St::WitItems;
        } else {
            self.st = St::LockTime;
            self.left = 4;
        }
    }

    fn after_witness_input(&mut self) {
        self.in_i += 1;
        if self.in_i < self.ins {
            self.st = St::WitItems;
        } else {
            self.st = St::LockTime;
            self.left = 4;
        }
    }

    fn after_item(&mut self) {
        self.item_i += 1;
        if self.item_i < self.items {
            self.st = St::WitLen;
        } else {
            self.after_witness_input();
        }
    }

    /// Feeds the next bytes of the transaction. `base` is the offset of `data[0]` in the block,
    /// for errors.
    pub fn feed(&mut self, data: &[u8], base: u64) -> Result<TxFeed, StreamError> {
        let mut i = 0;
        // start of the run of bytes to hash, while in a hashed state
        let mut run = 0;
        let bad = |i: usize, what| StreamError::Malformed {
            offset: base + i as u64,
            what,
        };
        let mut in_hash = Self::hashed(self.st);
        while i < data.len() {
            let st = self.st;
            if Self::hashed(st) != in_hash {
                // into or out of a witness: what came before is hashed, what follows is not,
                // or the other way round
                if in_hash {
                    self.hasher.update(&data[run..i]);
                }
                run = i;
                in_hash = !in_hash;
            }
            match st {
                St::Version | St::Prevout | St::Sequence | St::Value | St::LockTime => {
                    let n = (self.left as usize).min(data.len() - i);
                    i += n;
                    self.left -= n as u64;
                    if self.left > 0 {
                        continue;
                    }
                    match st {
                        St::Version => self.st = St::Marker,
                        St::Prevout => self.st = St::InScriptLen,
                        St::Sequence => self.after_input(),
                        St::Value => self.st = St::OutScriptLen,
                        _ => {
                            self.hasher.update(&data[run..i]);
                            self.size += i as u64;
                            let first = std::mem::take(&mut self.hasher).finalize();
                            let txid = Hash256(Sha256::digest(first).into());
                            let len = self.size;
                            *self = TxStream::new();
                            return Ok(TxFeed::Done { used: i, txid, len });
                        }
                    }
                }
                St::InScript | St::OutScript | St::WitData => {
                    let n = usize::try_from(self.left)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - i);
                    i += n;
                    self.left -= n as u64;
                    if self.left > 0 {
                        continue;
                    }
                    match st {
                        St::InScript => {
                            self.st = St::Sequence;
                            self.left = 4;
                        }
                        St::OutScript => self.after_output(),
                        _ => self.after_item(),
                    }
                }
                St::Marker => {
                    if data[i] == 0 {
                        // not hashed yet: a marker, or a count of no inputs
                        self.hasher.update(&data[run..i]);
                        i += 1;
                        run = i;
                        self.st = St::Flag;
                    } else {
                        self.st = St::InCount;
                    }
                }
                St::Flag => {
                    match data[i] {
                        0 => {
                            // no inputs, and this zero is the output count's first byte
                            self.hasher.update([0u8]);
                            self.ins = 0;
                            self.st = St::OutCount;
                        }
                        1 => {
                            self.witness = true;
                            i += 1;
                            run = i;
                            self.st = St::InCount;
                        }
                        _ => return Err(bad(i, "witness flag")),
                    }
                }
                St::InCount | St::InScriptLen | St::OutCount | St::OutScriptLen => {
                    let b = data[i];
                    i += 1;
                    let Some(n) = self.var_byte(b) else {
                        continue;
                    };
                    match st {
                        St::InCount => {
                            self.ins = n;
                            self.in_i = 0;
                            if n == 0 {
                                self.st = St::OutCount;
                            } else {
                                self.st = St::Prevout;
                                self.left = 36;
                            }
                        }
                        St::InScriptLen => {
                            self.st = St::InScript;
                            self.left = n;
                            if n == 0 {
                                self.st = St::Sequence;
                                self.left = 4;
                            }
                        }
                        St::OutCount => {
                            self.outs = n;
                            self.out_i = 0;
                            if n == 0 {
                                self.after_outputs();
                            } else {
                                self.st = St::Value;
                                self.left = 8;
                            }
                        }
                        _ => {
                            self.left = n;
                            self.st = St::OutScript;
                            if n == 0 {
                                self.after_output();
                            }
                        }
                    }
                }
                St::WitItems | St::WitLen => {
                    let b = data[i];
                    i += 1;
                    let Some(n) = self.var_byte(b) else {
                        continue;
                    };
                    if st == St::WitItems {
                        self.items = n;
                        self.item_i = 0;
                        if n == 0 {
                            self.after_witness_input();
                        } else {
                            self.st = St::WitLen;
                        }
                    } else {
                        self.left = n;
                        self.st = St::WitData;
                        if n == 0 {
                            self.after_item();
                        }
                    }
                }
            }
        }
        if in_hash {
            self.hasher.update(&data[run..]);
        }
        self.size += data.len() as u64;
        Ok(TxFeed::More)
    }
}

/// Where a block's parse stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockSt {
    Header,
    Count,
    Txs,
    Done,
}

/// What a whole streamed block came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSummary {
    /// Its header.
    pub header: BlockHeader,
    /// Its hash.
    pub hash: Hash256,
    /// How many transactions it holds.
    pub tx_count: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The message checksum of its bytes (when asked for).
    pub checksum: Option<[u8; 4]>,
}

/// A block checked from its bytes fed in pieces: header, transaction count, every transaction's
/// id into the merkle root, optionally the message checksum. Memory: a few hundred bytes.
#[derive(Debug)]
pub struct BlockStream {
    st: BlockSt,
    header: [u8; HEADER_LEN],
    have: usize,
    var: [u8; 9],
    var_have: usize,
    tx_count: u64,
    txs_done: u64,
    tx: TxStream,
    merkle: MerkleStream,
    checksum: Option<Sha256>,
    size: u64,
}

impl BlockStream {
    /// A block about to start; with `checksum`, its bytes are also hashed for the frame
    /// checksum.
    pub fn new(checksum: bool) -> BlockStream {
        BlockStream {
            st: BlockSt::Header,
            header: [0; HEADER_LEN],
            have: 0,
            var: [0; 9],
            var_have: 0,
            tx_count: 0,
            txs_done: 0,
            tx: TxStream::new(),
            merkle: MerkleStream::new(),
            checksum: checksum.then(Sha256::new),
            size: 0,
        }
    }

    /// The header, once its 80 bytes arrived.
    pub fn header(&self) -> Option<BlockHeader> {
        (self.have == HEADER_LEN).then(|| BlockHeader::from_array(&self.header))
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Feeds the block's next bytes; `on_tx` sees each transaction's id as it completes.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        on_tx: &mut dyn FnMut(Hash256),
    ) -> Result<(), StreamError> {
        if let Some(h) = self.checksum.as_mut() {
            h.update(data);
        }
        while !data.is_empty() {
            let base = self.size;
            match self.st {
                BlockSt::Header => {
                    let n = (HEADER_LEN - self.have).min(data.len());
                    self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                    self.have += n;
                    data = &data[n..];
                    self.size += n as u64;
                    if self.have == HEADER_LEN {
                        self.st = BlockSt::Count;
                    }
                }
                BlockSt::Count => {
                    self.var[self.var_have] = data[0];
                    self.var_have += 1;
                    data = &data[1..];
                    self.size += 1;
                    let need = match self.var[0] {
                        0xfd => 3,
                        0xfe => 5,
                        0xff => 9,
                        _ => 1,
                    };
                    if self.var_have == need {
                        let n = super::codec::compact_size_at(&self.var[..need])
                            .expect("a whole compact size")
                            .0;
                        if n == 0 {
                            return Err(StreamError::NoTransactions);
                        }
                        if super::codec::compact_size_len(n) != need {
                            // the hashes cover every other byte; this one must be canonical
                            // for the bytes to be the block's only serialization
                            return Err(StreamError::Malformed {
                                offset: base,
                                what: "non-canonical transaction count",
                            });
                        }
                        self.tx_count = n;
                        self.st = BlockSt::Txs;
                    }
                }
                BlockSt::Txs => match self.tx.feed(data, base)? {
                    TxFeed::More => {
                        self.size += data.len() as u64;
                        data = &[];
                    }
                    TxFeed::Done { used, txid, .. } => {
                        self.size += used as u64;
                        data = &data[used..];
                        self.merkle.push(txid);
                        on_tx(txid);
                        self.txs_done += 1;
                        if self.txs_done == self.tx_count {
                            self.st = BlockSt::Done;
                        }
                    }
                },
                BlockSt::Done => return Err(StreamError::TrailingBytes { offset: base }),
            }
        }
        Ok(())
    }

    /// Ends the block: checks it is whole and its merkle root.
    pub fn finish(self) -> Result<BlockSummary, StreamError> {
        if self.st != BlockSt::Done {
            return Err(StreamError::Truncated { size: self.size });
        }
        let header = BlockHeader::from_array(&self.header);
        let (root, mutated) = self.merkle.finish();
        if root != header.merkle_root {
            return Err(StreamError::BadMerkleRoot {
                header: header.merkle_root,
                computed: root,
            });
        }
        if mutated {
            return Err(StreamError::Mutated);
        }
        let checksum = self.checksum.map(|h| {
            let d = Sha256::digest(h.finalize());
            [d[0], d[1], d[2], d[3]]
        });
        Ok(BlockSummary {
            header,
            hash: header.hash(),
            tx_count: self.tx_count,
            size: self.size,
            checksum,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::block::merkle_root;

    fn ids(n: usize) -> Vec<Hash256> {
        (0..n as u64)
            .map(|i| Hash256::sha256d(&i.to_le_bytes()))
            .collect()
    }

    #[test]
    fn merkle_stream_matches_the_row_by_row_root() {
        for n in 0..70 {
            let v = ids(n);
            let mut m = MerkleStream::new();
            for h in &v {
                m.push(*h);
            }
            assert_eq!(m.finish(), (merkle_root(v), false), "{n} ids");
        }
    }

    #[test]
    fn merkle_stream_sees_the_duplicate_mutation() {
        // [a b c] and [a b c c] have the same root: the second is the mutated one
        let mut v = ids(3);
        v.push(v[2]);
        let mut m = MerkleStream::new();
        for h in &v {
            m.push(*h);
        }
        let (root, mutated) = m.finish();
        assert_eq!(root, merkle_root(ids(3)));
        assert!(mutated);
    }

    fn tx_hex(witness: bool, lock: u8) -> Vec<u8> {
        let mut h = String::from("01000000");
        if witness {
            h.push_str("0001");
        }
        h.push_str("02");
        for i in 0..2 {
            h.push_str(&format!("{i:02x}").repeat(32));
            h.push_str("00000000");
            h.push_str("fd0301");
            h.push_str(&"ab".repeat(0x103));
            h.push_str("ffffffff");
        }
        h.push_str("03");
        for i in 0..3 {
            h.push_str(&format!("{i:02x}").repeat(8));
            h.push_str(if i == 1 { "00" } else { "0251ac" });
        }
        if witness {
            h.push_str("02"); // input 0: two items
            h.push_str("03aabbcc00");
            h.push_str("00"); // input 1: none
        }
        h.push_str(&format!("{lock:02x}000000"));
        crate::wire::hash::decode_hex(&h).unwrap()
    }

    fn feed_in(tx: &[u8], piece: usize) -> (Hash256, u64) {
        let mut s = TxStream::new();
        let mut at = 0;
        loop {
            let end = (at + piece).min(tx.len());
            match s.feed(&tx[at..end], at as u64).unwrap() {
                TxFeed::More => at = end,
                TxFeed::Done { used, txid, len } => {
                    assert_eq!(at + used, tx.len());
                    return (txid, len);
                }
            }
        }
    }

    #[test]
    fn tx_stream_matches_tx_extent_in_any_chunking() {
        for witness in [false, true] {
            let tx = tx_hex(witness, 0x11);
            let (len, id) = crate::wire::tx::tx_extent(&tx).unwrap();
            assert_eq!(len, tx.len());
            for piece in [1, 2, 7, 64, tx.len()] {
                assert_eq!(
                    feed_in(&tx, piece),
                    (id, len as u64),
                    "witness {witness}, {piece}"
                );
            }
        }
        // a transaction without inputs (zero count, then a zero output count) is not BIP144
        let tx = crate::wire::hash::decode_hex("010000000000ffffffff").unwrap();
        let (len, id) = crate::wire::tx::tx_extent(&tx).unwrap();
        assert_eq!(feed_in(&tx, 1), (id, len as u64));
        let mut s = TxStream::new();
        assert!(s
            .feed(&crate::wire::hash::decode_hex("010000000002").unwrap(), 0)
            .is_err());
    }

    #[test]
    fn block_stream_checks_root_and_size() {
        let txs: Vec<crate::wire::Transaction> = [false, true, false]
            .iter()
            .enumerate()
            .map(|(i, w)| {
                <crate::wire::Transaction as crate::wire::Decode>::decode_all(bytes::Bytes::from(
                    tx_hex(*w, i as u8),
                ))
                .unwrap()
            })
            .collect();
        let root = merkle_root(txs.iter().map(|t| t.txid()).collect());
        let header = BlockHeader {
            version: 1,
            prev_hash: Hash256::ZERO,
            merkle_root: root,
            time: 1,
            bits: 0x207fffff,
            nonce: 0,
        };
        let block = crate::wire::Block::new(header, txs);
        let raw = block.raw().clone();
        for piece in [1, 5, 81, 1000, raw.len()] {
            let mut s = BlockStream::new(true);
            let mut seen = Vec::new();
            for c in raw.chunks(piece) {
                s.feed(c, &mut |id| seen.push(id)).unwrap();
            }
            let sum = s.finish().unwrap();
            assert_eq!(sum.hash, block.hash());
            assert_eq!(sum.tx_count, 3);
            assert_eq!(sum.size, raw.len() as u64);
            assert_eq!(sum.checksum, Some(crate::wire::hash::checksum(&raw)));
            assert_eq!(seen, block.txs.iter().map(|t| t.txid()).collect::<Vec<_>>());
        }
        // cut short, a byte too many, another root
        let mut s = BlockStream::new(false);
        s.feed(&raw[..raw.len() - 1], &mut |_| {}).unwrap();
        assert!(matches!(s.finish(), Err(StreamError::Truncated { .. })));
        let mut s = BlockStream::new(false);
        let mut more = raw.to_vec();
        more.push(0);
        assert!(matches!(
            s.feed(&more, &mut |_| {}),
            Err(StreamError::TrailingBytes { .. })
        ));
        let mut bad = raw.to_vec();
        bad[36] ^= 1;
        let mut s = BlockStream::new(false);
        s.feed(&bad, &mut |_| {}).unwrap();
        assert!(matches!(s.finish(), Err(StreamError::BadMerkleRoot { .. })));
    }
}
