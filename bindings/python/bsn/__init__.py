"""Python bindings of bsn, the Bitcoin Server Network engine, over its C ABI (``libbsn.so``).

Standard library only (``ctypes``). The library is found from the environment variable
``BSN_LIB`` (a file path), else ``target/release/libbsn.so`` or ``target/debug/libbsn.so`` of
the repository this package sits in (the newer of the two when both exist)::

    import bsn

    with bsn.Engine(bsn.Config("regtest", listen="127.0.0.1:0", pin_threads=False)) as a:
        print(a.local_addr)
        for ev in a.events(timeout=5):      # stops after 5 s without an event
            print(ev)

Every C object is freed exactly once, by its documented ``*_free(&p)``: an :class:`Event` is
read in full and freed as soon as it is polled, a peer list as soon as it is read, a
:class:`Config` and an :class:`Engine` by ``close()`` (or leaving their ``with`` block, or
garbage collection as a last resort). Errors raise :class:`BsnError` with the C result code,
its name (``bsn_result_text``) and the thread's last error message (``bsn_last_error``).

Hashes are ``bytes`` of 32 in wire order (as bsn and the protocol carry them): :func:`hash_hex`
shows them as the usual reversed hex, :func:`hash_from_hex` reads that back.

Threads: an :class:`Engine` may be used from several threads at once (the C calls allow it);
``close()`` and ``stop()`` wait for the calls under way (a :meth:`Engine.poll` gives way
within a quarter of a second), as the C API requires.
"""

from __future__ import annotations

import ctypes
import enum
import math
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Union

__all__ = [
    "BsnError",
    "Ban",
    "Config",
    "Engine",
    "Event",
    "EventKind",
    "LibraryNotFound",
    "Peer",
    "Result",
    "SyncProgress",
    "Tip",
    "hash_from_hex",
    "hash_hex",
    "library_path",
    "version",
]

__version__ = "0.1.0"


# ---------------------------------------------------------------------------------------------
# Result codes, event kinds, errors


class Result(enum.IntEnum):
    """``bsn_result``: what a C call came to."""

    OK = 0
    NULL_ARGUMENT = 7001
    INVALID_ARGUMENT = 7002
    INVALID_ADDRESS = 7003
    BUFFER_TOO_SMALL = 7004
    UNKNOWN_PEER = 7005
    STOPPED = 7006
    TIMEOUT = 7007
    NOT_FOUND = 7008
    CONFIG = 7009
    IO = 7010
    STORE = 7011
    SEND = 7012
    INVALID_DATA = 7013
    WRONG_STATE = 7014
    PANIC = 7099


class EventKind(enum.IntEnum):
    """``bsn_event_type``: the kinds of event (see ``include/bsn.h`` for each one's fields)."""

    PEER_CONNECTED = 1
    PEER_DISCONNECTED = 2
    CONNECT_FAILED = 3
    MESSAGE = 4
    BANNED = 5
    UNBANNED = 6
    HEADERS_SYNCED = 7
    BLOCK_CONNECTED = 8
    REORG = 9
    TX_RECEIVED = 10
    BAN_SCORE = 11
    FATAL = 12
    BLOCK_FILE = 13
    OTHER = 99


class LibraryNotFound(OSError):
    """libbsn could not be found or loaded."""


class BsnError(Exception):
    """A bsn call failed.

    ``code`` is the :class:`Result` (an ``int`` when bsn returned a code this module does not
    know), ``name`` its name ("BSN_ERR_STOPPED"), ``message`` what bsn said of it.
    """

    def __init__(self, code: Union[Result, int], name: str, message: str) -> None:
        super().__init__(code, name, message)
        self.code = code
        self.name = name
        self.message = message

    def __str__(self) -> str:
        return f"{self.name} ({int(self.code)}): {self.message}" if self.message else self.name


def _result(code: int) -> Union[Result, int]:
    try:
        return Result(code)
    except ValueError:
        return code


def _own_error(code: Result, message: str) -> BsnError:
    """An error found on the Python side, named as bsn names it."""
    return BsnError(code, _result_name(code), message)


# ---------------------------------------------------------------------------------------------
# The library


_c_result = ctypes.c_int  # a C enum
_p = ctypes.c_void_p  # opaque handles, buffers
_pp = ctypes.POINTER(ctypes.c_void_p)  # the address of a handle (for *_new, *_free)
_size_p = ctypes.POINTER(ctypes.c_size_t)


class _SyncProgress(ctypes.Structure):
    _fields_ = [
        ("header_height", ctypes.c_uint32),
        ("best_known_height", ctypes.c_uint32),
        ("block_height", ctypes.c_uint32),
        ("syncing", ctypes.c_bool),
        ("sync_peer", ctypes.c_uint64),
    ]


