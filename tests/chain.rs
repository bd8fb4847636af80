//! The header tree: regtest chains with real proof of work ground in the test (bits 0x207fffff,
//! about two tries a header), forks and reorgs, locators and `getheaders` serving, rebuilding
//! from stored entries (and refusing corrupt ones), a property test over random trees of forks,
//! and real data (btcd's reorg test chain, 1111 mainnet headers).
//!
//! Real data lives outside the repository: `$BSN_TEST_DATA` if set, else
//! `<CARGO_MANIFEST_DIR>/../shared/data`. When it is absent those tests say so on stderr and pass.

mod common;
use bsn::chain::{
    ChainPoint, Entry, HeaderError, HeaderTree, LoadError, Reorg, RECORD_LEN, STATUS_BEST,
};
use bsn::wire::{Block, BlockHeader, Decode, Hash256, U256};
use bsn::{Network, NetworkParams};
use bytes::Bytes;
use common::data_dir;
use proptest::prelude::*;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

const REGTEST_BITS: u32 = 0x207fffff;

// ---------------------------------------------------------------------------------------------
// Mining regtest headers.
// ---------------------------------------------------------------------------------------------

fn regtest() -> NetworkParams {
    Network::Regtest.params()
}

/// A header on `prev` (hash, time) with `bits`, nonce ground until it meets its own target.
fn mine(prev: Hash256, prev_time: u32, bits: u32, salt: u64) -> BlockHeader {
    let mut h = BlockHeader {
        version: 0x2000_0000,
        prev_hash: prev,
        merkle_root: Hash256::sha256d(&salt.to_le_bytes()),
        time: prev_time + 600,
        bits,
        nonce: 0,
    };
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    h
}

/// `n` regtest headers on `from` (which `t` knows), not inserted. `salt` tells branches apart.
fn branch(t: &HeaderTree, from: Hash256, n: usize, salt: u64) -> Vec<BlockHeader> {
    let parent = t.get(&from).expect("branch point is known").header;
    branch_on(parent, n, salt)
}

/// `n` regtest headers on `parent`.
fn branch_on(parent: BlockHeader, n: usize, salt: u64) -> Vec<BlockHeader> {
    let mut out: Vec<BlockHeader> = Vec::with_capacity(n);
    let (mut prev, mut time) = (parent.hash(), parent.time);
    for i in 0..n {
        let h = mine(prev, time, REGTEST_BITS, salt << 32 | i as u64);
        prev = h.hash();
        time = h.time;
        out.push(h);
    }
    out
}

fn hashes(hs: &[BlockHeader]) -> Vec<Hash256> {
    hs.iter().map(|h| h.hash()).collect()
}

/// A header that fails its own target (regtest: about every other nonce).
fn bad_pow(mut h: BlockHeader) -> BlockHeader {
    h.nonce = 0;
    while h.meets_own_target() {
        h.nonce += 1;
    }
    h
}

/// Deterministic Fisher-Yates shuffle.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

/// Checks the structural invariants: the best-chain index walks back by prev_hash to genesis,
/// heights and work agree, exactly the best chain is flagged, the tip has the most work.
fn check_invariants(t: &HeaderTree) {
    let (tip, height, work) = t.tip();
    assert_eq!(t.hash_at(height), Some(tip));
    assert_eq!(t.hash_at(height + 1), None);
    assert_eq!(t.hash_at(0), Some(t.genesis_hash()));
    for h in 1..=height {
        let e = t.get(&t.hash_at(h).unwrap()).unwrap();
        assert_eq!(e.height, h);
        assert!(e.in_best_chain);
        assert_eq!(Some(e.header.prev_hash), t.hash_at(h - 1), "height {h}");
        let parent = t.get(&e.header.prev_hash).unwrap();
        assert_eq!(parent.work.checked_add(&e.header.work()), Some(e.work));
        assert_eq!(t.chain_work_at(h), Some(e.work));
    }
    let flagged = t.iter().filter(|(_, e)| e.in_best_chain).count();
    assert_eq!(flagged, height as usize + 1);
    assert_eq!(t.iter().map(|(_, e)| e.work).max(), Some(work));
}

// ---------------------------------------------------------------------------------------------
// Linear chains, forks, reorgs.
// ---------------------------------------------------------------------------------------------

