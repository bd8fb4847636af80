//! Property tests of the wire codec.
//!
//! Part 1, round trips: for every `Message` variant, values generated within the protocol limits
//! encode to a payload that decodes back to the same value, `payload_len` is exact, and whole
//! frames (standard and BSV `extmsg`) fed to `FrameDecoder` one byte at a time or in random chunks
//! come back as the same message, exactly when their last byte arrives.
//!
//! Part 2, hostile input: random bytes, random headers, valid streams with flipped / inserted /
//! deleted bytes or cut short, and random payloads for every command. The decoder never panics,
//! always asks for more input after a bounded number of calls, refuses oversize announcements
//! before buffering the payload, and fails with the typed errors at the right offsets.
//!
//! No sockets; every loop is bounded.

use bsn::wire::codec::{DecodeError, DecodeErrorKind};
use bsn::wire::frame::{
    encode_extended_message, extended_header, header, message_to_bytes, DEFAULT_MAX_BLOCK_PAYLOAD,
    DEFAULT_MAX_PAYLOAD, EXT_HEADER_LEN, EXT_LENGTH_MARK, HEADER_LEN, MAX_PROTOCONF_PAYLOAD,
};
use bsn::wire::hash::{checksum, sha256d};
use bsn::wire::message::{
    MAX_ADDR, MAX_HEADERS, MAX_INV, MAX_LOCATOR, MAX_REJECT_COMMAND, MAX_REJECT_REASON,
    MAX_STREAM_POLICIES, MAX_USER_AGENT,
};
use bsn::wire::{
    commands, encode_message, Block, BlockHeader, Command, Decode, Encode, Frame, FrameDecoder,
    FrameError, Hash256, InvType, Inventory, Limits, Locator, Magic, Message, NetAddr, OutPoint,
    PayloadError, Protoconf, Reject, TimedNetAddr, Transaction, VersionMessage, WireError,
};
use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use std::net::Ipv4Addr;

/// BSV mainnet magic.
const MAGIC: Magic = Magic([0xe3, 0xe1, 0xf3, 0xe8]);

/// Every command name the codec has a constant for (decoded or not).
const KNOWN_COMMANDS: [&str; 32] = [
    "version",
    "verack",
    "ping",
    "pong",
    "addr",
    "getaddr",
    "inv",
    "getdata",
    "notfound",
    "getheaders",
    "getblocks",
    "headers",
    "sendheaders",
    "block",
    "tx",
    "reject",
    "mempool",
    "feefilter",
    "sendcmpct",
    "cmpctblock",
    "protoconf",
    "extmsg",
    "authch",
    "gethdrsen",
    "sendhdrsen",
    "hdrsen",
    "datareftx",
    "authresp",
    "createstrm",
    "streamack",
    "dsdetected",
    "revokemid",
];

/// `cases` per property, or `PROPTEST_CASES` when set (for long runs).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Never write regression files into the repository.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn cmd(name: &str) -> Command {
    Command::new(name).expect("valid command name")
}

// ---------------------------------------------------------------------------------------------
// Strategies: values within the protocol limits.
// ---------------------------------------------------------------------------------------------

fn hash() -> impl Strategy<Value = Hash256> {
    any::<[u8; 32]>().prop_map(Hash256)
}

fn bytes_up_to(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// Lists: mostly short, sometimes across the 0xfd compact-size boundary, sometimes right at
/// `max` (capped at `cap` items so single-byte feeding stays fast; the exact protocol maxima of
/// the big lists are unit-tested below).
fn list_of<S>(item: fn() -> S, max: u64, cap: usize) -> impl Strategy<Value = Vec<S::Value>>
where
    S: Strategy + 'static,
{
    let max = (max as usize).min(cap);
    prop_oneof![
        12 => vec(item(), 0..=max.min(12)),
        1 => vec(item(), max.min(250)..=max.min(260)),
        1 => vec(item(), max.saturating_sub(2)..=max),
    ]
}

fn net_addr() -> impl Strategy<Value = NetAddr> {
    let ip = prop_oneof![
        any::<[u8; 16]>(),
        any::<[u8; 4]>().prop_map(|v4| Ipv4Addr::from(v4).to_ipv6_mapped().octets()),
    ];
    (any::<u64>(), ip, any::<u16>()).prop_map(|(services, ip, port)| NetAddr { services, ip, port })
}

fn timed_addr() -> impl Strategy<Value = TimedNetAddr> {
    (any::<u32>(), net_addr()).prop_map(|(time, addr)| TimedNetAddr { time, addr })
}

fn inv_type() -> impl Strategy<Value = InvType> {
    prop_oneof![
        select(vec![
            InvType::ERROR,
            InvType::TX,
            InvType::BLOCK,
            InvType::FILTERED_BLOCK,
            InvType::CMPCT_BLOCK,
            InvType::WITNESS_TX,
            InvType::WITNESS_BLOCK,
        ]),
        any::<u32>().prop_map(InvType),
    ]
}

fn inventory() -> impl Strategy<Value = Inventory> {
    (inv_type(), hash()).prop_map(|(kind, hash)| Inventory { kind, hash })
}

fn locator() -> impl Strategy<Value = Locator> {
    (any::<u32>(), list_of(hash, MAX_LOCATOR, 500), hash()).prop_map(|(version, hashes, stop)| {
        Locator {
            version,
            hashes,
            stop,
        }
    })
}

fn block_header() -> impl Strategy<Value = BlockHeader> {
    (
        any::<i32>(),
        hash(),
        hash(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(version, prev_hash, merkle_root, time, bits, nonce)| BlockHeader {
                version,
                prev_hash,
                merkle_root,
                time,
                bits,
                nonce,
            },
        )
}

/// Scripts, sometimes long enough for a 3-byte compact size.
fn script() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => vec(any::<u8>(), 0..48),
        1 => vec(any::<u8>(), 250..300),
    ]
}

fn out_point() -> impl Strategy<Value = OutPoint> {
    (hash(), any::<u32>()).prop_map(|(txid, vout)| OutPoint { txid, vout })
}

type TxParts = (i32, Vec<(OutPoint, Vec<u8>, u32)>, Vec<(i64, Vec<u8>)>, u32);

/// Parts of a transaction without witness, with at least one input (a transaction with no input
/// and some outputs reads as the BIP144 witness marker, by design of BIP144).
fn tx_parts() -> impl Strategy<Value = TxParts> {
    (
        any::<i32>(),
        vec((out_point(), script(), any::<u32>()), 1..4),
        vec((any::<i64>(), script()), 0..4),
        any::<u32>(),
    )
}

fn build_tx(p: &TxParts) -> Transaction {
    let ins: Vec<(OutPoint, &[u8], u32)> =
        p.1.iter().map(|(o, s, q)| (*o, s.as_slice(), *q)).collect();
    let outs: Vec<(i64, &[u8])> = p.2.iter().map(|(v, s)| (*v, s.as_slice())).collect();
    Transaction::build(p.0, &ins, &outs, p.3)
}

/// Serializes parts in the BIP144 layout with `witness` (one stack per input, at least one item
/// somewhere) and returns (full bytes, bytes without witness).
fn witness_tx_bytes(p: &TxParts, witness: &[Vec<Vec<u8>>]) -> (Vec<u8>, Vec<u8>) {
    fn cs(b: &mut Vec<u8>, n: usize) {
        let mut m = BytesMut::new();
        bsn::wire::codec::put_compact_size(&mut m, n as u64);
        b.extend_from_slice(&m);
    }
    let mut body = Vec::new();
    cs(&mut body, p.1.len());
    for (op, s, q) in &p.1 {
        body.extend_from_slice(&op.txid.0);
        body.extend_from_slice(&op.vout.to_le_bytes());
        cs(&mut body, s.len());
        body.extend_from_slice(s);
        body.extend_from_slice(&q.to_le_bytes());
    }
    cs(&mut body, p.2.len());
    for (v, s) in &p.2 {
        body.extend_from_slice(&v.to_le_bytes());
        cs(&mut body, s.len());
        body.extend_from_slice(s);
    }
    let mut full = p.0.to_le_bytes().to_vec();
    full.extend_from_slice(&[0, 1]);
    full.extend_from_slice(&body);
    for stack in witness {
        cs(&mut full, stack.len());
        for item in stack {
            cs(&mut full, item.len());
            full.extend_from_slice(item);
        }
    }
    full.extend_from_slice(&p.3.to_le_bytes());
    let mut stripped = p.0.to_le_bytes().to_vec();
    stripped.extend_from_slice(&body);
    stripped.extend_from_slice(&p.3.to_le_bytes());
    (full, stripped)
}

fn witness_tx() -> impl Strategy<Value = Transaction> {
    tx_parts()
        .prop_flat_map(|p| {
            let n = p.1.len();
            (
                Just(p),
                vec(vec(vec(any::<u8>(), 0..40), 0..3), n..=n),
                any::<Index>(),
            )
        })
        .prop_map(|(p, mut witness, at)| {
            if witness.iter().all(|w| w.is_empty()) {
                // BIP144 forbids the witness layout with every stack empty.
                let i = at.index(witness.len());
                witness[i].push(vec![0x51]);
            }
            let (full, stripped) = witness_tx_bytes(&p, &witness);
            let tx = Transaction::decode_all(Bytes::from(full.clone())).expect("witness tx");
            assert!(tx.has_witness());
            assert_eq!(tx.txid(), Hash256(sha256d(&stripped)));
            assert_eq!(tx.wtxid(), Hash256(sha256d(&full)));
            assert_eq!(tx.input_count(), p.1.len());
            assert_eq!(tx.output_count(), p.2.len());
            tx
        })
}

