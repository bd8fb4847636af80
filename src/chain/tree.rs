//! [`HeaderTree`]: every known header keyed by hash, forks included, and the best chain as a
//! height-indexed vector.

use super::{HashIdMap, HeaderError, LoadError, RecordError, RECORD_LEN, STATUS_BEST};
use crate::network::{Consensus, NetworkParams};
use crate::wire::block::{target_from_compact, work_from_target, BlockHeader, HEADER_LEN};
use crate::wire::hash::Hash256;
use crate::wire::u256::U256;
use std::collections::hash_map::Entry as MapEntry;
use std::fmt;

/// Number of timestamps whose median is the median time past.
const MTP_SPAN: usize = 11;

/// Bitcoin's limit on how far a header's time may be ahead of the clock: two hours.
pub const MAX_FUTURE_BLOCK_TIME: u32 = 2 * 60 * 60;

/// Contextual rules a [`HeaderTree`] enforces besides proof of work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderRules {
    /// `(height, hash)` pairs the chain must pass through: a header at a checkpoint height must
    /// have the checkpoint's hash, and once a checkpoint header is in the tree no header below
    /// its height is accepted any more (forks there would be cheap to make: old difficulty).
    pub checkpoints: Vec<(u32, Hash256)>,
    /// How far (seconds) a header's time may be ahead of the clock set with
    /// [`HeaderTree::set_clock`]; the check is off while the clock is not set.
    pub max_future_secs: u32,
    /// Refuse headers whose time is not above their parent's median time past.
    pub median_time_past: bool,
}

impl Default for HeaderRules {
    /// Bitcoin's rules without checkpoints: median time past, two hours into the future.
    fn default() -> HeaderRules {
        HeaderRules {
            checkpoints: Vec::new(),
            max_future_secs: MAX_FUTURE_BLOCK_TIME,
            median_time_past: true,
        }
    }
}

/// One header in the tree, with what the tree derived from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The header.
    pub header: BlockHeader,
    /// Its height (genesis is 0).
    pub height: u32,
    /// Cumulative work from genesis up to and including this header.
    pub work: U256,
    /// Whether the header is on the best chain.
    pub in_best_chain: bool,
}

impl Entry {
    /// The header's hash (computed: double SHA-256 of the 80 bytes).
    pub fn hash(&self) -> Hash256 {
        self.header.hash()
    }

    /// The status byte of the record ([`STATUS_BEST`] when on the best chain).
    pub fn status(&self) -> u8 {
        if self.in_best_chain {
            STATUS_BEST
        } else {
            0
        }
    }

    /// The fixed-size record: the 80-byte header, height u32 LE, cumulative work 32 bytes BE
    /// (so records sort by work bytewise), status byte.
    pub fn to_record(&self) -> [u8; RECORD_LEN] {
        let mut r = [0u8; RECORD_LEN];
        r[..HEADER_LEN].copy_from_slice(&self.header.to_array());
        r[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&self.height.to_le_bytes());
        r[HEADER_LEN + 4..HEADER_LEN + 36].copy_from_slice(&self.work.to_be_bytes());
        r[RECORD_LEN - 1] = self.status();
        r
    }

    /// Parses a record made by [`Entry::to_record`]. Only the layout is checked here; whether
    /// the entry fits a tree is [`HeaderTree::from_entries`]'s business.
    pub fn from_record(r: &[u8]) -> Result<Entry, RecordError> {
        let r: &[u8; RECORD_LEN] = r
            .try_into()
            .map_err(|_| RecordError::WrongLength { len: r.len() })?;
        let status = r[RECORD_LEN - 1];
        if status & !STATUS_BEST != 0 {
            return Err(RecordError::UnknownStatus { status });
        }
        let (header, rest) = r.split_first_chunk::<HEADER_LEN>().expect("record length");
        let (height, rest) = rest.split_first_chunk::<4>().expect("record length");
        let (work, _) = rest.split_first_chunk::<32>().expect("record length");
        Ok(Entry {
            header: BlockHeader::from_array(header),
            height: u32::from_le_bytes(*height),
            work: U256::from_be_bytes(work),
            in_best_chain: status & STATUS_BEST != 0,
        })
    }
}

/// A header on a chain: its hash and height.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChainPoint {
    /// The header's hash.
    pub hash: Hash256,
    /// Its height.
    pub height: u32,
}

/// The best chain switched to another branch: the old tip is no longer an ancestor of the new.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reorg {
    /// The tip before.
    pub old_tip: ChainPoint,
    /// The tip after.
    pub new_tip: ChainPoint,
    /// The last header both branches share (it stays on the best chain).
    pub fork_point: ChainPoint,
    /// Headers that left the best chain: the old tip back to just above the fork point, newest
    /// first (heights `old_tip.height` down to `fork_point.height + 1`).
    pub disconnected: Vec<Hash256>,
    /// Headers that joined the best chain: just above the fork point up to the new tip, oldest
    /// first (heights `fork_point.height + 1` up to `new_tip.height`).
    pub connected: Vec<Hash256>,
}

