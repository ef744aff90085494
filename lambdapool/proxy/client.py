"""One client connection of the proxy: its handshake, auth, and what it sends to a borrowed backend.

Theory of operation
-------------------
A client is *attached* to a backend only while it has a transaction going; between
transactions it holds nothing. Messages that arrive while detached wait in ``pending`` until
the pool lends a backend (see ``pool.py``); a Sync, Flush or Close of a statement with
nothing pending is answered by the proxy itself, so an idle client never borrows.

On the way to the backend every message is matched to the answer it will get (see
``backend.py``) and rewritten where the session would otherwise leak:

* Named prepared statements (Parse with a name) are the client's, not the backend's: the
  proxy records ``name -> (proxy name, query)`` and prepares the query on each backend the
  client uses under a name derived from the query text (``lp_<hash>``), shared by every
  client, re-preparing it before a Bind or Describe on a backend that lacks it. No pin.
* The unnamed statement is re-sent before a Bind that follows a Parse sent in an earlier
  transaction (on another backend).
* Startup parameters (``application_name``, ``TimeZone``, ``-c`` options...) are applied with
  ``SET`` on each backend whose applied settings differ, before the client's messages.
* SQL that needs a session (``pinning.py``) pins the client to its backend; the pin is
  counted with its reasons, and the backend is reset with ``DISCARD ALL`` when the client leaves.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import time
from collections import deque
from typing import TYPE_CHECKING

from lambdapool.proto import NEED_DATA, CancelRequest, GSSENCRequest, Parser, ProtocolError, SSLRequest, StartupMessage
from lambdapool.proto import messages as m
from lambdapool.proto.encodings import canonical_name, decode_sql, python_codec
from lambdapool.proxy import rds_errors as rds
from lambdapool.proxy.auth import AuthFailed, verify_iam_token
from lambdapool.proxy.config import ADMIN_DATABASES

if TYPE_CHECKING:
    from lambdapool.proxy.backend import Backend
    from lambdapool.proxy.server import ProxyServer

PROXY = "lambdapool local proxy"
log = logging.getLogger("lambdapool.proxy")
_NOT_SETTINGS = frozenset(("user", "database", "replication", "options"))
_DEALLOCATE_ALL = re.compile(r"\s*DEALLOCATE\s+(?:PREPARE\s+)?ALL\s*;?\s*", re.I)
_DROPS_ALL_STATEMENTS = re.compile(r"\b(?:DEALLOCATE\s+(?:PREPARE\s+)?ALL|DISCARD\s+ALL)\b", re.I)
READY_IDLE = m.ready_for_query("I")
MAX_PENDING_MESSAGES = 10000


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_.]*", name) else '"' + name.replace('"', '""') + '"'


class Client(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.parser = Parser(frontend=True)
        self.transport: asyncio.Transport | None = None
        self.state = "startup"
        self.closed = False
        self.tls = False
        self.user = self.database = ""
        self.settings: dict[str, str] = {}
        self.statements: dict[bytes, tuple[bytes, bytes]] = {}
        self.unnamed: bytes | None = None
        self.backend: Backend | None = None
        self.pending: list = []
        self.waiting = False
        self.enqueued_at = 0.0
        self.pinned: str | None = None
        self.pin_reasons: set[str] = set()
        self.skip_to_sync = False
        self.pid, self.secret = server.new_key()
        self.last_active = time.monotonic()
        self._unnamed_ok = False
        self._scram_state: object | None = None
        self._held: list[bytes] = []
        # What this client asked of its backend since it was lent, while none of it has reached
        # the backend's socket (held back by injected latency): if the backend dies in that
        # window it is sent to another one. Anything written may have run, so is never resent.
        self._replay: list | None = None
        self.server_fatal = False  # the server sent this client a FATAL (its session is ending)
        self._admin_sql = ""
        self._admin_result = (b"", b"")
        self._delayed: deque[tuple[float, Backend, bytes]] = deque()
        # The session's client_encoding, followed from the startup packet and the server's
        # ParameterStatus (set_client_encoding): SQL is relayed as bytes and decoded with
        # ``codec`` only to look for pinning statements. ``encoding_key`` is the encoding's
        # name when it is not the server's default (it keys prepared statements).
        self.codec = "utf-8"
        self.encoding_key = b""
        self._told: dict[str, str] = {}  # the ParameterStatus values this client was sent at login

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.client_connected(self)
        if self.server.hanging:
            self.state = "hung"

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.state == "hung":
            self._held.append(data)
            return
        self.parser.receive_data(data)
        try:
            if self.state == "ready":
                self._ready_messages()
            else:
                self._handshake()
        except ProtocolError as exc:
            self.fatal("08P01", f"{PROXY}: invalid message from the client: {exc}")
        except Exception:  # noqa: BLE001 - a bug here must end this client only, not the proxy
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
        if not self.closed:
            self.transport.write(m.error_response(code, message, severity="FATAL"))  # type: ignore[union-attr]
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
        if self.waiting:
            self.waiting = False
            self.server.pool.cancel(self)
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.reset(discard=self.pinned is not None)
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
            elif self.state == "admin":
                self._admin_message(event)
            elif self.state == "login" and event.type == "X":  # gave up while its login waited
                self.abort()
            elif event.type == "p" and self.state in ("sasl1", "sasl2", "password"):
                self._auth_message(event.body)
            else:
                raise ProtocolError(f"unexpected message {event.type!r} during authentication")
        if self.state == "ready":
            self._ready_messages()

    async def _start_tls(self) -> None:
        try:
            self.transport = await self.server.loop.start_tls(
                self.transport, self, self.server.ssl_context, server_side=True  # type: ignore[arg-type]
            )
        except Exception:  # noqa: BLE001 - any failed handshake (OSError, SSLError) ends this client
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
            self.fatal(code, f"{text.format(limit=limit)} ({PROXY}: too many client connections "
                             f"(max_client_connections={limit}))")  # fmt: skip
            return
        rate = self.server.rate
        if rate is not None and not rate.take(self.server.loop.time()):
            self.server.counters["rate_refusals"] += 1
            code, text = rds.CONNECTION_RATE
            self.fatal(code, f"{text.format(rate=f'{rate.rate:g}')} ({PROXY}: more than "
                             f"max_connection_rate={rate.rate:g} new connections a second)")  # fmt: skip
            return
        if self.database not in ADMIN_DATABASES and self.database != settings.backend.database:
            self.fatal("3D000", f'{PROXY}: database "{self.database}" is not served here; '
                                f'use "{settings.backend.database}" (or "lambdapool" for the admin console)')  # fmt: skip
            return
        self.settings = self._wanted_settings(params)
        if settings.auth == "scram":
            self.state = "sasl1"
            self.write(m.auth_sasl(["SCRAM-SHA-256"]))
        elif settings.auth == "iam":
            self.state = "password"
            self.write(m.auth_request(m.AUTH_CLEARTEXT))
        else:
            self._auth_ok()

    def _wanted_settings(self, params: dict[str, str]) -> dict[str, str]:
        wanted = {k.lower(): v for k, v in params.items() if k not in _NOT_SETTINGS}
        words = shlex.split(params.get("options", "").replace("\\ ", "\0"))
        for i, word in enumerate(words):
            word = word.replace("\0", " ")
            option = word[2:] if word.startswith("-c") and len(word) > 2 else (words[i + 1] if word == "-c" and i + 1 < len(words) else "")
            if option.startswith("--"):
                option = option[2:]
            key, sep, value = option.replace("\0", " ").partition("=")
            if sep:
                wanted[key.replace("-", "_").lower()] = value
        if "client_encoding" in wanted:
            # the server's own spelling ('utf-8' -> 'UTF8'): what it would report, and no SET
            # on each backend when it is the default anyway
            wanted["client_encoding"] = canonical_name(wanted["client_encoding"]) or wanted["client_encoding"]
        baseline = self.server.baseline_lower
        return {k: v for k, v in wanted.items() if baseline.get(k) != v}

    def told_differs(self, frame: bytes) -> bool:
        """``frame`` (a ParameterStatus) says otherwise than the client was told; now it knows."""
        try:
            name, value = m.read_parameter_status(frame[5:])
        except ProtocolError:
            return False
        key = name.lower()
        if key not in self._told or self._told[key] == value:
            return False
        self._told[key] = value
        return True

    def set_client_encoding(self, name: str) -> None:
        """The session's client_encoding is now ``name`` (at login, or the server said so)."""
        self.codec = python_codec(name)
        default = self.server.baseline_lower.get("client_encoding", "")
        self.encoding_key = b"" if canonical_name(name) == canonical_name(default) else name.encode("latin-1", "replace")

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
                final = verifier.finish(self.user, self._scram_state, body)  # type: ignore[union-attr]
                self.write(m.auth_request(m.AUTH_SASL_FINAL, final))
            else:
                settings = self.server.settings
                if self.server.take_iam_throttle():  # fault injection (throttle_iam), not a bad token
                    code, text = rds.IAM_COMPETING
                    self.fatal(code, f"{text} ({PROXY}: throttle_iam fault injection)")
                    return
                verify_iam_token(m.read_password(body), hosts=self.server.iam_hosts, port=self.server.port,
                                 user=self.user, credentials=settings.iam_credentials, region=settings.region)  # fmt: skip
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
            self.waiting = True
            self.server.pool.acquire(self)
            return
        self._logged_in()

    def _logged_in(self) -> None:
        out = [m.auth_ok()]
        reported = dict(self.server.baseline)
        names = {k.lower(): k for k in reported}
        for key, value in self.settings.items():
            if key in names:
                reported[names[key]] = value
        out += [m.parameter_status(k, v) for k, v in reported.items()]
        self.set_client_encoding(reported.get("client_encoding", "UTF8"))
        self._told = {k.lower(): v for k, v in reported.items()}
        out += [m.backend_key_data(self.pid, self.secret), READY_IDLE]
        self.write(b"".join(out))
        self.state = "admin" if self.database in ADMIN_DATABASES else "ready"

    def _admin_message(self, msg) -> None:
        """The admin console: simple queries, and just enough extended protocol for drivers."""
        kind, body = msg.type, msg.body
        if kind == "X":
            self.abort()
        elif kind == "Q":
            head, rest = self.server.admin_answer(decode_sql(m.read_query_bytes(body), self.codec))
            self.write(head + rest + READY_IDLE)
        elif kind == "P":
            self._admin_sql = decode_sql(m.read_parse_bytes(body)[2], self.codec)
            self.write(m.parse_complete())
        elif kind == "B":
            self._admin_result = self.server.admin_answer(self._admin_sql)
            self.write(m.frame("2"))
        elif kind == "D":
            head = self.server.admin_answer(self._admin_sql)[0] if m.read_target(body)[0] == "P" else b""
            self.write(head or m.frame("n"))
        elif kind == "E":
            self.write(self._admin_result[1])
        elif kind == "S":
            self.write(READY_IDLE)

    # -- transactions ----------------------------------------------------------------------
    def _ready_messages(self) -> None:
        batch = []
        for msg in self.parser.events():
            kind = msg[0]
            if kind == "X":
                if batch:
                    self._forward(batch)
                self.abort()
                return
            if self.backend is not None:
                batch.append(msg)
            elif self.pending:
                self.pending.append(msg)
            elif self.skip_to_sync:
                if kind == "S":
                    self.skip_to_sync = False
                    self.write(READY_IDLE)
            elif kind == "S":
                self.write(READY_IDLE)
            elif kind in "Hdcf":
                pass  # Flush with nothing owed; copy data outside a COPY (the server ignores it too)
            elif kind == "p":
                raise ProtocolError("unexpected password message outside authentication")
            elif kind == "C" and self._close_statement(msg[1][5:]):
                self.write(m.close_complete())
            else:
                self.pending.append(msg)
        if batch:
            self._forward(batch)
        if self.pending and not self.waiting and self.backend is None and not self.closed:
            self.waiting = True
            self.server.pool.acquire(self)
        if self.waiting and len(self.pending) > MAX_PENDING_MESSAGES:
            self.pause_reading()  # a client streaming while it waits is held back, not buffered

    def _close_statement(self, body: bytes) -> bool:
        kind, name = m.read_target(body)
        if kind == "S" and name:
            self.statements.pop(name, None)
            return True
        return False

    def attach(self, backend: Backend) -> None:
        """The pool lends ``backend``: apply our settings, then send what waited."""
        self.waiting = False
        if self.state == "login":  # borrow_on_connect: the login needed a backend, and has one
            self.server.counters["borrows"] += 1
            # returned on the next turn of the loop: the pool may be handing backends out in a
            # loop of its own (which this would re-enter, once per waiting login)
            self.server.loop.call_soon(self.server.pool.release, backend)
            self._logged_in()
            return
        self.backend = backend
        backend.client = self
        self._unnamed_ok = False
        self._replay = []
        self.server.counters["borrows"] += 1
        if self.settings != backend.applied:
            self._apply_settings(backend)
        pending, self.pending = self.pending, []
        if len(pending) > MAX_PENDING_MESSAGES:
            self.resume_reading()
        try:
            self._forward(pending)
        except ProtocolError as exc:  # the backend is left mid-conversation: reset() closes it
            self.fatal("08P01", f"{PROXY}: invalid message from the client: {exc}")

    def _apply_settings(self, backend: Backend) -> None:
        sql = [f"RESET {quote_ident(k)}" for k in backend.applied if k not in self.settings]
        sql += [f"SET {quote_ident(k)} = {quote_literal(v)}" for k, v in self.settings.items() if backend.applied.get(k) != v]
        backend.applied = dict(self.settings)
        backend.expect.append(("hQ", None))
        # The server reads this text in the backend's client_encoding as it is now (the
        # previous client's); values are nearly always ASCII, where every encoding agrees.
        codec = python_codec(backend.params.get("client_encoding", "UTF8"))
        self._send(backend, m.frame("Q", "; ".join(sql).encode(codec, "replace") + b"\0"))

    def _forward(self, msgs: list) -> None:
        backend = self.backend
        assert backend is not None
        if self._replay is not None:
            self._replay.extend(msgs)
        expect = backend.expect
        statements = self.statements
        out: list[bytes] = []
        for kind, data in msgs:
            if kind == "B":
                portal, stmt, rest = m.read_bind(data[5:])
                if stmt:
                    entry = statements.get(stmt)
                    if entry is not None:
                        data = m.frame("B", portal + b"\0" + self._ensure(entry, backend, out) + b"\0" + data[5 + rest :])
                else:
                    self._ensure_unnamed(backend, out)
                expect.append(("B", None))
            elif kind == "E":
                expect.append(("E", None))
            elif kind == "S":
                expect.append(("S", None))
            elif kind == "P":
                name, rest, raw = m.read_parse_bytes(data[5:])
                if self.pinned is None:
                    self._check_pin(decode_sql(raw, self.codec), len(raw), backend)
                if name:
                    proxy_name = self.server.statement_name(rest, self.encoding_key)
                    statements[name] = (proxy_name, rest)
                    if proxy_name in backend.prepared:
                        self._fake("f1", expect)
                        continue
                    backend.prepared.add(proxy_name)
                    data = m.parse_raw(proxy_name, rest)
                    expect.append(("P", proxy_name))
                else:
                    self.unnamed = rest
                    self._unnamed_ok = True
                    expect.append(("P", None))
            elif kind == "D":
                target, name = m.read_target(data[5:])
                if target == "S":
                    if name:
                        entry = statements.get(name)
                        if entry is not None:
                            data = m.frame("D", b"S" + self._ensure(entry, backend, out) + b"\0")
                    else:
                        self._ensure_unnamed(backend, out)
                    expect.append(("DS", None))
                else:
                    expect.append(("DP", None))
            elif kind == "Q":
                raw = m.read_query_bytes(data[5:])
                sql = decode_sql(raw, self.codec)
                if _DEALLOCATE_ALL.fullmatch(sql):
                    # psycopg sends this after a rollback once it has prepared statements. It
                    # empties this backend (its statements are re-prepared on demand), and, as
                    # RDS Proxy does (psycopg/psycopg#1105), it pins the session.
                    statements.clear()
                    backend.prepared.clear()
                if self.pinned is None:
                    self._check_pin(sql, len(raw), backend)
                self._unnamed_ok = False
                expect.append(("Q", None))
            elif kind == "C":
                if self._close_statement(data[5:]):
                    self._fake("f3", expect)
                    continue
                expect.append(("C", None))
            elif kind == "F":
                expect.append(("F", None))
            out.append(data)
        if out:
            self._send(backend, b"".join(out))

    def _fake(self, kind: str, expect: deque) -> None:
        """Answer a request ourselves, in order: now if nothing is owed, else when its turn comes."""
        if expect:
            expect.append((kind, None))
        else:
            self._replay = None  # the client has an answer: this attachment cannot be replayed
            self.write(m.parse_complete() if kind == "f1" else m.close_complete())

    def _ensure(self, entry: tuple[bytes, bytes], backend: Backend, out: list[bytes]) -> bytes:
        proxy_name, rest = entry
        if proxy_name not in backend.prepared:
            backend.prepared.add(proxy_name)
            out.append(m.parse_raw(proxy_name, rest))
            backend.expect.append(("hP", proxy_name))
            self.server.counters["reprepared"] += 1
        return proxy_name

    def _ensure_unnamed(self, backend: Backend, out: list[bytes]) -> None:
        if not self._unnamed_ok and self.unnamed is not None:
            out.append(m.parse_raw(b"", self.unnamed))
            backend.expect.append(("hP", None))
            self._unnamed_ok = True

    def _check_pin(self, sql: str, size: int, backend: Backend) -> None:
        reasons = self.server.pin_reasons_cached(sql, backend.status != "I", size)
        if not reasons:
            return
        counts = self.server.pin_counts
        for reason in reasons:
            if reason not in self.pin_reasons:
                self.pin_reasons.add(reason)
                counts[reason] = counts.get(reason, 0) + 1
        if self.pinned is None:
            self.pinned = reasons[0]
            self.server.counters["pinned_sessions"] += 1
        if _DROPS_ALL_STATEMENTS.search(sql):
            backend.prepared.clear()

    def _send(self, backend: Backend, data: bytes) -> None:
        latency = self.server.latency
        if not latency and not self._delayed:
            self._replay = None  # on the wire: it may run, so it must never be sent twice
            backend.write(data)
            return
        loop = self.server.loop
        self._delayed.append((loop.time() + latency, backend, data))
        if len(self._delayed) == 1:
            loop.call_at(self._delayed[0][0], self._send_delayed)

    def _send_delayed(self) -> None:
        loop = self.server.loop
        while self._delayed and self._delayed[0][0] <= loop.time():
            _, backend, data = self._delayed.popleft()
            if backend is self.backend:
                self._replay = None  # on the wire: it may run, so it must never be sent twice
            backend.write(data)
        if self._delayed:
            loop.call_at(self._delayed[0][0], self._send_delayed)

    def transaction_done(self, backend: Backend) -> None:
        """The backend said idle with nothing owed: give it back."""
        self.backend = None
        backend.client = None
        # A big answer may have filled our socket (pause_writing paused the backend's reading);
        # our resume_writing can come after this detach, when it no longer reaches the backend,
        # which the next client would then wait on forever. Detached, it must read again.
        backend.resume_reading()
        self.server.counters["transactions"] += 1
        self.server.pool.release(backend)

    # -- failures --------------------------------------------------------------------------
    def borrow_timed_out(self, *, busy: int, cap: int) -> None:
        timeout = self.server.settings.borrow_timeout
        code, text = rds.BORROW_TIMEOUT
        message = (f"{text} ({PROXY}: timed out after {float(timeout)}s waiting to borrow a database connection "
                   f"(all {cap} backends busy; raise max_backends or borrow_timeout))")  # fmt: skip
        if self.state == "login":
            self.waiting = False
            self.fatal(code, message)
            return
        self._fail_pending(m.error_response(
            code, message,
            hint=f"{busy} of {cap} backends were in use and {len(self.server.pool.waiters)} other clients waiting",
        ))  # fmt: skip

    def backend_unavailable(self, reason: str) -> None:
        message = f"{PROXY}: could not open a database connection: {reason}"
        if self.state == "login":
            self.waiting = False
            self.fatal("08001", message)
            return
        self._fail_pending(m.error_response("08001", message))

    def _fail_pending(self, error: bytes) -> None:
        """Answer every request that waited for a backend with ``error``, as the server would."""
        self.waiting = False
        pending, self.pending = self.pending, []
        if len(pending) > MAX_PENDING_MESSAGES:
            self.resume_reading()
        out, unsynced = [], False
        for msg in pending:
            if msg[0] in ("Q", "S", "F"):
                if msg[0] == "Q" or unsynced:
                    out.append(error)
                out.append(READY_IDLE)
                unsynced = False
            else:
                unsynced = True
        if unsynced:
            out.append(error)
            self.skip_to_sync = True
        self.write(b"".join(out))

    def backend_lost(self, *, by_proxy: bool) -> None:
        """The backend died. Requests that never reached it go to another backend; once a
        request was written it may have run, so, like a server crash, the session ends."""
        self.backend = None
        replay, self._replay = self._replay, None
        if replay and not self.closed:
            self.server.counters["replayed"] += 1
            self.pending = replay + self.pending
            self.waiting = True
            self.server.pool.acquire(self)
            return
        if self.server_fatal:  # the server's own FATAL already reached the client: just close
            self.abort()
            return
        why = "the proxy closed it (fault injection or lifetime)" if by_proxy else "the server closed it"
        self.fatal("08006", f"{PROXY}: lost the database connection in the middle of a transaction ({why})")
