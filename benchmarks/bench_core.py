#!/usr/bin/env python3
"""What a warm invocation costs, against the alternatives, measured in one run on this machine.

    python benchmarks/bench_core.py [--calls 3000]

How it compares, so that a figure means the same from one run to the next on a shared 2-vCPU VM:
  * call by call, the contenders taking turns in a new random order each round: a loopback round
    trip varies several-fold from one moment to the next, so back-to-back batches would compare
    moments, not code (and a fixed rotation gives each contender the same predecessor: a call
    right after one on the same connection finds its server process awake);
  * each tool against a hand-held use of the very connection it uses: two connections are two
    server processes, and their round trips differ as they are scheduled;
  * this process pinned to one CPU and Postgres to the other(s), the shape of production (the
    database runs elsewhere and the client's core waits idle). Left to the scheduler, two
    hand-held connections came out up to 63% apart, differently from run to run; pinned, within
    about 1%. A last row puts Postgres on this process's core instead: the shortest round trip,
    a stress case for the ratio.
Figures are medians of single calls. What it measures:
  * lambdapool warm invocation: decorator + acquire + SELECT 1 + release (psycopg, asyncpg)
  * hand-held module-global connection doing the same work (the floor; target: within 10%),
    on the very same connection (one server backend for both)
  * psycopg_pool / asyncpg.Pool checkout doing the same work, against a hand-held use of the
    pool's own connection
  * connect per invocation over TCP with SCRAM, and with SCRAM + TLS (the headline ratio;
    Postgres on any CPU: each connect's fork and SCRAM, and the last one's exit, are server work)
  * the warm invocation against the hand-held connection again on a cold CPU: caches swept
    before every call, as when an environment is thawed (what a real warm invocation meets)
  * lambdapool's own CPU cost per warm invocation: a decorated handler that enters
    ``db.connection()`` and runs no query, against an undecorated one (the overhead in
    microseconds, independent of how fast the database answers)
  * ``import lambdapool`` in a fresh process (target: under 25 ms, no driver or AWS SDK)
All servers are throwaway clusters on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import lambdapool
from lambdapool.testing import PostgresServer

PASSWORD = "bench-Pw-1"
CLEANUP: list[Callable[[], object]] = []  # pools and Databases to close before the server stops
CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []  # (before any pinning)


class Ctx:
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def measure(contenders: dict[str, Callable[[], object]], calls: int,
            between: Callable[[], object] | None = None) -> dict[str, list[float]]:  # fmt: skip
    """Microseconds of each single call, the contenders taking turns in a new random order each
    round. (A fixed rotation gives each contender the same predecessor every time, and a call
    that follows one on the same connection finds its server process still awake: measured
    here, that alone made one of two identical contenders 25% faster.)"""
    names = list(contenders)
    for fn in contenders.values():
        fn()  # warm-up: first connect, caches
    samples: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    order = random.Random(0)
    for _ in range(calls):
        order.shuffle(names)
        for name in names:
            if between is not None:
                between()
            fn = contenders[name]
            t0 = clock()
            fn()
            samples[name].append((clock() - t0) * 1e6)
    return samples


def place(server_pid: int | None, where: str) -> str:
    """Pin this process to one CPU and the server (whose backends inherit it as they are
    forked) to the others (``apart``), to the same one (``same``), or to any (``free``).

    Left to the scheduler, a backend sometimes shares the client's core and sometimes not:
    two connections' round trips came out 0-63% apart, differently from run to run. Apart is
    production's shape (the database runs elsewhere; the client's core waits idle). Connecting
    per invocation runs free: there, a backend's exit and the next one's fork and SCRAM are
    server work that a single server core would queue behind. Returns what was done, or ""."""
    cpus = CPUS
    if len(cpus) < 2 or server_pid is None:
        return ""
    ours = {cpus[0]}
    theirs = {"apart": set(cpus[1:]), "same": ours, "free": set(cpus)}[where]
    try:
        os.sched_setaffinity(server_pid, theirs)
        os.sched_setaffinity(0, ours)
    except OSError:  # not allowed to move the server's processes: leave it to the scheduler
        return ""
    return f"this process on CPU {cpus[0]}, Postgres on CPU {','.join(map(str, sorted(theirs)))}"


def cache_sweeper(mib: int = 64) -> Callable[[], object]:
    """Writes a byte in every 64-byte line of a buffer twice the size of this machine's caches
    (L3 is 32 MiB on the CI machine's EPYC): the next call starts on a cold CPU, as an
    invocation does after its environment was frozen and other work ran."""
    buf = bytearray(mib * 1024 * 1024)
    zeros = bytes(len(buf) // 64)

    def sweep() -> None:
        buf[::64] = zeros

    return sweep


def med(samples: dict[str, list[float]], name: str) -> float:
    return statistics.median(samples[name])


def hand_held_psycopg(conn: object) -> Callable[[object, object], object]:
    def hand_held(event, context):
        row = conn.execute("SELECT 1").fetchone()
        conn.commit()
        return row

    return hand_held


def sync_contenders(dsn: str) -> dict[str, Callable[[], object]]:
    from psycopg_pool import ConnectionPool

    db = lambdapool.Database(dsn, driver="psycopg")
    CLEANUP.append(db.close)

    @db.lambda_handler
    def warm(event, context):
        with db.connection() as conn:
            return conn.execute("SELECT 1").fetchone()

    ctx = Ctx()
    warm({}, ctx)  # connects: the hand-held twin uses this very connection
    pool = ConnectionPool(dsn, min_size=1, max_size=1, open=True)
    CLEANUP.append(pool.close)
    pool.putconn(pooled_conn := pool.getconn())

    def pooled(event, context):
        with pool.connection() as conn:
            return conn.execute("SELECT 1").fetchone()

    ours, theirs = hand_held_psycopg(db._slots.all[0].conn), hand_held_psycopg(pooled_conn)
    return {
        "psycopg: hand-held, connection A": lambda: ours({}, ctx),
        "psycopg: lambdapool warm invocation, on A": lambda: warm({}, ctx),
        "psycopg: hand-held, connection B": lambda: theirs({}, ctx),
        "psycopg: psycopg_pool checkout, on B": lambda: pooled({}, ctx),
    }


def async_contenders(dsn: str) -> dict[str, Callable[[], object]]:
    import asyncpg

    db = lambdapool.Database(dsn, driver="asyncpg")
    CLEANUP.append(db.close)

    @db.lambda_handler
    async def warm(event, context):
        async with db.connection() as conn:
            return await conn.fetchval("SELECT 1")

    ctx = Ctx()
    warm({}, ctx)  # connects (and makes the instance's loop): the hand-held twin uses both
    loop = db.loop.get()  # (the instance loop the handler runs on)

    async def make_pool():  # asyncpg.Pool binds to the loop running when it is made
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        async with pool.acquire() as proxy:
            return pool, proxy._con  # (the pooled connection itself: asyncpg has no public way)

    pool, pooled_conn = loop.run_until_complete(make_pool())
    CLEANUP.append(lambda: loop.run_until_complete(pool.close()))

    def hand_held(conn):
        async def handle(event, context):
            return await conn.fetchval("SELECT 1")

        return lambda event, context: loop.run_until_complete(handle(event, context))

    async def pooled():
        async with pool.acquire() as conn:
            return await conn.fetchval("SELECT 1")

    ours, theirs = hand_held(db._slots.all[0].conn), hand_held(pooled_conn)
    return {
        "asyncpg: hand-held, connection A": lambda: ours({}, ctx),
        "asyncpg: lambdapool warm invocation, on A": lambda: warm({}, ctx),
        "asyncpg: hand-held, connection B": lambda: theirs({}, ctx),
        "asyncpg: asyncpg.Pool checkout, on B": lambda: loop.run_until_complete(pooled()),
    }


def sqlalchemy_contenders(dsn: str) -> dict[str, Callable[[], object]]:
    """The same ORM query in a Session: a lambdapool engine's warm invocation (connection A)
    against a module-global SQLAlchemy engine with its default QueuePool (connection B), each
    beside a hand-held use of its own connection."""
    from sqlalchemy import Column, Integer, String, create_engine, select
    from sqlalchemy.orm import DeclarativeBase, Session

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "bench_items"
        id = Column(Integer, primary_key=True)  # (no Mapped[] annotations: this module's are strings)
        name = Column(String(50))

    db = lambdapool.Database(dsn, driver="psycopg")
    CLEANUP.append(db.close)
    engine = db.sqlalchemy_engine()
    Base.metadata.create_all(engine)  # (outside an invocation: its own checkout)
    with Session(engine) as session:
        session.merge(Item(id=1, name="one"))
        session.commit()
    query = select(Item).where(Item.id == 1)

    @db.lambda_handler
    def warm(event, context):
        with Session(engine) as session:
            return session.scalars(query).one().name

    plain = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))  # QueuePool
    CLEANUP.append(plain.dispose)

    def queuepool(event, context):
        with Session(plain) as session:
            return session.scalars(query).one().name

    ctx = Ctx()
    warm({}, ctx)
    queuepool({}, ctx)
    with plain.connect() as c:  # the pool's one connection, for its hand-held twin
        pooled_conn = c.connection.driver_connection
    ours, theirs = hand_held_psycopg(db._slots.all[0].conn), hand_held_psycopg(pooled_conn)
    return {
        "sqlalchemy: hand-held, connection A": lambda: ours({}, ctx),
        "sqlalchemy: lambdapool engine warm invocation, on A": lambda: warm({}, ctx),
        "sqlalchemy: hand-held, connection B": lambda: theirs({}, ctx),
        "sqlalchemy: module-global QueuePool engine, on B": lambda: queuepool({}, ctx),
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
    parser.add_argument("--cold-calls", type=int, default=1000, help="calls per contender on a cold CPU")
    args = parser.parse_args()

    with PostgresServer(password=PASSWORD, tls=True) as pg:
        plain = pg.dsn.replace("?sslmode=require", "?sslmode=disable")
        tls = pg.dsn  # sslmode=require
        placement = place(pg.pid, "apart")
        warm = measure({**sync_contenders(plain), **async_contenders(plain), **sqlalchemy_contenders(plain)},
                       args.calls)  # fmt: skip
        place(pg.pid, "free")
        connects = measure(
            {
                "psycopg: connect per invocation, TCP + SCRAM": connect_per_invocation(plain),
                "psycopg: connect per invocation, TCP + SCRAM + TLS": connect_per_invocation(tls),
            },
            args.connect_calls,
        )
        pairs = [f"{d}: {who}" for d in ("psycopg", "asyncpg")
                 for who in ("hand-held, connection A", "lambdapool warm invocation, on A")]  # fmt: skip

        def fresh_pairs() -> dict[str, Callable[[], object]]:  # new connections: new backends
            contenders = {**sync_contenders(plain), **async_contenders(plain)}
            return {name: contenders[name] for name in pairs}

        place(pg.pid, "apart")
        cold = measure(fresh_pairs(), args.cold_calls, between=cache_sweeper())
        same_core = None
        if placement and place(pg.pid, "same"):  # backends forked from now on share our core
            same_core = measure(fresh_pairs(), args.calls)
        sdk = measure({**sdk_cost_contenders(), **sdk_cost_warm(plain)}, args.calls * 5)
        for close in CLEANUP:
            close()
    import_ms, heavy = import_time_ms()

    def base_of(name: str) -> str:  # the hand-held use of the same connection
        driver, _, rest = name.partition(": ")
        return f"{driver}: hand-held, connection {rest[-1]}"

    print(f"\nPer invocation, median of {args.calls} calls each (SELECT 1 on 127.0.0.1; Postgres {pg.bin_dir};")
    unpinned = "placement left to the scheduler: one CPU, or the server could not be moved"
    print(f"{placement + ' (connecting per invocation: Postgres on any CPU)' if placement else unpinned}).")
    print("Each tool is compared with a hand-held use of the very connection it uses (connections A and B")
    print("are two server processes; the line 'B against A' shows how far apart their round trips came).\n")
    print(f"{'contender':52} {'us/invocation':>14} {'p10-p90':>12} {'vs hand-held, same connection':>30}")

    def row(samples: dict[str, list[float]], name: str, base: str) -> None:
        deciles = statistics.quantiles(samples[name], n=10)
        spread = f"{deciles[0]:.0f}-{deciles[-1]:.0f}"
        print(f"{name:52} {med(samples, name):14.1f} {spread:>12} {med(samples, name) / med(samples, base):29.2f}x")

    for name in warm:
        row(warm, name, base_of(name))
    for name in connects:  # (against the hand-held round trip above)
        row({**connects, **warm}, name, "psycopg: hand-held, connection A")
    print()
    drivers = ("psycopg", "asyncpg")

    def versus(samples: dict[str, list[float]]) -> str:
        parts = []
        for d in drivers:
            ours, base = (
                med(samples, f"{d}: lambdapool warm invocation, on A"),
                med(samples, f"{d}: hand-held, connection A"),
            )
            parts.append(f"{d} {ours / base - 1:+.1%} ({ours - base:+.1f} us on {base:.0f} us)")
        return ", ".join(parts)

    print("warm invocation overhead vs hand-held on the same connection: " + versus(warm) + " (target: within 10%)")
    print("the same on a cold CPU (caches swept before each call, as after a freeze): " + versus(cold))
    if same_core is not None:
        print("the same with Postgres on this process's core (the shortest round trip; a stress case): "
              + versus(same_core))  # fmt: skip
    print("two hand-held connections, B against A (server placement, not code): " + ", ".join(
        f"{d} {med(warm, f'{d}: hand-held, connection B') / med(warm, f'{d}: hand-held, connection A') - 1:+.1%}"
        for d in drivers))  # fmt: skip
    sa_ours = med(warm, "sqlalchemy: lambdapool engine warm invocation, on A") / med(
        warm, "sqlalchemy: hand-held, connection A"
    )
    sa_theirs = med(warm, "sqlalchemy: module-global QueuePool engine, on B") / med(
        warm, "sqlalchemy: hand-held, connection B"
    )
    print(f"sqlalchemy ORM query: lambdapool engine warm invocation against a module-global QueuePool engine, "
          f"each over its own connection's hand-held round trip: {sa_ours / sa_theirs:.2f}x (target: at most 1.10x; "
          f"raw medians {med(warm, 'sqlalchemy: lambdapool engine warm invocation, on A'):.0f} us against "
          f"{med(warm, 'sqlalchemy: module-global QueuePool engine, on B'):.0f} us)")  # fmt: skip
    ours = med(warm, "psycopg: lambdapool warm invocation, on A")
    for name in connects:
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