/// What [`HeaderTree::insert`] did with a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inserted {
    /// The header's hash.
    pub hash: Hash256,
    /// Its height.
    pub height: u32,
    /// Its cumulative work.
    pub work: U256,
    /// The header was already known: nothing changed.
    pub duplicate: bool,
    /// The header became the tip on another branch: the best chain was reorganized.
    pub reorg: Option<Reorg>,
    /// The header became the tip, by extending the old tip (`reorg` is `None`) or by a reorg.
    pub new_tip: bool,
}

/// What [`HeaderTree::insert_many`] did with a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Hashes of the headers stored by this batch (not the duplicates), in input order.
    pub added: Vec<Hash256>,
    /// How many headers of the batch were already known.
    pub duplicates: usize,
    /// The tip before the batch.
    pub old_tip: ChainPoint,
    /// The tip after the batch.
    pub new_tip: ChainPoint,
    /// The one reorg from the old tip to the new tip, when the old tip is not an ancestor of
    /// the new (however many reorgs happened within the batch).
    pub reorg: Option<Reorg>,
}

impl BatchOutcome {
    /// Whether the tip changed.
    pub fn tip_changed(&self) -> bool {
        self.old_tip != self.new_tip
    }
}

/// What [`HeaderTree::add`] did: the small part of [`Inserted`].
#[derive(Clone, Copy, Debug)]
struct Added {
    hash: Hash256,
    id: NodeId,
    duplicate: bool,
    new_tip: bool,
}

/// Target and work of the last bits seen: consecutive headers almost always share their bits,
/// and the work is a 256-bit division.
#[derive(Clone, Copy, Debug)]
struct BitsCache {
    bits: u32,
    target: Option<U256>,
    work: U256,
}

impl BitsCache {
    fn new(bits: u32) -> BitsCache {
        let target = target_from_compact(bits);
        BitsCache {
            bits,
            target,
            work: target.map_or(U256::ZERO, |t| work_from_target(&t)),
        }
    }

    /// `(target, work)` of `bits`, `None` when the bits are invalid.
    fn get(&mut self, bits: u32) -> Option<(U256, U256)> {
        if bits != self.bits {
            *self = BitsCache::new(bits);
        }
        self.target.map(|t| (t, self.work))
    }
}

/// The checkpoint hash at `height` in `rules` (checkpoints sorted), if one is configured.
fn checkpoint_at(rules: &HeaderRules, height: u32) -> Option<Hash256> {
    let c = &rules.checkpoints;
    c.binary_search_by_key(&height, |&(h, _)| h)
        .ok()
        .map(|i| c[i].1)
}

/// The timestamps of node `id` and up to ten ancestors, newest first.
fn mtp_times(nodes: &[Node], id: NodeId) -> impl Iterator<Item = u32> + '_ {
    std::iter::successors(nodes.get(id as usize), move |x| {
        nodes.get(x.parent as usize)
    })
    .take(MTP_SPAN)
    .map(|x| x.entry.header.time)
}

/// The median time past of node `id` and up to ten ancestors.
fn mtp_of(nodes: &[Node], id: NodeId) -> u32 {
    let mut times = [0u32; MTP_SPAN];
    let mut n = 0;
    for t in mtp_times(nodes, id) {
        times[n] = t;
        n += 1;
    }
    let times = &mut times[..n];
    times.sort_unstable();
    times[n / 2]
}

/// Whether `time` is above the median time past of node `id` (as `time > mtp_of(nodes, id)`,
/// without sorting: above the median means fewer than half of the times are at or above it).
#[inline]
fn above_median(nodes: &[Node], id: NodeId, time: u32) -> bool {
    let (mut n, mut at_or_above) = (0usize, 0usize);
    for t in mtp_times(nodes, id) {
        n += 1;
        at_or_above += usize::from(t >= time);
    }
    // median = sorted[n / 2]; time > median <=> #(t < time) >= n / 2 + 1
    n - at_or_above > n / 2
}

/// Index of a node in the arena.
type NodeId = u32;

/// The parent of genesis.
const NO_PARENT: NodeId = NodeId::MAX;

/// An entry in the arena, with its parent's position so walks back need no hash lookups.
#[derive(Clone, Copy, Debug)]
struct Node {
    entry: Entry,
    parent: NodeId,
}

/// Every known header with its height and cumulative work, and the best chain.
///
/// Entries live in an append-only arena (`Vec`), found by hash through a map of small values
/// (hash → position): inserts write the 128-byte node sequentially and the map moves only
/// 36-byte slots when it grows. Pure and I/O-free: see the [module documentation](super) for
/// how a store persists it.
#[derive(Clone)]
pub struct HeaderTree {
    genesis: Hash256,
    pow_limit: U256,
    consensus: Consensus,
    index: HashIdMap<NodeId>,
    nodes: Vec<Node>,
    /// The best chain: `best[h]` is the hash at height `h`, the last is the tip.
    best: Vec<Hash256>,
    tip_work: U256,
    bits: BitsCache,
    /// Checkpoints sorted by height, and the rest of the rules.
    rules: HeaderRules,
    /// Seconds since the Unix epoch as the caller last set them (0: not set).
    clock: u32,
    /// Height of the highest checkpoint in the tree (0: none): no new header below it.
    checkpoint_floor: u32,
}

