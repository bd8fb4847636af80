//! The node core: the one owner of every piece of state that spans peers — the peer table,
//! connection admission, bans and ban scores, the registry of peer statistics, the address book,
//! header sync, block download, block and transaction relay, serving, and the embedder's
//! outstanding requests.
//!
//! It is I/O-free in the style of nakamoto's protocol and quinn-proto: no clock, no thread, no
//! lock, no socket and no randomness of its own. The engine (or a simulation) drives it:
//!
//! - **Inputs** (`handle_*`): a connection made ([`NodeCore::handle_peer`] with
//!   [`PeerInput::Connection`]), a handshake finished, a message, a misbehaviour seen by the
//!   shard, fresh counters, a connection gone, a dial that failed; a store commit acknowledged
//!   ([`NodeCore::handle_committed`]); an embedder command (the `pub(crate)` methods the engine
//!   calls on the core thread); and [`NodeCore::handle_timeout`].
//! - **Outputs** ([`NodeCore::poll_output`]): send a message, disconnect, dial, write to the
//!   store (optionally asking for an acknowledgement), raise an event, announce a new height.
//!   Drain them after every input.
//! - **Time** is passed in with every input as an `Instant` and must only move forward;
//!   [`NodeCore::poll_timeout`] says when the core next needs [`NodeCore::handle_timeout`].
//!   Unix time is derived from the `Instant` and the base given at creation, so a simulation on
//!   a virtual clock is fully repeatable.
//! - **Randomness** comes from the seed given at creation.
//!
//! Nothing here waits for the store: writes are outputs, and what must follow a commit (a
//! `BlockConnected` event, announcing a block) waits for [`NodeCore::handle_committed`], while
//! the block stays servable from memory.

mod addr;
mod bsv;
mod chain;
mod status;
mod tx;

pub use status::ChainStatus;

pub use chain::HeaderRef;

use crate::config::Config;
use crate::event::{Event, PeerInfo};
use crate::fsm::addrbook::{load_entries, AddrBook, AddrBookSettings, XorShift64};
use crate::fsm::bans::{Ban, BanError, BanList, BanReason, BanScores, Subnet};
use crate::fsm::download::{BlockDownload, DownloadConfig};
use crate::fsm::peer::PeerStats;
use crate::fsm::registry::Registry;
use crate::fsm::scoring::{self, ScoreInputs};
use crate::fsm::sync::{HeaderSync, SyncConfig};
use crate::fsm::txrelay::TxRelay;
use crate::fsm::{Direction, DisconnectReason, PeerId};
use crate::store::chain::ChainDb;
use crate::store::records::{ban_key, load_bans, BanRecord, PeerStatus};
use crate::store::{Batch, Store, StoreError, Table};
use crate::wire::{AssociationId, Hash256, Message, VersionMessage};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a shard (or a simulated link) tells the core about one connection.
#[derive(Debug)]
pub(crate) enum PeerInput {
    /// A socket exists: accepted (inbound) or connecting (outbound, after a
    /// [`Output::Dial`]). The core admits it or answers with a disconnect.
    Connection {
        id: PeerId,
        addr: SocketAddr,
        direction: Direction,
    },
    /// The handshake completed.
    Ready {
        info: Box<PeerInfo>,
        version: Box<VersionMessage>,
    },
    /// A message the connection layer does not consume itself.
    Message { id: PeerId, message: Message },
    /// A block over the file threshold arrived, checked, into a block file.
    BlockFile {
        id: PeerId,
        summary: crate::wire::stream::BlockSummary,
        file: crate::store::files::BlockFileRef,
    },
    /// The connection layer saw misbehaviour (bad checksum, rate limit...).
    Misbehaved {
        id: PeerId,
        reason: BanReason,
        detail: String,
    },
    /// Fresh counters of a ready connection (for the registry and eviction scores).
    Stats {
        id: PeerId,
        stats: PeerStats,
        rtt: Option<Duration>,
    },
    /// The connection is gone.
    Disconnected {
        id: PeerId,
        reason: DisconnectReason,
        stats: PeerStats,
        rtt: Option<Duration>,
    },
    /// An outbound connection could not even be started.
    DialFailed { addr: SocketAddr, reason: String },
    /// What was queued to a peer went out (after an [`Output::NotifyDrained`]): serving goes on.
    Drained { id: PeerId },
    /// An inbound connection's first message was `createstrm`: it asks to join the association
    /// `association` as a stream of type `stream_type` under `policy`.
    StreamRequest {
        id: PeerId,
        association: AssociationId,
        stream_type: u8,
        policy: String,
    },
}

/// What the core asks its driver to do.
#[derive(Debug)]
pub(crate) enum Output {
    /// Send a message to a peer.
    Send(PeerId, Message),
    /// Close a connection.
    Disconnect(PeerId, DisconnectReason),
    /// Open an outbound connection (its slot is taken already).
    Dial(SocketAddr),
    /// Write to the store; with `ack`, call [`NodeCore::handle_committed`] with it once the
    /// batch (and everything written before it) is committed.
    Write { batch: Batch, ack: Option<u64> },
    /// Tell the embedder.
    Event(Event),
    /// The best header height changed (announced in our `version` messages).
    Height(u32),
    /// Move connection `from` (its `createstrm` accepted) into `owner`'s association as a
    /// stream; the core has already let `from` go.
    JoinStream {
        from: PeerId,
        owner: PeerId,
        stream_type: u8,
        policy: String,
    },
    /// Refuse connection `id`'s `createstrm` (a `reject`, then close).
    RefuseStream(PeerId, String),
    /// Answer with [`PeerInput::Drained`] once what is queued to the peer has gone out (at
    /// once if it has).
    NotifyDrained(PeerId),
    /// Send a stored block from its block file (read in pieces as the socket takes them).
    SendBlockFile(PeerId, Hash256, crate::store::files::BlockFileRef),
    /// Remove a block file nobody keeps (hash, file id).
    RemoveBlockFile(Hash256, u64),
    /// A block the embedder asked for arrived into a block file: give the embedder a name of
    /// its own for the file ([`Event::BlockFile`]).
    EmbedderBlockFile {
        peer: PeerId,
        summary: crate::wire::stream::BlockSummary,
        file: crate::store::files::BlockFileRef,
    },
}

/// A `createstrm` waiting for its association's owner to be ready.
#[derive(Debug)]
struct WaitingStream {
    id: PeerId,
    association: AssociationId,
    stream_type: u8,
    policy: String,
    until: Instant,
}

/// A connection in the peer table (from its socket to its end).
#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    direction: Direction,
    /// Counted against the connection limits.
    admitted: bool,
    since: Instant,
    /// Handshake done.
    ready: bool,
    /// When the handshake completed.
    ready_at: Option<Instant>,
    /// An outbound connection that has been ready for [`NodeCore::stable_after`]: the re-dial
    /// and address book backoffs of its address have started over.
    stable: bool,
    services: u64,
    version: i32,
    start_height: i32,
    /// Sent `sendheaders`: announce blocks to it as headers.
    sendheaders: bool,
    /// Its BSV association, when both sides agreed on one.
    association: Option<AssociationId>,
    /// Headers it added on branches with less work than the best chain.
    fork_headers: usize,
    /// Blocks it asked for that wait for the bytes served before them to go out.
    serve_queue: VecDeque<crate::wire::Inventory>,
    /// Bytes served since the shard last said its queue drained.
    served: usize,
    /// Waiting for that.
    serve_waiting: bool,
    /// Blocks it is known to have (never announced to it).
    known: KnownBlocks,
    /// The last block of a `getblocks` answer cut at its limit (Bitcoin's `hashContinue`).
    continuation: Option<Hash256>,
    /// Its `getaddr` was answered (once per connection).
    getaddr_answered: bool,
    /// What its last counters from the shard say (for eviction scores; bans are added when
    /// scoring).
    inputs: ScoreInputs,
    /// Its counters as of the shard's last report (for the metrics).
    last_stats: PeerStats,
    /// Relayed addresses waiting for its next `addr`.
    addr_queue: Vec<crate::wire::TimedNetAddr>,
    /// When that may go out.
    next_addr_send: Instant,
}

