//! The header tree: a pure, I/O-free index of every block header we know, with the best chain by
//! most cumulative work.
//!
//! No store, no clock, no sockets. [`HeaderTree`] accepts headers whose parent it knows, keeps
//! forks, and picks the best chain by cumulative work (on a tie the tip seen first stays best).
//! It checks: the parent is known, the bits are within the network's proof-of-work limit, the
//! hash meets the header's own bits, and the contextual rules of [`HeaderRules`]: the timestamp is
//! above the parent's median time past and not too far ahead of the clock the caller sets
//! ([`HeaderTree::set_clock`]), a header at a checkpoint height has the checkpoint's hash, and no
//! fork starts below a checkpoint the tree holds; the bits are the ones the network's difficulty
//! adjustment requires ([`pow`]: retarget, EDA, DAA, testnet's minimum-difficulty rule,
//! regtest's fixed bits) and the version meets the BIP34/66/65 floors from their heights.
//!
//! ## Persisting the tree
//!
//! The tree does no I/O, but it is built to be persisted record by record:
//!
//! - Every header is one fixed-size [`Entry`] record ([`Entry::to_record`], [`RECORD_LEN`]
//!   bytes: the 80-byte header, height u32 LE, cumulative work 32 bytes BE, a status byte),
//!   keyed by its hash. [`HeaderTree::from_entries`] rebuilds the tree from the records in any
//!   order and refuses a corrupt set with an error naming the offending hash.
//! - **New records** are named by the return values: [`Inserted::hash`] when
//!   [`Inserted::duplicate`] is false, [`BatchOutcome::added`] for a batch.
//! - **Best-chain changes** (the height → hash index, and the status byte's best-chain bit) are
//!   exactly: the hashes of [`Reorg::disconnected`] leave the best chain and those of
//!   [`Reorg::connected`] join it (at heights fork point + 1 onwards); without a reorg, a new tip
//!   appends the heights after the old tip (one header for [`Inserted::new_tip`], the range
//!   `old_tip.height + 1 ..= new_tip.height` of a [`BatchOutcome`]; read them with
//!   [`HeaderTree::hash_at`]).
//! - When [`HeaderTree::insert_many`] stops at a bad header, the headers before it stay in the
//!   tree; [`HeaderTree::reorg_since`] with the tip from before the batch gives the best-chain
//!   change, and re-writing an already stored record is harmless.
//!
//! The best-chain bit in a stored record is only a hint: [`HeaderTree::from_entries`] recomputes
//! the best chain from cumulative work and uses the bit only to break ties between equal-work
//! tips, so a store that crashed between writing records and updating bits still loads.

pub mod pow;
mod tree;

pub use tree::{BatchOutcome, ChainPoint, Entry, HeaderRules, HeaderTree, Inserted, Reorg};

use crate::wire::hash::Hash256;
use crate::wire::u256::U256;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

/// Size of an [`Entry`] record: header, height, cumulative work, status.
pub const RECORD_LEN: usize = 80 + 4 + 32 + 1;

/// Status bit of a record: the header is on the best chain.
pub const STATUS_BEST: u8 = 0x01;

