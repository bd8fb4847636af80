//! `Engine::start`: validates the configuration, opens the store, binds the listeners, starts
//! one pinned event loop per shard and the node core's thread, and gives the embedder a stream
//! of [`Event`]s and calls to act on peers.
//!
//! ```text
//!  sockets ─► shard 0..N ──PeerInput (bounded)──► core thread: NodeCore ──Write──► store writer
//!              ▲   (mio loops: framing, handshake,        │      ▲                    │
//!              │    keepalive, rate limits)               │      └──── commit acks ◄──┘
//!              └────────── ShardCmd + Waker ◄─────────────┤
//!   embedder ◄──────────── Event (bounded) ◄──────────────┤
//!   API calls ───────────── closures run on the core ─────┘
//! ```
//!
//! Flow is lossless and bounded: when the embedder does not drain events, the core holds up to
//! `event_high_water` of them and then stops taking peer reports; the shards' reports then fill
//! their bounded channel and the shards stop reading sockets. TCP pushes back on the peers.

use crate::config::Config;
use crate::error::{Error, SendError};
use crate::event::{Event, PeerInfo};
use crate::fsm::addrbook::AddrInfo;
use crate::fsm::bans::{Ban, Subnet};
use crate::fsm::peer::PeerSettings;
use crate::fsm::sync::SyncProgress;
use crate::fsm::PeerId;
use crate::node::{CoreCounts, HeaderRef, NodeCore, Output, PeerInput};
use crate::reactor::{listeners, shard_of, Shard, ShardCmd, ShardContext};
use crate::store::files::BlockFiles;
use crate::store::lmdb::{LmdbOptions, LmdbStore};
use crate::store::memory::MemoryStore;
use crate::store::records::{PeerRecord, StoredBlock, StoredStats};
use crate::store::writer::StoreWriter;
use crate::store::{Store, StoreResult};
use crate::wire::{Block, BlockHeader, Hash256, Message, Transaction};
use bytes::Bytes;
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Select, Sender};
use mio::{Poll, Waker};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// A closure run on the core thread; what it returns runs after the core's outputs are carried
/// out (so an answer cannot overtake the writes and sends it caused).
type CoreCall = Box<dyn FnOnce(&mut NodeCore, Instant) -> Box<dyn FnOnce() + Send> + Send>;

enum CoreCmd {
    Call(CoreCall),
    /// The core's metrics, with the depths of the queues around it (the driver's to know).
    Metrics(Sender<crate::metrics::CoreMetrics>),
    Stop,
}

/// How long an API call waits for the core to answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a waiting call checks that the core thread is still there.
const CALL_SLICE: Duration = Duration::from_millis(50);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reports a thread's end (a panic included) to the core's driver.
struct ExitGuard {
    name: String,
    tx: Sender<(String, bool)>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let _ = self
            .tx
            .send((std::mem::take(&mut self.name), std::thread::panicking()));
    }
}

/// A running engine. Dropping it stops it.
pub struct Engine {
    config: Arc<Config>,
    cmds: Sender<CoreCmd>,
    shards: Vec<(Sender<ShardCmd>, Arc<Waker>)>,
    events: Receiver<Event>,
    local_addr: Option<SocketAddr>,
    writer: Arc<StoreWriter>,
    start_height: Arc<AtomicI32>,
    stopping: Arc<AtomicBool>,
    shard_threads: Vec<JoinHandle<()>>,
    core_thread: Option<JoinHandle<()>>,
    /// Big blocks' files, for reads.
    files: Option<BlockFiles>,
    /// The data dir's lock, held while the engine runs (released when the engine is dropped).
    dir_lock: Option<std::fs::File>,
}

fn too_big(size: u64) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::OutOfMemory,
        format!("a block of {size} bytes does not fit in memory here"),
    ))
}