/// Most block hashes remembered per peer as already known to it.
const KNOWN_PER_PEER: usize = 4096;

/// A bounded set of block hashes, oldest forgotten first.
#[derive(Debug, Default)]
struct KnownBlocks {
    order: VecDeque<Hash256>,
    set: HashSet<Hash256>,
}

impl KnownBlocks {
    fn contains(&self, h: &Hash256) -> bool {
        self.set.contains(h)
    }
    fn learn(&mut self, h: Hash256) {
        if self.set.insert(h) {
            if self.order.len() >= KNOWN_PER_PEER {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
            self.order.push_back(h);
        }
    }
}

/// Static peers (`Config::connect`, `Engine::connect` does not make one) are re-dialled with
/// backoff when they drop.
#[derive(Debug, Default)]
struct Redial {
    /// Failed attempts in a row: dials that failed and connections that ended before they were
    /// stable (see [`NodeCore::stable_after`]).
    attempts: u32,
    /// When to dial next; `None` while connected or being dialled.
    at: Option<Instant>,
}

/// Blocks the embedder asked for with its own `getdata`, at most (the oldest request makes
/// room).
const MAX_EMBEDDER_BLOCKS: usize = 10_000;
/// How long an embedder's block request is remembered.
const EMBEDDER_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Work the core waits on a commit for.
#[derive(Debug, Default)]
struct PendingCommit {
    ack: u64,
    /// Blocks to raise as `BlockConnected` (chain order), the last announced if it is the tip.
    connected: Vec<(u32, Hash256)>,
    /// Blocks held in memory until the commit (servable meanwhile).
    held: Vec<Hash256>,
    /// A block handed in with `submit_block`: the download learns it is stored.
    submitted: Option<(u32, Hash256)>,
}

/// Counts of every map the core keeps, for leak tests and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoreCounts {
    /// Connections in the peer table.
    pub peers: usize,
    /// Addresses with a per-IP connection count.
    pub per_ip: usize,
    /// Inbound and outbound slots taken.
    pub inbound: usize,
    /// Outbound slots taken (connections and dials in flight).
    pub outbound: usize,
    /// Address-book dials in flight.
    pub dialing: usize,
    /// Blocks the embedder asked for and has not received.
    pub embedder_blocks: usize,
    /// Block requests in flight (the download's).
    pub blocks_in_flight: usize,
    /// Downloaded blocks waiting for their turn.
    pub block_buffer: usize,
    /// Blocks written, waiting for their commit.
    pub unconfirmed: usize,
    /// Commits waited on.
    pub pending_commits: usize,
    /// Transaction relay: peers, requests, undecided, accepted, rejected.
    pub tx: [usize; 5],
    /// Registry entries of live connections.
    pub registry_live: usize,
    /// `dsdetected`/`revokemid` remembered (at most 1,000).
    pub notices: usize,
    /// Headers in the tree.
    pub headers: usize,
    /// Of them, off the best chain.
    pub fork_headers: usize,
    /// Peers whose headers are pre-synced (counted, not stored: below the minimum chain work).
    pub presync_peers: usize,
    /// Bytes their counts hold.
    pub presync_bytes: usize,
}

/// The node core. See the module documentation for its calling contract.
pub(crate) struct NodeCore {
    config: Config,
    store: Arc<dyn Store>,
    chain: ChainDb,
    peers: BTreeMap<PeerId, Peer>,
    inbound: usize,
    outbound: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Address-book dials in flight (canonical addresses).
    dialing: HashSet<SocketAddr>,
    statics: BTreeMap<SocketAddr, Redial>,
    book: AddrBook,
    bans: BanList,
    scores: BanScores,
    registry: Registry,
    sync: HeaderSync,
    blocks: Option<BlockDownload>,
    /// Downloaded blocks waiting for their turn in chain order.
    buffer: HashMap<Hash256, chain::Held>,
    txs: TxRelay,
    /// `dsdetected` and `revokemid` seen lately.
    notices: bsv::SeenNotices,
    /// `createstrm` requests whose association is not known yet.
    waiting_streams: Vec<WaitingStream>,
    /// Blocks the embedder asked for itself: hash → (asked of, when).
    embedder_blocks: HashMap<Hash256, (PeerId, Instant)>,
    embedder_order: VecDeque<(Instant, Hash256)>,
    /// Blocks written and not yet committed, by hash (served from here meanwhile).
    unconfirmed: HashMap<Hash256, chain::Held>,
    commits: VecDeque<PendingCommit>,
    next_ack: u64,
    rng: XorShift64,
    /// Peers whose headers are in pre-sync (our chain is below the minimum chain work).
    presync: HashMap<PeerId, crate::fsm::presync::Presync>,
    out: VecDeque<Output>,
    local_addr: Option<SocketAddr>,
    /// `Instant` and unix seconds at creation: unix time is derived from the `Instant`s passed
    /// in.
    base: (Instant, u64),
    next_sync_tick: Instant,
    next_tx_flush: Instant,
    next_persist: Instant,
    /// No outbound connection turns stable before this (`None`: none is waiting to): the timer
    /// does not look at the peers until then.
    next_stable: Option<Instant>,
    /// No peer's queued relayed addresses are due before this (`None`: no peer has any queued).
    next_addr_relay: Option<Instant>,
    height: u32,
    /// A batch of headers whose validation waits until the request for the next batch has gone
    /// out (the driver carries out outputs between inputs).
    deferred: Option<(PeerId, Vec<crate::wire::BlockHeader>)>,
    /// Counters for the metrics.
    tally: status::Tally,
    /// Sync progress samples.
    progress: status::Progress,
}

/// How often sync, download, discovery and static re-dials are looked at.
const SYNC_TICK: Duration = Duration::from_millis(100);

