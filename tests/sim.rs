//! Node cores in one thread on a virtual clock, joined by in-memory links (no sockets, no
//! threads): handshake, sync, block and transaction relay, a liar banned; the same seed gives
//! the same trace.

mod common;

use bsn::sim::SimNet;
use bsn::wire::{Block, Message};
use bsn::{Config, Event, Network, TxPolicy};
use std::net::IpAddr;
use std::time::Duration;

fn node_config() -> Config {
    let mut c = Config::new(Network::Regtest);
    c.tx_policy = TxPolicy::AcceptAll;
    c.target_outbound = 0;
    c
}

struct Outcome {
    trace: Vec<String>,
    liar_ip: IpAddr,
}

/// Three nodes in a line A - B - C; A holds 2,000 blocks. C also hears from a liar.
fn scenario(seed: u64, chain: &[Block]) -> Outcome {
    let mut net = SimNet::new(seed);
    let (a, b, c) = (
        net.add_node(node_config()),
        net.add_node(node_config()),
        net.add_node(node_config()),
    );
    let liar = net.add_script(node_config());
    assert_eq!(net.import_blocks(a, chain), 2000);
    net.connect(b, a);
    net.connect(c, b);
    assert!(
        net.run_until(Duration::from_secs(10), |n| n.ready_peers(a) == 1
            && n.ready_peers(c) == 1
            && n.ready_peers(b) == 2),
        "handshakes"
    );
    // B and C sync the whole chain, headers first, then blocks.
    let synced = net.run_until(Duration::from_secs(120), |n| {
        [b, c].iter().all(|&x| {
            n.events(x)
                .iter()
                .filter(|e| matches!(e, Event::BlockConnected { .. }))
                .count()
                == 2000
        })
    });
    assert!(synced, "B and C did not connect 2,000 blocks");
    for x in [b, c] {
        let heights: Vec<u32> = net
            .events(x)
            .iter()
            .filter_map(|e| match e {
                Event::BlockConnected { height, .. } => Some(*height),
                _ => None,
            })
            .collect();
        assert_eq!(heights, (1..=2000).collect::<Vec<u32>>(), "chain order");
        assert_eq!(net.best_header(x), (chain[1999].hash(), 2000));
        assert_eq!(net.blocks_height(x), Some(2000));
    }
    // A new block on A reaches C through B.
    let new = common::next_block(&chain[1999].header, 9_999);
    let new_hash = new.hash();
    assert_eq!(net.submit_block(a, new), Ok(2001));
    assert!(
        net.run_until(Duration::from_secs(10), |n| n.events(c).iter().any(
            |e| matches!(e, Event::BlockConnected { height: 2001, hash, .. } if *hash == new_hash)
        )),
        "relayed block"
    );
    // A transaction submitted on A reaches B and C exactly once.
    let t = common::sample_tx(1);
    let txid = t.txid();
    net.submit_tx(a, t);
    let got = |n: &SimNet, x| {
        n.events(x)
            .iter()
            .filter(|e| matches!(e, Event::TxReceived { tx, .. } if tx.txid() == txid))
            .count()
    };
    assert!(
        net.run_until(Duration::from_secs(10), |n| got(n, b) == 1
            && got(n, c) == 1),
        "relayed transaction"
    );
    // A liar joins C and sends a header with no proof of work: scored and banned.
    net.connect(liar, c);
    assert!(net.run_until(Duration::from_secs(10), |n| n.ready_peers(liar) == 1));
    let mut bad = common::next_block(&chain[1999].header, 1).header;
    while bad.meets_own_target() {
        bad.nonce += 1;
    }
    for _ in 0..2 {
        net.script_send(liar, Message::Headers(vec![bad]));
        net.run_until(Duration::from_secs(1), |_| false);
    }
    let liar_ip = net.addr(liar).ip();
    assert!(
        net.run_until(Duration::from_secs(10), |n| n.events(c).iter().any(
            |e| matches!(e, Event::Banned { subnet, .. } if subnet.contains(liar_ip))
        )),
        "liar banned"
    );
    assert!(net.is_banned(c, liar_ip));
    assert!(net.run_until(Duration::from_secs(10), |n| n.ready_peers(liar) == 0));
    // nobody honest was scored
    for x in [a, b, c] {
        for e in net.events(x) {
            if let Event::BanScore { ip, .. } = e {
                assert_eq!(*ip, liar_ip, "an honest node was scored: {e:?}");
            }
        }
    }
    // a little more time: pings, ticks, nothing else should differ between runs either
    net.run_until(Duration::from_secs(30), |_| false);
    Outcome {
        trace: net.trace_lines().to_vec(),
        liar_ip,
    }
}

