//! Header pre-sync: a peer's headers are stored only once they are shown to reach the network's
//! minimum chain work (or its anchor block), so a peer that feeds a fresh node a cheap chain
//! costs it a few bits per header, not a tree of headers. Pure: no clock, no tree.
//!
//! The scheme is Bitcoin Core's (24.0), sized for BSV:
//!
//! 1. **Count.** While our best chain has less than [`Consensus::minimum_chain_work`], a peer's
//!    batch that does not itself reach it is not stored. Each header is checked for what it
//!    can show on its own (it follows the one before, its proof of work meets its bits, the
//!    bits are within the network's limit), its work is added up, and one bit of a salted
//!    hash of it is kept (the salt is ours, so the peer cannot know which bits we keep): 1 bit
//!    per header, 125 KB for a million headers, and at most [`MAX_PRESYNC_HEADERS`] of them.
//! 2. **Shown.** Once the count reaches the minimum work, or the anchor block
//!    ([`Consensus::anchor`]), the peer is asked for the same headers again from where the
//!    count started.
//! 3. **Download again.** Each batch must match the kept bits before it is stored (and then
//!    every rule applies, the exact difficulty included). A peer that shows one chain and
//!    then serves another is caught within a few headers (each has one chance in two to
//!    match), and a whole mismatching batch of 2,000 never is stored.
//!
//! A peer whose headers end before they show enough work has shown nothing: its state is
//! dropped and nothing of it was stored. Honest sync from another peer goes on.
//!
//! [`Consensus::minimum_chain_work`]: crate::network::Consensus::minimum_chain_work
//! [`Consensus::anchor`]: crate::network::Consensus::anchor

use crate::chain::HeaderError;
use crate::wire::block::BlockHeader;
use crate::wire::hash::Hash256;
use crate::wire::u256::U256;

/// Most headers one peer's count may hold (about 40 years of blocks; 500 KB of bits).
pub const MAX_PRESYNC_HEADERS: u64 = 4_000_000;

/// What the network asks of a chain before it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresyncRules {
    /// The minimum chain work.
    pub minimum_work: U256,
    /// A block known to be on the honest chain.
    pub anchor: Option<Hash256>,
    /// The network's proof-of-work limit.
    pub pow_limit: U256,
}

/// Where a peer's pre-sync stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Counting its headers.
    Counting,
    /// Shown; its headers come again and are checked against the kept bits (this many so far,
    /// the last of them `after`).
    Redownload { checked: u64, after: Hash256 },
}

/// One peer's pre-sync.
#[derive(Clone, Debug)]
pub struct Presync {
    /// The stored header the peer's chain hangs from.
    start: Hash256,
    /// The last header counted.
    last: Hash256,
    count: u64,
    work: U256,
    bits: Vec<u64>,
    salt: u64,
    phase: Phase,
}

/// What to do after a counted batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask the peer for the headers after this one.
    More(Hash256),
    /// The chain is shown: ask for it again from where the count started (our tree's tip).
    Shown,
    /// The peer has no more headers, and those it had did not show enough work.
    Short,
}

/// Why a pre-sync failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresyncError {
    /// A header broke a rule it can be checked for alone (its index in the batch).
    Header(usize, HeaderError),
    /// The chain is longer than [`MAX_PRESYNC_HEADERS`] without showing enough work.
    TooLong,
    /// A header downloaded again is not the one counted (its index in the batch).
    Mismatch(usize),
}

impl std::fmt::Display for PresyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PresyncError::Header(i, e) => write!(f, "header {i} of the batch: {e}"),
            PresyncError::TooLong => write!(
                f,
                "more than {MAX_PRESYNC_HEADERS} headers without the minimum chain work"
            ),
            PresyncError::Mismatch(i) => write!(
                f,
                "header {i} of the batch is not the one it showed before (pre-sync mismatch)"
            ),
        }
    }
}

