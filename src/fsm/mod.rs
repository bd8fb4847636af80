//! The I/O-free protocol: state machines fed messages and time (`Instant`s passed in, never read
//! from a clock here), answering with what to send and whether to disconnect. The shard event
//! loops drive them; tests drive them directly, with no socket.

pub mod addrbook;
pub mod bans;
pub mod download;
pub mod handshake;
pub mod peer;
pub mod ping;
pub mod presync;
pub mod ratelimit;
pub mod registry;
pub mod scoring;
pub mod sync;
pub mod txrelay;

use crate::wire::{FrameError, Magic, PayloadError};
use std::fmt;

/// Identifies one connection for its lifetime (never reused within an engine). The C ABI and
/// logs see it as a number (`u64::from`, `PeerId::from`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub(crate) u64);

impl From<u64> for PeerId {
    fn from(n: u64) -> PeerId {
        PeerId(n)
    }
}

impl From<PeerId> for u64 {
    fn from(p: PeerId) -> u64 {
        p.0
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

/// Whether a connection was opened by us or by the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// The peer connected to us.
    Inbound,
    /// We connected to the peer.
    Outbound,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

/// The verdict on a connection: why it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The peer spoke another network's magic (network isolation).
    WrongNetwork { expected: Magic, got: Magic },
    /// The peer's protocol version is below the minimum.
    ObsoleteVersion { version: i32, min: i32 },
    /// The connection is to ourselves (the version nonce is one of ours).
    SelfConnection,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The peer did not answer a ping in time.
    PingTimeout,
    /// The peer broke a protocol rule.
    ProtocolViolation(String),
    /// The peer sent bytes that are not a valid frame.
    BadFrame(FrameError),
    /// The peer sent too many malformed payloads.
    Malformed(PayloadError),
    /// The peer does not read what we send: its send queue passed the limit.
    SendQueueFull { queued: usize, limit: usize },
    /// The outbound connection could not be made.
    ConnectFailed(String),
    /// The peer closed the connection.
    Closed,
    /// A socket error.
    Io(String),
    /// The embedder or operator asked for it.
    Requested,
    /// The engine is stopping.
    Shutdown,
    /// A connection limit was reached.
    LimitReached(&'static str),
    /// The peer's address was banned.
    Banned,
    /// Evicted to make room for a new inbound peer.
    Evicted,
    /// The peer did not answer a sync request (headers or blocks) in time.
    Stalled(String),
    /// A multistream setup failed (a bad or mismatched association ID, a refused or
    /// misplaced `createstrm`/`streamack`); not scored, as the SV node does not score it.
    StreamSetup(String),
}

impl DisconnectReason {
    /// A short fixed name for the reason (a metrics label: `bad_frame`, `ping_timeout`...).
    pub fn kind(&self) -> &'static str {
        match self {
            DisconnectReason::WrongNetwork { .. } => "wrong_network",
            DisconnectReason::ObsoleteVersion { .. } => "obsolete_version",
            DisconnectReason::SelfConnection => "self_connection",
            DisconnectReason::HandshakeTimeout => "handshake_timeout",
            DisconnectReason::PingTimeout => "ping_timeout",
            DisconnectReason::ProtocolViolation(_) => "protocol_violation",
            DisconnectReason::BadFrame(_) => "bad_frame",
            DisconnectReason::Malformed(_) => "malformed",
            DisconnectReason::SendQueueFull { .. } => "send_queue_full",
            DisconnectReason::ConnectFailed(_) => "connect_failed",
            DisconnectReason::Closed => "closed",
            DisconnectReason::Io(_) => "io",
            DisconnectReason::Requested => "requested",
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::LimitReached(_) => "limit_reached",
            DisconnectReason::Banned => "banned",
            DisconnectReason::Evicted => "evicted",
            DisconnectReason::Stalled(_) => "stalled",
            DisconnectReason::StreamSetup(_) => "stream_setup",
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::WrongNetwork { expected, got } => {
                write!(f, "wrong network magic {got} (expected {expected})")
            }
            DisconnectReason::ObsoleteVersion { version, min } => {
                write!(f, "protocol version {version} below minimum {min}")
            }
            DisconnectReason::SelfConnection => f.write_str("connected to self"),
            DisconnectReason::HandshakeTimeout => f.write_str("handshake timeout"),
            DisconnectReason::PingTimeout => f.write_str("ping timeout"),
            DisconnectReason::ProtocolViolation(s) => write!(f, "protocol violation: {s}"),
            DisconnectReason::BadFrame(e) => write!(f, "bad frame: {e}"),
            DisconnectReason::Malformed(e) => write!(f, "malformed message: {e}"),
            DisconnectReason::SendQueueFull { queued, limit } => {
                write!(f, "send queue full ({queued} bytes, limit {limit})")
            }
            DisconnectReason::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            DisconnectReason::Closed => f.write_str("closed by peer"),
            DisconnectReason::Io(e) => write!(f, "i/o error: {e}"),
            DisconnectReason::Requested => f.write_str("requested"),
            DisconnectReason::Shutdown => f.write_str("engine stopping"),
            DisconnectReason::LimitReached(what) => write!(f, "limit reached: {what}"),
            DisconnectReason::Banned => f.write_str("banned"),
            DisconnectReason::Evicted => f.write_str("evicted for a new inbound peer"),
            DisconnectReason::Stalled(what) => write!(f, "stalled: {what}"),
            DisconnectReason::StreamSetup(what) => write!(f, "stream setup: {what}"),
        }
    }
}

impl DisconnectReason {
    /// The ban-score reason a disconnect carries, if the peer misbehaved.
    pub fn ban_reason(&self) -> Option<bans::BanReason> {
        use crate::wire::FrameError;
        match self {
            DisconnectReason::WrongNetwork { .. } => Some(bans::BanReason::WrongNetwork),
            DisconnectReason::ProtocolViolation(_) => Some(bans::BanReason::ProtocolViolation),
            DisconnectReason::BadFrame(FrameError::Oversize { .. }) => {
                Some(bans::BanReason::OversizeMessage)
            }
            DisconnectReason::BadFrame(_) => Some(bans::BanReason::MalformedHeader),
            // each malformed payload was scored (0, as the SV node) when it came
            _ => None,
        }
    }
}

/// Why a message to a peer was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// No connection has this id (never had, or it is gone).
    NoSuchPeer(PeerId),
    /// The connection has not finished its handshake.
    NotReady(PeerId),
    /// The payload is larger than the peer accepts (its `protoconf`), or needs `extmsg`, which
    /// the peer does not speak.
    TooLarge {
        /// The message's command.
        command: String,
        /// Payload bytes.
        len: u64,
        /// What the peer accepts.
        limit: u64,
    },
    /// The engine has stopped.
    Stopped,
    /// The connection's event loop did not take the message in time.
    Timeout,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::NoSuchPeer(id) => write!(f, "no peer {id}"),
            SendError::NotReady(id) => write!(f, "peer {id} has not finished its handshake"),
            SendError::TooLarge {
                command,
                len,
                limit,
            } => write!(
                f,
                "{command} payload of {len} bytes exceeds the peer's limit of {limit}"
            ),
            SendError::Stopped => f.write_str("engine is stopped"),
            SendError::Timeout => f.write_str("the peer's event loop did not answer in time"),
        }
    }
}

impl std::error::Error for SendError {}
