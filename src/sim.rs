//! A deterministic network simulator: many node cores (the engine's own) in one thread, on a
//! virtual clock, joined by in-memory links with no sockets and no threads. Each end of a link
//! runs the same per-connection state machine the shards run (framing, checksums, handshake,
//! keepalive, rate limits), so what crosses a link is real wire bytes. Stores are in memory;
//! commits are acknowledged after a virtual delay.
//!
//! Links model TCP streams ([`LinkSettings`]): latency and jitter, a bandwidth that serialises
//! the writes of each direction, and loss repaired by retransmission after a timeout (later
//! writes wait behind a lost one: order is kept). Faults are calls, made at once or scheduled
//! ([`SimNet::schedule_fault`]): [`SimNet::disconnect`], [`SimNet::partition`] and
//! [`SimNet::heal`], [`SimNet::stop`], [`SimNet::start`] and [`SimNet::restart`] (the store is
//! kept). Node cores dial each other by address ([`Config::connect`] static peers included).
//!
//! Everything is decided by the seed: two runs with the same seed and the same calls produce
//! the same [`SimNet::trace_lines`], byte for byte (and the same [`SimNet::trace_digest`]).
//!
//! ```
//! use bsn::sim::SimNet;
//! use bsn::{Config, Network};
//! use std::time::Duration;
//!
//! let mut net = SimNet::new(7);
//! let a = net.add_node(Config::new(Network::Regtest));
//! let b = net.add_node(Config::new(Network::Regtest));
//! net.connect(a, b);
//! assert!(net.run_until(Duration::from_secs(5), |n| n.ready_peers(a) == 1));
//! ```

use crate::config::Config;
use crate::event::{Event, PeerInfo};
use crate::fsm::addrbook::XorShift64;
use crate::fsm::peer::{PeerOutput, PeerProtocol, PeerSettings};
use crate::fsm::{Direction, DisconnectReason, PeerId};
use crate::node::{CoreCounts, NodeCore, Output, PeerInput};
use crate::store::memory::MemoryStore;
use crate::store::Store;
use crate::wire::frame::encode_message;
use crate::wire::{Block, Hash256, Message, NetAddr, Transaction, VersionMessage};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A node (or scripted peer) of a [`SimNet`].
pub type NodeId = usize;

/// Unix time at the start of every simulation (2023-11-14): fixed, so runs repeat.
pub const SIM_UNIX_START: u64 = 1_700_000_000;

/// The least retransmission timeout (Linux's `TCP_RTO_MIN`).
const RTO_MIN: Duration = Duration::from_millis(200);
/// The greatest retransmission timeout (Linux's `TCP_RTO_MAX`).
const RTO_MAX: Duration = Duration::from_secs(120);
/// Retransmissions of one write before TCP gives up and the connection is reset (Linux's
/// `tcp_retries2`).
const MAX_RETRANSMITS: u32 = 15;

/// How links behave: one-way latency and jitter, bandwidth and loss. Each connection follows
/// the settings of its pair of nodes ([`SimNet::set_link`], [`SimNet::connect_with`]), else
/// the network's ([`SimNet::set_links`]).
///
/// A link is a TCP stream each way: a write (the messages a connection puts out together)
/// leaves once the previous write on that direction has left (`bandwidth`), arrives `latency`
/// plus up to `jitter` later, and never before an earlier write. A lost write is sent again
/// after a retransmission timeout, `max(200 ms, 2 × RTT)` with `RTT = 2 × (latency + jitter)`,
/// doubling with each loss in a row (at most 120 s); after 15 retransmissions are lost the
/// connection is reset at both ends. Writes behind a lost one wait for it (head-of-line
/// blocking). Each pair of connected nodes has its own pipe per connection (two connections
/// between the same nodes do not share bandwidth).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LinkSettings {
    /// One-way latency.
    pub latency: Duration,
    /// Extra latency drawn uniformly from zero to this, per write (order on a connection is
    /// kept, as TCP keeps it).
    pub jitter: Duration,
    /// Time the store takes to acknowledge a commit (network-wide: taken from
    /// [`SimNet::set_links`], not from a link's own settings).
    pub commit_delay: Duration,
    /// Bytes per second each way; 0: unlimited. A write takes its size over this to go out.
    pub bandwidth: u64,
    /// The probability (0 to 1) that a write's transmission is lost (and retransmitted).
    pub loss: f64,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(2),
            commit_delay: Duration::from_millis(1),
            bandwidth: 0,
            loss: 0.0,
        }
    }
}

impl LinkSettings {
    /// With this one-way latency.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// With this jitter.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// With this bandwidth in bytes per second each way (0: unlimited).
    pub fn with_bandwidth(mut self, bytes_per_sec: u64) -> Self {
        self.bandwidth = bytes_per_sec;
        self
    }

    /// With this loss probability (clamped to 0..=1; NaN is 0).
    pub fn with_loss(mut self, loss: f64) -> Self {
        self.loss = loss;
        self
    }
}

/// A link's settings as the hot path uses them.
#[derive(Clone, Copy, Debug)]
struct Params {
    latency: u64,
    jitter: u64,
    /// Bytes per second; 0: unlimited.
    bandwidth: u64,
    /// A write is lost when a draw is below this (`loss × 2^64`).
    loss: u64,
    /// The first retransmission timeout.
    rto: u64,
}

