//! `Engine::start`: validates the configuration, binds the listeners, starts one pinned network
//! thread per shard (each a [`crate::reactor::Shard`] event loop) and the worker threads, and
//! gives the embedder a stream of [`Event`]s and calls to act on peers.
//!
//! ```text
//!   API calls ──ShardCmd + Waker──► shard 0..N (mio loops, sockets) ──WorkerMsg──► workers
//!                                                                                   │
//!   embedder ◄──────────────────────────── Event (crossbeam channel) ◄──────────────┘
//! ```

use crate::config::Config;
use crate::discovery;
use crate::error::Error;
use crate::fsm::addrbook::{load_entries, AddrBook, AddrBookSettings, AddrInfo, XorShift64};
use crate::fsm::bans::{Ban, BanError, BanList, BanReason, BanScores, Subnet};
use crate::fsm::peer::{PeerSettings, PeerStats};
use crate::fsm::{Direction, DisconnectReason};
use crate::reactor::{listeners, Shard, ShardCmd};
use crate::registry::Registry;
use crate::store::chain::ChainDb;
use crate::store::lmdb::{LmdbOptions, LmdbStore};
use crate::store::memory::MemoryStore;
use crate::store::records::{ban_key, load_bans, BanRecord};
use crate::store::records::{PeerRecord, StoredStats};
use crate::store::writer::StoreWriter;
use crate::store::Store;
use crate::store::{Batch, Table};
use crate::wire::{Message, VersionMessage};
use bytes::Bytes;
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use mio::{Poll, Waker};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// Identifies one connection for its lifetime (never reused within an engine).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

const SHARD_BITS: u32 = 10;

impl PeerId {
    fn shard(&self) -> usize {
        (self.0 & ((1 << SHARD_BITS) - 1)) as usize
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.0)
    }
}

/// What the engine knows about a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Its id.
    pub id: PeerId,
    /// Remote address.
    pub addr: SocketAddr,
    /// Who connected.
    pub direction: Direction,
    /// Whether the handshake is complete.
    pub ready: bool,
    /// Peer's protocol version (0 before the handshake).
    pub version: i32,
    /// Peer's service bits.
    pub services: u64,
    /// Peer's user agent.
    pub user_agent: String,
    /// Peer's best height at connect.
    pub start_height: i32,
    /// Last ping round trip.
    pub rtt: Option<Duration>,
    /// When the connection was made.
    pub connected_since: SystemTime,
    /// Largest non-block payload the peer accepts.
    pub their_max_payload: u64,
    /// Bytes waiting to be sent.
    pub queued_bytes: usize,
    /// Counters per command.
    pub stats: PeerStats,
    /// The shard that owns the socket.
    pub shard: usize,
    /// Score from 0 to 100 (see [`crate::fsm::scoring`]): higher is preferred for sync and kept
    /// longer when inbound slots are full.
    pub score: u32,
    /// Status from the same evidence.
    pub status: crate::store::records::PeerStatus,
}

/// What the engine tells the embedder.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A peer completed its handshake.
    PeerConnected(Box<PeerInfo>),
    /// A connection ended (also for connections that never completed their handshake).
    PeerDisconnected {
        id: PeerId,
        addr: SocketAddr,
        direction: Direction,
        reason: DisconnectReason,
    },
    /// An outbound connection could not even be started.
    ConnectFailed { addr: SocketAddr, reason: String },
    /// A message the engine does not consume itself.
    Message { peer: PeerId, message: Message },
    /// An IP or subnet was banned (by ban score or by a call); its connections are dropped.
    Banned {
        subnet: Subnet,
        until: u64,
        reason: String,
    },
    /// A ban ended (expired, lifted or cleared).
    Unbanned { subnet: Subnet },
    /// The header chain caught up with the peers (the sync peer had no more headers).
    HeadersSynced { height: u32 },
    /// The block at `height` of the best chain is stored; raised in chain order.
    BlockConnected {
        height: u32,
        hash: crate::wire::Hash256,
    },
    /// The best header chain switched branches.
    Reorg(Box<crate::chain::Reorg>),
    /// A transaction from a peer: call `accept_tx` to relay it or `reject_tx` to refuse it
    /// (with [`crate::txrelay::TxPolicy::AcceptAll`] it is relayed already). Undecided after
    /// [`crate::txrelay::TX_DECISION_TIMEOUT`] (ten minutes), it is forgotten.
    TxReceived {
        peer: PeerId,
        tx: crate::wire::Transaction,
    },
    /// A peer's ban score went up.
    BanScore {
        ip: IpAddr,
        peer: Option<PeerId>,
        reason: BanReason,
        score: u32,
    },
}

/// What shards tell workers.
pub enum WorkerMsg {
    Connected(PeerInfo, Box<VersionMessage>),
    Message(PeerId, Message),
    Disconnected {
        id: PeerId,
        addr: SocketAddr,
        direction: Direction,
        reason: DisconnectReason,
        handshaken: bool,
        stats: PeerStats,
        rtt: Option<Duration>,
    },
    ConnectFailed {
        addr: SocketAddr,
        reason: String,
    },
    Stop,
}

