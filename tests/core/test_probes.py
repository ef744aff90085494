"""The per-connection probes the warm path runs on every invocation agree with each driver's
own public answers: open or not, inside a transaction or not."""

from __future__ import annotations

import asyncio

from lambdapool import _drivers as drivers


def test_psycopg_probes_follow_the_connection(pg_server):
    import psycopg

    is_open, in_transaction = drivers.load("psycopg").probes(conn := psycopg.connect(pg_server.dsn))
    assert is_open() and not in_transaction()
    conn.execute("SELECT 1")  # psycopg opens a transaction
    assert in_transaction() and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    conn.rollback()
    assert not in_transaction()
    conn.close()
    assert not is_open() and conn.closed


def test_asyncpg_probes_follow_the_connection(pg_server):
    import asyncpg

    async def scenario() -> None:
        conn = await asyncpg.connect(pg_server.dsn)
        other = await asyncpg.connect(pg_server.dsn)
        is_open, in_transaction = drivers.load("asyncpg").probes(conn)
        assert is_open() and not in_transaction()
        tx = conn.transaction()
        await tx.start()
        assert in_transaction() and conn.is_in_transaction()
        await tx.rollback()
        assert not in_transaction()
        # The server ends the backend: once the loop has read the goodbye, both agree it is closed
        await other.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        for _ in range(200):
            if conn.is_closed():
                break
            await asyncio.sleep(0.01)
        assert conn.is_closed() and not is_open()
        # terminate() is seen at once, before the loop runs again
        third = await asyncpg.connect(pg_server.dsn)
        open3, _ = drivers.load("asyncpg").probes(third)
        third.terminate()
        assert third.is_closed() and not open3()
        await other.close()

    asyncio.run(scenario())


def test_asyncpg_probes_fall_back_to_the_public_methods_if_internals_move():
    class Moved:  # a connection without the protocol attributes the fast probes read
        def __init__(self) -> None:
            self.closed, self.tx = False, False

        def is_closed(self) -> bool:
            return self.closed

        def is_in_transaction(self) -> bool:
            return self.tx

    conn = Moved()
    is_open, in_transaction = drivers.load("asyncpg").probes(conn)
    assert is_open() and not in_transaction()
    conn.closed, conn.tx = True, True
    assert not is_open() and in_transaction()


def test_the_socket_watch_is_quiet_until_the_peer_speaks_or_hangs_up():
    import socket

    from lambdapool._drivers.base import socket_watch

    ours, server = socket.socketpair()
    talked, hung_up = socket.socketpair()
    with ours, server, talked, hung_up:
        assert not socket_watch(ours.fileno()).poll(0)  # idle and quiet: lend without a round trip
        server.sendall(b"E")  # a FATAL waiting to be read
        assert socket_watch(ours.fileno()).poll(0)
        watch = socket_watch(talked.fileno())
        hung_up.close()  # the server went away
        assert watch.poll(0)
    assert socket_watch(None).poll(0)  # a socket we cannot see is always verified