#[test]
fn three_cores_on_a_virtual_clock_sync_relay_and_ban_a_liar_the_same_way_twice() {
    let chain = common::regtest_blocks(2000);
    let one = scenario(11, &chain);
    let two = scenario(11, &chain);
    assert!(one.trace.len() > 1000, "trace of {} lines", one.trace.len());
    if std::env::var("SIM_TRACE").is_ok() {
        for l in one.trace.iter() {
            eprintln!("{l}");
        }
        eprintln!("{} lines", one.trace.len());
    }
    assert_eq!(one.liar_ip, two.liar_ip);
    if one.trace != two.trace {
        let i = one
            .trace
            .iter()
            .zip(&two.trace)
            .position(|(x, y)| x != y)
            .unwrap_or(one.trace.len().min(two.trace.len()));
        panic!(
            "traces differ at line {i}:\n{:?}\n{:?}",
            one.trace.get(i),
            two.trace.get(i)
        );
    }
    // another seed gives another trace (the seed is really used)
    let three = scenario(12, &chain);
    assert_ne!(one.trace, three.trace);
}

/// A burst of address news does not make honest neighbours ban each other: relayed addresses
/// go out in one `addr` per peer per turn, not one message per message received (three peers
/// telling A 20 small `addr`s each at once made A send B 60 messages, past its rate limit).
#[test]
fn a_burst_of_address_news_is_relayed_within_the_rate_limit() {
    use bsn::wire::{NetAddr, TimedNetAddr};
    let mut net = SimNet::new(5);
    let a = net.add_node(node_config());
    let b = net.add_node(node_config());
    let c = net.add_node(node_config());
    net.connect(b, a);
    net.connect(c, a);
    let tellers: Vec<_> = (0..3).map(|_| net.add_script(node_config())).collect();
    for t in &tellers {
        net.connect(*t, a);
    }
    assert!(net.run_until(Duration::from_secs(10), |n| n.ready_peers(a) == 5));
    let start = bsn::sim::SIM_UNIX_START as u32;
    let mut n = 0u32;
    for t in &tellers {
        for _ in 0..20 {
            let list = (0..10)
                .map(|_| {
                    n += 1;
                    TimedNetAddr {
                        time: start,
                        addr: NetAddr::new(
                            std::net::SocketAddr::from((
                                [11, (n >> 16) as u8, (n >> 8) as u8, n as u8],
                                8333,
                            )),
                            1,
                        ),
                    }
                })
                .collect();
            net.script_send(*t, Message::Addr(list));
        }
    }
    // B and C learn the news from A...
    let learned = |net: &mut SimNet, x| {
        net.addresses(x)
            .iter()
            .filter(|(s, _)| s.ip().to_string().starts_with("11."))
            .count()
    };
    net.run_for(Duration::from_secs(30));
    assert!(
        learned(&mut net, b) > 0 && learned(&mut net, c) > 0,
        "no address relayed"
    );
    // ...and nobody was scored for it
    for x in [a, b, c] {
        let scored: Vec<_> = net
            .events(x)
            .iter()
            .filter(|e| matches!(e, Event::BanScore { .. } | Event::Banned { .. }))
            .map(|e| format!("{e:?}"))
            .collect();
        assert!(scored.is_empty(), "node {x} scored someone: {scored:?}");
    }
}

