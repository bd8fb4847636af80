//! BSV multistreams between bsn engines and against scripted peers: an association forms with
//! a DATA1 stream under BlockPriority and carries the blocks; without multistreams on one side
//! there is one stream; a `createstrm` for an unknown association is refused (reject 0x60, not
//! scored), and one from another IP is refused and banned, as on the SV node.

mod common;
use bsn::wire::{stream_type, AssociationId, CreateStream, Message};
use bsn::{Engine, Event, PeerInfo};
use common::*;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// Waits until `e` has one peer whose association shows `streams` streams; that peer.
fn one_peer_with_streams(e: &Engine, streams: usize) -> PeerInfo {
    let deadline = Instant::now() + T;
    loop {
        let peers = e.peers();
        if let [p] = &peers[..] {
            if p.ready && p.streams.len() == streams {
                return p.clone();
            }
        }
        assert!(Instant::now() < deadline, "peers: {peers:#?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_engines_form_an_association_and_blocks_travel_on_data1() {
    let (a, _aev) = start(config());
    let (b, bev) = start(config());
    a.connect(b.local_addr().unwrap()).unwrap();
    let pa = one_peer_with_streams(&a, 2);
    let pb = one_peer_with_streams(&b, 2);
    assert_eq!(
        pa.association, pb.association,
        "one association ID both sides"
    );
    assert!(pa.association.is_some());
    for p in [&pa, &pb] {
        assert_eq!(p.stream_policy, "BlockPriority");
        let kinds: Vec<&str> = p.streams.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, ["GENERAL", "DATA1"]);
    }
    // a's blocks reach b over DATA1: b's DATA1 took at least their bytes, GENERAL less
    let before = one_peer_with_streams(&b, 2).streams;
    let mut prev = a.best_header().unwrap().0;
    let mut tip = a.header(bsn::HeaderRef::Hash(prev)).unwrap().0;
    let mut bytes = 0u64;
    for i in 0..50 {
        let blk = next_block(&tip, 5_000 + i);
        bytes += blk.raw().len() as u64 + 24;
        tip = blk.header;
        prev = tip.hash();
        a.submit_block(blk).unwrap();
    }
    wait_for(&bev, T, "b connects a's blocks", |e| match e {
        Event::BlockConnected { hash, .. } if *hash == prev => Some(()),
        _ => None,
    });
    let after = one_peer_with_streams(&b, 2).streams;
    let general = after[0].bytes_in - before[0].bytes_in;
    let data1 = after[1].bytes_in - before[1].bytes_in;
    assert!(
        data1 >= bytes && general < bytes,
        "{bytes} bytes of blocks: GENERAL got {general}, DATA1 {data1}"
    );
    a.stop();
    b.stop();
}

#[test]
fn without_multistreams_on_either_side_there_is_one_stream() {
    for off_side in 0..2 {
        let mut ca = config();
        let mut cb = config();
        [&mut ca, &mut cb][off_side].multistreams = false;
        let (a, _aev) = start(ca);
        let (b, _bev) = start(cb);
        a.connect(b.local_addr().unwrap()).unwrap();
        // ready on both sides with pings answered: the association, if any, is settled
        for e in [&a, &b] {
            let deadline = Instant::now() + T;
            loop {
                let p = e.peers();
                if p.len() == 1 && p[0].ready && p[0].rtt.is_some() {
                    break;
                }
                assert!(Instant::now() < deadline, "{p:#?}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for e in [&a, &b] {
            let p = &e.peers()[0];
            assert_eq!(p.association, None, "side {off_side} off: {p:?}");
            assert_eq!(p.streams.len(), 1);
            assert_eq!(p.stream_policy, "Default");
        }
        a.stop();
        b.stop();
    }
}

fn createstrm(id: AssociationId) -> Message {
    Message::CreateStream(CreateStream {
        association_id: id.to_bytes(),
        stream_type: stream_type::DATA1,
        policy: "BlockPriority".into(),
    })
}

fn refused(p: &mut ScriptPeer) -> bsn::wire::Reject {
    match p.expect(T, |m| matches!(m, Message::Reject(_))) {
        Message::Reject(r) => {
            assert!(p.closed_within(T), "closed after the reject");
            r
        }
        _ => unreachable!(),
    }
}

#[test]
fn streams_for_unknown_associations_or_from_other_ips_are_refused() {
    let (a, _aev) = start(config());
    let (b, bev) = start(config());
    a.connect(b.local_addr().unwrap()).unwrap();
    let assoc = one_peer_with_streams(&b, 2).association.unwrap();
    let addr = b.local_addr().unwrap();
    // an association nobody has: refused, not scored
    let mut p = ScriptPeer::connect_from("127.0.0.1".parse().unwrap(), addr, REGTEST).unwrap();
    p.send(&createstrm(AssociationId([7; 16])));
    let r = refused(&mut p);
    assert_eq!((r.message.as_str(), r.code), ("createstrm", 0x60));
    // a null association ID: refused
    let mut p = ScriptPeer::connect_from("127.0.0.1".parse().unwrap(), addr, REGTEST).unwrap();
    p.send(&Message::CreateStream(CreateStream {
        association_id: bytes::Bytes::new(),
        stream_type: stream_type::DATA1,
        policy: String::new(),
    }));
    assert_eq!(refused(&mut p).reason, "NULL association ID");
    // the real association, from another IP: refused and banned (the SV node bans it)
    let other: IpAddr = "127.0.0.9".parse().unwrap();
    let mut p = ScriptPeer::connect_from(other, addr, REGTEST).unwrap();
    p.send(&createstrm(assoc));
    assert_eq!(refused(&mut p).code, 0x60);
    wait_for(&bev, T, "the other IP banned", |e| match e {
        Event::Banned { subnet, .. } if subnet.contains(other) => Some(()),
        _ => None,
    });
    // a second createstrm on an established connection, or a createstrm after version, is a
    // stream setup error (closed, not scored)
    let mut p = ScriptPeer::connect_from("127.0.0.1".parse().unwrap(), addr, REGTEST).unwrap();
    p.handshake(99);
    p.send(&createstrm(assoc));
    assert!(p.closed_within(T));
    // the association itself is untouched, and nobody from loopback was scored
    let pb = one_peer_with_streams(&b, 2);
    assert_eq!(pb.association, Some(assoc));
    assert_eq!(b.ban_score("127.0.0.1".parse().unwrap()), 0);
    a.stop();
    b.stop();
}

/// A regtest block on `prev` holding a transaction of about `size` bytes.
fn big_block(prev: &bsn::wire::BlockHeader, size: usize) -> bsn::wire::Block {
    let cb = next_block(prev, 9_999).txs[0].clone();
    let script = vec![0x6a; size]; // OP_RETURN filler
    let tx = bsn::wire::Transaction::build(
        1,
        &[(
            bsn::wire::OutPoint {
                txid: cb.txid(),
                vout: 0,
            },
            b"",
            u32::MAX,
        )],
        &[(0, &script)],
        0,
    );
    let mut h = bsn::wire::BlockHeader {
        version: 4,
        prev_hash: prev.hash(),
        merkle_root: bsn::wire::merkle_root(vec![cb.txid(), tx.txid()]),
        time: prev.time + 1,
        bits: 0x207fffff,
        nonce: 0,
    };
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    bsn::wire::Block::new(h, vec![cb, tx])
}

/// Waits until `e`'s only peer shows `f`.
fn until_peer(e: &Engine, what: &str, f: impl Fn(&PeerInfo) -> bool) {
    let deadline = Instant::now() + T;
    loop {
        let peers = e.peers();
        if peers.len() == 1 && f(&peers[0]) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {peers:#?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_peer_that_asks_for_more_than_it_reads_is_served_at_its_pace_not_dropped() {
    // 1,000 requests for a 100 kB block (100 MB of answers, more than loopback socket buffers
    // hold) in one go, against a 2 MB send queue limit, with the answers on a DATA1 stream the
    // peer does not read yet: blocks are served as they go out, and every one arrives
    let mut c = config();
    c.max_send_queue = 2 << 20;
    c.read_pause_bytes = 256 << 10;
    let (e, ev) = start(c);
    let genesis = e.header(bsn::HeaderRef::Height(0)).unwrap().0;
    let block = big_block(&genesis, 100_000);
    let hash = block.hash();
    e.submit_block(block).unwrap();
    wait_for(&ev, T, "the block stored", |x| match x {
        Event::BlockConnected { hash: h, .. } if *h == hash => Some(()),
        _ => None,
    });
    // a scripted peer names an association and opens DATA1 under BlockPriority
    let id = AssociationId([0x5a; 16]);
    let addr = e.local_addr().unwrap();
    let mut general = ScriptPeer::connect(addr, REGTEST);
    let mut v = version_msg(70016, 31);
    v.set_association_id(Some(id));
    general.send(&Message::Version(v));
    let theirs = match general.expect(T, |m| matches!(m, Message::Version(_))) {
        Message::Version(v) => v,
        _ => unreachable!(),
    };
    assert_eq!(theirs.association_id(), Ok(Some(id)), "the ID is echoed");
    general.expect(T, |m| matches!(m, Message::Verack));
    general.send(&Message::Verack);
    wait_for(&ev, T, "the peer ready", |x| match x {
        Event::PeerConnected(_) => Some(()),
        _ => None,
    });
    let mut data1 = ScriptPeer::connect(addr, REGTEST);
    data1.send(&createstrm(id));
    match data1.expect(T, |m| matches!(m, Message::StreamAck(_))) {
        Message::StreamAck(a) => assert_eq!(a.association_id, id.to_bytes()),
        _ => unreachable!(),
    }
    const N: usize = 1_000;
    let inv: Vec<bsn::wire::Inventory> = (0..N)
        .map(|_| bsn::wire::Inventory {
            kind: bsn::wire::InvType::BLOCK,
            hash,
        })
        .collect();
    general.send(&Message::GetData(inv));
    // the request was read, and answers filled the socket buffers (more than the send queue
    // limit out) before the peer reads anything
    until_peer(&e, "the request read and 3 MB sent", |p| {
        p.streams.len() == 2 && p.streams[1].bytes_out >= 3 << 20
    });
    // DATA1 is read only now: every block comes, on DATA1, and the connection stays
    let mut got = 0;
    while got < N {
        match data1.recv(T) {
            Some(Message::Block(b)) if b.hash() == hash => got += 1,
            Some(_) => {}
            None => panic!("DATA1 closed or silent after {got} of {N} blocks"),
        }
    }
    until_peer(&e, "all sent", |p| {
        p.streams[1].bytes_out >= (N * 100_000) as u64 && p.queued_bytes < 2 << 20
    });
    assert_eq!(e.ban_score("127.0.0.1".parse().unwrap()), 0);
    e.stop();
}
