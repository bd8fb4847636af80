//! The LMDB backend (through `lmdb-rkv`). One environment in the data dir, one named database per
//! [`Table`]. Readers use MVCC snapshots and never wait for the writer. When a write hits
//! `MDB_MAP_FULL` the map is doubled and the write retried; resizing is the one moment that waits
//! for readers (LMDB allows it only with no transaction open in the process).
//!
//! Before LMDB maps `data.mdb`, [`check_data_file`] reads it with plain reads: a truncated or
//! overwritten file is refused with [`StoreError::Corrupt`] saying what is wrong, instead of the
//! process dying of a bus error when LMDB touches a page the file does not hold.

use super::{check_schema, Batch, Op, Store, StoreError, StoreResult, Table};
use lmdb::{
    Cursor, Database, DatabaseFlags, Environment, EnvironmentFlags, Transaction, WriteFlags,
};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
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
        // LMDB maps the file and faults (SIGBUS) on pages it lacks, and trusts every page it
        // reads (a garbage page makes it abort, read out of bounds, or lose keys): a damaged
        // file is refused here, with what is wrong, before it is mapped. Every page the start
        // of an engine reads is checked.
        check_data_file(path, CheckDepth::Start)?;
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

// ---------------------------------------------------------------------------------------------
// The check of `data.mdb` before LMDB sees it.
//
// LMDB maps the file and trusts what it finds: when the meta page names pages the file does not
// hold (a truncated copy) or a page was overwritten, touching them faults (SIGBUS) or reads
// garbage as page numbers. So the file is read here first, with plain reads and no map: the two
// meta pages, then the B-trees from their roots (the free-page list, the main database and every
// named database in it), each page checked against its position, its flags and its bounds.
//
// The layout is liblmdb's `mdb.c` (0.9, 64-bit, little-endian): a page starts with a 16-byte
// header (`mp_pgno` u64, `mp_pad` u16, `mp_flags` u16, `mp_lower` u16, `mp_upper` u16 — or
// `mp_pages` u32 for overflow pages), then the `mp_ptrs` u16 array of node offsets. The meta
// page holds `MDB_meta` after that header. The unit tests below check these offsets against a
// file lmdb-rkv writes.

/// `PAGEHDRSZ`: the page header before `mp_ptrs` (and before `MDB_meta` in a meta page).
const PAGE_HEADER: usize = 16;
const P_BRANCH: u16 = 0x01;
const P_LEAF: u16 = 0x02;
const P_OVERFLOW: u16 = 0x04;
const P_META: u16 = 0x08;
const P_LEAF2: u16 = 0x20;
/// Node flags: the value is on overflow pages / is an `MDB_db` (a named database) / holds
/// duplicates.
const F_BIGDATA: u16 = 0x01;
const F_SUBDATA: u16 = 0x02;
const F_DUPDATA: u16 = 0x04;
/// `P_INVALID`: the root of an empty tree.
const P_INVALID: u64 = u64::MAX;
const MDB_MAGIC: u32 = 0xBEEF_C0DE;
const MDB_DATA_VERSION: u32 = 1;
/// `NUM_METAS`: pages 0 and 1; a tree page is never one of them.
const NUM_METAS: u64 = 2;
/// `MDB_node` header: `mn_lo`, `mn_hi`, `mn_flags`, `mn_ksize`, each u16.
const NODE_HEADER: usize = 8;
/// Deepest tree walked (LMDB's own cursor stack is 32 deep).
const MAX_TREE_DEPTH: u16 = 64;
/// `MDB_meta` fields, as offsets in the meta page: `mm_magic` u32, `mm_version` u32,
/// `mm_address` (8), `mm_mapsize` (8), `mm_dbs[2]` (`MDB_db` of 48 bytes each: free pages, main),
/// `mm_last_pg` u64, `mm_txnid` u64.
const MM_MAGIC: usize = PAGE_HEADER;
const MM_VERSION: usize = PAGE_HEADER + 4;
const MM_DBS: usize = PAGE_HEADER + 24;
const DB_LEN: usize = 48;
const MM_LAST_PG: usize = MM_DBS + 2 * DB_LEN;
const MM_TXNID: usize = MM_LAST_PG + 8;
const META_LEN: usize = MM_TXNID + 8;
/// What an operator is told to do with a damaged file.
const REMEDY: &str = "restore it from a backup or move the data dir away to start fresh";

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// An `MDB_db`: a B-tree's record (in the meta page for the free-page list and the main
/// database, in the main database for a named one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DbRecord {
    /// `md_pad`: the page size in the meta page's free-page record.
    pad: u32,
    depth: u16,
    branch_pages: u64,
    leaf_pages: u64,
    overflow_pages: u64,
    entries: u64,
    /// `md_root`; `None` for `P_INVALID` (an empty tree).
    root: Option<u64>,
}

impl DbRecord {
    fn parse(b: &[u8]) -> DbRecord {
        let root = u64_at(b, 40);
        DbRecord {
            pad: u32_at(b, 0),
            depth: u16_at(b, 6),
            branch_pages: u64_at(b, 8),
            leaf_pages: u64_at(b, 16),
            overflow_pages: u64_at(b, 24),
            entries: u64_at(b, 32),
            root: (root != P_INVALID).then_some(root),
        }
    }
}

/// One meta page as read.
#[derive(Clone, Copy, Debug)]
enum MetaPage {
    /// Fewer bytes than a meta page where it should be.
    Missing,
    /// No meta flag or no LMDB magic number: overwritten, or not an LMDB file.
    NotMeta,
    /// Another LMDB data format.
    OtherVersion(u32),
    Valid(Meta),
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    free: DbRecord,
    main: DbRecord,
    last_pg: u64,
    txnid: u64,
}

impl MetaPage {
    fn parse(b: &[u8]) -> MetaPage {
        if b.len() < META_LEN {
            return MetaPage::Missing;
        }
        if u16_at(b, 10) & P_META == 0 || u32_at(b, MM_MAGIC) != MDB_MAGIC {
            return MetaPage::NotMeta;
        }
        let version = u32_at(b, MM_VERSION);
        if version != MDB_DATA_VERSION {
            return MetaPage::OtherVersion(version);
        }
        MetaPage::Valid(Meta {
            free: DbRecord::parse(&b[MM_DBS..MM_DBS + DB_LEN]),
            main: DbRecord::parse(&b[MM_DBS + DB_LEN..MM_DBS + 2 * DB_LEN]),
            last_pg: u64_at(b, MM_LAST_PG),
            txnid: u64_at(b, MM_TXNID),
        })
    }