impl NodeCore {
    /// A core over `store` (read at creation for peers, bans, the address book and the header
    /// chain; read later to serve blocks). `now` and `unix_now` anchor its clock; `seed` its
    /// random choices. `local_addr` is the address we listen on, if any (advertised).
    pub(crate) fn new(
        config: Config,
        store: Arc<dyn Store>,
        local_addr: Option<SocketAddr>,
        now: Instant,
        unix_now: u64,
        seed: u64,
    ) -> Result<NodeCore, crate::Error> {
        let registry = Registry::load(store.as_ref()).map_err(crate::Error::Store)?;
        let mut chain =
            ChainDb::load(store.as_ref(), &config.network).map_err(crate::Error::Store)?;
        let conflicts = chain.set_rules(crate::chain::HeaderRules {
            checkpoints: config.checkpoints.clone(),
            ..Default::default()
        });
        if let Some((height, want, stored)) = conflicts.first() {
            return Err(crate::Error::Config(crate::config::ConfigError(format!(
                "the stored chain has {stored} at height {height}, the checkpoint says {want}: \
                 start with another data directory or without that checkpoint"
            ))));
        }
        let sync = HeaderSync::new(SyncConfig {
            stall_timeout: config.sync_stall_timeout,
            headers_only: config.headers_only,
            ..Default::default()
        });
        let blocks = (!config.headers_only).then(|| {
            BlockDownload::new(
                DownloadConfig {
                    block_timeout: config.block_timeout,
                    ..Default::default()
                },
                stored_up_to(&chain, store.as_ref()),
            )
        });
        let book = AddrBook::load(
            AddrBookSettings {
                allow_local: config.allow_local_addrs,
                ..AddrBookSettings::default()
            },
            load_entries(store.as_ref()).map_err(crate::Error::Store)?,
        );
        let mut bans = BanList::new(config.max_bans, config.never_ban.clone());
        for ((ip, prefix), r) in load_bans(store.as_ref()).map_err(crate::Error::Store)? {
            if let (Some(s), true) = (Subnet::new(ip, prefix), r.until > unix_now) {
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
        let statics = config
            .connect
            .iter()
            .map(|a| {
                (
                    *a,
                    Redial {
                        attempts: 0,
                        at: Some(now),
                    },
                )
            })
            .collect();
        let height = chain.tree().height();
        Ok(NodeCore {
            scores: BanScores::new(config.ban_scores.clone()),
            next_tx_flush: now + config.tx_announce_interval,
            next_persist: now + config.persist_interval,
            config,
            store,
            chain,
            peers: BTreeMap::new(),
            inbound: 0,
            outbound: 0,
            per_ip: HashMap::new(),
            dialing: HashSet::new(),
            statics,
            book,
            bans,
            registry,
            sync,
            blocks,
            buffer: HashMap::new(),
            txs: TxRelay::default(),
            notices: Default::default(),
            waiting_streams: Vec::new(),
            embedder_blocks: HashMap::new(),
            embedder_order: VecDeque::new(),
            unconfirmed: HashMap::new(),
            commits: VecDeque::new(),
            next_ack: 1,
            rng: XorShift64::new(seed),
            presync: HashMap::new(),
            out: VecDeque::new(),
            local_addr,
            base: (now, unix_now),
            next_sync_tick: now,
            next_stable: None,
            next_addr_relay: None,
            height,
            deferred: None,
            tally: Default::default(),
            progress: Default::default(),
        })
    }

    /// The next output to carry out, in order.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Outputs waiting.
    pub(crate) fn outputs_len(&self) -> usize {
        self.out.len()
    }

    /// When the core next needs [`NodeCore::handle_timeout`]: at once (the base instant) when
    /// work was put off until the outputs so far are carried out.
    pub(crate) fn poll_timeout(&self) -> Instant {
        if self.deferred.is_some() {
            return self.base.0;
        }
        self.next_sync_tick
            .min(self.next_tx_flush)
            .min(self.next_persist)
    }

    /// Whether work waits for the outputs so far to be carried out (drivers then carry them out
    /// before the next input, and call [`NodeCore::handle_timeout`]).
    pub(crate) fn has_deferred(&self) -> bool {
        self.deferred.is_some()
    }

    /// Does the work put off (inputs and calls do it first, so order is kept).
    pub(crate) fn settle(&mut self, now: Instant) {
        if let Some((id, headers)) = self.deferred.take() {
            self.validate_headers(id, headers, now);
        }
    }

    fn unix(&self, now: Instant) -> u64 {
        self.base.1 + now.saturating_duration_since(self.base.0).as_secs()
    }

    fn send(&mut self, id: PeerId, m: Message) {
        self.out.push_back(Output::Send(id, m));
    }

    fn emit(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn write(&mut self, batch: Batch) {
        if !batch.is_empty() {
            self.out.push_back(Output::Write { batch, ack: None });
        }
    }

    /// Writes `batch` and waits on its commit for `pending`.
    fn write_acked(&mut self, batch: Batch, mut pending: PendingCommit) {
        let ack = self.next_ack;
        self.next_ack += 1;
        pending.ack = ack;
        self.commits.push_back(pending);
        self.out.push_back(Output::Write {
            batch,
            ack: Some(ack),
        });
    }

    fn set_height(&mut self, h: u32) {
        if h != self.height {
            self.height = h;
            self.out.push_back(Output::Height(h));
        }
    }

    fn ip_of(&self, id: PeerId) -> Option<IpAddr> {
        self.peers.get(&id).map(|p| p.addr.ip())
    }

    fn ready_peers(&self) -> impl Iterator<Item = (&PeerId, &Peer)> {
        self.peers.iter().filter(|(_, p)| p.ready)
    }

    /// An input about a connection.
    pub(crate) fn handle_peer(&mut self, input: PeerInput, now: Instant) {
        self.settle(now);
        match input {
            PeerInput::Connection {
                id,
                addr,
                direction,
            } => self.connection(id, addr, direction, now),
            PeerInput::Ready { info, version } => self.ready(*info, *version, now),
            PeerInput::Message { id, message } => {
                if self.peers.get(&id).is_some_and(|p| p.ready) {
                    self.message(id, message, now);
                }
            }
            PeerInput::BlockFile { id, summary, file } => {
                if self.peers.get(&id).is_some_and(|p| p.ready) {
                    self.block_file_arrived(id, summary, file, now);
                } else {
                    self.out
                        .push_back(Output::RemoveBlockFile(summary.hash, file.id));
                }
            }
            PeerInput::Misbehaved { id, reason, detail } => {
                if let Some(ip) = self.ip_of(id) {
                    self.misbehaving(ip, Some(id), reason, &detail, now);
                }
            }
            PeerInput::Stats { id, stats, rtt } => self.stats(id, &stats, rtt),
            PeerInput::Disconnected {
                id,
                reason,
                stats,
                rtt,
            } => self.disconnected(id, reason, stats, rtt, now),
            PeerInput::DialFailed { addr, reason } => self.dial_failed(addr, reason, now),
            PeerInput::StreamRequest {
                id,
                association,
                stream_type,
                policy,
            } => self.stream_request(id, association, stream_type, policy, now),
            PeerInput::Drained { id } => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.served = 0;
                    p.serve_waiting = false;
                }
                self.serve_more(id);
            }
        }
    }

    /// Admission: bans, the inbound limit (evicting the worst inbound peer when full), the
    /// per-IP limit.
    fn connection(&mut self, id: PeerId, addr: SocketAddr, direction: Direction, now: Instant) {
        let unix = self.unix(now);
        self.peers.insert(
            id,
            Peer {
                addr,
                direction,
                admitted: false,
                since: now,
                ready: false,
                ready_at: None,
                stable: false,
                services: 0,
                version: 0,
                start_height: 0,
                sendheaders: false,
                association: None,
                fork_headers: 0,
                serve_queue: VecDeque::new(),
                served: 0,
                serve_waiting: false,
                known: KnownBlocks::default(),
                continuation: None,
                getaddr_answered: false,
                inputs: ScoreInputs::default(),
                last_stats: PeerStats::default(),
                addr_queue: Vec::new(),
                next_addr_send: now,
            },
        );
        if direction == Direction::Outbound {
            // its slot was taken when the dial was asked for
            self.admit(id, addr);
            return;
        }
        if self.bans.banned(addr.ip(), unix).is_some() {
            log::info!("refusing banned {addr}");
            self.out
                .push_back(Output::Disconnect(id, DisconnectReason::Banned));
            return;
        }
        let per_ip = self.per_ip.get(&addr.ip()).copied().unwrap_or(0);
        if self.config.max_per_ip > 0 && per_ip >= self.config.max_per_ip {
            self.out.push_back(Output::Disconnect(
                id,
                DisconnectReason::LimitReached("connections per IP"),
            ));
            return;
        }
        if self.inbound >= self.config.max_inbound {
            match self.pick_eviction(now) {
                Some(victim) => {
                    log::info!("inbound full, evicting peer {victim} for {addr}");
                    self.release(victim);
                    self.out
                        .push_back(Output::Disconnect(victim, DisconnectReason::Evicted));
                }
                None => {
                    self.out.push_back(Output::Disconnect(
                        id,
                        DisconnectReason::LimitReached("inbound connections"),
                    ));
                    return;
                }
            }
        }
        self.inbound += 1;
        self.admit(id, addr);
    }

    fn admit(&mut self, id: PeerId, addr: SocketAddr) {
        *self.per_ip.entry(addr.ip()).or_insert(0) += 1;
        if let Some(p) = self.peers.get_mut(&id) {
            p.admitted = true;
        }
    }

    /// Gives a connection's slots back (once).
    fn release(&mut self, id: PeerId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if !std::mem::replace(&mut p.admitted, false) {
            return;
        }
        let (ip, d) = (p.addr.ip(), p.direction);
        match d {
            Direction::Inbound => self.inbound = self.inbound.saturating_sub(1),
            Direction::Outbound => self.outbound = self.outbound.saturating_sub(1),
        }
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    fn score_of(&self, p: &Peer, now: Instant) -> u32 {
        scoring::score(&self.with_bans(p.addr.ip(), p.inputs, now))
    }

    /// `inputs` with what the core alone knows: the address's ban score and ban.
    fn with_bans(&self, ip: IpAddr, inputs: ScoreInputs, now: Instant) -> ScoreInputs {
        let unix = self.unix(now);
        ScoreInputs {
            ban_score: self.scores.score(ip, unix),
            banned: self.bans.banned(ip, unix).is_some(),
            ..inputs
        }
    }

    /// When inbound slots are full: the admitted inbound peer with the lowest score among those
    /// connected for at least `evict_min_age` (ties: the newest).
    fn pick_eviction(&self, now: Instant) -> Option<PeerId> {
        self.peers
            .iter()
            .filter(|(_, p)| {
                p.admitted
                    && p.direction == Direction::Inbound
                    && now.saturating_duration_since(p.since) >= self.config.evict_min_age
            })
            .min_by_key(|(_, p)| (self.score_of(p, now), std::cmp::Reverse(p.since)))
            .map(|(id, _)| *id)
    }

    /// Fills in the score and status of connections the shards reported (the shards know
    /// counters, the core bans).
    pub(crate) fn rate_peers(&self, infos: &mut [PeerInfo], now: Instant) {
        for i in infos.iter_mut() {
            let inputs = conn_inputs(i.rtt, i.ready, &i.stats);
            let inputs = self.with_bans(i.addr.ip(), inputs, now);
            i.score = scoring::score(&inputs);
            i.status = scoring::status(&inputs);
        }
    }

    fn ready(&mut self, mut info: PeerInfo, v: VersionMessage, now: Instant) {
        let id = info.id;
        let stable_after = self.stable_after();
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if !p.admitted {
            return; // refused; its disconnect is on the way
        }
        p.ready = true;
        p.ready_at = Some(now);
        if p.direction == Direction::Outbound {
            if let Some(t) = now.checked_add(stable_after) {
                self.next_stable = Some(self.next_stable.map_or(t, |s| s.min(t)));
            }
        }
        self.tally.handshakes += 1;
        p.association = info.association;
        p.services = v.services;
        p.version = v.version;
        p.start_height = v.start_height;
        let (addr, direction) = (p.addr, p.direction);
        info.version = v.version;
        let unix = self.unix(now);
        self.registry
            .connected(id, addr, v.services, &v.user_agent, v.version, unix);
        // a static peer's backoff starts over only once the connection has stayed up
        // (`mark_stable`): one that drops us right after the handshake is a failed attempt
        self.rate_peers(std::slice::from_mut(&mut info), now);
        let score = info.score;
        self.addr_connected(id, addr, direction, v.services, now);
        self.txs.peer_connected(id);
        self.sync_connected(id, v.start_height, v.services, score, now);
        // (debug: the embedder gets the event, and `bsn node` prints it once)
        log::debug!(
            "peer {id} connected: {addr} {direction} {} height {}",
            v.user_agent,
            v.start_height
        );
        self.emit(Event::PeerConnected(Box::new(info)));
        self.match_streams(now);
    }

    /// A connection asks to join an association: moved into it when a ready peer from the
    /// same IP has that association; refused (and, from another IP, banned, as the SV node
    /// bans) otherwise. A request may come before the owner's readiness reaches the core (two
    /// shards race): while a connection from its IP is still on its way to ready, it waits
    /// (up to the handshake timeout).
    fn stream_request(
        &mut self,
        id: PeerId,
        association: AssociationId,
        stream_type: u8,
        policy: String,
        now: Instant,
    ) {
        if !self.peers.contains_key(&id) {
            return;
        }
        self.waiting_streams.push(WaitingStream {
            id,
            association,
            stream_type,
            policy,
            until: now + self.config.handshake_timeout,
        });
        self.match_streams(now);
    }

    /// Settles the stream requests whose association is known (or whose time is up).
    fn match_streams(&mut self, now: Instant) {
        let waiting = std::mem::take(&mut self.waiting_streams);
        for w in waiting {
            let Some(from) = self.peers.get(&w.id).map(|p| p.addr) else {
                continue; // gone meanwhile
            };
            let owner = self
                .ready_peers()
                .find(|(_, p)| p.association == Some(w.association))
                .map(|(o, p)| (*o, p.addr));
            match owner {
                Some((_, addr)) if addr.ip() != from.ip() => {
                    let why = format!(
                        "attempt to move a stream between peers with different IPs: {} != {}",
                        from.ip(),
                        addr.ip()
                    );
                    // the reject goes out before the ban closes the connection
                    self.out.push_back(Output::RefuseStream(w.id, why.clone()));
                    let reason = BanReason::StreamFromOtherAddress;
                    self.misbehaving(from.ip(), Some(w.id), reason, &why, now);
                }
                Some((owner, _)) => {
                    log::debug!(
                        "peer {owner}: stream {} of association {} joined from {from}",
                        crate::wire::stream_type::name(w.stream_type),
                        w.association
                    );
                    // the connection is the owner's now: it no longer counts as a peer
                    self.release(w.id);
                    self.peers.remove(&w.id);
                    self.out.push_back(Output::JoinStream {
                        from: w.id,
                        owner,
                        stream_type: w.stream_type,
                        policy: w.policy,
                    });
                }
                // only a connection from the same IP still on its way to ready can be the
                // owner; with none, nothing will come
                None if now >= w.until
                    || !self.peers.iter().any(|(i, p)| {
                        *i != w.id && !p.ready && p.admitted && p.addr.ip() == from.ip()
                    }) =>
                {
                    let why = format!("no association {}", w.association);
                    self.out.push_back(Output::RefuseStream(w.id, why));
                }
                None => self.waiting_streams.push(w),
            }
        }
    }

    fn message(&mut self, id: PeerId, msg: Message, now: Instant) {
        let msg = Some(msg)
            .and_then(|m| self.tx_message(id, m, now))
            .and_then(|m| self.bsv_message(id, m, now))
            .and_then(|m| self.addr_message(id, m, now))
            .and_then(|m| self.serve_message(id, m))
            .and_then(|m| self.sync_message(id, m, now));
        if let Some(message) = msg {
            self.emit(Event::Message { peer: id, message });
        }
    }

    fn stats(&mut self, id: PeerId, stats: &PeerStats, rtt: Option<Duration>) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.inputs = conn_inputs(rtt, p.ready, stats);
        p.last_stats.clone_from(stats);
        if p.ready {
            let addr = p.addr;
            self.registry.snapshot(id, addr, stats, rtt);
        }
    }

    fn disconnected(
        &mut self,
        id: PeerId,
        reason: DisconnectReason,
        stats: PeerStats,
        rtt: Option<Duration>,
        now: Instant,
    ) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let (addr, direction, ready, since) = (peer.addr, peer.direction, peer.ready, peer.since);
        // it may have stayed up long enough since the timer last looked
        let turns_stable = self.turns_stable(peer, now);
        let stable = peer.stable || turns_stable;
        if turns_stable {
            self.connection_stable(addr);
        }
        log::debug!("peer {id} ({addr}, {direction}) disconnected: {reason}");
        self.tally.retire(&stats);
        *self.tally.disconnects.entry(reason.kind()).or_default() += 1;
        if !ready {
            *self
                .tally
                .handshake_failures
                .entry(reason.kind())
                .or_default() += 1;
        }
        if let Some(r) = reason.ban_reason() {
            self.misbehaving(addr.ip(), Some(id), r, &reason.to_string(), now);
        }
        self.release(id);
        self.peers.remove(&id);
        self.presync.remove(&id);
        let unix = self.unix(now);
        self.registry
            .disconnected(id, addr, direction, ready, &stats, rtt, unix);
        self.addr_disconnected(addr, direction, ready, stable, now);
        if ready {
            self.sync_disconnected(id, now);
            let again = self.txs.peer_disconnected(id, now);
            self.ask_again(again);
        }
        self.forget_embedder_requests_of(id);
        if let Some((delay, attempt)) = self.schedule_redial(addr, now) {
            if reason != DisconnectReason::Shutdown {
                let up = human_duration(now.saturating_duration_since(since));
                let what = match &reason {
                    DisconnectReason::ConnectFailed(e) => {
                        format!("connect to {addr} failed after {up}: {e}")
                    }
                    DisconnectReason::Closed => {
                        format!("peer {addr} closed the connection {up} after connect")
                    }
                    r => format!("peer {addr} disconnected ({r}) {up} after connect"),
                };
                log::info!(
                    "{what}; re-dialling in {} (attempt {attempt})",
                    human_duration(delay)
                );
            }
        }
        self.emit(Event::PeerDisconnected {
            id,
            addr,
            direction,
            reason,
        });
    }

