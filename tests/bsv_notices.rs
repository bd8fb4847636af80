//! BSV's notices (`dsdetected`, `revokemid`) are checked, relayed once and handed to the
//! embedder; invalid ones cost their sender 10 points as on the SV node. `feefilter` is honoured
//! in transaction announcements when the fee is known.

mod common;
use bsn::wire::{BlockHeader, DsBlock, DsDetected, Hash256, Message, OutPoint, RevokeMid};
use bsn::wire::{InvType, Transaction};
use bsn::Event;
use bytes::Bytes;
use common::*;
use std::net::IpAddr;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn spend(prev: u32, tag: u8) -> Transaction {
    let op = OutPoint {
        txid: Hash256::sha256d(&prev.to_le_bytes()),
        vout: 0,
    };
    Transaction::build(1, &[(op, &[tag], 0)], &[(1, b"\x51")], 0)
}

fn header(prev: Hash256, txs: &[Transaction], time: u32) -> BlockHeader {
    BlockHeader {
        version: 4,
        prev_hash: prev,
        merkle_root: bsn::wire::merkle_root(txs.iter().map(|t| t.txid()).collect()),
        time,
        bits: 0x207fffff,
        nonce: 0,
    }
}

/// Two competing blocks on one parent, each spending output 0 of `out` differently.
fn double_spend(out: u32) -> DsDetected {
    let parent = Hash256::sha256d(b"fork point");
    let a = [spend(1_000 + out, 1), spend(out, 1)];
    let b = [spend(2_000 + out, 2), spend(out, 2)];
    DsDetected {
        version: 1,
        blocks: vec![
            DsBlock::for_tx(vec![header(parent, &a, 1)], &a, 1),
            DsBlock::for_tx(vec![header(parent, &b, 2)], &b, 1),
        ],
    }
}

fn revokemid(tag: u8) -> RevokeMid {
    RevokeMid {
        version: 0,
        revocation_key: [2; 33],
        miner_id: [3; 33],
        revocation_message: [2; 33],
        signature: Bytes::from(vec![2, tag, tag, 1, tag]),
    }
}

fn peer_from(ip: &str, e: &bsn::Engine, nonce: u64) -> ScriptPeer {
    let mut p = ScriptPeer::connect_from(ip.parse().unwrap(), e.local_addr().unwrap(), REGTEST)
        .expect("connect");
    p.handshake(nonce);
    p
}

/// Waits until the core has both peers (a notice goes only to peers the core knows).
fn both_connected(ev: &crossbeam_channel::Receiver<Event>) {
    for _ in 0..2 {
        wait_for(ev, T, "a peer connected", |e| match e {
            Event::PeerConnected(_) => Some(()),
            _ => None,
        });
    }
}

/// A `getheaders` answered by the core: everything the peer sent before it was handled.
fn core_caught_up(p: &mut ScriptPeer) {
    p.send(&Message::GetHeaders(bsn::wire::Locator {
        version: 70016,
        hashes: vec![],
        stop: Hash256::ZERO,
    }));
    p.expect(T, |m| matches!(m, Message::Headers(_)));
}

/// The score `ip` has after its next `InvalidNotice`.
fn notice_score(ev: &crossbeam_channel::Receiver<Event>, ip: IpAddr, what: &str) -> u32 {
    wait_for(ev, T, what, |e| match e {
        Event::BanScore {
            ip: i,
            reason: bsn::BanReason::InvalidNotice,
            score,
            ..
        } if *i == ip => Some(*score),
        _ => None,
    })
}

fn is_notice(m: &Message) -> bool {
    matches!(m, Message::DsDetected(_) | Message::RevokeMid(_))
}

#[test]
fn notices_are_relayed_once_handed_over_and_invalid_ones_cost_ten() {
    let (e, ev) = start(config());
    let mut a = peer_from("127.0.0.1", &e, 11);
    let mut b = peer_from("127.0.0.2", &e, 12);
    both_connected(&ev);
    let ds = double_spend(7);
    a.send(&Message::DsDetected(ds.clone()));
    let got = b.expect(T, is_notice);
    assert_eq!(got, Message::DsDetected(ds.clone()), "b gets a's notice");
    wait_for(&ev, T, "the notice handed over", |e| match e {
        Event::Message {
            message: Message::DsDetected(d),
            ..
        } if *d == ds => Some(()),
        _ => None,
    });
    // the same notice again, with its blocks in the other order: not relayed again; the next
    // notice b sees is the revocation sent after it
    let mut again = ds.clone();
    again.blocks.reverse();
    a.send(&Message::DsDetected(again));
    a.send(&Message::RevokeMid(revokemid(9)));
    assert_eq!(
        b.expect(T, is_notice),
        Message::RevokeMid(revokemid(9)),
        "a notice was relayed twice"
    );
    // an invalid notice (a proof that does not verify): 10 points, not relayed
    let mut bad = double_spend(8);
    bad.blocks[0].proof.nodes[0] = bsn::wire::ProofNode::Hash(Hash256::ZERO);
    a.send(&Message::DsDetected(bad));
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let score = notice_score(&ev, ip, "a scored for the bad notice");
    assert_eq!(score, 10);
    // a revokemid that does not decode: 10 more
    a.send(&Message::Unknown {
        command: bsn::wire::commands::REVOKEMID,
        payload: Bytes::from_static(&[0, 0, 0, 0, 2, 2]),
    });
    let score = notice_score(&ev, ip, "a scored for the malformed notice");
    assert_eq!(score, 20);
    // b still gets valid notices, and only those
    a.send(&Message::DsDetected(double_spend(9)));
    assert_eq!(b.expect(T, is_notice), Message::DsDetected(double_spend(9)));
    assert_eq!(e.ban_score("127.0.0.2".parse().unwrap()), 0);
    e.stop();
}

#[test]
fn feefilter_keeps_cheap_transactions_from_peers_that_ask_for_more() {
    let (e, ev) = start(config());
    let mut picky = peer_from("127.0.0.1", &e, 21);
    let mut any = peer_from("127.0.0.2", &e, 22);
    both_connected(&ev);
    picky.send(&Message::FeeFilter(1_000)); // 1 sat/byte
    any.send(&Message::FeeFilter(0));
    // the filters are taken before the transactions are submitted
    for p in [&mut picky, &mut any] {
        core_caught_up(p);
    }
    let cheap = sample_tx(1);
    let dear = sample_tx(2);
    let size = cheap.raw().len() as u64;
    e.submit_tx_with_fee(cheap.clone(), size / 2).unwrap(); // 0.5 sat/byte
    let tx_inv = |m: &Message| match m {
        Message::Inv(i) => i.iter().find(|i| i.kind == InvType::TX).map(|i| i.hash),
        _ => None,
    };
    let first = any.expect(T, |m| tx_inv(m).is_some());
    assert_eq!(tx_inv(&first), Some(cheap.txid()));
    e.submit_tx_with_fee(dear.clone(), 2 * dear.raw().len() as u64)
        .unwrap();
    let first = picky.expect(T, |m| tx_inv(m).is_some());
    assert_eq!(
        tx_inv(&first),
        Some(dear.txid()),
        "the peer asking for 1 sat/byte was told of a 0.5 sat/byte transaction"
    );
    e.stop();
}
