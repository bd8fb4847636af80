//! Chain sync, serving and relay benchmarks (issue 7), each against a baseline measured in the
//! same run:
//!
//! 1. **Header sync engine to engine**: engine A holds a regtest chain of N headers with real
//!    proof of work (generated here, written into A's LMDB store before it starts, as
//!    `tests/sync.rs` does); a fresh header client B (`headers_only`, its own LMDB store) dials A
//!    and syncs. Timed from `connect` to `Event::HeadersSynced { height: N }`, and to the tip
//!    being committed in B's store. Baselines: the raw loopback transfer of the same `headers`
//!    frames with the same one-request-in-flight pattern (a plain TCP server answering each
//!    `getheaders` with the canned frame), A serving the same plain client (the serving half
//!    alone), and the store alone (`ChainDb::insert_headers` + `StoreWriter`, the engine's write
//!    path, batches of 2,000). Also printed: each thread's CPU time during the syncs (from
//!    `/proc/self/task/*/schedstat`, A's and B's threads told apart), and what A's default
//!    per-peer `getheaders` limit does to a client asking 200 batches in a row (with 20/s, burst
//!    100, the default when this was written: answers stop after ~115 and it is scored 50; an
//!    engine-to-engine sync of more than ~200,000 headers hits the same limit, and at the second
//!    violation the syncing node's address is banned).
//! 2. **Serving a plain client**: a raw TCP client (bsn's codec, version/verack done by hand)
//!    keeps 16 `getheaders` in flight, with locators walking the chain (it knows the chain, so it
//!    can ask for batch k+15 before batch k arrives), several passes; then 16 `getdata` (one small
//!    coinbase-only block each) in flight over an imported regtest chain. Baseline: a raw TCP
//!    server answering the same requests with the same canned frames to the same client. The
//!    serving engine's per-peer rate limits are raised for this (see the first row: with the
//!    default limits a client asking faster than 20 `getheaders`/s is throttled and scored).
//! 3. **Real 1-2 MB blocks**: the 13 real mainnet blocks of 1.0-2.3 MB in `$BSN_TEST_DATA` or
//!    `../shared/data` (their real transactions, put under new regtest headers so they chain
//!    from the regtest genesis; blocks do not otherwise connect to anything we hold), imported
//!    into an engine and served to the plain client (16 `getdata` in flight), then downloaded by
//!    a fresh engine (headers first, then blocks, stored in its LMDB). Baseline: the raw server
//!    sending the same block frames to the same client. SKIP (printed) when the data is absent.
//! 4. **Relay latency over 10 engines**: a ring of 10 with a chord from each i < 5 to i + 5
//!    (3 connections each, diameter 3), one shard each, in-memory stores,
//!    `TxPolicy::AcceptAll`, the timers of `tests/relay.rs` (tick and relay flush every 20 ms;
//!    engines started at random moments within one interval, so their timers' phases are
//!    random as between independent nodes). A block (small, and ~1 MB) handed to
//!    engine 0 with `submit_block`, timed until the last engine raises `BlockConnected`; a
//!    transaction given to `submit_tx`, timed until the last engine raises `TxReceived` (three
//!    per network, at random moments, on several fresh networks so that the timers' phases
//!    vary). Also the transaction with the default announce interval (250 ms). Baseline: the same frame
//!    store-and-forwarded over a chain of raw TCP forwarders with as many hops as the farthest
//!    engine is from engine 0. Several repetitions; p50 (and p90) reported.
//!
//! Run: `cargo bench --bench sync` (about 1-2 min); `-- --quick` for small sizes; section names
//! `headers`, `serve`, `blocks`, `relay` after `--` pick sections (`sync` runs only the
//! engine-to-engine header sync, 8 times, for profiling; `bigblock` sends a 1 GB and a 4.5 GB
//! block and `bigtx` a 1 GB transaction, each engine to engine with the receiver in a child
//! process for its own peak memory: neither is part of the default run).
//!
//! Results, their baselines and what changed because of them are in the README ("Measured").
//! The first version of this bench found the header sync at 0.50-0.61 M/s with one request in
//! flight and the cores half idle; pipelining the requests, `MDB_APPEND`, reserving the tree and
//! a set for the per-peer block filter brought it to ~0.9-1.0 M/s, now CPU-bound on 2 cores.

#[path = "../src/util.rs"]
mod random;
use bsn::store::chain::{stored_tip, ChainDb};
use bsn::store::lmdb::{LmdbOptions, LmdbStore};
use bsn::store::writer::StoreWriter;
use bsn::store::{Batch, Store};
use bsn::wire::frame::{encode_message, Frame, FrameDecoder};
use bsn::wire::{
    Block, BlockHeader, Decode, Hash256, InvType, Inventory, Locator, Magic, Message, NetAddr,
    OutPoint, Transaction, VersionMessage,
};
use bsn::TxPolicy;
use bsn::{Config, Engine, Event, Network, NetworkParams};
use bytes::{Bytes, BytesMut};
use crossbeam_channel::Receiver;
use random::random_u64;
use std::collections::{HashMap, VecDeque};
use std::io::{IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MAGIC: Magic = Magic([0xda, 0xb5, 0xbf, 0xfa]);
/// Longest any single wait may take before the bench gives up.
const T: Duration = Duration::from_secs(120);
const DEPTH: usize = 16;

// ---------------------------------------------------------------------------------------------
// helpers

/// A unique temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "bsn-bench-sync-{tag}-{}-{}",
            std::process::id(),
            random_u64()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn frame(m: &Message) -> Bytes {
    let mut b = BytesMut::new();
    encode_message(&mut b, MAGIC, m);
    b.freeze()
}

fn version(nonce: u64) -> Message {
    let a = NetAddr::new("127.0.0.1:1".parse().unwrap(), 0);
    Message::Version(VersionMessage {
        version: 70016,
        services: 0,
        timestamp: 0,
        receiver: a,
        sender: a,
        nonce,
        user_agent: "/bench:sync/".into(),
        start_height: 0,
        relay: Some(false),
        extra: Bytes::new(),
    })
}

/// A loopback engine config: the timers of the tests, no pinning (engines share 2 cores), no
/// dialling from the address book.
fn config(data_dir: Option<PathBuf>) -> Config {
    let mut c = Config::new(Network::Regtest);
    c.listen = Some("127.0.0.1:0".parse().unwrap());
    c.data_dir = data_dir;
    c.shards = 2;
    c.pin_threads = false;
    c.tick = Duration::from_millis(20);
    c.dial_interval = Duration::from_millis(20);
    c.target_outbound = 0;
    c
}

/// A header server: its store holds headers only, so it runs as a header client (a node that
/// stores blocks serves headers only as far as its blocks reach).
fn header_server(data_dir: PathBuf) -> Config {
    let mut c = config(Some(data_dir));
    c.headers_only = true;
    c
}

/// Raises the per-peer message and `getheaders` rate limits out of the way (for serving a
/// client that asks faster than the defaults allow).
fn unlimited(c: &mut Config) {
    c.rate_limits.msgs_per_sec = 1e9;
    c.rate_limits.msg_burst = 1e9;
    for (_, rate, burst) in c.rate_limits.per_command.iter_mut() {
        *rate = 1e9;
        *burst = 1e9;
    }
}

fn mine(mut h: BlockHeader) -> BlockHeader {
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    h
}

/// Section `rules`: the header tree's insert rate with the difficulty rules of a DAA chain
/// against the same headers with difficulty unchecked (every header still meets its own bits),
/// over `n` headers of a custom network with an easy limit (2^249), one-second blocks and the
/// DAA from height 200.
fn bench_rules(n: usize, reps: usize) {
    use bsn::chain::pow::{required_bits, Ancestor};
    use bsn::network::Consensus;
    println!("\n== header rules: tree inserts with the DAA checked vs unchecked ({n} headers)");
    let r = Network::Regtest.params();
    let bits = 0x2001_ffff;
    let genesis = mine(BlockHeader {
        version: 4,
        prev_hash: Hash256::ZERO,
        merkle_root: Hash256::ZERO,
        time: 1_700_000_000,
        bits,
        nonce: 0,
    });
    let limit = bsn::wire::block::target_from_compact(bits).unwrap();
    let daa = Consensus {
        target_spacing: 1,
        target_timespan: 16,
        no_retargeting: false,
        allow_min_difficulty: false,
        daa_height: 200,
        ..Consensus::fixed()
    };
    let p = NetworkParams::custom("easy", r.magic, r.disk_magic, 1, genesis, limit)
        .with_consensus(daa.clone());
    let (mut hs, mut work) = (vec![genesis], vec![genesis.work()]);
    for i in 0..n as u32 {
        let prev = *hs.last().unwrap();
        let time = prev.time + 1 + i % 3;
        let mut anc = |height: u32| {
            hs.get(height as usize).map(|h: &BlockHeader| Ancestor {
                bits: h.bits,
                time: h.time,
                work: work[height as usize],
            })
        };
        let bits = required_bits(&daa, &limit, hs.len() as u32 - 1, time, &mut anc).unwrap();
        let h = mine(BlockHeader {
            version: 4,
            prev_hash: prev.hash(),
            merkle_root: Hash256::sha256d(&i.to_le_bytes()),
            time,
            bits,
            nonce: 0,
        });
        work.push(work.last().unwrap().saturating_add(&h.work()));
        hs.push(h);
    }
    let unchecked = p.clone().with_consensus(Consensus::unchecked());
    let (mut checked_rates, mut unchecked_rates) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        for (params, rates) in [(&p, &mut checked_rates), (&unchecked, &mut unchecked_rates)] {
            let mut t = bsn::chain::HeaderTree::new(params);
            let t0 = Instant::now();
            for part in hs[1..].chunks(2_000) {
                t.insert_many(part).expect("valid");
            }
            rates.push(n as f64 / t0.elapsed().as_secs_f64());
        }
    }
    row_titles(reps, "headers/s");
    let base = row(
        "tree inserts, difficulty unchecked",
        &unchecked_rates,
        "headers/s",
        None,
    );
    row(
        "tree inserts, DAA checked",
        &checked_rates,
        "headers/s",
        Some(base),
    );
}

