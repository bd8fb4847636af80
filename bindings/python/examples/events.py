#!/usr/bin/env python3
"""Prints a bsn engine's events as they come.

    cargo build --lib
    python3 bindings/python/examples/events.py [ADDR] [--seconds N]

Starts a regtest engine listening on 127.0.0.1 (a free port), dials ADDR ("127.0.0.1:18444"),
or with no ADDR starts a second engine in this script and dials that, and prints the events of
both for N seconds (default 10). Ctrl-C ends it early; either way both engines are stopped and
freed. The library comes from BSN_LIB or the repository's target/{release,debug}.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

try:
    import bsn
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import bsn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("addr", nargs="?", help="a peer to dial (IP:port); none: a second engine here")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long to watch (default 10)")
    ap.add_argument("--network", default="regtest", help="mainnet, testnet, regtest or stn")
    args = ap.parse_args()

    options = dict(network=args.network, listen="127.0.0.1:0", shards=1, pin_threads=False,
                   target_outbound=0)
    start = time.monotonic()

    def show(who: str, ev: bsn.Event) -> None:
        print(f"[{time.monotonic() - start:6.2f}s] {who}: {ev}", flush=True)

    try:
        with contextlib.ExitStack() as stack:
            engine = stack.enter_context(bsn.Engine(**options))
            print(f"bsn {bsn.version()} ({bsn.library_path()}), engine listening on "
                  f"{engine.local_addr}", flush=True)
            second = None
            target = args.addr
            if target is None:
                second = stack.enter_context(bsn.Engine(**options))
                target = second.local_addr
                print(f"second engine listening on {target}", flush=True)
            assert target is not None
            engine.connect(target)
            print(f"dialling {target}; events for {args.seconds:g} s", flush=True)

            deadline = start + args.seconds
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # the second engine's events are taken too (an engine whose events are not
                # taken slows down); each poll waits a little, so both get their turn
                ev = engine.poll(min(left, 0.1))
                if ev is not None:
                    show("engine", ev)
                while second is not None:
                    ev2 = second.poll(0)
                    if ev2 is None:
                        break
                    show("second", ev2)
            for p in engine.peers():
                side = "inbound" if p.inbound else "outbound"
                print(f"peer {p.id}: {p.address} {side} {p.user_agent!r} version {p.version}")
            print("stopping", flush=True)
    except KeyboardInterrupt:
        print("interrupted; stopped", file=sys.stderr)
        return 130
    except bsn.BsnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
