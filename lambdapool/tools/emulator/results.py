"""What one invocation did, the same record for every kind of fleet (Lambda, Cloud Functions, light)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

THROTTLED = "TooManyRequestsException"  # what Lambda's Invoke raises beyond reserved concurrency


@dataclass
class InvocationResult:
    """One invocation, as the caller saw it.

    ``instance_id`` names the execution environment (Lambda), the server instance (Cloud
    Functions) or the simulated instance (light fleet); None when the invocation was throttled
    and never reached one. ``cold`` is true for the invocation that started its instance, whose
    ``init_ms`` is the time from launch to ready (Lambda's "Init Duration"); ``latency_ms`` runs
    from the call to the answer and includes that init on a cold start. ``started_at`` and
    ``ended_at`` are wall-clock seconds (``time.time()``), to line up with a sampler's timeline.
    ``process_id`` names the runtime process inside the instance that ran it, where an instance
    runs several (Lambda Managed Instances: ``env-0001/3``); None where instance and process
    are one. ``error_trace`` is a failure's traceback, where the platform gave one
    (:mod:`.failures`: the handler's own frames).
    """

    request_id: str
    instance_id: str | None
    cold: bool
    init_ms: float | None
    latency_ms: float
    ok: bool
    payload: Any = None
    error_type: str | None = None
    error_message: str | None = None
    started_at: float = 0.0
    ended_at: float = 0.0
    process_id: str | None = None
    error_trace: str | None = None

    @property
    def throttled(self) -> bool:
        return self.error_type == THROTTLED

    @property
    def init_failed(self) -> bool:
        """The instance failed while starting (import error, crash before ready)."""
        return self.cold and not self.ok and self.init_ms is None and not self.throttled

    @classmethod
    def finished_now(
        cls,
        request_id: str,
        instance_id: str,
        cold: bool,
        init_ms: float | None,
        t0: float,
        started_at: float,
        ok: bool,
        payload: Any = None,
        error: tuple[str, str] | None = None,
        process_id: str | None = None,
        trace: str | None = None,
    ) -> InvocationResult:
        """An invocation that answered just now: ``t0`` is its ``time.monotonic()`` start,
        ``error`` its (type, message) when it failed, ``trace`` the traceback text."""
        return cls(
            request_id=request_id,
            instance_id=instance_id,
            cold=cold,
            init_ms=init_ms,
            latency_ms=(time.monotonic() - t0) * 1000,
            ok=ok,
            payload=payload,
            error_type=error[0] if error else None,
            error_message=error[1] if error else None,
            started_at=started_at,
            ended_at=time.time(),
            process_id=process_id,
            error_trace=trace,
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["throttled"] = self.throttled
        return out


def throttled(request_id: str, started_at: float, ended_at: float, latency_ms: float, why: str) -> InvocationResult:
    """The result of an invocation refused for want of concurrency."""
    return InvocationResult(
        request_id=request_id,
        instance_id=None,
        cold=False,
        init_ms=None,
        latency_ms=latency_ms,
        ok=False,
        error_type=THROTTLED,
        error_message=why,
        started_at=started_at,
        ended_at=ended_at,
    )


def percentile(values: Iterable[float], pct: float) -> float | None:
    """Nearest-rank percentile (``pct`` in 0..100); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


class Ledger:
    """A fleet's results and counters (thread-safe: light fleets record from many threads)."""

    def __init__(self) -> None:
        self.results: list[InvocationResult] = []
        self.counters = {
            "invocations": 0,
            "cold_starts": 0,
            "throttles": 0,
            "errors": 0,
            "instances_started": 0,
            "reaped": 0,
            "peak_instances": 0,
        }
        self._lock = threading.Lock()

    def record(self, result: InvocationResult) -> InvocationResult:
        with self._lock:
            self.results.append(result)
            self.counters["invocations"] += 1
            self.counters["cold_starts"] += result.cold
            self.counters["throttles"] += result.throttled
            self.counters["errors"] += not result.ok and not result.throttled
        return result

    def started(self, live: int) -> None:
        """An instance started; ``live`` instances exist now, itself included."""
        with self._lock:
            self.counters["instances_started"] += 1
            self.counters["peak_instances"] = max(self.counters["peak_instances"], live)

    def reaped(self, count: int) -> None:
        with self._lock:
            self.counters["reaped"] += count