_u8p = _p
_str = ctypes.c_char_p
_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64
_size = ctypes.c_size_t
_bool = ctypes.c_bool

# name: (restype, argtypes)
_SIGNATURES: Dict[str, Any] = {
    "bsn_version": (ctypes.c_char_p, []),
    "bsn_result_text": (ctypes.c_char_p, [_u32]),
    "bsn_last_error": (_c_result, [_p, _size, _size_p]),
    "bsn_config_new": (_c_result, [_str, _pp]),
    "bsn_config_free": (_c_result, [_pp]),
    "bsn_config_set_listen": (_c_result, [_p, _str]),
    "bsn_config_add_connect": (_c_result, [_p, _str]),
    "bsn_config_set_outbound_bind": (_c_result, [_p, _str]),
    "bsn_config_set_data_dir": (_c_result, [_p, _str]),
    "bsn_config_set_shards": (_c_result, [_p, _u32]),
    "bsn_config_set_pin_threads": (_c_result, [_p, _bool]),
    "bsn_config_set_magic": (_c_result, [_p, _str]),
    "bsn_config_set_headers_only": (_c_result, [_p, _bool]),
    "bsn_config_add_seed": (_c_result, [_p, _str]),
    "bsn_config_set_max_inbound": (_c_result, [_p, _u32]),
    "bsn_config_set_max_outbound": (_c_result, [_p, _u32]),
    "bsn_config_set_target_outbound": (_c_result, [_p, _u32]),
    "bsn_engine_start": (_c_result, [_p, _pp]),
    "bsn_engine_stop": (_c_result, [_p]),
    "bsn_engine_free": (_c_result, [_pp]),
    "bsn_engine_local_addr": (_c_result, [_p, _p, _size, _size_p]),
    "bsn_engine_poll_event": (_c_result, [_p, _u32, _pp]),
    "bsn_engine_connect": (_c_result, [_p, _str]),
    "bsn_engine_disconnect": (_c_result, [_p, _u64]),
    "bsn_engine_send": (_c_result, [_p, _u64, _str, _u8p, _size]),
    "bsn_engine_broadcast": (_c_result, [_p, _str, _u8p, _size]),
    "bsn_engine_peers": (_c_result, [_p, _pp]),
    "bsn_engine_ban": (_c_result, [_p, _str, _u64, _str]),
    "bsn_engine_unban": (_c_result, [_p, _str]),
    "bsn_engine_is_banned": (_c_result, [_p, _str, ctypes.POINTER(_bool)]),
    "bsn_engine_bans": (_c_result, [_p, _p, _size, _size_p]),
    "bsn_engine_best_header": (_c_result, [_p, _u8p, ctypes.POINTER(_u32)]),
    "bsn_engine_header_by_height": (_c_result, [_p, _u32, _u8p]),
    "bsn_engine_block_by_hash": (_c_result, [_p, _u8p, _u8p, _size, _size_p]),
    "bsn_engine_sync_progress": (_c_result, [_p, ctypes.POINTER(_SyncProgress)]),
    "bsn_engine_submit_tx": (_c_result, [_p, _u8p, _size]),
    "bsn_engine_submit_block": (_c_result, [_p, _u8p, _size, ctypes.POINTER(_u32)]),
    "bsn_engine_accept_tx": (_c_result, [_p, _u8p]),
    "bsn_engine_reject_tx": (_c_result, [_p, _u8p, _str, _u32]),
    "bsn_event_kind": (_c_result, [_p, ctypes.POINTER(ctypes.c_int)]),
    "bsn_event_peer": (_c_result, [_p, ctypes.POINTER(_u64)]),
    "bsn_event_data": (_c_result, [_p, _u8p, _size, _size_p]),
    "bsn_event_command": (_c_result, [_p, _p, _size, _size_p]),
    "bsn_event_height": (_c_result, [_p, ctypes.POINTER(_u32)]),
    "bsn_event_hash": (_c_result, [_p, _u8p]),
    "bsn_event_address": (_c_result, [_p, _p, _size, _size_p]),
    "bsn_event_free": (_c_result, [_pp]),
    "bsn_peer_list_len": (_c_result, [_p, ctypes.POINTER(_size)]),
    "bsn_peer_list_id": (_c_result, [_p, _size, ctypes.POINTER(_u64)]),
    "bsn_peer_list_address": (_c_result, [_p, _size, _p, _size, _size_p]),
    "bsn_peer_list_user_agent": (_c_result, [_p, _size, _p, _size, _size_p]),
    "bsn_peer_list_ready": (_c_result, [_p, _size, ctypes.POINTER(_bool)]),
    "bsn_peer_list_inbound": (_c_result, [_p, _size, ctypes.POINTER(_bool)]),
    "bsn_peer_list_version": (
        _c_result,
        [_p, _size, ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32)],
    ),
    "bsn_peer_list_free": (_c_result, [_pp]),
}

