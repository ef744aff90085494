#!/usr/bin/env python3
"""What a warm invocation costs, against the alternatives, measured in one run on this machine.

    python benchmarks/bench_core.py [--iterations 2000] [--rounds 5]

Rows (median per invocation over rounds, each round interleaving the contenders):
  * lambdapool warm invocation: decorator + acquire + SELECT 1 + release (psycopg, asyncpg)
  * hand-held module-global connection doing the same work (the floor; target: within 10%)
  * psycopg_pool / asyncpg.Pool checkout doing the same work
  * connect per invocation over TCP with SCRAM, and with SCRAM + TLS (the headline ratio)
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


def per_call_us(fn: Callable[[], object], n: int) -> float:
    fn()  # warm-up: first connect, caches
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def measure(contenders: dict[str, Callable[[], object]], n: int, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(per_call_us(fn, n))
    return {name: statistics.median(values) for name, values in samples.items()}


def sync_contenders(dsn: str) -> dict[str, Callable[[], object]]:
    import psycopg
    from psycopg_pool import ConnectionPool

    db = lambdapool.Database(dsn, driver="psycopg")

    @db.lambda_handler
    def warm(event, context):
        with db.connection() as conn:
            return conn.execute("SELECT 1").fetchone()

    held = psycopg.connect(dsn)

    def hand_held(event, context):
        row = held.execute("SELECT 1").fetchone()
        held.commit()
        return row

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connect-iterations", type=int, default=100)
    args = parser.parse_args()

    with PostgresServer(password=PASSWORD, tls=True) as pg:
        plain = pg.dsn.replace("?sslmode=require", "?sslmode=disable")
        tls = pg.dsn  # sslmode=require
        warm = measure({**sync_contenders(plain), **async_contenders(plain)}, args.iterations, args.rounds)
        connects = measure(
            {
                "psycopg: connect per invocation, TCP + SCRAM": connect_per_invocation(plain),
                "psycopg: connect per invocation, TCP + SCRAM + TLS": connect_per_invocation(tls),
            },
            args.connect_iterations,
            args.rounds,
        )
    import_ms, heavy = import_time_ms()

    base_sync = warm["psycopg: hand-held module-global connection"]
    base_async = warm["asyncpg: hand-held module-global connection"]
    ours = warm["psycopg: lambdapool warm invocation"]
    print(f"\nPer invocation, median of {args.rounds} rounds (SELECT 1 on 127.0.0.1; Postgres {pg.bin_dir}):\n")
    print(f"{'contender':58} {'us/invocation':>14} {'vs hand-held':>13}")
    for name, us in {**warm, **connects}.items():
        base = base_async if name.startswith("asyncpg") else base_sync
        print(f"{name:58} {us:14.1f} {us / base:12.2f}x")
    print()
    print(f"warm invocation overhead vs hand-held: psycopg {ours / base_sync - 1:+.1%}, "
          f"asyncpg {warm['asyncpg: lambdapool warm invocation'] / base_async - 1:+.1%} (target: within 10%)")  # fmt: skip
    for name, us in connects.items():
        print(f"{name.split(': ', 1)[1]} costs {us / ours:.0f}x a lambdapool warm invocation")
    print(f"import lambdapool in a fresh process: {import_ms:.1f} ms median (target: under 25 ms); "
          f"heavy modules imported: {', '.join(heavy) or 'none'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
