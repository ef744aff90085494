"""A local AWS Lambda: real execution environments under the AWS runtime interface client.

Theory of operation
-------------------
* An *environment* is a real process, ``python -m awslambdaric module.handler``, with the
  environment variables Lambda sets, talking to a Runtime API port of its own
  (:mod:`.runtime_api`). Every port and every piece of fleet state lives on one event loop in
  one thread, so there are no locks: callers' threads only submit coroutines to it.
* An invocation goes to an idle environment (the most recently used: LIFO keeps the fewest
  warm, as Lambda tends to), else a new one starts: a cold start, whose ``init_ms`` runs from
  launch to the runtime's first ``GET /next`` (module import included), as Lambda's "Init
  Duration" does. Beyond ``reserved_concurrency`` live environments an invocation is throttled
  (``TooManyRequestsException``) without waiting, as Lambda's synchronous Invoke is.
* An environment is idle from the moment it has answered, so a quick next call reuses it.
  Once it is back in ``GET /next`` with nothing to do it is frozen: SIGSTOP to its process
  group, confirmed by state ``T`` in ``/proc/PID/stat``; it is thawed (SIGCONT) when an
  invocation is assigned to it. Nothing in it runs in between: not its timers, not its pings.
* Idle environments are reaped after ``idle_reap_after`` seconds, or on :meth:`LambdaFleet.reap`:
  SIGKILL, no goodbye; or, with ``shutdown_extension=True`` (as when an extension registered
  for SHUTDOWN), SIGTERM to the thawed process, then SIGKILL after ``shutdown_grace``.
* A handler error comes back as an error result (``errorType``/``errorMessage`` as posted,
  ``stackTrace`` as its ``error_trace``); an import error, or a module that raised at import,
  as the runtime's init error (its process exits); a process that dies
  mid-invocation as ``Runtime.ExitError``; an invocation past ``timeout`` as
  ``Sandbox.Timedout``, and its environment is killed, as Lambda resets a timed-out sandbox.
* Launches happen on the loop thread, which lives as long as the fleet: the children's
  parent-death signal (``PR_SET_PDEATHSIG``) fires when the launching *thread* ends.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lambdapool.errors import ConfigError, LambdapoolError
from lambdapool.tools.emulator import processes
from lambdapool.tools.emulator.base import Fleet
from lambdapool.tools.emulator.results import InvocationResult, throttled
from lambdapool.tools.emulator.runtime_api import NextInvocation, error_fields, error_trace, serve
from lambdapool.tools.emulator.zygote import ForkServer
from lambdapool.tools.spawning import child_setup

INIT_TIMEOUT = 10.0  # Lambda's limit on the init phase of an on-demand environment
ACCOUNT = "123456789012"
MANAGED_INSTANCES = "lambda-managed-instances"  # AWS_LAMBDA_INITIALIZATION_TYPE there


class EnvironmentStartError(LambdapoolError):
    """An execution environment could not be started or failed its init."""

    __module__ = "lambdapool.tools.emulator"


@dataclass(frozen=True)
class EnvironmentInfo:
    """A snapshot of one environment, for tests and reports."""

    id: str
    pid: int  # the runtime's main process (and process group)
    state: str  # starting | busy | idle | stopping | dead
    frozen: bool  # confirmed stopped (state T)
    invocations: int
    init_ms: float | None
    returncode: int | None
    in_flight: int = 0  # invocations assigned and not yet answered
    worker_pids: tuple[int, ...] = ()  # Managed Instances: awslambdaric's worker processes


class _Invocation:
    def __init__(self, payload: bytes, timeout: float) -> None:
        self.request_id = str(uuid.uuid4())
        self.payload = payload
        self.timeout = timeout
        self.started_at = time.time()
        self.t0 = time.monotonic()
        self.cold = False
        self.worker: int | None = None  # the Runtime API connection (runtime process) it went to
        self.future: asyncio.Future[InvocationResult] = asyncio.get_running_loop().create_future()

    def finish(
        self,
        env: Environment,
        ok: bool,
        payload: Any = None,
        error: tuple[str, str] | None = None,
        trace: str | None = None,
    ) -> None:
        if self.future.done():
            return
        self.future.set_result(
            InvocationResult.finished_now(
                self.request_id,
                env.id,
                self.cold,
                env.init_ms if self.cold else None,
                self.t0,
                self.started_at,
                ok,
                payload,
                error,
                process_id=f"{env.id}/{self.worker}" if self.worker is not None and env.fleet.max_concurrency else None,
                trace=trace,
            )
        )


class Environment:
    """One execution environment: its process, its Runtime API port and where it stands.

    ``capacity`` invocations may be in flight at once: 1 on demand, ``max_concurrency`` on
    Managed Instances, where that many awslambdaric workers each hold a ``GET /next``. Used
    only on the fleet's event loop. Implements :class:`.runtime_api.RuntimeHandler`.
    """

    def __init__(self, fleet: LambdaFleet, env_id: str) -> None:
        self.fleet = fleet
        self.id = env_id
        self.capacity = fleet.max_concurrency or 1
        self.state = "starting"
        self.frozen = False  # SIGSTOP sent and not undone
        self.frozen_confirmed = False  # and the process was seen stopped
        self.invocations = 0
        self.init_ms: float | None = None
        self.idle_since = 0.0
        self.pid = 0
        self.returncode: int | None = None
        self.server: asyncio.Server | None = None
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # first GET /next
        self.init_failure: tuple[str, str] | None = None
        self.init_trace: str | None = None  # the init error's traceback (a module that raised at import)
        self._launched = 0.0
        self._waiters: deque[tuple[int, asyncio.Future[NextInvocation]]] = deque()  # workers in GET /next
        self._pending: deque[_Invocation] = deque()  # assigned, not yet handed out
        self._current: dict[str, _Invocation] = {}  # handed out, not yet answered, by request id

    @property
    def load(self) -> int:
        return len(self._pending) + len(self._current)

    def _waiting(self) -> bool:
        return any(not f.done() for _, f in self._waiters)

    def info(self) -> EnvironmentInfo:
        workers = tuple(processes.children(self.pid)) if self.fleet.max_concurrency and self.pid > 0 else ()
        return EnvironmentInfo(
            self.id,
            self.pid,
            self.state,
            self.frozen_confirmed,
            self.invocations,
            self.init_ms,
            self.returncode,
            self.load,
            workers,
        )

    # -- lifecycle (called by the fleet) -----------------------------------------------------
    async def launch(self, init_type: str) -> None:
        fleet = self.fleet
        self.server = await serve(self, fleet.host)
        port = self.server.sockets[0].getsockname()[1]
        env = fleet._process_env(self.id, port, init_type)
        self.log_path = fleet.log_dir / f"{self.id}.log"
        self._launched = time.monotonic()
        if fleet._zygote is not None:
            self.pid = await fleet._zygote.spawn(self.id, env, fleet.task_root, fleet.handler, str(self.log_path))
            fleet._zygote.on_exit(self.pid, self._exited)
            if self.state == "idle" and self._waiting() and fleet.freeze:
                fleet._spawn(self.freeze())  # it reached GET /next before we knew its pid
            return
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                [fleet.python, "-m", "awslambdaric", fleet.handler],
                cwd=fleet.task_root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: child_setup(None),
            )
        self.pid = proc.pid
        self._watch_exit(proc)

    def _watch_exit(self, proc: subprocess.Popen) -> None:
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: poll instead
            self._poller = loop.create_task(self._poll_exit(proc))  # referenced: a bare task may be collected
            return

        def on_exit() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            self._exited(proc.wait())

        loop.add_reader(fd, on_exit)

    async def _poll_exit(self, proc: subprocess.Popen) -> None:
        while proc.poll() is None:
            await asyncio.sleep(0.01)
        self._exited(proc.wait())

    def _exited(self, code: int) -> None:
        if self.fleet.max_concurrency and self.state != "stopping" and self.pid > 1:
            processes.signal_group(self.pid, signal.SIGKILL)  # the main process died: no orphan workers
        self.returncode = code
        self.state = "dead"
        self.frozen = self.frozen_confirmed = False
        why = self.init_failure or ("Runtime.ExitError", f"Runtime exited with {_describe_exit(code)}")
        self._fail_all(why, self.init_trace if self.init_failure else None)
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()
        if self.server is not None:
            self.server.close()
        if not self.exited.done():
            self.exited.set_result(code)
        self.fleet._forget(self)

    def _fail_all(self, why: tuple[str, str], trace: str | None = None) -> None:
        for inv in [*self._pending, *self._current.values()]:
            inv.finish(self, False, error=why, trace=trace)
        self._pending.clear()
        self._current.clear()

    def assign(self, inv: _Invocation) -> None:
        """Give ``inv`` to this environment (thawing it if frozen)."""
        self.state = "busy"
        self.invocations += 1
        if self.frozen:
            processes.thaw(self.pid)
            self.frozen = self.frozen_confirmed = False
        while self._waiters:
            worker, waiter = self._waiters.popleft()
            if not waiter.done():  # a worker still waiting (not one whose connection closed)
                self._hand_out(inv, worker)
                waiter.set_result(self._next_for(inv))
                return
        self._pending.append(inv)

    def _hand_out(self, inv: _Invocation, worker: int) -> None:
        inv.worker = worker
        self._current[inv.request_id] = inv

    async def freeze(self) -> bool:
        """Stop the process group if it is idle in ``GET /next``; True once it is seen stopped."""
        if self.state != "idle" or not self._waiting() or self.pid <= 0:
            return False  # not idle, or forked but its pid not reported yet (spawn freezes it then)
        if not self.frozen:
            processes.stop_group(self.pid)
            self.frozen = True
        stopped = await processes.wait_stopped(self.pid)
        if self.frozen:  # not thawed meanwhile
            self.frozen_confirmed = stopped
        return self.frozen_confirmed

    async def shut_down(self) -> None:
        """Thaw fully, then SIGTERM: as Lambda thaws an environment for its shutdown phase."""
        self.frozen = self.frozen_confirmed = False
        await processes.thaw_fully(self.pid)
        processes.signal_group(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        processes.signal_group(self.pid, signal.SIGKILL)  # works on a stopped process too

    def _next_for(self, inv: _Invocation) -> NextInvocation:
        deadline_ms = int((time.time() + inv.timeout) * 1000)
        return NextInvocation(
            inv.request_id,
            inv.payload,
            deadline_ms,
            self.fleet.function_arn,
            trace_id=f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};Sampled=0",
        )

    # -- the Runtime API side ------------------------------------------------------------------
    async def next_invocation(self, worker: int) -> NextInvocation:
        if self.init_ms is None:
            self.init_ms = (time.monotonic() - self._launched) * 1000
            self.ready.set_result(None)
        if self._pending:
            inv = self._pending.popleft()
            self._hand_out(inv, worker)
            return self._next_for(inv)
        if self.state == "starting":  # provisioned ahead of traffic: ready, and nothing to do yet
            self.state = "idle"
            self.idle_since = time.monotonic()
        waiter: asyncio.Future[NextInvocation] = asyncio.get_running_loop().create_future()
        self._waiters.append((worker, waiter))
        if self.state == "idle" and self.fleet.freeze:
            self.fleet._spawn(self.freeze())
        return await waiter

    def connection_closed(self, worker: int) -> None:
        """A runtime process's connection closed. On demand the process exit says why; on
        Managed Instances a worker gone mid-invocation fails it, and the environment is reset
        (its other invocations fail with it), as a timed-out one is."""
        if not self.fleet.max_concurrency or self.state in ("stopping", "dead"):
            return
        lost = [inv for inv in self._current.values() if inv.worker == worker]
        if lost:
            for inv in lost:
                inv.finish(self, False, error=("Runtime.ExitError", "a runtime worker process exited mid-invocation"))
            self.state = "stopping"
            self.fleet._spawn(self.fleet._kill(self, graceful=False))

    def _answered(self, request_id: str) -> _Invocation | None:
        inv = self._current.pop(request_id, None)
        if inv is None:
            return None
        if self.state == "busy" and self.load == 0:  # not when it is being reaped
            self.state = "idle"
            self.idle_since = time.monotonic()
        return inv

    def invocation_response(self, request_id: str, body: bytes) -> int:
        inv = self._answered(request_id)
        if inv is None:
            return 400
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = body.decode(errors="replace")
        inv.finish(self, True, payload=payload)
        return 202

    def invocation_error(self, request_id: str, error_type: str, body: bytes) -> int:
        inv = self._answered(request_id)
        if inv is None:
            return 400
        inv.finish(self, False, error=error_fields(error_type, body), trace=error_trace(body))
        return 202

    def init_error(self, error_type: str, body: bytes) -> int:
        if self.init_failure is not None:
            return 403  # another worker reported first: awslambdaric's workers expect RAPID's 403
        self.init_failure = error_fields(error_type, body)
        self.init_trace = error_trace(body)
        return 202  # the runtime exits next; _exited() fails the waiting invocation with this


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal: {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


class LambdaFleet(Fleet):
    """A local Lambda function: ``with LambdaFleet("app.handler", task_root=...) as fleet``.

    ``fleet.invoke(event)`` runs one invocation and blocks for its :class:`InvocationResult`;
    ``fleet.burst(events, concurrency=N)`` runs many, N at a time. ``env`` adds the
    function's own environment variables to those Lambda sets. ``timeout`` is the function's
    timeout in seconds, ``memory_mb`` what the context reports. See the module docstring for
    cold starts, throttling, freezing and reaping.
    """

    def __init__(
        self,
        handler: str,
        task_root: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        reserved_concurrency: int = 100,
        max_concurrency: int | None = None,
        max_environments: int | None = None,
        timeout: float = 30.0,
        memory_mb: int = 128,
        idle_reap_after: float | None = None,
        shutdown_extension: bool = False,
        shutdown_grace: float = 2.0,
        freeze: bool | None = None,
        fork_server: bool = False,
        preload: Sequence[str] = (),
        function_name: str = "lambdapool-emulated",
        region: str = "us-east-1",
        python: str = sys.executable,
        host: str = "127.0.0.1",
    ) -> None:
        if "." not in handler:
            raise ConfigError(f"handler={handler!r}: expected 'module.function' (e.g. 'app.handler')")
        if not Path(task_root).is_dir():
            raise ConfigError(f"task_root={str(task_root)!r} is not a directory holding the handler's module")
        if reserved_concurrency < 1:
            raise ConfigError(f"reserved_concurrency={reserved_concurrency!r}: must be at least 1")
        if timeout <= 0:
            raise ConfigError(f"timeout={timeout!r}: must be a positive number of seconds")
        if max_concurrency is not None and (isinstance(max_concurrency, bool) or max_concurrency < 1):
            raise ConfigError(
                f"max_concurrency={max_concurrency!r}: processes per Managed Instances environment, "
                f"at least 1 (or None for on-demand environments)"
            )
        if max_concurrency is not None and freeze:
            raise ConfigError(
                "freeze=True with max_concurrency: Lambda Managed Instances never freeze an "
                "environment; leave freeze unset"
            )
        if max_environments is not None and max_environments < 1:
            raise ConfigError(
                f"max_environments={max_environments!r}: must be at least 1 (or None: "
                f"reserved_concurrency / max_concurrency, rounded up)"
            )
        self.handler = handler
        self.task_root = str(Path(task_root).resolve())
        self.env = dict(env or {})
        self.reserved_concurrency = reserved_concurrency
        self.max_concurrency = max_concurrency
        # The capacity provider's limit; by default as many as reserved concurrency can fill.
        self.max_environments = max_environments or math.ceil(reserved_concurrency / (max_concurrency or 1))
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.idle_reap_after = idle_reap_after
        self.shutdown_extension = shutdown_extension
        self.shutdown_grace = shutdown_grace
        self.freeze = max_concurrency is None if freeze is None else freeze
        self.fork_server = fork_server or bool(preload)
        self.preload = tuple(preload)
        self._zygote: ForkServer | None = None
        self.function_name = function_name
        self.region = region
        self.python = python
        self.host = host
        self.function_arn = f"arn:aws:lambda:{region}:{ACCOUNT}:function:{function_name}"
        super().__init__()
        self._envs: dict[str, Environment] = {}
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self._thread: threading.Thread | None = None
        self.log_dir = Path(".")

    def __repr__(self) -> str:
        mode = f" max_concurrency={self.max_concurrency}" if self.max_concurrency else ""
        return (
            f"<LambdaFleet {self.handler} environments={len(self._envs)} "
            f"reserved_concurrency={self.reserved_concurrency}{mode}>"
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LambdaFleet:
        if self._loop is not None:
            return self
        self.log_dir = Path(tempfile.mkdtemp(prefix="lambdapool-lambda-"))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lambdapool-runtime-api", daemon=True)
        self._thread.start()
        try:
            if self.fork_server:
                self._call(self._start_zygote())
            if self.idle_reap_after is not None:
                self._call(self._start_reaper())
        except BaseException:
            self.close()
            raise
        return self

    async def _start_zygote(self) -> None:
        self._zygote = ForkServer(self.python, self.preload, str(self.log_dir / "zygote.log"))
        try:
            await self._zygote.start()
        except RuntimeError as exc:
            self._zygote.stop()
            self._zygote = None
            raise EnvironmentStartError(str(exc)) from None

    def _spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background on the loop, keeping a reference until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Reap every environment (busy ones fail with ``Runtime.ExitError``) and stop the loop."""
        if self._loop is None:
            return
        try:
            self._call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join(10)
            self._loop.close()
            self._loop = None
            shutil.rmtree(self.log_dir, ignore_errors=True)

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._reap(list(self._envs.values()))
        if self._zygote is not None:
            self._zygote.stop()
            self._zygote = None

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the fleet is not started: use `with LambdaFleet(...) as fleet` or fleet.start()")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- invoking ------------------------------------------------------------------------------
    def invoke(self, event: Any = None) -> InvocationResult:
        """Invoke once (RequestResponse) and wait for the result."""
        return self._call(self._invoke(_encode(event)))

    def burst(self, events: Iterable[Any], concurrency: int = 10) -> list[InvocationResult]:
        """Invoke once per event, ``concurrency`` at a time; results in the order of ``events``.

        The callers are coroutines on the fleet's loop, not threads: a burst costs no threads."""
        return self._call(self._burst([_encode(e) for e in events], concurrency))

    async def _burst(self, payloads: list[bytes], concurrency: int) -> list[InvocationResult]:
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(payload: bytes) -> InvocationResult:
            async with gate:
                return await self._invoke(payload)

        return list(await asyncio.gather(*(one(p) for p in payloads)))

    async def _invoke(self, payload: bytes) -> InvocationResult:
        inv = _Invocation(payload, self.timeout)
        env = self._environment_with_room()
        fresh = env is None
        if env is None:
            why = self._throttle_reason()
            if why is not None:
                return self.ledger.record(
                    throttled(inv.request_id, inv.started_at, time.time(), (time.monotonic() - inv.t0) * 1000, why)
                )
            env = self._new_environment()
        inv.cold = env.init_ms is None  # it waits for an init: its own (on demand) or a shared one
        env.assign(inv)  # before the launch is awaited, so that nobody else takes its slot
        if fresh:
            await self._start_environment(env)
        try:
            limit = self.timeout + (INIT_TIMEOUT if inv.cold else 0.0)
            result = await asyncio.wait_for(asyncio.shield(inv.future), limit)
        except asyncio.TimeoutError:
            inv.finish(env, False, error=("Sandbox.Timedout", f"Task timed out after {self.timeout:.2f} seconds"))
            result = inv.future.result()
            await self._kill(env)
        return self.ledger.record(result)

    def _in_flight(self) -> int:
        return sum(e.load for e in self._envs.values())

    def _throttle_reason(self) -> str | None:
        """Why an invocation with no room anywhere is refused, or None if it may start one."""
        if self.max_concurrency is None:
            if len(self._envs) < self.reserved_concurrency:
                return None
            return (
                f"Rate Exceeded. (ReservedFunctionConcurrentInvocationLimitExceeded: "
                f"{len(self._envs)} of {self.reserved_concurrency} environments busy)"
            )
        if self._in_flight() >= self.reserved_concurrency:
            return (
                f"Rate Exceeded. (ReservedFunctionConcurrentInvocationLimitExceeded: {self._in_flight()} of "
                f"{self.reserved_concurrency} invocations in flight)"
            )
        if len(self._envs) >= self.max_environments:
            return (
                f"Rate Exceeded. ({len(self._envs)} of {self.max_environments} Managed Instances environments, "
                f"each with {self.max_concurrency} invocations in flight)"
            )
        return None

    def _environment_with_room(self) -> Environment | None:
        """On demand: an idle environment, the most recently used. Managed Instances: the
        fullest environment with a free slot (packing), a starting one included."""
        if self.max_concurrency is None:
            idle = [e for e in self._envs.values() if e.state == "idle"]
            return max(idle, key=lambda e: e.idle_since) if idle else None
        if self._in_flight() >= self.reserved_concurrency:
            return None
        room = [e for e in self._envs.values() if e.state in ("starting", "busy", "idle") and e.load < e.capacity]
        return max(room, key=lambda e: (e.load, e.idle_since)) if room else None

    def _new_environment(self) -> Environment:
        self._seq += 1
        env = Environment(self, f"env-{self._seq:04d}")
        self._envs[env.id] = env
        return env

    async def _launch(self, init_type: str | None = None) -> Environment:
        env = self._new_environment()
        await self._start_environment(env, init_type)
        return env

    async def _start_environment(self, env: Environment, init_type: str | None = None) -> None:
        if init_type is None:
            init_type = MANAGED_INSTANCES if self.max_concurrency else "on-demand"
        try:
            await env.launch(init_type)
        except OSError as exc:
            self._forget(env)
            if env.server is not None:
                env.server.close()
            env._fail_all(("Runtime.ExitError", f"the environment could not start: {exc}"))
            raise EnvironmentStartError(f"could not start `{self.python} -m awslambdaric`: {exc}") from exc
        self.ledger.started(len(self._envs))

    def provision(self, count: int, timeout: float = INIT_TIMEOUT) -> list[str]:
        """Start ``count`` environments ahead of traffic, as provisioned concurrency does.

        They run with ``AWS_LAMBDA_INITIALIZATION_TYPE=provisioned-concurrency``, are idle (and
        frozen) once their init is done, and invocations that land on them are warm. Returns
        their ids when all are ready; raises :class:`EnvironmentStartError` if one failed.
        """
        return self._call(self._provision(count, timeout))

    async def _provision(self, count: int, timeout: float) -> list[str]:
        cap, setting = (
            (self.max_environments, f"max_environments={self.max_environments}")
            if self.max_concurrency
            else (self.reserved_concurrency, f"reserved_concurrency={self.reserved_concurrency}")
        )
        room = cap - len(self._envs)
        if count > room:
            raise ConfigError(f"provision(count={count}): only {room} environments left under {setting}")
        init_type = None if self.max_concurrency else "provisioned-concurrency"
        envs = [await self._launch(init_type) for _ in range(count)]
        waits = []
        for e in envs:
            ready_or_exited: set[asyncio.Future[Any]] = {e.ready, e.exited}
            waits.append(asyncio.wait(ready_or_exited, return_when=asyncio.FIRST_COMPLETED))
        await asyncio.wait_for(asyncio.gather(*waits), timeout)
        failed = [e for e in envs if not e.ready.done()]
        if failed:
            tail = failed[0].log_path.read_text(errors="replace")[-1500:]
            raise EnvironmentStartError(f"{len(failed)} of {count} provisioned environments failed init: {tail}")
        return [e.id for e in envs]

    def _forget(self, env: Environment) -> None:
        self._envs.pop(env.id, None)

    def _process_env(self, env_id: str, port: int, init_type: str) -> dict[str, str]:
        """The variables Lambda sets for a Python function, then the function's own."""
        day = time.strftime("%Y/%m/%d", time.gmtime())
        pythonpath = os.pathsep.join(p for p in (self.task_root, os.environ.get("PYTHONPATH", "")) if p)
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "TZ": ":UTC",
            "PYTHONPATH": pythonpath,
            "LAMBDA_TASK_ROOT": self.task_root,
            "_HANDLER": self.handler,
            "AWS_EXECUTION_ENV": self._execution_env(),
            "AWS_LAMBDA_RUNTIME_API": f"{self.host}:{port}",
            "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"{day}/[$LATEST]{env_id}-{secrets.token_hex(8)}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": init_type,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            # awslambdaric's own multi-process mode: it forks this many workers
            **({"AWS_LAMBDA_MAX_CONCURRENCY": str(self.max_concurrency)} if self.max_concurrency else {}),
            **self.env,
        }

    def _execution_env(self) -> str:
        """``AWS_Lambda_python3.X``. awslambdaric lets Python signal handlers run only when it
        polls ``GET /next`` in a thread, which it does on the python3.12+ runtimes; so that
        SIGTERM reaches a handler, a fleet with a shutdown extension or on Managed Instances
        (scaled in by SIGTERM) presents itself as 3.12+."""
        version = sys.version_info[:2]
        if (self.shutdown_extension or self.max_concurrency) and version < (3, 12):
            version = (3, 12)
        return f"AWS_Lambda_python{version[0]}.{version[1]}"

    # -- freezing and reaping ------------------------------------------------------------------
    @property
    def environments(self) -> list[EnvironmentInfo]:
        """A snapshot of the live environments."""
        return self._call(self._snapshot())

    async def _snapshot(self) -> list[EnvironmentInfo]:
        return [e.info() for e in self._envs.values()]

    def freeze_all(self, timeout: float = 5.0) -> int:
        """Freeze every idle environment now and wait until each is seen stopped; returns how many."""
        return self._call(self._freeze_all(timeout))

    async def _freeze_all(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            idle = [e for e in self._envs.values() if e.state == "idle"]
            frozen = await asyncio.gather(*(e.freeze() for e in idle))
            if all(frozen):
                return len(idle)
            await asyncio.sleep(0.002)  # some are still on their way back to GET /next
        raise TimeoutError(f"idle environments not all frozen within {timeout}s")

    def reap(self, idle_for: float = 0.0) -> list[str]:
        """Reap the environments idle for at least ``idle_for`` seconds; returns their ids."""
        return self._call(self._reap_idle(idle_for))

    async def _reap_idle(self, idle_for: float) -> list[str]:
        now = time.monotonic()
        victims = [
            e for e in self._envs.values() if e.state == "idle" and e.load == 0 and now - e.idle_since >= idle_for
        ]
        await self._reap(victims)
        return [e.id for e in victims]

    async def _reap(self, victims: list[Environment]) -> None:
        for env in victims:
            env.state = "stopping"
        graceful = self.shutdown_extension or self.max_concurrency is not None  # Managed Instances: SIGTERM first
        await asyncio.gather(*(self._kill(env, graceful=graceful) for env in victims))
        self.ledger.reaped(len(victims))

    async def _kill(self, env: Environment, graceful: bool = False) -> None:
        if self.max_concurrency is not None:
            await self._kill_group(env, graceful)
            return
        if env.exited.done():
            return
        if graceful:
            await env.shut_down()
            try:
                await asyncio.wait_for(asyncio.shield(env.exited), self.shutdown_grace)
                return
            except asyncio.TimeoutError:
                pass
        env.kill()
        await env.exited

    async def _kill_group(self, env: Environment, graceful: bool) -> None:
        """Managed Instances: the main process dies at once on SIGTERM, its workers once they
        have closed: wait for the whole process group, then SIGKILL what is left of it."""
        env.state = "stopping"
        if env.pid <= 1:
            return
        if graceful and not env.exited.done():
            await env.shut_down()
            if await processes.wait_group_gone(env.pid, self.shutdown_grace):
                await env.exited
                return
        env.kill()
        await processes.wait_group_gone(env.pid, 5.0)
        await env.exited

    async def _start_reaper(self) -> None:
        assert self.idle_reap_after is not None
        period = max(0.02, self.idle_reap_after / 4)

        async def reaper() -> None:
            while True:
                await asyncio.sleep(period)
                await self._reap_idle(self.idle_reap_after or 0.0)

        self._spawn(reaper())


def _encode(event: Any) -> bytes:
    if isinstance(event, bytes):
        return event
    return json.dumps(event).encode()