/// Why [`HeaderTree::insert`] refused a header. Refused headers are not stored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// The parent is unknown: ask the peer for the headers in between (`getheaders`).
    Orphan {
        /// The refused header's hash.
        hash: Hash256,
        /// Its unknown parent.
        prev: Hash256,
    },
    /// The hash does not meet the target of the header's own bits (or the bits are invalid).
    BadProofOfWork {
        /// The refused header's hash.
        hash: Hash256,
    },
    /// The bits claim a target above the network's proof-of-work limit.
    BitsAboveLimit {
        /// The refused header's hash.
        hash: Hash256,
        /// The claimed compact target.
        bits: u32,
    },
    /// The cumulative work does not fit 256 bits (cannot happen with real proof of work).
    WorkOverflow {
        /// The refused header's hash.
        hash: Hash256,
    },
    /// The timestamp is not above the median time past of the parent and its ten ancestors.
    TimeTooOld {
        /// The refused header's hash.
        hash: Hash256,
        /// Its timestamp.
        time: u32,
        /// The parent's median time past, which the timestamp must exceed.
        median: u32,
    },
    /// The timestamp is further ahead of the tree's clock than [`HeaderRules::max_future_secs`].
    /// Not proof of misbehaviour (our clock may be behind): the header may be valid later.
    TimeTooNew {
        /// The refused header's hash.
        hash: Hash256,
        /// Its timestamp.
        time: u32,
        /// The latest timestamp accepted now.
        limit: u32,
    },
    /// A checkpoint names another hash at this header's height.
    CheckpointMismatch {
        /// The refused header's hash.
        hash: Hash256,
        /// Its height.
        height: u32,
        /// The checkpoint's hash at that height.
        expected: Hash256,
    },
    /// The bits are not the ones the difficulty adjustment requires (the SV node's
    /// `bad-diffbits`).
    BadDifficultyBits {
        /// The refused header's hash.
        hash: Hash256,
        /// Its bits.
        bits: u32,
        /// The required bits.
        expected: u32,
    },
    /// The version is below the floor of BIP34 (2), BIP66 (3) or BIP65 (4) at its height (the
    /// SV node's `bad-version`, not scored).
    ObsoleteVersion {
        /// The refused header's hash.
        hash: Hash256,
        /// Its version.
        version: i32,
        /// Its height.
        height: u32,
    },
    /// A batch on a branch with less work than the best chain, from a peer past its fork budget
    /// (`Config::max_fork_headers_per_peer`, or the total): not stored.
    LowWorkFork {
        /// The batch's first header.
        hash: Hash256,
        /// Fork headers the sender added so far.
        added: usize,
    },
    /// A batch on a branch with less work than the best chain while the total fork budget
    /// (`Config::max_fork_headers`) is used up, from a peer within its own: not stored, and not
    /// scored (others filled the budget; an honest peer announcing a block that lost a race
    /// would otherwise be scored for them), but counted against the peer's own budget.
    ForkBudgetFull {
        /// The batch's first header.
        hash: Hash256,
        /// Headers of the batch the tree did not hold (refused).
        headers: usize,
    },
    /// A header pre-sync failed (see `Consensus::minimum_chain_work`): the chain downloaded again is not
    /// the one counted, or a chain goes on too long without the minimum chain work.
    NotShown {
        /// The batch's header at fault.
        hash: Hash256,
        /// What failed.
        why: String,
    },
    /// The header forks off the chain below a checkpoint the tree already holds.
    ForkBeforeCheckpoint {
        /// The refused header's hash.
        hash: Hash256,
        /// Its height.
        height: u32,
        /// Height of the highest checkpoint in the tree.
        checkpoint: u32,
    },
}

impl HeaderError {
    /// The hash of the refused header.
    pub fn hash(&self) -> Hash256 {
        match self {
            HeaderError::Orphan { hash, .. }
            | HeaderError::BadProofOfWork { hash }
            | HeaderError::BitsAboveLimit { hash, .. }
            | HeaderError::WorkOverflow { hash }
            | HeaderError::TimeTooOld { hash, .. }
            | HeaderError::TimeTooNew { hash, .. }
            | HeaderError::CheckpointMismatch { hash, .. }
            | HeaderError::BadDifficultyBits { hash, .. }
            | HeaderError::ObsoleteVersion { hash, .. }
            | HeaderError::LowWorkFork { hash, .. }
            | HeaderError::ForkBudgetFull { hash, .. }
            | HeaderError::NotShown { hash, .. }
            | HeaderError::ForkBeforeCheckpoint { hash, .. } => *hash,
        }
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Orphan { hash, prev } => {
                write!(f, "header {hash} has an unknown parent {prev}")
            }
            HeaderError::BadProofOfWork { hash } => {
                write!(
                    f,
                    "header {hash} does not meet its own proof-of-work target"
                )
            }
            HeaderError::BadDifficultyBits {
                hash,
                bits,
                expected,
            } => write!(
                f,
                "header {hash} has bits {bits:#010x}, the difficulty adjustment requires {expected:#010x}"
            ),
            HeaderError::ObsoleteVersion {
                hash,
                version,
                height,
            } => write!(
                f,
                "header {hash} has version {version:#x}, obsolete at height {height}"
            ),
            HeaderError::NotShown { hash, why } => {
                write!(f, "header pre-sync at {hash}: {why}")
            }
            HeaderError::LowWorkFork { hash, added } => write!(
                f,
                "headers from {hash} on a branch with less work than ours, after {added} such headers from the peer"
            ),
            HeaderError::ForkBudgetFull { hash, .. } => write!(
                f,
                "headers from {hash} on a branch with less work than ours, with the fork budget used up"
            ),
            HeaderError::BitsAboveLimit { hash, bits } => write!(
                f,
                "header {hash} has bits {bits:#010x} above the network's proof-of-work limit"
            ),
            HeaderError::WorkOverflow { hash } => {
                write!(f, "header {hash} overflows the cumulative chain work")
            }
            HeaderError::TimeTooOld { hash, time, median } => write!(
                f,
                "header {hash} has time {time}, not above its parent's median time past {median}"
            ),
            HeaderError::TimeTooNew { hash, time, limit } => write!(
                f,
                "header {hash} has time {time}, more than allowed ahead of our clock (limit {limit})"
            ),
            HeaderError::CheckpointMismatch {
                hash,
                height,
                expected,
            } => write!(
                f,
                "header {hash} at height {height} contradicts the checkpoint {expected}"
            ),
            HeaderError::ForkBeforeCheckpoint {
                hash,
                height,
                checkpoint,
            } => write!(
                f,
                "header {hash} at height {height} forks below the checkpoint at height {checkpoint}"
            ),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Why [`Entry::from_record`] refused a record.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The record is not [`RECORD_LEN`] bytes long.
    WrongLength {
        /// Its length.
        len: usize,
    },
    /// The status byte has bits this version does not know.
    UnknownStatus {
        /// The status byte.
        status: u8,
    },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::WrongLength { len } => {
                write!(f, "header record is {len} bytes, expected {RECORD_LEN}")
            }
            RecordError::UnknownStatus { status } => {
                write!(f, "header record has unknown status bits {status:#04x}")
            }
        }
    }
}

