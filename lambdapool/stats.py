"""Counters for ``db.stats()``: stable keys, cheap to bump, safe across request threads."""

from __future__ import annotations

import threading

# Documented in the README's stats table; every key is present from the start.
KEYS = (
    "invocations", "cold_starts", "connects", "reuses", "liveness_checks", "pings", "reconnects",
    "connect_retries", "connect_failures", "auth_refreshes", "rollbacks", "resets", "discarded",
    "guard_closes", "connect_ms_total", "acquire_ms_total",
)  # fmt: skip


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = dict.fromkeys(KEYS, 0)

    def incr(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._values[key] = self._values.get(key, 0) + n

    def add(self, key: str, value: float) -> None:
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + value

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            out = dict(self._values)
        for key in ("connect_ms_total", "acquire_ms_total"):
            out[key] = round(out[key], 3)
        return out
