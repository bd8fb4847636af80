//! Store benchmarks, each a ratio against a plain in-memory `std::collections::HashMap` doing the
//! equivalent work in the same run:
//!
//! 1. Header inserts per second, in batches of 2,000 (one `headers` message, one transaction):
//!    a synthetic regtest chain with real proof of work (generated up front, not timed) through
//!    `ChainDb::insert_headers` + `LmdbStore::write`, through `StoreWriter` (submit every batch,
//!    then one final flush), and the parts alone: the `HeaderTree`, `ChainDb` building batches
//!    without writing them, and `ChainDb` into a `MemoryStore`; and "what-if" rows writing the
//!    same prebuilt batches with other transaction sizes and key orders. Baseline: a
//!    `HashMap<[u8; 32], [u8; 117]>` of the same records (hash computed the same way, double
//!    SHA-256 of the 80 bytes; the record is header, height, work, status like the real one).
//! 2. Block writes in MB/s for ~1 MB blocks (the real block 413567 from `$BSN_TEST_DATA` or
//!    `<crate>/../shared/data`, under a different key per copy; a synthetic 1 MB buffer when it
//!    is absent, said loudly), one per transaction and ten per transaction. Baseline: a
//!    `HashMap<[u8; 32], Vec<u8>>` inserting a `Vec` copy of each block (a `Bytes` clone would be
//!    a reference count, not a copy, while LMDB does copy the bytes).
//! 3. Lookups per second of random headers of the chain: by hash through `Store::get` (copies
//!    the record out) and `Store::with_value` (zero-copy), by height through `stored_hash_at`,
//!    and the in-memory tree (`HeaderTree::get`, `hash_at`). Baselines: `HashMap` get by hash,
//!    and a `HashMap<u32, [u8; 32]>` by height.
//!
//! The LMDB store is opened with the engine's options (`LmdbOptions::default()`: no fsync per
//! commit, 64 MiB map that doubles when full) in a fresh directory under the system temp dir,
//! removed at the end. Every timed part runs `reps` times, interleaved with its baseline, and
//! the best (fastest) run of each row is reported.
//!
//! Run: `cargo bench --bench store` (about 30 s; add `-- --quick` for small sizes, about 1 s;
//! section names `headers`, `lookups`, `blocks` after `--` pick sections).
//!
//! Measured on the dev machine, a shared 2-core VM (Xeon with SHA-NI, noisy: expect ±20-30%
//! between runs), 200,000 headers, best of 3 per run.
//!
//! Header inserts after keying header records by height then hash (`store::chain::header_key`)
//! and carving every key and value of a batch out of one buffer, three runs:
//!
//! ```text
//!                                                  run 1        run 2        run 3
//!   ChainDb::insert_headers, batch not written   1,316,845    1,317,107    1,196,605
//!   ChainDb + LmdbStore::write (1 txn per batch)    768,849      800,486      720,740
//!   ChainDb + StoreWriter (submit all + flush)    1,060,450    1,250,953    1,086,139   <- engine path
//! ```
//!
//! The engine writes through `StoreWriter`, so building a batch and committing the previous one
//! overlap on the two cores: 1.06-1.25 million headers a second, at the 1 M/s target. Done in
//! one thread (build, then write) it is 0.72-0.80 M/s. In the same runs the `HashMap` baseline
//! did 1.37-1.67 M/s and `LmdbStore::write` alone 1.76-1.92 M/s; the what-if row "records keyed
//! by hash alone (old layout)" ran at 0.33-0.42 M/s, writing 3,543 bytes of pages per 117-byte
//! record against 246 with the height-first key.
//!
//! Before those two changes (records keyed by hash, one allocation per key and value), two runs:
//!
//! ```text
//!                                                     run A        run B   time vs base (A / B)
//! 1. header inserts, batches of 2,000                 headers/s
//!   HashMap<[u8;32],[u8;117]> insert (baseline)      1,227,626    1,473,847    baseline
//!   HeaderTree::insert alone (no store)              1,336,446    1,315,013    0.92x / 1.12x
//!   ChainDb::insert_headers, batch not written         867,182      900,702    1.42x / 1.64x
//!   ChainDb + MemoryStore::write                       431,093      510,510    2.85x / 2.89x
//!   ChainDb + LmdbStore::write (1 txn per batch)       218,626      246,574    5.62x / 5.98x
//!     of which LmdbStore::write alone                  296,099      340,087    4.15x / 4.33x
//!   ChainDb + StoreWriter (submit all + flush)         266,644      307,955    4.60x / 4.79x
//! 2. block writes (999,887-byte block 413567)         MB/s
//!   HashMap<[u8;32],Vec<u8>> Vec copy (baseline)         7,172        7,502    baseline
//!   LMDB put_block, 1 block per txn                      2,424        2,838    2.96x / 2.64x
//!   LMDB put_block, 10 blocks per txn                    1,774        2,566    4.04x / 2.92x
//! 3. lookups of random headers                        lookups/s
//!   HashMap get by hash, record copied (baseline)    6,121,243    5,130,255    baseline
//!   LMDB Store::get (copy out)                         915,125      980,790    6.69x / 5.23x
//!   LMDB Store::with_value (zero-copy)                 913,086    1,039,554    6.70x / 4.94x
//!   HeaderTree::get by hash (in memory)             49,926,902   43,962,235    0.12x / 0.12x
//!   HashMap<u32,[u8;32]> get by height (baseline)   23,487,347   22,219,850    baseline
//!   LMDB stored_hash_at by height                    1,273,313    1,302,557   18.45x / 17.06x
//!   HeaderTree::hash_at by height (in memory)      157,945,745  158,824,445    0.15x / 0.14x
//! ```
//!
//! Where the time went with hash keys: ~75% `LmdbStore::write`, growing with the store (~1.1-1.6
//! µs per header in the first batches, ~3.8-5.2 µs in the last), because 2,000 random keys per
//! batch touch random leaf pages and LMDB's copy-on-write rewrites each of them.
//!
//! Blocks: LMDB copies each block twice (into a malloc'd overflow page, then `write` into the
//! page cache at commit: ~50% of the time in the kernel copy), the baseline once; best runs are
//! 2.4-2.8 GB/s. Ten blocks per transaction is not faster, and has outliers of 0.5-1 s for 200
//! MB (likely the allocator returning the 10 MB of pages to the OS between transactions, so the
//! next one faults them in again; not verified). The final `sync` (fsync of 200 MB) takes
//! ~0.1 s on this VM's disk. Note the baseline's best run reuses heap memory freed by the run
//! before (no page faults), so it is close to `memcpy` speed.
//!
//! Lookups: each LMDB read opens a read transaction (~10% of the time) and descends the B-tree
//! (most of the rest, cache misses on a 75 MB file); zero-copy `with_value` saves little for a
//! 117-byte record. The in-memory tree answers the same queries 45-120 times faster, so hot
//! paths should ask the tree, not the store.

