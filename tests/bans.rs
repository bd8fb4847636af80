//! Ban list and ban scores over loopback, with distinct 127.x.y.z source addresses.

mod common;

use bsn::wire::Message;
use bsn::Subnet;
use bsn::{BanReason, DisconnectReason, Event};
use common::*;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::from([127, a, b, c])
}

/// A peer that completes its handshake from `src`.
fn honest(src: IpAddr, addr: std::net::SocketAddr, nonce: u64) -> ScriptPeer {
    let mut p = ScriptPeer::connect_from(src, addr, REGTEST).unwrap();
    p.handshake(nonce);
    p
}

/// Whether a fresh connection from `src` is refused (closed without a version answer).
fn refused(src: IpAddr, addr: std::net::SocketAddr) -> bool {
    match ScriptPeer::connect_from(src, addr, REGTEST) {
        Err(_) => true,
        Ok(mut p) => {
            p.send(&Message::Version(version_msg(70016, 99)));
            p.closed_within(Duration::from_secs(3))
        }
    }
}

#[test]
fn misbehaviour_is_scored_as_the_sv_node_scores_it_and_a_banned_peer_cannot_reconnect() {
    let (a, aev) = start(config());
    let addr = a.local_addr().unwrap();
    let src = ip(1, 1, 1);
    let mut p = honest(src, addr, 1);
    // bad checksums are dropped and cost nothing below 100 within 500 ms: the ping after 50 of
    // them is answered and the score is still 0
    let mut bad = bsn::wire::frame::message_to_bytes(REGTEST, &Message::Ping(5)).to_vec();
    bad[20] ^= 0xff;
    p.send_raw(&bad.repeat(50)).unwrap();
    p.send(&Message::Ping(6));
    p.expect(T, |m| *m == Message::Pong(6));
    assert_eq!(a.ban_score(src), 0);
    // a second version: 1 point
    p.send(&Message::Version(version_msg(70016, 3)));
    let (reason, score) = wait_for(&aev, T, "scored", |e| match e {
        Event::BanScore {
            ip, reason, score, ..
        } if *ip == src => Some((*reason, *score)),
        _ => None,
    });
    assert_eq!((reason, score), (BanReason::UnexpectedMessage, 1));
    // another network's magic: banned at once, and the address cannot come back
    let wrong = bsn::wire::frame::message_to_bytes(
        bsn::wire::Magic([0xe3, 0xe1, 0xf3, 0xe8]),
        &Message::Ping(7),
    );
    p.send_raw(&wrong).unwrap();
    let banned = wait_for(&aev, T, "banned", |e| match e {
        Event::Banned { subnet, reason, .. } => Some((*subnet, reason.clone())),
        _ => None,
    });
    assert_eq!(banned.0, Subnet::host(src));
    assert!(banned.1.contains("wrong network"), "{}", banned.1);
    assert!(p.closed_within(T));
    assert!(a.is_banned(src));
    assert!(refused(src, addr), "banned address reconnected");
    // a flood of bad checksums (150 at once): 1 point for each past 100
    let flooder = ip(1, 1, 3);
    let mut f = honest(flooder, addr, 4);
    f.send_raw(&bad.repeat(150)).unwrap();
    let (reason, score) = wait_for(&aev, T, "checksum flood scored", |e| match e {
        Event::BanScore {
            ip, reason, score, ..
        } if *ip == flooder => Some((*reason, *score)),
        _ => None,
    });
    assert_eq!((reason, score), (BanReason::BadChecksum, 1));
    // another address is still welcome
    honest(ip(1, 1, 2), addr, 2);
    a.stop();
}

#[test]
fn a_subnet_ban_refuses_every_address_inside_and_drops_live_ones() {
    let (a, aev) = start(config());
    let addr = a.local_addr().unwrap();
    let mut inside = honest(ip(2, 5, 9), addr, 1);
    let _outside = honest(ip(2, 6, 9), addr, 2);
    for _ in 0..2 {
        wait_for(&aev, T, "connected", |e| {
            matches!(e, Event::PeerConnected(_)).then_some(())
        });
    }
    a.ban("127.2.5.0/24", Duration::from_secs(3600), "operator")
        .unwrap();
    let r = wait_for(&aev, T, "dropped", |e| match e {
        Event::PeerDisconnected { addr, reason, .. } => Some((addr.ip(), reason.clone())),
        _ => None,
    });
    assert_eq!(r, (ip(2, 5, 9), DisconnectReason::Banned));
    assert!(inside.closed_within(T));
    for last in [1, 77, 254] {
        assert!(refused(ip(2, 5, last), addr), "127.2.5.{last} got in");
    }
    honest(ip(2, 6, 10), addr, 3);
    assert_eq!(
        a.peers()
            .iter()
            .filter(|p| p.addr.ip() == ip(2, 6, 9))
            .count(),
        1,
        "outside peer kept"
    );
    // and the engine does not dial into it either
    a.connect(std::net::SocketAddr::new(ip(2, 5, 1), 1))
        .unwrap();
    wait_for(&aev, T, "dial refused", |e| match e {
        Event::ConnectFailed { reason, .. } if reason.contains("banned") => Some(()),
        _ => None,
    });
    assert!(a.unban("127.2.5.0/24").unwrap());
    honest(ip(2, 5, 9), addr, 4);
    assert!(a.ban("not-a-subnet", Duration::from_secs(1), "x").is_err());
    a.stop();
}

