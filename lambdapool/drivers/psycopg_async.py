"""psycopg 3, asyncio. Same semantics as the sync driver (psycopg_pool's AsyncConnectionPool)."""

from __future__ import annotations

from typing import Any

from lambdapool.drivers.base import RESET_SQL, ConnectParams
from lambdapool.drivers.psycopg_sync import connect_kwargs, fileno, in_transaction, is_closed, probes, usable


class AsyncPsycopgDriver:
    name = "psycopg-async"
    is_async = True

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

    async def ping(self, conn: Any) -> None:
        await conn.set_autocommit(True)
        try:
            await conn.execute("")
        finally:
            await conn.set_autocommit(False)

    async def query_row(self, conn: Any, sql: str, params: tuple = ()) -> tuple:
        await conn.set_autocommit(True)
        try:
            return await (await conn.execute(sql, params or None)).fetchone()
        finally:
            await conn.set_autocommit(False)

    async def end_transaction(self, conn: Any) -> str:
        """A clean block left a transaction open: psycopg_pool's connection() commits it."""
        await conn.commit()
        return "commit"

    async def rollback(self, conn: Any) -> None:
        await conn.rollback()

    async def reset(self, conn: Any) -> None:
        await conn.set_autocommit(True)
        try:
            await conn.execute(RESET_SQL)
        finally:
            await conn.set_autocommit(False)

    async def close(self, conn: Any) -> None:
        await conn.close()

    def terminate(self, conn: Any) -> None:
        conn.pgconn.finish()  # sync: usable from a signal handler while the loop is busy

    def backend_pid(self, conn: Any) -> int:
        return conn.info.backend_pid