use bsn::chain::HeaderTree;
use bsn::store::chain::{header_key, stored_hash_at, ChainDb};
use bsn::store::lmdb::{LmdbOptions, LmdbStore};
use bsn::store::memory::MemoryStore;
use bsn::store::records::put_block;
use bsn::store::writer::StoreWriter;
use bsn::store::{Batch, Op, Store, Table};
use bsn::wire::{BlockHeader, Hash256};
use bsn::{Network, NetworkParams};
use bytes::Bytes;
use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Headers per batch: one full `headers` message.
const BATCH: usize = 2_000;
/// Record length of the baseline: header, height, work, status (as `bsn::chain::RECORD_LEN`).
const REC: usize = 117;
/// The issue's target for header inserts.
const TARGET_HEADERS_PER_SEC: f64 = 1_000_000.0;

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("bsn-bench-store-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &Path) -> LmdbStore {
    LmdbStore::open(dir, &LmdbOptions::default()).expect("open LMDB store")
}

/// Bytes this process has passed to write system calls (LMDB writes its dirty pages with
/// `pwrite`/`writev` at commit), from `/proc/self/io`; 0 where unavailable.
fn io_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// One row of the final table.
struct Row {
    section: &'static str,
    name: String,
    unit: &'static str,
    /// Best (highest) rate seen.
    rate: f64,
    /// The row's baseline (by name), or none for a baseline.
    base: Option<&'static str>,
}

