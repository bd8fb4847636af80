//! The event loop of one shard: a `mio::Poll` that owns a share of the peer sockets. It reads
//! bytes into each connection's protocol state machine, writes what the machine answers, hands
//! decoded messages to the workers, and takes commands from the API through a channel and a
//! `Waker`. All protocol decisions are made in [`crate::fsm`]; this module only moves bytes.

use crate::engine::{PeerId, PeerInfo, Shared, WorkerMsg};
use crate::fsm::peer::{PeerOutput, PeerProtocol};
use crate::fsm::scoring::{self, ScoreInputs};
use crate::fsm::{Direction, DisconnectReason};
use crate::wire::frame::encode_message;
use crate::wire::{Message, NetAddr, VersionMessage};
use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
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

/// What the API and the other shards ask a shard to do.
pub enum ShardCmd {
    /// Dial a peer; `static_peer` peers are re-dialled when they drop.
    Connect { addr: SocketAddr, static_peer: bool },
    /// Take over an accepted socket (when one shard accepts for all).
    Adopt(std::net::TcpStream, SocketAddr),
    /// Close a connection.
    Disconnect(PeerId),
    /// Send a message to one peer; the outcome goes back on the channel if one is given.
    Send(PeerId, Message, Option<Sender<Result<(), String>>>),
    /// Send a message to every ready peer.
    Broadcast(Message),
    /// Report every connection.
    Peers(Sender<Vec<PeerInfo>>),
    /// Close a connection to make room for a newcomer.
    Evict(PeerId),
    /// Close every connection inside a newly banned subnet.
    DropBanned(crate::fsm::bans::Subnet),
    /// Close everything and end the loop.
    Stop,
}

struct Conn {
    id: PeerId,
    addr: SocketAddr,
    stream: TcpStream,
    proto: PeerProtocol,
    connecting: Option<Instant>,
    static_peer: bool,
    queue: VecDeque<Bytes>,
    queued: usize,
    /// Bytes of `queue[0]` already written.
    head_written: usize,
    since: SystemTime,
    since_instant: Instant,
    counted: bool,
}

