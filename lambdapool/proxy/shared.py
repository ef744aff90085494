"""What every client's session shares, without I/O: counters, statement names, the pin cache, the baseline.

The server owns one :class:`SharedState`; sessions (``session.py``) read and update it, and
``stats()`` reports it. Nothing here knows about sockets or the event loop, so a session can
be tested with a bare ``SharedState()``.
"""

from __future__ import annotations

import hashlib
from typing import Final

from lambdapool.proxy.pinning import pin_reasons

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
)
MAX_PIN_CACHE = 10000


class SharedState:
    def __init__(self, baseline: dict[str, str] | None = None) -> None:
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.pin_counts: dict[str, int] = {}  # pin reason -> sessions it pinned
        self.baseline: dict[str, str] = {}  # the server's ParameterStatus values, as it spells them
        self.baseline_lower: dict[str, str] = {}
        self.statement_names: dict[bytes, bytes] = {}  # (encoding, Parse body) -> proxy statement name
        self.pin_cache: dict[tuple[str, bool, int], list[str]] = {}
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

    def pin_reasons(self, sql: str, in_transaction: bool, size: int) -> list[str]:
        """:func:`pinning.pin_reasons`, cached: clients send the same statements over and over."""
        # size (bytes on the wire) is in the key: one text can be 16 KB in one client_encoding
        # and not in another
        key = (sql, in_transaction, size)
        reasons = self.pin_cache.get(key)
        if reasons is None:
            reasons = pin_reasons(sql, in_transaction=in_transaction, size=size)
            if len(self.pin_cache) > MAX_PIN_CACHE:
                self.pin_cache.clear()
            self.pin_cache[key] = reasons
        return reasons
