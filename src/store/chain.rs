//! The header tree on disk: every header as a fixed record keyed by hash, the best chain as a
//! height index, and the tip. [`ChainDb`] wraps the in-memory [`HeaderTree`] and turns each
//! batch of headers into one store batch, including the rewrites a reorg needs.

use super::{Batch, Store, StoreError, StoreResult, Table};
use crate::chain::{ChainPoint, Entry, HeaderError, HeaderRules, HeaderTree, Reorg, RECORD_LEN};
use crate::network::NetworkParams;
use crate::wire::{BlockHeader, Hash256};
use bytes::BytesMut;

/// What one call to [`ChainDb::insert_headers`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainUpdate {
    /// Headers stored (duplicates left out), in input order.
    pub added: Vec<Hash256>,
    /// Tip before.
    pub old_tip: ChainPoint,
    /// Tip after.
    pub new_tip: ChainPoint,
    /// The reorg from the old tip to the new one, when the old tip left the best chain.
    pub reorg: Option<Reorg>,
    /// The first refused header (its index in the input) and why; the ones before it are kept.
    pub error: Option<(usize, HeaderError)>,
}

/// The header tree with its persistence.
pub struct ChainDb {
    tree: HeaderTree,
}

/// Key of a height in the height index (big-endian, so the index sorts by height).
pub fn height_key(h: u32) -> [u8; 4] {
    h.to_be_bytes()
}

/// Key of a header record: its height (big-endian) then its hash. Records of a sync batch are
/// then appended at the end of the B-tree instead of landing on random pages (keyed by hash
/// alone, each 117-byte record cost ~3.5 KB of page writes; see benches/store.rs). Lookups by
/// hash are served by the in-memory tree, which holds every header.
pub fn header_key(height: u32, hash: &Hash256) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..4].copy_from_slice(&height.to_be_bytes());
    k[4..].copy_from_slice(&hash.0);
    k
}

impl ChainDb {
    /// An empty chain (genesis only) for `params`.
    pub fn new(params: &NetworkParams) -> ChainDb {
        ChainDb {
            tree: HeaderTree::new(params),
        }
    }

    /// Loads every stored header and rebuilds the tree; a store whose headers do not form a
    /// valid tree on these parameters is refused as corrupt.
    pub fn load(s: &dyn Store, params: &NetworkParams) -> StoreResult<ChainDb> {
        let mut entries = Vec::new();
        let mut bad = None;
        s.scan(
            Table::Headers,
            &[],
            &mut |k, v| match Entry::from_record(v) {
                Ok(e) if k == header_key(e.height, &e.hash()) => {
                    entries.push(e);
                    true
                }
                Ok(_) => {
                    bad = Some(format!(
                        "header record under key {} has another height or hash",
                        crate::wire::hash::encode_hex(k)
                    ));
                    false
                }
                Err(e) => {
                    bad = Some(format!(
                        "header record {}: {e}",
                        crate::wire::hash::encode_hex(k)
                    ));
                    false
                }
            },
        )?;
        if let Some(b) = bad {
            return Err(StoreError::Corrupt(b));
        }
        let tree = HeaderTree::from_entries(params, entries)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(ChainDb { tree })
    }

    /// The tree, for queries.
    pub fn tree(&self) -> &HeaderTree {
        &self.tree
    }

    /// Makes room in the tree for `additional` more headers (a sync that knows how many to
    /// expect), so the tree does not grow and copy itself step by step.
    pub fn reserve(&mut self, additional: usize) {
        self.tree.reserve(additional);
    }

    /// Sets the tree's contextual rules (see [`HeaderTree::set_rules`]); returns the
    /// checkpoints the stored best chain contradicts.
    pub fn set_rules(&mut self, rules: HeaderRules) -> Vec<(u32, Hash256, Hash256)> {
        self.tree.set_rules(rules)
    }

