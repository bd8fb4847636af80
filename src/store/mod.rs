//! Persistence behind a small [`Store`] trait: a key-value interface over named tables with atomic
//! batches. LMDB ([`lmdb::LmdbStore`]) is the production backend; [`memory::MemoryStore`] serves
//! tests and simulations. Typed records live in [`records`]; [`writer::StoreWriter`] is the one
//! thread that writes, fed by a channel, so no shard event loop ever waits on the disk.

pub mod chain;
pub mod files;
pub mod lmdb;
pub mod memory;
pub mod records;
pub mod writer;

use std::fmt;
use std::path::PathBuf;

/// Schema version of the stored data; a data dir of another version is refused.
pub const SCHEMA_VERSION: u32 = 1;

/// The named tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Store metadata: schema version, chain tip.
    Meta,
    /// Peer address -> peer record.
    Peers,
    /// Peer address + command -> counters.
    PeerStats,
    /// Banned IP or subnet -> expiry and reason.
    Bans,
    /// Header hash -> header record (header, height, cumulative work, status).
    Headers,
    /// Best-chain height (big-endian) -> header hash.
    Heights,
    /// Block hash -> raw block.
    Blocks,
    /// Known addresses (address book) -> record.
    Addresses,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 8] = [
        Table::Meta,
        Table::Peers,
        Table::PeerStats,
        Table::Bans,
        Table::Headers,
        Table::Heights,
        Table::Blocks,
        Table::Addresses,
    ];

    /// The table's name in the store.
    pub fn name(&self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Peers => "peers",
            Table::PeerStats => "peer_stats",
            Table::Bans => "bans",
            Table::Headers => "headers",
            Table::Heights => "heights",
            Table::Blocks => "blocks",
            Table::Addresses => "addresses",
        }
    }
}

/// One write of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace.
    Put(Table, bytes::Bytes, bytes::Bytes),
    /// Remove (absent keys are fine).
    Delete(Table, bytes::Bytes),
}

/// Writes applied all together or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The writes, in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }
    /// Adds a put.
    pub fn put(&mut self, t: Table, key: impl Into<bytes::Bytes>, value: impl Into<bytes::Bytes>) {
        self.ops.push(Op::Put(t, key.into(), value.into()));
    }
    /// Adds a delete.
    pub fn delete(&mut self, t: Table, key: impl Into<bytes::Bytes>) {
        self.ops.push(Op::Delete(t, key.into()));
    }
    /// Whether it has no writes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Appends another batch.
    pub fn extend(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }
    /// Bytes of keys and values.
    pub fn size(&self) -> usize {
        self.ops
            .iter()
            .map(|o| match o {
                Op::Put(_, k, v) => k.len() + v.len(),
                Op::Delete(_, k) => k.len(),
            })
            .sum()
    }
}

/// A store failure.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The data dir does not exist (and was not to be created).
    Missing(PathBuf),
    /// The data dir cannot be written.
    ReadOnly(PathBuf, String),
    /// The files are not a valid store.
    Corrupt(String),
    /// The store was written by another schema version.
    VersionMismatch { found: u32, expected: u32 },
    /// Another process holds the store open for writing... or any other backend failure.
    Backend(String),
    /// The writer thread is gone.
    Closed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Missing(p) => write!(f, "data dir {} does not exist", p.display()),
            StoreError::ReadOnly(p, e) => {
                write!(f, "data dir {} is not writable: {e}", p.display())
            }
            StoreError::Corrupt(e) => write!(f, "store is corrupt: {e}"),
            StoreError::VersionMismatch { found, expected } => {
                write!(
                    f,
                    "store has schema version {found}, this bsn reads version {expected}"
                )
            }
            StoreError::Backend(e) => write!(f, "store error: {e}"),
            StoreError::Closed => f.write_str("store is closed"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// A key-value store of named tables with atomic batches. Implementations are shared between
/// threads; reads never wait for a write in progress.
pub trait Store: Send + Sync {
    /// The value of `key`, copied out.
    fn get(&self, t: Table, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        let mut out = None;
        self.with_value(t, key, &mut |v| out = v.map(<[u8]>::to_vec))?;
        Ok(out)
    }

    /// Calls `f` with the value of `key` in place (zero-copy where the backend allows).
    fn with_value(&self, t: Table, key: &[u8], f: &mut dyn FnMut(Option<&[u8]>))
        -> StoreResult<()>;

    /// Calls `f` on every entry with key >= `from`, in key order, until it returns false.
    fn scan(
        &self,
        t: Table,
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()>;

    /// Applies a batch atomically; it is durable against a process crash when this returns.
    fn write(&self, batch: &Batch) -> StoreResult<()>;

    /// Forces what was written to disk (power-loss durability).
    fn sync(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Number of entries in a table.
    fn count(&self, t: Table) -> StoreResult<u64> {
        let mut n = 0;
        self.scan(t, &[], &mut |_, _| {
            n += 1;
            true
        })?;
        Ok(n)
    }
}

/// Checks or writes the schema version of a freshly opened store.
pub fn check_schema(s: &dyn Store) -> StoreResult<()> {
    match s.get(Table::Meta, b"schema")? {
        Some(v) => {
            let found = u32::from_le_bytes(v.as_slice().try_into().map_err(|_| {
                StoreError::Corrupt(format!("schema version is {} bytes, not 4", v.len()))
            })?);
            if found != SCHEMA_VERSION {
                return Err(StoreError::VersionMismatch {
                    found,
                    expected: SCHEMA_VERSION,
                });
            }
            Ok(())
        }
        None => {
            let mut b = Batch::new();
            b.put(
                Table::Meta,
                b"schema".to_vec(),
                SCHEMA_VERSION.to_le_bytes().to_vec(),
            );
            s.write(&b)
        }
    }
}
