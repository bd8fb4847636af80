"""Tests of the Python bindings against a real libbsn (two engines on 127.0.0.1, ports picked by
the system). Standard library only.

    BSN_LIB=target/debug/libbsn.so BSN_CHAIN=<chain file> PYTHONPATH=bindings/python \\
        python3 -m unittest discover -s bindings/python/tests -v

``BSN_CHAIN`` names a file of regtest blocks on genesis, each a 4-byte little-endian length and
the block (``tests/ffi_python.rs`` writes one); without it the sync test skips, saying so.
Every wait polls with a deadline; none sleeps and hopes.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys
import time
import unittest
from typing import Callable, List, Optional, Tuple

import bsn
from bsn import BsnError, Event, EventKind, Result

DEADLINE = 60.0  # seconds: generous, for a loaded machine
MSG_BLOCK = 2  # inventory type of a block


def sha256d(b: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def options() -> dict:
    """A loopback engine for tests: a free port, one unpinned shard, no dialling on its own."""
    return dict(
        network="regtest",
        listen="127.0.0.1:0",
        shards=1,
        pin_threads=False,
        target_outbound=0,
    )


def wait_for(
    engine: bsn.Engine,
    what: str,
    pred: Callable[[Event], bool],
    timeout: float = DEADLINE,
    seen: Optional[List[Event]] = None,
) -> Event:
    """Polls ``engine`` until an event matches ``pred``; fails with what came instead."""
    deadline = time.monotonic() + timeout
    others: List[str] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {what} within {timeout} s; saw: {others[-20:]}")
        ev = engine.poll(min(left, 1.0))
        if ev is None:
            continue
        if seen is not None:
            seen.append(ev)
        if pred(ev):
            return ev
        others.append(str(ev)[:200])


def ready_peers(engine: bsn.Engine) -> List[bsn.Peer]:
    """The peers done with their handshake (a connection still joining an association, or
    one from elsewhere on a shared machine, is not one of them)."""
    return [p for p in engine.peers() if p.ready]


def inventory(kind: int, h: bytes) -> bytes:
    """An inv/getdata/notfound payload of one item: varint 1, u32 LE type, 32-byte hash."""
    return b"\x01" + struct.pack("<I", kind) + h


class EngineTest(unittest.TestCase):
    def setUp(self) -> None:
        # runs last (cleanups go in reverse): every C object made by the test was freed
        self.addCleanup(self.assert_all_freed)

    def assert_all_freed(self) -> None:
        self.assertEqual(bsn._live_handles(), {}, "C objects not freed after the test")

    def engine(self, **kw) -> bsn.Engine:
        o = options()
        o.update(kw)
        e = bsn.Engine(**o)
        self.addCleanup(e.close)
        return e

    def connected_pair(self) -> Tuple[bsn.Engine, bsn.Engine, int, int]:
        """A and B, B dialled A; the ids each gives the other."""
        a, b = self.engine(), self.engine()
        addr = a.local_addr
        self.assertIsNotNone(addr)
        assert addr is not None
        self.assertTrue(addr.startswith("127.0.0.1:"), addr)
        b.connect(addr)
        on_b = wait_for(b, "PEER_CONNECTED on B", lambda e: e.kind == EventKind.PEER_CONNECTED)
        on_a = wait_for(a, "PEER_CONNECTED on A", lambda e: e.kind == EventKind.PEER_CONNECTED)
        self.assertEqual(on_b.address, addr)
        assert on_a.peer is not None and on_b.peer is not None
        return a, b, on_a.peer, on_b.peer


class TestConnect(EngineTest):
    def test_both_see_peer_connected(self) -> None:
        a, b, b_on_a, a_on_b = self.connected_pair()
        ua = f"/bsn:{bsn.version()}/"
        # ready ones only: a second stream of the association may be on its way to join
        [pa] = ready_peers(a)
        [pb] = ready_peers(b)
        self.assertEqual((pa.id, pa.inbound, pa.ready, pa.user_agent), (b_on_a, True, True, ua))
        self.assertEqual((pb.id, pb.inbound, pb.ready, pb.user_agent), (a_on_b, False, True, ua))
        self.assertEqual(pb.address, a.local_addr)
        self.assertGreater(pa.version, 0)
        self.assertEqual(pa.start_height, 0)

    def test_outbound_bind(self) -> None:
        # B's connections leave from 127.0.0.3: A sees it there
        a, b = self.engine(), self.engine(outbound_bind="127.0.0.3")
        b.connect(a.local_addr or "")
        on_a = wait_for(a, "PEER_CONNECTED on A", lambda e: e.kind == EventKind.PEER_CONNECTED)
        self.assertTrue((on_a.address or "").startswith("127.0.0.3:"), on_a.address)

    def test_message_and_answer(self) -> None:
        # B asks A for a block A does not have; A answers notfound, which reaches B's embedder
        a, b, _, a_on_b = self.connected_pair()
        missing = sha256d(b"a block nobody has")
        self.assertIsNone(a.block(missing))
        payload = inventory(MSG_BLOCK, missing)
        b.send(a_on_b, "getdata", payload)
        ev = wait_for(
            b,
            "notfound on B",
            lambda e: e.kind == EventKind.MESSAGE and e.command == "notfound",
        )
        self.assertEqual(ev.peer, a_on_b)
        self.assertEqual(ev.data, payload)
        self.assertIsNone(ev.height)
        self.assertIsNone(ev.address)


class TestSync(EngineTest):
    def chain(self) -> List[bytes]:
        path = os.environ.get("BSN_CHAIN")
        if not path:
            print(
                "\nSKIPPED: test_sync_to_tip: BSN_CHAIN is not set (a file of regtest blocks, "
                "tests/ffi_python.rs writes one)",
                file=sys.stderr,
            )
            self.skipTest("BSN_CHAIN is not set")
        blocks = []
        with open(path, "rb") as f:
            while True:
                head = f.read(4)
                if not head:
                    break
                (n,) = struct.unpack("<I", head)
                blocks.append(f.read(n))
                self.assertEqual(len(blocks[-1]), n, "a record cut short")
        self.assertGreater(len(blocks), 1)
        return blocks

    def test_sync_to_tip(self) -> None:
        blocks = self.chain()
        hashes = [sha256d(blk[:80]) for blk in blocks]
        n = len(blocks)
        half = n // 2
        tip_file = os.environ.get("BSN_CHAIN_TIP_FILE")  # the writer's tip hash, wire-order hex
        if tip_file:
            with open(tip_file) as f:
                self.assertEqual(hashes[-1].hex(), f.read().strip())
        a, b = self.engine(), self.engine()
        genesis = a.best_header()
        self.assertEqual(genesis.height, 0)
        self.assertEqual(blocks[0][4:36], genesis.hash, "the chain is not on regtest genesis")
        # half the chain before B connects (B syncs it), half after (A announces it)
        for i, blk in enumerate(blocks[:half]):
            self.assertEqual(a.submit_block(blk), i + 1)
        b.connect(a.local_addr or "")
        wait_for(b, "PEER_CONNECTED on B", lambda e: e.kind == EventKind.PEER_CONNECTED)
        for i, blk in enumerate(blocks[half:], half):
            self.assertEqual(a.submit_block(blk), i + 1)
        self.assertEqual(a.best_header(), (hashes[-1], n))

        seen: List[Event] = []
        tip = wait_for(
            b,
            f"BLOCK_CONNECTED at {n} on B",
            lambda e: e.kind == EventKind.BLOCK_CONNECTED and e.height == n,
            seen=seen,
        )
        self.assertEqual(tip.hash, hashes[-1])
        self.assertEqual(tip.data, blocks[-1][:80])
        self.assertEqual(tip.hash_hex, bsn.hash_hex(hashes[-1]))
        connected = {e.height: e.hash for e in seen if e.kind == EventKind.BLOCK_CONNECTED}
        self.assertEqual(connected, {i + 1: h for i, h in enumerate(hashes)})

        self.assertEqual(b.best_header(), (hashes[-1], n))
        p = b.sync_progress()
        self.assertEqual((p.header_height, p.block_height), (n, n))
        self.assertGreaterEqual(p.best_known_height, n)
        self.assertEqual(b.header(n), blocks[-1][:80])
        self.assertEqual(b.header(1), blocks[0][:80])
        self.assertIsNone(b.header(n + 1))
        for i in (0, half, n - 1):
            self.assertEqual(b.block(hashes[i]), blocks[i])
        self.assertIsNone(b.block(sha256d(b"not a block")))


class TestBans(EngineTest):
    def test_ban_and_unban(self) -> None:
        a, b, b_on_a, _ = self.connected_pair()
        a.ban("127.0.0.1", 3600, "python test")
        ev = wait_for(a, "BANNED on A", lambda e: e.kind == EventKind.BANNED)
        self.assertEqual((ev.address, ev.text), ("127.0.0.1/32", "python test"))
        wait_for(
            a,
            "PEER_DISCONNECTED of B on A",
            lambda e: e.kind == EventKind.PEER_DISCONNECTED and e.peer == b_on_a,
        )
        wait_for(b, "PEER_DISCONNECTED on B", lambda e: e.kind == EventKind.PEER_DISCONNECTED)
        self.assertTrue(a.is_banned("127.0.0.1"))
        self.assertFalse(a.is_banned("127.0.0.2"))
        [ban] = a.bans()
        self.assertEqual((ban.subnet, ban.reason), ("127.0.0.1/32", "python test"))
        self.assertAlmostEqual(ban.until, time.time() + 3600, delta=120)
        with self.assertRaises(BsnError) as cm:
            a.disconnect(b_on_a)
        self.assertEqual(cm.exception.code, Result.UNKNOWN_PEER)

        a.unban("127.0.0.1")
        ev = wait_for(a, "UNBANNED on A", lambda e: e.kind == EventKind.UNBANNED)
        self.assertEqual(ev.address, "127.0.0.1/32")
        self.assertFalse(a.is_banned("127.0.0.1"))
        self.assertEqual(a.bans(), [])
        with self.assertRaises(BsnError) as cm:
            a.unban("127.0.0.1")
        self.assertEqual(cm.exception.code, Result.NOT_FOUND)

        # welcome again
        b.connect(a.local_addr or "")
        wait_for(b, "PEER_CONNECTED on B again", lambda e: e.kind == EventKind.PEER_CONNECTED)

    def test_ban_subnets(self) -> None:
        a = self.engine()
        a.ban("10.1.0.0/16", 60, "")
        a.ban("fd00::/64", 120, "six")
        self.assertTrue(a.is_banned("10.1.200.3"))
        self.assertTrue(a.is_banned("fd00::1"))
        self.assertFalse(a.is_banned("10.2.0.1"))
        bans = {x.subnet: x.reason for x in a.bans()}
        self.assertEqual(bans, {"10.1.0.0/16": "", "fd00::/64": "six"})


class TestMisuse(EngineTest):
    def assert_code(self, code: Result, f: Callable[[], object]) -> BsnError:
        with self.assertRaises(BsnError) as cm:
            f()
        e = cm.exception
        self.assertEqual(e.code, code, str(e))
        self.assertEqual(e.name, f"BSN_ERR_{code.name}")
        self.assertIn(e.name, str(e))
        return e

    def test_config_errors(self) -> None:
        e = self.assert_code(Result.INVALID_ARGUMENT, lambda: bsn.Config("nonet"))
        self.assertIn("nonet", e.message)
        e = self.assert_code(
            Result.INVALID_ADDRESS, lambda: bsn.Config(listen="not an address")
        )
        self.assertIn("not an address", e.message)
        self.assert_code(Result.INVALID_ARGUMENT, lambda: bsn.Config(shards=0))
        self.assert_code(Result.INVALID_ARGUMENT, lambda: bsn.Config(shards=-1))
        self.assert_code(Result.INVALID_ARGUMENT, lambda: bsn.Config(magic="xyz"))
        e = self.assert_code(
            Result.INVALID_ADDRESS, lambda: bsn.Config(outbound_bind="127.0.0.1:8333")
        )
        self.assertIn("no port", e.message)
        with bsn.Config() as c:
            c.close()
            self.assert_code(Result.NULL_ARGUMENT, lambda: c.set_listen("127.0.0.1:0"))

    def test_port_in_use(self) -> None:
        a = self.engine()
        self.assert_code(Result.IO, lambda: self.engine(listen=a.local_addr))

    def test_engine_errors(self) -> None:
        a, b, b_on_a, a_on_b = self.connected_pair()
        e = self.assert_code(Result.INVALID_ADDRESS, lambda: a.connect("nowhere"))
        self.assertIn("nowhere", e.message)
        self.assert_code(Result.INVALID_ADDRESS, lambda: a.connect("127.0.0.1"))
        self.assert_code(Result.INVALID_ADDRESS, lambda: a.ban("not a subnet"))
        self.assert_code(Result.INVALID_ADDRESS, lambda: a.is_banned("1.2.3"))
        unknown = b_on_a + 12345
        self.assert_code(Result.UNKNOWN_PEER, lambda: a.send(unknown, "ping", bytes(8)))
        self.assert_code(Result.UNKNOWN_PEER, lambda: a.disconnect(unknown))
        self.assert_code(Result.INVALID_ARGUMENT, lambda: a.send(b_on_a, "", b""))
        self.assert_code(Result.INVALID_ARGUMENT, lambda: a.send(b_on_a, "x" * 13, b""))
        self.assert_code(Result.INVALID_DATA, lambda: a.send(b_on_a, "ping", b"\x01\x02\x03"))
        self.assert_code(Result.INVALID_DATA, lambda: a.submit_block(b"not a block"))
        self.assert_code(Result.INVALID_DATA, lambda: a.submit_tx(b"not a tx"))
        self.assert_code(Result.NOT_FOUND, lambda: a.accept_tx(bytes(32)))
        self.assert_code(Result.NOT_FOUND, lambda: a.reject_tx(bytes(32), "no", 0))
        self.assert_code(Result.INVALID_ARGUMENT, lambda: a.block(b"short"))
        self.assert_code(Result.INVALID_ARGUMENT, lambda: a.poll(-1))
        # the engine still works after all that
        a.send(b_on_a, "ping", struct.pack("<Q", 7))
        b.send(a_on_b, "ping", struct.pack("<Q", 8))
        self.assertEqual([p.id for p in ready_peers(a)], [b_on_a])

    def test_calls_after_stop_and_close(self) -> None:
        a, b, b_on_a, _ = self.connected_pair()
        addr = a.local_addr
        a.stop()
        # stopped by bsn: bsn itself answers BSN_ERR_STOPPED
        for call in (
            lambda: a.connect(addr or ""),
            lambda: a.send(b_on_a, "ping", bytes(8)),
            lambda: a.peers(),
            lambda: a.poll(0),
            lambda: a.local_addr,
            lambda: a.best_header(),
            lambda: a.stop(),
        ):
            e = self.assert_code(Result.STOPPED, call)
            self.assertTrue(e.message, "bsn_last_error said nothing")
        self.assertEqual(list(a.events(timeout=0.1)), [])
        wait_for(b, "PEER_DISCONNECTED on B", lambda e: e.kind == EventKind.PEER_DISCONNECTED)
        a.close()
        self.assertTrue(a.closed)
        # freed: the binding answers BSN_ERR_STOPPED without touching the freed handle
        for call in (
            lambda: a.peers(),
            lambda: a.poll(0),
            lambda: a.bans(),
            lambda: a.sync_progress(),
            lambda: a.stop(),
        ):
            self.assert_code(Result.STOPPED, call)
        self.assertEqual(list(a.events(timeout=0.1)), [])
        a.close()  # a second close does nothing

    def test_last_error_longer_than_the_first_buffer(self) -> None:
        a = self.engine()
        far = "x" * 2000
        e = self.assert_code(Result.INVALID_ADDRESS, lambda: a.connect(far))
        self.assertIn(far, e.message)


class TestBuffers(EngineTest):
    def test_buffer_too_small_handled_inside(self) -> None:
        # every text and byte read starts with a 1-byte buffer: bsn says how much it needs
        self.addCleanup(setattr, bsn, "_INITIAL_BUFFER", bsn._INITIAL_BUFFER)
        bsn._INITIAL_BUFFER = 1
        a, b, b_on_a, a_on_b = self.connected_pair()
        addr = a.local_addr or ""
        self.assertRegex(addr, r"^127\.0\.0\.1:\d+$")
        [pb] = ready_peers(b)
        self.assertEqual((pb.address, pb.user_agent), (addr, f"/bsn:{bsn.version()}/"))
        missing = sha256d(b"still nobody has it")
        b.send(a_on_b, "getdata", inventory(MSG_BLOCK, missing))
        ev = wait_for(b, "notfound", lambda e: e.command == "notfound")
        self.assertEqual(ev.data, inventory(MSG_BLOCK, missing))
        reason = "r" * 300
        for i in range(40):
            a.ban(f"10.0.{i}.0/24", 600, reason)
        bans = a.bans()
        self.assertEqual(len(bans), 40)
        self.assertTrue(all(x.reason == reason for x in bans))
        self.assertEqual({x.subnet for x in bans}, {f"10.0.{i}.0/24" for i in range(40)})

    def test_c_contract(self) -> None:
        # what the retries rely on: BSN_ERR_BUFFER_TOO_SMALL, the size needed, nothing copied
        import ctypes

        lib = bsn._lib()
        with bsn.Engine(**options()) as a:
            addr = (a.local_addr or "").encode()
            with a._use() as h:
                buf = ctypes.create_string_buffer(b"\xaa" * 4, 4)
                n = ctypes.c_size_t(0)
                r = lib.bsn_engine_local_addr(h, buf, 4, ctypes.byref(n))
                self.assertEqual((r, n.value, buf.raw), (Result.BUFFER_TOO_SMALL, len(addr),
                                                         b"\xaa" * 4))
                buf = ctypes.create_string_buffer(len(addr))  # no room for the NUL
                r = lib.bsn_engine_local_addr(h, buf, len(addr), ctypes.byref(n))
                self.assertEqual(r, Result.BUFFER_TOO_SMALL)
                buf = ctypes.create_string_buffer(len(addr) + 1)
                r = lib.bsn_engine_local_addr(h, buf, len(addr) + 1, ctypes.byref(n))
                self.assertEqual((r, buf.value), (Result.OK, addr))
        # a second free of the same variable does nothing
        cfg = ctypes.c_void_p()
        self.assertEqual(lib.bsn_config_new(b"regtest", ctypes.byref(cfg)), Result.OK)
        self.assertEqual(lib.bsn_config_free(ctypes.byref(cfg)), Result.OK)
        self.assertIsNone(cfg.value)
        self.assertEqual(lib.bsn_config_free(ctypes.byref(cfg)), Result.NULL_ARGUMENT)


class TestLifetimes(EngineTest):
    def test_context_managers_free_everything(self) -> None:
        with bsn.Config(**options()) as cfg:
            with bsn.Engine(cfg) as a, bsn.Engine(cfg) as b:
                self.assertEqual(bsn._live_handles(), {"config": 1, "engine": 2})
                port = int((a.local_addr or "").rsplit(":", 1)[1])
                b.connect(a.local_addr or "")
                wait_for(a, "PEER_CONNECTED", lambda e: e.kind == EventKind.PEER_CONNECTED)
                wait_for(b, "PEER_CONNECTED", lambda e: e.kind == EventKind.PEER_CONNECTED)
                self.assertEqual(len(ready_peers(b)), 1)
                handle = a._handle
            self.assertTrue(a.closed and b.closed)
            self.assertIsNone(handle.value, "bsn_engine_free did not NULL the pointer")
            self.assertEqual(bsn._live_handles(), {"config": 1})
        self.assertTrue(cfg.closed)
        self.assertEqual(bsn._live_handles(), {})
        # the engine let go of its port: another listener can have it
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
        finally:
            s.close()

    def test_engine_from_options_frees_its_config(self) -> None:
        with bsn.Engine(**options()) as a:
            self.assertEqual(bsn._live_handles(), {"engine": 1})
            self.assertIsNone(a.poll(0))
        self.assertEqual(bsn._live_handles(), {})

    def test_close_waits_for_a_poll_in_another_thread(self) -> None:
        import threading

        a = bsn.Engine(**options())
        got: List[object] = []
        t = threading.Thread(target=lambda: got.extend(a.events(timeout=None)))
        t.start()
        a.close()
        t.join(DEADLINE)
        self.assertFalse(t.is_alive(), "events() did not end when the engine closed")
        self.assertEqual(got, [])
        self.assertEqual(bsn._live_handles(), {})


class TestHelpers(unittest.TestCase):
    def test_hash_hex(self) -> None:
        genesis = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
        h = bsn.hash_from_hex(genesis)
        self.assertEqual(h[0], 0x06)
        self.assertEqual(bsn.hash_hex(h), genesis)
        with bsn.Engine(**options()) as a:
            self.assertEqual(a.best_header().hash_hex, genesis)


if __name__ == "__main__":
    unittest.main()