    fn valid(&self) -> Option<&Meta> {
        match self {
            MetaPage::Valid(m) => Some(m),
            _ => None,
        }
    }
}

/// A page size LMDB may have used (`MAX_PAGESIZE` is 32 KiB; 64 KiB allowed for other builds).
fn plausible_page_size(p: u64) -> bool {
    p.is_power_of_two() && (512..=65536).contains(&p)
}

/// A B-tree of the data file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeName {
    /// LMDB's list of free pages.
    FreePages,
    /// The main database: the directory of named databases.
    Main,
    /// A named database (one per [`Table`]).
    Table(String),
}

impl std::fmt::Display for TreeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TreeName::FreePages => f.write_str("the free-page list"),
            TreeName::Main => f.write_str("the table directory"),
            TreeName::Table(n) => write!(f, "table '{n}'"),
        }
    }
}

/// A B-tree as its record describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeInfo {
    /// Which tree.
    pub name: TreeName,
    /// Its root page (`None`: empty).
    pub root: Option<u64>,
    /// Levels (1: the root is a leaf).
    pub depth: u16,
    /// Entries.
    pub entries: u64,
    /// Branch pages.
    pub branch_pages: u64,
    /// Leaf pages.
    pub leaf_pages: u64,
    /// Overflow pages (values too big for a leaf).
    pub overflow_pages: u64,
}

/// What the check of a data file read, when it found no damage.
#[derive(Clone, Debug)]
pub struct DataFileInfo {
    /// The file's length.
    pub file_len: u64,
    /// LMDB's page size for this file (the first meta page's free-page record's `md_pad`).
    pub page_size: u64,
    /// The meta page in use (0 or 1: the one of the larger transaction id).
    pub meta: usize,
    /// The last page its last transaction uses (`mm_last_pg`).
    pub last_page: u64,
    /// Its last transaction's id (`mm_txnid`).
    pub txnid: u64,
    /// The trees found: the free-page list, the main database, then the named databases.
    pub trees: Vec<TreeInfo>,
    /// Pages read (the two meta pages not counted).
    pub pages_read: u64,
}

/// How much of a data file [`check_data_file`] reads. Every level reads the two meta pages and
/// the root page of every tree (the main database, the tables in it, the free-page list), and
/// checks that the file holds every page its last transaction uses (reading the free-page
/// list, and everything when that list does not account for the missing pages, only when the
/// file is shorter than that transaction's last page).
///
/// A page is "read" when its header, bounds and every entry are checked; a page that is not
/// read is only range-checked from its parent's entry (it exists in the file, it is no header
/// page and no other entry points to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckDepth {
    /// The roots only: a dozen page reads whatever the size of the store (and, when a root is a
    /// leaf, the first overflow page of each of its big values).
    Quick,
    /// Also every branch page (about 1 % of a store's B-tree pages): the page number of every
    /// leaf is checked, the leaves are not read.
    Branches,
    /// What [`LmdbStore::open`] runs: every page that the start of an engine reads, or its
    /// first write right after. Every page of every tree (every table, the table directory,
    /// the free-page list), except that the `blocks` table's values are range-checked from
    /// their leaves and their overflow pages not read: the start looks up every stored block
    /// of the best chain (every leaf of `blocks`) but reads no block's bytes, and LMDB hands
    /// out a value's bytes without reading its overflow page's header. The other tables are
    /// read in full at start (headers, peers, bans, addresses, peer counters), or are small
    /// (meta), or are written from their last page on at the first header batch (heights).
    /// On a store of 800,000 headers and 1 GB of blocks (page cache hot) it reads some 43,000
    /// pages in 70 to 95 ms, 3 to 7 % of `Engine::start` (which loads the headers in 1.5 to
    /// 2 s). From a cold cache its sequential reads fill the cache for the start faster than
    /// LMDB's page faults (`MDB_NORDAHEAD`) would.
    ///
    /// Damage that appears after the open is not seen: LMDB 0.9 checks a page it reaches for
    /// neither its number, nor its bounds, nor its entries' offsets and sizes. A garbage leaf
    /// met later aborts in `mdb_cursor_next` (`mdb_cassert(IS_LEAF(mp))`), loses keys (a page
    /// of 0xff reads as a branch page), or yields a value pointer and length outside the page.
    Start,
    /// Every page of every tree, and the first page of every overflow value.
    Full,
}

/// What a walk reads of one tree.
#[derive(Clone, Copy, Debug)]
struct Reads {
    /// Branch pages below the root.
    branches: bool,
    /// Leaf pages (that are not the root).
    leaves: bool,
    /// The first overflow page of each big value in a leaf that is not the root (its header:
    /// page number, flags, length). A root leaf's are read at every depth.
    overflow: bool,
}

impl CheckDepth {
    fn reads(self, tree: &TreeName) -> Reads {
        match self {
            CheckDepth::Quick => Reads {
                branches: false,
                leaves: false,
                overflow: false,
            },
            CheckDepth::Branches => Reads {
                branches: true,
                leaves: false,
                overflow: false,
            },
            CheckDepth::Start => Reads {
                branches: true,
                leaves: true,
                overflow: !matches!(tree, TreeName::Table(n) if n == Table::Blocks.name()),
            },
            CheckDepth::Full => Reads {
                branches: true,
                leaves: true,
                overflow: true,
            },
        }
    }
}

