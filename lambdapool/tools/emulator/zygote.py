"""A fork server for execution environments: start the runtime once, fork it per environment.

Why: on a small machine a fresh ``python -m awslambdaric`` costs an interpreter start plus the
runtime's and the handler's imports (~0.5 s of CPU with psycopg), so 100 cold starts on two
cores take half a minute. A *zygote* starts the interpreter and imports the ``preload``
modules (``psycopg``, say) once; each environment is then a ``fork()`` of it that sets
Lambda's variables, changes to the task root and imports and enters awslambdaric's real
``main`` (~25 ms), against its own Runtime API port as before. The environment is still a real
process under the real runtime client, frozen and killed the same way; what its cold start no
longer measures is the interpreter start and the preloaded imports. awslambdaric itself is
never preloaded: its C client reads ``AWS_LAMBDA_RUNTIME_API`` once, when it is loaded.

Protocol (JSON lines): the fleet writes ``{"id", "env", "cwd", "handler", "log"}`` on the
zygote's stdin and reads ``{"id", "pid"}`` back, then ``{"exit": pid, "code": n}`` when the
zygote reaps that child. The zygote is single-threaded (so forking it is safe), dies with the
fleet's loop thread, and its children die with it (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lambdapool.tools.spawning import child_setup

# -- the zygote process -------------------------------------------------------------------------


def _send(message: dict[str, Any]) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())  # unbuffered: nothing to copy into a fork


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _become_environment(request: dict[str, Any], wakeup_fds: tuple[int, int]) -> None:
    """In the forked child: look like a freshly started ``python -m awslambdaric handler``."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in wakeup_fds:
            os.close(fd)
        os.setpgrp()  # its own group: the fleet freezes and kills environments by group
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the zygote
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:0] = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.argv = ["awslambdaric", request["handler"]]
        from awslambdaric.__main__ import main

        main(sys.argv)
        code = 0
    except SystemExit as exc:  # the runtime exits 1 after reporting an init error
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def main(preload: Sequence[str]) -> None:
    for module in preload:
        importlib.import_module(module)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wakeup fd fires
    signal.set_wakeup_fd(wake_w)
    _send({"ready": True})
    buffer = b""
    while True:
        readable, _, _ = select.select([0, wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
        if 0 in readable:
            chunk = os.read(0, 65536)
            if not chunk:
                return  # the fleet is gone; our children follow us
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _become_environment(request, (wake_r, wake_w))
                _send({"id": request["id"], "pid": pid})
        _reap()


# -- the fleet's side ---------------------------------------------------------------------------


_ENTRY = "import sys; from lambdapool.tools.emulator.zygote import main; main(sys.argv[1:])"


class ForkServer:
    """The fleet's handle on its zygote; used only on the fleet's event loop."""

    def __init__(self, python: str, preload: Sequence[str], log_path: str) -> None:
        self.python = python
        self.preload = list(preload)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._buffer = b""
        self._spawns: dict[str, asyncio.Future[int]] = {}
        self._on_exit: dict[int, Callable[[int], None]] = {}
        self._early_exits: dict[int, int] = {}
        self._ready: asyncio.Future[None] | None = None
        self._writer: asyncio.WriteTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.python, "-c", _ENTRY, *self.preload],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                preexec_fn=lambda: child_setup(None),
            )
        assert self.proc.stdout is not None
        loop.add_reader(self.proc.stdout.fileno(), self._readable)
        # Requests go through a buffering transport: a blocking write from the loop could wait on
        # a zygote that is itself waiting for the loop to read its replies.
        self._writer, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, self.proc.stdin)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), 60)
        except asyncio.TimeoutError:
            raise RuntimeError(f"the fork server did not start: {self._log_tail()}") from None

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-1500:]
        except OSError:
            return "(no log)"

    def _readable(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        if not chunk:  # the zygote died: no spawn will ever be answered
            asyncio.get_running_loop().remove_reader(self.proc.stdout.fileno())
            error = RuntimeError(f"the fork server exited: {self._log_tail()}")
            for future in [*self._spawns.values(), self._ready]:
                if future is not None and not future.done():
                    future.set_exception(error)
            return
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            message = json.loads(line)
            if "ready" in message and self._ready is not None:
                self._ready.set_result(None)
            elif "exit" in message:
                callback = self._on_exit.pop(message["exit"], None)
                if callback is None:
                    self._early_exits[message["exit"]] = message["code"]
                else:
                    callback(message["code"])
            elif "id" in message:
                self._spawns.pop(message["id"]).set_result(message["pid"])

    async def spawn(self, env_id: str, env: dict[str, str], cwd: str, handler: str, log: str) -> int:
        """Fork an environment; returns its pid."""
        assert self._writer is not None
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._spawns[env_id] = future
        request = {"id": env_id, "env": env, "cwd": cwd, "handler": handler, "log": log}
        self._writer.write((json.dumps(request) + "\n").encode())
        return await future

    def on_exit(self, pid: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(returncode)`` when ``pid`` exits (at once if it already has)."""
        if pid in self._early_exits:
            callback(self._early_exits.pop(pid))
        else:
            self._on_exit[pid] = callback

    def stop(self) -> None:
        if self.proc is None:
            return
        assert self.proc.stdout is not None and self.proc.stdin is not None
        try:
            asyncio.get_running_loop().remove_reader(self.proc.stdout.fileno())
        except RuntimeError:
            pass
        if self._writer is not None:
            self._writer.close()  # EOF: the zygote returns, its children die with it
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc = None
