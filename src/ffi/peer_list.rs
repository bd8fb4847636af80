//! `bsn_peer_list`: the engine's connections at one moment, from `bsn_engine_peers`, those still
//! in their handshake included (`bsn_peer_list_ready` false: a BSV peer's second stream is
//! listed so until it joins its first connection); the caller owns it and frees it with
//! `bsn_peer_list_free`. Read from one thread at a time. Entries are
//! numbered from 0 to `bsn_peer_list_len` - 1; another index is `BSN_ERR_INVALID_ARGUMENT`.

use super::bsn_result::{self, *};
use super::{arg, fail, free_box, guard, put, put_str};
use crate::PeerInfo;
use std::ffi::c_char;

/// A list of connections (opaque), the caller's from `bsn_engine_peers` until
/// `bsn_peer_list_free`, read by one thread at a time; those still in their handshake included (`bsn_peer_list_ready`
/// false; a BSV peer's second stream is listed so until it joins its first connection).
pub struct bsn_peer_list {
    pub(crate) peers: Vec<PeerInfo>,
}

fn with_peer(
    list: *const bsn_peer_list,
    index: usize,
    f: impl FnOnce(&PeerInfo) -> bsn_result,
) -> bsn_result {
    guard(|| {
        // SAFETY: checked for NULL; a list from bsn_engine_peers.
        let l = match unsafe { arg(list, "list") } {
            Ok(l) => l,
            Err(e) => return e,
        };
        match l.peers.get(index) {
            Some(p) => f(p),
            None => fail(
                BSN_ERR_INVALID_ARGUMENT,
                format!("index {index} of a list of {}", l.peers.len()),
            ),
        }
    })
}

/// How many connections the list holds (`*out`).
#[no_mangle]
pub extern "C" fn bsn_peer_list_len(list: *const bsn_peer_list, out: *mut usize) -> bsn_result {
    guard(|| {
        // SAFETY: checked inside.
        match unsafe { arg(list, "list") } {
            Ok(l) => unsafe { put(out, l.peers.len(), "out") },
            Err(e) => e,
        }
    })
}

/// Entry `index`'s peer id (`*out`), as events and `bsn_engine_send` name it.
#[no_mangle]
pub extern "C" fn bsn_peer_list_id(
    list: *const bsn_peer_list,
    index: usize,
    out: *mut u64,
) -> bsn_result {
    // SAFETY: checked inside.
    with_peer(list, index, |p| unsafe { put(out, u64::from(p.id), "out") })
}

/// Entry `index`'s address ("1.2.3.4:8333") with a NUL, into `buf`; `*out_len` gets its length
/// without the NUL.
#[no_mangle]
pub extern "C" fn bsn_peer_list_address(
    list: *const bsn_peer_list,
    index: usize,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> bsn_result {
    // SAFETY: checked inside.
    with_peer(list, index, |p| unsafe {
        put_str(&p.addr.to_string(), buf, len, out_len)
    })
}

/// Entry `index`'s user agent with a NUL, into `buf` (empty before its handshake); `*out_len`
/// gets its length without the NUL.
#[no_mangle]
pub extern "C" fn bsn_peer_list_user_agent(
    list: *const bsn_peer_list,
    index: usize,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> bsn_result {
    // SAFETY: checked inside.
    with_peer(list, index, |p| unsafe {
        put_str(&p.user_agent, buf, len, out_len)
    })
}

/// Whether entry `index` finished its handshake (`*out`).
#[no_mangle]
pub extern "C" fn bsn_peer_list_ready(
    list: *const bsn_peer_list,
    index: usize,
    out: *mut bool,
) -> bsn_result {
    // SAFETY: checked inside.
    with_peer(list, index, |p| unsafe { put(out, p.ready, "out") })
}

/// Whether entry `index` dialled us (`*out` true) or we dialled it.
#[no_mangle]
pub extern "C" fn bsn_peer_list_inbound(
    list: *const bsn_peer_list,
    index: usize,
    out: *mut bool,
) -> bsn_result {
    with_peer(list, index, |p| {
        let inbound = p.direction == crate::fsm::Direction::Inbound;
        // SAFETY: checked inside.
        unsafe { put(out, inbound, "out") }
    })
}

/// Entry `index`'s protocol version and start height from its `version` (`*version`,
/// `*start_height`; 0 before its handshake).
#[no_mangle]
pub extern "C" fn bsn_peer_list_version(
    list: *const bsn_peer_list,
    index: usize,
    version: *mut i32,
    start_height: *mut i32,
) -> bsn_result {
    with_peer(list, index, |p| {
        if version.is_null() || start_height.is_null() {
            return fail(BSN_ERR_NULL_ARGUMENT, "version or start_height is NULL");
        }
        // SAFETY: both checked for NULL.
        unsafe {
            put(version, p.version, "version");
            put(start_height, p.start_height, "start_height")
        }
    })
}

/// Frees a list and sets `*list` to NULL (a second free does nothing: `BSN_ERR_NULL_ARGUMENT`).
#[no_mangle]
pub extern "C" fn bsn_peer_list_free(list: *mut *mut bsn_peer_list) -> bsn_result {
    // SAFETY: checked inside.
    guard(|| unsafe { free_box(list, "list") })
}
