//! Interoperability with the Bitcoin SV node v1.2.2 (`../shared/sv-node`), the reference bsn
//! must match: handshakes both ways with its BSV messages tolerated, a 2,500-block chain synced
//! from it headers-first and by it from bsn, a block carried from one SV node to another through
//! bsn alone. After every test the SV node's `getpeerinfo` shows bsn with ban score 0, its log
//! holds nothing against bsn, and bsn holds nothing against it.

mod bcoin_support;
mod common;
mod sv_support;

#[allow(unused_imports)] // bcoin_support (for its JSON-RPC helpers) calls it
use common::random_u64;

use bsn::{Config, Direction, Engine, Event, HeaderRef};
use common::wait_for;
use crossbeam_channel::Receiver;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use sv_support::SvNode;

const T: Duration = Duration::from_secs(60);

fn config() -> Config {
    let mut c = common::config();
    c.tx_announce_interval = Duration::from_millis(50);
    c
}

fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// Nobody holds anything against anybody: the SV node's view of every bsn connection and its
/// log, and bsn's ban score of the SV node's address.
fn assert_peace(sv: &SvNode, engine: &Engine, bsn_peers: usize) {
    let ua = engine.config().user_agent.clone();
    let peers = sv.peers();
    let ours: Vec<_> = peers
        .iter()
        .filter(|p| p["subver"].as_str() == Some(ua.as_str()))
        .collect();
    assert_eq!(
        ours.len(),
        bsn_peers,
        "bsn connections on the SV node: {peers:?}"
    );
    for p in ours {
        assert_eq!(p["banscore"].as_i64(), Some(0), "SV node scored bsn: {p}");
    }
    let complaints = sv.complaints();
    assert!(complaints.is_empty(), "SV node log: {complaints:#?}");
    assert_eq!(engine.ban_score(loopback()), 0, "bsn scored the SV node");
    assert!(engine.bans().is_empty(), "bsn banned: {:?}", engine.bans());
}

fn connected_sv(ev: &Receiver<Event>, direction: Direction) -> bsn::PeerInfo {
    wait_for(ev, T, "the SV node connected", |e| match e {
        Event::PeerConnected(p) if p.direction == direction => Some((**p).clone()),
        _ => None,
    })
}

