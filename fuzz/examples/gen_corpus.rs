//! Writes seed inputs for every fuzz target into `fuzz/corpus/<target>/`: well-formed payloads
//! made with bsn's own types, a few real transactions from block 413567 when the test data is
//! there (`$BSN_TEST_DATA`, else `../shared/data` next to the crate), and frame streams.
//!
//! `cargo run --release --example gen_corpus` (from `fuzz/`).

use bsn::wire::frame::encode_extended_message;
use bsn::wire::{
    encode_message, Block, BlockHeader, Command, Decode, Hash256, InvType, Inventory, Locator,
    Message, NetAddr, OutPoint, Protoconf, Reject, TimedNetAddr, Transaction, VersionMessage,
};
use bsn_fuzz::MAGIC;
use bytes::{BufMut, Bytes, BytesMut};
use std::path::{Path, PathBuf};

fn h(n: u8) -> Hash256 {
    let mut a = [0u8; 32];
    for (i, b) in a.iter_mut().enumerate() {
        *b = n.wrapping_mul(31).wrapping_add(i as u8);
    }
    Hash256(a)
}

fn addr(i: u8) -> NetAddr {
    NetAddr::new(format!("10.0.0.{i}:8333").parse().unwrap(), 1 | 1 << 10)
}

fn header(bits: u32, n: u8) -> BlockHeader {
    BlockHeader {
        version: 0x2000_0000,
        prev_hash: h(n),
        merkle_root: h(n + 1),
        time: 1_600_000_000 + n as u32,
        bits,
        nonce: 12345 + n as u32,
    }
}

fn tx(n: u8, ins: usize, outs: usize) -> Transaction {
    let sig = vec![n; 72];
    let pk = vec![0x76, 0xa9, 0x14, n, n, 0x88, 0xac];
    let inputs: Vec<(OutPoint, &[u8], u32)> = (0..ins)
        .map(|i| {
            let op = OutPoint {
                txid: h(n + i as u8),
                vout: i as u32,
            };
            (op, sig.as_slice(), 0xffff_fffe)
        })
        .collect();
    let outputs: Vec<(i64, &[u8])> = (0..outs)
        .map(|i| (1000 * i as i64, pk.as_slice()))
        .collect();
    Transaction::build(2, &inputs, &outputs, n as u32)
}

/// A BIP144 transaction: one input, one output, a two-item witness.
fn witness_tx() -> Bytes {
    let mut b = BytesMut::new();
    b.put_i32_le(2);
    b.put_slice(&[0, 1, 1]);
    b.put_slice(&h(9).0);
    b.put_u32_le(0);
    b.put_u8(0);
    b.put_u32_le(0xffff_ffff);
    b.put_u8(1);
    b.put_i64_le(5000);
    b.put_slice(&[1, 0x51]);
    b.put_slice(&[2, 3, b'a', b'b', b'c', 2, b'd', b'e']);
    b.put_u32_le(0);
    b.freeze()
}

fn real_block() -> Option<Block> {
    let dir = match std::env::var_os("BSN_TEST_DATA") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
    };
    let raw = std::fs::read(dir.join("bitcoin-core-bench/block413567.raw")).ok()?;
    Block::decode_all(Bytes::from(raw)).ok()
}

