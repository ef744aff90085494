#!/usr/bin/env python3
"""What a warm invocation costs, against the alternatives, measured in one run on this machine.

    python benchmarks/bench_core.py [--calls 3000]

The contenders take turns call by call (in a rotating order), so every comparison sees the
same machine: on a shared or virtualised host a loopback round trip varies several-fold from
one moment to the next, and back-to-back batches would compare moments, not code. Figures are
medians of single calls.
  * lambdapool warm invocation: decorator + acquire + SELECT 1 + release (psycopg, asyncpg)
  * hand-held module-global connection doing the same work (the floor; target: within 10%)
  * psycopg_pool / asyncpg.Pool checkout doing the same work
  * connect per invocation over TCP with SCRAM, and with SCRAM + TLS (the headline ratio)
  * lambdapool's own CPU cost per warm invocation: a decorated handler that enters
    ``db.connection()`` and runs no query, against an undecorated one (the overhead in
    microseconds, independent of how fast the database answers)
  * ``import lambdapool`` in a fresh process (target: under 25 ms, no driver or AWS SDK)
All servers are throwaway clusters on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from typing import Callable

import lambdapool
from lambdapool.testing import PostgresServer

PASSWORD = "bench-Pw-1"


class Ctx:
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def measure(contenders: dict[str, Callable[[], object]], calls: int) -> dict[str, list[float]]:
    """Microseconds of each single call, the contenders taking turns."""
    names = list(contenders)
    for fn in contenders.values():
        fn()  # warm-up: first connect, caches
    samples: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for i in range(calls):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            fn = contenders[name]
            t0 = clock()
            fn()
            samples[name].append((clock() - t0) * 1e6)
    return samples


def med(samples: dict[str, list[float]], name: str) -> float:
    return statistics.median(samples[name])


def hand_held_psycopg(dsn: str) -> Callable[[object, object], object]:
    import psycopg

    held = psycopg.connect(dsn)

    def hand_held(event, context):
        row = held.execute("SELECT 1").fetchone()
        held.commit()
        return row

    return hand_held


def sync_contenders(dsn: str) -> dict[str, Callable[[], object]]:
    from psycopg_pool import ConnectionPool

    db = lambdapool.Database(dsn, driver="psycopg")

    @db.lambda_handler
    def warm(event, context):
        with db.connection() as conn:
            return conn.execute("SELECT 1").fetchone()

    hand_held = hand_held_psycopg(dsn)
    pool = ConnectionPool(dsn, min_size=1, max_size=1, open=True)

    def pooled(event, context):
        with pool.connection() as conn:
            return conn.execute("SELECT 1").fetchone()

    ctx = Ctx()
    return {
        "psycopg: hand-held module-global connection": lambda: hand_held({}, ctx),
        "psycopg: lambdapool warm invocation": lambda: warm({}, ctx),
        "psycopg: psycopg_pool checkout": lambda: pooled({}, ctx),
    }


def async_contenders(dsn: str) -> dict[str, Callable[[], object]]:
    import asyncpg

    db = lambdapool.Database(dsn, driver="asyncpg")

    @db.lambda_handler
    async def warm(event, context):
        async with db.connection() as conn:
            return await conn.fetchval("SELECT 1")

    loop = asyncio.new_event_loop()
    held = loop.run_until_complete(asyncpg.connect(dsn))

    async def make_pool():  # asyncpg.Pool binds to the loop running when it is made
        return await asyncpg.create_pool(dsn, min_size=1, max_size=1)

    pool = loop.run_until_complete(make_pool())

    async def hand_held():
        return await held.fetchval("SELECT 1")

    async def pooled():
        async with pool.acquire() as conn:
            return await conn.fetchval("SELECT 1")

    ctx = Ctx()
    return {
        "asyncpg: hand-held module-global connection": lambda: loop.run_until_complete(hand_held()),
        "asyncpg: lambdapool warm invocation": lambda: warm({}, ctx),
        "asyncpg: asyncpg.Pool checkout": lambda: loop.run_until_complete(pooled()),
    }


def connect_per_invocation(dsn: str) -> Callable[[], object]:
    import psycopg

    def run():
        with psycopg.connect(dsn) as conn:
            return conn.execute("SELECT 1").fetchone()

    return run


def import_time_ms(runs: int = 15) -> tuple[float, list[str]]:
    code = (
        "import time, sys; t = time.perf_counter(); import lambdapool; d = time.perf_counter() - t;"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('boto3','botocore','aiobotocore','asyncpg','psycopg','psycopg_pool'));"
        "print(d * 1000, ','.join(heavy))"
    )
    times, heavy = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        ms, _, mods = out.stdout.strip().partition(" ")
        times.append(float(ms))
        heavy = [m for m in mods.split(",") if m]
    return statistics.median(times), heavy


def sdk_cost_contenders() -> dict[str, Callable[[], object]]:
    """Handlers that take the warm connection and run no query: what lambdapool itself costs.
    The DSN is never dialled after the first call (the warm connection is reused)."""

    def bare(event, context):
        return None

    loop = asyncio.new_event_loop()

    async def abare(event, context):
        return None

    return {"psycopg: undecorated handler": lambda: bare({}, Ctx()),
            "asyncpg: undecorated async handler": lambda: loop.run_until_complete(abare({}, Ctx()))}  # fmt: skip


def sdk_cost_warm(dsn: str) -> dict[str, Callable[[], object]]:
    db = lambdapool.Database(dsn, driver="psycopg")
    adb = lambdapool.Database(dsn, driver="asyncpg")

    @db.lambda_handler
    def warm(event, context):
        with db.connection():
            return None

    @adb.lambda_handler
    async def awarm(event, context):
        async with adb.connection():
            return None

    return {"psycopg: lambdapool, connection() and no query": lambda: warm({}, Ctx()),
            "asyncpg: lambdapool, connection() and no query": lambda: awarm({}, Ctx())}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="calls per contender (warm rows)")
    parser.add_argument("--connect-calls", type=int, default=100)
    args = parser.parse_args()

    with PostgresServer(password=PASSWORD, tls=True) as pg:
        plain = pg.dsn.replace("?sslmode=require", "?sslmode=disable")
        tls = pg.dsn  # sslmode=require
        warm = measure({**sync_contenders(plain), **async_contenders(plain)}, args.calls)
        held = hand_held_psycopg(plain)
        connects = measure(
            {
                "psycopg: hand-held module-global connection": lambda: held({}, Ctx()),
                "psycopg: connect per invocation, TCP + SCRAM": connect_per_invocation(plain),
                "psycopg: connect per invocation, TCP + SCRAM + TLS": connect_per_invocation(tls),
            },
            args.connect_calls,
        )
        sdk = measure({**sdk_cost_contenders(), **sdk_cost_warm(plain)}, args.calls * 5)
    import_ms, heavy = import_time_ms()

    hand = {"psycopg": "psycopg: hand-held module-global connection",
            "asyncpg": "asyncpg: hand-held module-global connection"}  # fmt: skip
    print(f"\nPer invocation, median of {args.calls} calls each (SELECT 1 on 127.0.0.1; Postgres {pg.bin_dir}):\n")
    print(f"{'contender':58} {'us/invocation':>14} {'p10-p90':>15} {'vs hand-held':>13}")

    def row(samples: dict[str, list[float]], name: str, base: str) -> None:
        deciles = statistics.quantiles(samples[name], n=10)
        spread = f"{deciles[0]:.0f}-{deciles[-1]:.0f}"
        print(f"{name:58} {med(samples, name):14.1f} {spread:>15} {med(samples, name) / med(samples, base):12.2f}x")

    for name in warm:
        row(warm, name, hand[name.split(":")[0]])
    for name in list(connects)[1:]:
        row(connects, name, hand["psycopg"])
    print()
    print("warm invocation overhead vs hand-held: " + ", ".join(
        f"{d} {med(warm, f'{d}: lambdapool warm invocation') / med(warm, base) - 1:+.1%} "
        f"({med(warm, f'{d}: lambdapool warm invocation') - med(warm, base):+.1f} us)"
        for d, base in hand.items()) + " (target: within 10%)")  # fmt: skip
    ours = med(warm, "psycopg: lambdapool warm invocation")
    for name in list(connects)[1:]:
        print(f"{name.split(': ', 1)[1]} costs {med(connects, name) / ours:.0f}x a lambdapool warm invocation")
    cost = {d: med(sdk, f"{d}: lambdapool, connection() and no query") - med(sdk, base)
            for d, base in (("psycopg", "psycopg: undecorated handler"),
                            ("asyncpg", "asyncpg: undecorated async handler"))}  # fmt: skip
    print("lambdapool's own cost per warm invocation (decorator + acquire + release, no query): "
          + ", ".join(f"{d} {us:.1f} us" for d, us in cost.items()))  # fmt: skip
    print(f"import lambdapool in a fresh process: {import_ms:.1f} ms median (target: under 25 ms); "
          f"heavy modules imported: {', '.join(heavy) or 'none'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
