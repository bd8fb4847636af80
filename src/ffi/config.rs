//! `bsn_config`: what an engine starts with. Made by `bsn_config_new`, changed by the setters,
//! read (not taken) by `bsn_engine_start`, freed by `bsn_config_free`. One thread at a time.

use super::bsn_result::{self, *};
use super::{arg_mut, arg_str, fail, free_box, guard, put};
use crate::{Config, Network};
use std::ffi::c_char;
use std::net::{SocketAddr, ToSocketAddrs};

/// An engine's configuration (opaque): made by `bsn_config_new`, changed by the setters, read
/// (not taken) by `bsn_engine_start`, freed by `bsn_config_free`. Used by one thread at a time.
pub struct bsn_config {
    pub(crate) config: Config,
}

pub(crate) fn address(s: &str, name: &str) -> Result<SocketAddr, bsn_result> {
    s.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            fail(
                BSN_ERR_INVALID_ADDRESS,
                format!("{name} {s:?} is not an address"),
            )
        })
}

/// Runs `f` on the config behind `config` (checked for NULL).
fn with(config: *mut bsn_config, f: impl FnOnce(&mut Config) -> bsn_result) -> bsn_result {
    guard(|| {
        // SAFETY: checked for NULL; a pointer from bsn_config_new.
        match unsafe { arg_mut(config, "config") } {
            Ok(c) => f(&mut c.config),
            Err(e) => e,
        }
    })
}

/// A new configuration for `network` ("mainnet", "testnet", "regtest" or "stn"), with the SV
/// node's defaults: listening on 127.0.0.1 at the network's port, no data dir (everything in
/// memory), a shard per core, threads pinned. `*out` gets it; the caller owns it and frees it
/// with `bsn_config_free`.
#[no_mangle]
pub extern "C" fn bsn_config_new(network: *const c_char, out: *mut *mut bsn_config) -> bsn_result {
    guard(|| {
        // SAFETY: checked inside.
        let name = match unsafe { arg_str(network, "network") } {
            Ok(n) => n,
            Err(e) => return e,
        };
        let Ok(net) = name.parse::<Network>() else {
            return fail(
                BSN_ERR_INVALID_ARGUMENT,
                format!("network {name:?} is not mainnet, testnet, regtest or stn"),
            );
        };
        let c = Box::new(bsn_config {
            config: Config::new(net),
        });
        let p = Box::into_raw(c);
        // SAFETY: checked inside.
        let r = unsafe { put(out, p, "out") };
        if r != BSN_OK {
            // SAFETY: just made here, given to nobody.
            drop(unsafe { Box::from_raw(p) });
        }
        r
    })
}

/// Frees a configuration and sets `*config` to NULL. `config` NULL or `*config` NULL (freed
/// already): nothing is done (`BSN_ERR_NULL_ARGUMENT`).
#[no_mangle]
pub extern "C" fn bsn_config_free(config: *mut *mut bsn_config) -> bsn_result {
    // SAFETY: checked inside.
    guard(|| unsafe { free_box(config, "config") })
}

/// Listen on `addr` ("127.0.0.1:8333", "[::1]:0"; port 0 picks a free one; a "host:port" is
/// looked up now); "" does not listen.
/// `addr` is the caller's.
#[no_mangle]
pub extern "C" fn bsn_config_set_listen(
    config: *mut bsn_config,
    addr: *const c_char,
) -> bsn_result {
    with(config, |c| {
        // SAFETY: checked inside.
        let s = match unsafe { arg_str(addr, "addr") } {
            Ok(s) => s,
            Err(e) => return e,
        };
        if s.is_empty() {
            c.listen = None;
            return BSN_OK;
        }
        match address(s, "listen address") {
            Ok(a) => {
                c.listen = Some(a);
                BSN_OK
            }
            Err(e) => e,
        }
    })
}

/// The source address of outbound connections: an IP of this host ("127.0.0.2", "::1"), no
/// port; "" leaves it to the system (the default). Engines sharing a host on addresses of their
/// own set it so that their peers see, score and ban each by its own address.
/// `ip` is the caller's.
#[no_mangle]
pub extern "C" fn bsn_config_set_outbound_bind(
    config: *mut bsn_config,
    ip: *const c_char,
) -> bsn_result {
    with(config, |c| {
        // SAFETY: checked inside.
        let s = match unsafe { arg_str(ip, "ip") } {
            Ok(s) => s,
            Err(e) => return e,
        };
        if s.is_empty() {
            c.outbound_bind = None;
            return BSN_OK;
        }
        match s.parse() {
            Ok(a) => {
                c.outbound_bind = Some(a);
                BSN_OK
            }
            Err(_) => fail(
                BSN_ERR_INVALID_ADDRESS,
                format!("outbound bind {s:?} is not an IP address (no port)"),
            ),
        }
    })
}

