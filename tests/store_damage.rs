//! A damaged LMDB data file is refused at start with a message that says what is wrong, never a
//! bus error: truncated to 8 KiB, to half, cut below its two header pages, a tree page
//! overwritten, both header pages zeroed. Each case is checked on the library
//! (`LmdbStore::open`) and on the real binary (`bsn node`), which must exit with an error code,
//! not die of a signal. An undamaged store opens and the node starts on it.

mod common;

use bsn::store::chain::ChainDb;
use bsn::store::lmdb::{
    check_data_file, CheckDepth, DataFileInfo, LmdbOptions, LmdbStore, TreeName,
};
use bsn::store::records::{put_block, put_peer, PeerRecord};
use bsn::store::{Batch, Store, StoreError, Table};
use bsn::wire::{BlockHeader, Hash256};
use bsn::Network;
use common::TempDir;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the binary may take to refuse a store (it is killed after, and the test fails).
const DEADLINE: Duration = Duration::from_secs(60);
const HEADERS: usize = 3000;

/// A regtest header on `prev` with real proof of work.
fn mine(prev: &BlockHeader, salt: u32) -> BlockHeader {
    let mut h = BlockHeader {
        version: 4,
        prev_hash: prev.hash(),
        merkle_root: Hash256::sha256d(&salt.to_le_bytes()),
        time: prev.time + 600,
        bits: 0x207fffff,
        nonce: 0,
    };
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    h
}