/// Any transaction bsn can carry: legacy (the common case), with witness, or the degenerate
/// 10-byte one with no input and no output (legacy layout: the byte after the empty input list
/// is 0, so it is not a witness marker).
fn transaction() -> impl Strategy<Value = Transaction> {
    prop_oneof![
        12 => tx_parts().prop_map(|p| {
            let tx = build_tx(&p);
            assert_eq!(tx.version(), p.0);
            assert_eq!(tx.lock_time(), p.3);
            assert!(!tx.has_witness());
            let ins: Vec<_> = tx.inputs().map(|i| (i.prev_out, i.script_sig.to_vec(), i.sequence)).collect();
            assert_eq!(ins, p.1);
            let outs: Vec<_> = tx.outputs().map(|o| (o.value, o.script_pubkey.to_vec())).collect();
            assert_eq!(outs, p.2);
            tx
        }),
        3 => witness_tx(),
        1 => (any::<i32>(), any::<u32>()).prop_map(|(v, lt)| Transaction::build(v, &[], &[], lt)),
    ]
}

fn block() -> impl Strategy<Value = Block> {
    (block_header(), vec(transaction(), 1..5)).prop_map(|(h, txs)| {
        let b = Block::new(h, txs.clone());
        assert_eq!(b.header, h);
        assert_eq!(b.txs, txs);
        b
    })
}

/// User agents up to `MAX_USER_AGENT` bytes, ASCII or any printable Unicode.
fn user_agent() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[ -~]{0,40}",
        3 => "\\PC{0,24}",
        1 => "[a-z/:.0-9]{250,256}",
    ]
}

fn version() -> impl Strategy<Value = VersionMessage> {
    (
        (any::<i32>(), any::<u64>(), any::<i64>()),
        (net_addr(), net_addr(), any::<u64>()),
        (user_agent(), any::<i32>()),
        (option::of(any::<bool>()), bytes_up_to(40)),
    )
        .prop_map(
            |(
                (version, services, timestamp),
                (receiver, sender, nonce),
                (user_agent, start_height),
                (relay, extra),
            )| VersionMessage {
                version,
                services,
                timestamp,
                receiver,
                sender,
                nonce,
                user_agent,
                start_height,
                // Fields after relay exist only when relay does.
                extra: if relay.is_some() { extra } else { Bytes::new() },
                relay,
            },
        )
}

fn reject() -> impl Strategy<Value = Reject> {
    let message = prop_oneof!["[a-z]{0,12}", "\\PC{0,3}"]; // at most 12 bytes
    let reason = prop_oneof![6 => "[ -~]{0,40}", 3 => "\\PC{0,27}", 1 => "[ -~]{111}"];
    let data = prop_oneof![
        bytes_up_to(40),
        any::<[u8; 32]>().prop_map(|h| Bytes::copy_from_slice(&h))
    ];
    (message, any::<u8>(), reason, data).prop_map(|(message, code, reason, data)| Reject {
        message,
        code,
        reason,
        data,
    })
}

fn stream_policies() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[A-Za-z,]{0,64}",
        1 => "\\PC{0,32}",
        1 => "[A-Za-z,]{1020,1024}",
    ]
}

fn protoconf() -> impl Strategy<Value = Protoconf> {
    let many_fields = prop_oneof![3u64..300, any::<u64>().prop_map(|n| n.max(3))];
    prop_oneof![
        any::<u32>().prop_map(|m| Protoconf {
            number_of_fields: 1,
            max_recv_payload_length: m,
            stream_policies: None,
            extra: Bytes::new(),
        }),
        (any::<u32>(), stream_policies()).prop_map(|(m, s)| Protoconf {
            number_of_fields: 2,
            max_recv_payload_length: m,
            stream_policies: Some(s),
            extra: Bytes::new(),
        }),
        (
            many_fields,
            any::<u32>(),
            stream_policies(),
            bytes_up_to(40)
        )
            .prop_map(|(n, m, s, extra)| Protoconf {
                number_of_fields: n,
                max_recv_payload_length: m,
                stream_policies: Some(s),
                extra,
            }),
    ]
}

/// A command name that is valid on the wire and that the codec does not know.
fn unknown_command() -> impl Strategy<Value = Command> {
    "[!-~]{1,12}"
        .prop_filter("a known command", |s| !KNOWN_COMMANDS.contains(&s.as_str()))
        .prop_map(|s| cmd(&s))
}

fn unknown() -> impl Strategy<Value = Message> {
    (unknown_command(), bytes_up_to(300))
        .prop_map(|(command, payload)| Message::Unknown { command, payload })
}

/// Every variant, equally likely.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        version().prop_map(Message::Version),
        Just(Message::Verack),
        any::<u64>().prop_map(Message::Ping),
        any::<u64>().prop_map(Message::Pong),
        list_of(timed_addr, MAX_ADDR, 1000).prop_map(Message::Addr),
        Just(Message::GetAddr),
        list_of(inventory, MAX_INV, 300).prop_map(Message::Inv),
        list_of(inventory, MAX_INV, 300).prop_map(Message::GetData),
        list_of(inventory, MAX_INV, 300).prop_map(Message::NotFound),
        locator().prop_map(Message::GetHeaders),
        locator().prop_map(Message::GetBlocks),
        list_of(block_header, MAX_HEADERS, 2000).prop_map(Message::Headers),
        Just(Message::SendHeaders),
        block().prop_map(Message::Block),
        transaction().prop_map(Message::Tx),
        reject().prop_map(Message::Reject),
        Just(Message::Mempool),
        any::<u64>().prop_map(Message::MempoolAge),
        any::<i64>().prop_map(Message::FeeFilter),
        (any::<bool>(), any::<u64>())
            .prop_map(|(announce, version)| Message::SendCmpct { announce, version }),
        protoconf().prop_map(Message::Protoconf),
        (any::<u32>(), bytes_up_to(64)).prop_map(|(version, challenge)| Message::AuthCh(
            bsn::wire::AuthChallenge { version, challenge }
        )),
        locator().prop_map(Message::GetHdrsEn),
        Just(Message::SendHdrsEn),
        vec(enriched_header(), 0..4).prop_map(Message::HdrsEn),
        (bytes_up_to(129), any::<u8>(), "[A-Za-z]{0,64}").prop_map(|(a, t, p)| {
            Message::CreateStream(bsn::wire::CreateStream {
                association_id: a,
                stream_type: t,
                policy: p,
            })
        }),
        (bytes_up_to(129), any::<u8>()).prop_map(|(a, t)| Message::StreamAck(
            bsn::wire::StreamAck {
                association_id: a,
                stream_type: t
            }
        )),
        (bytes_up_to(40), any::<u64>(), bytes_up_to(80)).prop_map(|(k, n, s)| {
            Message::AuthResp(bsn::wire::AuthResponse {
                public_key: k,
                nonce: n,
                signature: s,
            })
        }),
        (
            any::<u16>(),
            vec((vec(block_header(), 1..3), whole_tx_proof()), 0..3)
        )
            .prop_map(
                |(version, blocks)| Message::DsDetected(bsn::wire::DsDetected {
                    version,
                    blocks: blocks
                        .into_iter()
                        .map(|(headers, proof)| bsn::wire::DsBlock { headers, proof })
                        .collect(),
                })
            ),
        (
            any::<u32>(),
            any::<[u8; 33]>(),
            any::<[u8; 33]>(),
            any::<[u8; 33]>(),
            bytes_up_to(144)
        )
            .prop_map(|(version, k1, k2, k3, signature)| Message::RevokeMid(
                bsn::wire::RevokeMid {
                    version,
                    revocation_key: k1,
                    miner_id: k2,
                    revocation_message: k3,
                    signature,
                }
            )),
        (transaction(), whole_tx_proof())
            .prop_map(|(tx, proof)| Message::DataRefTx(bsn::wire::DataRefTx { tx, proof })),
        unknown(),
    ]
}

/// A proof as `dsdetected` and `datareftx` carry it: flags 5 (a whole transaction, a merkle
/// root as target) and hash nodes.
fn whole_tx_proof() -> impl Strategy<Value = bsn::wire::MerkleProof> {
    (transaction(), any::<u64>(), hash(), vec(hash(), 0..6)).prop_map(|(tx, index, root, nodes)| {
        bsn::wire::MerkleProof {
            flags: 5,
            index,
            tx_or_id: tx.raw().clone(),
            target: Bytes::copy_from_slice(&root.0),
            nodes: nodes.into_iter().map(bsn::wire::ProofNode::Hash).collect(),
        }
    })
}

fn proof_node() -> impl Strategy<Value = bsn::wire::ProofNode> {
    prop_oneof![
        hash().prop_map(bsn::wire::ProofNode::Hash),
        Just(bsn::wire::ProofNode::Duplicate),
        any::<u64>().prop_map(bsn::wire::ProofNode::Index),
    ]
}

