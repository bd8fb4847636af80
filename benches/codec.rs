//! Codec benchmarks: bsn against a baseline measured in the same run.
//!
//! - `block413567_*`: decoding the real 1 MB block 413567 (BTC-era, from Bitcoin Core's own
//!   benchmark data) with bsn's zero-copy `Block::decode_all` vs rust-bitcoin's
//!   `consensus::deserialize::<bitcoin::Block>`; then both again, computing every txid.
//! - `frame_decode_*`: a stream of many small frames (ping; inv with 1 entry; inv with 1000
//!   entries) pushed through `FrameDecoder` in 64 KiB chunks, vs a baseline that only computes
//!   the double-SHA256 checksum of the same payloads (the floor every framer pays), and
//!   rust-bitcoin decoding the same stream as `RawNetworkMessage`s.
//! - `frame_encode_*`: `encode_message` into one reused `BytesMut` vs rust-bitcoin serializing
//!   `RawNetworkMessage`s, and the checksum-only floor.
//!
//! Run (about two minutes):
//!
//! ```text
//! cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3
//! cargo bench --bench codec -- --test        # every benchmark once, as a smoke test
//! ```
//!
//! The data directory is `$BSN_TEST_DATA`, else `<crate>/../shared/data`. Without
//! `bitcoin-core-bench/block413567.raw` in it (or with `BSN_BENCH_SYNTHETIC=1`) the block
//! benchmarks run on a synthetic ~1 MB block built here, and say so loudly.
//!
//! At the end of a measuring run the bench prints a table of ratios bsn vs baseline, read back
//! from criterion's estimates of this run.
//!
//! Measured on the 2-core dev machine (Xeon with SHA-NI, shared with other builds, load 2-5, so
//! expect ±20% between runs), two runs, mean per iteration:
//!
//! ```text
//! block 413567 (999,887 B, 1557 txs)   bsn            rust-bitcoin      baseline/bsn
//!   decode                             145 / 135 µs   1.13 / 1.74 ms    7.8x / 12.9x
//!   decode + all txids                 1.17 / 1.79 ms 2.55 / 3.05 ms    2.2x / 1.7x
//! frame decode, per message            next_frame  next_message  checksum only  rust-bitcoin
//!   ping     (10,000)                  277/266 ns  342/421 ns    185/179 ns     281/291 ns
//!   inv 1    (10,000)                  261/250 ns  358/343 ns    193/195 ns     405/376 ns
//!   inv 1000 (100)                     29.6/27.6µs 34.3/33.0 µs  27.6/25.1 µs   79.7/73.2 µs
//! frame encode, per message            encode_message  checksum only  rb new+encode  rb serialize*
//!   ping                               193/196 ns      193/184 ns     249/286 ns     88/76 ns
//!   inv 1                              197/198 ns      195/186 ns     266/232 ns     210/165 ns
//!   inv 1000                           31.4/29.7 µs    26.6/25.8 µs   52.1/46.5 µs   6.9/6.4 µs
//! ```
//!
//! (*) `serialize` of a prebuilt `RawNetworkMessage` does not hash: its checksum was computed when
//! it was built. A profile of `next_message` on pings shows ~55% in SHA-256 and no allocator; the
//! rest is `Bytes` refcounting (split/clone/drop) and header bookkeeping.

use bitcoin::consensus::encode::{deserialize, deserialize_partial, serialize, Encodable};
use bitcoin::hashes::Hash as _;
use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
use bitcoin::p2p::message_blockdata::Inventory as BtcInventory;
use bitcoin::p2p::Magic as BtcMagic;
use bsn::wire::hash::checksum;
use bsn::wire::{
    encode_message, Block, BlockHeader, Decode, FrameDecoder, Hash256, InvType, Inventory, Magic,
    Message, OutPoint, Transaction,
};
use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// BSV regtest magic (any magic works; both codecs are given the same).
const MAGIC: Magic = Magic([0xda, 0xb5, 0xbf, 0xfa]);
/// Bytes handed to the decoder per `push`, like one socket read.
const CHUNK: usize = 64 * 1024;

fn data_dir() -> PathBuf {
    match std::env::var_os("BSN_TEST_DATA") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
    }
}

