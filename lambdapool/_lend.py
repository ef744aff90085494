"""Lending the instance's warm connections to invocations (sync drivers).

DO NOT EDIT: generated from ``_lend_async.py`` by ``tools/unasync.py``.

An invocation takes a slot (``max_per_instance`` bound) and its warm connection the first
time it asks, keeps both until it ends, and hands them back clean. ``connection()`` blocks
are re-entrant: only the outermost one commits (psycopg) or rolls back what it left open
(asyncpg), as the driver's own pool would.

The lender is itself the ``with db.connection()`` block, and keeps no state of its
own: a block finds its invocation in the context variable, so ``db.connection()`` makes
nothing. This is every warm invocation's path, and on it each call and each object counted:
the common case (an idle slot whose connection is lent and given back as it is) is plain
calls, with no round trip (``reuse``, ``finish_warm``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Literal

from lambdapool._drivers.base import read_only_error
from lambdapool._drivers.contract import Connection
from lambdapool._misuse import SyncBlockOnly
from lambdapool._runtime import InvocationState
from lambdapool.errors import LambdapoolError

if TYPE_CHECKING:
    from types import TracebackType

    from lambdapool._database import Core
    from lambdapool._drivers.contract import Driver
    from lambdapool._slots import Slots
    from lambdapool._warm import WarmConnection

logger = logging.getLogger("lambdapool")

ACROSS_CONTEXTS = (
    "a connection() block ended in another thread or context than it began, and no invocation "
    "was running there: keep the object db.connection() returned for the whole block (a with "
    "statement does), or run the request inside db.invocation_scope() / db.asgi() / db.wsgi()"
)


class Lender(SyncBlockOnly):
    """The instance's lender; within an invocation it is also the ``connection()`` block."""

    is_async: Literal[False] = False

    def __init__(self, core: Core, driver: Driver, slots: Slots[WarmConnection]) -> None:
        self.core = core
        self.driver = driver
        self.slots = slots
        self.idle = slots.idle  # popped directly on the warm path (see slots._Bounded)
        self.current = core.current

    def block(self) -> Lender | AdhocBlock:
        """What ``db.connection()`` returns: the lender itself inside an invocation (it keeps no
        state: the block finds its invocation in the context variable), else a block that is
        its own invocation."""
        if self.current.get() is None:
            return AdhocBlock(self)
        return self

    def __enter__(self) -> Connection:
        state = self.current.get()
        if state is None:  # a block kept from outside any invocation: it is its own
            state = InvocationState(self.core.instance, None, counted=False)
            state.token = self.current.set(state)
        return self.enter(state)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        state = self.current.get()
        if state is None:
            raise LambdapoolError(ACROSS_CONTEXTS)
        self.exit(state, exc)

    def enter(self, state: InvocationState) -> Connection:
        conn = state.conn
        if conn is not None and not state.holder.is_open():
            conn = None  # closed by the user (or SQLAlchemy's NullPool): never handed out again
        if conn is None:
            try:
                holder = state.holder
                if holder is None:
                    try:
                        holder = state.holder = self.idle.pop()
                    except IndexError:  # none idle: a new slot while under the bound, else None
                        holder = state.holder = self.slots.take_idle()
                    if holder is not None:
                        conn = holder.reuse(state)
                if conn is None:
                    conn = self.acquire(state)
            except BaseException:
                if state.token is not None and not state.depth:
                    self.end_adhoc(state)
                raise
        state.depth += 1
        return conn

    def exit(self, state: InvocationState, exc: BaseException | None) -> None:
        try:
            if state.depth == 1 and state.conn is not None:
                if exc is not None:
                    self.rollback_quietly(state)
                    if state.holder.wants_writer and read_only_error(exc):
                        state.holder.drop_read_only()
                elif state.holder.in_transaction():
                    if self.driver.end_transaction(state.conn) == "rollback":
                        state.holder.stats.incr("rollbacks")
        finally:
            state.depth -= 1
            if state.token is not None and not state.depth:
                self.end_adhoc(state)

    def acquire(self, state: InvocationState) -> Connection:
        """After reuse() said no: wait for a slot, then verify or (re)connect."""
        started = time.monotonic()
        holder: WarmConnection | None = state.holder
        conn = None
        try:
            if holder is None:  # every slot is lent: wait for one
                holder = state.holder = self.slots.take(self.core.acquire_deadline(state) - started)
                conn = holder.reuse(state)  # (after a wait)
            if conn is None:
                conn = holder.acquire(self.core.acquire_deadline(state))
                state.conn, state.outcome = conn, holder.outcome
        except BaseException:
            state.holder = None
            if holder is not None:
                self.slots.give(holder)
            raise
        state.acquire_ms = (time.monotonic() - started) * 1000.0
        holder.stats.values["acquire_ms_total"] += state.acquire_ms
        return conn

    def rollback_quietly(self, state: InvocationState) -> None:
        conn = state.conn
        try:
            if self.driver.usable(conn) and self.driver.in_transaction(conn):
                state.holder.stats.incr("rollbacks")
                self.driver.rollback(conn)
        except Exception:  # the handler's exception is the one that matters; release drops it
            pass

    def finish_warm(self, state: InvocationState) -> bool:
        """End of the invocation when the connection needs nothing done (nothing left open,
        nothing to reset, nothing for the adapter to decide) or there is none: give the slot
        back as it is, with no round trip. False leaves it for finish()."""
        holder: WarmConnection | None = state.holder
        if holder is None:
            return True
        try:
            if holder.conn is not None and (
                holder.refused
                or holder.reset_session
                or not holder.is_open()
                or holder.in_transaction()
                or holder.may_close()
            ):
                return False
        except Exception:  # let finish() deal with it
            return False
        holder.last_used = time.monotonic()
        state.holder = state.conn = None
        self.slots.give(holder)
        return True

    def finish(self, state: InvocationState) -> None:
        """End of the invocation (after finish_warm() said no): release the connection and give
        the slot back, always."""
        holder: WarmConnection | None = state.holder
        state.holder = state.conn = None
        if holder is None:
            return
        try:
            holder.release()
        except Exception:  # (release read the user's settings before it began)
            logger.warning("lambdapool: releasing the connection failed; dropping it", exc_info=True)
            holder.terminate(read_settings=False)
        except BaseException:  # cancelled or interrupted mid-cleanup: its state is unknown
            holder.terminate(read_settings=False)
            raise
        finally:
            self.slots.give(holder)

    def abandon(self, state: InvocationState) -> None:
        """Give the slot back with no round trip, dropping its connection (it cannot be used
        cleanly any more: its loop is gone, or the process is going)."""
        holder: WarmConnection | None = state.holder
        state.holder = state.conn = None
        if holder is not None:
            holder.terminate()
            self.slots.give(holder)

    def end(self, state: InvocationState) -> None:
        """End of an invocation: give back what it holds."""
        if not self.finish_warm(state):
            self.finish(state)

    def end_adhoc(self, state: InvocationState) -> None:
        token, state.token = state.token, None
        try:
            if token is not None:
                self.current.reset(token)
        except ValueError:  # ended in another context (a worker thread): that copy is gone anyway
            pass
        self.end(state)


class AdhocBlock(SyncBlockOnly):
    """``with db.connection()`` outside any invocation: a block that is its own.

    It keeps its invocation itself rather than finding it in the context variable, so it may
    end in another thread or context than it began: FastAPI enters and leaves a sync ``yield``
    dependency on different worker threads, each with its own copy of the context.
    """

    __slots__ = ("lender", "state")

    def __init__(self, lender: Lender) -> None:
        self.lender = lender
        self.state: InvocationState | None = None

    def __enter__(self) -> Connection:
        lender = self.lender
        if self.state is not None:
            raise LambdapoolError("this connection() block is already in use: call db.connection() for each block")
        state = self.state = InvocationState(lender.core.instance, None, counted=False)
        state.token = lender.current.set(state)  # nested connection() blocks find it there
        return lender.enter(state)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        state, self.state = self.state, None
        if state is None:
            raise LambdapoolError("this connection() block was never entered")
        self.lender.exit(state, exc)
