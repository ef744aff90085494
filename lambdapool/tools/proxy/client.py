"""One client connection of the proxy, as an asyncio driver: its handshake, then its session.

Theory of operation
-------------------
Both halves of the conversation are state machines without I/O: until login the client's
bytes go to its :class:`~lambdapool.tools.proxy.handshake.ClientHandshake` (TLS, the startup
packet, RDS Proxy's refusals, SCRAM or IAM auth, the admin console), then to its
:class:`~lambdapool.tools.proxy.session.Session`. This driver carries out what they return
(:meth:`Client._login` and :meth:`Client._run`): writes to either socket, wrapping the
socket in TLS, borrowing from the pool (which sees the client as ``interfaces.Borrower``),
releasing or resetting a backend, closing. Of the proxy it sees only ``ClientContext``.

Injected latency (``set_latency``) lives here too: bytes for a backend are held back for that
long, and the session is told when they reach the socket (up to then its requests can be
replayed on another backend).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from lambdapool.tools.proto import Frame, Parser, ProtocolError
from lambdapool.tools.proto import messages as m
from lambdapool.tools.proxy.handshake import (
    Borrow,
    Cancel,
    ClientHandshake,
    Close,
    HandshakeAction,
    LoggedIn,
    Phase,
    Send,
    StartTls,
)
from lambdapool.tools.proxy.rds_errors import PROXY
from lambdapool.tools.proxy.session import (
    BORROW,
    CANCEL_BORROW,
    CLOSE,
    PAUSE_READING,
    RELEASE,
    RESET,
    RESET_DISCARD,
    RESUME_READING,
    TO_BACKEND,
    TO_CLIENT,
    Action,
    Session,
)

if TYPE_CHECKING:
    from lambdapool.tools.proxy.backend import Backend
    from lambdapool.tools.proxy.interfaces import ClientContext

__all__ = ["Client"]
log = logging.getLogger("lambdapool.tools.proxy")


class Client(asyncio.Protocol):
    def __init__(self, ctx: ClientContext) -> None:
        self.ctx = ctx
        self.parser = Parser(frontend=True)
        self.pid, self.secret = ctx.new_key()
        self.login = ClientHandshake(ctx, self.parser, self.pid, self.secret)
        self.session = Session(ctx.shared, self.parser)  # takes over the parser at login
        self.transport: asyncio.Transport | None = None
        self.ready = False  # logged in: bytes go to the session
        self.hung = False  # hang_on_connect: bytes are held, unread
        self.closed = False
        self.backend: Backend | None = None
        self.enqueued_at = 0.0
        self.last_active = time.monotonic()
        self._login_waiting = False  # borrow_on_connect: the login waits in the pool's queue
        self._held: list[bytes] = []
        self._delayed: deque[tuple[float, Backend, bytes]] = deque()

    def __repr__(self) -> str:
        return f"<Client pid={self.pid} user={self.login.user!r} {self.login.phase.value} {self.session!r}>"

    @property
    def idle(self) -> bool:
        """Holds no backend for a transaction and waits for none (idle_client_timeout may close it)."""
        return not self._login_waiting and self.session.idle

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ctx.client_connected(self)
        self.hung = self.ctx.hanging

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        try:
            if self.ready:
                self._run(self.session.receive_client(data))
            elif self.hung:
                self._held.append(data)
            else:
                self._login(self.login.receive_data(data))
        except ProtocolError as exc:
            self.fatal("08P01", f"{PROXY}: invalid message from the client: {exc}")
        except Exception:
            log.exception("lambdapool local proxy: internal error while handling a client; closing it")
            self.fatal("XX000", f"{PROXY}: internal error (see the proxy's log)")

    def unhang(self) -> None:
        """``hang_on_connect`` was turned off: handle what this client sent meanwhile."""
        if self.hung and not self.closed:
            self.hung = False
            held, self._held = b"".join(self._held), []
            if held:
                self.data_received(held)

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def fatal(self, code: str, message: str) -> None:
        """Send a FATAL error and close this client only."""
        self._close(m.error_response(code, message, severity="FATAL"))

    def _close(self, last_words: bytes) -> None:
        if not self.closed:
            self.transport.write(last_words)  # type: ignore[union-attr]
            self.transport.close()  # type: ignore[union-attr]
        self._cleanup()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._cleanup()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._login_waiting:
            self._login_waiting = False
            self.ctx.pool.cancel(self)
        self._run(self.session.client_gone())
        self.ctx.client_gone(self)

    # -- flow control ----------------------------------------------------------------------
    def pause_writing(self) -> None:
        if self.backend is not None:
            self.backend.pause_reading()

    def resume_writing(self) -> None:
        if self.backend is not None:
            self.backend.resume_reading()

    def pause_reading(self) -> None:
        if not self.closed:
            self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        if not self.closed:
            self.transport.resume_reading()  # type: ignore[union-attr]

    # -- the handshake's actions -----------------------------------------------------------
    def _login(self, actions: list[HandshakeAction]) -> None:
        """Carry out what the handshake asked for, in order."""
        for action in actions:
            if self.closed:
                return
            if isinstance(action, Send):
                self.write(action.data)
            elif isinstance(action, StartTls):
                self.ctx.loop.create_task(self._start_tls())
            elif isinstance(action, Cancel):
                self.ctx.cancel(action.process_id, action.secret_key)
            elif isinstance(action, Close):
                if action.last_words:
                    self._close(action.last_words)
                else:
                    self.abort()
            elif isinstance(action, LoggedIn):
                self.session.logged_in(action.settings, action.reported)
                if self.login.phase is Phase.READY:
                    self.ready = True
                    self._run(self.session.receive_client())  # what the client pipelined
            elif isinstance(action, Borrow):
                self._login_waiting = True
                self.ctx.pool.acquire(self)  # may attach() at once
            else:
                raise AssertionError(f"unknown handshake action {action!r}")

    async def _start_tls(self) -> None:
        transport, context = self.transport, self.ctx.ssl_context
        try:
            if transport is None or context is None:  # TLS is offered only with a context
                raise ConnectionError("no TLS context")
            self.transport = await self.ctx.loop.start_tls(transport, self, context, server_side=True)
        except Exception:
            self.abort()
            return
        try:
            self._login(self.login.tls_started())
        except ProtocolError as exc:
            self.fatal("08P01", f"{PROXY}: invalid message from the client: {exc}")

    # -- the session's actions -------------------------------------------------------------
    def _run(self, actions: list[Action]) -> None:
        """Carry out what the session asked for, in order (BORROW may attach, and run more, inside)."""
        for kind, payload in actions:
            if kind == TO_BACKEND:
                self._send(payload)
            elif kind == TO_CLIENT:
                self.write(payload)
            elif kind == RELEASE:
                self._release()
            elif kind == BORROW:
                self.ctx.pool.acquire(self)
            elif kind == CLOSE:
                if payload:
                    self._close(payload)
                else:
                    self.abort()
            elif kind in (RESET, RESET_DISCARD):
                backend, self.backend = self.backend, None
                if backend is not None:
                    backend.reset(discard=kind == RESET_DISCARD)
            elif kind == CANCEL_BORROW:
                self.ctx.pool.cancel(self)
            elif kind == PAUSE_READING:
                self.pause_reading()
            elif kind == RESUME_READING:
                self.resume_reading()
            else:
                raise AssertionError(f"unknown session action {kind!r}")

    def attach(self, backend: Backend) -> None:
        """The pool lends ``backend``."""
        if self._login_waiting:  # borrow_on_connect: the login needed a backend, and has one
            self._login_waiting = False
            # returned on the next turn of the loop: the pool may be handing backends out in a
            # loop of its own (which this would re-enter, once per waiting login)
            self.ctx.loop.call_soon(self.ctx.pool.release, backend)
            self._login(self.login.borrowed())
            return
        self.backend = backend
        backend.owner = self
        self._run(self.session.attached(backend.state))

    def backend_messages(self, msgs: list[Frame]) -> None:
        self._run(self.session.receive_backend(msgs))

    def _release(self) -> None:
        """The session's transaction is over: give the backend back."""
        backend, self.backend = self.backend, None
        assert backend is not None
        backend.owner = None
        # A big answer may have filled our socket (pause_writing paused the backend's reading);
        # our resume_writing can come after this detach, when it no longer reaches the backend,
        # which the next client would then wait on forever. Detached, it must read again.
        backend.resume_reading()
        self.ctx.pool.release(backend)

    def _send(self, data: bytes) -> None:
        backend = self.backend
        assert backend is not None
        latency = self.ctx.latency
        if not latency and not self._delayed:
            backend.write(data)
            self.session.backend_wrote()
            return
        loop = self.ctx.loop
        self._delayed.append((loop.time() + latency, backend, data))
        if len(self._delayed) == 1:
            loop.call_at(self._delayed[0][0], self._send_delayed)

    def _send_delayed(self) -> None:
        loop = self.ctx.loop
        while self._delayed and self._delayed[0][0] <= loop.time():
            _, backend, data = self._delayed.popleft()
            backend.write(data)
            if backend is self.backend:
                self.session.backend_wrote()
        if self._delayed:
            loop.call_at(self._delayed[0][0], self._send_delayed)

    # -- failures --------------------------------------------------------------------------
    def borrow_timed_out(self, *, busy: int, cap: int, waiting: int, why: str | None = None) -> None:
        timeout = self.ctx.settings.borrow_timeout
        if self._login_waiting:
            self._login_waiting = False
            self._login(self.login.borrow_timed_out(timeout, cap, why))
            return
        self._run(self.session.borrow_timed_out(busy=busy, cap=cap, waiting=waiting, timeout=timeout, why=why))

    def backend_unavailable(self, reason: str) -> None:
        if self._login_waiting:
            self._login_waiting = False
            self._login(self.login.borrow_failed(reason))
            return
        self._run(self.session.borrow_failed(reason))

    def backend_lost(self, *, by_proxy: bool, why: str | None = None) -> None:
        self.backend = None
        self._run(self.session.backend_lost(by_proxy=by_proxy, why=why))
