"""Lending the instance's warm connections to invocations (sync drivers).

DO NOT EDIT: generated from ``lend_async.py`` by ``tools/unasync.py``.

An invocation takes a slot (``max_per_instance`` bound) and its warm connection the first
time it asks, keeps both until it ends, and hands them back clean. ``connection()`` blocks
are re-entrant: only the outermost one commits (psycopg) or rolls back what it left open
(asyncpg), as the driver's own pool would.
"""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger("lambdapool")


class Lender:
    def __init__(self, db: Any) -> None:
        self.db = db
        self.driver = db.driver
        self.slots = db._slots

    def connection(self) -> Block:
        return Block(self)

    # The common case - an idle slot whose connection is lent and given back as it is - runs
    # without a coroutine (lend_warm, finish_warm): each layer cost more than the checks.
    def lend_warm(self, state: Any) -> bool:
        """Lend an idle slot's connection if it needs no round trip. Otherwise False, leaving
        the slot it took (if any) in ``state.holder`` for acquire()."""
        started = time.monotonic()
        holder = self.slots.take_idle()
        if holder is None:
            return False
        state.holder = holder
        conn = holder.reuse(started)
        if conn is None:
            return False
        self._lent(state, conn, started)
        return True

    def acquire(self, state: Any) -> None:
        """After lend_warm() said no: wait for a slot, then verify or (re)connect."""
        started = time.monotonic()
        holder, conn = state.holder, None
        try:
            if holder is None:  # every slot is lent: wait for one
                holder = state.holder = self.slots.take(self.db._acquire_deadline(state) - started)
                conn = holder.reuse(time.monotonic())  # (after a wait)
            if conn is None:
                conn = holder.acquire(self.db._acquire_deadline(state))
        except BaseException:
            state.holder = None
            if holder is not None:
                self.slots.give(holder)
            raise
        self._lent(state, conn, started)

    def _lent(self, state: Any, conn: Any, started: float) -> None:
        holder = state.holder
        state.conn, state.outcome = conn, holder.outcome
        state.acquire_ms = (time.monotonic() - started) * 1000.0
        holder.stats.values["acquire_ms_total"] += state.acquire_ms

    def rollback_quietly(self, state: Any) -> None:
        conn = state.conn
        try:
            if self.driver.usable(conn) and self.driver.in_transaction(conn):
                state.holder.stats.incr("rollbacks")
                self.driver.rollback(conn)
        except Exception:  # the handler's exception is the one that matters; release drops it
            pass

    def finish_warm(self, state: Any) -> bool:
        """End of the invocation when the connection needs nothing done (or there is none);
        False leaves it for finish()."""
        holder = state.holder
        if holder is None:
            return True
        try:
            if not holder.put_back():
                return False
        except Exception:  # let finish() deal with it
            return False
        state.holder = state.conn = None
        self.slots.give(holder)
        return True

    def finish(self, state: Any) -> None:
        """End of the invocation (after finish_warm() said no): release the connection and give
        the slot back, always."""
        holder, state.holder, state.conn = state.holder, None, None
        if holder is None:
            return
        try:
            holder.release()
        except Exception:
            logger.warning("lambdapool: releasing the connection failed; dropping it", exc_info=True)
            holder.terminate()
        except BaseException:  # cancelled or interrupted mid-cleanup: its state is unknown
            holder.terminate()
            raise
        finally:
            self.slots.give(holder)


class Block:
    """One ``with db.connection()`` block (a class, not a generator: it is on every
    warm invocation's path, and a generator-based context manager costs several times more)."""

    __slots__ = ("lender", "state", "token")

    def __init__(self, lender: Lender) -> None:
        self.lender = lender

    def __enter__(self) -> Any:
        lender = self.lender
        db = lender.db
        state = db._current.get()
        self.token = None
        if state is None:  # outside a handler: this block is its own invocation
            state = db._adhoc()
            self.token = db._current.set(state)
        self.state = state
        try:
            if state.conn is None and not lender.lend_warm(state):
                lender.acquire(state)
        except BaseException:
            if self.token is not None:
                self._end_adhoc()
            raise
        state.depth += 1
        return state.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        lender, state = self.lender, self.state
        try:
            if state.depth == 1:
                if exc_type is not None:
                    lender.rollback_quietly(state)
                elif lender.driver.in_transaction(state.conn):
                    if lender.driver.end_transaction(state.conn) == "rollback":
                        state.holder.stats.incr("rollbacks")
        finally:
            state.depth -= 1
            if self.token is not None:
                self._end_adhoc()

    def _end_adhoc(self) -> None:
        self.lender.db._current.reset(self.token)
        self.token = None
        if not self.lender.finish_warm(self.state):
            self.lender.finish(self.state)