#[test]
fn linear_chain_of_2000() {
    let p = regtest();
    let mut t = HeaderTree::new(&p);
    let g = t.genesis_hash();
    assert_eq!(t.tip(), (g, 0, U256::from_u64(2)));
    let hs = branch(&t, g, 2000, 1);
    let out = t.insert_many(&hs).unwrap();
    assert_eq!(out.added, hashes(&hs));
    assert_eq!(out.duplicates, 0);
    assert_eq!(out.old_tip, ChainPoint { hash: g, height: 0 });
    assert_eq!(
        out.new_tip,
        ChainPoint {
            hash: hs[1999].hash(),
            height: 2000
        }
    );
    assert!(out.reorg.is_none() && out.tip_changed());
    assert_eq!(t.tip(), (hs[1999].hash(), 2000, U256::from_u64(2 * 2001)));
    assert_eq!(t.len(), 2001);
    for (i, h) in hs.iter().enumerate() {
        assert_eq!(t.hash_at(i as u32 + 1), Some(h.hash()));
    }
    check_invariants(&t);

    // One by one: every header is a new tip, never a reorg.
    let mut t2 = HeaderTree::new(&p);
    for (i, h) in hs.iter().enumerate() {
        let ins = t2.insert(*h).unwrap();
        assert!(ins.new_tip && ins.reorg.is_none() && !ins.duplicate);
        assert_eq!(ins.height, i as u32 + 1);
        assert_eq!(ins.work, U256::from_u64(2 * (i as u64 + 2)));
    }
    assert_eq!(t, t2);

    // The batch again: all duplicates, nothing changes.
    let again = t.insert_many(&hs).unwrap();
    assert!(again.added.is_empty() && again.duplicates == 2000 && !again.tip_changed());
    assert_eq!(t, t2);
}

#[test]
fn longer_fork_reorgs_exactly_once() {
    let p = regtest();
    let mut t = HeaderTree::new(&p);
    let g = t.genesis_hash();
    let main = branch(&t, g, 10, 1);
    t.insert_many(&main).unwrap();
    let fork_at = main[3].hash(); // height 4
    let side = branch(&t, fork_at, 7, 2); // heights 5..=11

    let mut reorgs = Vec::new();
    for (i, h) in side.iter().enumerate() {
        let ins = t.insert(*h).unwrap();
        assert_eq!(ins.height, 5 + i as u32);
        if let Some(r) = ins.reorg.clone() {
            assert!(ins.new_tip);
            reorgs.push((i, r));
        } else {
            assert!(
                !ins.new_tip,
                "side header {i} is not a new tip without a reorg"
            );
        }
        check_invariants(&t);
    }
    // Heights 5..=10 at most equal the main chain's work; the 7th (height 11) wins.
    assert_eq!(reorgs.len(), 1);
    let (i, r) = &reorgs[0];
    assert_eq!(*i, 6);
    let want = Reorg {
        old_tip: ChainPoint {
            hash: main[9].hash(),
            height: 10,
        },
        new_tip: ChainPoint {
            hash: side[6].hash(),
            height: 11,
        },
        fork_point: ChainPoint {
            hash: fork_at,
            height: 4,
        },
        disconnected: hashes(&main[4..]).into_iter().rev().collect(),
        connected: hashes(&side),
    };
    assert_eq!(*r, want);
    assert_eq!(t.tip().0, side[6].hash());
    assert_eq!(t.hash_at(4), Some(fork_at));
    assert_eq!(t.hash_at(5), Some(side[0].hash()));
    assert!(!t.get(&main[9].hash()).unwrap().in_best_chain);
    assert!(t.contains(&main[9].hash()), "the old branch is kept");
    assert_eq!(t.len(), 1 + 10 + 7);
    assert_eq!(t.reorg_since(&main[9].hash()), Some(want.clone()));

    // The same as one batch: one combined reorg.
    let mut t2 = HeaderTree::new(&p);
    t2.insert_many(&main).unwrap();
    let out = t2.insert_many(&side).unwrap();
    assert_eq!(out.reorg, Some(want));
    assert_eq!(out.added, hashes(&side));
    assert_eq!(t, t2);
}

