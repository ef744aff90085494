"""Count connections many times a second, in a thread, while a fleet runs.

:class:`BackendSampler` counts what the database itself reports (``pg_stat_activity``, client
backends only, the sampler's own excluded), so it shows what any pooler really let through.
Each sample is its own autocommit transaction: within a transaction ``pg_stat_activity`` is a
frozen snapshot. It connects before the load starts and as the DSN's user (a superuser gets the
reserved slots), so it is not refused when the load exhausts ``max_connections``.
:class:`PgBouncerSampler` counts PgBouncer's server connections (``SHOW POOLS``), the pooler's
own view, to cross-check the database's. If a sampler's connection breaks (a restart) it counts
an error and reconnects on the next tick.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, TypeVar

from lambdapool.tools.backend_count import count_on

S = TypeVar("S", bound="Sampler")


class Sampler:
    """The thread, the timeline and the peak; subclasses connect and count."""

    def __init__(self, dsn: str, interval: float) -> None:
        self.dsn = dsn
        self.interval = interval
        self.timeline: list[tuple[float, int]] = []
        self.errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._started = self._stopped = 0.0

    def __repr__(self) -> str:  # never the DSN: it may hold a password
        return f"<{type(self).__name__} samples={len(self.timeline)} peak={self.peak} rate_hz={self.rate_hz:.1f}>"

    @property
    def peak(self) -> int:
        return max((count for _, count in self.timeline), default=0)

    @property
    def rate_hz(self) -> float:
        """Samples per second achieved so far."""
        end = self._stopped or time.monotonic()
        return len(self.timeline) / (end - self._started) if self._started and end > self._started else 0.0

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self: S) -> S:
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
        raise NotImplementedError

    def _count(self) -> int:
        raise NotImplementedError

    def _sample(self) -> None:
        self.timeline.append((time.time(), self._count()))

    def _run(self) -> None:
        import psycopg

        try:  # a thread has its own nice value on Linux: keep the rhythm when the fleet saturates the CPU
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -5)
        except (OSError, AttributeError):  # not root, or not Linux: best effort
            pass
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


class BackendSampler(Sampler):
    """``with BackendSampler(pg.dsn) as s: ...``; then ``s.peak``, ``s.timeline``, ``s.rate_hz``.

    ``interval`` is the time between samples (0.02 s = 50 Hz); ``application_name_like``
    counts only backends whose ``application_name`` matches that LIKE pattern.
    ``timeline`` holds ``(time.time(), count)`` pairs, to line up with invocation results.
    """

    def __init__(self, dsn: str, interval: float = 0.02, application_name_like: str | None = None) -> None:
        super().__init__(dsn, interval)
        self.application_name_like = application_name_like

    def _connect(self) -> None:
        import psycopg

        self._conn = psycopg.connect(
            self.dsn, autocommit=True, application_name="lambdapool-sampler", connect_timeout=5
        )

    def _count(self) -> int:
        return count_on(self._conn, self.application_name_like)


class PgBouncerSampler(Sampler):
    """PgBouncer's server connections over time, from its admin console (``pgb.admin_dsn``).

    Counts every server connection PgBouncer holds or is opening (``sv_active``, ``sv_idle``,
    ``sv_used``, ``sv_tested``, ``sv_login`` of ``SHOW POOLS``), all pools but the console's.
    """

    def __init__(self, admin_dsn: str, interval: float = 0.02) -> None:
        super().__init__(admin_dsn, interval)

    def _connect(self) -> None:
        import psycopg

        # The console speaks only the simple query protocol: a client-side-binding cursor.
        self._conn = psycopg.connect(self.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor, connect_timeout=5)

    def _count(self) -> int:
        cur = self._conn.execute("SHOW POOLS")
        names = [col.name for col in cur.description]
        total = 0
        for row in cur.fetchall():
            pool = dict(zip(names, row))
            if pool["database"] != "pgbouncer":
                total += sum(int(pool.get(k, 0)) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))
        return total
