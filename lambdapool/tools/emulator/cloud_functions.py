"""Local Cloud Functions (gen2) / Cloud Run instances: real ``functions-framework`` servers.

Theory of operation
-------------------
* An *instance* is ``python -m functions_framework --target T --source S --port N``: gunicorn
  with one worker serving ``concurrency`` requests at once on threads (``THREADS``). The
  function's module is imported in the gunicorn master before it forks, and requests run in
  the worker: :attr:`InstanceInfo.worker_pid` is where the handler's connections live. It runs
  under :mod:`.cf_server`, which records each request's exception, so that a failed request's
  result carries the function's error type, message and traceback (as on Lambda), not a bare 500.
* A request goes to a started instance with a free slot (the busiest such: requests are
  packed, as Cloud Run fills an instance up to its concurrency), else a new instance starts
  (a cold start, ``init_ms`` = launch to accepting requests), up to ``instances``. When all
  are full the request waits up to ``queue_timeout`` for a slot, then is refused with
  ``TooManyRequestsException`` (Cloud Run's 429).
* With ``freeze=True`` an instance with no request in flight is stopped (SIGSTOP to its
  process group: "CPU is only allocated during request processing") and thawed for the
  next request, like Lambda's freeze, so nothing runs between requests.
* :meth:`CloudFunctionFleet.reap` scales in as Cloud Run does: SIGTERM to the server (gunicorn
  hands it to its worker), SIGKILL after ``shutdown_grace``; :meth:`~CloudFunctionFleet.close`
  just kills.
* Launches run on one long-lived thread of the fleet: a child's parent-death signal fires
  when the thread that started it ends, and callers' threads come and go.
* ``metadata``: a started :class:`~lambdapool.testing.MetadataServer` stands in for Google's
  metadata server: its ``GCE_METADATA_HOST`` (and ``GCE_METADATA_IP``, google-auth's ping) go
  into every instance's environment, so the function's service-account token and email (Cloud
  SQL IAM logins) come from it, as on Cloud Run.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lambdapool.errors import ConfigError
from lambdapool.tools.emulator import processes
from lambdapool.tools.emulator.base import Fleet
from lambdapool.tools.emulator.cf_server import ERRORS_FILE
from lambdapool.tools.emulator.failures import traceback_text
from lambdapool.tools.emulator.results import InvocationResult, throttled
from lambdapool.tools.spawning import child_setup, free_port

if TYPE_CHECKING:
    from lambdapool.tools.testing.metadata import MetadataServer

SIGNATURES = ("http", "cloudevent")
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class InstanceInfo:
    """A snapshot of one instance."""

    id: str
    pid: int  # the gunicorn master
    worker_pid: int | None  # where requests (and the function's connections) run
    in_flight: int
    requests: int
    frozen: bool
    init_ms: float | None


class _Instance:
    def __init__(self, inst_id: str) -> None:
        self.id = inst_id
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.worker_pid: int | None = None
        self.in_flight = 0
        self.requests = 0
        self.frozen = False
        self.init_ms: float | None = None
        self.ready = threading.Event()
        self.failure: str | None = None
        self.idle_since = 0.0
        self.log_path = Path(os.devnull)
        self.errors = _ErrorLog(Path(os.devnull))

    def info(self) -> InstanceInfo:
        pid = self.proc.pid if self.proc else 0
        return InstanceInfo(self.id, pid, self.worker_pid, self.in_flight, self.requests, self.frozen, self.init_ms)


class CloudFunctionFleet(Fleet):
    """Local Cloud Functions: ``with CloudFunctionFleet(source="main.py", target="fn") as fleet``.

    ``signature`` is ``"http"`` (the event is POSTed as JSON; the payload is the JSON or text
    answer) or ``"cloudevent"`` (the event is the data of a binary-mode CloudEvent).
    ``instances`` caps the instance count, ``concurrency`` the requests in flight per instance.
    ``metadata``: a started :class:`~lambdapool.testing.MetadataServer` the instances take their
    service account from (``GCE_METADATA_HOST``); ``env`` wins over it.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        target: str,
        *,
        signature: str = "http",
        instances: int = 1,
        concurrency: int = 1,
        env: Mapping[str, str] | None = None,
        freeze: bool = True,
        queue_timeout: float = 10.0,
        timeout: float = 60.0,
        shutdown_grace: float = 10.0,
        service: str = "lambdapool-emulated",
        python: str = sys.executable,
        host: str = "127.0.0.1",
        metadata: MetadataServer | None = None,
    ) -> None:
        if signature not in SIGNATURES:
            raise ConfigError(f"signature={signature!r} is not one of {', '.join(SIGNATURES)}")
        if not Path(source).is_file():
            raise ConfigError(f"source={str(source)!r} is not a file holding the function {target!r}")
        if instances < 1 or concurrency < 1:
            raise ConfigError(f"instances={instances!r}, concurrency={concurrency!r}: both must be at least 1")
        self.source = str(Path(source).resolve())
        self.target = target
        self.signature = signature
        self.max_instances = instances
        self.concurrency = concurrency
        self.env = dict(env or {})
        self.freeze = freeze
        self.queue_timeout = queue_timeout
        self.timeout = timeout
        self.shutdown_grace = shutdown_grace
        self.service = service
        self.python = python
        self.host = host
        self.metadata = metadata
        super().__init__()
        self._instances: list[_Instance] = []
        self._cond = threading.Condition()
        self._launcher: ThreadPoolExecutor | None = None
        self._seq = 0
        self.log_dir = Path(".")

    def __repr__(self) -> str:
        return f"<CloudFunctionFleet {self.target} instances={len(self._instances)}/{self.max_instances}>"

    def start(self) -> CloudFunctionFleet:
        if self._launcher is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="lambdapool-cf-"))
            self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lambdapool-cf-launcher")
        return self

    def close(self) -> None:
        """Kill every instance (SIGKILL, no goodbye: use :meth:`reap` for a graceful scale-in)."""
        with self._cond:
            victims, self._instances = self._instances, []
        for inst in victims:
            self._stop(inst, graceful=False)
        if self._launcher is not None:
            self._launcher.shutdown()
            self._launcher = None
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def reap(self, idle_for: float = 0.0) -> list[str]:
        """Scale in: stop the instances idle (nothing in flight) for ``idle_for`` seconds.

        As Cloud Run does: SIGTERM to the server (gunicorn passes it on to its worker), then
        SIGKILL after ``shutdown_grace`` seconds. Returns the ids of the instances stopped.
        """
        now = time.monotonic()
        with self._cond:
            victims = [
                i for i in self._instances if i.in_flight == 0 and i.proc is not None and now - i.idle_since >= idle_for
            ]
            for inst in victims:
                self._instances.remove(inst)
        for inst in victims:
            self._stop(inst, graceful=True)
        self.ledger.reaped(len(victims))
        return [i.id for i in victims]

    def _stop(self, inst: _Instance, graceful: bool) -> None:
        if inst.proc is None:
            return
        pid = inst.proc.pid
        if graceful:
            processes.thaw(pid)  # a frozen server could not shut down
            inst.frozen = False
            inst.proc.send_signal(signal.SIGTERM)
            try:
                inst.proc.wait(self.shutdown_grace)
            except subprocess.TimeoutExpired:
                pass
        processes.signal_group(pid, signal.SIGKILL)  # the worker too, if it outlived its master
        inst.proc.wait()

    @property
    def instances(self) -> list[InstanceInfo]:
        with self._cond:
            return [inst.info() for inst in self._instances]

    # -- invoking ------------------------------------------------------------------------------
    def invoke(self, event: Any = None) -> InvocationResult:
        """Send one request and wait for its answer."""
        request_id, started_at, t0 = str(uuid.uuid4()), time.time(), time.monotonic()
        inst, cold = self._acquire()
        if inst is None:
            why = (
                f"no instance free within queue_timeout={self.queue_timeout}s "
                f"(429: {self.max_instances} instances full)"
            )
            result = throttled(request_id, started_at, time.time(), (time.monotonic() - t0) * 1000, why)
        else:
            try:
                ok, payload, error, trace = self._send(inst, request_id, event)
            finally:
                self._release(inst)
            init_ms = inst.init_ms if cold else None
            result = InvocationResult.finished_now(
                request_id, inst.id, cold, init_ms, t0, started_at, ok, payload, error, trace=trace
            )
        return self.ledger.record(result)

    def _acquire(self) -> tuple[_Instance | None, bool]:
        deadline = time.monotonic() + self.queue_timeout
        with self._cond:
            while True:
                open_ = [i for i in self._instances if i.in_flight < self.concurrency and i.failure is None]
                if open_:
                    inst, cold = max(open_, key=lambda i: i.in_flight), False
                    break
                if len(self._instances) < self.max_instances:
                    self._seq += 1
                    inst, cold = _Instance(f"inst-{self._seq:04d}"), True
                    self._instances.append(inst)
                    self.ledger.started(len(self._instances))
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    return None, False
            inst.in_flight += 1
            inst.requests += 1
            if inst.frozen and inst.proc is not None:
                processes.thaw(inst.proc.pid)
                inst.frozen = False
        if cold:
            self._launch(inst)
        inst.ready.wait(START_TIMEOUT)
        return inst, cold

    def _release(self, inst: _Instance) -> None:
        with self._cond:
            inst.in_flight -= 1
            inst.idle_since = time.monotonic()
            if inst.failure is not None and inst.in_flight == 0 and inst in self._instances:
                self._instances.remove(inst)  # a dead instance is replaced by a new one
            elif self.freeze and inst.in_flight == 0 and inst.proc is not None and not inst.frozen:
                processes.stop_group(inst.proc.pid)
                inst.frozen = True
            self._cond.notify()

    def freeze_all(self, timeout: float = 5.0) -> int:
        """Freeze every instance with nothing in flight and wait until each is seen stopped."""
        with self._cond:
            idle = [i for i in self._instances if i.in_flight == 0 and i.proc is not None and i.failure is None]
            for inst in idle:
                if not inst.frozen:
                    processes.stop_group(inst.proc.pid)  # type: ignore[union-attr]
                    inst.frozen = True
        for inst in idle:
            pid = inst.worker_pid or inst.proc.pid  # type: ignore[union-attr]
            if not processes.wait_stopped_sync(pid, timeout):
                raise TimeoutError(f"instance {inst.id} (pid {pid}) not stopped within {timeout}s")
        return len(idle)

    # -- one instance --------------------------------------------------------------------------
    def _launch(self, inst: _Instance) -> None:
        """Start the server (on the launcher thread) and wait until it accepts requests."""
        assert self._launcher is not None, "the fleet is not started: use `with CloudFunctionFleet(...)`"
        t0 = time.monotonic()
        try:
            self._launcher.submit(self._spawn, inst).result()
            self._wait_ready(inst)
            inst.init_ms = (time.monotonic() - t0) * 1000
        except (OSError, RuntimeError) as exc:
            inst.failure = str(exc)
        finally:
            inst.ready.set()

    def _spawn(self, inst: _Instance) -> None:
        inst.port = free_port(self.host)
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(Path(self.source).parent), os.environ.get("PYTHONPATH", "")) if p
            ),
            "THREADS": str(self.concurrency),
            "WORKERS": "1",
            "K_SERVICE": self.service,
            "K_REVISION": f"{self.service}-00001-{secrets.token_hex(2)}",
            "K_CONFIGURATION": self.service,
            "PORT": str(inst.port),
            **(self.metadata.environ if self.metadata is not None else {}),  # read now: started by now
            **self.env,
        }
        inst.log_path = self.log_dir / f"{inst.id}.log"
        inst.errors = _ErrorLog(self.log_dir / f"{inst.id}.errors")
        env[ERRORS_FILE] = str(inst.errors.path)
        with open(inst.log_path, "ab") as log:
            inst.proc = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "lambdapool.tools.emulator.cf_server",  # functions-framework's own CLI, its errors recorded
                    "--target",
                    self.target,
                    "--source",
                    self.source,
                    "--signature-type",
                    self.signature,
                    "--host",
                    self.host,
                    "--port",
                    str(inst.port),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: child_setup(None),
            )

    def _wait_ready(self, inst: _Instance) -> None:
        assert inst.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if inst.proc.poll() is not None:
                err = inst.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"functions-framework exited with {inst.proc.returncode}: {err}")
            workers = processes.children(inst.proc.pid)
            if workers:
                try:
                    with socket.create_connection((self.host, inst.port), timeout=0.5):
                        inst.worker_pid = workers[0]
                        return
                except OSError:
                    pass
            time.sleep(0.01)
        raise RuntimeError(f"functions-framework not serving on port {inst.port} after {START_TIMEOUT}s")

    def _send(
        self, inst: _Instance, request_id: str, event: Any
    ) -> tuple[bool, Any, tuple[str, str] | None, str | None]:
        if inst.failure is not None:
            raised = inst.errors.take(None)  # the function's module raised at import
            if raised is not None:
                return False, None, raised[:2], raised[2]
            return False, None, ("InstanceStartError", inst.failure), None
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        headers = {"Content-Type": "application/json", "Function-Execution-Id": request_id}
        if self.signature == "cloudevent":
            headers.update(
                {
                    "ce-id": request_id,
                    "ce-source": "//lambdapool/emulator",
                    "ce-specversion": "1.0",
                    "ce-type": "dev.lambdapool.emulator.event",
                }
            )
        conn = http.client.HTTPConnection(self.host, inst.port, timeout=self.timeout)
        try:
            conn.request("POST", "/", body, headers)
            response = conn.getresponse()
            data = response.read()
        except TimeoutError:
            return False, None, ("Timeout", f"no answer within timeout={self.timeout}s"), None
        except (OSError, http.client.HTTPException) as exc:
            inst.failure = f"instance {inst.id} stopped answering: {exc}"
            return False, None, ("InstanceError", inst.failure), None
        finally:
            conn.close()
        try:
            payload: Any = json.loads(data) if data else None
        except ValueError:
            payload = data.decode(errors="replace")
        if 200 <= response.status < 300:
            return True, payload, None, None
        raised = inst.errors.take(request_id) if response.status == 500 else None
        if raised is not None:  # the function raised: its exception, not the bare 500
            return False, payload, raised[:2], raised[2]
        return False, payload, (f"HTTP {response.status}", data.decode(errors="replace")[:500]), None


class _ErrorLog:
    """The exceptions an instance's requests raised (:mod:`.cf_server` writes them), read as they
    come: only what was written since the last read is parsed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._by_id: dict[str | None, tuple[str, str, str | None]] = {}
        self._lock = threading.Lock()

    def take(self, request_id: str | None) -> tuple[str, str, str | None] | None:
        """(type, message, traceback) of the request's exception (None: the module's, at import)."""
        with self._lock:
            if request_id not in self._by_id:
                self._read()
            if request_id is None:  # the module's: every request to the instance failed with it
                return self._by_id.get(None)
            return self._by_id.pop(request_id, None)

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            stack = entry.get("stackTrace") if isinstance(entry.get("stackTrace"), list) else []
            self._by_id[entry.get("id")] = (
                str(entry.get("errorType") or "Unhandled"),
                str(entry.get("errorMessage", "")),
                traceback_text([str(frame) for frame in stack]),
            )
