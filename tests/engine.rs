//! The engine over real loopback sockets: handshakes, refusals, timeouts, hostile peers, limits,
//! the embedder's API, and 1,000 concurrent connections.

mod common;

use bsn::wire::{Command, Magic, Message};
use bsn::{Config, DisconnectReason, Engine, Error, Event, Network, PeerId, SendError};
use bytes::Bytes;
use common::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

fn connected(ev: &Event) -> Option<(PeerId, bsn::Direction)> {
    match ev {
        Event::PeerConnected(p) => Some((p.id, p.direction)),
        _ => None,
    }
}

fn disconnected(ev: &Event) -> Option<DisconnectReason> {
    match ev {
        Event::PeerDisconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    }
}

#[test]
fn two_engines_handshake_both_ways() {
    let (a, aev) = start(config());
    let (b, bev) = start(config());
    b.connect(a.local_addr().unwrap()).unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    let mut dirs_a = vec![
        wait_for(&aev, T, "a connected", connected).1,
        wait_for(&aev, T, "a connected", connected).1,
    ];
    let mut dirs_b = vec![
        wait_for(&bev, T, "b connected", connected).1,
        wait_for(&bev, T, "b connected", connected).1,
    ];
    dirs_a.sort_by_key(|d| format!("{d}"));
    dirs_b.sort_by_key(|d| format!("{d}"));
    assert_eq!(format!("{dirs_a:?}"), "[Inbound, Outbound]");
    assert_eq!(format!("{dirs_b:?}"), "[Inbound, Outbound]");
    // (a BSV peer's second stream is listed, not ready, until it joins its first connection)
    let peers: Vec<_> = a.peers().into_iter().filter(|p| p.ready).collect();
    assert_eq!(peers.len(), 2);
    for p in &peers {
        assert_eq!(p.version, 70016);
        assert!(p.user_agent.starts_with("/bsn:"), "{}", p.user_agent);
    }
    // protoconf (sent right after the handshake) is exchanged and honoured
    let deadline = Instant::now() + T;
    while a
        .peers()
        .iter()
        .any(|p| p.ready && p.their_max_payload != 2 * 1024 * 1024)
    {
        assert!(Instant::now() < deadline, "protoconf not honoured");
        std::thread::sleep(Duration::from_millis(5));
    }
    // the first ping goes out right after the handshake: a round trip gets measured
    let deadline = Instant::now() + T;
    while a.peers().iter().any(|p| p.ready && p.rtt.is_none()) {
        assert!(Instant::now() < deadline, "no rtt measured");
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = &a.peers().into_iter().find(|p| p.ready).unwrap().stats;
    let ping = stats
        .by_command
        .iter()
        .find(|(c, _)| c.as_str() == "ping")
        .map(|(_, s)| *s)
        .unwrap();
    assert!(ping.msgs_out >= 1 && ping.bytes_out >= 32);
    a.stop();
    b.stop();
}

#[test]
fn outbound_connections_come_from_the_configured_source_address() {
    let (a, aev) = start(config());
    let mut cb = config();
    cb.outbound_bind = Some("127.0.0.9".parse().unwrap());
    let (b, _bev) = start(cb);
    b.connect(a.local_addr().unwrap()).unwrap();
    let addr = wait_for(&aev, T, "a connected", |e| match e {
        Event::PeerConnected(p) => Some(p.addr),
        _ => None,
    });
    assert_eq!(addr.ip().to_string(), "127.0.0.9");
    // the second stream (BlockPriority's DATA1) comes from the same address and joins
    let deadline = Instant::now() + T;
    while !a.peers().iter().any(|p| p.ready && p.streams.len() == 2) {
        assert!(
            Instant::now() < deadline,
            "no second stream: {:?}",
            a.peers()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(a.bans().is_empty());
    // a source address that is not this host's: the dial fails, reported as such
    let mut cc = config();
    cc.outbound_bind = Some("192.0.2.1".parse().unwrap());
    let (c, cev) = start(cc);
    c.connect(a.local_addr().unwrap()).unwrap();
    wait_for(&cev, T, "c's dial failed", |e| match e {
        Event::ConnectFailed { .. } | Event::PeerDisconnected { .. } => Some(()),
        _ => None,
    });
    a.stop();
    b.stop();
    c.stop();
}

#[test]
fn messages_sent_broadcast_and_disconnect_through_the_api() {
    let (a, aev) = start(config());
    let (b, bev) = start(config());
    b.connect(a.local_addr().unwrap()).unwrap();
    let (id_on_a, _) = wait_for(&aev, T, "a connected", connected);
    let (id_on_b, _) = wait_for(&bev, T, "b connected", connected);
    let hello = Message::Unknown {
        command: Command::new("hello").unwrap(),
        payload: Bytes::from_static(b"world"),
    };
    a.send(id_on_a, hello.clone()).unwrap();
    let got = wait_for(&bev, T, "hello on b", |e| match e {
        Event::Message { peer, message } if *peer == id_on_b => Some(message.clone()),
        _ => None,
    });
    assert_eq!(got, hello);
    b.broadcast(Message::Mempool).unwrap();
    wait_for(&aev, T, "mempool on a", |e| {
        matches!(
            e,
            Event::Message {
                message: Message::Mempool,
                ..
            }
        )
        .then_some(())
    });
    // a message larger than the peer's advertised limit is refused with a typed error
    let big = Message::Unknown {
        command: Command::new("big").unwrap(),
        payload: Bytes::from(vec![0u8; 3 << 20]),
    };
    assert!(matches!(
        a.send(id_on_a, big),
        Err(SendError::TooLarge { len, .. }) if len == 3 << 20
    ));
    let nobody = PeerId::from(999u64 << 10);
    assert_eq!(
        a.send(nobody, Message::GetAddr),
        Err(SendError::NoSuchPeer(nobody))
    );
    a.disconnect(id_on_a).unwrap();
    assert_eq!(
        wait_for(&aev, T, "a disconnect", disconnected),
        DisconnectReason::Requested
    );
    assert_eq!(
        wait_for(&bev, T, "b disconnect", disconnected),
        DisconnectReason::Closed
    );
    a.stop();
    b.stop();
}

#[test]
fn wrong_magic_old_version_and_self_connection_are_refused() {
    let (a, aev) = start(config());
    let addr = a.local_addr().unwrap();
    // a mainnet peer (from its own address: another network's magic is banned at once, as the
    // SV node does)
    let mut p = ScriptPeer::connect_from(
        std::net::IpAddr::from([127, 0, 8, 1]),
        addr,
        Network::Mainnet.params().magic,
    )
    .unwrap();
    p.send(&Message::Version(version_msg(70016, 1)));
    assert!(matches!(
        wait_for(&aev, T, "wrong magic", disconnected),
        DisconnectReason::WrongNetwork { .. }
    ));
    assert!(p.closed_within(T));
    // an engine of another network dialled by ours
    let mut other = config();
    other.network = Network::Stn.params();
    other.listen = Some("127.0.9.1:0".parse().unwrap());
    let (c, _cev) = start(other);
    a.connect(c.local_addr().unwrap()).unwrap();
    assert!(matches!(
        wait_for(&aev, T, "wrong magic outbound", disconnected),
        DisconnectReason::WrongNetwork { .. } | DisconnectReason::Closed
    ));
    // an old protocol version
    let mut p = ScriptPeer::connect(addr, REGTEST);
    p.send(&Message::Version(version_msg(60000, 2)));
    assert_eq!(
        wait_for(&aev, T, "old version", disconnected),
        DisconnectReason::ObsoleteVersion {
            version: 60000,
            min: 70001
        }
    );
    assert!(p.closed_within(T));
    // ourselves
    a.connect(addr).unwrap();
    let mut reasons = vec![
        wait_for(&aev, T, "self 1", disconnected),
        wait_for(&aev, T, "self 2", disconnected),
    ];
    reasons.sort_by_key(|r| r.to_string());
    assert!(
        reasons.contains(&DisconnectReason::SelfConnection),
        "{reasons:?}"
    );
    assert!(a.peers().is_empty());
    a.stop();
    c.stop();
}

#[test]
fn slow_handshake_is_dropped_at_the_timeout() {
    let mut c = config();
    c.handshake_timeout = Duration::from_millis(300);
    let (a, aev) = start(c);
    let t0 = Instant::now();
    let mut p = ScriptPeer::connect(a.local_addr().unwrap(), REGTEST);
    // slowloris: the first bytes of a header, then nothing
    p.send_raw(&REGTEST.0).unwrap();
    assert_eq!(
        wait_for(&aev, T, "handshake timeout", disconnected),
        DisconnectReason::HandshakeTimeout
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(p.closed_within(T));
    a.stop();
}

#[test]
fn garbage_is_dropped_and_others_are_still_served() {
    let (a, aev) = start(config());
    let addr = a.local_addr().unwrap();
    let mut honest = ScriptPeer::connect(addr, REGTEST);
    honest.handshake(11);
    wait_for(&aev, T, "honest connected", connected);
    // each garbage peer from its own address: their ban scores must not ban the honest one
    for seed in 0..20u64 {
        let src = std::net::IpAddr::from([127, 0, 9, seed as u8 + 1]);
        let mut g = ScriptPeer::connect_from(src, addr, REGTEST).unwrap();
        let garbage: Vec<u8> = (0..4096u64)
            .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) as u8)
            .collect();
        let _ = g.send_raw(&garbage);
        assert!(g.closed_within(T), "garbage peer {seed} not dropped");
    }
    // a frame with the right magic but an invalid command, and an oversize announcement
    let mut g = ScriptPeer::connect_from([127, 0, 9, 101].into(), addr, REGTEST).unwrap();
    let mut hdr = [0u8; 24];
    hdr[..4].copy_from_slice(&REGTEST.0);
    hdr[4..8].copy_from_slice(b"v\x01r\x02");
    let _ = g.send_raw(&hdr);
    assert!(g.closed_within(T));
    let mut g = ScriptPeer::connect_from([127, 0, 9, 102].into(), addr, REGTEST).unwrap();
    let mut hdr = [0u8; 24];
    hdr[..4].copy_from_slice(&REGTEST.0);
    hdr[4..11].copy_from_slice(b"version");
    hdr[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let _ = g.send_raw(&hdr);
    assert!(g.closed_within(T));
    // the honest peer still gets answers
    honest.send(&Message::Ping(777));
    honest.expect(T, |m| *m == Message::Pong(777));
    assert_eq!(a.peers().len(), 1);
    a.stop();
}

#[test]
fn a_peer_that_stops_answering_pings_is_dropped() {
    let mut c = config();
    c.ping_interval = Duration::from_millis(100);
    c.ping_timeout = Duration::from_millis(400);
    let (a, aev) = start(c);
    let mut p = ScriptPeer::connect(a.local_addr().unwrap(), REGTEST);
    p.handshake(5);
    // answer the first ping, then go silent
    let n = match p.expect(T, |m| matches!(m, Message::Ping(_))) {
        Message::Ping(n) => n,
        _ => unreachable!(),
    };
    p.send(&Message::Pong(n));
    assert_eq!(
        wait_for(&aev, T, "ping timeout", disconnected),
        DisconnectReason::PingTimeout
    );
    a.stop();
}

#[test]
fn a_peer_that_does_not_read_is_dropped() {
    let mut c = config();
    c.max_send_queue = 1 << 20;
    let (a, aev) = start(c);
    let mut p = ScriptPeer::connect(a.local_addr().unwrap(), REGTEST);
    p.handshake(9);
    let (id, _) = wait_for(&aev, T, "connected", connected);
    let chunk = Message::Unknown {
        command: Command::new("blob").unwrap(),
        payload: Bytes::from(vec![7u8; 512 * 1024]),
    };
    // the peer never reads: kernel buffers fill, then the queue passes its limit
    let mut dropped = false;
    for _ in 0..200 {
        if a.send(id, chunk.clone()).is_err() {
            dropped = true;
            break;
        }
    }
    let reason = wait_for(&aev, T, "queue full", disconnected);
    assert!(
        matches!(reason, DisconnectReason::SendQueueFull { .. }),
        "{reason:?} (send failed: {dropped})"
    );
    a.stop();
}

#[test]
fn connection_limits() {
    let mut c = config();
    c.max_per_ip = 2;
    let (a, aev) = start(c);
    let addr = a.local_addr().unwrap();
    let mut p1 = ScriptPeer::connect(addr, REGTEST);
    p1.handshake(1);
    let mut p2 = ScriptPeer::connect(addr, REGTEST);
    p2.handshake(2);
    wait_for(&aev, T, "1", connected);
    wait_for(&aev, T, "2", connected);
    let mut p3 = ScriptPeer::connect(addr, REGTEST);
    assert!(p3.closed_within(T), "third connection from one IP accepted");
    // (the refused third connection raises its own PeerDisconnected: wait for p1's)
    let p1_addr = p1.stream.local_addr().unwrap();
    drop(p1);
    wait_for(&aev, T, "p1 gone", |e| match e {
        Event::PeerDisconnected { addr, .. } if *addr == p1_addr => Some(()),
        _ => None,
    });
    let mut p4 = ScriptPeer::connect(addr, REGTEST);
    p4.handshake(4);
    a.stop();

    let mut c = config();
    c.max_inbound = 1;
    let (a, _aev) = start(c);
    let mut p1 = ScriptPeer::connect(a.local_addr().unwrap(), REGTEST);
    p1.handshake(1);
    let mut p2 = ScriptPeer::connect(a.local_addr().unwrap(), REGTEST);
    assert!(p2.closed_within(T), "inbound limit not enforced");
    a.stop();
}

#[test]
fn static_peers_are_redialled() {
    let (b, _bev) = start(config());
    let b_addr = b.local_addr().unwrap();
    let mut c = config();
    c.connect = vec![b_addr];
    c.redial_base = Duration::from_millis(50);
    c.redial_max = Duration::from_millis(200);
    let (a, aev) = start(c);
    wait_for(&aev, T, "static connected", connected);
    b.stop();
    wait_for(&aev, T, "static dropped", disconnected);
    let mut c2 = config();
    c2.listen = Some(b_addr);
    let (b2, _b2ev) = start(c2);
    wait_for(&aev, T, "static reconnected", connected);
    a.stop();
    b2.stop();
}

#[test]
fn start_errors_are_clear() {
    let (a, _ev) = start(config());
    let mut c = config();
    c.listen = a.local_addr();
    assert!(matches!(Engine::start(c), Err(Error::Bind { .. })));
    let mut c = config();
    c.shards = 0;
    assert!(matches!(Engine::start(c), Err(Error::Config(_))));
    let mut c = config();
    c.data_dir = Some("/proc/bsn-cannot-create-here".into());
    let e = Engine::start(c).err().expect("unwritable data dir refused");
    assert!(matches!(e, Error::DataDir { .. }), "{e}");
    let dir = TempDir::new("ok");
    let mut c = config();
    c.data_dir = Some(dir.0.join("sub"));
    Engine::start(c).expect("creates a missing data dir").stop();
    assert!(Config::builder(Network::Regtest)
        .listen("nonsense:address:1")
        .build()
        .is_err());
    a.stop();
}

#[test]
fn a_thousand_concurrent_connections_complete_their_handshake() {
    let mut c = config();
    c.max_inbound = 2000;
    c.event_capacity = 10_000;
    let (a, aev) = start(c);
    let addr = a.local_addr().unwrap();
    let t0 = Instant::now();
    let mut peers: Vec<ScriptPeer> = (0..1000)
        .map(|_| ScriptPeer::connect(addr, REGTEST))
        .collect();
    for (i, p) in peers.iter_mut().enumerate() {
        p.send(&Message::Version(version_msg(70016, 1000 + i as u64)));
    }
    for p in peers.iter_mut() {
        p.expect(T, |m| matches!(m, Message::Verack));
        p.send(&Message::Verack);
    }
    let mut n = 0;
    while n < 1000 {
        wait_for(&aev, T, "1000 handshakes", connected);
        n += 1;
    }
    eprintln!("1000 handshakes in {:?}", t0.elapsed());
    assert_eq!(a.peers().iter().filter(|p| p.ready).count(), 1000);
    a.stop();
    let _ = Magic([0; 4]);
}