/// The kept bit of a header: one bit of a keyed mix of its hash.
fn commitment(salt: u64, hash: &Hash256) -> bool {
    let mut x = u64::from_le_bytes(hash.0[..8].try_into().expect("8 bytes")) ^ salt;
    // splitmix64's finaliser: every input bit reaches the top bit
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) >> 63 == 1
}

impl Presync {
    /// A count that starts after the stored header `start`, whose chain work is `work`.
    pub fn new(start: Hash256, work: U256, salt: u64) -> Presync {
        Presync {
            start,
            last: start,
            count: 0,
            work,
            bits: Vec::new(),
            salt,
            phase: Phase::Counting,
        }
    }

    /// Whether the peer is still counting (not yet shown).
    pub fn is_counting(&self) -> bool {
        self.phase == Phase::Counting
    }

    /// The last header counted.
    pub fn last(&self) -> Hash256 {
        self.last
    }

    /// Whether a batch whose first header's parent is `prev` is the next of the download
    /// again.
    pub fn continues(&self, prev: &Hash256) -> bool {
        matches!(self.phase, Phase::Redownload { after, .. } if after == *prev)
    }

    /// Headers counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes of memory held.
    pub fn memory(&self) -> usize {
        std::mem::size_of::<Presync>() + self.bits.capacity() * 8
    }

    /// Counts a batch that follows the last header counted. `full` says whether the peer
    /// sent a whole batch (so it has more).
    pub fn count_batch(
        &mut self,
        headers: &[BlockHeader],
        full: bool,
        rules: &PresyncRules,
    ) -> Result<Step, PresyncError> {
        debug_assert!(self.is_counting());
        for (i, h) in headers.iter().enumerate() {
            let hash = h.hash();
            if h.prev_hash != self.last {
                return Err(PresyncError::Header(
                    i,
                    HeaderError::Orphan {
                        hash,
                        prev: h.prev_hash,
                    },
                ));
            }
            match h.target() {
                Some(t) if t > rules.pow_limit => {
                    return Err(PresyncError::Header(
                        i,
                        HeaderError::BitsAboveLimit { hash, bits: h.bits },
                    ))
                }
                Some(_) if h.meets_own_target() => {}
                _ => {
                    return Err(PresyncError::Header(
                        i,
                        HeaderError::BadProofOfWork { hash },
                    ))
                }
            }
            if self.count >= MAX_PRESYNC_HEADERS {
                return Err(PresyncError::TooLong);
            }
            let n = self.count as usize;
            if n.is_multiple_of(64) {
                self.bits.push(0);
            }
            if commitment(self.salt, &hash) {
                self.bits[n / 64] |= 1 << (n % 64);
            }
            self.count += 1;
            self.work = self.work.saturating_add(&h.work());
            self.last = hash;
            if self.work >= rules.minimum_work || rules.anchor == Some(hash) {
                self.phase = Phase::Redownload {
                    checked: 0,
                    after: self.start,
                };
                return Ok(Step::Shown);
            }
        }
        Ok(if full {
            Step::More(self.last)
        } else {
            Step::Short
        })
    }

