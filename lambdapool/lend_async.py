"""Lending the instance's warm connections to invocations (asyncio drivers).

Written by hand; ``lend.py`` (sync drivers) is generated from it by ``tools/unasync.py``:
edit this file, then run ``python tools/unasync.py``.

An invocation takes a slot (``max_per_instance`` bound) and its warm connection the first
time it asks, keeps both until it ends, and hands them back clean. ``connection()`` blocks
are re-entrant: only the outermost one commits (psycopg) or rolls back what it left open
(asyncpg), as the driver's own pool would.

The lender is itself the ``async with db.connection()`` block, and keeps no state of its
own: a block finds its invocation in the context variable, so ``db.connection()`` makes
nothing. This is every warm invocation's path, and on it each call and each object counted:
the common case (an idle slot whose connection is lent and given back as it is) is plain
calls, awaiting nothing (``reuse``, ``finish_warm``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from lambdapool.runtime import InvocationState

logger = logging.getLogger("lambdapool")


class AsyncLender:
    def __init__(self, db: Any) -> None:
        self.db = db
        self.driver = db.driver
        self.slots = db._slots
        self.idle = db._slots.idle  # popped directly on the warm path (see slots._Bounded)
        self.current = db._current

    async def __aenter__(self) -> Any:
        state = self.current.get()
        if state is None:  # outside a handler: this block is its own invocation
            state = InvocationState(self.db._instance, None, counted=False)
            state.token = self.current.set(state)
        conn = state.conn
        if conn is None:
            try:
                try:
                    holder = state.holder = self.idle.pop()
                except IndexError:  # none idle: a new slot while under the bound, else None
                    holder = state.holder = self.slots.take_idle()
                if holder is None or (conn := holder.reuse(state)) is None:
                    conn = await self.acquire(state)
            except BaseException:
                if state.token is not None:
                    await self._end_adhoc(state)
                raise
        state.depth += 1
        return conn

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        state = self.current.get()
        try:
            if state.depth == 1:
                if exc_type is not None:
                    await self.rollback_quietly(state)
                elif state.holder.in_transaction():
                    if await self.driver.end_transaction(state.conn) == "rollback":
                        state.holder.stats.incr("rollbacks")
        finally:
            state.depth -= 1
            if state.token is not None and not state.depth:
                await self._end_adhoc(state)

    async def acquire(self, state: Any) -> Any:
        """After reuse() said no: wait for a slot, then verify or (re)connect."""
        started = time.monotonic()
        holder, conn = state.holder, None
        try:
            if holder is None:  # every slot is lent: wait for one
                holder = state.holder = await self.slots.take(self.db._acquire_deadline(state) - started)
                conn = holder.reuse(state)  # (after a wait)
            if conn is None:
                conn = await holder.acquire(self.db._acquire_deadline(state))
                state.conn, state.outcome = conn, holder.outcome
        except BaseException:
            state.holder = None
            if holder is not None:
                self.slots.give(holder)
            raise
        state.acquire_ms = (time.monotonic() - started) * 1000.0
        holder.stats.values["acquire_ms_total"] += state.acquire_ms
        return conn

    async def rollback_quietly(self, state: Any) -> None:
        conn = state.conn
        try:
            if self.driver.usable(conn) and self.driver.in_transaction(conn):
                state.holder.stats.incr("rollbacks")
                await self.driver.rollback(conn)
        except Exception:  # the handler's exception is the one that matters; release drops it
            pass

    def finish_warm(self, state: Any) -> bool:
        """End of the invocation when the connection needs nothing done (nothing left open,
        nothing to reset, nothing for the adapter to decide) or there is none: give the slot
        back as it is, with no round trip. False leaves it for finish()."""
        holder = state.holder
        if holder is None:
            return True
        try:
            if holder.conn is not None and (
                holder.refused or holder.reset_session or not holder.is_open() or holder.in_transaction()
                or holder.may_close()
            ):  # fmt: skip
                return False
        except Exception:  # let finish() deal with it
            return False
        holder.last_used = time.monotonic()
        state.holder = state.conn = None
        self.idle.append(holder)  # (slots.give(), inline: see slots.Slots.take)
        if self.slots.waiting:
            self.slots.wake()
        return True

    async def finish(self, state: Any) -> None:
        """End of the invocation (after finish_warm() said no): release the connection and give
        the slot back, always."""
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

    async def _end_adhoc(self, state: Any) -> None:
        self.current.reset(state.token)
        state.token = None
        if not self.finish_warm(state):
            await self.finish(state)
