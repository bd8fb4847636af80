//! # bsn — the Bitcoin Server Network engine
//!
//! bsn is the peer-to-peer networking subsystem of a Bitcoin SV node, built to be embedded: Rust
//! programs use this crate, C and C++ node software links `libbsn.so` through `include/bsn.h`.
//!
//! ## Architecture
//!
//! ```text
//!  sockets ─► shards (mio loops, one per core) ─► node core (one thread) ─► store writer
//!               framing, checksums, handshake,      peers, bans, sync,        LMDB / memory
//!               keepalive, rate limits              relay, discovery  ─► events ─► embedder
//! ```
//!
//! Each shard owns a share of the sockets and does the per-connection work; everything that
//! spans peers (the peer table, admission and bans, the registry, the address book, header sync,
//! block download, block and transaction relay, serving) is owned by one I/O-free node core fed
//! inputs and time, whose outputs (sends, dials, store writes, events) the engine carries out.
//! The links between them are bounded channels: when the embedder or the store falls behind,
//! the core stops taking work, the shards stop reading, and TCP pushes back on the peers.
//! Nothing is dropped, no queue grows without bound, and no lock is shared across threads.
//!
//! The public API:
//! - [`Engine`] ([`Engine::start`], calls on peers, bans, the chain, transactions), its
//!   [`Config`] and [`ConfigBuilder`], the [`Event`]s it raises and the [`PeerInfo`] it reports;
//!   errors are typed ([`Error`], [`SendError`]).
//! - [`wire`]: the codec — framing (with BSV's `extmsg` for payloads over 4 GiB), primitives,
//!   and every message; usable without an engine.
//! - [`store`]: the [`store::Store`] trait (bring your own), its LMDB and in-memory backends,
//!   and the records the engine keeps; [`chain`]: the pure header tree.
//! - [`network`]: network parameters as data (BSV mainnet, testnet, regtest, STN, custom).
//! - [`sim`]: many node cores in one thread on a virtual clock, for deterministic tests.
//! - [`simnet`]: `bsn simnet`'s networks of nodes mining and relaying, measured.
//! - [`decode`]: readable summaries of raw blocks, transactions and message streams.
//! - [`ffi`]: the C ABI behind `include/bsn.h` (the crate's only `unsafe` code).

#![deny(unsafe_code)]

pub mod admin;
pub mod chain;
mod config;
pub mod decode;
mod engine;
mod error;
mod event;
pub mod ffi;
mod fsm;
pub mod metrics;
pub mod network;
mod node;
mod reactor;
pub mod sim;
pub mod simnet;
pub mod store;
mod util;
pub mod wire;

pub use config::{
    Config, ConfigBuilder, ConfigError, DEFAULT_BLOCK_FILE_THRESHOLD, PROTOCOL_VERSION,
};
pub use engine::Engine;
pub use error::{Error, SendError};
pub use event::{Event, PeerInfo, StreamInfo};
pub use fsm::addrbook::AddrInfo;
pub use fsm::bans::{Ban, BanReason, ScoreSettings, Subnet};
pub use fsm::peer::{CommandStats, PeerStats};
pub use fsm::ratelimit::RateSettings;
pub use fsm::sync::SyncProgress;
pub use fsm::txrelay::TxPolicy;
pub use fsm::{Direction, DisconnectReason, PeerId};
pub use network::{Network, NetworkParams};
pub use node::{ChainStatus, CoreCounts, HeaderRef};
pub use store::records::PeerStatus;

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
