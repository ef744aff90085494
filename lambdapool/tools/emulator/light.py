"""Thousands of simulated Lambda instances in one process, for bursts wider than processes allow.

Theory of operation
-------------------
* A *light instance* is one handler made by ``factory()``: whatever the factory's handler
  closes over (a connection, a ``lambdapool.Database``) is that instance's own, as module
  globals are an environment's own on Lambda. :func:`module_factory` gives each instance a
  fresh copy of a handler *module* (its source executed into a new module object, never
  shared through ``sys.modules``), so the same handler file runs under :class:`LambdaFleet`
  and here unchanged.
* Scheduling is Lambda's (see :mod:`.lambda_fleet`): an idle instance (LIFO), else a new one
  (a cold start: ``init_ms`` is the factory call), up to ``reserved_concurrency``, else a
  throttle. Invocations run on threads, one instance each; ``burst`` uses ``concurrency``
  threads. What light instances cannot do: freeze (threads share one process), enforce the
  timeout (a thread cannot be killed; the context's deadline is still honest), or isolate
  process-wide state (``os.environ``, signal handlers, libraries' globals).
* Reaping drops an instance without a word: its objects are garbage, and a connection it held
  closes when it is collected (:meth:`LightFleet.reap` collects), as a killed process's
  sockets close.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import traceback
import types
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lambdapool.errors import ConfigError
from lambdapool.tools.emulator.base import Fleet
from lambdapool.tools.emulator.failures import traceback_text
from lambdapool.tools.emulator.lambda_fleet import ACCOUNT
from lambdapool.tools.emulator.results import InvocationResult, throttled

Handler = Callable[[Any, Any], Any]


def module_factory(task_root: str | os.PathLike[str], handler: str) -> Callable[[], Handler]:
    """A factory that loads ``module.function`` from ``task_root`` afresh for every instance.

    The source is compiled once; each call executes it into a new module object, so module
    globals (a connection made at import or on first use) belong to one instance only.
    """
    module_name, _, function = handler.rpartition(".")
    if not module_name:
        raise ConfigError(f"handler={handler!r}: expected 'module.function' (e.g. 'app.handler')")
    path = Path(task_root, *module_name.split(".")).with_suffix(".py")
    if not path.is_file():
        raise ConfigError(f"handler={handler!r}: no {path} under task_root={str(task_root)!r}")
    code = compile(path.read_text(), str(path), "exec")
    if str(Path(task_root).resolve()) not in sys.path:  # the module's own sibling imports
        sys.path.insert(0, str(Path(task_root).resolve()))

    def factory() -> Handler:
        module = types.ModuleType(module_name)
        module.__file__ = str(path)
        exec(code, module.__dict__)
        return getattr(module, function)

    return factory


@dataclass
class LightContext:
    """The parts of Lambda's context object a handler uses."""

    aws_request_id: str
    deadline: float  # time.time() seconds
    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""
    client_context: Any = None
    identity: Any = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.time()) * 1000))


@dataclass
class _LightInstance:
    id: str
    handler: Handler | None = None
    invocations: int = 0
    idle_since: float = 0.0