_LIB_NAME = {"darwin": "libbsn.dylib", "win32": "bsn.dll"}.get(sys.platform, "libbsn.so")
_lib_lock = threading.Lock()
_lib_handle: Optional[ctypes.CDLL] = None
_lib_path: Optional[str] = None


def _repository() -> Path:
    # <repo>/bindings/python/bsn/__init__.py
    return Path(__file__).resolve().parents[3]


def _find_library() -> str:
    env = os.environ.get("BSN_LIB")
    if env:
        if not os.path.isfile(env):
            raise LibraryNotFound(f"BSN_LIB={env!r} is not a file (it names libbsn itself)")
        return env
    repo = _repository()
    found = [
        p for p in (repo / "target" / d / _LIB_NAME for d in ("release", "debug")) if p.is_file()
    ]
    if not found:
        raise LibraryNotFound(
            f"no {_LIB_NAME}: set BSN_LIB to its path, or build it with "
            f"`cargo build --lib` (or --release) in {repo} "
            f"(looked for target/release/{_LIB_NAME} and target/debug/{_LIB_NAME})"
        )
    # both built: the newer one (an old release build does not hide a fresh debug one)
    return str(max(found, key=lambda p: p.stat().st_mtime))


def _lib() -> ctypes.CDLL:
    """The loaded library (loaded and declared on first use)."""
    global _lib_handle, _lib_path
    lib = _lib_handle
    if lib is not None:
        return lib
    with _lib_lock:
        if _lib_handle is None:
            path = _find_library()
            try:
                lib = ctypes.CDLL(path)
            except OSError as e:
                raise LibraryNotFound(f"cannot load {path}: {e}") from e
            for name, (restype, argtypes) in _SIGNATURES.items():
                try:
                    f = getattr(lib, name)
                except AttributeError as e:
                    raise LibraryNotFound(f"{path} has no {name}: not a matching libbsn") from e
                f.restype = restype
                f.argtypes = argtypes
            _lib_path = path
            _lib_handle = lib
        return _lib_handle


def library_path() -> str:
    """The path of the libbsn in use (loading it if need be)."""
    _lib()
    assert _lib_path is not None
    return _lib_path


def version() -> str:
    """libbsn's version ("0.1.0")."""
    return _lib().bsn_version().decode()


def _result_name(code: int) -> str:
    text = _lib().bsn_result_text(int(code) & 0xFFFFFFFF)
    return text.decode(errors="replace").split(":", 1)[0] if text else "unknown result"


def _last_error() -> str:
    lib = _lib()
    size = 256
    for _ in range(4):
        buf = ctypes.create_string_buffer(size)
        n = ctypes.c_size_t(0)
        r = lib.bsn_last_error(buf, size, ctypes.byref(n))
        if r == Result.OK:
            return buf.raw[: n.value].decode(errors="replace")
        if r != Result.BUFFER_TOO_SMALL:
            return ""
        size = n.value + 1
    return ""


def _error(code: int) -> BsnError:
    """The error for a C result, with this thread's last error message (read at once)."""
    return BsnError(_result(code), _result_name(code), _last_error())


def _check(code: int) -> None:
    if code != Result.OK:
        raise _error(code)


# The first buffer offered to a call that copies out text or bytes; a bigger one follows when
# bsn says BSN_ERR_BUFFER_TOO_SMALL (the tests set it to 1 to take that path every time).
_INITIAL_BUFFER = 256


def _read_out(call: Callable[..., int], text: bool, initial: Optional[int] = None) -> bytes:
    """Runs ``call(buf, len, &out_len)`` with a buffer that grows to what bsn asks for."""
    size = _INITIAL_BUFFER if initial is None else initial
    for _ in range(16):  # what is read may grow between two calls (bans, a block): a few tries
        buf = ctypes.create_string_buffer(size) if size > 0 else None
        n = ctypes.c_size_t(0)
        r = call(buf, size, ctypes.byref(n))
        if r == Result.OK:
            return buf.raw[: n.value] if buf is not None else b""
        if r != Result.BUFFER_TOO_SMALL:
            raise _error(r)
        size = n.value + (1 if text else 0)
    raise _own_error(Result.BUFFER_TOO_SMALL, "the output kept growing over 16 tries")


def _read_text(call: Callable[..., int]) -> str:
    return _read_out(call, True).decode(errors="replace")


