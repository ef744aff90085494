"""One server connection of the proxy: its login, and relaying its answers to the client it serves.

Theory of operation
-------------------
While lent to a client, the backend reads the server's messages and matches them, in order,
against ``expect``: one entry per request the client side forwarded that the server answers
(a Parse is answered by ParseComplete, a Sync or Query by ReadyForQuery, ...). That queue is
what lets the proxy rewrite the conversation without the client noticing:

* ``hidden`` entries are requests the proxy added (re-preparing a statement on this backend,
  ``SET`` for the client's startup parameters, a reset): their answers are swallowed;
* ``fake`` entries are requests the proxy answered itself (a Parse of a statement this backend
  already has, a Close of a proxy-owned statement): their answer is written to the client when
  the entry reaches the head of the queue, so the client sees answers in request order.

After an ErrorResponse in the extended protocol the server skips to the next Sync, so the
entries in between are dropped; a ReadyForQuery closes everything up to its Sync or Query.
When a ReadyForQuery says idle (``I``) and nothing else is expected, the transaction is over and
the backend goes back to the pool, unless its client is pinned.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

from lambdapool.proto import NEED_DATA, Parser, ProtocolError, SSLAnswer
from lambdapool.proto import messages as m
from lambdapool.proxy.auth import md5_password

if TYPE_CHECKING:
    from lambdapool.proxy.client import Client
    from lambdapool.proxy.config import BackendTarget
    from lambdapool.proxy.server import ProxyServer

# Request kind -> message types that complete its answer.
TERMINAL = {
    "P": "1", "hP": "1", "B": "2", "DS": "Tn", "DP": "Tn", "E": "CIs", "C": "3",
    "S": "Z", "Q": "Z", "F": "Z", "hQ": "Z",
}  # fmt: skip
HIDDEN = frozenset(("hP", "hQ"))
FAKE = {"f1": m.parse_complete(), "f3": m.close_complete()}
SIMPLE = frozenset(("Q", "F", "hQ"))  # an error inside these does not end the request


class BackendLoginError(Exception):
    """The server refused the proxy's login (message from the server, no secrets)."""


