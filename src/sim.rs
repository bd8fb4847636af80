//! A deterministic network simulator: many node cores (the engine's own) in one thread, on a
//! virtual clock, joined by in-memory links with no sockets and no threads. Each end of a link
//! runs the same per-connection state machine the shards run (framing, checksums, handshake,
//! keepalive, rate limits), so what crosses a link is real wire bytes. Stores are in memory;
//! commits are acknowledged after a virtual delay.
//!
//! Everything is decided by the seed: two runs with the same seed and the same calls produce
//! the same [`SimNet::trace_lines`], byte for byte.
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
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A node (or scripted peer) of a [`SimNet`].
pub type NodeId = usize;

/// Unix time at the start of every simulation (2023-11-14): fixed, so runs repeat.
pub const SIM_UNIX_START: u64 = 1_700_000_000;

/// How links behave.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LinkSettings {
    /// One-way latency.
    pub latency: Duration,
    /// Extra latency drawn uniformly from zero to this, per message (order on a link is kept,
    /// as TCP keeps it).
    pub jitter: Duration,
    /// Time the store takes to acknowledge a commit.
    pub commit_delay: Duration,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(2),
            commit_delay: Duration::from_millis(1),
        }
    }
}

struct Conn {
    proto: PeerProtocol,
    remote: (NodeId, PeerId),
    /// When the last bytes sent on this connection arrive (so later ones never overtake).
    last_arrival: Duration,
}

struct SimNode {
    core: Option<NodeCore>,
    store: Arc<MemoryStore>,
    addr: SocketAddr,
    settings: PeerSettings,
    config: Config,
    conns: BTreeMap<PeerId, Conn>,
    events: Vec<Event>,
    /// Messages a scripted peer received.
    received: Vec<(PeerId, Message)>,
    height: u32,
}

