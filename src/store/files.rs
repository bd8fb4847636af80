//! Blocks bigger than [`crate::config::Config::block_file_threshold`], each in a file of its
//! own: a shard writes the block there as it arrives (never whole in memory), checking it on the
//! way ([`crate::wire::stream::BlockStream`]); the store's `blocks` table then holds a small
//! [`BlockFileRef`] in place of the bytes, and the block is served from the file in pieces.
//!
//! Names: `<id>.part` while a block arrives, `<hash>-<id>.blk` once it checked out (`id` is
//! random, so two copies of one block never collide). A `.part` left by a crash, and a `.blk`
//! no stored reference names, are removed when the directory is opened.

use super::records::{with_block, StoredBlock};
use super::Store;
use crate::wire::Hash256;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a block's file stands, as the store records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockFileRef {
    /// The file's id (its name with the block hash).
    pub id: u64,
    /// The block's size in bytes.
    pub size: u64,
    /// How many transactions it holds.
    pub tx_count: u64,
    /// The message checksum of its bytes when known (a block that arrived in a file is not
    /// hashed for it: it goes out as `extmsg`, which has none, to every peer that speaks it).
    pub checksum: Option<[u8; 4]>,
}

/// Marks a stored value as a [`BlockFileRef`] (a raw block is never this short).
const MARK: &[u8; 8] = b"BSNFILE1";
/// Length of an encoded [`BlockFileRef`].
pub const REF_LEN: usize = 37;

impl BlockFileRef {
    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(REF_LEN);
        v.extend_from_slice(MARK);
        v.extend_from_slice(&self.id.to_le_bytes());
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.tx_count.to_le_bytes());
        v.push(self.checksum.is_some() as u8);
        v.extend_from_slice(&self.checksum.unwrap_or_default());
        v
    }

    /// Reads the stored form; `None` for anything else (a raw block).
    pub fn decode(v: &[u8]) -> Option<BlockFileRef> {
        if v.len() != REF_LEN || &v[..8] != MARK {
            return None;
        }
        let u = |at: usize| u64::from_le_bytes(v[at..at + 8].try_into().expect("8 bytes"));
        Some(BlockFileRef {
            id: u(8),
            size: u(16),
            tx_count: u(24),
            checksum: (v[32] == 1).then(|| v[33..37].try_into().expect("4 bytes")),
        })
    }
}

#[derive(Debug)]
struct Dir {
    path: PathBuf,
    /// Made for an engine without a data dir: removed with it.
    temporary: bool,
}

