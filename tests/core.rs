//! The node core through the engine: lossless bounded flow to a slow embedder, calls ordered
//! after the events they follow, and no map left holding anything after its peers are gone.

mod common;

use bsn::wire::{Hash256, InvType, Inventory, Locator, Message, Transaction};
use bsn::{Engine, Event, TxPolicy};
use common::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// Resident memory of this process, from /proc (None where there is no /proc).
fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Most the process may grow while the slow embedder test runs (measured: 14 MiB). Each
/// engine's core holds at most `event_high_water` events beyond a channel of `event_capacity`;
/// everything else waits in the peers' sockets.
const RSS_GROWTH_BOUND: u64 = 256 << 20;

#[test]
fn a_slow_embedder_gets_every_block_and_transaction_exactly_once_in_order() {
    let blocks = regtest_blocks(3000);
    let txs: Vec<Transaction> = (0..1000).map(sample_tx).collect();
    let mut ca = config();
    ca.tx_announce_interval = Duration::from_millis(20);
    let (a, _aev) = start(ca);
    let dir = TempDir::new("slow-embedder");
    let path = dir.0.join("blk.dat");
    let raws: Vec<&[u8]> = blocks.iter().map(|b| b.raw().as_ref()).collect();
    write_blk(&path, bsn::Network::Regtest.params().disk_magic, &raws);
    assert_eq!(a.import_block_file(&path).unwrap(), (3000, 3000));

    let mut cb = config();
    // a small channel and high-water mark, so that the lag really pushes back
    cb.event_capacity = 8;
    cb.event_high_water = 32;
    cb.core_queue = 64;
    cb.tx_policy = TxPolicy::Embedder;
    let (b, bev) = start(cb);
    let before = rss_bytes();
    b.connect(a.local_addr().unwrap()).unwrap();
    let b_on_a = loop {
        if let Some(p) = a.peers().into_iter().find(|p| p.ready) {
            break p.id;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = b_on_a;
    for t in &txs {
        a.submit_tx(t.clone()).unwrap();
    }
    let mut heights = Vec::new();
    let mut got_txs = Vec::new();
    let mut peak = before.unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(300);
    while heights.len() < 3000 || got_txs.len() < 1000 {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = bev.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "timed out with {} blocks and {} transactions",
                heights.len(),
                got_txs.len()
            )
        });
        // the embedder is slow: 1 ms per event
        std::thread::sleep(Duration::from_millis(1));
        match e {
            Event::BlockConnected { height, .. } => heights.push(height),
            Event::TxReceived { tx, .. } => got_txs.push(tx.txid()),
            Event::Fatal { reason } => panic!("fatal: {reason}"),
            _ => {}
        }
        if heights.len() % 256 == 0 {
            peak = peak.max(rss_bytes().unwrap_or(0));
        }
    }
    assert_eq!(
        heights,
        (1..=3000).collect::<Vec<u32>>(),
        "every block once, in order"
    );
    let mut want: Vec<Hash256> = txs.iter().map(|t| t.txid()).collect();
    want.sort();
    got_txs.sort();
    assert_eq!(got_txs, want, "every transaction exactly once");
    // nothing more arrives: no duplicates were queued behind
    b.stop();
    let rest: Vec<Event> = bev.try_iter().collect();
    assert!(
        !rest
            .iter()
            .any(|e| matches!(e, Event::BlockConnected { .. } | Event::TxReceived { .. })),
        "duplicates after the last: {rest:?}"
    );
    if let Some(before) = before {
        let growth = peak.saturating_sub(before);
        eprintln!(
            "slow embedder: RSS {} MiB before, peak {} MiB (growth {} MiB, bound {} MiB)",
            before >> 20,
            peak >> 20,
            growth >> 20,
            RSS_GROWTH_BOUND >> 20
        );
        assert!(growth < RSS_GROWTH_BOUND, "memory grew by {growth} bytes");
    }
    a.stop();
}

#[test]
fn submit_tx_right_after_peer_connected_reaches_that_peer() {
    let mut c = config();
    c.tx_announce_interval = Duration::from_millis(10);
    let (a, aev) = start(c);
    let addr = a.local_addr().unwrap();
    for round in 0..20u32 {
        let mut p = ScriptPeer::connect(addr, REGTEST);
        p.handshake(1000 + round as u64);
        let id = wait_for(&aev, T, "connected", |e| match e {
            Event::PeerConnected(i) => Some(i.id),
            _ => None,
        });
        let t = sample_tx(50_000 + round);
        let txid = t.txid();
        a.submit_tx(t).unwrap();
        p.expect(
            T,
            |m| matches!(m, Message::Inv(items) if items.iter().any(|i| i.hash == txid)),
        );
        p.send(&Message::GetData(vec![Inventory {
            kind: InvType::TX,
            hash: txid,
        }]));
        p.expect(T, |m| matches!(m, Message::Tx(t) if t.txid() == txid));
        drop(p);
        wait_for(&aev, T, "disconnected", |e| match e {
            Event::PeerDisconnected { id: gone, .. } if *gone == id => Some(()),
            _ => None,
        });
    }
    a.stop();
}