/// Takes the data dir's lock file (`LOCK`, held until the engine stops): a second engine, in this
/// process or another, is refused instead of sharing the store.
fn lock_data_dir(path: &std::path::Path) -> Result<std::fs::File, Error> {
    let err = |source| Error::DataDir {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.join("LOCK"))
        .map_err(err)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "it is in use by another running bsn (its LOCK file is held)",
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(err(e)),
    }
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
    /// use, a stored chain that contradicts a checkpoint) is reported here. The store is LMDB in
    /// `config.data_dir`, or in memory without one.
    pub fn start(config: Config) -> Result<Engine, Error> {
        config.validate()?;
        let lock = match &config.data_dir {
            Some(d) => {
                check_data_dir(d)?;
                Some(lock_data_dir(d)?)
            }
            None => None,
        };
        let store: Arc<dyn Store> = match &config.data_dir {
            Some(d) => Arc::new(LmdbStore::open(d, &LmdbOptions::default()).map_err(Error::Store)?),
            None => Arc::new(MemoryStore::new()),
        };
        let mut engine = Engine::start_with_store(config, store)?;
        engine.dir_lock = lock;
        Ok(engine)
    }

    /// Starts the engine over a store the embedder brings (any [`Store`]; `config.data_dir` is
    /// not used). A store that fails a write stops the engine with [`Event::Fatal`].
    pub fn start_with_store(mut config: Config, store: Arc<dyn Store>) -> Result<Engine, Error> {
        config.validate()?;
        if config.headers_only {
            // A header client serves no blocks.
            config.services &= !crate::wire::types::NODE_NETWORK;
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
        let now = Instant::now();
        let core = NodeCore::new(
            config.clone(),
            store.clone(),
            local_addr,
            now,
            unix_now(),
            crate::util::random_u64(),
        )?;
        let (tip, height) = core.best_header();
        let files = if config.block_file_threshold < u64::MAX && !config.headers_only {
            let files = match &config.data_dir {
                Some(d) => BlockFiles::open(d.join("blocks")),
                None => BlockFiles::temporary(),
            }
            .map_err(Error::Io)?;
            let removed = files.remove_orphans(store.as_ref()).map_err(Error::Io)?;
            if removed > 0 {
                log::info!("removed {removed} block files no stored block names");
            }
            Some(files)
        } else {
            None
        };
        let config = Arc::new(config);

        let mut polls = Vec::new();
        let mut shards = Vec::new();
        let mut shard_rx = Vec::new();
        for _ in 0..config.shards {
            let poll = Poll::new().map_err(Error::Io)?;
            let waker = Arc::new(Shard::waker(&poll).map_err(Error::Io)?);
            // Bounded: the core (and API callers) wait when a shard is this far behind; the
            // shards never wait on the core, so this cannot deadlock.
            let (tx, rx) = bounded(config.core_queue);
            polls.push(poll);
            shards.push((tx, waker));
            shard_rx.push(rx);
        }
        let writer =
            Arc::new(StoreWriter::start(store, Duration::from_secs(1)).map_err(Error::Io)?);
        let (peer_tx, peer_rx) = bounded(config.core_queue);
        let (cmd_tx, cmd_rx) = bounded(1024);
        let (ev_tx, ev_rx) = bounded(config.event_capacity);
        // Unbounded by type, bounded by construction: one entry per finished thread.
        let (exit_tx, exit_rx) = unbounded();
        let start_height = Arc::new(AtomicI32::new(height.min(i32::MAX as u32) as i32));
        let stopping = Arc::new(AtomicBool::new(false));
        let nonce_key = crate::util::random_u64();

        let mut engine = Engine {
            config: config.clone(),
            cmds: cmd_tx,
            shards: shards.clone(),
            events: ev_rx,
            local_addr,
            writer: writer.clone(),
            start_height: start_height.clone(),
            stopping: stopping.clone(),
            shard_threads: Vec::new(),
            core_thread: None,
            files: files.clone(),
            dir_lock: None,
        };
        let driver = Driver {
            core,
            peers: peer_rx,
            cmds: cmd_rx,
            exits: exit_rx,
            events: ev_tx,
            pending: VecDeque::new(),
            shards: shards.clone(),
            wake: vec![false; shards.len()],
            next_dial: 0,
            writer,
            acks: unbounded(),
            start_height: start_height.clone(),
            stopping: stopping.clone(),
            high_water: config.event_high_water,
            fatal: None,
            files: files.clone(),
            handed: 0,
        };
        let exit = exit_tx.clone();
        engine.core_thread = Some(
            std::thread::Builder::new()
                .name("bsn-core".into())
                .spawn(move || {
                    let _guard = ExitGuard {
                        name: "bsn-core".into(),
                        tx: exit,
                    };
                    driver.run()
                })
                .map_err(Error::Io)?,
        );
        let cores = if config.pin_threads {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut listen_socks = listen_socks.into_iter();
        for (i, (poll, rx)) in polls.into_iter().zip(shard_rx).enumerate() {
            let ctx = ShardContext {
                index: i,
                config: config.clone(),
                settings: PeerSettings {
                    block_files: files.clone(),
                    ..config.peer_settings()
                },
                core: peer_tx.clone(),
                start_height: start_height.clone(),
                nonce_key,
                siblings: shards.clone(),
                accept_for_all: single_listener && i == 0 && shards.len() > 1,
            };
            let shard = Shard::new(poll, listen_socks.next(), rx, ctx).map_err(Error::Io)?;
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            let exit = exit_tx.clone();
            let h = std::thread::Builder::new()
                .name(format!("bsn-shard-{i}"))
                .spawn(move || {
                    let _guard = ExitGuard {
                        name: format!("bsn-shard-{i}"),
                        tx: exit,
                    };
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
        drop(peer_tx);
        if !config.seeds.is_empty() {
            // Names are resolved off the event loops and the core (DNS can take seconds).
            let seeds = config.seeds.clone();
            let port = config.network.default_port;
            let cmds = engine.cmds.clone();
            std::thread::Builder::new()
                .name("bsn-seeds".into())
                .spawn(move || {
                    let mut addrs = Vec::new();
                    for s in &seeds {
                        match crate::config::resolve_addrs(s, port) {
                            Ok(a) => addrs.extend(a),
                            Err(e) => log::warn!("seed {s}: {e}"),
                        }
                    }
                    let call: CoreCall = Box::new(move |core, now| {
                        core.add_seeds(&addrs, now);
                        Box::new(|| {})
                    });
                    let _ = cmds.send(CoreCmd::Call(call));
                })
                .map_err(Error::Io)?;
        }
        if let Some(a) = local_addr {
            log::info!(
                "listening on {a} ({} shards, network {}, tip {height} {tip})",
                config.shards,
                config.network.name
            );
        }
        Ok(engine)
    }

    /// Runs `f` on the core thread and returns its answer (after the outputs it caused are
    /// carried out).
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut NodeCore, Instant) -> R + Send + 'static,
    ) -> Result<R, Error> {
        self.ask(move |tx| {
            CoreCmd::Call(Box::new(move |core, now| {
                let r = f(core, now);
                Box::new(move || {
                    let _ = tx.send(r);
                })
            }))
        })
    }

    /// Sends the core's thread a command carrying a reply channel, and waits for the reply.
    fn ask<R: Send + 'static>(&self, make: impl FnOnce(Sender<R>) -> CoreCmd) -> Result<R, Error> {
        if self.core_thread.is_none() {
            return Err(Error::Stopped);
        }
        let (tx, rx) = bounded(1);
        // Waited on in slices: a core thread that ended (a fatal error) answers nothing, and a
        // call queued just before it ended is not dropped until the engine is.
        let deadline = Instant::now() + CALL_TIMEOUT;
        let mut cmd = make(tx);
        loop {
            match self.cmds.send_timeout(cmd, CALL_SLICE) {
                Ok(()) => break,
                Err(crossbeam_channel::SendTimeoutError::Timeout(c))
                    if !self.core_gone(deadline) =>
                {
                    cmd = c
                }
                Err(_) => return Err(Error::Stopped),
            }
        }
        loop {
            match rx.recv_timeout(CALL_SLICE) {
                Ok(r) => return Ok(r),
                Err(RecvTimeoutError::Timeout) if !self.core_gone(deadline) => {}
                Err(_) => return Err(Error::Stopped),
            }
        }
    }

    /// Whether the core thread has ended, or `deadline` has passed.
    fn core_gone(&self, deadline: Instant) -> bool {
        Instant::now() >= deadline || self.core_thread.as_ref().is_none_or(|h| h.is_finished())
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The address the engine listens on (with the real port when the configured one was 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The event stream (clone it freely). Events are never dropped: an embedder that does not
    /// drain it slows the engine's peers down instead.
    pub fn events(&self) -> Receiver<Event> {
        self.events.clone()
    }

    /// Overrides the height we announce in `version` messages (the core keeps it at the best
    /// header's height as the chain grows).
    pub fn set_start_height(&self, h: i32) {
        self.start_height.store(h, Ordering::Relaxed);
    }

    /// Dials a peer. The outcome arrives as [`Event::PeerConnected`]; as
    /// [`Event::ConnectFailed`] when the dial is not even started (a banned address, the
    /// outbound limit reached); or as [`Event::PeerDisconnected`] when the connection fails or
    /// closes before its handshake (refused, timed out).
    pub fn connect(&self, addr: SocketAddr) -> Result<(), Error> {
        self.call(move |core, now| core.dial(addr, now)).map(|_| ())
    }

    /// Closes a connection.
    pub fn disconnect(&self, id: PeerId) -> Result<(), Error> {
        match self.call(move |core, _| core.disconnect(id))? {
            true => Ok(()),
            false => Err(Error::UnknownPeer(id)),
        }
    }

    /// The shard of `id`; a block `getdata` is first noted by the core (blocks the embedder
    /// asks for with its own `getdata` are handed to it when they come, as [`Event::Message`],
    /// and their senders are not scored for unrequested data). Whether the peer exists and is
    /// ready, the shard that owns it answers.
    fn check_send(&self, id: PeerId, msg: &Message) -> Result<usize, SendError> {
        let shard = shard_of(id);
        if shard >= self.shards.len() {
            return Err(SendError::NoSuchPeer(id));
        }
        if let Message::GetData(_) = msg {
            let m = msg.clone();
            self.call(move |core, now| core.note_embedder_send(id, &m, now))
                .map_err(|_| SendError::Stopped)?;
        }
        Ok(shard)
    }

    fn command_shard(&self, shard: usize, cmd: ShardCmd) -> Result<(), SendError> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(SendError::Stopped);
        }
        let (tx, waker) = &self.shards[shard];
        tx.send_timeout(cmd, CALL_TIMEOUT)
            .map_err(|_| SendError::Stopped)?;
        let _ = waker.wake();
        Ok(())
    }

    /// Sends a message to one peer and waits until its event loop has queued it for the socket.
    pub fn send(&self, id: PeerId, msg: Message) -> Result<(), SendError> {
        let shard = self.check_send(id, &msg)?;
        let (tx, rx) = bounded(1);
        self.command_shard(shard, ShardCmd::Send(id, msg, Some(tx)))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            match rx.recv_timeout(CALL_SLICE) {
                Ok(r) => return r,
                Err(RecvTimeoutError::Timeout) => {
                    if self.shard_threads[shard].is_finished() {
                        return Err(SendError::Stopped);
                    }
                    if Instant::now() >= deadline {
                        return Err(SendError::Timeout);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err(SendError::Stopped),
            }
        }
    }

    /// Sends a message to one peer without waiting for its event loop.
    pub fn send_nowait(&self, id: PeerId, msg: Message) -> Result<(), SendError> {
        let shard = self.check_send(id, &msg)?;
        self.command_shard(shard, ShardCmd::Send(id, msg, None))
    }

    /// Sends a message to every peer that completed its handshake.
    pub fn broadcast(&self, msg: Message) -> Result<(), Error> {
        self.call(move |core, now| core.broadcast(msg, now))
    }

    /// Every connection with its state and counters (empty once the engine has stopped).
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut all: Vec<PeerInfo> = self
            .shard_replies(ShardCmd::Peers)
            .into_iter()
            .flat_map(|(_, v)| v)
            .collect();
        all.sort_by_key(|p| p.id);
        self.call(move |core, now| {
            core.rate_peers(&mut all, now);
            all
        })
        .unwrap_or_default()
    }

    /// Asks every shard, and collects the answers of those that answer (with their index).
    fn shard_replies<R: Send + 'static>(
        &self,
        make: impl Fn(Sender<R>) -> ShardCmd,
    ) -> Vec<(usize, R)> {
        let mut all = Vec::new();
        if self.core_thread.is_none() || self.stopping.load(Ordering::Relaxed) {
            return all;
        }
        let replies: Vec<_> = self
            .shards
            .iter()
            .enumerate()
            .filter_map(|(i, (tx, waker))| {
                let (rtx, rrx) = bounded(1);
                tx.send_timeout(make(rtx), CALL_TIMEOUT).ok()?;
                let _ = waker.wake();
                Some((i, rrx))
            })
            .collect();
        let deadline = Instant::now() + CALL_TIMEOUT;
        for (i, rx) in replies {
            // a shard that ended (the engine failed) answers nothing
            let gone = || {
                Instant::now() >= deadline
                    || self.shard_threads.get(i).is_none_or(|h| h.is_finished())
            };
            loop {
                match rx.recv_timeout(CALL_SLICE) {
                    Ok(v) => {
                        all.push((i, v));
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) if !gone() => {}
                    Err(_) => break,
                }
            }
        }
        all
    }

    /// Every peer address the engine knows (from the store and this run), with its record.
    pub fn known_peers(&self) -> Vec<(SocketAddr, PeerRecord)> {
        self.call(|core, _| core.known_peers()).unwrap_or_default()
    }

    /// Lifetime statistics of a peer address (every connection, per command), as of the last
    /// report of its connection's counters (every second while it is busy, and at disconnect).
    pub fn peer_stats(&self, addr: &SocketAddr) -> Option<StoredStats> {
        let a = *addr;
        self.call(move |core, _| core.peer_stats(&a)).ok().flatten()
    }

    /// The best header's hash and height.
    pub fn best_header(&self) -> Result<(Hash256, u32), Error> {
        self.call(|core, _| core.best_header())
    }

    /// Bans an IP (`1.2.3.4`) or subnet (`1.2.3.0/24`, `fd00::/64`) for `duration`; live
    /// connections inside it are dropped and it is never dialled or accepted until it ends.
    pub fn ban(&self, subnet: &str, duration: Duration, reason: &str) -> Result<Subnet, Error> {
        let s: Subnet = subnet.parse().map_err(Error::InvalidInput)?;
        let reason = reason.to_string();
        self.call(move |core, now| {
            let until = unix_now().saturating_add(duration.as_secs().max(1));
            core.ban_subnet(s, until, &reason, now)
        })?
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
        Ok(s)
    }

    /// Lifts a ban; `Ok(false)` when there was none for exactly that subnet.
    pub fn unban(&self, subnet: &str) -> Result<bool, Error> {
        let s: Subnet = subnet.parse().map_err(Error::InvalidInput)?;
        self.call(move |core, _| core.unban(&s))
    }

    /// Whether an address is banned now (false once the engine has stopped).
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.call(move |core, now| core.is_banned(ip, now))
            .unwrap_or(false)
    }

    /// Every ban in force or not yet swept.
    pub fn bans(&self) -> Vec<(Subnet, Ban)> {
        self.call(|core, _| core.bans()).unwrap_or_default()
    }

    /// Lifts every ban.
    pub fn clear_bans(&self) -> Result<(), Error> {
        self.call(|core, _| core.clear_bans())
    }

    /// An address's current ban score (0 once the engine has stopped).
    pub fn ban_score(&self, ip: IpAddr) -> u32 {
        self.call(move |core, now| core.ban_score(ip, now))
            .unwrap_or(0)
    }

    /// Imports blocks from a block file (records of the network's disk magic, a u32 length and
    /// the block, as in Bitcoin nodes' `blk*.dat`): headers into the chain, blocks into the
    /// store, so the engine can serve them. Returns the blocks imported and the new tip height
    /// once they are committed.
    pub fn import_block_file(&self, path: &std::path::Path) -> Result<(usize, u32), Error> {
        let data = Bytes::from(std::fs::read(path).map_err(Error::Io)?);
        let magic = self.config.network.disk_magic;
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
            let block = <Block as crate::wire::Decode>::decode_all(raw)
                .map_err(|e| bad(format!("block does not decode: {e}")))?;
            blocks.push(block);
            pos += 8 + len;
        }
        let (stored, height, error) =
            self.call(move |core, now| core.import_blocks(&blocks, now))?;
        self.writer.flush().map_err(Error::Store)?;
        if let Some((i, e)) = error {
            return Err(Error::InvalidInput(format!(
                "{}: block {i} refused: {e} ({stored} imported)",
                path.display()
            )));
        }
        Ok((stored, height))
    }

    /// Every address in the address book, with what is known of it.
    pub fn addresses(&self) -> Vec<(SocketAddr, AddrInfo)> {
        self.call(|core, _| core.addresses()).unwrap_or_default()
    }

    /// Hands in a new block (mined here or received elsewhere): its header joins the chain, the
    /// block is stored, and if it is the new tip it is announced to every peer (headers to those
    /// that sent `sendheaders`, inv to the others). Returns its height.
    pub fn submit_block(&self, block: Block) -> Result<u32, Error> {
        let big = block.raw().len() as u64 >= self.config.block_file_threshold;
        if let (true, Some(files)) = (big, self.files.clone()) {
            // over the file threshold: written to a block file here, in the caller's thread,
            // and stored as such (served from it in pieces, as blocks that arrive)
            let hash = block.hash();
            if block.compute_merkle_root() != block.header.merkle_root {
                return Err(Error::InvalidInput(format!(
                    "block {hash}: merkle root does not match its transactions"
                )));
            }
            let (mut f, id) = files.create().map_err(Error::Io)?;
            let written = std::io::Write::write_all(&mut f, block.raw()).and_then(|()| {
                drop(f);
                files.complete(id, &hash)
            });
            if let Err(e) = written {
                files.abandon(id);
                return Err(Error::Io(e));
            }
            let r = crate::store::files::BlockFileRef {
                id,
                size: block.raw().len() as u64,
                tx_count: block.txs.len() as u64,
                checksum: None,
            };
            let header = block.header;
            drop(block);
            return self
                .call(move |core, now| core.submit_block_file(header, r, now))?
                .map_err(Error::InvalidInput);
        }
        self.call(move |core, now| core.submit_block(block, now))?
            .map_err(Error::InvalidInput)
    }

    /// [`Engine::submit_block`] for a block in a file (a block of gigabytes is never whole in
    /// memory): the file is checked a piece at a time in the calling thread (merkle root,
    /// structure), then linked (or, across file systems, copied) into the engine's block files;
    /// the caller's file is left as it was. Returns the block's height.
    pub fn submit_block_file(&self, path: &std::path::Path) -> Result<u32, Error> {
        let files = self.files.clone().ok_or_else(|| {
            Error::InvalidInput(
                "this engine keeps no block files (headers only, or the file threshold is off)"
                    .into(),
            )
        })?;
        let src = std::fs::File::open(path).map_err(Error::Io)?;
        let mut s = crate::wire::stream::BlockStream::new(false);
        let mut buf = vec![0u8; 4 << 20];
        let mut offset = 0u64;
        loop {
            let n = crate::store::files::read_at(&src, offset, &mut buf).map_err(Error::Io)?;
            if n == 0 {
                break;
            }
            s.feed(&buf[..n], &mut |_| {})
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
            offset += n as u64;
        }
        let sum = s
            .finish()
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
        let id = files.adopt(path).map_err(Error::Io)?;
        files.complete(id, &sum.hash).map_err(Error::Io)?;
        let r = crate::store::files::BlockFileRef {
            id,
            size: sum.size,
            tx_count: sum.tx_count,
            checksum: None,
        };
        let header = sum.header;
        self.call(move |core, now| core.submit_block_file(header, r, now))?
            .map_err(Error::InvalidInput)
    }

    /// Relays a transaction from the embedder to every peer (announced at the next announce
    /// interval). Every peer whose [`Event::PeerConnected`] came before this call gets it.
    pub fn submit_tx(&self, tx: Transaction) -> Result<(), Error> {
        self.call(move |core, _| core.submit_tx(tx, None))
    }

    /// [`Engine::submit_tx`] with the transaction's fee in satoshis: peers whose `feefilter`
    /// asks for a higher rate (per 1000 bytes) are not told of it, as the SV node does. (bsn
    /// holds no outputs to compute a fee from, so without one every peer is told.)
    pub fn submit_tx_with_fee(&self, tx: Transaction, fee: u64) -> Result<(), Error> {
        self.call(move |core, _| core.submit_tx(tx, Some(fee)))
    }

    /// Accepts a transaction handed over with [`Event::TxReceived`]: it is relayed on. False
    /// when no such transaction waits for a decision.
    pub fn accept_tx(&self, txid: &Hash256) -> bool {
        let h = *txid;
        self.call(move |core, _| core.accept_tx(&h, None))
            .unwrap_or(false)
    }

    /// [`Engine::accept_tx`] with the transaction's fee in satoshis (what the embedder's
    /// validation computed): peers whose `feefilter` asks for more are not told of it.
    pub fn accept_tx_with_fee(&self, txid: &Hash256, fee: u64) -> bool {
        let h = *txid;
        self.call(move |core, _| core.accept_tx(&h, Some(fee)))
            .unwrap_or(false)
    }

    /// Rejects a transaction handed over with [`Event::TxReceived`]: a `reject` goes to its
    /// source, which is scored `score` ban points (as the SV node scores what its validation
    /// found: 0 for a policy failure, 10 or 100 for consensus). False when no such transaction
    /// waits for a decision.
    pub fn reject_tx(&self, txid: &Hash256, reason: &str, score: u32) -> bool {
        let (h, reason) = (*txid, reason.to_string());
        self.call(move |core, now| core.reject_tx(&h, &reason, score, now))
            .unwrap_or(false)
    }

    /// Header sync progress, and the height up to which blocks are stored without a gap
    /// (`None` in headers-only mode).
    pub fn sync_progress(&self) -> Result<(SyncProgress, Option<u32>), Error> {
        self.call(|core, _| core.sync_progress())
    }

    /// A header of the best chain by height, or any known header by hash, with its height.
    pub fn header(&self, at: HeaderRef) -> Option<(BlockHeader, u32)> {
        self.call(move |core, _| core.header(at)).ok().flatten()
    }

    /// A stored block by height (best chain) or hash.
    pub fn block(&self, at: HeaderRef) -> Result<Option<Block>, Error> {
        let raw = self.with_stored_block(at, |hash, b| match b {
            StoredBlock::Inline(raw) => Ok::<_, Error>(Bytes::copy_from_slice(raw)),
            StoredBlock::File(r) => {
                let f = self.block_file(&hash, &r)?;
                let mut v = vec![0u8; usize::try_from(r.size).map_err(|_| too_big(r.size))?];
                crate::store::files::read_at(&f, 0, &mut v).map_err(Error::Io)?;
                Ok(Bytes::from(v))
            }
        })?;
        let Some(raw) = raw.transpose()? else {
            return Ok(None);
        };
        <Block as crate::wire::Decode>::decode_all(raw)
            .map(Some)
            .map_err(|e| {
                let hash = self.header(at).map(|(h, _)| h.hash()).unwrap_or_default();
                Error::Store(crate::store::StoreError::Corrupt(format!(
                    "stored block {hash}: {e}"
                )))
            })
    }

    /// The size in bytes of a stored block, without reading it (`None`: not stored).
    pub fn block_size(&self, at: HeaderRef) -> Result<Option<u64>, Error> {
        self.with_stored_block(at, |_, b| match b {
            StoredBlock::Inline(raw) => raw.len() as u64,
            StoredBlock::File(r) => r.size,
        })
    }

    /// How many transactions a stored block holds, without reading them (`None`: not stored).
    pub fn block_tx_count(&self, at: HeaderRef) -> Result<Option<u64>, Error> {
        self.with_stored_block(at, |_, b| match b {
            StoredBlock::Inline(raw) => raw
                .get(crate::wire::block::HEADER_LEN..)
                .and_then(crate::wire::codec::compact_size_at)
                .map_or(0, |(n, _)| n),
            StoredBlock::File(r) => r.tx_count,
        })
    }

    /// Copies the bytes of a stored block from `offset` into `buf`, as many as fit; the number
    /// copied (0 past the end), `None` when the block is not stored. A block of any size is
    /// read this way in pieces, never whole in memory (LMDB hands out its pages in place; a
    /// block over the file threshold is read from its file).
    pub fn read_block(
        &self,
        at: HeaderRef,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<Option<usize>, Error> {
        self.with_stored_block(at, |hash, b| match b {
            StoredBlock::Inline(raw) => {
                let from = usize::try_from(offset).unwrap_or(usize::MAX).min(raw.len());
                let n = buf.len().min(raw.len() - from);
                buf[..n].copy_from_slice(&raw[from..from + n]);
                Ok(n)
            }
            StoredBlock::File(r) => {
                let f = self.block_file(&hash, &r)?;
                let n = usize::try_from(r.size.saturating_sub(offset))
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                crate::store::files::read_at(&f, offset, &mut buf[..n]).map_err(Error::Io)
            }
        })?
        .transpose()
    }

    /// The ids of a stored block's transactions, in order, read in place: no transaction (and
    /// not the block) is copied out, so this costs one pass of hashing whatever the block's size
    /// (a block in a file is read a piece at a time).
    pub fn block_txids(&self, at: HeaderRef) -> Result<Option<Vec<Hash256>>, Error> {
        let corrupt = |what: String| {
            Error::Store(crate::store::StoreError::Corrupt(format!(
                "a stored block's transactions do not parse: {what}"
            )))
        };
        self.with_stored_block(at, |hash, b| match b {
            StoredBlock::Inline(raw) => {
                let body = raw
                    .get(crate::wire::block::HEADER_LEN..)
                    .ok_or_else(|| corrupt("no header".into()))?;
                let (n, len) = crate::wire::codec::compact_size_at(body)
                    .ok_or_else(|| corrupt("no count".into()))?;
                let mut at = len;
                let mut ids = Vec::with_capacity(n.min(1 << 20) as usize);
                for _ in 0..n {
                    let (l, id) = crate::wire::tx::tx_extent(&body[at..])
                        .ok_or_else(|| corrupt(format!("transaction {}", ids.len())))?;
                    ids.push(id);
                    at += l;
                }
                Ok(ids)
            }
            StoredBlock::File(r) => {
                let f = self.block_file(&hash, &r)?;
                let mut ids = Vec::with_capacity(r.tx_count.min(1 << 20) as usize);
                let mut s = crate::wire::stream::BlockStream::new(false);
                let mut buf = vec![0u8; 1 << 20];
                let mut offset = 0;
                while offset < r.size {
                    let n =
                        crate::store::files::read_at(&f, offset, &mut buf).map_err(Error::Io)?;
                    if n == 0 {
                        return Err(corrupt("the file ended early".into()));
                    }
                    s.feed(&buf[..n], &mut |id| ids.push(id))
                        .map_err(|e| corrupt(e.to_string()))?;
                    offset += n as u64;
                }
                s.finish().map_err(|e| corrupt(e.to_string()))?;
                Ok(ids)
            }
        })?
        .transpose()
    }

    /// A stored block's file, opened.
    fn block_file(
        &self,
        hash: &Hash256,
        r: &crate::store::files::BlockFileRef,
    ) -> Result<std::fs::File, Error> {
        let files = self.files.as_ref().ok_or_else(|| {
            Error::Store(crate::store::StoreError::Corrupt(format!(
                "block {hash} is in a file, and this engine keeps no block files"
            )))
        })?;
        files.open_block(hash, r).map_err(Error::Io)
    }

    fn with_stored_block<R>(
        &self,
        at: HeaderRef,
        f: impl FnOnce(Hash256, StoredBlock<'_>) -> R,
    ) -> Result<Option<R>, Error> {
        let Some((h, _)) = self.header(at) else {
            return Ok(None);
        };
        let hash = h.hash();
        let store = self.writer.store().clone();
        crate::store::records::with_block(store.as_ref(), &hash, |v| {
            v.map(|v| f(hash, StoredBlock::parse(v)))
        })
        .map_err(Error::Store)
    }

    /// The store, for reads (writes go through the engine).
    pub fn store(&self) -> Arc<dyn Store> {
        self.writer.store().clone()
    }

    /// Everything the engine measures (traffic per command, disconnects and their reasons, ban
    /// events, sync counters, queue depths, store commit and ping latencies), gathered from the
    /// shards, the core and the store writer.
    pub fn metrics(&self) -> Result<crate::metrics::Metrics, Error> {
        let shards = self.shard_replies(ShardCmd::Metrics);
        let core = self.ask(CoreCmd::Metrics)?;
        Ok(crate::metrics::Metrics {
            core,
            shards: shards
                .into_iter()
                .map(|(i, mut m)| {
                    m.commands_queued = self.shards[i].0.len();
                    m
                })
                .collect(),
            store_commit: self.writer.commit_latency(),
            store_queue: self.writer.queue_len(),
            store_failures: self.writer.failures(),
        })
    }

    /// Where the chain stands: tips, heights, sync rates and the time left.
    pub fn chain_status(&self) -> Result<crate::ChainStatus, Error> {
        self.call(|core, now| core.chain_status(now))
    }

    /// How many entries each of the core's maps holds (peers, requests, buffers...): for
    /// metrics and for tests that check nothing is left behind.
    pub fn core_counts(&self) -> Result<CoreCounts, Error> {
        self.call(|core, _| core.counts())
    }

    /// Stops the engine: every connection closed, every thread joined, the store flushed. Also
    /// done on drop.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(core) = self.core_thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        for (tx, waker) in &self.shards {
            let _ = tx.send_timeout(ShardCmd::Stop, CALL_TIMEOUT);
            let _ = waker.wake();
        }
        for h in self.shard_threads.drain(..) {
            let _ = h.join();
        }
        let _ = self.cmds.send_timeout(CoreCmd::Stop, CALL_TIMEOUT);
        let _ = core.join();
        if let Err(e) = self.writer.flush() {
            log::error!("store flush at stop failed: {e}");
        }
        self.writer.stop();
        log::info!("engine stopped");
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The core's thread: feeds the core its inputs and carries out its outputs.
struct Driver {
    core: NodeCore,
    peers: Receiver<PeerInput>,
    cmds: Receiver<CoreCmd>,
    exits: Receiver<(String, bool)>,
    events: Sender<Event>,
    /// Events the embedder's channel had no room for yet, in order.
    pending: VecDeque<Event>,
    shards: Vec<(Sender<ShardCmd>, Arc<Waker>)>,
    wake: Vec<bool>,
    next_dial: usize,
    writer: Arc<StoreWriter>,
    acks: (Sender<Acked>, Receiver<Acked>),
    start_height: Arc<AtomicI32>,
    stopping: Arc<AtomicBool>,
    high_water: usize,
    fatal: Option<String>,
    /// Big blocks' files (`None`: every block in memory).
    files: Option<BlockFiles>,
    /// Names given to the embedder's block files so far.
    handed: u64,
}

/// A commit acknowledgement: the core's ack number and the writer's outcome.
type Acked = (u64, StoreResult<u64>);

/// Peer reports taken in one turn before outputs are carried out and other inputs looked at.
const BATCH: usize = 64;

impl Driver {
    fn run(mut self) {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_loop()));
        if let Err(p) = run {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            self.fail(format!("the node core panicked: {what}"));
        }
    }

    /// Raises `Event::Fatal` after whatever is pending and stops the shards; calls return
    /// `Stopped` from now on.
    fn fail(&mut self, reason: String) {
        log::error!("engine failed: {reason}");
        self.stopping.store(true, Ordering::SeqCst);
        for (tx, waker) in &self.shards {
            let _ = tx.try_send(ShardCmd::Stop);
            let _ = waker.wake();
        }
        self.pending.push_back(Event::Fatal { reason });
        for e in self.pending.drain(..) {
            if self.events.send_timeout(e, Duration::from_secs(1)).is_err() {
                break;
            }
        }
    }

    fn run_loop(&mut self) {
        loop {
            self.carry_out();
            if let Some(reason) = self.fatal.take() {
                self.fail(reason);
                return;
            }
            while let Some(e) = self.pending.pop_front() {
                if let Err(crossbeam_channel::TrySendError::Full(e)) = self.events.try_send(e) {
                    self.pending.push_front(e);
                    break;
                }
            }
            let stopping = self.stopping.load(Ordering::Relaxed);
            // An embedder that does not keep up: take no more work from peers (they stop being
            // read) until it has caught up. At stop the last reports are taken regardless.
            let take_peers = self.pending.len() < self.high_water || stopping;
            let now = Instant::now();
            let deadline = self.core.poll_timeout();
            if deadline <= now {
                self.core.handle_timeout(now);
                continue;
            }
            let mut sel = Select::new();
            let i_cmd = sel.recv(&self.cmds);
            let i_ack = sel.recv(&self.acks.1);
            let i_exit = sel.recv(&self.exits);
            let i_peer = take_peers.then(|| sel.recv(&self.peers));
            let i_ev = (!self.pending.is_empty()).then(|| sel.send(&self.events));
            let Ok(op) = sel.select_deadline(deadline) else {
                continue; // the deadline: handled at the top
            };
            let i = op.index();
            if i == i_cmd {
                match op.recv(&self.cmds) {
                    Ok(CoreCmd::Call(f)) => {
                        let now = Instant::now();
                        self.core.settle(now);
                        let done = f(&mut self.core, now);
                        self.carry_out();
                        done();
                    }
                    Ok(CoreCmd::Metrics(reply)) => {
                        let mut m = self.core.metrics(Instant::now());
                        m.input_queue = self.peers.len();
                        m.call_queue = self.cmds.len();
                        m.event_queue = self.events.len() + self.pending.len();
                        let _ = reply.send(m);
                    }
                    Ok(CoreCmd::Stop) | Err(_) => return self.finish(),
                }
            } else if i == i_ack {
                if let Ok((ack, r)) = op.recv(&self.acks.1) {
                    self.committed(ack, r);
                }
            } else if i == i_exit {
                if let Ok((name, panicked)) = op.recv(&self.exits) {
                    if panicked || !self.stopping.load(Ordering::Relaxed) {
                        self.fatal = Some(format!(
                            "thread {name} {}",
                            if panicked { "panicked" } else { "ended" }
                        ));
                    }
                }
            } else if Some(i) == i_peer {
                match op.recv(&self.peers) {
                    Ok(input) => {
                        let now = Instant::now();
                        self.core.handle_peer(input, now);
                        // take what else is waiting, up to a batch, before the outputs go out
                        for _ in 1..BATCH {
                            if self.core.outputs_len() > 4 * BATCH || self.core.has_deferred() {
                                break;
                            }
                            match self.peers.try_recv() {
                                Ok(input) => self.core.handle_peer(input, now),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(_) => {
                        if !self.stopping.load(Ordering::Relaxed) {
                            self.fatal = Some("every shard is gone".into());
                        }
                    }
                }
            } else if Some(i) == i_ev {
                let e = self
                    .pending
                    .pop_front()
                    .expect("selected with an event pending");
                if op.send(&self.events, e).is_err() {
                    // only the engine's own receiver could be gone: it is stopping
                }
            }
        }
    }

    fn committed(&mut self, ack: u64, r: StoreResult<u64>) {
        match r {
            Ok(_) => self.core.handle_committed(ack, Instant::now()),
            Err(e) => self.fatal = Some(format!("a store commit failed: {e}")),
        }
    }

    /// Carries out every output of the core.
    fn carry_out(&mut self) {
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Send(id, m) => {
                    self.command_shard(shard_of(id), ShardCmd::Send(id, m, None))
                }
                Output::Disconnect(id, reason) => {
                    self.command_shard(shard_of(id), ShardCmd::Disconnect(id, reason))
                }
                Output::JoinStream {
                    from,
                    owner,
                    stream_type,
                    policy,
                } => self.command_shard(
                    shard_of(from),
                    ShardCmd::JoinStream {
                        from,
                        owner,
                        stream_type,
                        policy,
                    },
                ),
                Output::RefuseStream(id, why) => {
                    self.command_shard(shard_of(id), ShardCmd::RefuseStream(id, why))
                }
                Output::NotifyDrained(id) => {
                    self.command_shard(shard_of(id), ShardCmd::NotifyDrained(id))
                }
                Output::Dial(addr) => {
                    let s = self.next_dial % self.shards.len();
                    self.next_dial += 1;
                    self.command_shard(s, ShardCmd::Dial(addr));
                }
                Output::Write { batch, ack: None } => {
                    // nobody waits on it, but a failure is still fatal: the store would no
                    // longer hold what the core believes it holds
                    let tx = self.acks.0.clone();
                    let cb = Box::new(move |r: StoreResult<u64>| {
                        if r.is_err() {
                            let _ = tx.send((0, r));
                        }
                    });
                    if self.writer.submit_then(batch, cb).is_err() {
                        self.fatal = Some("the store writer is gone".into());
                    }
                }
                Output::Write {
                    batch,
                    ack: Some(ack),
                } => {
                    let tx = self.acks.0.clone();
                    let cb = Box::new(move |r| {
                        let _ = tx.send((ack, r));
                    });
                    if self.writer.submit_then(batch, cb).is_err() {
                        self.fatal = Some("the store writer is gone".into());
                    }
                }
                Output::SendBlockFile(id, hash, r) => {
                    self.command_shard(shard_of(id), ShardCmd::SendBlockFile(id, hash, r))
                }
                Output::RemoveBlockFile(hash, id) => {
                    if let Some(f) = &self.files {
                        f.remove(&hash, id);
                    }
                }
                Output::EmbedderBlockFile {
                    peer,
                    summary,
                    file,
                } => self.hand_block_file(peer, summary, file),
                Output::Event(e) => self.pending.push_back(e),
                Output::Height(h) => self
                    .start_height
                    .store(h.min(i32::MAX as u32) as i32, Ordering::Relaxed),
            }
        }
        for (i, w) in self.wake.iter_mut().enumerate() {
            if std::mem::take(w) {
                let _ = self.shards[i].1.wake();
            }
        }
    }

    /// Gives the embedder a name of its own for a block file it asked for.
    fn hand_block_file(
        &mut self,
        peer: crate::fsm::PeerId,
        summary: crate::wire::stream::BlockSummary,
        file: crate::store::files::BlockFileRef,
    ) {
        let Some(files) = &self.files else {
            return;
        };
        self.handed += 1;
        let path = files.dir().join(format!(
            "{}-{:016x}.{}.embedder",
            summary.hash, file.id, self.handed
        ));
        match std::fs::hard_link(files.path(&summary.hash, file.id), &path) {
            Ok(()) => self.pending.push_back(Event::BlockFile {
                peer,
                header: summary.header,
                hash: summary.hash,
                tx_count: summary.tx_count,
                size: summary.size,
                path,
            }),
            Err(e) => log::error!(
                "block {}: cannot link its file for the embedder: {e}",
                summary.hash
            ),
        }
    }

    fn command_shard(&mut self, s: usize, cmd: ShardCmd) {
        let Some((tx, waker)) = self.shards.get(s) else {
            return; // an id no shard made (the core only knows ids shards gave it)
        };
        match tx.try_send(cmd) {
            Ok(()) => self.wake[s] = true,
            Err(crossbeam_channel::TrySendError::Full(cmd)) => {
                // The shard is this far behind: wake it and wait (it never waits on us).
                let _ = waker.wake();
                if tx.send(cmd).is_ok() {
                    self.wake[s] = true;
                }
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {}
        }
    }

    /// At stop: the shards have closed their connections; their last reports are taken, the
    /// registry and address book written, and the store flushed.
    fn finish(&mut self) {
        let now = Instant::now();
        while let Ok(input) = self.peers.try_recv() {
            self.core.handle_peer(input, now);
            self.carry_out();
        }
        self.core.persist(now);
        self.carry_out();
        if let Err(e) = self.writer.flush() {
            log::error!("saving peers at stop failed: {e}");
        }
        while let Ok((ack, r)) = self.acks.1.try_recv() {
            self.committed(ack, r);
        }
        self.carry_out();
        let mut undelivered = 0;
        for e in self.pending.drain(..) {
            if self.events.try_send(e).is_err() {
                undelivered += 1;
            }
        }
        if undelivered > 0 {
            log::info!("{undelivered} events not delivered at stop: the event channel was full");
        }
    }
}