impl Params {
    fn new(s: &LinkSettings) -> Params {
        let loss = if s.loss.is_nan() || s.loss <= 0.0 {
            0
        } else if s.loss >= 1.0 {
            u64::MAX
        } else {
            (s.loss * 18_446_744_073_709_551_616.0) as u64
        };
        let rtt = (s.latency.saturating_add(s.jitter)).saturating_mul(2);
        Params {
            latency: nanos(s.latency),
            jitter: nanos(s.jitter),
            bandwidth: s.bandwidth,
            loss,
            rto: nanos(RTO_MIN.max(rtt.saturating_mul(2))),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A fault or change to make at a virtual time ([`SimNet::schedule_fault`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Fault {
    /// [`SimNet::disconnect`].
    Disconnect(NodeId, NodeId),
    /// [`SimNet::partition`].
    Partition(Vec<Vec<NodeId>>),
    /// [`SimNet::heal`].
    Heal,
    /// [`SimNet::stop`].
    Stop(NodeId),
    /// [`SimNet::start`].
    Start(NodeId),
    /// [`SimNet::restart`].
    Restart(NodeId),
    /// [`SimNet::set_link`].
    Link(NodeId, NodeId, LinkSettings),
}

/// Counters of a simulation's work, for measuring it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Messages written on links.
    pub messages_sent: u64,
    /// Messages that reached the other end (those in flight when a connection ended do not).
    pub messages_delivered: u64,
    /// Wire bytes that reached the other end.
    pub bytes_delivered: u64,
    /// Things the simulator did (deliveries, timers, ticks, commits, faults).
    pub steps: u64,
}

/// What travels on one direction of a link.
enum Packet {
    /// A write: wire bytes holding this many messages.
    Bytes(Bytes, u32),
    /// The sender closed (TCP's FIN, after everything sent before).
    Fin,
    /// TCP gave up retransmitting: the connection is reset at both ends.
    Reset,
}

/// One direction of a link: what end `i` sends to end `1 - i`.
#[derive(Default)]
struct Dir {
    /// When the sender has put its last write on the wire (bandwidth).
    busy_until: u64,
    /// When the last write arrives (later ones never overtake it).
    last_arrival: u64,
    /// Writes in flight, by arrival time (never decreasing).
    queue: VecDeque<(u64, Packet)>,
    /// An arrival of the queue's head is scheduled.
    armed: bool,
    /// Held by a partition (its head arrived while the ends were apart).
    stalled: bool,
}

/// One end of a connection.
struct End {
    proto: PeerProtocol,
    node: NodeId,
    id: PeerId,
}

/// A connection: two ends, two directions.
struct Link {
    /// Bumped when the slot is freed: scheduled work for an older connection is dropped.
    gen: u32,
    ends: [Option<End>; 2],
    nodes: [NodeId; 2],
    /// `dirs[i]` carries what end `i` sends.
    dirs: [Dir; 2],
    params: Params,
    live: bool,
}

struct SimNode {
    core: Option<NodeCore>,
    /// A scripted peer (no core).
    script: bool,
    /// Running (not stopped).
    up: bool,
    /// Bumped at each stop: scheduled work for an earlier run is dropped.
    gen: u32,
    /// When the core's timer is scheduled (the earliest pending).
    timer: Option<u64>,
    /// The node's side of a partition (0: the rest).
    group: u32,
    store: Arc<MemoryStore>,
    addr: SocketAddr,
    settings: PeerSettings,
    config: Config,
    /// Connections: link and end.
    conns: BTreeMap<PeerId, (u32, u8)>,
    events: Vec<Event>,
    /// When each of `events` was raised (virtual nanoseconds).
    event_times: Vec<u64>,
    /// Messages a scripted peer received.
    received: Vec<(PeerId, Message)>,
    height: u32,
    /// Seed of the core's next start.
    seed: u64,
}

impl SimNode {
    fn new(store: Arc<MemoryStore>, addr: SocketAddr, config: Config, script: bool) -> SimNode {
        SimNode {
            core: None,
            script,
            up: true,
            gen: 0,
            timer: None,
            group: 0,
            store,
            addr,
            settings: config.peer_settings(),
            config,
            conns: BTreeMap::new(),
            events: Vec::new(),
            event_times: Vec::new(),
            received: Vec::new(),
            height: 0,
            seed: 0,
        }
    }
}

enum Item {
    /// The head of a link direction's queue is due.
    Arrive {
        link: u32,
        gen: u32,
        dir: u8,
    },
    /// A store commit is acknowledged.
    Committed {
        node: u32,
        gen: u32,
        ack: u64,
    },
    /// A node core's timer.
    Timer {
        node: u32,
        gen: u32,
    },
    /// Every connection's timers (handshake deadline, pings).
    Tick,
    /// A throttled connection reads again.
    Resume {
        link: u32,
        gen: u32,
        end: u8,
    },
    /// What was queued to a peer has left.
    Drained {
        link: u32,
        gen: u32,
        end: u8,
    },
    /// A connection across a partition times out.
    Cut {
        link: u32,
        gen: u32,
        epoch: u64,
    },
    /// A dial got no connection.
    DialFailed(Box<DialFailure>),
    Fault(Box<Fault>),
}

struct DialFailure {
    node: NodeId,
    gen: u32,
    addr: SocketAddr,
    reason: &'static str,
}

/// A scheduled item: ordered by time, then by when it was scheduled.
struct Scheduled {
    /// Nanoseconds in the high half, sequence number in the low.
    key: u128,
    item: Item,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // the earliest is the greatest (BinaryHeap is a max-heap)
        other.key.cmp(&self.key)
    }
}

/// FxHash's mixing step (a digest, not a defence).
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Trace kinds (mixed into the digest).
const T_OPEN: u64 = 1;
const T_SEND: u64 = 2;
const T_EVENT: u64 = 3;
const T_CLOSED: u64 = 4;
const T_GOT: u64 = 5;
const T_SCRIPT: u64 = 6;
const T_FAULT: u64 = 7;
const T_DIAL: u64 = 8;
const T_STALL: u64 = 9;

fn command_key(m: &Message) -> u64 {
    let w = m.command();
    let w = w.as_wire();
    let mut a = [0u8; 8];
    a.copy_from_slice(&w[..8]);
    u64::from_le_bytes(a) ^ (u32::from_le_bytes([w[8], w[9], w[10], w[11]]) as u64).rotate_left(17)
}

/// A simulated network. See the module documentation.
pub struct SimNet {
    nodes: Vec<SimNode>,
    links: Vec<Link>,
    free_links: Vec<u32>,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    base: Instant,
    /// Virtual nanoseconds since the start.
    now: u64,
    rng: XorShift64,
    next_id: u64,
    defaults: LinkSettings,
    default_params: Params,
    /// Settings of pairs of nodes (the lower id first).
    pair_links: HashMap<(NodeId, NodeId), Params>,
    keep_lines: bool,
    trace: Vec<String>,
    digest: u64,
    tick_every: u64,
    /// Bumped at each partition or heal.
    epoch: u64,
    partition_timeout: Duration,
    /// Directions held by a partition: link, generation, direction.
    stalled: Vec<(u32, u32, u8)>,
    /// Spare output buffers (calls nest, so one is not enough).
    spare: Vec<Vec<PeerOutput>>,
    stats: SimStats,
}

impl SimNet {
    /// An empty network whose every choice follows `seed`.
    pub fn new(seed: u64) -> SimNet {
        let defaults = LinkSettings::default();
        let mut net = SimNet {
            nodes: Vec::new(),
            links: Vec::new(),
            free_links: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            base: Instant::now(),
            now: 0,
            rng: XorShift64::new(seed),
            next_id: 1,
            default_params: Params::new(&defaults),
            defaults,
            pair_links: HashMap::new(),
            keep_lines: true,
            trace: Vec::new(),
            digest: 0,
            tick_every: 100_000_000,
            epoch: 0,
            partition_timeout: Duration::from_secs(30),
            stalled: Vec::new(),
            spare: Vec::new(),
            stats: SimStats::default(),
        };
        net.schedule(0, Item::Tick);
        net
    }

    /// Sets how links behave, for every connection whose pair of nodes has no settings of its
    /// own ([`SimNet::set_link`]): connections made from now on, and writes from now on on
    /// existing ones. Its `commit_delay` applies to every node.
    pub fn set_links(&mut self, links: LinkSettings) {
        self.default_params = Params::new(&links);
        self.defaults = links;
        for i in 0..self.links.len() {
            let l = &self.links[i];
            if l.live && !self.pair_links.contains_key(&pair(l.nodes[0], l.nodes[1])) {
                self.links[i].params = self.default_params;
            }
        }
    }

    /// Sets how the links between `a` and `b` behave (both ways): connections made from now
    /// on, and writes from now on on existing ones.
    pub fn set_link(&mut self, a: NodeId, b: NodeId, settings: LinkSettings) {
        let p = Params::new(&settings);
        self.trace([T_FAULT, 7, a as u64, b as u64], || {
            format!("n{a} n{b} link {settings:?}")
        });
        self.pair_links.insert(pair(a, b), p);
        if a < self.nodes.len() {
            for &(l, e) in self.nodes[a].conns.values() {
                let link = &mut self.links[l as usize];
                if link.nodes[1 - e as usize] == b {
                    link.params = p;
                }
            }
        }
    }

    /// How long a connection across a partition lasts before both ends time out (default
    /// 30 s, as a TCP stream whose bytes go unanswered; `Duration::MAX`: never). Applies to
    /// partitions made from now on.
    pub fn set_partition_timeout(&mut self, timeout: Duration) {
        self.partition_timeout = timeout;
    }

    /// Whether [`SimNet::trace_lines`] keeps lines (default: yes). Without them the
    /// simulation runs faster and [`SimNet::trace_digest`] still follows everything.
    pub fn set_trace_lines(&mut self, keep: bool) {
        self.keep_lines = keep;
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    fn unix_now(&self) -> u64 {
        SIM_UNIX_START + self.now / 1_000_000_000
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now)
    }

    /// Counters of the work done so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// The address of the `i`th node added (nodes and scripted peers count alike): known
    /// before it is added, for [`Config::connect`].
    pub fn node_addr(i: NodeId) -> SocketAddr {
        let n = i as u32 + 1;
        SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 8333))
    }

    /// The node at a virtual address.
    fn node_at(&self, addr: SocketAddr) -> Option<NodeId> {
        let (IpAddr::V4(ip), 8333) = (addr.ip(), addr.port()) else {
            return None;
        };
        let o = ip.octets();
        if o[0] != 10 {
            return None;
        }
        let n = (o[1] as usize) << 16 | (o[2] as usize) << 8 | o[3] as usize;
        (n >= 1 && n <= self.nodes.len()).then(|| n - 1)
    }

    /// Adds a node core with this configuration (its `listen` and `data_dir` are replaced: it
    /// gets a virtual address and an in-memory store). Its `connect` list is kept: static
    /// peers at virtual addresses ([`SimNet::node_addr`]), dialled and re-dialled by the core.
    pub fn add_node(&mut self, mut config: Config) -> NodeId {
        let i = self.nodes.len();
        let addr = Self::node_addr(i);
        config.listen = Some(addr);
        config.data_dir = None;
        config.allow_local_addrs = true;
        let store = Arc::new(MemoryStore::new());
        self.nodes.push(SimNode::new(store, addr, config, false));
        if let Err(e) = self.boot(i) {
            unreachable!("a new in-memory store always loads: {e}");
        }
        i
    }

    /// Builds node `i`'s core over its store.
    fn boot(&mut self, i: NodeId) -> Result<(), crate::Error> {
        let seed = self.rng.next_u64();
        let n = &self.nodes[i];
        let core = NodeCore::new(
            n.config.clone(),
            n.store.clone() as Arc<dyn Store>,
            Some(n.addr),
            self.instant(),
            self.unix_now(),
            seed,
        )?;
        let n = &mut self.nodes[i];
        n.height = core.best_header().1;
        n.core = Some(core);
        n.seed = seed;
        self.drain(i);
        Ok(())
    }

    /// Adds a scripted peer: it handshakes like any peer, then sends only what the test tells
    /// it to ([`SimNet::script_send`]) and records what it receives.
    pub fn add_script(&mut self, config: Config) -> NodeId {
        let i = self.nodes.len();
        let addr = Self::node_addr(i);
        let store = Arc::new(MemoryStore::new());
        self.nodes.push(SimNode::new(store, addr, config, true));
        i
    }

    /// A node's virtual address.
    pub fn addr(&self, node: NodeId) -> SocketAddr {
        self.nodes[node].addr
    }

    /// `from` dials `to` (a node core asks its core, so limits and bans apply). Nothing
    /// happens when `from` is stopped.
    pub fn connect(&mut self, from: NodeId, to: NodeId) {
        let addr = self.nodes[to].addr;
        let now = self.instant();
        if !self.nodes[from].up {
            return;
        }
        match self.nodes[from].core.as_mut() {
            Some(core) => {
                core.dial(addr, now);
                self.drain(from);
            }
            None => self.dial(from, addr),
        }
    }

    /// [`SimNet::set_link`], then [`SimNet::connect`].
    pub fn connect_with(&mut self, from: NodeId, to: NodeId, settings: LinkSettings) {
        self.set_link(from, to, settings);
        self.connect(from, to);
    }

    fn version(&mut self, node: NodeId, remote: SocketAddr) -> VersionMessage {
        let nonce = self.rng.next_u64();
        let timestamp = self.unix_now() as i64;
        let n = &self.nodes[node];
        VersionMessage {
            version: crate::config::PROTOCOL_VERSION,
            services: n.config.services,
            timestamp,
            receiver: NetAddr::new(remote, 0),
            sender: NetAddr::new(n.addr, n.config.services),
            nonce,
            user_agent: n.config.user_agent.clone(),
            start_height: n.height.min(i32::MAX as u32) as i32,
            relay: Some(n.config.relay),
            extra: Bytes::new(),
        }
    }

    fn apart(&self, a: NodeId, b: NodeId) -> bool {
        self.nodes[a].group != self.nodes[b].group
    }

    /// `from` connects to whoever has `addr`: at once, or a failure later (no answer across a
    /// partition or from an address nobody has: the dialler's connect timeout; a stopped
    /// node refuses after a round trip).
    fn dial(&mut self, from: NodeId, addr: SocketAddr) {
        let failure = match self.node_at(addr) {
            Some(to) if to == from => Some((0, "connection to self")),
            Some(to) if !self.apart(from, to) && self.nodes[to].up => None,
            Some(to) if !self.apart(from, to) => {
                let p = self.params(from, to);
                Some((p.latency.saturating_mul(2), "connection refused"))
            }
            _ => Some((
                nanos(self.nodes[from].config.connect_timeout),
                "connect timed out",
            )),
        };
        let Some((after, reason)) = failure else {
            let to = self.node_at(addr).expect("resolved above");
            return self.open(from, to);
        };
        self.trace([T_DIAL, from as u64, 0, after], || {
            format!("n{from} dial {addr} fails in {after} ns: {reason}")
        });
        let gen = self.nodes[from].gen;
        self.schedule(
            self.now.saturating_add(after),
            Item::DialFailed(Box::new(DialFailure {
                node: from,
                gen,
                addr,
                reason,
            })),
        );
    }

    fn params(&self, a: NodeId, b: NodeId) -> Params {
        self.pair_links
            .get(&pair(a, b))
            .copied()
            .unwrap_or(self.default_params)
    }

    fn alloc_link(&mut self, link: Link) -> u32 {
        match self.free_links.pop() {
            Some(i) => {
                let gen = self.links[i as usize].gen;
                self.links[i as usize] = Link { gen, ..link };
                i
            }
            None => {
                self.links.push(link);
                (self.links.len() - 1) as u32
            }
        }
    }

    fn free_link(&mut self, l: u32) {
        let link = &mut self.links[l as usize];
        if !link.live {
            return;
        }
        link.live = false;
        link.gen = link.gen.wrapping_add(1);
        link.ends = [None, None];
        link.dirs = Default::default();
        self.free_links.push(l);
    }

    /// Opens a connection from `from` to `to`.
    fn open(&mut self, from: NodeId, to: NodeId) {
        let (a, b) = (PeerId(self.next_id), PeerId(self.next_id + 1));
        self.next_id += 2;
        let now = self.instant();
        let (from_addr, to_addr) = (self.nodes[from].addr, self.nodes[to].addr);
        let va = self.version(from, to_addr);
        let vb = self.version(to, from_addr);
        let pa = PeerProtocol::new(Direction::Outbound, &self.nodes[from].settings, va, now);
        let pb = PeerProtocol::new(Direction::Inbound, &self.nodes[to].settings, vb, now);
        let params = self.params(from, to);
        let l = self.alloc_link(Link {
            gen: 0,
            ends: [
                Some(End {
                    proto: pa,
                    node: from,
                    id: a,
                }),
                Some(End {
                    proto: pb,
                    node: to,
                    id: b,
                }),
            ],
            nodes: [from, to],
            dirs: Default::default(),
            params,
            live: true,
        });
        let gen = self.links[l as usize].gen;
        self.nodes[from].conns.insert(a, (l, 0));
        self.nodes[to].conns.insert(b, (l, 1));
        self.trace([T_OPEN, from as u64, to as u64, a.0], || {
            format!("n{from} {a} -> n{to} {b} open")
        });
        self.report(
            from,
            PeerInput::Connection {
                id: a,
                addr: to_addr,
                direction: Direction::Outbound,
            },
        );
        self.report(
            to,
            PeerInput::Connection {
                id: b,
                addr: from_addr,
                direction: Direction::Inbound,
            },
        );
        for e in 0..2u8 {
            let mut out = self.spare.pop().unwrap_or_default();
            if let Some(end) = self.end_mut(l, gen, e) {
                end.proto.start(&mut out);
            }
            self.apply(l, gen, e, &mut out);
            self.spare.push(out);
        }
    }

    fn end_mut(&mut self, l: u32, gen: u32, e: u8) -> Option<&mut End> {
        let link = &mut self.links[l as usize];
        if link.gen != gen {
            return None;
        }
        link.ends[e as usize].as_mut()
    }

    fn trace(&mut self, key: [u64; 4], line: impl FnOnce() -> String) {
        let mut h = Fx(self.digest);
        h.write_u64(self.now);
        for k in key {
            h.write_u64(k);
        }
        self.digest = h.0;
        if self.keep_lines {
            let l = line();
            self.trace
                .push(format!("{:>10.3} {l}", self.now as f64 / 1e6));
        }
    }

    /// Everything that happened, one line each: connections, messages sent, events raised,
    /// disconnections, faults, each with its virtual time in milliseconds (empty with
    /// [`SimNet::set_trace_lines`] off).
    pub fn trace_lines(&self) -> &[String] {
        &self.trace
    }

    /// A digest of everything [`SimNet::trace_lines`] would show (kept with the lines off as
    /// well): equal for equal runs.
    pub fn trace_digest(&self) -> u64 {
        self.digest
    }

    fn report(&mut self, node: NodeId, input: PeerInput) {
        let now = self.instant();
        if let Some(core) = self.nodes[node].core.as_mut() {
            core.handle_peer(input, now);
            self.drain(node);
        } else if let PeerInput::Message { id, message } = input {
            self.trace([T_GOT, node as u64, id.0, command_key(&message)], || {
                format!("n{node} {id} got {}", message.command())
            });
            self.nodes[node].received.push((id, message));
        }
    }

    /// Carries out a connection's protocol outputs (`out` is left empty).
    fn apply(&mut self, l: u32, gen: u32, e: u8, out: &mut Vec<PeerOutput>) {
        let mut buf = BytesMut::new();
        let mut count = 0u32;
        let Some(end) = self.end_mut(l, gen, e) else {
            out.clear();
            return;
        };
        let (node, id) = (end.node, end.id);
        let magic = self.nodes[node].settings.magic;
        for o in out.drain(..) {
            if self.end_mut(l, gen, e).is_none() {
                continue;
            }
            if !matches!(o, PeerOutput::Send(_)) && !buf.is_empty() {
                // what the connection said so far goes out before the core answers anything
                let bytes = std::mem::take(&mut buf).freeze();
                self.transmit(l, e, bytes, std::mem::take(&mut count));
            }
            match o {
                PeerOutput::Send(m) => {
                    let before = buf.len();
                    encode_message(&mut buf, magic, &m);
                    if let Some(end) = self.end_mut(l, gen, e) {
                        end.proto.stats.record_out(m.command(), buf.len() - before);
                    }
                    count += 1;
                }
                PeerOutput::Connected(version) => {
                    let info = self.info(l, e);
                    self.report(node, PeerInput::Ready { info, version });
                }
                PeerOutput::Deliver(message) => {
                    self.report(node, PeerInput::Message { id, message })
                }
                PeerOutput::Rtt(_) => {}
                PeerOutput::Misbehaved(reason, detail) => {
                    self.report(node, PeerInput::Misbehaved { id, reason, detail })
                }
                // the simulator runs one stream per peer (its links are not sockets)
                PeerOutput::StreamRequest(_)
                | PeerOutput::BlockFile(..)
                | PeerOutput::OpenStream(_)
                | PeerOutput::StreamAcked(_) => {}
            }
        }
        if !buf.is_empty() && self.end_mut(l, gen, e).is_some() {
            self.transmit(l, e, buf.freeze(), count);
        }
    }

    fn info(&self, l: u32, e: u8) -> Box<PeerInfo> {
        let link = &self.links[l as usize];
        let c = link.ends[e as usize].as_ref().expect("a live end");
        let remote = self.nodes[link.nodes[1 - e as usize]].addr;
        let v = c.proto.version();
        Box::new(PeerInfo {
            id: c.id,
            addr: remote,
            direction: c.proto.direction(),
            ready: c.proto.is_ready(),
            version: v.map_or(0, |v| v.version),
            services: v.map_or(0, |v| v.services),
            user_agent: v.map(|v| v.user_agent.clone()).unwrap_or_default(),
            start_height: v.map_or(0, |v| v.start_height),
            rtt: c.proto.rtt(),
            connected_since: SystemTime::UNIX_EPOCH + Duration::from_secs(SIM_UNIX_START),
            their_max_payload: c.proto.their_max_payload(),
            queued_bytes: 0,
            stats: c.proto.stats.clone(),
            shard: 0,
            // scored by the core
            score: 0,
            status: crate::store::records::PeerStatus::Unknown,
            association: None,
            stream_policy: "Default",
            streams: Vec::new(),
        })
    }

    fn schedule(&mut self, at: u64, item: Item) {
        self.seq += 1;
        self.queue.push(Scheduled {
            key: (at as u128) << 64 | self.seq as u128,
            item,
        });
    }

    /// Puts a write of end `e` on its direction of link `l` (see [`LinkSettings`]).
    fn transmit(&mut self, l: u32, e: u8, bytes: Bytes, messages: u32) {
        self.stats.messages_sent += messages as u64;
        let link = &mut self.links[l as usize];
        let p = link.params;
        let d = &mut link.dirs[e as usize];
        let mut at = self.now;
        if p.bandwidth > 0 {
            let send = (bytes.len() as u128 * 1_000_000_000) / p.bandwidth as u128;
            let send = u64::try_from(send).unwrap_or(u64::MAX);
            d.busy_until = d.busy_until.max(self.now).saturating_add(send);
            at = d.busy_until;
        }
        at = at.saturating_add(p.latency);
        if p.jitter > 0 {
            at = at.saturating_add(self.rng.next_u64() % p.jitter.saturating_add(1));
        }
        let mut packet = Packet::Bytes(bytes, messages);
        if p.loss > 0 {
            let mut rto = p.rto;
            let mut lost = 0;
            while self.rng.next_u64() < p.loss {
                at = at.saturating_add(rto);
                if lost == MAX_RETRANSMITS {
                    packet = Packet::Reset;
                    break;
                }
                lost += 1;
                rto = rto.saturating_mul(2).min(nanos(RTO_MAX));
            }
        }
        self.push(l, e, at, packet);
    }

    /// Queues a packet on a direction, never before what is queued already.
    fn push(&mut self, l: u32, e: u8, at: u64, packet: Packet) {
        let link = &mut self.links[l as usize];
        let gen = link.gen;
        let d = &mut link.dirs[e as usize];
        let at = at.max(d.last_arrival);
        d.last_arrival = at;
        d.queue.push_back((at, packet));
        if !d.armed && !d.stalled {
            d.armed = true;
            self.schedule(
                at,
                Item::Arrive {
                    link: l,
                    gen,
                    dir: e,
                },
            );
        }
    }

    /// The head of a direction's queue arrives (or stalls at a partition).
    fn arrive(&mut self, l: u32, gen: u32, dir: u8) {
        let link = &mut self.links[l as usize];
        if link.gen != gen {
            return;
        }
        link.dirs[dir as usize].armed = false;
        let (a, b) = (link.nodes[0], link.nodes[1]);
        if self.apart(a, b) {
            self.links[l as usize].dirs[dir as usize].stalled = true;
            self.stalled.push((l, gen, dir));
            let from = self.links[l as usize].nodes[dir as usize];
            self.trace([T_STALL, l as u64, dir as u64, 0], || {
                format!("n{from} link {l} stalled by the partition")
            });
            return;
        }
        let Some((_, packet)) = self.links[l as usize].dirs[dir as usize].queue.pop_front() else {
            return;
        };
        let to = 1 - dir;
        match packet {
            Packet::Bytes(bytes, messages) => {
                self.stats.messages_delivered += messages as u64;
                self.stats.bytes_delivered += bytes.len() as u64;
                self.receive(l, gen, to, &bytes);
            }
            Packet::Fin => self.close_end(l, gen, to, DisconnectReason::Closed),
            Packet::Reset => {
                return self.reset(
                    l,
                    gen,
                    DisconnectReason::Io("connection timed out (retransmissions lost)".into()),
                )
            }
        }
        let link = &mut self.links[l as usize];
        if link.gen != gen {
            return;
        }
        let d = &mut link.dirs[dir as usize];
        if !d.armed && !d.stalled {
            if let Some(&(t, _)) = d.queue.front() {
                d.armed = true;
                self.schedule(t, Item::Arrive { link: l, gen, dir });
            }
        }
    }

    fn receive(&mut self, l: u32, gen: u32, e: u8, bytes: &[u8]) {
        let Some(end) = self.end_mut(l, gen, e) else {
            return;
        };
        end.proto.read_buffer().extend_from_slice(bytes);
        self.read(l, gen, e);
    }

    /// Lets a connection's protocol decode what it has read.
    fn read(&mut self, l: u32, gen: u32, e: u8) {
        let now = self.instant();
        let mut out = self.spare.pop().unwrap_or_default();
        let Some(end) = self.end_mut(l, gen, e) else {
            self.spare.push(out);
            return;
        };
        // (self-connections cannot happen here: a node never dials itself)
        let r = end.proto.on_data(now, &|_| false, &mut out);
        let throttled = end
            .proto
            .throttled_until()
            .filter(|_| end.proto.has_buffered());
        self.apply(l, gen, e, &mut out);
        self.spare.push(out);
        if let Err(reason) = r {
            return self.close_end(l, gen, e, reason);
        }
        if let Some(t) = throttled {
            let at = nanos(t.saturating_duration_since(self.base)).max(self.now);
            self.schedule(
                at,
                Item::Resume {
                    link: l,
                    gen,
                    end: e,
                },
            );
        }
    }

    /// Carries out every output of a node's core, then schedules its timer.
    fn drain(&mut self, node: NodeId) {
        while let Some(o) = self.nodes[node].core.as_mut().and_then(|c| c.poll_output()) {
            match o {
                Output::Send(id, m) => self.send(node, id, m),
                Output::Disconnect(id, reason) => self.close(node, id, reason),
                Output::Dial(addr) => self.dial(node, addr),
                Output::Write { batch, ack } => {
                    if let Err(e) = self.nodes[node].store.write(&batch) {
                        unreachable!("in-memory store write failed: {e}");
                    }
                    if let Some(ack) = ack {
                        let at = self.now.saturating_add(nanos(self.defaults.commit_delay));
                        let gen = self.nodes[node].gen;
                        let node = node as u32;
                        self.schedule(at, Item::Committed { node, gen, ack });
                    }
                }
                Output::Event(e) => {
                    self.trace([T_EVENT, node as u64, event_key(&e), 0], || {
                        format!("n{node} event {}", describe_event(&e))
                    });
                    let n = &mut self.nodes[node];
                    n.events.push(e);
                    n.event_times.push(self.now);
                }
                Output::Height(h) => self.nodes[node].height = h,
                // no simulated connection asks to join an association
                Output::JoinStream { from, .. } => self.close(
                    node,
                    from,
                    DisconnectReason::StreamSetup("simulated".into()),
                ),
                Output::RefuseStream(id, why) => {
                    self.close(node, id, DisconnectReason::StreamSetup(why))
                }
                // told once what was queued has left the sender (bandwidth)
                Output::NotifyDrained(id) => self.notify_drained(node, id),
                // simulated nodes keep every block in memory: no block files
                Output::SendBlockFile(..)
                | Output::RemoveBlockFile(..)
                | Output::EmbedderBlockFile { .. } => {
                    unreachable!("no block files in a simulation")
                }
            }
        }
        self.arm_timer(node);
    }

    /// Schedules the node core's timer if it is due sooner than the one scheduled.
    fn arm_timer(&mut self, node: NodeId) {
        let n = &mut self.nodes[node];
        let Some(core) = n.core.as_ref() else {
            return;
        };
        let t = nanos(core.poll_timeout().saturating_duration_since(self.base)).max(self.now);
        if n.timer.is_none_or(|x| t < x) {
            n.timer = Some(t);
            let gen = n.gen;
            self.schedule(
                t,
                Item::Timer {
                    node: node as u32,
                    gen,
                },
            );
        }
    }

    fn send(&mut self, node: NodeId, id: PeerId, m: Message) {
        self.trace([T_SEND, node as u64, id.0, command_key(&m)], || {
            format!("n{node} {id} send {}", describe(&m))
        });
        let Some(&(l, e)) = self.nodes[node].conns.get(&id) else {
            return;
        };
        let magic = self.nodes[node].settings.magic;
        let gen = self.links[l as usize].gen;
        let Some(end) = self.end_mut(l, gen, e) else {
            return;
        };
        if !end.proto.is_ready() || end.proto.check_send(&m).is_err() {
            return;
        }
        let mut buf = BytesMut::new();
        encode_message(&mut buf, magic, &m);
        end.proto.stats.record_out(m.command(), buf.len());
        self.transmit(l, e, buf.freeze(), 1);
    }

    fn notify_drained(&mut self, node: NodeId, id: PeerId) {
        let Some(&(l, e)) = self.nodes[node].conns.get(&id) else {
            return;
        };
        let link = &self.links[l as usize];
        let (gen, at) = (link.gen, link.dirs[e as usize].busy_until);
        // through the queue even when it is now: serving goes on without nesting calls
        let (link, end) = (l, e);
        self.schedule(at.max(self.now), Item::Drained { link, gen, end });
    }

    /// Closes a node's connection (the other end hears of it after what was sent).
    fn close(&mut self, node: NodeId, id: PeerId, reason: DisconnectReason) {
        if let Some(&(l, e)) = self.nodes[node].conns.get(&id) {
            let gen = self.links[l as usize].gen;
            self.close_end(l, gen, e, reason);
        }
    }

    /// Takes an end out of its link and its node's table.
    fn take_end(&mut self, l: u32, gen: u32, e: u8) -> Option<End> {
        let link = &mut self.links[l as usize];
        if link.gen != gen {
            return None;
        }
        let end = link.ends[e as usize].take()?;
        self.nodes[end.node].conns.remove(&end.id);
        Some(end)
    }

    /// Closes one end now; the other end hears of it after everything sent before.
    fn close_end(&mut self, l: u32, gen: u32, e: u8, reason: DisconnectReason) {
        let Some(end) = self.take_end(l, gen, e) else {
            return;
        };
        self.hang_up(l, e);
        self.closed(end, reason);
    }

    /// After end `e` went: a FIN to the other end, or the link is freed.
    fn hang_up(&mut self, l: u32, e: u8) {
        let link = &self.links[l as usize];
        if link.ends[1 - e as usize].is_some() {
            let at = self.now.saturating_add(link.params.latency);
            self.push(l, e, at, Packet::Fin);
        } else {
            self.free_link(l);
        }
    }

    /// Tells an end's core that its connection is gone.
    fn closed(&mut self, mut end: End, reason: DisconnectReason) {
        let (node, id) = (end.node, end.id);
        self.trace([T_CLOSED, node as u64, id.0, 0], || {
            format!("n{node} {id} closed: {reason}")
        });
        let input = PeerInput::Disconnected {
            id,
            reason,
            stats: std::mem::take(&mut end.proto.stats),
            rtt: end.proto.rtt(),
        };
        self.report(node, input);
    }

    /// Closes both ends of a link at once (a reset or a timeout: what is in flight is lost).
    fn reset(&mut self, l: u32, gen: u32, reason: DisconnectReason) {
        let ends = [self.take_end(l, gen, 0), self.take_end(l, gen, 1)];
        if self.links[l as usize].gen == gen {
            self.free_link(l);
        }
        for end in ends.into_iter().flatten() {
            self.closed(end, reason.clone());
        }
    }

    /// The time of the next thing to happen.
    fn next_at(&self) -> u64 {
        self.queue.peek().map_or(u64::MAX, |s| (s.key >> 64) as u64)
    }

    /// Moves to the next thing to happen and does everything due then.
    pub fn step(&mut self) {
        let t = self.next_at();
        if t == u64::MAX {
            return;
        }
        self.now = self.now.max(t);
        while self.next_at() <= self.now {
            let s = self.queue.pop().expect("peeked");
            self.stats.steps += 1;
            self.run(s.item, (s.key >> 64) as u64);
        }
    }

    fn run(&mut self, item: Item, at: u64) {
        match item {
            Item::Arrive { link, gen, dir } => self.arrive(link, gen, dir),
            Item::Committed { node, gen, ack } => {
                let node = node as usize;
                if self.nodes[node].gen != gen {
                    return;
                }
                let now = self.instant();
                if let Some(core) = self.nodes[node].core.as_mut() {
                    core.handle_committed(ack, now);
                }
                self.drain(node);
            }
            Item::Timer { node, gen } => {
                let node = node as usize;
                let now = self.instant();
                let n = &mut self.nodes[node];
                if n.gen != gen || n.timer != Some(at) {
                    return;
                }
                n.timer = None;
                if let Some(core) = n.core.as_mut() {
                    if core.poll_timeout() <= now {
                        core.handle_timeout(now);
                    }
                }
                self.drain(node);
            }
            Item::Tick => {
                self.tick_conns();
                self.schedule(self.now.saturating_add(self.tick_every), Item::Tick);
            }
            Item::Resume { link, gen, end } => self.read(link, gen, end),
            Item::Drained { link, gen, end } => {
                if let Some(e) = self.end_mut(link, gen, end) {
                    let (node, id) = (e.node, e.id);
                    self.report(node, PeerInput::Drained { id });
                }
            }
            Item::Cut { link, gen, epoch } => {
                let l = &self.links[link as usize];
                if l.gen == gen && epoch == self.epoch && self.apart(l.nodes[0], l.nodes[1]) {
                    self.reset(
                        link,
                        gen,
                        DisconnectReason::Io("connection timed out (partition)".into()),
                    );
                }
            }
            Item::DialFailed(f) => {
                if self.nodes[f.node].gen != f.gen {
                    return;
                }
                self.report(
                    f.node,
                    PeerInput::DialFailed {
                        addr: f.addr,
                        reason: f.reason.into(),
                    },
                );
            }
            Item::Fault(f) => self.fault(*f),
        }
    }

    fn tick_conns(&mut self) {
        let now = self.instant();
        let mut out = self.spare.pop().unwrap_or_default();
        for l in 0..self.links.len() as u32 {
            for e in 0..2u8 {
                let link = &mut self.links[l as usize];
                let gen = link.gen;
                let Some(end) = link.ends[e as usize].as_mut() else {
                    continue;
                };
                let rng = &mut self.rng;
                let r = end.proto.tick(now, || rng.next_u64(), &mut out);
                if !out.is_empty() {
                    self.apply(l, gen, e, &mut out);
                }
                if let Err(reason) = r {
                    self.close_end(l, gen, e, reason);
                }
            }
        }
        self.spare.push(out);
    }

    /// Runs until `done` holds or `limit` of virtual time has passed; whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&SimNet) -> bool) -> bool {
        let end = self.now.saturating_add(nanos(limit));
        loop {
            if done(self) {
                return true;
            }
            if self.next_at() > end {
                self.now = end;
                return done(self);
            }
            self.step();
        }
    }