/// The block to decode: the real block 413567, or a synthetic one of about the same size.
fn load_block() -> (Bytes, String) {
    let path = data_dir().join("bitcoin-core-bench/block413567.raw");
    let forced = std::env::var_os("BSN_BENCH_SYNTHETIC").is_some();
    match std::fs::read(&path) {
        Ok(b) if !forced => (
            Bytes::from(b),
            format!("real block 413567 ({})", path.display()),
        ),
        r => {
            let why = match r {
                Ok(_) => "BSN_BENCH_SYNTHETIC is set".to_string(),
                Err(e) => format!("{} not readable: {e}", path.display()),
            };
            eprintln!();
            eprintln!("==================================================================");
            eprintln!("!!! block413567.raw NOT USED: {why}");
            eprintln!("!!! block benchmarks run on a SYNTHETIC ~1 MB block instead");
            eprintln!("==================================================================");
            eprintln!();
            (
                synthetic_block().raw().clone(),
                "SYNTHETIC ~1 MB block".to_string(),
            )
        }
    }
}

/// A deterministic ~1 MB block of 2-in/2-out P2PKH-like transactions.
fn synthetic_block() -> Block {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut fill = |n: usize| -> Vec<u8> { (0..n).map(|_| next() as u8).collect() };
    let mut txs = Vec::new();
    let mut size = 0;
    while size < 1_000_000 {
        let sigs = [fill(107), fill(107)];
        let ins: Vec<(OutPoint, &[u8], u32)> = sigs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let op = OutPoint {
                    txid: Hash256(fill(32).try_into().unwrap()),
                    vout: i as u32,
                };
                (op, s.as_slice(), 0xffff_ffff)
            })
            .collect();
        let pks = [fill(25), fill(25)];
        let outs: Vec<(i64, &[u8])> = pks.iter().map(|p| (5_000, p.as_slice())).collect();
        let tx = Transaction::build(1, &ins, &outs, 0);
        size += tx.raw().len();
        txs.push(tx);
    }
    let header = BlockHeader {
        version: 4,
        prev_hash: Hash256([1; 32]),
        merkle_root: Hash256::ZERO,
        time: 1_462_000_000,
        bits: 0x1806_b99f,
        nonce: 7,
    };
    Block::new(header, txs)
}

