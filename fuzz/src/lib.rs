//! Shared checks for bsn's fuzz targets (see `fuzz_targets/` and README.md).
//!
//! Every payload target calls [`payload`]: decode; if that succeeds, re-encode, decode again and
//! require the same message (and, for commands without a lenient field, the very same bytes); then
//! send the message through a whole frame and back, and read everything that the decoded message
//! lazily parses (transaction inputs and outputs, txids, targets and work). The frame target is
//! [`frame_stream`].

use bsn::wire::block::{compact_from_target, target_from_compact, work_from_target};
use bsn::wire::frame::{extended_header, header, message_to_bytes, EXT_HEADER_LEN, HEADER_LEN};
use bsn::wire::{
    commands, Block, BlockHeader, Command, FrameDecoder, FrameError, Limits, Magic, Message,
    Transaction, WireError,
};
use bytes::Bytes;

/// The magic every target uses (BSV regtest).
pub const MAGIC: Magic = Magic([0xda, 0xb5, 0xbf, 0xfa]);

/// Commands whose payload has a field decoded leniently (any non-zero byte is `true`), so a
/// re-encoding may differ in that byte while meaning the same.
fn lenient(command: Command) -> bool {
    command == commands::VERSION || command == commands::SENDCMPCT
}

/// The first byte picks one of `family`, the rest is the payload.
pub fn pick<'a>(data: &'a [u8], family: &[Command]) -> Option<(Command, &'a [u8])> {
    let (first, rest) = data.split_first()?;
    Some((family[*first as usize % family.len()], rest))
}

/// Decodes `data` as the payload of `command` and checks the round trip.
pub fn payload(command: Command, data: &[u8]) {
    let Ok(m) = Message::decode(command, Bytes::copy_from_slice(data)) else {
        return;
    };
    assert_eq!(m.command(), command);
    let enc = m.payload();
    assert_eq!(
        enc.len(),
        m.payload_len(),
        "payload_len disagrees with encode"
    );
    let again = Message::decode(command, enc.clone()).expect("a re-encoded payload decodes");
    assert_eq!(again, m, "decode(encode(m)) != m");
    // bytes after a known message are ignored (as the SV node does): the message is a prefix
    assert!(enc.len() <= data.len() || lenient(command), "decoded more than it was given");
    if !lenient(command) {
        assert_eq!(&enc[..], &data[..enc.len()], "re-encoding changed the bytes");
    }
    // Whole frame and back, through the streaming decoder.
    let frame = message_to_bytes(MAGIC, &m);
    let mut d = FrameDecoder::new(MAGIC);
    d.push(&frame);
    let back = d
        .next_message()
        .expect("own frame decodes")
        .expect("whole frame");
    assert_eq!(back, m, "frame round trip");
    assert!(matches!(d.next_frame(), Ok(None)));
    assert_eq!(d.stream_offset(), frame.len() as u64);
    exercise(&m);
}

/// Reads everything the message parses lazily, with its own consistency checks.
pub fn exercise(m: &Message) {
    match m {
        Message::Block(b) => block(b),
        Message::Tx(t) => tx(t),
        Message::Headers(h) => h.iter().for_each(block_header),
        _ => {}
    }
}

fn block(b: &Block) {
    block_header(&b.header);
    let _ = b.hash();
    let _ = b.compute_merkle_root();
    let total: usize = b.txs.iter().map(|t| t.raw().len()).sum();
    assert!(total < b.raw().len());
    b.txs.iter().for_each(tx);
}

fn tx(t: &Transaction) {
    assert_eq!(t.inputs().count(), t.input_count());
    assert_eq!(t.outputs().count(), t.output_count());
    let script_bytes: usize = t.inputs().map(|i| i.script_sig.len()).sum::<usize>()
        + t.outputs().map(|o| o.script_pubkey.len()).sum::<usize>();
    assert!(script_bytes < t.raw().len());
    let (id, wid) = (t.txid(), t.wtxid());
    if !t.has_witness() {
        assert_eq!(id, wid);
    }
}

fn block_header(h: &BlockHeader) {
    assert_eq!(BlockHeader::from_array(&h.to_array()), *h);
    let _ = h.hash();
    let _ = h.meets_own_target();
    let _ = h.work();
    if let Some(t) = target_from_compact(h.bits) {
        // A target read from bits has at most 3 significant bytes: it survives the round trip.
        let c = compact_from_target(&t);
        assert_eq!(
            target_from_compact(c),
            Some(t),
            "bits {:#x} -> {c:#x}",
            h.bits
        );
        let _ = work_from_target(&t);
    }
}