fn proven_tx() -> impl Strategy<Value = bsn::wire::ProvenTx> {
    (
        transaction(),
        any::<u64>(),
        any::<bool>(),
        vec(proof_node(), 0..8),
    )
        .prop_map(|(tx, index, header_target, nodes)| {
            // flags 0: a txid and a block hash; flags 2: a txid and a whole header
            let (flags, target) = if header_target {
                (2, Bytes::from(vec![7u8; 80]))
            } else {
                (0, Bytes::from(vec![9u8; 32]))
            };
            bsn::wire::ProvenTx {
                proof: bsn::wire::MerkleProof {
                    flags,
                    index,
                    tx_or_id: Bytes::copy_from_slice(&tx.txid().0),
                    target,
                    nodes,
                },
                tx,
            }
        })
}

fn enriched_header() -> impl Strategy<Value = bsn::wire::EnrichedHeader> {
    (
        block_header(),
        any::<u64>(),
        any::<bool>(),
        proptest::option::of(proven_tx()),
        proptest::option::of(proven_tx()),
    )
        .prop_map(|(header, tx_count, no_more, coinbase, miner_info)| {
            bsn::wire::EnrichedHeader {
                header,
                tx_count,
                no_more,
                coinbase,
                miner_info,
            }
        })
}

/// Chunk sizes for feeding a decoder, used in turn (cycled).
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        vec(1usize..8, 1..6),
        vec(1usize..100, 1..6),
        vec(1usize..5000, 1..4),
    ]
}

// ---------------------------------------------------------------------------------------------
// Driving a decoder.
// ---------------------------------------------------------------------------------------------

/// What one `next_frame` call returned, and how many input bytes had been pushed by then.
type Event = (usize, Result<Frame, FrameError>);

/// Feeds `bytes` in chunks of `sizes` (cycled), calling `next_frame` after each push until it
/// asks for more input. Stops at the first fatal error (after checking the decoder stays
/// poisoned). Panics if the decoder does not ask for more input within a bounded number of
/// calls, so a looping decoder fails the test instead of hanging it.
fn drive(dec: &mut FrameDecoder, bytes: &[u8], sizes: &[usize]) -> Vec<Event> {
    assert!(!sizes.is_empty());
    let mut out = Vec::new();
    let mut pos = 0;
    let mut turn = 0;
    while pos < bytes.len() {
        let n = sizes[turn % sizes.len()].max(1).min(bytes.len() - pos);
        turn += 1;
        dec.push(&bytes[pos..pos + n]);
        pos += n;
        // Each result consumes at least a 24-byte header, so at most buffered/24 results can
        // come before the decoder must ask for more.
        let bound = dec.buffered() / HEADER_LEN + 2;
        let mut asked_for_more = false;
        for _ in 0..bound {
            match dec.next_frame() {
                Ok(None) => {
                    asked_for_more = true;
                    break;
                }
                Ok(Some(f)) => out.push((pos, Ok(f))),
                Err(e) => {
                    let fatal = e.is_fatal();
                    out.push((pos, Err(e)));
                    if fatal {
                        assert_eq!(dec.next_frame(), Err(FrameError::Poisoned));
                        assert_eq!(dec.buffered(), 0, "a failed decoder keeps no bytes");
                        dec.push(&bytes[pos..]);
                        assert_eq!(dec.next_frame(), Err(FrameError::Poisoned));
                        return out;
                    }
                }
            }
        }
        assert!(
            asked_for_more,
            "decoder did not ask for more input within {bound} calls"
        );
        assert_eq!(
            dec.stream_offset() + dec.buffered() as u64,
            pos as u64,
            "every pushed byte is either consumed or buffered"
        );
    }
    out
}

fn only_frames(events: Vec<Event>) -> Vec<(usize, Frame)> {
    events
        .into_iter()
        .map(|(at, r)| (at, r.unwrap_or_else(|e| panic!("frame error at {at}: {e}"))))
        .collect()
}

/// Round trip of one message: payload, standard frame and extended frame, each frame fed one
/// byte at a time and in `sizes` chunks.
fn check_roundtrip(msg: &Message, sizes: &[usize]) {
    let command = msg.command();
    let payload = msg.payload();
    assert_eq!(payload.len(), msg.payload_len(), "payload_len of {msg:?}");
    assert_eq!(Message::decode(command, payload.clone()), Ok(msg.clone()));
    let mut appended = BytesMut::from(&b"prefix"[..]);
    msg.encode_payload(&mut appended);
    assert_eq!(&appended[6..], &payload[..], "encode_payload appends");

    let mut b = BytesMut::new();
    encode_message(&mut b, MAGIC, msg);
    let frame = b.freeze();
    assert_eq!(frame.len(), HEADER_LEN + payload.len());
    assert_eq!(frame[..4], MAGIC.0);
    assert_eq!(&frame[4..16], command.as_wire());
    assert_eq!(frame[16..20], (payload.len() as u32).to_le_bytes());
    assert_eq!(frame[20..24], checksum(&payload));
    assert_eq!(&frame[24..], &payload[..]);
    assert_eq!(frame[..HEADER_LEN], header(MAGIC, command, &payload));
    assert_eq!(message_to_bytes(MAGIC, msg), frame);

    let mut b = BytesMut::new();
    encode_extended_message(&mut b, MAGIC, msg);
    let ext = b.freeze();
    assert_eq!(ext.len(), EXT_HEADER_LEN + payload.len());
    assert_eq!(
        ext[..EXT_HEADER_LEN],
        extended_header(MAGIC, command, payload.len() as u64)
    );
    assert_eq!(&ext[4..16], commands::EXTMSG.as_wire());
    assert_eq!(ext[16..20], EXT_LENGTH_MARK.to_le_bytes());
    assert_eq!(&ext[24..36], command.as_wire());
    assert_eq!(ext[36..44], (payload.len() as u64).to_le_bytes());
    assert_eq!(&ext[44..], &payload[..]);

    for (bytes, extended) in [(&frame, false), (&ext, true)] {
        for chunks in [&[1][..], sizes] {
            let mut dec = FrameDecoder::new(MAGIC);
            let got = only_frames(drive(&mut dec, bytes, chunks));
            assert_eq!(got.len(), 1, "exactly one frame");
            let (at, f) = &got[0];
            assert_eq!(*at, bytes.len(), "the frame comes out with its last byte");
            assert_eq!(f.command, command);
            assert_eq!(f.payload, payload);
            assert_eq!(f.extended, extended);
            assert_eq!(f.offset, 0);
            assert_eq!(f.message(), Ok(msg.clone()));
            assert!(!dec.in_frame());
            assert_eq!(dec.buffered(), 0);
            assert_eq!(dec.stream_offset(), bytes.len() as u64);
            assert_eq!(dec.next_message(), Ok(None));
        }
    }

    // The same frames through next_message, the whole frame at once.
    let mut dec = FrameDecoder::new(MAGIC);
    dec.push(&frame);
    dec.push(&ext);
    assert_eq!(dec.next_message(), Ok(Some(msg.clone())));
    assert_eq!(dec.next_message(), Ok(Some(msg.clone())));
    assert_eq!(dec.next_message(), Ok(None));

    // A peer that may not send extmsg: the extended frame is refused, fatally.
    let mut dec = FrameDecoder::with_limits(
        MAGIC,
        Limits {
            allow_extended: false,
            ..Limits::default()
        },
    );
    dec.push(&ext);
    assert_eq!(
        dec.next_frame(),
        Err(FrameError::BadExtended {
            offset: 0,
            reason: "extended messages not allowed"
        })
    );
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn version_round_trips(v in version(), sizes in chunk_sizes()) {
        check_roundtrip(&Message::Version(v), &sizes);
    }

    #[test]
    fn empty_messages_round_trip(
        m in select(vec![Message::Verack, Message::GetAddr, Message::SendHeaders, Message::Mempool]),
        sizes in chunk_sizes(),
    ) {
        prop_assert_eq!(m.payload_len(), 0);
        check_roundtrip(&m, &sizes);
    }

    #[test]
    fn ping_pong_feefilter_sendcmpct_round_trip(
        n in any::<u64>(),
        fee in any::<i64>(),
        announce in any::<bool>(),
        sizes in chunk_sizes(),
    ) {
        check_roundtrip(&Message::Ping(n), &sizes);
        check_roundtrip(&Message::Pong(n), &sizes);
        check_roundtrip(&Message::FeeFilter(fee), &sizes);
        check_roundtrip(&Message::SendCmpct { announce, version: n }, &sizes);
    }

    #[test]
    fn addr_round_trips(a in list_of(timed_addr, MAX_ADDR, 1000), sizes in chunk_sizes()) {
        check_roundtrip(&Message::Addr(a), &sizes);
    }

    #[test]
    fn inventory_messages_round_trip(
        i in list_of(inventory, MAX_INV, 300),
        which in 0..3u8,
        sizes in chunk_sizes(),
    ) {
        let m = match which {
            0 => Message::Inv(i),
            1 => Message::GetData(i),
            _ => Message::NotFound(i),
        };
        check_roundtrip(&m, &sizes);
    }

    #[test]
    fn locator_messages_round_trip(l in locator(), getblocks in any::<bool>(), sizes in chunk_sizes()) {
        let m = if getblocks { Message::GetBlocks(l) } else { Message::GetHeaders(l) };
        check_roundtrip(&m, &sizes);
    }

    #[test]
    fn headers_round_trip(h in list_of(block_header, MAX_HEADERS, 2000), sizes in chunk_sizes()) {
        for hdr in &h {
            prop_assert_eq!(BlockHeader::from_array(&hdr.to_array()), *hdr);
            prop_assert_eq!(hdr.hash(), Hash256(sha256d(&hdr.to_array())));
        }
        check_roundtrip(&Message::Headers(h), &sizes);
    }

    #[test]
    fn block_round_trips(b in block(), sizes in chunk_sizes()) {
        let mut raw = BytesMut::new();
        b.header.encode(&mut raw);
        bsn::wire::codec::put_compact_size(&mut raw, b.txs.len() as u64);
        for t in &b.txs {
            raw.put_slice(t.raw());
        }
        prop_assert_eq!(&b.raw()[..], &raw[..]);
        prop_assert_eq!(b.hash(), b.header.hash());
        check_roundtrip(&Message::Block(b), &sizes);
    }

    #[test]
    fn tx_round_trips(t in transaction(), sizes in chunk_sizes()) {
        prop_assert_eq!(Transaction::decode_all(t.raw().clone()), Ok(t.clone()));
        if !t.has_witness() {
            prop_assert_eq!(t.txid(), t.wtxid());
        }
        check_roundtrip(&Message::Tx(t), &sizes);
    }

    #[test]
    fn reject_round_trips(r in reject(), sizes in chunk_sizes()) {
        prop_assert!(r.message.len() as u64 <= MAX_REJECT_COMMAND);
        prop_assert!(r.reason.len() as u64 <= MAX_REJECT_REASON);
        check_roundtrip(&Message::Reject(r), &sizes);
    }

    #[test]
    fn protoconf_round_trips(p in protoconf(), sizes in chunk_sizes()) {
        prop_assert!(p.stream_policies.as_ref().map_or(0, |s| s.len()) as u64 <= MAX_STREAM_POLICIES);
        check_roundtrip(&Message::Protoconf(p), &sizes);
    }

    #[test]
    fn unknown_round_trips(m in unknown(), sizes in chunk_sizes()) {
        check_roundtrip(&m, &sizes);
    }

    /// Several messages back to back, some standard and some extended, in random chunks: the
    /// same messages in order, each at the offset where its frame started.
    #[test]
    fn streams_of_messages_round_trip(
        msgs in vec((message(), any::<bool>()), 1..6),
        sizes in chunk_sizes(),
    ) {
        let mut stream = BytesMut::new();
        let mut starts = Vec::new();
        for (m, ext) in &msgs {
            starts.push(stream.len());
            if *ext {
                encode_extended_message(&mut stream, MAGIC, m);
            } else {
                encode_message(&mut stream, MAGIC, m);
            }
        }
        let mut dec = FrameDecoder::new(MAGIC);
        let got = only_frames(drive(&mut dec, &stream, &sizes));
        prop_assert_eq!(got.len(), msgs.len());
        for (i, ((_, f), (m, ext))) in got.iter().zip(&msgs).enumerate() {
            prop_assert_eq!(f.offset, starts[i] as u64);
            prop_assert_eq!(f.extended, *ext);
            prop_assert_eq!(&f.message(), &Ok(m.clone()));
        }
        prop_assert!(!dec.in_frame());
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile input: properties.
// ---------------------------------------------------------------------------------------------

/// Checks what a decoded frame may be: within its limit, and its payload either decodes or fails
/// with a payload error naming its command and an offset inside the payload.
fn check_frame(f: &Frame, limits: &Limits) {
    assert!(f.payload.len() as u64 <= limits.limit_for(f.command));
    match f.message() {
        Ok(m) => assert_eq!(m.command(), f.command),
        Err(WireError::Payload {
            frame_offset,
            error,
        }) => {
            assert_eq!(frame_offset, f.offset);
            assert_eq!(error.command, f.command);
            assert!(error.error.offset <= f.payload.len());
        }
        Err(e) => panic!("frame payload gave a frame error: {e}"),
    }
}

/// Checks every event of a run: frames at increasing offsets and valid; errors typed, with
/// offsets inside what was pushed; at most one fatal error, last.
fn check_events(events: &[Event], limits: &Limits) {
    let mut last_offset = None;
    for (i, (at, r)) in events.iter().enumerate() {
        let offset = match r {
            Ok(f) => {
                check_frame(f, limits);
                f.offset
            }
            Err(e) => {
                let _ = e.to_string();
                if e.is_fatal() {
                    assert_eq!(i, events.len() - 1, "nothing after a fatal error");
                }
                match e {
                    FrameError::WrongMagic { offset, .. }
                    | FrameError::BadCommand { offset, .. }
                    | FrameError::BadExtended { offset, .. }
                    | FrameError::BadChecksum { offset, .. } => *offset,
                    FrameError::Oversize {
                        offset,
                        length,
                        limit,
                        command,
                    } => {
                        assert!(length > limit);
                        assert_eq!(*limit, limits.limit_for(*command));
                        *offset
                    }
                    other => panic!("unexpected error {other:?}"),
                }
            }
        };
        assert!(offset < *at as u64);
        if let Some(prev) = last_offset {
            assert!(offset > prev, "results at increasing offsets");
        }
        last_offset = Some(offset);
    }
}

fn small_limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        (0u64..300, 0u64..600, 0u64..600, any::<bool>()).prop_map(|(p, b, t, e)| Limits {
            max_payload: p,
            max_block_payload: b,
            max_tx_payload: t,
            allow_extended: e,
        }),
    ]
}

