//! The store: both backends behave alike; an LMDB data dir survives close/reopen and SIGKILL;
//! the map grows when full; bad data dirs give clear errors.

mod common;

use bsn::store::lmdb::{LmdbOptions, LmdbStore};
use bsn::store::memory::MemoryStore;
use bsn::store::records::*;
use bsn::store::writer::StoreWriter;
use bsn::store::{Batch, Store, StoreError, Table};
use bsn::wire::{Command, Hash256};
use bsn::CommandStats;
use common::TempDir;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command as Proc, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn exercise(s: &dyn Store) {
    let mut b = Batch::new();
    for i in 0..100u32 {
        b.put(Table::Heights, i.to_be_bytes().to_vec(), vec![i as u8; 32]);
    }
    b.put(Table::Blocks, b"x".to_vec(), b"one".to_vec());
    s.write(&b).unwrap();
    let mut seen = Vec::new();
    s.scan(Table::Heights, &50u32.to_be_bytes(), &mut |k, _| {
        seen.push(u32::from_be_bytes(k.try_into().unwrap()));
        seen.len() < 10
    })
    .unwrap();
    assert_eq!(seen, (50..60).collect::<Vec<_>>());
    assert_eq!(s.count(Table::Heights).unwrap(), 100);
    let mut d = Batch::new();
    d.delete(Table::Blocks, b"x".to_vec());
    d.delete(Table::Blocks, b"never-there".to_vec());
    s.write(&d).unwrap();
    assert_eq!(s.get(Table::Blocks, b"x").unwrap(), None);
    assert_eq!(
        s.get(Table::Heights, &7u32.to_be_bytes()).unwrap(),
        Some(vec![7; 32])
    );
}

#[test]
fn both_backends_behave_alike() {
    exercise(&MemoryStore::new());
    let dir = TempDir::new("store-alike");
    exercise(&LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap());
}

type Sample = (
    Vec<(SocketAddr, PeerRecord)>,
    StoredStats,
    Vec<(std::net::IpAddr, u8, BanRecord)>,
);

fn sample() -> Sample {
    let peers = (1..=20u16)
        .map(|i| {
            let a: SocketAddr = format!("127.0.{}.{}:{}", i / 10, i % 10 + 1, 18000 + i)
                .parse()
                .unwrap();
            let r = PeerRecord {
                services: i as u64,
                user_agent: format!("/peer:{i}/"),
                version: 70016,
                first_seen: 1000 + i as u64,
                last_seen: 2000,
                last_success: 1500,
                failures: i as u32 % 3,
                status: if i % 2 == 0 {
                    PeerStatus::Alive
                } else {
                    PeerStatus::Dead
                },
            };
            (a, r)
        })
        .collect();
    let stats = StoredStats {
        totals: PeerTotals {
            errors: 3,
            rtt_us: 250,
            connections: 7,
        },
        by_command: vec![
            (
                Command::new("ping").unwrap(),
                CommandStats {
                    msgs_in: 5,
                    bytes_in: 160,
                    msgs_out: 6,
                    bytes_out: 192,
                },
            ),
            (
                Command::new("version").unwrap(),
                CommandStats {
                    msgs_in: 1,
                    bytes_in: 126,
                    msgs_out: 1,
                    bytes_out: 126,
                },
            ),
        ],
    };
    let bans = vec![
        (
            "127.0.1.0".parse().unwrap(),
            24,
            BanRecord {
                until: 9_999_999_999,
                created: 5,
                reason: "bad checksum".into(),
            },
        ),
        (
            "fd00::".parse().unwrap(),
            64,
            BanRecord {
                until: 77,
                created: 6,
                reason: "spam".into(),
            },
        ),
    ];
    (peers, stats, bans)
}

