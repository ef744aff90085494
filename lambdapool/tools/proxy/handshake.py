"""A client's login as a state machine without I/O: bytes in, actions out (the session's shape, before it).

Theory of operation
-------------------
The driver (``client.py``) feeds a :class:`ClientHandshake` the client's bytes
(:meth:`~ClientHandshake.receive_data`) and what happened outside (TLS is up, a
``borrow_on_connect`` backend came or did not) and carries out the actions it returns, in
order: :class:`Send` bytes, :class:`StartTls`, :class:`Cancel` a running query,
:class:`Borrow` a backend for the login, :class:`LoggedIn` (hand the parser to the session),
:class:`Close` (with a FATAL frame, or empty to abort).

Each :class:`Phase` accepts a few events; anything else raises
:class:`~lambdapool.tools.proto.ProtocolError` (the driver answers 08P01)::

    STARTUP --SSLRequest--> TLS --tls_started()--> STARTUP
    STARTUP --StartupMessage--> SASL_INITIAL --p--> SASL_FINAL --p--+
                            \\-> PASSWORD (an IAM token) --p---------+
                            \\-> (trust) ---------------------------+-> [BORROWING] -> READY | ADMIN
    any refusal, CancelRequest, Terminate -> CLOSED

PASSWORD takes an RDS IAM token (``auth="iam"``) or a Google access token (``"cloud-sql-iam"``).
The refusals are RDS Proxy's (TLS required, client cap, connection rate, IAM throttled) and
Cloud SQL's for its IAM logins (``cloud_sql_errors``); what they count and check lives in the
proxy, seen through :class:`LoginContext`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from lambdapool.tools.proto import (
    NEED_DATA,
    CancelRequest,
    GSSENCRequest,
    Message,
    ProtocolError,
    SSLRequest,
    StartupMessage,
)
from lambdapool.tools.proto import messages as m
from lambdapool.tools.proto.encodings import python_codec
from lambdapool.tools.proxy import cloud_sql_errors as cloud_sql
from lambdapool.tools.proxy import rds_errors as rds
from lambdapool.tools.proxy.admin import READY_IDLE, Console
from lambdapool.tools.proxy.auth import AuthFailed, verify_cloud_sql_token, verify_iam_token
from lambdapool.tools.proxy.config import ADMIN_DATABASES, IAM_MODES
from lambdapool.tools.proxy.rds_errors import PROXY
from lambdapool.tools.proxy.startup_settings import wanted_settings

if TYPE_CHECKING:
    from lambdapool.tools.proto import Parser
    from lambdapool.tools.proxy.auth import ScramExchange, ScramVerifier
    from lambdapool.tools.proxy.config import ProxySettings
    from lambdapool.tools.proxy.shared import SharedState


class Phase(Enum):
    STARTUP = "startup"  # an SSLRequest, GSSENCRequest, CancelRequest or StartupMessage
    TLS = "tls"  # answered "S": the driver wraps the socket, then calls tls_started()
    SASL_INITIAL = "sasl_initial"  # offered SCRAM-SHA-256: a SASLInitialResponse
    SASL_FINAL = "sasl_final"  # sent server-first: the client-final message
    PASSWORD = "password"  # asked for a cleartext password (an IAM token)
    BORROWING = "borrowing"  # borrow_on_connect: the login waits for a backend
    ADMIN = "admin"  # logged in to the admin console: its queries are answered here
    READY = "ready"  # logged in: the session has the parser now
    CLOSED = "closed"  # refused, cancelled or gone


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class StartTls:
    """``S`` was sent: wrap the socket in TLS, then call :meth:`ClientHandshake.tls_started`."""


@dataclass(frozen=True)
class Cancel:
    """A CancelRequest: cancel what the client with this key runs now (then Close)."""

    process_id: int
    secret_key: int


@dataclass(frozen=True)
class Borrow:
    """``borrow_on_connect``: borrow a backend; then ``borrowed()``, ``borrow_timed_out()`` or ``borrow_failed()``."""


@dataclass(frozen=True)
class LoggedIn:
    """The client is in (AuthenticationOk... was sent): ``settings`` follow it, it was told ``reported``."""

    settings: dict[str, str]
    reported: dict[str, str]


@dataclass(frozen=True)
class Close:
    """Send ``last_words`` (a FATAL ErrorResponse) and close; empty: abort."""

    last_words: bytes = b""


HandshakeAction = Send | StartTls | Cancel | Borrow | LoggedIn | Close
_PAUSED = (Phase.TLS, Phase.READY, Phase.CLOSED)  # phases that read no further events
_AUTH = (Phase.SASL_INITIAL, Phase.SASL_FINAL, Phase.PASSWORD)


class LoginContext(Protocol):
    """What a login needs of the proxy (``ProxyServer`` is one): settings, counters, the checks."""

    settings: ProxySettings
    shared: SharedState  # the server's baseline parameters
    counters: dict[str, int]
    scram: ScramVerifier | None
    iam_hosts: set[str]  # the names an IAM token may be made for
    port: int

    @property
    def tls_offered(self) -> bool: ...

    def client_count(self) -> int: ...

    def take_connection(self) -> bool:
        """Within max_connection_rate? (takes a token if so)"""

    def take_iam_throttle(self) -> bool:
        """Refuse this IAM login as "too many competing requests"? (the throttle_iam fault)"""

    def admin_answer(self, sql: str) -> tuple[bytes, bytes]: ...


class ClientHandshake:
    """One client's login, from its first byte to READY (or ADMIN); see the module docstring."""

    def __init__(self, ctx: LoginContext, parser: Parser, pid: int, secret: int) -> None:
        self.ctx = ctx
        self.parser = parser  # a frontend parser, handed to the session at READY
        self.pid, self.secret = pid, secret  # this client's BackendKeyData
        self.phase = Phase.STARTUP
        self.tls = False
        self.user = self.database = ""
        self.settings: dict[str, str] = {}  # startup settings that differ from the server's
        self._scram: ScramExchange | None = None
        self._console: Console | None = None
        self._codec = "utf-8"

    def __repr__(self) -> str:
        return f"<ClientHandshake {self.phase.value} user={self.user!r}>"

    # -- events ----------------------------------------------------------------------------
    def receive_data(self, data: bytes = b"") -> list[HandshakeAction]:
        """Bytes from the client (and whatever the parser already held)."""
        if data:
            self.parser.receive_data(data)
        actions: list[HandshakeAction] = []
        while self.phase not in _PAUSED:
            event = self.parser.next_event()
            if event is NEED_DATA:
                break
            self._event(event, actions)
        return actions

    def tls_started(self) -> list[HandshakeAction]:
        """The socket is wrapped in TLS: read on (what the client sent meanwhile too)."""
        self._require(Phase.TLS, "TLS started")
        self.tls = True
        self.phase = Phase.STARTUP
        return self.receive_data()

    def borrowed(self) -> list[HandshakeAction]:
        """``borrow_on_connect``: the login has its backend (the driver gives it back)."""
        self._require(Phase.BORROWING, "a backend was lent")
        self.ctx.counters["borrows"] += 1
        return self._logged_in()

    def borrow_timed_out(self, timeout: float, cap: int, why: str | None) -> list[HandshakeAction]:
        self._require(Phase.BORROWING, "a borrow timed out")
        return self._fatal(rds.BORROW_TIMEOUT[0], rds.borrow_timeout_message(timeout, cap, why))

    def borrow_failed(self, reason: str) -> list[HandshakeAction]:
        self._require(Phase.BORROWING, "a borrow failed")
        return self._fatal("08001", f"{PROXY}: could not open a database connection: {reason}")

    # -- one event at a time ---------------------------------------------------------------
    def _event(self, event: object, actions: list[HandshakeAction]) -> None:
        phase = self.phase
        if isinstance(event, (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage)):
            self._require(Phase.STARTUP, type(event).__name__)
            if isinstance(event, SSLRequest) and self.ctx.tls_offered and not self.tls:
                self.phase = Phase.TLS
                actions += [Send(b"S"), StartTls()]
            elif isinstance(event, (SSLRequest, GSSENCRequest)):
                actions.append(Send(b"N"))
            elif isinstance(event, CancelRequest):
                self.phase = Phase.CLOSED
                actions += [Cancel(event.process_id, event.secret_key), Close()]
            else:
                actions += self._startup(event.params)
        elif not isinstance(event, Message):  # an SSL answer: only a server sends one
            raise ProtocolError(f"unexpected {type(event).__name__} from a client")
        elif self._console is not None:  # set with the ADMIN phase
            reply = self._console.reply(event.type, event.body, self._codec)
            if reply is None:
                self.phase = Phase.CLOSED
                actions.append(Close())
            elif reply:
                actions.append(Send(reply))
        elif phase is Phase.BORROWING and event.type == "X":  # gave up while its login waited
            self.phase = Phase.CLOSED
            actions.append(Close())
        elif event.type == "p" and phase in _AUTH:
            actions += self._auth(event.body)
        else:
            raise ProtocolError(f"unexpected message {event.type!r} during authentication")

    def _require(self, phase: Phase, event: str) -> None:
        if self.phase is not phase:
            raise ProtocolError(f"unexpected {event} during the login ({self.phase.value})")

    def _fatal(self, code: str, message: str) -> list[HandshakeAction]:
        self.phase = Phase.CLOSED
        return [Close(m.error_response(code, message, severity="FATAL"))]

    def _refuse(self, counter: str, code: str, message: str) -> list[HandshakeAction]:
        self.ctx.counters[counter] += 1
        return self._fatal(code, message)

    def _startup(self, params: dict[str, str]) -> list[HandshakeAction]:
        ctx = self.ctx
        settings = ctx.settings
        self.user = params["user"]
        self.database = params.get("database") or self.user
        if settings.auth in IAM_MODES and not self.tls and ctx.tls_offered:
            # RDS Proxy and Cloud SQL take IAM tokens over TLS only (without tls=True the proxy
            # has no certificate to offer, so it lets plaintext tokens through for tests)
            hint = f"({PROXY}: auth={settings.auth!r} takes tokens over TLS only; connect with sslmode=require)"
            if settings.auth == "cloud-sql-iam":
                code, text = cloud_sql.NO_ENCRYPTION
                where = {"host": ctx.settings.host, "user": self.user, "database": self.database}
                return self._refuse("auth_failures", code, f"{text.format(**where)} {hint}")
            code, text = rds.IAM_NEEDS_TLS
            return self._refuse("auth_failures", code, f"{text} {hint}")
        if settings.require_tls and not self.tls:
            code, text = rds.REQUIRES_TLS
            hint = f"({PROXY}: TLS is required (require_tls=True); connect with sslmode=require)"
            return self._refuse("auth_failures", code, f"{text} {hint}")
        limit = settings.max_client_connections
        if limit is not None and ctx.client_count() > limit:
            code, text = rds.CLIENT_CAP
            hint = f"({PROXY}: too many client connections (max_client_connections={limit}))"
            return self._refuse("client_cap_refusals", code, f"{text.format(limit=limit)} {hint}")
        if not ctx.take_connection():
            code, text = rds.CONNECTION_RATE
            rate = f"{settings.max_connection_rate:g}"
            hint = f"({PROXY}: more than max_connection_rate={rate} new connections a second)"
            return self._refuse("rate_refusals", code, f"{text.format(rate=rate)} {hint}")
        served = settings.backend.database
        if self.database not in ADMIN_DATABASES and self.database != served:
            return self._fatal(
                "3D000",
                f'{PROXY}: database "{self.database}" is not served here; '
                f'use "{served}" (or "lambdapool" for the admin console)',
            )
        self.settings = wanted_settings(params, ctx.shared.baseline_lower)
        if settings.auth == "scram":
            self.phase = Phase.SASL_INITIAL
            return [Send(m.auth_sasl(["SCRAM-SHA-256"]))]
        if settings.auth in IAM_MODES:
            self.phase = Phase.PASSWORD
            return [Send(m.auth_request(m.AUTH_CLEARTEXT))]
        return self._auth_ok()

    def _auth(self, body: bytes) -> list[HandshakeAction]:
        ctx = self.ctx
        try:
            if self.phase is Phase.PASSWORD and ctx.settings.auth == "cloud-sql-iam":
                return self._cloud_sql_login(m.read_password(body))
            if self.phase is Phase.PASSWORD:
                if ctx.take_iam_throttle():  # fault injection (throttle_iam), not a bad token
                    code, text = rds.IAM_COMPETING
                    return self._fatal(code, f"{text} ({PROXY}: throttle_iam fault injection)")
                verify_iam_token(
                    m.read_password(body),
                    hosts=ctx.iam_hosts,
                    port=ctx.port,
                    user=self.user,
                    credentials=ctx.settings.iam_credentials,
                    region=ctx.settings.region,
                )
                return self._auth_ok()
            verifier = ctx.scram
            if verifier is None:
                raise AuthFailed("SCRAM is not set up on this proxy")
            if self.phase is Phase.SASL_INITIAL:
                mechanism, first = m.read_sasl_initial(body)
                if mechanism != "SCRAM-SHA-256":
                    raise AuthFailed(f"unsupported SASL mechanism {mechanism!r}")
                self._scram, server_first = verifier.start(self.user, first)
                self.phase = Phase.SASL_FINAL
                return [Send(m.auth_request(m.AUTH_SASL_CONTINUE, server_first))]
            if self._scram is None:  # set on the way into SASL_FINAL
                raise ProtocolError("a SCRAM client-final message before its client-first")
            final = verifier.finish(self.user, self._scram, body)
        except AuthFailed as exc:
            return self._refuse("auth_failures", "28P01", f"{PROXY}: {exc}")
        return [Send(m.auth_request(m.AUTH_SASL_FINAL, final)), *self._auth_ok()]

    def _cloud_sql_login(self, token: str) -> list[HandshakeAction]:
        issuer = self.ctx.settings.metadata
        try:
            if issuer is None:  # validate() requires it
                raise AuthFailed("no metadata server is set up on this proxy")
            verify_cloud_sql_token(token, user=self.user, issuer=issuer)
        except AuthFailed as exc:
            code, text = cloud_sql.IAM_AUTH_FAILED
            return self._refuse("auth_failures", code, f"{text.format(user=self.user)} ({PROXY}: {exc})")
        return self._auth_ok()

    def _auth_ok(self) -> list[HandshakeAction]:
        if self.ctx.settings.borrow_on_connect and self.database not in ADMIN_DATABASES:
            # RDS Proxy borrows a database connection to finish a login: with the pool full,
            # the login waits (up to borrow_timeout) and may fail with its borrow timeout.
            self.phase = Phase.BORROWING
            return [Borrow()]
        return self._logged_in()

    def _logged_in(self) -> list[HandshakeAction]:
        reported = dict(self.ctx.shared.baseline)
        names = {k.lower(): k for k in reported}
        for key, value in self.settings.items():
            if key in names:
                reported[names[key]] = value
        out = [m.auth_ok(), *(m.parameter_status(k, v) for k, v in reported.items())]
        out += [m.backend_key_data(self.pid, self.secret), READY_IDLE]
        if self.database in ADMIN_DATABASES:
            self.phase = Phase.ADMIN
            self._console = Console(self.ctx.admin_answer)
            self._codec = python_codec(reported.get("client_encoding", "UTF8"))
        else:
            self.phase = Phase.READY
        return [Send(b"".join(out)), LoggedIn(self.settings, reported)]
