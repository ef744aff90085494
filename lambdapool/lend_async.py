"""Lending the instance's warm connections to invocations (asyncio drivers).

Written by hand; ``lend.py`` (sync drivers) is generated from it by ``tools/unasync.py``:
edit this file, then run ``python tools/unasync.py``.

An invocation takes a slot (``max_per_instance`` bound) and its warm connection the first
time it asks, keeps both until it ends, and hands them back clean. ``connection()`` blocks
are re-entrant: only the outermost one commits (psycopg) or rolls back what it left open
(asyncpg), as the driver's own pool would.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

logger = logging.getLogger("lambdapool")


class AsyncLender:
    def __init__(self, db: Any) -> None:
        self.db = db
        self.driver = db.driver
        self.stats = db._stats
        self.slots = db._slots

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        db = self.db
        state = db._current.get()
        token = None
        if state is None:  # outside a handler: this block is its own invocation
            state = db._adhoc()
            token = db._current.set(state)
        try:
            if state.conn is None:
                await self.acquire(state)
            state.depth += 1
            try:
                yield state.conn
            except BaseException:
                if state.depth == 1:
                    await self.rollback_quietly(state.conn)
                raise
            else:
                if state.depth == 1 and await self.driver.block_succeeded(state.conn) == "rollback":
                    self.stats.incr("rollbacks")
            finally:
                state.depth -= 1
        finally:
            if token is not None:
                db._current.reset(token)
                await self.finish(state)

    async def acquire(self, state: Any) -> None:
        started = time.monotonic()
        deadline = self.db._acquire_deadline(state)
        holder = await self.slots.take(deadline - started)
        try:
            state.conn = await holder.acquire(deadline)
        except BaseException:
            self.slots.give(holder)
            raise
        state.holder, state.outcome = holder, holder.outcome
        state.acquire_ms = (time.monotonic() - started) * 1000.0
        self.stats.add("acquire_ms_total", state.acquire_ms)

    async def rollback_quietly(self, conn: Any) -> None:
        try:
            if self.driver.usable(conn) and self.driver.in_transaction(conn):
                self.stats.incr("rollbacks")
                await self.driver.rollback(conn)
        except Exception:  # the handler's exception is the one that matters; release drops it
            pass

    async def finish(self, state: Any) -> None:
        """End of the invocation: release the connection and give the slot back, always."""
        holder, state.holder, state.conn = state.holder, None, None
        if holder is None:
            return
        try:
            await holder.release()
        except Exception:
            logger.warning("lambdapool: releasing the connection failed; dropping it", exc_info=True)
            holder.terminate()
        except BaseException:  # cancelled or interrupted mid-cleanup: its state is unknown
            holder.terminate()
            raise
        finally:
            self.slots.give(holder)
