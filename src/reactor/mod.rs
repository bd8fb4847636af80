//! The event loop of one shard: a `mio::Poll` that owns a share of the peer sockets. It reads
//! bytes into each connection's protocol state machine ([`crate::fsm::peer::PeerProtocol`]:
//! framing, checksums, handshake, keepalive, rate limits), writes what the machine answers, and
//! hands everything that spans peers to the node core ([`crate::node`]) over one bounded
//! channel. When that channel is full the shard stops reading its sockets until the core has
//! caught up: nothing is dropped and nothing piles up. Commands (send, dial, disconnect) come
//! back over the shard's own channel and a `Waker`.
//!
//! The shard knows nothing of other shards' connections, bans or sync: its whole view of the
//! engine is a [`ShardContext`].

use crate::config::Config;
use crate::error::SendError;
use crate::event::{PeerInfo, StreamInfo};
use crate::fsm::peer::{PeerOutput, PeerProtocol, PeerSettings, StreamPolicy};
use crate::fsm::{Direction, DisconnectReason, PeerId};
use crate::node::PeerInput;
use crate::wire::frame::encode_message;
use crate::wire::{stream_type, AssociationId, CreateStream, Message, NetAddr, VersionMessage};
use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Token of the shard's waker.
pub const WAKER: Token = Token(usize::MAX);
/// Token of the shard's listener.
pub const LISTENER: Token = Token(usize::MAX - 1);

/// Size of the per-shard read scratch buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one connection before the others get their turn.
const READ_BUDGET: usize = 256 * 1024;
/// Most buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// Bits of a [`PeerId`] that name the shard owning the connection.
pub(crate) const SHARD_BITS: u32 = 10;

/// The shard that owns a connection.
pub(crate) fn shard_of(id: PeerId) -> usize {
    (id.0 & ((1 << SHARD_BITS) - 1)) as usize
}

/// What the core, the API and the other shards ask a shard to do.
pub(crate) enum ShardCmd {
    /// Dial a peer (its outbound slot is taken).
    Dial(SocketAddr),
    /// Take over an accepted socket (when one shard accepts for all).
    Adopt(std::net::TcpStream, SocketAddr),
    /// Close a connection.
    Disconnect(PeerId, DisconnectReason),
    /// Send a message to one peer; the outcome goes back on the channel if one is given.
    Send(PeerId, Message, Option<Sender<Result<(), SendError>>>),
    /// Report every connection.
    Peers(Sender<Vec<PeerInfo>>),
    /// Report the shard's metrics.
    Metrics(Sender<crate::metrics::ShardMetrics>),
    /// Connection `from` joins `owner`'s association as a stream (the core agreed): moved to
    /// the owner's shard if that is another one.
    JoinStream {
        from: PeerId,
        owner: PeerId,
        stream_type: u8,
        policy: String,
    },
    /// A socket (and what was read from it) that joins `owner`'s association, from another
    /// shard.
    AttachStream {
        socket: std::net::TcpStream,
        addr: SocketAddr,
        buffered: BytesMut,
        owner: PeerId,
        stream_type: u8,
        policy: String,
    },
    /// Refuse a connection's `createstrm`.
    RefuseStream(PeerId, String),
    /// Tell the core when what is queued to a peer has gone out (down to the resume mark).
    NotifyDrained(PeerId),
    /// Send a stored block from its file.
    SendBlockFile(
        PeerId,
        crate::wire::Hash256,
        crate::store::files::BlockFileRef,
    ),
    /// Close everything and end the loop.
    Stop,
}

/// A shard's whole view of the engine.
pub(crate) struct ShardContext {
    /// This shard's index.
    pub index: usize,
    /// The configuration (read only).
    pub config: Arc<Config>,
    /// Per-connection protocol settings.
    pub settings: PeerSettings,
    /// To the node core (bounded).
    pub core: Sender<PeerInput>,
    /// The height announced in our `version` (set by the core's driver).
    pub start_height: Arc<AtomicI32>,
    /// Key that makes our version nonces recognisable (self-connection detection without a
    /// shared set of nonces).
    pub nonce_key: u64,
    /// Every shard's command channel and waker (accepted sockets and streams are handed over).
    pub siblings: Vec<(Sender<ShardCmd>, Arc<Waker>)>,
    /// This shard's listener accepts for all shards (no SO_REUSEPORT).
    pub accept_for_all: bool,
}

/// What a connection is to its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A peer's first connection (its GENERAL stream), the one the core knows.
    Primary {
        /// Its joined DATA1 stream.
        data1: Option<usize>,
        /// A DATA1 stream we opened that is not acknowledged yet.
        opening: Option<usize>,
        /// How messages are spread over the streams.
        policy: StreamPolicy,
    },
    /// A further stream of the peer whose first connection is `owner` (same shard).
    Stream {
        owner: usize,
        kind: u8,
        acked: bool,
        policy: StreamPolicy,
    },
}

/// What waits to go out on a connection.
#[derive(Debug)]
enum Outgoing {
    /// Bytes.
    Mem(Bytes),
    /// `left` bytes of a block file from `offset`, read a piece at a time as the socket
    /// takes them.
    File {
        file: std::fs::File,
        offset: u64,
        left: u64,
    },
}

impl Outgoing {
    fn len(&self) -> usize {
        match self {
            Outgoing::Mem(b) => b.len(),
            Outgoing::File { left, .. } => usize::try_from(*left).unwrap_or(usize::MAX),
        }
    }
}

/// The message checksum of a block file's bytes (one pass over it).
fn file_checksum(f: &std::fs::File, size: u64) -> io::Result<[u8; 4]> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; FILE_PIECE];
    let mut offset = 0;
    while offset < size {
        let n = crate::store::files::read_at(f, offset, &mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "block file ended early",
            ));
        }
        h.update(&buf[..n]);
        offset += n as u64;
    }
    let d = Sha256::digest(h.finalize());
    Ok([d[0], d[1], d[2], d[3]])
}

/// Bytes of a block file read for one write.
const FILE_PIECE: usize = 1 << 20;

/// How long a shard waits to hand a stream to a sibling whose channel is full.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);

/// A version nonce that we can recognise later: its low half is a keyed mix of its high half.
pub(crate) fn make_nonce(key: u64, random: u64) -> u64 {
    let high = random & 0xffff_ffff_0000_0000;
    high | (nonce_mac(key, high >> 32) & 0xffff_ffff)
}

/// Whether a nonce is one of ours (a random nonce passes with probability 2^-32).
pub(crate) fn is_own_nonce(key: u64, n: u64) -> bool {
    n & 0xffff_ffff == nonce_mac(key, n >> 32) & 0xffff_ffff
}

