"""One client connection of the proxy, as an asyncio driver: its handshake and auth, then its session.

Theory of operation
-------------------
Until login the client is handled here: TLS, the startup packet and the refusals RDS Proxy
makes (TLS required, client cap, connection rate), SCRAM or IAM auth, the admin console
(``admin.Console``). Once logged in, everything the client and its backends say is fed to its
:class:`~lambdapool.tools.proxy.session.Session`, which does no I/O, and the actions it returns are
carried out here (:meth:`Client._run`): writes to either socket, borrowing from the pool
(which sees the client as ``interfaces.Borrower``), releasing or resetting a backend, closing.

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

from lambdapool.tools.proto import (
    NEED_DATA,
    CancelRequest,
    Frame,
    GSSENCRequest,
    Message,
    Parser,
    ProtocolError,
    SSLRequest,
    StartupMessage,
)
from lambdapool.tools.proto import messages as m
from lambdapool.tools.proxy import rds_errors as rds
from lambdapool.tools.proxy.admin import Console
from lambdapool.tools.proxy.auth import AuthFailed, verify_iam_token
from lambdapool.tools.proxy.config import ADMIN_DATABASES
from lambdapool.tools.proxy.rds_errors import PROXY
from lambdapool.tools.proxy.session import (
    BORROW,
    CANCEL_BORROW,
    CLOSE,
    PAUSE_READING,
    READY_IDLE,
    RELEASE,
    RESET,
    RESET_DISCARD,
    RESUME_READING,
    TO_BACKEND,
    TO_CLIENT,
    Action,
    Session,
)
from lambdapool.tools.proxy.startup_settings import quote_ident, quote_literal, wanted_settings

if TYPE_CHECKING:
    from lambdapool.tools.proxy.auth import ScramExchange
    from lambdapool.tools.proxy.backend import Backend
    from lambdapool.tools.proxy.server import ProxyServer

__all__ = [
    "PROXY",
    "READY_IDLE",
    "Client",
    "quote_ident",
    "quote_literal",
]  # the last two: moved, still importable here
log = logging.getLogger("lambdapool.tools.proxy")


class Client(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.parser = Parser(frontend=True)
        self.session = Session(server.shared, self.parser)  # takes over the parser at login
        self.transport: asyncio.Transport | None = None
        self.state = "startup"  # hung, startup, tls, sasl1, sasl2, password, login, admin, ready
        self.closed = False
        self.tls = False
        self.user = self.database = ""
        self.settings: dict[str, str] = {}  # startup settings that differ from the server's
        self.backend: Backend | None = None
        self.enqueued_at = 0.0
        self.pid, self.secret = server.new_key()
        self.last_active = time.monotonic()
        self._login_waiting = False  # borrow_on_connect: the login waits in the pool's queue
        self._scram_state: ScramExchange | None = None
        self._held: list[bytes] = []
        self._console: Console | None = None
        self._delayed: deque[tuple[float, Backend, bytes]] = deque()

    def __repr__(self) -> str:
        return f"<Client pid={self.pid} user={self.user!r} state={self.state} {self.session!r}>"

    @property
    def idle(self) -> bool:
        """Holds no backend for a transaction and waits for none (idle_client_timeout may close it)."""
        return not self._login_waiting and self.session.idle

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.client_connected(self)
        if self.server.hanging:
            self.state = "hung"

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        try:
            if self.state == "ready":
                self._run(self.session.receive_client(data))
            elif self.state == "hung":
                self._held.append(data)
            else:
                self.parser.receive_data(data)
                self._handshake()
        except ProtocolError as exc:
            self.fatal("08P01", f"{PROXY}: invalid message from the client: {exc}")
        except Exception:
            log.exception("lambdapool local proxy: internal error while handling a client; closing it")
            self.fatal("XX000", f"{PROXY}: internal error (see the proxy's log)")

    def unhang(self) -> None:
        """``hang_on_connect`` was turned off: handle what this client sent meanwhile."""
        if self.state == "hung" and not self.closed:
            self.state = "startup"
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
            self.server.pool.cancel(self)
        self._run(self.session.client_gone())
        self.server.client_gone(self)

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

    # -- startup and auth --------------------------------------------------------------------
    def _handshake(self) -> None:
        while not self.closed and self.state not in ("ready", "tls"):
            event = self.parser.next_event()
            if event is NEED_DATA:
                return
            if isinstance(event, SSLRequest):
                if self.server.ssl_context is not None and not self.tls:
                    self.transport.write(b"S")  # type: ignore[union-attr]
                    self.state = "tls"
                    self.server.loop.create_task(self._start_tls())
                    return
                self.transport.write(b"N")  # type: ignore[union-attr]
            elif isinstance(event, GSSENCRequest):
                self.transport.write(b"N")  # type: ignore[union-attr]
            elif isinstance(event, CancelRequest):
                self.server.cancel(event.process_id, event.secret_key)
                self.abort()
            elif isinstance(event, StartupMessage):
                self._startup(event.params)
            elif not isinstance(event, Message):  # an SSL answer: only a server sends one
                raise ProtocolError(f"unexpected {type(event).__name__} from a client")
            elif self._console is not None:
                self._admin_message(event)
            elif self.state == "login" and event.type == "X":  # gave up while its login waited
                self.abort()
            elif event.type == "p" and self.state in ("sasl1", "sasl2", "password"):
                self._auth_message(event.body)
            else:
                raise ProtocolError(f"unexpected message {event.type!r} during authentication")
        if self.state == "ready":
            self._run(self.session.receive_client())

    async def _start_tls(self) -> None:
        try:
            transport, context = self.transport, self.server.ssl_context
            assert transport is not None and context is not None  # TLS is offered only with a context
            self.transport = await self.server.loop.start_tls(transport, self, context, server_side=True)
        except Exception:
            self.abort()
            return
        self.tls = True
        self.state = "startup"
        if self.parser.buffered:
            self._handshake()

    def _startup(self, params: dict[str, str]) -> None:
        settings = self.server.settings
        self.user = params["user"]
        self.database = params.get("database") or self.user
        if settings.auth == "iam" and not self.tls and self.server.ssl_context is not None:
            # RDS Proxy takes IAM tokens over TLS only (without tls=True the proxy has no
            # certificate to offer, so it lets plaintext tokens through for tests)
            self.server.counters["auth_failures"] += 1
            code, text = rds.IAM_NEEDS_TLS
            self.fatal(code, f'{text} ({PROXY}: auth="iam" takes tokens over TLS only; connect with sslmode=require)')
            return
        if settings.require_tls and not self.tls:
            self.server.counters["auth_failures"] += 1
            code, text = rds.REQUIRES_TLS
            self.fatal(code, f"{text} ({PROXY}: TLS is required (require_tls=True); connect with sslmode=require)")
            return
        limit = settings.max_client_connections
        if limit is not None and len(self.server.clients) > limit:
            self.server.counters["client_cap_refusals"] += 1
            code, text = rds.CLIENT_CAP
            self.fatal(
                code,
                f"{text.format(limit=limit)} ({PROXY}: too many client connections (max_client_connections={limit}))",
            )
            return
        rate = self.server.rate
        if rate is not None and not rate.take(self.server.loop.time()):
            self.server.counters["rate_refusals"] += 1
            code, text = rds.CONNECTION_RATE
            self.fatal(
                code,
                f"{text.format(rate=f'{rate.rate:g}')} ({PROXY}: more than "
                f"max_connection_rate={rate.rate:g} new connections a second)",
            )
            return
        if self.database not in ADMIN_DATABASES and self.database != settings.backend.database:
            self.fatal(
                "3D000",
                f'{PROXY}: database "{self.database}" is not served here; '
                f'use "{settings.backend.database}" (or "lambdapool" for the admin console)',
            )
            return
        self.settings = wanted_settings(params, self.server.shared.baseline_lower)
        if settings.auth == "scram":
            self.state = "sasl1"
            self.write(m.auth_sasl(["SCRAM-SHA-256"]))
        elif settings.auth == "iam":
            self.state = "password"
            self.write(m.auth_request(m.AUTH_CLEARTEXT))
        else:
            self._auth_ok()

    def _auth_message(self, body: bytes) -> None:
        verifier = self.server.scram
        try:
            if self.state == "sasl1":
                mechanism, first = m.read_sasl_initial(body)
                if mechanism != "SCRAM-SHA-256":
                    raise AuthFailed(f"unsupported SASL mechanism {mechanism!r}")
                self._scram_state, server_first = verifier.start(self.user, first)  # type: ignore[union-attr]
                self.state = "sasl2"
                self.write(m.auth_request(m.AUTH_SASL_CONTINUE, server_first))
                return
            if self.state == "sasl2":
                assert self._scram_state is not None
                final = verifier.finish(self.user, self._scram_state, body)  # type: ignore[union-attr]
                self.write(m.auth_request(m.AUTH_SASL_FINAL, final))
            else:
                settings = self.server.settings
                if self.server.take_iam_throttle():  # fault injection (throttle_iam), not a bad token
                    code, text = rds.IAM_COMPETING
                    self.fatal(code, f"{text} ({PROXY}: throttle_iam fault injection)")
                    return
                verify_iam_token(
                    m.read_password(body),
                    hosts=self.server.iam_hosts,
                    port=self.server.port,
                    user=self.user,
                    credentials=settings.iam_credentials,
                    region=settings.region,
                )
        except AuthFailed as exc:
            self.server.counters["auth_failures"] += 1
            self.fatal("28P01", f"{PROXY}: {exc}")
            return
        self._auth_ok()

    def _auth_ok(self) -> None:
        if self.server.settings.borrow_on_connect and self.database not in ADMIN_DATABASES:
            # RDS Proxy borrows a database connection to finish a login: with the pool full,
            # the login waits (up to borrow_timeout) and may fail with its borrow timeout.
            self.state = "login"
            self._login_waiting = True
            self.server.pool.acquire(self)
            return
        self._logged_in()

    def _logged_in(self) -> None:
        out = [m.auth_ok()]
        reported = dict(self.server.shared.baseline)
        names = {k.lower(): k for k in reported}
        for key, value in self.settings.items():
            if key in names:
                reported[names[key]] = value
        out += [m.parameter_status(k, v) for k, v in reported.items()]
        self.session.logged_in(self.settings, reported)
        out += [m.backend_key_data(self.pid, self.secret), READY_IDLE]
        self.write(b"".join(out))
        if self.database in ADMIN_DATABASES:
            self.state = "admin"
            self._console = Console(self.server.admin_answer)
        else:
            self.state = "ready"

    def _admin_message(self, msg: Message) -> None:
        assert self._console is not None
        reply = self._console.reply(msg.type, msg.body, self.session.codec)
        if reply is None:
            self.abort()
        elif reply:
            self.write(reply)

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
                self.server.pool.acquire(self)
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
                self.server.pool.cancel(self)
            elif kind == PAUSE_READING:
                self.pause_reading()
            elif kind == RESUME_READING:
                self.resume_reading()
            else:
                raise AssertionError(f"unknown session action {kind!r}")

    def attach(self, backend: Backend) -> None:
        """The pool lends ``backend``."""
        if self.state == "login":  # borrow_on_connect: the login needed a backend, and has one
            self._login_waiting = False
            self.server.counters["borrows"] += 1
            # returned on the next turn of the loop: the pool may be handing backends out in a
            # loop of its own (which this would re-enter, once per waiting login)
            self.server.loop.call_soon(self.server.pool.release, backend)
            self._logged_in()
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
        self.server.pool.release(backend)

    def _send(self, data: bytes) -> None:
        backend = self.backend
        assert backend is not None
        latency = self.server.latency
        if not latency and not self._delayed:
            backend.write(data)
            self.session.backend_wrote()
            return
        loop = self.server.loop
        self._delayed.append((loop.time() + latency, backend, data))
        if len(self._delayed) == 1:
            loop.call_at(self._delayed[0][0], self._send_delayed)

    def _send_delayed(self) -> None:
        loop = self.server.loop
        while self._delayed and self._delayed[0][0] <= loop.time():
            _, backend, data = self._delayed.popleft()
            backend.write(data)
            if backend is self.backend:
                self.session.backend_wrote()
        if self._delayed:
            loop.call_at(self._delayed[0][0], self._send_delayed)

    # -- failures --------------------------------------------------------------------------
    def borrow_timed_out(self, *, busy: int, cap: int, waiting: int, why: str | None = None) -> None:
        timeout = self.server.settings.borrow_timeout
        if self.state == "login":
            self._login_waiting = False
            self.fatal(rds.BORROW_TIMEOUT[0], rds.borrow_timeout_message(timeout, cap, why))
            return
        self._run(self.session.borrow_timed_out(busy=busy, cap=cap, waiting=waiting, timeout=timeout, why=why))

    def backend_unavailable(self, reason: str) -> None:
        if self.state == "login":
            self._login_waiting = False
            self.fatal("08001", f"{PROXY}: could not open a database connection: {reason}")
            return
        self._run(self.session.borrow_failed(reason))

    def backend_lost(self, *, by_proxy: bool, why: str | None = None) -> None:
        self.backend = None
        self._run(self.session.backend_lost(by_proxy=by_proxy, why=why))