/// What workers tell the registry thread.
enum RegistryMsg {
    Connected(PeerId, SocketAddr, u64, String, i32),
    Disconnected(
        PeerId,
        SocketAddr,
        Direction,
        bool,
        PeerStats,
        Option<Duration>,
    ),
    Failed(SocketAddr),
    /// Set the status of every known address inside the subnet (or of the IP).
    Status(IpAddr, Option<Subnet>, crate::store::records::PeerStatus),
    Stop,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// State shared by the shards, the workers and the API.
pub struct Shared {
    pub(crate) config: Config,
    pub(crate) settings: PeerSettings,
    inbound: AtomicUsize,
    outbound: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    own_nonces: Mutex<HashSet<u64>>,
    next_id: AtomicU64,
    start_height: AtomicI32,
    shards: Vec<(Sender<ShardCmd>, Arc<Waker>)>,
    single_listener: bool,
    workers: Vec<Sender<WorkerMsg>>,
    events: Sender<Event>,
    dropped_events: AtomicU64,
    registry_tx: Sender<RegistryMsg>,
    pub(crate) registry: Mutex<Registry>,
    pub(crate) writer: Arc<StoreWriter>,
    pub(crate) chain: Mutex<ChainDb>,
    bans: Mutex<BanList>,
    scores: Mutex<BanScores>,
    /// Ready inbound peers: shard, score, connected since (refreshed every tick), for eviction.
    inbound_peers: Mutex<HashMap<PeerId, (usize, u32, std::time::Instant)>>,
    /// The listening address, as bound.
    pub(crate) local_addr: Option<SocketAddr>,
    /// Every peer that completed its handshake.
    pub(crate) ready: Mutex<HashMap<PeerId, (SocketAddr, Direction)>>,
    /// Addresses being dialled from the address book.
    pub(crate) dialing: Mutex<HashSet<SocketAddr>>,
    /// Peers whose getaddr was answered.
    pub(crate) answered_getaddr: Mutex<HashSet<PeerId>>,
    /// Known addresses.
    pub(crate) addrbook: Mutex<AddrBook>,
    pub(crate) rng: Mutex<XorShift64>,
    next_dial: AtomicUsize,
    pub(crate) sync: Mutex<crate::syncer::SyncState>,
    /// Blocks the embedder asked for itself.
    pub(crate) embedder_blocks: Mutex<HashSet<crate::wire::Hash256>>,
    /// Relay state of every ready peer.
    pub(crate) relay: Mutex<HashMap<PeerId, crate::syncer::RelayPeer>>,
    /// Transaction relay state.
    pub(crate) txs: Mutex<crate::txrelay::TxRelay>,
}

impl Shared {
    pub(crate) fn next_peer_id(&self, shard: usize) -> PeerId {
        PeerId((self.next_id.fetch_add(1, Ordering::Relaxed) << SHARD_BITS) | shard as u64)
    }

    pub(crate) fn start_height(&self) -> i32 {
        self.start_height.load(Ordering::Relaxed)
    }

    /// A version nonce; outbound ones are remembered to detect connections to ourselves.
    pub(crate) fn new_nonce(&self, remember: bool) -> u64 {
        let n = crate::util::random_u64();
        if remember {
            self.own_nonces.lock().expect("nonce set lock").insert(n);
        }
        n
    }

    pub(crate) fn is_own_nonce(&self, n: u64) -> bool {
        self.own_nonces.lock().expect("nonce set lock").contains(&n)
    }

    pub(crate) fn forget_nonce(&self, n: Option<u64>) {
        if let Some(n) = n {
            self.own_nonces.lock().expect("nonce set lock").remove(&n);
        }
    }

