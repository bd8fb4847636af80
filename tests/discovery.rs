//! Discovery over loopback: a new node given one seed learns the other engines' addresses
//! through getaddr/addr and connects to its outbound target; the address book survives restart.

mod common;

use bsn::{Direction, Event};
use common::*;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);

fn outbound_to(e: &bsn::Engine) -> HashSet<SocketAddr> {
    e.peers()
        .iter()
        .filter(|p| p.ready && p.direction == Direction::Outbound)
        .map(|p| p.addr)
        .collect()
}

#[test]
fn a_new_node_learns_addresses_from_its_seed_and_fills_its_outbound_target() {
    let _ = env_logger::builder().is_test(true).try_init();
    // A is the seed; B, C and D connect to A and advertise their listening addresses to it.
    let (a, _aev) = start(config());
    let a_addr = a.local_addr().unwrap();
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut c = config();
        c.connect = vec![a_addr];
        let (e, ev) = start(c);
        wait_for(&ev, T, "connected to the seed", |e| {
            matches!(e, Event::PeerConnected(_)).then_some(())
        });
        others.push(e);
    }
    let want: HashSet<SocketAddr> = others.iter().map(|e| e.local_addr().unwrap()).collect();
    let deadline = Instant::now() + T;
    while !want
        .iter()
        .all(|w| a.addresses().iter().any(|(x, _)| x == w))
    {
        assert!(
            Instant::now() < deadline,
            "the seed never learned the listening addresses: {:?}",
            a.addresses()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // N knows only the seed; its target is 4 outbound peers: the seed and the three it learns of
    let dir = TempDir::new("discovery");
    let mut c = config();
    c.seeds = vec![a_addr.to_string()];
    c.target_outbound = 4;
    c.dial_interval = Duration::from_millis(50);
    c.data_dir = Some(dir.0.clone());
    c.persist_interval = Duration::from_millis(100);
    let (n, nev) = start(c.clone());
    let deadline = Instant::now() + T;
    loop {
        let out = outbound_to(&n);
        if out.len() == 4 {
            assert!(out.contains(&a_addr));
            assert!(want.iter().all(|w| out.contains(w)), "{out:?} vs {want:?}");
            break;
        }
        if Instant::now() >= deadline {
            let evs: Vec<String> = nev
                .try_iter()
                .map(|e| format!("{e:?}").chars().take(160).collect())
                .collect();
            panic!("outbound target not reached: {out:?}; events {evs:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // no more than the target (the core counts dials in flight with the connections, and
    // dials only while that count is under the target), and nothing to itself; the shards list
    // a connection before the core has heard it is ready, so the core's count is waited for
    let deadline = Instant::now() + T;
    let counts = loop {
        let counts = n.core_counts().unwrap();
        assert!(counts.outbound <= 4, "{counts:?}");
        if counts.dialing == 0 || Instant::now() >= deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((counts.outbound, counts.dialing), (4, 0), "{counts:?}");
    assert_eq!(outbound_to(&n).len(), 4);
    assert!(!outbound_to(&n).contains(&n.local_addr().unwrap()));
    let known: Vec<SocketAddr> = n
        .addresses()
        .into_iter()
        .filter(|(_, i)| i.tried)
        .map(|(a, _)| a)
        .collect();
    assert!(known.len() >= 4, "{known:?}");
    n.stop();
    // the address book survives a restart (no seeds this time, and no dialling)
    c.seeds.clear();
    c.target_outbound = 0;
    let (n2, _ev) = start(c);
    let book: Vec<SocketAddr> = n2.addresses().into_iter().map(|(a, _)| a).collect();
    assert!(
        book.contains(&a_addr) && want.iter().all(|w| book.contains(w)),
        "{book:?}"
    );
    n2.stop();
    for e in others {
        e.stop();
    }
    a.stop();
}

/// The README's embedding example: the embedder asks a peer `getaddr` and gets the answer as an
/// `Event::Message` (the core learns the addresses too; it does not swallow them).
#[test]
fn an_embedders_getaddr_answer_reaches_it() {
    use bsn::wire::{Message, NetAddr, TimedNetAddr};
    let (a, _aev) = common::start(common::config());
    // A learns an address from a peer's `addr`
    let mut teller = common::ScriptPeer::connect(a.local_addr().unwrap(), common::REGTEST);
    teller.handshake(common::random_u64());
    let learned: SocketAddr = "10.1.2.3:8333".parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    teller.send(&Message::Addr(vec![TimedNetAddr {
        time: now,
        addr: NetAddr::new(learned, 1),
    }]));
    let deadline = std::time::Instant::now() + T;
    while !a.addresses().iter().any(|(s, _)| *s == learned) {
        assert!(
            std::time::Instant::now() < deadline,
            "A did not learn the address"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // B, as in the README: on connect it sends `getaddr`, and prints the answer
    let mut c = common::config();
    c.getaddr_on_connect = false; // the embedder's own request is the one answered
    c.connect = vec![a.local_addr().unwrap()];
    let (b, bev) = common::start(c);
    let got = common::wait_for(&bev, T, "the getaddr answer", |e| match e {
        bsn::Event::PeerConnected(p) => {
            b.send(p.id, Message::GetAddr).unwrap();
            None
        }
        bsn::Event::Message {
            message: Message::Addr(list),
            ..
        } => Some(list.clone()),
        _ => None,
    });
    assert!(
        got.iter().any(|t| t.addr.socket_addr() == learned),
        "the answer lacks the address A learned: {got:?}"
    );
    b.stop();
    a.stop();
}
