//! Readable summaries of the files Bitcoin nodes and tests keep: a raw block, a raw transaction, a
//! header file (80-byte headers back to back), a block file (`blk*.dat` records of disk magic,
//! length, block) or a capture of P2P frames. Used by `bsn decode`.

use crate::network::Network;
use crate::wire::block::{Block, BlockHeader, HEADER_LEN};
use crate::wire::codec::Decode;
use crate::wire::frame::{FrameDecoder, Limits, Magic};
use crate::wire::hash::{decode_hex, Hash256};
use crate::wire::message::Message;
use crate::wire::tx::Transaction;
use crate::wire::types::Command;
use bytes::Bytes;
use std::fmt::{self, Write};

/// What a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One raw block (a `block` payload).
    Block,
    /// One raw transaction.
    Tx,
    /// 80-byte headers back to back.
    Headers,
    /// Block file records: disk magic, u32 length, block.
    BlockFile,
    /// P2P frames: 24-byte headers and payloads.
    Frames,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        Ok(match s {
            "block" => Format::Block,
            "tx" => Format::Tx,
            "headers" => Format::Headers,
            "blockfile" | "blk" => Format::BlockFile,
            "frames" | "stream" => Format::Frames,
            _ => {
                return Err(format!(
                    "unknown format {s:?} (block, tx, headers, blockfile, frames)"
                ))
            }
        })
    }
}

/// Why a file could not be summarised: what was expected, where, and what went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeFileError {
    /// What the decoder was reading.
    pub what: String,
    /// Byte offset in the file (after hex decoding, for hex files).
    pub offset: u64,
    /// The reason.
    pub reason: String,
}

impl fmt::Display for DecodeFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed {} at byte {}: {}",
            self.what, self.offset, self.reason
        )
    }
}

impl std::error::Error for DecodeFileError {}

fn err(what: &str, offset: u64, reason: impl ToString) -> DecodeFileError {
    DecodeFileError {
        what: what.to_string(),
        offset,
        reason: reason.to_string(),
    }
}

/// Turns a hex text file (one or more lines of hex, an optional height line first) into bytes;
/// returns the input unchanged when it is not hex text.
pub fn unhex_if_text(data: Bytes) -> Bytes {
    let Ok(text) = std::str::from_utf8(&data) else {
        return data;
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return data;
    }
    // A leading decimal line (a start height, as in some header lists) is skipped.
    let body = if lines.len() > 1 && lines[0].bytes().all(|c| c.is_ascii_digit()) {
        &lines[1..]
    } else {
        &lines[..]
    };
    match decode_hex(&body.concat()) {
        Some(b) if !b.is_empty() => Bytes::from(b),
        _ => data,
    }
}

fn known_magic(m: &[u8]) -> Option<(&'static str, bool)> {
    // (network, is_disk_magic)
    for n in Network::ALL {
        let p = n.params();
        if m == p.magic.0 {
            return Some((n.name(), false));
        }
        if m == p.disk_magic.0 {
            return Some((n.name(), true));
        }
    }
    None
}

/// Guesses the format of `data`.
pub fn detect(data: &[u8]) -> Format {
    if data.len() >= 24 && known_magic(&data[..4]).is_some() {
        let cmd: [u8; 12] = data[4..16].try_into().expect("12 bytes");
        if Command::from_wire(cmd).is_some() {
            return Format::Frames;
        }
        return Format::BlockFile;
    }
    let b = Bytes::copy_from_slice(data);
    if Block::decode_all(b.clone()).is_ok() {
        return Format::Block;
    }
    if Transaction::decode_all(b).is_ok() {
        return Format::Tx;
    }
    if looks_like_headers(data) {
        return Format::Headers;
    }
    Format::Block
}

/// A file of headers by content, not by length alone: whole 80-byte headers, and the second
/// (if any) follows the first. A block cut at a multiple of 80 bytes fails the second test (its
/// transaction count and first transaction are not a header whose parent is the first).
fn looks_like_headers(data: &[u8]) -> bool {
    if data.is_empty() || !data.len().is_multiple_of(HEADER_LEN) {
        return false;
    }
    if data.len() == HEADER_LEN {
        return true;
    }
    let first = crate::wire::Hash256::sha256d(&data[..HEADER_LEN]);
    data[HEADER_LEN + 4..HEADER_LEN + 36] == first.0
}