    /// Runs `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }

    /// Makes `fault` at virtual time `at` (since the start; at once if that has passed).
    pub fn schedule_fault(&mut self, at: Duration, fault: Fault) {
        let at = nanos(at).max(self.now);
        self.schedule(at, Item::Fault(Box::new(fault)));
    }

    fn fault(&mut self, f: Fault) {
        match f {
            Fault::Disconnect(a, b) => self.disconnect(a, b),
            Fault::Partition(groups) => self.partition(&groups),
            Fault::Heal => self.heal(),
            Fault::Stop(n) => self.stop(n),
            Fault::Start(n) => {
                // a scheduled start that fails leaves the node stopped (the trace says why)
                let _ = self.start(n);
            }
            Fault::Restart(n) => {
                let _ = self.restart(n);
            }
            Fault::Link(a, b, s) => self.set_link(a, b, s),
        }
    }

    /// Cuts every connection between `a` and `b` at once: both ends see it close (an I/O
    /// error, "connection reset"), and what was in flight is lost. Nothing happens for an
    /// unknown node.
    pub fn disconnect(&mut self, a: NodeId, b: NodeId) {
        if a >= self.nodes.len() {
            return;
        }
        self.trace([T_FAULT, 1, a as u64, b as u64], || {
            format!("n{a} n{b} disconnect")
        });
        let cut: Vec<(u32, u32)> = self.nodes[a]
            .conns
            .values()
            .filter(|&&(l, e)| self.links[l as usize].nodes[1 - e as usize] == b)
            .map(|&(l, _)| (l, self.links[l as usize].gen))
            .collect();
        for (l, gen) in cut {
            self.reset(l, gen, DisconnectReason::Io("connection reset".into()));
        }
    }

