//! Real chain data: mainnet (and some testnet and BSV) blocks, transactions and header files,
//! decoded by bsn and checked against known hashes, against rust-bitcoin 0.32 (test oracle), and
//! against the data's own consistency (merkle roots, links, proof of work, chain work). Every
//! block also goes through a `block` frame and the streaming decoder, 1 byte and 4096 bytes at a
//! time.
//!
//! The data lives outside the repository: `$BSN_TEST_DATA` if set, else
//! `<CARGO_MANIFEST_DIR>/../shared/data` (see its README.md). When it is absent each test says so
//! on stderr (uncaptured) and passes; when it is present, a missing file is a failure.

mod common;
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bsn::wire::block::merkle_root;
use bsn::wire::frame::message_to_bytes;
use bsn::wire::{
    Block, BlockHeader, Decode, FrameDecoder, Hash256, Magic, Message, Transaction, U256,
};
use bsn::Network;
use bytes::Bytes;
use common::data_dir;
use std::collections::BTreeMap;
use std::path::Path;

const MAGIC: Magic = Magic([0xe3, 0xe1, 0xf3, 0xe8]);

// ---------------------------------------------------------------------------------------------
// Finding the data.
// ---------------------------------------------------------------------------------------------

/// Reads a data file; the data set is present, so a missing file is an error.
fn read(dir: &Path, rel: &str) -> Vec<u8> {
    let p = dir.join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn read_text(dir: &Path, rel: &str) -> String {
    String::from_utf8(read(dir, rel)).expect("text file")
}

fn hash(s: &str) -> Hash256 {
    s.parse().expect("hash hex")
}

/// `blk*.dat` records: disk magic, u32 LE length, raw block.
fn blk_records(data: &[u8]) -> Vec<&[u8]> {
    let disk = Network::Mainnet.params().disk_magic.0;
    assert_eq!(disk, [0xf9, 0xbe, 0xb4, 0xd9]);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        assert!(pos + 8 <= data.len(), "record header cut at {pos}");
        assert_eq!(data[pos..pos + 4], disk, "disk magic at {pos}");
        let len = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let start = pos + 8;
        assert!(
            start + len <= data.len(),
            "record at {pos} runs past the end"
        );
        out.push(&data[start..start + len]);
        pos = start + len;
    }
    out
}

/// The BIP34 height in a coinbase script: a push of 1 to 8 bytes, little-endian.
fn bip34_height(b: &Block) -> u64 {
    let coinbase = b.txs[0].inputs().next().expect("coinbase input");
    let s = coinbase.script_sig;
    let n = s[0] as usize;
    assert!((1..=8).contains(&n), "coinbase height push of {n} bytes");
    s[1..1 + n]
        .iter()
        .rev()
        .fold(0u64, |acc, x| acc << 8 | *x as u64)
}

// ---------------------------------------------------------------------------------------------
// Checks shared by every block and header.
// ---------------------------------------------------------------------------------------------

fn same_header(ours: &BlockHeader, theirs: &bitcoin::block::Header) {
    assert_eq!(ours.version, theirs.version.to_consensus());
    assert_eq!(ours.prev_hash.0, theirs.prev_blockhash.to_byte_array());
    assert_eq!(ours.merkle_root.0, theirs.merkle_root.to_byte_array());
    assert_eq!(ours.time, theirs.time);
    assert_eq!(ours.bits, theirs.bits.to_consensus());
    assert_eq!(ours.nonce, theirs.nonce);
    assert_eq!(ours.hash().0, theirs.block_hash().to_byte_array());
    assert_eq!(
        ours.target().expect("valid bits").to_be_bytes(),
        theirs.target().to_be_bytes()
    );
    assert_eq!(ours.work().to_be_bytes(), theirs.work().to_be_bytes());
    assert!(ours.meets_own_target(), "{} misses its target", ours.hash());
    assert!(theirs.validate_pow(theirs.target()).is_ok());
}