/// A frame header with random fields: right or wrong magic, a known, random or invalid command,
/// any length, right or random checksum; then random payload bytes.
fn random_frame() -> impl Strategy<Value = Vec<u8>> {
    let magic = prop_oneof![4 => Just(MAGIC.0), 1 => any::<[u8; 4]>()];
    let command = prop_oneof![
        select(KNOWN_COMMANDS.to_vec()).prop_map(|c| *cmd(c).as_wire()),
        unknown_command().prop_map(|c| *c.as_wire()),
        any::<[u8; 12]>(),
    ];
    let length = prop_oneof![
        0u32..200,
        any::<u32>(),
        Just(EXT_LENGTH_MARK),
        Just(DEFAULT_MAX_PAYLOAD as u32),
        Just(DEFAULT_MAX_PAYLOAD as u32 + 1),
    ];
    (
        magic,
        command,
        length,
        any::<Option<[u8; 4]>>(),
        vec(any::<u8>(), 0..300),
    )
        .prop_map(|(magic, command, length, sum, payload)| {
            let mut f = magic.to_vec();
            f.extend_from_slice(&command);
            f.extend_from_slice(&length.to_le_bytes());
            f.extend_from_slice(&sum.unwrap_or_else(|| checksum(&payload)));
            f.extend_from_slice(&payload);
            f
        })
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    Insert(Index, u8),
    Delete(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Delete),
    ]
}

/// Applies `m`; returns the new bytes and the first position that differs.
fn apply(bytes: &[u8], m: &Mutation) -> (Vec<u8>, usize) {
    let mut b = bytes.to_vec();
    let p = match m {
        Mutation::Flip(i, x) => {
            let p = i.index(b.len());
            b[p] ^= x;
            p
        }
        Mutation::Truncate(i) => {
            let p = i.index(b.len());
            b.truncate(p);
            p
        }
        Mutation::Insert(i, x) => {
            let p = i.index(b.len() + 1);
            b.insert(p, *x);
            p
        }
        Mutation::Delete(i) => {
            let p = i.index(b.len());
            b.remove(p);
            p
        }
    };
    (b, p)
}

/// (start, end, header length, extended) of each frame of a stream.
type Layout = Vec<(usize, usize, usize, bool)>;

fn encode_stream(msgs: &[(Message, bool)]) -> (Vec<u8>, Layout) {
    let mut s = BytesMut::new();
    let mut layout = Vec::new();
    for (m, ext) in msgs {
        let start = s.len();
        if *ext {
            encode_extended_message(&mut s, MAGIC, m);
        } else {
            encode_message(&mut s, MAGIC, m);
        }
        let hl = if *ext { EXT_HEADER_LEN } else { HEADER_LEN };
        layout.push((start, s.len(), hl, *ext));
    }
    (s.to_vec(), layout)
}

/// A message worth mutating: the payload-carrying variants (the empty ones have no payload to
/// mutate and are covered by the header mutations of any other frame).
fn small_message() -> impl Strategy<Value = Message> {
    message().prop_filter("not too big for fast mutation runs", |m| {
        m.payload_len() < 20_000
    })
}

/// A small message with a non-empty payload (something to damage).
fn payload_message() -> impl Strategy<Value = Message> {
    small_message().prop_filter("empty payload", |m| m.payload_len() > 0)
}

/// Commands whose payload has no optional tail: any proper prefix of a valid payload fails with
/// `UnexpectedEnd`.
const FIXED_LAYOUT: [&str; 13] = [
    "ping",
    "pong",
    "addr",
    "inv",
    "getdata",
    "notfound",
    "getheaders",
    "getblocks",
    "headers",
    "block",
    "tx",
    "feefilter",
    "sendcmpct",
];

