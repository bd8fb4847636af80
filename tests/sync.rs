//! Chain sync between engines over loopback: headers first, then blocks in parallel; a line of
//! three engines; a header client that stores no blocks.

mod common;

use bsn::store::records::with_block;
use bsn::wire::{Block, BlockHeader, Hash256};
use bsn::{Config, Engine, Event, Network};
use common::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn node(dir: &TempDir, name: &str, headers_only: bool) -> Config {
    let mut c = config();
    c.data_dir = Some(dir.0.join(name));
    c.headers_only = headers_only;
    c.dial_interval = Duration::from_millis(20);
    c
}

/// Waits until `e` has `height` headers and (unless headers-only) every block stored.
fn wait_synced(e: &Engine, blocks: &[Block], want_blocks: bool) {
    let deadline = Instant::now() + T;
    let tip = blocks.last().unwrap().hash();
    loop {
        let (h, height) = e.best_header().unwrap();
        let stored = want_blocks
            && blocks.iter().all(|b| {
                with_block(e.store().as_ref(), &b.hash(), |v| v == Some(&b.raw()[..])).unwrap()
            });
        if h == tip && height as usize == blocks.len() && (stored || !want_blocks) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not synced: at {height} of {}",
            blocks.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_fresh_engine_syncs_headers_then_blocks_and_a_line_of_three_passes_them_on() {
    let blocks = regtest_blocks(600);
    let dir = TempDir::new("sync");
    let file = dir.0.join("blk.dat");
    write_blk(
        &file,
        Network::Regtest.params().disk_magic,
        &blocks.iter().map(|b| &b.raw()[..]).collect::<Vec<_>>(),
    );
    let (a, _aev) = start(node(&dir, "a", false));
    a.import_block_file(&file).unwrap();
    // B syncs from A; C only knows B; H is a header client of B
    let mut cb = node(&dir, "b", false);
    cb.connect = vec![a.local_addr().unwrap()];
    let (b, bev) = start(cb);
    let mut cc = node(&dir, "c", false);
    let mut ch = node(&dir, "h", true);
    // blocks are announced to B's embedder in chain order, each readable when its event comes
    let mut heights = Vec::new();
    let deadline = Instant::now() + T;
    while heights.len() < 600 {
        let left = deadline.saturating_duration_since(Instant::now());
        match bev.recv_timeout(left) {
            Ok(Event::BlockConnected { height, hash, .. }) => {
                let stored = b.block(bsn::HeaderRef::Hash(hash)).unwrap();
                assert!(stored.is_some(), "block {height} not readable at its event");
                heights.push(height);
            }
            Ok(_) => {}
            Err(e) => panic!("{} blocks connected: {e}", heights.len()),
        }
    }
    assert_eq!(heights, (1..=600).collect::<Vec<u32>>());
    wait_synced(&b, &blocks, true);
    cc.connect = vec![b.local_addr().unwrap()];
    ch.connect = vec![b.local_addr().unwrap()];
    let (c, _cev) = start(cc);
    let (h, _hev) = start(ch);
    wait_synced(&c, &blocks, true);
    wait_synced(&h, &blocks, false);
    assert!(
        blocks
            .iter()
            .all(|bl| !bsn::store::records::has_block(h.store().as_ref(), &bl.hash()).unwrap()),
        "header client stored blocks"
    );
    for e in [h, c, b, a] {
        e.stop();
    }
}

#[test]
fn the_real_early_mainnet_chain_syncs_bit_for_bit() {
    let Some(d) = data_dir("sync: real early mainnet blocks") else {
        return;
    };
    let file = d.join("btcd/blocks1-256.dat");
    let data = std::fs::read(&file).unwrap();
    let mut blocks = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap()) as usize;
        blocks.push(
            <Block as bsn::wire::Decode>::decode_all(bytes::Bytes::copy_from_slice(
                &data[pos + 8..pos + 8 + len],
            ))
            .unwrap(),
        );
        pos += 8 + len;
    }
    let dir = TempDir::new("sync-mainnet");
    let mainnet = |name: &str| {
        let mut c = node(&dir, name, false);
        // 256 real blocks are far below mainnet's minimum chain work: synced without it (the
        // header pre-sync has its own test, tests/presync.rs)
        let params = Network::Mainnet.params();
        c.network = params.clone().with_consensus(bsn::network::Consensus {
            minimum_chain_work: bsn::wire::U256::ZERO,
            anchor: None,
            ..params.consensus
        });
        c
    };
    let (a, _aev) = start(mainnet("a"));
    a.import_block_file(&file).unwrap();
    let mut cb = mainnet("b");
    cb.connect = vec![a.local_addr().unwrap()];
    let (b, _bev) = start(cb);
    wait_synced(&b, &blocks, true);
    let mut cc = mainnet("c");
    cc.connect = vec![b.local_addr().unwrap()];
    let (c, _cev) = start(cc);
    wait_synced(&c, &blocks, true);
    assert_eq!(c.best_header().unwrap(), a.best_header().unwrap());
    for e in [c, b, a] {
        e.stop();
    }
}