fn bench_block(c: &mut Criterion) {
    let (raw, what) = load_block();
    eprintln!("block benchmarks: {what}, {} bytes", raw.len());
    // Both decoders must agree before anything is timed.
    let ours = Block::decode_all(raw.clone()).expect("bsn decodes the block");
    let theirs: bitcoin::Block = deserialize(&raw).expect("rust-bitcoin decodes the block");
    assert_eq!(ours.txs.len(), theirs.txdata.len());
    for (a, b) in ours.txs.iter().zip(&theirs.txdata) {
        assert_eq!(a.txid().0, b.compute_txid().to_byte_array());
    }
    eprintln!("block benchmarks: {} transactions", ours.txs.len());

    let mut g = c.benchmark_group("block413567_decode");
    g.throughput(Throughput::Bytes(raw.len() as u64));
    g.bench_function("bsn_decode", |b| {
        b.iter(|| Block::decode_all(black_box(raw.clone())).unwrap())
    });
    g.bench_function("rust_bitcoin_deserialize", |b| {
        b.iter(|| deserialize::<bitcoin::Block>(black_box(&raw[..])).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("block413567_decode_txids");
    g.throughput(Throughput::Bytes(raw.len() as u64));
    g.bench_function("bsn_decode_txids", |b| {
        b.iter(|| {
            let blk = Block::decode_all(black_box(raw.clone())).unwrap();
            let ids: Vec<Hash256> = blk.txs.iter().map(|t| t.txid()).collect();
            (blk, ids)
        })
    });
    g.bench_function("rust_bitcoin_deserialize_txids", |b| {
        b.iter(|| {
            let blk = deserialize::<bitcoin::Block>(black_box(&raw[..])).unwrap();
            let ids: Vec<bitcoin::Txid> = blk.txdata.iter().map(|t| t.compute_txid()).collect();
            (blk, ids)
        })
    });
    g.finish();
}

/// One kind of small message, `count` of them.
struct Workload {
    name: &'static str,
    msgs: Vec<Message>,
}

fn inv(n: usize, salt: u32) -> Vec<Inventory> {
    (0..n)
        .map(|i| {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&(i as u32).to_le_bytes());
            h[4..8].copy_from_slice(&salt.to_le_bytes());
            h[31] = 0xab;
            Inventory {
                kind: InvType::TX,
                hash: Hash256(h),
            }
        })
        .collect()
}

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "ping",
            msgs: (0..10_000u64)
                .map(|i| Message::Ping(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
                .collect(),
        },
        Workload {
            name: "inv1",
            msgs: (0..10_000).map(|i| Message::Inv(inv(1, i))).collect(),
        },
        Workload {
            name: "inv1000",
            msgs: (0..100).map(|i| Message::Inv(inv(1000, i))).collect(),
        },
    ]
}

fn to_btc(m: &Message) -> NetworkMessage {
    match m {
        Message::Ping(n) => NetworkMessage::Ping(*n),
        Message::Inv(v) => NetworkMessage::Inv(
            v.iter()
                .map(|i| {
                    assert_eq!(i.kind, InvType::TX);
                    BtcInventory::Transaction(bitcoin::Txid::from_byte_array(i.hash.0))
                })
                .collect(),
        ),
        _ => unreachable!("only ping and inv are benchmarked"),
    }
}

/// Decodes the whole stream with `FrameDecoder::next_frame`, pushed in `CHUNK`-byte reads.
fn frames(stream: &[u8]) -> usize {
    let mut d = FrameDecoder::new(MAGIC);
    let mut n = 0;
    for c in stream.chunks(CHUNK) {
        d.push(c);
        while let Some(f) = d.next_frame().unwrap() {
            black_box(&f);
            n += 1;
        }
    }
    n
}

/// Same with `next_message` (frame and payload decoded).
fn messages(stream: &[u8]) -> usize {
    let mut d = FrameDecoder::new(MAGIC);
    let mut n = 0;
    for c in stream.chunks(CHUNK) {
        d.push(c);
        while let Some(m) = d.next_message().unwrap() {
            black_box(&m);
            n += 1;
        }
    }
    n
}

/// rust-bitcoin decoding the same stream, one `RawNetworkMessage` after the other.
fn btc_messages(stream: &[u8]) -> usize {
    let (mut pos, mut n) = (0, 0);
    while pos < stream.len() {
        let (m, used): (RawNetworkMessage, usize) = deserialize_partial(&stream[pos..]).unwrap();
        black_box(&m);
        pos += used;
        n += 1;
    }
    n
}

fn bench_framing(c: &mut Criterion) {
    let btc_magic = BtcMagic::from_bytes(MAGIC.0);
    for w in workloads() {
        let n = w.msgs.len();
        let mut stream = BytesMut::new();
        let mut payloads = Vec::with_capacity(n);
        for m in &w.msgs {
            let start = stream.len() + 24;
            encode_message(&mut stream, MAGIC, m);
            payloads.push(start..stream.len());
        }
        let stream = stream.freeze();
        // Same bytes from both encoders, and every decoder sees every message.
        let btc_raws: Vec<RawNetworkMessage> = w
            .msgs
            .iter()
            .map(|m| RawNetworkMessage::new(btc_magic, to_btc(m)))
            .collect();
        let btc_stream: Vec<u8> = btc_raws.iter().flat_map(serialize).collect();
        assert_eq!(
            &stream[..],
            &btc_stream[..],
            "{}: encoders disagree",
            w.name
        );
        assert_eq!(frames(&stream), n);
        assert_eq!(messages(&stream), n);
        assert_eq!(btc_messages(&stream), n);
        eprintln!(
            "frame benchmarks {}: {n} messages, {} bytes of stream",
            w.name,
            stream.len()
        );

        let mut g = c.benchmark_group(format!("frame_decode_{}", w.name));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("bsn_next_frame", |b| b.iter(|| frames(black_box(&stream))));
        g.bench_function("bsn_next_message", |b| {
            b.iter(|| messages(black_box(&stream)))
        });
        g.bench_function("checksum_only", |b| {
            b.iter(|| {
                for p in &payloads {
                    black_box(checksum(black_box(&stream[p.clone()])));
                }
            })
        });
        g.bench_function("rust_bitcoin_deserialize", |b| {
            b.iter(|| btc_messages(black_box(&stream)))
        });
        g.finish();

        let mut g = c.benchmark_group(format!("frame_encode_{}", w.name));
        g.throughput(Throughput::Elements(n as u64));
        let mut buf = BytesMut::with_capacity(stream.len());
        g.bench_function("bsn_encode_message", |b| {
            b.iter(|| {
                buf.clear();
                for m in &w.msgs {
                    encode_message(&mut buf, MAGIC, black_box(m));
                }
                black_box(buf.len())
            })
        });
        g.bench_function("checksum_only", |b| {
            b.iter(|| {
                for p in &payloads {
                    black_box(checksum(black_box(&stream[p.clone()])));
                }
            })
        });
        // The API the brief names: `serialize` of a ready `RawNetworkMessage`. Its checksum was
        // computed when it was built, so this measures header + payload copying only (and a
        // fresh Vec per message).
        g.bench_function("rust_bitcoin_serialize_prebuilt", |b| {
            b.iter(|| {
                for r in &btc_raws {
                    black_box(serialize(black_box(r)));
                }
            })
        });
        // The like-for-like one: build the message (which computes the checksum) and encode it
        // into one reused Vec. Includes cloning the payload into the message.
        let btc_payloads: Vec<NetworkMessage> = w.msgs.iter().map(to_btc).collect();
        let mut out: Vec<u8> = Vec::with_capacity(stream.len());
        g.bench_function("rust_bitcoin_new_and_encode", |b| {
            b.iter(|| {
                out.clear();
                for p in &btc_payloads {
                    let r = RawNetworkMessage::new(btc_magic, black_box(p).clone());
                    r.consensus_encode(&mut out).unwrap();
                }
                black_box(out.len())
            })
        });
        g.finish();
    }
}

/// Criterion's output directory, found the way criterion 0.5 finds it.
fn criterion_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(d);
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t).join("criterion"),
        None => PathBuf::from("target/criterion"),
    }
}