    /// Takes a connection slot; false when a limit is reached.
    pub(crate) fn reserve(&self, d: Direction, addr: SocketAddr) -> bool {
        let (count, max) = match d {
            Direction::Inbound => (&self.inbound, self.config.max_inbound),
            Direction::Outbound => (&self.outbound, self.config.max_outbound),
        };
        if count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < max).then_some(c + 1)
            })
            .is_err()
        {
            return false;
        }
        let mut per_ip = self.per_ip.lock().expect("per-ip lock");
        let n = per_ip.entry(addr.ip()).or_insert(0);
        if self.config.max_per_ip > 0 && *n >= self.config.max_per_ip {
            drop(per_ip);
            count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        *n += 1;
        true
    }

    /// Gives a slot back.
    pub(crate) fn release(
        &self,
        d: Direction,
        addr: SocketAddr,
        nonce: Option<u64>,
        counted: bool,
    ) {
        self.forget_nonce(nonce);
        if !counted {
            return;
        }
        match d {
            Direction::Inbound => self.inbound.fetch_sub(1, Ordering::AcqRel),
            Direction::Outbound => self.outbound.fetch_sub(1, Ordering::AcqRel),
        };
        let mut per_ip = self.per_ip.lock().expect("per-ip lock");
        if let Some(n) = per_ip.get_mut(&addr.ip()) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&addr.ip());
            }
        }
    }

    /// Closes a connection (no-op if it is gone).
    pub(crate) fn disconnect_peer(&self, id: PeerId) {
        if id.shard() < self.shards.len() {
            self.send_to_shard(id.shard(), ShardCmd::Disconnect(id));
        }
    }

    /// The height announced in version messages.
    pub(crate) fn set_start_height(&self, h: u32) {
        self.start_height
            .store(h.min(i32::MAX as u32) as i32, Ordering::Relaxed);
    }

    /// Sends a message to a peer without waiting.
    pub(crate) fn send_to_peer(&self, id: PeerId, msg: Message) {
        if id.shard() < self.shards.len() {
            self.send_to_shard(id.shard(), ShardCmd::Send(id, msg, None));
        }
    }

    /// Dials through the next shard in turn.
    pub(crate) fn dial(&self, addr: SocketAddr, static_peer: bool) -> bool {
        let shard = self.next_dial.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        self.send_to_shard(shard, ShardCmd::Connect { addr, static_peer })
    }

    /// Inbound connections.
    pub(crate) fn inbound_count(&self) -> usize {
        self.inbound.load(Ordering::Acquire)
    }

    /// Outbound connections, made or being made.
    pub(crate) fn outbound_count(&self) -> usize {
        self.outbound.load(Ordering::Acquire)
    }

    pub(crate) fn ban_score(&self, ip: IpAddr) -> u32 {
        self.scores
            .lock()
            .expect("ban score lock")
            .score(ip, unix_now())
    }

    pub(crate) fn set_inbound_score(
        &self,
        id: PeerId,
        shard: usize,
        score: Option<(u32, std::time::Instant)>,
    ) {
        let mut m = self.inbound_peers.lock().expect("inbound peers lock");
        match score {
            Some((s, since)) => {
                m.insert(id, (shard, s, since));
            }
            None => {
                m.remove(&id);
            }
        }
    }

    /// When inbound slots are full: the inbound peer to evict for a newcomer, the one with the
    /// lowest score among those connected for at least `evict_min_age` (ties: the newest).
    pub(crate) fn pick_eviction(&self) -> Option<(PeerId, usize)> {
        let mut m = self.inbound_peers.lock().expect("inbound peers lock");
        let now = std::time::Instant::now();
        let victim = m
            .iter()
            .filter(|(_, (_, _, since))| {
                now.saturating_duration_since(*since) >= self.config.evict_min_age
            })
            .min_by_key(|(_, (_, score, since))| (*score, std::cmp::Reverse(*since)))
            .map(|(id, (shard, _, _))| (*id, *shard))?;
        m.remove(&victim.0);
        Some(victim)
    }

    /// Takes an inbound slot even when full (an eviction is under way that will free one).
    pub(crate) fn reserve_over(&self, addr: SocketAddr) -> bool {
        let mut per_ip = self.per_ip.lock().expect("per-ip lock");
        let n = per_ip.entry(addr.ip()).or_insert(0);
        if self.config.max_per_ip > 0 && *n >= self.config.max_per_ip {
            return false;
        }
        *n += 1;
        self.inbound.fetch_add(1, Ordering::AcqRel);
        true
    }

    pub(crate) fn is_banned(&self, ip: IpAddr) -> bool {
        self.bans
            .lock()
            .expect("ban list lock")
            .banned(ip, unix_now())
            .is_some()
    }

    /// Adds ban points for `reason` to `ip`; bans it when the score reaches the threshold.
    pub(crate) fn misbehaving(
        &self,
        ip: IpAddr,
        peer: Option<PeerId>,
        reason: BanReason,
        detail: &str,
    ) {
        let now = unix_now();
        let change = self
            .scores
            .lock()
            .expect("ban score lock")
            .add(ip, reason, now);
        log::info!(
            "{ip}: +{} ban score for {reason} ({detail}): {}",
            change.added,
            change.score
        );
        let _ = self.registry_tx.send(RegistryMsg::Status(
            ip,
            None,
            crate::store::records::PeerStatus::Penalised,
        ));
        self.emit(Event::BanScore {
            ip,
            peer,
            reason,
            score: change.score,
        });
        if change.ban {
            let until = now + self.config.ban_duration.as_secs().max(1);
            let why = format!("ban score {} reached ({reason})", change.score);
            if let Err(e) = self.ban_subnet(Subnet::host(ip), until, &why) {
                log::info!("{ip} not banned: {e}");
            }
        }
    }

    /// Bans a subnet: recorded, saved, announced, and its live connections dropped.
    pub(crate) fn ban_subnet(
        &self,
        subnet: Subnet,
        until: u64,
        reason: &str,
    ) -> Result<(), BanError> {
        let now = unix_now();
        let evicted = self
            .bans
            .lock()
            .expect("ban list lock")
            .ban(subnet, until, reason, now)?;
        let mut b = Batch::new();
        if let Some(old) = evicted {
            b.delete(Table::Bans, ban_key(&old.addr(), old.prefix()).to_vec());
            self.emit(Event::Unbanned { subnet: old });
        }
        b.put(
            Table::Bans,
            ban_key(&subnet.addr(), subnet.prefix()).to_vec(),
            BanRecord {
                until,
                created: now,
                reason: reason.to_string(),
            }
            .encode(),
        );
        self.writer.submit(b);
        log::warn!("banned {subnet} until {until}: {reason}");
        let _ = self.registry_tx.send(RegistryMsg::Status(
            subnet.addr(),
            Some(subnet),
            crate::store::records::PeerStatus::Banned,
        ));
        self.emit(Event::Banned {
            subnet,
            until,
            reason: reason.to_string(),
        });
        for s in 0..self.shards.len() {
            self.send_to_shard(s, ShardCmd::DropBanned(subnet));
        }
        Ok(())
    }

    fn forget_bans(&self, gone: Vec<Subnet>) {
        if gone.is_empty() {
            return;
        }
        let mut b = Batch::new();
        for s in gone {
            b.delete(Table::Bans, ban_key(&s.addr(), s.prefix()).to_vec());
            self.emit(Event::Unbanned { subnet: s });
        }
        self.writer.submit(b);
    }

    pub(crate) fn pick_shard_for_accept(&self, me: usize, counter: &mut usize) -> usize {
        if !self.single_listener {
            return me;
        }
        *counter += 1;
        *counter % self.shards.len()
    }

    pub(crate) fn send_to_shard(&self, shard: usize, cmd: ShardCmd) -> bool {
        let (tx, waker) = &self.shards[shard];
        if tx.send(cmd).is_err() {
            return false;
        }
        let _ = waker.wake();
        true
    }

    pub(crate) fn to_worker(&self, m: WorkerMsg) {
        let id = match &m {
            WorkerMsg::Connected(i, _) => i.id.0,
            WorkerMsg::Message(id, _) => id.0,
            WorkerMsg::Disconnected { id, .. } => id.0,
            _ => 0,
        };
        let w = ((id >> SHARD_BITS) as usize) % self.workers.len();
        let _ = self.workers[w].send(m);
    }

    pub(crate) fn emit_failed_dial(&self, _shard: usize, addr: SocketAddr, reason: String) {
        self.to_worker(WorkerMsg::ConnectFailed { addr, reason });
    }

    pub(crate) fn emit(&self, e: Event) {
        match self.events.try_send(e) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped_events.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn worker(shared: Arc<Shared>, rx: Receiver<WorkerMsg>) {
    while let Ok(m) = rx.recv() {
        match m {
            WorkerMsg::Connected(mut info, v) => {
                info.version = v.version;
                discovery::on_connected(&shared, info.id, info.addr, info.direction, v.services);
                crate::txrelay::on_connected(&shared, info.id);
                crate::syncer::on_connected(
                    &shared,
                    info.id,
                    v.start_height,
                    v.services,
                    info.score,
                );
                let _ = shared.registry_tx.send(RegistryMsg::Connected(
                    info.id,
                    info.addr,
                    v.services,
                    v.user_agent.clone(),
                    v.version,
                ));
                log::info!(
                    "peer {} connected: {} {} {} height {}",
                    info.id,
                    info.addr,
                    info.direction,
                    info.user_agent,
                    info.start_height
                );
                shared.emit(Event::PeerConnected(Box::new(info)));
            }
            WorkerMsg::Message(peer, message) => {
                let message = crate::txrelay::on_message(&shared, peer, message)
                    .and_then(|m| discovery::on_message(&shared, peer, m))
                    .and_then(|m| crate::serve::on_message(&shared, peer, m))
                    .and_then(|m| crate::syncer::on_message(&shared, peer, m));
                if let Some(message) = message {
                    shared.emit(Event::Message { peer, message })
                }
            }
            WorkerMsg::Disconnected {
                id,
                addr,
                direction,
                reason,
                handshaken,
                stats,
                rtt,
            } => {
                discovery::on_disconnected(&shared, id, addr, direction, handshaken);
                if handshaken {
                    crate::syncer::on_disconnected(&shared, id);
                    crate::txrelay::on_disconnected(&shared, id);
                }
                let _ = shared.registry_tx.send(RegistryMsg::Disconnected(
                    id, addr, direction, handshaken, stats, rtt,
                ));
                shared.emit(Event::PeerDisconnected {
                    id,
                    addr,
                    direction,
                    reason,
                });
            }
            WorkerMsg::ConnectFailed { addr, reason } => {
                discovery::on_connect_failed(&shared, addr);
                let _ = shared.registry_tx.send(RegistryMsg::Failed(addr));
                shared.emit(Event::ConnectFailed { addr, reason })
            }
            WorkerMsg::Stop => break,
        }
    }
}

/// Asks every shard for its connections (bounded wait).
fn snapshot_peers(shared: &Shared) -> Vec<PeerInfo> {
    let replies: Vec<_> = (0..shared.shards.len())
        .filter_map(|s| {
            let (tx, rx) = bounded(1);
            shared.send_to_shard(s, ShardCmd::Peers(tx)).then_some(rx)
        })
        .collect();
    let mut all = Vec::new();
    for rx in replies {
        if let Ok(v) = rx.recv_timeout(Duration::from_secs(10)) {
            all.extend(v);
        }
    }
    all
}

/// Keeps the registry current and writes its changes through the store writer: as events
/// arrive, every `persist_interval` from fresh counters, and once more at stop.
fn registry_thread(shared: Arc<Shared>, rx: Receiver<RegistryMsg>) {
    let every = shared.config.persist_interval;
    let mut last = std::time::Instant::now();
    loop {
        let msg = rx.recv_timeout(every.saturating_sub(last.elapsed()));
        let stop = matches!(
            msg,
            Ok(RegistryMsg::Stop) | Err(RecvTimeoutError::Disconnected)
        );
        if let Ok(m) = msg {
            let now = unix_now();
            let mut r = shared.registry.lock().expect("registry lock");
            match m {
                RegistryMsg::Connected(id, a, services, ua, v) => {
                    r.connected(id, a, services, &ua, v, now)
                }
                RegistryMsg::Disconnected(id, a, d, ok, st, rtt) => {
                    r.disconnected(id, a, d, ok, &st, rtt, now)
                }
                RegistryMsg::Failed(a) => r.failed(a, now),
                RegistryMsg::Status(ip, subnet, st) => {
                    let s = subnet.unwrap_or_else(|| Subnet::host(ip));
                    r.set_status(|a| s.contains(a), st);
                }
                RegistryMsg::Stop => {}
            }
        }
        if stop || last.elapsed() >= every {
            let now = unix_now();
            let expired = shared.bans.lock().expect("ban list lock").expire(now);
            shared.forget_bans(expired);
            shared.scores.lock().expect("ban score lock").prune(now);
            if !stop {
                let live = snapshot_peers(&shared);
                let mut r = shared.registry.lock().expect("registry lock");
                for p in live.iter().filter(|p| p.ready) {
                    r.snapshot(p.id, p.addr, &p.stats, p.rtt);
                }
            }
            let mut batch = shared.registry.lock().expect("registry lock").take_batch();
            shared
                .addrbook
                .lock()
                .expect("address book lock")
                .take_dirty_batch(&mut batch);
            if !batch.is_empty() {
                if stop {
                    if let Err(e) = shared.writer.write(batch) {
                        log::error!("saving peers at stop failed: {e}");
                    }
                } else {
                    shared.writer.submit(batch);
                }
            }
            last = std::time::Instant::now();
        }
        if stop {
            return;
        }
    }
}

/// Which header: by best-chain height or by hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderRef {
    /// The best chain's header at this height.
    Height(u32),
    /// The header with this hash, on any branch.
    Hash(crate::wire::Hash256),
}