fn nonce_mac(key: u64, x: u64) -> u64 {
    // splitmix64 of the key and the value: cheap, and unpredictable without the key
    let mut z = key ^ x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How often fresh counters of busy connections go to the core.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How long a stopping shard waits for the core to take its last reports.
const STOP_SEND_TIMEOUT: Duration = Duration::from_secs(5);

struct Conn {
    id: PeerId,
    addr: SocketAddr,
    stream: TcpStream,
    proto: PeerProtocol,
    connecting: Option<Instant>,
    queue: VecDeque<Outgoing>,
    queued: usize,
    /// Reused for the pieces of block files being sent.
    file_buf: BytesMut,
    /// Bytes of `queued` still in block files (not in memory).
    in_files: usize,
    /// Bytes of `queue[0]` already written.
    head_written: usize,
    since: SystemTime,
    /// Messages in and out when the core last got this connection's counters.
    reported: u64,
    /// In the `pending` list already.
    pending: bool,
    /// Not read while its send queue is over `read_pause_bytes`.
    paused: bool,
    role: Role,
    /// Its association, once agreed in the handshake.
    assoc: Option<AssociationId>,
    /// Sent `createstrm` as its first message: not read until the core decides.
    joining: bool,
    /// The core waits to hear that what is queued to this peer went out.
    notify_drained: bool,
    bytes_in: u64,
    bytes_out: u64,
}

/// A shard's event loop.
pub(crate) struct Shard {
    index: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    by_id: HashMap<PeerId, usize>,
    rx: Receiver<ShardCmd>,
    ctx: ShardContext,
    scratch: Vec<u8>,
    out: Vec<PeerOutput>,
    accepted: usize,
    next_id: u64,
    /// Reports the core's full channel did not take yet, in order; while any wait, no socket
    /// is read.
    backlog: VecDeque<PeerInput>,
    last_stats: Instant,
    /// Ping round trips measured.
    ping: crate::metrics::Histogram,
    /// An accept failed (e.g. out of descriptors): try again at the next tick.
    accept_retry: bool,
    /// Connections that used up their read budget: read again on the next turn.
    pending: Vec<(usize, PeerId)>,
    /// Connections over their rate limit: not read until the time given.
    throttled: Vec<(Instant, usize, PeerId)>,
    stopping: bool,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Shard {
    /// A shard with its poller; `listener` is this shard's listening socket, if it has one.
    pub(crate) fn new(
        poll: Poll,
        listener: Option<std::net::TcpListener>,
        rx: Receiver<ShardCmd>,
        ctx: ShardContext,
    ) -> io::Result<Shard> {
        let index = ctx.index;
        let listener = match listener {
            Some(l) => {
                l.set_nonblocking(true)?;
                let mut l = TcpListener::from_std(l);
                poll.registry()
                    .register(&mut l, LISTENER, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        Ok(Shard {
            index,
            poll,
            listener,
            conns: Slab::new(),
            by_id: HashMap::new(),
            rx,
            ctx,
            scratch: vec![0; READ_CHUNK],
            out: Vec::new(),
            accepted: 0,
            next_id: 1,
            backlog: VecDeque::new(),
            last_stats: Instant::now(),
            ping: crate::metrics::Histogram::new(crate::metrics::PING_BUCKETS),
            accept_retry: false,
            pending: Vec::new(),
            throttled: Vec::new(),
            stopping: false,
        })
    }

    /// Makes a waker for this shard's poller.
    pub(crate) fn waker(poll: &Poll) -> io::Result<Waker> {
        Waker::new(poll.registry(), WAKER)
    }

    /// Runs until told to stop.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let tick = self.ctx.config.tick;
        let mut last_tick = Instant::now();
        while !self.stopping {
            let mut timeout = tick.saturating_sub(last_tick.elapsed());
            if !self.backlog.is_empty() {
                // the core is behind: look again soon, read nothing meanwhile
                timeout = timeout.min(Duration::from_millis(1));
            } else if !self.pending.is_empty() {
                timeout = Duration::ZERO;
            } else if let Some(t) = self.throttled.iter().map(|(t, _, _)| *t).min() {
                timeout = timeout.min(t.saturating_duration_since(Instant::now()));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("shard {}: poll failed: {e}", self.index);
                    break;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(k) => self.conn_event(
                        k,
                        ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                        ev.is_writable(),
                    ),
                }
            }
            self.commands();
            self.drain_backlog();
            if self.backlog.is_empty() && (!self.pending.is_empty() || !self.throttled.is_empty()) {
                self.resume_reads(Instant::now());
            }
            if last_tick.elapsed() >= tick {
                last_tick = Instant::now();
                self.tick(last_tick);
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.close(k, DisconnectReason::Shutdown);
        }
        // The core is still running while shards stop: its last reports must reach it.
        while let Some(input) = self.backlog.pop_front() {
            match self.ctx.core.send_timeout(input, STOP_SEND_TIMEOUT) {
                Ok(()) => {}
                Err(SendTimeoutError::Timeout(_)) => {
                    log::error!(
                        "shard {}: the core took no report for {STOP_SEND_TIMEOUT:?} at stop",
                        self.index
                    );
                    break;
                }
                Err(SendTimeoutError::Disconnected(_)) => break,
            }
        }
    }

    /// Hands a report to the core, in order; when its channel is full the report waits here
    /// and the shard reads no socket until the core has taken it.
    fn report(&mut self, input: PeerInput) {
        self.backlog.push_back(input);
        self.drain_backlog();
    }

    /// Hands the core what waits, in order, as far as its channel takes it.
    fn drain_backlog(&mut self) {
        while let Some(input) = self.backlog.pop_front() {
            match self.ctx.core.try_send(input) {
                Ok(()) => {}
                Err(TrySendError::Full(input)) => {
                    self.backlog.push_front(input);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    // the core is gone (the engine is stopping or failed): nothing to serve
                    if !self.stopping {
                        log::error!("shard {}: the node core is gone; stopping", self.index);
                    }
                    self.backlog.clear();
                    self.stopping = true;
                    return;
                }
            }
        }
    }

    /// Whether reading must wait for the core.
    fn blocked(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Reads `key` again on a later turn.
    fn defer_read(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.pending {
                c.pending = true;
                self.pending.push((key, c.id));
            }
        }
    }

    fn commands(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                ShardCmd::Dial(addr) => self.dial(addr),
                ShardCmd::Adopt(s, addr) => self.adopt(s, addr),
                ShardCmd::Disconnect(id, reason) => {
                    if let Some(&k) = self.by_id.get(&id) {
                        self.close(k, reason);
                    }
                }
                ShardCmd::Send(id, msg, reply) => {
                    let r = match self.by_id.get(&id) {
                        Some(&k) => self.send_checked(k, msg),
                        None => Err(SendError::NoSuchPeer(id)),
                    };
                    if let Some(reply) = reply {
                        let _ = reply.send(r);
                    }
                }
                ShardCmd::Peers(reply) => {
                    let _ = reply.send(
                        self.conns
                            .iter()
                            .filter(|(_, c)| matches!(c.role, Role::Primary { .. }))
                            .map(|(_, c)| self.info(c))
                            .collect(),
                    );
                }
                ShardCmd::Metrics(reply) => {
                    let _ = reply.send(crate::metrics::ShardMetrics {
                        shard: self.index,
                        connections: self.conns.len(),
                        send_queue_bytes: self.conns.iter().map(|(_, c)| c.queued as u64).sum(),
                        backlog: self.backlog.len(),
                        commands_queued: self.rx.len(),
                        ping: self.ping.clone(),
                    });
                }
                ShardCmd::JoinStream {
                    from,
                    owner,
                    stream_type,
                    policy,
                } => self.join_stream(from, owner, stream_type, policy),
                ShardCmd::AttachStream {
                    socket,
                    addr,
                    buffered,
                    owner,
                    stream_type,
                    policy,
                } => {
                    if socket.set_nonblocking(true).is_ok() {
                        let s = TcpStream::from_std(socket);
                        self.attach_stream(s, addr, buffered, owner, stream_type, policy);
                    }
                }
                ShardCmd::RefuseStream(id, why) => {
                    if let Some(&k) = self.by_id.get(&id) {
                        self.refuse_stream(k, why);
                    }
                }
                ShardCmd::SendBlockFile(id, hash, r) => {
                    if let Some(&k) = self.by_id.get(&id) {
                        self.send_block_file(k, hash, r);
                    }
                }
                ShardCmd::NotifyDrained(id) => {
                    if let Some(&k) = self.by_id.get(&id) {
                        self.conns[k].notify_drained = true;
                        self.check_drained(k);
                    }
                }
                ShardCmd::Stop => self.stopping = true,
            }
        }
    }

    fn info(&self, c: &Conn) -> PeerInfo {
        let v = c.proto.version();
        PeerInfo {
            id: c.id,
            addr: c.addr,
            direction: c.proto.direction(),
            ready: c.proto.is_ready(),
            version: v.map(|v| v.version).unwrap_or(0),
            services: v.map(|v| v.services).unwrap_or(0),
            user_agent: v.map(|v| v.user_agent.clone()).unwrap_or_default(),
            start_height: v.map(|v| v.start_height).unwrap_or(0),
            rtt: c.proto.rtt(),
            connected_since: c.since,
            their_max_payload: c.proto.their_max_payload(),
            queued_bytes: c.queued,
            stats: c.proto.stats.clone(),
            shard: self.index,
            // scored by the core (it knows ban scores) before anyone sees these
            score: 0,
            status: crate::store::records::PeerStatus::Unknown,
            association: c.assoc,
            stream_policy: match c.role {
                Role::Primary { policy, .. } | Role::Stream { policy, .. } => policy.name(),
            },
            streams: self.streams_of(c),
        }
    }

    fn streams_of(&self, c: &Conn) -> Vec<StreamInfo> {
        let mut v = vec![StreamInfo {
            kind: stream_type::name(stream_type::GENERAL),
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
        }];
        if let Role::Primary { data1: Some(k), .. } = c.role {
            if let Some(s) = self.conns.get(k) {
                let kind = match s.role {
                    Role::Stream { kind, .. } => kind,
                    Role::Primary { .. } => stream_type::UNKNOWN,
                };
                v.push(StreamInfo {
                    kind: stream_type::name(kind),
                    bytes_in: s.bytes_in,
                    bytes_out: s.bytes_out,
                });
            }
        }
        v
    }

    fn our_version(&self, peer: SocketAddr, nonce: u64) -> VersionMessage {
        let cfg = &self.ctx.config;
        let local = cfg
            .listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        VersionMessage {
            version: crate::config::PROTOCOL_VERSION,
            services: cfg.services,
            timestamp: unix_now(),
            receiver: NetAddr::new(peer, 0),
            sender: NetAddr::new(local, cfg.services),
            nonce,
            user_agent: cfg.user_agent.clone(),
            start_height: self.ctx.start_height.load(Ordering::Relaxed),
            relay: Some(cfg.relay),
            extra: Bytes::new(),
        }
    }

    /// Registers a socket with the poller and puts its connection in the slab; its key.
    fn insert_conn(
        &mut self,
        mut stream: TcpStream,
        id: PeerId,
        addr: SocketAddr,
        proto: PeerProtocol,
        connecting: bool,
        role: Role,
    ) -> io::Result<usize> {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Conn {
            id,
            addr,
            stream,
            proto,
            connecting: connecting.then(|| Instant::now() + self.ctx.config.connect_timeout),
            queue: VecDeque::new(),
            queued: 0,
            file_buf: BytesMut::new(),
            in_files: 0,
            head_written: 0,
            since: SystemTime::now(),
            reported: 0,
            pending: false,
            paused: false,
            role,
            assoc: None,
            joining: false,
            notify_drained: false,
            bytes_in: 0,
            bytes_out: 0,
        });
        Ok(key)
    }

    fn register(
        &mut self,
        stream: TcpStream,
        addr: SocketAddr,
        direction: Direction,
        connecting: bool,
    ) {
        let now = Instant::now();
        let id = PeerId((self.next_id << SHARD_BITS) | self.index as u64);
        self.next_id += 1;
        let nonce = make_nonce(self.ctx.nonce_key, crate::util::random_u64());
        let mut ours = self.our_version(addr, nonce);
        if direction == Direction::Outbound && self.ctx.settings.multistreams {
            // as the SV node: the side that dials names the association
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&crate::util::random_u64().to_le_bytes());
            id[8..].copy_from_slice(&crate::util::random_u64().to_le_bytes());
            id[6] = (id[6] & 0x0f) | 0x40; // a version 4 (random) UUID
            id[8] = (id[8] & 0x3f) | 0x80;
            ours.set_association_id(Some(AssociationId(id)));
        }
        let proto = PeerProtocol::new(direction, &self.ctx.settings, ours, now);
        let role = Role::Primary {
            data1: None,
            opening: None,
            policy: StreamPolicy::Default,
        };
        let key = match self.insert_conn(stream, id, addr, proto, connecting, role) {
            Ok(k) => k,
            Err(e) => {
                log::warn!("shard {}: cannot register {addr}: {e}", self.index);
                if direction == Direction::Outbound {
                    self.report(PeerInput::DialFailed {
                        addr,
                        reason: e.to_string(),
                    });
                }
                return;
            }
        };
        self.by_id.insert(id, key);
        // The core hears of the connection before anything else about it.
        self.report(PeerInput::Connection {
            id,
            addr,
            direction,
        });
        if !connecting {
            self.start_protocol(key);
        }
    }

    fn dial(&mut self, addr: SocketAddr) {
        match connect_from(addr, self.ctx.config.outbound_bind) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                self.register(s, addr, Direction::Outbound, true);
            }
            Err(e) => {
                // the core logs it (with the re-dial, for a static peer)
                log::debug!("shard {}: connect to {addr} failed: {e}", self.index);
                self.report(PeerInput::DialFailed {
                    addr,
                    reason: e.to_string(),
                });
            }
        }
    }

    fn adopt(&mut self, s: std::net::TcpStream, addr: SocketAddr) {
        if s.set_nonblocking(true).is_err() {
            return;
        }
        let _ = s.set_nodelay(true);
        self.register(TcpStream::from_std(s), addr, Direction::Inbound, false);
    }

    fn accept(&mut self) {
        self.accept_retry = false;
        loop {
            let Some(l) = self.listener.as_ref() else {
                return;
            };
            match l.accept() {
                Ok((s, addr)) => {
                    // The core admits or refuses (bans, limits, eviction) as it hears of it.
                    let n = self.ctx.siblings.len();
                    let target = if self.ctx.accept_for_all && n > 1 {
                        self.accepted += 1;
                        self.accepted % n
                    } else {
                        self.index
                    };
                    if target == self.index {
                        let _ = s.set_nodelay(true);
                        self.register(s, addr, Direction::Inbound, false);
                    } else {
                        // One listener for all shards: hand the socket over.
                        let std: std::net::TcpStream = std::net::TcpStream::from(s);
                        let (tx, waker) = &self.ctx.siblings[target];
                        if tx.send(ShardCmd::Adopt(std, addr)).is_ok() {
                            let _ = waker.wake();
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends. The listener is edge-triggered: without a retry it
                    // would never report the waiting connections again. Retry on the next tick
                    // instead of spinning now.
                    if !self.accept_retry {
                        log::warn!(
                            "shard {}: accept failed: {e}; retrying every tick",
                            self.index
                        );
                    }
                    self.accept_retry = true;
                    return;
                }
            }
        }
    }

    fn start_protocol(&mut self, key: usize) {
        let mut out = std::mem::take(&mut self.out);
        if let Some(c) = self.conns.get_mut(key) {
            c.proto.start(&mut out);
        }
        self.apply(key, &mut out);
        self.out = out;
    }

    fn conn_event(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.connecting.is_some() {
            if !(writable || readable) {
                return;
            }
            match c.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    return self.close(key, DisconnectReason::ConnectFailed(e.to_string()))
                }
            }
            match c.stream.peer_addr() {
                Ok(_) => {
                    c.connecting = None;
                    self.start_protocol(key);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.close(key, DisconnectReason::ConnectFailed(e.to_string())),
            }
        }
        if writable {
            if let Err(r) = self.flush(key) {
                return self.close(key, r);
            }
        }
        if readable {
            self.read(key);
        }
    }

    /// Runs the protocol over what the read buffer holds; false when the connection closed.
    fn process(&mut self, key: usize, now: Instant) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        let key_n = self.ctx.nonce_key;
        let mut out = std::mem::take(&mut self.out);
        let r = c
            .proto
            .on_data(now, &|nonce| is_own_nonce(key_n, nonce), &mut out);
        self.apply(key, &mut out);
        self.out = out;
        if let Err(reason) = r {
            self.close(key, reason);
            return false;
        }
        self.conns.contains(key)
    }

    /// Whether the connection is throttled; if so it is parked until its time comes.
    fn park_if_throttled(&mut self, key: usize, now: Instant) -> bool {
        let Some(c) = self.conns.get(key) else {
            return true;
        };
        match c.proto.throttled_until() {
            Some(t) if t > now => {
                if !self
                    .throttled
                    .iter()
                    .any(|(_, k, id)| *k == key && *id == c.id)
                {
                    self.throttled.push((t, key, c.id));
                }
                true
            }
            _ => false,
        }
    }

    fn read_pause_bytes(&self) -> usize {
        let cfg = &self.ctx.config;
        cfg.read_pause_bytes.min(cfg.max_send_queue)
    }

    /// The connections of `key`'s peer (its first connection and its streams) and the bytes
    /// queued to them all.
    fn peer_conns(&self, key: usize) -> ([Option<usize>; 3], usize) {
        let owner = match self.conns.get(key).map(|c| c.role) {
            Some(Role::Stream { owner, .. }) => owner,
            _ => key,
        };
        let keys = match self.conns.get(owner).map(|c| c.role) {
            Some(Role::Primary { data1, opening, .. }) => [Some(owner), data1, opening],
            _ => [Some(key), None, None],
        };
        let queued = keys
            .iter()
            .flatten()
            .filter_map(|k| self.conns.get(*k))
            .map(|c| c.queued)
            .sum();
        (keys, queued)
    }

    /// Whether what is queued to `key`'s peer (over all its streams: blocks asked for on one
    /// go out on another) is over the pause mark; if so it is not read until `flush` has
    /// brought it down to half of it.
    fn pause_for_send(&mut self, key: usize) -> bool {
        let limit = self.read_pause_bytes();
        let (_, queued) = self.peer_conns(key);
        match self.conns.get_mut(key) {
            Some(c) if queued > limit => {
                c.paused = true;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    fn read(&mut self, key: usize) {
        let now = Instant::now();
        if self.conns.get(key).is_none_or(|c| c.joining) {
            return; // its createstrm waits for the core's answer
        }
        if self.blocked() {
            return self.defer_read(key);
        }
        if self.pause_for_send(key) {
            return;
        }
        if self.park_if_throttled(key, now) {
            return;
        }
        // Frames left in the buffer by an earlier throttle or budget come first.
        if self.conns.get(key).is_some_and(|c| c.proto.has_buffered())
            && (!self.process(key, now) || self.park_if_throttled(key, now))
        {
            return;
        }
        let mut budget = READ_BUDGET;
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            match c.stream.read(&mut self.scratch) {
                Ok(0) => return self.close(key, DisconnectReason::Closed),
                Ok(n) => {
                    c.bytes_in += n as u64;
                    c.proto.read_buffer().extend_from_slice(&self.scratch[..n]);
                    if !self.process(key, now) || self.park_if_throttled(key, now) {
                        return;
                    }
                    if self.blocked() {
                        // the core is behind: the rest stays in the socket for now
                        return self.defer_read(key);
                    }
                    if self.pause_for_send(key) {
                        return;
                    }
                    if n < self.scratch.len() {
                        // A short read took everything the socket held; data arriving later
                        // raises a new edge (as tokio also relies on), so skip the extra read
                        // that would only return WouldBlock: one syscall less per message.
                        break;
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        // Fairness: a busy peer gets another turn after the others.
                        return self.defer_read(key);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.close(key, DisconnectReason::Io(e.to_string())),
            }
        }
        if let Some(c) = self.conns.get_mut(key) {
            c.proto.shrink();
        }
    }

    /// Gives the connections that used up their read budget or finished their throttle another
    /// turn.
    fn resume_reads(&mut self, now: Instant) {
        let pending = std::mem::take(&mut self.pending);
        for (key, id) in pending {
            if let Some(c) = self.conns.get_mut(key).filter(|c| c.id == id) {
                c.pending = false;
                self.read(key);
            }
        }
        if self.throttled.iter().any(|(t, _, _)| *t <= now) {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.throttled)
                .into_iter()
                .partition(|(t, _, _)| *t <= now);
            self.throttled = later;
            for (_, key, id) in due {
                if self.conns.get(key).is_some_and(|c| c.id == id) {
                    self.read(key);
                }
            }
        }
    }

    /// Carries out what the protocol asked for. A peer's messages go out on the stream its
    /// policy names; what a further stream receives is handled by its peer's first connection.
    fn apply(&mut self, key: usize, out: &mut Vec<PeerOutput>) {
        if out.is_empty() {
            return;
        }
        let mut own = BytesMut::new();
        let mut data1 = BytesMut::new();
        let mut data1_key = None;
        // frames in order per connection: small ones copied together, big payloads as they are
        let mut pieces: Vec<(usize, Bytes)> = Vec::new();
        let mut to_owner = Vec::new();
        let mut later = Vec::new();
        for o in out.drain(..) {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            match o {
                PeerOutput::Send(m) => {
                    let route = match c.role {
                        Role::Primary {
                            data1: Some(k),
                            policy,
                            ..
                        } if policy.on_data1(m.command()) => Some(k),
                        _ => None,
                    };
                    let (buf, dest) = match route {
                        Some(k) => {
                            data1_key = route;
                            (&mut data1, k)
                        }
                        None => (&mut own, key),
                    };
                    let magic = self.ctx.settings.magic;
                    if let Some((h, payload)) = crate::wire::frame::frame_parts(magic, &m) {
                        c.proto
                            .stats
                            .record_out(m.command(), h.len() + payload.len());
                        if !buf.is_empty() {
                            pieces.push((dest, buf.split().freeze()));
                        }
                        pieces.push((dest, h));
                        pieces.push((dest, payload));
                    } else {
                        let before = buf.len();
                        encode_message(buf, magic, &m);
                        c.proto.stats.record_out(m.command(), buf.len() - before);
                    }
                }
                PeerOutput::Connected(version) => {
                    c.assoc = c.proto.association();
                    let info = Box::new(self.info(&self.conns[key]));
                    self.report(PeerInput::Ready { info, version });
                }
                PeerOutput::Deliver(message) => match c.role {
                    Role::Stream { .. } => to_owner.push(message),
                    Role::Primary { .. } => {
                        let id = c.id;
                        self.report(PeerInput::Message { id, message })
                    }
                },
                PeerOutput::BlockFile(summary, file) => {
                    // (a block that came on a further stream is its peer's)
                    let owner = match c.role {
                        Role::Stream { owner, .. } => self.conns.get(owner).map(|o| o.id),
                        Role::Primary { .. } => Some(c.id),
                    };
                    match owner {
                        Some(id) => self.report(PeerInput::BlockFile { id, summary, file }),
                        None => {
                            if let Some(f) = &self.ctx.settings.block_files {
                                f.remove(&summary.hash, file.id);
                            }
                        }
                    }
                }
                PeerOutput::Rtt(rtt) => {
                    log::trace!("peer {} rtt {rtt:?}", c.id);
                    self.ping.observe(rtt);
                }
                PeerOutput::Misbehaved(reason, detail) => {
                    log::debug!("peer {} ({}): {detail}", c.id, c.addr);
                    let id = c.id;
                    self.report(PeerInput::Misbehaved { id, reason, detail });
                }
                other @ (PeerOutput::StreamRequest(_)
                | PeerOutput::OpenStream(_)
                | PeerOutput::StreamAcked(_)) => later.push(other),
            }
        }
        // (big payloads are rare: the usual small frames go out without the vector)
        let rest = [(Some(key), own), (data1_key, data1)]
            .into_iter()
            .filter_map(|(k, buf)| Some((k?, buf)).filter(|(_, b)| !b.is_empty()))
            .map(|(k, buf)| (k, buf.freeze()));
        for (k, piece) in pieces.into_iter().chain(rest) {
            if self.conns.contains(k) {
                if let Err(r) = self.enqueue(k, piece) {
                    self.close(k, r);
                }
            }
        }
        for o in later {
            if !self.conns.contains(key) {
                return;
            }
            match o {
                PeerOutput::StreamRequest(c) => self.stream_request(key, c),
                PeerOutput::OpenStream(policy) => self.open_stream(key, policy),
                PeerOutput::StreamAcked(a) => self.stream_acked(key, a),
                _ => {}
            }
        }
        if !to_owner.is_empty() {
            self.hand_to_owner(key, to_owner);
        }
    }

    /// Messages a further stream received, handled by its peer's first connection (whose
    /// counters take the stream's).
    fn hand_to_owner(&mut self, key: usize, msgs: Vec<Message>) {
        let Some(Role::Stream { owner, .. }) = self.conns.get(key).map(|c| c.role) else {
            return;
        };
        let stats = std::mem::take(&mut self.conns[key].proto.stats);
        let Some(o) = self.conns.get_mut(owner) else {
            return;
        };
        o.proto.stats.absorb(stats);
        let now = Instant::now();
        let mut out = Vec::new();
        let mut failed = None;
        for m in msgs {
            if let Err(r) = o.proto.on_stream_message(now, m, &mut out) {
                failed = Some(r);
                break;
            }
        }
        self.apply(owner, &mut out);
        if let Some(r) = failed {
            self.close(owner, r);
        }
    }

    /// An inbound connection's first message asks to join an association: checked for form
    /// here, then the core (which knows every peer) decides.
    fn stream_request(&mut self, key: usize, c: CreateStream) {
        let assoc = match AssociationId::from_bytes(&c.association_id) {
            Ok(Some(a)) => a,
            Ok(None) => return self.refuse_stream(key, "NULL association ID".into()),
            Err(e) => return self.refuse_stream(key, e.into()),
        };
        if !self.ctx.settings.multistreams {
            return self.refuse_stream(key, "multistreams are off".into());
        }
        if c.stream_type != stream_type::DATA1 {
            let why = format!(
                "unsupported stream type {}",
                stream_type::name(c.stream_type)
            );
            return self.refuse_stream(key, why);
        }
        if !c.policy.is_empty() && StreamPolicy::from_name(&c.policy).is_none() {
            return self.refuse_stream(key, format!("unknown stream policy name {}", c.policy));
        }
        let conn = &mut self.conns[key];
        conn.joining = true;
        let id = conn.id;
        self.report(PeerInput::StreamRequest {
            id,
            association: assoc,
            stream_type: c.stream_type,
            policy: c.policy,
        });
    }

    /// Refuses a `createstrm` as the SV node does: a `reject` (code 0x60), then the connection
    /// is closed.
    fn refuse_stream(&mut self, key: usize, why: String) {
        let Some(c) = self.conns.get(key) else {
            return;
        };
        log::info!("stream from {} refused: {why}", c.addr);
        let reject = Message::Reject(crate::wire::Reject {
            message: "createstrm".into(),
            code: crate::wire::bsv::REJECT_STREAM_SETUP,
            reason: why.chars().take(111).collect(),
            data: Bytes::new(),
        });
        let mut out = vec![PeerOutput::Send(reject)];
        self.apply(key, &mut out);
        self.close(key, DisconnectReason::StreamSetup(why));
    }

    /// The core agreed: connection `from` becomes a stream of `owner`, here or on its shard.
    fn join_stream(&mut self, from: PeerId, owner: PeerId, kind: u8, policy: String) {
        let Some(k) = self.by_id.remove(&from) else {
            return;
        };
        let mut c = self.conns.remove(k);
        let _ = self.poll.registry().deregister(&mut c.stream);
        let buffered = c.proto.take_buffered();
        let target = shard_of(owner);
        if target == self.index {
            return self.attach_stream(c.stream, c.addr, buffered, owner, kind, policy);
        }
        let socket = std::net::TcpStream::from(c.stream);
        let (tx, waker) = &self.ctx.siblings[target];
        let cmd = ShardCmd::AttachStream {
            socket,
            addr: c.addr,
            buffered,
            owner,
            stream_type: kind,
            policy,
        };
        match tx.send_timeout(cmd, HANDOFF_TIMEOUT) {
            Ok(()) => {
                let _ = waker.wake();
            }
            Err(_) => log::warn!(
                "shard {}: shard {target} took no stream for {HANDOFF_TIMEOUT:?}; closed",
                self.index
            ),
        }
    }

    /// Takes a socket in as `owner`'s DATA1 stream and acknowledges it.
    fn attach_stream(
        &mut self,
        stream: TcpStream,
        addr: SocketAddr,
        buffered: BytesMut,
        owner: PeerId,
        kind: u8,
        policy: String,
    ) {
        let Some(&owner_key) = self.by_id.get(&owner) else {
            log::info!("stream from {addr}: its peer {owner} is gone; closed");
            return;
        };
        let (assoc, current) = match self.conns[owner_key].role {
            Role::Primary {
                data1: None,
                opening: None,
                policy,
            } => (self.conns[owner_key].assoc, policy),
            _ => {
                log::info!("stream from {addr}: peer {owner} has one already; closed");
                return;
            }
        };
        let Some(assoc) = assoc else {
            return;
        };
        let policy = StreamPolicy::from_name(&policy).unwrap_or(current);
        let Some(key) =
            self.register_stream(stream, addr, owner_key, kind, policy, false, &buffered)
        else {
            return;
        };
        if let Role::Primary {
            data1, policy: p, ..
        } = &mut self.conns[owner_key].role
        {
            *data1 = Some(key);
            *p = policy;
        }
        log::info!(
            "peer {owner}: {} stream joined (association {assoc}, policy {})",
            stream_type::name(kind),
            policy.name()
        );
        let ack = Message::StreamAck(crate::wire::StreamAck {
            association_id: assoc.to_bytes(),
            stream_type: kind,
        });
        let mut out = vec![PeerOutput::Send(ack)];
        self.apply(key, &mut out);
        self.defer_read(key);
    }

    /// Opens our DATA1 stream to a peer whose protoconf agreed on `policy`.
    fn open_stream(&mut self, owner_key: usize, policy: StreamPolicy) {
        let c = &self.conns[owner_key];
        let Some(assoc) = c.assoc else {
            return;
        };
        if !matches!(
            c.role,
            Role::Primary {
                data1: None,
                opening: None,
                ..
            }
        ) {
            return;
        }
        let (addr, id) = (c.addr, c.id);
        let s = match connect_from(addr, self.ctx.config.outbound_bind) {
            Ok(s) => s,
            Err(e) => {
                log::info!("peer {id}: cannot open a stream to {addr}: {e}");
                return;
            }
        };
        let _ = s.set_nodelay(true);
        let kind = stream_type::DATA1;
        let Some(key) = self.register_stream(s, addr, owner_key, kind, policy, true, &[]) else {
            return;
        };
        if let Role::Primary { opening, .. } = &mut self.conns[owner_key].role {
            *opening = Some(key);
        }
        let create = Message::CreateStream(CreateStream {
            association_id: assoc.to_bytes(),
            stream_type: kind,
            policy: policy.name().into(),
        });
        let mut out = vec![PeerOutput::Send(create)];
        self.apply(key, &mut out);
    }

    /// The stream we opened was accepted: the policy's messages go over it from now on.
    fn stream_acked(&mut self, key: usize, ack: crate::wire::StreamAck) {
        let Some(Role::Stream {
            owner,
            kind,
            policy,
            ..
        }) = self.conns.get(key).map(|c| c.role)
        else {
            return;
        };
        let Some(o) = self.conns.get(owner) else {
            return;
        };
        let (assoc, id) = (o.assoc, o.id);
        if assoc.map(|a| a.to_bytes()) != Some(ack.association_id.clone())
            || ack.stream_type != kind
        {
            let why = "streamack for another stream".to_string();
            return self.close(key, DisconnectReason::StreamSetup(why));
        }
        if let Role::Stream { acked, .. } = &mut self.conns[key].role {
            *acked = true;
        }
        if let Role::Primary {
            data1,
            opening,
            policy: p,
        } = &mut self.conns[owner].role
        {
            *data1 = Some(key);
            *opening = None;
            *p = policy;
        }
        log::info!(
            "peer {id}: {} stream open (association {}, policy {})",
            stream_type::name(kind),
            assoc.map(|a| a.to_string()).unwrap_or_default(),
            policy.name()
        );
    }

    /// Registers a further stream of `owner_key`'s peer; its key.
    #[allow(clippy::too_many_arguments)]
    fn register_stream(
        &mut self,
        stream: TcpStream,
        addr: SocketAddr,
        owner_key: usize,
        kind: u8,
        policy: StreamPolicy,
        connecting: bool,
        buffered: &[u8],
    ) -> Option<usize> {
        let now = Instant::now();
        let owner = &self.conns[owner_key];
        let id = owner.id;
        let peer_version = owner.proto.version().map_or(0, |v| v.version);
        let direction = if connecting {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        let proto =
            PeerProtocol::new_stream(direction, &self.ctx.settings, peer_version, now, buffered);
        let role = Role::Stream {
            owner: owner_key,
            kind,
            acked: !connecting,
            policy,
        };
        let key = match self.insert_conn(stream, id, addr, proto, connecting, role) {
            Ok(k) => k,
            Err(e) => {
                let i = self.index;
                log::warn!("shard {i}: cannot register a stream from {addr}: {e}");
                return None;
            }
        };
        Some(key)
    }

    /// Sends a block from its file: the frame header, then the file a piece at a time (on the
    /// stream the peer's policy puts blocks on).
    fn send_block_file(
        &mut self,
        key: usize,
        hash: crate::wire::Hash256,
        r: crate::store::files::BlockFileRef,
    ) {
        use crate::wire::frame::{extended_header, header_with_checksum, EXT_LENGTH_MARK};
        use crate::wire::message::commands::BLOCK;
        let Some(files) = self.ctx.settings.block_files.clone() else {
            return;
        };
        let c = &mut self.conns[key];
        if !c.proto.is_ready() {
            return;
        }
        let file = match files.open_block(&hash, &r) {
            Ok(f) => f,
            Err(e) => {
                log::error!("block {hash}: cannot open its file: {e}");
                return;
            }
        };
        let magic = self.ctx.settings.magic;
        // `extmsg` to every peer that speaks it (no checksum to compute); a standard frame
        // with the stored checksum, or one computed from the file, to the others
        let header = if c.proto.accepts_extended() {
            Bytes::copy_from_slice(&extended_header(magic, BLOCK, r.size))
        } else {
            let len = match u32::try_from(r.size) {
                Ok(l) if l < EXT_LENGTH_MARK => l,
                _ => {
                    log::info!(
                        "peer {}: block {hash} needs extmsg, which it does not speak",
                        c.id
                    );
                    return;
                }
            };
            let sum = match r.checksum {
                Some(s) => s,
                None => match file_checksum(&file, r.size) {
                    Ok(s) => s,
                    Err(e) => {
                        log::error!("block {hash}: cannot read its file: {e}");
                        return;
                    }
                },
            };
            Bytes::copy_from_slice(&header_with_checksum(magic, BLOCK, len, sum))
        };
        c.proto.stats.record_out(
            BLOCK,
            header.len() + usize::try_from(r.size).unwrap_or(usize::MAX),
        );
        let dest = match c.role {
            Role::Primary {
                data1: Some(k),
                policy,
                ..
            } if policy.on_data1(BLOCK) => k,
            _ => key,
        };
        let sent = self.enqueue(dest, header).and_then(|()| {
            self.enqueue_out(
                dest,
                Outgoing::File {
                    file,
                    offset: 0,
                    left: r.size,
                },
            )
        });
        if let Err(reason) = sent {
            self.close(dest, reason);
        }
    }

    fn enqueue(&mut self, key: usize, frame: Bytes) -> Result<(), DisconnectReason> {
        self.enqueue_out(key, Outgoing::Mem(frame))
    }

    fn enqueue_out(&mut self, key: usize, frame: Outgoing) -> Result<(), DisconnectReason> {
        let limit = self.ctx.config.max_send_queue;
        let pause = self.read_pause_bytes();
        let c = self
            .conns
            .get_mut(key)
            .expect("enqueue on a live connection");
        // The limit bounds the memory that piles up, not one message: a block bigger than the
        // limit goes out when little waits before it (the core serves blocks one window at a
        // time), and what waits in a block file is not in memory.
        let before = c.queued - c.in_files;
        c.queued += frame.len();
        if let Outgoing::File { left, .. } = &frame {
            c.in_files += usize::try_from(*left).unwrap_or(usize::MAX);
        }
        c.queue.push_back(frame);
        if c.queued - c.in_files > limit && before > pause {
            return Err(DisconnectReason::SendQueueFull {
                queued: c.queued,
                limit,
            });
        }
        if c.connecting.is_none() {
            self.flush(key)?;
        }
        Ok(())
    }

    fn flush(&mut self, key: usize) -> Result<(), DisconnectReason> {
        let resume_at = self.read_pause_bytes() / 2;
        let c = self.conns.get_mut(key).expect("flush on a live connection");
        while !c.queue.is_empty() {
            if let Some(Outgoing::File { file, offset, left }) = c.queue.front_mut() {
                // the next piece of a block file, read into the connection's reused buffer
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(FILE_PIECE);
                c.file_buf.reserve(n);
                c.file_buf.resize(n, 0);
                let got = crate::store::files::read_at(file, *offset, &mut c.file_buf)
                    .map_err(|e| DisconnectReason::Io(format!("reading a block file: {e}")))?;
                if got < n {
                    return Err(DisconnectReason::Io("a block file ended early".into()));
                }
                *offset += n as u64;
                *left -= n as u64;
                c.in_files -= n;
                let piece = Outgoing::Mem(c.file_buf.split().freeze());
                if *left == 0 {
                    c.queue[0] = piece;
                } else {
                    c.queue.push_front(piece);
                }
            }
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for (i, b) in c.queue.iter().take(MAX_IOVECS).enumerate() {
                let Outgoing::Mem(b) = b else {
                    break; // a file's next piece is read when it comes first
                };
                slices[i] = IoSlice::new(if i == 0 { &b[c.head_written..] } else { &b[..] });
                n += 1;
            }
            match c.stream.write_vectored(&slices[..n]) {
                Ok(0) => return Err(DisconnectReason::Io("write returned zero".into())),
                Ok(mut written) => {
                    c.queued -= written;
                    c.bytes_out += written as u64;
                    while written > 0 {
                        let head = c
                            .queue
                            .front()
                            .expect("written bytes come from queued buffers")
                            .len()
                            - c.head_written;
                        if written >= head {
                            written -= head;
                            c.queue.pop_front();
                            c.head_written = 0;
                        } else {
                            c.head_written += written;
                            written = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DisconnectReason::Io(e.to_string())),
            }
        }
        if c.queue.is_empty() && c.queue.capacity() > 16 {
            c.queue = VecDeque::new();
        }
        let (keys, queued) = self.peer_conns(key);
        if queued <= resume_at {
            for k in keys.into_iter().flatten() {
                if let Some(c) = self.conns.get_mut(k).filter(|c| c.paused) {
                    c.paused = false;
                    self.defer_read(k);
                }
            }
            if let Some(owner) = keys[0] {
                self.check_drained(owner);
            }
        }
        Ok(())
    }

    /// Tells the core that what was queued to the peer of `key` (its first connection) has
    /// gone out, down to the resume mark, if it asked.
    fn check_drained(&mut self, key: usize) {
        // (the flag first: this runs after every flush)
        if !self.conns.get(key).is_some_and(|c| c.notify_drained) {
            return;
        }
        let (_, queued) = self.peer_conns(key);
        if queued <= self.read_pause_bytes() / 2 {
            let c = &mut self.conns[key];
            c.notify_drained = false;
            let id = c.id;
            self.report(PeerInput::Drained { id });
        }
    }

    fn send_checked(&mut self, key: usize, msg: Message) -> Result<(), SendError> {
        let c = &self.conns[key];
        if !c.proto.is_ready() {
            return Err(SendError::NotReady(c.id));
        }
        c.proto.check_send(&msg)?;
        let mut out = vec![PeerOutput::Send(msg)];
        self.apply(key, &mut out);
        Ok(())
    }

    fn tick(&mut self, now: Instant) {
        if self.accept_retry {
            self.accept();
        }
        let report = now.saturating_duration_since(self.last_stats) >= STATS_EVERY;
        if report {
            self.last_stats = now;
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            let c = &mut self.conns[k];
            if let Some(deadline) = c.connecting {
                if now >= deadline {
                    self.close(k, DisconnectReason::ConnectFailed("connect timeout".into()));
                }
                continue;
            }
            if report && c.proto.is_ready() {
                // fresh counters of connections that moved, for the registry and eviction
                let t = c.proto.stats.totals();
                let moved = t.msgs_in + t.msgs_out + c.proto.stats.errors;
                if moved != c.reported {
                    c.reported = moved;
                    let input = PeerInput::Stats {
                        id: c.id,
                        stats: c.proto.stats.clone(),
                        rtt: c.proto.rtt(),
                    };
                    self.report(input);
                }
            }
            let c = &mut self.conns[k];
            let mut out = std::mem::take(&mut self.out);
            let r = c.proto.tick(now, crate::util::random_u64, &mut out);
            self.apply(k, &mut out);
            self.out = out;
            if let Err(reason) = r {
                if self.conns.contains(k) {
                    self.close(k, reason);
                }
            }
        }
    }

    fn close(&mut self, key: usize, reason: DisconnectReason) {
        if !self.conns.contains(key) {
            return;
        }
        let mut c = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut c.stream);
        if matches!(
            reason,
            DisconnectReason::Shutdown
                | DisconnectReason::Requested
                | DisconnectReason::SendQueueFull { .. }
        ) {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        match c.role {
            Role::Stream { owner, acked, .. } => {
                // a stream is part of its peer: an open one that fails takes the peer down
                // (as on the SV node); one that never opened leaves it on one stream
                let mut mine = false;
                if let Some(Role::Primary { data1, opening, .. }) =
                    self.conns.get_mut(owner).map(|o| &mut o.role)
                {
                    if *data1 == Some(key) {
                        *data1 = None;
                        mine = true;
                    }
                    if *opening == Some(key) {
                        *opening = None;
                        mine = true;
                    }
                }
                log::debug!("peer {} ({}): stream closed: {reason}", c.id, c.addr);
                if mine && acked && reason != DisconnectReason::Shutdown {
                    self.close(owner, reason);
                }
                return;
            }
            Role::Primary { data1, opening, .. } => {
                for k in [data1, opening].into_iter().flatten() {
                    if let Some(mut s) = self.conns.try_remove(k) {
                        let _ = self.poll.registry().deregister(&mut s.stream);
                        let _ = s.stream.shutdown(std::net::Shutdown::Both);
                    }
                }
            }
        }
        self.by_id.remove(&c.id);
        log::debug!(
            "peer {} ({}, {}) disconnected: {reason}",
            c.id,
            c.addr,
            c.proto.direction()
        );
        let input = PeerInput::Disconnected {
            id: c.id,
            reason,
            stats: std::mem::take(&mut c.proto.stats),
            rtt: c.proto.rtt(),
        };
        drop(c);
        self.report(input);
    }
}

/// Starts a non-blocking connect to `addr`, from `bind` when given (`Config::outbound_bind`).
fn connect_from(addr: SocketAddr, bind: Option<std::net::IpAddr>) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let Some(ip) = bind else {
        return TcpStream::connect(addr);
    };
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::new(ip, 0).into())?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        // under way: the shard learns the outcome when the socket turns writable, as for
        // `TcpStream::connect`
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

/// Makes the listening socket(s): with SO_REUSEPORT one per shard, else one for all.
pub fn listeners(addr: SocketAddr, shards: usize) -> io::Result<Vec<std::net::TcpListener>> {
    // With port 0 the probe picks a free port and lets it go before the shards bind it: another
    // process may take it in between (seen under load in the suite). Then pick another.
    let mut tries = 0;
    loop {
        match bind_listeners(addr, shards) {
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse && tries < 8 => {
                tries += 1;
            }
            r => return r,
        }
    }
}

fn bind_listeners(addr: SocketAddr, shards: usize) -> io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let make = |addr: SocketAddr, reuseport: bool| -> io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
        if reuseport {
            s.set_reuse_port(true)?;
        }
        let _ = reuseport;
        s.set_nodelay(true)?;
        s.bind(&addr.into())?;
        s.listen(4096)?;
        Ok(s.into())
    };
    // A plain bind first: it fails with AddrInUse if anything listens there, including another
    // process's SO_REUSEPORT group that would otherwise silently share our port.
    let probe = make(addr, false)?;
    if shards == 1 {
        return Ok(vec![probe]);
    }
    let bound = probe.local_addr()?;
    drop(probe);
    let first = match make(bound, true) {
        Ok(l) => l,
        Err(_) => return Ok(vec![make(bound, false)?]),
    };
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..shards {
        match make(bound, true) {
            Ok(l) => all.push(l),
            Err(e) => {
                log::info!(
                    "SO_REUSEPORT not available ({e}): one listener hands sockets to all shards"
                );
                all.truncate(1);
                break;
            }
        }
    }
    Ok(all)
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<Shard>();
    let _ = Duration::ZERO;
}
