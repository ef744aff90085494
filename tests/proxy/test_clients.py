"""Real clients nobody here wrote, through the proxy: psycopg (sync, async), asyncpg, psql, pgbench."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.proxy.conftest import need_binary, run


def test_psycopg_sync_prepared_statements_move_between_backends_without_pinning(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=2)
    # Three clients, two backends: each client's transactions land on whichever backend is
    # free, so psycopg's server-side prepared statements (after prepare_threshold=5 uses)
    # must be re-prepared by the proxy on backends that have never seen them.
    conns = [psycopg.connect(proxy.dsn, autocommit=True) for _ in range(3)]
    try:
        for i in range(30):
            for n, conn in enumerate(conns):
                assert conn.execute("SELECT %s::int + %s::int", (i, n)).fetchone() == (i + n,)
        with conns[0].transaction():
            conns[0].execute("INSERT INTO t VALUES (%s, 'x') ON CONFLICT (id) DO NOTHING", (1,))
    finally:
        for conn in conns:
            conn.close()
    stats = proxy.stats()
    assert stats["pinned_sessions"] == 0, stats["pin_reasons"]
    assert stats["peak_backends"] <= 2
    assert stats["transactions"] >= 90


def test_psycopg_async(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=2)

    async def main() -> list[int]:
        async def one(n: int) -> int:
            async with await psycopg.AsyncConnection.connect(proxy.dsn, autocommit=True) as conn:
                total = 0
                for i in range(10):
                    cur = await conn.execute("SELECT %s::int * 2", (i,))
                    total += (await cur.fetchone())[0]
                async with conn.transaction():
                    await conn.execute("SELECT pg_sleep(0.01)")
                return total + n

        return await asyncio.gather(*(one(n) for n in range(6)))

    assert asyncio.run(main()) == [90 + n for n in range(6)]
    assert proxy.stats()["pinned_sessions"] == 0


def test_asyncpg_default_statement_cache_neither_pins_nor_loses_statements(make_proxy):
    import asyncpg

    proxy = make_proxy(max_backends=2)

    async def main() -> list[int]:
        conns = [await asyncpg.connect(proxy.dsn) for _ in range(5)]  # default statement_cache_size
        try:

            async def work(conn, n: int) -> int:
                total = 0
                for i in range(20):
                    total += await conn.fetchval("SELECT $1::int + $2::int", i, n)
                    row = await conn.fetchrow("SELECT $1::text AS a, $2::int AS b", "x", i)
                    assert (row["a"], row["b"]) == ("x", i)
                async with conn.transaction():
                    await conn.execute("SELECT pg_sleep(0.005)")
                return total

            first = await asyncio.gather(*(work(c, n) for n, c in enumerate(conns)))
            # New backends have none of the statements asyncpg has cached: the proxy must
            # prepare them again, unseen by asyncpg.
            proxy.kill_backends()
            assert await asyncio.gather(*(work(c, n) for n, c in enumerate(conns))) == first
            return first
        finally:
            for conn in conns:
                await conn.close()

    assert asyncio.run(main()) == [190 + 20 * n for n in range(5)]
    stats = proxy.stats()
    assert stats["pinned_sessions"] == 0, stats["pin_reasons"]
    assert stats["reprepared"] >= 2  # both statements prepared again on the new backends
    assert stats["peak_backends"] <= 2


def test_psql(make_proxy, proxy_pg):
    psql = need_binary("psql")
    proxy = make_proxy(max_backends=1)
    out = run([psql, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", proxy.dsn,
               "-c", "SELECT 40 + 2", "-c", "BEGIN; SELECT 1; COMMIT;", "-c", "\\dt t"])  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "42"
    assert "public|t|table" in out.stdout


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_50_clients_over_a_cap_of_5(make_proxy, proxy_pg, mode):
    pgbench = need_binary("pgbench")
    if proxy_pg.psql("SELECT to_regclass('pgbench_accounts') IS NOT NULL") != "t":
        init = run([pgbench, "-i", "-s", "1", "-q", proxy_pg.dsn])
        assert init.returncode == 0, init.stderr
    proxy = make_proxy(max_backends=5)
    # -M prepared prepares each statement with libpq's blocking PQprepare, which stalls the
    # whole pgbench thread until a backend is free; if other clients of that thread hold the
    # backends mid-transaction (TPC-B's BEGIN ... END), nothing moves. That is pgbench over
    # any transaction pooler (PgBouncer too), so give each client its own thread there.
    jobs = "50" if mode == "prepared" else "2"
    out = run([pgbench, "-n", "-c", "50", "-j", jobs, "-t", "20", "-M", mode, proxy.dsn])
    assert out.returncode == 0, out.stderr + out.stdout
    processed = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    assert processed and int(processed.group(1)) == 1000, out.stdout
    assert re.search(r"number of failed transactions: 0\b", out.stdout) or "failed" not in out.stdout
    stats = proxy.stats()
    assert stats["peak_backends"] <= 5
    assert stats["pinned_sessions"] == 0, stats["pin_reasons"]
    assert stats["peak_clients"] == 50


def test_psycopg_rollback_after_prepared_statements_pins_as_on_rds_proxy(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=2)
    with psycopg.connect(proxy.dsn) as conn:  # not autocommit: rollback sends DEALLOCATE ALL
        for i in range(8):
            conn.execute("SELECT %s::int", (i,))  # prepared after prepare_threshold=5 uses
        conn.rollback()
        for i in range(8):  # the statements are prepared again, on whatever backend
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        conn.commit()
    stats = proxy.stats()
    # RDS Proxy pins on DEALLOCATE (psycopg/psycopg#1105): why the rds-proxy and local
    # adapters turn psycopg's prepared statements off.
    assert stats["pinned_sessions"] == 1 and stats["pin_reasons"] == {"deallocate": 1}


@pytest.mark.parametrize("via", ["proxy", "direct"])
def test_libpq_prepares_again_after_discard_all_in_a_pinned_session(make_proxy, proxy_pg, via):
    # libpq as JDBC-style clients use it: after DISCARD ALL the client knows its statements
    # are gone and prepares the same text again (psycopg also sends DEALLOCATE ALL, which
    # hides the case). The proxy must not answer that Parse itself from a stale record.
    import psycopg
    from psycopg import pq

    dsn = make_proxy(max_backends=2).dsn if via == "proxy" else proxy_pg.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        pgconn = conn.pgconn
        for sql in (b"SET application_name = 'pinned'", b"SELECT 1"):  # SET pins the session
            assert pgconn.exec_(sql).status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
        assert pgconn.prepare(b"s1", b"SELECT $1::int").status == pq.ExecStatus.COMMAND_OK
        assert pgconn.exec_(b"DISCARD ALL").status == pq.ExecStatus.COMMAND_OK
        assert pgconn.prepare(b"s1", b"SELECT $1::int").status == pq.ExecStatus.COMMAND_OK
        result = pgconn.exec_prepared(b"s1", [b"7"])
        assert result.status == pq.ExecStatus.TUPLES_OK, result.error_message
        assert result.get_value(0, 0) == b"7"


def test_copy_pipeline_errors_and_cursors(make_proxy, proxy_pg):
    import psycopg

    proxy_pg.psql("CREATE TABLE IF NOT EXISTS copied (a int, b text)")
    proxy = make_proxy(max_backends=2)
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE copied")
        with conn.cursor().copy("COPY copied FROM STDIN") as copy:
            for i in range(500):
                copy.write_row((i, "x" * 20))
        with conn.cursor().copy("COPY copied TO STDOUT") as copy:
            assert sum(1 for _ in copy.rows()) == 500
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        assert conn.execute("SELECT 2").fetchone() == (2,)
        with conn.pipeline():
            cursors = [conn.execute("SELECT %s::int", (i,), prepare=True) for i in range(20)]
        assert [c.fetchone()[0] for c in cursors] == list(range(20))
        with conn.transaction():
            with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
                conn.execute("SELECT 1/0")
            with conn.cursor(name="server_side") as cur:  # DECLARE inside the transaction
                cur.execute("SELECT generate_series(1, 100)")
                assert len(cur.fetchmany(40)) == 40
    # The one pin: psycopg's DEALLOCATE ALL after the rolled-back savepoint, with prepared
    # statements in its cache (RDS Proxy pins on it too; the SDK's adapters avoid it).
    assert proxy.stats()["pin_reasons"] == {"deallocate": 1}


def test_async_with_on_the_callers_loop_and_the_stats_contract(proxy_pg):
    import asyncpg

    from lambdapool.testing import LocalProxy

    async def main() -> dict:
        async with LocalProxy(proxy_pg.dsn, max_backends=1, borrow_timeout=5) as proxy:
            conn = await asyncpg.connect(proxy.dsn)
            try:
                assert await conn.fetchval("SELECT 11") == 11
                proxy.set_latency(0.05)  # fault methods work from the loop's own thread too
                assert await conn.fetchval("SELECT 12") == 12
                proxy.set_latency(0)
                await proxy.start_listening()  # already listening: a no-op coroutine here
            finally:
                await conn.close()
            return proxy.stats()

    stats = asyncio.run(main())
    for key in ("clients", "peak_clients", "waiting", "backends_in_use", "backends_idle", "peak_backends",
                "transactions", "borrow_timeouts", "pinned_sessions", "pin_reasons", "auth_failures"):  # fmt: skip
        assert key in stats, key
    assert stats["peak_clients"] == 1 and stats["transactions"] >= 2
