"""Where we run and what this invocation is: platform, init type, cold start, deadline."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

PLATFORMS = ("aws-lambda", "gcp-functions", "local")
INIT_TYPES = ("on-demand", "provisioned-concurrency", "snap-start")


def detect_platform(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    if env.get("AWS_LAMBDA_FUNCTION_NAME") or env.get("AWS_LAMBDA_RUNTIME_API"):
        return "aws-lambda"
    if env.get("K_SERVICE") or env.get("FUNCTION_TARGET"):
        return "gcp-functions"
    return "local"


def detect_init_type(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    value = env.get("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
    return value if value in INIT_TYPES else "on-demand"


def function_name(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return (
        env.get("AWS_LAMBDA_FUNCTION_NAME") or env.get("K_SERVICE") or env.get("FUNCTION_TARGET") or "local"
    )


@dataclass
class Invocation:
    """What a handler may want to know about the invocation it is running in."""

    cold_start: bool
    number: int
    init_type: str
    platform: str
    deadline: float  # time.monotonic() value
    request_id: str | None = None
    idle_gap: float | None = None  # seconds since the previous invocation ended (a freeze, on Lambda)
    started: float = field(default_factory=time.monotonic)

    @property
    def remaining_time(self) -> float:
        """Seconds left before the platform's deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def get_remaining_time_in_millis(self) -> int:
        return int(self.remaining_time * 1000)


class Instance:
    """Per-process facts: counts invocations, knows what makes the next one cold.

    One process is one instance: a Lambda execution environment, a Cloud Functions worker.
    """

    def __init__(self) -> None:
        self.platform = detect_platform()
        self.init_type = detect_init_type()
        self.invocations = 0
        self._cold_pending = True
        self._last_end: float | None = None

    def restored(self) -> None:
        """After a SnapStart restore the next invocation is this environment's first."""
        self._cold_pending = True
        self.init_type = "snap-start"
        self._last_end = None

    def begin(self, context: Any, default_timeout: float) -> Invocation:
        now = time.monotonic()
        self.invocations += 1
        cold, self._cold_pending = self._cold_pending, False
        remaining = None
        getter = getattr(context, "get_remaining_time_in_millis", None)
        if callable(getter):
            try:
                remaining = float(getter()) / 1000.0
            except (TypeError, ValueError):
                remaining = None
        return Invocation(
            cold_start=cold,
            number=self.invocations,
            init_type=self.init_type,
            platform=self.platform,
            deadline=now + (remaining if remaining is not None else default_timeout),
            request_id=getattr(context, "aws_request_id", None),
            idle_gap=None if self._last_end is None else now - self._last_end,
        )

    def end(self) -> None:
        self._last_end = time.monotonic()