impl HeaderTree {
    /// A tree holding only the network's genesis header (height 0, trusted as is).
    pub fn new(params: &NetworkParams) -> HeaderTree {
        let genesis = params.genesis_hash();
        let entry = Entry {
            header: params.genesis,
            height: 0,
            work: params.genesis.work(),
            in_best_chain: true,
        };
        let mut index = HashIdMap::default();
        index.insert(genesis, 0);
        HeaderTree {
            genesis,
            pow_limit: params.pow_limit,
            consensus: params.consensus.clone(),
            index,
            nodes: vec![Node {
                entry,
                parent: NO_PARENT,
            }],
            best: vec![genesis],
            tip_work: entry.work,
            bits: BitsCache::new(params.genesis.bits),
            rules: HeaderRules::default(),
            clock: 0,
            checkpoint_floor: 0,
        }
    }

    /// Replaces the contextual rules. Headers already in the tree are not checked again; the
    /// highest checkpoint whose header is in the tree becomes the floor below which no new
    /// header is accepted. Returns the checkpoints the best chain contradicts (a stored chain
    /// made before the checkpoint was configured), as `(height, checkpoint hash, best hash)`.
    pub fn set_rules(&mut self, mut rules: HeaderRules) -> Vec<(u32, Hash256, Hash256)> {
        rules.checkpoints.sort_unstable();
        rules.checkpoints.dedup();
        self.checkpoint_floor = rules
            .checkpoints
            .iter()
            .filter(|(_, h)| self.contains(h))
            .map(|&(height, _)| height)
            .max()
            .unwrap_or(0);
        let conflicts = rules
            .checkpoints
            .iter()
            .filter_map(|&(height, h)| match self.hash_at(height) {
                Some(best) if best != h => Some((height, h, best)),
                _ => None,
            })
            .collect();
        self.rules = rules;
        conflicts
    }

    /// The rules in force.
    pub fn rules(&self) -> &HeaderRules {
        &self.rules
    }

    /// Sets the clock (seconds since the Unix epoch) that headers' times are checked against:
    /// the tree has no clock of its own.
    pub fn set_clock(&mut self, unix_secs: u32) {
        self.clock = unix_secs;
    }