    fn dial_failed(&mut self, addr: SocketAddr, reason: String, now: Instant) {
        self.outbound = self.outbound.saturating_sub(1);
        let unix = self.unix(now);
        self.registry.failed(addr, unix);
        self.addr_dial_failed(addr, now);
        match self.schedule_redial(addr, now) {
            Some((delay, attempt)) => log::info!(
                "connect to {addr} failed: {reason}; re-dialling in {} (attempt {attempt})",
                human_duration(delay)
            ),
            None => log::info!("connect to {addr} failed: {reason}"),
        }
        self.emit(Event::ConnectFailed { addr, reason });
    }

    /// A static peer that dropped or could not be reached is dialled again after a backoff
    /// that grows with each failure in a row (a connection that ended before it was stable is
    /// one): the delay and the attempt's number, for a static peer.
    fn schedule_redial(&mut self, addr: SocketAddr, now: Instant) -> Option<(Duration, u32)> {
        let r = self.statics.get_mut(&addr)?;
        let delay = redial_delay(&self.config, r.attempts);
        r.at = Some(now + delay);
        r.attempts = r.attempts.saturating_add(1);
        Some((delay, r.attempts))
    }

    /// How long a connection must stay up (ready) before the backoff of its address starts
    /// over: `redial_max`. A connection that ends sooner is a failed attempt, so a peer that
    /// takes our connection and drops it (at once, or right after the handshake) is dialled
    /// at most about once per `redial_max` once the backoff has grown, however it behaves.
    fn stable_after(&self) -> Duration {
        self.config.redial_max
    }