#[derive(Default)]
struct Results {
    rows: Vec<Row>,
}

impl Results {
    /// Records a measurement of `n` units in `t`, keeping the best of repeated runs.
    fn add(
        &mut self,
        section: &'static str,
        name: &str,
        unit: &'static str,
        n: f64,
        t: Duration,
        base: Option<&'static str>,
    ) {
        let rate = n / t.as_secs_f64();
        match self.rows.iter_mut().find(|r| r.name == name) {
            Some(r) => r.rate = r.rate.max(rate),
            None => self.rows.push(Row {
                section,
                name: name.to_string(),
                unit,
                rate,
                base,
            }),
        }
    }

    fn rate(&self, name: &str) -> f64 {
        self.rows
            .iter()
            .find(|r| r.name == name)
            .map_or(f64::NAN, |r| r.rate)
    }

    fn print(&self) {
        println!();
        println!(
            "{:<52} {:>14} {:<10} {:>12}",
            "", "best rate", "unit", "time vs base"
        );
        println!(
            "(best of the runs; time vs base = the row's time over its baseline's for the same \
             work: above 1 is slower)"
        );
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        rows.sort_by_key(|r| r.section);
        let mut section = "";
        for r in rows {
            if r.section != section {
                section = r.section;
                println!("{section}");
            }
            let ratio = match r.base {
                Some(b) => format!("{:.2}x", self.rate(b) / r.rate),
                None => "baseline".to_string(),
            };
            println!(
                "  {:<50} {:>14} {:<10} {:>12}",
                r.name,
                fmt_rate(r.rate),
                r.unit,
                ratio
            );
        }
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        let s = format!("{:.0}", r);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{r:.1}")
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Header inserts

/// A regtest chain of `n` headers on genesis with real proof of work.
fn make_chain(params: &NetworkParams, n: usize) -> Vec<BlockHeader> {
    let mut v: Vec<BlockHeader> = Vec::with_capacity(n);
    let mut prev = params.genesis;
    for i in 0..n {
        let mut h = BlockHeader {
            version: 4,
            prev_hash: prev.hash(),
            merkle_root: Hash256::sha256d(&(i as u64).to_le_bytes()),
            time: prev.time + 600,
            bits: 0x207fffff,
            nonce: 0,
        };
        while !h.meets_own_target() {
            h.nonce += 1;
        }
        v.push(h);
        prev = h;
    }
    v
}

type BaseMap = HashMap<[u8; 32], [u8; REC]>;

/// Baseline: the same records into a `HashMap`: hash, height, cumulative work, status.
fn base_headers(headers: &[BlockHeader]) -> (Duration, BaseMap) {
    let t = Instant::now();
    let mut m: BaseMap = HashMap::new();
    let mut work: u128 = 0;
    for (height, h) in (1u32..).zip(headers) {
        let hash = h.hash();
        work += 2;
        let mut r = [0u8; REC];
        r[..80].copy_from_slice(&h.to_array());
        r[80..84].copy_from_slice(&height.to_le_bytes());
        r[100..116].copy_from_slice(&work.to_be_bytes());
        r[116] = 1;
        m.insert(hash.0, r);
    }
    (t.elapsed(), m)
}

fn tree_only(params: &NetworkParams, headers: &[BlockHeader]) -> Duration {
    let t = Instant::now();
    let mut tree = HeaderTree::new(params);
    for part in headers.chunks(BATCH) {
        for h in part {
            tree.insert(*h).expect("valid header");
        }
    }
    let d = t.elapsed();
    assert_eq!(tree.height() as usize, headers.len());
    d
}

fn chaindb_batches_only(params: &NetworkParams, headers: &[BlockHeader]) -> Duration {
    let t = Instant::now();
    let mut db = ChainDb::new(params);
    for part in headers.chunks(BATCH) {
        let mut b = Batch::new();
        let u = db.insert_headers(part, &mut b);
        assert!(u.error.is_none());
        black_box(&b);
    }
    t.elapsed()
}

fn chaindb_memory(params: &NetworkParams, headers: &[BlockHeader]) -> Duration {
    let t = Instant::now();
    let s = MemoryStore::new();
    let mut db = ChainDb::new(params);
    for part in headers.chunks(BATCH) {
        let mut b = Batch::new();
        db.insert_headers(part, &mut b);
        s.write(&b).expect("memory write");
    }
    t.elapsed()
}

/// Where the time of an LMDB header load went.
struct LmdbRun {
    total: Duration,
    insert: Duration,
    write: Duration,
    /// `LmdbStore::write` time of each batch, in order.
    per_batch: Vec<Duration>,
    /// Bytes written to the data file by the commits.
    written: u64,
    disk: u64,
    store: LmdbStore,
    db: ChainDb,
}

fn chaindb_lmdb(params: &NetworkParams, headers: &[BlockHeader], dir: &Path) -> LmdbRun {
    let _ = std::fs::remove_dir_all(dir);
    let store = open(dir);
    let mut db = ChainDb::new(params);
    let (mut insert, mut write) = (Duration::ZERO, Duration::ZERO);
    let mut per_batch = Vec::new();
    let w0 = io_written();
    let t = Instant::now();
    for part in headers.chunks(BATCH) {
        let t1 = Instant::now();
        let mut b = Batch::new();
        let u = db.insert_headers(part, &mut b);
        assert!(u.error.is_none());
        let t2 = Instant::now();
        store.write(&b).expect("LMDB write");
        let t3 = Instant::now();
        insert += t2 - t1;
        write += t3 - t2;
        per_batch.push(t3 - t2);
    }
    let total = t.elapsed();
    let written = io_written() - w0;
    assert_eq!(store.count(Table::Headers).unwrap() as usize, headers.len());
    LmdbRun {
        total,
        insert,
        write,
        per_batch,
        written,
        disk: dir_bytes(dir),
        store,
        db,
    }
}

/// The store batches `ChainDb` makes for `headers`, 2,000 headers each (not timed).
fn prebuilt_batches(params: &NetworkParams, headers: &[BlockHeader]) -> Vec<Batch> {
    let mut db = ChainDb::new(params);
    headers
        .chunks(BATCH)
        .map(|part| {
            let mut b = Batch::new();
            db.insert_headers(part, &mut b);
            b
        })
        .collect()
}

/// The same batches with the header records keyed by hash alone (the layout before
/// `store::chain::header_key`): every batch's keys land on random leaf pages. Shows what the
/// key order costs.
fn keyed_by_hash(batches: &[Batch]) -> Vec<Batch> {
    batches
        .iter()
        .map(|b| Batch {
            ops: b
                .ops
                .iter()
                .map(|op| match op {
                    Op::Put(Table::Headers, key, v) => {
                        Op::Put(Table::Headers, key.slice(4..), v.clone())
                    }
                    op => op.clone(),
                })
                .collect(),
        })
        .collect()
}

/// `per_txn` prebuilt batches merged into each transaction; times the writes only and returns
/// the bytes the commits wrote.
fn lmdb_prebuilt(batches: &[Batch], per_txn: usize, dir: &Path) -> (Duration, u64) {
    let _ = std::fs::remove_dir_all(dir);
    let store = open(dir);
    let merged: Vec<Batch> = batches
        .chunks(per_txn)
        .map(|c| {
            let mut m = Batch::new();
            for b in c {
                m.extend(b.clone());
            }
            m
        })
        .collect();
    let w0 = io_written();
    let t = Instant::now();
    for b in &merged {
        store.write(b).expect("LMDB write");
    }
    let d = t.elapsed();
    let written = io_written() - w0;
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
    (d, written)
}

/// Through the writer thread: submit every batch, then one flush (which also fsyncs once).
fn chaindb_writer(
    params: &NetworkParams,
    headers: &[BlockHeader],
    dir: &Path,
) -> (Duration, Duration) {
    let _ = std::fs::remove_dir_all(dir);
    let store: Arc<dyn Store> = Arc::new(open(dir));
    let w = StoreWriter::start(store.clone(), Duration::from_secs(1)).expect("writer thread");
    let mut db = ChainDb::new(params);
    let t = Instant::now();
    for part in headers.chunks(BATCH) {
        let mut b = Batch::new();
        db.insert_headers(part, &mut b);
        w.submit(b);
    }
    let submitted = t.elapsed();
    w.flush().expect("flush");
    let total = t.elapsed();
    w.stop();
    assert_eq!(w.failures(), 0);
    assert_eq!(store.count(Table::Headers).unwrap() as usize, headers.len());
    (total, submitted)
}

// ---------------------------------------------------------------------------------------------
// 2. Block writes

fn data_dir() -> PathBuf {
    match std::env::var_os("BSN_TEST_DATA") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
    }
}

/// The real block 413567, or 1 MB of synthetic bytes.
fn load_block() -> (Bytes, String) {
    let path = data_dir().join("bitcoin-core-bench/block413567.raw");
    match std::fs::read(&path) {
        Ok(b) => (
            Bytes::from(b),
            format!("real block 413567 ({})", path.display()),
        ),
        Err(e) => {
            eprintln!();
            eprintln!("==================================================================");
            eprintln!(
                "!!! block413567.raw NOT USED: {} not readable: {e}",
                path.display()
            );
            eprintln!("!!! block writes run on SYNTHETIC 1 MB buffers instead");
            eprintln!("==================================================================");
            eprintln!();
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let v: Vec<u8> = (0..1_000_000)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            (Bytes::from(v), "SYNTHETIC 1 MB buffer".to_string())
        }
    }
}

/// The key of copy `i`: the block's hash with the copy number folded in.
fn block_key(base: &Hash256, i: usize) -> Hash256 {
    let mut k = base.0;
    for (a, b) in k.iter_mut().zip((i as u64).to_le_bytes()) {
        *a ^= b;
    }
    Hash256(k)
}

fn base_blocks(raw: &Bytes, base: &Hash256, n: usize) -> Duration {
    let t = Instant::now();
    let mut m: HashMap<[u8; 32], Vec<u8>> = HashMap::new();
    for i in 0..n {
        m.insert(block_key(base, i).0, raw.to_vec());
    }
    let d = t.elapsed();
    assert_eq!(m.len(), n);
    drop(black_box(m));
    d
}

/// Blocks into a fresh LMDB store, `per_txn` to a transaction; returns the write time and the
/// time of the final `sync` (fsync) apart.
fn lmdb_blocks(
    raw: &Bytes,
    base: &Hash256,
    n: usize,
    per_txn: usize,
    dir: &Path,
) -> (Duration, Duration) {
    let _ = std::fs::remove_dir_all(dir);
    let store = open(dir);
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let mut b = Batch::new();
        for j in i..(i + per_txn).min(n) {
            put_block(&mut b, &block_key(base, j), raw.clone());
        }
        store.write(&b).expect("LMDB write");
        i += per_txn;
    }
    let d = t.elapsed();
    let t = Instant::now();
    store.sync().expect("sync");
    let s = t.elapsed();
    assert_eq!(store.count(Table::Blocks).unwrap() as usize, n);
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
    (d, s)
}