    /// Adds headers in order and appends to `batch` every write that makes the store match:
    /// new header records, the height index and tip, and on a reorg the records and heights of
    /// the branches that switched.
    pub fn insert_headers(&mut self, headers: &[BlockHeader], batch: &mut Batch) -> ChainUpdate {
        // Headers' times are checked against the wall clock (two hours ahead at most).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs().min(u64::from(u32::MAX)) as u32);
        self.insert_headers_at(headers, batch, now)
    }

    /// [`ChainDb::insert_headers`] with the clock (unix seconds) given: the node core passes its
    /// own time, so a simulation on a virtual clock is repeatable.
    pub fn insert_headers_at(
        &mut self,
        headers: &[BlockHeader],
        batch: &mut Batch,
        now: u32,
    ) -> ChainUpdate {
        let old_tip = self.tree.tip_point();
        self.tree.set_clock(now);
        let len_before = self.tree.len();
        let (added, error) = match self.tree.insert_many(headers) {
            Ok(outcome) => (outcome.added, None),
            // The headers before the bad one are in the tree; which of them were new is not
            // reported, and writing a stored record again is harmless.
            Err((i, e)) => (
                headers[..i].iter().map(|h| h.hash()).collect(),
                Some((i, e)),
            ),
        };
        // All values of the batch are carved out of one buffer: one allocation, not one per op.
        let mut arena = BytesMut::with_capacity(added.len() * (RECORD_LEN + 36 + 4 + 32) + 64);
        let mut put_record = |batch: &mut Batch, h: &Hash256, e: &Entry| {
            arena.extend_from_slice(&header_key(e.height, h));
            let key = arena.split().freeze();
            arena.extend_from_slice(&e.to_record());
            batch.put(Table::Headers, key, arena.split().freeze());
        };
        let lookup = |tree: &HeaderTree, h: &Hash256| {
            *tree
                .get(h)
                .expect("a hash the tree just reported is in the tree")
        };
        if error.is_none() {
            // The new entries are the arena's last, in the order of `added`: no lookups.
            for (h, e) in added.iter().zip(self.tree.entries_since(len_before)) {
                debug_assert_eq!(e.hash(), *h);
                put_record(batch, h, e);
            }
        } else {
            for h in &added {
                put_record(batch, h, &lookup(&self.tree, h));
            }
        }
        let new_tip = self.tree.tip_point();
        let mut reorg = None;
        if new_tip != old_tip {
            let from = match self.tree.reorg_since(&old_tip.hash) {
                Some(r) => {
                    for h in r.disconnected.iter().chain(r.connected.iter()) {
                        put_record(batch, h, &lookup(&self.tree, h));
                    }
                    for gone in (new_tip.height + 1)..=old_tip.height {
                        batch.delete(Table::Heights, height_key(gone).to_vec());
                    }
                    let from = r.fork_point.height + 1;
                    reorg = Some(r);
                    from
                }
                // The first headers on top of genesis also write genesis at height 0.
                None if old_tip.height == 0 => 0,
                None => old_tip.height + 1,
            };
            for height in from..=new_tip.height {
                let h = self
                    .tree
                    .hash_at(height)
                    .expect("heights up to the tip are on the best chain");
                arena.extend_from_slice(&height_key(height));
                let key = arena.split().freeze();
                arena.extend_from_slice(&h.0);
                batch.put(Table::Heights, key, arena.split().freeze());
            }
            batch.put(Table::Meta, b"tip".to_vec(), new_tip.hash.0.to_vec());
        }
        ChainUpdate {
            added,
            old_tip,
            new_tip,
            reorg,
            error,
        }
    }
}

/// The best-chain hash stored at `height`.
pub fn stored_hash_at(s: &dyn Store, height: u32) -> StoreResult<Option<Hash256>> {
    Ok(s.get(Table::Heights, &height_key(height))?
        .and_then(|v| Hash256::from_slice(&v)))
}

/// The stored tip.
pub fn stored_tip(s: &dyn Store) -> StoreResult<Option<Hash256>> {
    Ok(s.get(Table::Meta, b"tip")?
        .and_then(|v| Hash256::from_slice(&v)))
}