    /// When the first outbound connection not yet stable turns stable (`None`: none will).
    fn first_to_turn_stable(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter(|p| p.direction == Direction::Outbound && !p.stable)
            .filter_map(|p| p.ready_at?.checked_add(self.stable_after()))
            .min()
    }

    /// Whether an outbound connection not yet marked stable has been ready long enough.
    fn turns_stable(&self, p: &Peer, now: Instant) -> bool {
        p.direction == Direction::Outbound
            && !p.stable
            && p.ready_at
                .is_some_and(|t| now.saturating_duration_since(t) >= self.stable_after())
    }

    /// Marks the outbound connections that have stayed up long enough as stable: the backoffs
    /// of their addresses start over.
    fn mark_stable(&mut self, now: Instant) {
        // (with no wait at all, a connection turns stable whatever the clock says)
        if self.next_stable.is_none_or(|t| now < t) && !self.stable_after().is_zero() {
            debug_assert!(self.peers.values().all(|p| !self.turns_stable(p, now)));
            return;
        }
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| self.turns_stable(p, now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(p) = self.peers.get_mut(&id) {
                p.stable = true;
                let addr = p.addr;
                self.connection_stable(addr);
            }
        }
        self.next_stable = self.first_to_turn_stable();
    }

    /// A connection to `addr` stayed up: its static re-dial and address book backoffs start
    /// over.
    fn connection_stable(&mut self, addr: SocketAddr) {
        if let Some(r) = self.statics.get_mut(&addr) {
            r.attempts = 0;
        }
        self.addr_stable(addr);
    }

    /// Asks for an outbound connection: false (with a `ConnectFailed` event for a banned
    /// address) when the address is banned or the outbound limit is reached.
    pub(crate) fn dial(&mut self, addr: SocketAddr, now: Instant) -> bool {
        if self.bans.banned(addr.ip(), self.unix(now)).is_some() {
            log::info!("not dialling banned {addr}");
            self.emit(Event::ConnectFailed {
                addr,
                reason: "address is banned".into(),
            });
            return false;
        }
        if self.outbound >= self.config.max_outbound {
            log::info!("not dialling {addr}: outbound limit reached");
            self.emit(Event::ConnectFailed {
                addr,
                reason: format!(
                    "outbound limit reached ({} connections)",
                    self.config.max_outbound
                ),
            });
            return false;
        }
        self.outbound += 1;
        self.out.push_back(Output::Dial(addr));
        true
    }

    /// Adds ban points for `reason` to `ip`; bans it when the score reaches the threshold.
    fn misbehaving(
        &mut self,
        ip: IpAddr,
        peer: Option<PeerId>,
        reason: BanReason,
        detail: &str,
        now: Instant,
    ) {
        let points = self.scores.points(reason);
        self.misbehaving_points(ip, peer, reason, points, detail, now);
    }

    /// Adds `points` for `reason` to `ip` (0: only logged, as the SV node's 0-point rules).
    fn misbehaving_points(
        &mut self,
        ip: IpAddr,
        peer: Option<PeerId>,
        reason: BanReason,
        points: u32,
        detail: &str,
        now: Instant,
    ) {
        if points == 0 {
            log::debug!("{ip}: {reason} ({detail}), 0 points");
            return;
        }
        let unix = self.unix(now);
        *self
            .tally
            .ban_score_events
            .entry(reason.name().to_string())
            .or_default() += 1;
        let change = self.scores.add_points(ip, points, unix);
        log::info!(
            "{ip}: +{} ban score for {reason} ({detail}): {}",
            change.added,
            change.score
        );
        self.registry.set_status(|a| a == ip, PeerStatus::Penalised);
        self.emit(Event::BanScore {
            ip,
            peer,
            reason,
            score: change.score,
        });
        if change.ban {
            let until = unix + self.config.ban_duration.as_secs().max(1);
            let why = format!("ban score {} reached ({reason})", change.score);
            if let Err(e) = self.ban_subnet(Subnet::host(ip), until, &why, now) {
                log::info!("{ip} not banned: {e}");
            }
        }
    }

