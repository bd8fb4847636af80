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