/// Why the check stopped.
enum Fault {
    /// A page that a tree uses lies (partly) past the end of the file.
    PastEnd,
    /// Anything else, said for an operator.
    Bad(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Fault {
    fn from(e: std::io::Error) -> Fault {
        Fault::Io(e)
    }
}

/// Reads and checks the pages of one snapshot.
struct Walk<'a> {
    file: &'a std::fs::File,
    len: u64,
    psize: u64,
    last_pg: u64,
    depth: CheckDepth,
    /// What is read of the tree being walked (the main database is always read in full).
    reads: Reads,
    /// Pages met so far, a bit each (every page met is in the file): a page reached twice is
    /// damage (and ends cycles).
    seen: Vec<u64>,
    /// Page buffers, one per level being read.
    bufs: Vec<Vec<u8>>,
    pages_read: u64,
    /// Branch and leaf pages checked, and the overflow pages of the values checked.
    tree_pages: u64,
    overflow_pages: u64,
    /// While reading the free-page list: the free page numbers in this range are kept.
    free_range: Option<(u64, u64)>,
    free_found: Vec<u64>,
}

impl<'a> Walk<'a> {
    fn new(
        file: &'a std::fs::File,
        len: u64,
        psize: u64,
        last_pg: u64,
        depth: CheckDepth,
    ) -> Walk<'a> {
        Walk {
            file,
            len,
            psize,
            last_pg,
            depth,
            reads: depth.reads(&TreeName::Main),
            seen: vec![0; (len / psize).div_ceil(64) as usize],
            bufs: Vec::new(),
            pages_read: 0,
            tree_pages: 0,
            overflow_pages: 0,
            free_range: None,
            free_found: Vec::new(),
        }
    }

    /// Checks that `count` pages from `pgno`, which `from` names, exist: not a meta page, not
    /// past the last page, and within the file.
    fn span(&self, pgno: u64, count: u64, from: &dyn Fn() -> String) -> Result<(), Fault> {
        if pgno < NUM_METAS {
            return Err(Fault::Bad(format!(
                "{} points to page {pgno}, a header page",
                from()
            )));
        }
        let end = pgno
            .checked_add(count)
            .filter(|e| *e <= self.last_pg.saturating_add(1));
        let Some(end) = end else {
            return Err(Fault::Bad(format!(
                "{} points to page {pgno}{}, past the last page ({}) of the file's last \
                 transaction",
                from(),
                if count > 1 {
                    format!(" and the {} after it", count - 1)
                } else {
                    String::new()
                },
                self.last_pg
            )));
        };
        if end.saturating_mul(self.psize) > self.len {
            return Err(Fault::PastEnd);
        }
        Ok(())
    }

    /// [`Walk::span`] of one page, met for the first time.
    fn reach(&mut self, pgno: u64, from: &dyn Fn() -> String) -> Result<(), Fault> {
        self.span(pgno, 1, from)?;
        let (word, bit) = ((pgno / 64) as usize, 1u64 << (pgno % 64));
        if self.seen[word] & bit != 0 {
            return Err(Fault::Bad(format!(
                "{} points to page {pgno}, which another entry points to as well",
                from()
            )));
        }
        self.seen[word] |= bit;
        Ok(())
    }

    /// Whether page `pgno` was met.
    #[cfg(test)]
    fn met(&self, pgno: u64) -> bool {
        self.seen
            .get((pgno / 64) as usize)
            .is_some_and(|w| w & (1 << (pgno % 64)) != 0)
    }

    fn read(&mut self, pgno: u64, buf: &mut [u8]) -> Result<(), Fault> {
        self.pages_read += 1;
        self.file.read_exact_at(buf, pgno * self.psize)?;
        Ok(())
    }

    /// Walks a tree from its record; named databases found in its leaves are added to `subs`.
    fn tree(
        &mut self,
        name: &TreeName,
        db: &DbRecord,
        subs: &mut Vec<(TreeName, DbRecord)>,
    ) -> Result<(), Fault> {
        let Some(root) = db.root else {
            return Ok(());
        };
        if db.depth == 0 || db.depth > MAX_TREE_DEPTH {
            return Err(Fault::Bad(format!(
                "{name} says it is {} levels deep",
                db.depth
            )));
        }
        self.reach(root, &|| format!("the record of {name}"))?;
        self.reads = self.depth.reads(name);
        self.page(name, db.depth, root, 1, subs)
    }

    /// Reads and checks page `pgno` at `level` (1: the root) of a tree `depth` levels deep.
    fn page(
        &mut self,
        name: &TreeName,
        depth: u16,
        pgno: u64,
        level: u16,
        subs: &mut Vec<(TreeName, DbRecord)>,
    ) -> Result<(), Fault> {
        let psize = self.psize as usize;
        let mut p = self.bufs.pop().unwrap_or_else(|| vec![0u8; psize]);
        self.read(pgno, &mut p)?;
        self.tree_pages += 1;
        self.nodes(name, depth, pgno, level, &p, subs)?;
        self.bufs.push(p);
        Ok(())
    }

