"""A throwaway server process for tests: what PostgresServer and PgBouncer share.

Theory of operation
-------------------
* Postgres and PgBouncer refuse root, so as root they run as an unprivileged user
  (``postgres`` by default, ``LAMBDAPOOL_PG_USER`` to change: :func:`run_as`), in a private temp
  dir that user owns; the dir carries an ``owner.pid`` marker.
* No server outlives its test run: the child gets ``PR_SET_PDEATHSIG`` (:func:`child_setup`)
  so it dies with the process that started it, and :func:`sweep_orphans` stops what an owner
  that died anyway left, signalling only a process whose command line names its own dir.
* :class:`ServerProcess` starts the server on a free port (again on another one if the port was
  taken meanwhile), waits until it is ready, reports failures with the tail of its log, and stops
  it (a polite signal, then SIGKILL).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from lambdapool.errors import LambdapoolError
from lambdapool.tools.spawning import child_setup, free_port, pid_alive
from lambdapool.tools.waiting import WaitTimeout, wait_for

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+


def run_as(not_found: type[LambdapoolError]) -> pwd.struct_passwd | None:
    """The unprivileged user to run a server as when we are root, else None (run as ourselves);
    ``not_found`` is raised when that user does not exist."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("LAMBDAPOOL_PG_USER", "postgres")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise not_found(
            f"running as root, and Postgres and PgBouncer refuse root; user {name!r} does not exist. "
            "Create it (useradd --system postgres) or set LAMBDAPOOL_PG_USER to another user."
        ) from None


def preexec(user: pwd.struct_passwd | None) -> Callable[[], None]:
    """Popen's ``preexec_fn`` for a server run as ``user``.

    The kernel's parent-death signal fires when the *thread* that forked exits: only the main
    thread lives as long as the process (a server started from a worker thread is left to
    :func:`sweep_orphans` instead).
    """
    main = threading.current_thread() is threading.main_thread()
    return lambda: child_setup(user, main)


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send ``sig`` to a child still running, SIGKILL it if it lingers past ``timeout``; reap it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sweep_orphans(prefix: str, pidfile: str, program: str, sig: int, tmp_root: str | None = None) -> list[str]:
    """Stop and remove the dirs named ``prefix*`` whose owner process is gone; returns them.

    Only dirs we made (the prefix and an ``owner.pid`` marker); the pid in ``pidfile`` (relative
    to the dir, first line) gets ``sig`` only if its command line names ``program`` and the dir,
    never a reused pid.
    """
    removed = []
    for path in glob.glob(os.path.join(tmp_root or tempfile.gettempdir(), prefix + "*")):
        try:
            owner = int(Path(path, "owner.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if pid_alive(owner):
            continue
        try:
            pid = int(Path(path, pidfile).read_text().split("\n", 1)[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if program in cmdline and path in cmdline:
                os.kill(pid, sig)
        except (OSError, ValueError):
            pass
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


class ServerProcess:
    """The start/stop half of a throwaway server; a subclass says what to run and when it is ready.

    Subclasses set the class attributes, and the instance attributes ``host``, ``port`` (0 = pick
    one), ``start_timeout``, ``base_dir`` and ``_proc`` (dataclass fields or ``__init__``).
    """

    program: ClassVar[str]  # in messages and orphan sweeps: "postgres"
    dir_prefix: ClassVar[str]
    log_name: ClassVar[str]
    pidfile: ClassVar[str]  # where the server writes its pid, relative to its dir
    start_error: ClassVar[type[LambdapoolError]]
    ready_state: ClassVar[str] = "ready"  # "not <ready_state> after N s"
    stop_signal: ClassVar[int] = signal.SIGTERM
    port_in_use: ClassVar[tuple[str, ...]] = ("Address already in use",)

    host: str
    port: int
    start_timeout: float
    base_dir: Path | None
    _proc: subprocess.Popen[bytes] | None

    # -- state -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_file(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / self.log_name

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    # -- the parts a subclass's start and stop are made of ---------------------------------
    @classmethod
    def sweep(cls, tmp_root: str | None = None) -> list[str]:
        """:func:`sweep_orphans` for this kind of server; returns the dirs removed."""
        return sweep_orphans(cls.dir_prefix, cls.pidfile, cls.program, cls.stop_signal, tmp_root)

    def _make_dir(self, mode: int) -> Path:
        """Sweep orphans, then a fresh private dir with our ``owner.pid`` marker."""
        self.sweep()
        base = Path(tempfile.mkdtemp(prefix=self.dir_prefix))
        self.base_dir = base
        (base / "owner.pid").write_text(str(os.getpid()))
        base.chmod(mode)
        return base

    def _launch(self, command: Callable[[], Sequence[str]], user: pwd.struct_passwd | None) -> None:
        """Run ``command()`` (built once the port is known) until it is ready; a port taken
        between the probe and the bind means another try on another port."""
        assert self.base_dir is not None
        for attempt in range(3):
            self.port = self.port or free_port(self.host)
            with open(self.log_file, "ab") as log:
                self._proc = subprocess.Popen(
                    command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.base_dir,
                    preexec_fn=preexec(user),
                )
            try:
                self._wait_ready()
                return
            except self.start_error:
                tail = self._log_tail()
                self._kill()
                if attempt < 2 and any(marker in tail for marker in self.port_in_use):
                    self.port = 0
                    continue
                raise

    def _ready(self) -> bool:
        raise NotImplementedError

    def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None

        def ready() -> bool:
            if proc.poll() is not None:
                raise self.start_error(f"{self.program} exited with {proc.returncode}: {self._log_tail()}")
            return self._ready()

        try:
            wait_for(ready, self.program, self.start_timeout)
        except WaitTimeout:
            raise self.start_error(
                f"{self.program} not {self.ready_state} after {self.start_timeout}s: {self._log_tail()}"
            ) from None

    def _log_tail(self, size: int = 2000) -> str:
        if self.base_dir is None:
            return "(no log)"
        try:
            return self.log_file.read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    def _kill(self, sig: int | None = None) -> None:
        """Signal the server (``stop_signal`` by default), SIGKILL it if it lingers."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, self.stop_signal if sig is None else sig)

    def _remove_dir(self) -> None:
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None
