"""Fixtures for the local proxy's tests: one SCRAM-protected Postgres for the session, and a
factory of proxies in front of it (the plugin's ``local_proxy``, stopped at teardown)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Callable

import pytest

from lambdapool.testing import LocalProxy, PostgresServer
from lambdapool.tools.testing.pytest_plugin import missing

SERVER_PASSWORD = "server-pw"
MAX_PREPARED_TRANSACTIONS = 5


@pytest.fixture(scope="session")
def proxy_pg(pg_session_factory: Callable[..., PostgresServer]) -> PostgresServer:
    """A private server (SCRAM for TCP, so the proxy logs in with SCRAM) with the tables the
    tests use, and two-phase commit on (test_fidelity compares PREPARE TRANSACTION both ways)."""
    server = pg_session_factory(max_connections=40, password=SERVER_PASSWORD,
                                settings={"max_prepared_transactions": MAX_PREPARED_TRANSACTIONS})  # fmt: skip
    server.psql("CREATE TABLE IF NOT EXISTS t (id int primary key, v text); CREATE SEQUENCE IF NOT EXISTS order_seq")
    return server


@pytest.fixture
def make_proxy(proxy_pg: PostgresServer, local_proxy: Callable[..., LocalProxy]) -> Callable[..., LocalProxy]:
    """The plugin's ``local_proxy`` in front of ``proxy_pg``, with LocalProxy's own default
    (no cap) unless the test names ``max_backends``; stopped at teardown."""
    return functools.partial(local_proxy, proxy_pg, max_backends=None)


def need_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(name, f"{name} is not on PATH (Debian: apt-get install postgresql-client)")
    return path  # type: ignore[return-value]


def run(cmd: list[str], timeout: float = 120, **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
