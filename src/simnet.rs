//! `bsn simnet`: a network of nodes in one process mining a regtest chain and relaying
//! transactions, measured: how fast blocks and transactions reach every node, whether every
//! node ends on the same tip, who got banned.
//!
//! [`run_engines`] runs real [`Engine`]s, each on a loopback address of its own (127.0.0.1,
//! 127.0.0.2...; its outbound connections come from it too), joined in a random connected
//! topology decided by the seed. Every `block_interval` a random node among those that have
//! the tip mines the next block on it (regtest proof of work, a coinbase and the transactions
//! submitted since the last block); random nodes submit transactions in between. Adversaries
//! are scripted peers on addresses of their own (127.0.1.1, 127.0.1.2...) speaking the wire
//! protocol over plain sockets, each to a few honest nodes: they lie (headers whose proof of
//! work does not meet their bits) or flood (`inv` over the rate limit), and the honest nodes
//! are expected to score and ban them.
//!
//! The seed decides the topology, the miners, the submitters, the transactions and the
//! adversaries' targets; timings come from real threads and sockets, so they differ run to run.
//!
//! [`run_virtual`] runs a simulated network instead: node cores in one thread on a virtual
//! clock ([`crate::sim::SimNet`]), links with internet-like latencies and loss
//! ([`LinkModel`]), adversaries of ten kinds ([`Attack`]), an optional partition, and the
//! properties every run must keep checked at the end ([`Summary::violations`]); everything,
//! timings included, follows the seed.
//!
//! The outcome is a [`Summary`], whose JSON form ([`Summary::to_json`]) has the field names
//! scripts read: `nodes`, `adversaries`, `seed`, `converged`, `honest_banned`,
//! `adversaries_banned`, `tx_delivered`, `block_propagation_ms` and `tx_propagation_ms`
//! (`p50`, `p90`, `p99`). A simulated network fills the same summary (`mode` `virtual`).

use crate::fsm::addrbook::XorShift64;
use crate::fsm::bans::Subnet;
use crate::network::Network;
use crate::wire::frame::{encode_message, FrameDecoder};
use crate::wire::{
    BlockHeader, Hash256, InvType, Inventory, Magic, Message, NetAddr, OutPoint, Transaction,
    VersionMessage,
};
use crate::{Config, Engine, Event};
use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

mod virt;
pub use virt::{run_virtual, run_virtual_traced, Attack};

/// Most honest nodes (and most adversaries): one loopback address each in 127.0.0.0/24
/// (127.0.1.0/24 for adversaries).
pub const MAX_NODES: usize = 250;

/// Honest peers each adversary connects to (fewer when there are fewer nodes).
const ADVERSARY_TARGETS: usize = 3;

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct Options {
    /// Honest nodes.
    pub nodes: usize,
    /// Adversaries (scripted peers that misbehave).
    pub adversaries: usize,
    /// Decides topology, miners, submitters, transactions, adversaries' targets.
    pub seed: u64,
    /// Blocks to mine.
    pub blocks: u32,
    /// Transactions to submit.
    pub txs: u32,
    /// Time between blocks (transactions are spread over the same span).
    pub block_interval: Duration,
    /// Time allowed, after the last block and transaction, for every node to have them all
    /// (and every adversary to be banned) before the run ends unconverged.
    pub timeout: Duration,
    /// The links of a simulated network ([`run_virtual`]; real engines run on loopback).
    pub links: LinkModel,
    /// A simulated network is split in two halves of its honest nodes for this long, during
    /// the mining, then heals ([`run_virtual`] only).
    pub partition: Option<Duration>,
}

/// How the links of a simulated network behave: each link (between two honest nodes, or an
/// adversary and an honest node) gets a one-way latency drawn uniformly from `latency`, and
/// shares the jitter, loss and bandwidth (see [`crate::sim::LinkSettings`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LinkModel {
    /// Least and greatest one-way latency.
    pub latency: (Duration, Duration),
    /// Extra delay per write, drawn from zero to this.
    pub jitter: Duration,
    /// Probability that a write is lost (and retransmitted after a timeout, as TCP does).
    pub loss: f64,
    /// Bytes a second each way (0: unlimited).
    pub bandwidth: u64,
}

impl Default for LinkModel {
    /// Internet-like: one-way latency 10 to 150 ms (round trips of 20 to 300 ms, from a
    /// neighbouring data centre to the other side of the world), up to 10 ms of jitter, 1 %
    /// of writes lost, 100 Mbit/s each way.
    fn default() -> LinkModel {
        LinkModel {
            latency: (Duration::from_millis(10), Duration::from_millis(150)),
            jitter: Duration::from_millis(10),
            loss: 0.01,
            bandwidth: 12_500_000,
        }
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            nodes: 20,
            adversaries: 0,
            seed: 0,
            blocks: 10,
            txs: 50,
            block_interval: Duration::from_millis(200),
            timeout: Duration::from_secs(30),
            links: LinkModel::default(),
            partition: None,
        }
    }
}

impl Options {
    /// The defaults of a simulated network: `nodes` honest nodes, 10 blocks 10 virtual
    /// seconds apart, 50 transactions, internet-like links ([`LinkModel::default`]), no
    /// partition, 300 virtual seconds to converge.
    pub fn virtual_net(nodes: usize, seed: u64) -> Options {
        Options {
            nodes,
            seed,
            block_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(300),
            ..Options::default()
        }
    }
}