/// The frame decoder fed an arbitrary stream in chunks whose sizes come from the input.
///
/// Layout: `[flags, max_payload/16, max_block_payload/64, c0, c1, c2, stream...]`; chunk sizes
/// cycle through `c0+1, c1+1, c2+1`. Flags: bit 0 allows `extmsg`, bit 1 reads through
/// `buffer_mut` instead of `push`, bit 2 takes frames (`next_frame`) instead of messages.
pub fn frame_stream(data: &[u8]) {
    if data.len() < 6 {
        return;
    }
    let (cfg, stream) = data.split_at(6);
    let limits = Limits {
        max_payload: cfg[1] as u64 * 16,
        max_block_payload: cfg[2] as u64 * 64,
        max_tx_payload: cfg[2] as u64 * 32,
        allow_extended: cfg[0] & 1 != 0,
    };
    let chunks = [
        cfg[3] as usize + 1,
        cfg[4] as usize + 1,
        cfg[5] as usize + 1,
    ];
    let mut d = FrameDecoder::with_limits(MAGIC, limits);
    let (mut pushed, mut i, mut last_offset) = (0usize, 0usize, None::<u64>);
    let mut poisoned = false;
    while pushed < stream.len() {
        let n = chunks[i % 3].min(stream.len() - pushed);
        i += 1;
        let chunk = &stream[pushed..pushed + n];
        if cfg[0] & 2 != 0 {
            d.buffer_mut().extend_from_slice(chunk);
        } else {
            d.push(chunk);
        }
        pushed += n;
        loop {
            let (offset, fatal) = if cfg[0] & 4 != 0 {
                match d.next_frame() {
                    Ok(None) => break,
                    Ok(Some(f)) => {
                        check_frame(stream, &limits, &f);
                        (Some(f.offset), false)
                    }
                    Err(e) => (frame_error_offset(&e), e.is_fatal()),
                }
            } else {
                match d.next_message() {
                    Ok(None) => break,
                    Ok(Some(m)) => {
                        message_round_trip(&m);
                        (None, false)
                    }
                    Err(WireError::Frame(e)) => (frame_error_offset(&e), e.is_fatal()),
                    Err(e @ WireError::Payload { .. }) => {
                        assert!(!e.is_fatal());
                        (None, false)
                    }
                }
            };
            if let Some(o) = offset {
                assert!(
                    last_offset.is_none_or(|l| o > l),
                    "frame offsets go forward"
                );
                assert!(o < pushed as u64);
                last_offset = Some(o);
            }
            if fatal {
                poisoned = true;
                assert_eq!(d.next_frame(), Err(FrameError::Poisoned));
                break;
            }
            assert_eq!(
                d.stream_offset() + d.buffered() as u64,
                pushed as u64,
                "every byte pushed is either consumed or buffered"
            );
        }
        if poisoned {
            d.push(b"more");
            assert_eq!(d.next_frame(), Err(FrameError::Poisoned));
            return;
        }
    }
}

fn frame_error_offset(e: &FrameError) -> Option<u64> {
    match e {
        FrameError::BadChecksum { offset, .. } => Some(*offset),
        _ => None,
    }
}

/// A frame is exactly the bytes it came from: header rebuilt from (command, payload) + payload.
fn check_frame(stream: &[u8], limits: &Limits, f: &bsn::wire::Frame) {
    assert!(f.payload.len() as u64 <= limits.limit_for(f.command));
    let start = f.offset as usize;
    if f.extended {
        let h = extended_header(MAGIC, f.command, f.payload.len() as u64);
        let got = &stream[start..start + EXT_HEADER_LEN];
        // The checksum field of an extended header is ignored on the way in.
        assert_eq!(&got[..20], &h[..20]);
        assert_eq!(&got[24..], &h[24..]);
        let p = &stream[start + EXT_HEADER_LEN..start + EXT_HEADER_LEN + f.payload.len()];
        assert_eq!(p, &f.payload[..]);
    } else {
        let h = header(MAGIC, f.command, &f.payload);
        assert_eq!(&stream[start..start + HEADER_LEN], &h[..]);
        let p = &stream[start + HEADER_LEN..start + HEADER_LEN + f.payload.len()];
        assert_eq!(p, &f.payload[..]);
    }
    if let Ok(m) = f.message() {
        message_round_trip(&m);
    }
}

fn message_round_trip(m: &Message) {
    let frame = message_to_bytes(MAGIC, m);
    let mut d = FrameDecoder::new(MAGIC);
    d.push(&frame);
    let back = d
        .next_message()
        .expect("own frame decodes")
        .expect("whole frame");
    assert_eq!(&back, m, "frame round trip");
    exercise(m);
}