/// A shard's event loop.
pub struct Shard {
    index: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    by_id: HashMap<PeerId, usize>,
    rx: Receiver<ShardCmd>,
    shared: Arc<Shared>,
    scratch: Vec<u8>,
    redials: Vec<(Instant, SocketAddr, u32)>,
    redial_attempts: HashMap<SocketAddr, u32>,
    out: Vec<PeerOutput>,
    accepted: usize,
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
    pub fn new(
        index: usize,
        poll: Poll,
        listener: Option<std::net::TcpListener>,
        rx: Receiver<ShardCmd>,
        shared: Arc<Shared>,
    ) -> io::Result<Shard> {
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
            shared,
            scratch: vec![0; READ_CHUNK],
            redials: Vec::new(),
            redial_attempts: HashMap::new(),
            out: Vec::new(),
            accepted: 0,
            accept_retry: false,
            pending: Vec::new(),
            throttled: Vec::new(),
            stopping: false,
        })
    }

    /// Makes a waker for this shard's poller.
    pub fn waker(poll: &Poll) -> io::Result<Waker> {
        Waker::new(poll.registry(), WAKER)
    }

    /// Runs until told to stop.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let tick = self.shared.config.tick;
        let mut last_tick = Instant::now();
        while !self.stopping {
            let mut timeout = tick.saturating_sub(last_tick.elapsed());
            if !self.pending.is_empty() {
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
            if !self.pending.is_empty() || !self.throttled.is_empty() {
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
    }

    fn commands(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                ShardCmd::Connect { addr, static_peer } => self.dial(addr, static_peer),
                ShardCmd::Adopt(s, addr) => self.adopt(s, addr),
                ShardCmd::Disconnect(id) => {
                    if let Some(&k) = self.by_id.get(&id) {
                        self.close(k, DisconnectReason::Requested);
                    }
                }
                ShardCmd::Send(id, msg, reply) => {
                    let r = match self.by_id.get(&id) {
                        Some(&k) => self.send_checked(k, msg),
                        None => Err(format!("no peer {id}")),
                    };
                    if let Some(reply) = reply {
                        let _ = reply.send(r);
                    }
                }
                ShardCmd::Broadcast(msg) => self.broadcast(msg),
                ShardCmd::Peers(reply) => {
                    let _ = reply.send(self.conns.iter().map(|(_, c)| self.info(c)).collect());
                }
                ShardCmd::Evict(id) => {
                    if let Some(&k) = self.by_id.get(&id) {
                        self.close(k, DisconnectReason::Evicted);
                    }
                }
                ShardCmd::DropBanned(subnet) => {
                    let keys: Vec<usize> = self
                        .conns
                        .iter()
                        .filter(|(_, c)| subnet.contains(c.addr.ip()))
                        .map(|(k, _)| k)
                        .collect();
                    for k in keys {
                        self.close(k, DisconnectReason::Banned);
                    }
                }
                ShardCmd::Stop => self.stopping = true,
            }
        }
    }

    fn info(&self, c: &Conn) -> PeerInfo {
        let v = c.proto.version();
        let inputs = self.score_inputs(c);
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
            score: scoring::score(&inputs),
            status: scoring::status(&inputs),
        }
    }

    fn score_inputs(&self, c: &Conn) -> ScoreInputs {
        let ip = c.addr.ip();
        let useful = c
            .proto
            .stats
            .by_command
            .iter()
            .filter(|(cmd, _)| !matches!(cmd.as_str(), "ping" | "pong"))
            .map(|(_, s)| s.msgs_in)
            .sum();
        ScoreInputs {
            rtt_us: c.proto.rtt().map_or(0, |r| r.as_micros().max(1) as u64),
            connections: c.proto.is_ready() as u64,
            failures: 0,
            useful_msgs: useful,
            errors: c.proto.stats.errors,
            ban_score: self.shared.ban_score(ip),
            banned: self.shared.is_banned(ip),
        }
    }

    fn our_version(&self, peer: SocketAddr, nonce: u64) -> VersionMessage {
        let cfg = &self.shared.config;
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
            start_height: self.shared.start_height(),
            relay: Some(cfg.relay),
            extra: Bytes::new(),
        }
    }

    fn register(
        &mut self,
        mut stream: TcpStream,
        addr: SocketAddr,
        direction: Direction,
        connecting: bool,
        static_peer: bool,
    ) {
        let now = Instant::now();
        let id = self.shared.next_peer_id(self.index);
        let nonce = self.shared.new_nonce(direction == Direction::Outbound);
        let proto = PeerProtocol::new(
            direction,
            &self.shared.settings,
            self.our_version(addr, nonce),
            now,
        );
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("shard {}: cannot register {addr}: {e}", self.index);
            self.shared.release(direction, addr, Some(nonce), true);
            return;
        }
        entry.insert(Conn {
            id,
            addr,
            stream,
            proto,
            connecting: connecting.then_some(now + self.shared.config.connect_timeout),
            static_peer,
            queue: VecDeque::new(),
            queued: 0,
            head_written: 0,
            since: SystemTime::now(),
            since_instant: now,
            counted: true,
        });
        self.by_id.insert(id, key);
        if !connecting {
            self.start_protocol(key);
        }
    }

    fn dial(&mut self, addr: SocketAddr, static_peer: bool) {
        if self.shared.is_banned(addr.ip()) {
            log::info!("shard {}: not dialling banned {addr}", self.index);
            self.shared
                .emit_failed_dial(self.index, addr, "address is banned".into());
            return;
        }
        if !self.shared.reserve(Direction::Outbound, addr) {
            log::info!(
                "shard {}: not dialling {addr}: outbound limit reached",
                self.index
            );
            if static_peer {
                self.schedule_redial(addr);
            }
            return;
        }
        match TcpStream::connect(addr) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                self.register(s, addr, Direction::Outbound, true, static_peer);
            }
            Err(e) => {
                log::info!("shard {}: connect to {addr} failed: {e}", self.index);
                self.shared.release(Direction::Outbound, addr, None, true);
                self.shared
                    .emit_failed_dial(self.index, addr, e.to_string());
                if static_peer {
                    self.schedule_redial(addr);
                }
            }
        }
    }

    fn adopt(&mut self, s: std::net::TcpStream, addr: SocketAddr) {
        // Limits were reserved by the accepting shard.
        if s.set_nonblocking(true).is_err() {
            self.shared.release(Direction::Inbound, addr, None, true);
            return;
        }
        let s = TcpStream::from_std(s);
        let _ = s.set_nodelay(true);
        self.register(s, addr, Direction::Inbound, false, false);
    }

    fn accept(&mut self) {
        self.accept_retry = false;
        loop {
            let Some(l) = self.listener.as_ref() else {
                return;
            };
            match l.accept() {
                Ok((s, addr)) => {
                    if self.shared.is_banned(addr.ip()) {
                        log::debug!("shard {}: refusing banned {addr}", self.index);
                        drop(s);
                        continue;
                    }
                    if !self.shared.reserve(Direction::Inbound, addr) && !self.evict_for(addr) {
                        log::debug!(
                            "shard {}: refusing {addr}: inbound limit reached",
                            self.index
                        );
                        drop(s);
                        continue;
                    }
                    let target = self
                        .shared
                        .pick_shard_for_accept(self.index, &mut self.accepted);
                    if target == self.index {
                        let _ = s.set_nodelay(true);
                        self.register(s, addr, Direction::Inbound, false, false);
                    } else {
                        // One listener for all shards: hand the socket over.
                        let std: std::net::TcpStream = std::net::TcpStream::from(s);
                        self.shared
                            .send_to_shard(target, ShardCmd::Adopt(std, addr));
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

    /// Inbound slots are full: evicts the worst inbound peer (on whichever shard) and takes
    /// its slot for `addr`. False when no peer may be evicted.
    fn evict_for(&mut self, addr: SocketAddr) -> bool {
        if self.shared.config.max_inbound == 0 {
            return false;
        }
        let Some((victim, shard)) = self.shared.pick_eviction() else {
            return false;
        };
        if !self.shared.reserve_over(addr) {
            return false;
        }
        log::info!(
            "shard {}: inbound full, evicting peer {victim} for {addr}",
            self.index
        );
        if shard == self.index {
            if let Some(&k) = self.by_id.get(&victim) {
                self.close(k, DisconnectReason::Evicted);
            }
        } else {
            self.shared.send_to_shard(shard, ShardCmd::Evict(victim));
        }
        true
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
                    self.redial_attempts.remove(&c.addr);
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
        let shared = &self.shared;
        let mut out = std::mem::take(&mut self.out);
        let r = c
            .proto
            .on_data(now, &|nonce| shared.is_own_nonce(nonce), &mut out);
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

    fn read(&mut self, key: usize) {
        let now = Instant::now();
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
                    c.proto.read_buffer().extend_from_slice(&self.scratch[..n]);
                    if !self.process(key, now) || self.park_if_throttled(key, now) {
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
                        let id = self.conns[key].id;
                        self.pending.push((key, id));
                        return;
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
            if self.conns.get(key).is_some_and(|c| c.id == id) {
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

    /// Carries out what the protocol asked for.
    fn apply(&mut self, key: usize, out: &mut Vec<PeerOutput>) {
        if out.is_empty() {
            return;
        }
        let mut buf = BytesMut::new();
        let mut failed = None;
        let mut scored = Vec::new();
        for o in out.drain(..) {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            match o {
                PeerOutput::Send(m) => {
                    let before = buf.len();
                    encode_message(&mut buf, self.shared.settings.magic, &m);
                    c.proto.stats.record_out(m.command(), buf.len() - before);
                }
                PeerOutput::Connected(v) => {
                    self.shared.forget_nonce(c.proto.our_nonce());
                    let info = self.info(&self.conns[key]);
                    self.shared.to_worker(WorkerMsg::Connected(info, v));
                }
                PeerOutput::Deliver(m) => self.shared.to_worker(WorkerMsg::Message(c.id, m)),
                PeerOutput::Rtt(rtt) => log::trace!("peer {} rtt {rtt:?}", c.id),
                PeerOutput::Misbehaved(reason, what) => {
                    log::debug!("peer {} ({}): {what}", c.id, c.addr);
                    scored.push((c.addr.ip(), c.id, reason, what));
                }
            }
        }
        if !buf.is_empty() && self.conns.contains(key) {
            if let Err(r) = self.enqueue(key, buf.freeze()) {
                failed = Some(r);
            }
        }
        for (ip, id, reason, what) in scored {
            self.shared.misbehaving(ip, Some(id), reason, &what);
        }
        if let Some(r) = failed {
            self.close(key, r);
        }
    }

    fn enqueue(&mut self, key: usize, frame: Bytes) -> Result<(), DisconnectReason> {
        let limit = self.shared.config.max_send_queue;
        let c = self
            .conns
            .get_mut(key)
            .expect("enqueue on a live connection");
        c.queued += frame.len();
        c.queue.push_back(frame);
        if c.queued > limit {
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
        let c = self.conns.get_mut(key).expect("flush on a live connection");
        while !c.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for (i, b) in c.queue.iter().take(MAX_IOVECS).enumerate() {
                slices[i] = IoSlice::new(if i == 0 { &b[c.head_written..] } else { &b[..] });
                n += 1;
            }
            match c.stream.write_vectored(&slices[..n]) {
                Ok(0) => return Err(DisconnectReason::Io("write returned zero".into())),
                Ok(mut written) => {
                    c.queued -= written;
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
        Ok(())
    }

    fn send_checked(&mut self, key: usize, msg: Message) -> Result<(), String> {
        let c = &self.conns[key];
        if !c.proto.is_ready() {
            return Err(format!("peer {} has not finished its handshake", c.id));
        }
        c.proto.check_send(&msg)?;
        let mut out = vec![PeerOutput::Send(msg)];
        self.apply(key, &mut out);
        Ok(())
    }

    fn broadcast(&mut self, msg: Message) {
        let mut buf = BytesMut::new();
        encode_message(&mut buf, self.shared.settings.magic, &msg);
        let frame = buf.freeze();
        let cmd = msg.command();
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.proto.is_ready() && c.proto.check_send(&msg).is_ok())
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            self.conns[k].proto.stats.record_out(cmd, frame.len());
            if let Err(r) = self.enqueue(k, frame.clone()) {
                self.close(k, r);
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        // Scores of ready inbound peers, for eviction decisions on any shard. Only needed when
        // inbound slots are nearly full: otherwise the loop does no per-peer locking here.
        let inbound_busy = self.shared.inbound_count() * 10 >= self.shared.config.max_inbound * 9;
        for (_, c) in self.conns.iter().filter(|_| inbound_busy) {
            if c.proto.direction() == Direction::Inbound && c.proto.is_ready() {
                let s = scoring::score(&self.score_inputs(c));
                self.shared
                    .set_inbound_score(c.id, self.index, Some((s, c.since_instant)));
            }
        }
        if self.accept_retry {
            self.accept();
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
        let due: Vec<(Instant, SocketAddr, u32)> = {
            let (due, later) = self.redials.drain(..).partition(|(t, _, _)| *t <= now);
            self.redials = later;
            due
        };
        for (_, addr, _) in due {
            if !self.stopping {
                self.dial(addr, true);
            }
        }
    }

    fn schedule_redial(&mut self, addr: SocketAddr) {
        if self.stopping {
            return;
        }
        let cfg = &self.shared.config;
        let attempt = self.redial_attempts.entry(addr).or_insert(0);
        let delay = cfg
            .redial_base
            .saturating_mul(1u32 << (*attempt).min(16))
            .min(cfg.redial_max);
        *attempt += 1;
        log::debug!("shard {}: re-dialling {addr} in {delay:?}", self.index);
        self.redials.push((Instant::now() + delay, addr, *attempt));
    }

    fn close(&mut self, key: usize, reason: DisconnectReason) {
        if !self.conns.contains(key) {
            return;
        }
        let mut c = self.conns.remove(key);
        self.by_id.remove(&c.id);
        self.shared.set_inbound_score(c.id, self.index, None);
        let _ = self.poll.registry().deregister(&mut c.stream);
        if matches!(
            reason,
            DisconnectReason::Shutdown
                | DisconnectReason::Requested
                | DisconnectReason::SendQueueFull { .. }
        ) {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        log::debug!(
            "peer {} ({}, {}) disconnected: {reason}",
            c.id,
            c.addr,
            c.proto.direction()
        );
        if let Some(r) = reason.ban_reason() {
            self.shared
                .misbehaving(c.addr.ip(), Some(c.id), r, &reason.to_string());
        }
        self.shared
            .release(c.proto.direction(), c.addr, c.proto.our_nonce(), c.counted);
        let was_static = c.static_peer;
        let addr = c.addr;
        self.shared.to_worker(WorkerMsg::Disconnected {
            id: c.id,
            addr,
            direction: c.proto.direction(),
            reason,
            handshaken: c.proto.is_ready(),
            stats: std::mem::take(&mut c.proto.stats),
            rtt: c.proto.rtt(),
        });
        drop(c);
        if was_static {
            self.schedule_redial(addr);
        }
    }
}

/// Makes the listening socket(s): with SO_REUSEPORT one per shard, else one for all.
pub fn listeners(addr: SocketAddr, shards: usize) -> io::Result<Vec<std::net::TcpListener>> {
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
