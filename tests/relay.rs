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
    let hash = block.hash();
    assert_eq!(engines[0].0.submit_block(block).unwrap(), 1);
    for (i, (e, ev)) in engines.iter().enumerate().skip(1) {
        wait_for(ev, T, "block connected", |x| match x {
            Event::BlockConnected { height: 1, hash: h } if *h == hash => Some(()),
            _ => None,
        });
        assert_eq!(e.best_header(), (hash, 1), "engine {i}");
    }
    // let any duplicate downloads land before counting
    std::thread::sleep(Duration::from_millis(300));
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