#[test]
fn bans_expire_by_themselves() {
    let mut c = config();
    c.persist_interval = Duration::from_millis(200);
    let (a, aev) = start(c);
    let addr = a.local_addr().unwrap();
    a.ban("127.3.0.1", Duration::from_secs(1), "short").unwrap();
    assert!(refused(ip(3, 0, 1), addr));
    wait_for(&aev, Duration::from_secs(5), "unbanned", |e| {
        matches!(e, Event::Unbanned { .. }).then_some(())
    });
    assert!(!a.is_banned(ip(3, 0, 1)));
    assert!(a.bans().is_empty());
    honest(ip(3, 0, 1), addr, 1);
    a.stop();
}

#[test]
fn bans_survive_a_restart() {
    let dir = TempDir::new("bans-restart");
    let mut c = config();
    c.data_dir = Some(dir.0.clone());
    let (a, _aev) = start(c.clone());
    a.ban("127.4.0.0/16", Duration::from_secs(3600), "kept")
        .unwrap();
    a.ban("::1", Duration::from_secs(3600), "v6").unwrap();
    a.stop();
    let (a, _aev) = start(c);
    let bans = a.bans();
    assert_eq!(bans.len(), 2, "{bans:?}");
    assert!(bans
        .iter()
        .any(|(s, b)| s.to_string() == "127.4.0.0/16" && b.reason == "kept"));
    assert!(a.is_banned("::1".parse().unwrap()));
    assert!(refused(ip(4, 9, 9), a.local_addr().unwrap()));
    a.clear_bans().unwrap();
    assert!(!a.is_banned(ip(4, 9, 9)));
    a.stop();
}

#[test]
fn scores_decay_and_never_ban_addresses_are_spared() {
    let mut c = config();
    c.ban_scores.decay_interval = 1;
    c.ban_scores.decay_amount = 10;
    c.never_ban = vec!["127.5.0.0/16".parse().unwrap()];
    let (a, aev) = start(c);
    let addr = a.local_addr().unwrap();
    let src = ip(6, 0, 1);
    let mut p = honest(src, addr, 1);
    // 20 points: more headers than a message may hold (2,001, a protocol violation)
    let mut headers = vec![0xfd, 0xd1, 0x07];
    headers.extend(std::iter::repeat_n(0u8, 2001 * 81));
    p.send(&Message::Unknown {
        command: bsn::wire::Command::new("headers").unwrap(),
        payload: bytes::Bytes::from(headers),
    });
    let score = wait_for(&aev, T, "scored", |e| match e {
        Event::BanScore { ip, score, .. } if *ip == src => Some(*score),
        _ => None,
    });
    assert_eq!(score, 20);
    let t0 = Instant::now();
    while a.ban_score(src) > 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "score did not decay");
        std::thread::sleep(Duration::from_millis(50));
    }
    // never-ban: another network's magic (banned at once otherwise) does not ban, and neither
    // does the API
    let spared = ip(5, 1, 1);
    let mut q = honest(spared, addr, 2);
    let wrong = bsn::wire::frame::message_to_bytes(
        bsn::wire::Magic([0xe3, 0xe1, 0xf3, 0xe8]),
        &Message::Ping(7),
    );
    let _ = q.send_raw(&wrong);
    // its score passes the ban threshold, and still no ban
    wait_for(
        &aev,
        T,
        "spared address scored past the threshold",
        |e| match e {
            Event::BanScore { ip, score, .. } if *ip == spared && *score >= 100 => Some(()),
            _ => None,
        },
    );
    assert!(!a.is_banned(spared));
    assert!(!a.bans().iter().any(|(s, _)| s.contains(spared)));
    assert!(a.ban("127.5.1.1", Duration::from_secs(60), "no").is_err());
    a.stop();
}

#[test]
fn when_inbound_is_full_the_worst_peer_is_evicted_for_a_newcomer() {
    let mut c = config();
    c.max_inbound = 2;
    c.evict_min_age = Duration::from_millis(100);
    let (a, aev) = start(c);
    let addr = a.local_addr().unwrap();
    let mut good = honest(ip(7, 0, 1), addr, 1);
    let mut bad = honest(ip(7, 0, 2), addr, 2);
    for _ in 0..2 {
        wait_for(&aev, T, "connected", |e| {
            matches!(e, Event::PeerConnected(_)).then_some(())
        });
    }
    // a second version: a ban score (1 point), so a lower peer score
    bad.send(&Message::Version(version_msg(70016, 9)));
    wait_for(&aev, T, "scored", |e| {
        matches!(e, Event::BanScore { .. }).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300)); // older than evict_min_age, scores refreshed
    let scores: Vec<(IpAddr, u32)> = a.peers().iter().map(|p| (p.addr.ip(), p.score)).collect();
    let s = |x| scores.iter().find(|(i, _)| *i == x).unwrap().1;
    assert!(s(ip(7, 0, 2)) < s(ip(7, 0, 1)), "{scores:?}");
    let _new = honest(ip(7, 0, 3), addr, 3);
    let (gone, reason) = wait_for(&aev, T, "evicted", |e| match e {
        Event::PeerDisconnected { addr, reason, .. } => Some((addr.ip(), reason.clone())),
        _ => None,
    });
    assert_eq!((gone, reason), (ip(7, 0, 2), DisconnectReason::Evicted));
    assert!(bad.closed_within(T));
    good.send(&Message::Ping(1));
    good.expect(T, |m| *m == Message::Pong(1));
    let mut ips: Vec<IpAddr> = a.peers().iter().map(|p| p.addr.ip()).collect();
    ips.sort();
    assert_eq!(ips, vec![ip(7, 0, 1), ip(7, 0, 3)]);
    a.stop();
}
