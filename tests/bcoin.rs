//! bsn against a real full node: bcoin 1.0.2 on regtest (see `bcoin_support`). The handshake
//! both ways, ping/pong measured by us and answered for bcoin, block announcements, the
//! connection staying up with bcoin's ban score at zero (bcoin does not know protoconf and must
//! tolerate it), and a wallet transaction and its block relayed by bcoin, fetched with getdata
//! and decoded by bsn's codec.

mod bcoin_support;
mod common;

use bcoin_support::{regtest_params, Bcoin, Json};
use bsn::wire::{InvType, Message};
use bsn::{Config, Direction, Engine, Event, PeerInfo};
use crossbeam_channel::Receiver;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);
/// How long the connection must stay up once established.
const STAY_UP: Duration = Duration::from_secs(3);
const PING_INTERVAL: Duration = Duration::from_millis(200);

/// A loopback engine on bcoin's regtest magic that pings every 200 ms.
fn config(services: u64) -> Config {
    let mut c = Config::with_params(regtest_params());
    c.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.shards = 1;
    c.workers = 1;
    c.pin_threads = false;
    c.tick = Duration::from_millis(20);
    c.ping_interval = PING_INTERVAL;
    c.ping_timeout = Duration::from_secs(10);
    c.services = services;
    c
}

/// The engine's events, drained while polling: any disconnect fails the test, messages are kept.
struct Watch {
    ev: Receiver<Event>,
    messages: Vec<Message>,
    /// Blocks the engine downloaded and connected, as hex hashes.
    connected: Vec<String>,
    /// Transactions handed to the embedder.
    txs: Vec<bsn::wire::Transaction>,
}

impl Watch {
    fn drain(&mut self) {
        for e in self.ev.try_iter() {
            match e {
                Event::PeerDisconnected {
                    addr,
                    direction,
                    reason,
                    ..
                } => panic!("{direction} connection with {addr} dropped: {reason}"),
                Event::Message { message, .. } => self.messages.push(message),
                Event::BlockConnected { hash, .. } => self.connected.push(hash.to_string()),
                Event::TxReceived { tx, .. } => self.txs.push(tx),
                _ => {}
            }
        }
    }

    /// Polls `f` every 50 ms until it gives a value, for at most `timeout`.
    fn until<V>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Self) -> Option<V>,
    ) -> V {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?}: {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn commands(&self) -> Vec<String> {
        self.messages
            .iter()
            .map(|m| m.command().to_string())
            .collect()
    }
}

fn handshake(ev: &Receiver<Event>) -> PeerInfo {
    *common::wait_for(ev, T, "the handshake with bcoin", |e| match e {
        Event::PeerConnected(p) => Some(p.clone()),
        Event::PeerDisconnected { .. } | Event::ConnectFailed { .. } => {
            panic!("no handshake with bcoin: {e:?}")
        }
        _ => None,
    })
}

fn msgs(p: &PeerInfo, command: &str) -> (u64, u64) {
    p.stats
        .by_command
        .iter()
        .find(|(c, _)| c.as_str() == command)
        .map_or((0, 0), |(_, s)| (s.msgs_in, s.msgs_out))
}

/// The single ready peer of `engine`.
fn our_peer(engine: &Engine) -> Option<PeerInfo> {
    let peers = engine.peers();
    assert!(peers.len() <= 1, "more than one connection: {peers:?}");
    peers.into_iter().next().filter(|p| p.ready)
}

/// bcoin's view of the connection with bsn.
fn bsn_in_bcoin(bcoin: &Bcoin, ua: &str) -> Option<Json> {
    bcoin
        .peers()
        .into_iter()
        .find(|p| p["subver"].as_str() == Some(ua))
}

