//! An engine imports a block file and serves it: getheaders, getblocks, getdata, notfound.

mod common;

use bsn::wire::{BlockHeader, Hash256, InvType, Inventory, Locator, Message};
use bsn::{Config, Network};
use common::*;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn serve_and_check(c: Config, file: &Path, raws: &[Vec<u8>]) {
    let magic = c.network.magic;
    let genesis = c.network.genesis_hash();
    let (a, _aev) = start(c);
    let (n, height) = a.import_block_file(file).unwrap();
    assert_eq!((n, height as usize), (raws.len(), raws.len()));
    assert_eq!(a.best_header().unwrap().1 as usize, raws.len());
    let hashes: Vec<Hash256> = raws
        .iter()
        .map(|r| BlockHeader::from_array(r[..80].try_into().unwrap()).hash())
        .collect();
    let mut p = ScriptPeer::connect(a.local_addr().unwrap(), magic);
    let v = p.handshake(77);
    assert_eq!(
        v.start_height as usize,
        raws.len(),
        "the imported height is announced"
    );
    // getheaders from genesis: every header, in order, linking
    p.send(&Message::GetHeaders(Locator {
        version: 70016,
        hashes: vec![genesis],
        stop: Hash256::ZERO,
    }));
    let headers = match p.expect(T, |m| matches!(m, Message::Headers(_))) {
        Message::Headers(h) => h,
        _ => unreachable!(),
    };
    assert_eq!(headers.iter().map(|h| h.hash()).collect::<Vec<_>>(), hashes);
    // from the middle, with a stop hash
    let mid = raws.len() / 2;
    p.send(&Message::GetHeaders(Locator {
        version: 70016,
        hashes: vec![hashes[mid - 1]],
        stop: hashes[mid + 1],
    }));
    match p.expect(T, |m| matches!(m, Message::Headers(_))) {
        Message::Headers(h) => assert_eq!(
            h.iter().map(|h| h.hash()).collect::<Vec<_>>(),
            hashes[mid..=mid + 1].to_vec()
        ),
        _ => unreachable!(),
    }
    // getblocks: an inv of the hashes after the locator
    p.send(&Message::GetBlocks(Locator {
        version: 70016,
        hashes: vec![genesis],
        stop: Hash256::ZERO,
    }));
    match p.expect(T, |m| matches!(m, Message::Inv(_))) {
        Message::Inv(inv) => {
            assert_eq!(inv.len(), raws.len().min(500));
            assert!(inv
                .iter()
                .zip(&hashes)
                .all(|(i, h)| i.kind == InvType::BLOCK && i.hash == *h));
        }
        _ => unreachable!(),
    }
    // getdata: blocks bit for bit, and notfound for the unknown
    let ask = [0, mid, raws.len() - 1];
    let mut items: Vec<Inventory> = ask
        .iter()
        .map(|&i| Inventory {
            kind: InvType::BLOCK,
            hash: hashes[i],
        })
        .collect();
    let unknown = Inventory {
        kind: InvType::BLOCK,
        hash: Hash256([0x42; 32]),
    };
    items.push(unknown);
    p.send(&Message::GetData(items));
    for &i in &ask {
        match p.expect(T, |m| matches!(m, Message::Block(_))) {
            Message::Block(b) => assert_eq!(&b.raw()[..], &raws[i][..], "block {i}"),
            _ => unreachable!(),
        }
    }
    assert_eq!(
        p.expect(T, |m| matches!(m, Message::NotFound(_))),
        Message::NotFound(vec![unknown])
    );
    a.stop();
}

#[test]
fn imports_a_regtest_block_file_and_serves_it() {
    let blocks = regtest_blocks(300);
    let dir = TempDir::new("serve-regtest");
    let file = dir.0.join("blk00000.dat");
    let raws: Vec<Vec<u8>> = blocks.iter().map(|b| b.raw().to_vec()).collect();
    let slices: Vec<&[u8]> = raws.iter().map(|r| &r[..]).collect();
    write_blk(&file, Network::Regtest.params().disk_magic, &slices);
    let mut c = config();
    c.data_dir = Some(dir.0.join("data"));
    serve_and_check(c, &file, &raws);
    // a file of another network is refused with the offset
    let (a, _ev) = start(config());
    let other = dir.0.join("mainnet.dat");
    write_blk(&other, Network::Mainnet.params().disk_magic, &slices[..1]);
    let e = a.import_block_file(&other).unwrap_err().to_string();
    assert!(e.contains("disk magic") && e.contains("at byte 0"), "{e}");
    a.stop();
}