// ---------------------------------------------------------------------------------------------
// 3. Lookups

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn time_lookups(mut f: impl FnMut() -> u64) -> Duration {
    let t = Instant::now();
    black_box(f());
    t.elapsed()
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let quick = args.iter().any(|a| a == "--quick" || a == "--test");
    // Optional section names (headers, lookups, blocks) pick what to run; none runs all.
    // Lookups read the store of the header inserts, so they run those too.
    let picked: Vec<&str> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|s| s.as_str())
        .collect();
    let run_lookups = picked.is_empty() || picked.contains(&"lookups");
    let run_headers = run_lookups || picked.contains(&"headers");
    let run_blocks = picked.is_empty() || picked.contains(&"blocks");
    let (n_headers, n_blocks, n_lookups, reps) = if quick {
        (20_000, 20, 100_000, 1)
    } else {
        (200_000, 200, 1_000_000, 3)
    };
    let mut res = Results::default();
    let parts = if run_headers {
        let n_lookups = if run_lookups { n_lookups } else { 0 };
        bench_headers(n_headers, n_lookups, reps, &mut res)
    } else {
        Vec::new()
    };
    if run_blocks {
        bench_blocks(n_blocks, reps, &mut res);
    }
    report(&res, &parts);
}

/// Sections 1 and 3; returns (total, insert_headers, write) of each LMDB header load.
fn bench_headers(
    n_headers: usize,
    n_lookups: usize,
    reps: usize,
    res: &mut Results,
) -> Vec<(Duration, Duration, Duration)> {
    let params = Network::Regtest.params();
    let t = Instant::now();
    let headers = make_chain(&params, n_headers);
    println!(
        "generated {n_headers} regtest headers with proof of work in {:.2} s (not timed below)",
        t.elapsed().as_secs_f64()
    );
    let dir = TempDir::new("headers");
    let s1 = "1. header inserts, batches of 2,000";
    let hb = "HashMap<[u8;32],[u8;117]> insert (baseline)";
    let nh = n_headers as f64;
    let mut last = None;
    let mut parts = Vec::new();
    let by_height = prebuilt_batches(&params, &headers);
    let by_hash = keyed_by_hash(&by_height);
    let pdir = TempDir::new("prebuilt");
    for rep in 0..reps {
        let (d, m) = base_headers(&headers);
        res.add(s1, hb, "headers/s", nh, d, None);
        drop(m);
        res.add(
            s1,
            "HeaderTree::insert alone (no store)",
            "headers/s",
            nh,
            tree_only(&params, &headers),
            Some(hb),
        );
        res.add(
            s1,
            "ChainDb::insert_headers, batch built, not written",
            "headers/s",
            nh,
            chaindb_batches_only(&params, &headers),
            Some(hb),
        );
        res.add(
            s1,
            "ChainDb + MemoryStore::write",
            "headers/s",
            nh,
            chaindb_memory(&params, &headers),
            Some(hb),
        );
        let run = chaindb_lmdb(&params, &headers, &dir.0);
        res.add(
            s1,
            "ChainDb + LmdbStore::write (1 txn per batch)",
            "headers/s",
            nh,
            run.total,
            Some(hb),
        );
        res.add(
            s1,
            "  of which LmdbStore::write alone",
            "headers/s",
            nh,
            run.write,
            Some(hb),
        );
        println!(
            "rep {}: LMDB header load {:.3} s = insert_headers {:.3} s + write {:.3} s; \
             data file {:.1} MB ({:.0} B/header); commits wrote {:.0} MB ({:.0} B/header)",
            rep + 1,
            run.total.as_secs_f64(),
            run.insert.as_secs_f64(),
            run.write.as_secs_f64(),
            run.disk as f64 / 1e6,
            run.disk as f64 / nh,
            run.written as f64 / 1e6,
            run.written as f64 / nh
        );
        let k = (run.per_batch.len() / 10).max(1);
        let per_header = |d: &[Duration]| {
            d.iter().sum::<Duration>().as_secs_f64() * 1e9 / (d.len() * BATCH) as f64
        };
        println!(
            "rep {}: LmdbStore::write per header: {:.0} ns in the first {k} batches, {:.0} ns in \
             the last {k}",
            rep + 1,
            per_header(&run.per_batch[..k]),
            per_header(&run.per_batch[run.per_batch.len() - k..])
        );
        parts.push((run.total, run.insert, run.write));
        let wdir = TempDir::new("writer");
        let (total, submitted) = chaindb_writer(&params, &headers, &wdir.0);
        res.add(
            s1,
            "ChainDb + StoreWriter (submit all + final flush)",
            "headers/s",
            nh,
            total,
            Some(hb),
        );
        println!(
            "rep {}: StoreWriter: all submitted after {:.3} s, flushed (incl. one fsync) at {:.3} s",
            rep + 1,
            submitted.as_secs_f64(),
            total.as_secs_f64()
        );
        for (name, batches, per_txn) in [
            (
                "what-if: LmdbStore::write of prebuilt batches alone",
                &by_height,
                1,
            ),
            (
                "what-if: same, 10 batches (20,000 headers) per txn",
                &by_height,
                10,
            ),
            (
                "what-if: same, records keyed by hash alone (old layout)",
                &by_hash,
                1,
            ),
        ] {
            let (d, written) = lmdb_prebuilt(batches, per_txn, &pdir.0);
            res.add(s1, name, "headers/s", nh, d, Some(hb));
            println!(
                "rep {}: {name}: {:.3} s, commits wrote {:.0} B/header",
                rep + 1,
                d.as_secs_f64(),
                written as f64 / nh
            );
        }
        last = Some(run);
    }
    let run = last.expect("at least one rep");
    if n_lookups == 0 {
        return parts;
    }

    // 3. Lookups (on the store of the last LMDB run; done before the blocks so the page cache
    // holds what it held after the header load).
    let s3 = "3. lookups of random headers";
    let (_, base_map) = base_headers(&headers);
    let height_map: HashMap<u32, [u8; 32]> = (0..=n_headers as u32)
        .map(|h| (h, run.db.tree().hash_at(h).expect("height on best chain").0))
        .collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let picks: Vec<(Hash256, u32)> = (0..n_lookups)
        .map(|_| {
            let i = (xorshift(&mut seed) % n_headers as u64) as usize;
            (headers[i].hash(), i as u32 + 1)
        })
        .collect();
    let store: &dyn Store = &run.store;
    let tree = run.db.tree();
    let nl = n_lookups as f64;
    let (bh, bht) = (
        "HashMap get by hash, record copied (baseline)",
        "HashMap<u32,[u8;32]> get by height (baseline)",
    );
    for _ in 0..reps {
        let d = time_lookups(|| {
            let mut acc = 0u64;
            for (h, _) in &picks {
                let r: [u8; REC] = *base_map.get(&h.0).expect("present");
                acc += u64::from(r[80]);
            }
            acc
        });
        res.add(s3, bh, "lookups/s", nl, d, None);
        let d = time_lookups(|| {
            let mut acc = 0u64;
            for (h, height) in &picks {
                let v = store
                    .get(Table::Headers, &header_key(*height, h))
                    .unwrap()
                    .expect("present");
                acc += u64::from(v[80]);
            }
            acc
        });
        res.add(
            s3,
            "LMDB Store::get by height+hash key (copy out)",
            "lookups/s",
            nl,
            d,
            Some(bh),
        );
        let d = time_lookups(|| {
            let mut acc = 0u64;
            for (h, height) in &picks {
                store
                    .with_value(Table::Headers, &header_key(*height, h), &mut |v| {
                        acc += u64::from(v.expect("present")[80])
                    })
                    .unwrap();
            }
            acc
        });
        res.add(
            s3,
            "LMDB Store::with_value by height+hash key (zero-copy)",
            "lookups/s",
            nl,
            d,
            Some(bh),
        );
        let d = time_lookups(|| {
            let mut acc = 0u64;
            for (h, _) in &picks {
                acc += u64::from(tree.get(h).expect("present").height);
            }
            acc
        });
        res.add(
            s3,
            "HeaderTree::get by hash (in memory)",
            "lookups/s",
            nl,
            d,
            Some(bh),
        );
        let d = time_lookups(|| {
            let mut acc = 0u64;
            for (_, height) in &picks {
                acc += u64::from(height_map.get(height).expect("present")[0]);
            }
            acc
        });
        res.add(s3, bht, "lookups/s", nl, d, None);
        let d = time_lookups(|| {
            let mut acc = 0u64;
            for (_, height) in &picks {
                acc += u64::from(stored_hash_at(store, *height).unwrap().expect("present").0[0]);
            }
            acc
        });
        res.add(
            s3,
            "LMDB stored_hash_at by height",
            "lookups/s",
            nl,
            d,
            Some(bht),
        );
        let d = time_lookups(|| {
            let mut acc = 0u64;
            for (_, height) in &picks {
                acc += u64::from(tree.hash_at(*height).expect("present").0[0]);
            }
            acc
        });
        res.add(
            s3,
            "HeaderTree::hash_at by height (in memory)",
            "lookups/s",
            nl,
            d,
            Some(bht),
        );
    }
    // spot check: what the store holds is what the tree holds
    for (h, height) in picks.iter().take(1000) {
        assert_eq!(stored_hash_at(store, *height).unwrap(), Some(*h));
    }
    drop(base_map);
    drop(run);
    drop(dir);
    parts
}