#[test]
fn a_data_dir_survives_close_and_reopen() {
    let dir = TempDir::new("store-reopen");
    let (peers, stats, bans) = sample();
    let block = bytes::Bytes::from(
        (0..1_500_000u32)
            .map(|i| (i * 7) as u8)
            .collect::<Vec<u8>>(),
    );
    let bh = Hash256::sha256d(&block);
    {
        let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
        let mut b = Batch::new();
        for (a, r) in &peers {
            put_peer(&mut b, a, r);
        }
        put_stats(&mut b, &peers[0].0, &stats);
        for (n, p, r) in &bans {
            b.put(Table::Bans, ban_key(n, *p).to_vec(), r.encode());
        }
        put_block(&mut b, &bh, block.clone());
        s.write(&b).unwrap();
    }
    let s = LmdbStore::open(
        &dir.0,
        &LmdbOptions {
            create: false,
            ..Default::default()
        },
    )
    .unwrap();
    let mut got = load_peers(&s).unwrap();
    got.sort_by_key(|(a, _)| *a);
    let mut want = peers.clone();
    want.sort_by_key(|(a, _)| *a);
    assert_eq!(got, want);
    let st = load_stats(&s).unwrap();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].0, peers[0].0);
    let mut by_cmd = st[0].1.by_command.clone();
    by_cmd.sort_by_key(|(c, _)| *c);
    let mut want_cmd = stats.by_command.clone();
    want_cmd.sort_by_key(|(c, _)| *c);
    assert_eq!(by_cmd, want_cmd);
    assert_eq!(st[0].1.totals, stats.totals);
    let got_bans = load_bans(&s).unwrap();
    assert_eq!(got_bans.len(), 2);
    for (n, p, r) in &bans {
        assert!(
            got_bans
                .iter()
                .any(|((gn, gp), gr)| gn == n && gp == p && gr == r),
            "{n}/{p}"
        );
    }
    // the block comes back bit for bit, read in place
    assert!(with_block(&s, &bh, |v| v == Some(&block[..])).unwrap());
    assert!(!has_block(&s, &Hash256([9; 32])).unwrap());
}

