"""Counters for ``db.stats()``: stable keys, cheap to bump.

Each warm connection (slot) counts what happens to it, and the instance counts invocations
under the lock it already takes to number them. A slot is lent to one request at a time, so
its counters need no lock of their own: that kept three lock round trips off every warm
invocation. ``db.stats()`` adds them up.
"""

from __future__ import annotations

from typing import TypedDict

# Documented in the README's stats table; every key is present from the start.
KEYS = (
    "invocations",
    "cold_starts",
    "connects",
    "reuses",
    "liveness_checks",
    "pings",
    "reconnects",
    "connect_retries",
    "connect_failures",
    "auth_refreshes",
    "rollbacks",
    "resets",
    "discarded",
    "guard_closes",
    "expired",
    "read_only_drops",
    "connect_ms_total",
    "acquire_ms_total",
)
_MS_KEYS = ("connect_ms_total", "acquire_ms_total")


class Stats:
    """Counters owned by one thread at a time (a slot's holder, or whoever holds a lock)."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, float] = dict.fromkeys(KEYS, 0)

    def incr(self, key: str, n: float = 1) -> None:
        self.values[key] += n

    add = incr


class StatsDict(TypedDict):
    """What ``db.stats()`` returns: counts since the instance started, and two totals in ms."""

    invocations: int
    cold_starts: int
    connects: int
    reuses: int
    liveness_checks: int
    pings: int
    reconnects: int
    connect_retries: int
    connect_failures: int
    auth_refreshes: int
    rollbacks: int
    resets: int
    discarded: int
    guard_closes: int
    expired: int
    read_only_drops: int
    connect_ms_total: float
    acquire_ms_total: float
    open_connections: int


def total(parts: list[Stats]) -> StatsDict:
    out: dict[str, float] = dict.fromkeys(KEYS, 0)
    for part in parts:
        for key, value in list(part.values.items()):
            out[key] += value
    for key in _MS_KEYS:
        out[key] = round(float(out[key]), 3)
    out["open_connections"] = 0
    return out  # type: ignore[return-value]