/// A regtest header chain on genesis with real proof of work.
fn make_headers(n: usize) -> Vec<BlockHeader> {
    let mut prev = Network::Regtest.params().genesis;
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let h = mine(BlockHeader {
            version: 4,
            prev_hash: prev.hash(),
            merkle_root: Hash256::sha256d(&i.to_le_bytes()),
            time: prev.time + 1,
            bits: 0x207fffff,
            nonce: 0,
        });
        out.push(h);
        prev = h;
    }
    out
}

fn coinbase(tag: u32) -> Transaction {
    Transaction::build(
        1,
        &[(
            OutPoint {
                txid: Hash256::ZERO,
                vout: u32::MAX,
            },
            &tag.to_le_bytes(),
            u32::MAX,
        )],
        &[(50, b"\x51")],
        0,
    )
}

/// A block of `txs` on `prev`, mined for regtest.
fn block_on(prev: &BlockHeader, txs: Vec<Transaction>) -> Block {
    let root = bsn::wire::block::merkle_root(txs.iter().map(|t| t.txid()).collect());
    let h = mine(BlockHeader {
        version: 4,
        prev_hash: prev.hash(),
        merkle_root: root,
        time: prev.time + 1,
        bits: 0x207fffff,
        nonce: 0,
    });
    Block::new(h, txs)
}

/// Peak resident memory of this process (VmHWM), bytes.
fn peak_rss() -> u64 {
    status_bytes("VmHWM:")
}

/// A memory figure of this process from /proc/self/status (given in kB), bytes.
fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The 100 MB transaction `i` of a big block.
fn big_tx(i: usize) -> Transaction {
    let script = vec![0x6a; 100_000_000];
    Transaction::build(
        1,
        &[(
            OutPoint {
                txid: Hash256::sha256d(&(i as u64).to_le_bytes()),
                vout: 0,
            },
            b"",
            u32::MAX,
        )],
        &[(0, &script)],
        0,
    )
}

/// Transaction `i` of about 250 bytes (one input, two outputs, as most BSV payments).
fn small_tx(i: usize) -> Transaction {
    Transaction::build(
        1,
        &[(
            OutPoint {
                txid: Hash256::sha256d(&(i as u64).to_le_bytes()),
                vout: 1,
            },
            &[0x47; 107],
            u32::MAX,
        )],
        &[(1_000, &[0x76; 25]), (2_000, &[0xa9; 25])],
        0,
    )
}

/// Writes a block of about `mb` MB on genesis (a coinbase and 100 MB transactions, or with
/// `small` 250-byte ones) to `path` a transaction at a time (never whole in memory); its hash
/// and size.
fn write_big_block(path: &Path, mb: usize, small: bool) -> (Hash256, u64) {
    let genesis = Network::Regtest.params().genesis;
    let tx: fn(usize) -> Transaction = if small { small_tx } else { big_tx };
    let n = if small {
        mb * 1_000_000 / small_tx(0).raw().len()
    } else {
        mb.div_ceil(100)
    };
    let cb = coinbase(9);
    let mut ids = vec![cb.txid()];
    ids.extend((0..n).map(|i| tx(i).txid()));
    let mut h = BlockHeader {
        version: 4,
        prev_hash: genesis.hash(),
        merkle_root: bsn::wire::merkle_root(ids),
        time: genesis.time + 1,
        bits: 0x207fffff,
        nonce: 0,
    };
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&h.to_array()).unwrap();
    let mut count = BytesMut::new();
    bsn::wire::codec::put_compact_size(&mut count, n as u64 + 1);
    f.write_all(&count).unwrap();
    f.write_all(cb.raw()).unwrap();
    for i in 0..n {
        f.write_all(tx(i).raw()).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    (h.hash(), std::fs::metadata(path).unwrap().len())
}

/// The number a child process printed after `key` on a line of its `stdout` (NaN if none).
fn child_field(stdout: &[u8], key: &str) -> f64 {
    String::from_utf8_lossy(stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN)
}

/// Resets this process's peak RSS (VmHWM) to its current RSS.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Current resident memory of this process (VmRSS), bytes.
fn rss() -> u64 {
    status_bytes("VmRSS:")
}

/// The receiving side of `bigblock`, in a child process (so that its peak memory is its own):
/// an engine that dials `addr`, waits for the block at height 1, and prints the time from its
/// dial to the block stored and its peak RSS.
fn bigblock_child(addr: &str) {
    let dir = TempDir::new("bigblock-child");
    let mut c = config(Some(dir.0.join("b")));
    c.limits.max_block_payload = 8 << 30;
    let e = Engine::start(c).unwrap();
    let ev = e.events();
    let base = rss();
    let t0 = Instant::now();
    e.connect(addr.parse().unwrap()).unwrap();
    wait_event(&ev, "BlockConnected", |x| match x {
        Event::BlockConnected { height: 1, .. } => Some(()),
        _ => None,
    });
    println!("SECS {}", t0.elapsed().as_secs_f64());
    println!("PEAK {}", peak_rss());
    println!("BASE {base}");
    e.stop();
    let _ = std::fs::remove_dir_all(&dir.0);
}

/// Raw TCP carrying a file's bytes (read in 4 MB pieces) to a reader that drops them (or, with
/// `to`, writes them to that file); seconds.
fn raw_tcp_file(path: &Path, to: Option<&Path>) -> f64 {
    let size = std::fs::metadata(path).unwrap().len();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let to = to.map(Path::to_path_buf);
    let t0 = Instant::now();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut out = to.map(|p| std::fs::File::create(p).unwrap());
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0u64;
        while n < size {
            let k = s.read(&mut buf).unwrap();
            if let Some(f) = out.as_mut() {
                f.write_all(&buf[..k]).unwrap();
            }
            n += k as u64;
        }
    });
    let mut f = std::fs::File::open(path).unwrap();
    let mut s = TcpStream::connect(a).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        s.write_all(&buf[..k]).unwrap();
    }
    reader.join().unwrap();
    t0.elapsed().as_secs_f64()
}

