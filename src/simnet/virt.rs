//! The simulated network of `bsn simnet --virtual`: [`run_virtual`] runs node cores in one
//! thread on a virtual clock ([`SimNet`]), adversaries as scripted peers, and checks what the
//! honest nodes must guarantee whatever the adversaries do.
//!
//! ## The network
//!
//! Honest nodes (in-memory stores, regtest, every transaction accepted) at 10.0.0.1,
//! 10.0.0.2... ([`SimNet::node_addr`]) in the random connected topology of [`topology`] (each
//! link dialled by the later node of the pair, as a static peer: redialled if it drops). Each
//! link gets its own one-way latency drawn from [`LinkModel::latency`] and shares the jitter,
//! loss and bandwidth of the model. After two seconds of handshakes, every `block_interval` a
//! random honest node mines a block on its own tip (its last connected block; the last block
//! of the run on the most-work tip, so that the run ends on one chain), and random honest nodes
//! submit transactions spread over the mining. With [`Options::partition`] the honest nodes are
//! split in two random halves a quarter of the way into the mining, for that long: bytes
//! between the halves are held (and delivered when it heals, as TCP retransmits them, while
//! the connections last) and both halves mine.
//!
//! ## Adversaries
//!
//! Scripted peers (they speak the wire protocol, and only send what their script says) on
//! addresses of their own: the first /24 after the honest nodes' (10.0.1.0/24 for up to 255
//! honest nodes), each connected to three random honest nodes. With eight adversaries or more,
//! a quarter of them are [`Attack::Subnet`]: many addresses of one subnet of their own, all to
//! the same three honest nodes. The others take the other kinds in turn ([`Attack::CYCLE`]):
//! each attacks from half a second after the handshakes until the last block of the mining
//! (the stallers, which need a quiet tip: see below).
//!
//! | kind | what it does | what the honest nodes do |
//! |---|---|---|
//! | `bad-pow` | a header (on genesis) whose proof of work does not meet its bits, every 5 s | score it 50 (invalid header proof of work): banned at the second |
//! | `low-work-fork` | 120 branches of one header on genesis (less work than the chain), at once, once the chain is two blocks high | keep 100 such headers per peer ([`Config::max_fork_headers_per_peer`], scaled down to the run's short chain), then score each batch 20 (protocol violation) |
//! | `height-liar` | claims height 1,000,000 in its `version`, answers no `getheaders` | pick it as sync peer (it claims the most), then drop it after its second stall (10 s each here) |
//! | `withholder` | announces a valid header on the tip and never serves the block | ask it for the block, drop it when the request times out (15 s here: see below) |
//! | `mid-block-stall` | as `withholder`, but answers the request with half a `block` frame | the same |
//! | `inv-flood` | 5,200 `inv` at once | score it 50 (rate limit exceeded) |
//! | `addr-flood` | 40 `addr` at once | score it 50 (rate limit exceeded) |
//! | `ping-flood` | 1,000 `ping` at once, every 5 s | answer every one: keepalive is exempt from the message rate by design ([`crate::RateSettings`]); the check is that nothing grows |
//! | `replay` | asks for the blocks and transactions announced to it, then sends them again unasked, with the headers, every 5 s | score each block 10 (unrequested); drop the transactions and headers it knows |
//! | `subnet` | many addresses of one /24, each sending two headers with invalid proof of work | score and ban each address (bans are per address) |
//!
//! With a `withholder` or `mid-block-stall` adversary the run keeps the tip still long enough
//! for the defence to act, as a real network's ten-minute blocks do: the last two blocks
//! come after a quiet phase of 20 s that starts 3 s after the mining (when the stallers
//! announce); otherwise the honest chain would overtake the withheld header before the
//! block timeout and the request would just be dropped. The honest nodes' stall timeouts
//! are scaled to blocks that come seconds apart, not ten minutes: 15 s for a block
//! ([`Config::block_timeout`], 60 s by default), 10 s for headers
//! ([`Config::sync_stall_timeout`], 30 s).
//!
//! ## Properties
//!
//! Checked at the end and listed in [`Summary::violations`] when they fail:
//! - every honest node's best header is the most-work block mined, and it holds every block
//!   of its chain;
//! - every transaction raised [`Event::TxReceived`] exactly once at every honest node but its
//!   submitter (never at the submitter);
//! - every adversary is dealt with as its kind says: scored ([`Event::BanScore`] naming its
//!   address, or banned) for those that send something wrong once they did; dropped as stalled
//!   by every honest node that asked it for something it never gave (`height-liar`,
//!   `withholder`, `mid-block-stall`); nothing for `ping-flood`;
//! - no honest node is banned by an honest node;
//! - every honest node's maps are within their bounds ([`SimNet::counts`]: fork headers,
//!   pre-synced peers, block download, transaction relay, notices, peers), checked at the end
//!   of the mining and at the end, and at the end nothing is left waiting (no block in flight
//!   or buffered, no commit pending, no transaction requested).
//!
//! Everything follows the seed: two runs of one seed give the same [`Summary`] and the same
//! [`Summary::trace_digest`].

use super::{
    make_tx, mine_at, topology, AdversaryRecord, BanRecord, LinkModel, Options, Percentiles,
    Progress, Rng, Summary,
};
use crate::fsm::addrbook::XorShift64;
use crate::network::Network;
use crate::sim::{Fault, LinkSettings, NodeId, SimNet, SIM_UNIX_START};
use crate::wire::frame::encode_message;
use crate::wire::{
    Block, BlockHeader, Hash256, InvType, Inventory, Magic, Message, NetAddr, TimedNetAddr,
    Transaction,
};
use crate::{Config, DisconnectReason, Event, PeerId, TxPolicy};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Honest nodes each adversary connects to (fewer when there are fewer).
const TARGETS: usize = 3;
/// Handshakes before the mining starts.
const WARMUP: Duration = Duration::from_secs(2);
/// How often the periodic attacks come.
const ATTACK_EVERY: Duration = Duration::from_secs(5);
/// The stallers announce this long after the last block of the mining...
const QUIET_AFTER: Duration = Duration::from_secs(3);
/// ...and the tip stays still this long (the block timeout and some).
const QUIET_FOR: Duration = Duration::from_secs(20);
/// Blocks mined after the quiet phase.
const FINAL_BLOCKS: u32 = 2;
/// How far the harness moves the clock between looks at the nodes.
const SLICE: Duration = Duration::from_millis(200);
/// Fork headers an honest node keeps per peer, and in all: the defaults (10,000 and 100,000)
/// scaled down to a chain of tens of blocks, so that a low-work fork runs out of budget in a
/// few dozen headers.
const FORK_HEADERS_PER_PEER: usize = 100;
const FORK_HEADERS: usize = 1_000;
/// The honest nodes' stall timeouts, scaled to a chain whose blocks come seconds apart: a
/// peer has 15 s to deliver a block ([`Config::block_timeout`], 60 s by default against
/// ten-minute blocks) and 10 s to answer `getheaders` ([`Config::sync_stall_timeout`], 30 s).
/// Both stay above the hold of the property runs' partition on a request (10 s), so that
/// honest peers are not dropped for it.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(15);
const SYNC_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The harness sees a request up to a slice after it arrives, a latency after it left.
const TIMEOUT_SLACK: Duration = Duration::from_secs(2);
/// The height a `height-liar` claims.
const LIAR_HEIGHT: u32 = 1_000_000;
/// Violations listed one by one (the rest are counted).
const MAX_LISTED: usize = 20;

