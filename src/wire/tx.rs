//! Transactions, decoded just far enough to know their boundaries and ids. Inputs and outputs are
//! read on demand as borrowed slices of the transaction's own bytes; nothing is copied.

use super::codec::{
    compact_size_at, compact_size_len, put_compact_size, put_var_bytes, Decode, DecodeErrorKind,
    DecodeResult, Encode, Reader,
};
use super::hash::{sha256d, sha256d_parts, Hash256};
use bytes::{BufMut, Bytes, BytesMut};

/// A reference to an output of an earlier transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OutPoint {
    /// Id of the transaction that made the output.
    pub txid: Hash256,
    /// Index of the output in it.
    pub vout: u32,
}

/// A transaction input, borrowed from the transaction's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxIn<'a> {
    /// The output it spends.
    pub prev_out: OutPoint,
    /// The unlocking script.
    pub script_sig: &'a [u8],
    /// Sequence number.
    pub sequence: u32,
}

/// A transaction output, borrowed from the transaction's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxOut<'a> {
    /// Value in satoshis.
    pub value: i64,
    /// The locking script.
    pub script_pubkey: &'a [u8],
}

/// A transaction: its serialized bytes plus the offsets needed to read it.
///
/// Decoding accepts the BIP144 witness layout too (real BTC-era blocks carry it); the txid is then
/// taken over the serialization without witness, as Bitcoin defines it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    raw: Bytes,
    version: i32,
    lock_time: u32,
    n_inputs: u32,
    n_outputs: u32,
    /// Offset of the input count.
    inputs_at: u32,
    /// Offset of the output count.
    outputs_at: u32,
    /// Offset just past the last output (the witness, or the lock time).
    outputs_end: u32,
    witness: bool,
}

const MIN_INPUT_LEN: usize = 41;
const MIN_OUTPUT_LEN: usize = 9;

impl Transaction {
    /// Builds a transaction (without witness) from parts.
    pub fn build(
        version: i32,
        inputs: &[(OutPoint, &[u8], u32)],
        outputs: &[(i64, &[u8])],
        lock_time: u32,
    ) -> Transaction {
        let mut b = BytesMut::new();
        b.put_i32_le(version);
        put_compact_size(&mut b, inputs.len() as u64);
        for (op, script, seq) in inputs {
            b.put_slice(&op.txid.0);
            b.put_u32_le(op.vout);
            put_var_bytes(&mut b, script);
            b.put_u32_le(*seq);
        }
        put_compact_size(&mut b, outputs.len() as u64);
        for (value, script) in outputs {
            b.put_i64_le(*value);
            put_var_bytes(&mut b, script);
        }
        b.put_u32_le(lock_time);
        Transaction::decode_all(b.freeze()).expect("a transaction serialized from parts decodes")
    }

    /// The serialized transaction as it came (with witness if it had one).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Version.
    pub fn version(&self) -> i32 {
        self.version
    }

    /// Lock time.
    pub fn lock_time(&self) -> u32 {
        self.lock_time
    }

    /// Whether it was serialized with BIP144 witness data.
    pub fn has_witness(&self) -> bool {
        self.witness
    }

    /// Number of inputs.
    pub fn input_count(&self) -> usize {
        self.n_inputs as usize
    }

    /// Number of outputs.
    pub fn output_count(&self) -> usize {
        self.n_outputs as usize
    }

    /// The transaction id (double SHA-256 of the serialization without witness).
    pub fn txid(&self) -> Hash256 {
        if !self.witness {
            return Hash256(sha256d(&self.raw));
        }
        let r = &self.raw[..];
        let len = r.len();
        Hash256(sha256d_parts(&[
            &r[..4],
            &r[self.inputs_at as usize..self.outputs_end as usize],
            &r[len - 4..],
        ]))
    }

    /// The witness id (equals the txid when there is no witness).
    pub fn wtxid(&self) -> Hash256 {
        Hash256(sha256d(&self.raw))
    }

    /// The inputs, in order.
    pub fn inputs(&self) -> impl Iterator<Item = TxIn<'_>> + '_ {
        let mut pos = self.inputs_at as usize + compact_size_len(self.n_inputs as u64);
        let raw = &self.raw[..];
        (0..self.n_inputs).map(move |_| {
            let txid = Hash256(raw[pos..pos + 32].try_into().expect("validated at decode"));
            let vout = u32::from_le_bytes(
                raw[pos + 32..pos + 36]
                    .try_into()
                    .expect("validated at decode"),
            );
            let (len, n) = compact_size_at(&raw[pos + 36..]).expect("validated at decode");
            let (len, s) = (len as usize, pos + 36 + n);
            let script_sig = &raw[s..s + len];
            let sequence = u32::from_le_bytes(
                raw[s + len..s + len + 4]
                    .try_into()
                    .expect("validated at decode"),
            );
            pos = s + len + 4;
            TxIn {
                prev_out: OutPoint { txid, vout },
                script_sig,
                sequence,
            }
        })
    }

    /// The outputs, in order.
    pub fn outputs(&self) -> impl Iterator<Item = TxOut<'_>> + '_ {
        let mut pos = self.outputs_at as usize + compact_size_len(self.n_outputs as u64);
        let raw = &self.raw[..];
        (0..self.n_outputs).map(move |_| {
            let value =
                i64::from_le_bytes(raw[pos..pos + 8].try_into().expect("validated at decode"));
            let (len, n) = compact_size_at(&raw[pos + 8..]).expect("validated at decode");
            let (len, s) = (len as usize, pos + 8 + n);
            pos = s + len;
            TxOut {
                value,
                script_pubkey: &raw[s..s + len],
            }
        })
    }
}

impl Encode for Transaction {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_slice(&self.raw);
    }
    fn encoded_len(&self) -> usize {
        self.raw.len()
    }
}

