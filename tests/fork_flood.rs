//! A peer feeding a million cheap headers on a fork (less work per header than the honest
//! chain) costs bounded memory and ends banned; honest sync goes on.

mod common;
use bsn::chain::HeaderTree;
use bsn::network::{Consensus, Network};
use bsn::wire::{BlockHeader, Message};
use bsn::Event;
use common::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
/// Honest headers: target 2^247, about 512 hashes and 512 units of work each.
const HONEST_BITS: u32 = 0x1f7f_ffff;
/// The attacker's: target 2^255, two hashes and two units of work each.
const CHEAP_BITS: u32 = 0x207f_ffff;

#[test]
fn a_million_cheap_fork_headers_cost_bounded_memory_and_a_ban() {
    // a chain whose difficulty rules bsn does not know (each header meets its own bits), so
    // that honest and cheap headers can differ in work
    let params = Network::Regtest
        .params()
        .with_consensus(Consensus::unchecked());
    let mut c = config();
    c.network = params.clone();
    c.headers_only = true;
    let (e, ev) = start(c);
    let addr = e.local_addr().unwrap();
    // 2,100 honest headers (about a million units of work)
    let mut honest = vec![params.genesis];
    for i in 0..2_100u64 {
        let h = header_on(honest.last().unwrap(), HONEST_BITS, i);
        honest.push(h);
    }
    let mut tree = HeaderTree::new(&params);
    tree.insert_many(&honest[1..]).unwrap();
    let mut good = ScriptPeer::connect_from("127.0.0.1".parse().unwrap(), addr, REGTEST).unwrap();
    let mut v = version_msg(70016, 501);
    v.start_height = 2_100;
    good.send(&Message::Version(v));
    good.expect(T, |m| matches!(m, Message::Verack));
    good.send(&Message::Verack);
    let serve = |p: &mut ScriptPeer, tree: &HeaderTree, until: u32| {
        let deadline = Instant::now() + T;
        while e.best_header().unwrap().1 < until {
            assert!(Instant::now() < deadline, "honest sync stuck");
            if let Some(Message::GetHeaders(l)) = p.recv(Duration::from_millis(50)) {
                p.send(&Message::Headers(
                    tree.headers_after(&l.hashes, &l.stop, 2_000),
                ));
            }
        }
    };
    serve(&mut good, &tree, 2_100);
    let honest_work = tree.tip().2;

    // the attacker forks from genesis with cheap headers, as many as it may send
    let bad_ip: std::net::IpAddr = "127.0.0.66".parse().unwrap();
    let mut bad = ScriptPeer::connect_from(bad_ip, addr, REGTEST).unwrap();
    let mut v = version_msg(70016, 502);
    v.start_height = 2_000_000;
    bad.send(&Message::Version(v));
    bad.expect(T, |m| matches!(m, Message::Verack));
    bad.send(&Message::Verack);
    let mut tip = params.genesis;
    let mut sent = 0u64;
    let mut fork_work = bsn::wire::u256::U256::ZERO;
    let mut peak = 0usize;
    while sent < 1_000_000 {
        let batch: Vec<BlockHeader> = (0..2_000)
            .map(|i| {
                tip = header_on(&tip, CHEAP_BITS, 1 << 40 | (sent + i));
                tip
            })
            .collect();
        for h in &batch {
            fork_work = fork_work.saturating_add(&h.work());
        }
        let mut b = bytes::BytesMut::new();
        bsn::wire::frame::encode_message(&mut b, REGTEST, &Message::Headers(batch));
        if bad.send_raw(&b).is_err() {
            break; // dropped
        }
        sent += 2_000;
        peak = peak.max(e.core_counts().unwrap().headers);
        if e.is_banned(bad_ip) {
            break;
        }
    }
    assert!(
        fork_work < honest_work || sent < 1_000_000,
        "the fork stays cheaper"
    );
    wait_for(&ev, T, "the attacker banned", |x| match x {
        Event::Banned { subnet, .. } if subnet.contains(bad_ip) => Some(()),
        _ => None,
    });
    let counts = e.core_counts().unwrap();
    peak = peak.max(counts.headers);
    // memory: the honest chain, the fork budget (10,000) and a batch, whatever was sent
    assert!(
        peak <= 2_101 + 10_000 + 2_000,
        "{peak} headers held after {sent} sent"
    );
    eprintln!(
        "fork flood: {sent} cheap headers sent before the ban; at most {peak} headers held \
         ({} on forks at the end)",
        counts.fork_headers
    );
    // honest sync goes on: 100 more honest headers arrive
    for i in 0..100u64 {
        let h = header_on(honest.last().unwrap(), HONEST_BITS, 10_000 + i);
        honest.push(h);
    }
    tree.insert_many(&honest[2_101..]).unwrap();
    good.send(&Message::Headers(honest[2_101..].to_vec()));
    serve(&mut good, &tree, 2_200);
    assert_eq!(e.best_header().unwrap().0, honest.last().unwrap().hash());
    assert_eq!(e.ban_score("127.0.0.1".parse().unwrap()), 0);
    e.stop();
}
