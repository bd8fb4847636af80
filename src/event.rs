//! What the engine tells the embedder ([`Event`]) and what it knows of a connection
//! ([`PeerInfo`]). Events are raised by the node core and delivered in
//! order, none dropped: when the embedder does not keep up, the engine stops reading peers.

use crate::fsm::bans::{BanReason, Subnet};
use crate::fsm::peer::PeerStats;
use crate::fsm::{Direction, DisconnectReason, PeerId};
use crate::store::records::PeerStatus;
use crate::wire::{Hash256, Message, Transaction};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

/// What the engine knows about a connection.
#[derive(Clone, Debug)]
#[non_exhaustive]
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
    /// Score from 0 to 100 (higher is preferred for sync and kept longer when inbound slots are
    /// full): latency, completed connections, useful traffic, minus misbehaviour.
    pub score: u32,
    /// Status from the same evidence.
    pub status: PeerStatus,
    /// Its BSV association (multistreams), when both sides agreed on one.
    pub association: Option<crate::wire::AssociationId>,
    /// The association's stream policy (`Default` or `BlockPriority`).
    pub stream_policy: &'static str,
    /// The connections of the association: the first (GENERAL) and any joined to it.
    pub streams: Vec<StreamInfo>,
}

/// One connection (stream) of a peer's association.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// Its type (`GENERAL`, `DATA1`, ...), as the SV node names it.
    pub kind: &'static str,
    /// Bytes received on it.
    pub bytes_in: u64,
    /// Bytes sent on it.
    pub bytes_out: u64,
}

/// What the engine tells the embedder.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A peer completed its handshake. From this event on, every call naming the peer
    /// (`send`, `submit_tx` relaying to it, ...) reaches it.
    PeerConnected(Box<PeerInfo>),
    /// A connection ended (also for connections that never completed their handshake).
    PeerDisconnected {
        /// The connection.
        id: PeerId,
        /// Its remote address.
        addr: SocketAddr,
        /// Who had connected.
        direction: Direction,
        /// Why it ended.
        reason: DisconnectReason,
    },
    /// An outbound connection could not even be started.
    ConnectFailed {
        /// Where to.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A message the engine does not consume itself.
    Message {
        /// From whom.
        peer: PeerId,
        /// What.
        message: Message,
    },
    /// A block the embedder asked for (with its own `getdata`) that is bigger than
    /// [`crate::Config::block_file_threshold`]: it was checked (merkle root, checksum) on its
    /// way into a file, and `path` is a name for that file that is the embedder's to read and
    /// remove (a hard link: what the engine does with its own copy does not touch it; without
    /// a data dir it is in a temporary directory removed when the engine stops).
    BlockFile {
        /// From whom.
        peer: PeerId,
        /// Its header.
        header: crate::wire::BlockHeader,
        /// Its hash.
        hash: crate::wire::Hash256,
        /// How many transactions it holds.
        tx_count: u64,
        /// Its size in bytes.
        size: u64,
        /// The file.
        path: std::path::PathBuf,
    },
    /// An IP or subnet was banned (by ban score or by a call); its connections are dropped.
    Banned {
        /// What is banned.
        subnet: Subnet,
        /// Until when (unix seconds).
        until: u64,
        /// Why.
        reason: String,
    },
    /// A ban ended (expired, lifted or cleared).
    Unbanned {
        /// What was banned.
        subnet: Subnet,
    },
    /// The header chain caught up with the peers (the sync peer had no more headers). Raised
    /// after a sync round, so not when no peer claims a height above ours.
    HeadersSynced {
        /// Our tip's height.
        height: u32,
    },
    /// The block at `height` of the best chain is committed to the store; raised in chain
    /// order, after the commit (a read right after it finds the block). It carries what an
    /// embedder needs without the block itself, whatever its size: the ids of its
    /// transactions come from [`crate::Engine::block_txids`], its bytes from
    /// [`crate::Engine::read_block`] in pieces of any size, the whole block from
    /// [`crate::Engine::block`].
    BlockConnected {
        /// Its height.
        height: u32,
        /// Its hash.
        hash: Hash256,
        /// Its header.
        header: crate::wire::BlockHeader,
        /// How many transactions it holds.
        tx_count: u64,
        /// Its size in bytes.
        size: u64,
    },
    /// The best header chain switched branches.
    Reorg(Box<crate::chain::Reorg>),
    /// A transaction from a peer: call `accept_tx` to relay it or `reject_tx` to refuse it
    /// (with [`crate::TxPolicy::AcceptAll`] it is relayed already). Undecided after ten
    /// minutes, it is forgotten.
    TxReceived {
        /// Its source.
        peer: PeerId,
        /// The transaction.
        tx: Transaction,
    },
    /// A peer's ban score went up.
    BanScore {
        /// The address scored.
        ip: IpAddr,
        /// The connection that earned it, if any.
        peer: Option<PeerId>,
        /// Why.
        reason: BanReason,
        /// The score now.
        score: u32,
    },
    /// The engine cannot go on (a thread died, the store failed): it is stopping. No event
    /// follows; calls return [`crate::Error::Stopped`].
    Fatal {
        /// What happened.
        reason: String,
    },
}