/// Decodes `payload` as `command`; checks a failure names the command and an offset inside the
/// payload, and a success is canonical: re-encoding gives back the same bytes (up to the
/// normalised boolean of `version`'s relay and `sendcmpct`'s announce) and decodes to the same.
fn check_payload(command: Command, payload: Bytes) -> Result<Message, PayloadError> {
    let r = Message::decode(command, payload.clone());
    match &r {
        Ok(m) => {
            assert_eq!(m.command(), command);
            // bytes after a known message are ignored (as the SV node does): the message used
            // a prefix of the payload
            let used = m.payload_len();
            assert!(
                used <= payload.len(),
                "{command} used {used} of {}",
                payload.len()
            );
            let again = m.payload();
            if command != commands::VERSION && command != commands::SENDCMPCT {
                assert_eq!(
                    again,
                    payload.slice(..used),
                    "canonical re-encoding of {command}"
                );
            }
            assert_eq!(Message::decode(command, again).as_ref(), Ok(m));
        }
        Err(PayloadError { command: c, error }) => {
            assert_eq!(*c, command);
            assert!(error.offset <= payload.len(), "{error} beyond the payload");
            let _ = r.as_ref().unwrap_err().to_string();
            if command == commands::EXTMSG {
                assert!(matches!(error.kind, DecodeErrorKind::Invalid(_)));
            }
        }
    }
    r
}

proptest! {
    #![proptest_config(config(256))]

    /// Random bytes, sometimes after the right magic: no panic, bounded, typed errors.
    #[test]
    fn random_bytes_never_break_the_decoder(
        with_magic in any::<bool>(),
        data in vec(any::<u8>(), 0..600),
        limits in small_limits(),
        sizes in chunk_sizes(),
    ) {
        let mut bytes = if with_magic { MAGIC.0.to_vec() } else { Vec::new() };
        bytes.extend_from_slice(&data);
        let mut dec = FrameDecoder::with_limits(MAGIC, limits);
        let events = drive(&mut dec, &bytes, &sizes);
        check_events(&events, &limits);
    }

    /// Random headers followed by random bytes: the decoder's answer is the one the header
    /// calls for, given as soon as the header is complete.
    #[test]
    fn random_headers_get_the_right_answer(
        frames in vec(random_frame(), 1..4),
        limits in small_limits(),
        sizes in chunk_sizes(),
    ) {
        let bytes = frames.concat();
        let mut dec = FrameDecoder::with_limits(MAGIC, limits);
        let events = drive(&mut dec, &bytes, &sizes);
        check_events(&events, &limits);

        // The first frame alone decides the first answer.
        let f = &frames[0];
        let first = events.first();
        if f[..4] != MAGIC.0 {
            let at = (0..4).find(|&i| f[i] != MAGIC.0[i]).unwrap();
            let wrong_magic = matches!(first, Some((_, Err(FrameError::WrongMagic { offset: 0, .. }))));
            prop_assert!(wrong_magic, "{:?}", first);
            // Refused as soon as the first wrong byte arrived (not after a whole header).
            prop_assert!(first.unwrap().0 <= at + sizes.iter().max().unwrap());
            return Ok(());
        }
        let raw: [u8; 12] = f[4..16].try_into().unwrap();
        let length = u32::from_le_bytes(f[16..20].try_into().unwrap()) as u64;
        let Some(command) = Command::from_wire(raw) else {
            prop_assert_eq!(first.map(|e| &e.1), Some(&Err(FrameError::BadCommand { offset: 0, raw })));
            return Ok(());
        };
        if command == commands::EXTMSG {
            return Ok(()); // random extended headers: covered by check_events
        }
        let limit = limits.limit_for(command);
        if length > limit {
            prop_assert_eq!(
                first.map(|e| &e.1),
                Some(&Err(FrameError::Oversize { offset: 0, command, length, limit }))
            );
            // Refused on the push that completed the header, before any payload was buffered.
            // (drive checked the decoder dropped its buffer at that point.)
            prop_assert!(first.unwrap().0 < HEADER_LEN + sizes.iter().max().unwrap());
            return Ok(());
        }
        let payload_len = f.len() - HEADER_LEN;
        if (payload_len as u64) < length {
            if frames.len() == 1 {
                prop_assert!(events.is_empty());
                prop_assert!(dec.in_frame());
                prop_assert_eq!(dec.buffered(), payload_len);
            }
            return Ok(());
        }
        let body = &bytes[HEADER_LEN..HEADER_LEN + length as usize];
        let sum: [u8; 4] = f[20..24].try_into().unwrap();
        let (_, r) = first.expect("a whole frame gives an answer");
        if checksum(body) == sum {
            let fr = r.as_ref().expect("checksum matches");
            prop_assert_eq!(fr.command, command);
            prop_assert_eq!(&fr.payload[..], body);
        } else {
            prop_assert_eq!(r, &Err(FrameError::BadChecksum {
                offset: 0, command, expected: sum, got: checksum(body),
            }));
        }
    }

    /// A valid stream with one byte flipped, inserted or deleted, or cut short. Frames before the
    /// damage come out unchanged; a cut stream gives no error at all; a flipped payload or
    /// checksum byte costs exactly its own frame (a checksum error for standard frames) and every
    /// other frame comes out unchanged.
    #[test]
    fn mutated_streams_fail_only_where_damaged(
        msgs in vec((small_message(), any::<bool>()), 1..4),
        m in mutation(),
        sizes in chunk_sizes(),
    ) {
        let (stream, layout) = encode_stream(&msgs);
        let (bad, p) = apply(&stream, &m);
        let limits = Limits::default();
        let mut dec = FrameDecoder::with_limits(MAGIC, limits);
        let events = drive(&mut dec, &bad, &sizes);
        check_events(&events, &limits);

        let intact = layout.iter().take_while(|l| l.1 <= p).count();
        prop_assert!(events.len() >= intact, "{} frames before the damage, {} results", intact, events.len());
        for (i, (_, r)) in events.iter().take(intact).enumerate() {
            let f = r.as_ref().expect("an undamaged frame");
            prop_assert_eq!(f.offset, layout[i].0 as u64);
            prop_assert_eq!(&f.message(), &Ok(msgs[i].0.clone()));
        }
        match m {
            Mutation::Truncate(_) => {
                prop_assert_eq!(events.len(), intact);
                let on_boundary = p == 0 || layout.iter().any(|l| l.1 == p);
                prop_assert_eq!(dec.in_frame(), !on_boundary);
            }
            Mutation::Flip(..) => {
                let j = intact; // the damaged frame
                let (start, end, hl, ext) = layout[j];
                let in_payload = p >= start + hl;
                let in_checksum = !ext && (start + 20..start + 24).contains(&p);
                if in_payload || in_checksum {
                    prop_assert_eq!(events.len(), layout.len());
                    let (_, r) = &events[j];
                    if ext {
                        let f = r.as_ref().expect("extended frames have no checksum");
                        prop_assert_eq!(&f.payload[..], &bad[start + hl..end]);
                    } else {
                        let is_bad_checksum = matches!(r, Err(FrameError::BadChecksum { offset, .. }) if *offset == start as u64);
                        prop_assert!(is_bad_checksum, "{:?}", r);
                    }
                    for (i, (_, r)) in events.iter().enumerate().skip(j + 1) {
                        let f = r.as_ref().expect("frames after the damaged one are intact");
                        prop_assert_eq!(f.offset, layout[i].0 as u64);
                        prop_assert_eq!(&f.message(), &Ok(msgs[i].0.clone()));
                    }
                }
            }
            _ => {}
        }
    }

    /// Random payloads under every known command (and a few unknown ones).
    #[test]
    fn random_payloads_decode_or_fail_typed(
        name in prop_oneof![select(KNOWN_COMMANDS.to_vec()).prop_map(str::to_string), "[a-z]{1,12}"],
        payload in prop_oneof![vec(any::<u8>(), 0..120), vec(any::<u8>(), 0..2000)],
    ) {
        let _ = check_payload(cmd(&name), Bytes::from(payload));
    }

    /// Valid payloads with one byte flipped, inserted or deleted, or cut short.
    #[test]
    fn mutated_payloads_decode_or_fail_typed(msg in payload_message(), m in mutation()) {
        let payload = msg.payload();
        let (bad, _) = apply(&payload, &m);
        let r = check_payload(msg.command(), Bytes::from(bad));
        if let (Mutation::Truncate(_), Err(e)) = (&m, &r) {
            let is_end = matches!(e.error.kind, DecodeErrorKind::UnexpectedEnd { .. });
            prop_assert!(is_end, "truncation gives UnexpectedEnd, got {}", e);
        }
    }

    /// Every proper prefix of a valid payload: commands with a fixed layout fail with
    /// `UnexpectedEnd` inside the prefix; the others (optional tails) may also decode.
    #[test]
    fn truncated_payloads_end_unexpectedly(msg in payload_message(), cut in any::<Index>()) {
        let payload = msg.payload();
        let cut = cut.index(payload.len());
        let command = msg.command();
        match check_payload(command, payload.slice(..cut)) {
            Ok(_) => prop_assert!(!FIXED_LAYOUT.contains(&command.as_str()), "{} decoded from {} of {} bytes", command, cut, payload.len()),
            Err(e) => {
                let is_end = matches!(e.error.kind, DecodeErrorKind::UnexpectedEnd { .. });
                prop_assert!(is_end, "{}", e);
                prop_assert!(e.error.offset <= cut);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile input: explicit cases.
// ---------------------------------------------------------------------------------------------

fn frame_bytes(m: &Message) -> Vec<u8> {
    message_to_bytes(MAGIC, m).to_vec()
}

/// A standard frame with an arbitrary command and payload (right checksum).
fn raw_frame(command: Command, payload: &[u8]) -> Vec<u8> {
    let mut f = header(MAGIC, command, payload).to_vec();
    f.extend_from_slice(payload);
    f
}

/// A header that announces `length` bytes (right magic, zero checksum), no payload.
fn announce(command: Command, length: u32) -> Vec<u8> {
    let mut h = MAGIC.0.to_vec();
    h.extend_from_slice(command.as_wire());
    h.extend_from_slice(&length.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h
}

#[test]
fn wrong_magic_is_fatal_with_its_offset() {
    let ping = frame_bytes(&Message::Ping(7));
    let mut other = ping.clone();
    other[..4].copy_from_slice(&[0xf9, 0xbe, 0xb4, 0xd9]); // BTC mainnet
    let mut dec = FrameDecoder::new(MAGIC);
    dec.push(&ping);
    dec.push(&other);
    assert_eq!(dec.next_message(), Ok(Some(Message::Ping(7))));
    let e = dec.next_frame().unwrap_err();
    assert_eq!(
        e,
        FrameError::WrongMagic {
            offset: ping.len() as u64,
            expected: MAGIC,
            got: Magic([0xf9, 0xbe, 0xb4, 0xd9]),
        }
    );
    assert!(e.is_fatal());
    assert!(e.to_string().contains("f9beb4d9"), "{e}");
    assert_eq!(dec.next_frame(), Err(FrameError::Poisoned));
    dec.push(&ping);
    assert_eq!(
        dec.next_message(),
        Err(WireError::Frame(FrameError::Poisoned))
    );

    // Refused on its first wrong byte, before a whole header arrived.
    let mut dec = FrameDecoder::new(MAGIC);
    dec.push(&[0xe3, 0xe1, 0x00]);
    assert_eq!(
        dec.next_frame(),
        Err(FrameError::WrongMagic {
            offset: 0,
            expected: MAGIC,
            got: Magic([0xe3, 0xe1, 0x00, 0x00]),
        })
    );
    assert_eq!(dec.buffered(), 0);
}

#[test]
fn bad_checksum_skips_one_frame_and_the_next_decodes() {
    let mut bad = frame_bytes(&Message::Ping(1));
    bad[20] ^= 0xff;
    let mut flipped_payload = frame_bytes(&Message::Ping(2));
    flipped_payload[HEADER_LEN + 3] ^= 0x01;
    let pong = frame_bytes(&Message::Pong(3));
    let mut dec = FrameDecoder::new(MAGIC);
    for b in [&bad, &flipped_payload, &pong] {
        dec.push(b);
    }
    let real = checksum(&1u64.to_le_bytes());
    let mut claimed = real;
    claimed[0] ^= 0xff;
    let e = dec.next_frame().unwrap_err();
    assert_eq!(
        e,
        FrameError::BadChecksum {
            offset: 0,
            command: commands::PING,
            expected: claimed,
            got: real,
        }
    );
    assert!(!e.is_fatal());
    assert!(!WireError::Frame(e).is_fatal());
    match dec.next_message() {
        Err(WireError::Frame(FrameError::BadChecksum {
            offset, command, ..
        })) => {
            assert_eq!(offset, bad.len() as u64);
            assert_eq!(command, commands::PING);
        }
        other => panic!("expected a bad checksum, got {other:?}"),
    }
    assert_eq!(dec.next_message(), Ok(Some(Message::Pong(3))));
    assert_eq!(dec.next_message(), Ok(None));
    assert!(!dec.in_frame());
}

#[test]
fn oversize_announcements_are_refused_before_the_payload() {
    // 3 GB `inv`: refused as soon as the header is complete, nothing buffered.
    let mut dec = FrameDecoder::new(MAGIC);
    let h = announce(commands::INV, 3_000_000_000);
    dec.push(&h[..HEADER_LEN - 1]);
    assert_eq!(dec.next_frame(), Ok(None));
    dec.push(&h[HEADER_LEN - 1..]);
    let e = dec.next_frame().unwrap_err();
    assert_eq!(
        e,
        FrameError::Oversize {
            offset: 0,
            command: commands::INV,
            length: 3_000_000_000,
            limit: DEFAULT_MAX_PAYLOAD,
        }
    );
    assert!(e.is_fatal());
    assert_eq!(dec.buffered(), 0);
    dec.push(&[0; 4096]);
    assert_eq!(dec.next_frame(), Err(FrameError::Poisoned));

    // Limits are inclusive, per command.
    for (command, limit) in [
        (commands::INV, DEFAULT_MAX_PAYLOAD),
        (commands::PROTOCONF, MAX_PROTOCONF_PAYLOAD),
        (cmd("whatever"), DEFAULT_MAX_PAYLOAD),
    ] {
        let mut dec = FrameDecoder::new(MAGIC);
        dec.push(&announce(command, limit as u32));
        assert_eq!(dec.next_frame(), Ok(None), "{command} at its limit");
        assert!(dec.in_frame());
        assert_eq!(dec.buffered(), 0);
        let mut dec = FrameDecoder::new(MAGIC);
        dec.push(&announce(command, limit as u32 + 1));
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::Oversize {
                offset: 0,
                command,
                length: limit + 1,
                limit
            })
        );
    }

    // An oversize frame after a good one reports its own offset.
    let ping = frame_bytes(&Message::Ping(9));
    let mut dec = FrameDecoder::new(MAGIC);
    dec.push(&ping);
    dec.push(&announce(commands::ADDR, u32::MAX - 1));
    assert_eq!(dec.next_message(), Ok(Some(Message::Ping(9))));
    assert!(matches!(
        dec.next_frame(),
        Err(FrameError::Oversize { offset, length, .. }) if offset == ping.len() as u64 && length == u32::MAX as u64 - 1
    ));

    // Block limits: lower the block limit and a 3 GB block is refused at once too.
    let mut dec = FrameDecoder::with_limits(
        MAGIC,
        Limits {
            max_block_payload: 32 << 20,
            ..Limits::default()
        },
    );
    dec.push(&announce(commands::BLOCK, 3_000_000_000));
    assert_eq!(
        dec.next_frame(),
        Err(FrameError::Oversize {
            offset: 0,
            command: commands::BLOCK,
            length: 3_000_000_000,
            limit: 32 << 20,
        })
    );

    // Extended headers: 5 GiB block over the 4 GiB default, 3 GB inv over 2 MiB.
    for (command, length, limit) in [
        (commands::BLOCK, 5u64 << 30, DEFAULT_MAX_BLOCK_PAYLOAD),
        (commands::INV, 3_000_000_000, DEFAULT_MAX_PAYLOAD),
    ] {
        let mut dec = FrameDecoder::new(MAGIC);
        dec.push(&extended_header(MAGIC, command, length));
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::Oversize {
                offset: 0,
                command,
                length,
                limit
            })
        );
        assert_eq!(dec.buffered(), 0);
    }
}

/// A header announcing a 3 GB block is within the default block limit, so it is accepted, but
/// the decoder's memory follows the bytes that actually arrive, not the announcement.
#[test]
fn announced_size_does_not_drive_memory() {
    for h in [
        announce(commands::BLOCK, 3_000_000_000),
        extended_header(MAGIC, commands::BLOCK, 3_000_000_000).to_vec(),
    ] {
        let mut dec = FrameDecoder::new(MAGIC);
        dec.push(&h);
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.buffered(), 0);
        assert!(dec.in_frame());
        let chunk = [0xabu8; 4096];
        for i in 1..=64 {
            dec.push(&chunk);
            assert_eq!(dec.next_frame(), Ok(None));
            assert_eq!(dec.buffered(), i * chunk.len());
            let cap = dec.buffer_mut().capacity();
            assert!(
                cap <= 4 << 20,
                "capacity {cap} after {} bytes of a 3 GB announcement",
                i * chunk.len()
            );
        }
        assert_eq!(dec.stream_offset(), h.len() as u64);
    }
}

