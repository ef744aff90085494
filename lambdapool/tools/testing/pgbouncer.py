"""Throwaway PgBouncer in front of a test Postgres: ``with PgBouncer(pg, default_pool_size=20) as pgb``.

Theory of operation
-------------------
* The binary comes from ``bin=``, ``LAMBDAPOOL_PGBOUNCER_BIN``, ``PATH`` or ``/usr/sbin``; when
  none is found, :class:`PgBouncerNotFound` says where we looked and how to install it.
* Started and stopped as the throwaway Postgres is (:mod:`lambdapool.tools.testing.process`): as root,
  run as the same unprivileged user, in a temp dir that user owns, which holds
  ``pgbouncer.ini``, ``userlist.txt``, the log and the pid file.
* It authenticates clients and logs in to the server as ``auth_user``. With a password (given,
  or taken from the backend's DSN) both sides use SCRAM, so ``userlist.txt`` holds the *plain*
  password: PgBouncer cannot log in to a SCRAM server with a secret of its own making.
  Without one, clients are trusted.
* No PgBouncer outlives its test run: it dies with the process that started it
  (``PR_SET_PDEATHSIG``), and :func:`sweep_orphans` stops those whose owner is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from lambdapool.errors import LambdapoolError
from lambdapool.tools.testing.postgres import _run_as
from lambdapool.tools.testing.process import ServerProcess

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
    return PgBouncer.sweep(tmp_root)


def _quote_userlist(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _ini_value(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class PgBouncer(ServerProcess):
    """A private PgBouncer for one backend Postgres.

    ``pool_mode``, ``default_pool_size``, ``max_client_conn`` and ``max_db_connections`` are
    PgBouncer's own settings (0 = unlimited for the last); ``extra`` adds any other line of the
    ``[pgbouncer]`` section (``{"server_idle_timeout": 5}``). ``password`` defaults to the one in
    the backend's DSN. ``.dsn`` reaches the backend's database through PgBouncer,
    ``.admin_dsn`` its admin console; :meth:`show` reads ``SHOW POOLS`` / ``STATS`` / ... as dicts.
    """

    program = "pgbouncer"
    dir_prefix = DIR_PREFIX
    log_name = "pgbouncer.log"
    pidfile = "pgbouncer.pid"
    start_error = PgBouncerStartError
    ready_state = "listening"
    stop_signal = signal.SIGTERM  # PgBouncer: SIGTERM is an immediate shutdown

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
        self._proc: subprocess.Popen[bytes] | None = None
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

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> PgBouncer:
        """Write the config and start PgBouncer on a free port (the same port again after :meth:`stop`)."""
        if self.running:
            return self
        from psycopg.conninfo import conninfo_to_dict

        binary = find_pgbouncer(self.bin)
        self._server = {k: str(v) for k, v in conninfo_to_dict(self.backend.dsn).items()}
        user = _run_as()
        base = self._make_dir(0o700)

        def command() -> list[str]:  # the config names the port, known only now
            self._write_config(base)
            if user is not None:
                for path in (base, *base.iterdir()):
                    os.chown(path, user.pw_uid, user.pw_gid)
            return [binary, str(base / "pgbouncer.ini")]

        try:
            self._launch(command, user)
        except BaseException:  # a failed start leaves no process and no files
            self._kill()
            self._remove_dir()
            raise
        return self

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

    def _ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

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
