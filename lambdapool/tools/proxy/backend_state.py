"""One backend's side of the conversation, without I/O: what it owes, what it has, and matching its answers.

Theory of operation
-------------------
Every request sent to the backend that the server answers gets an entry in ``expect``, in
order (a Parse is answered by ParseComplete, a Sync or Query by ReadyForQuery, ...). Matching
the server's messages against that queue is what lets the proxy rewrite the conversation
without the client noticing:

* hidden entries (:attr:`Expect.HIDDEN_PARSE`, :attr:`Expect.HIDDEN_QUERY`) are requests the
  proxy added (re-preparing a statement on this backend, ``SET`` for the client's startup
  parameters, a reset): their answers are swallowed;
* fake entries (:attr:`Expect.FAKE_PARSE`, :attr:`Expect.FAKE_CLOSE`) are requests the proxy
  answered itself (a Parse of a statement this backend already has, a Close of a proxy-owned
  statement): their answer is given to the client when the entry reaches the head of the
  queue, in request order.

Entries are added only through this class: ``owe(entry)`` for each request the session
forwards (the queue's own bound ``append``: a C call, as the relay makes one per message),
:meth:`~BackendState.owe_hidden_query` and :meth:`~BackendState.owe_query` for the proxy's own.

After an ErrorResponse in the extended protocol the server skips to the next Sync, so the
entries in between are dropped; a ReadyForQuery closes everything up to its Sync or Query.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Final

from lambdapool.tools.proto import Frame, ProtocolError
from lambdapool.tools.proto import messages as m


class Expect(str, Enum):
    """What a request sent to a backend is owed: the kind of answer ``expect`` waits for.

    A ``str`` enum (the values are the request's message type, or a short tag for the proxy's
    own) so the relay's table lookups and comparisons stay at C speed on the hot path.
    """

    PARSE = "P"
    BIND = "B"
    DESCRIBE_STATEMENT = "DS"
    DESCRIBE_PORTAL = "DP"
    EXECUTE = "E"
    CLOSE = "C"
    SYNC = "S"
    QUERY = "Q"
    FUNCTION_CALL = "F"
    HIDDEN_PARSE = "hP"  # a Parse the proxy added (re-preparing): its answer is swallowed
    HIDDEN_QUERY = "hQ"  # a Query the proxy added (startup settings, a reset): swallowed
    FAKE_PARSE = "f1"  # a Parse the proxy answered itself: ParseComplete, in turn
    FAKE_CLOSE = "f3"  # a Close the proxy answered itself: CloseComplete, in turn


_E = Expect  # short, for the tables below
# Request kind -> message types that complete its answer.
TERMINAL: Final[dict[str, str]] = {
    _E.PARSE: "1",
    _E.HIDDEN_PARSE: "1",
    _E.BIND: "2",
    _E.DESCRIBE_STATEMENT: "Tn",
    _E.DESCRIBE_PORTAL: "Tn",
    _E.EXECUTE: "CIs",
    _E.CLOSE: "3",
}
TERMINAL.update(dict.fromkeys((_E.SYNC, _E.QUERY, _E.FUNCTION_CALL, _E.HIDDEN_QUERY), "Z"))
HIDDEN: Final = frozenset((_E.HIDDEN_PARSE, _E.HIDDEN_QUERY))
FAKE: Final[dict[str, bytes]] = {_E.FAKE_PARSE: m.parse_complete(), _E.FAKE_CLOSE: m.close_complete()}
SIMPLE: Final = frozenset(
    (_E.QUERY, _E.FUNCTION_CALL, _E.HIDDEN_QUERY)
)  # an error inside these does not end the request
SYNC_POINTS: Final = frozenset(
    (_E.SYNC, _E.QUERY, _E.FUNCTION_CALL, _E.HIDDEN_QUERY)
)  # requests a ReadyForQuery answers

# Bits returned by BackendState.relay
SYNCED: Final = 1  # a ReadyForQuery arrived and nothing else is owed
FATAL: Final = 2  # the server sent a FATAL/PANIC error (its session is ending)
ENCODING: Final = 4  # the server reported a new client_encoding (in ``params``)

# ErrorResponse field C (SQLSTATE) 25006 read_only_sql_transaction: a write on a read-only
# server (a demoted writer), or in a READ ONLY transaction; the pool tells them apart by what
# the server reports (``Pool._still_fits``). Severity comes first, so the field follows a NUL.
READ_ONLY_SQLSTATE: Final = b"\0C25006\0"
ROLE_PARAMETERS: Final = frozenset(("in_hot_standby", "default_transaction_read_only"))
SYNC: Final = Expect.SYNC  # module globals: the relay compares against them per message
HIDDEN_QUERY: Final = Expect.HIDDEN_QUERY

Expectation = tuple[Expect, "bytes | None"]  # (request kind, proxy statement name it prepares)


class BackendState:
    """What one server connection owes and holds; the drivers (``backend.py``) own the socket."""

    __slots__ = ("applied", "expect", "owe", "params", "prepared", "read_only_error", "recheck", "status", "synced")

    def __init__(self, params: dict[str, str] | None = None) -> None:
        self.expect: deque[Expectation] = deque()
        # Owe one more answer, in request order (the bound append, not a method: the relay
        # calls it per message, and a method wrapping it cost 1% of a transaction).
        self.owe = self.expect.append
        self.status = "I"  # transaction status of the last ReadyForQuery
        self.prepared: set[bytes] = set()  # proxy statement names prepared on this backend
        self.params: dict[str, str] = dict(params or {})  # ParameterStatus values the server reported
        self.applied: dict[str, str] = {}  # client startup settings SET on this backend
        self.synced = True  # every request sent has been answered up to a ReadyForQuery
        # The server's role may have changed (it reported in_hot_standby or
        # default_transaction_read_only, or refused a write with 25006): the pool looks again
        # when the backend comes back, rather than the relay on every message.
        self.recheck = False
        self.read_only_error = False  # the server refused a write as read-only (SQLSTATE 25006)

    def __repr__(self) -> str:
        return f"<BackendState status={self.status} owed={len(self.expect)} prepared={len(self.prepared)}>"

    @property
    def owes(self) -> bool:
        """Answers are still owed (to a client, or to the proxy)."""
        return bool(self.expect)

    def owe_hidden_query(self) -> None:
        """A simple Query the proxy sends on its own behalf; nothing of its answer reaches a client."""
        self.expect.append((Expect.HIDDEN_QUERY, None))

    def owe_query(self) -> None:
        """A simple Query whose answer is relayed (the proxy's own queries, collected)."""
        self.expect.append((Expect.QUERY, None))

    def discarded(self) -> None:
        """``DISCARD ALL`` is on its way: the server forgets prepared statements and settings."""
        self.prepared.clear()
        self.applied = {}

    def sent(self) -> None:
        """Requests went to the server: until a ReadyForQuery closes them, it is mid-conversation."""
        self.synced = False

    def relay(self, msgs: list[Frame], out: list[bytes], told: dict[str, str] | None) -> int:
        """Match the server's ``msgs`` against ``expect``; append what the client must see to ``out``.

        ``told``: the ParameterStatus values the client was given at login (lower-case names),
        updated when the server reports another spelling of one while applying its settings.
        Returns a mix of :data:`SYNCED`, :data:`FATAL` and :data:`ENCODING`.
        """
        expect = self.expect
        flags = 0
        saw_ready = False
        for kind, data in msgs:
            if kind == "E":
                if _is_fatal(data):
                    flags |= FATAL  # relayed below: the client needs no second error
                if READ_ONLY_SQLSTATE in data:  # a byte search, on error frames only
                    self.read_only_error = self.recheck = True
            if not expect:
                if kind == "S":
                    flags |= self._note_parameter(data)
                out.append(data)  # asynchronous: notices, notifications, parameter changes
                continue
            head = expect[0][0]
            if kind == "Z":
                self.status = data[5:6].decode()
                answered = head
                while expect:  # everything up to the Sync/Query this answers
                    answered = expect.popleft()[0]
                    if answered in SYNC_POINTS:
                        break
                if answered != HIDDEN_QUERY:
                    out.append(data)
                saw_ready = True
            elif kind == "E" and head not in SIMPLE and head != SYNC:
                # Extended protocol: the server now skips everything up to the next Sync.
                while expect and expect[0][0] != SYNC:
                    entry = expect.popleft()
                    if entry[1] is not None:
                        self.prepared.discard(entry[1])
                out.append(data)
                continue
            elif kind in TERMINAL[head]:
                expect.popleft()
                if head not in HIDDEN:
                    out.append(data)
            else:
                if kind == "S":
                    flags |= self._note_parameter(data)
                    if head == HIDDEN_QUERY and told is not None and _told_differs(told, data):
                        # the SET of the client's startup settings, and the server spells the
                        # value otherwise than the proxy did at login ('iso' -> 'ISO, MDY'):
                        # pass on the server's word, as a server may send it at any time
                        out.append(data)
                        continue
                if head != HIDDEN_QUERY:
                    out.append(data)
                continue
            while expect and expect[0][0] in FAKE:
                out.append(FAKE[expect.popleft()[0]])
        if saw_ready and not expect:
            self.synced = True
            flags |= SYNCED
        return flags

    def _note_parameter(self, frame: bytes) -> int:
        try:
            name, value = m.read_parameter_status(frame[5:])
        except ProtocolError:
            return 0
        self.params[name] = value
        if name in ROLE_PARAMETERS:
            self.recheck = True
        return ENCODING if name == "client_encoding" else 0


def _told_differs(told: dict[str, str], frame: bytes) -> bool:
    """``frame`` (a ParameterStatus) says otherwise than the client was told; now it knows."""
    try:
        name, value = m.read_parameter_status(frame[5:])
    except ProtocolError:
        return False
    key = name.lower()
    if key not in told or told[key] == value:
        return False
    told[key] = value
    return True


def _is_fatal(frame: bytes) -> bool:
    """An ErrorResponse frame whose severity is FATAL or PANIC (the server ends the session)."""
    for field in frame[5:].split(b"\0"):
        if field[:1] in (b"S", b"V"):
            return field[1:] in (b"FATAL", b"PANIC")
    return False