#[test]
fn extended_header_errors() {
    let ping = Message::Ping(5);
    let mut ext = BytesMut::new();
    encode_extended_message(&mut ext, MAGIC, &ping);

    // Not allowed on this stream.
    let mut dec = FrameDecoder::with_limits(
        MAGIC,
        Limits {
            allow_extended: false,
            ..Limits::default()
        },
    );
    let first = frame_bytes(&Message::Verack);
    dec.push(&first);
    dec.push(&ext);
    assert_eq!(dec.next_message(), Ok(Some(Message::Verack)));
    assert_eq!(
        dec.next_frame(),
        Err(FrameError::BadExtended {
            offset: first.len() as u64,
            reason: "extended messages not allowed",
        })
    );

    // The standard length field must be the 0xffffffff mark.
    let mut bad = ext.to_vec();
    bad[16..20].copy_from_slice(&8u32.to_le_bytes());
    let mut dec = FrameDecoder::new(MAGIC);
    dec.push(&bad);
    assert_eq!(
        dec.next_frame(),
        Err(FrameError::BadExtended {
            offset: 0,
            reason: "length field is not 0xffffffff",
        })
    );

    // The inner command must be valid, and not extmsg again.
    for inner in [
        *commands::EXTMSG.as_wire(),
        *b"pi\0ng\0\0\0\0\0\0\0",
        [0; 12],
    ] {
        let mut bad = ext.to_vec();
        bad[24..36].copy_from_slice(&inner);
        let mut dec = FrameDecoder::new(MAGIC);
        dec.push(&first);
        dec.push(&bad);
        assert_eq!(dec.next_message(), Ok(Some(Message::Verack)));
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::BadCommand {
                offset: first.len() as u64 + 24,
                raw: inner
            })
        );
    }

    // An extended header waits for all 44 bytes.
    let mut dec = FrameDecoder::new(MAGIC);
    dec.push(&ext[..EXT_HEADER_LEN - 1]);
    assert_eq!(dec.next_frame(), Ok(None));
    assert_eq!(dec.stream_offset(), 0);
    dec.push(&ext[EXT_HEADER_LEN - 1..]);
    assert_eq!(dec.next_message(), Ok(Some(ping)));
}

