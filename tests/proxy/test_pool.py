"""Transaction pooling: the cap holds under fan-out, waiters are served in order, the borrow
timeout answers with a clear error, and the limits and lifetimes do what they say."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lambdapool.testing import wait_for


def test_500_clients_against_a_cap_of_10_never_exceed_10_backends(make_proxy, proxy_pg, backend_sampler):
    import asyncpg

    proxy = make_proxy(max_backends=10, max_client_connections=1000)
    # Sampled from the server's side, over a direct connection that is not the proxy's.
    sampler = backend_sampler(proxy_pg, interval=0.005)

    async def main() -> list:
        async def one(n: int) -> int:
            conn = await asyncpg.connect(proxy.dsn, timeout=60)
            try:
                total = 0
                for i in range(3):
                    total += await conn.fetchval("SELECT $1::int FROM (SELECT pg_sleep(0.002)) AS s", n + i)
                return total
            finally:
                await conn.close()

        return await asyncio.gather(*(one(n) for n in range(500)), return_exceptions=True)

    try:
        results = asyncio.run(main())
    finally:
        sampler.stop()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert results == [3 * n + 3 for n in range(500)]
    stats = proxy.stats()
    assert stats["peak_clients"] >= 100  # really concurrent
    assert stats["peak_backends"] <= 10
    assert len(sampler.timeline) > 10 and sampler.peak <= 10, sampler.peak
    assert stats["waited"] > 0 and stats["borrow_timeouts"] == 0


def test_waiting_clients_are_served_in_arrival_order(make_proxy, proxy_pg):
    import psycopg

    proxy = make_proxy(max_backends=1)
    holder = psycopg.connect(proxy.dsn)
    holder.execute("SELECT 1")  # BEGIN is implicit: the only backend stays lent to holder
    results: dict[int, int] = {}

    def take_ticket(n: int) -> None:
        with psycopg.connect(proxy.dsn, autocommit=True) as conn:
            results[n] = conn.execute("SELECT nextval('order_seq')").fetchone()[0]

    threads = []
    for n in range(12):
        thread = threading.Thread(target=take_ticket, args=(n,))
        thread.start()
        threads.append(thread)
        wait_for(lambda: proxy.stats()["waiting"] == n + 1, what=f"client {n} to queue")  # noqa: B023  (called now)
    holder.commit()
    holder.close()
    for thread in threads:
        thread.join(30)
    tickets = [results[n] for n in range(12)]
    assert tickets == sorted(tickets), tickets


def test_borrow_timeout_answers_53300_naming_the_proxy_the_wait_and_the_cap(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=1, borrow_timeout=0.3)
    holder = psycopg.connect(proxy.dsn)
    holder.execute("SELECT 1")
    with psycopg.connect(proxy.dsn, autocommit=True) as late:
        with pytest.raises(psycopg.errors.TooManyConnections) as info:
            late.execute("SELECT 2")
        message = str(info.value)
        assert info.value.sqlstate == "53300"
        assert "lambdapool local proxy" in message and "0.3s" in message
        assert "waiting to borrow" in message and "all 1 backends busy" in message and "max_backends" in message
        holder.commit()
        assert late.execute("SELECT 3").fetchone() == (3,)  # the same client carries on afterwards
    holder.close()
    assert proxy.stats()["borrow_timeouts"] == 1


def test_borrow_timeout_with_many_excess_clients(make_proxy):
    import asyncpg

    proxy = make_proxy(max_backends=2, borrow_timeout=0.5)

    async def main() -> list:
        async def one() -> object:
            conn = await asyncpg.connect(proxy.dsn)
            try:
                return await conn.fetchval("SELECT pg_sleep(2)::text")
            finally:
                await conn.close()

        return await asyncio.gather(*(one() for _ in range(8)), return_exceptions=True)

    results = asyncio.run(main())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 6 and all(getattr(e, "sqlstate", None) == "53300" for e in errors), results
    assert all("waiting to borrow" in str(e) for e in errors)
    assert proxy.stats()["borrow_timeouts"] == 6


def test_max_connections_percent_sets_the_cap_from_the_server(make_proxy):
    proxy = make_proxy(max_connections_percent=25)  # the server has max_connections=40
    assert proxy.stats()["max_backends"] == 10


def test_max_client_connections_refuses_the_extra_client(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=1, max_client_connections=2)
    a, b = psycopg.connect(proxy.dsn), psycopg.connect(proxy.dsn)
    with pytest.raises(psycopg.OperationalError, match="max_client_connections=2"):
        psycopg.connect(proxy.dsn)
    a.close()
    b.close()


def test_idle_client_timeout_closes_idle_clients_only(make_proxy):
    import psycopg

    proxy = make_proxy(max_backends=2, idle_client_timeout=1.0)
    idle = psycopg.connect(proxy.dsn, autocommit=True)
    busy = psycopg.connect(proxy.dsn, autocommit=True)
    for _ in range(10):
        busy.execute("SELECT pg_sleep(0.15)")
    with pytest.raises(psycopg.OperationalError, match="idle_client_timeout"):
        idle.execute("SELECT 1")
    assert busy.execute("SELECT 1").fetchone() == (1,)
    busy.close()


def test_backend_max_lifetime_and_max_idle_backends(make_proxy, proxy_pg):
    import psycopg

    proxy = make_proxy(max_backends=4, max_idle_backends=1, backend_max_lifetime=0.4)
    conns = [psycopg.connect(proxy.dsn) for _ in range(3)]
    for conn in conns:
        conn.execute("SELECT 1")  # three transactions open at once: three backends
    assert proxy.stats()["backends_in_use"] == 3
    for conn in conns:
        conn.commit()
    assert proxy.stats()["backends_idle"] <= 1  # the others were closed on return
    pids = {conns[0].execute("SELECT pg_backend_pid()").fetchone()[0]}
    conns[0].commit()
    time.sleep(0.6)
    pids.add(conns[0].execute("SELECT pg_backend_pid()").fetchone()[0])
    conns[0].commit()
    assert len(pids) == 2  # past its lifetime, the backend was replaced
    for conn in conns:
        conn.close()
    wait_for(lambda: proxy_pg.backends() <= 1, what="idle backends to close")


def test_unreachable_or_refusing_backend_fails_start_with_a_clear_error(proxy_pg):
    from lambdapool.errors import ConnectionUnavailable
    from lambdapool.testing import LocalProxy, free_port

    with pytest.raises(ConnectionUnavailable, match="cannot open a connection to the backend") as info:
        LocalProxy(f"postgresql://postgres:pw@127.0.0.1:{free_port()}/postgres", max_backends=1).start()
    assert "pw" not in str(info.value)
    wrong = proxy_pg.dsn.replace("server-pw", "wrong-pw")
    with pytest.raises(ConnectionUnavailable, match="28P01") as info:
        LocalProxy(wrong, max_backends=1).start()
    assert "wrong-pw" not in str(info.value)


def test_stop_cancels_backend_connects_in_flight(proxy_pg):
    """A proxy stopped while it is opening a backend leaves no task pending and no backend open
    (it used to leave ``Pool._open`` tasks behind: "Task was destroyed but it is pending")."""
    import dataclasses
    import socket

    import psycopg

    from lambdapool.testing import LocalProxy

    silent = socket.socket()  # accepts TCP, never answers: backend connects to it stay in flight
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)

    async def main() -> tuple[int, list[asyncio.Task]]:
        proxy = LocalProxy(backend=proxy_pg.dsn, max_backends=3, connect_timeout=30)
        async with proxy:
            server = proxy._server
            holder = await psycopg.AsyncConnection.connect(proxy.dsn)
            await holder.execute("SELECT 1")  # in a transaction: holds the one backend opened at start
            silent_host = ("127.0.0.1", silent.getsockname()[1])
            server.settings.backend = dataclasses.replace(server.settings.backend, hosts=(silent_host,))
            waiter = await psycopg.AsyncConnection.connect(proxy.dsn)
            query = asyncio.create_task(waiter.execute("SELECT 2"))  # needs a second backend
            while not server.pool.opening:
                await asyncio.sleep(0.01)
            opening = list(server.pool.opening)
        await asyncio.gather(query, return_exceptions=True)  # the proxy ended its session
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for conn in (holder, waiter):
            await conn.close()
        assert all(t.done() for t in opening)
        return len(opening), leftovers

    try:
        opened, leftovers = asyncio.run(main())
    finally:
        silent.close()
    assert opened == 1 and leftovers == []