/// The length and id of the transaction at the start of `b`, read in place (for a block in the
/// store, whose transactions are never copied out); `None` when `b` does not start with a whole
/// transaction. The same layout rules as [`Transaction`]'s decoding (BIP144 included).
pub fn tx_extent(b: &[u8]) -> Option<(usize, Hash256)> {
    fn var(b: &[u8], at: &mut usize) -> Option<u64> {
        let (n, len) = compact_size_at(b.get(*at..)?)?;
        *at += len;
        Some(n)
    }
    fn skip(b: &[u8], at: &mut usize, n: u64) -> Option<()> {
        let end = at.checked_add(usize::try_from(n).ok()?)?;
        (end <= b.len()).then(|| *at = end)
    }
    let mut at = 4;
    b.get(..4)?;
    let witness = b.len() >= 6 && b[4] == 0 && b[5] != 0;
    if witness {
        if b[5] != 1 {
            return None;
        }
        at += 2;
    }
    let inputs_at = at;
    let n_in = var(b, &mut at)?;
    for _ in 0..n_in {
        skip(b, &mut at, 36)?;
        let n = var(b, &mut at)?;
        skip(b, &mut at, n + 4)?;
    }
    let n_out = var(b, &mut at)?;
    for _ in 0..n_out {
        skip(b, &mut at, 8)?;
        let n = var(b, &mut at)?;
        skip(b, &mut at, n)?;
    }
    let outputs_end = at;
    if witness {
        for _ in 0..n_in {
            let items = var(b, &mut at)?;
            for _ in 0..items {
                let n = var(b, &mut at)?;
                skip(b, &mut at, n)?;
            }
        }
    }
    skip(b, &mut at, 4)?;
    let id = if witness {
        Hash256(sha256d_parts(&[
            &b[..4],
            &b[inputs_at..outputs_end],
            &b[at - 4..at],
        ]))
    } else {
        Hash256(sha256d(&b[..at]))
    };
    Some((at, id))
}

fn skip_var(r: &mut Reader, what: &'static str) -> DecodeResult<()> {
    let n = r.count(what, u64::MAX, 1)?;
    r.skip(n)
}

impl Decode for Transaction {
    fn decode(r: &mut Reader) -> DecodeResult<Self> {
        let start = r.offset();
        let rel = |r: &Reader| (r.offset() - start) as u32;
        let version = r.i32_le()?;
        let mut witness = false;
        // BIP144: a zero input count followed by flag 1 marks the witness layout.
        if r.rest().len() >= 2 && r.rest()[0] == 0 && r.rest()[1] != 0 {
            if r.rest()[1] != 1 {
                return Err(r.err(DecodeErrorKind::Invalid("witness flag")));
            }
            r.skip(2)?;
            witness = true;
        }
        let inputs_at = rel(r);
        let n_inputs = r.count("inputs", u32::MAX as u64, MIN_INPUT_LEN)?;
        for _ in 0..n_inputs {
            r.skip(36)?;
            skip_var(r, "script bytes")?;
            r.skip(4)?;
        }
        let outputs_at = rel(r);
        let n_outputs = r.count("outputs", u32::MAX as u64, MIN_OUTPUT_LEN)?;
        for _ in 0..n_outputs {
            r.skip(8)?;
            skip_var(r, "script bytes")?;
        }
        let outputs_end = rel(r);
        if witness {
            if n_inputs == 0 {
                return Err(r.err(DecodeErrorKind::Invalid(
                    "witness transaction without inputs",
                )));
            }
            let mut any = false;
            for _ in 0..n_inputs {
                let items = r.count("witness items", u32::MAX as u64, 1)?;
                any |= items > 0;
                for _ in 0..items {
                    skip_var(r, "witness bytes")?;
                }
            }
            if !any {
                return Err(r.err(DecodeErrorKind::Invalid(
                    "witness layout with empty witness",
                )));
            }
        }
        let lock_time = r.u32_le()?;
        Ok(Transaction {
            raw: r.slice_between(start, r.offset()),
            version,
            lock_time,
            n_inputs: n_inputs as u32,
            n_outputs: n_outputs as u32,
            inputs_at,
            outputs_at,
            outputs_end,
            witness,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_read_back() {
        let op = OutPoint {
            txid: Hash256([7; 32]),
            vout: 3,
        };
        let tx = Transaction::build(
            2,
            &[(op, b"sig", 0xffff_fffe)],
            &[(5000, b"pk1"), (1, b"")],
            99,
        );
        assert_eq!(tx.input_count(), 1);
        let ins: Vec<_> = tx.inputs().collect();
        assert_eq!(ins[0].prev_out, op);
        assert_eq!(ins[0].script_sig, b"sig");
        assert_eq!(ins[0].sequence, 0xffff_fffe);
        let outs: Vec<_> = tx.outputs().collect();
        assert_eq!(outs.len(), 2);
        assert_eq!(outs[0].value, 5000);
        assert_eq!(outs[0].script_pubkey, b"pk1");
        assert_eq!(outs[1].script_pubkey, b"");
        assert_eq!(tx.lock_time(), 99);
        assert_eq!(tx.txid(), tx.wtxid());
    }

    #[test]
    fn truncated_reports_offset() {
        let op = OutPoint {
            txid: Hash256([7; 32]),
            vout: 3,
        };
        let tx = Transaction::build(1, &[(op, b"sig", 0)], &[(1, b"x")], 0);
        let short = tx.raw().slice(..tx.raw().len() - 2);
        let e = Transaction::decode_all(short).unwrap_err();
        assert!(matches!(e.kind, DecodeErrorKind::UnexpectedEnd { .. }));
        assert_eq!(e.offset, tx.raw().len() - 4);
    }
}
