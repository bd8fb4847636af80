//! BSV's own messages beyond `protoconf`: `authch` (an authentication challenge every SV node
//! sends after `verack`), and the enriched headers of `gethdrsen`/`sendhdrsen`/`hdrsen`: a header
//! with its transaction count, its coinbase and the coinbase's merkle proof in the standard binary
//! format (TSC 2020.010-31).

use super::codec::{compact_size_len, put_compact_size, Decode, DecodeErrorKind, Reader};
use super::codec::{DecodeResult, Encode};
use super::{BlockHeader, Hash256, Transaction};
use bytes::{BufMut, Bytes, BytesMut};

/// Most bytes of an `authch` challenge.
pub const MAX_AUTH_CHALLENGE: u32 = 1024;

/// `authch`: an SV node's challenge for optional authenticated connections (miners answer it
/// with `authresp`; anyone else may leave it unanswered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthChallenge {
    /// Message version (1).
    pub version: u32,
    /// The challenge (32 bytes from an SV node).
    pub challenge: Bytes,
}

impl AuthChallenge {
    pub(crate) fn decode(r: &mut Reader) -> DecodeResult<AuthChallenge> {
        let version = r.u32_le()?;
        let at = r.offset();
        let len = r.u32_le()?;
        if len > MAX_AUTH_CHALLENGE {
            return Err(r.err_at(
                at,
                DecodeErrorKind::TooMany {
                    what: "authch challenge bytes",
                    count: len as u64,
                    max: MAX_AUTH_CHALLENGE as u64,
                },
            ));
        }
        Ok(AuthChallenge {
            version,
            challenge: r.bytes(len as usize)?,
        })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.version);
        buf.put_u32_le(self.challenge.len() as u32);
        buf.put_slice(&self.challenge);
    }

    pub(crate) fn len(&self) -> usize {
        8 + self.challenge.len()
    }
}

/// One node of a merkle proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProofNode {
    /// The sibling's hash.
    Hash(Hash256),
    /// The sibling is the node itself (the last of an odd level).
    Duplicate,
    /// The sibling is the transaction at this index (the verifier has it).
    Index(u64),
}

/// A merkle proof in the standard binary format (TSC 2020.010-31), as `hdrsen` carries it:
/// flags 0, so a transaction id and a block hash as target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleProof {
    /// Format flags: bit 0 a whole transaction instead of an id, bits 1-2 the target type
    /// (0 block hash, 1 header, 2 merkle root), bit 3 composite. bsn writes 0.
    pub flags: u8,
    /// The transaction's index in the block.
    pub index: u64,
    /// The transaction id (flags bit 0 clear) or the whole transaction (set).
    pub tx_or_id: Bytes,
    /// The block hash (target type 0), header (1) or merkle root (2).
    pub target: Bytes,
    /// The siblings from the transaction up to the root.
    pub nodes: Vec<ProofNode>,
}

/// Most nodes of a merkle proof (a tree of 2^64 transactions needs 64).
const MAX_PROOF_NODES: u64 = 64;

impl MerkleProof {
    /// The proof that the transaction at `index` of `txids` is in the block `block_hash`.
    pub fn for_index(txids: &[Hash256], index: usize, block_hash: Hash256) -> MerkleProof {
        let mut nodes = Vec::new();
        let mut level: Vec<Hash256> = txids.to_vec();
        let mut i = index;
        while level.len() > 1 {
            let sibling = i ^ 1;
            nodes.push(if sibling < level.len() {
                ProofNode::Hash(level[sibling])
            } else {
                ProofNode::Duplicate
            });
            level = level
                .chunks(2)
                .map(|p| {
                    let mut b = [0u8; 64];
                    b[..32].copy_from_slice(&p[0].0);
                    b[32..].copy_from_slice(&p.get(1).unwrap_or(&p[0]).0);
                    Hash256::sha256d(&b)
                })
                .collect();
            i /= 2;
        }
        MerkleProof {
            flags: 0,
            index: index as u64,
            tx_or_id: Bytes::copy_from_slice(&txids[index].0),
            target: Bytes::copy_from_slice(&block_hash.0),
            nodes,
        }
    }

    /// The merkle root this proof leads to from `txid` (flags 0 proofs).
    pub fn root(&self, txid: Hash256) -> Hash256 {
        let mut h = txid;
        let mut i = self.index;
        for n in &self.nodes {
            let sibling = match n {
                ProofNode::Hash(s) => *s,
                ProofNode::Duplicate | ProofNode::Index(_) => h,
            };
            let mut b = [0u8; 64];
            let (l, r) = if i & 1 == 0 {
                (h, sibling)
            } else {
                (sibling, h)
            };
            b[..32].copy_from_slice(&l.0);
            b[32..].copy_from_slice(&r.0);
            h = Hash256::sha256d(&b);
            i /= 2;
        }
        h
    }