#[test]
fn bsn_and_the_sv_node_handshake_both_ways_and_keep_the_peace() {
    let Some(sv) = SvNode::start(&[]) else { return };
    let engine = Engine::start(config()).unwrap();
    let ev = engine.events();
    // bsn dials the SV node
    engine.connect(sv.p2p_addr()).unwrap();
    let out = connected_sv(&ev, Direction::Outbound);
    assert!(out.user_agent.contains("Bitcoin SV"), "{}", out.user_agent);
    assert_eq!(out.version, 70016);
    // the SV node dials bsn
    let me = engine.local_addr().unwrap();
    sv.rpc("addnode", &format!("[\"{me}\",\"onetry\"]"));
    let inbound = connected_sv(&ev, Direction::Inbound);
    assert!(inbound.user_agent.contains("Bitcoin SV"));
    // Both connections carry traffic both ways: a ping from each side is answered, and the SV
    // node's protoconf, authch, sendheaders and sendcmpct came without hurting anything.
    let deadline = Instant::now() + T;
    loop {
        let peers = engine.peers();
        let rtts = peers.iter().filter(|p| p.rtt.is_some()).count();
        let pongs_sent: u64 = peers
            .iter()
            .flat_map(|p| p.stats.by_command.iter())
            .filter(|(c, _)| c.as_str() == "pong")
            .map(|(_, s)| s.msgs_out)
            .sum();
        let sv_pings = sv
            .peers()
            .iter()
            .filter(|p| p["pingtime"].as_f64().is_some())
            .count();
        if rtts == 2 && pongs_sent >= 2 && sv_pings >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pings: {rtts} rtts, {pongs_sent} pongs, {sv_pings} on the SV node"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // (a connection on its way to join an association as a stream is listed too, not ready)
    for p in engine.peers().into_iter().filter(|p| p.ready) {
        assert_eq!(
            p.their_max_payload,
            2 * 1024 * 1024,
            "the SV node's protoconf is honoured"
        );
        let got = |cmd: &str| {
            p.stats
                .by_command
                .iter()
                .any(|(c, s)| c.as_str() == cmd && s.msgs_in > 0)
        };
        assert!(got("protoconf") && got("sendheaders"), "{:?}", p.stats);
    }
    // the SV node's authch is decoded (and needs no answer from a non-miner)
    let challenge = wait_for(&ev, T, "the SV node's authch", |e| match e {
        Event::Message {
            message: bsn::wire::Message::AuthCh(a),
            ..
        } => Some(a.clone()),
        _ => None,
    });
    assert_eq!((challenge.version, challenge.challenge.len()), (1, 32));
    assert_peace(&sv, &engine, 2);
    engine.stop();
}

/// The first `hdrsen` entry a peer at `addr` answers to a `gethdrsen` from `from`.
fn hdrsen_after(p: &mut common::ScriptPeer, from: bsn::wire::Hash256) -> bsn::wire::EnrichedHeader {
    use bsn::wire::{Hash256, Locator, Message};
    p.send(&Message::GetHdrsEn(Locator {
        version: 70016,
        hashes: vec![from],
        stop: Hash256::ZERO,
    }));
    match p.expect(T, |m| matches!(m, Message::HdrsEn(_))) {
        Message::HdrsEn(mut v) => {
            assert!(!v.is_empty(), "empty hdrsen");
            v.swap_remove(0)
        }
        _ => unreachable!(),
    }
}

#[test]
fn bsn_answers_gethdrsen_as_the_sv_node_does_and_takes_its_sendhdrsen() {
    let Some(sv) = SvNode::start(&[]) else { return };
    let hashes = sv.mine(6);
    let engine = Engine::start(config()).unwrap();
    let ev = engine.events();
    sync_from(&sv, &engine, &ev, 6);
    let mut to_sv = common::ScriptPeer::connect(sv.p2p_addr(), common::REGTEST);
    to_sv.handshake(1);
    let mut to_bsn = common::ScriptPeer::connect(engine.local_addr().unwrap(), common::REGTEST);
    to_bsn.handshake(2);
    // sendhdrsen is taken without complaint
    to_bsn.send(&bsn::wire::Message::SendHdrsEn);
    let mut prev = bsn::Network::Regtest.params().genesis.hash();
    for (i, h) in hashes.iter().enumerate() {
        let theirs = hdrsen_after(&mut to_sv, prev);
        let ours = hdrsen_after(&mut to_bsn, prev);
        assert_eq!(theirs.header.hash().to_string(), *h);
        // field by field and byte for byte the same as the SV node's
        assert_eq!(ours, theirs, "enriched header {}", i + 1);
        let cb = ours.coinbase.as_ref().expect("coinbase and proof");
        assert_eq!(cb.proof.root(cb.tx.txid()), ours.header.merkle_root);
        assert_eq!(
            ours.no_more,
            i == hashes.len() - 1,
            "no more headers only at the tip"
        );
        prev = ours.header.hash();
    }
    // the whole answer from genesis: all six, within the size limit
    to_bsn.send(&bsn::wire::Message::GetHdrsEn(bsn::wire::Locator {
        version: 70016,
        hashes: vec![bsn::Network::Regtest.params().genesis.hash()],
        stop: bsn::wire::Hash256::ZERO,
    }));
    let all = to_bsn.expect(T, |m| matches!(m, bsn::wire::Message::HdrsEn(_)));
    assert!(matches!(all, bsn::wire::Message::HdrsEn(v) if v.len() == 6));
    to_bsn.send(&bsn::wire::Message::Ping(9));
    to_bsn.expect(T, |m| *m == bsn::wire::Message::Pong(9));
    assert_eq!(engine.ban_score("127.0.0.1".parse().unwrap()), 0);
    assert_peace(&sv, &engine, 1);
    engine.stop();
}

/// bsn syncs the chain from `sv`, checks every hash against the SV node's, and returns the
/// events' heights in order.
fn sync_from(sv: &SvNode, engine: &Engine, ev: &Receiver<Event>, height: u32) {
    engine.connect(sv.p2p_addr()).unwrap();
    let mut connected = Vec::new();
    let mut synced_at = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected.len() < height as usize {
        let e = ev
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("{} of {height} blocks connected", connected.len()));
        match e {
            Event::HeadersSynced { height: h } if synced_at.is_none() => {
                synced_at = Some((h, connected.len()))
            }
            Event::BlockConnected { height, .. } => connected.push(height),
            Event::PeerDisconnected { addr, reason, .. } => {
                panic!("{addr} dropped: {reason}")
            }
            _ => {}
        }
    }
    assert_eq!(
        synced_at,
        Some((height, 0)),
        "headers first: all headers before any block"
    );
    assert_eq!(connected, (1..=height).collect::<Vec<u32>>(), "chain order");
    let theirs = sv.block_hashes(0..=height);
    for (h, want) in (0..=height).zip(&theirs) {
        let (header, at) = engine.header(HeaderRef::Height(h)).expect("header");
        assert_eq!(
            (at, header.hash().to_string()),
            (h, want.clone()),
            "height {h}"
        );
    }
    let (tip, h) = engine.best_header().unwrap();
    assert_eq!((tip.to_string(), h), (sv.best_hash(), height));
}