/// Section `bigblock`: a block of `mb` MB from one engine to another (the receiver in a child
/// process) against raw TCP carrying the same bytes, with each side's peak memory. The block is
/// made in a file and handed to the sender with `submit_block_file`: no side ever holds it
/// whole (over 4 GiB it goes as `extmsg`).
fn bench_big_block(mb: usize, small: bool) {
    println!(
        "\n== a {mb} MB block of {} transactions engine to engine over loopback (receiver in a \
         child process)",
        if small { "250-byte" } else { "100 MB" }
    );
    let dir = TempDir::new("bigblock");
    let src = dir.0.join("block.bin");
    let (hash, size) = write_big_block(&src, mb, small);
    // raw TCP: the same bytes from the file (in the page cache, as the engine's), dropped or
    // written to a file by the reader
    let raw_secs = raw_tcp_file(&src, None);
    let sink = dir.0.join("sink.bin");
    let raw_file_secs = raw_tcp_file(&src, Some(&sink));
    let _ = std::fs::remove_file(&sink);
    // the engines
    let mut c = config(Some(dir.0.join("a")));
    c.limits.max_block_payload = 8 << 30;
    let e = Engine::start(c).unwrap();
    let ev = e.events();
    let t0 = Instant::now();
    e.submit_block_file(&src).unwrap();
    wait_event(&ev, "the block stored", |x| match x {
        Event::BlockConnected {
            height: 1, hash: h, ..
        } if *h == hash => Some(()),
        _ => None,
    });
    let submit_secs = t0.elapsed().as_secs_f64();
    let sender_base = rss();
    reset_peak_rss();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--bigblock-child")
        .arg(e.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    let sender_peak = peak_rss();
    let field = |k: &str| child_field(&out.stdout, k);
    let (secs, child_peak, child_base) = (field("SECS "), field("PEAK "), field("BASE "));
    e.stop();
    let _ = std::fs::remove_dir_all(&dir.0);
    let gb = size as f64 / 1e9;
    println!(
        "  block {size} bytes{}; submit_block_file (checked from its file) {:.2} s",
        if size >= 1 << 32 { " (extmsg)" } else { "" },
        submit_secs
    );
    println!(
        "  raw TCP {:.2} s ({:.0} MB/s), raw TCP into a file {:.2} s; engine to engine, dial \
         to stored {:.2} s ({:.0} MB/s): {:.2}x raw, {:.2}x raw into a file",
        raw_secs,
        size as f64 / 1e6 / raw_secs,
        raw_file_secs,
        secs,
        size as f64 / 1e6 / secs,
        secs / raw_secs,
        secs / raw_file_secs
    );
    println!(
        "  peak RSS: receiver {:.0} MB ({:.3}x the block; {:.0} MB before the dial); sender {:.0} \
         MB while serving ({:.3}x the block; {:.0} MB before)",
        child_peak / 1e6,
        child_peak / 1e9 / gb,
        child_base / 1e6,
        sender_peak as f64 / 1e6,
        sender_peak as f64 / 1e9 / gb,
        sender_base as f64 / 1e6
    );
}

/// The receiving side of `bigtx`: an engine that dials `addr` and waits for the transaction
/// (handed to its embedder); prints the time from its dial and its peak RSS.
fn bigtx_child(addr: &str) {
    let mut c = config(None);
    c.limits.max_tx_payload = 1_000_000_000;
    let e = Engine::start(c).unwrap();
    let ev = e.events();
    let base = rss();
    let t0 = Instant::now();
    e.connect(addr.parse().unwrap()).unwrap();
    let size = wait_event(&ev, "TxReceived", |x| match x {
        Event::TxReceived { tx, .. } => Some(tx.raw().len()),
        _ => None,
    });
    println!("SECS {}", t0.elapsed().as_secs_f64());
    println!("PEAK {}", peak_rss());
    println!("BASE {base}");
    println!("SIZE {}", size.0);
    e.stop();
}

/// Section `bigtx`: a transaction of `mb` MB from one engine to another (the receiver in a child
/// process), announced, asked for and sent, with each side's peak memory.
fn bench_big_tx(mb: usize) {
    println!(
        "\n== a {mb} MB transaction engine to engine over loopback (receiver in a child process)"
    );
    let script = vec![0x6a; mb * 1_000_000];
    let tx = Transaction::build(
        1,
        &[(
            OutPoint {
                txid: Hash256::sha256d(b"bigtx"),
                vout: 0,
            },
            b"",
            u32::MAX,
        )],
        &[(0, &script)],
        0,
    );
    drop(script);
    let size = tx.raw().len() as u64;
    let e = Engine::start(config(None)).unwrap();
    let ev = e.events();
    let sender_base = rss();
    reset_peak_rss();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--bigtx-child")
        .arg(e.local_addr().unwrap().to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_event(&ev, "the child connected", |x| match x {
        Event::PeerConnected(_) => Some(()),
        _ => None,
    });
    e.submit_tx(tx).unwrap();
    let out = child.wait_with_output().unwrap();
    let sender_peak = peak_rss();
    let field = |k: &str| child_field(&out.stdout, k);
    let (secs, peak, base, got) = (
        field("SECS "),
        field("PEAK "),
        field("BASE "),
        field("SIZE "),
    );
    e.stop();
    let gb = size as f64 / 1e9;
    println!(
        "  transaction {size} bytes, {got} received; dial to handed over {secs:.2} s (announce \
         interval included)"
    );
    println!(
        "  peak RSS: receiver {:.0} MB ({:.2}x the transaction; {:.0} MB before the dial); \
         sender {:.0} MB while serving ({:.2}x; {:.0} MB before, its own copy included)",
        peak / 1e6,
        peak / 1e9 / gb,
        base / 1e6,
        sender_peak as f64 / 1e6,
        sender_peak as f64 / 1e9 / gb,
        sender_base as f64 / 1e6
    );
}

/// A regtest chain of `n` coinbase-only blocks on genesis.
fn small_blocks(n: usize) -> Vec<Block> {
    let mut prev = Network::Regtest.params().genesis;
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let b = block_on(&prev, vec![coinbase(i)]);
        prev = b.header;
        out.push(b);
    }
    out
}

/// Writes blocks as a block file (records of disk magic, length, block).
fn write_blk(path: &Path, blocks: &[Block]) {
    let magic = Network::Regtest.params().disk_magic;
    let mut f = Vec::new();
    for b in blocks {
        f.extend_from_slice(&magic.0);
        f.extend_from_slice(&(b.raw().len() as u32).to_le_bytes());
        f.extend_from_slice(b.raw());
    }
    std::fs::write(path, f).unwrap();
}

/// Writes the header chain into a fresh LMDB store at `dir` (an engine started there holds it).
fn store_headers(dir: &Path, headers: &[BlockHeader]) {
    let s = LmdbStore::open(dir, &LmdbOptions::default()).unwrap();
    let mut db = ChainDb::new(&Network::Regtest.params());
    for part in headers.chunks(2000) {
        let mut b = Batch::new();
        let u = db.insert_headers(part, &mut b);
        assert!(u.error.is_none(), "generated chain refused: {:?}", u.error);
        s.write(&b).unwrap();
    }
    s.sync().unwrap();
}

fn wait_event<T>(
    ev: &Receiver<Event>,
    what: &str,
    mut f: impl FnMut(&Event) -> Option<T>,
) -> (T, Instant) {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ev.recv_timeout(left) {
            Ok(e) => {
                if let Some(t) = f(&e) {
                    return (t, Instant::now());
                }
            }
            Err(_) => panic!("timed out after {T:?} waiting for {what}"),
        }
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn median(v: &[f64]) -> f64 {
    pct(v, 0.5)
}

fn fmt_rate(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Column titles for [`row`].
fn row_titles(reps: usize, unit: &str) {
    println!(
        "  {:<52} {:>12} {:>12}  {unit:<10} median vs baseline",
        format!("({reps} runs each, interleaved)"),
        "median",
        "best"
    );
}

/// One result row: the median and best of the runs' rates (higher is better) and the ratio of
/// the median to the baseline's median; returns the median.
fn row(name: &str, runs: &[f64], unit: &str, base: Option<f64>) -> f64 {
    let m = median(runs);
    let best = runs.iter().cloned().fold(0.0, f64::max);
    let ratio = match base {
        Some(b) if b > 0.0 => format!("{:.2}x", m / b),
        _ => "baseline".to_string(),
    };
    println!(
        "  {name:<52} {:>12} {:>12}  {unit:<10} {ratio}",
        fmt_rate(m),
        fmt_rate(best)
    );
    m
}

fn list(runs: &[f64]) -> String {
    runs.iter()
        .map(|r| fmt_rate(*r))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Writes every buffer with vectored writes.
fn write_all_slices(s: &mut TcpStream, bufs: &[Bytes]) -> std::io::Result<()> {
    let (mut i, mut off) = (0usize, 0usize);
    while i < bufs.len() {
        let slices: Vec<IoSlice> = std::iter::once(IoSlice::new(&bufs[i][off..]))
            .chain(bufs[i + 1..].iter().take(63).map(|b| IoSlice::new(b)))
            .collect();
        let mut n = s.write_vectored(&slices)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && i < bufs.len() {
            let rem = bufs[i].len() - off;
            if n >= rem {
                n -= rem;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// the plain client and the raw server

/// A blocking wire-protocol client (bsn's codec, no engine).
struct Client {
    s: TcpStream,
    dec: FrameDecoder,
    buf: Vec<u8>,
}

/// What the answer to a request must be.
#[derive(Clone)]
enum Expect {
    /// `headers`: this many, the first on top of `prev`.
    Headers { prev: Hash256, count: usize },
    /// `block` with this header and length.
    Block { header: [u8; 80], len: usize },
}

struct Req {
    frame: Bytes,
    expect: Expect,
}

struct Outcome {
    elapsed: Duration,
    answered: usize,
    items: usize,
    bytes: usize,
}

fn compact_size(p: &[u8]) -> (usize, usize) {
    match p[0] {
        0xfd => (u16::from_le_bytes([p[1], p[2]]) as usize, 3),
        0xfe => (u32::from_le_bytes(p[1..5].try_into().unwrap()) as usize, 5),
        0xff => (u64::from_le_bytes(p[1..9].try_into().unwrap()) as usize, 9),
        n => (n as usize, 1),
    }
}

impl Client {
    fn connect(addr: SocketAddr, from: Option<IpAddr>) -> Client {
        let s = match from {
            None => TcpStream::connect(addr).unwrap(),
            Some(ip) => {
                let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                sock.bind(&SocketAddr::new(ip, 0).into()).unwrap();
                sock.connect(&addr.into()).unwrap();
                sock.into()
            }
        };
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        Client {
            s,
            dec: FrameDecoder::new(MAGIC),
            buf: vec![0u8; 1 << 18],
        }
    }

    fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.dec.next_frame().expect("client: bad frame") {
                return Some(f);
            }
            match self.s.read(&mut self.buf) {
                Ok(0) | Err(_) => return None,
                Ok(k) => self.dec.push(&self.buf[..k]),
            }
        }
    }

    /// Version and verack both ways.
    fn handshake(&mut self) {
        self.s.write_all(&frame(&version(99))).unwrap();
        loop {
            let f = self.next_frame().expect("closed during handshake");
            if f.command == bsn::wire::commands::VERACK {
                break;
            }
        }
        self.s.write_all(&frame(&Message::Verack)).unwrap();
    }

    /// Sends `reqs` in order keeping `depth` unanswered; checks each answer (in order when
    /// `strict`; otherwise only counts them, for a server that may drop requests). Stops early
    /// (with what was answered) when nothing arrives for `patience`.
    fn pipeline(
        &mut self,
        reqs: &[Req],
        depth: usize,
        patience: Duration,
        strict: bool,
    ) -> Outcome {
        self.s.set_read_timeout(Some(patience)).unwrap();
        let start = Instant::now();
        let (mut sent, mut got, mut items, mut bytes) = (0usize, 0usize, 0usize, 0usize);
        let mut out: Vec<Bytes> = Vec::new();
        while sent < reqs.len().min(depth) {
            out.push(reqs[sent].frame.clone());
            sent += 1;
        }
        'run: while got < reqs.len() {
            if !out.is_empty() {
                write_all_slices(&mut self.s, &out).unwrap();
                out.clear();
            }
            match self.s.read(&mut self.buf) {
                Ok(0) | Err(_) => break 'run,
                Ok(k) => self.dec.push(&self.buf[..k]),
            }
            while let Some(f) = self.dec.next_frame().expect("client: bad frame") {
                let p = &f.payload;
                match &reqs[got].expect {
                    Expect::Headers { prev, count } => {
                        if f.command != bsn::wire::commands::HEADERS {
                            continue;
                        }
                        let (n, at) = compact_size(p);
                        if !strict {
                            items += n;
                            got += 1;
                            if got == reqs.len() {
                                break 'run;
                            }
                            if sent < reqs.len() {
                                out.push(reqs[sent].frame.clone());
                                sent += 1;
                            }
                            continue;
                        }
                        assert_eq!(n, *count, "answer {got}: wrong number of headers");
                        assert_eq!(p.len(), at + 81 * n, "answer {got}: bad headers payload");
                        if n > 0 {
                            assert_eq!(&p[at + 4..at + 36], &prev.0, "answer {got}: wrong place");
                        }
                        items += n;
                    }
                    Expect::Block { header, len } => {
                        if f.command != bsn::wire::commands::BLOCK {
                            continue;
                        }
                        assert_eq!(p.len(), *len, "answer {got}: wrong block length");
                        assert_eq!(&p[..80], &header[..], "answer {got}: wrong block");
                        items += 1;
                    }
                }
                bytes += p.len() + 24;
                got += 1;
                if sent < reqs.len() {
                    out.push(reqs[sent].frame.clone());
                    sent += 1;
                }
                if got == reqs.len() {
                    break 'run;
                }
            }
        }
        Outcome {
            elapsed: start.elapsed(),
            answered: got,
            items,
            bytes,
        }
    }
}

/// A raw TCP server for one connection: answers `version` with a canned version + verack, and
/// each `getheaders` (by the locator's first hash) or `getdata` (by each item's hash) with the
/// canned frames in `answers`; what it does not know it ignores.
fn raw_server(answers: Arc<HashMap<Hash256, Bytes>>) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let hello = [frame(&version(1)), frame(&Message::Verack)];
        let mut dec = FrameDecoder::new(MAGIC);
        let mut buf = vec![0u8; 1 << 16];
        let mut out: Vec<Bytes> = Vec::new();
        loop {
            let k = match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(k) => k,
            };
            dec.push(&buf[..k]);
            while let Ok(Some(f)) = dec.next_frame() {
                match f.message() {
                    Ok(Message::Version(_)) => out.extend(hello.iter().cloned()),
                    Ok(Message::GetHeaders(l)) => {
                        if let Some(a) = l.hashes.first().and_then(|h| answers.get(h)) {
                            out.push(a.clone());
                        }
                    }
                    Ok(Message::GetData(items)) => {
                        out.extend(items.iter().filter_map(|i| answers.get(&i.hash).cloned()))
                    }
                    _ => {}
                }
            }
            if !out.is_empty() {
                if write_all_slices(&mut s, &out).is_err() {
                    return;
                }
                out.clear();
            }
        }
    });
    (addr, h)
}

/// Runs `reqs` through a fresh handshaken client against `addr`.
fn client_run(addr: SocketAddr, reqs: &[Req], depth: usize) -> Outcome {
    let mut c = Client::connect(addr, None);
    c.handshake();
    let o = c.pipeline(reqs, depth, T, true);
    assert_eq!(o.answered, reqs.len(), "client: answers missing");
    o
}

fn raw_run(answers: &Arc<HashMap<Hash256, Bytes>>, reqs: &[Req], depth: usize) -> Outcome {
    let (addr, h) = raw_server(answers.clone());
    let o = client_run(addr, reqs, depth);
    h.join().unwrap();
    o
}

/// `getheaders` requests walking the chain in batches of 2,000 (locator: the hash the batch
/// starts after), and the raw server's canned answers to them.
fn header_requests(headers: &[BlockHeader]) -> (Vec<Req>, HashMap<Hash256, Bytes>) {
    let genesis = Network::Regtest.params().genesis;
    let mut reqs = Vec::new();
    let mut answers = HashMap::new();
    let mut prev = genesis.hash();
    for part in headers.chunks(2000) {
        reqs.push(Req {
            frame: frame(&Message::GetHeaders(Locator {
                version: 70016,
                hashes: vec![prev],
                stop: Hash256::ZERO,
            })),
            expect: Expect::Headers {
                prev,
                count: part.len(),
            },
        });
        answers.insert(prev, frame(&Message::Headers(part.to_vec())));
        prev = part.last().unwrap().hash();
    }
    (reqs, answers)
}

/// One `getdata` per block, and the raw server's canned `block` frames.
fn block_requests(blocks: &[Block]) -> (Vec<Req>, HashMap<Hash256, Bytes>) {
    let mut reqs = Vec::new();
    let mut answers = HashMap::new();
    for b in blocks {
        let hash = b.hash();
        reqs.push(Req {
            frame: frame(&Message::GetData(vec![Inventory {
                kind: InvType::BLOCK,
                hash,
            }])),
            expect: Expect::Block {
                header: b.raw()[..80].try_into().unwrap(),
                len: b.raw().len(),
            },
        });
        answers.insert(hash, frame(&Message::Block(b.clone())));
    }
    (reqs, answers)
}

fn repeat(reqs: &[Req], times: usize) -> Vec<Req> {
    (0..times)
        .flat_map(|_| {
            reqs.iter().map(|r| Req {
                frame: r.frame.clone(),
                expect: r.expect.clone(),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. header sync engine to engine

/// On-CPU nanoseconds of every thread of this process (`/proc/self/task/*/schedstat`), by
/// thread id, with the thread's name. Empty where /proc is not there.
fn thread_cpu() -> HashMap<u32, (String, u64)> {
    let mut m = HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for e in rd.flatten() {
            let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let p = e.path();
            let comm = std::fs::read_to_string(p.join("comm"))
                .unwrap_or_default()
                .trim()
                .to_string();
            let ns = std::fs::read_to_string(p.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            m.insert(tid, (comm, ns));
        }
    }
    m
}

/// CPU time per thread (named "A bsn-worker-0", "B bsn-store"...) over a timed window.
type CpuShare = std::collections::BTreeMap<String, u64>;

fn cpu_diff(
    a_side: &std::collections::HashSet<u32>,
    t0: &HashMap<u32, (String, u64)>,
    t1: &HashMap<u32, (String, u64)>,
    into: &mut CpuShare,
) {
    for (tid, (comm, ns)) in t1 {
        let before = t0.get(tid).map(|x| x.1).unwrap_or(0);
        let name = if !comm.starts_with("bsn-") {
            "bench (main thread, waiting)".to_string()
        } else if a_side.contains(tid) {
            format!("A {comm}")
        } else {
            format!("B {comm}")
        };
        *into.entry(name).or_default() += ns.saturating_sub(before);
    }
}

/// Prints each thread's CPU time as a share of the wall time of the window.
fn print_cpu(title: &str, cpu: &CpuShare, wall_ns: u64) {
    if cpu.is_empty() || wall_ns == 0 {
        return;
    }
    let mut v: Vec<(&String, &u64)> = cpu.iter().filter(|(_, ns)| **ns > 0).collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    let total: u64 = v.iter().map(|x| *x.1).sum();
    println!(
        "  {title}: CPU busy {:.0}% of wall time over all threads (2 cores = 200%):",
        100.0 * total as f64 / wall_ns as f64
    );
    for (name, ns) in v.iter().take(8) {
        println!(
            "      {:>5.1}%  {name}",
            100.0 * **ns as f64 / wall_ns as f64
        );
    }
}

/// A fresh header client (LMDB store in `dir`, removed after) dials `a_addr` and syncs `n`
/// headers; returns headers/s to `HeadersSynced` and to the tip committed in its store, and
/// adds each thread's CPU time over the window (connect to committed) to `cpu`.
fn sync_once(
    a_addr: SocketAddr,
    dir: &Path,
    n: usize,
    tip: Hash256,
    cpu: &mut CpuShare,
    wall: &mut u64,
) -> (f64, f64) {
    let a_side: std::collections::HashSet<u32> = thread_cpu().into_keys().collect();
    let mut cb = config(Some(dir.to_path_buf()));
    cb.headers_only = true;
    let b = Engine::start(cb).unwrap();
    let ev = b.events();
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    b.connect(a_addr).unwrap();
    let (_, t_synced) = wait_event(&ev, "HeadersSynced", |e| match e {
        Event::HeadersSynced { height } if *height as usize == n => Some(()),
        _ => None,
    });
    let deadline = Instant::now() + T;
    while stored_tip(b.store().as_ref()).unwrap() != Some(tip) {
        assert!(Instant::now() < deadline, "B's store never got the tip");
        std::thread::sleep(Duration::from_micros(200));
    }
    let t_stored = Instant::now();
    cpu_diff(&a_side, &cpu0, &thread_cpu(), cpu);
    *wall += (t_stored - t0).as_nanos() as u64;
    assert_eq!(b.best_header().unwrap(), (tip, n as u32));
    b.stop();
    let _ = std::fs::remove_dir_all(dir);
    let nf = n as f64;
    (
        nf / (t_synced - t0).as_secs_f64(),
        nf / (t_stored - t0).as_secs_f64(),
    )
}

/// Section `sync`: only the engine-to-engine header sync, `reps` times (for profiling).
fn bench_sync_only(n: usize, reps: usize) {
    println!("\n== engine-to-engine header sync only ({n} headers, {reps} runs)");
    let headers = make_headers(n);
    let tip = headers[n - 1].hash();
    let dir = TempDir::new("sync-only");
    store_headers(&dir.0.join("a"), &headers);
    let a = Engine::start(header_server(dir.0.join("a"))).unwrap();
    let a_addr = a.local_addr().unwrap();
    let (mut synced, mut stored) = (Vec::new(), Vec::new());
    let (mut cpu, mut wall) = (CpuShare::new(), 0u64);
    for rep in 0..reps {
        let (x, y) = sync_once(
            a_addr,
            &dir.0.join(format!("b{rep}")),
            n,
            tip,
            &mut cpu,
            &mut wall,
        );
        synced.push(x);
        stored.push(y);
    }
    a.stop();
    row_titles(reps, "headers/s");
    row(
        "ENGINE -> ENGINE sync, to HeadersSynced",
        &synced,
        "headers/s",
        None,
    );
    row(
        "ENGINE -> ENGINE sync, to tip committed",
        &stored,
        "headers/s",
        None,
    );
    print_cpu("threads during the syncs", &cpu, wall);
}

fn bench_header_sync(n: usize, reps: usize, serve_passes: usize) {
    println!("\n== 1. header sync engine to engine over loopback ({n} regtest headers)");
    let t = Instant::now();
    let headers = make_headers(n);
    let tip = headers[n - 1].hash();
    println!(
        "  (chain generated with proof of work in {:.2} s, not timed)",
        t.elapsed().as_secs_f64()
    );
    let dir = TempDir::new("headers");
    store_headers(&dir.0.join("a"), &headers);
    let (reqs, answers) = header_requests(&headers);
    let answers = Arc::new(answers);
    let nf = n as f64;

    // store alone: the engine's write path (ChainDb + StoreWriter), batches of 2,000
    let mut store_rates = Vec::new();
    let mut tree_rates = Vec::new();
    for rep in 0..reps {
        let d = dir.0.join(format!("store{rep}"));
        let s: Arc<dyn Store> = Arc::new(LmdbStore::open(&d, &LmdbOptions::default()).unwrap());
        let w = StoreWriter::start(s, Duration::from_secs(1)).unwrap();
        let mut db = ChainDb::new(&Network::Regtest.params());
        let t = Instant::now();
        for part in headers.chunks(2000) {
            let mut b = Batch::new();
            db.insert_headers(part, &mut b);
            w.submit(b);
        }
        w.flush().unwrap();
        store_rates.push(nf / t.elapsed().as_secs_f64());
        w.stop();
        let mut db = ChainDb::new(&Network::Regtest.params());
        let t = Instant::now();
        for part in headers.chunks(2000) {
            let mut b = Batch::new();
            db.insert_headers(part, &mut b);
        }
        tree_rates.push(nf / t.elapsed().as_secs_f64());
    }

    // A: a header server with the chain in its store
    let a = Engine::start(header_server(dir.0.join("a"))).unwrap();
    assert_eq!(a.best_header().unwrap(), (tip, n as u32));
    let a_addr = a.local_addr().unwrap();

    let mut raw_rates = Vec::new();
    let mut serve1_rates = Vec::new();
    let mut sync_rates = Vec::new();
    let mut stored_rates = Vec::new();
    let (mut cpu, mut wall) = (CpuShare::new(), 0u64);
    for rep in 0..reps {
        // raw transfer of the same frames, one request in flight
        let o = raw_run(&answers, &reqs, 1);
        assert_eq!(o.items, n);
        raw_rates.push(nf / o.elapsed.as_secs_f64());
        // A serving the same plain client, one request in flight
        let o = client_run(a_addr, &reqs, 1);
        serve1_rates.push(nf / o.elapsed.as_secs_f64());
        // a fresh header client B syncs from A
        let (synced, stored) = sync_once(
            a_addr,
            &dir.0.join(format!("b{rep}")),
            n,
            tip,
            &mut cpu,
            &mut wall,
        );
        sync_rates.push(synced);
        stored_rates.push(stored);
    }
    row_titles(reps, "headers/s");
    let raw = row(
        "raw TCP: same frames, 1 getheaders in flight",
        &raw_rates,
        "headers/s",
        None,
    );
    let store = row(
        "store alone: ChainDb + StoreWriter (LMDB), no network",
        &store_rates,
        "headers/s",
        Some(raw),
    );
    row(
        "validation alone: ChainDb::insert_headers, no write",
        &tree_rates,
        "headers/s",
        Some(raw),
    );
    row(
        "engine A serving a plain client, 1 in flight",
        &serve1_rates,
        "headers/s",
        Some(raw),
    );
    let sync = row(
        "ENGINE -> ENGINE sync, to HeadersSynced",
        &sync_rates,
        "headers/s",
        Some(raw),
    );
    row(
        "ENGINE -> ENGINE sync, to tip committed in B's LMDB",
        &stored_rates,
        "headers/s",
        Some(raw),
    );
    println!(
        "  engine->engine sync (median) vs store alone: {:.2}x; runs to HeadersSynced: {}; \
         target 1,000,000/s: {}",
        sync / store,
        list(&sync_rates),
        if sync >= 1e6 { "MET" } else { "MISSED" }
    );
    print_cpu("threads during the engine->engine syncs", &cpu, wall);

    // The default per-peer getheaders limit against a client that asks faster: how many of 2
    // passes (pipelined) are answered in 3 s, and is it scored?
    let (rate, burst) = bsn::RateSettings::default()
        .per_command
        .iter()
        .find(|(c, _, _)| c.as_str() == "getheaders")
        .map_or((f64::INFINITY, f64::INFINITY), |(_, r, b)| (*r, *b));
    let ev = a.events();
    while ev.try_recv().is_ok() {}
    let passes = repeat(&reqs, 2);
    let mut c = Client::connect(a_addr, Some([127, 0, 0, 77].into()));
    c.handshake();
    let o = c.pipeline(&passes, DEPTH, Duration::from_secs(3), false);
    let scored: Vec<String> = ev
        .try_iter()
        .filter_map(|e| match e {
            Event::BanScore {
                ip, reason, score, ..
            } => Some(format!("{ip} {reason:?} -> {score}")),
            _ => None,
        })
        .collect();
    println!(
        "  default rate limits (getheaders {rate}/s, burst {burst}): {} of {} pipelined getheaders answered \
         before a 3 s silence; scored: {}",
        o.answered,
        passes.len(),
        if scored.is_empty() { "no".to_string() } else { scored.join(", ") }
    );
    drop(c);
    a.stop();

    // serving with the limits raised, reused by section 2
    bench_serve_headers(&dir.0.join("a"), &reqs, &answers, n, serve_passes, reps);
}

// ---------------------------------------------------------------------------------------------
// 2. serving a plain client

fn bench_serve_headers(
    store: &Path,
    reqs: &[Req],
    answers: &Arc<HashMap<Hash256, Bytes>>,
    n: usize,
    passes: usize,
    reps: usize,
) {
    println!(
        "\n== 2a. headers served to a plain client, {DEPTH} getheaders in flight \
         ({passes} passes over {n} headers, per-peer rate limits raised)"
    );
    let all = repeat(reqs, passes);
    let total = (n * passes) as f64;
    let mut c = header_server(store.to_path_buf());
    unlimited(&mut c);
    let a = Engine::start(c).unwrap();
    let addr = a.local_addr().unwrap();
    let (mut raw, mut eng) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let o = raw_run(answers, &all, DEPTH);
        raw.push(total / o.elapsed.as_secs_f64());
        let o = client_run(addr, &all, DEPTH);
        assert_eq!(o.items as f64, total);
        eng.push(total / o.elapsed.as_secs_f64());
    }
    a.stop();
    row_titles(reps, "headers/s");
    let r = row(
        "raw TCP server, same canned frames",
        &raw,
        "headers/s",
        None,
    );
    let e = row("BSN ENGINE serving getheaders", &eng, "headers/s", Some(r));
    println!(
        "  runs engine: {}; target 2,000,000/s: {}",
        list(&eng),
        if e >= 2e6 { "MET" } else { "MISSED" }
    );
}

fn bench_serve_small_blocks(m: usize, passes: usize, reps: usize) {
    println!(
        "\n== 2b. small blocks served to a plain client, {DEPTH} getdata (1 block each) in flight \
         ({passes} passes over {m} coinbase-only regtest blocks, rate limits raised)"
    );
    let t = Instant::now();
    let blocks = small_blocks(m);
    let dir = TempDir::new("small");
    let file = dir.0.join("blk00000.dat");
    write_blk(&file, &blocks);
    let avg = blocks.iter().map(|b| b.raw().len()).sum::<usize>() / m;
    println!(
        "  ({m} blocks of ~{avg} bytes generated in {:.2} s, not timed)",
        t.elapsed().as_secs_f64()
    );
    let (reqs, answers) = block_requests(&blocks);
    let answers = Arc::new(answers);
    let all = repeat(&reqs, passes);
    let total = (m * passes) as f64;
    let mut c = config(Some(dir.0.join("data")));
    unlimited(&mut c);
    let e = Engine::start(c).unwrap();
    let t = Instant::now();
    assert_eq!(e.import_block_file(&file).unwrap(), (m, m as u32));
    println!("  (imported in {:.2} s)", t.elapsed().as_secs_f64());
    let addr = e.local_addr().unwrap();
    let (mut raw, mut eng) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let o = raw_run(&answers, &all, DEPTH);
        raw.push(total / o.elapsed.as_secs_f64());
        let o = client_run(addr, &all, DEPTH);
        assert_eq!(o.items as f64, total);
        eng.push(total / o.elapsed.as_secs_f64());
    }
    e.stop();
    row_titles(reps, "blocks/s");
    let r = row("raw TCP server, same canned frames", &raw, "blocks/s", None);
    let x = row("BSN ENGINE serving getdata", &eng, "blocks/s", Some(r));
    println!(
        "  runs engine: {}; target 10,000/s: {}",
        list(&eng),
        if x >= 1e4 { "MET" } else { "MISSED" }
    );
}

// ---------------------------------------------------------------------------------------------
// 3. real 1-2 MB blocks

fn data_dir() -> Option<PathBuf> {
    let d = match std::env::var_os("BSN_TEST_DATA") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
    };
    d.is_dir().then_some(d)
}

const REAL_BLOCKS: &[&str] = &[
    "bitcoin-core-bench/block413567.raw",
    "btcd/block-0000000000000000001602407ac49862a7bca9d00f7f402db20b7be2f5de59d2.blk",
    "btcd/block-00000000000000000021868c2cefc52a480d173c849412fe81c4e5ab806f94ab.blk",
    "rust-bitcoin/mainnet_block_000000000000000000000c835b2adcaedc20fdf6ee440009c249452c726dafae.raw",
    "ckb-bitcoin-spv/blocks/0830000.bin",
    "ckb-bitcoin-spv/blocks/0831328.bin",
    "ckb-bitcoin-spv/blocks/0831329.bin",
    "ckb-bitcoin-spv/blocks/0831330.bin",
    "ckb-bitcoin-spv/blocks/0831331.bin",
    "ckb-bitcoin-spv/blocks/0831332.bin",
    "ckb-bitcoin-spv/blocks/0831333.bin",
    "ckb-bitcoin-spv/blocks/0831334.bin",
    "ckb-bitcoin-spv/blocks/0831335.bin",
];

/// The real blocks found, checked (merkle root of their transactions).
fn real_blocks() -> Option<Vec<Block>> {
    let Some(d) = data_dir() else {
        println!(
            "  SKIP: real-block section: no data ($BSN_TEST_DATA unset and ../shared/data absent)"
        );
        return None;
    };
    let mut out = Vec::new();
    for f in REAL_BLOCKS {
        match std::fs::read(d.join(f)) {
            Ok(raw) => {
                let b = Block::decode_all(Bytes::from(raw)).expect("real block decodes");
                assert_eq!(b.compute_merkle_root(), b.header.merkle_root, "{f}");
                out.push(b);
            }
            Err(e) => println!("  (missing {f}: {e})"),
        }
    }
    if out.is_empty() {
        println!("  SKIP: real-block section: none of the real blocks found in {d:?}");
        return None;
    }
    Some(out)
}

fn bench_real_blocks(copies: usize, reps: usize) {
    println!("\n== 3. real 1-2 MB mainnet blocks over loopback");
    let Some(real) = real_blocks() else {
        return;
    };
    // Their real transactions under regtest headers chaining from genesis, `copies` times.
    let mut blocks = Vec::new();
    let mut prev = Network::Regtest.params().genesis;
    for _ in 0..copies {
        for b in &real {
            let nb = block_on(&prev, b.txs.clone());
            prev = nb.header;
            blocks.push(nb);
        }
    }
    let n = blocks.len();
    let bytes: usize = blocks.iter().map(|b| b.raw().len()).sum();
    let mb = bytes as f64 / 1e6;
    println!(
        "  {} real blocks ({:.1}-{:.1} MB, {} txs) x {copies} = {n} blocks, {mb:.1} MB",
        real.len(),
        real.iter().map(|b| b.raw().len()).min().unwrap() as f64 / 1e6,
        real.iter().map(|b| b.raw().len()).max().unwrap() as f64 / 1e6,
        real.iter().map(|b| b.txs.len()).sum::<usize>()
    );
    let dir = TempDir::new("real");
    let file = dir.0.join("blk00000.dat");
    write_blk(&file, &blocks);
    let (reqs, answers) = block_requests(&blocks);
    let answers = Arc::new(answers);
    let r = Engine::start(config(Some(dir.0.join("r")))).unwrap();
    assert_eq!(r.import_block_file(&file).unwrap(), (n, n as u32));
    let r_addr = r.local_addr().unwrap();
    let tip = blocks[n - 1].hash();
    let (mut raw, mut serve, mut sync) = (Vec::new(), Vec::new(), Vec::new());
    let (mut committed, mut late) = (Vec::new(), 0usize);
    let mut one_stream = Vec::new();
    for rep in 0..reps {
        let o = raw_run(&answers, &reqs, DEPTH);
        raw.push(o.bytes as f64 / 1e6 / o.elapsed.as_secs_f64());
        let o = client_run(r_addr, &reqs, DEPTH);
        serve.push(o.bytes as f64 / 1e6 / o.elapsed.as_secs_f64());
        // a fresh full engine downloads the chain: headers first, then the blocks; with
        // multistreams (blocks on DATA1, the default) and with one stream
        for streams in [true, false] {
            let name = format!("f{rep}{}", if streams { "m" } else { "s" });
            let mut c = config(Some(dir.0.join(&name)));
            c.multistreams = streams;
            let f = Engine::start(c).unwrap();
            let ev = f.events();
            let t0 = Instant::now();
            f.connect(r_addr).unwrap();
            let (_, t1) = wait_event(&ev, "last BlockConnected", |e| match e {
                Event::BlockConnected { height, hash, .. } if *height as usize == n => {
                    assert_eq!(*hash, tip);
                    Some(())
                }
                _ => None,
            });
            let rate = mb / (t1 - t0).as_secs_f64();
            if !streams {
                one_stream.push(rate);
                f.stop();
                let _ = std::fs::remove_dir_all(dir.0.join(&name));
                continue;
            }
            let streams_used = f.peers().first().map_or(0, |p| p.streams.len());
            assert_eq!(
                streams_used, 2,
                "the fresh engine's association has two streams"
            );
            sync.push(rate);
            // `BlockConnected` is raised once the block's write is queued to the store thread;
            // the commit follows
            let deadline = Instant::now() + T;
            let stored = loop {
                if let Some(b) = f.block(bsn::HeaderRef::Height(n as u32)).unwrap() {
                    break b;
                }
                late += 1;
                assert!(Instant::now() < deadline, "tip block never stored");
                std::thread::sleep(Duration::from_micros(200));
            };
            committed.push(mb / t0.elapsed().as_secs_f64());
            assert_eq!(stored.raw(), blocks[n - 1].raw(), "tip block bit for bit");
            f.stop();
            let _ = std::fs::remove_dir_all(dir.0.join(&name));
        }
    }
    r.stop();
    row_titles(reps, "MB/s");
    let base = row(
        "raw TCP server -> plain client, 16 getdata in flight",
        &raw,
        "MB/s",
        None,
    );
    row(
        "BSN ENGINE -> plain client, 16 getdata in flight",
        &serve,
        "MB/s",
        Some(base),
    );
    row(
        "BSN ENGINE -> fresh engine, to last BlockConnected",
        &sync,
        "MB/s",
        Some(base),
    );
    row(
        "BSN ENGINE -> fresh engine, to last block in its LMDB",
        &committed,
        "MB/s",
        Some(base),
    );
    row(
        "BSN ENGINE -> fresh engine, one stream (no multistreams)",
        &one_stream,
        "MB/s",
        Some(base),
    );
    if late > 0 {
        println!(
            "  (BlockConnected came before the block was readable from the store: {late} polls of \
             200 us over {reps} runs)"
        );
    }
    println!(
        "  runs: raw {} / engine->client {} / engine->engine {} MB/s",
        list(&raw),
        list(&serve),
        list(&sync)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. relay latency over 10 engines

const NODES: usize = 10;

fn edges() -> Vec<(usize, usize)> {
    let mut e: Vec<(usize, usize)> = (0..NODES).map(|i| (i, (i + 1) % NODES)).collect();
    e.extend((0..NODES / 2).map(|i| (i, i + NODES / 2)));
    e
}

/// Hops from engine 0 to the farthest engine.
fn eccentricity_of_0(edges: &[(usize, usize)]) -> usize {
    let mut dist = [usize::MAX; NODES];
    dist[0] = 0;
    let mut q = VecDeque::from([0usize]);
    while let Some(u) = q.pop_front() {
        for &(a, b) in edges {
            for (x, y) in [(a, b), (b, a)] {
                if x == u && dist[y] == usize::MAX {
                    dist[y] = dist[u] + 1;
                    q.push_back(y);
                }
            }
        }
    }
    *dist.iter().max().unwrap()
}

/// When each engine saw each block (`BlockConnected`) or transaction (`TxReceived`).
type Arrivals = Arc<Mutex<HashMap<Hash256, Vec<Option<Instant>>>>>;

struct Net {
    engines: Vec<Engine>,
    arrivals: Arrivals,
    stop: Arc<AtomicBool>,
    watchers: Vec<JoinHandle<()>>,
}

impl Net {
    fn start(flush_every: Duration) -> Net {
        let mut engines = Vec::new();
        for _ in 0..NODES {
            // Each engine relays transactions on its own timer; started at random moments
            // within one interval their phases are random, as between independent nodes (not
            // lined up in start order, which would flatter a ring).
            let r = random_u64() % (flush_every.as_micros() as u64).max(1);
            std::thread::sleep(Duration::from_micros(r));
            let mut c = config(None);
            c.shards = 1;
            c.tx_policy = TxPolicy::AcceptAll;
            c.tx_announce_interval = flush_every;
            engines.push(Engine::start(c).unwrap());
        }
        let edges = edges();
        for &(a, b) in &edges {
            engines[a]
                .connect(engines[b].local_addr().unwrap())
                .unwrap();
        }
        let mut degree = [0usize; NODES];
        for &(a, b) in &edges {
            degree[a] += 1;
            degree[b] += 1;
        }
        for (i, e) in engines.iter().enumerate() {
            let deadline = Instant::now() + T;
            while e.peers().iter().filter(|p| p.ready).count() < degree[i] {
                assert!(Instant::now() < deadline, "network not formed");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let watchers = engines
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let (ev, arrivals, stop) = (e.events(), arrivals.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(e) = ev.recv_timeout(Duration::from_millis(20)) else {
                            continue;
                        };
                        let now = Instant::now();
                        let h = match e {
                            Event::BlockConnected { hash, .. } => hash,
                            Event::TxReceived { tx, .. } => tx.txid(),
                            _ => continue,
                        };
                        let mut a = arrivals.lock().unwrap();
                        let v = a.entry(h).or_insert_with(|| vec![None; NODES]);
                        if v[i].is_none() {
                            v[i] = Some(now);
                        }
                    }
                })
            })
            .collect();
        Net {
            engines,
            arrivals,
            stop,
            watchers,
        }
    }

    /// Waits until every engine but 0 saw `h`; returns (first neighbour, last engine) delays.
    fn wait_all(&self, h: &Hash256, t0: Instant) -> (f64, f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            {
                let a = self.arrivals.lock().unwrap();
                if let Some(v) = a.get(h) {
                    if v[1..].iter().all(|t| t.is_some()) {
                        let d: Vec<f64> = v[1..]
                            .iter()
                            .map(|t| (t.unwrap() - t0).as_secs_f64() * 1e3)
                            .collect();
                        return (
                            d.iter().cloned().fold(f64::MAX, f64::min),
                            d.iter().cloned().fold(0.0, f64::max),
                        );
                    }
                }
            }
            assert!(Instant::now() < deadline, "{h} did not reach every engine");
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.watchers {
            w.join().unwrap();
        }
        for e in self.engines {
            e.stop();
        }
    }
}

/// Raw baseline: `frame` store-and-forwarded over `hops` plain TCP links (threads reading each
/// whole frame before writing it on); the time from the first write to the last read, in ms.
fn raw_hops(f: &Bytes, hops: usize, reps: usize) -> Vec<f64> {
    // receiver at the end, forwarders before it
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Instant>();
    let mut threads = Vec::new();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut next = l.local_addr().unwrap();
    threads.push(std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut dec = FrameDecoder::new(MAGIC);
        let mut buf = vec![0u8; 1 << 18];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(k) => dec.push(&buf[..k]),
            }
            while let Ok(Some(_)) = dec.next_frame() {
                let _ = done_tx.send(Instant::now());
            }
        }
    }));
    for _ in 1..hops {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let to = next;
        threads.push(std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let mut out = TcpStream::connect(to).unwrap();
            out.set_nodelay(true).unwrap();
            let mut dec = FrameDecoder::new(MAGIC);
            let mut buf = vec![0u8; 1 << 18];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => dec.push(&buf[..k]),
                }
                while let Ok(Some(fr)) = dec.next_frame() {
                    let h = bsn::wire::frame::header(MAGIC, fr.command, &fr.payload);
                    let parts = [Bytes::copy_from_slice(&h), fr.payload];
                    if write_all_slices(&mut out, &parts).is_err() {
                        return;
                    }
                }
            }
        }));
        next = addr;
    }
    let mut first = TcpStream::connect(next).unwrap();
    first.set_nodelay(true).unwrap();
    let mut v = Vec::new();
    for _ in 0..reps {
        std::thread::sleep(Duration::from_millis(5));
        let t0 = Instant::now();
        first.write_all(f).unwrap();
        let t1 = done_rx.recv_timeout(T).expect("raw hops");
        v.push((t1 - t0).as_secs_f64() * 1e3);
    }
    drop(first);
    for t in threads {
        t.join().unwrap();
    }
    v
}

