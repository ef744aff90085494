"""Throwaway PgBouncer in front of a test Postgres: ``with PgBouncer(pg, default_pool_size=20) as pgb``.

Theory of operation
-------------------
* The binary comes from ``bin=``, ``LAMBDAPOOL_PGBOUNCER_BIN``, ``PATH`` or ``/usr/sbin``; when
  none is found, :class:`PgBouncerNotFound` says where we looked and how to install it.
* PgBouncer refuses root, so as root it runs as the same unprivileged user as the throwaway
  Postgres (:func:`lambdapool.testing.postgres._run_as`) in a temp dir that user owns, which
  holds ``pgbouncer.ini``, ``userlist.txt``, the log and the pid file.
* It authenticates clients and logs in to the server as ``auth_user``. With a password (given,
  or taken from the backend's DSN) both sides use SCRAM, so ``userlist.txt`` holds the *plain*
  password: PgBouncer cannot log in to a SCRAM server with a secret of its own making.
  Without one, clients are trusted.
* No PgBouncer outlives its test run: it dies with the process that started it
  (``PR_SET_PDEATHSIG``), and :func:`sweep_orphans` stops those whose owner is gone.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from lambdapool.errors import LambdapoolError
from lambdapool.testing.postgres import _child_setup, _pid_alive, _run_as, free_port

DIR_PREFIX = "lambdapool-pgbouncer-"
POOL_MODES = ("session", "transaction", "statement")


class PgBouncerNotFound(LambdapoolError):
    """No PgBouncer binary could be found on this machine."""

    __module__ = "lambdapool.testing"


class PgBouncerStartError(LambdapoolError):
    """PgBouncer failed to start; the message carries the tail of its log."""

    __module__ = "lambdapool.testing"


class _Backend(Protocol):
    @property
    def dsn(self) -> str: ...


def find_pgbouncer(binary: str | None = None) -> str:
    """Return the path of the ``pgbouncer`` executable, or raise :class:`PgBouncerNotFound`."""
    explicit = binary or os.environ.get("LAMBDAPOOL_PGBOUNCER_BIN")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise PgBouncerNotFound(
            f"LAMBDAPOOL_PGBOUNCER_BIN / bin={explicit!r} is not an executable; "
            "point it at the pgbouncer binary (e.g. /usr/sbin/pgbouncer)"
        )
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise PgBouncerNotFound(
        "no pgbouncer binary found on PATH or in /usr/sbin, /usr/local/sbin, /usr/local/bin. "
        "Install it (Debian/Ubuntu: apt-get install -y pgbouncer; macOS: brew install pgbouncer) "
        "or set LAMBDAPOOL_PGBOUNCER_BIN to its path."
    )


def sweep_orphans(tmp_root: str | None = None) -> list[str]:
    """Stop and remove PgBouncers left by test runs that died; returns the dirs removed.

    Only dirs we made (our prefix and an ``owner.pid`` marker) whose owner process is gone.
    """
    removed = []
    root = tmp_root or tempfile.gettempdir()
    for path in glob.glob(os.path.join(root, DIR_PREFIX + "*")):
        try:
            owner = int(Path(path, "owner.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        try:
            pid = int(Path(path, "pgbouncer.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if "pgbouncer" in cmdline and path in cmdline:  # only ours, never a reused pid
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _quote_userlist(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _ini_value(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class PgBouncer:
    """A private PgBouncer for one backend Postgres.

    ``pool_mode``, ``default_pool_size``, ``max_client_conn`` and ``max_db_connections`` are
    PgBouncer's own settings (0 = unlimited for the last); ``extra`` adds any other line of the
    ``[pgbouncer]`` section (``{"server_idle_timeout": 5}``). ``password`` defaults to the one in
    the backend's DSN. ``.dsn`` reaches the backend's database through PgBouncer,
    ``.admin_dsn`` its admin console; :meth:`show` reads ``SHOW POOLS`` / ``STATS`` / ... as dicts.
    """

    def __init__(
        self,
        backend: _Backend,
        *,
        pool_mode: str = "transaction",
        default_pool_size: int = 20,
        max_client_conn: int = 1000,
        max_db_connections: int = 0,
        auth_user: str = "postgres",
        password: str | None = None,
        admin_users: Sequence[str] = ("postgres",),
        extra: Mapping[str, object] | None = None,
        bin: str | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = 10.0,
    ) -> None:
        if pool_mode not in POOL_MODES:
            from lambdapool.errors import ConfigError

            raise ConfigError(f"pool_mode={pool_mode!r} is not one of {', '.join(POOL_MODES)}")
        self.backend = backend
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.max_db_connections = max_db_connections
        self.auth_user = auth_user
        self._password = password
        self.admin_users = tuple(admin_users)
        self.extra = dict(extra or {})
        self.bin = bin
        self.host = host
        self.port = 0
        self.start_timeout = start_timeout
        self.base_dir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._server: dict[str, str] = {}

    def __repr__(self) -> str:  # never the password
        state = "running" if self.running else "stopped"
        return (
            f"<PgBouncer {self.host}:{self.port} pool_mode={self.pool_mode} "
            f"default_pool_size={self.default_pool_size} {state}>"
        )

    # -- addresses -------------------------------------------------------------------------
    @property
    def password(self) -> str | None:
        return self._password if self._password is not None else self._server.get("password")

    def _dsn_for(self, dbname: str) -> str:
        pw = self.password
        auth = quote(self.auth_user, safe="") + (f":{quote(pw, safe='')}" if pw else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    @property
    def dsn(self) -> str:
        """A libpq URI for ``auth_user`` to the backend's database, through PgBouncer."""
        return self._dsn_for(self._server.get("dbname", "postgres"))

    @property
    def admin_dsn(self) -> str:
        """A libpq URI for the ``pgbouncer`` admin console (SHOW, PAUSE, RELOAD, ...)."""
        return self._dsn_for("pgbouncer")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_file(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "pgbouncer.log"

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> PgBouncer:
        """Write the config and start PgBouncer on a free port (the same port again after :meth:`stop`)."""
        if self.running:
            return self
        from psycopg.conninfo import conninfo_to_dict

        binary = find_pgbouncer(self.bin)
        self._server = {k: str(v) for k, v in conninfo_to_dict(self.backend.dsn).items()}
        user = _run_as()
        sweep_orphans()
        base = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        self.base_dir = base
        (base / "owner.pid").write_text(str(os.getpid()))
        base.chmod(0o700)
        for attempt in range(3):  # a free port can be taken between the probe and the bind
            self.port = self.port or free_port(self.host)
            self._write_config(base)
            if user is not None:
                for path in (base, *base.iterdir()):
                    os.chown(path, user.pw_uid, user.pw_gid)
            with open(self.log_file, "ab") as log:
                self._proc = subprocess.Popen(
                    [binary, str(base / "pgbouncer.ini")],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=base, preexec_fn=lambda: _child_setup(user),
                )  # fmt: skip
            try:
                self._wait_ready()
                return self
            except PgBouncerStartError:
                tail = self._log_tail()
                self._kill()
                if "Address already in use" in tail and attempt < 2:
                    self.port = 0
                    continue
                self._remove_dir()
                raise
        raise AssertionError("unreachable")

    def _write_config(self, base: Path) -> None:
        server = self._server
        target = f"host={server.get('host', '127.0.0.1')} port={server.get('port', '5432')}"
        settings: dict[str, object] = {
            "listen_addr": self.host,
            "listen_port": self.port,
            "unix_socket_dir": "",
            "pidfile": str(base / "pgbouncer.pid"),
            "logfile": str(base / "pgbouncer.log"),
            "auth_file": str(base / "userlist.txt"),
            "auth_type": "scram-sha-256" if self.password else "trust",
            "admin_users": ",".join(self.admin_users),
            "pool_mode": self.pool_mode,
            "default_pool_size": self.default_pool_size,
            "max_client_conn": self.max_client_conn,
            "max_db_connections": self.max_db_connections,
            "ignore_startup_parameters": "extra_float_digits",
        }
        if server.get("sslmode") in ("require", "verify-ca", "verify-full"):
            settings["server_tls_sslmode"] = server["sslmode"]
            if server.get("sslrootcert"):
                settings["server_tls_ca_file"] = server["sslrootcert"]
        settings.update(self.extra)
        lines = ["[databases]", f"* = {target}", "", "[pgbouncer]"]
        lines += [f"{key} = {_ini_value(value)}" for key, value in settings.items()]
        (base / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        users = {self.auth_user, *self.admin_users}
        userlist = base / "userlist.txt"
        userlist.write_text(
            "".join(f"{_quote_userlist(u)} {_quote_userlist(self.password or '')}\n" for u in sorted(users))
        )
        userlist.chmod(0o600)
        (base / "pgbouncer.log").touch()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PgBouncerStartError(f"pgbouncer exited with {self._proc.returncode}: {self._log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.01)
        raise PgBouncerStartError(f"pgbouncer not listening after {self.start_timeout}s: {self._log_tail()}")

    def _log_tail(self, size: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-size:]
        except (OSError, AssertionError):
            return "(no log)"

    def _kill(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)  # PgBouncer: SIGTERM is an immediate shutdown
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def _remove_dir(self) -> None:
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def stop(self) -> None:
        """Stop PgBouncer (clients see their connections drop) and remove its files."""
        self._kill()
        self._remove_dir()

    def restart(self) -> None:
        """Stop and start again on the same port (its pools start empty)."""
        self.stop()
        self.start()

    # -- the admin console -----------------------------------------------------------------
    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run one admin-console command (``SHOW POOLS``, ``PAUSE``, ``RELOAD``, ``KILL db``).

        The console speaks only the simple query protocol, hence a client-side-binding cursor.
        """
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            cur = conn.execute(command)
            if cur.description is None:
                return []
            names = [col.name for col in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console (POOLS, STATS, CLIENTS, SERVERS, ...) as a list of dicts."""
        if not what.replace("_", "").isalnum():
            from lambdapool.errors import ConfigError

            raise ConfigError(f"show(what={what!r}): expected one word such as POOLS, STATS, SERVERS")
        return self.admin(f"SHOW {what.upper()}")