#[test]
fn chains_of_2500_blocks_travel_sv_to_bsn_to_sv_and_a_new_block_crosses_bsn_alone() {
    const HEIGHT: u32 = 2_500;
    let Some(sv1) = SvNode::start(&[]) else {
        return;
    };
    sv1.mine(HEIGHT);
    assert_eq!(sv1.height(), HEIGHT);
    let engine = Engine::start(config()).unwrap();
    let ev = engine.events();
    // 1. bsn syncs 2,500 blocks (more than one 2,000-header batch) from the SV node
    sync_from(&sv1, &engine, &ev, HEIGHT);
    // every block is stored as the SV node has it
    for h in [1, 1_000, 2_000, 2_001, HEIGHT] {
        let want = sv1.rpc(
            "getblock",
            &format!("[{},0]", bcoin_support::json_str(&sv1.block_hashes([h])[0])),
        );
        let block = engine.block(HeaderRef::Height(h)).unwrap().expect("stored");
        assert_eq!(
            hex::encode(block.raw()),
            want.as_str().unwrap(),
            "block {h}"
        );
    }
    // 2. an SV node that may talk only to bsn syncs the 2,500 blocks from it
    let me = engine.local_addr().unwrap();
    let sv2 =
        SvNode::start(&[format!("-connect={me}"), "-listen=0".into()]).expect("started above");
    let want = sv1.best_hash();
    sv2.until(
        Duration::from_secs(180),
        "the second SV node syncs from bsn",
        |n| (n.height() == HEIGHT && n.best_hash() == want).then_some(()),
    );
    assert_eq!(
        sv2.block_hashes([1_000, 2_001])[..],
        sv1.block_hashes([1_000, 2_001])[..]
    );
    // 3. a block mined on the first SV node reaches the second through bsn alone
    let new = sv1.mine(1).pop().unwrap();
    sv2.until(T, "the new block reaches the second SV node", |n| {
        (n.best_hash() == new).then_some(())
    });
    let got = wait_for(&ev, T, "bsn connected the new block", |e| match e {
        Event::BlockConnected { height, hash, .. } if *height == HEIGHT + 1 => {
            Some(hash.to_string())
        }
        _ => None,
    });
    assert_eq!(got, new);
    // the two SV nodes know only bsn
    for n in [&sv1, &sv2] {
        assert!(n
            .peers()
            .iter()
            .all(|p| p["subver"].as_str() == Some(engine.config().user_agent.as_str())));
    }
    assert_peace(&sv1, &engine, 1);
    assert_peace(&sv2, &engine, 1);
    engine.stop();
}