impl SimNode {
    fn new(
        core: Option<NodeCore>,
        store: Arc<MemoryStore>,
        addr: SocketAddr,
        config: Config,
    ) -> SimNode {
        SimNode {
            core,
            store,
            addr,
            settings: config.peer_settings(),
            config,
            conns: BTreeMap::new(),
            events: Vec::new(),
            received: Vec::new(),
            height: 0,
        }
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Bytes {
        node: NodeId,
        conn: PeerId,
        bytes: Vec<u8>,
    },
    Closed {
        node: NodeId,
        conn: PeerId,
    },
    Committed {
        node: NodeId,
        ack: u64,
    },
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Scheduled {
    at: std::cmp::Reverse<(Duration, u64)>,
    item: Item,
}

/// A simulated network. See the module documentation.
pub struct SimNet {
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    base: Instant,
    now: Duration,
    rng: XorShift64,
    next_id: u64,
    links: LinkSettings,
    trace: Vec<String>,
    tick_every: Duration,
    next_conn_tick: Duration,
}

impl SimNet {
    /// An empty network whose every choice follows `seed`.
    pub fn new(seed: u64) -> SimNet {
        SimNet {
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            base: Instant::now(),
            now: Duration::ZERO,
            rng: XorShift64::new(seed),
            next_id: 1,
            links: LinkSettings::default(),
            trace: Vec::new(),
            tick_every: Duration::from_millis(100),
            next_conn_tick: Duration::ZERO,
        }
    }

    /// Sets how links behave (for links made from now on and messages sent from now on).
    pub fn set_links(&mut self, links: LinkSettings) {
        self.links = links;
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    fn node_addr(i: usize) -> SocketAddr {
        let n = i as u32 + 1;
        SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 8333))
    }

    /// Adds a node core with this configuration (its `listen`, `connect` and `data_dir` are
    /// replaced: it gets a virtual address and an in-memory store).
    pub fn add_node(&mut self, mut config: Config) -> NodeId {
        let i = self.nodes.len();
        let addr = Self::node_addr(i);
        config.listen = Some(addr);
        config.connect.clear();
        config.data_dir = None;
        config.allow_local_addrs = true;
        let store = Arc::new(MemoryStore::new());
        let seed = self.rng.next_u64();
        let core = NodeCore::new(
            config.clone(),
            store.clone() as Arc<dyn Store>,
            Some(addr),
            self.instant(),
            SIM_UNIX_START,
            seed,
        )
        .expect("a new in-memory store always loads");
        self.nodes
            .push(SimNode::new(Some(core), store, addr, config));
        i
    }

    /// Adds a scripted peer: it handshakes like any peer, then sends only what the test tells
    /// it to ([`SimNet::script_send`]) and records what it receives.
    pub fn add_script(&mut self, config: Config) -> NodeId {
        let i = self.nodes.len();
        let addr = Self::node_addr(i);
        let store = Arc::new(MemoryStore::new());
        self.nodes.push(SimNode::new(None, store, addr, config));
        i
    }

    /// A node's virtual address.
    pub fn addr(&self, node: NodeId) -> SocketAddr {
        self.nodes[node].addr
    }

    /// `from` dials `to` (a node core asks its core, so limits and bans apply).
    pub fn connect(&mut self, from: NodeId, to: NodeId) {
        let addr = self.nodes[to].addr;
        let now = self.instant();
        match self.nodes[from].core.as_mut() {
            Some(core) => {
                core.dial(addr, now);
                self.drain(from);
            }
            None => self.open(from, addr),
        }
    }

    fn version(&mut self, node: NodeId, remote: SocketAddr) -> VersionMessage {
        let n = &self.nodes[node];
        VersionMessage {
            version: crate::config::PROTOCOL_VERSION,
            services: n.config.services,
            timestamp: (SIM_UNIX_START + self.now.as_secs()) as i64,
            receiver: NetAddr::new(remote, 0),
            sender: NetAddr::new(n.addr, n.config.services),
            nonce: self.rng.next_u64(),
            user_agent: n.config.user_agent.clone(),
            start_height: n.height.min(i32::MAX as u32) as i32,
            relay: Some(n.config.relay),
            extra: Bytes::new(),
        }
    }

    /// Opens a connection from `from` to whoever has `addr`.
    fn open(&mut self, from: NodeId, addr: SocketAddr) {
        let Some(to) = self.nodes.iter().position(|n| n.addr == addr) else {
            if let Some(core) = self.nodes[from].core.as_mut() {
                core.handle_peer(
                    PeerInput::DialFailed {
                        addr,
                        reason: "no such node".into(),
                    },
                    self.base + self.now,
                );
            }
            return self.drain(from);
        };
        let (a, b) = (PeerId(self.next_id), PeerId(self.next_id + 1));
        self.next_id += 2;
        let now = self.instant();
        let from_addr = self.nodes[from].addr;
        let va = self.version(from, addr);
        let vb = self.version(to, from_addr);
        let pa = PeerProtocol::new(Direction::Outbound, &self.nodes[from].settings, va, now);
        let pb = PeerProtocol::new(Direction::Inbound, &self.nodes[to].settings, vb, now);
        self.nodes[from].conns.insert(
            a,
            Conn {
                proto: pa,
                remote: (to, b),
                last_arrival: self.now,
            },
        );
        self.nodes[to].conns.insert(
            b,
            Conn {
                proto: pb,
                remote: (from, a),
                last_arrival: self.now,
            },
        );
        self.trace(format!("n{from} {a} -> n{to} {b} open"));
        self.report(
            from,
            PeerInput::Connection {
                id: a,
                addr,
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
        for (n, id) in [(from, a), (to, b)] {
            let mut out = Vec::new();
            if let Some(c) = self.nodes[n].conns.get_mut(&id) {
                c.proto.start(&mut out);
            }
            self.apply(n, id, out);
        }
    }

    fn trace(&mut self, line: String) {
        self.trace
            .push(format!("{:>10.3} {line}", self.now.as_secs_f64() * 1e3));
    }

    /// Everything that happened, one line each: connections, messages sent, events raised,
    /// disconnections, each with its virtual time in milliseconds.
    pub fn trace_lines(&self) -> &[String] {
        &self.trace
    }

    fn report(&mut self, node: NodeId, input: PeerInput) {
        let now = self.instant();
        if let Some(core) = self.nodes[node].core.as_mut() {
            core.handle_peer(input, now);
            self.drain(node);
        } else if let PeerInput::Message { id, message } = input {
            self.trace(format!("n{node} {id} got {}", message.command()));
            self.nodes[node].received.push((id, message));
        }
    }

    /// Carries out a connection's protocol outputs.
    fn apply(&mut self, node: NodeId, id: PeerId, out: Vec<PeerOutput>) {
        let mut buf = BytesMut::new();
        let magic = self.nodes[node].settings.magic;
        for o in out {
            if !self.nodes[node].conns.contains_key(&id) {
                return;
            }
            if !matches!(o, PeerOutput::Send(_)) && !buf.is_empty() {
                // what the connection said so far goes out before the core answers anything
                let bytes = std::mem::take(&mut buf).to_vec();
                self.transmit(node, id, bytes);
            }
            let Some(c) = self.nodes[node].conns.get_mut(&id) else {
                return;
            };
            match o {
                PeerOutput::Send(m) => {
                    let before = buf.len();
                    encode_message(&mut buf, magic, &m);
                    c.proto.stats.record_out(m.command(), buf.len() - before);
                }
                PeerOutput::Connected(version) => {
                    let info = self.info(node, id);
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
        if !buf.is_empty() {
            self.transmit(node, id, buf.to_vec());
        }
    }

    fn info(&self, node: NodeId, id: PeerId) -> Box<PeerInfo> {
        let c = &self.nodes[node].conns[&id];
        let remote = self.nodes[c.remote.0].addr;
        let v = c.proto.version();
        Box::new(PeerInfo {
            id,
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

    fn jitter(&mut self) -> Duration {
        let j = self.links.jitter.as_micros() as u64;
        if j == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.rng.next_u64() % (j + 1))
    }

    fn schedule(&mut self, at: Duration, item: Item) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: std::cmp::Reverse((at, self.seq)),
            item,
        });
    }

    fn transmit(&mut self, node: NodeId, id: PeerId, bytes: Vec<u8>) {
        let delay = self.links.latency + self.jitter();
        let Some(c) = self.nodes[node].conns.get_mut(&id) else {
            return;
        };
        let at = (self.now + delay).max(c.last_arrival);
        c.last_arrival = at;
        let (to, conn) = c.remote;
        self.schedule(
            at,
            Item::Bytes {
                node: to,
                conn,
                bytes,
            },
        );
    }

    /// Carries out every output of a node's core.
    fn drain(&mut self, node: NodeId) {
        loop {
            let Some(o) = self.nodes[node].core.as_mut().and_then(|c| c.poll_output()) else {
                return;
            };
            match o {
                Output::Send(id, m) => {
                    self.trace(format!("n{node} {id} send {}", describe(&m)));
                    let Some(c) = self.nodes[node].conns.get_mut(&id) else {
                        continue;
                    };
                    if !c.proto.is_ready() || c.proto.check_send(&m).is_err() {
                        continue;
                    }
                    self.apply(node, id, vec![PeerOutput::Send(m)]);
                }
                Output::Disconnect(id, reason) => self.close(node, id, reason),
                Output::Dial(addr) => self.open(node, addr),
                Output::Write { batch, ack } => {
                    if let Err(e) = self.nodes[node].store.write(&batch) {
                        panic!("in-memory store write failed: {e}");
                    }
                    if let Some(ack) = ack {
                        let at = self.now + self.links.commit_delay;
                        self.schedule(at, Item::Committed { node, ack });
                    }
                }
                Output::Event(e) => {
                    self.trace(format!("n{node} event {}", describe_event(&e)));
                    self.nodes[node].events.push(e);
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
                // simulated links have no send queue: what was sent is out
                Output::NotifyDrained(id) => self.report(node, PeerInput::Drained { id }),
                // simulated nodes keep every block in memory: no block files
                Output::SendBlockFile(..)
                | Output::RemoveBlockFile(..)
                | Output::EmbedderBlockFile { .. } => {
                    unreachable!("no block files in a simulation")
                }
            }
        }
    }

    /// Closes one end now; the other end hears of it after the link's latency.
    fn close(&mut self, node: NodeId, id: PeerId, reason: DisconnectReason) {
        let Some(mut c) = self.nodes[node].conns.remove(&id) else {
            return;
        };
        self.trace(format!("n{node} {id} closed: {reason}"));
        let input = PeerInput::Disconnected {
            id,
            reason,
            stats: std::mem::take(&mut c.proto.stats),
            rtt: c.proto.rtt(),
        };
        let at = (self.now + self.links.latency).max(c.last_arrival);
        let (to, conn) = c.remote;
        self.schedule(at, Item::Closed { node: to, conn });
        self.report(node, input);
    }

    /// The time of the next thing to happen.
    fn next_at(&self) -> Duration {
        let mut t = self.next_conn_tick;
        if let Some(s) = self.queue.peek() {
            t = t.min(s.at.0 .0);
        }
        for n in &self.nodes {
            if let Some(core) = &n.core {
                t = t.min(core.poll_timeout().saturating_duration_since(self.base));
            }
        }
        t
    }

    /// Moves to the next thing to happen and does it.
    pub fn step(&mut self) {
        let t = self.next_at();
        self.now = self.now.max(t);
        let now = self.instant();
        // due core timers first, in node order
        for i in 0..self.nodes.len() {
            let due = self.nodes[i]
                .core
                .as_ref()
                .is_some_and(|c| c.poll_timeout() <= now);
            if due {
                if let Some(core) = self.nodes[i].core.as_mut() {
                    core.handle_timeout(now);
                }
                self.drain(i);
            }
        }
        if self.next_conn_tick <= self.now {
            self.next_conn_tick = self.now + self.tick_every;
            self.tick_conns(now);
        }
        while self.queue.peek().is_some_and(|s| s.at.0 .0 <= self.now) {
            let s = self.queue.pop().expect("peeked");
            match s.item {
                Item::Bytes { node, conn, bytes } => self.receive(node, conn, bytes, now),
                Item::Closed { node, conn } => self.close(node, conn, DisconnectReason::Closed),
                Item::Committed { node, ack } => {
                    if let Some(core) = self.nodes[node].core.as_mut() {
                        core.handle_committed(ack, now);
                    }
                    self.drain(node);
                }
            }
        }
    }

    fn tick_conns(&mut self, now: Instant) {
        for node in 0..self.nodes.len() {
            let ids: Vec<PeerId> = self.nodes[node].conns.keys().copied().collect();
            for id in ids {
                let mut out = Vec::new();
                let r = {
                    let rng = &mut self.rng;
                    let Some(c) = self.nodes[node].conns.get_mut(&id) else {
                        continue;
                    };
                    c.proto.tick(now, || rng.next_u64(), &mut out)
                };
                self.apply(node, id, out);
                if let Err(reason) = r {
                    self.close(node, id, reason);
                }
            }
        }
    }

    fn receive(&mut self, node: NodeId, id: PeerId, bytes: Vec<u8>, now: Instant) {
        let mut out = Vec::new();
        let r = {
            let Some(c) = self.nodes[node].conns.get_mut(&id) else {
                return;
            };
            c.proto.read_buffer().extend_from_slice(&bytes);
            // (self-connections cannot happen here: every node has its own address)
            c.proto.on_data(now, &|_| false, &mut out)
        };
        self.apply(node, id, out);
        if let Err(reason) = r {
            self.close(node, id, reason);
        }
    }

    /// Runs until `done` holds or `limit` of virtual time has passed; whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&SimNet) -> bool) -> bool {
        let end = self.now + limit;
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

    /// Events a node raised so far.
    pub fn events(&self, node: NodeId) -> &[Event] {
        &self.nodes[node].events
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
            .filter(|c| c.proto.is_ready())
            .count()
    }

    /// A scripted peer sends `msg` on each of its ready connections.
    pub fn script_send(&mut self, node: NodeId, msg: Message) {
        let ids: Vec<PeerId> = self.nodes[node]
            .conns
            .iter()
            .filter(|(_, c)| c.proto.is_ready())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.trace(format!("n{node} {id} script {}", describe(&msg)));
            self.apply(node, id, vec![PeerOutput::Send(msg.clone())]);
        }
    }

    fn core(&mut self, node: NodeId) -> &mut NodeCore {
        let now = self.instant();
        let core = self.nodes[node]
            .core
            .as_mut()
            .expect("a node core, not a scripted peer");
        core.settle(now);
        core
    }

    /// The best header's hash and height of a node.
    pub fn best_header(&mut self, node: NodeId) -> (Hash256, u32) {
        self.core(node).best_header()
    }

    /// Blocks a node holds without a gap from height 1.
    pub fn blocks_height(&mut self, node: NodeId) -> Option<u32> {
        self.core(node).sync_progress().1
    }

    /// Hands a block to a node, as `Engine::submit_block`.
    pub fn submit_block(&mut self, node: NodeId, block: Block) -> Result<u32, String> {
        let now = self.instant();
        let r = self.core(node).submit_block(block, now);
        self.drain(node);
        r
    }

    /// Imports blocks into a node, as `Engine::import_block_file`.
    pub fn import_blocks(&mut self, node: NodeId, blocks: &[Block]) -> u32 {
        let now = self.instant();
        let (_, h, _) = self.core(node).import_blocks(blocks, now);
        self.drain(node);
        h
    }

    /// Hands a transaction to a node, as `Engine::submit_tx`.
    pub fn submit_tx(&mut self, node: NodeId, tx: Transaction) {
        self.core(node).submit_tx(tx, None);
        self.drain(node);
    }

    /// Whether a node bans `ip` now.
    pub fn is_banned(&mut self, node: NodeId, ip: IpAddr) -> bool {
        let now = self.instant();
        self.core(node).is_banned(ip, now)
    }

    /// How many entries each of a node's maps holds.
    pub fn counts(&mut self, node: NodeId) -> CoreCounts {
        self.core(node).counts()
    }
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