/// A node's own block that lost at equal work to a header whose block is withheld connects
/// (and is relayed) once the next block is built on it: the blocks of the new best branch
/// that the node holds already are not asked of peers, who do not have them (found by
/// `bsn simnet --virtual`, seed 22 of its property runs: the network never got past it).
#[test]
fn a_block_held_off_the_best_chain_connects_when_a_reorg_makes_it_best() {
    let mut net = SimNet::new(3);
    let a = net.add_node(node_config());
    let b = net.add_node(node_config());
    let withholder = net.add_script(node_config());
    net.connect(b, a);
    net.connect(withholder, a);
    assert!(net.run_until(Duration::from_secs(5), |n| n.ready_peers(a) == 2));
    let genesis = Network::Regtest.params().genesis;
    // a valid header on genesis, its block never served
    let withheld = common::next_block(&genesis, 1);
    net.script_send(withholder, Message::Headers(vec![withheld.header]));
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.best_header(a), (withheld.hash(), 1));
    // A's own block at the same height: equal work, the header seen first stays best
    let x1 = common::next_block(&genesis, 2);
    assert_eq!(net.submit_block(a, x1.clone()), Ok(1));
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.blocks_height(a), Some(0));
    // the next block on it: more work; A holds both blocks of the new branch
    let x2 = common::next_block(&x1.header, 3);
    assert_eq!(net.submit_block(a, x2.clone()), Ok(2));
    let tip = (x2.hash(), 2);
    let done = net.run_until(Duration::from_secs(10), |n| {
        [a, b].iter().all(|&x| {
            n.events(x)
                .iter()
                .any(|e| matches!(e, Event::BlockConnected { hash, .. } if *hash == tip.0))
        })
    });
    assert!(
        done,
        "A and B did not connect the branch A holds: A at {:?} blocks {:?}, B at {:?}",
        net.best_header(a),
        net.blocks_height(a),
        net.best_header(b)
    );
    for x in [a, b] {
        assert_eq!(net.best_header(x), tip);
        assert_eq!(net.blocks_height(x), Some(2));
    }
}

/// A peer that answered `notfound` for a block it did not have yet is asked again once it
/// announces a chain through that block. Here A learns a branch from a scripted peer that
/// never serves it; A asks B (whose height qualifies it) for the first block, B has not got it
/// yet and says so; B gets the branch and announces it, and A must ask B again. Without that,
/// A waits for ever once the script is dropped for stalling. Found by the simulated network's
/// property runs (tests/simnet_props.rs; five seeds in 300 of an earlier form of them): after
/// a partition healed, a `replay` adversary sent a branch's headers before the honest peers
/// had its blocks. Fixed: `BlockDownload::raise_peer_height` forgets the peer's refusals up
/// to the height it announced.
#[test]
fn a_peer_that_refused_a_block_is_asked_again_once_it_announces_it() {
    let mut net = SimNet::new(9);
    let a = net.add_node(node_config());
    let b = net.add_node(node_config());
    let liar = net.add_script(node_config());
    let genesis = Network::Regtest.params().genesis;
    // B is at height 1 on Y when it connects: it qualifies for height-1 requests
    let y1 = common::next_block(&genesis, 1);
    assert_eq!(net.submit_block(b, y1.clone()), Ok(1));
    net.connect(b, a);
    net.connect(liar, a);
    assert!(
        net.run_until(Duration::from_secs(10), |n| n.ready_peers(a) == 2
            && n.events(a)
                .iter()
                .any(|e| matches!(e, Event::BlockConnected { height: 1, .. })))
    );
    // the script announces a heavier branch X it never serves
    let x1 = common::next_block(&genesis, 2);
    let x2 = common::next_block(&x1.header, 3);
    net.script_send(liar, Message::Headers(vec![x1.header, x2.header]));
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.best_header(a), (x2.hash(), 2));
    let refused = net.events(a).iter().any(|e| {
        matches!(e, Event::Message { message: Message::NotFound(i), .. } if i.iter().any(|i| i.hash == x1.hash()))
    });
    assert!(
        refused,
        "B was not asked for X1 first (the scenario needs it)"
    );
    // B gets the branch a little later and announces it
    assert_eq!(net.submit_block(b, x1.clone()), Ok(1));
    assert_eq!(net.submit_block(b, x2.clone()), Ok(2));
    let done = net.run_until(Duration::from_secs(120), |n| {
        n.events(a)
            .iter()
            .any(|e| matches!(e, Event::BlockConnected { hash, .. } if *hash == x2.hash()))
    });
    assert!(
        done,
        "A never asked B again: blocks to {:?}",
        net.blocks_height(a)
    );
}