/// A running engine. Dropping it stops it.
pub struct Engine {
    shared: Arc<Shared>,
    shard_threads: Vec<JoinHandle<()>>,
    worker_threads: Vec<JoinHandle<()>>,
    events: Receiver<Event>,
    local_addr: Option<SocketAddr>,
    registry_thread: Option<JoinHandle<()>>,
    discovery: Option<(Sender<()>, JoinHandle<()>)>,
}

fn check_data_dir(path: &std::path::Path) -> Result<(), Error> {
    let err = |source| Error::DataDir {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    let probe = path.join(".bsn-write-test");
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    Ok(())
}

impl Engine {
    /// Starts the engine. Every configuration problem (zero shards, unusable data dir, port in
    /// use) is reported here.
    pub fn start(mut config: Config) -> Result<Engine, Error> {
        config.validate()?;
        if config.headers_only {
            // A header client serves no blocks.
            config.services &= !crate::wire::types::NODE_NETWORK;
        }
        if let Some(d) = &config.data_dir {
            check_data_dir(d)?;
        }
        if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
            log::warn!("cannot raise the open-file limit: {e}");
        }
        let listen_socks = match config.listen {
            Some(addr) => {
                listeners(addr, config.shards).map_err(|source| Error::Bind { addr, source })?
            }
            None => Vec::new(),
        };
        let local_addr = listen_socks.first().and_then(|l| l.local_addr().ok());
        let single_listener = listen_socks.len() == 1 && config.shards > 1;

        let mut polls = Vec::new();
        let mut shard_tx = Vec::new();
        let mut shard_rx = Vec::new();
        for _ in 0..config.shards {
            let poll = Poll::new().map_err(Error::Io)?;
            let waker = Arc::new(Shard::waker(&poll).map_err(Error::Io)?);
            let (tx, rx) = unbounded();
            polls.push(poll);
            shard_tx.push((tx, waker));
            shard_rx.push(rx);
        }
        let mut worker_tx = Vec::new();
        let mut worker_rx = Vec::new();
        for _ in 0..config.workers {
            let (tx, rx) = unbounded();
            worker_tx.push(tx);
            worker_rx.push(rx);
        }
        let store: Arc<dyn Store> = match &config.data_dir {
            Some(d) => Arc::new(LmdbStore::open(d, &LmdbOptions::default()).map_err(Error::Store)?),
            None => Arc::new(MemoryStore::new()),
        };
        let registry = Registry::load(store.as_ref()).map_err(Error::Store)?;
        let mut chain = ChainDb::load(store.as_ref(), &config.network).map_err(Error::Store)?;
        let conflicts = chain.set_rules(crate::chain::HeaderRules {
            checkpoints: config.checkpoints.clone(),
            ..Default::default()
        });
        if let Some((height, want, stored)) = conflicts.first() {
            return Err(Error::Config(crate::config::ConfigError(format!(
                "the stored chain has {stored} at height {height}, the checkpoint says {want}: \
                 start with another data directory or without that checkpoint"
            ))));
        }
        let height = chain.tree().height();
        let sync_state = crate::syncer::SyncState {
            headers: crate::fsm::sync::HeaderSync::new(crate::fsm::sync::SyncConfig {
                stall_timeout: config.sync_stall_timeout,
                headers_only: config.headers_only,
                ..Default::default()
            }),
            blocks: (!config.headers_only).then(|| {
                crate::fsm::download::BlockDownload::new(
                    crate::fsm::download::DownloadConfig {
                        block_timeout: config.block_timeout,
                        ..Default::default()
                    },
                    crate::syncer::stored_up_to(&chain, store.as_ref()),
                )
            }),
            buffer: HashMap::new(),
        };
        let book_settings = AddrBookSettings {
            allow_local: config.allow_local_addrs,
            ..AddrBookSettings::default()
        };
        let addrbook = AddrBook::load(
            book_settings,
            load_entries(store.as_ref()).map_err(Error::Store)?,
        );
        let mut bans = BanList::new(config.max_bans, config.never_ban.clone());
        let now = unix_now();
        for ((ip, prefix), r) in load_bans(store.as_ref()).map_err(Error::Store)? {
            if let (Some(s), true) = (Subnet::new(ip, prefix), r.until > now) {
                bans.restore(
                    s,
                    Ban {
                        until: r.until,
                        created: r.created,
                        reason: r.reason,
                    },
                );
            }
        }
        let writer =
            Arc::new(StoreWriter::start(store, Duration::from_secs(1)).map_err(Error::Io)?);
        let (registry_tx, registry_rx) = unbounded();
        let (ev_tx, ev_rx) = bounded(config.event_capacity);
        let shared = Arc::new(Shared {
            settings: config.peer_settings(),
            inbound: AtomicUsize::new(0),
            outbound: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            own_nonces: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(1),
            start_height: AtomicI32::new(height.min(i32::MAX as u32) as i32),
            shards: shard_tx,
            single_listener,
            workers: worker_tx,
            events: ev_tx,
            dropped_events: AtomicU64::new(0),
            registry_tx,
            registry: Mutex::new(registry),
            writer,
            chain: Mutex::new(chain),
            bans: Mutex::new(bans),
            scores: Mutex::new(BanScores::new(config.ban_scores.clone())),
            inbound_peers: Mutex::new(HashMap::new()),
            local_addr,
            ready: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashSet::new()),
            answered_getaddr: Mutex::new(HashSet::new()),
            addrbook: Mutex::new(addrbook),
            rng: Mutex::new(XorShift64::new(crate::util::random_u64())),
            next_dial: AtomicUsize::new(0),
            sync: Mutex::new(sync_state),
            embedder_blocks: Mutex::new(HashSet::new()),
            relay: Mutex::new(HashMap::new()),
            txs: Mutex::new(crate::txrelay::TxRelay::default()),
            config,
        });

        let mut engine = Engine {
            shared: shared.clone(),
            shard_threads: Vec::new(),
            worker_threads: Vec::new(),
            registry_thread: None,
            discovery: None,
            events: ev_rx,
            local_addr,
        };
        let s = shared.clone();
        engine.registry_thread = Some(
            std::thread::Builder::new()
                .name("bsn-registry".into())
                .spawn(move || registry_thread(s, registry_rx))
                .map_err(Error::Io)?,
        );
        for (i, rx) in worker_rx.into_iter().enumerate() {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("bsn-worker-{i}"))
                .spawn(move || worker(s, rx))
                .map_err(Error::Io)?;
            engine.worker_threads.push(h);
        }
        let cores = if shared.config.pin_threads {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut listen_socks = listen_socks.into_iter();
        for (i, (poll, rx)) in polls.into_iter().zip(shard_rx).enumerate() {
            let shard =
                Shard::new(i, poll, listen_socks.next(), rx, shared.clone()).map_err(Error::Io)?;
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            let h = std::thread::Builder::new()
                .name(format!("bsn-shard-{i}"))
                .spawn(move || {
                    if let Some(c) = core {
                        if !core_affinity::set_for_current(c) {
                            log::warn!("shard {i}: could not pin to core {}", c.id);
                        }
                    }
                    shard.run()
                })
                .map_err(Error::Io)?;
            engine.shard_threads.push(h);
        }
        let (stop_tx, stop_rx) = bounded::<()>(1);
        let s = shared.clone();
        let h = std::thread::Builder::new()
            .name("bsn-discovery".into())
            .spawn(move || discovery::run(s, stop_rx))
            .map_err(Error::Io)?;
        engine.discovery = Some((stop_tx, h));
        for addr in engine.shared.config.connect.clone() {
            engine.dial(addr, true)?;
        }
        if let Some(a) = local_addr {
            log::info!(
                "listening on {a} ({} shards, network {})",
                engine.shared.config.shards,
                engine.shared.config.network.name
            );
        }
        Ok(engine)
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The address the engine listens on (with the real port when the configured one was 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The event stream. Clone it freely; drain it, or events past its capacity are dropped.
    pub fn events(&self) -> Receiver<Event> {
        self.events.clone()
    }

    /// Events dropped because the channel was full.
    pub fn dropped_events(&self) -> u64 {
        self.shared.dropped_events.load(Ordering::Relaxed)
    }

    /// Sets the height we announce in version messages.
    pub fn set_start_height(&self, h: i32) {
        self.shared.start_height.store(h, Ordering::Relaxed);
    }

    fn running(&self) -> Result<(), Error> {
        if self.shard_threads.is_empty() {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    }

    fn dial(&self, addr: SocketAddr, static_peer: bool) -> Result<(), Error> {
        if self.shared.dial(addr, static_peer) {
            Ok(())
        } else {
            Err(Error::Stopped)
        }
    }

    /// Dials a peer. The outcome arrives as [`Event::PeerConnected`] or a disconnect/failure event.
    pub fn connect(&self, addr: SocketAddr) -> Result<(), Error> {
        self.running()?;
        self.dial(addr, false)
    }

    fn shard_of(&self, id: PeerId) -> Result<usize, Error> {
        let s = id.shard();
        if s >= self.shared.shards.len() {
            return Err(Error::UnknownPeer(id));
        }
        Ok(s)
    }

    /// Closes a connection.
    pub fn disconnect(&self, id: PeerId) -> Result<(), Error> {
        self.running()?;
        let s = self.shard_of(id)?;
        self.shared
            .send_to_shard(s, ShardCmd::Disconnect(id))
            .then_some(())
            .ok_or(Error::Stopped)
    }

    /// Blocks the embedder asks for with its own `getdata` are handed to it when they come (as
    /// [`Event::Message`]), and their senders are not scored for unrequested data.
    fn note_requests(&self, msg: &Message) {
        if let Message::GetData(items) = msg {
            let mut w = self
                .shared
                .embedder_blocks
                .lock()
                .expect("embedder requests lock");
            for i in items.iter().filter(|i| {
                i.kind == crate::wire::InvType::BLOCK
                    || i.kind == crate::wire::InvType::WITNESS_BLOCK
            }) {
                if w.len() < 100_000 {
                    w.insert(i.hash);
                }
            }
        }
    }

    /// Sends a message to one peer and waits for the shard to accept it (queued for the socket).
    pub fn send(&self, id: PeerId, msg: Message) -> Result<(), Error> {
        self.running()?;
        self.note_requests(&msg);
        let s = self.shard_of(id)?;
        let (tx, rx) = bounded(1);
        if !self
            .shared
            .send_to_shard(s, ShardCmd::Send(id, msg, Some(tx)))
        {
            return Err(Error::Stopped);
        }
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) if why.starts_with("no peer") => Err(Error::UnknownPeer(id)),
            Ok(Err(why)) => Err(Error::SendRejected(why)),
            Err(RecvTimeoutError::Timeout) => {
                Err(Error::SendRejected("shard did not answer in 10 s".into()))
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::Stopped),
        }
    }

    /// Sends a message to one peer without waiting; problems are only logged.
    pub fn send_nowait(&self, id: PeerId, msg: Message) -> Result<(), Error> {
        self.running()?;
        self.note_requests(&msg);
        let s = self.shard_of(id)?;
        self.shared
            .send_to_shard(s, ShardCmd::Send(id, msg, None))
            .then_some(())
            .ok_or(Error::Stopped)
    }

    /// Sends a message to every peer that completed its handshake.
    pub fn broadcast(&self, msg: Message) -> Result<(), Error> {
        self.running()?;
        self.note_requests(&msg);
        for s in 0..self.shared.shards.len() {
            self.shared
                .send_to_shard(s, ShardCmd::Broadcast(msg.clone()));
        }
        Ok(())
    }

    /// Every connection with its state and counters.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut all = Vec::new();
        if self.running().is_err() {
            return all;
        }
        let replies: Vec<_> = (0..self.shared.shards.len())
            .filter_map(|s| {
                let (tx, rx) = bounded(1);
                self.shared
                    .send_to_shard(s, ShardCmd::Peers(tx))
                    .then_some(rx)
            })
            .collect();
        for rx in replies {
            if let Ok(v) = rx.recv_timeout(Duration::from_secs(10)) {
                all.extend(v);
            }
        }
        all.sort_by_key(|p| p.id);
        all
    }

    /// Every peer address the engine knows (from the store and this run), with its record.
    pub fn known_peers(&self) -> Vec<(SocketAddr, PeerRecord)> {
        let r = self.shared.registry.lock().expect("registry lock");
        let mut v: Vec<_> = r.peers().map(|(a, p)| (*a, p.clone())).collect();
        v.sort_by_key(|(a, _)| *a);
        v
    }

    /// Lifetime statistics of a peer address (every connection, per command), as of the last
    /// fold (every `persist_interval`, and at each disconnect).
    pub fn peer_stats(&self, addr: &SocketAddr) -> Option<StoredStats> {
        self.shared
            .registry
            .lock()
            .expect("registry lock")
            .stats(addr)
            .cloned()
    }

    /// The best header's hash and height (loaded from the store at start).
    pub fn best_header(&self) -> (crate::wire::Hash256, u32) {
        let c = self.shared.chain.lock().expect("chain lock");
        let (hash, height, _) = c.tree().tip();
        (hash, height)
    }

    /// Bans an IP (`1.2.3.4`) or subnet (`1.2.3.0/24`, `fd00::/64`) for `duration`; live
    /// connections inside it are dropped and it is never dialled or accepted until it ends.
    pub fn ban(&self, subnet: &str, duration: Duration, reason: &str) -> Result<Subnet, Error> {
        let s: Subnet = subnet.parse().map_err(Error::InvalidInput)?;
        let until = unix_now().saturating_add(duration.as_secs().max(1));
        self.shared
            .ban_subnet(s, until, reason)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        Ok(s)
    }

    /// Lifts a ban; `Ok(false)` when there was none for exactly that subnet.
    pub fn unban(&self, subnet: &str) -> Result<bool, Error> {
        let s: Subnet = subnet.parse().map_err(Error::InvalidInput)?;
        let had = self.shared.bans.lock().expect("ban list lock").unban(&s);
        if had {
            self.shared.forget_bans(vec![s]);
        }
        Ok(had)
    }

    /// Whether an address is banned now.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.shared.is_banned(ip)
    }

    /// Every ban in force or not yet swept.
    pub fn bans(&self) -> Vec<(Subnet, Ban)> {
        self.shared.bans.lock().expect("ban list lock").list()
    }

    /// Lifts every ban.
    pub fn clear_bans(&self) {
        let gone = self.shared.bans.lock().expect("ban list lock").clear();
        self.shared.forget_bans(gone);
    }

    /// An address's current ban score.
    pub fn ban_score(&self, ip: IpAddr) -> u32 {
        self.shared
            .scores
            .lock()
            .expect("ban score lock")
            .score(ip, unix_now())
    }

    /// Imports blocks from a block file (records of the network's disk magic, a u32 length and
    /// the block, as in Bitcoin nodes' `blk*.dat`): headers into the chain, blocks into the
    /// store, so the engine can serve them. Returns the blocks imported and the new tip height.
    pub fn import_block_file(&self, path: &std::path::Path) -> Result<(usize, u32), Error> {
        let data = Bytes::from(std::fs::read(path).map_err(Error::Io)?);
        let magic = self.shared.config.network.disk_magic;
        let mut pos = 0usize;
        let mut blocks = Vec::new();
        while pos < data.len() {
            let bad = |what: String| {
                Error::InvalidInput(format!("{}: {what} at byte {pos}", path.display()))
            };
            if data.len() - pos < 8 {
                return Err(bad(format!(
                    "{} bytes left, a record needs 8",
                    data.len() - pos
                )));
            }
            if data[pos..pos + 4] != magic.0 {
                return Err(bad(format!(
                    "magic {} is not this network's disk magic {magic}",
                    crate::wire::hash::encode_hex(&data[pos..pos + 4])
                )));
            }
            let len =
                u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
            if data.len() - pos - 8 < len {
                return Err(bad(format!("record of {len} bytes runs past the end")));
            }
            let raw = data.slice(pos + 8..pos + 8 + len);
            let block = <crate::wire::Block as crate::wire::Decode>::decode_all(raw)
                .map_err(|e| bad(format!("block does not decode: {e}")))?;
            blocks.push(block);
            pos += 8 + len;
        }
        let mut batch = Batch::new();
        let headers: Vec<crate::wire::BlockHeader> = blocks.iter().map(|b| b.header).collect();
        let update = self
            .shared
            .chain
            .lock()
            .expect("chain lock")
            .insert_headers(&headers, &mut batch);
        let stored = match &update.error {
            Some((i, _)) => *i,
            None => blocks.len(),
        };
        for b in &blocks[..stored] {
            crate::store::records::put_block(&mut batch, &b.hash(), b.raw().clone());
        }
        self.shared.writer.write(batch).map_err(Error::Store)?;
        {
            let mut st = self.shared.sync.lock().expect("sync lock");
            if let Some(dl) = st.blocks.as_mut() {
                for (i, b) in blocks[..stored].iter().enumerate() {
                    let h = update.old_tip.height + 1 + i as u32;
                    dl.have(h, b.hash());
                }
            }
        }
        let height = update.new_tip.height;
        self.set_start_height(height.min(i32::MAX as u32) as i32);
        if let Some((i, e)) = update.error {
            return Err(Error::InvalidInput(format!(
                "{}: block {i} refused: {e} ({stored} imported)",
                path.display()
            )));
        }
        Ok((stored, height))
    }

    /// Every address in the address book, with what is known of it.
    pub fn addresses(&self) -> Vec<(SocketAddr, AddrInfo)> {
        let book = self.shared.addrbook.lock().expect("address book lock");
        let mut v: Vec<_> = book.iter().map(|(a, i)| (a, *i)).collect();
        v.sort_by_key(|(a, _)| *a);
        v
    }

    /// Hands in a new block (mined here or received elsewhere): its header joins the chain, the
    /// block is stored, and if it is the new tip it is announced to every peer (headers to those
    /// that sent `sendheaders`, inv to the others). Returns its height.
    pub fn submit_block(&self, block: crate::wire::Block) -> Result<u32, Error> {
        self.running()?;
        crate::syncer::submit_block(&self.shared, block).map_err(Error::InvalidInput)
    }

    /// Relays a transaction from the embedder to every peer (announced at the next tick).
    pub fn submit_tx(&self, tx: crate::wire::Transaction) -> Result<(), Error> {
        self.running()?;
        crate::txrelay::submit(&self.shared, tx);
        Ok(())
    }

    /// Accepts a transaction handed over with [`Event::TxReceived`]: it is relayed on. False
    /// when no such transaction waits for a decision.
    pub fn accept_tx(&self, txid: &crate::wire::Hash256) -> bool {
        crate::txrelay::accept(&self.shared, txid)
    }

    /// Rejects a transaction handed over with [`Event::TxReceived`]: a `reject` goes to its
    /// source, which is scored. False when no such transaction waits for a decision.
    pub fn reject_tx(&self, txid: &crate::wire::Hash256, reason: &str) -> bool {
        crate::txrelay::reject(&self.shared, txid, reason)
    }

    /// Header sync progress, and the height up to which blocks are stored without a gap
    /// (`None` in headers-only mode).
    pub fn sync_progress(&self) -> (crate::fsm::sync::SyncProgress, Option<u32>) {
        let chain = self.shared.chain.lock().expect("chain lock");
        let st = self.shared.sync.lock().expect("sync lock");
        let blocks = st.blocks.as_ref().map(|d| d.ready_height());
        (st.headers.progress(chain.tree()), blocks)
    }

    /// A header of the best chain by height, or any known header by hash, with its height.
    pub fn header(&self, at: HeaderRef) -> Option<(crate::wire::BlockHeader, u32)> {
        let chain = self.shared.chain.lock().expect("chain lock");
        let hash = match at {
            HeaderRef::Height(h) => chain.tree().hash_at(h)?,
            HeaderRef::Hash(h) => h,
        };
        chain.tree().get(&hash).map(|e| (e.header, e.height))
    }

    /// A stored block by height (best chain) or hash.
    pub fn block(&self, at: HeaderRef) -> Result<Option<crate::wire::Block>, Error> {
        let Some((h, _)) = self.header(at) else {
            return Ok(None);
        };
        let store = self.shared.writer.store().clone();
        let raw = crate::store::records::with_block(store.as_ref(), &h.hash(), |v| {
            v.map(Bytes::copy_from_slice)
        })
        .map_err(Error::Store)?;
        match raw {
            None => Ok(None),
            Some(r) => <crate::wire::Block as crate::wire::Decode>::decode_all(r)
                .map(Some)
                .map_err(|e| {
                    Error::Store(crate::store::StoreError::Corrupt(format!(
                        "stored block {}: {e}",
                        h.hash()
                    )))
                }),
        }
    }

    /// The store, for reads (writes go through the engine).
    pub fn store(&self) -> Arc<dyn Store> {
        self.shared.writer.store().clone()
    }

    /// Stops the engine: every connection closed, every thread joined, the store flushed. Also
    /// done on drop.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.shard_threads.is_empty()
            && self.worker_threads.is_empty()
            && self.registry_thread.is_none()
        {
            return;
        }
        if let Some((tx, h)) = self.discovery.take() {
            drop(tx);
            let _ = h.join();
        }
        for s in 0..self.shared.shards.len() {
            self.shared.send_to_shard(s, ShardCmd::Stop);
        }
        for h in self.shard_threads.drain(..) {
            let _ = h.join();
        }
        for w in &self.shared.workers {
            let _ = w.send(WorkerMsg::Stop);
        }
        for h in self.worker_threads.drain(..) {
            let _ = h.join();
        }
        let _ = self.shared.registry_tx.send(RegistryMsg::Stop);
        if let Some(h) = self.registry_thread.take() {
            let _ = h.join();
        }
        if let Err(e) = self.shared.writer.flush() {
            log::error!("store flush at stop failed: {e}");
        }
        self.shared.writer.stop();
        log::info!("engine stopped");
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