#[test]
fn batch_combines_several_reorgs() {
    let p = regtest();
    let mut t = HeaderTree::new(&p);
    let g = t.genesis_hash();
    let a = branch(&t, g, 10, 1); // tip A at 10
    t.insert_many(&a).unwrap();
    // B forks at 6 and reaches 12; C forks at 2 and reaches 14. Both in one batch: two reorgs
    // inside (A -> B, B -> C), one reported (A -> C, fork point 2).
    let b = branch(&t, a[5].hash(), 6, 2);
    let c = branch(&t, a[1].hash(), 12, 3);
    let batch: Vec<BlockHeader> = b.iter().chain(c.iter()).copied().collect();
    let out = t.insert_many(&batch).unwrap();
    let r = out.reorg.expect("one combined reorg");
    assert_eq!(r.old_tip.hash, a[9].hash());
    assert_eq!(
        r.fork_point,
        ChainPoint {
            hash: a[1].hash(),
            height: 2
        }
    );
    assert_eq!(
        r.disconnected,
        hashes(&a[2..]).into_iter().rev().collect::<Vec<_>>()
    );
    assert_eq!(r.connected, hashes(&c));
    assert_eq!(
        r.new_tip,
        ChainPoint {
            hash: c[11].hash(),
            height: 14
        }
    );
    check_invariants(&t);

    // A batch that reorgs away and back: no net reorg, the tip is extended.
    let mut t = HeaderTree::new(&p);
    t.insert_many(&a).unwrap();
    let b = branch(&t, a[5].hash(), 6, 4); // to 12
    let mut a2 = branch_on(a[9], 3, 5); // A to 13
    let batch: Vec<BlockHeader> = b.iter().copied().chain(a2.drain(..)).collect();
    let out = t.insert_many(&batch).unwrap();
    assert!(out.reorg.is_none());
    assert_eq!(out.new_tip.height, 13);
    assert_eq!(t.hash_at(10), Some(a[9].hash()));
    check_invariants(&t);
}

#[test]
fn equal_work_fork_does_not_reorg() {
    let p = regtest();
    let mut t = HeaderTree::new(&p);
    let g = t.genesis_hash();
    let main = branch(&t, g, 5, 1);
    t.insert_many(&main).unwrap();
    let side = branch(&t, main[1].hash(), 3, 2); // heights 3..=5, equal work at 5
    let out = t.insert_many(&side).unwrap();
    assert!(out.reorg.is_none() && !out.tip_changed());
    assert_eq!(out.added.len(), 3);
    let last = t.get(&side[2].hash()).unwrap();
    assert_eq!(last.work, t.tip().2, "equal work");
    assert!(!last.in_best_chain);
    assert_eq!(t.tip().0, main[4].hash(), "the first seen stays best");
    // One more on the side branch tips the balance.
    let more = branch_on(side[2], 1, 3);
    let ins = t.insert(more[0]).unwrap();
    let r = ins.reorg.expect("reorg");
    assert_eq!(r.fork_point.height, 2);
    assert_eq!(r.disconnected.len(), 3);
    assert_eq!(r.connected.len(), 4);
    check_invariants(&t);
}

// ---------------------------------------------------------------------------------------------
// Refused headers.
// ---------------------------------------------------------------------------------------------

#[test]
fn orphan_bad_pow_and_bits_refused() {
    let p = regtest();
    let mut t = HeaderTree::new(&p);
    let g = t.genesis_hash();
    let hs = branch(&t, g, 3, 1);

    // Orphan: the parent (hs[0]) is not known yet. Not stored.
    let e = t.insert(hs[1]).unwrap_err();
    assert_eq!(
        e,
        HeaderError::Orphan {
            hash: hs[1].hash(),
            prev: hs[0].hash()
        }
    );
    assert_eq!(e.hash(), hs[1].hash());
    assert!(!t.contains(&hs[1].hash()));
    assert_eq!(t.len(), 1);
    let msg = e.to_string();
    assert!(
        msg.starts_with("header ") && msg.contains("unknown parent"),
        "{msg}"
    );

    // Bad proof of work.
    let bad = bad_pow(hs[0]);
    assert_eq!(
        t.insert(bad),
        Err(HeaderError::BadProofOfWork { hash: bad.hash() })
    );
    // Invalid bits (zero target) are bad proof of work too.
    let mut zero = hs[0];
    zero.bits = 0;
    assert_eq!(
        t.insert(zero),
        Err(HeaderError::BadProofOfWork { hash: zero.hash() })
    );
    // Bits above regtest's limit (target 0xffff << 240 > 0x7fff...), with the hash meeting them.
    let above = mine(g, p.genesis.time, 0x2100ffff, 9);
    assert!(above.meets_own_target());
    assert_eq!(
        t.insert(above),
        Err(HeaderError::BitsAboveLimit {
            hash: above.hash(),
            bits: 0x2100ffff
        })
    );
    // Regtest bits are far above mainnet's limit.
    let mut main = HeaderTree::new(&Network::Mainnet.params());
    let on_main = mine(main.genesis_hash(), 0, REGTEST_BITS, 1);
    assert!(matches!(
        main.insert(on_main),
        Err(HeaderError::BitsAboveLimit { .. })
    ));
    assert_eq!(t.len(), 1);
    assert_eq!(main.len(), 1);
    for e in [
        HeaderError::BadProofOfWork { hash: bad.hash() },
        HeaderError::BitsAboveLimit {
            hash: above.hash(),
            bits: 1,
        },
    ] {
        let m = e.to_string();
        assert_eq!(m, m.to_lowercase(), "lowercase: {m}");
    }

    // In a batch: stops at the bad header, reports its index, keeps those before it.
    let batch = [hs[0], hs[1], bad_pow(hs[2]), hs[2]];
    let (i, e) = t.insert_many(&batch).unwrap_err();
    assert_eq!(i, 2);
    assert!(matches!(e, HeaderError::BadProofOfWork { .. }));
    assert_eq!(t.tip().1, 2);
    assert!(!t.contains(&hs[2].hash()));
}