#[test]
fn the_complaint_filter_sees_what_the_sv_node_logs_against_a_misbehaving_peer() {
    // The peace checks above are only as good as this filter. A peer that sends a second
    // `version` after its handshake is scored (1 point), and one that speaks another network's
    // magic is dropped: both must show.
    let Some(sv) = SvNode::start(&[]) else { return };
    let mut p = common::ScriptPeer::connect(sv.p2p_addr(), common::REGTEST);
    p.handshake(77);
    p.send(&bsn::wire::Message::Version(common::version_msg(70016, 78)));
    let lines = sv.until(T, "the SV node scores the second version", |n| {
        let c = n.complaints();
        c.iter()
            .any(|l| l.to_ascii_lowercase().contains("misbehaving"))
            .then_some(c)
    });
    assert!(lines.iter().any(|l| l.contains("peer=")), "{lines:#?}");
    let before = sv.complaints().len();
    let mut s = std::net::TcpStream::connect(sv.p2p_addr()).unwrap();
    let bcoin_magic = bsn::wire::Magic([0xfa, 0xbf, 0xb5, 0xda]);
    let frame = bsn::wire::frame::message_to_bytes(bcoin_magic, &bsn::wire::Message::Ping(1));
    std::io::Write::write_all(&mut s, &frame).unwrap();
    sv.until(T, "the SV node complains about the wrong magic", |n| {
        (n.complaints().len() > before).then_some(())
    });
}

/// Options that let the SV nodes take big transactions on regtest: the Genesis rules from
/// height 1 (before them a transaction is at most 1 MB by consensus), no transaction or script
/// size policy.
fn big_tx_options() -> Vec<String> {
    vec![
        "-genesisactivationheight=1".into(),
        "-maxtxsizepolicy=0".into(),
        "-maxscriptsizepolicy=0".into(),
    ]
}