#[test]
fn bad_command_bytes_are_fatal() {
    for raw in [
        *b"ve rsion\0\0\0\0",
        *b"ping\0x\0\0\0\0\0\0",
        [0; 12],
        *b"\x7fbad\0\0\0\0\0\0\0\0",
    ] {
        let mut f = MAGIC.0.to_vec();
        f.extend_from_slice(&raw);
        f.extend_from_slice(&[0; 8]);
        let verack = frame_bytes(&Message::Verack);
        let mut dec = FrameDecoder::new(MAGIC);
        dec.push(&verack);
        dec.push(&f);
        assert_eq!(dec.next_message(), Ok(Some(Message::Verack)));
        let e = dec.next_frame().unwrap_err();
        assert_eq!(
            e,
            FrameError::BadCommand {
                offset: HEADER_LEN as u64,
                raw
            }
        );
        assert!(e.is_fatal());
    }
}

fn payload_err(command: Command, payload: &[u8]) -> DecodeError {
    let e = Message::decode(command, Bytes::copy_from_slice(payload)).unwrap_err();
    assert_eq!(e.command, command);
    e.error
}

#[test]
fn payload_errors_report_command_and_offset() {
    // A truncated version payload inside a well-formed frame: a payload error, not fatal, with
    // the frame's offset, the command, and the offset in the payload; the next frame decodes.
    let v = VersionMessage {
        version: 70016,
        services: 1,
        timestamp: 1_700_000_000,
        receiver: NetAddr::new("10.0.0.1:8333".parse().unwrap(), 1),
        sender: NetAddr::new("[2001:db8::1]:8333".parse().unwrap(), 0),
        nonce: 42,
        user_agent: "/bsn:0.1.0/".into(),
        start_height: 800_000,
        relay: Some(true),
        extra: Bytes::new(),
    };
    let full = Message::Version(v).payload();
    let verack = frame_bytes(&Message::Verack);
    let truncated = raw_frame(commands::VERSION, &full[..50]);
    let mut dec = FrameDecoder::new(MAGIC);
    dec.push(&verack);
    dec.push(&truncated);
    dec.push(&frame_bytes(&Message::Ping(1)));
    assert_eq!(dec.next_message(), Ok(Some(Message::Verack)));
    let e = dec.next_message().unwrap_err();
    // version 4 + services 8 + timestamp 8 + receiver 26 = 46: the sender's services need 8
    // bytes, 4 are left.
    assert_eq!(
        e,
        WireError::Payload {
            frame_offset: verack.len() as u64,
            error: PayloadError {
                command: commands::VERSION,
                error: DecodeError {
                    offset: 46,
                    kind: DecodeErrorKind::UnexpectedEnd {
                        needed: 8,
                        available: 4
                    },
                },
            },
        }
    );
    assert!(!e.is_fatal());
    let text = e.to_string();
    assert!(
        text.contains("version") && text.contains("46"),
        "error text names command and offset: {text}"
    );
    assert_eq!(dec.next_message(), Ok(Some(Message::Ping(1))));

    // Trailing bytes after a known message are ignored, as the SV node ignores them; the
    // message says how many bytes it used.
    let m = Message::decode(
        commands::PING,
        Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0, 9]),
    );
    assert_eq!(m, Ok(Message::Ping(1)));
    assert_eq!(m.unwrap().payload_len(), 8);
    assert_eq!(
        Message::decode(commands::VERACK, Bytes::from_static(&[0])),
        Ok(Message::Verack)
    );
    // `mempool` with the SV node's optional age
    assert_eq!(
        Message::decode(commands::MEMPOOL, Bytes::new()),
        Ok(Message::Mempool)
    );
    let aged = Message::decode(
        commands::MEMPOOL,
        Bytes::from_static(&[60, 0, 0, 0, 0, 0, 0, 0]),
    );
    assert_eq!(aged, Ok(Message::MempoolAge(60)));
    assert_eq!(aged.unwrap().payload().len(), 8);
    // Non-canonical compact size.
    let mut inv = vec![0xfd, 0x01, 0x00];
    inv.extend_from_slice(&[0; 36]);
    assert_eq!(
        payload_err(commands::INV, &inv),
        DecodeError {
            offset: 0,
            kind: DecodeErrorKind::NonCanonicalCompactSize
        }
    );
    // Counts over the protocol maxima are refused before reading (or allocating) the items.
    let over = |n: u64| {
        let mut b = BytesMut::new();
        bsn::wire::codec::put_compact_size(&mut b, n);
        b.to_vec()
    };
    for (command, max, what) in [
        (commands::ADDR, MAX_ADDR, "addresses"),
        (commands::HEADERS, MAX_HEADERS, "headers"),
    ] {
        for n in [max + 1, u32::MAX as u64, u64::MAX] {
            assert_eq!(
                payload_err(command, &over(n)),
                DecodeError {
                    offset: 0,
                    kind: DecodeErrorKind::TooMany {
                        what,
                        count: n,
                        max
                    }
                }
            );
        }
    }
    // Inventory counts have no fixed maximum (see
    // inventory_is_bounded_by_the_frame_limit_not_by_50000): only the bytes present bound them.
    for command in [commands::INV, commands::GETDATA, commands::NOTFOUND] {
        for n in [MAX_INV + 1, u32::MAX as u64, u64::MAX] {
            assert_eq!(
                payload_err(command, &over(n)),
                DecodeError {
                    offset: 0,
                    kind: DecodeErrorKind::UnexpectedEnd {
                        needed: n.saturating_mul(36),
                        available: 0
                    }
                }
            );
        }
    }
    let mut loc = 70016u32.to_le_bytes().to_vec();
    loc.extend_from_slice(&over(MAX_LOCATOR + 1));
    assert_eq!(
        payload_err(commands::GETHEADERS, &loc),
        DecodeError {
            offset: 4,
            kind: DecodeErrorKind::TooMany {
                what: "locator hashes",
                count: MAX_LOCATOR + 1,
                max: MAX_LOCATOR
            }
        }
    );
    // A count the remaining bytes cannot hold.
    let mut inv = over(1000);
    inv.extend_from_slice(&[0; 100]);
    assert_eq!(
        payload_err(commands::INV, &inv),
        DecodeError {
            offset: 0,
            kind: DecodeErrorKind::UnexpectedEnd {
                needed: 36_000,
                available: 100
            }
        }
    );
    let mut blk = [0u8; 80].to_vec();
    blk.extend_from_slice(&over(1 << 40));
    blk.extend_from_slice(&[0; 20]);
    assert!(matches!(
        payload_err(commands::BLOCK, &blk),
        DecodeError {
            offset: 80,
            kind: DecodeErrorKind::UnexpectedEnd { .. }
        }
    ));
    // A block without transactions.
    let mut blk = [0u8; 80].to_vec();
    blk.push(0);
    assert_eq!(
        payload_err(commands::BLOCK, &blk).kind,
        DecodeErrorKind::Invalid("block with no transactions")
    );
    // A header in `headers` followed by a non-zero transaction count.
    let mut hdrs = vec![1];
    hdrs.extend_from_slice(&[0; 80]);
    hdrs.push(1);
    assert_eq!(
        payload_err(commands::HEADERS, &hdrs),
        DecodeError {
            offset: 81,
            kind: DecodeErrorKind::Invalid("transaction count in headers (must be 0)")
        }
    );
    // protoconf with zero fields.
    assert_eq!(
        payload_err(commands::PROTOCONF, &[0, 0, 0, 0, 0]),
        DecodeError {
            offset: 0,
            kind: DecodeErrorKind::Invalid("protoconf number of fields (0)")
        }
    );
    // `extmsg` is a framing command, never a payload's.
    assert!(matches!(
        payload_err(commands::EXTMSG, &[]).kind,
        DecodeErrorKind::Invalid(_)
    ));
    // A user agent that is not UTF-8.
    let mut bad_ua = full[..80].to_vec();
    bad_ua.extend_from_slice(&[2, 0xc3, 0x28]);
    bad_ua.extend_from_slice(&[0; 4]);
    assert_eq!(
        payload_err(commands::VERSION, &bad_ua),
        DecodeError {
            offset: 80,
            kind: DecodeErrorKind::InvalidUtf8
        }
    );
    // A witness flag other than 1.
    let tx = [1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0];
    assert_eq!(
        payload_err(commands::TX, &tx),
        DecodeError {
            offset: 4,
            kind: DecodeErrorKind::Invalid("witness flag")
        }
    );
}