fn sample_tx(n: u32) -> Transaction {
    Transaction::build(
        1,
        &[(
            OutPoint {
                txid: Hash256::sha256d(&n.to_le_bytes()),
                vout: n,
            },
            b"\x51",
            u32::MAX,
        )],
        &[(1_000, b"\x76\xa9")],
        0,
    )
}

fn report_latency(name: &str, engine: &[(f64, f64)], raw: &[f64]) {
    let last: Vec<f64> = engine.iter().map(|x| x.1).collect();
    let first: Vec<f64> = engine.iter().map(|x| x.0).collect();
    let (p50, r50) = (median(&last), median(raw));
    println!(
        "  {name:<40} bsn p50 {:>7.2} ms  p90 {:>7.2} ms  (1st neighbour p50 {:>6.2} ms; n={:>2}) | raw p50 {:>6.3} ms -> {:>6.1}x raw",
        p50,
        pct(&last, 0.9),
        median(&first),
        last.len(),
        r50,
        p50 / r50
    );
}

fn bench_relay(reps: usize, big: Option<Vec<Transaction>>) {
    let edges = edges();
    let hops = eccentricity_of_0(&edges);
    println!(
        "\n== 4. relay to every engine of a {NODES}-engine network (ring + chords i -> i+5, \
         3 connections each, farthest engine {hops} hops from engine 0), {reps} repetitions"
    );
    println!(
        "  (bsn: submit on engine 0 -> last engine's BlockConnected / TxReceived; raw: the same \
         frame store-and-forwarded over {hops} plain TCP hops)"
    );
    let net = Net::start(Duration::from_millis(20));
    let mut prev = Network::Regtest.params().genesis;
    // small blocks
    let mut small = Vec::new();
    let mut small_frame = Bytes::new();
    for i in 0..reps {
        let b = block_on(&prev, vec![coinbase(1_000_000 + i as u32)]);
        prev = b.header;
        small_frame = frame(&Message::Block(b.clone()));
        let h = b.hash();
        std::thread::sleep(Duration::from_millis(30));
        let t0 = Instant::now();
        net.engines[0].submit_block(b).unwrap();
        small.push(net.wait_all(&h, t0));
    }
    report_latency(
        &format!("block, {} bytes", small_frame.len() - 24),
        &small,
        &raw_hops(&small_frame, hops, reps),
    );
    // ~1 MB blocks
    if let Some(txs) = big {
        let mut lat = Vec::new();
        let mut f = Bytes::new();
        for i in 0..reps {
            let mut t = txs.clone();
            t[0] = coinbase(2_000_000 + i as u32);
            let b = block_on(&prev, t);
            prev = b.header;
            f = frame(&Message::Block(b.clone()));
            let h = b.hash();
            std::thread::sleep(Duration::from_millis(30));
            let t0 = Instant::now();
            net.engines[0].submit_block(b).unwrap();
            lat.push(net.wait_all(&h, t0));
        }
        report_latency(
            &format!("block, {:.2} MB", (f.len() - 24) as f64 / 1e6),
            &lat,
            &raw_hops(&f, hops, reps),
        );
    }
    net.stop();
    // Transactions: announcements go out on each engine's relay timer, so the latency depends
    // on the timers' phases; every few transactions a new network (new random phases), each
    // transaction submitted at a random moment.
    let tx_f = frame(&Message::Tx(sample_tx(0)));
    let raw_tx = raw_hops(&tx_f, hops, reps);
    let nets = reps.div_ceil(3);
    for (flush, nets, what) in [
        (Duration::from_millis(20), nets, "flush 20 ms"),
        (
            Config::new(Network::Regtest).tx_announce_interval,
            nets.min(3),
            "default announce interval 250 ms",
        ),
    ] {
        let mut lat = Vec::new();
        for k in 0..nets {
            let net = Net::start(flush);
            for i in 0..3u32 {
                let tx = sample_tx(1_000 * (k as u32 + 1) + i + flush.as_millis() as u32);
                let h = tx.txid();
                let r = random_u64() % flush.as_micros() as u64;
                std::thread::sleep(Duration::from_millis(5) + Duration::from_micros(r));
                let t0 = Instant::now();
                net.engines[0].submit_tx(tx).unwrap();
                lat.push(net.wait_all(&h, t0));
            }
            net.stop();
        }
        report_latency(
            &format!("tx, {} bytes ({what})", tx_f.len() - 24),
            &lat,
            &raw_tx,
        );
    }
}