/// Why `data` was read as `format` when the format was guessed.
fn assumed(format: Format, data: &[u8]) -> String {
    let n = data.len();
    match format {
        Format::Block if n.is_multiple_of(HEADER_LEN) => format!(
            "read as a block (guessed: {n} bytes are a multiple of 80, but the second 80 do not \
             follow the first as headers would)"
        ),
        Format::Block => "read as a block (guessed: not a transaction, a frame capture or a \
                          block file either)"
            .to_string(),
        Format::Tx => "read as a transaction (guessed)".to_string(),
        Format::Headers => "read as 80-byte headers (guessed: they link)".to_string(),
        Format::BlockFile => "read as a block file (guessed from its disk magic)".to_string(),
        Format::Frames => "read as P2P frames (guessed from the magic and command)".to_string(),
    }
}

fn header_lines(out: &mut String, h: &BlockHeader) {
    let _ = writeln!(out, "  hash        {}", h.hash());
    let _ = writeln!(out, "  prev        {}", h.prev_hash);
    let _ = writeln!(out, "  merkle root {}", h.merkle_root);
    let _ = writeln!(out, "  version     {:#x}", h.version);
    let _ = writeln!(out, "  time        {}", h.time);
    let _ = writeln!(
        out,
        "  bits        {:08x} (proof of work {})",
        h.bits,
        if h.meets_own_target() {
            "ok"
        } else {
            "NOT met"
        }
    );
    let _ = writeln!(out, "  nonce       {}", h.nonce);
}

/// Summary of one block; with `all_txids`, every txid, else the first five.
pub fn summarize_block(b: &Block, all_txids: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "block, {} bytes", b.raw().len());
    header_lines(&mut out, &b.header);
    let root = b.compute_merkle_root();
    let _ = writeln!(
        out,
        "  merkle root {} transactions",
        if root == b.header.merkle_root {
            "matches the"
        } else {
            "DOES NOT match the"
        }
    );
    let witness = b.txs.iter().filter(|t| t.has_witness()).count();
    let _ = writeln!(
        out,
        "  txs         {} ({} with witness)",
        b.txs.len(),
        witness
    );
    let show = if all_txids {
        b.txs.len()
    } else {
        b.txs.len().min(5)
    };
    for (i, t) in b.txs.iter().take(show).enumerate() {
        let _ = writeln!(
            out,
            "    tx {i:>5}  {}  {} in, {} out, {} bytes",
            t.txid(),
            t.input_count(),
            t.output_count(),
            t.raw().len()
        );
    }
    if show < b.txs.len() {
        let _ = writeln!(
            out,
            "    ... {} more (--all to list them)",
            b.txs.len() - show
        );
    }
    out
}

/// Summary of one transaction.
pub fn summarize_tx(t: &Transaction) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "transaction, {} bytes", t.raw().len());
    let _ = writeln!(out, "  txid      {}", t.txid());
    if t.has_witness() {
        let _ = writeln!(out, "  wtxid     {}", t.wtxid());
    }
    let _ = writeln!(out, "  version   {}", t.version());
    let _ = writeln!(out, "  lock time {}", t.lock_time());
    let _ = writeln!(out, "  inputs    {}", t.input_count());
    for (i, input) in t.inputs().take(10).enumerate() {
        let _ = writeln!(
            out,
            "    in {i:>4}  {}:{}  script {} bytes",
            input.prev_out.txid,
            input.prev_out.vout,
            input.script_sig.len()
        );
    }
    let _ = writeln!(out, "  outputs   {}", t.output_count());
    let total: i128 = t.outputs().map(|o| o.value as i128).sum();
    for (i, o) in t.outputs().take(10).enumerate() {
        let _ = writeln!(
            out,
            "    out {i:>3}  {} sat  script {} bytes",
            o.value,
            o.script_pubkey.len()
        );
    }
    let _ = writeln!(out, "  total out {total} sat");
    out
}