class Backend(asyncio.Protocol):
    def __init__(self, server: ProxyServer, target: BackendTarget) -> None:
        self.server = server
        self.target = target
        self.parser = Parser(frontend=False)
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[Backend] = server.loop.create_future()
        self.client: Client | None = None
        self.expect: deque[tuple[str, bytes | None]] = deque()
        self.status = "I"
        self.closed = False
        self.prepared: set[bytes] = set()
        self.params: dict[str, str] = {}
        self.applied: dict[str, str] = {}
        self.pid = self.secret = 0
        self.created = time.monotonic()
        self.idle_since = self.created
        self._scram = None
        self.synced = True  # every request sent has been answered up to a ReadyForQuery
        self.resetting = False

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
            self.params[name] = value
        elif kind == "K":
            self.pid, self.secret = m.read_backend_key(body)
        elif kind == "E":
            fields = m.read_error(body)
            self._login_failed(f"{fields.get('C', '?')} {fields.get('M', '')}")
        elif kind == "Z":
            self.status = m.read_ready(body)
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
            except Exception as exc:  # noqa: BLE001 - a broken login is a failed connect
                self._login_failed(f"login to the server failed: {exc}")
            if not self.ready.done() or self.closed:
                return
        self._relay()

    def _relay(self) -> None:
        parser, expect, client = self.parser, self.expect, self.client
        if client is not None:
            client._replay = None  # the server has answered: no replaying elsewhere now
        out: list[bytes] = []
        saw_ready = False
        try:
            messages = parser.events()
        except ProtocolError:
            self.close()
            return
        for msg in messages:
            kind = msg[0]
            if kind == "E" and client is not None and _is_fatal(msg[1]):
                client.server_fatal = True  # relayed below: the client needs no second error
            if not expect:
                if kind == "S":
                    self._note_parameter(msg)
                out.append(msg[1])  # asynchronous: notices, notifications, parameter changes
                continue
            head = expect[0][0]
            if kind == "Z":
                self.status = msg[1][5:6].decode()
                answered = head
                while expect:  # everything up to the Sync/Query this answers
                    answered = expect.popleft()[0]
                    if answered in ("S", "Q", "F", "hQ"):
                        break
                if answered != "hQ":
                    out.append(msg[1])
                saw_ready = True
            elif kind == "E" and head not in SIMPLE and head != "S":
                # Extended protocol: the server now skips everything up to the next Sync.
                while expect and expect[0][0] != "S":
                    entry = expect.popleft()
                    if entry[1] is not None:
                        self.prepared.discard(entry[1])
                out.append(msg[1])
                continue
            elif kind in TERMINAL[head]:
                expect.popleft()
                if head not in HIDDEN:
                    out.append(msg[1])
            else:
                if kind == "S":
                    self._note_parameter(msg)
                    if head == "hQ" and client is not None and client.told_differs(msg[1]):
                        # the SET of the client's startup settings, and the server spells the
                        # value otherwise than the proxy did at login ('iso' -> 'ISO, MDY'):
                        # pass on the server's word, as a server may send it at any time
                        out.append(msg[1])
                        continue
                if head != "hQ":
                    out.append(msg[1])
                continue
            while expect and expect[0][0] in FAKE:
                out.append(FAKE[expect.popleft()[0]])
        if saw_ready and not expect:
            self.synced = True
        if client is not None:
            if out:
                client.write(b"".join(out))
            if saw_ready and not expect and self.status == "I" and not client.pinned:
                client.transaction_done(self)
        elif self.resetting and saw_ready and not expect:
            self.resetting = False
            self._reset_done()

    def _note_parameter(self, msg) -> None:
        try:
            name, value = m.read_parameter_status(msg[1][5:])
        except ProtocolError:
            return
        self.params[name] = value
        if name == "client_encoding" and self.client is not None:
            self.client.set_client_encoding(value)  # the session's SQL is now in this encoding

    # -- reset after a client ----------------------------------------------------------------
    def reset(self, *, discard: bool) -> None:
        """The client left: roll back and, after a pinned session, ``DISCARD ALL``; then return."""
        self.client = None
        self.resume_reading()  # reading may be paused for a client who is gone (see transaction_done)
        if self.expect or self.closed or not self.synced:
            # Answers still owed to a client who is gone, or requests sent that no Sync has
            # closed yet: what the server does next is unknown, so the backend is not reusable.
            self.close()
            self.server.pool.forget(self)
            return
        queries = []
        if self.status != "I":
            queries.append("ROLLBACK")
        if discard:
            queries.append("DISCARD ALL")
            self.prepared.clear()
            self.applied = {}
        if not queries:
            self.server.pool.release(self)
            return
        self.server.counters["resets"] += 1
        self.resetting = True
        for sql in queries:
            self.expect.append(("hQ", None))
            self.transport.write(m.query(sql))  # type: ignore[union-attr]

    def _reset_done(self) -> None:
        if self.status != "I":
            self.close()
            self.server.pool.forget(self)
            return
        self.server.pool.release(self)

    # -- flow control and teardown ---------------------------------------------------------
    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        self.synced = False
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(BackendLoginError(f"the server closed the connection during login ({exc or 'EOF'})"))
            return
        self.server.counters["backends_closed"] += 1
        self.server.pool.forget(self)
        client, self.client = self.client, None
        if client is not None:
            client.backend_lost(by_proxy=was_closed)


def _is_fatal(frame: bytes) -> bool:
    """An ErrorResponse frame whose severity is FATAL or PANIC (the server ends the session)."""
    for field in frame[5:].split(b"\0"):
        if field[:1] in (b"S", b"V"):
            return field[1:] in (b"FATAL", b"PANIC")
    return False