    /// Splits the network: each group of nodes on its own side, every node in no group on one
    /// more side together. Bytes between sides are held (TCP retransmits them; they arrive,
    /// in order, after the partition heals); a connection across it that lasts the partition
    /// timeout ([`SimNet::set_partition_timeout`], 30 s) times out at both ends (an I/O error).
    /// Dials across it fail after the dialler's connect timeout. A new partition replaces the
    /// one before (its timeouts start over).
    pub fn partition(&mut self, groups: &[Vec<NodeId>]) {
        self.trace([T_FAULT, 2, groups.len() as u64, 0], || {
            format!("partition {groups:?}")
        });
        for n in &mut self.nodes {
            n.group = 0;
        }
        for (i, g) in groups.iter().enumerate() {
            for &n in g {
                if let Some(n) = self.nodes.get_mut(n) {
                    n.group = i as u32 + 1;
                }
            }
        }
        self.regroup();
    }

    /// Ends the partition: held bytes go on (after the link's latency), connections that have
    /// not timed out carry on.
    pub fn heal(&mut self) {
        self.trace([T_FAULT, 3, 0, 0], || "heal".to_string());
        for n in &mut self.nodes {
            n.group = 0;
        }
        self.regroup();
    }

    fn regroup(&mut self) {
        self.epoch += 1;
        // held directions whose ends are together again go on
        let stalled = std::mem::take(&mut self.stalled);
        for (l, gen, dir) in stalled {
            let link = &self.links[l as usize];
            if link.gen != gen || !link.dirs[dir as usize].stalled {
                continue;
            }
            if self.apart(link.nodes[0], link.nodes[1]) {
                self.stalled.push((l, gen, dir));
                continue;
            }
            let resume = self.now.saturating_add(link.params.latency);
            let d = &mut self.links[l as usize].dirs[dir as usize];
            d.stalled = false;
            for (t, _) in d.queue.iter_mut() {
                *t = (*t).max(resume);
            }
            d.last_arrival = d.last_arrival.max(resume);
            if let Some(&(t, _)) = d.queue.front() {
                d.armed = true;
                self.schedule(t, Item::Arrive { link: l, gen, dir });
            }
        }
        // connections across the new sides time out unless it heals first
        let Some(at) = self.now.checked_add(nanos(self.partition_timeout)) else {
            return;
        };
        for l in 0..self.links.len() {
            let link = &self.links[l];
            if link.live && self.apart(link.nodes[0], link.nodes[1]) {
                let (gen, epoch) = (link.gen, self.epoch);
                self.schedule(
                    at,
                    Item::Cut {
                        link: l as u32,
                        gen,
                        epoch,
                    },
                );
            }
        }
    }

