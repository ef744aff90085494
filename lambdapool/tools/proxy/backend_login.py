"""The proxy's login to a server as a state machine without I/O: bytes in, actions out.

Theory of operation
-------------------
The driver (``backend.py``) sends what :meth:`BackendLogin.start` returns, feeds the
server's bytes to :meth:`~BackendLogin.receive_data` and carries out the actions, in order:
:class:`Send` bytes, :class:`StartTls` (then :meth:`~BackendLogin.tls_started`),
:class:`Failed` (the login is over, with a reason safe to show: no secrets), :class:`Ready`
(ReadyForQuery: ``params``, ``status`` and the backend's key are known; the parser's
remaining bytes are the relay's)::

    SSL_ANSWER --S--> TLS --tls_started()--> AUTH      (sslmode=require)
    SSL_ANSWER --N--> FAILED
    AUTH --R (ok, cleartext, MD5, SASL...)--> AUTH --R ok, S, K, Z--> READY
    any ErrorResponse -> FAILED

A message the phase does not expect (a TLS answer in AUTH, a ReadyForQuery before
AuthenticationOk, a data row) raises :class:`~lambdapool.tools.proto.ProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from lambdapool.tools.proto import NEED_DATA, Message, ProtocolError, SSLAnswer
from lambdapool.tools.proto import messages as m
from lambdapool.tools.proxy.auth import md5_password

if TYPE_CHECKING:
    from scramp import ScramClient

    from lambdapool.tools.proto import Parser
    from lambdapool.tools.proxy.config import BackendTarget


class LoginPhase(Enum):
    SSL_ANSWER = "ssl_answer"  # sent an SSLRequest: the server's one-byte answer
    TLS = "tls"  # the server said S: the driver wraps the socket
    AUTH = "auth"  # sent the startup packet: authentication, then parameters, up to ReadyForQuery
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class StartTls:
    """Wrap the socket in TLS (sslmode=require: encrypt, do not verify), then call ``tls_started()``."""


@dataclass(frozen=True)
class Failed:
    reason: str


@dataclass(frozen=True)
class Ready:
    """Logged in: the login's ``params``, ``status``, ``pid`` and ``secret`` are the backend's."""


LoginAction = Send | StartTls | Failed | Ready
_DURING_AUTH = frozenset("RENv")  # before AuthenticationOk (v: NegotiateProtocolVersion)
_AFTER_AUTH = frozenset("SKENZ")  # after it, up to ReadyForQuery


class BackendLogin:
    """Logs in to a server as ``target``'s user; see the module docstring."""

    def __init__(self, target: BackendTarget, parser: Parser) -> None:
        self.target = target
        self.parser = parser  # a backend parser, the relay's once READY
        self.phase = LoginPhase.AUTH
        self.authenticated = False
        self.params: dict[str, str] = {}  # the server's ParameterStatus values
        self.status = "I"
        self.pid = self.secret = 0
        self._scram: ScramClient | None = None

    def __repr__(self) -> str:
        return f"<BackendLogin {self.phase.value} {self.target.user}@{self.target.database}>"

    def start(self) -> list[LoginAction]:
        """The first bytes to send, once connected."""
        if self.target.tls:
            self.phase = LoginPhase.SSL_ANSWER
            self.parser.expect_ssl_answer()
            return [Send(m.ssl_request())]
        return [self._startup()]

    def tls_started(self) -> list[LoginAction]:
        if self.phase is not LoginPhase.TLS:
            raise ProtocolError(f"TLS started during the login ({self.phase.value})")
        self.phase = LoginPhase.AUTH
        return [self._startup()]

    def receive_data(self, data: bytes) -> list[LoginAction]:
        """Bytes from the server; stops at READY (what follows is the relay's) or FAILED."""
        self.parser.receive_data(data)
        actions: list[LoginAction] = []
        while self.phase is LoginPhase.SSL_ANSWER or self.phase is LoginPhase.AUTH:
            event = self.parser.next_event()
            if event is NEED_DATA:
                break
            actions += self._event(event)
        return actions

    def _startup(self) -> Send:
        return Send(m.startup_message({"user": self.target.user, "database": self.target.database}))

    def _fail(self, reason: str) -> list[LoginAction]:
        self.phase = LoginPhase.FAILED
        return [Failed(reason)]

    def _event(self, event: object) -> list[LoginAction]:
        if isinstance(event, SSLAnswer) and self.phase is LoginPhase.SSL_ANSWER:
            if event.accepted:
                self.phase = LoginPhase.TLS
                return [StartTls()]
            return self._fail(f"the server refused TLS and the backend DSN says sslmode={self.target.sslmode}")
        if not isinstance(event, Message) or self.phase is not LoginPhase.AUTH:
            raise ProtocolError(f"unexpected {type(event).__name__} from the server during the login")
        kind, body = event.type, event.body
        if kind not in (_AFTER_AUTH if self.authenticated else _DURING_AUTH):
            raise ProtocolError(f"unexpected message {kind!r} from the server during the login")
        if kind == "R":
            return self._auth(*m.read_auth(body))
        if kind == "E":
            fields = m.read_error(body)
            return self._fail(f"{fields.get('C', '?')} {fields.get('M', '')}")
        if kind == "S":
            name, value = m.read_parameter_status(body)
            self.params[name] = value
        elif kind == "K":
            self.pid, self.secret = m.read_backend_key(body)
        elif kind == "Z":
            self.status = m.read_ready(body)
            self.phase = LoginPhase.READY
            return [Ready()]
        return []  # notices, and what is only remembered

    def _auth(self, code: int, data: bytes) -> list[LoginAction]:
        target, password = self.target, self.target.password
        if code == m.AUTH_OK:
            self.authenticated = True
            return []
        if password is None:
            return self._fail("the server asks for a password; put it in the backend DSN")
        if code == m.AUTH_CLEARTEXT:
            return [Send(m.password(password.encode()))]
        if code == m.AUTH_MD5:
            return [Send(m.password(md5_password(target.user, password, data[:4])))]
        if code == m.AUTH_SASL:
            from scramp import ScramClient  # only servers that ask for SCRAM need it

            mechanisms = m.read_sasl_mechanisms(data)
            if "SCRAM-SHA-256" not in mechanisms:
                return self._fail(f"the server offers no SASL mechanism we speak: {mechanisms}")
            self._scram = ScramClient(["SCRAM-SHA-256"], target.user, password)
            return [Send(m.sasl_initial_response("SCRAM-SHA-256", self._scram.get_client_first().encode()))]
        if code == m.AUTH_SASL_CONTINUE and self._scram is not None:
            self._scram.set_server_first(data.decode())
            return [Send(m.sasl_response(self._scram.get_client_final().encode()))]
        if code == m.AUTH_SASL_FINAL and self._scram is not None:
            self._scram.set_server_final(data.decode())  # raises unless the server knew the password
            return []
        return self._fail(f"unsupported authentication request {code} from the server")
