//! # bsn — the Bitcoin Server Network engine
//!
//! bsn is the peer-to-peer networking subsystem of a Bitcoin SV node, built to be embedded: Rust
//! programs use this crate, C and C++ node software links `libbsn.so` through `include/bsn.h`.
//!
//! ## Architecture
//!
//! ```text
//!  sockets ──► shard event loops (mio, one per core) ──► frame decoder (wire) ──► workers
//!                    ▲                                                             │
//!                    └──────────── commands over channels + mio::Waker ◄───────────┘
//!                                                                                  │
//!                                                  Store (LMDB / in-memory) ◄──────┘
//! ```
//!
//! The protocol logic is pure: [`wire`] turns bytes into messages and back without I/O, and the
//! state machines that decide what to do with them are fed bytes and time, never sockets. The
//! event loops only move bytes.
//!
//! Modules:
//! - [`wire`]: the codec — framing (with BSV's `extmsg` for payloads over 4 GiB), primitives,
//!   and every message.
//! - [`network`]: network parameters as data (BSV mainnet, testnet, regtest, STN, custom).
//! - [`decode`]: readable summaries of raw blocks, transactions and message streams (`bsn decode`).

pub mod chain;
pub mod config;
pub mod decode;
pub mod discovery;
pub mod engine;
pub mod error;
pub mod fsm;
pub mod network;
pub mod reactor;
pub mod registry;
pub mod serve;
pub mod store;
pub mod syncer;
pub mod txrelay;
pub mod util;
pub mod wire;

pub use config::{Config, ConfigBuilder};
pub use engine::{Engine, Event, HeaderRef, PeerId, PeerInfo};
pub use error::Error;
pub use fsm::{Direction, DisconnectReason};
pub use network::{Network, NetworkParams};

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
