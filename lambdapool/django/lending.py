"""How one Django connection wrapper holds a warm connection, from its connect to its close.

A wrapper shares the connection of the invocation running in its context (one connection per
invocation, given back by the invocation's end), unless another wrapper holds it already or it
is inside a transaction the handler opened: then the wrapper takes a slot of its own
(``connection.copy()``, two aliases with the same settings, a wrapper outside any invocation),
as ``max_per_instance`` allows, and gives it back at its close. A wrapper never shares a
session with another wrapper: each commits and rolls back on its own.

Whatever fails, nothing stays lent: a lend that began is ended by :meth:`Lend.end` (Django's
close, or a connect that failed after the lend began), and a wrapper garbage-collected while
holding a slot of its own gives the slot back (its connection dropped, its state unknown).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from lambdapool._database import core_of
from lambdapool._runtime import InvocationState
from lambdapool.errors import LambdapoolError

if TYPE_CHECKING:
    from lambdapool._database import Core, Database
    from lambdapool._lend import Lender

# id(invocation state) -> the Lend sharing that invocation's connection (gone with its wrapper).
_SHARING: weakref.WeakValueDictionary[int, Lend] = weakref.WeakValueDictionary()
# (id(Database), thread id) -> slots of their own that wrappers in that thread hold.
_OWN: dict[tuple[int, int], int] = {}
_LOCK = threading.Lock()


class _ClosedInTransaction(Exception):
    """The lend ends with a transaction open: it is rolled back, as closing a connection does."""


def _count_own(key: tuple[int, int], delta: int) -> None:
    with _LOCK:
        count = _OWN.get(key, 0) + delta
        if count > 0:
            _OWN[key] = count
        else:
            _OWN.pop(key, None)


class Lend:
    """A wrapper's hold on a warm connection (``conn``): shared with the invocation, or its own."""

    __slots__ = ("lender", "state", "conn", "own", "_own_key", "_finalizer", "__weakref__")

    def __init__(self, lender: Lender, state: InvocationState, own: bool) -> None:
        self.lender = lender
        self.state = state
        self.own = own
        self.conn: Any = None
        self._own_key: tuple[int, int] | None = None
        self._finalizer: Any = None

    @classmethod
    def begin(cls, db: Database[Any], wrapper: Any, alias: str) -> Lend:
        """Lend ``wrapper`` a connection of ``db``: the invocation's if free, else a slot of its own."""
        core = core_of(db)
        lender = _sync_lender(core)
        current = core.current.get()
        if current is not None and _shareable(current):
            lend = cls(lender, current, own=False)
            lend.conn = lender.enter(current)
            _SHARING[id(current)] = lend
            return lend
        key = (id(db), threading.get_ident())
        held = _OWN.get(key, 0) + (1 if current is not None and current.holder is not None else 0)
        size = db.settings.max_per_instance
        if held >= size:  # every slot is held in this thread: waiting for one could never end
            raise LambdapoolError(
                f"DATABASES[{alias!r}]: a second Django connection in this thread (connection.copy(), or "
                "another alias with the same settings) needs a connection of its own, and this thread already "
                f"holds all {size} of this instance's connections (max_per_instance={size}). Close the other "
                "connection first, use one alias, or raise max_per_instance in OPTIONS['lambdapool'] "
                "(on AWS Lambda it is 1: one invocation, one connection)"
            )
        state = InvocationState(core.instance, None, counted=False)
        lend = cls(lender, state, own=True)
        try:
            lend.conn = lender.enter(state)
        except BaseException:
            lender.end(state)  # (a failed acquire has given its slot back already)
            raise
        lend._own_key = key
        _count_own(key, 1)
        lend._finalizer = weakref.finalize(wrapper, lend.abandon)
        lend._finalizer.atexit = False  # the process's exit closes every connection anyway
        return lend

    def holds(self, conn: Any) -> bool:
        """Still lent, with ``conn``: not taken back by the end of the invocation it shares."""
        return self.conn is not None and self.state.conn is self.conn and conn is self.conn

    def end(self) -> None:
        """Give the connection back, rolling back whatever transaction is open. Never leaves it lent."""
        conn, self.conn = self.conn, None
        state = self.state
        if conn is None or state.holder is None:  # ended, or taken back by the end of its invocation
            self._forget()
            return
        lender = self.lender
        try:
            # As a block that raised: the outermost rolls back whatever is open (a handler's own
            # block still open around ours keeps its transaction).
            lender.exit(state, _ClosedInTransaction())
        finally:
            try:
                if self.own:
                    lender.end(state)  # the slot back (a broken connection dropped)
            finally:
                self._forget()

    def abandon(self) -> None:
        """The wrapper was garbage-collected holding a slot of its own: drop it, no round trip."""
        if self.own and self.conn is not None:
            self.conn = None
            self.lender.abandon(self.state)
        self._forget()

    def _forget(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._own_key is not None:
            _count_own(self._own_key, -1)
            self._own_key = None
        if not self.own and _SHARING.get(id(self.state)) is self:
            del _SHARING[id(self.state)]


def _sync_lender(core: Core) -> Lender:
    lender = core.lender
    if lender.is_async:  # (the backend makes its Database with the psycopg driver)
        raise LambdapoolError("the Django backend needs the sync psycopg driver")
    return lender


def _shareable(state: InvocationState) -> bool:
    """The invocation's connection is free for a wrapper: no other wrapper holds it, and the
    handler has no transaction open on it (Django must be able to set autocommit)."""
    other = _SHARING.get(id(state))
    if other is not None and other.state is state and other.conn is not None and state.conn is other.conn:
        return False
    holder = state.holder
    return not (state.conn is not None and holder is not None and holder.is_open() and holder.in_transaction())