#[test]
fn a_hundred_thousand_headers_sync_and_an_invalid_header_gets_its_sender_scored() {
    use bsn::store::chain::ChainDb;
    use bsn::store::lmdb::{LmdbOptions, LmdbStore};
    use bsn::store::{Batch, Store};
    use bsn::wire::Message;
    const N: usize = 100_000;
    let params = Network::Regtest.params();
    let mut headers = Vec::with_capacity(N);
    let mut prev = params.genesis;
    for i in 0..N as u32 {
        let mut h = BlockHeader {
            version: 4,
            prev_hash: prev.hash(),
            merkle_root: Hash256::sha256d(&i.to_le_bytes()),
            time: prev.time + 1,
            bits: 0x207fffff,
            nonce: 0,
        };
        while !h.meets_own_target() {
            h.nonce += 1;
        }
        headers.push(h);
        prev = h;
    }
    // the honest server H (a header client: it serves every header it holds) gets the chain in
    // its store before it starts
    let dir = TempDir::new("sync-100k");
    {
        let s = LmdbStore::open(&dir.0.join("h"), &LmdbOptions::default()).unwrap();
        let mut db = ChainDb::new(&params);
        for part in headers.chunks(2000) {
            let mut b = Batch::new();
            db.insert_headers(part, &mut b);
            s.write(&b).unwrap();
        }
    }
    let (h, _hev) = start(node(&dir, "h", true));
    assert_eq!(h.best_header().unwrap().1 as usize, N);
    // S is a header client with a short stall timeout
    let mut cs = node(&dir, "s", true);
    cs.sync_stall_timeout = Duration::from_secs(2);
    let (s, sev) = start(cs);
    // a liar claims the highest chain and serves a batch with a bad proof of work at index 1000
    let liar_ip: std::net::IpAddr = [127, 0, 14, 1].into();
    let mut liar = ScriptPeer::connect_from(liar_ip, s.local_addr().unwrap(), REGTEST).unwrap();
    let mut v = version_msg(70016, 4242);
    v.start_height = 2 * N as i32;
    liar.send(&Message::Version(v));
    liar.expect(T, |m| matches!(m, Message::Verack));
    liar.send(&Message::Verack);
    liar.expect(T, |m| matches!(m, Message::GetHeaders(_)));
    let mut bad = headers[..2000].to_vec();
    bad[1000].nonce = bad[1000].nonce.wrapping_add(1);
    while bad[1000].meets_own_target() {
        bad[1000].nonce = bad[1000].nonce.wrapping_add(1);
    }
    liar.send(&Message::Headers(bad));
    let reason = wait_for(&sev, T, "liar scored", |e| match e {
        Event::BanScore { ip, reason, .. } if *ip == liar_ip => Some(*reason),
        _ => None,
    });
    assert_eq!(reason, bsn::BanReason::InvalidHeaderPow);
    assert_eq!(
        s.best_header().unwrap().1,
        1000,
        "the valid headers before the bad one are kept"
    );
    // an honest peer arrives: sync continues from it to the end
    let t0 = Instant::now();
    s.connect(h.local_addr().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while s.best_header().unwrap().0 != headers[N - 1].hash() {
        assert!(
            Instant::now() < deadline,
            "stuck at {}",
            s.best_header().unwrap().1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "synced {} headers engine to engine in {:?}",
        N - 1000,
        t0.elapsed()
    );
    assert_eq!(
        s.sync_progress().unwrap().1,
        None,
        "a header client downloads no blocks"
    );
    for e in [s, h] {
        e.stop();
    }
}

#[test]
fn checkpoints_hold_the_chain_to_them_and_refuse_forks_below() {
    use bsn::wire::Message;
    use bsn::BanReason;
    let blocks = regtest_blocks(300);
    let dir = TempDir::new("sync-checkpoints");
    let file = dir.0.join("blk.dat");
    write_blk(
        &file,
        Network::Regtest.params().disk_magic,
        &blocks.iter().map(|b| &b.raw()[..]).collect::<Vec<_>>(),
    );
    let (a, _aev) = start(node(&dir, "a", false));
    a.import_block_file(&file).unwrap();
    // B's checkpoint agrees with A's chain: B syncs all of it.
    let mut cb = node(&dir, "b", true);
    cb.checkpoints = vec![(150, blocks[149].hash())];
    cb.connect = vec![a.local_addr().unwrap()];
    let (b, bev) = start(cb);
    wait_synced(&b, &blocks, false);
    // A liar (its own address) forks off at height 100, below the checkpoint B has passed.
    let liar_ip: std::net::IpAddr = [127, 0, 15, 1].into();
    let mut liar = ScriptPeer::connect_from(liar_ip, b.local_addr().unwrap(), REGTEST).unwrap();
    liar.send(&Message::Version(version_msg(70016, 4343)));
    liar.expect(T, |m| matches!(m, Message::Verack));
    liar.send(&Message::Verack);
    let mut fork = blocks[100].header;
    fork.merkle_root = Hash256::sha256d(b"fork");
    while !fork.meets_own_target() {
        fork.nonce = fork.nonce.wrapping_add(1);
    }
    liar.send(&Message::Headers(vec![fork]));
    let reason = wait_for(&bev, T, "liar scored", |e| match e {
        Event::BanScore { ip, reason, .. } if *ip == liar_ip => Some(*reason),
        _ => None,
    });
    assert_eq!(reason, BanReason::InvalidHeader);
    assert!(b.header(bsn::HeaderRef::Hash(fork.hash())).is_none());
    assert_eq!(b.best_header().unwrap().1, 300);

    // C's checkpoint at 150 names another block: C stops at 149 and scores A's address.
    let mut cc = node(&dir, "c", true);
    cc.checkpoints = vec![(150, blocks[10].hash())];
    cc.connect = vec![a.local_addr().unwrap()];
    let (c, cev) = start(cc);
    let reason = wait_for(&cev, T, "A scored by C", |e| match e {
        Event::BanScore { reason, .. } => Some(*reason),
        _ => None,
    });
    assert_eq!(reason, BanReason::InvalidHeader);
    assert_eq!(c.best_header().unwrap(), (blocks[148].hash(), 149));

    // B's stored chain contradicts that checkpoint: B refuses to start with it, and its data
    // is untouched (it starts again without it).
    b.stop();
    let mut cb = node(&dir, "b", true);
    cb.checkpoints = vec![(150, blocks[10].hash())];
    match Engine::start(cb) {
        Err(bsn::Error::Config(e)) => assert!(e.0.contains("height 150"), "{e}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("started with a checkpoint its stored chain contradicts"),
    }
    let (b, _bev) = start(node(&dir, "b", true));
    assert_eq!(b.best_header().unwrap(), (blocks[299].hash(), 300));
    for e in [c, b, a] {
        e.stop();
    }
}

#[test]
fn a_peer_that_is_too_busy_is_not_asked_for_blocks_for_five_seconds_nor_scored() {
    use bsn::wire::{InvType, Message, Reject};
    let blocks = regtest_blocks(3);
    let (e, ev) = start(config());
    // a peer at height 3 with NODE_NETWORK that answers the first getdata with TOOBUSY
    let mut p = ScriptPeer::connect(e.local_addr().unwrap(), REGTEST);
    let mut v = version_msg(70016, 1);
    v.services = 1;
    v.start_height = 3;
    p.send(&Message::Version(v));
    p.expect(T, |m| matches!(m, Message::Verack));
    p.send(&Message::Verack);
    p.expect(T, |m| matches!(m, Message::GetHeaders(_)));
    p.send(&Message::Headers(blocks.iter().map(|b| b.header).collect()));
    let first = p.expect(T, |m| matches!(m, Message::GetData(_)));
    let asked = match first {
        Message::GetData(items) => items,
        _ => unreachable!(),
    };
    assert!(asked.iter().all(|i| i.kind == InvType::BLOCK));
    let rejected_at = Instant::now();
    p.send(&Message::Reject(Reject {
        message: "getdata".into(),
        code: 0x44,
        reason: "Max blocks' downloading size exceeded.".into(),
        data: bytes::Bytes::new(),
    }));
    // the embedder sees the reject; the next request comes after the SV node's 5 s, not before
    wait_for(&ev, T, "the reject", |x| match x {
        Event::Message {
            message: Message::Reject(r),
            ..
        } if r.code == 0x44 => Some(()),
        _ => None,
    });
    let again = p.expect(T, |m| matches!(m, Message::GetData(_)));
    assert!(
        rejected_at.elapsed() >= Duration::from_millis(4_900),
        "asked again after {:?}",
        rejected_at.elapsed()
    );
    if let Message::GetData(items) = again {
        assert_eq!(items[0].hash, asked[0].hash);
    }
    for b in &blocks {
        p.send(&Message::Block(b.clone()));
    }
    wait_for(&ev, T, "block 3 connected", |x| match x {
        Event::BlockConnected { height: 3, .. } => Some(()),
        _ => None,
    });
    assert_eq!(e.ban_score("127.0.0.1".parse().unwrap()), 0);
    e.stop();
}