// ---------------------------------------------------------------------------------------------
// Locators and getheaders.
// ---------------------------------------------------------------------------------------------

#[test]
fn locator_shape() {
    let p = regtest();
    let mut t = HeaderTree::new(&p);
    let g = t.genesis_hash();
    // Up to 11 headers: every one.
    let hs = branch(&t, g, 2000, 1);
    t.insert_many(&hs[..5]).unwrap();
    let loc = t.locator();
    assert_eq!(loc.len(), 6);
    for (i, h) in loc.iter().enumerate() {
        assert_eq!(Some(*h), t.hash_at(5 - i as u32));
    }

    t.insert_many(&hs[5..]).unwrap();
    let loc = t.locator();
    // Bitcoin Core's construction: the step doubles once more than ten hashes are in, so the
    // tip and the eleven below it one by one (2000..=1989), then steps of 2, 4, 8, ... to 0.
    let mut want: Vec<i64> = (1989..=2000).rev().collect();
    let (mut h, mut step) = (1989i64, 2i64);
    while h > 0 {
        h = (h - step).max(0);
        want.push(h);
        step *= 2;
    }
    assert_eq!(
        &want[..16],
        &[
            2000, 1999, 1998, 1997, 1996, 1995, 1994, 1993, 1992, 1991, 1990, 1989, 1987, 1983,
            1975, 1959
        ]
    );
    let got: Vec<i64> = loc
        .iter()
        .map(|h| t.get(h).unwrap().height as i64)
        .collect();
    assert_eq!(got, want);
    assert_eq!(*loc.last().unwrap(), g);
    assert!(loc.len() < 32);
}

#[test]
fn headers_after_serves_getheaders() {
    let p = regtest();
    let mut ours = HeaderTree::new(&p);
    let g = ours.genesis_hash();
    let main = branch(&ours, g, 2000, 1);
    ours.insert_many(&main).unwrap();

    // A peer with our first 500 headers and a fork of 20 from height 490 (its tip: 510).
    let mut peer = HeaderTree::new(&p);
    peer.insert_many(&main[..500]).unwrap();
    let side = branch(&peer, main[489].hash(), 20, 2);
    peer.insert_many(&side).unwrap();
    assert_eq!(peer.tip().1, 510);
    let loc = peer.locator();
    // The peer's locator: 510..=499, 497 and 493 are on its side branch; 485 is shared.
    let fork = ours.find_fork(&loc);
    assert_eq!(fork, 485);
    let stop = Hash256::ZERO;
    let got = ours.headers_after(&loc, &stop, 2000);
    assert_eq!(got.len(), 2000 - 485);
    assert_eq!(got[0], main[485]);
    assert_eq!(*got.last().unwrap(), main[1999]);
    // Limited by max, and by stop (inclusive).
    assert_eq!(
        ours.headers_after(&loc, &stop, 100),
        main[485..585].to_vec()
    );
    let stop = main[549].hash();
    assert_eq!(
        ours.headers_after(&loc, &stop, 2000),
        main[485..550].to_vec()
    );
    assert!(ours.headers_after(&loc, &stop, 0).is_empty());
    // An empty locator asks for the stop header only.
    assert_eq!(ours.headers_after(&[], &stop, 2000), vec![main[549]]);
    assert!(ours.headers_after(&[], &Hash256::ZERO, 2000).is_empty());
    // Unknown locator: from genesis.
    assert_eq!(ours.find_fork(&[Hash256::ZERO]), 0);
    assert_eq!(
        ours.headers_after(&[Hash256::ZERO], &Hash256::ZERO, 3),
        main[..3].to_vec()
    );
    // Our own tip: nothing to send.
    assert!(ours
        .headers_after(&ours.locator(), &Hash256::ZERO, 2000)
        .is_empty());

    // Syncing the peer with what we serve: it reorgs onto our chain.
    let out = peer.insert_many(&got).unwrap();
    let r = out.reorg.expect("the peer reorgs onto the longer chain");
    assert_eq!(r.fork_point.height, 490);
    assert_eq!(
        r.disconnected,
        hashes(&side).into_iter().rev().collect::<Vec<_>>()
    );
    assert_eq!(r.connected, hashes(&main[490..]));
    assert_eq!(out.duplicates, 500 - 485);
    assert_eq!(peer.tip(), ours.tip());
    assert_eq!(peer.len(), ours.len() + 20);
}