    /// Stops a node as a process dies: its core is dropped (its store is kept), the other end
    /// of each of its connections sees it close after what was in flight, dials to it are
    /// refused. Nothing happens to a stopped node or an unknown one.
    pub fn stop(&mut self, node: NodeId) {
        if !self.nodes.get(node).is_some_and(|n| n.up) {
            return;
        }
        self.trace([T_FAULT, 4, node as u64, 0], || format!("n{node} stop"));
        let n = &mut self.nodes[node];
        n.up = false;
        n.core = None;
        n.gen = n.gen.wrapping_add(1);
        n.timer = None;
        let conns = std::mem::take(&mut n.conns);
        for (_, (l, e)) in conns {
            let gen = self.links[l as usize].gen;
            if let Some(end) = self.take_end(l, gen, e) {
                let (node, id) = (end.node, end.id);
                self.trace([T_CLOSED, node as u64, id.0, 1], || {
                    format!("n{node} {id} closed: node stopped")
                });
                self.hang_up(l, e);
            }
        }
    }

    /// Starts a stopped node: a new core over its store (its chain, peers, bans and address
    /// book as stored); its static peers are dialled by the core. Nothing happens to a
    /// running node or an unknown one. An error when the core cannot load its store (the
    /// node stays stopped).
    pub fn start(&mut self, node: NodeId) -> Result<(), crate::Error> {
        if self.nodes.get(node).is_none_or(|n| n.up) {
            return Ok(());
        }
        self.nodes[node].up = true;
        if self.nodes[node].script {
            self.trace([T_FAULT, 5, node as u64, 0], || format!("n{node} start"));
            return Ok(());
        }
        match self.boot(node) {
            Ok(()) => {
                let h = self.nodes[node].height;
                self.trace([T_FAULT, 5, node as u64, h as u64], || {
                    format!("n{node} start at height {h}")
                });
                Ok(())
            }
            Err(e) => {
                self.nodes[node].up = false;
                self.trace([T_FAULT, 6, node as u64, 0], || {
                    format!("n{node} start failed: {e}")
                });
                Err(e)
            }
        }
    }