/// Mean time per iteration (ns) that criterion estimated for `group/function` in this run.
fn mean_ns(group: &str, function: &str, since: SystemTime) -> Option<f64> {
    let f = criterion_dir()
        .join(group)
        .join(function)
        .join("new/estimates.json");
    if std::fs::metadata(&f).ok()?.modified().ok()? < since {
        return None; // left over from an earlier run
    }
    let s = std::fs::read_to_string(&f).ok()?;
    let rest = &s[s.find("\"mean\"")?..];
    let rest = &rest[rest.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

fn fmt_ns(ns: f64) -> String {
    match ns {
        x if x >= 1e6 => format!("{:.3} ms", x / 1e6),
        x if x >= 1e3 => format!("{:.3} µs", x / 1e3),
        x => format!("{x:.1} ns"),
    }
}

/// Prints bsn vs baseline for every pair measured in this run.
fn print_ratios(since: SystemTime) {
    let mut pairs: Vec<(String, &str, &str)> = vec![
        (
            "block413567_decode".into(),
            "bsn_decode",
            "rust_bitcoin_deserialize",
        ),
        (
            "block413567_decode_txids".into(),
            "bsn_decode_txids",
            "rust_bitcoin_deserialize_txids",
        ),
    ];
    for w in ["ping", "inv1", "inv1000"] {
        let d = format!("frame_decode_{w}");
        pairs.push((d.clone(), "bsn_next_frame", "checksum_only"));
        pairs.push((d.clone(), "bsn_next_message", "checksum_only"));
        pairs.push((d.clone(), "bsn_next_message", "rust_bitcoin_deserialize"));
        let e = format!("frame_encode_{w}");
        pairs.push((e.clone(), "bsn_encode_message", "checksum_only"));
        pairs.push((
            e.clone(),
            "bsn_encode_message",
            "rust_bitcoin_serialize_prebuilt",
        ));
        pairs.push((e, "bsn_encode_message", "rust_bitcoin_new_and_encode"));
    }
    let mut lines = Vec::new();
    for (g, ours, base) in &pairs {
        if let (Some(a), Some(b)) = (mean_ns(g, ours, since), mean_ns(g, base, since)) {
            lines.push(format!(
                "{g:<26} {ours:<18} {:>12}  vs {base:<31} {:>12}  bsn/baseline time {:>6.2}  (baseline/bsn {:>6.2}x)",
                fmt_ns(a),
                fmt_ns(b),
                a / b,
                b / a
            ));
        }
    }
    if lines.is_empty() {
        eprintln!("(no ratios: nothing was measured in this run, e.g. --test mode)");
        return;
    }
    println!();
    println!("bsn vs baseline, mean time per iteration, same run:");
    for l in lines {
        println!("{l}");
    }
}

fn main() {
    let since = SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    bench_block(&mut c);
    bench_framing(&mut c);
    c.final_summary();
    print_ratios(since);
}