/// Decodes one raw block and checks it against rust-bitcoin and against itself; returns it.
fn check_block(name: &str, raw: &[u8]) -> Block {
    let ours = Block::decode_all(Bytes::copy_from_slice(raw))
        .unwrap_or_else(|e| panic!("{name}: bsn cannot decode: {e}"));
    assert_eq!(&ours.raw()[..], raw, "{name}: raw bytes kept");
    let theirs: bitcoin::Block = deserialize(raw).expect("rust-bitcoin decodes");
    same_header(&ours.header, &theirs.header);
    assert_eq!(ours.txs.len(), theirs.txdata.len(), "{name}: tx count");
    let mut offset = 80 + bsn::wire::codec::compact_size_len(ours.txs.len() as u64);
    for (i, (a, b)) in ours.txs.iter().zip(&theirs.txdata).enumerate() {
        assert_eq!(
            a.txid().0,
            b.compute_txid().to_byte_array(),
            "{name}: txid {i}"
        );
        assert_eq!(
            a.wtxid().0,
            b.compute_wtxid().to_byte_array(),
            "{name}: wtxid {i}"
        );
        let b_witness = b.input.iter().any(|i| !i.witness.is_empty());
        assert_eq!(a.has_witness(), b_witness, "{name}: witness of tx {i}");
        assert_eq!(a.input_count(), b.input.len());
        assert_eq!(a.output_count(), b.output.len());
        assert_eq!(a.version(), b.version.0);
        assert_eq!(a.lock_time(), b.lock_time.to_consensus_u32());
        for (x, y) in a.outputs().zip(&b.output) {
            assert_eq!(x.value as u64, y.value.to_sat());
            assert_eq!(x.script_pubkey, y.script_pubkey.as_bytes());
        }
        for (x, y) in a.inputs().zip(&b.input) {
            assert_eq!(x.prev_out.txid.0, y.previous_output.txid.to_byte_array());
            assert_eq!(x.prev_out.vout, y.previous_output.vout);
            assert_eq!(x.script_sig, y.script_sig.as_bytes());
            assert_eq!(x.sequence, y.sequence.0);
        }
        // Zero copy: each transaction is the slice of the block where it sits; read in place,
        // its extent and id are the same (what `Engine::block_txids` uses).
        assert_eq!(&raw[offset..offset + a.raw().len()], &a.raw()[..]);
        assert_eq!(
            bsn::wire::tx::tx_extent(&raw[offset..]),
            Some((a.raw().len(), a.txid())),
            "{name}: tx {i} read in place"
        );
        assert_eq!(a.raw().len(), serialize(b).len());
        offset += a.raw().len();
    }
    assert_eq!(offset, raw.len());

    assert_eq!(
        ours.compute_merkle_root(),
        ours.header.merkle_root,
        "{name}: merkle root"
    );
    assert!(theirs.check_merkle_root());
    if ours.txs.iter().any(Transaction::has_witness) {
        // BIP141 witness root: the coinbase's wtxid counts as zero.
        let mut w: Vec<Hash256> = ours.txs.iter().map(Transaction::wtxid).collect();
        w[0] = Hash256::ZERO;
        assert_eq!(
            merkle_root(w).0,
            theirs.witness_root().expect("txs").to_byte_array(),
            "{name}: witness root"
        );
        assert!(theirs.check_witness_commitment(), "{name}: commitment");
    }
    // Streamed in pieces (how a block bigger than the file threshold is checked on its way to
    // disk): the same ids, root, size and checksum.
    for piece in [1usize, 1000, 65536] {
        let mut s = bsn::wire::stream::BlockStream::new(true);
        let mut ids = Vec::new();
        for c in raw.chunks(piece) {
            s.feed(c, &mut |id| ids.push(id))
                .unwrap_or_else(|e| panic!("{name}: streamed in {piece}: {e}"));
        }
        let sum = s
            .finish()
            .unwrap_or_else(|e| panic!("{name}: streamed: {e}"));
        assert_eq!(
            ids,
            ours.txs.iter().map(Transaction::txid).collect::<Vec<_>>()
        );
        assert_eq!((sum.hash, sum.size), (ours.hash(), raw.len() as u64));
        assert_eq!(sum.checksum, Some(bsn::wire::hash::checksum(raw)));
    }
    through_frames(name, &Message::Block(ours.clone()));
    ours
}