#[test]
fn map_full_grows_and_continues() {
    let dir = TempDir::new("store-grow");
    let s = LmdbStore::open(
        &dir.0,
        &LmdbOptions {
            map_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let start = s.map_size();
    let chunk = bytes::Bytes::from(vec![0xabu8; 256 * 1024]);
    for i in 0..80u32 {
        let mut b = Batch::new();
        b.put(Table::Blocks, i.to_be_bytes().to_vec(), chunk.clone());
        s.write(&b).expect("write succeeds after growing the map");
    }
    assert!(
        s.map_size() >= 20 << 20,
        "map {} -> {}",
        start,
        s.map_size()
    );
    assert_eq!(s.count(Table::Blocks).unwrap(), 80);
    drop(s);
    let s = LmdbStore::open(
        &dir.0,
        &LmdbOptions {
            map_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.count(Table::Blocks).unwrap(), 80);
    assert_eq!(
        s.get(Table::Blocks, &79u32.to_be_bytes())
            .unwrap()
            .unwrap()
            .len(),
        256 * 1024
    );
}

#[test]
fn bad_data_dirs_give_clear_errors() {
    let dir = TempDir::new("store-bad");
    let missing = dir.0.join("missing");
    assert!(matches!(
        LmdbStore::open(
            &missing,
            &LmdbOptions {
                create: false,
                ..Default::default()
            }
        ),
        Err(StoreError::Missing(_))
    ));
    // garbage where the data file should be
    let corrupt = dir.0.join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("data.mdb"), vec![0x5a; 64 * 1024]).unwrap();
    let e = LmdbStore::open(&corrupt, &LmdbOptions::default())
        .err()
        .expect("corrupt store refused");
    assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
    // a file, not a directory
    let file = dir.0.join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(LmdbStore::open(&file, &LmdbOptions::default()).is_err());
    // another schema version
    let other = dir.0.join("other");
    {
        let s = LmdbStore::open(&other, &LmdbOptions::default()).unwrap();
        let mut b = Batch::new();
        b.put(
            Table::Meta,
            b"schema".to_vec(),
            99u32.to_le_bytes().to_vec(),
        );
        s.write(&b).unwrap();
    }
    let e = LmdbStore::open(&other, &LmdbOptions::default())
        .err()
        .expect("other schema refused");
    assert!(
        matches!(
            e,
            StoreError::VersionMismatch {
                found: 99,
                expected: 1
            }
        ),
        "{e}"
    );
    // cannot be created (not a writable place, even for root)
    let e = LmdbStore::open(
        std::path::Path::new("/proc/bsn-store"),
        &LmdbOptions::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(e, StoreError::ReadOnly(..)), "{e}");
}

/// Child mode: write numbered batches through the writer forever, printing each committed one.
fn child_writer(dir: &str) {
    let s: Arc<dyn Store> =
        Arc::new(LmdbStore::open(std::path::Path::new(dir), &LmdbOptions::default()).unwrap());
    let w = StoreWriter::start(s, Duration::from_millis(100)).unwrap();
    for i in 0u32.. {
        let mut b = Batch::new();
        // each batch: a marker plus some bulk, so a kill lands mid-transaction now and then
        b.put(
            Table::Heights,
            i.to_be_bytes().to_vec(),
            vec![(i % 251) as u8; 64],
        );
        b.put(
            Table::Blocks,
            i.to_be_bytes().to_vec(),
            vec![(i % 13) as u8; 20_000],
        );
        let seq = w.write(b).unwrap();
        println!("committed {i} {seq}");
    }
}

#[test]
fn sigkill_mid_stream_loses_nothing_committed() {
    if let Ok(dir) = std::env::var("BSN_STORE_CHILD") {
        return child_writer(&dir);
    }
    let dir = TempDir::new("store-kill");
    for round in 0..3 {
        let mut child = Proc::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_mid_stream_loses_nothing_committed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("BSN_STORE_CHILD", &dir.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut last: Option<u32> = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        let stop_after = 150 + round * 97;
        while let Some(Ok(l)) = lines.next() {
            if let Some(rest) = l.strip_prefix("committed ") {
                last = Some(rest.split(' ').next().unwrap().parse().unwrap());
                if last.unwrap() >= stop_after || Instant::now() > deadline {
                    break;
                }
            }
        }
        // SIGKILL: no destructor, no sync, in the middle of the next write
        child.kill().unwrap();
        child.wait().unwrap();
        let last = last.expect("child committed something");
        let s =
            LmdbStore::open(&dir.0, &LmdbOptions::default()).expect("store opens after SIGKILL");
        for i in 0..=last {
            let v = s.get(Table::Heights, &i.to_be_bytes()).unwrap();
            assert_eq!(
                v,
                Some(vec![(i % 251) as u8; 64]),
                "batch {i} of {last} lost (round {round})"
            );
            assert_eq!(
                s.get(Table::Blocks, &i.to_be_bytes())
                    .unwrap()
                    .map(|b| b.len()),
                Some(20_000)
            );
        }
        eprintln!("round {round}: killed after {last} reported batches, all present");
    }
}

#[test]
fn writer_merges_and_acks() {
    let s: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let w = StoreWriter::start(s.clone(), Duration::from_millis(50)).unwrap();
    let mut seqs = Vec::new();
    for i in 0..1000u32 {
        let mut b = Batch::new();
        b.put(Table::Heights, i.to_be_bytes().to_vec(), vec![1]);
        seqs.push(w.submit(b));
    }
    let c = w.flush().unwrap();
    assert!(c >= *seqs.last().unwrap());
    assert_eq!(s.count(Table::Heights).unwrap(), 1000);
    w.stop();
}

/// Puts in ascending runs (LMDB appends them), out of order, over existing keys, and deletes of
/// the largest key, in random batches: LMDB and the memory store end up with the same tables.
#[test]
fn appends_and_random_writes_match_the_memory_store() {
    let dir = TempDir::new("store-append");
    let lmdb = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
    let mem = MemoryStore::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut next = 0u32;
    for _ in 0..300 {
        let mut b = Batch::new();
        for _ in 0..rnd(20) + 1 {
            let t = if rnd(2) == 0 {
                Table::Headers
            } else {
                Table::Heights
            };
            match rnd(10) {
                // an ascending run (a sync batch)
                0..=5 => {
                    next += 1 + rnd(3) as u32;
                    b.put(t, next.to_be_bytes().to_vec(), next.to_le_bytes().to_vec());
                }
                // below the largest key: new or existing
                6 | 7 => {
                    let k = rnd(next as u64 + 1) as u32;
                    b.put(t, k.to_be_bytes().to_vec(), vec![rnd(256) as u8; 3]);
                }
                // the largest key goes, then keys above the old largest come again
                8 => b.delete(t, next.to_be_bytes().to_vec()),
                _ => {
                    let k = next.saturating_sub(rnd(2) as u32);
                    b.delete(t, k.to_be_bytes().to_vec());
                    next = next.saturating_sub(2);
                }
            }
        }
        lmdb.write(&b).unwrap();
        mem.write(&b).unwrap();
    }
    for t in [Table::Headers, Table::Heights] {
        let dump = |s: &dyn Store| {
            let mut v = Vec::new();
            s.scan(t, &[], &mut |k, val| {
                v.push((k.to_vec(), val.to_vec()));
                true
            })
            .unwrap();
            v
        };
        let (a, b) = (dump(&lmdb), dump(&mem));
        assert!(a.len() > 100, "{}", a.len());
        assert_eq!(a, b, "{t:?}");
    }
}