def _cstr(name: str, s: str) -> bytes:
    if not isinstance(s, str):
        raise _own_error(Result.INVALID_ARGUMENT, f"{name} must be a str, not {type(s).__name__}")
    if "\0" in s:
        raise _own_error(Result.INVALID_ARGUMENT, f"{name} holds a NUL character")
    return s.encode()


def _bytes(name: str, b: Union[bytes, bytearray, memoryview]) -> bytes:
    if not isinstance(b, (bytes, bytearray, memoryview)):
        raise _own_error(Result.INVALID_ARGUMENT, f"{name} must be bytes, not {type(b).__name__}")
    return bytes(b)


def _hash(name: str, h: Union[bytes, bytearray, memoryview]) -> bytes:
    b = _bytes(name, h)
    if len(b) != 32:
        raise _own_error(Result.INVALID_ARGUMENT, f"{name} must be 32 bytes, not {len(b)}")
    return b


def _uint(name: str, v: int, bits: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < (1 << bits):
        raise _own_error(Result.INVALID_ARGUMENT, f"{name} must be an int from 0 to 2**{bits}-1")
    return v


def hash_hex(h: bytes) -> str:
    """A hash in wire order shown as the usual hex (reversed)."""
    return bytes(h)[::-1].hex()


def hash_from_hex(s: str) -> bytes:
    """The wire-order bytes of a hash given as the usual (reversed) hex."""
    b = bytes.fromhex(s)
    if len(b) != 32:
        raise ValueError(f"a hash is 64 hex digits, not {len(s)}")
    return b[::-1]


# Handles alive, by kind: what was made and not yet freed (for tests and leak hunting).
_live: Dict[str, int] = {}
_live_lock = threading.Lock()


def _made(kind: str) -> None:
    with _live_lock:
        _live[kind] = _live.get(kind, 0) + 1


def _freed(kind: str) -> None:
    with _live_lock:
        _live[kind] -= 1
        if not _live[kind]:
            del _live[kind]


def _live_handles() -> Dict[str, int]:
    """The C objects made through this module and not freed yet, counted by kind."""
    with _live_lock:
        return dict(_live)


# ---------------------------------------------------------------------------------------------
# Config


class Config:
    """``bsn_config``: what an engine starts with (the SV node's defaults for ``network``).

    Options given here are set at once; the setters (which return the config, to chain them)
    set them later. ``listen`` "" does not listen; left out, bsn listens on 127.0.0.1 at the
    network's port. The C object is freed by :meth:`close` or at the end of a ``with`` block.
    """

    def __init__(
        self,
        network: str = "regtest",
        *,
        listen: Optional[str] = None,
        connect: Iterable[str] = (),
        outbound_bind: Optional[str] = None,
        data_dir: Optional[Union[str, os.PathLike]] = None,
        shards: Optional[int] = None,
        pin_threads: Optional[bool] = None,
        magic: Optional[str] = None,
        headers_only: Optional[bool] = None,
        seeds: Iterable[str] = (),
        max_inbound: Optional[int] = None,
        max_outbound: Optional[int] = None,
        target_outbound: Optional[int] = None,
    ) -> None:
        self._lock = threading.Lock()
        self._handle = ctypes.c_void_p()
        self.network = network
        _check(_lib().bsn_config_new(_cstr("network", network), ctypes.byref(self._handle)))
        _made("config")
        try:
            if listen is not None:
                self.set_listen(listen)
            for a in connect:
                self.add_connect(a)
            if outbound_bind is not None:
                self.set_outbound_bind(outbound_bind)
            if data_dir is not None:
                self.set_data_dir(data_dir)
            if shards is not None:
                self.set_shards(shards)
            if pin_threads is not None:
                self.set_pin_threads(pin_threads)
            if magic is not None:
                self.set_magic(magic)
            if headers_only is not None:
                self.set_headers_only(headers_only)
            for s in seeds:
                self.add_seed(s)
            if max_inbound is not None:
                self.set_max_inbound(max_inbound)
            if max_outbound is not None:
                self.set_max_outbound(max_outbound)
            if target_outbound is not None:
                self.set_target_outbound(target_outbound)
        except BaseException:
            self.close()
            raise

    @contextmanager
    def _use(self) -> Iterator[ctypes.c_void_p]:
        with self._lock:
            if not self._handle:
                raise _own_error(Result.NULL_ARGUMENT, "the config is closed")
            yield self._handle

    def _set(self, fn: str, *args: Any) -> "Config":
        with self._use() as h:
            _check(getattr(_lib(), fn)(h, *args))
        return self

    def set_listen(self, addr: str) -> "Config":
        """Listen on ``addr`` ("127.0.0.1:0" picks a free port); "" does not listen."""
        return self._set("bsn_config_set_listen", _cstr("addr", addr))

    def add_connect(self, addr: str) -> "Config":
        """A peer dialled at start and kept connected."""
        return self._set("bsn_config_add_connect", _cstr("addr", addr))

    def set_outbound_bind(self, ip: str) -> "Config":
        """The source address of outbound connections, an IP of this host with no port ("127.0.0.2");
        "" leaves it to the system."""
        return self._set("bsn_config_set_outbound_bind", _cstr("ip", ip))

    def set_data_dir(self, path: Union[str, os.PathLike]) -> "Config":
        """Keep everything in LMDB in ``path``; "" keeps it in memory."""
        return self._set("bsn_config_set_data_dir", _cstr("path", os.fspath(path)))

    def set_shards(self, n: int) -> "Config":
        """The number of event loops (at least 1)."""
        return self._set("bsn_config_set_shards", _uint("shards", n, 32))

    def set_pin_threads(self, pin: bool) -> "Config":
        """Pin each shard's thread to a core (the default) or not (shared machines, tests)."""
        return self._set("bsn_config_set_pin_threads", bool(pin))

    def set_magic(self, hex_magic: str) -> "Config":
        """Another network magic, 8 hex digits in wire order."""
        return self._set("bsn_config_set_magic", _cstr("magic", hex_magic))

    def set_headers_only(self, on: bool) -> "Config":
        """Header client mode: sync and serve headers, store no blocks."""
        return self._set("bsn_config_set_headers_only", bool(on))

    def add_seed(self, seed: str) -> "Config":
        """A DNS seed or an address to learn peers from."""
        return self._set("bsn_config_add_seed", _cstr("seed", seed))

    def set_max_inbound(self, n: int) -> "Config":
        return self._set("bsn_config_set_max_inbound", _uint("max_inbound", n, 32))

    def set_max_outbound(self, n: int) -> "Config":
        return self._set("bsn_config_set_max_outbound", _uint("max_outbound", n, 32))

    def set_target_outbound(self, n: int) -> "Config":
        """Outbound connections kept by dialling learned addresses (0: only those asked for)."""
        return self._set("bsn_config_set_target_outbound", _uint("target_outbound", n, 32))

    @property
    def closed(self) -> bool:
        return not self._handle

    def close(self) -> None:
        """Frees the C config (once; later calls do nothing)."""
        with self._lock:
            if self._handle:
                r = _lib().bsn_config_free(ctypes.byref(self._handle))
                _freed("config")
                _check(r)

    def __enter__(self) -> "Config":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_handle", None):
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<bsn.Config {self.network}{' closed' if self.closed else ''}>"


# ---------------------------------------------------------------------------------------------
# What the engine hands out


@dataclass(frozen=True)
class Event:
    """One event, read in full from the C event (which is freed at once).

    Fields a kind does not have are ``None`` (``data`` is ``b""``); see ``include/bsn.h``:
    PEER_CONNECTED: peer, address, data (user agent); PEER_DISCONNECTED: peer, address, data
    (why); CONNECT_FAILED: address, data; MESSAGE: peer, command, data (payload); BANNED:
    address (subnet), data (why); UNBANNED: address; HEADERS_SYNCED: height; BLOCK_CONNECTED:
    height, hash, data (80-byte header); REORG: height (fork point), data; TX_RECEIVED: peer,
    hash (txid), data (the transaction); BAN_SCORE: peer, address, data; FATAL: data;
    BLOCK_FILE: peer, hash, data (a file path).
    """

    kind: EventKind
    peer: Optional[int] = None
    data: bytes = b""
    command: Optional[str] = None
    height: Optional[int] = None
    hash: Optional[bytes] = None
    address: Optional[str] = None

    _TEXT_KINDS = frozenset(
        {
            EventKind.PEER_CONNECTED,
            EventKind.PEER_DISCONNECTED,
            EventKind.CONNECT_FAILED,
            EventKind.BANNED,
            EventKind.REORG,
            EventKind.BAN_SCORE,
            EventKind.FATAL,
            EventKind.BLOCK_FILE,
            EventKind.OTHER,
        }
    )

    @property
    def text(self) -> str:
        """``data`` as text (for the kinds whose data is text)."""
        return self.data.decode(errors="replace")

    @property
    def hash_hex(self) -> Optional[str]:
        """``hash`` as the usual (reversed) hex."""
        return None if self.hash is None else hash_hex(self.hash)

    def __str__(self) -> str:
        parts = [self.kind.name]
        if self.peer is not None:
            parts.append(f"peer={self.peer}")
        if self.address is not None:
            parts.append(f"address={self.address}")
        if self.command is not None:
            parts.append(f"command={self.command}")
        if self.height is not None:
            parts.append(f"height={self.height}")
        if self.hash is not None:
            parts.append(f"hash={hash_hex(self.hash)}")
        if self.kind in self._TEXT_KINDS:
            if self.data:
                parts.append(f"data={self.text!r}")
        elif self.data:
            shown = self.data[:40].hex() + ("..." if len(self.data) > 40 else "")
            parts.append(f"data[{len(self.data)}]={shown}")
        return " ".join(parts)


@dataclass(frozen=True)
class Peer:
    """One connection, from :meth:`Engine.peers`."""

    id: int
    address: str
    user_agent: str
    ready: bool
    inbound: bool
    version: int
    start_height: int


@dataclass(frozen=True)
class Ban:
    """One ban, from :meth:`Engine.bans`: ``until`` in Unix seconds."""

    subnet: str
    until: int
    reason: str


@dataclass(frozen=True)
class SyncProgress:
    """Where the sync stands (``bsn_sync_progress``); ``sync_peer`` None: none."""

    header_height: int
    best_known_height: int
    block_height: int
    syncing: bool
    sync_peer: Optional[int]


class Tip(NamedTuple):
    """The best header: its hash (wire order) and height."""

    hash: bytes
    height: int

    @property
    def hash_hex(self) -> str:
        return hash_hex(self.hash)


def _read_event(ev: ctypes.c_void_p) -> Event:
    lib = _lib()

    def optional(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except BsnError as e:
            if e.code == Result.NOT_FOUND:
                return None
            raise

    k = ctypes.c_int(0)
    _check(lib.bsn_event_kind(ev, ctypes.byref(k)))
    try:
        kind = EventKind(k.value)
    except ValueError:
        kind = EventKind.OTHER

    def peer() -> int:
        v = ctypes.c_uint64(0)
        _check(lib.bsn_event_peer(ev, ctypes.byref(v)))
        return v.value

    def height() -> int:
        v = ctypes.c_uint32(0)
        _check(lib.bsn_event_height(ev, ctypes.byref(v)))
        return v.value

    def hash_() -> bytes:
        b = ctypes.create_string_buffer(32)
        _check(lib.bsn_event_hash(ev, b))
        return b.raw

    return Event(
        kind=kind,
        peer=optional(peer),
        data=_read_out(lambda b, n, o: lib.bsn_event_data(ev, b, n, o), False),
        command=optional(lambda: _read_text(lambda b, n, o: lib.bsn_event_command(ev, b, n, o))),
        height=optional(height),
        hash=optional(hash_),
        address=optional(lambda: _read_text(lambda b, n, o: lib.bsn_event_address(ev, b, n, o))),
    )


# ---------------------------------------------------------------------------------------------
# Engine

# The longest a single C poll waits: close() and Ctrl-C get their turn at least this often.
_POLL_SLICE_MS = 250


class Engine:
    """``bsn_engine``: a running engine, started at once with a copy of ``config``.

    ``Engine(config)`` or ``Engine(network="regtest", listen="127.0.0.1:0", ...)`` (the options
    of :class:`Config`). Used as a context manager it is stopped and freed on exit; else call
    :meth:`close`. After :meth:`stop` (bsn's) or :meth:`close`, calls raise
    :class:`BsnError` with ``Result.STOPPED``.
    """

    def __init__(self, config: Optional[Config] = None, **options: Any) -> None:
        self._handle = ctypes.c_void_p()
        self._cond = threading.Condition()
        self._users = 0  # calls under way
        self._closing = False
        if config is not None and options:
            raise TypeError("give a Config or Config options, not both")
        own = config is None
        cfg = Config(**options) if own else config
        try:
            with cfg._use() as c:
                _check(_lib().bsn_engine_start(c, ctypes.byref(self._handle)))
            _made("engine")
        finally:
            if own:
                cfg.close()

    # -- sharing the handle: calls run together, stop/free alone ---------------------------

    @contextmanager
    def _use(self) -> Iterator[ctypes.c_void_p]:
        with self._cond:
            if self._closing or not self._handle:
                raise _own_error(Result.STOPPED, "the engine is closed")
            self._users += 1
        try:
            yield self._handle
        finally:
            with self._cond:
                self._users -= 1
                if not self._users:
                    self._cond.notify_all()

    def _call(self, fn: str, *args: Any) -> None:
        with self._use() as h:
            _check(getattr(_lib(), fn)(h, *args))

    def _read(self, fn: str, *args: Any, text: bool, initial: Optional[int] = None) -> bytes:
        with self._use() as h:
            f = getattr(_lib(), fn)
            return _read_out(lambda b, n, o: f(h, *args, b, n, o), text, initial)

    @contextmanager
    def _alone(self) -> Iterator[None]:
        with self._cond:
            while self._closing:  # another close under way: let it finish
                self._cond.wait()
            self._closing = True
            while self._users:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._closing = False
                self._cond.notify_all()

    # -- life ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Freed (by :meth:`close`)."""
        return not self._handle

    def stop(self) -> None:
        """Stops the engine (connections closed, threads joined, store flushed); the object
        stays until :meth:`close`, and calls on it raise ``Result.STOPPED``."""
        with self._alone():
            if not self._handle:
                raise _own_error(Result.STOPPED, "the engine is closed")
            _check(_lib().bsn_engine_stop(self._handle))

    def close(self) -> None:
        """Stops the engine if it runs and frees it (once; later calls do nothing)."""
        with self._alone():
            if not self._handle:
                return
            lib = _lib()
            r = lib.bsn_engine_stop(self._handle)
            stop_error = _error(r) if r not in (Result.OK, Result.STOPPED) else None
            r = lib.bsn_engine_free(ctypes.byref(self._handle))
            _freed("engine")
            _check(r)
            if stop_error is not None:
                raise stop_error

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_handle", None):
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        if self.closed:
            return "<bsn.Engine closed>"
        try:
            return f"<bsn.Engine {self.local_addr or 'not listening'}>"
        except BsnError as e:
            return f"<bsn.Engine {e.name}>"

    # -- events ----------------------------------------------------------------------------

    def poll(self, timeout: Optional[float] = 0.0) -> Optional[Event]:
        """The next event, waiting up to ``timeout`` seconds (0: not at all; None: until one
        comes); None when none came."""
        if timeout is not None and (math.isnan(timeout) or timeout < 0):
            raise _own_error(Result.INVALID_ARGUMENT, "timeout must be 0 or more seconds")
        deadline = None if timeout is None else time.monotonic() + timeout
        lib = _lib()
        while True:
            if deadline is None:
                ms = _POLL_SLICE_MS
            else:
                left = deadline - time.monotonic()
                ms = min(_POLL_SLICE_MS, max(0, math.ceil(left * 1000)))
            ev = ctypes.c_void_p()
            with self._use() as h:
                r = lib.bsn_engine_poll_event(h, ms, ctypes.byref(ev))
                if r == Result.OK:
                    _made("event")
                    try:
                        return _read_event(ev)
                    finally:
                        r = lib.bsn_event_free(ctypes.byref(ev))
                        _freed("event")
                        _check(r)
            if r != Result.TIMEOUT:
                raise _error(r)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def events(self, timeout: Optional[float] = None) -> Iterator[Event]:
        """The events as they come; ends after ``timeout`` seconds without one (None: never),
        or when the engine stops or is closed."""
        while True:
            try:
                ev = self.poll(timeout)
            except BsnError as e:
                if e.code == Result.STOPPED:
                    return
                raise
            if ev is None:
                return
            yield ev

    # -- connections -----------------------------------------------------------------------

    @property
    def local_addr(self) -> Optional[str]:
        """The address it listens on ("127.0.0.1:39211"), None when it does not listen."""
        try:
            return self._read("bsn_engine_local_addr", text=True).decode()
        except BsnError as e:
            if e.code == Result.NOT_FOUND:
                return None
            raise

    def connect(self, addr: str) -> None:
        """Dials ``addr`` ("1.2.3.4:8333"): PEER_CONNECTED or CONNECT_FAILED follows."""
        self._call("bsn_engine_connect", _cstr("addr", addr))

    def disconnect(self, peer: int) -> None:
        """Closes the connection to ``peer``."""
        self._call("bsn_engine_disconnect", _uint("peer", peer, 64))

    def send(self, peer: int, command: str, payload: bytes = b"") -> None:
        """Sends ``peer`` the message ``command`` with ``payload`` (as on the wire, without its
        header); returns once it is queued. Answers come as MESSAGE events."""
        p = _bytes("payload", payload)
        self._call(
            "bsn_engine_send", _uint("peer", peer, 64), _cstr("command", command), p or None, len(p)
        )

    def broadcast(self, command: str, payload: bytes = b"") -> None:
        """Sends the message to every connected peer."""
        p = _bytes("payload", payload)
        self._call("bsn_engine_broadcast", _cstr("command", command), p or None, len(p))

    def peers(self) -> List[Peer]:
        """The connections now."""
        lib = _lib()
        with self._use() as h:
            lst = ctypes.c_void_p()
            _check(lib.bsn_engine_peers(h, ctypes.byref(lst)))
        _made("peer_list")
        try:
            n = ctypes.c_size_t(0)
            _check(lib.bsn_peer_list_len(lst, ctypes.byref(n)))
            out = []
            for i in range(n.value):
                pid = ctypes.c_uint64(0)
                ready = ctypes.c_bool(False)
                inbound = ctypes.c_bool(False)
                ver = ctypes.c_int32(0)
                start = ctypes.c_int32(0)
                _check(lib.bsn_peer_list_id(lst, i, ctypes.byref(pid)))
                _check(lib.bsn_peer_list_ready(lst, i, ctypes.byref(ready)))
                _check(lib.bsn_peer_list_inbound(lst, i, ctypes.byref(inbound)))
                _check(lib.bsn_peer_list_version(lst, i, ctypes.byref(ver), ctypes.byref(start)))
                addr = _read_text(lambda b, m, o: lib.bsn_peer_list_address(lst, i, b, m, o))
                ua = _read_text(lambda b, m, o: lib.bsn_peer_list_user_agent(lst, i, b, m, o))
                out.append(Peer(pid.value, addr, ua, ready.value, inbound.value, ver.value,
                                start.value))
            return out
        finally:
            r = lib.bsn_peer_list_free(ctypes.byref(lst))
            _freed("peer_list")
            _check(r)

    # -- bans ------------------------------------------------------------------------------

    def ban(self, subnet: str, seconds: int = 24 * 3600, reason: str = "") -> None:
        """Bans an IP ("1.2.3.4") or subnet ("1.2.3.0/24") for ``seconds``; its connections
        are dropped."""
        self._call(
            "bsn_engine_ban",
            _cstr("subnet", subnet),
            _uint("seconds", seconds, 64),
            _cstr("reason", reason),
        )

    def unban(self, subnet: str) -> None:
        """Lifts a ban (``Result.NOT_FOUND`` if there is none)."""
        self._call("bsn_engine_unban", _cstr("subnet", subnet))

    def is_banned(self, ip: str) -> bool:
        """Whether ``ip`` is inside a ban."""
        out = ctypes.c_bool(False)
        self._call("bsn_engine_is_banned", _cstr("ip", ip), ctypes.byref(out))
        return out.value

    def bans(self) -> List[Ban]:
        """The bans now."""
        text = self._read("bsn_engine_bans", text=True).decode(errors="replace")
        out = []
        for line in text.splitlines():
            if line:
                subnet, until, *reason = line.split(" ", 2)
                out.append(Ban(subnet, int(until), reason[0] if reason else ""))
        return out

    # -- chain -----------------------------------------------------------------------------

    def best_header(self) -> Tip:
        """The best header's hash (wire order) and height."""
        h = ctypes.create_string_buffer(32)
        n = ctypes.c_uint32(0)
        self._call("bsn_engine_best_header", h, ctypes.byref(n))
        return Tip(h.raw, n.value)

    def header(self, height: int) -> Optional[bytes]:
        """The 80-byte header at ``height`` of the best chain; None above the tip."""
        b = ctypes.create_string_buffer(80)
        try:
            self._call("bsn_engine_header_by_height", _uint("height", height, 32), b)
        except BsnError as e:
            if e.code == Result.NOT_FOUND:
                return None
            raise
        return b.raw

    def block(self, block_hash: bytes) -> Optional[bytes]:
        """The stored block with ``block_hash`` (wire order); None when it is not stored."""
        h = _hash("hash", block_hash)
        try:
            # a first call without a buffer learns the size
            return self._read("bsn_engine_block_by_hash", h, text=False, initial=0)
        except BsnError as e:
            if e.code == Result.NOT_FOUND:
                return None
            raise

    def sync_progress(self) -> SyncProgress:
        p = _SyncProgress()
        self._call("bsn_engine_sync_progress", ctypes.byref(p))
        return SyncProgress(
            p.header_height,
            p.best_known_height,
            p.block_height,
            bool(p.syncing),
            p.sync_peer or None,
        )

    # -- transactions and blocks -----------------------------------------------------------

    def submit_tx(self, tx: bytes) -> None:
        """Relays a serialized transaction to every peer."""
        b = _bytes("tx", tx)
        self._call("bsn_engine_submit_tx", b or None, len(b))

    def submit_block(self, block: bytes) -> int:
        """Hands in a serialized block (stored and announced); its height."""
        b = _bytes("block", block)
        n = ctypes.c_uint32(0)
        self._call("bsn_engine_submit_block", b or None, len(b), ctypes.byref(n))
        return n.value

    def accept_tx(self, txid: bytes) -> None:
        """Relays a transaction handed over with TX_RECEIVED."""
        self._call("bsn_engine_accept_tx", _hash("txid", txid))

    def reject_tx(self, txid: bytes, reason: str = "", score: int = 0) -> None:
        """Refuses a transaction handed over with TX_RECEIVED; its sender is scored ``score``."""
        self._call(
            "bsn_engine_reject_tx", _hash("txid", txid), _cstr("reason", reason),
            _uint("score", score, 32),
        )