/// Puts `msg` in a frame and decodes it with the streaming decoder, 1 byte and 4096 bytes at a
/// time: one message, returned with the frame's last byte.
fn through_frames(name: &str, msg: &Message) {
    let bytes = message_to_bytes(MAGIC, msg);
    for chunk in [1, 4096] {
        let mut dec = FrameDecoder::new(MAGIC);
        let mut got = Vec::new();
        let pieces = bytes.len().div_ceil(chunk);
        for (i, piece) in bytes.chunks(chunk).enumerate() {
            dec.push(piece);
            // One frame in the stream: at most one message and then a request for more.
            for _ in 0..2 {
                match dec.next_message() {
                    Ok(Some(m)) => {
                        assert_eq!(i, pieces - 1, "{name}: message before its last byte");
                        got.push(m);
                    }
                    Ok(None) => break,
                    Err(e) => panic!("{name}: {e}"),
                }
            }
        }
        assert_eq!(got.len(), 1, "{name}: one message in {chunk}-byte chunks");
        assert!(
            &got[0] == msg,
            "{name}: same message in {chunk}-byte chunks"
        );
        assert!(!dec.in_frame());
    }
}

/// Checks a header file: 80-byte headers that link and meet their targets, equal to
/// rust-bitcoin's reading; and the same headers through `headers` messages. Returns them.
fn check_header_file(name: &str, data: &[u8], count: usize) -> Vec<BlockHeader> {
    assert_eq!(data.len(), count * 80, "{name}: {count} headers");
    let headers: Vec<BlockHeader> = data
        .chunks_exact(80)
        .map(|c| BlockHeader::from_array(c.try_into().unwrap()))
        .collect();
    for (i, (h, raw)) in headers.iter().zip(data.chunks_exact(80)).enumerate() {
        assert_eq!(&h.to_array()[..], raw);
        let theirs: bitcoin::block::Header = deserialize(raw).unwrap();
        same_header(h, &theirs);
        if i > 0 {
            assert_eq!(h.prev_hash, headers[i - 1].hash(), "{name}: link at {i}");
        }
    }
    // As `headers` messages of at most 2000, one stream, in 4096-byte chunks.
    let msgs: Vec<Message> = headers
        .chunks(2000)
        .map(|c| Message::Headers(c.to_vec()))
        .collect();
    let mut stream = Vec::new();
    for m in &msgs {
        stream.extend_from_slice(&message_to_bytes(MAGIC, m));
    }
    let mut dec = FrameDecoder::new(MAGIC);
    let mut got = Vec::new();
    for piece in stream.chunks(4096) {
        dec.push(piece);
        for _ in 0..=msgs.len() {
            match dec.next_message().expect("headers frame") {
                Some(m) => got.push(m),
                None => break,
            }
        }
    }
    assert_eq!(got, msgs, "{name}: headers messages");
    headers
}