/// A block at height 1 on the regtest genesis whose coinbase pays `n` outputs to `OP_TRUE`
/// (spendable by anyone with an empty scriptSig once mature).
fn anyone_can_spend_block(n: usize) -> bsn::wire::Block {
    use bsn::wire::{Block, BlockHeader, Hash256, OutPoint, Transaction};
    let genesis = bsn::Network::Regtest.params().genesis;
    let each = 50_0000_0000 / n as i64;
    let outs: Vec<(i64, &[u8])> = (0..n).map(|_| (each, &b"\x51"[..])).collect();
    let cb = Transaction::build(
        1,
        &[(
            OutPoint {
                txid: Hash256::ZERO,
                vout: u32::MAX,
            },
            b"\x01\x01\x03bsn",
            u32::MAX,
        )],
        &outs,
        0,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let mut h = BlockHeader {
        version: 4,
        prev_hash: genesis.hash(),
        merkle_root: cb.txid(),
        time: now.max(genesis.time + 1),
        bits: 0x207fffff,
        nonce: 0,
    };
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    Block::new(h, vec![cb])
}

/// A transaction of about `size` bytes spending `vout` of `coinbase` (an `OP_TRUE` output):
/// data outputs (`OP_FALSE OP_RETURN`, 400 KB each) and change, paying 1 satoshi a byte.
fn big_tx(coinbase: &bsn::wire::Transaction, vout: u32, size: usize) -> bsn::wire::Transaction {
    use bsn::wire::{OutPoint, Transaction};
    const CHUNK: usize = 400_000;
    let mut scripts = Vec::new();
    let mut left = size;
    let mut tag = 0u32;
    while left > 1_000 {
        let n = left.min(CHUNK);
        let mut s = vec![0x00, 0x6a, 0x4e];
        s.extend_from_slice(&(n as u32).to_le_bytes());
        s.extend(std::iter::repeat_n(tag as u8, n));
        tag += 1;
        scripts.push(s);
        left -= n;
    }
    let value = coinbase.outputs().nth(vout as usize).unwrap().value;
    let fee = size as i64 + 1_000;
    let mut outs: Vec<(i64, &[u8])> = scripts.iter().map(|s| (0, s.as_slice())).collect();
    outs.push((value - fee, &b"\x51"[..]));
    Transaction::build(
        1,
        &[(
            OutPoint {
                txid: coinbase.txid(),
                vout,
            },
            b"",
            u32::MAX,
        )],
        &outs,
        0,
    )
}

/// Gives the SV node block 1 from [`anyone_can_spend_block`] and 100 more on it, so that its
/// coinbase (returned) can be spent.
fn funded(sv: &SvNode, outputs: usize) -> bsn::wire::Transaction {
    let funding = anyone_can_spend_block(outputs);
    let r = sv.rpc(
        "submitblock",
        &format!("[\"{}\"]", hex::encode(funding.raw())),
    );
    assert!(r.is_null(), "submitblock: {r}");
    assert_eq!(sv.best_hash(), funding.hash().to_string());
    sv.mine(100);
    funding.txs[0].clone()
}

fn in_mempool(sv: &SvNode, txid: &str) -> bool {
    sv.rpc("getrawmempool", "[]")
        .as_array()
        .is_some_and(|m| m.iter().any(|t| t.as_str() == Some(txid)))
}

#[test]
fn transactions_of_3_and_20_mb_travel_sv_to_bsn_to_sv_and_bsn_to_sv() {
    let Some(sv1) = SvNode::start(&big_tx_options()) else {
        return;
    };
    let coinbase = funded(&sv1, 3);
    let mut c = config();
    c.tx_policy = bsn::TxPolicy::AcceptAll;
    let engine = Engine::start(c).unwrap();
    let ev = engine.events();
    engine.connect(sv1.p2p_addr()).unwrap();
    let me = engine.local_addr().unwrap();
    let mut opts = big_tx_options();
    opts.extend([format!("-connect={me}"), "-listen=0".into()]);
    let sv2 = SvNode::start(&opts).expect("started above");
    let tip = sv1.best_hash();
    sv2.until(T, "the second SV node syncs through bsn", |n| {
        (n.best_hash() == tip).then_some(())
    });
    // SV node -> bsn -> SV node, 3 MB and 20 MB
    for (vout, size) in [(0u32, 3_000_000usize), (1, 20_000_000)] {
        let tx = big_tx(&coinbase, vout, size);
        assert!(tx.raw().len() >= size - 1_000, "{} bytes", tx.raw().len());
        let txid = tx.txid().to_string();
        // (allowhighfees: a 20 MB transaction at 1 satoshi a byte passes the default -maxtxfee)
        let sent = sv1.rpc(
            "sendrawtransaction",
            &format!("[\"{}\",true]", hex::encode(tx.raw())),
        );
        assert_eq!(sent.as_str(), Some(txid.as_str()));
        let got = wait_for(
            &ev,
            Duration::from_secs(120),
            "bsn received the big tx",
            |e| match e {
                Event::TxReceived { tx, .. } => Some(tx.clone()),
                _ => None,
            },
        );
        assert_eq!(got.txid().to_string(), txid);
        assert_eq!(got.raw().len(), tx.raw().len());
        sv2.until(
            Duration::from_secs(120),
            "the big tx reaches the second SV node",
            |n| in_mempool(n, &txid).then_some(()),
        );
    }
    // bsn -> both SV nodes, 3 MB
    let tx = big_tx(&coinbase, 2, 3_000_000);
    let txid = tx.txid().to_string();
    engine.submit_tx(tx).unwrap();
    for n in [&sv1, &sv2] {
        n.until(
            Duration::from_secs(120),
            "bsn's big tx reaches the SV node",
            |n| in_mempool(n, &txid).then_some(()),
        );
    }
    assert_peace(&sv1, &engine, 1);
    assert_peace(&sv2, &engine, 1);
    engine.stop();
}

/// Bytes of the blocks at heights 1..=n as bsn stores them.
fn block_bytes(engine: &Engine, n: u32) -> u64 {
    (1..=n)
        .map(|h| {
            let b = engine.block(HeaderRef::Height(h)).unwrap().expect("stored");
            b.raw().len() as u64 + 24
        })
        .sum()
}

/// bsn's view of its association with a peer: the association ID, and the bytes of the
/// GENERAL and DATA1 streams (in, out).
fn streams(p: &bsn::PeerInfo) -> (String, [(u64, u64); 2]) {
    assert_eq!(p.stream_policy, "BlockPriority", "{p:?}");
    let kinds: Vec<&str> = p.streams.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, ["GENERAL", "DATA1"], "{p:?}");
    let io = |i: usize| (p.streams[i].bytes_in, p.streams[i].bytes_out);
    (
        p.association.expect("an association").to_string(),
        [io(0), io(1)],
    )
}

