"""Fixtures for the framework tests (SQLAlchemy, Django, ASGI/WSGI apps): one Postgres for the
session, reached directly, through the local proxy and through PgBouncer.

``route`` is parametrised over the three ways in. Each gives the DSN and pooler name a
Database takes, counts pinned sessions (the local proxy's ``pinned_sessions``; 0 elsewhere)
and kills the server's backends between invocations (``kill_backends``), which a warm
connection must survive with no failed invocation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lambdapool.testing import LocalProxy, PostgresServer, WaitTimeout, wait_for
from lambdapool.tools.testing.pgbouncer import PgBouncer, PgBouncerNotFound
from lambdapool.tools.testing.pytest_plugin import missing

PASSWORD = "fw-pw"
ROUTES = ["direct", "local", "pgbouncer"]


@pytest.fixture(scope="session")
def fw_pg(pg_session_factory: Callable[..., PostgresServer]) -> PostgresServer:
    """A private server with SCRAM over TCP (so the proxy and PgBouncer log in as clients do)."""
    return pg_session_factory(max_connections=60, password=PASSWORD)


def kill_backends(pg: PostgresServer) -> int:
    """Terminate every client backend (but the psql asking) and wait until they are gone."""
    killed = int(pg.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    ))  # fmt: skip
    try:
        wait_for(lambda: not pg.backends(), "the killed backends gone")
    except WaitTimeout:  # the callers' own asserts say what is left
        pass
    return killed


def open_transactions(pg: PostgresServer) -> int:
    """Sessions the server holds inside a transaction between statements (idle in transaction,
    aborted or not): what a request must never leave behind."""
    return int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"))


@dataclass
class Route:
    """One way to the database: ``dsn`` and ``pooler`` for a Database, and its observers."""

    name: str
    pg: PostgresServer
    dsn: str
    pooler: str
    proxy: LocalProxy | None = None
    bouncer: PgBouncer | None = None

    def pins(self) -> int:
        return int(self.proxy.stats()["pinned_sessions"]) if self.proxy is not None else 0

    def kill_backends(self) -> int:
        killed = kill_backends(self.pg)
        if self.proxy is not None:
            # Between invocations the proxy has read its idle backends' end long before the next
            # request comes; without this wait a request can borrow one whose FATAL is still
            # unread (docs/proxy.md: lost mid-transaction, not replayed), which is not the case
            # these tests are about.
            proxy = self.proxy
            wait_for(lambda: proxy.stats()["backends_idle"] + proxy.stats()["backends_in_use"] == 0,
                     "the proxy to see its backends end")  # fmt: skip
        return killed

    def open_transactions(self) -> int:
        return open_transactions(self.pg)

    def settings(self) -> dict[str, Any]:
        """Database(**route.settings()): the DSN and pooler."""
        return {"dsn": self.dsn, "pooler": self.pooler}


@pytest.fixture(params=ROUTES)
def route(request: pytest.FixtureRequest, fw_pg: PostgresServer,
          local_proxy: Callable[..., LocalProxy]) -> Iterator[Route]:  # fmt: skip
    name = request.param
    if name == "direct":
        yield Route(name, fw_pg, fw_pg.dsn, "direct")
        return
    if name == "local":
        proxy = local_proxy(fw_pg, max_backends=5)  # (stopped by the plugin's fixture)
        yield Route(name, fw_pg, proxy.dsn, "local", proxy=proxy)
        return
    try:
        bouncer = PgBouncer(fw_pg, default_pool_size=5).start()
    except PgBouncerNotFound as exc:
        missing("pgbouncer", str(exc))
    try:
        yield Route(name, fw_pg, bouncer.dsn, "pgbouncer", bouncer=bouncer)
    finally:
        bouncer.stop()