    /// [`SimNet::stop`], then [`SimNet::start`].
    pub fn restart(&mut self, node: NodeId) -> Result<(), crate::Error> {
        self.stop(node);
        self.start(node)
    }

    /// Whether a node is running.
    pub fn is_up(&self, node: NodeId) -> bool {
        self.nodes[node].up
    }

    /// Events a node raised so far (across restarts).
    pub fn events(&self, node: NodeId) -> &[Event] {
        &self.nodes[node].events
    }

    /// The virtual time (since the start) at which each of [`SimNet::events`] was raised:
    /// `event_time(node, i)` goes with `events(node)[i]`. `None` past the last event.
    pub fn event_time(&self, node: NodeId, i: usize) -> Option<Duration> {
        self.nodes[node]
            .event_times
            .get(i)
            .map(|&t| Duration::from_nanos(t))
    }

    /// Messages a scripted peer received so far.
    pub fn received(&self, node: NodeId) -> &[(PeerId, Message)] {
        &self.nodes[node].received
    }

    /// Connections of `node` that finished their handshake.
    pub fn ready_peers(&self, node: NodeId) -> usize {
        self.nodes[node]
            .conns
            .values()
            .filter(|&&(l, e)| {
                self.links[l as usize].ends[e as usize]
                    .as_ref()
                    .is_some_and(|end| end.proto.is_ready())
            })
            .count()
    }

