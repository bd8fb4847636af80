//! `bsn_event`: one thing the engine tells the embedder. Handed out by `bsn_engine_poll_event`
//! (the caller owns it and frees it with `bsn_event_free`) or lent to the event callback for the
//! length of the call. Read from one thread at a time.

use super::bsn_result::{self, *};
use super::{arg, fail, free_box, guard, put, put_bytes, put_str};
use crate::Event;
use std::ffi::c_char;

/// An event (opaque): the caller's from `bsn_engine_poll_event` until `bsn_event_free`, or lent
/// to the callback for the length of the call. Read by one thread at a time.
pub struct bsn_event {
    pub(crate) event: Event,
}

/// The kinds of event (`bsn_event_kind`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum bsn_event_type {
    /// A peer finished its handshake. peer; address: its address; data: its user agent.
    BSN_EVENT_PEER_CONNECTED = 1,
    /// A connection ended. peer; address; data: why.
    BSN_EVENT_PEER_DISCONNECTED = 2,
    /// An outbound connection could not be made. address: where; data: why.
    BSN_EVENT_CONNECT_FAILED = 3,
    /// A message the engine does not consume itself. peer; command; data: its payload.
    BSN_EVENT_MESSAGE = 4,
    /// An address or subnet was banned. address: the subnet; data: why.
    BSN_EVENT_BANNED = 5,
    /// A ban ended. address: the subnet.
    BSN_EVENT_UNBANNED = 6,
    /// The header chain caught up with a peer that was ahead of it (its last answer had no more
    /// headers). height. Not raised when no peer claims more than we have: compare
    /// `bsn_engine_sync_progress` then.
    BSN_EVENT_HEADERS_SYNCED = 7,
    /// A block of the best chain is stored. height; hash; data: its 80-byte header.
    BSN_EVENT_BLOCK_CONNECTED = 8,
    /// The best chain switched branches. height: the fork point's; data: a description.
    BSN_EVENT_REORG = 9,
    /// A transaction from a peer, waiting for `bsn_engine_accept_tx` or `bsn_engine_reject_tx`.
    /// peer; hash: its id; data: the transaction.
    BSN_EVENT_TX_RECEIVED = 10,
    /// A peer's ban score went up. peer (if a connection earned it); address: its IP; data: why.
    BSN_EVENT_BAN_SCORE = 11,
    /// The engine cannot go on and is stopping. data: why.
    BSN_EVENT_FATAL = 12,
    /// A block bigger than the file threshold that the embedder asked for with its own
    /// `getdata`. peer; hash; data: the path of a file that is the embedder's to read and remove.
    BSN_EVENT_BLOCK_FILE = 13,
    /// An event of a kind this header does not know (a newer bsn). data: a description.
    BSN_EVENT_OTHER = 99,
}

impl bsn_event {
    fn kind(&self) -> bsn_event_type {
        use bsn_event_type::*;
        match &self.event {
            Event::PeerConnected(_) => BSN_EVENT_PEER_CONNECTED,
            Event::PeerDisconnected { .. } => BSN_EVENT_PEER_DISCONNECTED,
            Event::ConnectFailed { .. } => BSN_EVENT_CONNECT_FAILED,
            Event::Message { .. } => BSN_EVENT_MESSAGE,
            Event::Banned { .. } => BSN_EVENT_BANNED,
            Event::Unbanned { .. } => BSN_EVENT_UNBANNED,
            Event::HeadersSynced { .. } => BSN_EVENT_HEADERS_SYNCED,
            Event::BlockConnected { .. } => BSN_EVENT_BLOCK_CONNECTED,
            Event::Reorg(_) => BSN_EVENT_REORG,
            Event::TxReceived { .. } => BSN_EVENT_TX_RECEIVED,
            Event::BanScore { .. } => BSN_EVENT_BAN_SCORE,
            Event::Fatal { .. } => BSN_EVENT_FATAL,
            Event::BlockFile { .. } => BSN_EVENT_BLOCK_FILE,
        }
    }

