//! bsn against a real full node: bcoin 1.0.2 on regtest (see `bcoin_support`). The handshake
//! both ways, ping/pong measured by us and answered for bcoin, block announcements, the
//! connection staying up with bcoin's ban score at zero (bcoin does not know protoconf and must
//! tolerate it), a wallet transaction and its block relayed by bcoin, fetched with getdata and
//! decoded by bsn's codec; addresses exchanged both ways (getaddr answered, addr relayed); 500
//! blocks with transactions synced from bcoin headers first, every hash and byte checked; a
//! fresh bcoin that may talk only to bsn syncing from it (getblocks/inv) the 400 blocks bsn
//! synced from another bcoin, and 1,200 blocks made here (past getblocks' 500 per answer); a
//! transaction submitted to bsn reaching bcoin's mempool. Every test ends by checking, from
//! bcoin's side, that bsn was neither scored, banned nor dropped (`assert_bcoin_keeps_bsn`).

mod bcoin_support;
mod common;

use common::random_u64;

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
    c.pin_threads = false;
    c.tick = Duration::from_millis(20);
    c.ping_interval = PING_INTERVAL;
    c.ping_timeout = Duration::from_secs(10);
    c.services = services;
    // dial only what a test asks for, never addresses learned from bcoin
    c.target_outbound = 0;
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
    /// `HeadersSynced` heights, each with the number of blocks connected before it.
    headers_synced: Vec<(u32, usize)>,
}

impl Watch {
    fn new(engine: &Engine) -> Watch {
        Watch {
            ev: engine.events(),
            messages: Vec::new(),
            connected: Vec::new(),
            txs: Vec::new(),
            headers_synced: Vec::new(),
        }
    }

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
                Event::HeadersSynced { height } => {
                    self.headers_synced.push((height, self.connected.len()))
                }
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

    // addresses: whoever dialled asks for them; bsn, when it dialled, also tells bcoin where it
    // listens, and bcoin reads that addr (and keeps it out of its table: loopback is not
    // routable for bcoin)
    let host = theirs["addr"]
        .as_str()
        .expect("addr in getpeerinfo")
        .to_string();
    if bcoin_inbound {
        assert!(
            msgs(&p, "getaddr").1 >= 1,
            "bsn sent getaddr: {:?}",
            p.stats
        );
        assert!(
            msgs(&p, "addr").1 >= 1,
            "bsn sent its address: {:?}",
            p.stats
        );
        let line = format!("addrs (hosts=0, peers=1) ({host})");
        assert!(
            bcoin
                .log()
                .lines()
                .any(|l| l.contains("Received 1 addrs") && l.contains(&line)),
            "bcoin did not log bsn's addr:\n{}",
            bcoin.log_tail(40)
        );
    } else {
        assert!(msgs(&p, "getaddr").0 >= 1, "bcoin asked bsn: {:?}", p.stats);
    }
    assert_bcoin_keeps_bsn(bcoin, ua, 1);
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
    let mut watch = Watch::new(&engine);
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
    let mut watch = Watch::new(&engine);
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
    let mut watch = Watch::new(&engine);
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
    assert_bcoin_keeps_bsn(&bcoin, &engine.config().user_agent.clone(), 1);
    engine.stop();
}

/// bsn's connections (by our user agent) as bcoin lists them.
fn bsn_peers_in_bcoin(bcoin: &Bcoin, ua: &str) -> Vec<Json> {
    bcoin
        .peers()
        .into_iter()
        .filter(|p| p["subver"].as_str() == Some(ua))
        .collect()
}

/// Whether a line of bcoin's log holds something against a peer: a ban or ban score, DoS or
/// misbehaviour, a rejected (`VerifyError`) or unrequested message, a peer dropped with blocks
/// in flight or not reading; or, for the connections in `hosts` (bcoin writes them `(ip:port)`),
/// any error, warning or stall — except that bcoin does not know BSV's `protoconf`, which it notes
/// and ignores.
fn is_complaint(line: &str, hosts: &[String]) -> bool {
    const ANYWHERE: [&str; 9] = [
        "ban threshold",
        "banning peer",
        "banned peer",
        "misbehav",
        "verifyerror",
        "unrequested",
        "dos attempt",
        "disconnected with requested",
        "not reading",
    ];
    let low = line.to_lowercase();
    if ANYWHERE.iter().any(|w| low.contains(w)) {
        return true;
    }
    hosts.iter().any(|h| line.contains(h.as_str()))
        && (low.contains("error") || low.contains("[warning]") || low.contains("stall"))
        && !line.contains("Unknown packet: protoconf")
}

