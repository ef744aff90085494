"""psycopg 3, asyncio. Same semantics as the sync driver (psycopg_pool's AsyncConnectionPool)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from lambdapool._drivers.base import RESET_SQL, ConnectParams
from lambdapool._drivers.psycopg_sync import (
    connect_kwargs,
    fileno,
    in_transaction,
    is_closed,
    probes,
    read_only,
    usable,
    user_settings,
)

if TYPE_CHECKING:
    import psycopg


# _own_cursor and _autocommit have sync twins in psycopg_sync.py, written out: a few lines each,
# one per psycopg connection class (AsyncClientCursor / ClientCursor, awaited set_autocommit).
def _own_cursor(conn: psycopg.AsyncConnection[Any]) -> Any:
    from psycopg import AsyncClientCursor, rows

    return AsyncClientCursor(conn, row_factory=rows.tuple_row)


class _autocommit:
    __slots__ = ("conn", "was")

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def __aenter__(self) -> None:
        self.was = self.conn.autocommit
        if not self.was:
            await self.conn.set_autocommit(True)

    async def __aexit__(self, *exc: object) -> None:
        if not self.was and not self.conn.closed:
            try:
                await self.conn.set_autocommit(False)
            except Exception:  # broken meanwhile: the error that broke it is the one to report
                pass


class AsyncPsycopgDriver:
    name = "psycopg-async"
    is_async: Literal[True] = True

    async def connect(self, params: ConnectParams, timeout: float) -> Any:
        import asyncio

        import psycopg

        # libpq's own timeout has a 2 s floor; wait_for honours a tighter deadline.
        return await asyncio.wait_for(psycopg.AsyncConnection.connect(**connect_kwargs(params, timeout)), timeout)

    is_closed = staticmethod(is_closed)
    fileno = staticmethod(fileno)
    in_transaction = staticmethod(in_transaction)
    usable = staticmethod(usable)
    probes = staticmethod(probes)
    read_only = staticmethod(read_only)

    # As the sync driver: a cursor of the SDK's own, tuple rows, nothing prepared, and the
    # user's autocommit left as it was.
    async def ping(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with _autocommit(conn):
            await _own_cursor(conn).execute("", prepare=False)

    async def query_row(
        self, conn: psycopg.AsyncConnection[Any], sql: str, params: tuple[Any, ...] = ()
    ) -> tuple[Any, ...]:
        async with _autocommit(conn):
            cur = await _own_cursor(conn).execute(sql, params or None, prepare=False)
            row: tuple[Any, ...] = await cur.fetchone()
            return row

    user_settings = staticmethod(user_settings)

    async def apply_user_settings(self, conn: psycopg.AsyncConnection[Any], settings: dict[str, Any]) -> None:
        for name, value in settings.items():
            setter = getattr(conn, f"set_{name}", None)
            if setter is not None:  # autocommit, isolation_level...: async setters
                await setter(value)
            else:
                setattr(conn, name, value)

    async def end_transaction(self, conn: psycopg.AsyncConnection[Any]) -> Literal["commit"]:
        """A clean block left a transaction open: psycopg_pool's connection() commits it."""
        await conn.commit()
        return "commit"

    async def rollback(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.rollback()

    async def reset(self, conn: psycopg.AsyncConnection[Any], configured: str = "") -> None:
        sql = f"{RESET_SQL}; {configured}" if configured else RESET_SQL
        async with _autocommit(conn):
            await _own_cursor(conn).execute(sql, prepare=False)

    async def close(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.close()

    def terminate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        conn.pgconn.finish()  # sync: usable from a signal handler while the loop is busy

    def backend_pid(self, conn: psycopg.AsyncConnection[Any]) -> int:
        return conn.info.backend_pid


if TYPE_CHECKING:  # mypy checks that the glue keeps the driver contract
    from lambdapool._drivers.contract import AsyncDriver

    _: AsyncDriver = AsyncPsycopgDriver()
