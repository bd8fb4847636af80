//! A new block submitted on one engine of a ring of five reaches every other engine, and each
//! downloads it exactly once.

mod common;

use bsn::{Engine, Event};
use common::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

fn blocks_received(e: &Engine) -> u64 {
    e.peers()
        .iter()
        .flat_map(|p| {
            p.stats
                .by_command
                .iter()
                .filter(|(c, _)| c.as_str() == "block")
                .map(|(_, s)| s.msgs_in)
        })
        .sum()
}

#[test]
fn a_new_block_reaches_a_ring_of_five_and_each_downloads_it_once() {
    let mut engines: Vec<(Engine, crossbeam_channel::Receiver<Event>)> = Vec::new();
    for _ in 0..5 {
        let mut c = config();
        c.dial_interval = Duration::from_millis(20);
        c.tx_announce_interval = Duration::from_millis(20);
        engines.push(start(c));
    }
    // ring: each engine dials the next one
    for i in 0..5 {
        let next = engines[(i + 1) % 5].0.local_addr().unwrap();
        engines[i].0.connect(next).unwrap();
    }
    for (e, _) in &engines {
        let deadline = Instant::now() + T;
        while e.peers().iter().filter(|p| p.ready).count() < 2 {
            assert!(Instant::now() < deadline, "ring not formed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let block = regtest_blocks(1).pop().unwrap();
    let (hash, header, size) = (block.hash(), block.header, block.raw().len() as u64);
    assert_eq!(engines[0].0.submit_block(block).unwrap(), 1);
    for (i, (e, ev)) in engines.iter().enumerate().skip(1) {
        let got = wait_for(ev, T, "block connected", |x| match x {
            Event::BlockConnected {
                height: 1,
                hash: h,
                header,
                tx_count,
                size,
            } if *h == hash => Some((*header, *tx_count, *size)),
            _ => None,
        });
        assert_eq!(got, (header, 1, size), "engine {i}");
        assert_eq!(e.best_header().unwrap(), (hash, 1), "engine {i}");
    }
    // every engine has the block, so none asks for it again: once no block request is in
    // flight anywhere, no duplicate can still arrive and the counts are final
    for (e, _) in &engines {
        let deadline = Instant::now() + T;
        while e.core_counts().unwrap().blocks_in_flight > 0 {
            assert!(Instant::now() < deadline, "block requests still in flight");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for (i, (e, _)) in engines.iter().enumerate() {
        let want = if i == 0 { 0 } else { 1 };
        assert_eq!(
            blocks_received(e),
            want,
            "engine {i} downloaded the block {} times",
            blocks_received(e)
        );
    }
    for (e, _) in engines {
        e.stop();
    }
}

#[test]
fn a_transaction_reaches_a_ring_of_five_exactly_once_each_after_each_embedder_accepts_it() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut engines: Vec<Arc<Engine>> = Vec::new();
    let mut events = Vec::new();
    for _ in 0..5 {
        let mut c = config();
        c.dial_interval = Duration::from_millis(20);
        c.tx_announce_interval = Duration::from_millis(20);
        let (e, ev) = start(c);
        engines.push(Arc::new(e));
        events.push(ev);
    }
    for i in 0..5 {
        let next = engines[(i + 1) % 5].local_addr().unwrap();
        engines[i].connect(next).unwrap();
    }
    for e in &engines {
        let deadline = Instant::now() + T;
        while e.peers().iter().filter(|p| p.ready).count() < 2 {
            assert!(Instant::now() < deadline, "ring not formed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let tx = sample_tx(7);
    let txid = tx.txid();
    // each embedder accepts what it is handed, and counts how often it was handed this one
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Vec<Arc<AtomicUsize>> = (0..5).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let mut threads = Vec::new();
    for (i, ev) in events.into_iter().enumerate() {
        let (e, stop, n) = (engines[i].clone(), stop.clone(), counts[i].clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) || !ev.is_empty() {
                if let Ok(Event::TxReceived { tx, .. }) = ev.recv_timeout(Duration::from_millis(20))
                {
                    if tx.txid() == txid {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    assert!(e.accept_tx(&tx.txid()));
                }
            }
        }));
    }
    engines[0].submit_tx(tx).unwrap();
    let deadline = Instant::now() + T;
    while (1..5).any(|i| counts[i].load(Ordering::Relaxed) == 0) {
        assert!(
            Instant::now() < deadline,
            "not everywhere: {:?}",
            counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // every engine has the transaction, so none asks for it again: once no transaction
    // request is unanswered anywhere, nothing more can arrive and the counts are final (the
    // events of answered requests are in the channels, which the threads drain before ending)
    for e in &engines {
        let deadline = Instant::now() + T;
        while e.core_counts().unwrap().tx[1] > 0 {
            assert!(
                Instant::now() < deadline,
                "transaction requests still unanswered"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert_eq!(
        got,
        vec![0, 1, 1, 1, 1],
        "each engine but the source handed it exactly once"
    );
    for e in &engines {
        let tx_in: u64 = e
            .peers()
            .iter()
            .flat_map(|p| {
                p.stats
                    .by_command
                    .iter()
                    .filter(|(c, _)| c.as_str() == "tx")
                    .map(|(_, s)| s.msgs_in)
            })
            .sum();
        assert!(tx_in <= 1, "a tx message arrived {tx_in} times");
    }
    for e in engines {
        Arc::try_unwrap(e).ok().expect("threads joined").stop();
    }
}

#[test]
fn a_rejected_transaction_is_not_relayed_and_its_source_is_told_and_scored() {
    let (a, aev) = start(config());
    let (b, bev) = start(config());
    let (c, cev) = start(config());
    b.connect(a.local_addr().unwrap()).unwrap();
    c.connect(b.local_addr().unwrap()).unwrap();
    for e in [&a, &b, &c] {
        let deadline = Instant::now() + T;
        while e.peers().iter().filter(|p| p.ready).count() < if std::ptr::eq(e, &b) { 2 } else { 1 }
        {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let tx = sample_tx(9);
    let txid = tx.txid();
    a.submit_tx(tx).unwrap();
    wait_for(&bev, T, "b handed the tx", |e| match e {
        Event::TxReceived { tx, .. } if tx.txid() == txid => Some(()),
        _ => None,
    });
    assert!(b.reject_tx(&txid, "bad script", 10));
    let r = wait_for(&aev, T, "reject on a", |e| match e {
        Event::Message {
            message: bsn::wire::Message::Reject(r),
            ..
        } => Some(r.clone()),
        _ => None,
    });
    assert_eq!(
        (r.message.as_str(), r.code, r.reason.as_str()),
        ("tx", 0x10, "bad script")
    );
    assert_eq!(&r.data[..], &txid.0);
    assert!(b.ban_score("127.0.0.1".parse().unwrap()) >= 10);
    // c never hears of it: a second transaction, accepted by b, is relayed to c over the same
    // path after the rejection, and it is the first c is handed
    let tx2 = sample_tx(10);
    let txid2 = tx2.txid();
    a.submit_tx(tx2).unwrap();
    wait_for(&bev, T, "b handed the second tx", |e| match e {
        Event::TxReceived { tx, .. } if tx.txid() == txid2 => Some(()),
        _ => None,
    });
    assert!(b.accept_tx(&txid2));
    let first = wait_for(&cev, T, "c handed a tx", |e| match e {
        Event::TxReceived { tx, .. } => Some(tx.txid()),
        _ => None,
    });
    assert_eq!(first, txid2, "c was handed the rejected transaction");
    for e in [c, b, a] {
        e.stop();
    }
}
