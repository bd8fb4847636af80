//! The simulator's links and faults: bandwidth, loss with TCP retransmission, partitions that
//! heal, disconnections, node restarts over the kept store; every run decided by its seed.

mod common;

use bsn::sim::{Fault, LinkSettings, NodeId, SimNet};
use bsn::wire::{Block, BlockHeader, Hash256, InvType, Inventory, Message, OutPoint, Transaction};
use bsn::{Config, Event, Network, TxPolicy};
use std::time::{Duration, Instant};

fn node_config() -> Config {
    let mut c = Config::new(Network::Regtest);
    c.tx_policy = TxPolicy::AcceptAll;
    c.target_outbound = 0;
    c
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// Nodes `0..n` in a ring: each has the next as its static peer (dialled by its core).
fn ring(net: &mut SimNet, n: usize) -> Vec<NodeId> {
    (0..n)
        .map(|i| {
            let mut c = node_config();
            c.connect = vec![SimNet::node_addr((i + 1) % n)];
            net.add_node(c)
        })
        .collect()
}

/// Heights of the `BlockConnected` events of a node, in order.
fn connected(net: &SimNet, x: NodeId) -> Vec<u32> {
    net.events(x)
        .iter()
        .filter_map(|e| match e {
            Event::BlockConnected { height, .. } => Some(*height),
            _ => None,
        })
        .collect()
}

/// Blocks on `prev`, tagged from `tag` (distinct tags: distinct blocks).
fn blocks_on(prev: &BlockHeader, n: u32, tag: u32) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    let mut prev = *prev;
    for i in 0..n {
        let b = common::next_block(&prev, tag + i);
        prev = b.header;
        out.push(b);
    }
    out
}

/// Whether every node in `xs` has `tip` as best header and all its blocks.
fn all_at(net: &mut SimNet, xs: &[NodeId], tip: (Hash256, u32)) -> bool {
    xs.iter()
        .all(|&x| net.best_header(x) == tip && net.blocks_height(x) == Some(tip.1))
}

/// Runs in steps of `every` until `done` or `limit`; true when done.
fn run_checking(
    net: &mut SimNet,
    limit: Duration,
    every: Duration,
    mut done: impl FnMut(&mut SimNet) -> bool,
) -> bool {
    let end = net.now() + limit;
    while net.now() < end {
        if done(net) {
            return true;
        }
        net.run_for(every);
    }
    done(net)
}

fn disconnect_reasons(net: &SimNet, x: NodeId) -> Vec<String> {
    net.events(x)
        .iter()
        .filter_map(|e| match e {
            Event::PeerDisconnected { reason, .. } => Some(reason.to_string()),
            _ => None,
        })
        .collect()
}