/// About 1 MB of real transactions (block 413567's) for the big-block relay case, or a
/// synthetic set when the data is absent.
fn big_block_txs() -> Vec<Transaction> {
    if let Some(d) = data_dir() {
        if let Ok(raw) = std::fs::read(d.join(REAL_BLOCKS[0])) {
            return Block::decode_all(Bytes::from(raw)).unwrap().txs;
        }
    }
    println!("  (block 413567 not found: the ~1 MB relay block is synthetic)");
    let mut txs = vec![coinbase(0)];
    let script = vec![0x6a; 10_000];
    for i in 0..100u32 {
        txs.push(Transaction::build(
            1,
            &[(
                OutPoint {
                    txid: Hash256::sha256d(&i.to_le_bytes()),
                    vout: 0,
                },
                b"\x51",
                u32::MAX,
            )],
            &[(1, &script[..])],
            0,
        ));
    }
    txs
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--bigblock-child") {
        return bigblock_child(&args[i + 1]);
    }
    if let Some(i) = args.iter().position(|a| a == "--bigtx-child") {
        return bigtx_child(&args[i + 1]);
    }
    let quick = args.iter().any(|a| a == "--quick" || a == "--test");
    let picked: Vec<&str> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|s| s.as_str())
        .collect();
    let run = |name: &str| picked.is_empty() || picked.contains(&name);
    let t = Instant::now();
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    println!(
        "bsn sync bench ({}; {} cores; /proc/loadavg {})",
        if quick { "quick" } else { "full" },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        load()
    );
    if run("headers") || run("serve") {
        let (n, reps, passes) = if quick {
            (40_000, 1, 4)
        } else {
            (200_000, 3, 5)
        };
        bench_header_sync(n, reps, passes);
    }
    if picked.contains(&"sync") {
        bench_sync_only(
            if quick { 40_000 } else { 200_000 },
            if quick { 2 } else { 8 },
        );
    }
    if picked.contains(&"bigblock") {
        bench_big_block(if quick { 300 } else { 1_000 }, false);
        bench_big_block(if quick { 300 } else { 1_000 }, true);
        if !quick {
            bench_big_block(4_500, false);
        }
    }
    if picked.contains(&"bigtx") {
        bench_big_tx(if quick { 100 } else { 999 });
    }
    if run("rules") {
        bench_rules(
            if quick { 20_000 } else { 100_000 },
            if quick { 2 } else { 5 },
        );
    }
    if run("serve") {
        let (m, passes, reps) = if quick { (4_000, 2, 1) } else { (20_000, 3, 3) };
        bench_serve_small_blocks(m, passes, reps);
    }
    if run("blocks") {
        let (copies, reps) = if quick { (1, 1) } else { (3, 3) };
        bench_real_blocks(copies, reps);
    }
    if run("relay") {
        let reps = if quick { 5 } else { 15 };
        bench_relay(reps, Some(big_block_txs()));
    }
    println!(
        "\n(total {:.1} s; /proc/loadavg {})",
        t.elapsed().as_secs_f64(),
        load()
    );
}
