"""A scripted, in-memory driver that keeps the driver contract (lambdapool._drivers.contract).

The warm path's decisions depend only on what the driver answers (open? socket readable? ping
ok? in a transaction? read-only?), so a test scripts the answers and reads back what the SDK
asked (``driver.calls``), in microseconds and without a server. Each connection's socket is
one end of a socketpair: the SDK watches it as it watches a real one, and the test makes it
readable when the "server" speaks unasked.
"""

from __future__ import annotations

import socket
from typing import Any


class FakeError(Exception):
    """A driver error, with a SQLSTATE like psycopg's and asyncpg's."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def too_many_clients() -> FakeError:
    return FakeError("FATAL: sorry, too many clients already", "53300")


class FakeConnection:
    """One "server session": what a test does to it stands for what a server or a handler did."""

    def __init__(self, pid: int, read_only: bool) -> None:
        self.pid = pid
        self.read_only = read_only  # the server reported itself read-only at login
        self.closed = False  # closed by the client
        self.broken = False  # a statement found the server gone
        self.gone = False  # the server has gone (the client does not know until it reads)
        self.in_transaction = False
        self.autocommit = False  # a user setting, carried to a successor
        self.statements: list[str] = []
        self._ours, self._servers = socket.socketpair()

    # -- what a handler does
    def execute(self, sql: str) -> None:
        if self.gone:
            self.broken = True
            raise FakeError("server closed the connection unexpectedly", "08006")
        if self.read_only and not sql.startswith("SELECT"):
            raise FakeError("cannot execute INSERT in a read-only transaction", "25006")
        self.statements.append(sql)
        if not self.autocommit:
            self.in_transaction = True

    # -- what the server does
    def speak(self) -> None:
        """The server sends something unasked (a NOTICE, a NOTIFY): the idle socket turns readable."""
        self._servers.send(b"N")

    def die(self) -> None:
        """The backend is terminated: a FATAL on the socket, then nothing answers."""
        self.gone = True
        self.speak()

    def fileno(self) -> int:
        return self._ours.fileno()

    def drain(self) -> None:
        self._ours.setblocking(False)
        try:
            while self._ours.recv(64):
                pass
        except BlockingIOError:
            pass

    def release_sockets(self) -> None:
        self._ours.close()
        self._servers.close()


class FakeDriver:
    """Sync driver (psycopg's conventions: a clean block's open transaction is committed)."""

    name = "fake"
    is_async = False

    def __init__(self) -> None:
        self.calls: list[str] = []  # what the SDK asked, in order (connect, ping, rollback, close...)
        self.connections: list[FakeConnection] = []
        self.connect_errors: list[BaseException] = []  # raised by the next connects, in order
        self.read_only_connects = 0  # the next this many connects land on a read-only server
        self.utilisation = (100, 3, 1)  # (max_connections, reserved, in use): the direct adapter's sample

    # -- the contract, no round trip
    def probes(self, conn: FakeConnection) -> tuple[Any, Any]:
        return (lambda: not conn.closed and not conn.broken), (lambda: conn.in_transaction)

    def fileno(self, conn: FakeConnection) -> int:
        return conn.fileno()

    def is_closed(self, conn: FakeConnection) -> bool:
        return conn.closed or conn.broken

    def usable(self, conn: FakeConnection) -> bool:
        return not conn.closed and not conn.broken

    def in_transaction(self, conn: FakeConnection) -> bool:
        return conn.in_transaction

    def read_only(self, conn: FakeConnection) -> bool:
        return conn.read_only

    def user_settings(self, conn: FakeConnection) -> dict[str, Any]:
        return {"autocommit": conn.autocommit}

    def terminate(self, conn: FakeConnection) -> None:
        self.calls.append("terminate")
        self._close(conn)

    def backend_pid(self, conn: FakeConnection) -> int:
        return conn.pid

    # -- the contract, round trips (awaited by AsyncFakeDriver)
    def connect(self, params: Any, timeout: float) -> FakeConnection:
        self.calls.append("connect")
        if self.connect_errors:
            raise self.connect_errors.pop(0)
        read_only = self.read_only_connects > 0
        self.read_only_connects -= read_only
        conn = FakeConnection(len(self.connections) + 1, read_only)
        self.connections.append(conn)
        return conn

    def ping(self, conn: FakeConnection) -> None:
        self.calls.append("ping")
        self._round_trip(conn)

    def query_row(self, conn: FakeConnection, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        self.calls.append("query_row")
        self._round_trip(conn)
        return self.utilisation

    def apply_user_settings(self, conn: FakeConnection, settings: dict[str, Any]) -> None:
        self.calls.append("apply_user_settings")
        for name, value in settings.items():
            setattr(conn, name, value)

    def end_transaction(self, conn: FakeConnection) -> str:
        self.calls.append("commit")
        self._round_trip(conn)
        conn.in_transaction = False
        return "commit"

    def rollback(self, conn: FakeConnection) -> None:
        self.calls.append("rollback")
        self._round_trip(conn)
        conn.in_transaction = False

    def reset(self, conn: FakeConnection, configured: str = "") -> None:
        self.calls.append("reset")
        self._round_trip(conn)

    def close(self, conn: FakeConnection) -> None:
        self.calls.append("close")
        self._close(conn)

    # -- helpers
    def _round_trip(self, conn: FakeConnection) -> None:
        if conn.closed:
            raise FakeError("the connection is closed")
        if conn.gone:
            conn.broken = True
            raise FakeError("server closed the connection unexpectedly", "08006")
        conn.drain()  # (what the server had said is read with the answer)

    def _close(self, conn: FakeConnection) -> None:
        if not conn.closed:
            conn.closed = True
            conn.release_sockets()


class AsyncFakeDriver(FakeDriver):
    """The same for the asyncio path: the round trips are awaited."""

    name = "fake-async"
    is_async = True

    async def connect(self, params: Any, timeout: float) -> FakeConnection:
        return FakeDriver.connect(self, params, timeout)

    async def ping(self, conn: FakeConnection) -> None:
        FakeDriver.ping(self, conn)

    async def query_row(self, conn: FakeConnection, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        return FakeDriver.query_row(self, conn, sql, params)

    async def apply_user_settings(self, conn: FakeConnection, settings: dict[str, Any]) -> None:
        FakeDriver.apply_user_settings(self, conn, settings)

    async def end_transaction(self, conn: FakeConnection) -> str:
        return FakeDriver.end_transaction(self, conn)

    async def rollback(self, conn: FakeConnection) -> None:
        FakeDriver.rollback(self, conn)

    async def reset(self, conn: FakeConnection, configured: str = "") -> None:
        FakeDriver.reset(self, conn, configured)

    async def close(self, conn: FakeConnection) -> None:
        FakeDriver.close(self, conn)