/// The scripted peer's hooks the simulated network's adversaries use: the height a script
/// claims, a frame written in two raw pieces, a message on one connection only, the node at
/// the other end of a connection, and the virtual time of each event.
#[test]
fn scripts_claim_heights_write_raw_bytes_and_events_have_times() {
    use bsn::wire::frame::encode_message;
    let mut net = SimNet::new(4);
    let a = net.add_node(node_config());
    let b = net.add_node(node_config());
    let s = net.add_script(node_config());
    net.set_script_height(s, 500);
    net.set_script_height(a, 7); // not a script: no effect
    net.connect(s, a);
    net.connect(s, b);
    assert!(
        net.run_until(Duration::from_secs(5), |n| n.ready_peers(s) == 2
            && n.ready_peers(a) == 1
            && n.ready_peers(b) == 1)
    );
    net.run_for(Duration::from_secs(1));
    let claimed: Vec<i32> = net
        .events(a)
        .iter()
        .filter_map(|e| match e {
            Event::PeerConnected(p) => Some(p.start_height),
            _ => None,
        })
        .collect();
    assert_eq!(claimed, vec![500]);
    let conns = net.connections(s);
    assert_eq!(conns.len(), 2);
    let to_a = conns
        .iter()
        .copied()
        .find(|&id| net.remote(s, id) == Some(a))
        .expect("a connection to A");
    assert!(conns.iter().any(|&id| net.remote(s, id) == Some(b)));
    assert_eq!(net.node_count(), 3);
    // a transaction in two raw pieces, a second apart, to A only
    let t = common::sample_tx(3);
    let mut frame = bytes::BytesMut::new();
    encode_message(&mut frame, common::REGTEST, &Message::Tx(t.clone()));
    let frame = frame.freeze();
    let half = frame.len() / 2;
    let got = |net: &SimNet, x| {
        net.events(x)
            .iter()
            .any(|e| matches!(e, Event::TxReceived { tx, .. } if tx.txid() == t.txid()))
    };
    net.script_send_raw(s, to_a, frame.slice(..half));
    net.run_for(Duration::from_secs(1));
    assert!(!got(&net, a), "half a frame is not a message");
    net.script_send_raw(s, to_a, frame.slice(half..));
    net.run_for(Duration::from_secs(1));
    // (an unrequested transaction: dropped unscored, so A raises nothing for it, but the
    // frame was whole: no error, the connection stays)
    assert!(!got(&net, a));
    assert_eq!(net.ready_peers(s), 2);
    // a request on one connection: only that one gets the answer
    let before = net.received(s).len();
    let genesis = Network::Regtest.params().genesis.hash();
    let ask = bsn::wire::message::Locator {
        version: 70016,
        hashes: vec![genesis],
        stop: bsn::wire::Hash256::ZERO,
    };
    net.script_send_to(s, to_a, Message::GetHeaders(ask));
    net.run_for(Duration::from_secs(1));
    let answers: Vec<_> = net.received(s)[before..]
        .iter()
        .filter(|(_, m)| matches!(m, Message::Headers(_)))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(answers, vec![to_a]);
    // every event has its time, in order, none in the future
    let n = net.events(a).len();
    let times: Vec<Duration> = (0..n).filter_map(|i| net.event_time(a, i)).collect();
    assert_eq!(times.len(), n);
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    assert!(times.iter().all(|&t| t <= net.now()));
    assert!(net.event_time(a, n).is_none());
}

/// Blocks imported while peers are connected (an embedder's `import_block_file` at run time)
/// are news: the new tip is announced to the peers, which fetch the chain; from a full node
/// and from a header-only one (which keeps no blocks but announces the headers).
#[test]
fn blocks_imported_while_peers_are_connected_reach_them() {
    imported_chain_reaches_a_peer(false);
    imported_chain_reaches_a_peer(true);
}

fn imported_chain_reaches_a_peer(headers_only: bool) {
    let chain = common::regtest_blocks(20);
    let tip = chain.last().expect("blocks").hash();
    let mut net = SimNet::new(3);
    let mut importer = node_config();
    importer.headers_only = headers_only;
    let (a, b) = (net.add_node(importer), net.add_node(node_config()));
    net.connect(b, a);
    assert!(
        net.run_until(Duration::from_secs(10), |n| n.ready_peers(a) == 1
            && n.ready_peers(b) == 1),
        "handshake"
    );
    assert_eq!(net.import_blocks(a, &chain), 20);
    // from a header-only importer B learns the headers (nobody has the blocks to give)
    let want = if headers_only { None } else { Some(20) };
    let mut reached = false;
    for _ in 0..60 {
        net.run_for(Duration::from_secs(1));
        if net.best_header(b) == (tip, 20) && net.blocks_height(b) >= want {
            reached = true;
            break;
        }
    }
    assert!(
        reached,
        "B did not get A's imported chain (A header-only: {headers_only}): A at {:?}, B at {:?} \
         blocks {:?}",
        net.best_header(a),
        net.best_header(b),
        net.blocks_height(b)
    );
}