impl std::error::Error for RecordError {}

/// Why [`HeaderTree::from_entries`] refused a set of entries (a corrupt store).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadError {
    /// The entry's parent is not among the entries (nor the genesis block).
    UnknownParent {
        /// The entry's hash.
        hash: Hash256,
        /// The missing parent.
        prev: Hash256,
    },
    /// The entry's height is not its parent's height plus one (zero for genesis).
    WrongHeight {
        /// The entry's hash.
        hash: Hash256,
        /// The stored height.
        height: u32,
        /// The height its parent implies.
        expected: u64,
    },
    /// The entry's cumulative work is not its parent's plus its own.
    WrongWork {
        /// The entry's hash.
        hash: Hash256,
        /// The stored cumulative work.
        work: U256,
        /// The work its parent implies (`None` when that overflows).
        expected: Option<U256>,
    },
    /// The entry's header fails its own proof of work.
    BadProofOfWork {
        /// The entry's hash.
        hash: Hash256,
    },
    /// The entry's bits are above the network's proof-of-work limit.
    BitsAboveLimit {
        /// The entry's hash.
        hash: Hash256,
        /// The compact target.
        bits: u32,
    },
    /// Two entries for the same header disagree on height, work or status.
    Conflict {
        /// The header's hash.
        hash: Hash256,
    },
}

impl LoadError {
    /// The hash of the offending entry.
    pub fn hash(&self) -> Hash256 {
        match self {
            LoadError::UnknownParent { hash, .. }
            | LoadError::WrongHeight { hash, .. }
            | LoadError::WrongWork { hash, .. }
            | LoadError::BadProofOfWork { hash }
            | LoadError::BitsAboveLimit { hash, .. }
            | LoadError::Conflict { hash } => *hash,
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::UnknownParent { hash, prev } => {
                write!(f, "stored header {hash} has an unknown parent {prev}")
            }
            LoadError::WrongHeight {
                hash,
                height,
                expected,
            } => write!(
                f,
                "stored header {hash} has height {height}, its parent implies {expected}"
            ),
            LoadError::WrongWork {
                hash,
                work,
                expected: Some(e),
            } => write!(
                f,
                "stored header {hash} has chain work {work}, its parent implies {e}"
            ),
            LoadError::WrongWork {
                hash,
                work,
                expected: None,
            } => write!(
                f,
                "stored header {hash} has chain work {work}, its parent's overflows"
            ),
            LoadError::BadProofOfWork { hash } => write!(
                f,
                "stored header {hash} does not meet its own proof-of-work target"
            ),
            LoadError::BitsAboveLimit { hash, bits } => write!(
                f,
                "stored header {hash} has bits {bits:#010x} above the network's proof-of-work limit"
            ),
            LoadError::Conflict { hash } => {
                write!(
                    f,
                    "stored header {hash} appears twice with different contents"
                )
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// A [`BuildHasher`] for maps keyed by block hashes: the hash's first eight bytes are already
/// uniformly random, so they are the map hash, with no SipHash round.
///
/// The first bytes in wire order are the *low* bytes of the number, the random ones; the last
/// bytes are the zeros that proof of work demands. Colliding on 64 bits would take a peer real
/// proof of work per header (stored headers are checked first), and lookups of arbitrary hashes
/// (locators) insert nothing. Meant for [`Hash256`] keys only: other keys hash poorly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildHashIdHasher;

impl BuildHasher for BuildHashIdHasher {
    type Hasher = HashIdHasher;
    fn build_hasher(&self) -> HashIdHasher {
        HashIdHasher(0)
    }
}

/// The [`Hasher`] of [`BuildHashIdHasher`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HashIdHasher(u64);

impl Hasher for HashIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        match bytes.first_chunk::<8>() {
            Some(b) => self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(*b),
            None => {
                for &b in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(b);
                }
            }
        }
    }
}

/// A `HashMap` keyed by block hashes with [`BuildHashIdHasher`].
pub type HashIdMap<V> = HashMap<Hash256, V, BuildHashIdHasher>;
