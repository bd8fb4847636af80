//! The engine's error type: what can go wrong at start and on API calls.

use crate::config::ConfigError;
pub use crate::fsm::SendError;
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