/// Strings at their maximum decode; one byte more is refused at the length prefix.
#[test]
fn string_limits_are_exact() {
    let version_with_ua = |ua: &str| {
        let v = VersionMessage {
            version: 70016,
            services: 0,
            timestamp: 0,
            receiver: NetAddr::new("127.0.0.1:1".parse().unwrap(), 0),
            sender: NetAddr::new("127.0.0.1:2".parse().unwrap(), 0),
            nonce: 0,
            user_agent: ua.to_string(),
            start_height: 0,
            relay: None,
            extra: Bytes::new(),
        };
        Message::Version(v)
    };
    let ok = version_with_ua(&"u".repeat(MAX_USER_AGENT as usize));
    assert_eq!(Message::decode(commands::VERSION, ok.payload()), Ok(ok));
    let long = version_with_ua(&"u".repeat(MAX_USER_AGENT as usize + 1));
    assert_eq!(
        payload_err(commands::VERSION, &long.payload()),
        DecodeError {
            offset: 80,
            kind: DecodeErrorKind::TooMany {
                what: "user agent bytes",
                count: MAX_USER_AGENT + 1,
                max: MAX_USER_AGENT
            }
        }
    );

    let reject = |message: usize, reason: usize| {
        Message::Reject(Reject {
            message: "m".repeat(message),
            code: 0x10,
            reason: "r".repeat(reason),
            data: Bytes::from_static(&[7; 32]),
        })
    };
    let ok = reject(MAX_REJECT_COMMAND as usize, MAX_REJECT_REASON as usize);
    assert_eq!(Message::decode(commands::REJECT, ok.payload()), Ok(ok));
    assert!(matches!(
        payload_err(commands::REJECT, &reject(13, 0).payload()),
        DecodeError {
            offset: 0,
            kind: DecodeErrorKind::TooMany { count: 13, .. }
        }
    ));
    assert!(matches!(
        payload_err(commands::REJECT, &reject(12, 112).payload()),
        DecodeError {
            offset: 14,
            kind: DecodeErrorKind::TooMany { count: 112, .. }
        }
    ));

    let p = |len: usize| {
        Message::Protoconf(Protoconf::new(DEFAULT_MAX_PAYLOAD as u32, &"B".repeat(len)))
    };
    let ok = p(MAX_STREAM_POLICIES as usize);
    assert_eq!(Message::decode(commands::PROTOCONF, ok.payload()), Ok(ok));
    assert!(matches!(
        payload_err(
            commands::PROTOCONF,
            &p(MAX_STREAM_POLICIES as usize + 1).payload()
        ),
        DecodeError {
            offset: 5,
            kind: DecodeErrorKind::TooMany { count: 1025, .. }
        }
    ));
}

/// Lists at their protocol maximum decode, through whole frames in large chunks.
#[test]
fn lists_at_their_maximum_decode() {
    let inv: Vec<Inventory> = (0..MAX_INV as u32)
        .map(|i| Inventory {
            kind: InvType::TX,
            hash: Hash256(sha256d(&i.to_le_bytes())),
        })
        .collect();
    let addrs: Vec<TimedNetAddr> = (0..MAX_ADDR as u32)
        .map(|i| TimedNetAddr {
            time: i,
            addr: NetAddr::new((Ipv4Addr::from(i), 8333).into(), 1),
        })
        .collect();
    let headers: Vec<BlockHeader> = (0..MAX_HEADERS as u32)
        .map(|i| BlockHeader {
            version: 4,
            prev_hash: Hash256(sha256d(&i.to_le_bytes())),
            merkle_root: Hash256::ZERO,
            time: i,
            bits: 0x1d00ffff,
            nonce: i,
        })
        .collect();
    let locator = Locator {
        version: 70016,
        hashes: inv
            .iter()
            .take(MAX_LOCATOR as usize)
            .map(|i| i.hash)
            .collect(),
        stop: Hash256::ZERO,
    };
    let msgs = [
        Message::Inv(inv.clone()),
        Message::GetData(inv.clone()),
        Message::NotFound(inv),
        Message::Addr(addrs),
        Message::Headers(headers),
        Message::GetHeaders(locator.clone()),
        Message::GetBlocks(locator),
    ];
    let mut stream = BytesMut::new();
    for m in &msgs {
        assert!(m.payload_len() as u64 <= DEFAULT_MAX_PAYLOAD);
        encode_message(&mut stream, MAGIC, m);
    }
    let mut dec = FrameDecoder::new(MAGIC);
    let got = only_frames(drive(&mut dec, &stream, &[65_536]));
    assert_eq!(got.len(), msgs.len());
    for ((_, f), m) in got.iter().zip(&msgs) {
        assert_eq!(&f.message().unwrap(), m);
    }
}

/// `cmpctblock` and other commands the codec does not decode are kept whole, with the block
/// limit for `cmpctblock`.
#[test]
fn undecoded_commands_are_kept() {
    let payload = Bytes::from_static(b"\x01\x02\x03");
    for name in ["cmpctblock", "getblocktxn", "x", "twelve_chars"] {
        let m = Message::decode(cmd(name), payload.clone()).unwrap();
        assert_eq!(
            m,
            Message::Unknown {
                command: cmd(name),
                payload: payload.clone()
            }
        );
    }
    let limits = Limits::default();
    assert_eq!(
        limits.limit_for(commands::CMPCTBLOCK),
        DEFAULT_MAX_BLOCK_PAYLOAD
    );
    assert_eq!(limits.limit_for(commands::BLOCK), DEFAULT_MAX_BLOCK_PAYLOAD);
    assert_eq!(limits.limit_for(commands::PROTOCONF), MAX_PROTOCONF_PAYLOAD);
    // transactions are held to the SV node's 1 GB transaction limit, not the 2 MiB protoconf one
    assert_eq!(limits.limit_for(commands::TX), 1_000_000_000);
    assert_eq!(limits.limit_for(commands::INV), DEFAULT_MAX_PAYLOAD);
}

/// `version` fields after the start height are optional: without them relay is None; any
/// non-zero relay byte means true, as in the reference node.
#[test]
fn version_optional_tail() {
    let v = VersionMessage {
        version: 70016,
        services: 0x25,
        timestamp: -1,
        receiver: NetAddr::new("1.2.3.4:5".parse().unwrap(), 9),
        sender: NetAddr::new("[::1]:6".parse().unwrap(), 0),
        nonce: u64::MAX,
        user_agent: String::new(),
        start_height: -5,
        relay: None,
        extra: Bytes::new(),
    };
    let base = Message::Version(v.clone()).payload();
    assert_eq!(base.len(), 85);
    for relay_byte in [0u8, 1, 2, 0xff] {
        let mut p = base.to_vec();
        p.push(relay_byte);
        p.extend_from_slice(b"assoc-id");
        let m = Message::decode(commands::VERSION, Bytes::from(p)).unwrap();
        let Message::Version(got) = m else {
            panic!("not a version")
        };
        assert_eq!(got.relay, Some(relay_byte != 0));
        assert_eq!(&got.extra[..], b"assoc-id");
        assert_eq!(got.receiver.socket_addr(), "1.2.3.4:5".parse().unwrap());
    }
    let m = Message::decode(commands::VERSION, base).unwrap();
    assert_eq!(m, Message::Version(v));
}

/// BSV's protoconf lifts the 50,000-entry `inv` / `getdata` limit: once a node has advertised
/// `maxRecvPayloadLength` (bsn advertises 2 MiB), its peers may send as many entries as fit in
/// that payload, 58,254 for 2 MiB (bitcoin-sv-specs p2p/protoconf.md). The count is bounded by
/// the frame limit and the bytes present, not by a fixed maximum.
#[test]
fn inventory_is_bounded_by_the_frame_limit_not_by_50000() {
    let n = ((DEFAULT_MAX_PAYLOAD - 5) / 36) as u32;
    assert_eq!(n, 58_254);
    let inv: Vec<Inventory> = (0..n)
        .map(|i| Inventory {
            kind: InvType::TX,
            hash: Hash256(sha256d(&i.to_le_bytes())),
        })
        .collect();
    for m in [
        Message::Inv(inv.clone()),
        Message::GetData(inv.clone()),
        Message::NotFound(inv.clone()),
    ] {
        assert!(m.payload_len() as u64 <= DEFAULT_MAX_PAYLOAD);
        let mut dec = FrameDecoder::new(MAGIC);
        dec.push(&message_to_bytes(MAGIC, &m));
        let got = dec.next_message();
        assert!(
            matches!(&got, Ok(Some(x)) if *x == m),
            "{} entries refused: {:?}",
            n,
            got.err()
        );
    }
    // One entry more does not fit a 2 MiB frame: the frame limit refuses it.
    let mut big = inv;
    big.push(big[0]);
    let m = Message::Inv(big);
    assert!(m.payload_len() as u64 > DEFAULT_MAX_PAYLOAD);
    let mut dec = FrameDecoder::new(MAGIC);
    dec.push(&message_to_bytes(MAGIC, &m));
    assert!(matches!(
        dec.next_frame(),
        Err(FrameError::Oversize { command, .. }) if command == commands::INV
    ));
}

#[test]
fn big_payloads_go_out_as_their_own_buffer_with_the_same_bytes() {
    use bsn::wire::frame::{encode_message, frame_parts, ZERO_COPY_MIN};
    let magic = Magic([1, 2, 3, 4]);
    let payload = Bytes::from(vec![7u8; ZERO_COPY_MIN + 5]);
    let m = Message::Unknown {
        command: bsn::wire::commands::BLOCK,
        payload: payload.clone(),
    };
    let (h, p) = frame_parts(magic, &m).expect("big enough");
    assert_eq!(p.as_ptr(), payload.as_ptr(), "not copied");
    let mut whole = bytes::BytesMut::new();
    encode_message(&mut whole, magic, &m);
    assert_eq!([&h[..], &p[..]].concat(), &whole[..]);
    let small = Message::Unknown {
        command: bsn::wire::commands::BLOCK,
        payload: Bytes::from_static(b"small"),
    };
    assert!(frame_parts(magic, &small).is_none());
}
