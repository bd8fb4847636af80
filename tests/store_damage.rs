//! A damaged LMDB data file is refused at start with a message that says what is wrong, never a
//! bus error or an abort: truncated to 8 KiB, to half, cut below its two header pages, a root
//! page, a leaf or a branch page of the header table, a leaf of the block table overwritten
//! (with 0xff, or with noise), both header pages zeroed. Each case is checked on the library
//! (`LmdbStore::open`) and on the real binary (`bsn node`), which must exit with an error code,
//! not die of a signal. An undamaged store opens and the node starts on it, and so does a store
//! whose damage lies inside a block's bytes (the start reads none of them; LMDB hands them out
//! as they are).

mod common;

use bsn::store::chain::ChainDb;
use bsn::store::lmdb::{
    check_data_file, CheckDepth, DataFileInfo, LmdbOptions, LmdbStore, TreeName,
};
use bsn::store::records::{put_block, put_peer, with_block, PeerRecord};
use bsn::store::{Batch, Store, StoreError, Table};
use bsn::wire::{BlockHeader, Hash256};
use bsn::{Config, Engine, Network};
use common::TempDir;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the binary may take to refuse a store or to start (it is killed after, and the test
/// fails).
const DEADLINE: Duration = Duration::from_secs(60);
const HEADERS: usize = 3000;
/// Blocks stored, of the first heights: small ones in the leaves, every 25th on overflow pages.
const BLOCKS: usize = 300;

/// A regtest header on `prev` with real proof of work, `step` seconds after it.
fn mine(prev: &BlockHeader, salt: u32, step: u32) -> BlockHeader {
    let mut h = BlockHeader {
        version: 4,
        prev_hash: prev.hash(),
        merkle_root: Hash256::sha256d(&salt.to_le_bytes()),
        time: prev.time + step,
        bits: 0x207fffff,
        nonce: 0,
    };
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    h
}

/// Writes a regtest chain of `headers` headers (with its height index) to the store in `dir`,
/// as the engine keeps it, and `blocks` blocks of the first heights, the one at height `i + 1`
/// of `block_len(i)` bytes. Returns the chain's hashes from height 1.
fn write_chain(
    dir: &Path,
    headers: usize,
    blocks: usize,
    block_len: impl Fn(usize) -> usize,
) -> Vec<Hash256> {
    let params = Network::Regtest.params();
    let s = LmdbStore::open(dir, &LmdbOptions::default()).unwrap();
    let mut db = ChainDb::new(&params);
    let mut prev = params.genesis;
    let mut hashes = Vec::with_capacity(headers);
    let mut part = Vec::with_capacity(2000);
    for i in 0..headers {
        prev = mine(&prev, i as u32, 60);
        hashes.push(prev.hash());
        part.push(prev);
        if part.len() == 2000 || i + 1 == headers {
            let mut b = Batch::new();
            let u = db.insert_headers(&part, &mut b);
            assert!(u.error.is_none(), "{:?}", u.error);
            s.write(&b).unwrap();
            part.clear();
        }
    }
    let mut b = Batch::new();
    for (i, h) in hashes.iter().take(blocks).enumerate() {
        put_block(&mut b, h, vec![i as u8; block_len(i)].into());
        if b.size() > 64 << 20 {
            s.write(&b).unwrap();
            b = Batch::new();
        }
    }
    s.write(&b).unwrap();
    s.sync().unwrap();
    hashes
}

/// Fills the data dir `dir` with real content, as the engine keeps it: a regtest header chain
/// with its height index, blocks of the first heights (small ones in the leaves of a table of
/// two levels, bigger ones on overflow pages), known peers. Returns what the full check reads of
/// it (several hundred KB, a header table of three levels).
fn make_store(dir: &Path) -> DataFileInfo {
    write_chain(dir, HEADERS, BLOCKS, |i| {
        if i % 25 == 0 {
            30_000
        } else {
            200 + i % 100
        }
    });
    {
        let s = LmdbStore::open(dir, &LmdbOptions::default()).unwrap();
        let mut b = Batch::new();
        for i in 0..200u16 {
            let addr = format!("10.0.{}.{}:8333", i / 250, i % 250 + 1);
            let r = PeerRecord {
                user_agent: "/Bitcoin SV:1.1.0/".into(),
                version: 70016,
                first_seen: 1_700_000_000 + u64::from(i),
                ..Default::default()
            };
            put_peer(&mut b, &addr.parse().unwrap(), &r);
        }
        s.write(&b).unwrap();
    }
    let info = check_data_file(dir, CheckDepth::Full)
        .expect("a fresh store is whole")
        .expect("a data file");
    assert!(info.file_len >= 300 * 1024, "{} bytes", info.file_len);
    info
}

fn data_file(dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("data.mdb"))
        .unwrap()
}

