"""Where we run and what this invocation is: platform, init type, cold start, deadline."""

from __future__ import annotations

import operator
import os
import sys
import time
from collections.abc import Mapping
from contextvars import Token
from typing import Any

from lambdapool._drivers.contract import Connection

PLATFORMS = ("aws-lambda", "gcp-functions", "local")
INIT_TYPES = ("on-demand", "provisioned-concurrency", "snap-start", "lambda-managed-instances")
MANAGED_INSTANCES = "lambda-managed-instances"


def detect_platform(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    if env.get("AWS_LAMBDA_FUNCTION_NAME") or env.get("AWS_LAMBDA_RUNTIME_API"):
        return "aws-lambda"
    if env.get("K_SERVICE") or env.get("FUNCTION_TARGET"):
        return "gcp-functions"
    return "local"


def detect_init_type(environ: dict[str, str] | None = None) -> str:
    """How Lambda made this environment. Lambda Managed Instances are told apart by
    ``AWS_LAMBDA_MAX_CONCURRENCY`` (the runtime client starts that many worker processes per
    environment, each with its own init and globals, and never frozen)."""
    env = os.environ if environ is None else environ
    if max_concurrency(env) is not None:
        return MANAGED_INSTANCES
    value = env.get("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
    return value if value in INIT_TYPES else "on-demand"


def max_concurrency(environ: Mapping[str, str] | None = None) -> int | None:
    """Processes per execution environment on Lambda Managed Instances, else None."""
    env = os.environ if environ is None else environ
    value = env.get("AWS_LAMBDA_MAX_CONCURRENCY", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def function_name(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("AWS_LAMBDA_FUNCTION_NAME") or env.get("K_SERVICE") or env.get("FUNCTION_TARGET") or "local"


class Invocation:
    """What a handler may want to know about the invocation it is running in.

    A view over the SDK's own record of the invocation (one small object, no copying): it is
    made for every ``invocation_scope()``, so it stays cheap, and the deadline (a call into the
    platform's context) is worked out only when asked.
    """

    __slots__ = ("_state",)

    def __init__(self, state: InvocationState) -> None:
        self._state = state

    def __repr__(self) -> str:
        return (
            f"Invocation(number={self.number}, cold_start={self.cold_start}, init_type={self.init_type!r}, "
            f"platform={self.platform!r}, remaining_time={self.remaining_time:.3f}, request_id={self.request_id!r})"
        )

    @property
    def cold_start(self) -> bool:
        """The first invocation of this instance (or the first after a SnapStart restore)."""
        return self._state.cold_start

    @property
    def number(self) -> int:
        """In this instance, from 1 (0: outside any invocation)."""
        return self._state.number

    @property
    def init_type(self) -> str:
        """on-demand, provisioned-concurrency or snap-start."""
        return self._state.instance.init_type

    @property
    def platform(self) -> str:
        """aws-lambda, gcp-functions or local."""
        return self._state.instance.platform

    @property
    def processes_per_environment(self) -> int:
        """Python processes in this execution environment that each hold their own connections:
        ``AWS_LAMBDA_MAX_CONCURRENCY`` on Lambda Managed Instances, else 1."""
        return self._state.instance.processes_per_environment

    @property
    def deadline(self) -> float:
        """time.monotonic() of the platform's deadline (else ``invocation_timeout`` after the start)."""
        return self._state.deadline

    @property
    def request_id(self) -> str | None:
        return getattr(self._state.context, "aws_request_id", None)

    @property
    def idle_gap(self) -> float | None:
        """Seconds since the previous invocation ended (a freeze, on Lambda)."""
        return self._state.idle_gap

    @property
    def started(self) -> float:
        """time.monotonic() when the invocation began."""
        return self._state.started

    @property
    def remaining_time(self) -> float:
        """Seconds left before the platform's deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def get_remaining_time_in_millis(self) -> int:
        return int(self.remaining_time * 1000)


class InvocationState:
    """One invocation as the SDK tracks it: what it is, and the connection it holds.

    One is made per invocation, by the handler decorators (and per ad-hoc ``connection()``
    block outside a handler, numbered 0), so it stays small: its deadline (a call into the
    platform's context) and its public view (:class:`Invocation`) are worked out only when
    something asks.
    """

    __slots__ = (
        "instance",
        "context",
        "number",
        "cold_start",
        "started",
        "idle_gap",
        "_deadline",
        "_view",
        "holder",
        "conn",
        "depth",
        "acquire_ms",
        "outcome",
        "token",
    )

    def __init__(self, instance: Instance, context: Any, counted: bool = True) -> None:
        """Begin an invocation of ``instance`` (or, not ``counted``, an ad-hoc block).

        Numbering takes no lock although Cloud Functions begin invocations on several threads
        (a lock cost more than the rest of this): next() on the instance's numbers is one C
        call, atomic under the GIL, and the invocation given its _cold_number is the cold one.
        """
        self.instance = instance
        self.context = context
        self.started = now = time.monotonic()
        if counted:
            self.number = number = next(instance._numbers)
            if number == instance._cold_number:
                self.cold_start = True
                instance.cold_starts += 1
            else:
                self.cold_start = False
            last_end = instance.last_end
            self.idle_gap = None if last_end is None else now - last_end
            instance.last = self
        else:
            self.number, self.cold_start, self.idle_gap = 0, False, None
        self._deadline: float | None = None
        self._view: Invocation | None = None
        # The slot lent to this invocation: a WarmConnection or an AsyncWarmConnection, as the
        # Database's driver is (the lender of that kind is the one that reads it).
        self.holder: Any = None
        self.conn: Connection = None
        self.depth = 0  # nesting of connection() blocks
        self.acquire_ms = 0.0
        self.outcome = ""  # reuse, connect or reconnect (for the per-invocation metrics)
        self.token: Token[InvocationState | None] | None = None  # an ad-hoc block's contextvar token

    @property
    def deadline(self) -> float:
        """time.monotonic() of the platform's deadline (Lambda's context), else of the
        configured ``invocation_timeout`` after the start."""
        deadline = self._deadline
        if deadline is None:
            deadline = self._deadline = self.instance.deadline_of(self.context, self.started)
        return deadline

    def view(self) -> Invocation:
        view = self._view
        if view is None:
            view = self._view = Invocation(self)
        return view


class Instance:
    """Per-process facts: counts invocations and cold starts, knows what makes the next one cold.

    One process is one instance: a Lambda execution environment, a Cloud Functions worker.
    """

    def __init__(self, default_timeout: float) -> None:
        self.platform = detect_platform()
        self.init_type = detect_init_type()
        self.processes_per_environment = max_concurrency() or 1
        self.default_timeout = default_timeout  # seconds, where the platform gives no deadline
        self.cold_starts = 0
        self.last: InvocationState | None = None
        self.last_end: float | None = None  # time.monotonic() when the last invocation ended
        # Numbers invocations (see InvocationState): a range iterator, because it also says
        # exactly how many numbers are left (operator.length_hint), hence how many were given.
        self._numbers = iter(range(1, sys.maxsize))
        self._cold_number = 1  # the number of the next cold start

    @property
    def invocations(self) -> int:
        """Invocations begun so far."""
        return sys.maxsize - 1 - operator.length_hint(self._numbers)

    def restored(self) -> None:
        """After a SnapStart restore the next invocation is this environment's first."""
        self._cold_number = self.invocations + 1
        self.init_type = "snap-start"
        self.last_end = None

    def deadline_of(self, context: Any, started: float) -> float:
        if context is not None:
            try:
                return time.monotonic() + float(context.get_remaining_time_in_millis()) / 1000.0
            except (AttributeError, TypeError, ValueError):  # not a Lambda context
                pass
        return started + self.default_timeout