    /// Checks the page `p` (page `pgno` at `level` of `name`) and walks what it points to.
    fn nodes(
        &mut self,
        name: &TreeName,
        depth: u16,
        pgno: u64,
        level: u16,
        p: &[u8],
        subs: &mut Vec<(TreeName, DbRecord)>,
    ) -> Result<(), Fault> {
        let psize = self.psize as usize;
        let at = |what: String| Fault::Bad(format!("page {pgno} ({name}) {what}"));
        let said = u64_at(p, 0);
        if said != pgno {
            return Err(at(format!(
                "is overwritten or misplaced: its header says it is page {said}"
            )));
        }
        let flags = u16_at(p, 10);
        let is_leaf = level == depth;
        let ok = if is_leaf {
            flags == P_LEAF || flags == P_LEAF | P_LEAF2
        } else {
            flags == P_BRANCH
        };
        if !ok {
            return Err(at(format!(
                "has flags {flags:#06x}, not those of a {} page (level {level} of {depth})",
                if is_leaf { "leaf" } else { "branch" }
            )));
        }
        let (lower, upper) = (u16_at(p, 12) as usize, u16_at(p, 14) as usize);
        if lower < PAGE_HEADER
            || lower > upper
            || upper > psize
            || !(lower - PAGE_HEADER).is_multiple_of(2)
        {
            return Err(at(format!(
                "has free-space bounds {lower}..{upper} that do not fit its {psize} bytes"
            )));
        }
        let n = (lower - PAGE_HEADER) / 2;
        if !is_leaf && n == 0 {
            return Err(at("is a branch page with no entries".into()));
        }
        if flags & P_LEAF2 != 0 {
            // fixed-size duplicates packed after the header: no nodes to follow
            return Ok(());
        }
        for i in 0..n {
            let off = u16_at(p, PAGE_HEADER + 2 * i) as usize;
            let entry = |what: &str| at(format!("has entry {i} {what}"));
            if off < upper || off + NODE_HEADER > psize {
                return Err(entry(&format!("at offset {off}, outside its node area")));
            }
            let (lo, hi, nflags, ksize) = (
                u16_at(p, off),
                u16_at(p, off + 2),
                u16_at(p, off + 4),
                u16_at(p, off + 6) as usize,
            );
            let data = off + NODE_HEADER + ksize;
            if data > psize {
                return Err(entry("whose key runs past the page"));
            }
            if !is_leaf {
                // NODEPGNO: mn_lo | mn_hi << 16 | mn_flags << 32
                let child = lo as u64 | (hi as u64) << 16 | (nflags as u64) << 32;
                self.reach(child, &|| format!("page {pgno} ({name})"))?;
                // a page that is not read is only range-checked (its parent's entry is all
                // the reading it gets)
                let read = if level + 1 < depth {
                    self.reads.branches
                } else {
                    self.reads.leaves
                };
                if read || *name == TreeName::Main {
                    self.page(name, depth, child, level + 1, subs)?;
                }
                continue;
            }
            // NODEDSZ: mn_lo | mn_hi << 16
            let dsize = lo as usize | (hi as usize) << 16;
            if nflags & F_BIGDATA != 0 {
                if data + 8 > psize {
                    return Err(entry("whose overflow page number runs past the page"));
                }
                let first = u64_at(p, data);
                // OVPAGES: the header and the value, in whole pages
                let count = ((PAGE_HEADER - 1 + dsize) / psize + 1) as u64;
                let from = || format!("entry {i} of page {pgno} ({name})");
                self.reach(first, &from)?;
                self.span(first, count, &from)?;
                if !self.reads.overflow && level > 1 && self.free_range.is_none() {
                    // range-checked only (a root leaf's are read at every depth)
                    self.overflow_pages += count;
                    continue;
                }
                let mut h = [0u8; PAGE_HEADER];
                self.read(first, &mut h)?;
                let pages = u64::from(u32_at(&h, 12));
                if u64_at(&h, 0) != first || u16_at(&h, 10) != P_OVERFLOW || pages < count {
                    return Err(Fault::Bad(format!(
                        "{} has a {dsize}-byte value on page {first}, which is not its \
                         overflow page (header: page {}, flags {:#06x}, {pages} pages)",
                        from(),
                        u64_at(&h, 0),
                        u16_at(&h, 10)
                    )));
                }
                // the run may be longer than the value needs: all of it must exist
                self.span(first, pages, &from)?;
                self.overflow_pages += pages;
                if self.free_range.is_some() {
                    let mut v = vec![0u8; dsize];
                    self.file
                        .read_exact_at(&mut v, first * self.psize + PAGE_HEADER as u64)?;
                    self.free_list(&v);
                }
                continue;
            }
            if data + dsize > psize {
                return Err(entry(&format!(
                    "whose {dsize}-byte value runs past the page"
                )));
            }
            let value = &p[data..data + dsize];
            if nflags & F_SUBDATA != 0 {
                if dsize != DB_LEN {
                    return Err(entry(&format!(
                        "holding a database record of {dsize} bytes, not {DB_LEN}"
                    )));
                }
                let sub = match name {
                    TreeName::Main => TreeName::Table(
                        String::from_utf8_lossy(&p[off + NODE_HEADER..data]).into_owned(),
                    ),
                    other => other.clone(), // sorted duplicates of an entry
                };
                subs.push((sub, DbRecord::parse(value)));
            } else if nflags & F_DUPDATA == 0 && *name == TreeName::FreePages {
                let v = value.to_vec();
                self.free_list(&v);
            }
        }
        Ok(())
    }

    /// Keeps the page numbers of a free-page list record (`MDB_IDL`: a u64 count, then the
    /// page numbers) that fall in `free_range`.
    fn free_list(&mut self, v: &[u8]) {
        let Some((from, to)) = self.free_range else {
            return;
        };
        let n = v.len() / 8;
        let count = if n > 0 { u64_at(v, 0) as usize } else { 0 };
        for i in 1..=count.min(n.saturating_sub(1)) {
            let pg = u64_at(v, 8 * i);
            if (from..=to).contains(&pg) {
                self.free_found.push(pg);
            }
        }
    }

    /// Walks the free-page list, the main database, and every named database in it.
    fn all(&mut self, meta: &Meta) -> Result<Vec<TreeInfo>, Fault> {
        let mut out = Vec::new();
        let mut todo = vec![
            (TreeName::FreePages, meta.free),
            (TreeName::Main, meta.main),
        ];
        let mut i = 0;
        while i < todo.len() {
            let (name, db) = todo[i].clone();
            let mut subs = Vec::new();
            self.tree(&name, &db, &mut subs)?;
            out.push(TreeInfo {
                name: name.clone(),
                root: db.root,
                depth: db.depth,
                entries: db.entries,
                branch_pages: db.branch_pages,
                leaf_pages: db.leaf_pages,
                overflow_pages: db.overflow_pages,
            });
            todo.extend(subs);
            i += 1;
        }
        Ok(out)
    }
}

