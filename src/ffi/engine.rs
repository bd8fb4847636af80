//! `bsn_engine`: a running engine. Started by `bsn_engine_start`, stopped by `bsn_engine_stop`,
//! freed by `bsn_engine_free` (which stops it first).
//!
//! Threads: every `bsn_engine_*` call may be made from any thread, concurrently, except
//! `bsn_engine_stop`, `bsn_engine_free` and `bsn_engine_set_event_callback`, which must not run
//! while another call on the same engine does (call them from the thread that owns the engine).
//! After `bsn_engine_stop`, calls return `BSN_ERR_STOPPED`; after `bsn_engine_free` the pointer
//! is gone (the caller's variable is set to NULL, so a use through it is `BSN_ERR_NULL_ARGUMENT`).

use super::bsn_result::{self, *};
use super::config::bsn_config;
use super::event::{boxed, bsn_event};
use super::peer_list::bsn_peer_list;
use super::{
    arg, arg_bytes, arg_hash, arg_mut, arg_str, engine_error, fail, guard, put, put_bytes, put_str,
};
use crate::wire::{Block, Command, Decode, Message, Transaction};
use crate::{Engine, Event, HeaderRef};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Called with each event on an engine thread when set with `bsn_engine_set_event_callback`.
/// The event is lent for the call: read it, do not free it, do not keep the pointer.
pub type bsn_event_callback = Option<extern "C" fn(userdata: *mut c_void, event: *const bsn_event)>;

struct Delivery {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// The caller's pointer, handed to the callback thread as it is.
struct UserData(*mut c_void);
// SAFETY: bsn never reads it; the embedder who set the callback says it may be used from the
// callback thread.
unsafe impl Send for UserData {}

/// A running engine (opaque): `bsn_engine_start` ... `bsn_engine_free`. Its calls may be made
/// from any thread, concurrently, except `bsn_engine_stop`, `bsn_engine_free` and
/// `bsn_engine_set_event_callback`, which must not run while another call on the same engine
/// does. After `bsn_engine_stop` calls return `BSN_ERR_STOPPED`.
pub struct bsn_engine {
    engine: Option<Engine>,
    events: Receiver<Event>,
    delivery: Option<Delivery>,
}

impl bsn_engine {
    fn stop_delivery(&mut self) {
        if let Some(d) = self.delivery.take() {
            d.stop.store(true, Ordering::SeqCst);
            let _ = d.thread.join();
        }
    }

