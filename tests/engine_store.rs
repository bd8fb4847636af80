//! The engine keeps what it learns in its data dir: peers and their statistics survive a restart.

mod common;

use bsn::store::records::PeerStatus;
use bsn::wire::{Command, Message};
use bsn::Event;
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[test]
fn peers_and_statistics_survive_a_restart() {
    let dir = TempDir::new("engine-store");
    let (b, _bev) = start(config());
    let b_addr = b.local_addr().unwrap();
    let mut c = config();
    c.data_dir = Some(dir.0.clone());
    c.persist_interval = Duration::from_millis(100);
    c.ping_interval = Duration::from_millis(50);
    let (a, aev) = start(c.clone());
    a.connect(b_addr).unwrap();
    wait_for(&aev, T, "connected", |e| {
        matches!(e, Event::PeerConnected(_)).then_some(())
    });
    // a few pings go both ways; the periodic fold sees them while the peer is connected
    let ping = Command::new("ping").unwrap();
    let deadline = std::time::Instant::now() + T;
    loop {
        let n = a
            .peer_stats(&b_addr)
            .and_then(|s| {
                s.by_command
                    .iter()
                    .find(|(c, _)| *c == ping)
                    .map(|(_, s)| s.msgs_out)
            })
            .unwrap_or(0);
        if n >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "stats never folded");
        std::thread::sleep(Duration::from_millis(20));
    }
    a.stop();
    let (a2, _a2ev) = start(c);
    let known = a2.known_peers();
    let (addr, rec) = known
        .iter()
        .find(|(addr, _)| *addr == b_addr)
        .expect("peer known after restart");
    assert_eq!(*addr, b_addr);
    assert!(rec.user_agent.starts_with("/bsn:"));
    assert_eq!(rec.version, 70016);
    assert_eq!(rec.status, PeerStatus::Alive);
    assert!(rec.last_success > 0 && rec.first_seen > 0);
    let st = a2.peer_stats(&b_addr).expect("stats after restart");
    assert_eq!(st.totals.connections, 1);
    let pings = st.by_command.iter().find(|(c, _)| *c == ping).unwrap().1;
    assert!(
        pings.msgs_out >= 3 && pings.bytes_out >= 32 * pings.msgs_out,
        "{pings:?}"
    );
    assert!(st.totals.rtt_us > 0);
    // a dial that fails is counted against the address
    let dead: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    a2.connect(dead).unwrap();
    let deadline = std::time::Instant::now() + T;
    while a2
        .known_peers()
        .iter()
        .find(|(x, _)| *x == dead)
        .map(|(_, r)| r.failures)
        != Some(1)
    {
        assert!(std::time::Instant::now() < deadline, "failure not recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
    a2.broadcast(Message::GetAddr).unwrap();
    a2.stop();
    b.stop();
}

#[test]
fn the_stored_chain_is_loaded_at_start_and_announced() {
    use bsn::store::chain::ChainDb;
    use bsn::store::lmdb::{LmdbOptions, LmdbStore};
    use bsn::store::{Batch, Store};
    use bsn::wire::{BlockHeader, Hash256};
    let params = bsn::Network::Regtest.params();
    let dir = TempDir::new("engine-chain");
    let mut tip = params.genesis;
    {
        let s = LmdbStore::open(&dir.0, &LmdbOptions::default()).unwrap();
        let mut db = ChainDb::new(&params);
        let mut headers = Vec::new();
        for i in 0..10u32 {
            let mut h = BlockHeader {
                version: 4,
                prev_hash: tip.hash(),
                merkle_root: Hash256::sha256d(&i.to_le_bytes()),
                time: tip.time + 1,
                bits: 0x207fffff,
                nonce: 0,
            };
            while !h.meets_own_target() {
                h.nonce += 1;
            }
            headers.push(h);
            tip = h;
        }
        let mut b = Batch::new();
        db.insert_headers(&headers, &mut b);
        s.write(&b).unwrap();
    }
    let mut c = config();
    c.data_dir = Some(dir.0.clone());
    let (a, _aev) = start(c);
    assert_eq!(a.best_header().unwrap(), (tip.hash(), 10));
    let (b, bev) = start(config());
    b.connect(a.local_addr().unwrap()).unwrap();
    let h = wait_for(&bev, T, "connected", |e| match e {
        Event::PeerConnected(p) => Some(p.start_height),
        _ => None,
    });
    assert_eq!(h, 10);
    a.stop();
    b.stop();
}

#[test]
fn a_second_engine_on_a_data_dir_in_use_is_refused_with_a_clear_error() {
    let dir = TempDir::new("dir-in-use");
    let mut c = config();
    c.data_dir = Some(dir.0.clone());
    let (a, _aev) = start(c.clone());
    let err = match bsn::Engine::start(c.clone()) {
        Ok(_) => panic!("two engines on one data dir"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("in use by another running bsn"), "{err}");
    assert!(err.contains(&dir.0.display().to_string()), "{err}");
    // once the first stops, the dir is free again
    a.stop();
    let (b, _bev) = start(c);
    b.stop();
}
