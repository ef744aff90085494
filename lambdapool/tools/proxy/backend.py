"""One server connection of the proxy, as an asyncio driver: its login, then relaying to its owner.

Theory of operation
-------------------
The login is a :class:`~lambdapool.tools.proxy.backend_login.BackendLogin` and, once in, the
backend's state (what it owes, prepared statements, applied settings) a
:class:`~lambdapool.tools.proxy.backend_state.BackendState`; neither does I/O. While lent, the
messages the server sends go to the backend's *owner* (``interfaces.BackendOwner``: a client,
whose session matches them against that state); with no owner (a reset after a client left)
the backend matches them itself, and returns to the pool when the reset is answered. Of the
proxy it sees only ``interfaces.BackendContext``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from lambdapool.tools.proto import Parser, ProtocolError
from lambdapool.tools.proto import messages as m
from lambdapool.tools.proxy.backend_login import BackendLogin, Failed, LoginAction, Ready, Send, StartTls
from lambdapool.tools.proxy.backend_state import SYNCED, BackendState

if TYPE_CHECKING:
    from lambdapool.tools.proxy.config import BackendTarget
    from lambdapool.tools.proxy.interfaces import BackendContext, BackendOwner
    from lambdapool.tools.proxy.pool import Pool


class BackendLoginError(Exception):
    """The server refused the proxy's login (message from the server, no secrets)."""


class Backend(asyncio.Protocol):
    def __init__(self, ctx: BackendContext, target: BackendTarget, address: tuple[str, int]) -> None:
        self.ctx = ctx
        self.target = target
        self.address = address  # the host of ``target`` it connected to
        self.parser = Parser(frontend=False)
        self.login = BackendLogin(target, self.parser)
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[Backend] = ctx.loop.create_future()
        self.owner: BackendOwner | None = None
        self.state = BackendState()
        self.closed = False
        self.pid = self.secret = 0
        self.created = time.monotonic()
        self.idle_since = self.created
        self.resetting = False
        self.close_reason: str | None = None  # why the proxy closed it, for its client's error

    def __repr__(self) -> str:
        return f"<Backend pid={self.pid} {self.state!r}{' closed' if self.closed else ''}>"

    @property
    def params(self) -> dict[str, str]:
        """The server's ParameterStatus values on this connection."""
        return self.state.params

    def age(self) -> float:
        return time.monotonic() - self.created

    # -- login -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._login(self.login.start())

    def _login(self, actions: list[LoginAction]) -> None:
        """Carry out what the login asked for, in order."""
        for action in actions:
            if isinstance(action, Send):
                self.transport.write(action.data)  # type: ignore[union-attr]
            elif isinstance(action, StartTls):
                self.ctx.loop.create_task(self._start_tls())
            elif isinstance(action, Failed):
                self._login_failed(action.reason)
            elif isinstance(action, Ready):
                login = self.login
                self.state.params.update(login.params)
                self.state.status = login.status
                self.pid, self.secret = login.pid, login.secret
                if not self.ready.done():
                    self.ready.set_result(self)
            else:
                raise AssertionError(f"unknown login action {action!r}")

    async def _start_tls(self) -> None:
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # sslmode=require semantics: encrypt, do not verify
        try:
            self.transport = await self.ctx.loop.start_tls(self.transport, self, ctx)  # type: ignore[arg-type]
        except (OSError, ConnectionError, ssl.SSLError) as exc:
            self._login_failed(f"TLS handshake with the server failed: {exc}")
            return
        self._login(self.login.tls_started())

    def _login_failed(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(BackendLoginError(reason))
        self.close()

    # -- relaying --------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            try:
                self._login(self.login.receive_data(data))
            except Exception as exc:
                self._login_failed(f"login to the server failed: {exc}")
            if not self.ready.done() or self.closed:
                return
        else:
            self.parser.receive_data(data)
        self._relay()

    def _relay(self) -> None:
        try:
            msgs = self.parser.frames()
        except ProtocolError:
            self.close()
            return
        owner = self.owner
        if owner is not None:
            owner.backend_messages(msgs)
            return
        # Nobody to tell (a reset, or answers owed to a client who left): match and drop.
        if self.state.relay(msgs, [], None) & SYNCED and self.resetting:
            self.resetting = False
            self._reset_done()

    def _pool(self) -> Pool:
        pool = self.ctx.pool
        if pool is None:  # a lent or reset backend came from the pool
            raise RuntimeError("the proxy has no pool yet")
        return pool

    # -- reset after a client ----------------------------------------------------------------
    def reset(self, *, discard: bool) -> None:
        """The client left: roll back and, after a pinned session, ``DISCARD ALL``; then return."""
        self.owner = None
        self.resume_reading()  # reading may be paused for a client who is gone (see Client.release)
        state = self.state
        if state.owes or self.closed or not state.synced:
            # Answers still owed to a client who is gone, or requests sent that no Sync has
            # closed yet: what the server does next is unknown, so the backend is not reusable.
            self.close()
            self._pool().forget(self)
            return
        queries = []
        if state.status != "I":
            queries.append("ROLLBACK")
        if discard:
            queries.append("DISCARD ALL")
            state.discarded()
        if not queries:
            self._pool().release(self)
            return
        self.ctx.counters["resets"] += 1
        self.resetting = True
        for sql in queries:
            state.owe_hidden_query()
            self.transport.write(m.query(sql))  # type: ignore[union-attr]

    def _reset_done(self) -> None:
        if self.state.status != "I":
            self.close()
            self._pool().forget(self)
            return
        self._pool().release(self)

    # -- flow control and teardown ---------------------------------------------------------
    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_reading()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.resume_reading()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        self.state.sent()
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self, reason: str | None = None) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(
                BackendLoginError(f"the server closed the connection during login ({exc or 'EOF'})")
            )
            return
        self.ctx.counters["backends_closed"] += 1
        pool = self.ctx.pool
        if pool is None:
            return  # the proxy's first login failed: there is no pool yet, and start() says why
        pool.forget(self)
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.backend_lost(by_proxy=was_closed, why=self.close_reason)