/// Waits until the engine's core holds nothing for peers that are gone.
fn wait_empty(e: &Engine, what: &str) {
    let deadline = Instant::now() + T;
    loop {
        let c = e.core_counts().unwrap();
        let clean = c.peers == 0
            && c.per_ip == 0
            && c.inbound == 0
            && c.outbound == 0
            && c.dialing == 0
            && c.embedder_blocks == 0
            && c.block_buffer == 0
            && c.unconfirmed == 0
            && c.pending_commits == 0
            && c.tx[0] == 0
            && c.tx[1] == 0
            && c.registry_live == 0;
        if clean {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: left behind {c:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_map_is_empty_again_after_many_connections_and_requests() {
    let (a, aev) = start(config());
    let addr = a.local_addr().unwrap();
    let blocks = regtest_blocks(5);
    for b in &blocks {
        a.submit_block(b.clone()).unwrap();
    }
    let mut ids = Vec::new();
    for round in 0..60u32 {
        let mut p = ScriptPeer::connect(addr, REGTEST);
        p.handshake(7000 + round as u64);
        let id = wait_for(&aev, T, "connected", |e| match e {
            Event::PeerConnected(i) => Some(i.id),
            _ => None,
        });
        ids.push(id);
        // requests of every kind: served blocks, missing blocks, headers
        p.send(&Message::GetData(vec![
            Inventory {
                kind: InvType::BLOCK,
                hash: blocks[round as usize % 5].hash(),
            },
            Inventory {
                kind: InvType::BLOCK,
                hash: Hash256::sha256d(&round.to_le_bytes()),
            },
        ]));
        p.expect(T, |m| matches!(m, Message::NotFound(_)));
        p.send(&Message::GetHeaders(Locator {
            version: 70016,
            hashes: vec![],
            stop: Hash256::ZERO,
        }));
        p.expect(T, |m| matches!(m, Message::Headers(_)));
        // transactions it announces: asked for, never delivered
        p.send(&Message::Inv(vec![Inventory {
            kind: InvType::TX,
            hash: sample_tx(90_000 + round).txid(),
        }]));
        p.expect(T, |m| matches!(m, Message::GetData(_)));
        // blocks the embedder asks this peer for, never delivered
        a.send(
            id,
            Message::GetData(vec![Inventory {
                kind: InvType::BLOCK,
                hash: Hash256::sha256d(&(round + 100_000).to_le_bytes()),
            }]),
        )
        .unwrap();
        p.expect(T, |m| matches!(m, Message::GetData(_)));
        if round == 0 {
            // the maps really hold these while the peer is here
            let c = a.core_counts().unwrap();
            assert_eq!((c.peers, c.inbound, c.per_ip), (1, 1, 1), "{c:?}");
            assert_eq!((c.tx[0], c.tx[1], c.embedder_blocks), (1, 1, 1), "{c:?}");
            assert_eq!(c.registry_live, 1, "{c:?}");
        }
        if round % 2 == 0 {
            a.disconnect(id).unwrap();
        }
        drop(p);
    }
    assert_eq!(ids.len(), 60);
    wait_empty(&a, "after 60 connections");
    // outbound too: dials that fail and dials that connect
    let (b, _bev) = start(config());
    // (four of each: the outbound limit is 8)
    for _ in 0..4 {
        a.connect(b.local_addr().unwrap()).unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        a.connect(gone).unwrap();
    }
    let deadline = Instant::now() + T;
    while b.peers().iter().filter(|p| p.ready).count() < 4 {
        assert!(Instant::now() < deadline, "outbound connections");
        std::thread::sleep(Duration::from_millis(10));
    }
    b.stop();
    wait_empty(&a, "after outbound connections");
    a.stop();
}

/// A store whose writes start failing when told to.
struct FailingStore {
    inner: bsn::store::memory::MemoryStore,
    fail: std::sync::atomic::AtomicBool,
}

impl bsn::store::Store for FailingStore {
    fn with_value(
        &self,
        t: bsn::store::Table,
        k: &[u8],
        f: &mut dyn FnMut(Option<&[u8]>),
    ) -> bsn::store::StoreResult<()> {
        self.inner.with_value(t, k, f)
    }
    fn scan(
        &self,
        t: bsn::store::Table,
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> bsn::store::StoreResult<()> {
        self.inner.scan(t, from, f)
    }
    fn write(&self, b: &bsn::store::Batch) -> bsn::store::StoreResult<()> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(bsn::store::StoreError::Backend("disk on fire".into()));
        }
        self.inner.write(b)
    }
}

#[test]
fn a_failing_store_stops_the_engine_with_a_fatal_event_and_calls_say_stopped() {
    let store = std::sync::Arc::new(FailingStore {
        inner: bsn::store::memory::MemoryStore::new(),
        fail: std::sync::atomic::AtomicBool::new(false),
    });
    let e = Engine::start_with_store(config(), store.clone()).unwrap();
    let ev = e.events();
    let block = regtest_blocks(1).pop().unwrap();
    assert_eq!(e.submit_block(block).unwrap(), 1);
    wait_for(&ev, T, "block stored", |x| {
        matches!(x, Event::BlockConnected { height: 1, .. }).then_some(())
    });
    store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    // a ban is written to the store: the write fails
    e.ban("127.9.9.9", Duration::from_secs(60), "test").unwrap();
    let reason = wait_for(&ev, T, "fatal", |x| match x {
        Event::Fatal { reason } => Some(reason.clone()),
        _ => None,
    });
    assert!(reason.contains("disk on fire"), "{reason}");
    let deadline = Instant::now() + T;
    while e.best_header().is_ok() {
        assert!(
            Instant::now() < deadline,
            "calls still answered after a fatal error"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(matches!(e.best_header(), Err(bsn::Error::Stopped)));
    assert!(e.peers().is_empty());
    e.stop();
}