#[test]
fn imports_the_real_early_mainnet_blocks_and_serves_them() {
    let Some(d) = data_dir("serve: real early mainnet blocks") else {
        return;
    };
    let file = d.join("btcd/blocks1-256.dat");
    let data = std::fs::read(&file).unwrap();
    let mut raws = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap()) as usize;
        raws.push(data[pos + 8..pos + 8 + len].to_vec());
        pos += 8 + len;
    }
    let mut c = config();
    c.network = Network::Mainnet.params();
    let dir = TempDir::new("serve-mainnet");
    c.data_dir = Some(dir.0.clone());
    serve_and_check(c, &file, &raws);
}

/// Everything `p` is sent until the answer to a `getheaders` from `tip` (the engine's header
/// tip, so an empty `headers`): a peer's messages are answered in order, so this is everything
/// it was sent in answer to what it sent before.
fn answers(p: &mut ScriptPeer, tip: Hash256) -> Vec<Message> {
    p.send(&Message::GetHeaders(Locator {
        version: 70016,
        hashes: vec![tip],
        stop: Hash256::ZERO,
    }));
    let mut seen = Vec::new();
    loop {
        match p.recv(T) {
            Some(Message::Headers(h)) if h.is_empty() => return seen,
            Some(m) => seen.push(m),
            None => panic!("no answer to getheaders; got {} messages", seen.len()),
        }
    }
}

fn invs(seen: &[Message]) -> Vec<Vec<Hash256>> {
    seen.iter()
        .filter_map(|m| match m {
            Message::Inv(i) => Some(i.iter().map(|i| i.hash).collect()),
            _ => None,
        })
        .collect()
}

fn getblocks(from: Hash256) -> Message {
    Message::GetBlocks(Locator {
        version: 70016,
        hashes: vec![from],
        stop: Hash256::ZERO,
    })
}

fn getdata(hashes: &[Hash256]) -> Message {
    Message::GetData(
        hashes
            .iter()
            .map(|h| Inventory {
                kind: InvType::BLOCK,
                hash: *h,
            })
            .collect(),
    )
}

