//! The C ABI (`include/bsn.h`, generated from this module by cbindgen): opaque handles over the
//! Rust API, one module per C object. The crate's only `unsafe` code is here.
//!
//! Conventions, the same for every function (rustls-ffi's):
//! - every function returns a [`bsn_result`]; `BSN_OK` is 0, errors are 7001 and up, and
//!   [`bsn_result_text`] names them; [`bsn_last_error`] gives the calling thread's last error
//!   message in full;
//! - every pointer argument is checked for NULL (`BSN_ERR_NULL_ARGUMENT`);
//! - objects are created by `*_new`/`*_start` or handed out by a call, and freed by their
//!   `*_free`, which takes the address of the caller's pointer and sets it to NULL: a second free
//!   of the same pointer variable does nothing (`BSN_ERR_NULL_ARGUMENT`);
//! - outputs are written to caller buffers: a buffer too small gets `BSN_ERR_BUFFER_TOO_SMALL`
//!   and the size it needs in `*out_len`;
//! - no panic crosses into C: one becomes `BSN_ERR_PANIC`.

#![allow(unsafe_code)]
#![allow(non_camel_case_types)]
// C callers cannot honour `unsafe fn`; every pointer is checked for NULL instead (as rustls-ffi).
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod config;
pub mod engine;
pub mod event;
pub mod peer_list;

use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a call came to: `BSN_OK` (0), or an error (7001 and up; `bsn_result_text` names it,
/// `bsn_last_error` says more).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum bsn_result {
    /// Done.
    BSN_OK = 0,
    /// A pointer argument was NULL (also: freeing what was freed already).
    BSN_ERR_NULL_ARGUMENT = 7001,
    /// An argument is not valid (text that is not UTF-8, an index out of range, zero shards...).
    BSN_ERR_INVALID_ARGUMENT = 7002,
    /// An address, IP or subnet does not parse.
    BSN_ERR_INVALID_ADDRESS = 7003,
    /// The output buffer is too small: `*out_len` says how big it must be.
    BSN_ERR_BUFFER_TOO_SMALL = 7004,
    /// No connection has this peer id (any more).
    BSN_ERR_UNKNOWN_PEER = 7005,
    /// The engine is stopped.
    BSN_ERR_STOPPED = 7006,
    /// No event came within the timeout.
    BSN_ERR_TIMEOUT = 7007,
    /// Nothing found: no such header, block, ban or transaction; or the event has no such field.
    BSN_ERR_NOT_FOUND = 7008,
    /// The configuration is refused at start (see `bsn_last_error`).
    BSN_ERR_CONFIG = 7009,
    /// An operating system error (a port in use, a data dir that cannot be written...).
    BSN_ERR_IO = 7010,
    /// The store failed.
    BSN_ERR_STORE = 7011,
    /// A message could not be sent (the peer's queue is full, it is not ready...).
    BSN_ERR_SEND = 7012,
    /// Bytes that do not decode as what they should be (a transaction, a block, a payload).
    BSN_ERR_INVALID_DATA = 7013,
    /// The call is not allowed now (polling while a callback takes the events).
    BSN_ERR_WRONG_STATE = 7014,
    /// bsn panicked inside the call (a bug; the engine may be unusable).
    BSN_ERR_PANIC = 7099,
}

use bsn_result::*;

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `msg` as the calling thread's last error; returns `code`.
pub(crate) fn fail(code: bsn_result, msg: impl Into<String>) -> bsn_result {
    let msg = msg.into();
    LAST_ERROR.with(|e| *e.borrow_mut() = msg);
    code
}

/// Runs `f`, turning a panic into `BSN_ERR_PANIC`.
pub(crate) fn guard(f: impl FnOnce() -> bsn_result) -> bsn_result {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            fail(BSN_ERR_PANIC, format!("bsn panicked: {what}"))
        }
    }
}