    /// Bans a subnet: recorded, saved, announced, and its live connections dropped.
    pub(crate) fn ban_subnet(
        &mut self,
        subnet: Subnet,
        until: u64,
        reason: &str,
        now: Instant,
    ) -> Result<(), BanError> {
        let unix = self.unix(now);
        let evicted = self.bans.ban(subnet, until, reason, unix)?;
        self.tally.bans += 1;
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
                created: unix,
                reason: reason.to_string(),
            }
            .encode(),
        );
        self.write(b);
        log::warn!(
            "banned {subnet} until {}: {reason}",
            crate::admin::date(until)
        );
        self.registry
            .set_status(|a| subnet.contains(a), PeerStatus::Banned);
        self.emit(Event::Banned {
            subnet,
            until,
            reason: reason.to_string(),
        });
        let inside: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| subnet.contains(p.addr.ip()))
            .map(|(id, _)| *id)
            .collect();
        for id in inside {
            self.out
                .push_back(Output::Disconnect(id, DisconnectReason::Banned));
        }
        Ok(())
    }

    /// Lifts a ban; false when there was none for exactly that subnet.
    pub(crate) fn unban(&mut self, s: &Subnet) -> bool {
        let had = self.bans.unban(s);
        if had {
            self.forget_bans(vec![*s]);
        }
        had
    }

    /// Lifts every ban.
    pub(crate) fn clear_bans(&mut self) {
        let gone = self.bans.clear();
        self.forget_bans(gone);
    }

    fn forget_bans(&mut self, gone: Vec<Subnet>) {
        if gone.is_empty() {
            return;
        }
        let mut b = Batch::new();
        for s in gone {
            b.delete(Table::Bans, ban_key(&s.addr(), s.prefix()).to_vec());
            log::info!("ban on {s} lifted");
            self.emit(Event::Unbanned { subnet: s });
        }
        self.write(b);
    }

    /// Whether `ip` is banned now.
    pub(crate) fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.bans.banned(ip, self.unix(now)).is_some()
    }

    /// Every ban in force or not yet swept.
    pub(crate) fn bans(&self) -> Vec<(Subnet, Ban)> {
        self.bans.list()
    }

    /// An address's current ban score.
    pub(crate) fn ban_score(&self, ip: IpAddr, now: Instant) -> u32 {
        self.scores.score(ip, self.unix(now))
    }

    /// Every peer address the registry knows, with its record.
    pub(crate) fn known_peers(&self) -> Vec<(SocketAddr, crate::store::records::PeerRecord)> {
        let mut v: Vec<_> = self
            .registry
            .peers()
            .map(|(a, p)| (*a, p.clone()))
            .collect();
        v.sort_by_key(|(a, _)| *a);
        v
    }

    /// Lifetime statistics of a peer address.
    pub(crate) fn peer_stats(&self, a: &SocketAddr) -> Option<crate::store::records::StoredStats> {
        self.registry.stats(a).cloned()
    }

    /// The embedder closes a connection.
    pub(crate) fn disconnect(&mut self, id: PeerId) -> bool {
        if !self.peers.contains_key(&id) {
            return false;
        }
        self.out
            .push_back(Output::Disconnect(id, DisconnectReason::Requested));
        true
    }

    /// The embedder sends a message itself: its block requests are remembered, so the blocks
    /// reach it and their senders are not scored.
    pub(crate) fn note_embedder_send(&mut self, id: PeerId, msg: &Message, now: Instant) {
        if !self.peers.contains_key(&id) {
            return; // the send will fail: nothing to wait for
        }
        if let Message::GetData(items) = msg {
            for i in items.iter().filter(|i| {
                i.kind == crate::wire::InvType::BLOCK
                    || i.kind == crate::wire::InvType::WITNESS_BLOCK
            }) {
                if self.embedder_blocks.len() >= MAX_EMBEDDER_BLOCKS {
                    self.expire_embedder_requests(now, true);
                }
                self.embedder_blocks.insert(i.hash, (id, now));
                self.embedder_order.push_back((now, i.hash));
            }
        }
    }

    /// The embedder broadcasts a message to every ready peer.
    pub(crate) fn broadcast(&mut self, msg: Message, now: Instant) {
        let ids: Vec<PeerId> = self.ready_peers().map(|(id, _)| *id).collect();
        for id in ids {
            self.note_embedder_send(id, &msg, now);
            self.send(id, msg.clone());
        }
    }

    /// Forgets embedder block requests that timed out (or, with `make_room`, the oldest one).
    fn expire_embedder_requests(&mut self, now: Instant, make_room: bool) {
        let mut room = make_room;
        while let Some(&(at, h)) = self.embedder_order.front() {
            let live = self.embedder_blocks.get(&h).is_some_and(|&(_, t)| t == at);
            if live && !room && now.saturating_duration_since(at) < EMBEDDER_REQUEST_TIMEOUT {
                break;
            }
            self.embedder_order.pop_front();
            if live {
                self.embedder_blocks.remove(&h);
                room = false;
            }
        }
    }

    fn forget_embedder_requests_of(&mut self, id: PeerId) {
        self.embedder_blocks.retain(|_, (p, _)| *p != id);
        if self.embedder_order.len() > 2 * self.embedder_blocks.len() + 64 {
            let live = &self.embedder_blocks;
            self.embedder_order
                .retain(|(at, h)| live.get(h).is_some_and(|&(_, t)| t == *at));
        }
    }

    /// A store commit was acknowledged: everything written with an ack up to `ack` is
    /// committed. Blocks waiting on it are raised and announced.
    pub(crate) fn handle_committed(&mut self, ack: u64, now: Instant) {
        self.settle(now);
        while self.commits.front().is_some_and(|c| c.ack <= ack) {
            let c = self.commits.pop_front().expect("front exists");
            let connected: Vec<Event> = c
                .connected
                .iter()
                .filter_map(|&(height, hash)| self.connected_event(height, hash))
                .collect();
            self.tally.blocks += connected.len() as u64;
            for h in &c.held {
                self.unconfirmed.remove(h);
            }
            if let Some((height, hash)) = c.submitted {
                self.submitted_committed(height, hash, now);
            }
            for e in connected {
                self.emit(e);
            }
            if let Some((height, hash)) = c.connected.last() {
                self.announce_if_tip(*height, *hash);
            }
        }
    }

    /// `BlockConnected` for a block just committed: its header from the tree, its size and
    /// transaction count from where it is held (its bytes' first few, or its file's record).
    fn connected_event(&self, height: u32, hash: Hash256) -> Option<Event> {
        use crate::store::records::{with_block, StoredBlock};
        let Some(header) = self.chain.tree().get(&hash).map(|e| e.header) else {
            log::error!("block {hash} connected without its header in the tree");
            return None;
        };
        let measure = |raw: &[u8]| {
            let count = raw
                .get(crate::wire::block::HEADER_LEN..)
                .and_then(crate::wire::codec::compact_size_at)
                .map_or(0, |(n, _)| n);
            (count, raw.len() as u64)
        };
        let (tx_count, size) = match self.unconfirmed.get(&hash) {
            Some(chain::Held::Bytes(raw)) => measure(raw),
            Some(chain::Held::File(r)) => (r.tx_count, r.size),
            None => with_block(self.store.as_ref(), &hash, |v| {
                match v.map(StoredBlock::parse) {
                    Some(StoredBlock::Inline(raw)) => measure(raw),
                    Some(StoredBlock::File(r)) => (r.tx_count, r.size),
                    None => (0, 0),
                }
            })
            .unwrap_or((0, 0)),
        };
        Some(Event::BlockConnected {
            height,
            hash,
            header,
            tx_count,
            size,
        })
    }

    /// Timers: sync and download deadlines, static re-dials, the outbound target, transaction
    /// announcements, ban expiry, saving the registry and the address book.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.settle(now);
        if now >= self.next_tx_flush {
            self.tx_flush(now);
            self.next_tx_flush = now + self.config.tx_announce_interval;
        }
        if now >= self.next_sync_tick {
            self.mark_stable(now);
            self.redial_statics(now);
            self.fill_outbound(now);
            self.flush_addr_relay(now);
            self.sync_tick(now);
            self.expire_embedder_requests(now, false);
            if !self.waiting_streams.is_empty() {
                self.match_streams(now);
            }
            self.next_sync_tick = now + SYNC_TICK.min(self.config.dial_interval);
        }
        if now >= self.next_persist {
            self.persist(now);
            self.next_persist = now + self.config.persist_interval;
        }
        self.progress_tick(now);
    }

    fn redial_statics(&mut self, now: Instant) {
        let due: Vec<SocketAddr> = self
            .statics
            .iter()
            .filter(|(_, r)| r.at.is_some_and(|t| t <= now))
            .map(|(a, _)| *a)
            .collect();
        for a in due {
            let connected = self.peers.values().any(|p| p.addr == a);
            if connected {
                if let Some(r) = self.statics.get_mut(&a) {
                    r.at = None;
                }
                continue;
            }
            if self.dial(a, now) {
                if let Some(r) = self.statics.get_mut(&a) {
                    r.at = None;
                }
            } else {
                // banned or no outbound slot (`dial` said which): a failed attempt too
                self.schedule_redial(a, now);
            }
        }
    }

    /// Sweeps expired bans and old ban scores, and writes what changed in the registry and the
    /// address book.
    pub(crate) fn persist(&mut self, now: Instant) {
        let unix = self.unix(now);
        let expired = self.bans.expire(unix);
        self.forget_bans(expired);
        self.scores.prune(unix);
        let mut batch = self.registry.take_batch();
        self.book.take_dirty_batch(&mut batch);
        self.write(batch);
    }

    /// Counts of every map the core keeps.
    pub(crate) fn counts(&self) -> CoreCounts {
        CoreCounts {
            peers: self.peers.len(),
            per_ip: self.per_ip.len(),
            inbound: self.inbound,
            outbound: self.outbound,
            dialing: self.dialing.len(),
            embedder_blocks: self.embedder_blocks.len(),
            blocks_in_flight: self.blocks.as_ref().map_or(0, |d| d.in_flight_len()),
            block_buffer: self.buffer.len(),
            unconfirmed: self.unconfirmed.len(),
            pending_commits: self.commits.len(),
            tx: self.txs.entries(),
            registry_live: self.registry.live_len(),
            notices: self.notices.len(),
            headers: self.chain.tree().len(),
            fork_headers: self.fork_headers(),
            presync_peers: self.presync.len(),
            presync_bytes: self.presync.values().map(|p| p.memory()).sum(),
        }
    }

    /// The best header's hash and height.
    pub(crate) fn best_header(&self) -> (Hash256, u32) {
        let (hash, height, _) = self.chain.tree().tip();
        (hash, height)
    }

    /// Checks a store read's outcome.
    fn read_ok<T>(&self, r: Result<T, StoreError>, what: &str) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                log::error!("store read ({what}) failed: {e}");
                None
            }
        }
    }
}

