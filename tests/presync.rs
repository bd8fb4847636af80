//! Header pre-sync below the minimum chain work: a peer that reaches a fresh node first with a
//! million cheap headers has none of them stored and costs a bit per header; a peer that shows
//! the honest chain and then serves another one is caught before anything of it is stored; the
//! honest chain, once shown, is downloaded again and stored.

mod common;
use bsn::network::{Consensus, Network};
use bsn::wire::{BlockHeader, Hash256, Message};
use bsn::{BanReason, Event};
use common::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
/// Honest headers: target 2^246, about 1,024 hashes and 1,024 units of work each.
const HONEST_BITS: u32 = 0x1f3f_ffff;
/// The attacker's: target 2^255, two hashes and two units of work each.
const CHEAP_BITS: u32 = 0x207f_ffff;

/// A peer from `ip` that has finished its handshake with the engine at `addr`.
fn peer(ip: &str, addr: std::net::SocketAddr, nonce: u64) -> ScriptPeer {
    let mut p = ScriptPeer::connect_from(ip.parse().unwrap(), addr, REGTEST).unwrap();
    let mut v = version_msg(70016, nonce);
    v.start_height = 1_000_000;
    p.send(&Message::Version(v));
    p.expect(T, |m| matches!(m, Message::Verack));
    p.send(&Message::Verack);
    p
}

/// The next `getheaders` the engine sends `p`: its locator.
fn next_request(p: &mut ScriptPeer) -> Vec<Hash256> {
    match p.expect(T, |m| matches!(m, Message::GetHeaders(_))) {
        Message::GetHeaders(l) => l.hashes,
        _ => unreachable!(),
    }
}

#[test]
fn headers_are_stored_only_once_shown_to_reach_the_minimum_work() {
    let genesis = Network::Regtest.params().genesis;
    let mut honest = vec![genesis];
    for i in 0..2_500u64 {
        let h = header_on(honest.last().unwrap(), HONEST_BITS, i);
        honest.push(h);
    }
    // the honest chain reaches the minimum work at height 2,400 (in its second batch)
    let mut minimum = genesis.work();
    for h in &honest[1..=2_400] {
        minimum = minimum.saturating_add(&h.work());
    }
    let params = Network::Regtest.params().with_consensus(Consensus {
        minimum_chain_work: minimum,
        ..Consensus::unchecked()
    });
    let mut c = config();
    c.network = params;
    c.headers_only = true;
    let (e, ev) = start(c);
    let addr = e.local_addr().unwrap();

    // 1. The first peer feeds a million cheap headers (2,000,000 units of work, short of the
    //    minimum), each batch as asked; then its chain ends.
    let mut cheap = peer("127.0.0.61", addr, 601);
    let mut tip = genesis;
    let mut sent = 0u64;
    let mut peak = 0usize;
    while sent < 1_000_000 {
        let locator = next_request(&mut cheap);
        assert_eq!(locator[0], tip.hash(), "asked to go on after {sent}");
        let batch: Vec<BlockHeader> = (0..2_000)
            .map(|i| {
                tip = header_on(&tip, CHEAP_BITS, 1 << 40 | (sent + i));
                tip
            })
            .collect();
        cheap.send(&Message::Headers(batch));
        sent += 2_000;
        let counts = e.core_counts().unwrap();
        assert_eq!(
            counts.headers, 1,
            "nothing stored after {sent} cheap headers"
        );
        peak = peak.max(counts.presync_bytes);
    }
    let locator = next_request(&mut cheap);
    assert_eq!(locator[0], tip.hash());
    cheap.send(&Message::Headers(vec![header_on(&tip, CHEAP_BITS, 7)]));
    let deadline = Instant::now() + T;
    while e.core_counts().unwrap().presync_peers > 0 {
        assert!(Instant::now() < deadline, "the cheap count is dropped");
        std::thread::sleep(Duration::from_millis(10));
    }
    let counts = e.core_counts().unwrap();
    assert_eq!(counts.headers, 1);
    // a bit per header: 125 KB for a million (up to twice that as the vector grows), where a
    // stored header costs over 100 bytes
    assert!(
        peak <= 2 * 1_000_000 / 8 + 4_096,
        "{peak} bytes for a million headers"
    );
    eprintln!("pre-sync: {sent} cheap headers counted in at most {peak} bytes, none stored");

    // 2. A peer shows the honest chain, then serves another one when asked again.
    let mut liar = peer("127.0.0.62", addr, 602);
    let mut counted = 0usize;
    loop {
        let locator = next_request(&mut liar);
        if locator[0] == genesis.hash() && counted > 0 {
            break; // asked again from the start: the chain was shown
        }
        let from = if counted == 0 { 0 } else { counted };
        assert_eq!(locator[0], honest[from].hash());
        let batch = honest[from + 1..(from + 2_001).min(honest.len())].to_vec();
        counted += batch.len();
        liar.send(&Message::Headers(batch));
    }
    assert_eq!(counted, 2_500);
    let mut other = vec![genesis];
    for i in 0..2_000u64 {
        let h = header_on(other.last().unwrap(), HONEST_BITS, 1 << 41 | i);
        other.push(h);
    }
    liar.send(&Message::Headers(other[1..].to_vec()));
    let (reason, ip) = wait_for(&ev, T, "the liar scored", |x| match x {
        Event::BanScore { reason, ip, .. } => Some((*reason, *ip)),
        _ => None,
    });
    assert_eq!(reason, BanReason::ProtocolViolation);
    assert_eq!(ip, "127.0.0.62".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(
        e.core_counts().unwrap().headers,
        1,
        "nothing of the other chain stored"
    );

    // 3. An honest peer: counted, shown at 2,400, downloaded again and stored in full.
    let mut good = peer("127.0.0.63", addr, 603);
    let deadline = Instant::now() + T;
    while e.best_header().unwrap().1 < 2_500 {
        assert!(Instant::now() < deadline, "honest sync stuck");
        if let Some(Message::GetHeaders(l)) = good.recv(Duration::from_millis(50)) {
            let from = honest
                .iter()
                .position(|h| h.hash() == l.hashes[0])
                .expect("a locator on the honest chain");
            good.send(&Message::Headers(
                honest[from + 1..(from + 2_001).min(honest.len())].to_vec(),
            ));
        }
    }
    assert_eq!(e.best_header().unwrap().0, honest[2_500].hash());
    let counts = e.core_counts().unwrap();
    assert_eq!((counts.headers, counts.presync_peers), (2_501, 0));
    for ip in ["127.0.0.61", "127.0.0.63"] {
        assert_eq!(e.ban_score(ip.parse().unwrap()), 0, "{ip}");
    }
    e.stop();
}