    fn decode(r: &mut Reader) -> DecodeResult<MerkleProof> {
        let flags = r.u8()?;
        let index = r.compact_size()?;
        let tx_or_id = if flags & 1 != 0 {
            let n = r.compact_size()?;
            r.bytes(n.min(usize::MAX as u64) as usize)?
        } else {
            r.bytes(32)?
        };
        let target = match (flags >> 1) & 3 {
            1 => r.bytes(80)?,
            _ => r.bytes(32)?,
        };
        let n = r.count("merkle proof nodes", MAX_PROOF_NODES, 1)?;
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            let at = r.offset();
            nodes.push(match r.u8()? {
                0 => ProofNode::Hash(Hash256(r.array()?)),
                1 => ProofNode::Duplicate,
                2 => ProofNode::Index(r.compact_size()?),
                _ => return Err(r.err_at(at, DecodeErrorKind::Invalid("merkle proof node type"))),
            });
        }
        Ok(MerkleProof {
            flags,
            index,
            tx_or_id,
            target,
            nodes,
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.flags);
        put_compact_size(buf, self.index);
        if self.flags & 1 != 0 {
            put_compact_size(buf, self.tx_or_id.len() as u64);
        }
        buf.put_slice(&self.tx_or_id);
        buf.put_slice(&self.target);
        put_compact_size(buf, self.nodes.len() as u64);
        for n in &self.nodes {
            match n {
                ProofNode::Hash(h) => {
                    buf.put_u8(0);
                    buf.put_slice(&h.0);
                }
                ProofNode::Duplicate => buf.put_u8(1),
                ProofNode::Index(i) => {
                    buf.put_u8(2);
                    put_compact_size(buf, *i);
                }
            }
        }
    }

    fn len(&self) -> usize {
        1 + compact_size_len(self.index)
            + if self.flags & 1 != 0 {
                compact_size_len(self.tx_or_id.len() as u64)
            } else {
                0
            }
            + self.tx_or_id.len()
            + self.target.len()
            + compact_size_len(self.nodes.len() as u64)
            + self
                .nodes
                .iter()
                .map(|n| match n {
                    ProofNode::Hash(_) => 33,
                    ProofNode::Duplicate => 1,
                    ProofNode::Index(i) => 1 + compact_size_len(*i),
                })
                .sum::<usize>()
    }
}

/// A transaction with the proof of its inclusion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvenTx {
    /// The transaction.
    pub tx: Transaction,
    /// Its merkle proof.
    pub proof: MerkleProof,
}

/// One entry of `hdrsen`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrichedHeader {
    /// The header.
    pub header: BlockHeader,
    /// The block's transaction count (0 when the sender does not know it).
    pub tx_count: u64,
    /// No header follows this one on the sender's best chain (it is the sender's tip).
    pub no_more: bool,
    /// The coinbase and its proof, when the sender has the block.
    pub coinbase: Option<ProvenTx>,
    /// The miner-info transaction and its proof, when the block has one.
    pub miner_info: Option<ProvenTx>,
}

fn decode_proven(r: &mut Reader) -> DecodeResult<Option<ProvenTx>> {
    let at = r.offset();
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(ProvenTx {
            tx: Transaction::decode(r)?,
            proof: MerkleProof::decode(r)?,
        })),
        _ => Err(r.err_at(at, DecodeErrorKind::Invalid("hdrsen flag (not 0 or 1)"))),
    }
}

fn encode_proven(p: &Option<ProvenTx>, buf: &mut BytesMut) {
    match p {
        None => buf.put_u8(0),
        Some(p) => {
            buf.put_u8(1);
            p.tx.encode(buf);
            p.proof.encode(buf);
        }
    }
}

fn proven_len(p: &Option<ProvenTx>) -> usize {
    1 + p.as_ref().map_or(0, |p| p.tx.encoded_len() + p.proof.len())
}

impl EnrichedHeader {
    pub(crate) fn decode(r: &mut Reader) -> DecodeResult<EnrichedHeader> {
        let header = BlockHeader::decode(r)?;
        let tx_count = r.compact_size()?;
        let at = r.offset();
        let no_more = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(r.err_at(at, DecodeErrorKind::Invalid("hdrsen flag (not 0 or 1)"))),
        };
        Ok(EnrichedHeader {
            header,
            tx_count,
            no_more,
            coinbase: decode_proven(r)?,
            miner_info: decode_proven(r)?,
        })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        self.header.encode(buf);
        put_compact_size(buf, self.tx_count);
        buf.put_u8(self.no_more as u8);
        encode_proven(&self.coinbase, buf);
        encode_proven(&self.miner_info, buf);
    }

    /// Encoded length.
    pub fn len(&self) -> usize {
        80 + compact_size_len(self.tx_count)
            + 1
            + proven_len(&self.coinbase)
            + proven_len(&self.miner_info)
    }

    /// Never empty (a header is 80 bytes); for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_lead_to_the_merkle_root() {
        for n in 1..=9usize {
            let txids: Vec<Hash256> = (0..n as u32)
                .map(|i| Hash256::sha256d(&i.to_le_bytes()))
                .collect();
            let root = crate::wire::block::merkle_root(txids.clone());
            for i in 0..n {
                let p = MerkleProof::for_index(&txids, i, Hash256::ZERO);
                assert_eq!(p.root(txids[i]), root, "{n} txs, index {i}");
                let mut b = BytesMut::new();
                p.encode(&mut b);
                assert_eq!(b.len(), p.len());
                let mut r = Reader::new(b.freeze());
                assert_eq!(MerkleProof::decode(&mut r).unwrap(), p);
            }
        }
    }
}