/// What both sides must see once the handshake is done: pings measured by bsn, bcoin's pings
/// answered, bcoin announcing a new block to us, and nothing dropped or banned for `STAY_UP`.
fn exercise(bcoin: &Bcoin, engine: &Engine, watch: &mut Watch, ua: &str, bcoin_inbound: bool) {
    let theirs = watch.until(T, "bcoin lists bsn in getpeerinfo", |_| {
        bsn_in_bcoin(bcoin, ua)
    });
    assert_eq!(theirs["inbound"].as_bool(), Some(bcoin_inbound), "{theirs}");
    assert_eq!(theirs["version"].as_i64(), Some(70016), "{theirs}");
    assert_eq!(theirs["banscore"].as_i64(), Some(0), "{theirs}");

    // the engine pings right after the handshake, then every 200 ms: bcoin answers each
    let p = watch.until(T, "three pongs from bcoin and a measured rtt", |_| {
        our_peer(engine).filter(|p| p.rtt.is_some() && msgs(p, "pong").0 >= 3)
    });
    let rtt = p.rtt.expect("filtered on rtt");
    assert!(rtt < Duration::from_secs(2), "rtt {rtt:?}");
    assert!(
        msgs(&p, "protoconf").1 >= 1,
        "bsn sent protoconf: {:?}",
        p.stats
    );

    // bcoin pings us (its RPC `ping` pings every peer at once): we answer, it measures
    bcoin.rpc("ping", "[]");
    let theirs = watch.until(T, "bcoin measures a ping to bsn", |_| {
        bsn_in_bcoin(bcoin, ua).filter(|p| p["pingtime"].as_f64().is_some_and(|t| t >= 0.0))
    });
    assert!(
        theirs["pingtime"].as_f64().expect("filtered") < 2.0,
        "{theirs}"
    );

    // a block mined by bcoin is announced to us at once (as headers, since we sent
    // sendheaders) and the engine downloads and connects it
    let hash = bcoin.mine(1).pop().expect("one block mined");
    watch.until(T, "bcoin's new block downloaded by the engine", |w| {
        w.connected.contains(&hash).then_some(())
    });

    // and the connection stays up, with pings flowing and no ban score
    let pongs = msgs(&our_peer(engine).expect("still connected"), "pong").0;
    let until = Instant::now() + STAY_UP;
    watch.until(STAY_UP + T, "the connection stays up", |_| {
        (Instant::now() >= until).then_some(())
    });
    let p = our_peer(engine).expect("still connected after a few seconds");
    let more = msgs(&p, "pong").0 - pongs;
    assert!(more >= 5, "only {more} pongs in {STAY_UP:?}: {:?}", p.stats);
    assert_eq!(p.stats.errors, 0, "bcoin sent something bsn rejected");
    let theirs = bsn_in_bcoin(bcoin, ua).expect("bcoin still has bsn as a peer");
    assert_eq!(theirs["banscore"].as_i64(), Some(0), "{theirs}");
    assert_eq!(bcoin.peers().len(), 1, "bcoin has exactly the one peer");
    eprintln!(
        "bcoin: rtt {rtt:?}, pongs {}, bsn received {:?}; bcoin saw {theirs}",
        msgs(&p, "pong").0,
        watch.commands()
    );
}

#[test]
fn bsn_connects_to_bcoin() {
    let Some(bcoin) = Bcoin::start() else { return };
    let t0 = Instant::now();
    let engine = Engine::start(config(0)).expect("engine starts");
    let mut watch = Watch {
        ev: engine.events(),
        messages: Vec::new(),
        connected: Vec::new(),
        txs: Vec::new(),
    };
    engine.connect(bcoin.p2p_addr()).unwrap();
    let p = handshake(&watch.ev);
    assert_eq!(p.direction, Direction::Outbound);
    assert_eq!(p.addr, bcoin.p2p_addr());
    assert!(p.user_agent.contains("bcoin"), "{}", p.user_agent);
    assert_eq!(p.version, 70015);
    assert_eq!(p.services, 9, "NODE_NETWORK | NODE_WITNESS");
    let ua = engine.config().user_agent.clone();
    assert!(ua.starts_with("/bsn:"), "{ua}");
    exercise(&bcoin, &engine, &mut watch, &ua, true);
    engine.stop();
    eprintln!("bsn -> bcoin: {:.1?} after bcoin started", t0.elapsed());
}