/// Turns an engine error into a result code (and the thread's last error).
pub(crate) fn engine_error(e: crate::Error) -> bsn_result {
    use crate::Error;
    let code = match &e {
        Error::Config(_) => BSN_ERR_CONFIG,
        Error::Bind { .. } | Error::DataDir { .. } | Error::Io(_) => BSN_ERR_IO,
        Error::Store(_) => BSN_ERR_STORE,
        Error::Stopped => BSN_ERR_STOPPED,
        Error::UnknownPeer(_) => BSN_ERR_UNKNOWN_PEER,
        Error::InvalidInput(_) => BSN_ERR_INVALID_DATA,
        Error::Send(crate::SendError::NoSuchPeer(_)) => BSN_ERR_UNKNOWN_PEER,
        Error::Send(_) => BSN_ERR_SEND,
    };
    fail(code, e.to_string())
}

/// A required reference from a pointer.
pub(crate) unsafe fn arg<'a, T>(p: *const T, name: &str) -> Result<&'a T, bsn_result> {
    // SAFETY: the caller passes a pointer it got from bsn (or NULL, refused here).
    unsafe { p.as_ref() }.ok_or_else(|| fail(BSN_ERR_NULL_ARGUMENT, format!("{name} is NULL")))
}

/// A required mutable reference from a pointer.
pub(crate) unsafe fn arg_mut<'a, T>(p: *mut T, name: &str) -> Result<&'a mut T, bsn_result> {
    // SAFETY: as `arg`; the caller does not use the object from another thread meanwhile.
    unsafe { p.as_mut() }.ok_or_else(|| fail(BSN_ERR_NULL_ARGUMENT, format!("{name} is NULL")))
}

/// A required NUL-terminated UTF-8 string.
pub(crate) unsafe fn arg_str<'a>(p: *const c_char, name: &str) -> Result<&'a str, bsn_result> {
    if p.is_null() {
        return Err(fail(BSN_ERR_NULL_ARGUMENT, format!("{name} is NULL")));
    }
    // SAFETY: not NULL; the caller passes a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| fail(BSN_ERR_INVALID_ARGUMENT, format!("{name} is not UTF-8")))
}

/// `len` bytes at `p` (NULL allowed only when `len` is 0).
pub(crate) unsafe fn arg_bytes<'a>(
    p: *const u8,
    len: usize,
    name: &str,
) -> Result<&'a [u8], bsn_result> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(fail(BSN_ERR_NULL_ARGUMENT, format!("{name} is NULL")));
    }
    // SAFETY: not NULL; the caller passes `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A 32-byte hash at `p`.
pub(crate) unsafe fn arg_hash(
    p: *const u8,
    name: &str,
) -> Result<crate::wire::Hash256, bsn_result> {
    if p.is_null() {
        return Err(fail(BSN_ERR_NULL_ARGUMENT, format!("{name} is NULL")));
    }
    let mut h = [0u8; 32];
    // SAFETY: not NULL; the caller passes 32 readable bytes.
    h.copy_from_slice(unsafe { std::slice::from_raw_parts(p, 32) });
    Ok(crate::wire::Hash256(h))
}

/// Writes `v` to `out` (checked for NULL).
pub(crate) unsafe fn put<T>(out: *mut T, v: T, name: &str) -> bsn_result {
    if out.is_null() {
        return fail(BSN_ERR_NULL_ARGUMENT, format!("{name} is NULL"));
    }
    // SAFETY: not NULL; the caller passes room for a `T`.
    unsafe { out.write(v) };
    BSN_OK
}

/// Copies `src` into the caller's buffer; `*out_len` gets its length, also when the buffer is
/// too small (then nothing is copied).
pub(crate) unsafe fn put_bytes(
    src: &[u8],
    buf: *mut u8,
    len: usize,
    out_len: *mut usize,
) -> bsn_result {
    if out_len.is_null() {
        return fail(BSN_ERR_NULL_ARGUMENT, "out_len is NULL");
    }
    // SAFETY: not NULL.
    unsafe { out_len.write(src.len()) };
    if src.is_empty() {
        return BSN_OK;
    }
    if buf.is_null() || len < src.len() {
        return fail(
            BSN_ERR_BUFFER_TOO_SMALL,
            format!("{} bytes needed, room for {len}", src.len()),
        );
    }
    // SAFETY: not NULL, and the caller says `len` bytes fit.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf, src.len()) };
    BSN_OK
}