/// What an adversary of a simulated network does (see the module documentation's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// Headers whose proof of work does not meet their bits.
    BadPow,
    /// Many short branches with less work than the chain.
    LowWorkFork,
    /// Claims a height it never shows.
    HeightLiar,
    /// Announces a block and never serves it.
    Withholder,
    /// Announces a block and stops halfway through sending it.
    MidBlockStall,
    /// `inv` over the rate limit.
    InvFlood,
    /// `addr` over the rate limit.
    AddrFlood,
    /// `ping` by the thousand.
    PingFlood,
    /// Blocks, transactions and headers it was given, sent again unasked.
    Replay,
    /// One of many addresses in one /24, each sending headers with invalid proof of work.
    Subnet,
}

/// What the honest nodes are expected to do about an adversary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defence {
    /// Score it (or ban it), once it did something.
    Scored,
    /// Drop it as stalled, wherever it was asked for something.
    Dropped,
    /// Nothing (what it does is allowed; its cost is bounded).
    Nothing,
}

impl Attack {
    /// The kinds the adversaries that are not [`Attack::Subnet`] take in turn.
    pub const CYCLE: [Attack; 9] = [
        Attack::BadPow,
        Attack::InvFlood,
        Attack::HeightLiar,
        Attack::Replay,
        Attack::Withholder,
        Attack::LowWorkFork,
        Attack::AddrFlood,
        Attack::MidBlockStall,
        Attack::PingFlood,
    ];

    /// A short name.
    pub fn name(&self) -> &'static str {
        match self {
            Attack::BadPow => "bad-pow",
            Attack::LowWorkFork => "low-work-fork",
            Attack::HeightLiar => "height-liar",
            Attack::Withholder => "withholder",
            Attack::MidBlockStall => "mid-block-stall",
            Attack::InvFlood => "inv-flood",
            Attack::AddrFlood => "addr-flood",
            Attack::PingFlood => "ping-flood",
            Attack::Replay => "replay",
            Attack::Subnet => "subnet",
        }
    }

    fn defence(&self) -> Defence {
        match self {
            Attack::HeightLiar | Attack::Withholder | Attack::MidBlockStall => Defence::Dropped,
            Attack::PingFlood => Defence::Nothing,
            _ => Defence::Scored,
        }
    }

    /// Whether it needs the tip to stay still past the block timeout.
    fn stalls_blocks(&self) -> bool {
        matches!(self, Attack::Withholder | Attack::MidBlockStall)
    }

    /// The kinds of `n` adversaries, in order: with eight or more, the last quarter are
    /// [`Attack::Subnet`]; the others take [`Attack::CYCLE`] in turn.
    pub fn assign(n: usize) -> Vec<Attack> {
        let subnet = if n >= 8 { n / 4 } else { 0 };
        (0..n)
            .map(|k| {
                if k < n - subnet {
                    Attack::CYCLE[k % Attack::CYCLE.len()]
                } else {
                    Attack::Subnet
                }
            })
            .collect()
    }
}

/// A block the run mined.
struct Mined {
    header: BlockHeader,
    height: u32,
    at: Duration,
    miner: usize,
    /// Honest nodes that connected it.
    reached: Vec<bool>,
}

/// A transaction the run submitted.
struct Submitted {
    at: Duration,
    by: usize,
    /// `TxReceived` events per honest node.
    got: Vec<u32>,
    /// Honest nodes (the submitter included) that have it.
    have: usize,
}

/// An honest node as the run follows it (from its events).
struct Honest {
    /// Events read so far.
    cursor: usize,
    /// Its last connected block.
    tip: (Hash256, u32),
    /// Ready connections.
    peers: BTreeSet<PeerId>,
}

/// An adversary and what happened to it.
struct Adversary {
    kind: Attack,
    node: NodeId,
    ip: IpAddr,
    targets: Vec<usize>,
    /// `received` read so far.
    cursor: usize,
    /// The next time it attacks (periodic kinds).
    next: Duration,
    /// Attacks made.
    acts: u32,
    /// The block it announced and keeps back.
    secret: Option<Block>,
    /// Honest nodes that asked it for something it does not give (headers, its block).
    asked: BTreeSet<usize>,
    /// When each honest node last asked it for its block (a staller).
    asked_at: BTreeMap<usize, Duration>,
    /// When an honest node first connected a block at the height of the one it would ask for,
    /// or above, or its best header chain left that block (from then on it no longer needs
    /// the block).
    moved_on: BTreeMap<usize, Duration>,
    /// Blocks asked of it that it never announced (a `height-liar`'s claim attracts them).
    block_requests: u32,
    /// Honest nodes that dropped it as stalled.
    dropped: BTreeSet<usize>,
    /// Honest nodes that raised its ban score.
    scored: BTreeSet<usize>,
    /// Honest nodes that banned it.
    banned: BTreeSet<usize>,
    /// What a `replay` adversary was given: blocks, transactions, headers.
    blocks: Vec<Block>,
    txs: Vec<Transaction>,
    headers: Vec<BlockHeader>,
    /// Hashes it asked for.
    requested: BTreeSet<Hash256>,
}

impl Adversary {
    /// Whether the honest nodes did what its kind expects.
    fn dealt_with(&self) -> bool {
        match self.kind.defence() {
            Defence::Scored => self.acts == 0 || !self.scored.is_empty() || !self.banned.is_empty(),
            Defence::Dropped if self.kind == Attack::HeightLiar => {
                self.asked.is_subset(&self.dropped)
            }
            // dropped, or the block became useless to the node before its request timed out
            Defence::Dropped => self.asked_at.iter().all(|(i, &t)| {
                self.dropped.contains(i)
                    || self
                        .moved_on
                        .get(i)
                        .is_some_and(|&m| m <= t + BLOCK_TIMEOUT + TIMEOUT_SLACK)
            }),
            Defence::Nothing => true,
        }
    }