/// Reads the two meta pages: (page size, which is active, the active one).
fn read_metas(file: &std::fs::File, len: u64) -> Result<(u64, usize, Meta), Fault> {
    let read = |off: u64| -> std::io::Result<Vec<u8>> {
        let n = len.saturating_sub(off).min(META_LEN as u64) as usize;
        let mut b = vec![0u8; n];
        file.read_exact_at(&mut b, off)?;
        Ok(b)
    };
    let m0 = MetaPage::parse(&read(0)?);
    // LMDB reads the second meta page one page size (the first's) further on. When the first
    // is damaged, the second is looked for at each page size it could have.
    let psize = match m0.valid() {
        Some(m) => u64::from(m.free.pad),
        None => {
            let mut found = None;
            for p in [4096u64, 8192, 16384, 32768, 65536, 512, 1024, 2048] {
                if let MetaPage::Valid(m) = MetaPage::parse(&read(p)?) {
                    if u64::from(m.free.pad) == p {
                        found = Some(p);
                        break;
                    }
                }
            }
            found.unwrap_or(4096)
        }
    };
    if !plausible_page_size(psize) {
        return Err(Fault::Bad(format!(
            "its first header page gives a page size of {psize}, which LMDB never uses"
        )));
    }
    if len < NUM_METAS * psize {
        return Err(Fault::Bad(format!(
            "it is {len} bytes, shorter than its two header pages ({} bytes; truncated?)",
            NUM_METAS * psize
        )));
    }
    let m1 = MetaPage::parse(&read(psize)?);
    let metas = [m0, m1];
    for m in &metas {
        if let MetaPage::OtherVersion(v) = m {
            return Err(Fault::Bad(format!(
                "it is in LMDB data format {v}, and this bsn reads format {MDB_DATA_VERSION}"
            )));
        }
    }
    let (i, meta) = match (m0.valid(), m1.valid()) {
        (None, None) => {
            return Err(Fault::Bad(
                "neither of its two header pages is an LMDB header (they were overwritten, \
                 or this is not an LMDB file)"
                    .into(),
            ))
        }
        (Some(_), None) | (None, Some(_)) => {
            let bad = if m0.valid().is_none() { 0 } else { 1 };
            return Err(Fault::Bad(format!(
                "its header page {bad} is overwritten (the other one is intact, but LMDB \
                 needs both)"
            )));
        }
        (Some(a), Some(b)) => {
            if b.txnid > a.txnid {
                (1, *b)
            } else {
                (0, *a)
            }
        }
    };
    if meta.last_pg < NUM_METAS - 1 {
        return Err(Fault::Bad(format!(
            "its header page {i} says the last page is {}, before the header pages end",
            meta.last_pg
        )));
    }
    Ok((psize, i, meta))
}

/// Checks one snapshot: `Ok(None)` when there is no data file yet (absent or empty: LMDB
/// starts a new one).
fn inspect(file_path: &Path, depth: CheckDepth) -> Result<Option<DataFileInfo>, (Fault, u64)> {
    let file = match std::fs::File::open(file_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err((Fault::Io(e), 0)),
    };
    let len = file.metadata().map_err(|e| (Fault::Io(e), 0))?.len();
    if len == 0 {
        // LMDB writes the meta pages first: an empty file is a store never started
        return Ok(None);
    }
    let (psize, active, meta) = read_metas(&file, len).map_err(|f| (f, 0))?;
    let needed = meta.last_pg.saturating_add(1).saturating_mul(psize);
    let fail = |f| match f {
        Fault::PastEnd => (
            Fault::Bad(format!(
                "it is {len} bytes but its last transaction needs {needed} (truncated?)"
            )),
            meta.txnid,
        ),
        f => (f, meta.txnid),
    };
    let full = depth == CheckDepth::Full;
    let mut walk = Walk::new(&file, len, psize, meta.last_pg, depth);
    let trees = walk.all(&meta).map_err(fail)?;
    let mut pages_read = walk.pages_read;
    if len < needed && !full {
        // Shorter than the last transaction's pages: truncated, or (legitimately) the last
        // pages were allocated and freed again by one transaction and never written. Every page
        // up to the last is either in a tree or on the free-page list, so the file is whole when
        // all the missing pages are on that list.
        let (from, to) = (len / psize, meta.last_pg);
        let mut free = Walk::new(&file, len, psize, meta.last_pg, CheckDepth::Full);
        free.free_range = Some((from, to));
        free.tree(&TreeName::FreePages, &meta.free, &mut Vec::new())
            .map_err(fail)?;
        pages_read += free.pages_read;
        let mut found = std::mem::take(&mut free.free_found);
        found.sort_unstable();
        found.dedup();
        if found.len() as u64 != to - from + 1 {
            // some missing page is in use, or the list is wrong: only reading every tree
            // tells which (the walk fails on a page past the end)
            let mut all = Walk::new(&file, len, psize, meta.last_pg, CheckDepth::Full);
            all.all(&meta).map_err(fail)?;
            pages_read += all.pages_read;
            log::warn!(
                "{}: {} bytes, its last transaction names {needed}, and pages {from}..={to} \
                 are not all on the free-page list; no tree uses them",
                file_path.display(),
                len
            );
        }
    }
    Ok(Some(DataFileInfo {
        file_len: len,
        page_size: psize,
        meta: active,
        last_page: meta.last_pg,
        txnid: meta.txnid,
        trees,
        pages_read,
    }))
}