    /// A scripted peer sends `msg` on each of its ready connections.
    pub fn script_send(&mut self, node: NodeId, msg: Message) {
        let ids: Vec<PeerId> = self.nodes[node].conns.keys().copied().collect();
        for id in ids {
            self.script_send_to(node, id, msg.clone());
        }
    }

    /// A scripted peer's ready connection `id` (as [`SimNet::received`] names it): link,
    /// generation and end.
    fn script_end(&mut self, node: NodeId, id: PeerId) -> Option<(u32, u32, u8)> {
        let &(l, e) = self.nodes.get(node)?.conns.get(&id)?;
        let gen = self.links[l as usize].gen;
        self.end_mut(l, gen, e)
            .is_some_and(|end| end.proto.is_ready())
            .then_some((l, gen, e))
    }

    /// A scripted peer sends `msg` on its connection `id` (as [`SimNet::received`] names it),
    /// if that connection is still there and ready.
    pub fn script_send_to(&mut self, node: NodeId, id: PeerId, msg: Message) {
        let Some((l, gen, e)) = self.script_end(node, id) else {
            return;
        };
        self.trace([T_SCRIPT, node as u64, id.0, command_key(&msg)], || {
            format!("n{node} {id} script {}", describe(&msg))
        });
        let mut out = self.spare.pop().unwrap_or_default();
        out.push(PeerOutput::Send(msg));
        self.apply(l, gen, e, &mut out);
        self.spare.push(out);
    }