// ---------------------------------------------------------------------------------------------
// Rebuilding from stored entries.
// ---------------------------------------------------------------------------------------------

/// A tree with forks: a main chain of 60, a reorged-away branch, a stale short fork, and an
/// equal-work fork at the tip (so the loaded tree must use the stored best-chain bit).
fn forked_tree() -> HeaderTree {
    let p = regtest();
    let mut t = HeaderTree::new(&p);
    let g = t.genesis_hash();
    let a = branch(&t, g, 40, 1);
    t.insert_many(&a).unwrap();
    let b = branch(&t, a[19].hash(), 40, 2); // to 60: reorg
    t.insert_many(&b).unwrap();
    let c = branch(&t, a[4].hash(), 3, 3);
    t.insert_many(&c).unwrap();
    let d = branch(&t, b[29].hash(), 10, 4); // equal work to the tip
    let out = t.insert_many(&d).unwrap();
    assert!(!out.tip_changed());
    assert_eq!(t.get(&d[9].hash()).unwrap().work, t.tip().2);
    t
}

fn records(t: &HeaderTree) -> Vec<[u8; RECORD_LEN]> {
    t.iter().map(|(_, e)| e.to_record()).collect()
}

#[test]
fn from_entries_rebuilds_in_any_order() {
    let p = regtest();
    let t = forked_tree();
    check_invariants(&t);
    for seed in [1u64, 7, 0xdead_beef] {
        let mut recs = records(&t);
        shuffle(&mut recs, seed);
        let entries = recs.iter().map(|r| Entry::from_record(r).unwrap());
        let back = HeaderTree::from_entries(&p, entries).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.tip(), t.tip());
        assert_eq!(back.locator(), t.locator());
        check_invariants(&back);
    }
    // Without the genesis entry, and with stale best-chain bits (all clear): the most work
    // still wins; the equal-work tie then goes to the lower hash.
    let entries: Vec<Entry> = t
        .iter()
        .filter(|(h, _)| **h != t.genesis_hash())
        .map(|(_, e)| Entry {
            in_best_chain: false,
            ..*e
        })
        .collect();
    let back = HeaderTree::from_entries(&p, entries).unwrap();
    assert_eq!(back.len(), t.len());
    assert_eq!(back.tip().1, t.tip().1);
    assert_eq!(back.tip().2, t.tip().2);
    check_invariants(&back);
    // Only genesis: a fresh tree.
    assert_eq!(
        HeaderTree::from_entries(&p, std::iter::empty()).unwrap(),
        HeaderTree::new(&p)
    );
    // Identical duplicates are harmless.
    let twice: Vec<Entry> = t.iter().chain(t.iter()).map(|(_, e)| *e).collect();
    assert_eq!(HeaderTree::from_entries(&p, twice).unwrap(), t);
}

