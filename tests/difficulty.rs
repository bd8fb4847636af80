//! The difficulty rules checked on real headers with no rule switched off: every `bits` that a
//! file's own ancestors determine is recomputed and equals the stored one (BSV mainnet's
//! per-block DAA, the first real retargets, four modern retargets, testnet's minimum-difficulty
//! rule, BSV testnet's 20-minute rule); one altered `bits` is refused at exactly that header.
//! Then synthetic chains with real proof of work on a custom network with an easy limit go
//! through the header tree: an altered `bits` in each regime (retarget, EDA, DAA, testnet) and
//! an obsolete version are refused with the right error.

mod common;
use bsn::chain::pow::{required_bits, Ancestor};
use bsn::chain::{HeaderError, HeaderTree};
use bsn::network::{Consensus, Network, NetworkParams};
use bsn::wire::{BlockHeader, Hash256};
use std::path::Path;

/// Headers of a file with their heights from `start`.
fn headers(dir: &Path, rel: &str) -> Vec<BlockHeader> {
    let data = std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(data.len() % 80, 0, "{rel}");
    data.chunks(80)
        .map(|c| BlockHeader::from_array(c.try_into().unwrap()))
        .collect()
}

/// The bits each header must carry by `c`'s rules, where the file holds what they need:
/// `(index, required)` per header checked.
fn recompute(
    c: &Consensus,
    limit: &bsn::wire::u256::U256,
    start: u32,
    hs: &[BlockHeader],
) -> Vec<(usize, u32)> {
    // cumulative work from the file's first header (only differences are used)
    let mut work = Vec::with_capacity(hs.len());
    let mut acc = bsn::wire::u256::U256::ZERO;
    for h in hs {
        acc = acc.saturating_add(&h.work());
        work.push(acc);
    }
    let mut out = Vec::new();
    for i in 1..hs.len() {
        let mut anc = |height: u32| {
            let k = height.checked_sub(start)? as usize;
            (k < i).then(|| Ancestor {
                bits: hs[k].bits,
                time: hs[k].time,
                work: work[k],
            })
        };
        let prev_height = start + i as u32 - 1;
        if let Some(bits) = required_bits(c, limit, prev_height, hs[i].time, &mut anc) {
            out.push((i, bits));
        }
    }
    out
}

/// Checks a file: every recomputable `bits` equals the stored one (at least `min_checked` of
/// them, and every header from index `all_from` on), and an altered `bits` at index `alter` is
/// the first mismatch.
fn check_file(
    dir: &Path,
    rel: &str,
    c: &Consensus,
    start: u32,
    all_from: usize,
    alter: usize,
) -> Vec<BlockHeader> {
    let hs = headers(dir, rel);
    let limit = Network::Mainnet.params().pow_limit;
    let checked = recompute(c, &limit, start, &hs);
    for &(i, bits) in &checked {
        assert_eq!(
            hs[i].bits,
            bits,
            "{rel}: height {} has bits {:#010x}, the rules give {bits:#010x}",
            start + i as u32,
            hs[i].bits
        );
    }
    let indexes: Vec<usize> = checked.iter().map(|&(i, _)| i).collect();
    assert_eq!(
        indexes[indexes.partition_point(|&i| i < all_from)..],
        (all_from..hs.len()).collect::<Vec<_>>()[..],
        "{rel}: every header from index {all_from} is checked"
    );
    let mut bad = hs.clone();
    bad[alter].bits ^= 0x0000_0100;
    let first = recompute(c, &limit, start, &bad)
        .into_iter()
        .find(|&(i, bits)| bad[i].bits != bits)
        .map(|(i, _)| i);
    assert_eq!(
        first,
        Some(alter),
        "{rel}: the altered header is the first refused"
    );
    hs
}

#[test]
fn bsv_mainnet_per_block_daa() {
    let Some(dir) = common::data_dir("bsv_mainnet_per_block_daa") else {
        return;
    };
    let c = Network::Mainnet.params().consensus;
    let hs = check_file(
        &dir,
        "teranode-bsv/886001_888000_headers.bin",
        &c,
        886_001,
        147,
        1_500,
    );
    // the DAA changes the bits nearly every block
    let changes = hs.windows(2).filter(|w| w[0].bits != w[1].bits).count();
    assert!(changes > 1_500, "{changes} changes");
}

