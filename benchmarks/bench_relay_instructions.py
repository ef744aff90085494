#!/usr/bin/env python3
"""The local proxy's relay: CPU instructions per transaction, counted, not timed.

    python benchmarks/bench_relay_instructions.py      (needs valgrind: apt-get install valgrind)

A logged-in client of a LocalProxy and its pool's backends get transports that only count
writes; one ``pgbench -S -M extended`` transaction's bytes (Parse, Bind, Describe, Execute,
Sync; the server's six answers) are fed through ``data_received`` over and over, so the figure
is the relay's own Python (parsing, the session, the pool), without sockets or the event loop.
Under cachegrind it runs 1,000 and then 3,000 transactions; the difference over 2,000 is the
cost of one. The count covers the whole process, so a periodic timer of the proxy that fires
once more in the longer run adds a few thousand now and then: each size runs three times and
the least counts. Repeat runs then agree within about 0.3%, where timings on two shared cores
move by 10%. Compare a change by running this before and after it.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import threading

SMALL, LARGE = 1000, 3000
RUNS = 3  # of each size; the least counts
SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"


class CountingTransport:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


def frame(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def transaction_bytes() -> tuple[bytes, bytes]:
    """The client's and the server's side of one transaction (built here, not with
    lambdapool.tools.proto, so the same bytes go to any version of the proxy)."""
    request = (
        frame(b"P", b"\0" + SQL.encode() + b"\0" + struct.pack("!hi", 1, 23))  # Parse, unnamed, one int4
        + frame(b"B", b"\0\0" + struct.pack("!hhi", 0, 1, 4) + b"4242" + struct.pack("!h", 0))
        + frame(b"D", b"P\0")
        + frame(b"E", b"\0" + struct.pack("!i", 0))
        + frame(b"S")
    )
    column = b"abalance\0" + struct.pack("!ihihih", 0, 0, 23, 4, -1, 0)
    answer = (
        frame(b"1")
        + frame(b"2")
        + frame(b"T", struct.pack("!h", 1) + column)
        + frame(b"D", struct.pack("!hi", 1, 1) + b"0")
        + frame(b"C", b"SELECT 1\0")
        + frame(b"Z", b"I")
    )
    return request, answer


def relay(transactions: int) -> None:
    """Run ``transactions`` through a real proxy's Client and Backend objects (in its loop thread)."""
    import psycopg

    from lambdapool.testing import LocalProxy, PostgresServer

    request, answer = transaction_bytes()
    with PostgresServer() as pg, LocalProxy(pg.dsn, max_backends=1) as proxy:
        conn = psycopg.connect(proxy.dsn, autocommit=True)
        conn.execute("SELECT 1")  # logged in, one backend open and idle
        server, done, failure = proxy._server, threading.Event(), []

        def run() -> None:
            try:
                client = next(iter(server.clients))
                client.transport = CountingTransport()
                for backend in server.pool.backends:
                    backend.transport = CountingTransport()
                for _ in range(transactions):
                    client.data_received(request)
                    client.backend.data_received(answer)
                if client.backend is not None or client.transport.writes < transactions:
                    failure.append("the relay did not answer every transaction")
            except Exception as exc:
                failure.append(repr(exc))
            done.set()

        proxy._loop.call_soon_threadsafe(run)
        done.wait(600)
        if failure or not done.is_set():
            print(failure or "timed out", file=sys.stderr)
            os._exit(1)
        os._exit(0)  # the fake transports cannot close cleanly: leave without the shutdown


def instructions(transactions: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, __file__, "--inner", str(transactions)],
        capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}, timeout=1800,
    )  # fmt: skip
    match = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"cachegrind run failed ({out.returncode}): {out.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def main() -> int:
    if sys.argv[1:2] == ["--inner"]:
        relay(int(sys.argv[2]))
        return 0
    if not shutil.which("valgrind"):
        print("valgrind not found (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    small = min(instructions(SMALL) for _ in range(RUNS))
    large = min(instructions(LARGE) for _ in range(RUNS))
    print(f"relay: {(large - small) / (LARGE - SMALL):,.0f} instructions per pgbench -S -M extended transaction "
          f"(cachegrind, {SMALL:,} and {LARGE:,} transactions, least of {RUNS} runs each)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