/// Copies `s` and a terminating NUL into the caller's buffer; `*out_len` gets its length
/// without the NUL (the buffer needs one more byte).
pub(crate) unsafe fn put_str(
    s: &str,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> bsn_result {
    if out_len.is_null() {
        return fail(BSN_ERR_NULL_ARGUMENT, "out_len is NULL");
    }
    // SAFETY: not NULL.
    unsafe { out_len.write(s.len()) };
    if buf.is_null() || len < s.len() + 1 {
        return fail(
            BSN_ERR_BUFFER_TOO_SMALL,
            format!("{} bytes needed with the NUL, room for {len}", s.len() + 1),
        );
    }
    // SAFETY: not NULL, room for the text and its NUL.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        buf.add(s.len()).write(0);
    }
    BSN_OK
}

/// Frees a boxed object whose address the caller passes, and sets the caller's pointer to NULL.
pub(crate) unsafe fn free_box<T>(p: *mut *mut T, name: &str) -> bsn_result {
    if p.is_null() {
        return fail(BSN_ERR_NULL_ARGUMENT, format!("{name} is NULL"));
    }
    // SAFETY: not NULL: the address of the caller's pointer.
    let inner = unsafe { p.read() };
    if inner.is_null() {
        return fail(
            BSN_ERR_NULL_ARGUMENT,
            format!("*{name} is NULL (freed already?)"),
        );
    }
    // SAFETY: `inner` came from `Box::into_raw` in bsn and was not freed (the caller's
    // pointer is set to NULL when it is).
    drop(unsafe { Box::from_raw(inner) });
    // SAFETY: as above.
    unsafe { p.write(std::ptr::null_mut()) };
    BSN_OK
}

/// bsn's version, a static NUL-terminated string ("0.1.0"); never freed.
///
/// Any thread.
#[no_mangle]
pub extern "C" fn bsn_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The name of a result code, a static NUL-terminated string (e.g. "BSN_ERR_TIMEOUT: no event
/// came within the timeout"); never freed. Unknown codes give "unknown result".
///
/// Any thread.
#[no_mangle]
pub extern "C" fn bsn_result_text(result: u32) -> *const c_char {
    let s: &'static str = match result {
        0 => "BSN_OK: done\0",
        7001 => "BSN_ERR_NULL_ARGUMENT: a pointer argument was NULL\0",
        7002 => "BSN_ERR_INVALID_ARGUMENT: an argument is not valid\0",
        7003 => "BSN_ERR_INVALID_ADDRESS: an address, IP or subnet does not parse\0",
        7004 => "BSN_ERR_BUFFER_TOO_SMALL: the output buffer is too small\0",
        7005 => "BSN_ERR_UNKNOWN_PEER: no connection has this peer id\0",
        7006 => "BSN_ERR_STOPPED: the engine is stopped\0",
        7007 => "BSN_ERR_TIMEOUT: no event came within the timeout\0",
        7008 => "BSN_ERR_NOT_FOUND: nothing found\0",
        7009 => "BSN_ERR_CONFIG: the configuration is refused\0",
        7010 => "BSN_ERR_IO: an operating system error\0",
        7011 => "BSN_ERR_STORE: the store failed\0",
        7012 => "BSN_ERR_SEND: the message could not be sent\0",
        7013 => "BSN_ERR_INVALID_DATA: bytes that do not decode\0",
        7014 => "BSN_ERR_WRONG_STATE: the call is not allowed now\0",
        7099 => "BSN_ERR_PANIC: bsn panicked (a bug)\0",
        _ => "unknown result\0",
    };
    s.as_ptr().cast()
}

/// Copies the calling thread's last error message (set by the last call that failed on this
/// thread; empty if none) into `buf` with a terminating NUL; `*out_len` gets its length without
/// the NUL, also when `buf` is too small (`BSN_ERR_BUFFER_TOO_SMALL`).
///
/// Any thread (each has its own last error). `buf` is the caller's.
#[no_mangle]
pub extern "C" fn bsn_last_error(buf: *mut c_char, len: usize, out_len: *mut usize) -> bsn_result {
    guard(|| {
        let msg = LAST_ERROR.with(|e| e.borrow().clone());
        // SAFETY: checked inside.
        let r = unsafe { put_str(&msg, buf, len, out_len) };
        if r != BSN_OK {
            // keep the message for the retry with a bigger buffer
            LAST_ERROR.with(|e| *e.borrow_mut() = msg);
        }
        r
    })
}