    /// Honest nodes that asked it and moved on before dropping it.
    fn moot(&self) -> usize {
        self.moved_on
            .keys()
            .filter(|i| self.asked_at.contains_key(i) && !self.dropped.contains(i))
            .count()
    }

    fn outcome(&self) -> String {
        let mut parts = Vec::new();
        if !self.scored.is_empty() {
            parts.push(format!("scored by {}", self.scored.len()));
        }
        if !self.banned.is_empty() {
            parts.push(format!("banned by {}", self.banned.len()));
        }
        if !self.dropped.is_empty() {
            parts.push(format!("dropped as stalled by {}", self.dropped.len()));
        }
        if !self.asked.is_empty() {
            parts.push(format!("asked by {}", self.asked.len()));
        }
        if self.moot() > 0 {
            parts.push(format!(
                "{} of them moved on to another block first",
                self.moot()
            ));
        }
        if self.block_requests > 0 {
            parts.push(format!(
                "asked for {} blocks it never announced",
                self.block_requests
            ));
        }
        if parts.is_empty() {
            parts.push(
                match (self.kind.defence(), self.acts) {
                    (Defence::Nothing, _) => "served, not scored (allowed)",
                    (Defence::Dropped, _) => "never asked for anything (harmless)",
                    (Defence::Scored, 0) => "had no occasion to attack",
                    (Defence::Scored, _) => "NOT scored",
                }
                .to_string(),
            );
        }
        format!("{} ({} attacks)", parts.join(", "), self.acts)
    }
}

/// The run's schedule, from the options.
struct Plan {
    /// When each block is mined.
    blocks: Vec<Duration>,
    /// When each transaction is submitted.
    txs: Vec<Duration>,
    /// When the attacks stop (the last block of the mining).
    attack_end: Duration,
    /// When the stallers announce (a quiet phase follows).
    quiet: Option<Duration>,
}

impl Plan {
    fn new(opts: &Options, stallers: bool) -> Plan {
        let quiet = stallers && opts.blocks >= FINAL_BLOCKS;
        let mining = if quiet {
            opts.blocks - FINAL_BLOCKS
        } else {
            opts.blocks
        };
        let i = opts.block_interval;
        let mut blocks: Vec<Duration> = (0..mining).map(|k| WARMUP + i * (k + 1)).collect();
        let span = i * mining.max(1);
        let attack_end = WARMUP + span;
        let quiet_at = quiet.then_some(attack_end + QUIET_AFTER);
        if let Some(q) = quiet_at {
            for k in 0..FINAL_BLOCKS {
                blocks.push(q + QUIET_FOR + i * k);
            }
        }
        let txs = (0..opts.txs)
            .map(|j| WARMUP + span.mul_f64((j as f64 + 0.5) / opts.txs.max(1) as f64))
            .collect();
        Plan {
            blocks,
            txs,
            attack_end,
            quiet: quiet_at,
        }
    }
}

fn link_settings(m: &LinkModel, rng: &mut Rng) -> LinkSettings {
    let (lo, hi) = (m.latency.0.min(m.latency.1), m.latency.0.max(m.latency.1));
    let spread = u64::try_from((hi - lo).as_nanos()).unwrap_or(u64::MAX);
    let latency = lo + Duration::from_nanos(rng.0.next_u64() % spread.saturating_add(1));
    LinkSettings::default()
        .with_latency(latency)
        .with_jitter(m.jitter)
        .with_loss(m.loss)
        .with_bandwidth(m.bandwidth)
}

fn honest_config(connect: Vec<SocketAddr>) -> Config {
    let mut c = Config::new(Network::Regtest);
    c.tx_policy = TxPolicy::AcceptAll;
    // the topology is the run's: no dialling from address gossip
    c.target_outbound = 0;
    c.getaddr_on_connect = false;
    c.connect = connect;
    c.max_fork_headers_per_peer = FORK_HEADERS_PER_PEER;
    c.max_fork_headers = FORK_HEADERS;
    c.block_timeout = BLOCK_TIMEOUT;
    c.sync_stall_timeout = SYNC_STALL_TIMEOUT;
    c
}

fn adversary_config(kind: Attack) -> Config {
    let mut c = Config::new(Network::Regtest);
    c.user_agent = format!("/simnet-adversary:{}/", kind.name());
    // only the replayer wants transactions announced
    c.relay = kind == Attack::Replay;
    c
}

/// The first node id at or after `i` whose address starts a /24 (10.x.y.1).
fn next_subnet(i: usize) -> usize {
    i.div_ceil(256) * 256
}

/// Frames of `msgs`, back to back.
fn frames(magic: Magic, msgs: impl Iterator<Item = Message>) -> Bytes {
    let mut b = BytesMut::new();
    for m in msgs {
        encode_message(&mut b, magic, &m);
    }
    b.freeze()
}

/// A header on `prev` whose proof of work does not meet its bits.
fn bad_pow_header(prev: &BlockHeader, tag: u64) -> BlockHeader {
    let mut h = BlockHeader {
        version: 4,
        prev_hash: prev.hash(),
        merkle_root: Hash256::sha256d(&tag.to_le_bytes()),
        time: prev.time + 1,
        bits: 0x207fffff,
        nonce: 0,
    };
    while h.meets_own_target() {
        h.nonce = h.nonce.wrapping_add(1);
    }
    h
}

/// A header on `prev` with valid proof of work (and nothing behind it).
fn pow_header(prev: &BlockHeader, tag: u64) -> BlockHeader {
    let mut h = BlockHeader {
        nonce: 0,
        ..bad_pow_header(prev, tag)
    };
    while !h.meets_own_target() {
        h.nonce = h.nonce.wrapping_add(1);
    }
    h
}

