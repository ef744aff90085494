"""What every client's session shares, without I/O: counters, statement names, the pin cache, the baseline.

The server owns one :class:`SharedState`; sessions (``session.py``) read and update it, and
``stats()`` reports it. Nothing here knows about sockets or the event loop, so a session can
be tested with a bare ``SharedState()``.
"""

from __future__ import annotations

import hashlib
from typing import Final, NamedTuple

from lambdapool.tools.proto.encodings import decode_sql
from lambdapool.tools.proxy.pinning import MAX_UNPINNED_STATEMENT, drops_all_statements, is_deallocate_all, pin_reasons

COUNTERS: Final = (
    "clients_total",
    "transactions",
    "borrows",
    "waited",
    "borrow_timeouts",
    "pinned_sessions",
    "auth_failures",
    "backends_opened",
    "backends_closed",
    "resets",
    "reprepared",
    "replayed",
    "client_cap_refusals",
    "rate_refusals",
    "iam_throttled",
    "failovers",
    "writer_changes",
)
MAX_SQL_CACHE = 10000


class SqlFacts(NamedTuple):
    """What the relay needs to know about one statement's text (see :meth:`SharedState.sql_facts`)."""

    pin_reasons: list[str]  # why it pins its session (empty: it does not)
    drops_statements: bool  # DEALLOCATE ALL or DISCARD ALL: the server forgets its prepared statements
    deallocate_all: bool  # exactly DEALLOCATE ALL


NO_FACTS: Final = SqlFacts([], False, False)


class SharedState:
    def __init__(self, baseline: dict[str, str] | None = None) -> None:
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.pin_counts: dict[str, int] = {}  # pin reason -> sessions it pinned
        self.baseline: dict[str, str] = {}  # the server's ParameterStatus values, as it spells them
        self.baseline_lower: dict[str, str] = {}
        self.statement_names: dict[bytes, bytes] = {}  # (encoding, Parse body) -> proxy statement name
        self.sql_cache: dict[tuple[bytes, str, bool], SqlFacts] = {}
        if baseline is not None:
            self.set_baseline(baseline)

    def set_baseline(self, params: dict[str, str]) -> None:
        """The server's parameters at login (the first backend's), what clients are told they have."""
        self.baseline = dict(params)
        self.baseline_lower = {k.lower(): v for k, v in params.items()}

    def statement_name(self, rest: bytes, encoding: bytes = b"") -> bytes:
        """The proxy's own name for a prepared query (the same on every backend, for every client).

        ``encoding``: the client_encoding the query was sent in, when it is not the server's
        default: the same bytes are another text in another encoding, so another statement.
        """
        key = encoding + b"\0" + rest if encoding else rest
        name = self.statement_names.get(key)
        if name is None:
            name = b"lp_" + hashlib.sha1(key).hexdigest()[:20].encode()
            self.statement_names[key] = name
        return name

    def sql_facts(self, raw: bytes, codec: str, in_transaction: bool) -> SqlFacts:
        """The facts about SQL ``raw`` sent in ``codec``, cached by its bytes: clients send the
        same statements over and over, and the hot path then decodes nothing."""
        if len(raw) > MAX_UNPINNED_STATEMENT:
            return read_sql_facts(raw, codec, in_transaction)  # rare, and would fill the cache's memory
        key = (raw, codec, in_transaction)
        facts = self.sql_cache.get(key)
        if facts is None:
            facts = read_sql_facts(raw, codec, in_transaction)
            if len(self.sql_cache) > MAX_SQL_CACHE:
                self.sql_cache.clear()
            self.sql_cache[key] = facts
        return facts


def read_sql_facts(raw: bytes, codec: str, in_transaction: bool) -> SqlFacts:
    """:class:`SqlFacts` of SQL ``raw`` sent in ``codec`` (uncached)."""
    sql = decode_sql(raw, codec)
    # size is the bytes as sent: one text can be 16 KB in one client_encoding and not in another
    reasons = pin_reasons(sql, in_transaction=in_transaction, size=len(raw))
    return SqlFacts(reasons, drops_all_statements(sql), is_deallocate_all(sql))