/// Fills the data dir `dir` with real content, as the engine keeps it: a regtest header chain
/// with its height index, blocks big enough for overflow pages, known peers. Returns what the
/// full check reads of it (several hundred KB, a header table of more than one level).
fn make_store(dir: &Path) -> DataFileInfo {
    let params = Network::Regtest.params();
    {
        let s = LmdbStore::open(dir, &LmdbOptions::default()).unwrap();
        let mut db = ChainDb::new(&params);
        let mut prev = params.genesis;
        let mut headers = Vec::with_capacity(HEADERS);
        for i in 0..HEADERS {
            prev = mine(&prev, i as u32);
            headers.push(prev);
        }
        for part in headers.chunks(1000) {
            let mut b = Batch::new();
            let u = db.insert_headers(part, &mut b);
            assert!(u.error.is_none(), "{:?}", u.error);
            s.write(&b).unwrap();
        }
        let mut b = Batch::new();
        for (i, h) in headers.iter().take(12).enumerate() {
            put_block(&mut b, &h.hash(), vec![i as u8; 30_000].into());
        }
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

/// Runs `bsn node` on the data dir until it exits (killed at the deadline, which fails the
/// test): its exit status and stderr.
fn run_node(dir: &Path) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bsn"))
        .args(["node", "--no-listen", "--no-pin", "--data-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bsn node on a damaged store still runs after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
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

    let (status, err) = run_node(dir);
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

#[test]
fn an_undamaged_store_opens_and_the_node_starts() {
    let dir = TempDir::new("damage-none");
    let info = make_store(&dir.0);
    let quick = check_data_file(&dir.0, CheckDepth::Quick).unwrap().unwrap();
    assert_eq!((quick.txnid, quick.last_page), (info.txnid, info.last_page));
    {
        let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
        assert_eq!(s.count(Table::Headers).unwrap(), HEADERS as u64);
        assert_eq!(s.count(Table::Blocks).unwrap(), 12);
    }
    // the node starts on it (its first line says so), then is killed
    let mut child = Command::new(env!("CARGO_BIN_EXE_bsn"))
        .args(["node", "--no-listen", "--no-pin", "--data-dir"])
        .arg(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(DEADLINE);
    let _ = child.kill();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let line = line.unwrap_or_else(|_| panic!("bsn node said nothing in {DEADLINE:?}: {err}"));
    assert!(line.starts_with("bsn node:"), "{line:?} {status:?} {err}");
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
fn a_tree_page_overwritten() {
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
    data_file(&dir.0)
        .write_all_at(&vec![0xff; info.page_size as usize], root * info.page_size)
        .unwrap();
    refused(
        &dir.0,
        &[&format!(
            "page {root} (table 'headers') is overwritten or misplaced: its header says it is \
             page 18446744073709551615"
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

/// What the check costs against opening a store of about 1 GB (hot page cache). Run with
/// `cargo test --release --test store_damage -- --ignored --nocapture open_time`; the size in
/// MB from `BSN_OPEN_TIME_MB` (default 1024).
#[test]
#[ignore]
fn open_time_of_a_big_store() {
    let mb: u64 = std::env::var("BSN_OPEN_TIME_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = TempDir::new("damage-time");
    let t = Instant::now();
    {
        let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
        // a fifth in small records (headers and the height index), the rest in 400 KB blocks
        let records = mb * 1024 * 1024 / 5 / 200;
        let blocks = mb * 1024 * 1024 * 4 / 5 / 400_000;
        let per = 20_000u64;
        let mut n = 0u64;
        let mut k = 0u64;
        while n < records || k < blocks {
            let mut b = Batch::new();
            for i in n..(n + per).min(records) {
                let mut key = (i as u32).to_be_bytes().to_vec();
                key.extend_from_slice(&Hash256::sha256d(&i.to_le_bytes()).0);
                b.put(Table::Headers, key, vec![i as u8; 117]);
                b.put(
                    Table::Heights,
                    (i as u32).to_be_bytes().to_vec(),
                    vec![1u8; 32],
                );
            }
            n = (n + per).min(records);
            for j in k..(k + 50).min(blocks) {
                b.put(
                    Table::Blocks,
                    j.to_be_bytes().to_vec(),
                    vec![j as u8; 400_000],
                );
            }
            k = (k + 50).min(blocks);
            s.write(&b).unwrap();
        }
        s.sync().unwrap();
    }
    let len = std::fs::metadata(dir.0.join("data.mdb")).unwrap().len();
    println!("store of {} MB written in {:?}", len >> 20, t.elapsed());

    let median = |f: &mut dyn FnMut()| {
        let mut v: Vec<Duration> = (0..21)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect();
        v.sort();
        v[v.len() / 2]
    };
    // LMDB alone: the environment and the tables, as LmdbStore::open does without the check
    let lmdb_only = median(&mut || {
        let env = lmdb::Environment::new()
            .set_max_dbs(Table::ALL.len() as u32 + 2)
            .set_max_readers(512)
            .set_map_size(64 << 20)
            .set_flags(lmdb::EnvironmentFlags::NO_TLS | lmdb::EnvironmentFlags::NO_READAHEAD)
            .open(&dir.0)
            .unwrap();
        for t in Table::ALL {
            env.create_db(Some(t.name()), lmdb::DatabaseFlags::empty())
                .unwrap();
        }
    });
    let open = median(&mut || {
        LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
    });
    let mut quick_pages = 0;
    let quick = median(&mut || {
        quick_pages = check_data_file(&dir.0, CheckDepth::Quick)
            .unwrap()
            .unwrap()
            .pages_read;
    });
    let mut branch_pages = 0;
    let branches = median(&mut || {
        branch_pages = check_data_file(&dir.0, CheckDepth::Branches)
            .unwrap()
            .unwrap()
            .pages_read;
    });
    let t = Instant::now();
    let full = check_data_file(&dir.0, CheckDepth::Full).unwrap().unwrap();
    let full_time = t.elapsed();
    let first_read = {
        let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
        let t = Instant::now();
        let mut n = 0u64;
        s.scan(Table::Headers, &[], &mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
        (n, t.elapsed())
    };
    let without = open.saturating_sub(quick);
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / without.as_secs_f64();
    println!(
        "LMDB open alone {lmdb_only:?}; LmdbStore::open {open:?}, of which the quick check \
         {quick:?} ({quick_pages} pages, {:.1}% of the open without it); the branch-page check \
         {branches:?} ({branch_pages} pages, {:.1}%); the full check {full_time:?} ({} pages, \
         {:.1}%); reading the {} header records once {:?}",
        pct(quick),
        pct(branches),
        full.pages_read,
        pct(full_time),
        first_read.0,
        first_read.1
    );
    for t in &full.trees {
        println!("  {t:?}");
    }
}