    fn shutdown(&mut self) {
        self.stop_delivery();
        if let Some(e) = self.engine.take() {
            e.stop();
        }
    }
}

impl Drop for bsn_engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs `f` on the running engine behind `engine`.
fn with(
    engine: *const bsn_engine,
    f: impl FnOnce(&bsn_engine, &Engine) -> bsn_result,
) -> bsn_result {
    guard(|| {
        // SAFETY: checked for NULL; a pointer from bsn_engine_start.
        let h = match unsafe { arg(engine, "engine") } {
            Ok(h) => h,
            Err(e) => return e,
        };
        match &h.engine {
            Some(e) => f(h, e),
            None => fail(BSN_ERR_STOPPED, "the engine is stopped"),
        }
    })
}

fn peer_id(peer: u64) -> crate::PeerId {
    crate::PeerId::from(peer)
}

/// Starts an engine with a copy of `config` (which stays the caller's). `*out` gets the engine,
/// which the caller frees with `bsn_engine_free`. Every configuration problem is reported here
/// (`BSN_ERR_CONFIG`, `BSN_ERR_IO` for a port in use or a data dir that cannot be used).
#[no_mangle]
pub extern "C" fn bsn_engine_start(
    config: *const bsn_config,
    out: *mut *mut bsn_engine,
) -> bsn_result {
    guard(|| {
        // SAFETY: checked inside.
        let c = match unsafe { arg(config, "config") } {
            Ok(c) => c.config.clone(),
            Err(e) => return e,
        };
        if out.is_null() {
            return fail(BSN_ERR_NULL_ARGUMENT, "out is NULL");
        }
        let e = match Engine::start(c) {
            Ok(e) => e,
            Err(e) => return engine_error(e),
        };
        let events = e.events();
        let h = Box::into_raw(Box::new(bsn_engine {
            engine: Some(e),
            events,
            delivery: None,
        }));
        // SAFETY: checked for NULL above.
        unsafe { put(out, h, "out") }
    })
}

/// Stops the engine: every connection closed, every thread joined, the store flushed. Calls
/// on it then return `BSN_ERR_STOPPED` (also a second stop). Not concurrently with other calls
/// on the same engine.
#[no_mangle]
pub extern "C" fn bsn_engine_stop(engine: *mut bsn_engine) -> bsn_result {
    guard(|| {
        // SAFETY: checked inside; the caller makes no other call on it meanwhile.
        let h = match unsafe { arg_mut(engine, "engine") } {
            Ok(h) => h,
            Err(e) => return e,
        };
        if h.engine.is_none() {
            return fail(BSN_ERR_STOPPED, "the engine is stopped already");
        }
        h.shutdown();
        BSN_OK
    })
}

/// Stops the engine if it runs, frees it and sets `*engine` to NULL (a second free through the
/// same variable does nothing: `BSN_ERR_NULL_ARGUMENT`). Not concurrently with other calls on
/// the same engine.
#[no_mangle]
pub extern "C" fn bsn_engine_free(engine: *mut *mut bsn_engine) -> bsn_result {
    // SAFETY: checked inside.
    guard(|| unsafe { super::free_box(engine, "engine") })
}

/// The address the engine listens on ("127.0.0.1:39211") with a NUL, into `buf`; `*out_len`
/// gets its length without the NUL. `BSN_ERR_NOT_FOUND` when it does not listen.
#[no_mangle]
pub extern "C" fn bsn_engine_local_addr(
    engine: *const bsn_engine,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> bsn_result {
    with(engine, |_, e| match e.local_addr() {
        // SAFETY: checked inside.
        Some(a) => unsafe { put_str(&a.to_string(), buf, len, out_len) },
        None => fail(BSN_ERR_NOT_FOUND, "the engine does not listen"),
    })
}

/// Waits up to `timeout_ms` (0: does not wait) for the next event; `*out` gets it and the
/// caller frees it with `bsn_event_free`. `BSN_ERR_TIMEOUT` when none came;
/// `BSN_ERR_WRONG_STATE` while a callback takes the events. Events queue up (bounded) until
/// taken: an embedder that stops taking them slows the engine down, nothing is dropped.
#[no_mangle]
pub extern "C" fn bsn_engine_poll_event(
    engine: *const bsn_engine,
    timeout_ms: u32,
    out: *mut *mut bsn_event,
) -> bsn_result {
    with(engine, |h, _| {
        if out.is_null() {
            return fail(BSN_ERR_NULL_ARGUMENT, "out is NULL");
        }
        if h.delivery.is_some() {
            return fail(BSN_ERR_WRONG_STATE, "a callback takes the events");
        }
        match h
            .events
            .recv_timeout(Duration::from_millis(timeout_ms as u64))
        {
            // SAFETY: checked for NULL above.
            Ok(ev) => unsafe { put(out, boxed(ev), "out") },
            Err(RecvTimeoutError::Timeout) => fail(BSN_ERR_TIMEOUT, "no event within the timeout"),
            Err(RecvTimeoutError::Disconnected) => fail(BSN_ERR_STOPPED, "the engine stopped"),
        }
    })
}

/// Delivers every event to `callback(userdata, event)` on a thread of the engine's, in order,
/// instead of `bsn_engine_poll_event`; NULL `callback` goes back to polling. `userdata` is the
/// caller's, passed as it is (it must be usable from that thread). The callback must not call
/// `bsn_engine_stop`, `bsn_engine_free` or `bsn_engine_set_event_callback`. Not concurrently
/// with other calls on the same engine.
#[no_mangle]
pub extern "C" fn bsn_engine_set_event_callback(
    engine: *mut bsn_engine,
    callback: bsn_event_callback,
    userdata: *mut c_void,
) -> bsn_result {
    guard(|| {
        // SAFETY: checked inside; the caller makes no other call on it meanwhile.
        let h = match unsafe { arg_mut(engine, "engine") } {
            Ok(h) => h,
            Err(e) => return e,
        };
        if h.engine.is_none() {
            return fail(BSN_ERR_STOPPED, "the engine is stopped");
        }
        h.stop_delivery();
        let Some(cb) = callback else {
            return BSN_OK;
        };
        let stop = Arc::new(AtomicBool::new(false));
        let events = h.events.clone();
        let data = UserData(userdata);
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bsn-callback".into())
            .spawn(move || {
                let data = data;
                while !flag.load(Ordering::SeqCst) {
                    match events.recv_timeout(Duration::from_millis(50)) {
                        Ok(ev) => {
                            let e = bsn_event { event: ev };
                            // a panic in bsn never unwinds into the callback's caller (C)
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                cb(data.0, &e)
                            }));
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            });
        match thread {
            Ok(thread) => {
                h.delivery = Some(Delivery { stop, thread });
                BSN_OK
            }
            Err(e) => fail(BSN_ERR_IO, format!("cannot start the callback thread: {e}")),
        }
    })
}

/// Dials `addr` ("1.2.3.4:8333", or "host:port", looked up now). The outcome comes as
/// `BSN_EVENT_PEER_CONNECTED`; as `BSN_EVENT_CONNECT_FAILED` when the dial is not even started
/// (a banned address, the outbound limit reached); or as `BSN_EVENT_PEER_DISCONNECTED`, for a
/// peer id no `BSN_EVENT_PEER_CONNECTED` named, when the connection fails before its handshake
/// (refused, timed out).
#[no_mangle]
pub extern "C" fn bsn_engine_connect(engine: *const bsn_engine, addr: *const c_char) -> bsn_result {
    with(engine, |_, e| {
        // SAFETY: checked inside.
        let s = match unsafe { arg_str(addr, "addr") } {
            Ok(s) => s,
            Err(r) => return r,
        };
        match super::config::address(s, "peer address") {
            Ok(a) => e.connect(a).map_or_else(engine_error, |()| BSN_OK),
            Err(r) => r,
        }
    })
}

/// Closes the connection to `peer` (`BSN_ERR_UNKNOWN_PEER` if there is none).
#[no_mangle]
pub extern "C" fn bsn_engine_disconnect(engine: *const bsn_engine, peer: u64) -> bsn_result {
    with(engine, |_, e| {
        if !e.peers().iter().any(|p| u64::from(p.id) == peer) {
            return fail(BSN_ERR_UNKNOWN_PEER, format!("no peer {peer}"));
        }
        e.disconnect(peer_id(peer))
            .map_or_else(engine_error, |()| BSN_OK)
    })
}

fn message(command: *const c_char, payload: *const u8, len: usize) -> Result<Message, bsn_result> {
    // SAFETY: checked inside.
    let name = unsafe { arg_str(command, "command") }?;
    let Some(cmd) = Command::new(name) else {
        return Err(fail(
            BSN_ERR_INVALID_ARGUMENT,
            format!("{name:?} is not a command"),
        ));
    };
    // SAFETY: checked inside.
    let bytes = unsafe { arg_bytes(payload, len, "payload") }?;
    Message::decode(cmd, bytes::Bytes::copy_from_slice(bytes))
        .map_err(|e| fail(BSN_ERR_INVALID_DATA, format!("{name} payload: {e}")))
}

/// Sends `peer` the message `command` ("ping", "getaddr"...) with `payload` (`len` bytes, the
/// caller's; NULL when `len` is 0), as it would go on the wire without its header. Returns once
/// the message is queued for the peer (`BSN_ERR_UNKNOWN_PEER`, `BSN_ERR_SEND` otherwise). An
/// answer comes as a `BSN_EVENT_MESSAGE`.
#[no_mangle]
pub extern "C" fn bsn_engine_send(
    engine: *const bsn_engine,
    peer: u64,
    command: *const c_char,
    payload: *const u8,
    len: usize,
) -> bsn_result {
    with(engine, |_, e| match message(command, payload, len) {
        Ok(m) => e
            .send(peer_id(peer), m)
            .map_or_else(|x| engine_error(x.into()), |()| BSN_OK),
        Err(r) => r,
    })
}

/// Sends the message to every connected peer (as `bsn_engine_send`).
#[no_mangle]
pub extern "C" fn bsn_engine_broadcast(
    engine: *const bsn_engine,
    command: *const c_char,
    payload: *const u8,
    len: usize,
) -> bsn_result {
    with(engine, |_, e| match message(command, payload, len) {
        Ok(m) => e.broadcast(m).map_or_else(engine_error, |()| BSN_OK),
        Err(r) => r,
    })
}

/// The connections now: `*out` gets a list the caller frees with `bsn_peer_list_free`.
#[no_mangle]
pub extern "C" fn bsn_engine_peers(
    engine: *const bsn_engine,
    out: *mut *mut bsn_peer_list,
) -> bsn_result {
    with(engine, |_, e| {
        if out.is_null() {
            return fail(BSN_ERR_NULL_ARGUMENT, "out is NULL");
        }
        let l = Box::into_raw(Box::new(bsn_peer_list { peers: e.peers() }));
        // SAFETY: checked for NULL above.
        unsafe { put(out, l, "out") }
    })
}

/// Bans an IP ("1.2.3.4") or subnet ("1.2.3.0/24", "fd00::/64") for `seconds`, with `reason`
/// (may be ""); its connections are dropped.
#[no_mangle]
pub extern "C" fn bsn_engine_ban(
    engine: *const bsn_engine,
    subnet: *const c_char,
    seconds: u64,
    reason: *const c_char,
) -> bsn_result {
    with(engine, |_, e| {
        // SAFETY: checked inside.
        let (s, r) = match unsafe { (arg_str(subnet, "subnet"), arg_str(reason, "reason")) } {
            (Ok(s), Ok(r)) => (s, r),
            (Err(x), _) | (_, Err(x)) => return x,
        };
        if s.parse::<crate::Subnet>().is_err() {
            return fail(
                BSN_ERR_INVALID_ADDRESS,
                format!("{s:?} is not an IP or subnet"),
            );
        }
        e.ban(s, Duration::from_secs(seconds), r)
            .map_or_else(engine_error, |_| BSN_OK)
    })
}

/// Lifts the ban of an IP or subnet (as given to `bsn_engine_ban`); `BSN_ERR_NOT_FOUND` if it
/// was not banned.
#[no_mangle]
pub extern "C" fn bsn_engine_unban(engine: *const bsn_engine, subnet: *const c_char) -> bsn_result {
    with(engine, |_, e| {
        // SAFETY: checked inside.
        let s = match unsafe { arg_str(subnet, "subnet") } {
            Ok(s) => s,
            Err(x) => return x,
        };
        if s.parse::<crate::Subnet>().is_err() {
            return fail(
                BSN_ERR_INVALID_ADDRESS,
                format!("{s:?} is not an IP or subnet"),
            );
        }
        match e.unban(s) {
            Ok(true) => BSN_OK,
            Ok(false) => fail(BSN_ERR_NOT_FOUND, format!("{s} is not banned")),
            Err(x) => engine_error(x),
        }
    })
}

/// Whether `ip` ("1.2.3.4") is inside a ban (`*out`).
#[no_mangle]
pub extern "C" fn bsn_engine_is_banned(
    engine: *const bsn_engine,
    ip: *const c_char,
    out: *mut bool,
) -> bsn_result {
    with(engine, |_, e| {
        // SAFETY: checked inside.
        let s = match unsafe { arg_str(ip, "ip") } {
            Ok(s) => s,
            Err(x) => return x,
        };
        match s.parse() {
            // SAFETY: checked inside.
            Ok(a) => unsafe { put(out, e.is_banned(a), "out") },
            Err(_) => fail(BSN_ERR_INVALID_ADDRESS, format!("{s:?} is not an IP")),
        }
    })
}

/// The bans as text with a NUL, into `buf`: one line per ban, "SUBNET UNTIL REASON\n", UNTIL
/// in Unix seconds; `*out_len` gets its length without the NUL.
#[no_mangle]
pub extern "C" fn bsn_engine_bans(
    engine: *const bsn_engine,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> bsn_result {
    with(engine, |_, e| {
        let text: String = e
            .bans()
            .iter()
            .map(|(s, b)| format!("{s} {} {}\n", b.until, b.reason))
            .collect();
        // SAFETY: checked inside.
        unsafe { put_str(&text, buf, len, out_len) }
    })
}

/// The best header's hash (32 bytes in wire order, into `hash`, the caller's) and height.
#[no_mangle]
pub extern "C" fn bsn_engine_best_header(
    engine: *const bsn_engine,
    hash: *mut u8,
    height: *mut u32,
) -> bsn_result {
    with(engine, |_, e| {
        if hash.is_null() || height.is_null() {
            return fail(BSN_ERR_NULL_ARGUMENT, "hash or height is NULL");
        }
        match e.best_header() {
            Ok((h, n)) => {
                let mut w = 0;
                // SAFETY: both checked for NULL; the caller gives 32 bytes at `hash`.
                unsafe {
                    put_bytes(&h.0, hash, 32, &mut w);
                    put(height, n, "height")
                }
            }
            Err(x) => engine_error(x),
        }
    })
}

/// The 80-byte header at `height` of the best chain, into `header` (80 bytes, the caller's);
/// `BSN_ERR_NOT_FOUND` above the tip.
#[no_mangle]
pub extern "C" fn bsn_engine_header_by_height(
    engine: *const bsn_engine,
    height: u32,
    header: *mut u8,
) -> bsn_result {
    with(engine, |_, e| {
        if header.is_null() {
            return fail(BSN_ERR_NULL_ARGUMENT, "header is NULL");
        }
        match e.header(HeaderRef::Height(height)) {
            Some((h, _)) => {
                let mut w = 0;
                // SAFETY: checked for NULL; the caller gives 80 bytes.
                unsafe { put_bytes(&h.to_array(), header, 80, &mut w) }
            }
            None => fail(BSN_ERR_NOT_FOUND, format!("no header at height {height}")),
        }
    })
}

/// The stored block with `hash` (32 bytes, wire order) copied into `buf`; `*out_len` gets its
/// size, also when `buf` is too small (`BSN_ERR_BUFFER_TOO_SMALL`). `BSN_ERR_NOT_FOUND` when it
/// is not stored.
#[no_mangle]
pub extern "C" fn bsn_engine_block_by_hash(
    engine: *const bsn_engine,
    hash: *const u8,
    buf: *mut u8,
    len: usize,
    out_len: *mut usize,
) -> bsn_result {
    with(engine, |_, e| {
        // SAFETY: checked inside.
        let h = match unsafe { arg_hash(hash, "hash") } {
            Ok(h) => h,
            Err(x) => return x,
        };
        if out_len.is_null() {
            return fail(BSN_ERR_NULL_ARGUMENT, "out_len is NULL");
        }
        let at = HeaderRef::Hash(h);
        match e.block_size(at) {
            Ok(Some(size)) => {
                let size = size as usize;
                // SAFETY: checked for NULL above.
                unsafe { out_len.write(size) };
                if buf.is_null() || len < size {
                    return fail(
                        BSN_ERR_BUFFER_TOO_SMALL,
                        format!("{size} bytes needed, room for {len}"),
                    );
                }
                // SAFETY: not NULL, `len` >= `size` bytes of room.
                let out = unsafe { std::slice::from_raw_parts_mut(buf, size) };
                match e.read_block(at, 0, out) {
                    Ok(Some(n)) if n == size => BSN_OK,
                    Ok(_) => fail(BSN_ERR_STORE, "the block changed while read"),
                    Err(x) => engine_error(x),
                }
            }
            Ok(None) => fail(BSN_ERR_NOT_FOUND, format!("block {h} is not stored")),
            Err(x) => engine_error(x),
        }
    })
}

/// Where the sync stands (`bsn_engine_sync_progress`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct bsn_sync_progress {
    /// Our best header's height.
    pub header_height: u32,
    /// The highest height any peer claimed or implied (at least ours).
    pub best_known_height: u32,
    /// The height up to which blocks are stored without a gap (0 for a header client).
    pub block_height: u32,
    /// A header request is in flight.
    pub syncing: bool,
    /// The peer the sync asks (0: none).
    pub sync_peer: u64,
}

/// Fills `*out` with where the sync stands.
#[no_mangle]
pub extern "C" fn bsn_engine_sync_progress(
    engine: *const bsn_engine,
    out: *mut bsn_sync_progress,
) -> bsn_result {
    with(engine, |_, e| match e.sync_progress() {
        Ok((p, blocks)) => {
            let v = bsn_sync_progress {
                header_height: p.tip_height,
                best_known_height: p.best_known_height,
                block_height: blocks.unwrap_or(0),
                syncing: p.syncing,
                sync_peer: p.sync_peer.map_or(0, u64::from),
            };
            // SAFETY: checked inside.
            unsafe { put(out, v, "out") }
        }
        Err(x) => engine_error(x),
    })
}

/// Relays a serialized transaction (`len` bytes, the caller's) to every peer.
#[no_mangle]
pub extern "C" fn bsn_engine_submit_tx(
    engine: *const bsn_engine,
    tx: *const u8,
    len: usize,
) -> bsn_result {
    with(engine, |_, e| {
        // SAFETY: checked inside.
        let b = match unsafe { arg_bytes(tx, len, "tx") } {
            Ok(b) => b,
            Err(x) => return x,
        };
        match Transaction::decode_all(bytes::Bytes::copy_from_slice(b)) {
            Ok(t) => e.submit_tx(t).map_or_else(engine_error, |()| BSN_OK),
            Err(x) => fail(BSN_ERR_INVALID_DATA, format!("transaction: {x}")),
        }
    })
}

/// Hands in a serialized block (`len` bytes, the caller's; mined or received elsewhere): its
/// header joins the chain before this returns (`*height` gets its height); the block is then
/// written, and announced once committed, which `BSN_EVENT_BLOCK_CONNECTED` tells (until then
/// `bsn_engine_block_by_hash` may not find it).
#[no_mangle]
pub extern "C" fn bsn_engine_submit_block(
    engine: *const bsn_engine,
    block: *const u8,
    len: usize,
    height: *mut u32,
) -> bsn_result {
    with(engine, |_, e| {
        if height.is_null() {
            return fail(BSN_ERR_NULL_ARGUMENT, "height is NULL");
        }
        // SAFETY: checked inside.
        let b = match unsafe { arg_bytes(block, len, "block") } {
            Ok(b) => b,
            Err(x) => return x,
        };
        match Block::decode_all(bytes::Bytes::copy_from_slice(b)) {
            Ok(blk) => match e.submit_block(blk) {
                // SAFETY: checked for NULL above.
                Ok(h) => unsafe { put(height, h, "height") },
                Err(x) => engine_error(x),
            },
            Err(x) => fail(BSN_ERR_INVALID_DATA, format!("block: {x}")),
        }
    })
}

/// Accepts a transaction handed over with `BSN_EVENT_TX_RECEIVED` (its 32-byte id in wire
/// order): it is relayed on. `BSN_ERR_NOT_FOUND` when no such transaction waits.
#[no_mangle]
pub extern "C" fn bsn_engine_accept_tx(engine: *const bsn_engine, txid: *const u8) -> bsn_result {
    with(engine, |_, e| {
        // SAFETY: checked inside.
        match unsafe { arg_hash(txid, "txid") } {
            Ok(h) if e.accept_tx(&h) => BSN_OK,
            Ok(h) => fail(BSN_ERR_NOT_FOUND, format!("no transaction {h} waits")),
            Err(x) => x,
        }
    })
}

/// Refuses a transaction handed over with `BSN_EVENT_TX_RECEIVED`: it is not relayed, and its
/// sender's ban score goes up by `score` (0 for policy, as the SV node: 10 or 100 for
/// consensus), with `reason`. `BSN_ERR_NOT_FOUND` when no such transaction waits.
#[no_mangle]
pub extern "C" fn bsn_engine_reject_tx(
    engine: *const bsn_engine,
    txid: *const u8,
    reason: *const c_char,
    score: u32,
) -> bsn_result {
    with(engine, |_, e| {
        // SAFETY: checked inside.
        let (h, r) = match unsafe { (arg_hash(txid, "txid"), arg_str(reason, "reason")) } {
            (Ok(h), Ok(r)) => (h, r),
            (Err(x), _) | (_, Err(x)) => return x,
        };
        if e.reject_tx(&h, r, score) {
            BSN_OK
        } else {
            fail(BSN_ERR_NOT_FOUND, format!("no transaction {h} waits"))
        }
    })
}

/// Calls from several C threads at once share the handle: it must be `Sync`.
const _: () = {
    const fn shared<T: Sync + Send>() {}
    shared::<bsn_engine>();
};