    /// Checks a batch downloaded again (in order from the start) against the kept bits; headers
    /// beyond those counted are not checked (the chain is shown by then).
    pub fn recheck(&mut self, headers: &[BlockHeader]) -> Result<(), PresyncError> {
        let Phase::Redownload { checked, mut after } = self.phase else {
            return Ok(());
        };
        let mut at = checked;
        for (i, h) in headers.iter().enumerate() {
            if at >= self.count {
                break;
            }
            let n = at as usize;
            let kept = self.bits[n / 64] >> (n % 64) & 1 == 1;
            let hash = h.hash();
            if kept != commitment(self.salt, &hash) {
                return Err(PresyncError::Mismatch(i));
            }
            at += 1;
            after = hash;
        }
        self.phase = Phase::Redownload { checked: at, after };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(prev: &BlockHeader, n: usize, salt: u32) -> Vec<BlockHeader> {
        let mut out: Vec<BlockHeader> = Vec::new();
        let mut p = *prev;
        for i in 0..n {
            let mut h = BlockHeader {
                version: 4,
                prev_hash: p.hash(),
                merkle_root: Hash256::sha256d(
                    &[salt.to_le_bytes(), (i as u32).to_le_bytes()].concat(),
                ),
                time: p.time + 1,
                bits: 0x207fffff,
                nonce: 0,
            };
            while !h.meets_own_target() {
                h.nonce += 1;
            }
            out.push(h);
            p = h;
        }
        out
    }

    fn rules(min_headers: u64) -> PresyncRules {
        PresyncRules {
            // regtest headers are worth 2 each
            minimum_work: U256::from_u64(2 * min_headers),
            anchor: None,
            pow_limit: crate::network::Network::Regtest.params().pow_limit,
        }
    }

    #[test]
    fn counts_then_shows_then_checks_the_same_chain() {
        let g = crate::network::Network::Regtest.params().genesis;
        let hs = chain(&g, 250, 1);
        let r = rules(200);
        let mut p = Presync::new(g.hash(), U256::ZERO, 77);
        assert_eq!(
            p.count_batch(&hs[..100], true, &r),
            Ok(Step::More(hs[99].hash()))
        );
        assert_eq!(p.count_batch(&hs[100..], true, &r), Ok(Step::Shown));
        assert_eq!(p.count(), 200);
        assert!(p.memory() <= std::mem::size_of::<Presync>() + 32);
        // the same headers again: all match, and those beyond the count are not checked
        assert_eq!(p.recheck(&hs[..120]), Ok(()));
        assert_eq!(p.recheck(&hs[120..]), Ok(()));
    }

    #[test]
    fn another_chain_on_the_download_is_caught_within_a_few_headers() {
        let g = crate::network::Network::Regtest.params().genesis;
        let honest = chain(&g, 100, 1);
        let r = rules(100);
        let mut caught = Vec::new();
        for salt in 0..64u64 {
            let mut p = Presync::new(g.hash(), U256::ZERO, salt);
            assert_eq!(p.count_batch(&honest, true, &r), Ok(Step::Shown));
            let other = chain(&g, 100, 2);
            match p.recheck(&other) {
                Err(PresyncError::Mismatch(i)) => caught.push(i),
                other => panic!("{other:?}"),
            }
        }
        // one chance in two per header: on average after 2, never anywhere near 100
        assert!(caught.iter().all(|&i| i < 30), "{caught:?}");
    }

    #[test]
    fn short_chains_and_bad_headers() {
        let g = crate::network::Network::Regtest.params().genesis;
        let hs = chain(&g, 50, 1);
        let r = rules(1000);
        let mut p = Presync::new(g.hash(), U256::ZERO, 1);
        assert_eq!(p.count_batch(&hs, false, &r), Ok(Step::Short));
        // a gap
        let mut p = Presync::new(g.hash(), U256::ZERO, 1);
        assert!(matches!(
            p.count_batch(&hs[1..], true, &r),
            Err(PresyncError::Header(0, HeaderError::Orphan { .. }))
        ));
        // proof of work not met
        let mut bad = hs.clone();
        bad[3].nonce ^= 0xffff;
        while bad[3].meets_own_target() {
            bad[3].nonce += 1;
        }
        let mut p = Presync::new(g.hash(), U256::ZERO, 1);
        assert!(matches!(
            p.count_batch(&bad, true, &r),
            Err(PresyncError::Header(3, HeaderError::BadProofOfWork { .. }))
        ));
        // the anchor shows the chain whatever its work
        let mut anchored = r;
        anchored.anchor = Some(hs[9].hash());
        let mut p = Presync::new(g.hash(), U256::ZERO, 1);
        assert_eq!(p.count_batch(&hs, true, &anchored), Ok(Step::Shown));
        assert_eq!(p.count(), 10);
    }
}
