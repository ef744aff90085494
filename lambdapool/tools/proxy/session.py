"""One logged-in client's relay as a state machine without I/O: events in, actions out (as h11 does).

Theory of operation
-------------------
The driver (``client.py``) feeds a :class:`Session` what happens: bytes from the client
(:meth:`~Session.receive_client`), a backend lent to it (:meth:`~Session.attached`), the
server's messages (:meth:`~Session.receive_backend`), bytes reaching the server's socket
(:meth:`~Session.backend_wrote`), the backend lost, a borrow timed out or failed, the client
gone. Each call returns a list of actions, ``(kind, payload)`` tuples the driver performs in
order: :data:`TO_CLIENT` / :data:`TO_BACKEND` bytes, :data:`BORROW` a backend (or
:data:`CANCEL_BORROW`), :data:`RELEASE` it after a transaction, :data:`RESET` or
:data:`RESET_DISCARD` it when the client leaves, :data:`CLOSE` the client (payload: a FATAL
frame to send first, or empty to abort), pause or resume reading the client. Tuples of bytes
rather than action objects: a relay makes a few per transaction.

The session is in one of four :class:`SessionState` s: ``IDLE`` (holds nothing),
``WAITING`` (asked for a backend), ``ATTACHED`` (one is lent), ``CLOSED``. An event the state
does not accept (a backend lent to a session that did not ask, a backend speaking to a
detached one) raises :class:`~lambdapool.tools.proto.ProtocolError`: the driver or pool is out of step.

A client is *attached* to a backend only while it has a transaction going; between
transactions it holds nothing. Messages that arrive while detached wait in ``pending`` until
the pool lends a backend; a Sync, Flush or Close of a statement with nothing pending is
answered by the session itself, so an idle client never borrows. When a ReadyForQuery says
idle (``I``) and nothing else is owed, the backend is released, unless the session is pinned.

On the way to the backend every message is matched to the answer it will get (its
:class:`~lambdapool.tools.proxy.backend_state.BackendState` ``expect`` queue) and rewritten where
the session would otherwise leak:

* Named prepared statements (Parse with a name) are the client's, not the backend's: the
  session records ``name -> (proxy name, query)`` and prepares the query on each backend the
  client uses under a name derived from the query text (``lp_<hash>``, :class:`SharedState`),
  shared by every client, re-preparing it before a Bind or Describe on a backend that lacks
  it. No pin.
* The unnamed statement is re-sent before a Bind that follows a Parse sent in an earlier
  transaction (on another backend).
* Startup parameters are applied with ``SET`` on each backend whose applied settings differ,
  before the client's messages (``startup_settings.py``).
* SQL that needs a session (``pinning.py``) pins the client to its backend; the pin is
  counted with its reasons, and the backend is reset with ``DISCARD ALL`` when the client leaves.

What the client asked of a backend since it was lent is kept for *replay* while none of it
has reached the backend's socket (held back by injected latency): if the backend dies in that
window it goes to another one. Anything written may have run, so is never sent twice.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Final

from lambdapool.tools.proto import Frame, Parser, ProtocolError
from lambdapool.tools.proto import messages as m
from lambdapool.tools.proto.encodings import canonical_name, python_codec
from lambdapool.tools.proxy import rds_errors as rds
from lambdapool.tools.proxy.backend_state import ENCODING, FAKE, FATAL, SYNCED, Expect
from lambdapool.tools.proxy.pinning import MAX_UNPINNED_STATEMENT
from lambdapool.tools.proxy.rds_errors import PROXY
from lambdapool.tools.proxy.shared import NO_FACTS, SqlFacts
from lambdapool.tools.proxy.startup_settings import apply_sql

if TYPE_CHECKING:
    from lambdapool.tools.proxy.backend_state import BackendState
    from lambdapool.tools.proxy.shared import SharedState

# Action kinds; the payload is bytes (empty where there is nothing to carry).
TO_CLIENT: Final = "to_client"
TO_BACKEND: Final = "to_backend"  # to the attached backend
BORROW: Final = "borrow"  # ask the pool for a backend; ends in attached(), borrow_timed_out() or borrow_failed()
CANCEL_BORROW: Final = "cancel_borrow"  # leave the pool's queue
RELEASE: Final = "release"  # the transaction is over: the backend goes back to the pool
RESET: Final = "reset"  # the client left while attached: roll back and return the backend
RESET_DISCARD: Final = "reset_discard"  # the same after a pinned session: DISCARD ALL too
CLOSE: Final = "close"  # send the payload (a FATAL ErrorResponse; empty: none) and close the client
PAUSE_READING: Final = "pause_reading"  # stop reading the client (it streams while waiting)
RESUME_READING: Final = "resume_reading"

Action = tuple[str, bytes]
NOTHING: Final = b""

READY_IDLE: Final = m.ready_for_query("I")
CLOSE_COMPLETE: Final = m.close_complete()
MAX_PENDING_MESSAGES = 10000


class SessionState(Enum):
    """Where a session is; the events each state accepts are listed with the transitions."""

    IDLE = "idle"  # holds no backend and waits for none (between transactions)
    WAITING = "waiting"  # asked the pool for a backend (BORROW): attached(), borrow_timed_out(), borrow_failed()
    ATTACHED = "attached"  # a backend is lent (a transaction, or pinned): receive_backend(), backend_lost()
    CLOSED = "closed"  # the client is gone: every event is ignored, or refused


IDLE, WAITING, ATTACHED, CLOSED = SessionState  # module globals: read on the hot path

# What the session owes a backend for each client message it forwards unchanged: built once
# (the relay appends one per message; a new tuple each time, or an Enum's class attribute,
# costs more than the rest of the bookkeeping).
_OWE_PARSE, _OWE_BIND, _OWE_DESCRIBE_S, _OWE_DESCRIBE_P, _OWE_EXECUTE, _OWE_SYNC, _OWE_QUERY, _OWE_CLOSE, _OWE_CALL = (
    (kind, None)
    for kind in (
        Expect.PARSE,
        Expect.BIND,
        Expect.DESCRIBE_STATEMENT,
        Expect.DESCRIBE_PORTAL,
        Expect.EXECUTE,
        Expect.SYNC,
        Expect.QUERY,
        Expect.CLOSE,
        Expect.FUNCTION_CALL,
    )
)
_PARSE: Final = Expect.PARSE


class Session:
    """The relay state of one logged-in client; see the module docstring."""

    def __init__(self, shared: SharedState, parser: Parser | None = None) -> None:
        self.shared = shared
        # the client's parser, past its startup packet (the driver's handshake used it until login)
        self.parser = parser if parser is not None else Parser(frontend=True, startup=False)
        self.settings: dict[str, str] = {}  # startup settings that differ from the server's
        self.statements: dict[bytes, tuple[bytes, bytes]] = {}  # client name -> (proxy name, Parse body after the name)
        self.unnamed: bytes | None = None  # the last unnamed Parse's body after the name
        self.unnamed_ok = False  # the attached backend has it
        self.state = IDLE
        self.backend: BackendState | None = None  # lent to us: set exactly while ATTACHED
        self.pending: list[Frame] = []
        self.pinned: str | None = None  # the first reason
        self.pin_reasons: set[str] = set()
        self.skip_to_sync = False  # a borrow failed mid-batch: drop messages up to the client's Sync
        self.replay: list[Frame] | None = None
        self.server_fatal = False  # the server sent this client a FATAL (its session is ending)
        # The session's client_encoding, followed from the startup packet and the server's
        # ParameterStatus: SQL is relayed as bytes and decoded with ``codec`` only to look for
        # pinning statements. ``encoding_key`` is the encoding's name when it is not the
        # server's default (it keys prepared statements).
        self.codec = "utf-8"
        self.encoding_key = b""
        self.told: dict[str, str] = {}  # the ParameterStatus values this client was sent at login

    def __repr__(self) -> str:
        return f"<Session {self.state.value} pinned={self.pinned} pending={len(self.pending)}>"

    @property
    def waiting(self) -> bool:
        return self.state is WAITING

    @property
    def closed(self) -> bool:
        return self.state is CLOSED

    def _require(self, state: SessionState, event: str) -> None:
        """Refuse an event the session's state does not accept (a driver or pool out of step)."""
        if self.state is not state:
            raise self._wrong_state(event, state)

    def _wrong_state(self, event: str, state: SessionState) -> ProtocolError:
        return ProtocolError(f"session: {event} while {self.state.value} (only while {state.value})")

    # -- login -----------------------------------------------------------------------------
    def logged_in(self, settings: dict[str, str], reported: dict[str, str]) -> None:
        """The client is in: ``settings`` follow it to each backend; it was told ``reported``."""
        self.settings = settings
        self.set_client_encoding(reported.get("client_encoding", "UTF8"))
        self.told = {k.lower(): v for k, v in reported.items()}

    def set_client_encoding(self, name: str) -> None:
        """The session's client_encoding is now ``name`` (at login, or the server said so)."""
        self.codec = python_codec(name)
        default = self.shared.baseline_lower.get("client_encoding", "")
        self.encoding_key = (
            b"" if canonical_name(name) == canonical_name(default) else name.encode("latin-1", "replace")
        )

    @property
    def idle(self) -> bool:
        """Between transactions (or pinned): what idle_client_timeout may close."""
        state = self.state
        return state is IDLE or state is CLOSED or (state is ATTACHED and self.pinned is not None)

    # -- the client's side -----------------------------------------------------------------
    def receive_client(self, data: bytes = NOTHING) -> list[Action]:
        """Bytes from the client (and whatever its parser already held)."""
        actions: list[Action] = []
        if self.state is CLOSED:
            return actions
        if data:
            self.parser.receive_data(data)
        batch: list[Frame] = []
        pending = self.pending
        try:
            for msg in self.parser.frames():
                kind = msg[0]
                if kind == "X":
                    if batch:
                        self._forward(batch, actions)
                    actions.append((CLOSE, NOTHING))
                    return actions
                if self.backend is not None:
                    batch.append(msg)
                elif pending:
                    pending.append(msg)
                elif self.skip_to_sync:
                    if kind == "S":
                        self.skip_to_sync = False
                        actions.append((TO_CLIENT, READY_IDLE))
                elif kind == "S":
                    actions.append((TO_CLIENT, READY_IDLE))
                elif kind in "Hdcf":
                    pass  # Flush with nothing owed; copy data outside a COPY (the server ignores it too)
                elif kind == "p":
                    raise ProtocolError("unexpected password message outside authentication")
                elif kind == "C" and self._close_statement(msg[1]):
                    actions.append((TO_CLIENT, CLOSE_COMPLETE))
                else:
                    pending.append(msg)
            if batch:
                self._forward(batch, actions)
        except ProtocolError as exc:
            actions.append(_fatal("08P01", f"{PROXY}: invalid message from the client: {exc}"))
            return actions
        borrow = bool(pending) and self.state is IDLE
        if borrow:
            self.state = WAITING
        if self.state is WAITING and len(pending) > MAX_PENDING_MESSAGES:
            # a client streaming while it waits is held back, not buffered (before BORROW: the
            # pool may lend at once, and attached() resumes)
            actions.append((PAUSE_READING, NOTHING))
        if borrow:
            actions.append((BORROW, NOTHING))  # last: the driver may get attached() inside it
        return actions

    def _close_statement(self, frame: bytes) -> bool:
        kind, name = m.read_target(frame, 5)
        if kind == "S" and name:
            self.statements.pop(name, None)
            return True
        return False

    # -- the pool's side -------------------------------------------------------------------
    def attached(self, backend: BackendState) -> list[Action]:
        """The pool lends ``backend``: apply our settings, then send what waited."""
        if self.state is not WAITING:  # inline: this runs once a transaction
            raise self._wrong_state("a backend was lent", WAITING)
        actions: list[Action] = []
        self.state = ATTACHED
        self.backend = backend
        self.unnamed_ok = False
        self.shared.counters["borrows"] += 1
        if self.settings != backend.applied:
            self._apply_settings(backend, actions)
        pending, self.pending = self.pending, []
        self.replay = pending  # what this backend was asked, kept until it reaches the socket
        if len(pending) > MAX_PENDING_MESSAGES:
            actions.append((RESUME_READING, NOTHING))
        try:
            self._forward(pending, actions)
        except ProtocolError as exc:  # the backend is left mid-conversation: its reset closes it
            actions.append(_fatal("08P01", f"{PROXY}: invalid message from the client: {exc}"))
        return actions

    def borrow_timed_out(
        self, *, busy: int, cap: int, waiting: int, timeout: float, why: str | None = None
    ) -> list[Action]:
        """No backend within the borrow timeout: what waited gets RDS Proxy's error; the session goes on.

        ``why``: the pool was failing to open backends (the database away, no server of the role).
        """
        self._require(WAITING, "a borrow timed out")
        code, _ = rds.BORROW_TIMEOUT
        hint = f"{busy} of {cap} backends were in use and {waiting} other clients waiting"
        return self._fail_pending(m.error_response(code, rds.borrow_timeout_message(timeout, cap, why), hint=hint))

    def borrow_failed(self, reason: str) -> list[Action]:
        """The pool could not open a backend for us (the database refused the login...)."""
        self._require(WAITING, "a borrow failed")
        return self._fail_pending(m.error_response("08001", f"{PROXY}: could not open a database connection: {reason}"))

    def _fail_pending(self, error: bytes) -> list[Action]:
        """Answer every request that waited for a backend with ``error``, as the server would."""
        actions: list[Action] = []
        self.state = IDLE
        pending, self.pending = self.pending, []
        if len(pending) > MAX_PENDING_MESSAGES:
            actions.append((RESUME_READING, NOTHING))
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
        if out:
            actions.append((TO_CLIENT, b"".join(out)))
        return actions

    def client_gone(self) -> list[Action]:
        """The client's connection ended (or the driver closed it): give back what it held."""
        actions: list[Action] = []
        state, self.state = self.state, CLOSED
        if state is CLOSED:
            return actions
        if state is WAITING:
            actions.append((CANCEL_BORROW, NOTHING))
        if self.backend is not None:
            self.backend = None
            actions.append((RESET if self.pinned is None else RESET_DISCARD, NOTHING))
        return actions

    # -- the backend's side ----------------------------------------------------------------
    def receive_backend(self, msgs: list[Frame]) -> list[Action]:
        """Messages from the attached backend."""
        backend = self.backend
        if backend is None:
            raise ProtocolError(f"session: a backend spoke while {self.state.value} (only while attached)")
        self.replay = None  # the server has answered: no replaying elsewhere now
        out: list[bytes] = []
        flags = backend.relay(msgs, out, self.told)
        if flags & FATAL:
            self.server_fatal = True
        if flags & ENCODING:
            self.set_client_encoding(backend.params["client_encoding"])  # the session's SQL is now in this encoding
        actions: list[Action] = [(TO_CLIENT, b"".join(out))] if out else []
        if flags & SYNCED and backend.status == "I" and self.pinned is None:
            self.backend = None
            self.state = IDLE
            self.shared.counters["transactions"] += 1
            actions.append((RELEASE, NOTHING))
        return actions

    def backend_wrote(self) -> None:
        """What was sent to the backend reached its socket: it may run, so it must never be sent twice."""
        self.replay = None

    def backend_lost(self, *, by_proxy: bool, why: str | None = None) -> list[Action]:
        """The backend died. Requests that never reached it go to another backend; once a
        request was written it may have run, so, like a server crash, the session ends.

        This is also what a client in a transaction (or a pinned session) sees in a failover.
        AWS documents that RDS Proxy keeps *idle* client connections through a failover, but not
        what a client whose transaction was on the old writer gets; its transaction (or session
        state) is gone, so the proxy ends that client's connection with SQLSTATE 08006
        connection_failure (FATAL), what a driver reports for a connection lost mid-query and
        retries on a new connection, rather than 57P01 admin_shutdown, which would say an
        operator stopped the server. ``why``: the proxy's reason when it closed the backend.
        """
        if self.state is CLOSED:
            return []  # the client went first: its driver has nothing left to do
        self._require(ATTACHED, "the backend was lost")
        self.backend = None
        self.state = IDLE
        replay, self.replay = self.replay, None
        if replay:
            self.shared.counters["replayed"] += 1
            self.pending = replay + self.pending
            self.state = WAITING
            return [(BORROW, NOTHING)]
        if self.server_fatal:  # the server's own FATAL already reached the client: just close
            return [(CLOSE, NOTHING)]
        if why is None:
            why = "the proxy closed it (fault injection or lifetime)" if by_proxy else "the server closed it"
        return [_fatal("08006", f"{PROXY}: lost the database connection in the middle of a transaction ({why})")]

    # -- rewriting what goes to the backend ------------------------------------------------
    def _apply_settings(self, backend: BackendState, actions: list[Action]) -> None:
        sql = apply_sql(backend.applied, self.settings)
        backend.applied = dict(self.settings)
        backend.owe_hidden_query()
        # The server reads this text in the backend's client_encoding as it is now (the
        # previous client's); values are nearly always ASCII, where every encoding agrees.
        codec = python_codec(backend.params.get("client_encoding", "UTF8"))
        actions.append((TO_BACKEND, m.frame("Q", sql.encode(codec, "replace") + b"\0")))

    def _forward(self, msgs: list[Frame], actions: list[Action]) -> None:
        backend = self.backend
        if backend is None:
            raise ProtocolError(f"session: forwarding while {self.state.value} (only while attached)")
        replay = self.replay
        if replay is not None and replay is not msgs:
            replay.extend(msgs)
        owe = backend.owe  # bound once: the entries a batch is owed, one C call each
        statements = self.statements
        out: list[bytes] = []
        for kind, data in msgs:
            if kind == "B":
                portal, stmt, params_at = m.read_bind(data, 5)
                if stmt:
                    entry = statements.get(stmt)
                    if entry is not None:
                        statement = self._ensure(entry, backend, out)
                        data = m.frame("B", portal + b"\0" + statement + b"\0" + data[params_at:])
                else:
                    self._ensure_unnamed(backend, out)
                owe(_OWE_BIND)
            elif kind == "E":
                owe(_OWE_EXECUTE)
            elif kind == "S":
                owe(_OWE_SYNC)
            elif kind == "P":
                name, rest, raw = m.read_parse_bytes(data, 5)
                self._inspect(raw, backend)
                if name:
                    proxy_name = self.shared.statement_name(rest, self.encoding_key)
                    statements[name] = (proxy_name, rest)
                    if proxy_name in backend.prepared:
                        self._fake(Expect.FAKE_PARSE, backend, actions)
                        continue
                    backend.prepared.add(proxy_name)
                    data = m.parse_raw(proxy_name, rest)
                    owe((_PARSE, proxy_name))
                else:
                    self.unnamed = rest
                    self.unnamed_ok = True
                    owe(_OWE_PARSE)
            elif kind == "D":
                target, name = m.read_target(data, 5)
                if target == "S":
                    if name:
                        entry = statements.get(name)
                        if entry is not None:
                            data = m.frame("D", b"S" + self._ensure(entry, backend, out) + b"\0")
                    else:
                        self._ensure_unnamed(backend, out)
                    owe(_OWE_DESCRIBE_S)
                else:
                    owe(_OWE_DESCRIBE_P)
            elif kind == "Q":
                if self._inspect(m.read_query_bytes(data, 5), backend).deallocate_all:
                    # psycopg sends this after a rollback once it has prepared statements: it
                    # forgets them, so the session does too (and, as RDS Proxy does, pins:
                    # psycopg/psycopg#1105)
                    statements.clear()
                self.unnamed_ok = False
                owe(_OWE_QUERY)
            elif kind == "C":
                if self._close_statement(data):
                    self._fake(Expect.FAKE_CLOSE, backend, actions)
                    continue
                owe(_OWE_CLOSE)
            elif kind == "F":
                owe(_OWE_CALL)
            out.append(data)
        if out:
            actions.append((TO_BACKEND, b"".join(out)))

    def _fake(self, kind: Expect, backend: BackendState, actions: list[Action]) -> None:
        """Answer a request ourselves, in order: now if nothing is owed, else when its turn comes."""
        if backend.owes:
            backend.owe((kind, None))
        else:
            self.replay = None  # the client has an answer: this attachment cannot be replayed
            actions.append((TO_CLIENT, FAKE[kind]))

    def _ensure(self, entry: tuple[bytes, bytes], backend: BackendState, out: list[bytes]) -> bytes:
        proxy_name, rest = entry
        if proxy_name not in backend.prepared:
            backend.prepared.add(proxy_name)
            out.append(m.parse_raw(proxy_name, rest))
            backend.owe((Expect.HIDDEN_PARSE, proxy_name))
            self.shared.counters["reprepared"] += 1
        return proxy_name

    def _ensure_unnamed(self, backend: BackendState, out: list[bytes]) -> None:
        if not self.unnamed_ok and self.unnamed is not None:
            out.append(m.parse_raw(b"", self.unnamed))
            backend.owe((Expect.HIDDEN_PARSE, None))
            self.unnamed_ok = True

    def _inspect(self, raw: bytes, backend: BackendState) -> SqlFacts:
        """Pin the session if SQL ``raw`` needs one; forget the backend's statements if it drops them."""
        if self.pinned is not None and len(raw) > MAX_UNPINNED_STATEMENT:
            return NO_FACTS  # a pinned bulk load's statements are not read (nor cached) one by one
        facts = self.shared.sql_facts(raw, self.codec, backend.status != "I")
        if facts.drops_statements:
            backend.prepared.clear()  # the server forgets them: re-prepared on demand
        if self.pinned is None and facts.pin_reasons:
            counts = self.shared.pin_counts
            for reason in facts.pin_reasons:
                if reason not in self.pin_reasons:
                    self.pin_reasons.add(reason)
                    counts[reason] = counts.get(reason, 0) + 1
            self.pinned = facts.pin_reasons[0]
            self.shared.counters["pinned_sessions"] += 1
        return facts


def _fatal(code: str, message: str) -> Action:
    return CLOSE, m.error_response(code, message, severity="FATAL")