    fn peer(&self) -> Option<u64> {
        match &self.event {
            Event::PeerConnected(p) => Some(p.id.into()),
            Event::PeerDisconnected { id: peer, .. }
            | Event::Message { peer, .. }
            | Event::TxReceived { peer, .. }
            | Event::BlockFile { peer, .. } => Some((*peer).into()),
            Event::BanScore { peer, .. } => peer.map(u64::from),
            _ => None,
        }
    }

    fn data(&self) -> Vec<u8> {
        match &self.event {
            Event::PeerConnected(p) => p.user_agent.clone().into_bytes(),
            Event::PeerDisconnected { reason, .. } => reason.to_string().into_bytes(),
            Event::ConnectFailed { reason, .. } => reason.to_string().into_bytes(),
            Event::Message { message, .. } => {
                let mut b = bytes::BytesMut::new();
                message.encode_payload(&mut b);
                b.to_vec()
            }
            Event::Banned { reason, .. } => reason.clone().into_bytes(),
            Event::BlockConnected { header, .. } => header.to_array().to_vec(),
            Event::TxReceived { tx, .. } => tx.raw().to_vec(),
            Event::BanScore { reason, .. } => format!("{reason:?}").into_bytes(),
            Event::Fatal { reason } => reason.clone().into_bytes(),
            Event::BlockFile { path, .. } => path.to_string_lossy().into_owned().into_bytes(),
            Event::Unbanned { .. } | Event::HeadersSynced { .. } => Vec::new(),
            other => format!("{other:?}").into_bytes(),
        }
    }
}

fn with_event(event: *const bsn_event, f: impl FnOnce(&bsn_event) -> bsn_result) -> bsn_result {
    guard(|| {
        // SAFETY: checked for NULL; an event from bsn.
        match unsafe { arg(event, "event") } {
            Ok(e) => f(e),
            Err(e) => e,
        }
    })
}

/// The event's kind (`*out`).
#[no_mangle]
pub extern "C" fn bsn_event_kind(event: *const bsn_event, out: *mut bsn_event_type) -> bsn_result {
    // SAFETY: checked inside.
    with_event(event, |e| unsafe { put(out, e.kind(), "out") })
}

/// The peer the event is about (`*out`); `BSN_ERR_NOT_FOUND` for events about no peer.
#[no_mangle]
pub extern "C" fn bsn_event_peer(event: *const bsn_event, out: *mut u64) -> bsn_result {
    with_event(event, |e| match e.peer() {
        // SAFETY: checked inside.
        Some(p) => unsafe { put(out, p, "out") },
        None => fail(BSN_ERR_NOT_FOUND, "this event is about no peer"),
    })
}

/// The event's data (see each kind) copied into `buf` (`len` bytes); `*out_len` gets its
/// length, also when `buf` is too small (`BSN_ERR_BUFFER_TOO_SMALL`: call again with room for
/// `*out_len` bytes). Texts come without a NUL. `buf` is the caller's.
#[no_mangle]
pub extern "C" fn bsn_event_data(
    event: *const bsn_event,
    buf: *mut u8,
    len: usize,
    out_len: *mut usize,
) -> bsn_result {
    // SAFETY: checked inside.
    with_event(event, |e| unsafe {
        put_bytes(&e.data(), buf, len, out_len)
    })
}