/// A transaction whose request failed is asked of another peer that announced it: A asks the
/// first announcer (a script), C announces it too while that request is in flight; the script
/// answers `notfound` (then, for a second transaction, leaves), and A must ask C. Each peer
/// announces a transaction once, so without this A never gets it. Found by the simulated
/// network with lossy links: a peer dropped as stalled took a node's transaction requests
/// with it.
#[test]
fn a_failed_transaction_request_is_asked_of_the_next_announcer() {
    use bsn::wire::{InvType, Inventory};
    let mut net = SimNet::new(11);
    let a = net.add_node(node_config());
    let c = net.add_node(node_config());
    let s = net.add_script(node_config());
    net.connect(s, a);
    assert!(net.run_until(Duration::from_secs(10), |n| n.ready_peers(a) == 1));
    net.connect(c, a);
    assert!(net.run_until(Duration::from_secs(10), |n| n.ready_peers(a) == 2));
    let (t1, t2) = (common::sample_tx(1), common::sample_tx(2));
    let inv = |t: &bsn::wire::Transaction| Inventory {
        kind: InvType::TX,
        hash: t.txid(),
    };
    // the script announces both first; A asks it
    net.script_send(s, Message::Inv(vec![inv(&t1), inv(&t2)]));
    let asked = net.run_until(Duration::from_secs(5), |n| {
        n.received(s)
            .iter()
            .any(|(_, m)| matches!(m, Message::GetData(i) if i.len() == 2))
    });
    assert!(asked, "A did not ask the script");
    // C has both and announces them to A while the script's request is in flight
    net.submit_tx(c, t1.clone());
    net.submit_tx(c, t2.clone());
    net.run_for(Duration::from_secs(2));
    let got = |n: &SimNet, t: &bsn::wire::Transaction| {
        n.events(a)
            .iter()
            .any(|e| matches!(e, Event::TxReceived { tx, .. } if tx.txid() == t.txid()))
    };
    assert!(
        !got(&net, &t1) && !got(&net, &t2),
        "asked of the script only"
    );
    // the script has not got t1 after all: A asks C
    net.script_send(s, Message::NotFound(vec![inv(&t1)]));
    assert!(
        net.run_until(Duration::from_secs(5), |n| got(n, &t1)),
        "t1 not asked of C after the notfound"
    );
    // the script leaves with t2's request: A asks C
    net.disconnect(s, a);
    assert!(
        net.run_until(Duration::from_secs(5), |n| got(n, &t2)),
        "t2 not asked of C after the script left"
    );
}

/// With the total fork budget used up by two peers' cheap branches, an honest peer that
/// announces a block that won the race on its side (equal work: not a new best chain here) is
/// not scored for it, nor is a peer for announcing a header the node holds already: only a
/// peer past its own budget is. Found by the simulated network with 250 adversaries on 5
/// nodes, where the honest nodes banned each other for announcing ordinary blocks.
#[test]
fn a_fork_budget_used_up_by_others_is_not_held_against_an_honest_peer() {
    let mut cfg = node_config();
    cfg.max_fork_headers_per_peer = 4;
    cfg.max_fork_headers = 6;
    let mut net = SimNet::new(12);
    let a = net.add_node(cfg);
    let h = net.add_node(node_config());
    let (s1, s2) = (net.add_script(node_config()), net.add_script(node_config()));
    let genesis = Network::Regtest.params().genesis;
    let b1 = common::next_block(&genesis, 1);
    for x in [a, h] {
        assert_eq!(net.submit_block(x, b1.clone()), Ok(1));
    }
    for x in [h, s1, s2] {
        net.connect(x, a);
    }
    assert!(net.run_until(Duration::from_secs(10), |n| n.ready_peers(a) == 3));
    // the scripts fill the total budget with one-header branches on genesis, three each
    for (k, s) in [s1, s2].into_iter().enumerate() {
        for i in 0..3u32 {
            let fork = common::next_block(&genesis, 100 + 10 * k as u32 + i);
            net.script_send(s, Message::Headers(vec![fork.header]));
        }
    }
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.counts(a).fork_headers, 6, "the budget is used up");
    // a race at height 2: A and H each find a block at once and announce it to the other
    let b2 = common::next_block(&b1.header, 2);
    let b2x = common::next_block(&b1.header, 3);
    assert_eq!(net.submit_block(a, b2.clone()), Ok(2));
    assert_eq!(net.submit_block(h, b2x.clone()), Ok(2));
    let h_ip = SimNet::node_addr(h).ip().to_string();
    // (virtual time: the announcements cross in well under a second)
    net.run_for(Duration::from_secs(2));
    // a script announces a header A holds already: it counts for nothing
    net.script_send(s1, Message::Headers(vec![b1.header]));
    net.run_for(Duration::from_secs(1));
    // H builds on its block: A follows (the positive sign that it took everything in)
    let b3x = common::next_block(&b2x.header, 4);
    assert_eq!(net.submit_block(h, b3x.clone()), Ok(3));
    let followed = net.run_until(Duration::from_secs(30), |n| {
        n.events(a)
            .iter()
            .any(|e| matches!(e, Event::BlockConnected { hash, .. } if *hash == b3x.hash()))
    });
    assert!(followed, "A did not follow H's branch");
    let scored: Vec<String> = net
        .events(a)
        .iter()
        .filter_map(|e| match e {
            Event::BanScore { ip, reason, .. } => Some(format!("{ip}: {reason:?}")),
            _ => None,
        })
        .collect();
    assert!(
        scored.iter().all(|s| !s.starts_with(&format!("{h_ip}:"))),
        "H scored: {scored:?}"
    );
    // the scripts' own batches were within their budgets: not scored either
    assert!(scored.is_empty(), "{scored:?}");
    // refused branches still count against the sender's own budget: S2 (3 stored) offers two
    // more, refused with the budget full, and is scored past its 4
    let forks = net.counts(a).fork_headers; // (A's own block at height 2 went stale too)
    for i in 0..2u32 {
        let fork = common::next_block(&genesis, 200 + i);
        net.script_send(s2, Message::Headers(vec![fork.header]));
    }
    let s2_ip = SimNet::node_addr(s2).ip();
    let scored = net.run_until(Duration::from_secs(5), |n| {
        n.events(a)
            .iter()
            .any(|e| matches!(e, Event::BanScore { ip, .. } if *ip == s2_ip))
    });
    assert!(scored, "S2 not scored past its own budget");
    assert_eq!(net.counts(a).fork_headers, forks, "nothing more stored");
}

