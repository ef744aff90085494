"""Count the database's client backends many times a second, in a thread, while a fleet runs.

The count is what the database itself reports (``pg_stat_activity``, client backends only,
the sampler's own excluded), so it shows what any pooler really let through. Each sample is
its own autocommit transaction: within a transaction ``pg_stat_activity`` is a frozen snapshot.
The sampler connects before the load starts and as the superuser (whose reserved slots it
then uses), so it is not refused when the load exhausts ``max_connections``; if its
connection breaks (a database restart) it counts an error and reconnects on the next tick.
"""

from __future__ import annotations

import threading
import time
from typing import Any

_QUERY = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
)


class BackendSampler:
    """``with BackendSampler(pg.dsn) as s: ...``; then ``s.peak``, ``s.timeline``, ``s.rate_hz``.

    ``interval`` is the time between samples (0.02 s = 50 Hz); ``application_name_like``
    counts only backends whose ``application_name`` matches that LIKE pattern.
    ``timeline`` holds ``(time.time(), count)`` pairs, to line up with invocation results.
    """

    def __init__(self, dsn: str, interval: float = 0.02, application_name_like: str | None = None) -> None:
        self.dsn = dsn
        self.interval = interval
        self.application_name_like = application_name_like
        self.timeline: list[tuple[float, int]] = []
        self.errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._started = self._stopped = 0.0

    def __repr__(self) -> str:  # never the DSN: it may hold a password
        return f"<BackendSampler samples={len(self.timeline)} peak={self.peak} rate_hz={self.rate_hz:.1f}>"

    @property
    def peak(self) -> int:
        return max((count for _, count in self.timeline), default=0)

    @property
    def rate_hz(self) -> float:
        """Samples per second achieved so far."""
        end = self._stopped or time.monotonic()
        return len(self.timeline) / (end - self._started) if self._started and end > self._started else 0.0

    def __enter__(self) -> BackendSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> BackendSampler:
        """Connect (so a failure to reach the database shows here) and start sampling."""
        self._connect()
        self._sample()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="lambdapool-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._stopped = time.monotonic()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self) -> None:
        import psycopg

        self._conn = psycopg.connect(self.dsn, autocommit=True, application_name="lambdapool-sampler",
                                     connect_timeout=5)  # fmt: skip

    def _sample(self) -> None:
        if self.application_name_like is None:
            row = self._conn.execute(_QUERY).fetchone()
        else:
            row = self._conn.execute(_QUERY + " AND application_name LIKE %s", (self.application_name_like,)).fetchone()
        self.timeline.append((time.time(), int(row[0])))

    def _run(self) -> None:
        import psycopg

        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += self.interval
            try:
                if self._conn is None or self._conn.closed:
                    self._connect()
                self._sample()
            except psycopg.Error as exc:
                self.errors += 1
                self.last_error = type(exc).__name__
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (a slow sample): skip the missed ticks, keep the rhythm
                next_at = time.monotonic()
            self._stop.wait(max(0.0, delay))