/// A `BSN_EVENT_MESSAGE`'s command ("pong", "addr"...) with a NUL, into `buf`; `*out_len` gets
/// its length without the NUL. `BSN_ERR_NOT_FOUND` for other kinds.
#[no_mangle]
pub extern "C" fn bsn_event_command(
    event: *const bsn_event,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> bsn_result {
    with_event(event, |e| match &e.event {
        // SAFETY: checked inside.
        Event::Message { message, .. } => unsafe {
            put_str(&message.command().to_string(), buf, len, out_len)
        },
        _ => fail(BSN_ERR_NOT_FOUND, "not a message event"),
    })
}

/// The height of a `BSN_EVENT_HEADERS_SYNCED`, `BSN_EVENT_BLOCK_CONNECTED` or `BSN_EVENT_REORG`
/// (its fork point); `BSN_ERR_NOT_FOUND` for other kinds.
#[no_mangle]
pub extern "C" fn bsn_event_height(event: *const bsn_event, out: *mut u32) -> bsn_result {
    with_event(event, |e| {
        let h = match &e.event {
            Event::HeadersSynced { height } | Event::BlockConnected { height, .. } => *height,
            Event::Reorg(r) => r.fork_point.height,
            _ => return fail(BSN_ERR_NOT_FOUND, "this event has no height"),
        };
        // SAFETY: checked inside.
        unsafe { put(out, h, "out") }
    })
}

/// The 32-byte hash of a `BSN_EVENT_BLOCK_CONNECTED` or `BSN_EVENT_BLOCK_FILE` (the block's),
/// or `BSN_EVENT_TX_RECEIVED` (the transaction id), in wire byte order (reversed from the usual
/// hex), into `out` (32 bytes, the caller's). `BSN_ERR_NOT_FOUND` for other kinds.
#[no_mangle]
pub extern "C" fn bsn_event_hash(event: *const bsn_event, out: *mut u8) -> bsn_result {
    with_event(event, |e| {
        if out.is_null() {
            return fail(BSN_ERR_NULL_ARGUMENT, "out is NULL");
        }
        let h = match &e.event {
            Event::BlockConnected { hash, .. } | Event::BlockFile { hash, .. } => *hash,
            Event::TxReceived { tx, .. } => tx.txid(),
            _ => return fail(BSN_ERR_NOT_FOUND, "this event has no hash"),
        };
        let mut n = 0;
        // SAFETY: checked for NULL above; the caller gives 32 bytes.
        unsafe { put_bytes(&h.0, out, 32, &mut n) }
    })
}

/// The address of a `BSN_EVENT_PEER_CONNECTED`, `BSN_EVENT_PEER_DISCONNECTED` or
/// `BSN_EVENT_CONNECT_FAILED` ("1.2.3.4:8333"),
/// the subnet of a `BSN_EVENT_BANNED` or `BSN_EVENT_UNBANNED`, the IP of a `BSN_EVENT_BAN_SCORE`,
/// with a NUL, into `buf`; `*out_len` gets its length without the NUL. `BSN_ERR_NOT_FOUND` for
/// other kinds.
#[no_mangle]
pub extern "C" fn bsn_event_address(
    event: *const bsn_event,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> bsn_result {
    with_event(event, |e| {
        let s = match &e.event {
            Event::PeerConnected(p) => p.addr.to_string(),
            Event::PeerDisconnected { addr, .. } | Event::ConnectFailed { addr, .. } => {
                addr.to_string()
            }
            Event::Banned { subnet, .. } | Event::Unbanned { subnet } => subnet.to_string(),
            Event::BanScore { ip, .. } => ip.to_string(),
            _ => return fail(BSN_ERR_NOT_FOUND, "this event has no address"),
        };
        // SAFETY: checked inside.
        unsafe { put_str(&s, buf, len, out_len) }
    })
}

/// Frees an event from `bsn_engine_poll_event` and sets `*event` to NULL: freeing it twice
/// through the same variable does nothing (`BSN_ERR_NULL_ARGUMENT`). Never free an event lent
/// to the callback.
#[no_mangle]
pub extern "C" fn bsn_event_free(event: *mut *mut bsn_event) -> bsn_result {
    // SAFETY: checked inside.
    guard(|| unsafe { free_box(event, "event") })
}

pub(crate) fn boxed(event: Event) -> *mut bsn_event {
    Box::into_raw(Box::new(bsn_event { event }))
}