/// A seed for a run nobody gave one to: random, below 2^53 so that every JSON reader (numbers
/// as doubles) reads it back exactly.
pub fn random_seed() -> u64 {
    crate::util::random_u64() >> 11
}

/// Percentiles of a set of delays, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (milliseconds); `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = (p * v.len() as f64).ceil() as usize;
            v[i.clamp(1, v.len()) - 1]
        };
        Some(Percentiles {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
        })
    }

    fn to_json(p: Option<Percentiles>) -> serde_json::Value {
        // two decimals: 10 µs is below what threads and sockets measure
        let r = |x: f64| (x * 100.0).round() / 100.0;
        match p {
            Some(p) => serde_json::json!({"p50": r(p.p50), "p90": r(p.p90), "p99": r(p.p99)}),
            None => serde_json::json!({"p50": null, "p90": null, "p99": null}),
        }
    }
}

/// What a run found. Its JSON form is a contract (see the module documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// `real` (engines on sockets) or `virtual` (a simulated network).
    pub mode: &'static str,
    /// Honest nodes.
    pub nodes: usize,
    /// Adversaries.
    pub adversaries: usize,
    /// The seed.
    pub seed: u64,
    /// Every honest node ends on the most-work tip (and has its block).
    pub converged: bool,
    /// Honest nodes banned by at least one honest node.
    pub honest_banned: usize,
    /// Adversaries banned by at least one honest node.
    pub adversaries_banned: usize,
    /// Fraction of the transactions seen by every honest node (1 when there were none).
    pub tx_delivered: f64,
    /// From a block's submission to its connection at each other honest node.
    pub block_propagation_ms: Option<Percentiles>,
    /// From a transaction's submission to its arrival at each other honest node.
    pub tx_propagation_ms: Option<Percentiles>,
    /// Blocks mined.
    pub blocks: u32,
    /// Transactions submitted.
    pub txs: u32,
    /// The most-work tip's height.
    pub tip_height: u32,
    /// The most-work tip's hash.
    pub tip_hash: Hash256,
    /// Links between honest nodes.
    pub links: usize,
    /// Wall time of the run (virtual time in a simulated network).
    pub duration: Duration,
    /// The bans honest nodes made (and did not lift), in the order they were made.
    pub bans: Vec<BanRecord>,
    /// What went wrong besides not converging (an engine that stopped, a dial refused...).
    pub errors: Vec<String>,
    /// Properties that did not hold (a simulated network checks them all: see
    /// [`run_virtual`]); empty when all held.
    pub violations: Vec<String>,
    /// Honest nodes whose ban score some honest node raised (not banned: a score decays).
    pub honest_scored: usize,
    /// What became of each adversary (a simulated network's).
    pub adversary_report: Vec<AdversaryRecord>,
    /// A digest of everything that happened in a simulated network
    /// ([`crate::sim::SimNet::trace_digest`]): equal for two runs of one seed.
    pub trace_digest: Option<u64>,
}

/// What became of an adversary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdversaryRecord {
    /// Its address.
    pub ip: IpAddr,
    /// What it did ([`Attack::name`]).
    pub kind: &'static str,
    /// What the honest nodes did about it.
    pub outcome: String,
}

/// A ban an honest node made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanRecord {
    /// The honest node that banned.
    pub by: usize,
    /// What it banned.
    pub subnet: Subnet,
    /// Why.
    pub reason: String,
}

impl Summary {
    /// The JSON form: the contract fields and the extras (`mode`, `blocks`, `txs`,
    /// `tip_height`, `tip_hash`, `links`, `duration_ms`, `bans` as `{"by": node, "subnet",
    /// "reason"}`, `errors`, `violations`, `honest_scored`, `adversary_report` as `{"ip",
    /// "kind", "outcome"}`, `trace_digest` as 16 hex digits or null).
    pub fn to_json(&self) -> serde_json::Value {
        let bans: Vec<serde_json::Value> = self
            .bans
            .iter()
            .map(|b| {
                serde_json::json!({
                    "by": b.by,
                    "subnet": b.subnet.to_string(),
                    "reason": b.reason,
                })
            })
            .collect();
        serde_json::json!({
            "mode": self.mode,
            "nodes": self.nodes,
            "adversaries": self.adversaries,
            "seed": self.seed,
            "converged": self.converged,
            "honest_banned": self.honest_banned,
            "adversaries_banned": self.adversaries_banned,
            "tx_delivered": self.tx_delivered,
            "block_propagation_ms": Percentiles::to_json(self.block_propagation_ms),
            "tx_propagation_ms": Percentiles::to_json(self.tx_propagation_ms),
            "blocks": self.blocks,
            "txs": self.txs,
            "tip_height": self.tip_height,
            "tip_hash": self.tip_hash.to_string(),
            "links": self.links,
            "duration_ms": self.duration.as_millis() as u64,
            "bans": bans,
            "errors": self.errors,
            "violations": self.violations,
            "honest_scored": self.honest_scored,
            "adversary_report": self
                .adversary_report
                .iter()
                .map(|a| serde_json::json!({
                    "ip": a.ip.to_string(),
                    "kind": a.kind,
                    "outcome": a.outcome,
                }))
                .collect::<Vec<_>>(),
            "trace_digest": self.trace_digest.map(|d| format!("{d:016x}")),
        })
    }