/// Adds a peer the engine dials at start and keeps connected (re-dialled with backoff).
#[no_mangle]
pub extern "C" fn bsn_config_add_connect(
    config: *mut bsn_config,
    addr: *const c_char,
) -> bsn_result {
    with(config, |c| {
        // SAFETY: checked inside.
        let s = match unsafe { arg_str(addr, "addr") } {
            Ok(s) => s,
            Err(e) => return e,
        };
        match address(s, "peer address") {
            Ok(a) => {
                c.connect.push(a);
                BSN_OK
            }
            Err(e) => e,
        }
    })
}

/// Keeps peers, bans, headers and blocks in LMDB in directory `path` (created if missing);
/// "" keeps everything in memory.
#[no_mangle]
pub extern "C" fn bsn_config_set_data_dir(
    config: *mut bsn_config,
    path: *const c_char,
) -> bsn_result {
    with(config, |c| {
        // SAFETY: checked inside.
        match unsafe { arg_str(path, "path") } {
            Ok("") => c.data_dir = None,
            Ok(p) => c.data_dir = Some(p.into()),
            Err(e) => return e,
        }
        BSN_OK
    })
}

/// The number of event loops (shards), at least 1.
#[no_mangle]
pub extern "C" fn bsn_config_set_shards(config: *mut bsn_config, shards: u32) -> bsn_result {
    with(config, |c| {
        if shards == 0 {
            return fail(BSN_ERR_INVALID_ARGUMENT, "shards must be at least 1");
        }
        c.shards = shards as usize;
        BSN_OK
    })
}

/// Pins each shard's thread to a core (the default) or not (for shared machines and tests).
#[no_mangle]
pub extern "C" fn bsn_config_set_pin_threads(config: *mut bsn_config, pin: bool) -> bsn_result {
    with(config, |c| {
        c.pin_threads = pin;
        BSN_OK
    })
}

/// Another network magic, 8 hex digits in wire order ("fabfb5da" talks to Bitcoin Core's and
/// bcoin's regtest).
#[no_mangle]
pub extern "C" fn bsn_config_set_magic(config: *mut bsn_config, hex: *const c_char) -> bsn_result {
    with(config, |c| {
        // SAFETY: checked inside.
        let s = match unsafe { arg_str(hex, "hex") } {
            Ok(s) => s,
            Err(e) => return e,
        };
        match s.parse() {
            Ok(m) => {
                c.network.magic = m;
                BSN_OK
            }
            Err(e) => fail(BSN_ERR_INVALID_ARGUMENT, e),
        }
    })
}

/// Header client mode: sync and serve headers, store no blocks.
#[no_mangle]
pub extern "C" fn bsn_config_set_headers_only(config: *mut bsn_config, on: bool) -> bsn_result {
    with(config, |c| {
        c.headers_only = on;
        BSN_OK
    })
}

/// Adds a DNS seed ("seed.example.org") or an address to learn peers from.
#[no_mangle]
pub extern "C" fn bsn_config_add_seed(config: *mut bsn_config, seed: *const c_char) -> bsn_result {
    with(config, |c| {
        // SAFETY: checked inside.
        match unsafe { arg_str(seed, "seed") } {
            Ok("") => fail(BSN_ERR_INVALID_ARGUMENT, "seed is empty"),
            Ok(s) => {
                c.seeds.push(s.to_string());
                BSN_OK
            }
            Err(e) => e,
        }
    })
}

/// The most inbound connections accepted.
#[no_mangle]
pub extern "C" fn bsn_config_set_max_inbound(config: *mut bsn_config, n: u32) -> bsn_result {
    with(config, |c| {
        c.max_inbound = n as usize;
        BSN_OK
    })
}

/// The most outbound connections.
#[no_mangle]
pub extern "C" fn bsn_config_set_max_outbound(config: *mut bsn_config, n: u32) -> bsn_result {
    with(config, |c| {
        c.max_outbound = n as usize;
        BSN_OK
    })
}

/// How many outbound connections the engine keeps by dialling addresses it learned (0: only
/// those added with `bsn_config_add_connect` or `bsn_engine_connect`).
#[no_mangle]
pub extern "C" fn bsn_config_set_target_outbound(config: *mut bsn_config, n: u32) -> bsn_result {
    with(config, |c| {
        c.target_outbound = n as usize;
        BSN_OK
    })
}