/// A block sent again (unasked, or by a second peer once the first delivered it) while the
/// first copy waits for the block below it must not take that copy with it: the node would
/// connect the block without holding it, and answer `notfound` to everyone who asks. Found by
/// the simulated network (a `replay` adversary resending blocks to a node that was still
/// missing their parent).
#[test]
fn a_block_sent_twice_while_its_parent_is_missing_is_kept() {
    let mut net = SimNet::new(13);
    let a = net.add_node(node_config());
    let s = net.add_script(node_config());
    net.set_script_height(s, 2);
    net.connect(s, a);
    assert!(net.run_until(Duration::from_secs(10), |n| n.ready_peers(a) == 1));
    let genesis = Network::Regtest.params().genesis;
    let b1 = common::next_block(&genesis, 1);
    let b2 = common::next_block(&b1.header, 2);
    net.script_send(s, Message::Headers(vec![b1.header, b2.header]));
    let asked = net.run_until(Duration::from_secs(5), |n| {
        n.received(s)
            .iter()
            .any(|(_, m)| matches!(m, Message::GetData(i) if i.iter().any(|i| i.hash == b2.hash())))
    });
    assert!(asked, "A did not ask for block 2");
    // block 2 first (it waits for block 1), then again unasked, then block 1
    net.script_send(s, Message::Block(b2.clone()));
    net.run_for(Duration::from_secs(1));
    net.script_send(s, Message::Block(b2.clone()));
    net.run_for(Duration::from_secs(1));
    net.script_send(s, Message::Block(b1.clone()));
    let connected = net.run_until(Duration::from_secs(10), |n| {
        n.events(a)
            .iter()
            .any(|e| matches!(e, Event::BlockConnected { hash, .. } if *hash == b2.hash()))
    });
    assert!(connected, "block 2 not connected");
    // A holds it: asked for it, it sends it
    net.script_send(
        s,
        Message::GetData(vec![bsn::wire::Inventory {
            kind: bsn::wire::InvType::BLOCK,
            hash: b2.hash(),
        }]),
    );
    let answer = |n: &SimNet| {
        n.received(s).iter().find_map(|(_, m)| match m {
            Message::Block(b) if b.hash() == b2.hash() => Some(true),
            Message::NotFound(i) if i.iter().any(|i| i.hash == b2.hash()) => Some(false),
            _ => None,
        })
    };
    assert!(net.run_until(Duration::from_secs(5), |n| answer(n).is_some()));
    assert_eq!(
        answer(&net),
        Some(true),
        "A connected block 2 without holding it"
    );
}