    /// Writes [`Summary::to_json`] (pretty, with a final newline) to `path`.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let mut s = serde_json::to_string_pretty(&self.to_json()).map_err(std::io::Error::other)?;
        s.push('\n');
        std::fs::write(path, s)
    }

    /// Every honest node has the tip and every transaction, and every property checked held.
    pub fn ok(&self) -> bool {
        self.converged && self.tx_delivered >= 1.0 && self.violations.is_empty()
    }
}

/// Where a run is, for a live view.
#[derive(Clone, Debug)]
pub struct Progress {
    /// `starting`, `connecting`, `mining`, `quiet` (a simulated network waiting, the tip still,
    /// for stallers to time out) or `converging`.
    pub phase: &'static str,
    /// Since the start.
    pub elapsed: Duration,
    /// Honest nodes.
    pub nodes: usize,
    /// Ready connections per honest node, on average.
    pub avg_peers: f64,
    /// Blocks mined so far, of `blocks_target`.
    pub blocks_mined: u32,
    /// Blocks to mine.
    pub blocks_target: u32,
    /// The tip's height.
    pub tip_height: u32,
    /// Honest nodes that have connected the tip.
    pub nodes_at_tip: usize,
    /// Transactions submitted so far, of `txs_target`.
    pub txs_submitted: u32,
    /// Transactions to submit.
    pub txs_target: u32,
    /// Transactions every honest node has seen.
    pub txs_everywhere: u32,
    /// Block propagation so far.
    pub block_ms: Option<Percentiles>,
    /// Transaction propagation so far.
    pub tx_ms: Option<Percentiles>,
    /// Honest nodes banned by honest nodes.
    pub honest_banned: usize,
    /// Adversaries banned, of `adversaries`.
    pub adversaries_banned: usize,
    /// Adversaries.
    pub adversaries: usize,
    /// Virtual time since the start, in a simulated network (`elapsed` is wall time).
    pub virtual_time: Option<Duration>,
}

/// A run that could not even start (an address that cannot be bound, a topology that does not
/// come up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimnetError(pub String);

impl std::fmt::Display for SimnetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SimnetError {}

/// The address of honest node `i`.
pub fn node_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, (i + 1) as u8))
}

/// The address of adversary `k`.
pub fn adversary_ip(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, (k + 1) as u8))
}

/// What an adversary does once connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdversaryKind {
    /// Sends headers whose proof of work does not meet their bits (a lie about work).
    BadPow,
    /// Announces the genesis block over and over, past the `inv` rate limit.
    InvFlood,
}

impl AdversaryKind {
    /// Adversary `k`'s kind: they take turns.
    pub fn of(k: usize) -> AdversaryKind {
        if k.is_multiple_of(2) {
            AdversaryKind::BadPow
        } else {
            AdversaryKind::InvFlood
        }
    }

    /// A short name.
    pub fn name(&self) -> &'static str {
        match self {
            AdversaryKind::BadPow => "bad-pow",
            AdversaryKind::InvFlood => "inv-flood",
        }
    }
}

/// Random numbers from the seed.
struct Rng(XorShift64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n.max(1) as u64) as usize
    }
}

/// A random connected topology on `n` nodes: a random spanning tree (each node joins one
/// already in, preferring those with fewer than 4 links), then links for every node left with
/// fewer than 2. Each link `(a, b)`: `a` dials `b`.
pub fn topology(n: usize, seed: u64) -> Vec<(usize, usize)> {
    let mut rng = Rng(XorShift64::new(seed ^ 0x7090_1091));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut degree = vec![0usize; n];
    let mut links: Vec<(usize, usize)> = Vec::new();
    // the pairs linked, lower first (a thousand nodes: no scan of every link per candidate)
    let mut linked: HashSet<(usize, usize)> = HashSet::new();
    for k in 1..n {
        let joining = order[k];
        let open: Vec<usize> = order[..k]
            .iter()
            .copied()
            .filter(|&m| degree[m] < 4)
            .collect();
        let to = if open.is_empty() {
            order[rng.below(k)]
        } else {
            open[rng.below(open.len())]
        };
        links.push((joining, to));
        linked.insert((joining.min(to), joining.max(to)));
        degree[joining] += 1;
        degree[to] += 1;
    }
    for a in 0..n {
        while degree[a] < 2 {
            let open: Vec<usize> = (0..n)
                .filter(|&b| b != a && degree[b] < 4 && !linked.contains(&(a.min(b), a.max(b))))
                .collect();
            if open.is_empty() {
                break;
            }
            let b = open[rng.below(open.len())];
            links.push((a, b));
            linked.insert((a.min(b), a.max(b)));
            degree[a] += 1;
            degree[b] += 1;
        }
    }
    links
}

/// What an observer thread saw at a node.
enum Seen {
    Connected(crate::PeerId),
    Disconnected(crate::PeerId),
    Block(Hash256, u32),
    Tx(Hash256),
    Banned(Subnet, String),
    Unbanned(Subnet),
    Fatal(String),
}

struct Obs {
    node: usize,
    at: Instant,
    seen: Seen,
}