fn main() {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut msgs: Vec<Message> = Vec::new();
    let mut add =
        |seeds: &mut Vec<(&'static str, Vec<u8>)>, target, prefix: Option<u8>, m: Message| {
            let mut v = prefix.map(|p| vec![p]).unwrap_or_default();
            v.extend_from_slice(&m.payload());
            seeds.push((target, v));
            msgs.push(m);
        };

    for (relay, extra) in [
        (None, Bytes::new()),
        (Some(true), Bytes::new()),
        (
            Some(false),
            Bytes::from_static(&[16, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]),
        ),
    ] {
        let v = VersionMessage {
            version: 70016,
            services: 1,
            timestamp: 1_700_000_000,
            receiver: addr(1),
            sender: addr(2),
            nonce: 0x1234_5678_9abc_def0,
            user_agent: "/bsn:0.1.0/".into(),
            start_height: 800_000,
            relay,
            extra,
        };
        add(&mut seeds, "version", None, Message::Version(v));
    }
    for n in [0u8, 1, 3] {
        let a = (0..n)
            .map(|i| TimedNetAddr {
                time: 1_700_000_000 + i as u32,
                addr: addr(i),
            })
            .collect();
        add(&mut seeds, "addr", None, Message::Addr(a));
        let inv: Vec<Inventory> = (0..n)
            .map(|i| Inventory {
                kind: InvType(i as u32 + 1),
                hash: h(i),
            })
            .collect();
        add(&mut seeds, "inv", Some(0), Message::Inv(inv.clone()));
        add(&mut seeds, "inv", Some(1), Message::GetData(inv.clone()));
        add(&mut seeds, "inv", Some(2), Message::NotFound(inv));
        let l = Locator {
            version: 70016,
            hashes: (0..n).map(h).collect(),
            stop: if n == 1 { h(77) } else { Hash256::ZERO },
        };
        add(
            &mut seeds,
            "locator",
            Some(0),
            Message::GetHeaders(l.clone()),
        );
        add(&mut seeds, "locator", Some(1), Message::GetBlocks(l));
    }
    let bits = [
        0x1d00_ffff,
        0x207f_ffff,
        0x1806_b99f,
        0x0300_0001,
        0x2200_00ff,
    ];
    add(&mut seeds, "headers", None, Message::Headers(vec![]));
    add(
        &mut seeds,
        "headers",
        None,
        Message::Headers(vec![header(bits[0], 0)]),
    );
    add(
        &mut seeds,
        "headers",
        None,
        Message::Headers(
            bits.iter()
                .enumerate()
                .map(|(i, b)| header(*b, i as u8))
                .collect(),
        ),
    );

    let wtx = Transaction::decode_all(witness_tx()).expect("witness tx decodes");
    let mut txs = vec![tx(1, 1, 1), tx(2, 2, 3), tx(3, 3, 0), wtx];
    let real = real_block();
    if let Some(b) = &real {
        txs.extend(b.txs.iter().take(4).cloned());
    } else {
        eprintln!("block413567.raw not found: seeds without real transactions");
    }
    for t in &txs {
        add(&mut seeds, "tx", None, Message::Tx(t.clone()));
    }
    add(
        &mut seeds,
        "block",
        None,
        Message::Block(Block::new(header(bits[1], 1), txs[..1].to_vec())),
    );
    add(
        &mut seeds,
        "block",
        None,
        Message::Block(Block::new(header(bits[0], 2), txs.clone())),
    );
    if let Some(b) = &real {
        add(
            &mut seeds,
            "block",
            None,
            Message::Block(Block::new(b.header, b.txs[..3].to_vec())),
        );
    }

    for data in [Bytes::new(), Bytes::copy_from_slice(&h(5).0)] {
        let r = Reject {
            message: "tx".into(),
            code: 0x10,
            reason: "bad-txns-inputs-missingorspent".into(),
            data,
        };
        add(&mut seeds, "reject", None, Message::Reject(r));
    }
    add(
        &mut seeds,
        "protoconf",
        None,
        Message::Protoconf(Protoconf::new(2 * 1024 * 1024, "Default")),
    );
    add(
        &mut seeds,
        "protoconf",
        None,
        Message::Protoconf(Protoconf {
            number_of_fields: 1,
            max_recv_payload_length: 1 << 20,
            stream_policies: None,
            extra: Bytes::new(),
        }),
    );
    add(
        &mut seeds,
        "protoconf",
        None,
        Message::Protoconf(Protoconf {
            number_of_fields: 3,
            max_recv_payload_length: 1 << 20,
            stream_policies: Some("BlockPriority,Default".into()),
            extra: Bytes::from_static(&[1, 2, 3]),
        }),
    );
    let small = [
        Message::Ping(0x0102_0304_0506_0708),
        Message::Pong(42),
        Message::FeeFilter(1000),
        Message::SendCmpct {
            announce: true,
            version: 1,
        },
        Message::Verack,
        Message::GetAddr,
        Message::SendHeaders,
        Message::Mempool,
    ];
    for (i, m) in small.into_iter().enumerate() {
        add(&mut seeds, "small", Some(i as u8), m);
    }

    // Frame streams: every message above, one extended frame, one unknown command, one frame
    // with a bad checksum; under a few limit and chunking settings.
    let mut stream = BytesMut::new();
    for m in &msgs {
        encode_message(&mut stream, MAGIC, m);
    }
    encode_extended_message(&mut stream, MAGIC, &Message::Ping(7));
    let unknown = Message::Unknown {
        command: Command::new("authch").unwrap(),
        payload: Bytes::from_static(b"\x01\x02\x03"),
    };
    encode_message(&mut stream, MAGIC, &unknown);
    let mut bad = BytesMut::new();
    encode_message(&mut bad, MAGIC, &Message::Pong(9));
    bad[20] ^= 0xff;
    stream.extend_from_slice(&bad);
    encode_message(&mut stream, MAGIC, &Message::Verack);
    let small_stream = {
        let mut s = BytesMut::new();
        for m in &msgs[..6] {
            encode_message(&mut s, MAGIC, m);
        }
        encode_extended_message(&mut s, MAGIC, &Message::Pong(3));
        s.extend_from_slice(&bad);
        s
    };
    for cfg in [
        [0x01u8, 0xff, 0xff, 255, 255, 255],
        [0x07, 0xff, 0xff, 0, 23, 200],
        [0x03, 0x40, 0x40, 7, 30, 99],
        [0x05, 0x02, 0x10, 24, 1, 43],
        [0x00, 0xff, 0xff, 63, 127, 31],
    ] {
        let mut v = cfg.to_vec();
        v.extend_from_slice(&stream);
        seeds.push(("frame", v));
        let mut v = cfg.to_vec();
        v.extend_from_slice(&small_stream);
        seeds.push(("frame", v));
    }

    let mut counts = std::collections::BTreeMap::new();
    for (target, data) in seeds {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let n = counts.entry(target).or_insert(0);
        std::fs::write(dir.join(format!("seed-{n:02}")), &data).unwrap();
        *n += 1;
    }
    for (t, n) in counts {
        println!("{t}: {n} seeds in {}", out.join(t).display());
    }
}