#[test]
fn bcoin_connects_to_bsn() {
    // bcoin keeps outbound peers only if they advertise NODE_NETWORK and NODE_WITNESS (9)
    let engine = Engine::start(config(9)).expect("engine starts");
    let mut watch = Watch {
        ev: engine.events(),
        messages: Vec::new(),
        connected: Vec::new(),
        txs: Vec::new(),
    };
    let ours = engine.local_addr().expect("listening");
    let Some(bcoin) = Bcoin::start_connecting_to(ours) else {
        return;
    };
    let t0 = Instant::now();
    let p = handshake(&watch.ev);
    assert_eq!(p.direction, Direction::Inbound);
    assert!(p.user_agent.contains("bcoin"), "{}", p.user_agent);
    assert_eq!(p.version, 70015);
    let ua = engine.config().user_agent.clone();
    exercise(&bcoin, &engine, &mut watch, &ua, false);
    engine.stop();
    eprintln!("bcoin -> bsn: {:.1?} after bcoin started", t0.elapsed());
}

#[test]
fn bcoin_relays_a_transaction_and_serves_it_and_its_block() {
    let Some(bcoin) = Bcoin::start() else { return };
    let engine = Engine::start(config(0)).expect("engine starts");
    let mut watch = Watch {
        ev: engine.events(),
        messages: Vec::new(),
        connected: Vec::new(),
        txs: Vec::new(),
    };
    engine.connect(bcoin.p2p_addr()).unwrap();
    let id = handshake(&watch.ev).id;

    // coinbases mature after 100 blocks
    let blocks = bcoin.mine(101);
    assert_eq!(blocks.len(), 101);
    assert_eq!(bcoin.height(), 101);
    let txid = bcoin.send_to(&bcoin.new_address(), 100_000_000);

    // bcoin announces the transaction (its inv queue is flushed every 5 s); the engine fetches
    // it and hands it to the embedder
    let tx = watch.until(
        T,
        "the transaction from bcoin handed to the embedder",
        |w| w.txs.iter().find(|t| t.txid().to_string() == txid).cloned(),
    );
    assert!(engine.accept_tx(&tx.txid()));
    assert_eq!(tx.output_count(), 2, "payment and change: {tx:?}");
    assert!(
        !tx.has_witness(),
        "the wallet makes legacy pubkeyhash spends"
    );

    // the block that confirms it, fetched and decoded
    let hash = bcoin.mine(1).pop().expect("one block");
    // announced with headers (we sent sendheaders), downloaded and stored by the engine
    watch.until(T, "bcoin's block downloaded by the engine", |w| {
        w.connected.contains(&hash).then_some(())
    });
    let h: bsn::wire::Hash256 = hash.parse().unwrap();
    let block = engine
        .block(bsn::HeaderRef::Hash(h))
        .unwrap()
        .expect("stored");
    // and the embedder can still fetch a block itself with getdata
    engine
        .send(
            id,
            Message::GetData(vec![bsn::wire::Inventory {
                kind: InvType::BLOCK,
                hash: h,
            }]),
        )
        .unwrap();
    watch.until(T, "the block from bcoin on request", |w| {
        w.messages
            .iter()
            .any(|m| matches!(m, Message::Block(b) if b.hash() == h))
            .then_some(())
    });
    assert_eq!(block.header.prev_hash.to_string(), blocks[100]);
    let txids: Vec<String> = block.txs.iter().map(|t| t.txid().to_string()).collect();
    assert_eq!(txids.len(), 2, "coinbase and our transaction");
    assert_eq!(txids[1], txid);
    let p = our_peer(&engine).expect("still connected");
    assert_eq!(p.stats.errors, 0);
    engine.stop();
}