/// Heights (from `first_height`) at which `bits` changes must be retarget heights.
fn check_retargets_only_every_2016(name: &str, headers: &[BlockHeader], first_height: u64) {
    for (i, w) in headers.windows(2).enumerate() {
        let height = first_height + i as u64 + 1;
        if w[1].bits != w[0].bits {
            assert_eq!(height % 2016, 0, "{name}: bits change at {height}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Blocks.
// ---------------------------------------------------------------------------------------------

#[test]
fn block_413567() {
    let Some(dir) = data_dir("block_413567") else {
        return;
    };
    let raw = read(&dir, "bitcoin-core-bench/block413567.raw");
    assert_eq!(raw.len(), 999_887);
    let b = check_block("block413567", &raw);
    assert_eq!(
        b.hash(),
        hash("0000000000000000025aff8be8a55df8f89c77296db6198f272d6577325d4069")
    );
    assert_eq!(b.txs.len(), 1557);
    assert_eq!(bip34_height(&b), 413_567);
    assert!(!b.txs.iter().any(Transaction::has_witness), "pre-segwit");
}

#[test]
fn btcd_genesis_and_test_chain() {
    let Some(dir) = data_dir("btcd_genesis_and_test_chain") else {
        return;
    };
    let data = read(&dir, "btcd/blk_0_to_4.dat");
    let records = blk_records(&data);
    assert_eq!(records.len(), 5);
    let blocks: Vec<Block> = records
        .iter()
        .enumerate()
        .map(|(i, r)| check_block(&format!("blk_0_to_4 #{i}"), r))
        .collect();
    let params = Network::Mainnet.params();
    assert_eq!(blocks[0].header, params.genesis);
    assert_eq!(
        blocks[0].hash(),
        hash("000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f")
    );
    assert_eq!(blocks[0].hash(), params.genesis_hash());
    assert_eq!(blocks[0].header.prev_hash, Hash256::ZERO);
    for w in blocks.windows(2) {
        assert_eq!(w[1].header.prev_hash, w[0].hash());
    }
    // The side chain 3A, 4A, 5A forks from block 2.
    let mut prev = blocks[2].hash();
    for f in ["btcd/blk_3A.dat", "btcd/blk_4A.dat", "btcd/blk_5A.dat"] {
        let data = read(&dir, f);
        let r = blk_records(&data);
        assert_eq!(r.len(), 1);
        let b = check_block(f, r[0]);
        assert_eq!(b.header.prev_hash, prev, "{f} links");
        prev = b.hash();
    }
}

#[test]
fn btcd_blocks_1_to_255_link_from_genesis() {
    let Some(dir) = data_dir("btcd_blocks_1_to_255_link_from_genesis") else {
        return;
    };
    let data = read(&dir, "btcd/blocks1-256.dat");
    let records = blk_records(&data);
    assert_eq!(records.len(), 255);
    let mut prev = Network::Mainnet.params().genesis.hash();
    let mut stream = Vec::new();
    let mut blocks = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let b = check_block(&format!("block {}", i + 1), r);
        assert_eq!(b.header.prev_hash, prev, "block {} links", i + 1);
        prev = b.hash();
        stream.extend_from_slice(&message_to_bytes(MAGIC, &Message::Block(b.clone())));
        blocks.push(b);
    }
    assert_eq!(
        blocks[0].hash(),
        hash("00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048")
    );
    // All 255 as one stream of frames, one byte at a time.
    let mut dec = FrameDecoder::new(MAGIC);
    let mut got = Vec::new();
    for byte in stream.chunks(1) {
        dec.push(byte);
        if let Some(m) = dec.next_message().expect("block frame") {
            got.push(m);
        }
    }
    assert_eq!(got.len(), blocks.len());
    for (m, b) in got.iter().zip(&blocks) {
        assert!(matches!(m, Message::Block(x) if x == b));
    }

    // Their headers equal the btcd header list (1..11), nakamoto's (1..1111) and VeriBlock's.
    let text = read_text(&dir, "btcd/blockheaders-mainnet-1-11.txt");
    let listed: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(listed.len(), 11);
    for (l, b) in listed.iter().zip(&blocks) {
        assert_eq!(hex::decode(l.trim()).unwrap(), b.header.to_array());
    }
    let nakamoto = read(&dir, "nakamoto/headers.bin");
    let veriblock = read(
        &dir,
        "veriblock-headers/btc_blockheaders_mainnet_0_10000.bin",
    );
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(nakamoto[i * 80..i * 80 + 80], b.header.to_array());
        assert_eq!(veriblock[(i + 1) * 80..(i + 2) * 80], b.header.to_array());
    }
}

/// Segwit-era and other real blocks: txids and wtxids equal to rust-bitcoin's, merkle and
/// witness roots, heights from BIP34, and hashes from the file names.
#[test]
fn segwit_and_other_real_blocks() {
    let Some(dir) = data_dir("segwit_and_other_real_blocks") else {
        return;
    };
    // (file, hash, tx count, BIP34 height)
    let raw_blocks: [(&str, &str, Option<usize>, Option<u64>); 8] = [
        (
            "btcd/block-0000000000000000001602407ac49862a7bca9d00f7f402db20b7be2f5de59d2.blk",
            "0000000000000000001602407ac49862a7bca9d00f7f402db20b7be2f5de59d2",
            Some(3315),
            Some(574_200),
        ),
        (
            "btcd/block-00000000000000000021868c2cefc52a480d173c849412fe81c4e5ab806f94ab.blk",
            "00000000000000000021868c2cefc52a480d173c849412fe81c4e5ab806f94ab",
            Some(230),
            Some(540_107),
        ),
        (
            "rust-bitcoin/mainnet_block_000000000000000000000c835b2adcaedc20fdf6ee440009c249452c726dafae.raw",
            "000000000000000000000c835b2adcaedc20fdf6ee440009c249452c726dafae",
            Some(2500),
            Some(702_861),
        ),
        (
            "rust-bitcoin/testnet_block_000000000000045e0b1660b6445b5e5c5ab63c9a4f956be7e1e69be04fa4497b.raw",
            "000000000000045e0b1660b6445b5e5c5ab63c9a4f956be7e1e69be04fa4497b",
            None,
            Some(924_634),
        ),
        (
            "teranode-bsv/0000000000000000015594853418b4093c4be4ad8b77fec88b5400feb3268fc4.bin",
            "0000000000000000015594853418b4093c4be4ad8b77fec88b5400feb3268fc4",
            None,
            None,
        ),
        (
            "teranode-bsv/00000000000000000488eecd93d6f3767b1ba38668200a6a5349af2e0d4fad3f.bin",
            "00000000000000000488eecd93d6f3767b1ba38668200a6a5349af2e0d4fad3f",
            None,
            None,
        ),
        (
            "teranode-bsv/000000000000000009631dd3dd7357675d8a1f8925be5e7851c68255531ac5fb.bin",
            "000000000000000009631dd3dd7357675d8a1f8925be5e7851c68255531ac5fb",
            None,
            None,
        ),
        (
            "teranode-bsv/00000000000000000ad4cd15bbeaf6cb4583c93e13e311f9774194aadea87386.bin",
            "00000000000000000ad4cd15bbeaf6cb4583c93e13e311f9774194aadea87386",
            None,
            None,
        ),
    ];
    let mut teranode_heights = Vec::new();
    let mut witness_blocks = 0;
    for (file, h, txs, height) in raw_blocks {
        let b = check_block(file, &read(&dir, file));
        assert_eq!(b.hash(), hash(h), "{file}");
        if let Some(n) = txs {
            assert_eq!(b.txs.len(), n, "{file}");
        }
        match height {
            Some(height) => assert_eq!(bip34_height(&b), height, "{file}"),
            None => teranode_heights.push(bip34_height(&b)),
        }
        witness_blocks += b.txs.iter().any(Transaction::has_witness) as usize;
    }
    teranode_heights.sort_unstable();
    assert_eq!(teranode_heights, [367_495, 379_389, 384_188, 384_189]);
    assert!(witness_blocks >= 3, "the segwit blocks carry witnesses");

    // ckb-bitcoin-spv: block 830000 and the 8 consecutive blocks 831328..=831335.
    let mut prev: Option<Hash256> = None;
    for height in std::iter::once(830_000).chain(831_328..=831_335) {
        let file = format!("ckb-bitcoin-spv/blocks/{height:07}.bin");
        let b = check_block(&file, &read(&dir, &file));
        assert_eq!(bip34_height(&b), height, "{file}");
        assert!(b.txs.iter().any(Transaction::has_witness), "{file}");
        if height > 831_328 {
            assert_eq!(Some(b.header.prev_hash), prev, "{file} links");
        }
        prev = Some(b.hash());
    }

    // btcd 277647 (a blk record) and rust-bitcoin's block 13b8a (hex).
    let data = read(&dir, "btcd/277647.dat");
    let r = blk_records(&data);
    assert_eq!(r.len(), 1);
    let b = check_block("277647", r[0]);
    assert_eq!(
        b.hash(),
        hash("0000000000000000054a714e580b16c583701712ab91060e92dbde6eb1e052a8")
    );
    assert_eq!(b.txs.len(), 213);
    assert_eq!(bip34_height(&b), 277_647);
    let raw = hex::decode(read_text(&dir, "rust-bitcoin/block_13b8a.hex").trim()).unwrap();
    let b = check_block("block_13b8a", &raw);
    assert_eq!(
        b.hash(),
        hash("0000000000013b8ab2cd513b0261a14096412195a72a0c4827d229dcc7e0f7af")
    );
    assert_eq!(b.txs.len(), 9);
}

#[test]
fn megatx() {
    let Some(dir) = data_dir("megatx") else {
        return;
    };
    let raw = read(&dir, "btcd/megatx.bin");
    assert_eq!(raw.len(), 999_657);
    let tx = Transaction::decode_all(Bytes::from(raw.clone())).expect("megatx decodes");
    assert_eq!(
        tx.txid(),
        hash("bb41a757f405890fb0f5856228e23b715702d714d59bf2b1feb70d8b2b4e3e08")
    );
    let theirs: bitcoin::Transaction = deserialize(&raw).unwrap();
    assert_eq!(tx.txid().0, theirs.compute_txid().to_byte_array());
    assert_eq!(tx.wtxid().0, theirs.compute_wtxid().to_byte_array());
    assert_eq!(tx.input_count(), theirs.input.len());
    assert_eq!(tx.output_count(), theirs.output.len());
    through_frames("megatx", &Message::Tx(tx));
}

// ---------------------------------------------------------------------------------------------
// Header files.
// ---------------------------------------------------------------------------------------------

#[test]
fn header_files_link_and_meet_their_targets() {
    let Some(dir) = data_dir("header_files_link_and_meet_their_targets") else {
        return;
    };
    let mainnet = Network::Mainnet.params();

    let nakamoto = check_header_file("nakamoto", &read(&dir, "nakamoto/headers.bin"), 1111);
    assert_eq!(nakamoto[0].prev_hash, mainnet.genesis_hash(), "height 1");

    let v0 = check_header_file(
        "veriblock mainnet 0..9999",
        &read(
            &dir,
            "veriblock-headers/btc_blockheaders_mainnet_0_10000.bin",
        ),
        10_000,
    );
    assert_eq!(v0[0], mainnet.genesis);
    assert!(v0.iter().all(|h| h.bits == 0x1d00ffff), "difficulty 1");
    assert_eq!(&v0[1..1112], &nakamoto[..]);

    let v30 = check_header_file(
        "veriblock mainnet 30000..39999",
        &read(
            &dir,
            "veriblock-headers/btc_blockheaders_mainnet_30000_40000.bin",
        ),
        10_000,
    );
    check_retargets_only_every_2016("veriblock 30000", &v30, 30_000);
    for (height, bits) in [
        (32_255, 0x1d00ffff),
        (32_256, 0x1d00d86a),
        (34_272, 0x1d00c428),
        (36_288, 0x1d00be71),
        (38_304, 0x1d008cc3),
    ] {
        assert_eq!(v30[height - 30_000].bits, bits, "bits at {height}");
    }
    assert_eq!(
        v30[32_256 - 30_000].hash(),
        hash("000000004f2886a170adb7204cb0c7a824217dd24d11a74423d564c4e0904967")
    );
    for h in &v30 {
        assert!(mainnet.bits_within_limit(h.bits));
    }

    // The text forms hold the same headers.
    for (txt, bin, start) in [
        ("btc_blockheaders_mainnet_0_10000", &v0, Some(0)),
        ("btc_blockheaders_mainnet_30000_40000", &v30, Some(30_000)),
    ] {
        let text = read_text(&dir, &format!("veriblock-headers/{txt}.txt"));
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        if let Some(start) = start {
            assert_eq!(lines.next().unwrap().trim().parse::<u64>().unwrap(), start);
        }
        let hs: Vec<BlockHeader> = lines
            .map(|l| BlockHeader::from_array(&hex::decode(l.trim()).unwrap().try_into().unwrap()))
            .collect();
        assert_eq!(&hs, bin, "{txt}");
    }

    let testnet = check_header_file(
        "veriblock testnet 0..9999",
        &read(
            &dir,
            "veriblock-headers/btc_blockheaders_testnet_0_10000.bin",
        ),
        10_000,
    );
    assert_eq!(testnet[0], Network::Testnet.params().genesis);

    let ckb = check_header_file(
        "ckb mainnet 822528..830592",
        &read(&dir, "ckb-bitcoin-spv/headers_mainnet_822528_830592.bin"),
        8065,
    );
    check_retargets_only_every_2016("ckb", &ckb, 822_528);
    for retarget in [824_544usize, 826_560, 828_576, 830_592] {
        let i = retarget - 822_528;
        assert_ne!(ckb[i].bits, ckb[i - 1].bits, "retarget at {retarget}");
    }
    // The stale header at 823226 forks from the main chain header at 823225.
    let stale = check_header_file(
        "ckb stale 823226",
        &read(&dir, "ckb-bitcoin-spv/stale-headers/0823226.bin"),
        1,
    );
    assert_eq!(
        stale[0].hash(),
        hash("0000000000000000000365e705dbbea406f6e383f510d400fa23e40eae71e056")
    );
    assert_eq!(stale[0].prev_hash, ckb[823_225 - 822_528].hash());
    assert_ne!(stale[0], ckb[823_226 - 822_528]);

    // BSV mainnet after the forks (per-block difficulty adjustment) and BSV testnet.
    let bsv = check_header_file(
        "teranode 886001..888000",
        &read(&dir, "teranode-bsv/886001_888000_headers.bin"),
        2000,
    );
    for h in &bsv {
        assert!(mainnet.bits_within_limit(h.bits));
    }
    let changes = bsv.windows(2).filter(|w| w[0].bits != w[1].bits).count();
    assert!(changes > 1000, "BSV's DAA changes bits nearly every block");
    check_header_file(
        "teranode testnet 1602530..1602710",
        &read(&dir, "teranode-bsv/testnet_headers_1602530_1602710.bin"),
        181,
    );
}

// ---------------------------------------------------------------------------------------------
// Work.
// ---------------------------------------------------------------------------------------------

fn csv(text: &str) -> BTreeMap<u64, String> {
    let mut lines = text.lines();
    lines.next().expect("csv header line");
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (h, v) = l.trim().split_once(',').expect("two columns");
            (h.parse().expect("height"), v.to_string())
        })
        .collect()
}