    /// The entries added since the tree held `len` of them, in the order they were added (the
    /// arena is append-only: a batch's new headers are its last entries, in input order).
    pub fn entries_since(&self, len: usize) -> impl Iterator<Item = &Entry> + '_ {
        self.nodes
            .get(len..)
            .unwrap_or(&[])
            .iter()
            .map(|n| &n.entry)
    }

    /// Makes room for `additional` more headers (a sync that knows roughly how many to expect).
    pub fn reserve(&mut self, additional: usize) {
        self.index.reserve(additional);
        self.nodes.reserve(additional);
        self.best.reserve(additional);
    }

    fn node(&self, hash: &Hash256) -> Option<&Node> {
        self.index.get(hash).map(|&i| &self.nodes[i as usize])
    }

    /// Adds a header whose parent is known.
    ///
    /// Checks, in order: already known (a duplicate, not an error), bits within the network's
    /// limit, proof of work against the header's own bits, known parent. The header becomes the
    /// tip when its cumulative work is strictly more than the tip's (on a tie the first seen
    /// stays).
    pub fn insert(&mut self, header: BlockHeader) -> Result<Inserted, HeaderError> {
        let mut reorg = None;
        let a = self.add(header, &mut reorg)?;
        let e = &self.nodes[a.id as usize].entry;
        Ok(Inserted {
            hash: a.hash,
            height: e.height,
            work: e.work,
            duplicate: a.duplicate,
            reorg,
            new_tip: a.new_tip,
        })
    }

    /// [`HeaderTree::insert`] with a small return value (the batch loop copies no reorg
    /// report per header): the reorg, if any, goes to `reorg`.
    #[inline]
    fn add(
        &mut self,
        header: BlockHeader,
        reorg: &mut Option<Reorg>,
    ) -> Result<Added, HeaderError> {
        let hash = header.hash();
        let parent = self.index.get(&header.prev_hash).copied();
        if let Some(&id) = self.index.get(&hash) {
            return Ok(Added {
                hash,
                id,
                duplicate: true,
                new_tip: false,
            });
        }
        let Some((target, own_work)) = self.bits.get(header.bits) else {
            return Err(HeaderError::BadProofOfWork { hash });
        };
        if target > self.pow_limit {
            return Err(HeaderError::BitsAboveLimit {
                hash,
                bits: header.bits,
            });
        }
        if U256::from_le_bytes(&hash.0) > target {
            return Err(HeaderError::BadProofOfWork { hash });
        }
        let Some(parent) = parent else {
            return Err(HeaderError::Orphan {
                hash,
                prev: header.prev_hash,
            });
        };
        let p = &self.nodes[parent as usize].entry;
        let work = p
            .work
            .checked_add(&own_work)
            .ok_or(HeaderError::WorkOverflow { hash })?;
        // Cannot overflow: heights in the tree are at most the number of entries, and the
        // arena cannot hold 2^32 nodes of 128 bytes.
        let height = p.height + 1;
        if height < self.checkpoint_floor {
            return Err(HeaderError::ForkBeforeCheckpoint {
                hash,
                height,
                checkpoint: self.checkpoint_floor,
            });
        }
        let is_checkpoint = match checkpoint_at(&self.rules, height) {
            Some(expected) if expected != hash => {
                return Err(HeaderError::CheckpointMismatch {
                    hash,
                    height,
                    expected,
                })
            }
            Some(_) => true,
            None => false,
        };
        let expected = self.consensus.check_difficulty.then(|| {
            crate::chain::pow::required_bits(
                &self.consensus,
                &self.pow_limit,
                p.height,
                header.time,
                &mut |h| self.ancestor(parent, h),
            )
        });
        if let Some(Some(expected)) = expected {
            if header.bits != expected {
                return Err(HeaderError::BadDifficultyBits {
                    hash,
                    bits: header.bits,
                    expected,
                });
            }
        }
        let c = &self.consensus;
        if (header.version < 2 && height >= c.bip34_height)
            || (header.version < 3 && height >= c.bip66_height)
            || (header.version < 4 && height >= c.bip65_height)
        {
            return Err(HeaderError::ObsoleteVersion {
                hash,
                version: header.version,
                height,
            });
        }
        if self.rules.median_time_past && !above_median(&self.nodes, parent, header.time) {
            return Err(HeaderError::TimeTooOld {
                hash,
                time: header.time,
                median: mtp_of(&self.nodes, parent),
            });
        }
        if self.clock != 0 {
            let limit = self.clock.saturating_add(self.rules.max_future_secs);
            if header.time > limit {
                return Err(HeaderError::TimeTooNew {
                    hash,
                    time: header.time,
                    limit,
                });
            }
        }
        if is_checkpoint {
            self.checkpoint_floor = self.checkpoint_floor.max(height);
        }
        let id = self.nodes.len() as NodeId;
        let better = work > self.tip_work;
        let extends_tip = self.best.last() == Some(&header.prev_hash);
        self.index.insert(hash, id);
        self.nodes.push(Node {
            entry: Entry {
                header,
                height,
                work,
                in_best_chain: better && extends_tip,
            },
            parent,
        });
        if better {
            if extends_tip {
                self.best.push(hash);
                self.tip_work = work;
            } else {
                *reorg = Some(self.switch_to(hash, id));
            }
        }
        Ok(Added {
            hash,
            id,
            duplicate: false,
            new_tip: better,
        })
    }

    /// What the difficulty rules need of the ancestor at `height` of node `from` (on its
    /// branch): a few steps back by parent links, further through the best chain's height index
    /// once the branch joins it.
    fn ancestor(&self, from: NodeId, height: u32) -> Option<crate::chain::pow::Ancestor> {
        let mut id = from;
        loop {
            let n = self.nodes.get(id as usize)?;
            let e = &n.entry;
            if e.height == height {
                return Some(crate::chain::pow::Ancestor {
                    bits: e.header.bits,
                    time: e.header.time,
                    work: e.work,
                });
            }
            if e.height < height {
                return None;
            }
            if e.in_best_chain && e.height - height > 8 {
                let at = *self.index.get(self.best.get(height as usize)?)?;
                let e = &self.nodes[at as usize].entry;
                return Some(crate::chain::pow::Ancestor {
                    bits: e.header.bits,
                    time: e.header.time,
                    work: e.work,
                });
            }
            id = n.parent;
        }
    }

    /// Adds a batch (a `headers` message, up to 2,000) in order, each as [`HeaderTree::insert`].
    ///
    /// Stops at the first refused header and returns its index and error; the headers before it
    /// stay in the tree (use [`HeaderTree::reorg_since`] with the tip from before the batch for
    /// the best-chain change). On success, the reorgs within the batch are combined into one,
    /// from the tip before the batch to the tip after.
    pub fn insert_many(
        &mut self,
        headers: &[BlockHeader],
    ) -> Result<BatchOutcome, (usize, HeaderError)> {
        let old_tip = self.tip_point();
        let mut added = Vec::with_capacity(headers.len());
        let mut duplicates = 0;
        let mut reorg = None;
        for (i, h) in headers.iter().enumerate() {
            let a = self.add(*h, &mut reorg).map_err(|e| (i, e))?;
            if a.duplicate {
                duplicates += 1;
            } else {
                added.push(a.hash);
            }
        }
        Ok(BatchOutcome {
            added,
            duplicates,
            old_tip,
            new_tip: self.tip_point(),
            reorg: self.reorg_since(&old_tip.hash),
        })
    }

    /// Makes the stored header `hash` (node `id`, not on the best chain, with more work than
    /// the tip) the tip, and reports the reorg.
    fn switch_to(&mut self, hash: Hash256, id: NodeId) -> Reorg {
        let old_tip = self.tip_point();
        let mut path = Vec::new();
        let (mut cur_hash, mut cur) = (hash, id);
        // Genesis is always on the best chain, so the walk stops at or before it.
        let fork_height = loop {
            let n = &mut self.nodes[cur as usize];
            if n.entry.in_best_chain {
                break n.entry.height;
            }
            n.entry.in_best_chain = true;
            path.push(cur_hash);
            cur_hash = n.entry.header.prev_hash;
            cur = n.parent;
        };
        let disconnected: Vec<Hash256> =
            self.best.drain(fork_height as usize + 1..).rev().collect();
        for h in &disconnected {
            if let Some(&i) = self.index.get(h) {
                self.nodes[i as usize].entry.in_best_chain = false;
            }
        }
        path.reverse();
        self.best.extend_from_slice(&path);
        self.tip_work = self.nodes[id as usize].entry.work;
        Reorg {
            old_tip,
            new_tip: self.tip_point(),
            fork_point: ChainPoint {
                hash: cur_hash,
                height: fork_height,
            },
            disconnected,
            connected: path,
        }
    }

    /// The reorg from `old_tip` to the current tip, or `None` when `old_tip` is on the best
    /// chain (an ancestor of the tip, or the tip) or unknown.
    pub fn reorg_since(&self, old_tip: &Hash256) -> Option<Reorg> {
        let old = self.node(old_tip)?;
        if old.entry.in_best_chain {
            return None;
        }
        let old_point = ChainPoint {
            hash: *old_tip,
            height: old.entry.height,
        };
        let mut disconnected = Vec::new();
        let (mut cur_hash, mut n) = (*old_tip, old);
        while !n.entry.in_best_chain {
            disconnected.push(cur_hash);
            cur_hash = n.entry.header.prev_hash;
            n = self.nodes.get(n.parent as usize)?;
        }
        let fork_height = n.entry.height;
        Some(Reorg {
            old_tip: old_point,
            new_tip: self.tip_point(),
            fork_point: ChainPoint {
                hash: cur_hash,
                height: fork_height,
            },
            disconnected,
            connected: self.best[fork_height as usize + 1..].to_vec(),
        })
    }

    /// The tip: hash, height, cumulative work.
    pub fn tip(&self) -> (Hash256, u32, U256) {
        let p = self.tip_point();
        (p.hash, p.height, self.tip_work)
    }

    /// The tip's hash and height.
    pub fn tip_point(&self) -> ChainPoint {
        ChainPoint {
            hash: *self.best.last().expect("the best chain holds genesis"),
            height: self.height(),
        }
    }

    /// The tip's height.
    pub fn height(&self) -> u32 {
        (self.best.len() - 1) as u32
    }

    /// The genesis hash.
    pub fn genesis_hash(&self) -> Hash256 {
        self.genesis
    }

    /// A header's entry.
    pub fn get(&self, hash: &Hash256) -> Option<&Entry> {
        self.node(hash).map(|n| &n.entry)
    }

    /// Whether the header is known.
    pub fn contains(&self, hash: &Hash256) -> bool {
        self.index.contains_key(hash)
    }

    /// Number of headers, genesis and forks included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: the genesis header is always there.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every entry with its hash, in no particular order (for a store's first write).
    pub fn iter(&self) -> impl Iterator<Item = (&Hash256, &Entry)> + '_ {
        self.index
            .iter()
            .map(|(h, &i)| (h, &self.nodes[i as usize].entry))
    }

    /// The hash at `height` on the best chain.
    pub fn hash_at(&self, height: u32) -> Option<Hash256> {
        self.best.get(height as usize).copied()
    }

    /// The cumulative work at `height` on the best chain.
    pub fn chain_work_at(&self, height: u32) -> Option<U256> {
        let h = self.best.get(height as usize)?;
        self.get(h).map(|e| e.work)
    }

    /// The median of the timestamps of `hash` and up to ten ancestors (fewer near genesis): a
    /// child of `hash` must have a time above it. `None` when `hash` is unknown.
    pub fn median_time_past(&self, hash: &Hash256) -> Option<u32> {
        let id = *self.index.get(hash)?;
        Some(mtp_of(&self.nodes, id))
    }

    /// A block locator of the best chain, newest first, ending with genesis: Bitcoin Core's
    /// construction, where the step back doubles once more than ten hashes are in (so the tip
    /// and the eleven below it one by one, then steps of 2, 4, 8, ...). About 30 hashes for a
    /// million headers.
    pub fn locator(&self) -> Vec<Hash256> {
        let mut out = Vec::with_capacity(32);
        let mut height = self.best.len() - 1;
        let mut step = 1usize;
        loop {
            out.push(self.best[height]);
            if height == 0 {
                break;
            }
            height = height.saturating_sub(step);
            if out.len() > 10 {
                step = step.saturating_mul(2);
            }
        }
        out
    }

    /// The height of the first locator hash on our best chain, 0 (genesis) if none is.
    pub fn find_fork(&self, locator: &[Hash256]) -> u32 {
        locator
            .iter()
            .filter_map(|h| self.get(h))
            .find(|e| e.in_best_chain)
            .map_or(0, |e| e.height)
    }

    /// The best-chain headers after the fork point of `locator` (see
    /// [`HeaderTree::find_fork`]), up to and including `stop` or `max` headers: the answer to
    /// `getheaders`. An empty locator asks for the `stop` header alone, on any branch.
    pub fn headers_after(
        &self,
        locator: &[Hash256],
        stop: &Hash256,
        max: usize,
    ) -> Vec<BlockHeader> {
        if max == 0 {
            return Vec::new();
        }
        if locator.is_empty() {
            return self.get(stop).map(|e| e.header).into_iter().collect();
        }
        let start = self.find_fork(locator) as usize + 1;
        let mut out = Vec::with_capacity(max.min(self.best.len().saturating_sub(start)));
        for h in self.best.iter().skip(start) {
            if let Some(e) = self.get(h) {
                out.push(e.header);
            }
            if out.len() >= max || h == stop {
                break;
            }
        }
        out
    }

    /// Rebuilds a tree from stored entries, in any order (the genesis entry may be left out).
    ///
    /// Every entry must link to a known parent with a height one more and a cumulative work
    /// equal to the parent's plus its own, and meet its own proof of work within the network's
    /// limit; anything else is a corrupt store, refused with an error naming the hash. The best
    /// chain is recomputed: the most cumulative work, ties to the entry stored as on the best
    /// chain, then to the lowest hash.
    pub fn from_entries(
        params: &NetworkParams,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<HeaderTree, LoadError> {
        let mut tree = HeaderTree::new(params);
        let genesis = tree.nodes[0].entry;
        let entries = entries.into_iter();
        tree.reserve(entries.size_hint().0);
        // The arena in input order, genesis first; each node's hash kept aside while loading.
        let mut hashes = vec![tree.genesis];
        for e in entries {
            let hash = e.hash();
            match tree.index.entry(hash) {
                MapEntry::Vacant(v) => {
                    v.insert(tree.nodes.len() as NodeId);
                    tree.nodes.push(Node {
                        entry: e,
                        parent: NO_PARENT,
                    });
                    hashes.push(hash);
                }
                // A stored genesis must agree with the parameters' (its best-chain bit aside).
                MapEntry::Occupied(o) if *o.get() == 0 => {
                    if e.height != 0 {
                        return Err(LoadError::WrongHeight {
                            hash,
                            height: e.height,
                            expected: 0,
                        });
                    }
                    if e.work != genesis.work {
                        return Err(LoadError::WrongWork {
                            hash,
                            work: e.work,
                            expected: Some(genesis.work),
                        });
                    }
                }
                MapEntry::Occupied(o) => {
                    let old = &tree.nodes[*o.get() as usize].entry;
                    if (old.height, old.work) != (e.height, e.work) {
                        return Err(LoadError::Conflict { hash });
                    }
                }
            }
        }

        for (i, hash) in hashes.iter().enumerate().skip(1) {
            let e = tree.nodes[i].entry;
            let Some((target, own_work)) = tree.bits.get(e.header.bits) else {
                return Err(LoadError::BadProofOfWork { hash: *hash });
            };
            if target > tree.pow_limit {
                return Err(LoadError::BitsAboveLimit {
                    hash: *hash,
                    bits: e.header.bits,
                });
            }
            if U256::from_le_bytes(&hash.0) > target {
                return Err(LoadError::BadProofOfWork { hash: *hash });
            }
            let Some(&parent) = tree.index.get(&e.header.prev_hash) else {
                return Err(LoadError::UnknownParent {
                    hash: *hash,
                    prev: e.header.prev_hash,
                });
            };
            let p = &tree.nodes[parent as usize].entry;
            let expected = u64::from(p.height) + 1;
            if u64::from(e.height) != expected {
                return Err(LoadError::WrongHeight {
                    hash: *hash,
                    height: e.height,
                    expected,
                });
            }
            let expected = p.work.checked_add(&own_work);
            if expected != Some(e.work) {
                return Err(LoadError::WrongWork {
                    hash: *hash,
                    work: e.work,
                    expected,
                });
            }
            tree.nodes[i].parent = parent;
        }
        // Every entry now links to genesis: heights drop by one per parent and only genesis
        // may have height 0.

        let tip = (0..tree.nodes.len())
            .max_by(|&a, &b| {
                let (ea, eb) = (&tree.nodes[a].entry, &tree.nodes[b].entry);
                (ea.work, ea.in_best_chain, std::cmp::Reverse(&hashes[a])).cmp(&(
                    eb.work,
                    eb.in_best_chain,
                    std::cmp::Reverse(&hashes[b]),
                ))
            })
            .expect("the arena holds genesis");
        for n in &mut tree.nodes {
            n.entry.in_best_chain = false;
        }
        let tip_height = tree.nodes[tip].entry.height as usize;
        let mut best = vec![Hash256::ZERO; tip_height + 1];
        let mut cur = tip as NodeId;
        while let Some(n) = tree.nodes.get_mut(cur as usize) {
            n.entry.in_best_chain = true;
            best[n.entry.height as usize] = hashes[cur as usize];
            cur = n.parent;
        }
        tree.tip_work = tree.nodes[tip].entry.work;
        tree.best = best;
        Ok(tree)
    }
}