/// What `bsn node` did on a data dir.
#[derive(Debug)]
enum Outcome {
    /// It exited by itself: its status and stderr.
    Exited(std::process::ExitStatus, String),
    /// It started (its first line on stdout, given here) and was then killed.
    Started(String),
}

/// Runs `bsn node` on the data dir until it exits or says it started (then kills it); killed
/// at the deadline, which fails the test.
fn run_node(dir: &Path) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bsn"))
        .args(["node", "--no-listen", "--no-pin", "--data-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // the first line on stdout (it started), or the end of stderr (it exited)
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let started = tx.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        if !line.is_empty() {
            let _ = started.send(Some(line));
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        let _ = tx.send(None);
        s
    });
    let out = rx.recv_timeout(DEADLINE);
    if !matches!(out, Ok(None)) {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let err = err.join().unwrap();
    match out {
        Ok(None) => Outcome::Exited(status, err),
        Ok(Some(line)) => Outcome::Started(line),
        Err(_) => panic!("bsn node neither started nor exited in {DEADLINE:?}; stderr: {err}"),
    }
}

/// The store in `dir` is refused by the library and by the binary, with a message that says it
/// is damaged, contains each of `what`, and says what to do.
fn refused(dir: &Path, what: &[&str]) {
    let e = LmdbStore::open(dir, &LmdbOptions::default())
        .err()
        .expect("a damaged store is refused");
    let StoreError::Corrupt(m) = &e else {
        panic!("not refused as corrupt: {e:?}");
    };
    let file = dir.join("data.mdb");
    assert!(
        m.starts_with(&format!("{} is damaged: ", file.display())),
        "{m}"
    );
    assert!(
        m.ends_with("restore it from a backup or move the data dir away to start fresh"),
        "{m}"
    );
    for w in what {
        assert!(m.contains(w), "{w:?} not in {m:?}");
    }

    let (status, err) = match run_node(dir) {
        Outcome::Exited(status, err) => (status, err),
        Outcome::Started(line) => panic!("bsn node started on a damaged store: {line}"),
    };
    print!("bsn node: {status}: {err}");
    assert!(
        status.code().is_some(),
        "bsn node died of signal {:?}; stderr: {err}",
        status.signal()
    );
    assert!(
        !status.success(),
        "bsn node ran on a damaged store; stderr: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: store is corrupt: ") && err.contains("damaged"),
        "{err}"
    );
    assert!(err.contains(m.as_str()), "{err}");
}

/// The pages of one table's B-tree, parsed from the raw file here (not by the library's own
/// walk): its depth, its branch and leaf pages as (page, level from 1 at the root), and the
/// overflow runs of its big values as (first page, pages).
struct TreePages {
    depth: u16,
    pages: Vec<(u64, u16)>,
    overflow: Vec<(u64, u64)>,
}

impl TreePages {
    fn of(dir: &Path, info: &DataFileInfo, table: Table) -> TreePages {
        let raw = std::fs::read(dir.join("data.mdb")).unwrap();
        let t = info
            .trees
            .iter()
            .find(|t| t.name == TreeName::Table(table.name().into()))
            .unwrap();
        let ps = info.page_size as usize;
        let u16_at = |p: &[u8], at: usize| u64::from(u16::from_le_bytes([p[at], p[at + 1]]));
        let mut out = TreePages {
            depth: t.depth,
            pages: Vec::new(),
            overflow: Vec::new(),
        };
        let mut todo = vec![(t.root.unwrap(), 1u16)];
        while let Some((pg, level)) = todo.pop() {
            out.pages.push((pg, level));
            let p = &raw[pg as usize * ps..(pg as usize + 1) * ps];
            // page header: pgno u64, pad u16, flags u16, lower u16, upper u16; then the node
            // offsets; a node: lo u16, hi u16, flags u16, key size u16, key, data
            let nodes = (u16_at(p, 12) as usize - 16) / 2;
            for i in 0..nodes {
                let n = u16_at(p, 16 + 2 * i) as usize;
                let (lo, hi, flags) = (u16_at(p, n), u16_at(p, n + 2), u16_at(p, n + 4));
                if level < t.depth {
                    todo.push((lo | hi << 16 | flags << 32, level + 1));
                } else if flags & 1 != 0 {
                    // F_BIGDATA: the data is the first overflow page's number
                    let at = n + 8 + u16_at(p, n + 6) as usize;
                    let first = u64::from_le_bytes(p[at..at + 8].try_into().unwrap());
                    let o = first as usize * ps;
                    let pages = u32::from_le_bytes(raw[o + 12..o + 16].try_into().unwrap());
                    out.overflow.push((first, u64::from(pages)));
                }
            }
        }
        out.pages.sort_unstable();
        out.overflow.sort_unstable();
        out
    }