#[test]
fn corrupt_entries_are_refused() {
    let p = regtest();
    let t = forked_tree();
    let entries: Vec<Entry> = t.iter().map(|(_, e)| *e).collect();
    let tip = t.tip().0;
    let mid = t.hash_at(30).unwrap();
    let child = t.hash_at(31).unwrap();
    let load = |f: &dyn Fn(&mut Vec<Entry>)| {
        let mut es = entries.clone();
        f(&mut es);
        HeaderTree::from_entries(&p, es)
    };
    let find = |es: &mut Vec<Entry>, h: Hash256| es.iter().position(|e| e.hash() == h).unwrap();

    // Wrong height.
    let e = load(&|es| {
        let i = find(es, tip);
        es[i].height += 1;
    })
    .unwrap_err();
    assert_eq!(
        e,
        LoadError::WrongHeight {
            hash: tip,
            height: 61,
            expected: 60
        }
    );
    assert!(e.to_string().contains(&tip.to_string()), "{e}");
    // Height u32::MAX on a parent: the child's expected height does not overflow.
    let e = load(&|es| {
        let i = find(es, mid);
        es[i].height = u32::MAX;
    })
    .unwrap_err();
    assert!(matches!(e, LoadError::WrongHeight { .. }), "{e}");
    assert!(e.hash() == mid || e.hash() == child);
    // Unknown parent: a header in the middle is missing.
    let e = load(&|es| {
        let i = find(es, mid);
        es.remove(i);
    })
    .unwrap_err();
    assert_eq!(
        e,
        LoadError::UnknownParent {
            hash: child,
            prev: mid
        }
    );
    // Wrong work.
    let e = load(&|es| {
        let i = find(es, tip);
        es[i].work = U256::from_u64(1);
    })
    .unwrap_err();
    assert!(
        matches!(e, LoadError::WrongWork { hash, .. } if hash == tip),
        "{e}"
    );
    // A genesis entry with a wrong height.
    let e = load(&|es| {
        let i = find(es, t.genesis_hash());
        es[i].height = 1;
    })
    .unwrap_err();
    assert!(matches!(e, LoadError::WrongHeight { .. }), "{e}");
    // Conflicting duplicates.
    let e = load(&|es| {
        let i = find(es, tip);
        let mut dup = es[i];
        dup.height = 7;
        es.push(dup);
    })
    .unwrap_err();
    assert_eq!(e, LoadError::Conflict { hash: tip });
    // Bad proof of work, and bits above the limit, on a leaf (children would be orphans).
    let e = load(&|es| {
        let i = find(es, tip);
        es[i].header = bad_pow(es[i].header);
    })
    .unwrap_err();
    assert!(matches!(e, LoadError::BadProofOfWork { .. }), "{e}");
    let e = load(&|es| {
        let i = find(es, tip);
        let prev = es[i].header.prev_hash;
        let parent_time = es[i].header.time - 600;
        es[i].header = mine(prev, parent_time, 0x2100ffff, 1);
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::BitsAboveLimit {
                bits: 0x2100ffff,
                ..
            }
        ),
        "{e}"
    );
    // Another network's entries: nothing links to its genesis.
    let e = HeaderTree::from_entries(&Network::Testnet.params(), entries.clone()).unwrap_err();
    assert!(matches!(
        e,
        LoadError::UnknownParent { .. } | LoadError::BitsAboveLimit { .. }
    ));
    for e in [e, LoadError::Conflict { hash: tip }] {
        let m = e.to_string();
        assert_eq!(m, m.to_lowercase(), "lowercase: {m}");
    }
    // Record layout errors.
    assert!(Entry::from_record(&[0u8; 10]).is_err());
    let mut r = t.get(&tip).unwrap().to_record();
    assert_eq!(r[RECORD_LEN - 1], STATUS_BEST);
    r[RECORD_LEN - 1] = 0x40;
    assert!(Entry::from_record(&r).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any single corrupted byte in any record: a clean error or (status bit, nonce of a leaf
    /// that still meets its target, ...) a valid tree, never a panic.
    #[test]
    fn corrupt_records_never_panic(which in any::<prop::sample::Index>(), byte in 0..RECORD_LEN, flip in 1u8..) {
        let p = regtest();
        let mut t = HeaderTree::new(&p);
        let g = t.genesis_hash();
        let hs = branch(&t, g, 12, 1);
        t.insert_many(&hs).unwrap();
        let side = branch(&t, hs[5].hash(), 3, 2);
        t.insert_many(&side).unwrap();
        let mut recs = records(&t);
        let i = which.index(recs.len());
        recs[i][byte] ^= flip;
        let entries: Result<Vec<Entry>, _> = recs.iter().map(|r| Entry::from_record(r)).collect();
        if let Ok(entries) = entries {
            match HeaderTree::from_entries(&p, entries) {
                Ok(back) => check_invariants(&back),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property test: random trees of forks.
// ---------------------------------------------------------------------------------------------

/// Applies an insert's reported change to a shadow best-chain index.
fn apply(shadow: &mut Vec<Hash256>, t: &HeaderTree, new_tip: bool, reorg: Option<&Reorg>) {
    if let Some(r) = reorg {
        let keep = r.fork_point.height as usize + 1;
        assert_eq!(shadow[keep - 1], r.fork_point.hash);
        let tail: Vec<Hash256> = shadow[keep..].iter().rev().copied().collect();
        assert_eq!(tail, r.disconnected);
        shadow.truncate(keep);
        shadow.extend_from_slice(&r.connected);
    } else if new_tip {
        // Without a reorg the new tip descends from the old one: append up to it.
        let (_, height, _) = t.tip();
        for h in shadow.len() as u32..=height {
            shadow.push(t.hash_at(h).unwrap());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_keep_the_most_work_tip(
        ops in prop::collection::vec((any::<prop::sample::Index>(), 0usize..3), 1..60),
        seed in any::<u64>(),
    ) {
        // Varied bits (work 2, 4, 8 per header, so shorter branches can win) on a chain whose
        // difficulty rules are not checked
        let p = regtest().with_consensus(bsn::network::Consensus::unchecked());
        let mut t = HeaderTree::new(&p);
        let mut known: Vec<BlockHeader> = vec![p.genesis];
        let mut shadow = vec![t.genesis_hash()];
        let bits = [0x207fffff, 0x203fffff, 0x201fffff];
        for (n, (pick, b)) in ops.iter().enumerate() {
            let parent = known[pick.index(known.len())];
            let h = mine(parent.hash(), parent.time, bits[*b], seed ^ n as u64);
            let ins = t.insert(h).unwrap();
            prop_assert!(!ins.duplicate);
            known.push(h);
            apply(&mut shadow, &t, ins.new_tip, ins.reorg.as_ref());
            prop_assert_eq!(shadow.len() as u32, t.tip().1 + 1);
            for (i, s) in shadow.iter().enumerate() {
                prop_assert_eq!(Some(*s), t.hash_at(i as u32));
            }
            // The tip is the first inserted of the headers with the most work.
            let max = known.iter().map(|k| t.get(&k.hash()).unwrap().work).max().unwrap();
            let first = known.iter().find(|k| t.get(&k.hash()).unwrap().work == max).unwrap();
            prop_assert_eq!(t.tip().0, first.hash());
            prop_assert_eq!(t.tip().2, max);
        }
        check_invariants(&t);

        // The same headers in two batches: the same tree, and the batch outcomes describe
        // the change of the best-chain index.
        let mut t2 = HeaderTree::new(&p);
        let mut shadow2 = vec![t2.genesis_hash()];
        let half = known.len() / 2;
        for part in [&known[1..half.max(1)], &known[half.max(1)..]] {
            let out = t2.insert_many(part).unwrap();
            prop_assert_eq!(out.added.len(), part.len());
            apply(&mut shadow2, &t2, out.tip_changed(), out.reorg.as_ref());
        }
        prop_assert_eq!(&shadow2, &shadow);
        prop_assert_eq!(&t2, &t);

        // Rebuilt from shuffled entries: the same tree.
        let mut entries: Vec<Entry> = t.iter().map(|(_, e)| *e).collect();
        shuffle(&mut entries, seed | 1);
        let back = HeaderTree::from_entries(&p, entries).unwrap();
        prop_assert_eq!(&back, &t);
    }
}

// ---------------------------------------------------------------------------------------------
// Speed (printed, not asserted).
// ---------------------------------------------------------------------------------------------

#[test]
fn insert_rate() {
    let p = regtest();
    let n = 200_000;
    let t0 = HeaderTree::new(&p);
    let hs = branch(&t0, t0.genesis_hash(), n, 1);

    let mut best = f64::MAX;
    let mut tree = None;
    for _ in 0..3 {
        let mut t = HeaderTree::new(&p);
        let start = Instant::now();
        for batch in hs.chunks(2000) {
            t.insert_many(batch).unwrap();
        }
        best = best.min(start.elapsed().as_secs_f64());
        assert_eq!(t.tip().1, n as u32);
        tree = Some(t);
    }
    let t = tree.unwrap();
    let start = Instant::now();
    let mut hashed = 0u8;
    for h in &hs {
        hashed ^= h.hash().0[0];
    }
    let hash_only = start.elapsed().as_secs_f64();

    let entries: Vec<Entry> = t.iter().map(|(_, e)| *e).collect();
    let start = Instant::now();
    let back = HeaderTree::from_entries(&p, entries).unwrap();
    let load = start.elapsed().as_secs_f64();
    assert_eq!(back.tip(), t.tip());

    let _ = writeln!(
        std::io::stderr(),
        "chain: {n} linear regtest headers: insert_many {:.0}/s ({:.0} ns each; hashing alone \
         {:.0} ns), from_entries {:.0}/s [{}build] ({hashed})",
        n as f64 / best,
        best * 1e9 / n as f64,
        hash_only * 1e9 / n as f64,
        n as f64 / load,
        if cfg!(debug_assertions) {
            "debug "
        } else {
            "release "
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Real data.
// ---------------------------------------------------------------------------------------------

fn read(dir: &Path, rel: &str) -> Vec<u8> {
    let p = dir.join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Headers of the blocks in a `blk*.dat` stream (disk magic, u32 LE length, raw block).
fn blk_headers(data: &[u8]) -> Vec<BlockHeader> {
    let disk = Network::Mainnet.params().disk_magic.0;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        assert_eq!(data[pos..pos + 4], disk, "disk magic at {pos}");
        let len = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let raw = Bytes::copy_from_slice(&data[pos + 8..pos + 8 + len]);
        out.push(Block::decode_all(raw).expect("block decodes").header);
        pos += 8 + len;
    }
    out
}

#[test]
fn btcd_fork_reorgs_at_5a() {
    let Some(dir) = data_dir("btcd_fork_reorgs_at_5a") else {
        return;
    };
    let p = Network::Mainnet.params();
    let main = blk_headers(&read(&dir, "btcd/blk_0_to_4.dat"));
    assert_eq!(main.len(), 5);
    assert_eq!(main[0].hash(), p.genesis_hash());
    let mut t = HeaderTree::new(&p);
    let out = t.insert_many(&main).unwrap();
    assert_eq!(out.duplicates, 1, "block 0 is genesis");
    assert_eq!(t.tip(), (main[4].hash(), 4, t.chain_work_at(4).unwrap()));
    assert_eq!(t.chain_work_at(4), Some(U256::from_u64(5 * 0x1_0001_0001)));

    let side: Vec<BlockHeader> = ["blk_3A", "blk_4A", "blk_5A"]
        .iter()
        .flat_map(|f| blk_headers(&read(&dir, &format!("btcd/{f}.dat"))))
        .collect();
    assert_eq!(side[0].prev_hash, main[2].hash());
    let i3 = t.insert(side[0]).unwrap();
    assert!(!i3.new_tip && i3.height == 3);
    let i4 = t.insert(side[1]).unwrap();
    assert!(!i4.new_tip && i4.height == 4, "equal work: block 4 stays");
    let i5 = t.insert(side[2]).unwrap();
    assert!(i5.new_tip);
    let r = i5.reorg.expect("5A reorgs");
    assert_eq!(
        r.fork_point,
        ChainPoint {
            hash: main[2].hash(),
            height: 2
        }
    );
    assert_eq!(r.disconnected, vec![main[4].hash(), main[3].hash()]);
    assert_eq!(r.connected, hashes(&side));
    assert_eq!(r.old_tip.hash, main[4].hash());
    assert_eq!(
        r.new_tip,
        ChainPoint {
            hash: side[2].hash(),
            height: 5
        }
    );
    check_invariants(&t);
    assert_eq!(
        t.median_time_past(&side[2].hash()),
        Some({
            let mut ts: Vec<u32> = main[..3].iter().chain(&side).map(|h| h.time).collect();
            ts.sort();
            ts[ts.len() / 2]
        })
    );
}

#[test]
fn nakamoto_mainnet_headers() {
    let Some(dir) = data_dir("nakamoto_mainnet_headers") else {
        return;
    };
    let data = read(&dir, "nakamoto/headers.bin");
    assert_eq!(data.len(), 1111 * 80);
    let hs: Vec<BlockHeader> = data
        .chunks_exact(80)
        .map(|c| BlockHeader::from_array(c.try_into().unwrap()))
        .collect();
    let p = Network::Mainnet.params();
    let mut t = HeaderTree::new(&p);
    let out = t.insert_many(&hs).unwrap();
    assert_eq!(out.added.len(), 1111);
    assert_eq!(t.tip().1, 1111);
    assert_eq!(t.hash_at(1111), Some(hs[1110].hash()));
    assert_eq!(
        t.hash_at(1).unwrap().to_string(),
        "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048"
    );
    // All difficulty 1 this early.
    assert_eq!(t.tip().2, U256::from_u64(1112 * 0x1_0001_0001));
    check_invariants(&t);
    // Every header is later than the median of the eleven before it.
    for h in &hs {
        assert!(h.time > t.median_time_past(&h.prev_hash).unwrap());
    }
    // A peer that has the first 1000 asks us for the rest.
    let mut peer = HeaderTree::new(&p);
    peer.insert_many(&hs[..1000]).unwrap();
    let served = t.headers_after(&peer.locator(), &Hash256::ZERO, 2000);
    assert_eq!(served, hs[1000..].to_vec());
    let back = HeaderTree::from_entries(&p, t.iter().map(|(_, e)| *e)).unwrap();
    assert_eq!(back, t);
}