#[test]
fn mainnet_first_retargets_and_the_eda_era() {
    let Some(dir) = common::data_dir("mainnet_first_retargets") else {
        return;
    };
    let c = Network::Mainnet.params().consensus;
    let rel = "veriblock-headers/btc_blockheaders_mainnet_30000_40000.bin";
    // a retarget needs the block 2,016 back: from 32,256 on every header is checked
    let hs = check_file(&dir, rel, &c, 30_000, 2_256, 4_272);
    for (h, bits) in [
        (32_256, 0x1d00d86a),
        (34_272, 0x1d00c428),
        (36_288, 0x1d00be71),
        (38_304, 0x1d008cc3),
    ] {
        assert_eq!(hs[h - 30_000].bits, bits, "retarget at {h}");
    }
    // and genesis onwards at difficulty 1
    check_file(
        &dir,
        "veriblock-headers/btc_blockheaders_mainnet_0_10000.bin",
        &c,
        0,
        1,
        5_000,
    );
}

#[test]
fn modern_mainnet_four_retargets() {
    let Some(dir) = common::data_dir("modern_mainnet_four_retargets") else {
        return;
    };
    // BTC's chain after the split: the original retarget only (no DAA there)
    let c = Consensus {
        daa_height: u32::MAX,
        ..Network::Mainnet.params().consensus
    };
    let hs = check_file(
        &dir,
        "ckb-bitcoin-spv/headers_mainnet_822528_830592.bin",
        &c,
        822_528,
        17,
        2_016 * 2,
    );
    let retargets = hs.windows(2).filter(|w| w[0].bits != w[1].bits).count();
    assert_eq!(retargets, 4);
}

#[test]
fn testnet_minimum_difficulty_rules() {
    let Some(dir) = common::data_dir("testnet_minimum_difficulty_rules") else {
        return;
    };
    let c = Network::Testnet.params().consensus;
    let hs = check_file(
        &dir,
        "veriblock-headers/btc_blockheaders_testnet_0_10000.bin",
        &c,
        0,
        1,
        7_000,
    );
    let limit = 0x1d00ffff;
    assert!(
        hs.iter().any(|h| h.bits != limit)
            && hs.iter().skip(1).filter(|h| h.bits == limit).count() > 100
    );
    // BSV testnet under the DAA, with a 20-minute minimum-difficulty block at 1,602,683
    let hs = check_file(
        &dir,
        "teranode-bsv/testnet_headers_1602530_1602710.bin",
        &c,
        1_602_530,
        147,
        160,
    );
    assert_eq!(hs[1_602_683 - 1_602_530].bits, limit);
}

// ---------------------------------------------------------------------------------------------
// Synthetic chains through the header tree.

/// The easy limit of the synthetic chains: 2^249 (a header takes ~128 hashes). The retarget
/// multiplies a target by up to four intervals' time, so the limit must leave room below 2^256,
/// as the real networks' 2^224 does; regtest's 2^255 would wrap.
const EASY_BITS: u32 = 0x2001_ffff;

/// A network with an easy limit, one-second blocks and 16-block retarget intervals (so that
/// every regime comes within a few hundred headers), and `c`'s other rules.
fn easy(c: Consensus) -> NetworkParams {
    let r = Network::Regtest.params();
    let limit = bsn::wire::block::target_from_compact(EASY_BITS).unwrap();
    let genesis = mined(BlockHeader {
        version: 1,
        prev_hash: Hash256::ZERO,
        merkle_root: Hash256::sha256d(b"easy"),
        time: 1_700_000_000,
        bits: EASY_BITS,
        nonce: 0,
    });
    let c = Consensus {
        target_spacing: 1,
        target_timespan: 16,
        ..c
    };
    NetworkParams::custom("easy", r.magic, r.disk_magic, 1, genesis, limit).with_consensus(c)
}

/// A chain from genesis with each header's cumulative work.
struct Chain {
    headers: Vec<BlockHeader>,
    work: Vec<bsn::wire::u256::U256>,
}

impl Chain {
    fn new(p: &NetworkParams) -> Chain {
        Chain {
            headers: vec![p.genesis],
            work: vec![p.genesis.work()],
        }
    }

    /// Extends the chain by headers `gaps[i]` seconds apart with the bits the rules require,
    /// mined for real.
    fn grow(&mut self, p: &NetworkParams, gaps: &[u32]) {
        for &gap in gaps {
            let prev = *self.headers.last().unwrap();
            let time = prev.time + gap;
            let (hs, ws) = (&self.headers, &self.work);
            let mut anc = |height: u32| {
                hs.get(height as usize).map(|h| Ancestor {
                    bits: h.bits,
                    time: h.time,
                    work: ws[height as usize],
                })
            };
            let prev_height = hs.len() as u32 - 1;
            let bits = required_bits(&p.consensus, &p.pow_limit, prev_height, time, &mut anc)
                .expect("the chain holds every ancestor");
            let h = mined(BlockHeader {
                version: 4,
                prev_hash: prev.hash(),
                merkle_root: Hash256::sha256d(&(hs.len() as u64).to_le_bytes()),
                time,
                bits,
                nonce: 0,
            });
            let w = self.work.last().unwrap().saturating_add(&h.work());
            self.headers.push(h);
            self.work.push(w);
        }
    }
}