/// The SV node's view of bsn's associations: association ID → stream types.
fn sv_associations(sv: &SvNode, ua: &str) -> Vec<(String, String, Vec<String>)> {
    sv.peers()
        .iter()
        .filter(|p| p["subver"].as_str() == Some(ua))
        .map(|p| {
            (
                p["associd"].as_str().unwrap_or("").to_string(),
                p["streampolicy"].as_str().unwrap_or("").to_string(),
                p["streams"]
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .map(|s| s["streamtype"].as_str().unwrap_or("").to_string())
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn multistream_associations_with_the_sv_node_both_ways_carry_blocks_on_data1() {
    const HEIGHT: u32 = 300;
    let Some(sv1) = SvNode::start(&[]) else {
        return;
    };
    let engine = Engine::start(config()).unwrap();
    let _ev = engine.events();
    let ua = engine.config().user_agent.clone();
    // 1. bsn dials: its association (two streams, BlockPriority) as the SV node sees it
    engine.connect(sv1.p2p_addr()).unwrap();
    let assoc = sv1.until(
        T,
        "the SV node shows bsn's association",
        |n| match &sv_associations(n, &ua)[..] {
            [(id, policy, types)] if policy == "BlockPriority" && types.len() == 2 => {
                Some((id.clone(), types.clone()))
            }
            _ => None,
        },
    );
    assert_eq!(assoc.1, ["GENERAL", "DATA1"]);
    let outbound = || {
        let deadline = Instant::now() + T;
        loop {
            if let Some(p) = engine
                .peers()
                .into_iter()
                .find(|p| p.ready && p.direction == Direction::Outbound && p.streams.len() == 2)
            {
                return p;
            }
            assert!(Instant::now() < deadline, "bsn's side of the association");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (_, [general_before, data1_before]) = streams(&outbound());
    // blocks mined once the association stands come over DATA1: it carries at least their
    // bytes, GENERAL less than them
    sv1.mine(HEIGHT);
    let deadline = Instant::now() + Duration::from_secs(120);
    while engine.sync_progress().unwrap().1 != Some(HEIGHT) {
        assert!(Instant::now() < deadline, "bsn did not sync");
        std::thread::sleep(Duration::from_millis(50));
    }
    let blocks = block_bytes(&engine, HEIGHT);
    let (id, [general, data1]) = streams(&outbound());
    assert_eq!(id, assoc.0, "one association ID on both sides");
    let (general, data1) = (general.0 - general_before.0, data1.0 - data1_before.0);
    assert!(
        data1 >= blocks && general < blocks,
        "blocks of {blocks} bytes: GENERAL got {general}, DATA1 {data1}"
    );
    // 2. an SV node dials bsn: bsn takes its association and serves blocks over DATA1 (those
    // asked for before the SV node's DATA1 joined go over GENERAL, as the SV node sends them)
    let me = engine.local_addr().unwrap();
    let sv2 =
        SvNode::start(&[format!("-connect={me}"), "-listen=0".into()]).expect("started above");
    let want = sv1.best_hash();
    sv2.until(Duration::from_secs(120), "the second SV node syncs", |n| {
        (n.best_hash() == want).then_some(())
    });
    let inbound = || {
        let deadline = Instant::now() + T;
        loop {
            if let Some(p) = engine
                .peers()
                .into_iter()
                .find(|p| p.ready && p.direction == Direction::Inbound && p.streams.len() == 2)
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "the second SV node's association"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (id2, [general_before, data1_before]) = streams(&inbound());
    let new = sv1.mine(100);
    let want = new.last().unwrap().clone();
    sv2.until(Duration::from_secs(120), "the new blocks cross bsn", |n| {
        (n.best_hash() == want).then_some(())
    });
    let new_blocks = block_bytes(&engine, HEIGHT + 100) - blocks;
    let (_, [general, data1]) = streams(&inbound());
    let (general, data1) = (general.1 - general_before.1, data1.1 - data1_before.1);
    assert!(
        data1 >= new_blocks && general < new_blocks,
        "served {new_blocks} bytes of new blocks: GENERAL sent {general}, DATA1 {data1}"
    );
    let theirs = sv2.until(
        T,
        "the second SV node shows the association",
        |n| match &sv_associations(n, &ua)[..] {
            [(id, policy, types)] if policy == "BlockPriority" && types.len() == 2 => {
                Some(id.clone())
            }
            _ => None,
        },
    );
    assert_eq!(theirs, id2, "one association ID on both sides");
    assert_peace(&sv1, &engine, 1);
    assert_peace(&sv2, &engine, 1);
    engine.stop();
}

#[test]
fn a_200_mb_block_goes_from_bsn_to_the_sv_node_and_from_it_to_bsn() {
    use bsn::wire::{Block, BlockHeader, Hash256, OutPoint, Transaction};
    let Some(sv) = SvNode::start(&big_tx_options()) else {
        return;
    };
    let coinbase = funded(&sv, 1);
    let a = Engine::start(config()).unwrap();
    let aev = a.events();
    sync_from(&sv, &a, &aev, 101);
    // block 102, built by bsn: a coinbase and a 200 MB transaction spending the funding output
    let tx = big_tx(&coinbase, 0, 200_000_000);
    let cb = Transaction::build(
        1,
        &[(
            OutPoint {
                txid: Hash256::ZERO,
                vout: u32::MAX,
            },
            b"\x02\x66\x00big",
            u32::MAX,
        )],
        &[(50_0000_0000, &b"\x51"[..])],
        0,
    );
    let (prev, _) = a.header(HeaderRef::Height(101)).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let mut h = BlockHeader {
        version: 4,
        prev_hash: prev.hash(),
        merkle_root: bsn::wire::merkle_root(vec![cb.txid(), tx.txid()]),
        time: now.max(prev.time + 1),
        bits: 0x207fffff,
        nonce: 0,
    };
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    let block = Block::new(h, vec![cb, tx]);
    let (hash, size) = (block.hash(), block.raw().len());
    assert!(size > 200_000_000);
    a.submit_block(block).unwrap();
    // the SV node takes it from bsn
    let want = hash.to_string();
    sv.until(
        Duration::from_secs(300),
        "the SV node accepts the 200 MB block",
        |n| (n.best_hash() == want).then_some(()),
    );
    let info = sv.rpc("getblockheader", &format!("[\"{want}\"]"));
    assert_eq!(info["height"].as_i64(), Some(102));
    // and a second engine takes it from the SV node
    let b = Engine::start(config()).unwrap();
    let bev = b.events();
    sync_from(&sv, &b, &bev, 102);
    let got = b.block(HeaderRef::Height(102)).unwrap().expect("stored");
    assert_eq!((got.hash(), got.raw().len()), (hash, size));
    // both engines (one user agent) are on the SV node, unscored
    assert_peace(&sv, &a, 2);
    assert_peace(&sv, &b, 2);
    a.stop();
    b.stop();
}