    /// A page at `level` (not the root), not the first one of that level.
    fn at_level(&self, level: u16) -> u64 {
        assert!(level > 1);
        let pages: Vec<u64> = self
            .pages
            .iter()
            .filter(|p| p.1 == level)
            .map(|p| p.0)
            .collect();
        assert!(pages.len() >= 2, "{} pages at level {level}", pages.len());
        pages[pages.len() / 2]
    }
}

/// What a damaged page is overwritten with.
#[derive(Clone, Copy, Debug)]
enum Fill {
    /// Every byte 0xff (as erased flash reads).
    Ones,
    /// Pseudo-random bytes (splitmix64) from this seed.
    Noise(u64),
}

impl Fill {
    fn bytes(self, len: usize) -> Vec<u8> {
        match self {
            Fill::Ones => vec![0xff; len],
            Fill::Noise(seed) => {
                let mut x = seed;
                let mut v = Vec::with_capacity(len + 8);
                while v.len() < len {
                    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = x;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
                }
                v.truncate(len);
                v
            }
        }
    }

    /// The page number the damaged page's header then gives (its first 8 bytes).
    fn said(self, len: usize) -> u64 {
        u64::from_le_bytes(self.bytes(len)[..8].try_into().unwrap())
    }
}

const NOISE: Fill = Fill::Noise(0x5eed_0000_da7a);

/// Overwrites page `pgno` of the store in `dir` with `fill`.
fn overwrite(dir: &Path, info: &DataFileInfo, pgno: u64, fill: Fill) {
    data_file(dir)
        .write_all_at(&fill.bytes(info.page_size as usize), pgno * info.page_size)
        .unwrap();
}

/// Overwrites a page of `table` at `level` with `fill`; the store must then be refused, the
/// message naming the page.
fn page_refused(tag: &str, table: Table, level: impl Fn(&TreePages) -> u16, fill: Fill) {
    let dir = TempDir::new(tag);
    let info = make_store(&dir.0);
    let tree = TreePages::of(&dir.0, &info, table);
    let pgno = tree.at_level(level(&tree));
    overwrite(&dir.0, &info, pgno, fill);
    refused(
        &dir.0,
        &[&format!(
            "page {pgno} (table '{}') is overwritten or misplaced: its header says it is page {}",
            table.name(),
            fill.said(info.page_size as usize)
        )],
    );
}

#[test]
fn an_undamaged_store_opens_and_the_node_starts() {
    let dir = TempDir::new("damage-none");
    let info = make_store(&dir.0);
    let quick = check_data_file(&dir.0, CheckDepth::Quick).unwrap().unwrap();
    assert_eq!((quick.txnid, quick.last_page), (info.txnid, info.last_page));
    {
        let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
        assert_eq!(s.count(Table::Headers).unwrap(), HEADERS as u64);
        assert_eq!(s.count(Table::Blocks).unwrap(), BLOCKS as u64);
    }
    // the shapes the page cases below need
    let headers = TreePages::of(&dir.0, &info, Table::Headers);
    assert!(headers.depth >= 3, "headers: {} levels", headers.depth);
    let blocks = TreePages::of(&dir.0, &info, Table::Blocks);
    assert!(blocks.depth >= 2, "blocks: {} levels", blocks.depth);
    assert!(blocks.overflow.len() >= 10 && blocks.overflow.iter().all(|o| o.1 >= 3));
    // the node starts on it (its first line says so)
    match run_node(&dir.0) {
        Outcome::Started(line) => assert!(line.starts_with("bsn node:"), "{line:?}"),
        Outcome::Exited(status, err) => panic!("bsn node exited: {status}: {err}"),
    }
    // and the store is still whole
    check_data_file(&dir.0, CheckDepth::Full).unwrap().unwrap();
}

