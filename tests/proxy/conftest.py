"""Fixtures for the local proxy's tests: one SCRAM-protected Postgres for the module, and a
factory of proxies in front of it (stopped at teardown)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from lambdapool.testing import LocalProxy, PostgresNotFound, PostgresServer
from lambdapool.testing.pytest_plugin import missing

SERVER_PASSWORD = "server-pw"


@pytest.fixture(scope="session")
def proxy_pg() -> Iterator[PostgresServer]:
    """A private server (SCRAM for TCP, so the proxy logs in with SCRAM) with pgbench tables."""
    try:
        server = PostgresServer(max_connections=40, password=SERVER_PASSWORD).start()
    except PostgresNotFound as exc:
        missing("Postgres server binaries", str(exc))
    try:
        server.psql("CREATE TABLE IF NOT EXISTS t (id int primary key, v text); CREATE SEQUENCE IF NOT EXISTS order_seq")
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_proxy(proxy_pg: PostgresServer) -> Iterator[Callable[..., LocalProxy]]:
    started: list[LocalProxy] = []

    def make(**kwargs: object) -> LocalProxy:
        proxy = LocalProxy(proxy_pg.dsn, **kwargs)  # type: ignore[arg-type]
        started.append(proxy)
        return proxy.start()

    try:
        yield make
    finally:
        for proxy in started:
            proxy.stop()


def server_backends(pg: PostgresServer) -> int:
    """Client backends on the server other than the psql asking."""
    return int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"))


def need_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(name, f"{name} is not on PATH (Debian: apt-get install postgresql-client)")
    return path  # type: ignore[return-value]


def run(cmd: list[str], timeout: float = 120, **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