/// Section 2.
fn bench_blocks(n_blocks: usize, reps: usize, res: &mut Results) {
    let (raw, what) = load_block();
    let base = Hash256::sha256d(&raw[..80.min(raw.len())]);
    let mb = (raw.len() * n_blocks) as f64 / 1e6;
    let s2 = "2. block writes";
    let bb = "HashMap<[u8;32],Vec<u8>> insert of a Vec copy (baseline)";
    println!(
        "blocks: {n_blocks} copies of the {what}, {} bytes each",
        raw.len()
    );
    let bdir = TempDir::new("blocks");
    for rep in 0..reps {
        res.add(s2, bb, "MB/s", mb, base_blocks(&raw, &base, n_blocks), None);
        for per in [1, 10] {
            let (d, s) = lmdb_blocks(&raw, &base, n_blocks, per, &bdir.0);
            res.add(
                s2,
                if per == 1 {
                    "LMDB put_block, 1 block per txn"
                } else {
                    "LMDB put_block, 10 blocks per txn"
                },
                "MB/s",
                mb,
                d,
                Some(bb),
            );
            println!(
                "rep {}: {per} per txn: {:.3} s of writes, then sync (fsync of {mb:.0} MB) {:.3} s",
                rep + 1,
                d.as_secs_f64(),
                s.as_secs_f64()
            );
        }
    }
    drop(bdir);
}

fn report(res: &Results, parts: &[(Duration, Duration, Duration)]) {
    res.print();
    if parts.is_empty() {
        return;
    }

    let lmdb = res.rate("ChainDb + LmdbStore::write (1 txn per batch)");
    let writer = res.rate("ChainDb + StoreWriter (submit all + final flush)");
    println!();
    println!(
        "target >= {} headers/s: ChainDb+LMDB {} headers/s -> {}; through StoreWriter {} -> {}",
        fmt_rate(TARGET_HEADERS_PER_SEC),
        fmt_rate(lmdb),
        if lmdb >= TARGET_HEADERS_PER_SEC {
            "MET"
        } else {
            "NOT MET"
        },
        fmt_rate(writer),
        if writer >= TARGET_HEADERS_PER_SEC {
            "MET"
        } else {
            "NOT MET"
        },
    );
    let (t, i, w) = parts
        .iter()
        .min_by_key(|p| p.0)
        .copied()
        .expect("at least one rep");
    println!(
        "best LMDB header load: {:.0}% in ChainDb::insert_headers (tree + records), {:.0}% in LmdbStore::write",
        100.0 * i.as_secs_f64() / t.as_secs_f64(),
        100.0 * w.as_secs_f64() / t.as_secs_f64()
    );
}