    /// A scripted peer writes `bytes` as they are (a frame cut short, garbage...) on its ready
    /// connection `id`.
    pub fn script_send_raw(&mut self, node: NodeId, id: PeerId, bytes: Bytes) {
        let Some((l, _, e)) = self.script_end(node, id) else {
            return;
        };
        let len = bytes.len();
        self.trace([T_SCRIPT, node as u64, id.0, len as u64], || {
            format!("n{node} {id} script {len} raw bytes")
        });
        self.transmit(l, e, bytes, 0);
    }

    /// Nodes and scripted peers added so far (the next one added gets this id).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// A node's (or scripted peer's) connections, ready or not, by id.
    pub fn connections(&self, node: NodeId) -> Vec<PeerId> {
        self.nodes
            .get(node)
            .map(|n| n.conns.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The node at the other end of `node`'s connection `id` (as [`SimNet::received`] and the
    /// node's events name it), while the connection lasts.
    pub fn remote(&self, node: NodeId, id: PeerId) -> Option<NodeId> {
        let &(l, e) = self.nodes.get(node)?.conns.get(&id)?;
        Some(self.links[l as usize].nodes[1 - e as usize])
    }

    /// The start height a scripted peer claims in the `version` of its connections from now
    /// on (0 unless set; a node core claims its own).
    pub fn set_script_height(&mut self, node: NodeId, height: u32) {
        if let Some(n) = self.nodes.get_mut(node).filter(|n| n.script) {
            n.height = height;
        }
    }

    /// Calls `f` on a running node's core (work it put off done first), then carries out
    /// what it asked for.
    fn with_core<T>(&mut self, node: NodeId, f: impl FnOnce(&mut NodeCore, Instant) -> T) -> T {
        let now = self.instant();
        let core = self.nodes[node]
            .core
            .as_mut()
            .expect("a running node core, not a scripted peer or a stopped node");
        core.settle(now);
        let r = f(core, now);
        self.drain(node);
        r
    }

    /// The best header's hash and height of a node. Panics for a scripted peer or a stopped
    /// node, as the calls below.
    pub fn best_header(&mut self, node: NodeId) -> (Hash256, u32) {
        self.with_core(node, |c, _| c.best_header())
    }

    /// Blocks a node holds without a gap from height 1.
    pub fn blocks_height(&mut self, node: NodeId) -> Option<u32> {
        self.with_core(node, |c, _| c.sync_progress().1)
    }

    /// Hands a block to a node, as `Engine::submit_block`.
    pub fn submit_block(&mut self, node: NodeId, block: Block) -> Result<u32, String> {
        self.with_core(node, |c, now| c.submit_block(block, now))
    }

    /// Imports blocks into a node, as `Engine::import_block_file`.
    pub fn import_blocks(&mut self, node: NodeId, blocks: &[Block]) -> u32 {
        self.with_core(node, |c, now| c.import_blocks(blocks, now).1)
    }

    /// Hands a transaction to a node, as `Engine::submit_tx`.
    pub fn submit_tx(&mut self, node: NodeId, tx: Transaction) {
        self.with_core(node, |c, _| c.submit_tx(tx, None))
    }

    /// Whether a node bans `ip` now.
    pub fn is_banned(&mut self, node: NodeId, ip: IpAddr) -> bool {
        self.with_core(node, |c, now| c.is_banned(ip, now))
    }

    /// The addresses a node's book holds.
    pub fn addresses(&mut self, node: NodeId) -> Vec<(SocketAddr, crate::AddrInfo)> {
        self.with_core(node, |c, _| c.addresses())
    }

    /// How many entries each of a node's maps holds.
    pub fn counts(&mut self, node: NodeId) -> CoreCounts {
        self.with_core(node, |c, _| c.counts())
    }
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}

fn event_key(e: &Event) -> u64 {
    let mut h = Fx::default();
    std::mem::discriminant(e).hash(&mut h);
    if let Event::BlockConnected { height, .. } = e {
        h.write_u64(*height as u64);
    }
    h.0
}

fn describe(m: &Message) -> String {
    match m {
        Message::Headers(h) => format!(
            "headers({}{})",
            h.len(),
            h.last()
                .map(|h| format!(" ..{}", h.hash()))
                .unwrap_or_default()
        ),
        Message::Inv(i) | Message::GetData(i) | Message::NotFound(i) => format!(
            "{}({}{})",
            m.command(),
            i.len(),
            i.first()
                .map(|i| format!(" {}", i.hash))
                .unwrap_or_default()
        ),
        Message::GetHeaders(l) => format!(
            "getheaders({})",
            l.hashes.first().map(|h| h.to_string()).unwrap_or_default()
        ),
        Message::Unknown { command, payload } => format!("{command}({} bytes)", payload.len()),
        other => other.command().to_string(),
    }
}

fn describe_event(e: &Event) -> String {
    match e {
        Event::PeerConnected(p) => format!("connected {} {}", p.id, p.addr),
        Event::PeerDisconnected { id, reason, .. } => format!("disconnected {id}: {reason}"),
        Event::BlockConnected { height, hash, .. } => format!("block {height} {hash}"),
        Event::TxReceived { peer, tx } => format!("tx {} from {peer}", tx.txid()),
        Event::BanScore {
            ip, reason, score, ..
        } => format!("ban score {ip} {reason} {score}"),
        Event::Banned { subnet, .. } => format!("banned {subnet}"),
        Event::Message { peer, message } => format!("message {peer} {}", describe(message)),
        other => format!("{other:?}"),
    }
}