/// What a connection's counters say for its score (ban scores are the core's to add).
fn conn_inputs(rtt: Option<Duration>, ready: bool, s: &PeerStats) -> ScoreInputs {
    ScoreInputs {
        rtt_us: rtt.map_or(0, |r| r.as_micros().max(1) as u64),
        connections: ready as u64,
        // messages other than ping/pong received
        useful_msgs: s
            .by_command
            .iter()
            .filter(|(cmd, _)| !matches!(cmd.as_str(), "ping" | "pong"))
            .map(|(_, s)| s.msgs_in)
            .sum(),
        errors: s.errors,
        ..ScoreInputs::default()
    }
}

fn redial_delay(cfg: &Config, attempt: u32) -> Duration {
    cfg.redial_base
        .saturating_mul(1u32 << attempt.min(16))
        .min(cfg.redial_max)
}

/// A duration for a log line: `0.3 ms`, `50 ms`, `0.4 s`, `8 s`, `12 min`, `2.5 h`.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if d < Duration::from_millis(10) {
        format!("{:.1} ms", s * 1000.0)
    } else if d < Duration::from_millis(100) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_nanos() == 0 && s < 120.0 {
        format!("{} s", d.as_secs())
    } else if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 120.0 {
        format!("{} s", d.as_secs())
    } else if s < 2.0 * 3600.0 {
        format!("{} min", d.as_secs() / 60)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// The highest height from 1 up whose block is stored without a gap.
pub(crate) fn stored_up_to(chain: &ChainDb, store: &dyn Store) -> u32 {
    let tree = chain.tree();
    let mut h = 0;
    while let Some(hash) = tree.hash_at(h + 1) {
        if !crate::store::records::has_block(store, &hash).unwrap_or(false) {
            break;
        }
        h += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    //! Re-dial backoff, driven through the core's inputs on a virtual clock.

    use super::*;
    use crate::network::Network;
    use crate::store::memory::MemoryStore;
    use std::time::SystemTime;

    const UNIX_START: u64 = 1_700_000_000;

    /// A core on a virtual clock, and what it asked to dial.
    struct Harness {
        core: NodeCore,
        now: Instant,
        next_id: u64,
    }

    /// How a connection ends.
    #[derive(Clone, Copy, Debug)]
    enum End {
        /// The TCP connect itself fails.
        DialFailed,
        /// Connected, then reset before any message (as an SV node does to a banned address).
        ResetAtOnce,
        /// The handshake completes, then the peer drops us at once.
        DropAfterHandshake,
    }

    impl Harness {
        fn new(config: Config) -> Harness {
            let now = Instant::now();
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let core = NodeCore::new(config, store, None, now, UNIX_START, 7).expect("core");
            Harness {
                core,
                now,
                next_id: 1,
            }
        }

        /// The dials among the outputs (the rest is dropped).
        fn drain(&mut self) -> Vec<SocketAddr> {
            let mut dials = Vec::new();
            while let Some(o) = self.core.poll_output() {
                if let Output::Dial(a) = o {
                    dials.push(a);
                }
            }
            dials
        }

        /// Runs the core's timers up to `until`; the dials asked for meanwhile.
        fn run_until(&mut self, until: Instant) -> Vec<(Instant, SocketAddr)> {
            let mut dials = Vec::new();
            loop {
                let next = self.core.poll_timeout().max(self.now);
                if next > until {
                    self.now = until;
                    return dials;
                }
                self.now = next;
                self.core.handle_timeout(self.now);
                dials.extend(self.drain().into_iter().map(|a| (self.now, a)));
            }
        }

        /// Runs the timers until the first dial, at most `limit` from now.
        fn next_dial(&mut self, limit: Duration) -> Option<(Instant, SocketAddr)> {
            let until = self.now + limit;
            loop {
                let next = self.core.poll_timeout().max(self.now);
                if next > until {
                    self.now = until;
                    return None;
                }
                self.now = next;
                self.core.handle_timeout(self.now);
                if let Some(a) = self.drain().into_iter().next() {
                    return Some((self.now, a));
                }
            }
        }

        fn input(&mut self, i: PeerInput) {
            self.core.handle_peer(i, self.now);
            let dials = self.drain();
            assert!(dials.is_empty(), "dialled {dials:?} on an input");
        }

        /// The socket of a dial to `addr` is made.
        fn connection(&mut self, addr: SocketAddr) -> PeerId {
            let id = PeerId(self.next_id);
            self.next_id += 1;
            self.input(PeerInput::Connection {
                id,
                addr,
                direction: Direction::Outbound,
            });
            id
        }

        fn ready(&mut self, id: PeerId, addr: SocketAddr) {
            let info = PeerInfo {
                id,
                addr,
                direction: Direction::Outbound,
                ready: true,
                version: 70016,
                services: 1,
                user_agent: "/test/".into(),
                start_height: 0,
                rtt: None,
                connected_since: SystemTime::UNIX_EPOCH,
                their_max_payload: 0,
                queued_bytes: 0,
                stats: PeerStats::default(),
                shard: 0,
                score: 0,
                status: PeerStatus::Unknown,
                association: None,
                stream_policy: "Default",
                streams: Vec::new(),
            };
            let version = VersionMessage {
                version: 70016,
                services: 1,
                timestamp: UNIX_START as i64,
                receiver: crate::wire::NetAddr::new(addr, 0),
                sender: crate::wire::NetAddr::new(addr, 1),
                nonce: 42,
                user_agent: "/test/".into(),
                start_height: 0,
                relay: Some(true),
                extra: Default::default(),
            };
            self.input(PeerInput::Ready {
                info: Box::new(info),
                version: Box::new(version),
            });
        }

        fn disconnected(&mut self, id: PeerId) {
            self.input(PeerInput::Disconnected {
                id,
                reason: DisconnectReason::Closed,
                stats: PeerStats::default(),
                rtt: None,
            });
        }

        /// Carries out a dial to `addr` that ends as `end`, `up` after the handshake.
        fn connect_and_end(&mut self, addr: SocketAddr, end: End, up: Duration) {
            match end {
                End::DialFailed => self.input(PeerInput::DialFailed {
                    addr,
                    reason: "connection refused".into(),
                }),
                End::ResetAtOnce => {
                    let id = self.connection(addr);
                    self.disconnected(id);
                }
                End::DropAfterHandshake => {
                    let id = self.connection(addr);
                    self.ready(id, addr);
                    let until = self.now + up;
                    let dials = self.run_until(until);
                    assert!(dials.is_empty(), "dialled {dials:?} while connected");
                    self.disconnected(id);
                }
            }
        }
    }

    fn test_config() -> Config {
        let mut c = Config::builder(Network::Regtest)
            .build()
            .expect("a valid config");
        c.target_outbound = 0;
        c
    }

    /// Carries out the dial just asked for, ending as `end` after `up` ready; the time from
    /// its end to the next dial.
    fn redial_gap(h: &mut Harness, addr: SocketAddr, end: End, up: Duration) -> Duration {
        h.connect_and_end(addr, end, up);
        let ended = h.now;
        let (at, a) = h.next_dial(Duration::from_secs(7200)).expect("re-dialled");
        assert_eq!(a, addr);
        at - ended
    }

    #[test]
    fn a_static_peer_whose_connections_end_at_once_is_redialled_with_growing_backoff() {
        let addr: SocketAddr = "10.1.2.3:8333".parse().unwrap();
        let mut c = test_config();
        c.connect = vec![addr];
        // the address book learns the address from the handshakes, but leaves it to the
        // static re-dials
        c.allow_local_addrs = true;
        c.target_outbound = 8;
        c.redial_base = Duration::from_secs(1);
        c.redial_max = Duration::from_secs(60);
        let (base, max) = (c.redial_base, c.redial_max);
        let mut h = Harness::new(c);
        let (_, a) = h
            .next_dial(Duration::from_secs(1))
            .expect("dialled at start");
        assert_eq!(a, addr);
        // failures of every kind in a row: the delay after each doubles up to the cap
        let ends = [End::ResetAtOnce, End::DropAfterHandshake, End::DialFailed];
        let mut gaps = Vec::new();
        for k in 0..10u32 {
            let end = ends[k as usize % ends.len()];
            let gap = redial_gap(&mut h, addr, end, Duration::ZERO);
            gaps.push(gap);
            let want = (base * (1 << k)).min(max);
            assert!(
                gap >= want && gap <= want + 2 * SYNC_TICK,
                "after failure {k} ({end:?}) re-dialled in {gap:?}, want {want:?}; gaps {gaps:?}"
            );
        }
        // a connection that ends well before `redial_max` is still a failure
        let gap = redial_gap(&mut h, addr, End::DropAfterHandshake, max / 2);
        assert!(gap >= max, "{gap:?}");
        // one that stayed up for `redial_max`: the backoff starts over
        let gap = redial_gap(&mut h, addr, End::DropAfterHandshake, max);
        assert!(gap >= base && gap <= base + 2 * SYNC_TICK, "{gap:?}");
        let gap = redial_gap(&mut h, addr, End::ResetAtOnce, Duration::ZERO);
        assert!(
            gap >= 2 * base && gap <= 2 * base + 2 * SYNC_TICK,
            "{gap:?}"
        );
        let gap = redial_gap(&mut h, addr, End::DropAfterHandshake, Duration::ZERO);
        assert!(
            gap >= 4 * base && gap <= 4 * base + 2 * SYNC_TICK,
            "{gap:?}"
        );
    }

    #[test]
    fn durations_read_well_in_log_lines() {
        let ms = Duration::from_millis;
        assert_eq!(human_duration(Duration::ZERO), "0.0 ms");
        assert_eq!(human_duration(Duration::from_micros(250)), "0.2 ms");
        assert_eq!(human_duration(ms(3)), "3.0 ms");
        assert_eq!(human_duration(ms(50)), "50 ms");
        assert_eq!(human_duration(ms(400)), "0.4 s");
        assert_eq!(human_duration(ms(8000)), "8 s");
        assert_eq!(human_duration(ms(8250)), "8.2 s");
        assert_eq!(human_duration(ms(61_500)), "61 s");
        assert_eq!(human_duration(Duration::from_secs(720)), "12 min");
        assert_eq!(human_duration(Duration::from_secs(9000)), "2.5 h");
    }

    #[test]
    fn an_address_book_address_that_keeps_dropping_us_is_backed_off() {
        let addr: SocketAddr = "10.1.2.3:8333".parse().unwrap();
        let mut c = test_config();
        c.allow_local_addrs = true;
        c.target_outbound = 1;
        let max = c.redial_max;
        let mut h = Harness::new(c);
        h.core.add_seeds(&[addr], h.now);
        let (_, a) = h
            .next_dial(Duration::from_secs(1))
            .expect("dialled from the book");
        assert_eq!(a, addr);
        // the address book's retry delay: 60 s after an attempt, doubling per attempt since the
        // last success (unix seconds: a second either way)
        let ends = [End::DropAfterHandshake, End::ResetAtOnce];
        let mut gaps = Vec::new();
        for k in 0..6u32 {
            let end = ends[k as usize % ends.len()];
            let gap = redial_gap(&mut h, addr, end, Duration::ZERO);
            gaps.push(gap);
            let want = Duration::from_secs(crate::fsm::addrbook::BACKOFF_BASE << k);
            assert!(
                gap + Duration::from_secs(1) >= want && gap <= want + Duration::from_secs(2),
                "after failure {k} ({end:?}) re-dialled in {gap:?}, want {want:?}; gaps {gaps:?}"
            );
        }
        // a connection that stayed up for `redial_max` is a success: dialled again at once
        let gap = redial_gap(&mut h, addr, End::DropAfterHandshake, max);
        assert!(gap <= 2 * SYNC_TICK, "{gap:?}");
    }

    #[test]
    fn an_outbound_connection_is_marked_stable_by_the_timer_once_up_long_enough() {
        let addr: SocketAddr = "10.1.2.3:8333".parse().unwrap();
        let mut c = test_config();
        c.connect = vec![addr];
        c.redial_max = Duration::from_secs(60);
        let mut h = Harness::new(c);
        let (_, a) = h.next_dial(Duration::from_secs(1)).expect("dialled");
        assert_eq!(a, addr);
        assert_eq!(h.core.next_stable, None);
        let id = h.connection(addr);
        h.ready(id, addr);
        let up = h.now;
        // the timer looks at the peers only from then on
        assert_eq!(h.core.next_stable, Some(up + Duration::from_secs(60)));
        assert!(h.run_until(up + Duration::from_secs(59)).is_empty());
        assert!(!h.core.peers[&id].stable);
        assert!(h.run_until(up + Duration::from_secs(61)).is_empty());
        assert!(h.core.peers[&id].stable);
        assert_eq!(h.core.next_stable, None);
    }

    #[test]
    fn with_no_wait_a_connection_is_stable_at_the_next_tick() {
        let addr: SocketAddr = "10.1.2.3:8333".parse().unwrap();
        let mut c = test_config();
        c.connect = vec![addr];
        c.redial_max = Duration::ZERO;
        let mut h = Harness::new(c);
        h.next_dial(Duration::from_secs(1)).expect("dialled");
        let id = h.connection(addr);
        h.ready(id, addr);
        assert!(h.run_until(h.now + 2 * SYNC_TICK).is_empty());
        assert!(h.core.peers[&id].stable);
    }

    #[test]
    fn relayed_addresses_go_out_on_their_turn_and_the_timer_looks_only_then() {
        use crate::wire::{NetAddr, TimedNetAddr};
        let mut h = Harness::new(test_config());
        let ids: Vec<PeerId> = (1..=3)
            .map(|i| {
                let a: SocketAddr = format!("10.0.0.{i}:8333").parse().unwrap();
                let id = h.connection(a);
                h.ready(id, a);
                id
            })
            .collect();
        assert_eq!(h.core.next_addr_relay, None);
        let news = TimedNetAddr {
            time: UNIX_START as u32,
            addr: NetAddr::new("11.1.1.1:8333".parse().unwrap(), 1),
        };
        h.input(PeerInput::Message {
            id: ids[0],
            message: Message::Addr(vec![news]),
        });
        // queued for the two others, whose first turn is now
        let queued: Vec<PeerId> = h
            .core
            .peers
            .iter()
            .filter(|(_, p)| !p.addr_queue.is_empty())
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(queued, ids[1..].to_vec());
        assert_eq!(h.core.next_addr_relay, Some(h.now));
        let mut sent = Vec::new();
        let until = h.now + 2 * SYNC_TICK;
        while h.core.poll_timeout().max(h.now) <= until {
            h.now = h.core.poll_timeout().max(h.now);
            h.core.handle_timeout(h.now);
            while let Some(o) = h.core.poll_output() {
                if let Output::Send(id, Message::Addr(list)) = o {
                    sent.push((id, list));
                }
            }
        }
        assert_eq!(
            sent,
            vec![(ids[1], vec![news]), (ids[2], vec![news])],
            "one addr each"
        );
        assert_eq!(h.core.next_addr_relay, None);
        // more news for one peer waits for its next turn, which the index knows
        let later = TimedNetAddr {
            time: UNIX_START as u32,
            addr: NetAddr::new("11.1.1.2:8333".parse().unwrap(), 1),
        };
        h.input(PeerInput::Message {
            id: ids[0],
            message: Message::Addr(vec![later]),
        });
        let turn = h
            .core
            .peers
            .values()
            .filter(|p| !p.addr_queue.is_empty())
            .map(|p| p.next_addr_send)
            .min();
        assert!(turn.is_some_and(|t| t > h.now));
        assert_eq!(h.core.next_addr_relay, turn);
    }
}