fn connect_failures(net: &SimNet, x: NodeId) -> Vec<String> {
    net.events(x)
        .iter()
        .filter_map(|e| match e {
            Event::ConnectFailed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

/// Six nodes in a ring of static peers over lossy, bandwidth-limited links (one link slower
/// and lossier still), 300 blocks on node 0; a partition longer than the timeout with blocks
/// mined on both sides, a heal, a restart, a cut connection, a short partition. Everything
/// ends on one chain. The trace and its digest.
fn faulty_run(seed: u64, chain: &[Block], lines: bool) -> (Vec<String>, u64) {
    let mut net = SimNet::new(seed);
    net.set_trace_lines(lines);
    net.set_links(
        LinkSettings::default()
            .with_bandwidth(500_000)
            .with_loss(0.05)
            .with_jitter(ms(3)),
    );
    let xs = ring(&mut net, 6);
    net.set_link(
        0,
        1,
        LinkSettings::default()
            .with_latency(ms(40))
            .with_bandwidth(100_000)
            .with_loss(0.3),
    );
    assert_eq!(net.import_blocks(0, chain), chain.len() as u32);
    let top = chain.last().unwrap().header;
    net.schedule_fault(
        secs(20),
        Fault::Partition(vec![vec![0, 1, 2], vec![3, 4, 5]]),
    );
    net.schedule_fault(secs(65), Fault::Heal);
    net.schedule_fault(secs(70), Fault::Restart(4));
    net.schedule_fault(secs(75), Fault::Disconnect(1, 2));
    net.schedule_fault(secs(80), Fault::Partition(vec![vec![5]]));
    net.schedule_fault(secs(85), Fault::Heal);
    net.run_for(secs(25));
    let side_a = blocks_on(&top, 2, 1_000);
    let side_b = blocks_on(&top, 4, 2_000);
    for b in side_a {
        net.submit_block(1, b).unwrap();
    }
    for b in side_b.iter().cloned() {
        net.submit_block(4, b).unwrap();
    }
    let tip = (side_b[3].hash(), chain.len() as u32 + 4);
    net.run_for(secs(60));
    // another block after all of it, on node 2
    let last = common::next_block(&side_b[3].header, 3_000);
    let tip = (last.hash(), tip.1 + 1);
    net.submit_block(2, last).unwrap();
    assert!(
        run_checking(&mut net, secs(180), secs(1), |n| all_at(n, &xs, tip)),
        "seed {seed}: the nodes did not converge: {:?}",
        xs.iter().map(|&x| net.best_header(x).1).collect::<Vec<_>>()
    );
    (net.trace_lines().to_vec(), net.trace_digest())
}

#[test]
fn one_seed_gives_one_trace_through_loss_bandwidth_partitions_and_restarts() {
    let chain = common::regtest_blocks(300);
    let (one, d1) = faulty_run(21, &chain, true);
    let (two, d2) = faulty_run(21, &chain, true);
    assert!(one.len() > 3000, "trace of {} lines", one.len());
    if std::env::var("SIM_TRACE").is_ok() {
        for l in &one {
            eprintln!("{l}");
        }
    }
    // the faults are in the trace
    for what in [
        "partition [[0, 1, 2], [3, 4, 5]]",
        "heal",
        "n4 stop",
        "n4 start at height",
        "n1 n2 disconnect",
        "stalled by the partition",
        "connection timed out (partition)",
        "connect timed out",
    ] {
        assert!(
            one.iter().any(|l| l.contains(what)),
            "no {what:?} in the trace"
        );
    }
    if one != two {
        let i = one.iter().zip(&two).position(|(x, y)| x != y);
        let i = i.unwrap_or(one.len().min(two.len()));
        panic!(
            "traces differ at line {i}:\n{:?}\n{:?}",
            one.get(i),
            two.get(i)
        );
    }
    assert_eq!(d1, d2);
    // the digest follows the same run without keeping lines
    let (none, d3) = faulty_run(21, &chain, false);
    assert!(none.is_empty());
    assert_eq!(d1, d3);
    // another seed, another run
    let (three, d4) = faulty_run(22, &chain, true);
    assert_ne!(one, three);
    assert_ne!(d1, d4);
}

#[test]
fn split_nodes_mine_apart_and_converge_on_the_most_work_chain_after_the_partition_heals() {
    let mut net = SimNet::new(5);
    let xs = ring(&mut net, 6);
    let chain = common::regtest_blocks(20);
    net.import_blocks(0, &chain);
    let base = (chain[19].hash(), 20);
    assert!(run_checking(&mut net, secs(30), ms(100), |n| all_at(
        n, &xs, base
    )));
    let split_at = net.now();
    net.partition(&[vec![0, 1, 2], vec![3, 4, 5]]);
    // each side mines: three blocks on one, five on the other (more work)
    let a = blocks_on(&chain[19].header, 3, 100);
    let b = blocks_on(&chain[19].header, 5, 200);
    for blk in a.iter().cloned() {
        assert!(net.submit_block(1, blk).is_ok());
    }
    for blk in b.iter().cloned() {
        assert!(net.submit_block(4, blk).is_ok());
    }
    let tip_a = (a[2].hash(), 23);
    let tip_b = (b[4].hash(), 25);
    assert!(run_checking(&mut net, secs(10), ms(100), |n| all_at(
        n,
        &[0, 1, 2],
        tip_a
    ) && all_at(
        n,
        &[3, 4, 5],
        tip_b
    )));
    // the partition lasts past the timeout: the ring's two links across it time out at both
    // ends, and the static peers' dials across it go unanswered
    net.run_for(secs(60));
    for x in [2, 3, 5, 0] {
        assert!(
            disconnect_reasons(&net, x)
                .iter()
                .any(|r| r.contains("timed out (partition)")),
            "n{x}: {:?}",
            disconnect_reasons(&net, x)
        );
    }
    for x in [2, 5] {
        assert!(
            connect_failures(&net, x)
                .iter()
                .any(|r| r == "connect timed out"),
            "n{x}: {:?}",
            connect_failures(&net, x)
        );
    }
    // nothing crossed
    assert!(all_at(&mut net, &[0, 1, 2], tip_a));
    let healed_at = net.now();
    assert!(healed_at >= split_at + secs(60));
    net.heal();
    // the static peers dial again; the short side reorganises onto the longer chain
    assert!(
        run_checking(&mut net, secs(120), ms(100), |n| all_at(n, &xs, tip_b)),
        "{:?}",
        xs.iter().map(|&x| net.best_header(x)).collect::<Vec<_>>()
    );
    for x in 0..3 {
        let h = connected(&net, x);
        assert_eq!(&h[h.len() - 5..], &[21, 22, 23, 24, 25], "n{x}: {h:?}");
    }
}

#[test]
fn a_restarted_node_keeps_its_chain_and_catches_up() {
    let mut net = SimNet::new(9);
    let a = net.add_node(node_config());
    let mut cb = node_config();
    cb.connect = vec![SimNet::node_addr(a)];
    let b = net.add_node(cb);
    let mut cc = node_config();
    cc.connect = vec![SimNet::node_addr(a), SimNet::node_addr(b)];
    let c = net.add_node(cc);
    let chain = common::regtest_blocks(50);
    net.import_blocks(a, &chain);
    let tip = (chain[49].hash(), 50);
    assert!(run_checking(&mut net, secs(30), ms(100), |n| all_at(
        n,
        &[a, b, c],
        tip
    )));
    assert_eq!(net.ready_peers(c), 2);
    net.stop(c);
    assert!(!net.is_up(c));
    // its peers see its connections close; a dial to it is refused
    assert!(net.run_until(secs(5), |n| n.ready_peers(a) == 1 && n.ready_peers(b) == 1));
    net.connect(b, c);
    assert!(net.run_until(secs(5), |n| connect_failures(n, b)
        .iter()
        .any(|r| r == "connection refused")));
    // the others go on without it
    let more = blocks_on(&chain[49].header, 10, 500);
    for blk in more.iter().cloned() {
        net.submit_block(a, blk).unwrap();
    }
    let tip = (more[9].hash(), 60);
    assert!(run_checking(&mut net, secs(10), ms(100), |n| all_at(
        n,
        &[a, b],
        tip
    )));
    let before = connected(&net, c).len();
    net.start(c).unwrap();
    // its stored chain is there at once, before any peer
    assert_eq!(net.best_header(c), (chain[49].hash(), 50));
    assert_eq!(net.blocks_height(c), Some(50));
    // its core dials its static peers and catches up
    assert!(run_checking(&mut net, secs(30), ms(100), |n| all_at(
        n,
        &[c],
        tip
    )));
    assert_eq!(
        connected(&net, c)[before..],
        (51..=60).collect::<Vec<u32>>()
    );
    // a restart in one call: the node's peers redial it, a new block reaches everyone
    net.restart(a).unwrap();
    assert_eq!(net.best_header(a), tip);
    let blk = common::next_block(&more[9].header, 777);
    let tip = (blk.hash(), 61);
    net.submit_block(a, blk).unwrap();
    assert!(run_checking(&mut net, secs(120), ms(100), |n| all_at(
        n,
        &[a, b, c],
        tip
    )));
}

/// A regtest block on `prev` whose coinbase pays to a script of `script_len` bytes.
fn big_block(prev: &BlockHeader, script_len: usize) -> Block {
    let script = vec![0x6a; script_len];
    let cb = Transaction::build(
        1,
        &[(
            OutPoint {
                txid: Hash256::ZERO,
                vout: u32::MAX,
            },
            b"\x01\x01",
            u32::MAX,
        )],
        &[(50, &script)],
        0,
    );
    let mut h = BlockHeader {
        version: 4,
        prev_hash: prev.hash(),
        merkle_root: cb.txid(),
        time: prev.time + 1,
        bits: 0x207fffff,
        nonce: 0,
    };
    while !h.meets_own_target() {
        h.nonce += 1;
    }
    Block::new(h, vec![cb])
}

/// A scripted peer asks node A for a 1 MB block twice over a link of `bandwidth`; when each
/// answer arrived, after the request.
fn fetch_big_block(bandwidth: u64) -> (usize, [Duration; 2]) {
    let mut net = SimNet::new(3);
    let a = net.add_node(node_config());
    let s = net.add_script(node_config());
    let blk = big_block(&Network::Regtest.params().genesis, 1_000_000);
    let (hash, size) = (blk.hash(), blk.raw().len());
    assert_eq!(net.submit_block(a, blk), Ok(1));
    net.connect_with(
        s,
        a,
        LinkSettings::default()
            .with_jitter(Duration::ZERO)
            .with_bandwidth(bandwidth),
    );
    assert!(net.run_until(secs(5), |n| n.ready_peers(s) == 1));
    net.run_for(secs(1));
    let blocks = |n: &SimNet| {
        n.received(s)
            .iter()
            .filter(|(_, m)| matches!(m, Message::Block(b) if b.hash() == hash))
            .count()
    };
    let asked = net.now();
    let get = Message::GetData(vec![Inventory {
        kind: InvType::BLOCK,
        hash,
    }]);
    net.script_send(s, get.clone());
    net.script_send(s, get);
    let mut at = [Duration::ZERO; 2];
    for (i, t) in at.iter_mut().enumerate() {
        assert!(net.run_until(secs(10), |n| blocks(n) > i));
        *t = net.now() - asked;
    }
    (size, at)
}

#[test]
fn a_megabyte_block_takes_a_second_on_a_megabyte_per_second_link() {
    let (size, [first, second]) = fetch_big_block(1_000_000);
    assert!(size > 1_000_000);
    let wire = Duration::from_secs_f64((size + 24) as f64 / 1e6);
    // the request's latency, the block's transmission, its latency back
    assert!(first >= wire, "{first:?} < {wire:?}");
    assert!(first < wire + ms(50), "{first:?}");
    // the second answer waits for the first to leave the sender (one stream each way)
    assert!(second >= first + wire - ms(1), "{second:?} after {first:?}");
    assert!(second < first + wire + ms(50), "{second:?} after {first:?}");
    // unlimited: only latency
    let (_, [fast, _]) = fetch_big_block(0);
    assert!(fast < ms(50), "{fast:?}");
}

/// Node A serves 200 blocks to B over a link losing `loss` of its writes; a scripted peer on a
/// link as lossy asks A for the first 100 blocks one by one, 20 ms apart. When B had every
/// block, the scripted peer's blocks in order of arrival (as heights), B's block heights in
/// order.
fn lossy_sync(loss: f64) -> (Duration, Vec<u32>, Vec<u32>) {
    let mut net = SimNet::new(17);
    let a = net.add_node(node_config());
    let b = net.add_node(node_config());
    let s = net.add_script(node_config());
    let lossy = LinkSettings::default().with_loss(loss);
    let chain = common::regtest_blocks(200);
    net.import_blocks(a, &chain);
    net.connect_with(b, a, lossy.clone());
    net.connect_with(s, a, lossy);
    assert!(net.run_until(secs(60), |n| n.ready_peers(s) == 1));
    for blk in &chain[..100] {
        net.script_send(
            s,
            Message::GetData(vec![Inventory {
                kind: InvType::BLOCK,
                hash: blk.hash(),
            }]),
        );
        net.run_for(ms(20));
    }
    let synced = net.run_until(secs(600), |n| connected(n, b).len() == 200);
    assert!(
        synced,
        "loss {loss}: B has {} blocks",
        connected(&net, b).len()
    );
    let took = net.now();
    let got = |n: &SimNet| -> Vec<u32> {
        n.received(s)
            .iter()
            .filter_map(|(_, m)| match m {
                Message::Block(blk) => chain
                    .iter()
                    .position(|c| c.hash() == blk.hash())
                    .map(|i| i as u32 + 1),
                _ => None,
            })
            .collect()
    };
    assert!(net.run_until(secs(600), |n| got(n).len() >= 100));
    (took, got(&net), connected(&net, b))
}

#[test]
fn with_a_third_of_writes_lost_everything_arrives_in_order_later() {
    let (clean, served, heights) = lossy_sync(0.0);
    assert_eq!(served, (1..=100).collect::<Vec<u32>>());
    assert_eq!(heights, (1..=200).collect::<Vec<u32>>());
    let (lossy, served, heights) = lossy_sync(0.3);
    assert_eq!(served, (1..=100).collect::<Vec<u32>>(), "lost or reordered");
    assert_eq!(heights, (1..=200).collect::<Vec<u32>>());
    assert!(lossy > clean * 2, "lossy {lossy:?}, clean {clean:?}");
}

#[test]
fn a_short_partition_holds_bytes_until_it_heals_and_a_cut_closes_both_ends() {
    let mut net = SimNet::new(4);
    let a = net.add_node(node_config());
    let b = net.add_node(node_config());
    let c = net.add_node(node_config());
    net.connect(b, a);
    net.connect(c, a);
    assert!(net.run_until(secs(5), |n| n.ready_peers(a) == 2));
    let genesis = Network::Regtest.params().genesis;
    net.partition(&[vec![b]]);
    let blk = common::next_block(&genesis, 1);
    let hash = blk.hash();
    net.submit_block(a, blk).unwrap();
    // c, on a's side, has it at once; b only once the partition heals (10 s, under the
    // timeout: the connection lives on)
    assert!(net.run_until(secs(1), |n| connected(n, c) == [1]));
    net.run_for(secs(10));
    assert!(connected(&net, b).is_empty());
    assert_eq!(net.ready_peers(b), 1);
    let healed = net.now();
    net.heal();
    assert!(net.run_until(secs(5), |n| connected(n, b) == [1]));
    assert!(net.now() > healed);
    assert_eq!(net.best_header(b), (hash, 1));
    assert!(disconnect_reasons(&net, b).is_empty());
    // a cut: both cores hear of it at once
    net.disconnect(a, b);
    assert_eq!(disconnect_reasons(&net, a), ["i/o error: connection reset"]);
    assert_eq!(disconnect_reasons(&net, b), ["i/o error: connection reset"]);
    assert_eq!((net.ready_peers(a), net.ready_peers(b)), (1, 0));
    // a dial across a partition goes unanswered; to an address nobody has, the same
    net.partition(&[vec![c]]);
    net.connect(c, b);
    assert!(net.run_until(secs(10), |n| connect_failures(n, c)
        == ["connect timed out"]));
}

#[test]
fn a_link_that_loses_everything_is_reset_after_the_retransmissions_and_odd_settings_are_taken() {
    let mut net = SimNet::new(8);
    let a = net.add_node(node_config());
    let b = net.add_node(node_config());
    net.connect(b, a);
    assert!(net.run_until(secs(5), |n| n.ready_peers(a) == 1));
    net.set_link(a, b, LinkSettings::default().with_loss(1.0));
    let blk = common::next_block(&Network::Regtest.params().genesis, 1);
    net.submit_block(a, blk).unwrap();
    // 15 retransmissions from 200 ms, doubling up to 120 s: about 15 minutes
    net.run_for(secs(600));
    assert_eq!(net.ready_peers(a), 1, "reset too soon");
    assert!(net.run_until(secs(600), |n| n.ready_peers(a) == 0
        && n.ready_peers(b) == 0));
    let reset = "i/o error: connection timed out (retransmissions lost)";
    assert_eq!(disconnect_reasons(&net, a), [reset]);
    assert_eq!(disconnect_reasons(&net, b), [reset]);
    assert!(connected(&net, b).is_empty());
    // odd settings: no panic, no hang
    let c = net.add_node(node_config());
    let d = net.add_node(node_config());
    let odd = LinkSettings::default()
        .with_loss(f64::NAN)
        .with_latency(Duration::ZERO)
        .with_jitter(Duration::MAX)
        .with_bandwidth(1);
    net.connect_with(c, d, odd);
    net.run_for(secs(60));
    net.set_link(
        c,
        d,
        LinkSettings::default()
            .with_loss(-3.0)
            .with_bandwidth(u64::MAX),
    );
    net.connect(d, c);
    assert!(net.run_until(secs(60), |n| n.ready_peers(d) >= 1));
    net.partition(&[vec![c, 99], vec![]]);
    net.heal();
    // faults naming nodes that do not exist do nothing
    for f in [
        Fault::Disconnect(99, c),
        Fault::Disconnect(c, 99),
        Fault::Stop(99),
        Fault::Start(99),
        Fault::Restart(99),
        Fault::Link(99, 100, LinkSettings::default()),
    ] {
        net.schedule_fault(net.now(), f);
    }
    net.run_for(secs(1));
    assert!(net.ready_peers(d) >= 1);
}

/// 200 nodes (`SIM_SPEED_NODES`), each dialling the next four (8 connections each), sync 100
/// blocks from node 0; then a minute more of steady state; without trace lines and with them
/// (`SIM_SPEED_LINES=0` or `1`: one of them). Prints the speed: `cargo test --test sim_faults
/// speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn speed_200_nodes_8_connections_100_blocks() {
    let modes: &[bool] = match std::env::var("SIM_SPEED_LINES").as_deref() {
        Ok("0") => &[false],
        Ok("1") => &[true],
        _ => &[false, true],
    };
    let n: usize = std::env::var("SIM_SPEED_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let chain = common::regtest_blocks(100);
    let tip = (chain[99].hash(), 100);
    for &lines in modes {
        let wall = Instant::now();
        let mut net = SimNet::new(1);
        net.set_trace_lines(lines);
        let xs: Vec<NodeId> = (0..n).map(|_| net.add_node(node_config())).collect();
        // (an import is not announced: the chain is there before the connections)
        net.import_blocks(0, &chain);
        for i in 0..n {
            for k in 1..=4 {
                net.connect(i, (i + k) % n);
            }
        }
        let setup_wall = wall.elapsed();
        let sync = Instant::now();
        let synced = run_checking(&mut net, secs(600), ms(100), |n| all_at(n, &xs, tip));
        assert!(synced);
        let sync_wall = sync.elapsed();
        let (sync_virtual, st) = (net.now(), net.stats().clone());
        let ready: usize = xs.iter().map(|&x| net.ready_peers(x)).sum();
        let steady = Instant::now();
        net.run_for(secs(60));
        let steady_wall = steady.elapsed();
        let s = net.stats().clone();
        let total = wall.elapsed();
        drop(net);
        println!(
            "trace lines {lines}: {n} nodes, {ready} ready connection ends; setup {:.3} s wall; \
             synced 100 blocks in {:.2} s virtual, {:.3} s wall ({:.1} virtual s per wall s): \
             {} messages delivered ({:.0} per wall s), {:.1} MB, {} steps; then 60 s virtual \
             in {:.3} s wall ({:.0} virtual s per wall s, {} messages, {} steps); whole run \
             {:.3} s wall, {:.3} s with the drop",
            setup_wall.as_secs_f64(),
            sync_virtual.as_secs_f64(),
            sync_wall.as_secs_f64(),
            sync_virtual.as_secs_f64() / sync_wall.as_secs_f64(),
            st.messages_delivered,
            st.messages_delivered as f64 / sync_wall.as_secs_f64(),
            st.bytes_delivered as f64 / 1e6,
            st.steps,
            steady_wall.as_secs_f64(),
            60.0 / steady_wall.as_secs_f64(),
            s.messages_delivered - st.messages_delivered,
            s.steps - st.steps,
            (setup_wall + sync_wall + steady_wall).as_secs_f64(),
            total.as_secs_f64(),
        );
    }
}