/// The whole run.
struct Run<'a> {
    opts: &'a Options,
    net: SimNet,
    rng: Rng,
    magic: Magic,
    genesis: BlockHeader,
    honest: Vec<Honest>,
    adversaries: Vec<Adversary>,
    by_ip: HashMap<IpAddr, usize>,
    honest_ip: HashMap<IpAddr, usize>,
    /// Topology degree of each honest node.
    degree: Vec<usize>,
    links: usize,
    plan: Plan,
    mined: HashMap<Hash256, Mined>,
    /// The most-work block mined (first mined among equals).
    best: (Hash256, u32),
    block_samples: Vec<f64>,
    txs: HashMap<Hash256, Submitted>,
    tx_order: Vec<Hash256>,
    tx_samples: Vec<f64>,
    txs_everywhere: u32,
    /// Submitted, not in a block yet.
    mempool: Vec<Transaction>,
    blocks_done: usize,
    txs_done: usize,
    bans: Vec<BanRecord>,
    honest_scored: BTreeSet<usize>,
    errors: Vec<String>,
    violations: Vec<String>,
    /// Violations past [`MAX_LISTED`].
    unlisted: usize,
    started: Instant,
    last_report: Option<Instant>,
}

/// Runs a simulated network as the module documentation says; `progress` is called a few
/// times a second (wall time) with where the run is.
pub fn run_virtual(opts: &Options, progress: &mut dyn FnMut(&Progress)) -> Summary {
    let mut run = Run::new(opts, false);
    run.go(progress);
    run.finish().0
}

/// [`run_virtual`], keeping the simulator's trace ([`SimNet::trace_lines`]: connections,
/// messages, events, faults, with their virtual times) to see what happened in a run; slower.
pub fn run_virtual_traced(opts: &Options) -> (Summary, Vec<String>) {
    let mut run = Run::new(opts, true);
    run.go(&mut |_| {});
    run.finish()
}