#[test]
fn truncated_to_8_kib() {
    let dir = TempDir::new("damage-8k");
    let info = make_store(&dir.0);
    data_file(&dir.0).set_len(8192).unwrap();
    let needed = (info.last_page + 1) * info.page_size;
    refused(
        &dir.0,
        &[&format!(
            "it is 8192 bytes but its last transaction needs {needed} (truncated?)"
        )],
    );
}

#[test]
fn truncated_to_half() {
    // the trees' roots may all be in the half that is left: the pages past the end are found
    // from the free-page list and the trees' own pointers
    let dir = TempDir::new("damage-half");
    let info = make_store(&dir.0);
    let half = info.file_len / 2 / info.page_size * info.page_size;
    data_file(&dir.0).set_len(half).unwrap();
    refused(
        &dir.0,
        &[&format!("it is {half} bytes but"), "(truncated?)"],
    );
}

#[test]
fn truncated_to_3_kib() {
    let dir = TempDir::new("damage-3k");
    let info = make_store(&dir.0);
    data_file(&dir.0).set_len(3072).unwrap();
    refused(
        &dir.0,
        &[&format!(
            "it is 3072 bytes, shorter than its two header pages ({} bytes; truncated?)",
            2 * info.page_size
        )],
    );
}

#[test]
fn both_meta_pages_zeroed() {
    let dir = TempDir::new("damage-metas");
    let info = make_store(&dir.0);
    data_file(&dir.0)
        .write_all_at(&vec![0; 2 * info.page_size as usize], 0)
        .unwrap();
    refused(
        &dir.0,
        &["neither of its two header pages is an LMDB header"],
    );
}

#[test]
fn a_root_page_overwritten() {
    // the root of the header table: a branch page, the tree has two levels or more
    let dir = TempDir::new("damage-page");
    let info = make_store(&dir.0);
    let headers = info
        .trees
        .iter()
        .find(|t| t.name == TreeName::Table("headers".into()))
        .expect("a header table");
    assert!(headers.depth >= 2, "{headers:?}");
    let root = headers.root.unwrap();
    assert!(root >= 2 && root <= info.last_page);
    overwrite(&dir.0, &info, root, Fill::Ones);
    refused(
        &dir.0,
        &[&format!(
            "page {root} (table 'headers') is overwritten or misplaced: its header says it is \
             page 18446744073709551615"
        )],
    );
}

// A leaf of the header table (read in full at start by `ChainDb::load`). Unchecked (roots only),
// LMDB handed out garbage entries: with debug assertions the node died of SIGABRT (lmdb-rkv's
// slice of LMDB's garbage pointer and length); in a release build the record check happened to
// refuse the first one ("header record is 0 bytes"), a length that points past the page would
// have been read.

#[test]
fn a_header_leaf_overwritten_with_ones() {
    page_refused("damage-hleaf-ff", Table::Headers, |t| t.depth, Fill::Ones);
}

#[test]
fn a_header_leaf_overwritten_with_noise() {
    page_refused("damage-hleaf-rnd", Table::Headers, |t| t.depth, NOISE);
}

// A branch page of the header table below its root. Unchecked, the node exited with
// "MDB_PAGE_NOTFOUND" (child page numbers past the file's end), which does not say the file is
// damaged, or died of SIGABRT (`Assertion 'IS_LEAF(mp)' failed in mdb_cursor_next()`), by the
// bytes.

#[test]
fn a_header_branch_page_overwritten_with_ones() {
    page_refused("damage-hbranch-ff", Table::Headers, |_| 2, Fill::Ones);
}

#[test]
fn a_header_branch_page_overwritten_with_noise() {
    page_refused("damage-hbranch-rnd", Table::Headers, |_| 2, NOISE);
}

// A leaf of the block table, read at start when the node looks up every stored block of the
// best chain (from height 1 on) to know where its download resumes. Unchecked, the node started:
// the blocks of that leaf read as missing (0xff) or their lookup failed (noise, an error the
// start takes for "not stored"), and a scan of the table died of SIGABRT in LMDB.