#[test]
fn getblocks_continues_past_500_with_the_tip_and_lists_only_blocks_held() {
    // A holds 1,200 blocks; B the first 600 blocks and all 1,200 headers; H only headers
    let blocks = regtest_blocks(1_200);
    let h: Vec<Hash256> = std::iter::once(Network::Regtest.params().genesis_hash())
        .chain(blocks.iter().map(|b| b.hash()))
        .collect();
    let dir = TempDir::new("serve-getblocks");
    let raws: Vec<&[u8]> = blocks.iter().map(|b| &b.raw()[..]).collect();
    let magic = Network::Regtest.params().disk_magic;
    let (all, first) = (dir.0.join("all.dat"), dir.0.join("first.dat"));
    write_blk(&all, magic, &raws);
    write_blk(&first, magic, &raws[..600]);
    let node = |name: &str, headers_only: bool| {
        let mut c = config();
        c.data_dir = Some(dir.0.join(name));
        c.headers_only = headers_only;
        c
    };
    let (a, _aev) = start(node("a", false));
    a.import_block_file(&all).unwrap();

    // a getblocks client: 500 hashes; asking for the last of them brings the tip after it
    let mut p = ScriptPeer::connect(a.local_addr().unwrap(), REGTEST);
    p.handshake(1);
    p.send(&getblocks(h[0]));
    assert_eq!(invs(&answers(&mut p, h[1_200])), vec![h[1..=500].to_vec()]);
    p.send(&getdata(&[h[499]]));
    let seen = answers(&mut p, h[1_200]);
    assert!(invs(&seen).is_empty(), "not the end of the batch");
    p.send(&getdata(&[h[500]]));
    let seen = answers(&mut p, h[1_200]);
    let order: Vec<&Message> = seen
        .iter()
        .filter(|m| matches!(m, Message::Block(_) | Message::Inv(_)))
        .collect();
    assert!(
        matches!(&order[..], [Message::Block(b), Message::Inv(_)] if b.hash() == h[500]),
        "the block, then the inv"
    );
    assert_eq!(
        invs(&seen),
        vec![vec![h[1_200]]],
        "the tip after the batch's last block"
    );
    // once only
    p.send(&getdata(&[h[500]]));
    assert!(invs(&answers(&mut p, h[1_200])).is_empty());
    // the last batch is short: no continuation
    p.send(&getblocks(h[1_000]));
    assert_eq!(invs(&answers(&mut p, h[1_200])), vec![h[1_001..].to_vec()]);
    p.send(&getdata(&[h[1_200]]));
    assert!(invs(&answers(&mut p, h[1_200])).is_empty());

    // B learns headers past its blocks from a peer that never delivers the blocks: it lists
    // (and continues to) only the blocks it holds
    let (b, _bev) = start(node("b", false));
    b.import_block_file(&first).unwrap();
    let mut teller = ScriptPeer::connect(b.local_addr().unwrap(), REGTEST);
    teller.handshake(2);
    teller.send(&Message::Headers(
        blocks[600..].iter().map(|b| b.header).collect(),
    ));
    let deadline = std::time::Instant::now() + T;
    while b.best_header().unwrap().1 < 1_200 {
        assert!(std::time::Instant::now() < deadline, "B took the headers");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut q = ScriptPeer::connect(b.local_addr().unwrap(), REGTEST);
    q.handshake(3);
    q.send(&getblocks(h[0]));
    assert_eq!(invs(&answers(&mut q, h[1_200])), vec![h[1..=500].to_vec()]);
    q.send(&getdata(&[h[500]]));
    assert_eq!(
        invs(&answers(&mut q, h[1_200])),
        vec![vec![h[600]]],
        "B's tip is its last block"
    );
    q.send(&getblocks(h[500]));
    assert_eq!(
        invs(&answers(&mut q, h[1_200])),
        vec![h[501..=600].to_vec()]
    );

    // a header client lists nothing: it holds no block
    let mut hc = node("h", true);
    hc.connect = vec![a.local_addr().unwrap()];
    let (hd, _hev) = start(hc);
    let deadline = std::time::Instant::now() + T;
    while hd.best_header().unwrap().1 < 1_200 {
        assert!(std::time::Instant::now() < deadline, "header client synced");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut r = ScriptPeer::connect(hd.local_addr().unwrap(), REGTEST);
    r.handshake(4);
    r.send(&getblocks(h[0]));
    assert!(invs(&answers(&mut r, h[1_200])).is_empty());
    for e in [hd, b, a] {
        e.stop();
    }
}

#[test]
fn a_block_over_the_peers_message_limit_is_still_served() {
    // A peer that sent no protoconf takes messages up to 1 MiB, except blocks: a 1.5 MB block
    // (served as its stored bytes) must go out whole.
    let params = Network::Regtest.params();
    let parent = regtest_blocks(1).pop().unwrap();
    let coinbase = parent.txs[0].clone();
    let big = bsn::wire::Transaction::build(
        1,
        &[(
            bsn::wire::OutPoint {
                txid: coinbase.txid(),
                vout: 0,
            },
            b"\x51",
            u32::MAX,
        )],
        &[(0, &vec![0x6a; 1_500_000][..])],
        0,
    );
    let mut header = BlockHeader {
        version: 4,
        prev_hash: parent.hash(),
        merkle_root: Hash256::ZERO,
        time: parent.header.time + 1,
        bits: 0x207fffff,
        nonce: 0,
    };
    let cb = regtest_blocks(2).pop().unwrap().txs[0].clone();
    header.merkle_root =
        bsn::wire::Block::new(header, vec![cb.clone(), big.clone()]).compute_merkle_root();
    while !header.meets_own_target() {
        header.nonce += 1;
    }
    let block = bsn::wire::Block::new(header, vec![cb, big]);
    assert!(block.raw().len() > 1_500_000);
    let dir = TempDir::new("serve-big");
    let file = dir.0.join("blk00000.dat");
    write_blk(
        &file,
        params.disk_magic,
        &[&parent.raw()[..], &block.raw()[..]],
    );
    let (a, _aev) = start(config());
    assert_eq!(a.import_block_file(&file).unwrap(), (2, 2));
    let mut p = ScriptPeer::connect(a.local_addr().unwrap(), params.magic);
    p.handshake(78);
    p.send(&getdata(&[block.hash()]));
    match p.expect(T, |m| matches!(m, Message::Block(_) | Message::NotFound(_))) {
        Message::Block(b) => assert_eq!(&b.raw()[..], &block.raw()[..]),
        other => panic!("{other:?}"),
    }
    a.stop();
}
