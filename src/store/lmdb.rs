//! The LMDB backend (through `lmdb-rkv`). One environment in the data dir, one named database per
//! [`Table`]. Readers use MVCC snapshots and never wait for the writer. When a write hits
//! `MDB_MAP_FULL` the map is doubled and the write retried; resizing is the one moment that waits
//! for readers (LMDB allows it only with no transaction open in the process).

use super::{check_schema, Batch, Op, Store, StoreError, StoreResult, Table};
use lmdb::{
    Cursor, Database, DatabaseFlags, Environment, EnvironmentFlags, Transaction, WriteFlags,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// `MDB_LAST` of lmdb.h's `MDB_cursor_op` (lmdb-rkv does not re-export the ffi constants).
const MDB_LAST: u32 = 6;

/// How to open the store.
#[derive(Clone, Debug)]
pub struct LmdbOptions {
    /// Create the directory if missing.
    pub create: bool,
    /// Initial map size in bytes (grows by doubling when full).
    pub map_size: usize,
    /// fsync on every commit (power-loss durability per write). Without it a commit survives a
    /// crash of the process (the data is in the OS page cache) and [`Store::sync`] flushes it.
    pub sync_every_commit: bool,
}

impl Default for LmdbOptions {
    fn default() -> LmdbOptions {
        LmdbOptions {
            create: true,
            map_size: 64 << 20,
            sync_every_commit: false,
        }
    }
}

/// An LMDB environment with one database per table.
pub struct LmdbStore {
    env: Environment,
    dbs: HashMap<Table, Database>,
    /// Every transaction holds this shared; a map resize holds it exclusively.
    resize: RwLock<()>,
    path: PathBuf,
}

fn backend(e: lmdb::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl LmdbStore {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path, opts: &LmdbOptions) -> StoreResult<LmdbStore> {
        if !path.exists() {
            if !opts.create {
                return Err(StoreError::Missing(path.to_path_buf()));
            }
            std::fs::create_dir_all(path)
                .map_err(|e| StoreError::ReadOnly(path.to_path_buf(), e.to_string()))?;
        }
        if !path.is_dir() {
            return Err(StoreError::Corrupt(format!(
                "{} is not a directory",
                path.display()
            )));
        }
        let mut flags = EnvironmentFlags::NO_TLS | EnvironmentFlags::NO_READAHEAD;
        if !opts.sync_every_commit {
            flags |= EnvironmentFlags::NO_SYNC;
        }
        let env = Environment::new()
            .set_max_dbs(Table::ALL.len() as u32 + 2)
            .set_max_readers(512)
            .set_map_size(opts.map_size)
            .set_flags(flags)
            .open(path)
            .map_err(|e| match e {
                lmdb::Error::Invalid
                | lmdb::Error::VersionMismatch
                | lmdb::Error::Corrupted
                | lmdb::Error::Panic => StoreError::Corrupt(format!("{}: {e}", path.display())),
                lmdb::Error::Other(code) if code == 13 || code == 30 || code == 1 => {
                    StoreError::ReadOnly(
                        path.to_path_buf(),
                        std::io::Error::from_raw_os_error(code).to_string(),
                    )
                }
                lmdb::Error::Other(code) => StoreError::Backend(format!(
                    "{}: {}",
                    path.display(),
                    std::io::Error::from_raw_os_error(code)
                )),
                e => backend(e),
            })?;
        let mut dbs = HashMap::new();
        for t in Table::ALL {
            let db = env
                .create_db(Some(t.name()), DatabaseFlags::empty())
                .map_err(|e| match e {
                    lmdb::Error::Other(code) if code == 13 || code == 30 => StoreError::ReadOnly(
                        path.to_path_buf(),
                        std::io::Error::from_raw_os_error(code).to_string(),
                    ),
                    lmdb::Error::Incompatible | lmdb::Error::Corrupted | lmdb::Error::Invalid => {
                        StoreError::Corrupt(e.to_string())
                    }
                    e => backend(e),
                })?;
            dbs.insert(t, db);
        }
        let s = LmdbStore {
            env,
            dbs,
            resize: RwLock::new(()),
            path: path.to_path_buf(),
        };
        check_schema(&s)?;
        Ok(s)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current map size.
    pub fn map_size(&self) -> usize {
        self.env.info().map(|i| i.map_size()).unwrap_or(0)
    }

    fn grow(&self) -> StoreResult<()> {
        let _excl = self.resize.write().expect("resize lock");
        let cur = self.env.info().map_err(backend)?.map_size();
        let new = cur.saturating_mul(2).max(1 << 20);
        log::info!(
            "store map full at {} MiB: growing to {} MiB",
            cur >> 20,
            new >> 20
        );
        self.env.set_map_size(new).map_err(backend)
    }

    fn try_write(&self, batch: &Batch) -> Result<(), lmdb::Error> {
        let _shared = self.resize.read().expect("resize lock");
        let mut txn = self.env.begin_rw_txn()?;
        // Each table's largest key so far: a put above it is an append (`MDB_APPEND` skips the
        // B-tree search and fills pages to the end: header records and the height index arrive
        // in ascending order during a sync). A delete may leave the value above the real
        // largest key, which only makes the test stricter.
        let mut last: Vec<(Table, Option<Vec<u8>>)> = Vec::new();
        for op in &batch.ops {
            match op {
                Op::Put(t, k, v) => {
                    let db = self.dbs[t];
                    let i = match last.iter().position(|(x, _)| x == t) {
                        Some(i) => i,
                        None => {
                            let max = {
                                let cur = txn.open_ro_cursor(db)?;
                                match cur.get(None, None, MDB_LAST) {
                                    Ok((key, _)) => key.map(<[u8]>::to_vec),
                                    Err(lmdb::Error::NotFound) => None,
                                    Err(e) => return Err(e),
                                }
                            };
                            last.push((*t, max));
                            last.len() - 1
                        }
                    };
                    let slot = &mut last[i].1;
                    if slot.as_deref().is_none_or(|m| &k[..] > m) {
                        txn.put(db, k, v, WriteFlags::APPEND)?;
                        let m = slot.get_or_insert_with(Vec::new);
                        m.clear();
                        m.extend_from_slice(k);
                    } else {
                        txn.put(db, k, v, WriteFlags::empty())?;
                    }
                }
                Op::Delete(t, k) => match txn.del(self.dbs[t], k, None) {
                    Ok(()) | Err(lmdb::Error::NotFound) => {}
                    Err(e) => return Err(e),
                },
            }
        }
        txn.commit()
    }
}

impl Store for LmdbStore {
    fn with_value(
        &self,
        t: Table,
        key: &[u8],
        f: &mut dyn FnMut(Option<&[u8]>),
    ) -> StoreResult<()> {
        let _shared = self.resize.read().expect("resize lock");
        let txn = self.env.begin_ro_txn().map_err(backend)?;
        match txn.get(self.dbs[&t], &key) {
            Ok(v) => f(Some(v)),
            Err(lmdb::Error::NotFound) => f(None),
            Err(e) => return Err(backend(e)),
        }
        Ok(())
    }

    fn scan(
        &self,
        t: Table,
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        let _shared = self.resize.read().expect("resize lock");
        let txn = self.env.begin_ro_txn().map_err(backend)?;
        let mut cur = txn.open_ro_cursor(self.dbs[&t]).map_err(backend)?;
        let iter = if from.is_empty() {
            cur.iter_start()
        } else {
            cur.iter_from(from)
        };
        for item in iter {
            let (k, v) = item.map_err(backend)?;
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: &Batch) -> StoreResult<()> {
        for _ in 0..40 {
            match self.try_write(batch) {
                Ok(()) => return Ok(()),
                Err(lmdb::Error::MapFull) => self.grow()?,
                Err(lmdb::Error::Other(code)) if code == 13 || code == 30 => {
                    return Err(StoreError::ReadOnly(
                        self.path.clone(),
                        std::io::Error::from_raw_os_error(code).to_string(),
                    ))
                }
                Err(e) => return Err(backend(e)),
            }
        }
        Err(StoreError::Backend(
            "map kept filling after 40 doublings".into(),
        ))
    }

    fn sync(&self) -> StoreResult<()> {
        self.env.sync(true).map_err(backend)
    }

    fn count(&self, t: Table) -> StoreResult<u64> {
        let _shared = self.resize.read().expect("resize lock");
        let txn = self.env.begin_ro_txn().map_err(backend)?;
        let st = txn.stat(self.dbs[&t]).map_err(backend)?;
        Ok(st.entries() as u64)
    }
}