impl PartialEq for HeaderTree {
    /// Same genesis and limit, same best chain, same entries (in whatever arena order).
    fn eq(&self, o: &HeaderTree) -> bool {
        self.genesis == o.genesis
            && self.pow_limit == o.pow_limit
            && self.best == o.best
            && self.len() == o.len()
            && self.iter().all(|(h, e)| o.get(h) == Some(e))
    }
}

impl Eq for HeaderTree {}

impl fmt::Debug for HeaderTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tip = self.tip_point();
        f.debug_struct("HeaderTree")
            .field("len", &self.len())
            .field("tip", &tip.hash)
            .field("height", &tip.height)
            .field("work", &self.tip_work)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Network;
    use std::hash::BuildHasher;

    fn mine(prev: &Entry, salt: u32) -> BlockHeader {
        let mut h = BlockHeader {
            version: 4,
            prev_hash: prev.hash(),
            merkle_root: Hash256::sha256d(&salt.to_le_bytes()),
            time: prev.header.time + 600,
            bits: 0x207fffff,
            nonce: 0,
        };
        while !h.meets_own_target() {
            h.nonce += 1;
        }
        h
    }

    fn regtest() -> HeaderTree {
        HeaderTree::new(&Network::Regtest.params())
    }

    /// Extends `from` by `n` headers; returns their hashes.
    fn extend(t: &mut HeaderTree, from: Hash256, n: usize, salt: u32) -> Vec<Hash256> {
        let mut cur = *t.get(&from).unwrap();
        let mut out = Vec::new();
        for i in 0..n {
            let h = mine(&cur, salt.wrapping_mul(1000).wrapping_add(i as u32));
            let ins = t.insert(h).unwrap();
            cur = *t.get(&ins.hash).unwrap();
            out.push(ins.hash);
        }
        out
    }

    /// `h` with another time, mined again.
    fn retime(mut h: BlockHeader, time: u32) -> BlockHeader {
        h.time = time;
        h.nonce = 0;
        while !h.meets_own_target() {
            h.nonce += 1;
        }
        h
    }

    #[test]
    fn time_must_pass_the_median_of_eleven() {
        let mut t = regtest();
        let g = t.genesis_hash();
        let hashes = extend(&mut t, g, 20, 1);
        let tip = *t.get(hashes.last().unwrap()).unwrap();
        let median = t.median_time_past(&tip.hash()).unwrap();
        // Times step by 600: the median of the last eleven is the sixth newest.
        assert_eq!(median, tip.header.time - 5 * 600);
        let at_median = retime(mine(&tip, 7), median);
        assert_eq!(
            t.insert(at_median),
            Err(HeaderError::TimeTooOld {
                hash: at_median.hash(),
                time: median,
                median
            })
        );
        // One second above the median is fine, even though it is before the parent's time.
        let above = retime(mine(&tip, 8), median + 1);
        assert!(t.insert(above).is_ok());
        // The rule can be switched off (a test chain with equal times).
        let mut t2 = regtest();
        t2.set_rules(HeaderRules {
            median_time_past: false,
            ..Default::default()
        });
        let g = *t2.get(&t2.genesis_hash()).unwrap();
        assert!(t2.insert(retime(mine(&g, 1), g.header.time)).is_ok());
    }

    #[test]
    fn above_median_agrees_with_the_sorted_median() {
        let mut t = regtest();
        t.set_rules(HeaderRules {
            median_time_past: false,
            ..Default::default()
        });
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut cur = *t.get(&t.genesis_hash()).unwrap();
        for i in 0..40 {
            // times jumping around within a small range, with many ties
            let time = 1_000_000 + (rnd() % 8) as u32 * 100;
            let h = retime(mine(&cur, i), time);
            let hash = t.insert(h).unwrap().hash;
            cur = *t.get(&hash).unwrap();
            let id = *t.index.get(&cur.hash()).unwrap();
            let median = mtp_of(&t.nodes, id);
            for probe in [median - 1, median, median + 1, 999_000, 1_001_000] {
                assert_eq!(
                    above_median(&t.nodes, id, probe),
                    probe > median,
                    "{i} {probe}"
                );
            }
        }
    }

    #[test]
    fn time_ahead_of_the_clock() {
        let mut t = regtest();
        let g = *t.get(&t.genesis_hash()).unwrap();
        let far = retime(mine(&g, 1), g.header.time + 10_000);
        // No clock set: no check.
        assert!(t.clone().insert(far).is_ok());
        t.set_clock(g.header.time);
        let limit = g.header.time + MAX_FUTURE_BLOCK_TIME;
        assert_eq!(
            t.insert(far),
            Err(HeaderError::TimeTooNew {
                hash: far.hash(),
                time: far.time,
                limit
            })
        );
        assert!(!t.contains(&far.hash()), "refused headers are not stored");
        assert!(t.insert(retime(mine(&g, 2), limit)).is_ok());
        // Later, with the clock moved on, the same header is fine.
        t.set_clock(far.time);
        assert!(t.insert(far).is_ok());
    }

    #[test]
    fn checkpoints_pin_the_chain_and_stop_forks_below_them() {
        // The honest chain, built without rules.
        let mut honest = regtest();
        let g = honest.genesis_hash();
        let hashes = extend(&mut honest, g, 30, 1);
        let headers: Vec<BlockHeader> = hashes
            .iter()
            .map(|h| honest.get(h).unwrap().header)
            .collect();

        let mut t = regtest();
        let conflicts = t.set_rules(HeaderRules {
            checkpoints: vec![(20, hashes[19]), (10, hashes[9])],
            ..Default::default()
        });
        assert!(conflicts.is_empty());
        assert_eq!(t.rules().checkpoints[0].0, 10, "sorted");
        // A fork of 15 headers from genesis contradicts the checkpoint at 10.
        let mut liar = regtest();
        let fork = extend(&mut liar, g, 15, 2);
        let fork: Vec<BlockHeader> = fork.iter().map(|h| liar.get(h).unwrap().header).collect();
        let (i, e) = t.insert_many(&fork).unwrap_err();
        assert_eq!(i, 9);
        assert_eq!(
            e,
            HeaderError::CheckpointMismatch {
                hash: fork[9].hash(),
                height: 10,
                expected: hashes[9]
            }
        );
        // The honest chain passes both checkpoints.
        let out = t.insert_many(&headers).unwrap();
        assert_eq!(out.new_tip.height, 30);
        // Now a fork from below the checkpoint at 20 is refused, even one with more work...
        let low = *t.get(&hashes[14]).unwrap();
        let f = mine(&low, 99);
        assert_eq!(
            t.insert(f),
            Err(HeaderError::ForkBeforeCheckpoint {
                hash: f.hash(),
                height: 16,
                checkpoint: 20
            })
        );
        // ...while a fork above it is fine.
        let high = *t.get(&hashes[24]).unwrap();
        assert!(t.insert(mine(&high, 99)).is_ok());
        // Duplicates below the floor are still duplicates, not errors.
        assert!(t.insert(headers[3]).unwrap().duplicate);

        // Rules set on a tree that holds another chain report the contradiction.
        let conflicts = liar.set_rules(HeaderRules {
            checkpoints: vec![(10, hashes[9])],
            ..Default::default()
        });
        assert_eq!(conflicts, vec![(10, hashes[9], liar.hash_at(10).unwrap())]);
    }

    #[test]
    fn hasher_takes_the_first_bytes() {
        let mut h = Hash256::ZERO;
        h.0[..8].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
        let b = super::super::BuildHashIdHasher;
        let mut h2 = h;
        h2.0[31] = 0xff;
        assert_eq!(
            b.hash_one(h),
            b.hash_one(h2),
            "only the first eight bytes count"
        );
        assert_ne!(b.hash_one(h), 0);
        h2.0[0] ^= 1;
        assert_ne!(b.hash_one(h), b.hash_one(h2));
    }

    #[test]
    fn node_is_two_cache_lines() {
        assert_eq!(std::mem::size_of::<Node>(), 128);
        assert_eq!(std::mem::size_of::<(Hash256, NodeId)>(), 36);
    }

    #[test]
    fn record_round_trip_and_errors() {
        let mut t = regtest();
        let g = t.genesis_hash();
        let hs = extend(&mut t, g, 3, 1);
        for h in &hs {
            let e = *t.get(h).unwrap();
            let r = e.to_record();
            assert_eq!(r.len(), RECORD_LEN);
            assert_eq!(Entry::from_record(&r).unwrap(), e);
        }
        let r = t.get(&hs[0]).unwrap().to_record();
        assert_eq!(
            Entry::from_record(&r[..RECORD_LEN - 1]),
            Err(RecordError::WrongLength {
                len: RECORD_LEN - 1
            })
        );
        let mut bad = r;
        bad[RECORD_LEN - 1] = 0x82;
        assert_eq!(
            Entry::from_record(&bad),
            Err(RecordError::UnknownStatus { status: 0x82 })
        );
        // Work is big-endian: the last work byte is the least significant.
        assert_eq!(r[HEADER_LEN + 35], 4, "two regtest headers of work 2 each");
    }

    #[test]
    fn median_time_past_of_eleven() {
        let mut t = regtest();
        let g = t.genesis_hash();
        let gt = t.get(&g).unwrap().header.time;
        assert_eq!(t.median_time_past(&g), Some(gt));
        let hs = extend(&mut t, g, 20, 2);
        // One header above genesis: times gt, gt+600; median of two is the upper one.
        assert_eq!(t.median_time_past(&hs[0]), Some(gt + 600));
        // Height 20: times of heights 10..=20, median height 15.
        assert_eq!(t.median_time_past(&hs[19]), Some(gt + 15 * 600));
        assert_eq!(t.median_time_past(&Hash256::ZERO), None);
    }

    #[test]
    fn duplicate_and_genesis() {
        let mut t = regtest();
        let p = Network::Regtest.params();
        let ins = t.insert(p.genesis).unwrap();
        assert!(ins.duplicate && !ins.new_tip && ins.height == 0);
        let g = t.genesis_hash();
        let hs = extend(&mut t, g, 2, 3);
        let again = t.insert(t.get(&hs[0]).unwrap().header).unwrap();
        assert!(again.duplicate);
        assert_eq!(again.height, 1);
        assert_eq!(t.len(), 3);
        assert!(!t.is_empty());
    }

    #[test]
    fn reorg_since_and_locator_of_a_short_chain() {
        let mut t = regtest();
        let g = t.genesis_hash();
        assert_eq!(t.locator(), vec![g]);
        let a = extend(&mut t, g, 3, 4);
        assert_eq!(t.locator(), vec![a[2], a[1], a[0], g]);
        let b = extend(&mut t, a[0], 3, 5);
        assert_eq!(t.tip().0, b[2]);
        let r = t.reorg_since(&a[2]).unwrap();
        assert_eq!(
            r.fork_point,
            ChainPoint {
                hash: a[0],
                height: 1
            }
        );
        assert_eq!(r.disconnected, vec![a[2], a[1]]);
        assert_eq!(r.connected, b);
        assert_eq!(t.reorg_since(&a[0]), None);
        assert_eq!(t.reorg_since(&Hash256::ZERO), None);
    }
}