/// Checks the LMDB data file of the data dir `dir` (`dir/data.mdb`) with plain reads, before
/// LMDB maps it: `Ok(None)` when there is none yet, [`StoreError::Corrupt`] saying what is
/// wrong when it is damaged (truncated, overwritten header pages, a tree page that is not
/// where or what it should be). [`LmdbStore::open`] runs it with [`CheckDepth::Start`].
pub fn check_data_file(dir: &Path, depth: CheckDepth) -> StoreResult<Option<DataFileInfo>> {
    if cfg!(target_endian = "big") {
        // the layout read here is the little-endian one
        return Ok(None);
    }
    let file_path = dir.join("data.mdb");
    let mut tries = 0;
    loop {
        let (fault, txnid) = match inspect(&file_path, depth) {
            Ok(info) => return Ok(info),
            Err(e) => e,
        };
        // Another process may have committed while the pages were read (and reused pages of
        // the snapshot read): when the last transaction changed, read the new one.
        tries += 1;
        if tries < 3 && txnid != 0 {
            let now = std::fs::File::open(&file_path).ok().and_then(|f| {
                let len = f.metadata().ok()?.len();
                read_metas(&f, len).ok().map(|(_, _, m)| m.txnid)
            });
            if now.is_some_and(|t| t != txnid) {
                continue;
            }
        }
        let what = match fault {
            Fault::Io(e) => {
                return Err(StoreError::Backend(format!(
                    "cannot read {}: {e}",
                    file_path.display()
                )))
            }
            Fault::Bad(what) => what,
            // made a `Bad` by `inspect`, which knows the sizes
            Fault::PastEnd => "a page it needs lies past its end (truncated?)".into(),
        };
        return Err(StoreError::Corrupt(format!(
            "{} is damaged: {what}; {REMEDY}",
            file_path.display()
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory under the system's temporary one, removed on drop.
    struct Tmp(PathBuf);

    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let p = std::env::temp_dir().join(format!(
                "bsn-lmdb-{tag}-{}-{:016x}",
                std::process::id(),
                crate::util::random_u64()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Scattered 32-byte keys (puts in no order), 4-byte ascending ones (appends) and values
    /// big enough for overflow pages.
    fn fill(s: &LmdbStore) {
        for chunk in 0..4u64 {
            let mut b = Batch::new();
            for i in chunk * 5_000..(chunk + 1) * 5_000 {
                let k = i
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .to_le_bytes()
                    .repeat(4);
                b.put(Table::Headers, k, vec![i as u8; 100]);
                b.put(
                    Table::Heights,
                    (i as u32).to_be_bytes().to_vec(),
                    vec![7u8; 32],
                );
            }
            for i in 0..10u64 {
                let k = (chunk * 10 + i).to_be_bytes().to_vec();
                b.put(Table::Blocks, k, vec![i as u8; 20_000]);
            }
            s.write(&b).unwrap();
        }
    }

    fn data(dir: &Tmp) -> PathBuf {
        dir.0.join("data.mdb")
    }

    fn patch(dir: &Tmp, at: u64, bytes: &[u8]) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(data(dir))
            .unwrap();
        f.write_all_at(bytes, at).unwrap();
    }

    fn corrupt(dir: &Tmp, depth: CheckDepth) -> String {
        match check_data_file(&dir.0, depth) {
            Err(StoreError::Corrupt(m)) => m,
            other => panic!("not refused as corrupt: {other:?}"),
        }
    }

    #[test]
    fn the_parser_reads_what_lmdb_rkv_writes() {
        let dir = Tmp::new("parse");
        let (psize, last_pg, txnid, stats) = {
            let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
            fill(&s);
            let st = s.env.stat().unwrap();
            let info = s.env.info().unwrap();
            let txn = s.env.begin_ro_txn().unwrap();
            let stats: Vec<_> = Table::ALL
                .iter()
                .map(|t| {
                    let x = txn.stat(s.dbs[t]).unwrap();
                    (
                        t.name().to_string(),
                        (
                            x.depth() as u16,
                            x.entries() as u64,
                            x.branch_pages() as u64,
                            x.leaf_pages() as u64,
                            x.overflow_pages() as u64,
                        ),
                    )
                })
                .collect();
            (
                st.page_size() as u64,
                info.last_pgno() as u64,
                info.last_txnid() as u64,
                stats,
            )
        };
        // the raw bytes, at the offsets mdb.c gives
        let raw = std::fs::read(data(&dir)).unwrap();
        for m in 0..2 {
            let page = &raw[m * psize as usize..];
            assert_eq!(u16_at(page, 10) & P_META, P_META, "meta page {m}");
            assert_eq!(u32_at(page, 16), 0xBEEF_C0DE, "magic of meta page {m}");
            assert_eq!(u32_at(page, 20), 1, "version of meta page {m}");
            assert_eq!(
                u32_at(page, 40) as u64,
                psize,
                "md_pad of meta {m} is the page size"
            );
        }
        let txnids = [u64_at(&raw, 144), u64_at(&raw[psize as usize..], 144)];
        assert_eq!(txnids.iter().max(), Some(&txnid), "{txnids:?}");
        assert_eq!(txnids[0].abs_diff(txnids[1]), 1, "{txnids:?}");

        let info = check_data_file(&dir.0, CheckDepth::Full).unwrap().unwrap();
        assert_eq!(info.file_len, raw.len() as u64);
        assert_eq!(info.page_size, psize);
        assert_eq!(info.txnid, txnid);
        assert_eq!(info.meta as u64, txnid % 2);
        assert_eq!(info.last_page, last_pg);
        assert!(last_pg > 100 && (last_pg + 1) * psize <= raw.len() as u64 + 4 * psize);
        let main = info
            .trees
            .iter()
            .find(|t| t.name == TreeName::Main)
            .unwrap();
        assert_eq!(main.entries, Table::ALL.len() as u64);
        for (name, want) in &stats {
            let t = info
                .trees
                .iter()
                .find(|t| t.name == TreeName::Table(name.clone()))
                .unwrap_or_else(|| panic!("table {name} found"));
            let got = (
                t.depth,
                t.entries,
                t.branch_pages,
                t.leaf_pages,
                t.overflow_pages,
            );
            assert_eq!(&got, want, "{name}");
        }
        let headers = &stats.iter().find(|s| s.0 == "headers").unwrap().1;
        assert!(headers.0 >= 3 && headers.1 == 20_000, "{headers:?}");
        assert!(stats.iter().find(|s| s.0 == "blocks").unwrap().1 .4 >= 200);

        // the walk meets every page the records count, and no other
        let f = std::fs::File::open(data(&dir)).unwrap();
        let (p, _, meta) = read_metas(&f, raw.len() as u64).ok().unwrap();
        let mut full = Walk::new(&f, raw.len() as u64, p, meta.last_pg, CheckDepth::Full);
        let trees = full.all(&meta).ok().unwrap();
        let sum = |g: fn(&TreeInfo) -> u64| trees.iter().map(g).sum::<u64>();
        assert_eq!(full.tree_pages, sum(|t| t.branch_pages + t.leaf_pages));
        assert_eq!(full.overflow_pages, sum(|t| t.overflow_pages));
        // the quick check reads the branch pages and roots only
        let quick = check_data_file(&dir.0, CheckDepth::Quick).unwrap().unwrap();
        assert!(
            quick.pages_read * 10 < info.pages_read,
            "{} {}",
            quick.pages_read,
            info.pages_read
        );
        // and the store still opens, whole
        let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
        assert_eq!(s.count(Table::Headers).unwrap(), 20_000);
    }

    #[test]
    fn no_file_or_an_empty_one_is_a_new_store() {
        let dir = Tmp::new("empty");
        assert!(check_data_file(&dir.0, CheckDepth::Full).unwrap().is_none());
        std::fs::write(data(&dir), b"").unwrap();
        assert!(check_data_file(&dir.0, CheckDepth::Full).unwrap().is_none());
        LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
        let info = check_data_file(&dir.0, CheckDepth::Full).unwrap().unwrap();
        assert_eq!(info.trees.len(), 2 + Table::ALL.len());
    }

    #[test]
    fn a_file_whose_last_pages_were_never_written_is_whole() {
        // one transaction takes pages at the end of the file for big values and frees them
        // again: LMDB never writes them, so the file is shorter than its last page says
        let dir = Tmp::new("short-tail");
        {
            let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
            fill(&s);
            let mut b = Batch::new();
            for i in 0..40u32 {
                b.put(Table::Blocks, i.to_le_bytes().to_vec(), vec![1u8; 100_000]);
            }
            for i in 0..40u32 {
                b.delete(Table::Blocks, i.to_le_bytes().to_vec());
            }
            s.write(&b).unwrap();
        }
        let info = check_data_file(&dir.0, CheckDepth::Quick).unwrap().unwrap();
        assert!(
            info.file_len < (info.last_page + 1) * info.page_size,
            "the file is {} bytes, its last page ends at {}",
            info.file_len,
            (info.last_page + 1) * info.page_size
        );
        // the free-page list accounts for the missing pages: no need to read every tree
        let full = check_data_file(&dir.0, CheckDepth::Full).unwrap().unwrap();
        assert!(
            info.pages_read * 5 < full.pages_read,
            "{} {}",
            info.pages_read,
            full.pages_read
        );
        let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
        assert_eq!(s.count(Table::Headers).unwrap(), 20_000);
        assert_eq!(s.count(Table::Blocks).unwrap(), 40);
    }

    #[test]
    fn a_file_cut_inside_a_value_is_truncated() {
        // the last thing written is a big value: its overflow pages end the file, and a cut
        // there leaves every tree page (and every root) in place. Only the free-page list, which
        // does not account for the missing pages, and then the walk of every tree tell.
        let dir = Tmp::new("cut-value");
        {
            let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
            fill(&s);
            // enough entries that the value's leaf is not the root (the quick check reads
            // a root leaf's values' first overflow pages)
            let mut b = Batch::new();
            for i in 0..1000u32 {
                b.put(Table::Blocks, i.to_le_bytes().to_vec(), vec![3u8; 40]);
            }
            s.write(&b).unwrap();
            let mut b = Batch::new();
            b.put(Table::Blocks, b"last".to_vec(), vec![9u8; 400_000]);
            s.write(&b).unwrap();
        }
        let raw = std::fs::read(data(&dir)).unwrap();
        let info = check_data_file(&dir.0, CheckDepth::Full).unwrap().unwrap();
        let psize = info.page_size;
        let f = std::fs::File::open(data(&dir)).unwrap();
        let (_, _, meta) = read_metas(&f, raw.len() as u64).ok().unwrap();
        let mut w = Walk::new(&f, raw.len() as u64, psize, meta.last_pg, CheckDepth::Full);
        w.all(&meta).ok().unwrap();
        let header = |p: u64| &raw[(p * psize) as usize..];
        let last_tree_page = (2..=meta.last_pg)
            .filter(|p| w.met(*p) && u16_at(header(*p), 10) & (P_BRANCH | P_LEAF) != 0)
            .max()
            .unwrap();
        let (start, pages) = (2..=meta.last_pg)
            .filter(|p| w.met(*p) && u16_at(header(*p), 10) == P_OVERFLOW)
            .map(|p| (p, u32_at(header(p), 12) as u64))
            .max()
            .unwrap();
        assert!(
            pages >= 90 && start > last_tree_page,
            "{start} {pages} {last_tree_page}"
        );
        let blocks = info
            .trees
            .iter()
            .find(|t| t.name == TreeName::Table("blocks".into()))
            .unwrap();
        assert!(blocks.depth >= 2, "{blocks:?}");
        let cut = (start + pages / 2) * psize;
        drop(f);
        std::fs::OpenOptions::new()
            .write(true)
            .open(data(&dir))
            .unwrap()
            .set_len(cut)
            .unwrap();
        let needed = (meta.last_pg + 1) * psize;
        for depth in [CheckDepth::Quick, CheckDepth::Branches, CheckDepth::Full] {
            let m = corrupt(&dir, depth);
            assert!(
                m.contains(&format!(
                    "it is {cut} bytes but its last transaction needs {needed} (truncated?)"
                )),
                "{m}"
            );
        }
        assert!(matches!(
            LmdbStore::open(&dir.0, &LmdbOptions::default()),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn damage_is_found_and_said() {
        let dir = Tmp::new("damage");
        LmdbStore::open(&dir.0, &LmdbOptions::default())
            .map(|s| fill(&s))
            .unwrap();
        let pristine = std::fs::read(data(&dir)).unwrap();
        let info = check_data_file(&dir.0, CheckDepth::Full).unwrap().unwrap();
        let psize = info.page_size;
        let restore = || std::fs::write(data(&dir), &pristine).unwrap();
        let tree = |n: &str| {
            info.trees
                .iter()
                .find(|t| t.name == TreeName::Table(n.into()))
                .unwrap()
                .clone()
        };

        // one meta page overwritten: LMDB needs both
        patch(&dir, 0, &vec![0u8; psize as usize]);
        let m = corrupt(&dir, CheckDepth::Quick);
        assert!(m.contains("header page 0 is overwritten"), "{m}");
        restore();
        patch(&dir, psize + 16, &[0u8; 4]);
        let m = corrupt(&dir, CheckDepth::Quick);
        assert!(m.contains("header page 1 is overwritten"), "{m}");
        restore();

        // another data format
        patch(&dir, 20, &2u32.to_le_bytes());
        let m = corrupt(&dir, CheckDepth::Quick);
        assert!(m.contains("LMDB data format 2"), "{m}");
        restore();

        // a branch page whose first child is past the last page
        let root = tree("headers").root.unwrap();
        let at = root * psize;
        let off = u16_at(&pristine[at as usize..], PAGE_HEADER) as u64;
        let bad = info.last_page + 5;
        patch(&dir, at + off, &(bad as u16).to_le_bytes());
        patch(&dir, at + off + 2, &((bad >> 16) as u16).to_le_bytes());
        let m = corrupt(&dir, CheckDepth::Quick);
        assert!(
            m.contains(&format!(
                "page {root} (table 'headers') points to page {bad}, past"
            )),
            "{m}"
        );
        restore();

        // a branch page below the root overwritten: the quick check (roots only) does not read
        // it, the branch-page check does
        let child = {
            let node = &pristine[(at + off) as usize..];
            u16_at(node, 0) as u64 | (u16_at(node, 2) as u64) << 16 | (u16_at(node, 4) as u64) << 32
        };
        assert!(tree("headers").depth >= 3);
        patch(&dir, child * psize, &vec![0xff; psize as usize]);
        check_data_file(&dir.0, CheckDepth::Quick).unwrap();
        let m = corrupt(&dir, CheckDepth::Branches);
        assert!(
            m.contains(&format!(
                "page {child} (table 'headers') is overwritten or misplaced: its header says it \
                 is page 18446744073709551615"
            )),
            "{m}"
        );
        restore();

        // a branch page's child that another entry points to as well
        let off2 = u16_at(&pristine[at as usize..], PAGE_HEADER + 2) as u64;
        patch(
            &dir,
            at + off2,
            &pristine[(at + off) as usize..(at + off + 4) as usize],
        );
        let m = corrupt(&dir, CheckDepth::Quick);
        assert!(m.contains("which another entry points to as well"), "{m}");
        restore();

        // the first overflow page of a value overwritten (the quick check reads it only when
        // the value's leaf is a root, as it is here)
        let f = std::fs::File::open(data(&dir)).unwrap();
        let (_, _, meta) = read_metas(&f, pristine.len() as u64).ok().unwrap();
        let mut w = Walk::new(
            &f,
            pristine.len() as u64,
            psize,
            meta.last_pg,
            CheckDepth::Full,
        );
        w.all(&meta).ok().unwrap();
        let overflow = (2..=meta.last_pg)
            .find(|p| {
                let page = &pristine[(p * psize) as usize..];
                u16_at(page, 10) == P_OVERFLOW && u64_at(page, 0) == *p && w.met(*p)
            })
            .unwrap();
        patch(&dir, overflow * psize, &[0xff; 16]);
        let m = corrupt(&dir, CheckDepth::Full);
        assert!(
            m.contains(&format!(
                "value on page {overflow}, which is not its overflow page"
            )),
            "{m}"
        );
        restore();
        check_data_file(&dir.0, CheckDepth::Full).unwrap();
    }

    /// The first child of a branch page / the first overflow page of a leaf's first value.
    fn first_child(raw: &[u8], psize: u64, pgno: u64) -> u64 {
        let page = &raw[(pgno * psize) as usize..];
        let node = &page[u16_at(page, PAGE_HEADER) as usize..];
        if u16_at(page, 10) & P_BRANCH != 0 {
            u16_at(node, 0) as u64 | (u16_at(node, 2) as u64) << 16 | (u16_at(node, 4) as u64) << 32
        } else {
            assert_eq!(u16_at(node, 4) & F_BIGDATA, F_BIGDATA);
            u64_at(node, NODE_HEADER + u16_at(node, 6) as usize)
        }
    }

    #[test]
    fn the_start_depth_reads_every_tree_page_but_no_block_value() {
        let dir = Tmp::new("start");
        {
            let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
            fill(&s);
            // a block table of two levels, every value on overflow pages
            let mut b = Batch::new();
            for i in 0..300u32 {
                let k = [&b"blk"[..], &i.to_be_bytes()].concat();
                b.put(Table::Blocks, k, vec![5u8; 6_000]);
            }
            s.write(&b).unwrap();
        }
        let pristine = std::fs::read(data(&dir)).unwrap();
        let full = check_data_file(&dir.0, CheckDepth::Full).unwrap().unwrap();
        let start = check_data_file(&dir.0, CheckDepth::Start).unwrap().unwrap();
        let tree = |n: &str| {
            full.trees
                .iter()
                .find(|t| t.name == TreeName::Table(n.into()))
                .unwrap()
                .clone()
        };
        let (headers, blocks) = (tree("headers"), tree("blocks"));
        assert!(blocks.depth >= 2 && blocks.entries == 340, "{blocks:?}");
        // the same pages but the first overflow page of each block
        assert_eq!(full.pages_read - start.pages_read, blocks.entries);
        let restore = || std::fs::write(data(&dir), &pristine).unwrap();
        let psize = full.page_size;

        // a leaf of the header table, not the root: the branch-page check does not read it
        assert!(headers.depth >= 3, "{headers:?}");
        let branch = first_child(&pristine, psize, headers.root.unwrap());
        let leaf = first_child(&pristine, psize, branch);
        patch(&dir, leaf * psize + 12, &[0xff; 4]);
        check_data_file(&dir.0, CheckDepth::Branches).unwrap();
        for depth in [CheckDepth::Start, CheckDepth::Full] {
            let m = corrupt(&dir, depth);
            assert!(
                m.contains(&format!(
                    "page {leaf} (table 'headers') has free-space bounds 65535..65535"
                )),
                "{m}"
            );
        }
        restore();

        // a leaf of the block table
        let leaf = first_child(&pristine, psize, blocks.root.unwrap());
        patch(&dir, leaf * psize, &[0u8; 8]);
        check_data_file(&dir.0, CheckDepth::Branches).unwrap();
        let m = corrupt(&dir, CheckDepth::Start);
        assert!(
            m.contains(&format!(
                "page {leaf} (table 'blocks') is overwritten or misplaced: its header says it \
                 is page 0"
            )),
            "{m}"
        );
        restore();

        // the header of a block's first overflow page: LMDB reads none of it to hand the value
        // out, the start does not read it
        let first = first_child(&pristine, psize, leaf);
        patch(&dir, first * psize, &[0xff; 16]);
        check_data_file(&dir.0, CheckDepth::Start).unwrap();
        let m = corrupt(&dir, CheckDepth::Full);
        assert!(
            m.contains(&format!(
                "value on page {first}, which is not its overflow page"
            )),
            "{m}"
        );
        restore();
        // a value whose size runs its overflow pages past the file's last page: found from
        // its leaf (LMDB would hand out a slice past the end of the map)
        let node = leaf * psize + u16_at(&pristine[(leaf * psize) as usize..], PAGE_HEADER) as u64;
        patch(
            &dir,
            node,
            &(((full.last_page + 10) * psize) as u32).to_le_bytes(),
        );
        let m = corrupt(&dir, CheckDepth::Start);
        assert!(
            m.contains(&format!("points to page {first} and the ")) && m.contains("past the last"),
            "{m}"
        );
        restore();
        check_data_file(&dir.0, CheckDepth::Full).unwrap();
    }
}