/// Summary of a file of 80-byte headers.
pub fn summarize_headers(data: &[u8]) -> Result<String, DecodeFileError> {
    if !data.len().is_multiple_of(HEADER_LEN) {
        let whole = data.len() / HEADER_LEN * HEADER_LEN;
        return Err(err(
            "header file",
            whole as u64,
            format!(
                "{} bytes left after the last whole header",
                data.len() - whole
            ),
        ));
    }
    let mut out = String::new();
    let mut prev: Option<Hash256> = None;
    let (mut linked, mut pow_ok) = (0usize, 0usize);
    let n = data.len() / HEADER_LEN;
    let mut first = None;
    let mut last = None;
    for (i, c) in data.chunks_exact(HEADER_LEN).enumerate() {
        let h = BlockHeader::from_array(c.try_into().expect("chunks are 80 bytes"));
        if prev == Some(h.prev_hash) {
            linked += 1;
        }
        pow_ok += h.meets_own_target() as usize;
        let hash = h.hash();
        if i == 0 {
            first = Some(hash);
        }
        last = Some(hash);
        prev = Some(hash);
    }
    let _ = writeln!(out, "header file, {n} headers");
    if let (Some(f), Some(l)) = (first, last) {
        let _ = writeln!(out, "  first {f}");
        let _ = writeln!(out, "  last  {l}");
    }
    let _ = writeln!(
        out,
        "  {linked} of {} link to the header before them",
        n.saturating_sub(1)
    );
    let _ = writeln!(out, "  {pow_ok} of {n} meet their own proof-of-work target");
    Ok(out)
}

/// Summary of a block file (`blk*.dat` layout).
pub fn summarize_block_file(data: &Bytes) -> Result<String, DecodeFileError> {
    let mut out = String::new();
    let mut pos = 0usize;
    let mut prev: Option<Hash256> = None;
    let mut count = 0usize;
    let mut linked = 0usize;
    while pos < data.len() {
        if data.len() - pos < 8 {
            return Err(err(
                "block file record",
                pos as u64,
                format!("{} bytes, a record header needs 8", data.len() - pos),
            ));
        }
        let magic = &data[pos..pos + 4];
        let Some((net, _)) = known_magic(magic) else {
            return Err(err(
                "block file record",
                pos as u64,
                format!(
                    "unknown magic {}",
                    Magic(magic.try_into().expect("4 bytes"))
                ),
            ));
        };
        let len = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
        let start = pos + 8;
        if data.len() - start < len {
            return Err(err(
                "block file record",
                pos as u64,
                format!("record announces {len} bytes, {} left", data.len() - start),
            ));
        }
        let block = Block::decode_all(data.slice(start..start + len))
            .map_err(|e| err("block", (start + e.offset) as u64, e.kind))?;
        let hash = block.hash();
        let links = prev == Some(block.header.prev_hash);
        linked += links as usize;
        let _ = writeln!(
            out,
            "#{count:<5} @{pos:<9} {net:<8} {hash}  {:>5} txs  {:>8} bytes  {}",
            block.txs.len(),
            len,
            if count == 0 {
                "first"
            } else if links {
                "links"
            } else {
                "does not link"
            }
        );
        prev = Some(hash);
        count += 1;
        pos = start + len;
    }
    let _ = writeln!(
        out,
        "block file: {count} blocks, {linked} of {} link to the block before them",
        count.saturating_sub(1)
    );
    Ok(out)
}

/// Summary of a capture of P2P frames for the network whose magic starts the data.
pub fn summarize_frames(data: &Bytes) -> Result<String, DecodeFileError> {
    let magic = Magic(
        data.get(..4)
            .and_then(|m| m.try_into().ok())
            .ok_or_else(|| err("frame", 0, "shorter than a magic"))?,
    );
    let limits = Limits {
        max_payload: u64::MAX,
        max_block_payload: u64::MAX,
        max_tx_payload: u64::MAX,
        allow_extended: true,
    };
    let mut dec = FrameDecoder::with_limits(magic, limits);
    dec.push(data);
    let mut out = String::new();
    let mut count = 0usize;
    loop {
        let frame = match dec.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(err("frame", dec.stream_offset(), e)),
        };
        let msg = frame.message().map_err(|e| match &e {
            crate::wire::WireError::Payload {
                frame_offset,
                error,
            } => err(
                &format!("{} payload", error.command),
                frame_offset + 24 + error.error.offset as u64,
                error.error.kind.clone(),
            ),
            other => err("frame", frame.offset, other),
        })?;
        let _ = writeln!(
            out,
            "#{count:<5} @{:<9} {:<12} {:>9} bytes{}  {}",
            frame.offset,
            frame.command.as_str(),
            frame.payload.len(),
            if frame.extended { " (extmsg)" } else { "" },
            describe(&msg)
        );
        count += 1;
    }
    if dec.buffered() > 0 {
        return Err(err(
            "frame",
            dec.stream_offset(),
            format!("{} bytes of an incomplete frame at the end", dec.buffered()),
        ));
    }
    let _ = writeln!(out, "{count} frames, magic {magic}");
    Ok(out)
}