/// Forwards what node `node`'s engine raises, stamped with the time it came out; ends when the
/// engine stops.
fn observe(node: usize, events: Receiver<Event>, out: Sender<Obs>) {
    for ev in events.iter() {
        let at = Instant::now();
        let seen = match ev {
            Event::PeerConnected(p) => Seen::Connected(p.id),
            Event::PeerDisconnected { id, .. } => Seen::Disconnected(id),
            Event::BlockConnected { hash, height, .. } => Seen::Block(hash, height),
            Event::TxReceived { tx, .. } => Seen::Tx(tx.txid()),
            Event::Banned { subnet, reason, .. } => Seen::Banned(subnet, reason),
            Event::Unbanned { subnet } => Seen::Unbanned(subnet),
            Event::Fatal { reason } => Seen::Fatal(reason),
            _ => continue,
        };
        if out.send(Obs { node, at, seen }).is_err() {
            return;
        }
    }
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// `height` as a minimal script number push (BIP34's coinbase height).
fn push_height(height: u32) -> Vec<u8> {
    let mut n = Vec::new();
    let mut h = height;
    while h > 0 {
        n.push(h as u8);
        h >>= 8;
    }
    if n.last().is_some_and(|b| b & 0x80 != 0) {
        n.push(0);
    }
    let mut s = vec![n.len() as u8];
    s.extend(n);
    s
}

/// A regtest block on `prev` at `height`: a coinbase (height, tag, seed) then `txs`, real proof
/// of work.
fn mine(prev: &BlockHeader, height: u32, seed: u64, txs: &[Transaction]) -> crate::wire::Block {
    mine_at(prev, height, seed, txs, unix_now())
}

/// [`mine`] at a given time (unix seconds; at least one past `prev`'s): distinct `seed`s make
/// distinct blocks on the same parent.
fn mine_at(
    prev: &BlockHeader,
    height: u32,
    seed: u64,
    txs: &[Transaction],
    time: u32,
) -> crate::wire::Block {
    let mut script = push_height(height);
    script.extend_from_slice(b"\x0absn simnet\x08");
    script.extend_from_slice(&seed.to_le_bytes());
    let coinbase = Transaction::build(
        1,
        &[(
            OutPoint {
                txid: Hash256::ZERO,
                vout: u32::MAX,
            },
            &script,
            u32::MAX,
        )],
        &[(50 * 100_000_000, b"\x51")],
        0,
    );
    let mut all = vec![coinbase];
    all.extend_from_slice(txs);
    let mut h = BlockHeader {
        version: 4,
        prev_hash: prev.hash(),
        merkle_root: crate::wire::merkle_root(all.iter().map(|t| t.txid()).collect()),
        time: time.max(prev.time + 1),
        bits: 0x207fffff,
        nonce: 0,
    };
    while !h.meets_own_target() {
        h.nonce = h.nonce.wrapping_add(1);
    }
    crate::wire::Block::new(h, all)
}

/// Transaction `j` of a run: spends a made-up output (distinct for every seed and `j`) to a
/// pay-to-public-key-hash script.
fn make_tx(seed: u64, j: u32) -> Transaction {
    let mut id = seed.to_le_bytes().to_vec();
    id.extend_from_slice(&j.to_le_bytes());
    let parent = Hash256::sha256d(&id);
    let mut p2pkh = vec![0x76, 0xa9, 0x14];
    p2pkh.extend_from_slice(&parent.0[..20]);
    p2pkh.extend_from_slice(&[0x88, 0xac]);
    let mut unlock = vec![0x47];
    unlock.extend(std::iter::repeat_n(0x30u8, 0x47));
    Transaction::build(
        1,
        &[(
            OutPoint {
                txid: parent,
                vout: j % 4,
            },
            &unlock,
            u32::MAX,
        )],
        &[(1000 + j as i64, &p2pkh)],
        0,
    )
}

/// What the run knows, from the observers' reports and its own submissions.
struct Tracker {
    nodes: usize,
    /// Ready connections per node.
    peers: Vec<HashSet<crate::PeerId>>,
    /// Each node's last connected block (hash, height).
    connected: Vec<(Hash256, u32)>,
    /// Blocks mined: hash -> (submitted at, miner).
    blocks: HashMap<Hash256, (Instant, usize)>,
    block_samples: Vec<f64>,
    /// Transactions submitted: txid -> (submitted at, which nodes have it).
    txs: HashMap<Hash256, (Instant, Vec<bool>)>,
    tx_samples: Vec<f64>,
    txs_everywhere: u32,
    /// Bans in force, in the order made.
    bans: Vec<BanRecord>,
    errors: Vec<String>,
}

impl Tracker {
    fn new(nodes: usize, genesis: Hash256) -> Tracker {
        Tracker {
            nodes,
            peers: vec![HashSet::new(); nodes],
            connected: vec![(genesis, 0); nodes],
            blocks: HashMap::new(),
            block_samples: Vec::new(),
            txs: HashMap::new(),
            tx_samples: Vec::new(),
            txs_everywhere: 0,
            bans: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn ms(from: Instant, to: Instant) -> f64 {
        to.saturating_duration_since(from).as_secs_f64() * 1000.0
    }

    fn take(&mut self, o: Obs) {
        let n = o.node;
        match o.seen {
            Seen::Connected(id) => {
                self.peers[n].insert(id);
            }
            Seen::Disconnected(id) => {
                self.peers[n].remove(&id);
            }
            Seen::Block(hash, height) => {
                self.connected[n] = (hash, height);
                if let Some(&(at, miner)) = self.blocks.get(&hash) {
                    if miner != n {
                        self.block_samples.push(Self::ms(at, o.at));
                    }
                }
            }
            Seen::Tx(txid) => {
                if let Some((at, seen)) = self.txs.get_mut(&txid) {
                    if !seen[n] {
                        seen[n] = true;
                        self.tx_samples.push(Self::ms(*at, o.at));
                        if seen.iter().all(|&s| s) {
                            self.txs_everywhere += 1;
                        }
                    }
                }
            }
            Seen::Banned(subnet, reason) => self.bans.push(BanRecord {
                by: n,
                subnet,
                reason,
            }),
            Seen::Unbanned(s) => self.bans.retain(|b| b.by != n || b.subnet != s),
            Seen::Fatal(reason) => {
                self.errors
                    .push(format!("node {} ({}) stopped: {reason}", n, node_ip(n)))
            }
        }
    }

    fn submitted_tx(&mut self, txid: Hash256, at: Instant, by: usize) {
        let mut seen = vec![false; self.nodes];
        seen[by] = true;
        if self.nodes == 1 {
            self.txs_everywhere += 1;
        }
        self.txs.insert(txid, (at, seen));
    }

    /// How many of `ips` some honest node has banned.
    fn banned_among(&self, ips: impl Iterator<Item = IpAddr>) -> usize {
        ips.filter(|ip| self.bans.iter().any(|b| b.subnet.contains(*ip)))
            .count()
    }

    fn honest_banned(&self) -> usize {
        self.banned_among((0..self.nodes).map(node_ip))
    }

    fn at_tip(&self, tip: Hash256) -> usize {
        self.connected.iter().filter(|(h, _)| *h == tip).count()
    }
}

/// Runs `opts.nodes` engines and `opts.adversaries` adversaries as the module documentation
/// says; `progress` is called about four times a second with where the run is.
pub fn run_engines(
    opts: &Options,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Summary, SimnetError> {
    let err = |s: String| Err(SimnetError(s));
    if opts.nodes == 0 || opts.nodes > MAX_NODES {
        return err(format!("nodes must be 1 to {MAX_NODES}"));
    }
    if opts.adversaries > MAX_NODES {
        return err(format!("adversaries must be 0 to {MAX_NODES}"));
    }
    let started = Instant::now();
    let params = Network::Regtest.params();
    let genesis = params.genesis;
    let magic = params.magic;
    let mut report =
        |phase: &'static str, t: &Tracker, s: &State| progress(&s.progress(phase, t, started));

    // Engines, each on its own address.
    let mut engines = Vec::with_capacity(opts.nodes);
    for i in 0..opts.nodes {
        let config = Config::builder(Network::Regtest)
            .listen(&SocketAddr::new(node_ip(i), 0).to_string())
            .shards(1)
            .pin_threads(false)
            .outbound_bind(node_ip(i))
            .build()
            .map(|mut c| {
                c.target_outbound = 0; // the topology is ours: no dialling from addr gossip
                c.getaddr_on_connect = false;
                c.tx_policy = crate::TxPolicy::AcceptAll;
                // small blocks, kept in memory (no block files, no temporary directory)
                c.block_file_threshold = u64::MAX;
                // drained at once by an observer: a smaller channel (its slots are allocated up
                // front) keeps a run of many nodes small
                c.event_capacity = 1024;
                c
            });
        let engine = match config.map_err(crate::Error::from).and_then(Engine::start) {
            Ok(e) => e,
            Err(e) => {
                stop_all(engines);
                return err(format!(
                    "node {i} on {}: {e}{}",
                    node_ip(i),
                    if cfg!(target_os = "linux") {
                        ""
                    } else {
                        " (real mode needs every 127.0.0.x address on the loopback interface, as Linux has)"
                    }
                ));
            }
        };
        engines.push(engine);
    }
    let (obs_tx, obs) = crossbeam_channel::unbounded();
    let mut observers: Vec<JoinHandle<()>> = Vec::new();
    for (i, e) in engines.iter().enumerate() {
        let (events, out) = (e.events(), obs_tx.clone());
        match std::thread::Builder::new()
            .name(format!("simnet-obs-{i}"))
            .spawn(move || observe(i, events, out))
        {
            Ok(h) => observers.push(h),
            Err(e) => {
                stop_all(engines);
                return err(format!("cannot start an observer thread: {e}"));
            }
        }
    }
    drop(obs_tx);
    let mut t = Tracker::new(opts.nodes, genesis.hash());
    let mut s = State {
        opts: opts.clone(),
        rng: Rng(XorShift64::new(opts.seed)),
        tip: genesis,
        tip_height: 0,
        mined: 0,
        submitted: 0,
        mempool: Vec::new(),
    };
    report("starting", &t, &s);

    // The topology.
    let links = topology(opts.nodes, opts.seed);
    let mut want = vec![0usize; opts.nodes];
    for &(a, b) in &links {
        want[a] += 1;
        want[b] += 1;
        let to = engines[b].local_addr();
        if let Some(addr) = to {
            if let Err(e) = engines[a].connect(addr) {
                t.errors.push(format!("node {a} cannot dial node {b}: {e}"));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_report = Instant::now();
    while (0..opts.nodes).any(|i| t.peers[i].len() < want[i]) {
        if Instant::now() >= deadline {
            let short: Vec<String> = (0..opts.nodes)
                .filter(|&i| t.peers[i].len() < want[i])
                .map(|i| format!("node {i} has {} of {} peers", t.peers[i].len(), want[i]))
                .collect();
            stop_all(engines);
            join_all(observers);
            return err(format!(
                "the topology did not come up in 20 s: {}",
                short.join(", ")
            ));
        }
        if let Ok(o) = obs.recv_timeout(Duration::from_millis(50)) {
            t.take(o);
        }
        if last_report.elapsed() >= Duration::from_millis(250) {
            last_report = Instant::now();
            report("connecting", &t, &s);
        }
    }

    // Adversaries.
    let stop = Arc::new(AtomicBool::new(false));
    let mut adversaries: Vec<JoinHandle<()>> = Vec::new();
    for k in 0..opts.adversaries {
        let kind = AdversaryKind::of(k);
        let mut targets: Vec<usize> = (0..opts.nodes).collect();
        for i in (1..targets.len()).rev() {
            targets.swap(i, s.rng.below(i + 1));
        }
        targets.truncate(ADVERSARY_TARGETS.min(opts.nodes));
        for n in targets {
            let Some(to) = engines[n].local_addr() else {
                continue;
            };
            let stop = stop.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("simnet-adv-{k}-{n}"))
                .spawn(move || {
                    if let Err(e) = adversary(adversary_ip(k), to, magic, kind, &stop, genesis) {
                        log::debug!("adversary {k} ({}) to {to}: {e}", kind.name());
                    }
                });
            match spawned {
                Ok(h) => adversaries.push(h),
                Err(e) => t.errors.push(format!("cannot start adversary {k}: {e}")),
            }
        }
    }

    // Mining and transactions.
    let t0 = Instant::now();
    let span = opts.block_interval * opts.blocks.max(1);
    let tx_due = |j: u32| t0 + span.mul_f64((j as f64 + 0.5) / opts.txs.max(1) as f64);
    let block_due = |k: u32| t0 + opts.block_interval * (k + 1);
    let mut finished_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        while s.submitted < opts.txs && tx_due(s.submitted) <= now {
            s.submit_tx(&engines, &mut t);
        }
        if s.mined < opts.blocks && block_due(s.mined) <= now {
            s.mine_next(&engines, &mut t);
        }
        let all_out = s.mined == opts.blocks && s.submitted == opts.txs;
        if all_out && finished_at.is_none() {
            finished_at = Some(now);
        }
        if let Some(end) = finished_at {
            let done = t.at_tip(s.tip.hash()) == opts.nodes
                && t.txs_everywhere == opts.txs
                && t.banned_among((0..opts.adversaries).map(adversary_ip)) == opts.adversaries;
            if done || now >= end + opts.timeout {
                break;
            }
        }
        if last_report.elapsed() >= Duration::from_millis(250) {
            last_report = Instant::now();
            report(if all_out { "converging" } else { "mining" }, &t, &s);
        }
        // wait for news, or the next thing to do
        let mut next = now + Duration::from_millis(50);
        if s.submitted < opts.txs {
            next = next.min(tx_due(s.submitted));
        }
        if s.mined < opts.blocks {
            next = next.min(block_due(s.mined));
        }
        match obs.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(o) => {
                t.take(o);
                while let Ok(o) = obs.try_recv() {
                    t.take(o);
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                t.errors.push("every engine stopped".into());
                break;
            }
        }
    }
    report("converging", &t, &s);

    // The outcome, from the engines themselves.
    let tip = s.tip.hash();
    let best: Vec<Option<(Hash256, u32)>> = engines.iter().map(|e| e.best_header().ok()).collect();
    let most_work = best
        .iter()
        .flatten()
        .map(|&(_, h)| h)
        .max()
        .unwrap_or(0)
        .max(s.tip_height);
    let converged = most_work == s.tip_height
        && best.iter().all(|b| *b == Some((tip, s.tip_height)))
        && t.at_tip(tip) == opts.nodes;
    for (i, b) in best.iter().enumerate() {
        if *b != Some((tip, s.tip_height)) {
            let got = match b {
                Some((h, height)) => format!("height {height} {h}"),
                None => "nothing (stopped)".into(),
            };
            t.errors.push(format!(
                "node {i} ({}) ends on {got}, not the tip",
                node_ip(i)
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    join_all(adversaries);
    stop_all(engines);
    for o in obs.try_iter() {
        t.take(o);
    }
    join_all(observers);
    let tx_delivered = if opts.txs == 0 {
        1.0
    } else {
        t.txs_everywhere as f64 / opts.txs as f64
    };
    Ok(Summary {
        mode: "real",
        nodes: opts.nodes,
        adversaries: opts.adversaries,
        seed: opts.seed,
        converged,
        honest_banned: t.honest_banned(),
        adversaries_banned: t.banned_among((0..opts.adversaries).map(adversary_ip)),
        tx_delivered,
        block_propagation_ms: Percentiles::of(&t.block_samples),
        tx_propagation_ms: Percentiles::of(&t.tx_samples),
        blocks: s.mined,
        txs: s.submitted,
        tip_height: s.tip_height,
        tip_hash: tip,
        links: links.len(),
        duration: started.elapsed(),
        bans: t.bans,
        errors: t.errors,
        violations: Vec::new(),
        honest_scored: 0,
        adversary_report: Vec::new(),
        trace_digest: None,
    })
}

/// The run's own state: the chain it mines, what it submitted.
struct State {
    opts: Options,
    rng: Rng,
    tip: BlockHeader,
    tip_height: u32,
    mined: u32,
    submitted: u32,
    /// Submitted, not in a block yet.
    mempool: Vec<Transaction>,
}

impl State {
    /// A random node that has the tip mines the next block on it (none has it yet: later).
    fn mine_next(&mut self, engines: &[Engine], t: &mut Tracker) {
        let tip = self.tip.hash();
        let ready: Vec<usize> = (0..engines.len())
            .filter(|&i| t.connected[i].0 == tip)
            .collect();
        if ready.is_empty() {
            return;
        }
        let miner = ready[self.rng.below(ready.len())];
        let height = self.tip_height + 1;
        let block = mine(&self.tip, height, self.opts.seed, &self.mempool);
        let (header, hash) = (block.header, block.hash());
        t.blocks.insert(hash, (Instant::now(), miner));
        match engines[miner].submit_block(block) {
            Ok(_) => {
                self.tip = header;
                self.tip_height = height;
                self.mined += 1;
                self.mempool.clear();
            }
            Err(e) => {
                t.blocks.remove(&hash);
                t.errors
                    .push(format!("node {miner} refused block {height}: {e}"));
                // counted as mined, so that the run ends
                self.mined += 1;
            }
        }
    }

    /// A random node submits the next transaction.
    fn submit_tx(&mut self, engines: &[Engine], t: &mut Tracker) {
        let j = self.submitted;
        self.submitted += 1;
        let tx = make_tx(self.opts.seed, j);
        let by = self.rng.below(engines.len());
        t.submitted_tx(tx.txid(), Instant::now(), by);
        match engines[by].submit_tx(tx.clone()) {
            Ok(()) => self.mempool.push(tx),
            Err(e) => t
                .errors
                .push(format!("node {by} refused transaction {j}: {e}")),
        }
    }

    fn progress(&self, phase: &'static str, t: &Tracker, started: Instant) -> Progress {
        let peers: usize = t.peers.iter().map(|p| p.len()).sum();
        Progress {
            phase,
            elapsed: started.elapsed(),
            nodes: t.nodes,
            avg_peers: peers as f64 / t.nodes.max(1) as f64,
            blocks_mined: self.mined,
            blocks_target: self.opts.blocks,
            tip_height: self.tip_height,
            nodes_at_tip: t.at_tip(self.tip.hash()),
            txs_submitted: self.submitted,
            txs_target: self.opts.txs,
            txs_everywhere: t.txs_everywhere,
            block_ms: Percentiles::of(&t.block_samples),
            tx_ms: Percentiles::of(&t.tx_samples),
            honest_banned: t.honest_banned(),
            adversaries_banned: t.banned_among((0..self.opts.adversaries).map(adversary_ip)),
            adversaries: self.opts.adversaries,
            virtual_time: None,
        }
    }
}

/// Stops every engine, at the same time (each stop waits for its threads).
fn stop_all(engines: Vec<Engine>) {
    std::thread::scope(|s| {
        for e in engines {
            s.spawn(move || e.stop());
        }
    });
}

fn join_all(threads: Vec<JoinHandle<()>>) {
    for h in threads {
        if h.join().is_err() {
            log::error!("a simnet thread panicked");
        }
    }
}

/// An adversary's connection to one honest node: connects from `ip`, shakes hands, then
/// misbehaves as `kind` says until the node drops it or `stop` is set.
fn adversary(
    ip: IpAddr,
    to: SocketAddr,
    magic: Magic,
    kind: AdversaryKind,
    stop: &AtomicBool,
    genesis: BlockHeader,
) -> std::io::Result<()> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.bind(&SocketAddr::new(ip, 0).into())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let mut stream: TcpStream = sock.into();
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(Duration::from_millis(200)))?;
    let send = |stream: &mut TcpStream, msgs: &[Message]| {
        let mut b = BytesMut::new();
        for m in msgs {
            encode_message(&mut b, magic, m);
        }
        stream.write_all(&b)
    };
    let addr = NetAddr::new(to, 0);
    let version = VersionMessage {
        version: crate::PROTOCOL_VERSION,
        services: 0,
        timestamp: unix_now() as i64,
        receiver: addr,
        sender: NetAddr::new(SocketAddr::new(ip, 0), 0),
        nonce: crate::util::random_u64(),
        user_agent: format!("/simnet-adversary:{}/", kind.name()),
        start_height: 0,
        relay: Some(false),
        extra: Bytes::new(),
    };
    send(&mut stream, &[Message::Version(version)])?;
    // version and verack from the node, then ours
    let mut dec = FrameDecoder::new(magic);
    let (mut got_version, mut got_verack) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 64 * 1024];
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    while !(got_version && got_verack) {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return Err(std::io::Error::other("no handshake"));
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(std::io::Error::other("closed during the handshake")),
            Ok(n) => dec.push(&buf[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
        while let Ok(Some(m)) = dec.next_message() {
            match m {
                Message::Version(_) => got_version = true,
                Message::Verack => got_verack = true,
                _ => {}
            }
        }
    }
    send(&mut stream, &[Message::Verack])?;
    stream.set_read_timeout(Some(Duration::from_millis(1)))?;
    let mut flood = BytesMut::new();
    for _ in 0..500 {
        let inv = vec![Inventory {
            kind: InvType::BLOCK,
            hash: genesis.hash(),
        }];
        encode_message(&mut flood, magic, &Message::Inv(inv));
    }
    let flood = flood.freeze();
    // what is to be written, and how much of it is: a write cut short by the timeout (a
    // throttled node does not read) goes on where it stopped, so frames stay whole
    let (mut pending, mut off) = (Bytes::new(), 0usize);
    let mut tag = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // whatever the node sends is read and dropped; its close ends the attack
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
        if off == pending.len() {
            off = 0;
            pending = match kind {
                AdversaryKind::BadPow => {
                    std::thread::sleep(Duration::from_millis(100));
                    tag += 1;
                    let mut h = BlockHeader {
                        version: 4,
                        prev_hash: genesis.hash(),
                        merkle_root: Hash256::sha256d(&tag.to_le_bytes()),
                        time: genesis.time + 1,
                        bits: 0x207fffff,
                        nonce: 0,
                    };
                    while h.meets_own_target() {
                        h.nonce = h.nonce.wrapping_add(1);
                    }
                    let mut b = BytesMut::new();
                    encode_message(&mut b, magic, &Message::Headers(vec![h]));
                    b.freeze()
                }
                AdversaryKind::InvFlood => flood.clone(),
            };
        }
        match stream.write(&pending[off..]) {
            Ok(0) => return Ok(()),
            Ok(n) => off += n,
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(Percentiles::of(&[]), None);
        let one = Percentiles::of(&[3.0]).unwrap();
        assert_eq!((one.p50, one.p90, one.p99), (3.0, 3.0, 3.0));
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::of(&v).unwrap();
        assert_eq!((p.p50, p.p90, p.p99), (50.0, 90.0, 99.0));
    }

    #[test]
    fn topologies_are_connected_with_two_to_four_links_each() {
        for n in 1..60 {
            for seed in 0..20 {
                let links = topology(n, seed);
                assert_eq!(links, topology(n, seed), "same seed, same topology");
                let mut degree = vec![0; n];
                let mut reach = vec![false; n];
                reach[0] = true;
                for &(a, b) in &links {
                    assert_ne!(a, b);
                    degree[a] += 1;
                    degree[b] += 1;
                }
                // connected: grow the reached set until it stops
                loop {
                    let before = reach.iter().filter(|&&r| r).count();
                    for &(a, b) in &links {
                        if reach[a] || reach[b] {
                            reach[a] = true;
                            reach[b] = true;
                        }
                    }
                    if reach.iter().filter(|&&r| r).count() == before {
                        break;
                    }
                }
                assert!(reach.iter().all(|&r| r), "n {n} seed {seed}: {links:?}");
                for d in &degree {
                    assert!(*d <= 4, "n {n} seed {seed}: {degree:?}");
                    assert!(*d >= 2.min(n - 1), "n {n} seed {seed}: {degree:?}");
                }
            }
        }
        assert_ne!(topology(20, 1), topology(20, 2));
    }

    #[test]
    fn mined_blocks_and_transactions_are_valid_and_distinct() {
        let genesis = Network::Regtest.params().genesis;
        let txs: Vec<Transaction> = (0..3).map(|j| make_tx(7, j)).collect();
        assert_ne!(txs[0].txid(), txs[1].txid());
        assert_ne!(make_tx(7, 0).txid(), make_tx(8, 0).txid());
        let b = mine(&genesis, 1, 7, &txs);
        assert!(b.header.meets_own_target());
        assert_eq!(b.header.prev_hash, genesis.hash());
        assert_eq!(b.compute_merkle_root(), b.header.merkle_root);
        assert_eq!(b.txs.len(), 4);
        assert_eq!(push_height(0), vec![0]);
        assert_eq!(push_height(1), vec![1, 1]);
        assert_eq!(push_height(128), vec![2, 128, 0]);
        assert_eq!(push_height(300), vec![2, 0x2c, 1]);
    }

    #[test]
    fn summary_json_has_the_contract_fields() {
        let s = Summary {
            mode: "real",
            nodes: 3,
            adversaries: 1,
            seed: 9,
            converged: true,
            honest_banned: 0,
            adversaries_banned: 1,
            tx_delivered: 1.0,
            block_propagation_ms: Percentiles::of(&[1.0, 2.0, 3.004]),
            tx_propagation_ms: None,
            blocks: 2,
            txs: 0,
            tip_height: 2,
            tip_hash: Hash256::ZERO,
            links: 2,
            duration: Duration::from_millis(1500),
            bans: vec![BanRecord {
                by: 2,
                subnet: Subnet::host(adversary_ip(0)),
                reason: "ban score 100 reached".into(),
            }],
            errors: vec![],
            violations: vec![],
            honest_scored: 0,
            adversary_report: vec![],
            trace_digest: Some(0xab),
        };
        let j = s.to_json();
        for f in [
            "nodes",
            "adversaries",
            "seed",
            "converged",
            "honest_banned",
            "adversaries_banned",
            "tx_delivered",
            "block_propagation_ms",
            "tx_propagation_ms",
        ] {
            assert!(j.get(f).is_some(), "{f} missing from {j}");
        }
        assert_eq!(j["block_propagation_ms"]["p99"], 3.0);
        assert!(j["tx_propagation_ms"]["p50"].is_null());
        assert_eq!(j["duration_ms"], 1500);
        assert_eq!(j["seed"], 9);
        assert_eq!(j["bans"][0]["subnet"], "127.0.1.1/32");
        assert_eq!(j["bans"][0]["by"], 2);
        assert_eq!(j["trace_digest"], "00000000000000ab");
    }
}