fn mined(mut h: BlockHeader) -> BlockHeader {
    h.nonce = 0;
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    h
}

/// Inserting `chain[1..=k]` with header `k`'s bits altered (and mined again) fails at `k` with
/// `BadDifficultyBits` naming the bits the rules required.
fn refused_at(p: &NetworkParams, chain: &[BlockHeader], k: usize) {
    let mut t = HeaderTree::new(p);
    t.insert_many(&chain[1..k]).expect("the valid prefix");
    let mut bad = chain[k];
    bad.bits = if bad.bits == EASY_BITS {
        0x2000_ffff
    } else {
        EASY_BITS
    };
    let bad = mined(bad);
    match t.insert(bad) {
        Err(HeaderError::BadDifficultyBits { bits, expected, .. }) => {
            assert_eq!((bits, expected), (bad.bits, chain[k].bits), "header {k}");
        }
        other => panic!("header {k}: {other:?}"),
    }
}

#[test]
fn the_tree_refuses_wrong_bits_in_every_regime_and_obsolete_versions() {
    // retargets every 16 blocks, the EDA after six blocks that took 12 hours, the DAA from
    // height 300, BIP34 from 350
    let c = Consensus {
        no_retargeting: false,
        allow_min_difficulty: false,
        daa_height: 300,
        bip34_height: 350,
        ..Consensus::fixed()
    };
    let p = easy(c.clone());
    let mut ch = Chain::new(&p);
    ch.grow(&p, &[1; 100]);
    let h = &ch.headers;
    assert_ne!(h[32].bits, h[31].bits, "a retarget at 32");
    assert_eq!(h[33].bits, h[32].bits);
    // slow blocks: the EDA lowers the difficulty once six took more than 12 hours (by MTP)
    let before = ch.headers.len();
    ch.grow(&p, &[3 * 3600; 12]);
    let eda = (before..ch.headers.len())
        .find(|&i| ch.headers[i].bits != ch.headers[i - 1].bits && i % 16 != 0)
        .expect("an EDA step");
    ch.grow(&p, &[1; 300 - 112 + 10]);
    // the DAA changes the bits block by block with uneven times
    let gaps: Vec<u32> = (0..80).map(|i| 1 + (i * 7) % 3).collect();
    ch.grow(&p, &gaps);
    let chain = &ch.headers;
    assert!(chain.len() > 360);
    let daa_changes = chain[301..]
        .windows(2)
        .filter(|w| w[0].bits != w[1].bits)
        .count();
    assert!(daa_changes > 40, "{daa_changes} DAA changes");
    let mut t = HeaderTree::new(&p);
    t.insert_many(&chain[1..])
        .expect("the whole chain is valid");
    for k in [32, 33, eda, 305, chain.len() - 1] {
        refused_at(&p, chain, k);
    }
    // from height 350 a version-1 header is obsolete (BIP34)
    let mut old = chain[350];
    old.version = 1;
    let mut t = HeaderTree::new(&p);
    t.insert_many(&chain[1..350]).unwrap();
    assert!(matches!(
        t.insert(mined(old)),
        Err(HeaderError::ObsoleteVersion {
            version: 1,
            height: 350,
            ..
        })
    ));

    // testnet's rule: more than two spacings after its parent a block may have the lowest
    // difficulty, and the next one returns to the last real difficulty
    let p = easy(Consensus {
        allow_min_difficulty: true,
        ..c
    });
    let mut ch = Chain::new(&p);
    ch.grow(&p, &[1; 40]);
    ch.grow(&p, &[3, 1, 1]);
    let chain = &ch.headers;
    let hard = chain[40].bits;
    assert_ne!(hard, EASY_BITS);
    assert_eq!(chain[41].bits, EASY_BITS, "the slow block");
    assert_eq!(chain[42].bits, hard, "back to the last real difficulty");
    let mut t = HeaderTree::new(&p);
    t.insert_many(&chain[1..]).expect("valid");
    refused_at(&p, chain, 41);
    refused_at(&p, chain, 42);
}

#[test]
fn regtest_bits_never_change() {
    let p = Network::Regtest.params();
    let mut t = HeaderTree::new(&p);
    let mut h = mined(BlockHeader {
        version: 4,
        prev_hash: p.genesis_hash(),
        merkle_root: Hash256::ZERO,
        time: p.genesis.time + 1,
        bits: 0x2040_0000,
        nonce: 0,
    });
    assert!(matches!(
        t.insert(h),
        Err(HeaderError::BadDifficultyBits {
            expected: 0x207fffff,
            ..
        })
    ));
    h.bits = 0x207fffff;
    t.insert(mined(h)).expect("regtest's bits");
}
