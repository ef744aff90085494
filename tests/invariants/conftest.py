"""The servers of the invariants test: one Postgres for the session, the local proxy and PgBouncer in
front of it, and the faults each can suffer (each returns once it has taken effect).

The SDK logs in as the role ``app`` everywhere (directly, through the proxy, through PgBouncer),
so its backends are the ``usename = 'app'`` rows of pg_stat_activity; the test's own queries run
as the superuser on a connection that the armed ``idle_session_timeout`` never ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from lambdapool.testing import LocalProxy, PostgresServer, WaitTimeout, wait_for

SCHEMA = """
CREATE ROLE app LOGIN;
CREATE TABLE invariant_rows (token text NOT NULL, n int NOT NULL);
CREATE INDEX ON invariant_rows (token);
GRANT SELECT, INSERT ON invariant_rows TO app;
"""
PROXY_BACKENDS = 3  # the local proxy's cap on server connections
PGBOUNCER_POOL = 2  # PgBouncer's default_pool_size
# The freeze arms the server's idle_session_timeout this short: long enough for the gaps between
# one invocation's statements, short enough to wait for.
IDLE_SESSION_TIMEOUT = "200ms"


def soon(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """wait_for, polling often: it runs after nearly every step."""
    return wait_for(condition, what, timeout, interval=0.002)


class Admin:
    """The superuser's connection to the server, opened again after a restart."""

    def __init__(self, pg: PostgresServer) -> None:
        self.pg = pg
        self.conn: psycopg.Connection[Any] | None = None

    def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        if self.conn is None or self.conn.closed:
            # (its own session setting wins over the idle_session_timeout a freeze arms)
            self.conn = psycopg.connect(self.pg.dsn, autocommit=True, options="-c idle_session_timeout=0")
        cur = self.conn.execute(sql, params)
        return cur.fetchall() if cur.description else []

    def value(self, sql: str, params: Any = None) -> Any:
        return self.rows(sql, params)[0][0]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def app_backends(self) -> list[int]:
        return [pid for (pid,) in self.rows("SELECT pid FROM pg_stat_activity WHERE usename = 'app'")]

    def wait_gone(self, pids: list[int], what: str) -> None:
        """Return once none of these backends is left; else fail saying what they were doing."""
        try:
            soon(lambda: not self.value("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)), what)
        except WaitTimeout:
            left = self.rows("SELECT pid, state, query FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
            raise AssertionError(f"{what}: still there: {left}") from None

    def reload_with(self, sql: str) -> None:
        """Run an ALTER SYSTEM and reload; returns once the postmaster has reloaded and so has
        signalled every backend (each applies it when it next reads a command)."""
        loaded = self.value("SELECT pg_conf_load_time()")
        self.rows(sql)
        self.rows("SELECT pg_reload_conf()")
        soon(lambda: self.value("SELECT pg_conf_load_time() > %s", (loaded,)), "the server to reload its settings")


class Target:
    """What the SDK connects to (``dsn``, ``pooler``) and the faults it can be given."""

    def __init__(self, pooler: str, pg: PostgresServer, admin: Admin, dsn: str, **poolers: Any) -> None:
        self.pooler, self.pg, self.admin, self.dsn = pooler, pg, admin, dsn
        self.proxy: LocalProxy | None = poolers.get("proxy")
        self.pgbouncer: Any = poolers.get("pgbouncer")
        self.backend_cap = {"direct": 1, "local": PROXY_BACKENDS, "pgbouncer": PGBOUNCER_POOL}[pooler]
        # Session state (configure's SETs, the handler's SET / temp table / LISTEN) lives on a
        # server connection; in PgBouncer's transaction mode the next transaction may run on another.
        self.keeps_sessions = pooler != "pgbouncer"
        search_path, timezone, work_mem = admin.rows(
            "SELECT current_setting('search_path'), current_setting('TimeZone'), current_setting('work_mem')"
        )[0]
        self.defaults = {"search_path": search_path, "timezone": timezone, "work_mem": work_mem}

    def client_connections(self) -> int:
        """The SDK's connections to its first hop (the server, the proxy or PgBouncer)."""
        if self.proxy is not None:
            return int(self.proxy.stats()["clients"])
        if self.pgbouncer is not None:
            return sum(1 for c in self.pgbouncer.show("CLIENTS") if c["database"] == "postgres")
        return len(self.admin.app_backends())

    # -- faults, each returning once it has taken effect ----------------------------------
    def wait_ended(self, pids: list[int], what: str) -> None:
        """Return once the server has ended these backends and the pooler has seen it."""
        self.admin.wait_gone(pids, what)
        self.pooler_caught_up()

    def pooler_caught_up(self) -> None:
        # The local proxy learns that an idle backend died when its loop reads the EOF; a client
        # that comes first is handed the dead backend and loses its session (an 08006 error).
        if self.proxy is not None:
            proxy, admin = self.proxy, self.admin

            def caught_up() -> bool:
                stats = proxy.stats()
                return stats["backends_idle"] + stats["backends_in_use"] <= len(admin.app_backends())

            soon(caught_up, "the local proxy to see its backends end")

    def kill_backends(self) -> None:
        pids = self.admin.app_backends()
        self.admin.rows("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
        self.wait_ended(pids, "the killed backends to exit")

    def restart_server(self) -> None:
        self.admin.close()
        self.pg.restart()
        self.pooler_caught_up()

    def arm_idle_session_timeout(self) -> None:
        self.admin.reload_with(f"ALTER SYSTEM SET idle_session_timeout = '{IDLE_SESSION_TIMEOUT}'")

    def disarm_idle_session_timeout(self) -> None:
        self.admin.reload_with("ALTER SYSTEM RESET idle_session_timeout")

    def proxy_drops_clients(self) -> None:
        proxy = self.proxy
        assert proxy is not None
        proxy.drop_clients()
        soon(lambda: proxy.stats()["clients"] == 0, "the proxy to drop its clients")

    def proxy_kills_backends(self) -> None:
        proxy = self.proxy
        assert proxy is not None
        # kill_backends closes the backends the proxy has: none may be half-open (a connect
        # started for a borrow that another backend then served finishes after it)
        soon(lambda: proxy.stats()["backends_connecting"] == 0, "the proxy to finish opening backends")
        pids = self.admin.app_backends()
        proxy.kill_backends()
        self.admin.wait_gone(pids, "the proxy's backends to exit")

    def restart_pgbouncer(self) -> None:
        self.pgbouncer.restart()  # returns once it listens again; its clients were cut


@pytest.fixture(scope="session")
def invariants_pg(pg_session_factory) -> Iterator[PostgresServer]:
    pg = pg_session_factory(max_connections=30)
    pg.psql(SCHEMA)
    yield pg


@pytest.fixture(scope="session")
def invariants_admin(invariants_pg) -> Iterator[Admin]:
    admin = Admin(invariants_pg)
    yield admin
    admin.close()


def app_dsn(pg: PostgresServer) -> str:
    return f"postgresql://app@{pg.host}:{pg.port}/postgres"


@pytest.fixture(scope="session")
def direct_target(invariants_pg, invariants_admin) -> Target:
    return Target("direct", invariants_pg, invariants_admin, app_dsn(invariants_pg))


@pytest.fixture(scope="session")
def local_target(invariants_pg, invariants_admin) -> Iterator[Target]:
    with LocalProxy(backend=app_dsn(invariants_pg), max_backends=PROXY_BACKENDS) as proxy:
        yield Target("local", invariants_pg, invariants_admin, proxy.dsn, proxy=proxy)


@pytest.fixture(scope="session")
def pgbouncer_target(invariants_pg, invariants_admin) -> Iterator[Target]:
    from lambdapool.tools.testing.pgbouncer import PgBouncer, PgBouncerNotFound, find_pgbouncer
    from lambdapool.tools.testing.pytest_plugin import missing

    try:
        find_pgbouncer()
    except PgBouncerNotFound as exc:
        missing("PgBouncer", str(exc))
    # auth_user app: the SDK's login (and the admin console's, for SHOW CLIENTS)
    pgbouncer = PgBouncer(invariants_pg, auth_user="app", admin_users=("app",), default_pool_size=PGBOUNCER_POOL)
    with pgbouncer:
        yield Target("pgbouncer", invariants_pg, invariants_admin, pgbouncer.dsn, pgbouncer=pgbouncer)