#[test]
fn a_block_leaf_overwritten_with_ones() {
    page_refused("damage-bleaf-ff", Table::Blocks, |t| t.depth, Fill::Ones);
}

#[test]
fn a_block_leaf_overwritten_with_noise() {
    page_refused("damage-bleaf-rnd", Table::Blocks, |t| t.depth, NOISE);
}

/// A page in the middle of a block's value (an overflow page after its first) holds nothing
/// but the block's bytes: no check of the file's structure can tell, the start reads none of
/// it, and LMDB hands the bytes out as they are. The node starts and a read of that block gives
/// the changed bytes, without a crash.
#[test]
fn a_page_inside_a_block_is_not_structure() {
    let dir = TempDir::new("damage-value");
    let info = make_store(&dir.0);
    let blocks = TreePages::of(&dir.0, &info, Table::Blocks);
    let (first, pages) = blocks.overflow[blocks.overflow.len() / 2];
    let pgno = first + pages / 2;
    let hashes: Vec<Hash256> = {
        let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
        let chain = ChainDb::load(&s, &Network::Regtest.params()).unwrap();
        (1..=BLOCKS as u32)
            .map(|h| chain.tree().hash_at(h).unwrap())
            .collect()
    };
    for fill in [Fill::Ones, NOISE] {
        overwrite(&dir.0, &info, pgno, fill);
        check_data_file(&dir.0, CheckDepth::Full).unwrap().unwrap();
        {
            let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
            // every block reads; the damaged one is no longer one byte repeated
            let mut changed = Vec::new();
            for (i, h) in hashes.iter().enumerate() {
                let same = with_block(&s, h, |v| {
                    let v = v.expect("stored");
                    v.iter().all(|b| *b == i as u8)
                })
                .unwrap();
                if !same {
                    changed.push(i);
                }
            }
            assert_eq!(changed.len(), 1, "{fill:?}: {changed:?}");
        }
        match run_node(&dir.0) {
            Outcome::Started(line) => assert!(line.starts_with("bsn node:"), "{line:?}"),
            Outcome::Exited(status, err) => panic!("bsn node exited: {status}: {err}"),
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `runs` timings of `f`.
fn median(runs: usize, f: &mut dyn FnMut()) -> Duration {
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}

/// What the check at open costs against what the start already spends, on a store of a mainnet
/// sized header chain (800,000 headers, with their height index) and about 1 GB of 400 KB
/// blocks of its first heights (page cache hot). Run with
/// `cargo test --release --test store_damage -- --ignored --nocapture start_time`; sizes from
/// `BSN_START_TIME_HEADERS` and `BSN_START_TIME_MB`; with `BSN_START_TIME_DIR` the store is
/// kept there (and reused when it is already there).
#[test]
#[ignore]
fn start_time_of_a_big_store() {
    let headers: usize = env_or("BSN_START_TIME_HEADERS", 800_000);
    let mb: usize = env_or("BSN_START_TIME_MB", 1024);
    let (_tmp, dir) = match std::env::var_os("BSN_START_TIME_DIR") {
        Some(d) => (None, std::path::PathBuf::from(d)),
        None => {
            let t = TempDir::new("damage-time");
            let d = t.0.clone();
            (Some(t), d)
        }
    };
    if !dir.join("data.mdb").exists() {
        let t = Instant::now();
        std::fs::create_dir_all(&dir).unwrap();
        let blocks = mb * 1_000_000 / 400_000;
        write_chain(&dir, headers, blocks.min(headers), |_| 400_000);
        println!("store written in {:?}", t.elapsed());
    }
    let len = std::fs::metadata(dir.join("data.mdb")).unwrap().len();

    // LMDB alone: the environment and the tables, as LmdbStore::open does without the check
    let lmdb_only = median(11, &mut || {
        let env = lmdb::Environment::new()
            .set_max_dbs(Table::ALL.len() as u32 + 2)
            .set_max_readers(512)
            .set_map_size(64 << 20)
            .set_flags(lmdb::EnvironmentFlags::NO_TLS | lmdb::EnvironmentFlags::NO_READAHEAD)
            .open(&dir)
            .unwrap();
        for t in Table::ALL {
            env.create_db(Some(t.name()), lmdb::DatabaseFlags::empty())
                .unwrap();
        }
    });
    let check = |depth, runs| {
        let mut pages = 0;
        let t = median(runs, &mut || {
            pages = check_data_file(&dir, depth).unwrap().unwrap().pages_read;
        });
        (t, pages)
    };
    let quick = check(CheckDepth::Quick, 11);
    let branches = check(CheckDepth::Branches, 11);
    let start = check(CheckDepth::Start, 7);
    let full = check(CheckDepth::Full, 3);
    let open = median(7, &mut || {
        LmdbStore::open(&dir, &LmdbOptions::default()).unwrap();
    });
    let params = Network::Regtest.params();
    let load = {
        let s = LmdbStore::open(&dir, &LmdbOptions::default()).unwrap();
        median(5, &mut || {
            let c = ChainDb::load(&s, &params).unwrap();
            assert_eq!(c.tree().len(), headers + 1);
        })
    };
    // the start alone is timed, not the stop
    let mut starts: Vec<Duration> = (0..5)
        .map(|_| {
            let c = Config::builder(Network::Regtest)
                .data_dir(&dir)
                .no_listen()
                .pin_threads(false)
                .build()
                .unwrap();
            let t = Instant::now();
            let e = Engine::start(c).unwrap();
            let took = t.elapsed();
            e.stop();
            took
        })
        .collect();
    starts.sort();
    let engine_start = starts[2];
    let without = engine_start.saturating_sub(start.0);
    let pct = |d: Duration, of: Duration| 100.0 * d.as_secs_f64() / of.as_secs_f64();
    println!(
        "store of {} MB, {headers} headers; LMDB open alone {lmdb_only:?}; LmdbStore::open \
         {open:?}; ChainDb::load {load:?}; Engine::start {engine_start:?}",
        len >> 20
    );
    for (name, (t, pages)) in [
        ("quick", quick),
        ("branches", branches),
        ("start (what open runs)", start),
        ("full", full),
    ] {
        println!(
            "  check {name}: {t:?}, {pages} pages; {:.1}% of Engine::start without it, {:.1}% \
             of ChainDb::load",
            pct(t, without),
            pct(t, load)
        );
    }
    let info = check_data_file(&dir, CheckDepth::Full).unwrap().unwrap();
    for t in &info.trees {
        println!("  {t:?}");
    }
    if std::env::var_os("BSN_START_TIME_COLD").is_none() {
        return;
    }
    // The same with the file out of the page cache (dropped before each run): the check then
    // reads from the disk what the start would read after it anyway (the header table), and
    // what it would not (the height index, the block table's leaves).
    let data = dir.join("data.mdb");
    let cold = |f: &mut dyn FnMut() -> Duration| {
        let mut v: Vec<Duration> = (0..3).map(|_| f()).collect();
        v.sort();
        v[1]
    };
    let cold_check = cold(&mut || {
        evict(&data);
        let t = Instant::now();
        check_data_file(&dir, CheckDepth::Start).unwrap().unwrap();
        t.elapsed()
    });
    let cold_load = cold(&mut || {
        let s = LmdbStore::open(&dir, &LmdbOptions::default()).unwrap();
        evict(&data);
        let t = Instant::now();
        ChainDb::load(&s, &params).unwrap();
        t.elapsed()
    });
    let cold_start = cold(&mut || {
        let c = Config::builder(Network::Regtest)
            .data_dir(&dir)
            .no_listen()
            .pin_threads(false)
            .build()
            .unwrap();
        evict(&data);
        let t = Instant::now();
        let e = Engine::start(c).unwrap();
        let took = t.elapsed();
        e.stop();
        took
    });
    println!(
        "cold: the check {cold_check:?}; ChainDb::load without it before {cold_load:?}; \
         Engine::start (the check, then the rest from the cache it filled) {cold_start:?}"
    );
}

/// Drops the file's pages from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`).
fn evict(file: &Path) {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn posix_fadvise(fd: i32, offset: i64, len: i64, advice: i32) -> i32;
    }
    let f = std::fs::File::open(file).unwrap();
    // SAFETY: a plain libc call on an open descriptor
    let r = unsafe { posix_fadvise(f.as_raw_fd(), 0, 0, 4) };
    assert_eq!(r, 0, "posix_fadvise");
}
