//! The engine's error type: what can go wrong at start and on API calls.

use crate::config::ConfigError;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// An engine error.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid.
    Config(ConfigError),
    /// The listen address could not be bound (in use, not local, no permission).
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The data directory cannot be created or written.
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The store could not be opened or written.
    Store(crate::store::StoreError),
    /// A thread or poller could not be created.
    Io(std::io::Error),
    /// The engine has stopped.
    Stopped,
    /// No connected peer has this id.
    UnknownPeer(crate::fsm::PeerId),
    /// A caller's argument is not valid (an unparsable subnet, a ban on a never-ban address...).
    InvalidInput(String),
    /// A message could not be sent.
    Send(SendError),
}

/// Why a message to a peer was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// No connection has this id (never had, or it is gone).
    NoSuchPeer(crate::fsm::PeerId),
    /// The connection has not finished its handshake.
    NotReady(crate::fsm::PeerId),
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

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Stopped => Error::Stopped,
            e => Error::Send(e),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::DataDir { path, source } => write!(
                f,
                "data directory {} is not usable: {source}",
                path.display()
            ),
            Error::Store(e) => e.fmt(f),
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Stopped => f.write_str("engine is stopped"),
            Error::UnknownPeer(id) => write!(f, "no peer {id}"),
            Error::Send(e) => write!(f, "message not sent: {e}"),
            Error::InvalidInput(why) => write!(f, "invalid input: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Bind { source, .. } | Error::DataDir { source, .. } => Some(source),
            Error::Io(e) => Some(e),
            Error::Store(e) => Some(e),
            Error::Send(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}
