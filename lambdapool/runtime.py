"""Where we run and what this invocation is: platform, init type, cold start, deadline."""

from __future__ import annotations

import os
import time
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


class Invocation:
    """What a handler may want to know about the invocation it is running in.

    (A plain class with __slots__: one is made per invocation, and a dataclass with a
    default factory cost a microsecond more.)
    """

    __slots__ = ("cold_start", "number", "init_type", "platform", "deadline", "request_id", "idle_gap", "started")

    def __init__(self, cold_start: bool, number: int, init_type: str, platform: str, deadline: float,
                 request_id: str | None = None, idle_gap: float | None = None,
                 started: float | None = None) -> None:  # fmt: skip
        self.cold_start = cold_start
        self.number = number  # in this instance, from 1
        self.init_type = init_type
        self.platform = platform
        self.deadline = deadline  # time.monotonic() value
        self.request_id = request_id
        self.idle_gap = idle_gap  # seconds since the previous invocation ended (a freeze, on Lambda)
        self.started = time.monotonic() if started is None else started

    def __repr__(self) -> str:
        return (
            f"Invocation(number={self.number}, cold_start={self.cold_start}, init_type={self.init_type!r}, "
            f"platform={self.platform!r}, remaining_time={self.remaining_time:.3f}, request_id={self.request_id!r})"
        )

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
        remaining = default_timeout
        if context is not None:
            try:
                remaining = context.get_remaining_time_in_millis() / 1000.0
            except (AttributeError, TypeError, ValueError):  # not a Lambda context
                pass
        last_end = self._last_end
        return Invocation(
            cold, self.invocations, self.init_type, self.platform, now + remaining,
            getattr(context, "aws_request_id", None), None if last_end is None else now - last_end, now,
        )  # fmt: skip

    def end(self) -> None:
        self._last_end = time.monotonic()