impl Drop for Dir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The directory of block files (cheap to clone; shared by the shards, the core's driver and
/// the API).
#[derive(Clone, Debug)]
pub struct BlockFiles {
    dir: Arc<Dir>,
}

impl BlockFiles {
    /// Opens (creates) `path`, removing what a crash left half written.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<BlockFiles> {
        BlockFiles::with(path.into(), false)
    }

    /// A fresh directory under the system's temporary one, removed when the last clone goes
    /// (for an engine whose store is in memory).
    pub fn temporary() -> io::Result<BlockFiles> {
        let path = std::env::temp_dir().join(format!(
            "bsn-blocks-{}-{:016x}",
            std::process::id(),
            crate::util::random_u64()
        ));
        BlockFiles::with(path, true)
    }

    fn with(path: PathBuf, temporary: bool) -> io::Result<BlockFiles> {
        std::fs::create_dir_all(&path)?;
        for e in std::fs::read_dir(&path)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "part") {
                std::fs::remove_file(&p)?;
            }
        }
        Ok(BlockFiles {
            dir: Arc::new(Dir { path, temporary }),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// A new file for a block on its way in, and its id.
    pub fn create(&self) -> io::Result<(File, u64)> {
        loop {
            let id = crate::util::random_u64();
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.part_path(id))
            {
                Ok(f) => return Ok((f, id)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A block in a file elsewhere becomes one on its way in (linked, or copied across file
    /// systems); its id.
    pub fn adopt(&self, from: &Path) -> io::Result<u64> {
        let (f, id) = self.create()?;
        drop(f);
        let to = self.part_path(id);
        std::fs::remove_file(&to)?;
        if std::fs::hard_link(from, &to).is_err() {
            if let Err(e) = std::fs::copy(from, &to) {
                self.abandon(id);
                return Err(e);
            }
        }
        Ok(id)
    }

    fn part_path(&self, id: u64) -> PathBuf {
        self.dir.path.join(format!("{id:016x}.part"))
    }

    /// The file of block `hash` with id `id`.
    pub fn path(&self, hash: &Hash256, id: u64) -> PathBuf {
        self.dir.path.join(format!("{hash}-{id:016x}.blk"))
    }

    /// A block that arrived whole and checked out gets its name.
    pub fn complete(&self, id: u64, hash: &Hash256) -> io::Result<()> {
        std::fs::rename(self.part_path(id), self.path(hash, id))
    }

    /// Removes a block that arrived only in part or failed its checks.
    pub fn abandon(&self, id: u64) {
        let _ = std::fs::remove_file(self.part_path(id));
    }

    /// Removes a complete block file nobody keeps.
    pub fn remove(&self, hash: &Hash256, id: u64) {
        let _ = std::fs::remove_file(self.path(hash, id));
    }

    /// Opens a block's file to read.
    pub fn open_block(&self, hash: &Hash256, r: &BlockFileRef) -> io::Result<File> {
        let f = File::open(self.path(hash, r.id))?;
        let len = f.metadata()?.len();
        if len != r.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("block file {hash} holds {len} bytes, {} stored", r.size),
            ));
        }
        Ok(f)
    }

    /// Removes every block file the store does not name (a crash between a block's arrival
    /// and its commit). Returns how many.
    pub fn remove_orphans(&self, store: &dyn Store) -> io::Result<usize> {
        let mut removed = 0;
        for e in std::fs::read_dir(&self.dir.path)? {
            let p = e?.path();
            let Some(name) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".blk"))
            else {
                continue;
            };
            let named = name.split_once('-').and_then(|(h, id)| {
                let hash: Hash256 = h.parse().ok()?;
                let id = u64::from_str_radix(id, 16).ok()?;
                let stored = with_block(store, &hash, |v| {
                    v.and_then(|v| match StoredBlock::parse(v) {
                        StoredBlock::File(r) => Some(r.id),
                        StoredBlock::Inline(_) => None,
                    })
                })
                .ok()??;
                Some(stored == id)
            });
            if named != Some(true) {
                std::fs::remove_file(&p)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Reads from `offset` of a block's file into `buf` as much as fits (0 past the end).
pub fn read_at(f: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::records::{put_block, put_block_file};
    use crate::store::Batch;

    #[test]
    fn refs_round_trip_and_raw_blocks_are_not_refs() {
        let r = BlockFileRef {
            id: 7,
            size: 5_000_000_000,
            tx_count: 3,
            checksum: Some([1, 2, 3, 4]),
        };
        assert_eq!(BlockFileRef::decode(&r.encode()), Some(r));
        let r = BlockFileRef {
            checksum: None,
            ..r
        };
        assert_eq!(BlockFileRef::decode(&r.encode()), Some(r));
        assert_eq!(BlockFileRef::decode(&[0u8; 200]), None);
    }

    #[test]
    fn orphans_and_parts_go_named_files_stay() {
        let files = BlockFiles::temporary().unwrap();
        let dir = files.dir().to_path_buf();
        let store = MemoryStore::new();
        let (a, b, c) = (
            Hash256::sha256d(b"a"),
            Hash256::sha256d(b"b"),
            Hash256::sha256d(b"c"),
        );
        let mut ids = Vec::new();
        for h in [&a, &b, &c] {
            let (_, id) = files.create().unwrap();
            files.complete(id, h).unwrap();
            ids.push(id);
        }
        let (_, half) = files.create().unwrap();
        let mut batch = Batch::new();
        let r = |id| BlockFileRef {
            id,
            size: 0,
            tx_count: 1,
            checksum: None,
        };
        put_block_file(&mut batch, &a, &r(ids[0]));
        put_block_file(&mut batch, &b, &r(ids[1] ^ 1)); // another copy is the stored one
        put_block(&mut batch, &c, bytes::Bytes::from_static(&[0u8; 100])); // stored inline
        store.write(&batch).unwrap();
        assert_eq!(files.remove_orphans(&store).unwrap(), 2);
        assert!(files.path(&a, ids[0]).exists());
        assert!(!files.path(&b, ids[1]).exists());
        let reopened = BlockFiles::open(&dir).unwrap();
        assert!(!reopened.part_path(half).exists());
        drop(reopened);
        drop(files);
        assert!(
            !dir.exists(),
            "a temporary directory goes with its last clone"
        );
    }
}