impl<'a> Run<'a> {
    fn new(opts: &'a Options, lines: bool) -> Run<'a> {
        let started = Instant::now();
        let params = Network::Regtest.params();
        let n = opts.nodes.max(1);
        let mut rng = Rng(XorShift64::new(opts.seed ^ 0x05ee_d0f5_13e7));
        let mut net = SimNet::new(opts.seed);
        net.set_trace_lines(lines);
        net.set_links(
            LinkSettings::default()
                .with_jitter(opts.links.jitter)
                .with_loss(opts.links.loss)
                .with_bandwidth(opts.links.bandwidth),
        );
        // Honest nodes: each dials the peers of its links added before it (so they are there).
        let topo = topology(n, opts.seed);
        let mut degree = vec![0usize; n];
        let mut dials: Vec<Vec<usize>> = vec![Vec::new(); n];
        for &(a, b) in &topo {
            degree[a] += 1;
            degree[b] += 1;
            dials[a.max(b)].push(a.min(b));
        }
        for (i, to) in dials.iter().enumerate() {
            for &j in to {
                let s = link_settings(&opts.links, &mut rng);
                net.set_link(i, j, s);
            }
            net.add_node(honest_config(
                to.iter().map(|&j| SimNet::node_addr(j)).collect(),
            ));
        }
        let honest_ip = (0..n).map(|i| (SimNet::node_addr(i).ip(), i)).collect();
        // Adversaries: on a /24 after the honest nodes', the subnet ones on one of their own.
        let kinds = Attack::assign(opts.adversaries);
        let plan = Plan::new(opts, kinds.iter().any(Attack::stalls_blocks));
        let mut adversaries: Vec<Adversary> = Vec::new();
        let mut next_id = next_subnet(n);
        let mut subnet_targets: Option<Vec<usize>> = None;
        let mut subnet_started = false;
        for kind in kinds {
            if kind == Attack::Subnet && !subnet_started {
                subnet_started = true;
                next_id = next_subnet(next_id);
            }
            let mut targets = match (&subnet_targets, kind) {
                (Some(t), Attack::Subnet) => t.clone(),
                _ => {
                    let mut all: Vec<usize> = (0..n).collect();
                    for i in (1..all.len()).rev() {
                        all.swap(i, rng.below(i + 1));
                    }
                    all.truncate(TARGETS.min(n));
                    all
                }
            };
            targets.sort_unstable();
            if kind == Attack::Subnet && subnet_targets.is_none() {
                subnet_targets = Some(targets.clone());
            }
            let first = WARMUP
                + Duration::from_millis(500)
                + opts
                    .block_interval
                    .mul_f64((rng.0.next_u64() % 1000) as f64 / 1000.0);
            adversaries.push(Adversary {
                kind,
                node: next_id,
                ip: SimNet::node_addr(next_id).ip(),
                targets,
                cursor: 0,
                next: first,
                acts: 0,
                secret: None,
                asked: BTreeSet::new(),
                asked_at: BTreeMap::new(),
                moved_on: BTreeMap::new(),
                block_requests: 0,
                dropped: BTreeSet::new(),
                scored: BTreeSet::new(),
                banned: BTreeSet::new(),
                blocks: Vec::new(),
                txs: Vec::new(),
                headers: Vec::new(),
                requested: BTreeSet::new(),
            });
            next_id += 1;
        }
        for a in &adversaries {
            // idle scripted peers fill the addresses up to the adversary's (never connected)
            while net.node_count() < a.node {
                net.add_script(adversary_config(Attack::PingFlood));
            }
            let id = net.add_script(adversary_config(a.kind));
            if a.kind == Attack::HeightLiar {
                net.set_script_height(id, LIAR_HEIGHT);
            }
        }
        let by_ip = adversaries
            .iter()
            .enumerate()
            .map(|(k, a)| (a.ip, k))
            .collect();
        // the partition: two random halves of the honest nodes, a quarter into the mining
        if let Some(d) = opts.partition {
            let mut side: Vec<usize> = (0..n).filter(|_| rng.0.next_u64() & 1 == 1).collect();
            if side.is_empty() && n > 1 {
                side.push(0);
            }
            let at = WARMUP + (plan.attack_end - WARMUP) / 4;
            net.schedule_fault(at, Fault::Partition(vec![side]));
            net.schedule_fault(at + d, Fault::Heal);
        }
        let genesis = params.genesis;
        Run {
            opts,
            net,
            rng,
            magic: params.magic,
            genesis,
            honest: (0..n)
                .map(|_| Honest {
                    cursor: 0,
                    tip: (genesis.hash(), 0),
                    peers: BTreeSet::new(),
                })
                .collect(),
            adversaries,
            by_ip,
            honest_ip,
            degree,
            links: topo.len(),
            plan,
            mined: HashMap::new(),
            best: (genesis.hash(), 0),
            block_samples: Vec::new(),
            txs: HashMap::new(),
            tx_order: Vec::new(),
            tx_samples: Vec::new(),
            txs_everywhere: 0,
            mempool: Vec::new(),
            blocks_done: 0,
            txs_done: 0,
            bans: Vec::new(),
            honest_scored: BTreeSet::new(),
            errors: Vec::new(),
            violations: Vec::new(),
            unlisted: 0,
            started,
            last_report: None,
        }
    }

    fn now(&self) -> Duration {
        self.net.now()
    }

    fn violation(&mut self, v: String) {
        if self.violations.len() < MAX_LISTED {
            self.violations.push(v);
        } else {
            self.unlisted += 1;
        }
    }

    fn header_of(&self, hash: &Hash256) -> (BlockHeader, u32) {
        match self.mined.get(hash) {
            Some(m) => (m.header, m.height),
            None => (self.genesis, 0),
        }
    }

    fn go(&mut self, progress: &mut dyn FnMut(&Progress)) {
        // adversaries connect once the honest nodes have dialled each other
        self.net.run_for(Duration::from_millis(500));
        for k in 0..self.adversaries.len() {
            let (node, targets) = (
                self.adversaries[k].node,
                self.adversaries[k].targets.clone(),
            );
            for t in targets {
                let s = link_settings(&self.opts.links, &mut self.rng);
                self.net.set_link(node, t, s);
                self.net.connect(node, t);
            }
        }
        let end_of_blocks = self.plan.blocks.last().copied().unwrap_or(WARMUP);
        let end_of_txs = self.plan.txs.last().copied().unwrap_or(WARMUP);
        let all_out = end_of_blocks.max(end_of_txs).max(self.plan.attack_end);
        let deadline = all_out + self.opts.timeout;
        let mut checked_mid = false;
        loop {
            let now = self.now();
            while self.txs_done < self.plan.txs.len() && self.plan.txs[self.txs_done] <= now {
                self.submit_tx();
            }
            while self.blocks_done < self.plan.blocks.len()
                && self.plan.blocks[self.blocks_done] <= now
            {
                self.mine_next();
            }
            if self.plan.quiet.is_some_and(|q| q <= now)
                && self
                    .adversaries
                    .iter()
                    .any(|a| a.kind.stalls_blocks() && a.acts == 0)
            {
                self.announce_withheld();
            }
            self.attack(now);
            if !checked_mid && now >= self.plan.attack_end {
                checked_mid = true;
                self.check_counts(false);
            }
            let finished = now >= all_out && self.settled();
            if finished || now >= deadline {
                break;
            }
            let phase = if now < WARMUP {
                "connecting"
            } else if now < self.plan.attack_end {
                "mining"
            } else if self.blocks_done < self.plan.blocks.len() {
                "quiet"
            } else {
                "converging"
            };
            self.report(phase, progress, false);
            // the next thing to do, or a slice
            let mut next = now + SLICE;
            if let Some(&t) = self.plan.txs.get(self.txs_done) {
                next = next.min(t);
            }
            if let Some(&t) = self.plan.blocks.get(self.blocks_done) {
                next = next.min(t);
            }
            if let Some(q) = self.plan.quiet {
                if q > now {
                    next = next.min(q);
                }
            }
            self.net
                .run_for(next.saturating_sub(now).max(Duration::from_millis(1)));
            self.observe();
            self.react();
        }
        self.report("converging", progress, true);
    }

    /// Whether everything that must happen has: every node on the tip, every transaction
    /// everywhere, every adversary dealt with.
    fn settled(&self) -> bool {
        self.blocks_done == self.plan.blocks.len()
            && self.txs_done == self.plan.txs.len()
            && self.honest.iter().all(|h| h.tip == self.best)
            && self.txs_everywhere as usize == self.plan.txs.len()
            && self.adversaries.iter().all(Adversary::dealt_with)
    }

    fn report(&mut self, phase: &'static str, progress: &mut dyn FnMut(&Progress), last: bool) {
        // wall-time pacing: the simulation never depends on it
        if !last
            && self
                .last_report
                .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.last_report = Some(Instant::now());
        let n = self.honest.len();
        let peers: usize = self.honest.iter().map(|h| h.peers.len()).sum();
        let adversaries_banned = self
            .adversaries
            .iter()
            .filter(|a| !a.banned.is_empty())
            .count();
        progress(&Progress {
            phase,
            elapsed: self.started.elapsed(),
            nodes: n,
            avg_peers: peers as f64 / n as f64,
            blocks_mined: self.blocks_done as u32,
            blocks_target: self.opts.blocks,
            tip_height: self.best.1,
            nodes_at_tip: self.honest.iter().filter(|h| h.tip == self.best).count(),
            txs_submitted: self.txs_done as u32,
            txs_target: self.opts.txs,
            txs_everywhere: self.txs_everywhere,
            block_ms: Percentiles::of(&self.block_samples),
            tx_ms: Percentiles::of(&self.tx_samples),
            honest_banned: self.honest_banned(),
            adversaries_banned,
            adversaries: self.adversaries.len(),
            virtual_time: Some(self.now()),
        });
    }

    fn honest_banned(&self) -> usize {
        self.honest_ip
            .keys()
            .filter(|ip| self.bans.iter().any(|b| b.subnet.contains(**ip)))
            .count()
    }

    /// A random honest node mines on its own tip; the blocks after the quiet phase, and the
    /// last block, go on the most-work block, by a node that has it.
    fn mine_next(&mut self) {
        let k = self.blocks_done;
        self.blocks_done += 1;
        let n = self.honest.len();
        let now = self.now();
        let on_best = k + 1 == self.plan.blocks.len() || self.plan.quiet.is_some_and(|q| now > q);
        let (miner, parent) = if on_best {
            let at_best: Vec<usize> = (0..n)
                .filter(|&i| self.honest[i].tip == self.best)
                .collect();
            // its miner has it even when it did not connect it (see the module documentation)
            let miner = match at_best.len() {
                0 => self.mined.get(&self.best.0).map_or(0, |m| m.miner),
                c => at_best[self.rng.below(c)],
            };
            (miner, self.best.0)
        } else {
            let miner = self.rng.below(n);
            (miner, self.honest[miner].tip.0)
        };
        let (prev, height) = self.header_of(&parent);
        let time = (SIM_UNIX_START + now.as_secs()).min(u32::MAX as u64) as u32;
        let tag = self.opts.seed ^ ((k as u64 + 1) << 48);
        let block = mine_at(&prev, height + 1, tag, &self.mempool, time);
        let hash = block.hash();
        match self.net.submit_block(miner, block.clone()) {
            Ok(_) => {
                let mut reached = vec![false; n];
                reached[miner] = true;
                self.mined.insert(
                    hash,
                    Mined {
                        header: block.header,
                        height: height + 1,
                        at: now,
                        miner,
                        reached,
                    },
                );
                if height + 1 > self.best.1 {
                    self.best = (hash, height + 1);
                }
                self.mempool.clear();
            }
            Err(e) => self
                .errors
                .push(format!("node {miner} refused block {}: {e}", height + 1)),
        }
    }

    fn submit_tx(&mut self) {
        let j = self.txs_done;
        self.txs_done += 1;
        let tx = make_tx(self.opts.seed, j as u32);
        let n = self.honest.len();
        let by = self.rng.below(n);
        let txid = tx.txid();
        self.txs.insert(
            txid,
            Submitted {
                at: self.now(),
                by,
                got: vec![0; n],
                have: 1,
            },
        );
        self.tx_order.push(txid);
        if n == 1 {
            self.txs_everywhere += 1;
        }
        self.net.submit_tx(by, tx.clone());
        self.mempool.push(tx);
    }

    /// Reads what the honest nodes raised since the last look.
    fn observe(&mut self) {
        for i in 0..self.honest.len() {
            let events = self.net.events(i);
            let from = self.honest[i].cursor;
            if from == events.len() {
                continue;
            }
            let fresh: Vec<(usize, Event)> = events[from..]
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    matches!(
                        e,
                        Event::PeerConnected(_)
                            | Event::PeerDisconnected { .. }
                            | Event::BlockConnected { .. }
                            | Event::Reorg(_)
                            | Event::TxReceived { .. }
                            | Event::BanScore { .. }
                            | Event::Banned { .. }
                            | Event::Unbanned { .. }
                    )
                })
                .map(|(k, e)| (from + k, e.clone()))
                .collect();
            self.honest[i].cursor = events.len();
            for (k, e) in fresh {
                let at = self.net.event_time(i, k).unwrap_or_else(|| self.now());
                self.take(i, at, e);
            }
        }
    }

    fn take(&mut self, i: usize, at: Duration, e: Event) {
        let ms = |from: Duration| at.saturating_sub(from).as_secs_f64() * 1000.0;
        match e {
            Event::PeerConnected(p) => {
                self.honest[i].peers.insert(p.id);
            }
            Event::PeerDisconnected {
                id, addr, reason, ..
            } => {
                self.honest[i].peers.remove(&id);
                if let (Some(&k), DisconnectReason::Stalled(_)) =
                    (self.by_ip.get(&addr.ip()), &reason)
                {
                    self.adversaries[k].dropped.insert(i);
                }
            }
            Event::BlockConnected { hash, height, .. } => {
                self.honest[i].tip = (hash, height);
                for a in self.adversaries.iter_mut() {
                    let above = a.secret.as_ref().is_some_and(|b| {
                        b.hash() != hash
                            && self.mined.get(&b.header.prev_hash).map_or(0, |m| m.height) < height
                    });
                    // (whether or not it asked yet: the harness sees a request up to a slice
                    // after it arrives, and a reorg may have moved the node on meanwhile)
                    if above && !a.moved_on.contains_key(&i) {
                        a.moved_on.insert(i, at);
                    }
                }
                if let Some(m) = self.mined.get_mut(&hash) {
                    if !m.reached[i] {
                        m.reached[i] = true;
                        self.block_samples.push(ms(m.at));
                    }
                }
            }
            // the best header chain left the withheld block: its request is dropped with it
            Event::Reorg(r) => {
                for a in self.adversaries.iter_mut() {
                    let left = a
                        .secret
                        .as_ref()
                        .is_some_and(|b| r.disconnected.contains(&b.hash()));
                    if left && !a.moved_on.contains_key(&i) {
                        a.moved_on.insert(i, at);
                    }
                }
            }
            Event::TxReceived { tx, .. } => {
                if let Some(s) = self.txs.get_mut(&tx.txid()) {
                    s.got[i] += 1;
                    if s.got[i] == 1 && i != s.by {
                        s.have += 1;
                        self.tx_samples.push(ms(s.at));
                        if s.have == self.honest.len() {
                            self.txs_everywhere += 1;
                        }
                    }
                }
            }
            Event::BanScore { ip, .. } => {
                if let Some(&k) = self.by_ip.get(&ip) {
                    self.adversaries[k].scored.insert(i);
                } else if let Some(&h) = self.honest_ip.get(&ip) {
                    self.honest_scored.insert(h);
                }
            }
            Event::Banned { subnet, reason, .. } => {
                for a in self.adversaries.iter_mut() {
                    if subnet.contains(a.ip) {
                        a.banned.insert(i);
                    }
                }
                self.bans.push(BanRecord {
                    by: i,
                    subnet,
                    reason,
                });
            }
            Event::Unbanned { subnet } => self.bans.retain(|b| b.by != i || b.subnet != subnet),
            _ => {}
        }
    }

    /// The adversaries answer what they were sent.
    fn react(&mut self) {
        for k in 0..self.adversaries.len() {
            let node = self.adversaries[k].node;
            let got = self.net.received(node);
            let from = self.adversaries[k].cursor;
            if from == got.len() {
                continue;
            }
            let fresh: Vec<(PeerId, Message)> = got[from..]
                .iter()
                .filter(|(_, m)| {
                    matches!(
                        m,
                        Message::GetHeaders(_)
                            | Message::GetData(_)
                            | Message::Inv(_)
                            | Message::Headers(_)
                            | Message::Block(_)
                            | Message::Tx(_)
                    )
                })
                .cloned()
                .collect();
            self.adversaries[k].cursor = got.len();
            for (id, m) in fresh {
                self.answer(k, id, m);
            }
        }
    }

    fn answer(&mut self, k: usize, id: PeerId, m: Message) {
        let now = self.now();
        let node = self.adversaries[k].node;
        let from = self.net.remote(node, id);
        let a = &mut self.adversaries[k];
        match (a.kind, m) {
            (Attack::HeightLiar, Message::GetHeaders(_)) => {
                if let Some(f) = from {
                    a.asked.insert(f);
                }
            }
            (Attack::HeightLiar, Message::GetData(items)) => {
                a.block_requests +=
                    items.iter().filter(|i| i.kind == InvType::BLOCK).count() as u32;
            }
            (Attack::Withholder | Attack::MidBlockStall, Message::GetData(items)) => {
                let Some(secret) = a.secret.as_ref() else {
                    return;
                };
                let hash = secret.hash();
                if !items.iter().any(|i| i.hash == hash) {
                    return;
                }
                if let Some(f) = from {
                    a.asked.insert(f);
                    a.asked_at.insert(f, now);
                    // a node that moved on long before asks anew; one that moved on around
                    // when it asked (the request seen here up to a slice and a link after it
                    // left) will drop the request
                    if a.moved_on.get(&f).is_some_and(|&m| m + TIMEOUT_SLACK < now) {
                        a.moved_on.remove(&f);
                    }
                }
                if a.kind == Attack::MidBlockStall {
                    let whole = frames(self.magic, std::iter::once(Message::Block(secret.clone())));
                    let half = whole.slice(..24 + (whole.len() - 24) / 2);
                    self.net.script_send_raw(node, id, half);
                }
            }
            (Attack::Replay, Message::Inv(items)) => {
                let want: Vec<Inventory> = items
                    .into_iter()
                    .filter(|i| {
                        (i.kind == InvType::BLOCK || i.kind == InvType::TX)
                            && a.requested.insert(i.hash)
                    })
                    .collect();
                if !want.is_empty() {
                    self.net.script_send_to(node, id, Message::GetData(want));
                }
            }
            (Attack::Replay, Message::Headers(hs)) => {
                let want: Vec<Inventory> = hs
                    .iter()
                    .filter(|h| a.requested.insert(h.hash()))
                    .map(|h| Inventory {
                        kind: InvType::BLOCK,
                        hash: h.hash(),
                    })
                    .collect();
                a.headers.extend(hs);
                keep_last(&mut a.headers, 20);
                if !want.is_empty() {
                    self.net.script_send_to(node, id, Message::GetData(want));
                }
            }
            (Attack::Replay, Message::Block(b)) => {
                a.headers.push(b.header);
                keep_last(&mut a.headers, 20);
                a.blocks.push(b);
                keep_last(&mut a.blocks, 10);
            }
            (Attack::Replay, Message::Tx(t)) => {
                a.txs.push(t);
                keep_last(&mut a.txs, 20);
            }
            _ => {}
        }
    }

    /// The periodic attacks due now.
    fn attack(&mut self, now: Duration) {
        if now >= self.plan.attack_end {
            return;
        }
        for k in 0..self.adversaries.len() {
            if self.adversaries[k].next > now {
                continue;
            }
            self.adversaries[k].next = now + ATTACK_EVERY;
            if self.net.ready_peers(self.adversaries[k].node) == 0 {
                // not connected (refused or evicted by full honest nodes, or not yet): no
                // attack, nothing to be dealt with
                continue;
            }
            let (node, kind, acts) = (
                self.adversaries[k].node,
                self.adversaries[k].kind,
                self.adversaries[k].acts,
            );
            let tag = ((k as u64) << 32) | acts as u64;
            let acted = match kind {
                Attack::BadPow => {
                    let h = bad_pow_header(&self.genesis, tag);
                    self.net.script_send(node, Message::Headers(vec![h]));
                    true
                }
                Attack::Subnet if acts < 2 => {
                    let h = bad_pow_header(&self.genesis, tag ^ (1 << 63));
                    self.net.script_send(node, Message::Headers(vec![h]));
                    true
                }
                // one-header branches on genesis: less work than a chain of two or more
                Attack::LowWorkFork if acts == 0 && self.best.1 >= 2 => {
                    let g = self.genesis;
                    let raw = frames(
                        self.magic,
                        (0..120u64)
                            .map(|b| Message::Headers(vec![pow_header(&g, tag ^ (b << 40))])),
                    );
                    self.send_raw_all(node, raw);
                    true
                }
                Attack::InvFlood if acts == 0 => {
                    let g = self.genesis.hash();
                    let raw = frames(
                        self.magic,
                        (0..5_200).map(|_| {
                            Message::Inv(vec![Inventory {
                                kind: InvType::BLOCK,
                                hash: g,
                            }])
                        }),
                    );
                    self.send_raw_all(node, raw);
                    true
                }
                Attack::AddrFlood if acts == 0 => {
                    let time = (SIM_UNIX_START + now.as_secs()) as u32;
                    let raw = frames(
                        self.magic,
                        (0..40u32).map(|j| {
                            let n = ((k as u32) << 8) | j;
                            let ip = [11, (n >> 16) as u8, (n >> 8) as u8, n as u8];
                            Message::Addr(vec![TimedNetAddr {
                                time,
                                addr: NetAddr::new(SocketAddr::from((ip, 8333)), 1),
                            }])
                        }),
                    );
                    self.send_raw_all(node, raw);
                    true
                }
                Attack::PingFlood => {
                    let raw = frames(self.magic, (0..1_000u64).map(|j| Message::Ping(tag ^ j)));
                    self.send_raw_all(node, raw);
                    true
                }
                Attack::Replay if !self.adversaries[k].blocks.is_empty() => {
                    let a = &self.adversaries[k];
                    let mut msgs: Vec<Message> = Vec::new();
                    msgs.push(Message::Headers(a.headers.clone()));
                    msgs.extend(a.txs.iter().cloned().map(Message::Tx));
                    msgs.extend(a.blocks.iter().cloned().map(Message::Block));
                    let raw = frames(self.magic, msgs.into_iter());
                    self.send_raw_all(node, raw);
                    true
                }
                _ => false,
            };
            if acted {
                self.adversaries[k].acts += 1;
            }
        }
    }

    /// Writes `raw` on every ready connection of a scripted peer.
    fn send_raw_all(&mut self, node: NodeId, raw: Bytes) {
        let ids: Vec<PeerId> = self
            .adversaries
            .iter()
            .find(|a| a.node == node)
            .map(|a| {
                a.targets
                    .iter()
                    .filter_map(|&t| self.script_conn(node, t))
                    .collect()
            })
            .unwrap_or_default();
        for id in ids {
            self.net.script_send_raw(node, id, raw.clone());
        }
    }

    /// The scripted peer's connection to honest node `t`, if it lasts.
    fn script_conn(&self, node: NodeId, t: usize) -> Option<PeerId> {
        self.net
            .connections(node)
            .into_iter()
            .find(|&id| self.net.remote(node, id) == Some(t))
    }

    /// The stallers mine a block on the tip and announce its header.
    fn announce_withheld(&mut self) {
        let (prev, height) = self.header_of(&self.best.0);
        let time = (SIM_UNIX_START + self.now().as_secs()).min(u32::MAX as u64) as u32;
        for k in 0..self.adversaries.len() {
            let a = &self.adversaries[k];
            if !a.kind.stalls_blocks() || a.acts > 0 {
                continue;
            }
            let tag = self.opts.seed ^ (1 << 63) ^ ((k as u64) << 32);
            let block = mine_at(&prev, height + 1, tag, &[], time);
            let header = block.header;
            let node = a.node;
            self.adversaries[k].secret = Some(block);
            self.adversaries[k].acts += 1;
            self.net.script_send(node, Message::Headers(vec![header]));
        }
    }

    /// Every honest node's maps within their bounds; at the end (`last`), nothing left
    /// waiting.
    fn check_counts(&mut self, last: bool) {
        let mined = self.mined.len();
        let withheld = self
            .adversaries
            .iter()
            .filter(|a| a.secret.is_some())
            .count();
        let txs = self.txs.len();
        for i in 0..self.honest.len() {
            let c = self.net.counts(i);
            let attackers = self
                .adversaries
                .iter()
                .filter(|a| a.targets.contains(&i))
                .count();
            let mut bad: Vec<&str> = Vec::new();
            // Per link, at most two: one the other end closed (its close still on the way over
            // a lossy link) and the other end's redial (seen at the end of a run with 5 % loss)
            if c.peers > 2 * (self.degree[i] + attackers) {
                bad.push("more connections than twice the links and attackers");
            }
            if c.registry_live > c.peers {
                bad.push("registry entries of connections that are gone");
            }
            if c.headers > 1 + mined + withheld + FORK_HEADERS {
                bad.push("more headers than mined, withheld and the fork budget");
            }
            // the budget bounds what is admitted off the best chain; blocks mined (or withheld)
            // that lost a race or a partition join the forks later, outside it
            if c.fork_headers > FORK_HEADERS + mined + withheld {
                bad.push("fork headers past the budget and the blocks that went stale");
            }
            if c.presync_peers > 16 {
                bad.push("pre-synced peers past their limit");
            }
            if c.embedder_blocks != 0 {
                bad.push("embedder blocks nobody asked for");
            }
            if c.block_buffer > 1024 || c.blocks_in_flight > 1024 {
                bad.push("block download past its bounds");
            }
            if c.tx[1] > txs || c.tx[2] > txs || c.tx[3] > txs || c.tx[4] > 0 {
                bad.push("transaction relay holds more than was submitted");
            }
            if c.notices > 0 {
                bad.push("notices nobody sent");
            }
            if last
                && (c.block_buffer + c.blocks_in_flight + c.unconfirmed + c.pending_commits > 0
                    || c.tx[1] + c.tx[2] > 0)
            {
                bad.push("still waiting at the end");
            }
            if !bad.is_empty() {
                let when = if last {
                    "at the end"
                } else {
                    "after the mining"
                };
                self.violation(format!("node {i} {when}: {}: {c:?}", bad.join(", ")));
            }
        }
    }

    fn finish(mut self) -> (Summary, Vec<String>) {
        let n = self.honest.len();
        // converged: every honest node on the most-work block, with every block below it
        let (tip, height) = self.best;
        let mut off = 0;
        for i in 0..n {
            let best = self.net.best_header(i);
            let blocks = self.net.blocks_height(i);
            if best != (tip, height) || blocks != Some(height) {
                off += 1;
                self.violation(format!(
                    "node {i} not converged: best header {} at {}, blocks to {blocks:?}; the tip is {tip} at {height}",
                    best.0, best.1
                ));
            }
        }
        let converged = off == 0;
        // every transaction exactly once at every honest node but its submitter
        for (j, txid) in self.tx_order.clone().iter().enumerate() {
            let Some(s) = self.txs.get(txid) else {
                continue;
            };
            let wrong: Vec<(usize, u32)> = s
                .got
                .iter()
                .enumerate()
                .filter(|&(i, &g)| g != u32::from(i != s.by))
                .map(|(i, &g)| (i, g))
                .collect();
            if !wrong.is_empty() {
                let by = s.by;
                let list: Vec<String> = wrong
                    .iter()
                    .take(5)
                    .map(|(i, g)| format!("node {i} {g} times"))
                    .collect();
                self.violation(format!(
                    "transaction {j} ({txid}, from node {by}) not received exactly once at {} nodes: {}",
                    wrong.len(),
                    list.join(", ")
                ));
            }
        }
        // every adversary dealt with as its kind says
        for k in 0..self.adversaries.len() {
            let a = &self.adversaries[k];
            if !a.dealt_with() {
                let v = format!(
                    "adversary {k} ({}, {}) not dealt with: {}; targets {:?}, asked by {:?}, dropped by {:?}",
                    a.kind.name(),
                    a.ip,
                    a.outcome(),
                    a.targets,
                    a.asked,
                    a.dropped
                );
                self.violation(v);
            }
        }
        let honest_banned = self.honest_banned();
        if honest_banned > 0 {
            let list: Vec<String> = self
                .bans
                .iter()
                .filter(|b| self.honest_ip.keys().any(|ip| b.subnet.contains(*ip)))
                .map(|b| format!("{} by node {}: {}", b.subnet, b.by, b.reason))
                .collect();
            self.violation(format!(
                "{honest_banned} honest nodes banned: {}",
                list.join("; ")
            ));
        }
        self.check_counts(true);
        for e in self.errors.clone() {
            self.violation(e);
        }
        if self.unlisted > 0 {
            self.violations
                .push(format!("... and {} more violations", self.unlisted));
        }
        let tx_delivered = if self.plan.txs.is_empty() {
            1.0
        } else {
            self.txs_everywhere as f64 / self.plan.txs.len() as f64
        };
        let adversary_report = self
            .adversaries
            .iter()
            .map(|a| AdversaryRecord {
                ip: a.ip,
                kind: a.kind.name(),
                outcome: a.outcome(),
            })
            .collect();
        let summary = Summary {
            mode: "virtual",
            nodes: n,
            adversaries: self.adversaries.len(),
            seed: self.opts.seed,
            converged,
            honest_banned,
            adversaries_banned: self
                .adversaries
                .iter()
                .filter(|a| !a.banned.is_empty())
                .count(),
            tx_delivered,
            block_propagation_ms: Percentiles::of(&self.block_samples),
            tx_propagation_ms: Percentiles::of(&self.tx_samples),
            blocks: self.mined.len() as u32,
            txs: self.txs.len() as u32,
            tip_height: height,
            tip_hash: tip,
            links: self.links,
            duration: self.now(),
            bans: self.bans,
            errors: self.errors,
            violations: self.violations,
            honest_scored: self.honest_scored.len(),
            adversary_report,
            trace_digest: Some(self.net.trace_digest()),
        };
        (summary, self.net.trace_lines().to_vec())
    }
}

fn keep_last<T>(v: &mut Vec<T>, n: usize) {
    if v.len() > n {
        v.drain(..v.len() - n);
    }
}
