//! The bits a header must carry, as the SV node computes them (`pow.cpp`): the original
//! 2,016-block retarget, the emergency difficulty adjustment (EDA) between retargets, the DAA
//! (cw-144: work done over the last 144 blocks) from `daa_height`, testnet's rule that a block
//! twenty minutes after its parent may have the lowest difficulty, and regtest's fixed bits.
//!
//! Pure arithmetic over a branch's ancestors, reached through [`Ancestry`]: the header tree
//! answers from its arena, and a test can answer from a file of headers that does not start at
//! genesis.

use crate::network::Consensus;
use crate::wire::block::{compact_from_target, target_from_compact};
use crate::wire::u256::U256;

/// What the rules need of an ancestor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ancestor {
    /// Its bits.
    pub bits: u32,
    /// Its timestamp.
    pub time: u32,
    /// Cumulative work up to and including it, from any fixed base (only differences are used).
    pub work: U256,
}

/// A branch's ancestors by height.
pub trait Ancestry {
    /// The ancestor at `height` (at most the parent's), `None` when it is not known.
    fn at(&mut self, height: u32) -> Option<Ancestor>;
}

impl<F: FnMut(u32) -> Option<Ancestor>> Ancestry for F {
    fn at(&mut self, height: u32) -> Option<Ancestor> {
        self(height)
    }
}

/// Number of timestamps in a median time past.
const MTP_SPAN: u32 = 11;

/// The bits a header at `prev_height + 1` with time `time` must carry; `None` when an ancestor
/// the rule needs is not known.
pub fn required_bits(
    c: &Consensus,
    pow_limit: &U256,
    prev_height: u32,
    time: u32,
    anc: &mut impl Ancestry,
) -> Option<u32> {
    let prev = anc.at(prev_height)?;
    if c.no_retargeting {
        return Some(prev.bits);
    }
    if prev_height >= c.daa_height {
        return cash_bits(c, pow_limit, prev_height, prev, time, anc);
    }
    eda_bits(c, pow_limit, prev_height, prev, time, anc)
}

/// The original retarget every 2,016 blocks, testnet's minimum-difficulty rule, and the EDA.
fn eda_bits(
    c: &Consensus,
    pow_limit: &U256,
    prev_height: u32,
    prev: Ancestor,
    time: u32,
    anc: &mut impl Ancestry,
) -> Option<u32> {
    let height = prev_height + 1;
    let interval = c.interval();
    let limit_bits = compact_from_target(pow_limit);
    if height.is_multiple_of(interval) {
        let first = anc.at(height - interval)?;
        return Some(retarget(c, pow_limit, prev.bits, prev.time, first.time));
    }
    if c.allow_min_difficulty {
        if slow_block(c, prev, time) {
            return Some(limit_bits);
        }
        // the last block that was not mined under the minimum-difficulty rule
        let (mut h, mut a) = (prev_height, prev);
        while h != 0 && h % interval != 0 && a.bits == limit_bits {
            h -= 1;
            a = anc.at(h)?;
        }
        return Some(a.bits);
    }
    if prev.bits == limit_bits || prev_height < 6 {
        return Some(prev.bits);
    }
    // EDA: six blocks that took more than twelve hours (by median time past) lower the
    // difficulty by a fifth
    let span = mtp(prev_height, anc)? as i64 - mtp(prev_height - 6, anc)? as i64;
    if span < 12 * 3600 {
        return Some(prev.bits);
    }
    let t = target_from_compact(prev.bits)?;
    let t = t.saturating_add(&t.shr(2));
    Some(capped(&t, pow_limit))
}

/// The original retarget: the parent's target scaled by the time the interval took (within
/// a factor of four of two weeks).
fn retarget(c: &Consensus, pow_limit: &U256, bits: u32, last: u32, first: u32) -> u32 {
    let span = (last as i64 - first as i64)
        .clamp(c.target_timespan as i64 / 4, c.target_timespan as i64 * 4) as u64;
    let t = target_from_compact(bits).unwrap_or(*pow_limit);
    let t = t
        .wrapping_mul_u64(span)
        .div_rem(&U256::from_u64(c.target_timespan as u64))
        .expect("the timespan is not zero")
        .0;
    capped(&t, pow_limit)
}

/// The DAA: the target from the work done between the suitable blocks 144 apart and the time
/// it took (within a factor of two of a day).
fn cash_bits(
    c: &Consensus,
    pow_limit: &U256,
    prev_height: u32,
    prev: Ancestor,
    time: u32,
    anc: &mut impl Ancestry,
) -> Option<u32> {
    if c.allow_min_difficulty && slow_block(c, prev, time) {
        return Some(compact_from_target(pow_limit));
    }
    if prev_height < 146 {
        return None;
    }
    let last = suitable(prev_height, anc)?;
    let first = suitable(prev_height - 144, anc)?;
    let spacing = c.target_spacing as i64;
    let work = last
        .work
        .wrapping_sub(&first.work)
        .wrapping_mul_u64(c.target_spacing as u64);
    let span = (last.time as i64 - first.time as i64).clamp(72 * spacing, 288 * spacing) as u64;
    let work = work.div_rem(&U256::from_u64(span))?.0;
    // (2^256 - work) / work, which is 2^256 / work - 1 in 256 bits
    let t = U256::ZERO.wrapping_sub(&work).div_rem(&work)?.0;
    Some(capped(&t, pow_limit))
}

/// Testnet's rule applies: the block comes more than two spacings after its parent.
fn slow_block(c: &Consensus, prev: Ancestor, time: u32) -> bool {
    time as i64 > prev.time as i64 + 2 * c.target_spacing as i64
}

/// `t` in compact form, no easier than the network's limit.
fn capped(t: &U256, pow_limit: &U256) -> u32 {
    compact_from_target(if t > pow_limit { pow_limit } else { t })
}

/// Of the blocks at `h`, `h - 1` and `h - 2`, the one with the median time (the SV node's
/// sorting network, so that equal times pick the same block).
fn suitable(h: u32, anc: &mut impl Ancestry) -> Option<Ancestor> {
    let mut b = [anc.at(h - 2)?, anc.at(h - 1)?, anc.at(h)?];
    if b[0].time > b[2].time {
        b.swap(0, 2);
    }
    if b[0].time > b[1].time {
        b.swap(0, 1);
    }
    if b[1].time > b[2].time {
        b.swap(1, 2);
    }
    Some(b[1])
}

/// The median time past of the block at `h`: the median of its time and its ten ancestors'.
fn mtp(h: u32, anc: &mut impl Ancestry) -> Option<u32> {
    let n = (h + 1).min(MTP_SPAN);
    let mut times = [0u32; MTP_SPAN as usize];
    for i in 0..n {
        times[i as usize] = anc.at(h - i)?.time;
    }
    let times = &mut times[..n as usize];
    times.sort_unstable();
    Some(times[times.len() / 2])
}
