"""One server connection of the proxy, as an asyncio driver: its login, then relaying to its owner.

Theory of operation
-------------------
After login the backend's state (what it owes, prepared statements, applied settings) is a
:class:`~lambdapool.tools.proxy.backend_state.BackendState`, which does no I/O. While lent, the
messages the server sends go to the backend's *owner* (``interfaces.BackendOwner``: a client,
whose session matches them against that state); with no owner (a reset after a client left)
the backend matches them itself, and returns to the pool when the reset is answered.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from lambdapool.tools.proto import NEED_DATA, Parser, ProtocolError, SSLAnswer
from lambdapool.tools.proto import messages as m
from lambdapool.tools.proxy.auth import md5_password
from lambdapool.tools.proxy.backend_state import SYNCED, BackendState

if TYPE_CHECKING:
    from scramp import ScramClient

    from lambdapool.tools.proxy.config import BackendTarget
    from lambdapool.tools.proxy.interfaces import BackendOwner
    from lambdapool.tools.proxy.server import ProxyServer


class BackendLoginError(Exception):
    """The server refused the proxy's login (message from the server, no secrets)."""


class Backend(asyncio.Protocol):
    def __init__(self, server: ProxyServer, target: BackendTarget, address: tuple[str, int]) -> None:
        self.server = server
        self.target = target
        self.address = address  # the host of ``target`` it connected to
        self.parser = Parser(frontend=False)
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[Backend] = server.loop.create_future()
        self.owner: BackendOwner | None = None
        self.state = BackendState()
        self.closed = False
        self.pid = self.secret = 0
        self.created = time.monotonic()
        self.idle_since = self.created
        self._scram: ScramClient | None = None
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
        if self.target.tls:
            self.parser.expect_ssl_answer()
            transport.write(m.ssl_request())  # type: ignore[attr-defined]
        else:
            self._send_startup()

    def _send_startup(self) -> None:
        assert self.transport is not None
        self.transport.write(m.startup_message({"user": self.target.user, "database": self.target.database}))

    async def _start_tls(self) -> None:
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # sslmode=require semantics: encrypt, do not verify
        try:
            self.transport = await self.server.loop.start_tls(self.transport, self, ctx)  # type: ignore[arg-type]
        except (OSError, ConnectionError, ssl.SSLError) as exc:
            self._login_failed(f"TLS handshake with the server failed: {exc}")
            return
        self._send_startup()

    def _login_failed(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(BackendLoginError(reason))
        self.close()

    def _login_event(self, event: object) -> None:
        if isinstance(event, SSLAnswer):
            if event.accepted:
                self.server.loop.create_task(self._start_tls())
            else:
                self._login_failed(f"the server refused TLS and the backend DSN says sslmode={self.target.sslmode}")
            return
        kind, body = event.type, event.body  # type: ignore[attr-defined]
        if kind == "R":
            self._auth(*m.read_auth(body))
        elif kind == "S":
            name, value = m.read_parameter_status(body)
            self.state.params[name] = value
        elif kind == "K":
            self.pid, self.secret = m.read_backend_key(body)
        elif kind == "E":
            fields = m.read_error(body)
            self._login_failed(f"{fields.get('C', '?')} {fields.get('M', '')}")
        elif kind == "Z":
            self.state.status = m.read_ready(body)
            if not self.ready.done():
                self.ready.set_result(self)

    def _auth(self, code: int, data: bytes) -> None:
        assert self.transport is not None
        target, password = self.target, self.target.password
        if code == m.AUTH_OK:
            return
        if password is None:
            self._login_failed("the server asks for a password; put it in the backend DSN")
            return
        if code == m.AUTH_CLEARTEXT:
            self.transport.write(m.password(password.encode()))
        elif code == m.AUTH_MD5:
            self.transport.write(m.password(md5_password(target.user, password, data[:4])))
        elif code == m.AUTH_SASL:
            from scramp import ScramClient

            if "SCRAM-SHA-256" not in m.read_sasl_mechanisms(data):
                self._login_failed(f"the server offers no SASL mechanism we speak: {m.read_sasl_mechanisms(data)}")
                return
            self._scram = ScramClient(["SCRAM-SHA-256"], target.user, password)
            self.transport.write(m.sasl_initial_response("SCRAM-SHA-256", self._scram.get_client_first().encode()))
        elif code == m.AUTH_SASL_CONTINUE and self._scram is not None:
            self._scram.set_server_first(data.decode())
            self.transport.write(m.sasl_response(self._scram.get_client_final().encode()))
        elif code == m.AUTH_SASL_FINAL and self._scram is not None:
            self._scram.set_server_final(data.decode())
        else:
            self._login_failed(f"unsupported authentication request {code} from the server")

    # -- relaying --------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        parser = self.parser
        parser.receive_data(data)
        if not self.ready.done():
            try:
                while not self.ready.done() and (event := parser.next_event()) is not NEED_DATA:
                    self._login_event(event)
            except Exception as exc:
                self._login_failed(f"login to the server failed: {exc}")
            if not self.ready.done() or self.closed:
                return
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

    # -- reset after a client ----------------------------------------------------------------
    def reset(self, *, discard: bool) -> None:
        """The client left: roll back and, after a pinned session, ``DISCARD ALL``; then return."""
        self.owner = None
        self.resume_reading()  # reading may be paused for a client who is gone (see Client.release)
        state = self.state
        if state.expect or self.closed or not state.synced:
            # Answers still owed to a client who is gone, or requests sent that no Sync has
            # closed yet: what the server does next is unknown, so the backend is not reusable.
            self.close()
            self.server.pool.forget(self)
            return
        queries = []
        if state.status != "I":
            queries.append("ROLLBACK")
        if discard:
            queries.append("DISCARD ALL")
            state.prepared.clear()
            state.applied = {}
        if not queries:
            self.server.pool.release(self)
            return
        self.server.counters["resets"] += 1
        self.resetting = True
        for sql in queries:
            state.expect.append(("hQ", None))
            self.transport.write(m.query(sql))  # type: ignore[union-attr]

    def _reset_done(self) -> None:
        if self.state.status != "I":
            self.close()
            self.server.pool.forget(self)
            return
        self.server.pool.release(self)

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
        self.server.counters["backends_closed"] += 1
        pool = self.server.pool
        if pool is None:
            return  # the proxy's first login failed: there is no pool yet, and start() says why
        pool.forget(self)
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.backend_lost(by_proxy=was_closed, why=self.close_reason)