fn assoc_text(b: &[u8]) -> String {
    match crate::wire::AssociationId::from_bytes(b) {
        Ok(Some(id)) => id.to_string(),
        Ok(None) => "Not-Set".into(),
        Err(e) => e.into(),
    }
}

/// A one-line description of a message.
pub fn describe(m: &Message) -> String {
    match m {
        Message::Version(v) => format!(
            "version {} services {:#x} agent {:?} height {} nonce {:016x}",
            v.version, v.services, v.user_agent, v.start_height, v.nonce
        ),
        Message::Ping(n) | Message::Pong(n) => format!("nonce {n:016x}"),
        Message::Addr(a) => format!("{} addresses", a.len()),
        Message::Inv(i) | Message::GetData(i) | Message::NotFound(i) => {
            format!("{} entries", i.len())
        }
        Message::GetHeaders(l) | Message::GetBlocks(l) => {
            format!("{} locator hashes, stop {}", l.hashes.len(), l.stop)
        }
        Message::Headers(h) => format!("{} headers", h.len()),
        Message::Block(b) => format!("block {} with {} txs", b.hash(), b.txs.len()),
        Message::Tx(t) => format!("tx {}", t.txid()),
        Message::Reject(r) => format!("reject {} code {:#x}: {}", r.message, r.code, r.reason),
        Message::FeeFilter(f) => format!("{f} sat/kB"),
        Message::SendCmpct { announce, version } => {
            format!("announce {announce} version {version}")
        }
        Message::Protoconf(p) => format!(
            "max payload {} policies {:?}",
            p.max_recv_payload_length,
            p.stream_policies.as_deref().unwrap_or("")
        ),
        Message::CreateStream(c) => format!(
            "association {} stream {} policy {:?}",
            assoc_text(&c.association_id),
            crate::wire::stream_type::name(c.stream_type),
            c.policy
        ),
        Message::StreamAck(a) => format!(
            "association {} stream {}",
            assoc_text(&a.association_id),
            crate::wire::stream_type::name(a.stream_type)
        ),
        Message::DsDetected(d) => format!("version {} with {} blocks", d.version, d.blocks.len()),
        Message::HdrsEn(h) => format!("{} enriched headers", h.len()),
        Message::DataRefTx(d) => format!("tx {}", d.tx.txid()),
        Message::Unknown { payload, .. } => format!("unknown command, {} bytes", payload.len()),
        _ => String::new(),
    }
}

/// Summarises `data` in the given format (or the detected one).
pub fn summarize(
    data: Bytes,
    format: Option<Format>,
    all_txids: bool,
) -> Result<String, DecodeFileError> {
    let data = unhex_if_text(data);
    let guessed = format.is_none();
    let format = format.unwrap_or_else(|| detect(&data));
    let result = summarize_as(data.clone(), format, all_txids);
    match result {
        Err(e) if guessed => Err(DecodeFileError {
            reason: format!("{}; {}", e.reason, assumed(format, &data)),
            ..e
        }),
        other => other,
    }
}

fn summarize_as(data: Bytes, format: Format, all_txids: bool) -> Result<String, DecodeFileError> {
    match format {
        Format::Block => Block::decode_all(data)
            .map(|b| summarize_block(&b, all_txids))
            .map_err(|e| err("block", e.offset as u64, e.kind)),
        Format::Tx => Transaction::decode_all(data)
            .map(|t| summarize_tx(&t))
            .map_err(|e| err("transaction", e.offset as u64, e.kind)),
        Format::Headers => summarize_headers(&data),
        Format::BlockFile => summarize_block_file(&data),
        Format::Frames => summarize_frames(&data),
    }
}