class LightFleet(Fleet):
    """Simulated instances for width: ``LightFleet(module_factory(root, "app.handler"))``.

    Same calls and results as :class:`LambdaFleet` (``invoke``, ``burst``, ``reap``,
    ``results``, ``counters``). ``env`` is put in ``os.environ`` for the fleet's life (it is
    process-wide, shared by every instance) and restored on close.
    """

    def __init__(
        self,
        factory: Callable[[], Handler],
        *,
        reserved_concurrency: int = 1000,
        timeout: float = 30.0,
        memory_mb: int = 128,
        function_name: str = "lambdapool-light",
        region: str = "us-east-1",
        env: Mapping[str, str] | None = None,
    ) -> None:
        if reserved_concurrency < 1:
            raise ConfigError(f"reserved_concurrency={reserved_concurrency!r}: must be at least 1")
        self.factory = factory
        self.reserved_concurrency = reserved_concurrency
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.function_name = function_name
        self.function_arn = f"arn:aws:lambda:{region}:{ACCOUNT}:function:{function_name}"
        self.env = dict(env or {})
        super().__init__()
        self._lock = threading.Lock()
        self._idle: list[_LightInstance] = []  # a stack: the most recently used on top
        self._live: dict[str, _LightInstance] = {}
        self._seq = 0
        self._saved_env: dict[str, str | None] = {}

    def __repr__(self) -> str:
        return f"<LightFleet instances={len(self._live)} reserved_concurrency={self.reserved_concurrency}>"

    def start(self) -> LightFleet:
        for key, value in self.env.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        return self

    def close(self) -> None:
        """Drop every instance (their connections close as they are collected); restore ``env``."""
        with self._lock:
            self._idle.clear()
            self._live.clear()
        gc.collect()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()

    @property
    def instances(self) -> int:
        """How many instances are alive (idle or busy)."""
        return len(self._live)

    def invoke(self, event: Any = None) -> InvocationResult:
        request_id, started_at, t0 = str(uuid.uuid4()), time.time(), time.monotonic()
        inst, cold = self._acquire()
        if inst is None:
            why = f"Rate Exceeded. (all {self.reserved_concurrency} instances busy)"
            return self.ledger.record(
                throttled(request_id, started_at, time.time(), (time.monotonic() - t0) * 1000, why)
            )
        init_ms = None
        ok, payload, error, trace = True, None, None, None
        try:
            if cold:
                inst.handler = self.factory()
                init_ms = (time.monotonic() - t0) * 1000
            assert inst.handler is not None
            context = LightContext(
                request_id,
                time.time() + self.timeout,
                self.function_name,
                self.memory_mb,
                self.function_arn,
                log_group_name=f"/aws/lambda/{self.function_name}",
                log_stream_name=inst.id,
            )
            payload = inst.handler(event, context)
        except Exception as exc:  # the handler's error is the invocation's result
            ok, error = False, (type(exc).__name__, str(exc))
            trace = traceback_text(traceback.format_tb(exc.__traceback__))
            if cold and inst.handler is None:  # the factory failed: like an init error, no instance
                error = ("Runtime.InitError", f"{type(exc).__name__}: {exc}")
        result = InvocationResult.finished_now(
            request_id, inst.id, cold, init_ms, t0, started_at, ok, payload, error, trace=trace
        )
        self._release(inst)
        return self.ledger.record(result)

    def reap(self, idle_for: float = 0.0) -> list[str]:
        """Drop the instances idle for at least ``idle_for`` seconds; returns their ids."""
        ids = self._drop_idle(idle_for)
        gc.collect()  # handlers sit in cycles (a module's functions and its dict): free them now
        return ids

    def _drop_idle(self, idle_for: float) -> list[str]:
        """Forget the idle instances; no reference to them outlives this call."""
        now = time.monotonic()
        with self._lock:
            ids = [i.id for i in self._idle if now - i.idle_since >= idle_for]
            dropped = set(ids)
            self._idle = [i for i in self._idle if i.id not in dropped]
            for inst_id in ids:
                del self._live[inst_id]
        self.ledger.reaped(len(ids))
        return ids

    def _acquire(self) -> tuple[_LightInstance | None, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), False
            if len(self._live) >= self.reserved_concurrency:
                return None, False
            self._seq += 1
            inst = _LightInstance(f"light-{self._seq:05d}")
            self._live[inst.id] = inst
            self.ledger.started(len(self._live))
            return inst, True

    def _release(self, inst: _LightInstance) -> None:
        with self._lock:
            if inst.handler is None:  # never initialised: gone, as an environment whose init failed
                self._live.pop(inst.id, None)
                return
            inst.invocations += 1
            inst.idle_since = time.monotonic()
            if inst.id in self._live:
                self._idle.append(inst)