/// bcoin's verdict on bsn at the end of a test: it still lists each of bsn's `connections` with
/// ban score 0, and its log holds no complaint (see [`is_complaint`]) about them.
fn assert_bcoin_keeps_bsn(bcoin: &Bcoin, ua: &str, connections: usize) {
    let ours = bsn_peers_in_bcoin(bcoin, ua);
    assert_eq!(
        ours.len(),
        connections,
        "bsn's connections in bcoin's getpeerinfo: {ours:?}"
    );
    for p in &ours {
        assert_eq!(p["banscore"].as_i64(), Some(0), "bcoin scored bsn: {p}");
    }
    let hosts: Vec<String> = ours
        .iter()
        .map(|p| format!("({})", p["addr"].as_str().expect("addr in getpeerinfo")))
        .collect();
    let log = bcoin.log();
    let bad: Vec<&str> = log.lines().filter(|l| is_complaint(l, &hosts)).collect();
    assert!(
        bad.is_empty(),
        "bcoin complained about bsn {hosts:?}:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_complaint_filter_catches_what_bcoin_logs_against_a_peer() {
    let h = vec!["(127.0.0.1:38464)".to_string()];
    for bad in [
        "[debug] (net) Error: Socket hangup. (127.0.0.1:38464)",
        "[debug] (net) Error: Peer is stalling (block). (127.0.0.1:38464)",
        "[warning] (net) Received unrequested block: 00ab (127.0.0.1:1).",
        "[debug] (peer) Ban threshold exceeded (127.0.0.1:1).",
        "[debug] (net) Banning peer (127.0.0.1:1).",
        "[warning] (net) VerifyError: bad-txns-inputs-missingorspent (code=invalid score=0)",
        "[warning] (net) Peer disconnected with requested blocks.",
    ] {
        assert!(is_complaint(bad, &h), "{bad}");
    }
    for fine in [
        "[warning] (net) Unknown packet: protoconf (127.0.0.1:38464).",
        "[info] (net) Received 1 addrs (hosts=0, peers=1) (127.0.0.1:38464).",
        "[debug] (net) Error: Socket hangup. (127.0.0.1:384)",
        "[debug] (net) Error: queryA ENOTFOUND myip.opendns.com",
    ] {
        assert!(!is_complaint(fine, &h), "{fine}");
    }
}

/// The engine's ready peer whose user agent says bcoin and whose `addr` (if given) matches.
fn bcoin_peer(engine: &Engine, addr: Option<SocketAddr>) -> Option<PeerInfo> {
    engine
        .peers()
        .into_iter()
        .find(|p| p.ready && p.user_agent.contains("bcoin") && addr.is_none_or(|a| a == p.addr))
}

/// Raw block bytes as the engine stored them.
fn stored_block(engine: &Engine, hash: &bsn::wire::Hash256) -> Option<Vec<u8>> {
    bsn::store::records::with_block(engine.store().as_ref(), hash, |v| v.map(<[u8]>::to_vec))
        .expect("store read")
}

/// Waits until the engine has `tip` at `height` as its best header and every block up to it
/// stored, then checks every height against bcoin's `getblockhash` and every stored block
/// against its hash (the double SHA-256 of its first 80 bytes). Returns the blocks.
fn assert_same_chain(
    engine: &Engine,
    watch: &mut Watch,
    bcoin: &Bcoin,
    height: u32,
    timeout: Duration,
) -> Vec<bsn::wire::Block> {
    let tip: bsn::wire::Hash256 = bcoin.best_hash().parse().expect("hex hash");
    watch.until(
        timeout,
        "the engine has bcoin's tip and every block, and raised BlockConnected for each",
        |w| {
            let (best, h) = engine.best_header().unwrap();
            // the store holds a block before its event reaches the embedder: both are awaited
            (best == tip
                && h == height
                && w.connected.len() >= height as usize
                && (1..=height).all(|i| {
                    engine
                        .header(bsn::HeaderRef::Height(i))
                        .is_some_and(|(hd, _)| stored_block(engine, &hd.hash()).is_some())
                }))
            .then_some(())
        },
    );
    let theirs = bcoin.block_hashes(0..=height);
    let mut blocks = Vec::new();
    for (h, want) in (0..=height).zip(&theirs) {
        let (header, at) = engine
            .header(bsn::HeaderRef::Height(h))
            .unwrap_or_else(|| panic!("no header at {h}"));
        assert_eq!(at, h);
        assert_eq!(&header.hash().to_string(), want, "hash at height {h}");
        if h == 0 {
            continue; // genesis is built in, not downloaded
        }
        let raw = stored_block(engine, &header.hash()).unwrap_or_else(|| panic!("no block {h}"));
        assert_eq!(
            &bsn::wire::Hash256::sha256d(&raw[..80]).to_string(),
            want,
            "stored bytes of block {h} hash to bcoin's hash"
        );
        let block = engine
            .block(bsn::HeaderRef::Height(h))
            .expect("store read")
            .unwrap_or_else(|| panic!("block {h} does not decode"));
        assert_eq!(&block.hash().to_string(), want);
        assert_eq!(block.raw().len(), raw.len());
        blocks.push(block);
    }
    blocks
}

#[test]
fn bsn_syncs_500_blocks_with_transactions_from_bcoin_headers_first() {
    const HEIGHT: u32 = 500;
    let Some(bcoin) = Bcoin::start() else { return };
    let t0 = Instant::now();
    // from height 102 on, every third block confirms two wallet payments
    let txids = bcoin.mine_with_transactions(HEIGHT as i64, 3, 2);
    assert_eq!(bcoin.height(), HEIGHT as i64);
    let mined = t0.elapsed();
    // bcoin's own blocks hold its payments
    let sample = bcoin.rpc(
        "getblock",
        &format!(
            "[{},true,false]",
            bcoin_support::json_str(&bcoin.block_hashes([102])[0])
        ),
    );
    assert_eq!(
        sample["tx"].as_array().map(<[Json]>::len),
        Some(3),
        "{sample}"
    );

    let engine = Engine::start(config(0)).expect("engine starts");
    let mut watch = Watch::new(&engine);
    let t1 = Instant::now();
    engine.connect(bcoin.p2p_addr()).unwrap();
    let blocks = assert_same_chain(&engine, &mut watch, &bcoin, HEIGHT, Duration::from_secs(60));
    let synced = t1.elapsed();

    // headers first: the whole header chain was in before the first block was connected
    let (h, before) = *watch
        .headers_synced
        .first()
        .unwrap_or_else(|| panic!("no HeadersSynced event"));
    assert_eq!(
        (h, before),
        (HEIGHT, 0),
        "headers synced at {h} after {before} blocks"
    );
    // every block connected once, in chain order, and downloaded once
    let tip_hashes = bcoin.block_hashes(1..=HEIGHT);
    assert_eq!(watch.connected, tip_hashes, "BlockConnected in chain order");
    let p = bcoin_peer(&engine, Some(bcoin.p2p_addr())).expect("still connected");
    assert!(
        msgs(&p, "getheaders").1 >= 1 && msgs(&p, "headers").0 >= 1,
        "{:?}",
        p.stats
    );
    assert_eq!(
        msgs(&p, "block").0,
        HEIGHT as u64,
        "each block downloaded once"
    );
    assert_eq!(p.stats.errors, 0);

    // the blocks carry bcoin's payments: every txid sent is in bsn's chain
    let with_txs = blocks.iter().filter(|b| b.txs.len() > 1).count();
    assert!(
        with_txs >= 100,
        "{with_txs} blocks with more than the coinbase"
    );
    let in_chain: std::collections::HashSet<String> = blocks
        .iter()
        .flat_map(|b| b.txs.iter().map(|t| t.txid().to_string()))
        .collect();
    assert!(txids.len() >= 250, "{} payments", txids.len());
    for t in &txids {
        assert!(in_chain.contains(t), "payment {t} not in bsn's chain");
    }
    assert_bcoin_keeps_bsn(&bcoin, &engine.config().user_agent.clone(), 1);
    engine.stop();
    eprintln!(
        "bcoin mined {HEIGHT} blocks ({} payments, {with_txs} blocks with them) in {mined:.1?}; \
         bsn synced them in {synced:.1?}",
        txids.len()
    );
}

#[test]
fn a_fresh_bcoin_that_may_talk_only_to_bsn_syncs_400_blocks_from_it() {
    // below 432, where segwit activates on bcoin's regtest: past it bcoin wants witness data
    const HEIGHT: u32 = 400;
    let Some(miner) = Bcoin::start() else { return };
    let txids = miner.mine_with_transactions(HEIGHT as i64, 3, 2);
    // bsn syncs the chain from the miner, and serves it as a full node (NODE_NETWORK, and
    // NODE_WITNESS, which bcoin wants of its outbound peers; below 432 there is no witness data)
    let engine = Engine::start(config(9)).expect("engine starts");
    let mut watch = Watch::new(&engine);
    engine.connect(miner.p2p_addr()).unwrap();
    let blocks = assert_same_chain(&engine, &mut watch, &miner, HEIGHT, Duration::from_secs(60));
    assert!(blocks.iter().filter(|b| b.txs.len() > 1).count() >= 90);

    let ours = engine.local_addr().expect("listening");
    let t0 = Instant::now();
    let Some(fresh) = Bcoin::start_connecting_to(ours) else {
        return;
    };
    let started = t0.elapsed();
    let tip = miner.best_hash();
    watch.until(
        Duration::from_secs(120),
        "the fresh bcoin reaches the miner's tip through bsn",
        |_| (fresh.best_hash() == tip).then_some(()),
    );
    let synced = t0.elapsed();
    assert_eq!(fresh.height(), HEIGHT as i64);
    assert_eq!(
        fresh.block_hashes(0..=HEIGHT),
        miner.block_hashes(0..=HEIGHT),
        "the fresh bcoin's chain is the miner's"
    );
    // byte for byte the blocks bsn stored, with every payment in them
    let raws = fresh.rpc_batch(
        &fresh
            .block_hashes(1..=HEIGHT)
            .iter()
            .map(|h| {
                (
                    "getblock",
                    format!("[{},false]", bcoin_support::json_str(h)),
                )
            })
            .collect::<Vec<_>>(),
    );
    for (b, raw) in blocks.iter().zip(&raws) {
        assert_eq!(
            raw.as_str(),
            Some(::hex::encode(b.raw()).as_str()),
            "block {}",
            b.hash()
        );
    }
    let in_chain: std::collections::HashSet<String> = blocks
        .iter()
        .flat_map(|b| b.txs.iter().map(|t| t.txid().to_string()))
        .collect();
    assert!(txids.iter().all(|t| in_chain.contains(t)));

    // bsn served it: the fresh bcoin dialled bsn only, asked with getblocks, fetched every block
    let p = engine
        .peers()
        .into_iter()
        .find(|p| p.ready && p.direction == Direction::Inbound)
        .expect("the fresh bcoin is connected to bsn");
    assert!(p.user_agent.contains("bcoin"), "{}", p.user_agent);
    assert!(msgs(&p, "getblocks").0 >= 1, "{:?}", p.stats);
    assert!(msgs(&p, "inv").1 >= 1, "{:?}", p.stats);
    assert_eq!(msgs(&p, "block").1, HEIGHT as u64, "each block served once");
    assert_eq!(msgs(&p, "notfound").1, 0, "{:?}", p.stats);
    assert_eq!(p.stats.errors, 0);
    let theirs = fresh.peers();
    assert_eq!(
        theirs.len(),
        1,
        "the fresh bcoin talks only to bsn: {theirs:?}"
    );
    let ua = engine.config().user_agent.clone();
    assert_bcoin_keeps_bsn(&fresh, &ua, 1);
    assert_bcoin_keeps_bsn(&miner, &ua, 1);
    engine.stop();
    eprintln!("fresh bcoin started in {started:.1?}, at bsn's tip {HEIGHT} after {synced:.1?}");
}

#[test]
fn a_transaction_submitted_to_bsn_reaches_bcoins_mempool() {
    let Some(bcoin) = Bcoin::start() else { return };
    let engine = Engine::start(config(0)).expect("engine starts");
    let mut watch = Watch::new(&engine);
    engine.connect(bcoin.p2p_addr()).unwrap();
    bcoin.mine(101);
    watch.until(T, "the engine has bcoin's 101 blocks", |w| {
        (w.connected.len() == 101).then_some(())
    });
    // signed by bcoin's wallet but neither broadcast nor known to its mempool
    let (txid, hex) = bcoin.create_tx(&bcoin.new_address(), 250_000_000);
    assert!(!bcoin.mempool().contains(&txid));
    let raw = bytes::Bytes::from(::hex::decode(&hex).expect("hex"));
    let tx = <bsn::wire::Transaction as bsn::wire::Decode>::decode_all(raw).expect("decodes");
    assert_eq!(tx.txid().to_string(), txid);

    engine.submit_tx(tx).unwrap();
    // announced with inv at the next tick; bcoin asks for it, validates it, takes it in
    watch.until(T, "the transaction in bcoin's mempool", |_| {
        bcoin.mempool().contains(&txid).then_some(())
    });
    let p = bcoin_peer(&engine, Some(bcoin.p2p_addr())).expect("still connected");
    assert_eq!(msgs(&p, "tx").1, 1, "served once: {:?}", p.stats);
    assert!(msgs(&p, "getdata").0 >= 1, "{:?}", p.stats);

    // confirmed in bcoin's next block, which bsn downloads; bsn never took it back from bcoin
    let hash = bcoin.mine(1).pop().expect("one block");
    watch.until(T, "the block with it", |w| {
        w.connected.contains(&hash).then_some(())
    });
    let block = engine
        .block(bsn::HeaderRef::Hash(hash.parse().unwrap()))
        .unwrap()
        .expect("stored");
    assert!(
        block.txs.iter().any(|t| t.txid().to_string() == txid),
        "the block confirms it"
    );
    assert!(
        watch.txs.iter().all(|t| t.txid().to_string() != txid),
        "bsn fetched its own transaction back"
    );
    assert_bcoin_keeps_bsn(&bcoin, &engine.config().user_agent.clone(), 1);
    engine.stop();
}

/// A scripted peer on its own thread: handshaken with the engine, answering its pings, sending
/// what it is handed. Dropping it closes the connection.
struct Gossiper {
    tx: Option<crossbeam_channel::Sender<Message>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gossiper {
    fn connect(addr: SocketAddr) -> Gossiper {
        let mut peer = common::ScriptPeer::connect(addr, bcoin_support::BCOIN_REGTEST_MAGIC);
        peer.handshake(random_u64());
        let (tx, rx) = crossbeam_channel::unbounded::<Message>();
        let thread = std::thread::spawn(move || loop {
            match rx.try_recv() {
                Ok(m) => peer.send(&m),
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
            if let Some(Message::Ping(n)) = peer.recv(Duration::from_millis(20)) {
                peer.send(&Message::Pong(n));
            }
        });
        Gossiper {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn send(&self, m: Message) {
        self.tx
            .as_ref()
            .expect("running")
            .send(m)
            .expect("gossiper thread runs");
    }
}

impl Drop for Gossiper {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                r.expect("gossiper thread");
            }
        }
    }
}

fn doc_addr(group: u16, n: u16) -> SocketAddr {
    // 3fff::/20 is for documentation (RFC 9637) and reachable nowhere; bcoin 1.0.2, older,
    // takes it for a routable address (2001:db8::/32 it refuses as invalid)
    SocketAddr::from((
        std::net::Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, group, n),
        18444,
    ))
}

fn timed(a: SocketAddr, services: u64) -> bsn::wire::TimedNetAddr {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    bsn::wire::TimedNetAddr {
        time: now as u32,
        addr: bsn::wire::NetAddr::new(a, services),
    }
}

/// The number of hosts bcoin says it knows after its latest addr from `host`, if it logged one
/// with `count` entries.
fn bcoin_hosts_after_addr(bcoin: &Bcoin, count: usize, host: SocketAddr) -> Option<u64> {
    let tail = format!(" ({host}).");
    let head = format!("Received {count} addrs (hosts=");
    bcoin.log().lines().rev().find_map(|l| {
        let rest = l.split_once(&head)?.1;
        l.ends_with(&tail).then_some(())?;
        rest.split(',').next()?.parse().ok()
    })
}

#[test]
fn addresses_are_exchanged_with_bcoin() {
    // None of the addresses here is ever dialled: bsn's outbound target is 0, and bcoin's only
    // outbound slot (--only) is bsn's.
    let engine = Engine::start(config(9)).expect("engine starts");
    let mut watch = Watch::new(&engine);
    let ours = engine.local_addr().expect("listening");
    let gossip = Gossiper::connect(ours);
    // a peer tells bsn of two full nodes
    let (e1, e2, e3) = (doc_addr(0xe, 1), doc_addr(0xe, 2), doc_addr(0xe, 3));
    gossip.send(Message::Addr(vec![timed(e1, 9), timed(e2, 9)]));
    watch.until(T, "bsn's book holds the gossiped addresses", |_| {
        let book = engine.addresses();
        [e1, e2]
            .iter()
            .all(|a| book.iter().any(|(b, _)| b == a))
            .then_some(())
    });

    // a bcoin that talks only to bsn and knows one more node (a seed)
    let seed = doc_addr(0xb, 1);
    let Some(bcoin) = Bcoin::start_with(&[format!("--only={ours}"), format!("--seeds={seed}")])
    else {
        return;
    };
    let p = watch.until(T, "bcoin connected to bsn", |_| bcoin_peer(&engine, None));
    assert_eq!(p.direction, Direction::Inbound);
    // bcoin asks bsn for addresses; bsn answers with its book, and bcoin takes both full nodes
    // into its table (which held its seed and bsn: two hosts)
    let hosts = watch.until(T, "bcoin takes bsn's answer to its getaddr", |_| {
        bcoin_hosts_after_addr(&bcoin, 2, ours)
    });
    assert_eq!(hosts, 4, "bcoin's table: seed, bsn and the two from bsn");
    // a fresh address gossiped to bsn is relayed on to bcoin, which takes it too
    gossip.send(Message::Addr(vec![timed(e3, 9)]));
    let hosts = watch.until(T, "bcoin takes the address bsn relayed", |_| {
        bcoin_hosts_after_addr(&bcoin, 1, ours)
    });
    assert_eq!(hosts, 5);
    // bsn asks bcoin: bcoin answers with what bsn did not tell it, its seed among them
    engine.send(p.id, Message::GetAddr).unwrap();
    let info = watch.until(T, "bcoin's seed in bsn's book", |_| {
        engine.addresses().into_iter().find(|(a, _)| *a == seed)
    });
    assert_eq!(
        info.1.source,
        std::net::IpAddr::from([127, 0, 0, 1]),
        "{info:?}"
    );
    let p = bcoin_peer(&engine, None).expect("still connected");
    assert!(msgs(&p, "getaddr").0 >= 1, "bcoin asked: {:?}", p.stats);
    assert!(msgs(&p, "getaddr").1 >= 1, "bsn asked: {:?}", p.stats);
    assert!(msgs(&p, "addr").0 >= 1, "bcoin answered: {:?}", p.stats);
    assert!(
        msgs(&p, "addr").1 >= 2,
        "bsn answered and relayed: {:?}",
        p.stats
    );
    assert_eq!(p.stats.errors, 0);
    assert_bcoin_keeps_bsn(&bcoin, &engine.config().user_agent.clone(), 1);
    engine.stop();
    drop(gossip);
}

#[test]
fn a_fresh_bcoin_syncs_more_than_500_blocks_from_bsn() {
    // Made here, not by bcoin: their version does not signal segwit, so it never activates and
    // bcoin takes a chain of any length from bsn. 1,200 blocks are three getblocks answers: bcoin
    // goes on after each 500 only because bsn follows the batch's last block with its tip (an
    // inv bcoin does not know, so it asks for more).
    const HEIGHT: usize = 1_200;
    let blocks = common::regtest_blocks(HEIGHT);
    let dir = common::TempDir::new("bcoin-getblocks");
    let file = dir.0.join("blk.dat");
    common::write_blk(
        &file,
        regtest_params().disk_magic,
        &blocks.iter().map(|b| &b.raw()[..]).collect::<Vec<_>>(),
    );
    let mut c = config(9);
    c.data_dir = Some(dir.0.join("bsn"));
    let engine = Engine::start(c).expect("engine starts");
    let mut watch = Watch::new(&engine);
    assert_eq!(
        engine.import_block_file(&file).unwrap(),
        (HEIGHT, HEIGHT as u32)
    );
    let Some(fresh) = Bcoin::start_connecting_to(engine.local_addr().expect("listening")) else {
        return;
    };
    let t0 = Instant::now();
    let tip = blocks.last().expect("blocks").hash().to_string();
    watch.until(
        Duration::from_secs(90),
        "the fresh bcoin reaches bsn's tip",
        |_| (fresh.best_hash() == tip).then_some(()),
    );
    let synced = t0.elapsed();
    let ours: Vec<String> = std::iter::once(regtest_params().genesis_hash())
        .chain(blocks.iter().map(|b| b.hash()))
        .map(|h| h.to_string())
        .collect();
    assert_eq!(fresh.block_hashes(0..=HEIGHT as u32), ours);
    let p = bcoin_peer(&engine, None).expect("the fresh bcoin is connected");
    assert!(msgs(&p, "getblocks").0 >= 3, "{:?}", p.stats);
    assert_eq!(msgs(&p, "block").1, HEIGHT as u64, "each block served once");
    assert_eq!(msgs(&p, "notfound").1, 0, "{:?}", p.stats);
    assert_eq!(p.stats.errors, 0);
    assert_bcoin_keeps_bsn(&fresh, &engine.config().user_agent.clone(), 1);
    engine.stop();
    eprintln!("bcoin synced {HEIGHT} blocks from bsn in {synced:.1?}");
}

#[test]
fn a_chain_ending_exactly_on_a_full_batch_syncs_without_a_stall() {
    // bcoin sends nothing at all (not an empty `headers`) when asked past its tip: after two
    // full batches of 2,000 the third request is a probe, and its silence ends the sync.
    const HEIGHT: u32 = 4000;
    let Some(bcoin) = Bcoin::start() else { return };
    bcoin.mine(HEIGHT as usize);
    let mut c = config(0);
    c.headers_only = true;
    // a long stall timeout: the sync must end long before it
    c.sync_stall_timeout = Duration::from_secs(60);
    let engine = Engine::start(c).expect("engine starts");
    let mut watch = Watch::new(&engine);
    let t0 = Instant::now();
    engine.connect(bcoin.p2p_addr()).unwrap();
    let height = watch.until(Duration::from_secs(20), "HeadersSynced", |w| {
        w.headers_synced.first().map(|&(h, _)| h)
    });
    let took = t0.elapsed();
    assert_eq!(height, HEIGHT);
    assert_eq!(
        engine.best_header().unwrap().0.to_string(),
        bcoin.best_hash(),
        "same tip"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // no stall was held against bcoin: it is still the peer, and still connected
    let p = bcoin_peer(&engine, Some(bcoin.p2p_addr())).expect("still connected");
    assert_eq!(msgs(&p, "getheaders").1, 3, "{:?}", p.stats);
    assert_bcoin_keeps_bsn(&bcoin, &engine.config().user_agent.clone(), 1);
    engine.stop();
}
