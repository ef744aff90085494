"""The backend pool: a cap, idle backends, and a fair FIFO queue of clients waiting to borrow.

Theory of operation
-------------------
State is three collections: ``idle`` (backends nobody holds; LIFO so the warm ones are
reused and the cold ones age out), ``backends`` (every open backend) and ``waiters`` (clients
in arrival order, seen only as ``interfaces.Borrower``). A backend is only ever handed to the
*head* waiter, whether it was returned by a client or freshly connected, so nobody overtakes;
a client arriving while others wait queues behind them even if a backend is idle at that instant.

Backends open lazily: one connection attempt per waiter beyond those already connecting,
while ``open + connecting < cap``. When the database is briefly away (refused, starting up,
shutting down, full, a timeout: a restart or a failover), waiters stay queued and the attempt
is retried with backoff, as RDS Proxy holds clients through a failover; they are answered
only by their borrow timeout. Any other failure (a login the database rejects, the
``refuse_backends`` fault) fails the head waiter at once with the reason. Each waiter has a
borrow timeout, checked by a single timer aimed at the head of the queue; an expired waiter is
answered with SQLSTATE 53300.

Lifetimes are enforced at return time and by a periodic sweep (the proxy process is never
frozen, unlike a function sandbox): a backend older than ``backend_max_lifetime`` is
closed instead of reused, and idle backends beyond ``max_idle_backends`` are closed.

Roles (``roles.py``) are checked at return time too, and only when the server gave a reason
(it reported ``in_hot_standby`` / ``default_transaction_read_only``, or refused a write with
25006: ``BackendState.recheck``): a backend no longer of the proxy's role is closed, with
every idle one on the same server, and the server is told to look for another
(``ProxyServer.server_unfit``). Opening a backend tries the DSN's hosts for one of the role
(``ProxyServer.connect_backend``); finding none is "away" (retried, waiters kept) while one
may yet appear (a host down; for a writer, a standby that may be promoted), else a failure.
A backend for an earlier target (``retarget``, the ``failover()`` call) is never reused.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

from lambdapool.tools.proxy import roles

if TYPE_CHECKING:
    from lambdapool.tools.proxy.backend import Backend
    from lambdapool.tools.proxy.interfaces import Borrower, PoolContext


class Pool:
    def __init__(self, server: PoolContext, cap: int) -> None:
        self.server = server
        self.cap = cap
        self.idle: deque[Backend] = deque()
        self.backends: set[Backend] = set()
        self.waiters: deque[Borrower] = deque()
        self.connecting = 0
        self.refusing = False
        self.peak = 0
        self._expiry: asyncio.TimerHandle | None = None
        self._retry_delay = 0.0  # backoff while the database is away; 0 when it answers
        self._retry: asyncio.TimerHandle | None = None
        self.opening: set[asyncio.Task[None]] = set()  # backend connects in flight
        self.closed = False
        self.last_failure: str | None = None  # why opening a backend fails now (None: it does not)

    @property
    def in_use(self) -> int:
        return len(self.backends) - len(self.idle)

    # -- borrowing -------------------------------------------------------------------------
    def acquire(self, client: Borrower) -> None:
        """Lend a backend to ``client`` now or queue it; ends in ``client.attach`` or an error."""
        if not self.waiters and self.idle:
            client.attach(self.idle.pop())
            return
        client.enqueued_at = self.server.loop.time()
        self.waiters.append(client)
        self.server.counters["waited"] += 1
        if self._expiry is None:
            self._schedule_expiry()
        self._grow()

    def cancel(self, client: Borrower) -> None:
        """The client left while waiting."""
        try:
            self.waiters.remove(client)
        except ValueError:
            pass

    def _schedule_expiry(self) -> None:
        # One timer for the whole queue: every waiter has the same timeout, so the head is
        # always the first to expire (cheaper than a timer per wait, which is per transaction).
        head = self.waiters[0]
        self._expiry = self.server.loop.call_at(head.enqueued_at + self.server.settings.borrow_timeout, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        deadline = self.server.loop.time() - self.server.settings.borrow_timeout
        while self.waiters and self.waiters[0].enqueued_at <= deadline:
            client = self.waiters.popleft()
            if client.closed:
                continue
            self.server.counters["borrow_timeouts"] += 1
            client.borrow_timed_out(busy=self.in_use, cap=self.cap, waiting=len(self.waiters), why=self.last_failure)
        if self.waiters:
            self._schedule_expiry()

    def _hand_to_head(self, backend: Backend) -> bool:
        while self.waiters:
            client = self.waiters.popleft()
            if client.closed:
                continue
            self.server.note_wait(self.server.loop.time() - client.enqueued_at)
            client.attach(backend)
            return True
        return False

    # -- returning -------------------------------------------------------------------------
    def release(self, backend: Backend) -> None:
        """A backend is free again (after its client's transaction, or a reset)."""
        settings = self.server.settings
        if backend.closed:
            self.forget(backend)
            return
        if settings.backend_max_lifetime is not None and backend.age() > settings.backend_max_lifetime:
            backend.close()
            self.forget(backend)
            return
        if (backend.state.recheck or backend.target is not settings.backend) and not self._still_fits(backend):
            return
        if self.waiters and self._hand_to_head(backend):
            return
        backend.idle_since = time.monotonic()
        self.idle.append(backend)
        limit = settings.max_idle_backends
        while limit is not None and len(self.idle) > limit:
            oldest = self.idle.popleft()
            oldest.close()
            self.backends.discard(oldest)

    def _still_fits(self, backend: Backend) -> bool:
        """Is a backend whose server may have changed role (or that was opened for an earlier
        target) still one to lend? If not it is closed, and a server no longer of the role is
        reported, which closes its other idle backends.

        A writer's backend that refused a write with 25006 is not reused either way. Its server
        is taken for demoted unless it reports (PostgreSQL 14+) that it is still read-write: then
        the 25006 came from a READ ONLY transaction, which says nothing about the server.
        """
        state = backend.state
        state.recheck = False
        settings = self.server.settings
        if backend.target is settings.backend:
            wanted = settings.wanted
            fits = roles.keeps(wanted, backend.params)
            refused_write = state.read_only_error and wanted == "read-write"
            if fits and not refused_write:
                return True
            if not fits or not roles.reports_role(backend.params):
                self.server.server_unfit(backend)
        backend.close()
        self.forget(backend)
        return False

    def close_idle(self, address: tuple[str, int]) -> int:
        """Close the idle backends on server ``address`` (it is no longer of the role); returns how many."""
        stale = [b for b in self.idle if b.address == address]
        for backend in stale:
            self.idle.remove(backend)
            self.backends.discard(backend)
            backend.close()
        return len(stale)

    def retarget(self, reason: str) -> None:
        """The settings name another backend target: every backend of the old one is closed (a
        lent one ends its client's transaction with ``reason``), and connects in flight to it
        will not be pooled; waiting clients stay queued, and the pool opens backends at once."""
        self.last_failure = None
        backends = list(self.backends)
        self.idle.clear()
        self.backends.clear()
        for backend in backends:
            backend.close(reason)
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._retry_delay = 0.0
        self._grow()

    def forget(self, backend: Backend) -> None:
        """A backend is gone (closed by us, the server or a fault); maybe open a replacement."""
        self.backends.discard(backend)
        try:
            self.idle.remove(backend)
        except ValueError:
            pass
        self._grow()

    # -- growing ---------------------------------------------------------------------------
    def _grow(self) -> None:
        if self._retry is not None or self.closed:  # away: the retry timer grows the pool
            return
        while len(self.waiters) > self.connecting and len(self.backends) + self.connecting < self.cap:
            self.connecting += 1
            task = self.server.loop.create_task(self._open())
            self.opening.add(task)
            task.add_done_callback(self.opening.discard)

    def _retry_later(self) -> None:
        self._retry_delay = min(1.0, max(0.05, self._retry_delay * 2))

        def retry() -> None:
            self._retry = None
            self._grow()

        if self._retry is None:
            self._retry = self.server.loop.call_later(self._retry_delay, retry)

    async def _open(self) -> None:
        try:
            backend = await self.server.connect_backend(refuse=self.refusing)
        except Exception as exc:
            self.connecting -= 1
            if not self.refusing and database_away(exc):
                self.last_failure = str(exc) or type(exc).__name__
                self._retry_later()  # waiters stay queued until a backend or their borrow timeout
                return
            while self.waiters:
                client = self.waiters.popleft()
                if not client.closed:
                    client.backend_unavailable(str(exc))
                    break
            self._grow()  # the others queued have an attempt of their own (the cap may have held them)
            return
        self._retry_delay = 0.0
        self.last_failure = None
        self.connecting -= 1
        if self.closed:  # the proxy stopped while this connect was finishing
            backend.close()
            return
        self.backends.add(backend)
        self.peak = max(self.peak, len(self.backends))
        self.release(backend)

    def add_connected(self, backend: Backend) -> None:
        """A backend opened outside a borrow (the one the proxy opens at start)."""
        self.backends.add(backend)
        self.peak = max(self.peak, len(self.backends))
        self.release(backend)

    def sweep(self) -> None:
        """Close idle backends past their lifetime (called periodically)."""
        lifetime = self.server.settings.backend_max_lifetime
        if lifetime is None:
            return
        for backend in [b for b in self.idle if b.age() > lifetime]:
            self.idle.remove(backend)
            backend.close()
            self.backends.discard(backend)
        self._grow()

    def shutdown(self) -> None:
        """The proxy is stopping: open no more backends (connects in flight are cancelled, and
        the server awaits them; the retry timer too), and close every backend."""
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for task in self.opening:
            task.cancel()
        self.close_all()

    def close_all(self) -> None:
        """Close every backend now (in-use ones end their client's session)."""
        backends = list(self.backends)
        self.idle.clear()
        self.backends.clear()
        for backend in backends:
            backend.close()


_GONE = (
    "starting up",
    "shutting down",
    "in recovery",
    "not yet accepting connections",
    "connection reset",
    "closed the connection during login",
)
_AWAY = (
    "starting up",
    "shutting down",
    "in recovery",
    "too many clients",
    "remaining connection slots",
    "not yet accepting connections",
    "connection reset",
    "closed the connection during login",
)


def database_away(exc: BaseException) -> bool:
    """A failure that passes by itself: the server is down, restarting or full, or no server of
    the role answers yet (a failover)."""
    if isinstance(exc, roles.NoServerForRole):
        return exc.transient
    if isinstance(exc, (ConnectionRefusedError, ConnectionResetError, TimeoutError, asyncio.TimeoutError)):
        return True
    text = str(exc).lower()
    return any(reason in text for reason in _AWAY)


def server_gone(exc: BaseException) -> bool:
    """A failure that says the server itself is down or restarting (not merely full)."""
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError)):
        return True
    text = str(exc).lower()
    return any(reason in text for reason in _GONE)