#[test]
fn work_matches_chainwork() {
    let Some(dir) = data_dir("work_matches_chainwork") else {
        return;
    };
    // The work of a difficulty-1 header.
    let genesis = Network::Mainnet.params().genesis;
    assert_eq!(genesis.bits, 0x1d00ffff);
    assert_eq!(genesis.work(), U256::from_u64(0x1_0001_0001));

    let chainwork: BTreeMap<u64, U256> = csv(&read_text(&dir, "ckb-bitcoin-spv/chainwork.csv"))
        .into_iter()
        .map(|(h, v)| (h, U256::from_hex(&v).expect("chainwork hex")))
        .collect();
    let headers: BTreeMap<u64, BlockHeader> =
        csv(&read_text(&dir, "ckb-bitcoin-spv/diff_change_headers.csv"))
            .into_iter()
            .map(|(h, v)| {
                let raw: [u8; 80] = hex::decode(v).unwrap().try_into().unwrap();
                (h, BlockHeader::from_array(&raw))
            })
            .collect();
    assert_eq!(chainwork.len(), 827);
    assert_eq!(headers.len(), 827);
    assert_eq!(headers[&0], genesis);
    assert_eq!(chainwork[&0], genesis.work());
    assert_eq!(chainwork[&2015], U256::from_u64(2016 * 0x1_0001_0001));

    let mut steps = 0;
    for (&height, h) in &headers {
        let theirs: bitcoin::block::Header = deserialize(&h.to_array()).unwrap();
        same_header(h, &theirs);
        if height == 0 || height % 2016 != 0 {
            continue;
        }
        let before = &headers[&(height - 1)];
        assert_eq!(h.prev_hash, before.hash(), "link at {height}");
        let step = chainwork[&height].wrapping_sub(&chainwork[&(height - 1)]);
        assert_eq!(step, h.work(), "work of the header at {height}");
        steps += 1;
    }
    assert_eq!(steps, 413);

    // Across the continuous ckb headers: the work of every header between two chainwork rows
    // adds up to their difference.
    let ckb = read(&dir, "ckb-bitcoin-spv/headers_mainnet_822528_830592.bin");
    let ckb: Vec<BlockHeader> = ckb
        .chunks_exact(80)
        .map(|c| BlockHeader::from_array(c.try_into().unwrap()))
        .collect();
    let first = 822_528u64;
    let last = first + ckb.len() as u64 - 1;
    let rows: Vec<u64> = chainwork
        .keys()
        .copied()
        .filter(|&h| h + 1 >= first && h <= last)
        .collect();
    assert!(rows.len() >= 6, "{rows:?}");
    for w in rows.windows(2) {
        let (a, b) = (w[0], w[1]);
        let sum = ckb[(a + 1 - first) as usize..=(b - first) as usize]
            .iter()
            .fold(U256::ZERO, |acc, h| acc.saturating_add(&h.work()));
        assert_eq!(
            sum,
            chainwork[&b].wrapping_sub(&chainwork[&a]),
            "work from {} to {b}",
            a + 1
        );
    }
}
