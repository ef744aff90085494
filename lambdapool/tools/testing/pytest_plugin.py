"""pytest fixtures for testing handlers against real parts, loaded on request: ``-p lambdapool.testing``
or ``pytest_plugins = ["lambdapool.testing"]`` (lambdapool/testing.py names this module).

* ``pg_server`` (session): a Postgres for tests that need nothing special; an existing server
  when ``LAMBDAPOOL_TEST_DSN`` is set, else a private throwaway cluster.
* ``pg_factory`` (function): ``pg_factory(max_connections=30, password="pw", tls=True, ...)``
  starts private clusters with the settings a test needs and stops them at teardown.
* ``pg_session_factory`` (session): the same, for session-scoped fixtures of your own that
  need a special server (``password=...``, ``settings={...}``); stopped at the session's end.
* ``pg_replication`` (function): ``pg_replication(max_connections=30, settings={...})`` starts a
  primary and a hot standby streaming from it, plus an endpoint name for the writer
  (:class:`lambdapool.tools.testing.replication.ReplicatedPostgres`: ``failover()``,
  ``endpoint.point_to(...)``, ``wait_replicated()``); stopped at teardown.
* :func:`missing` skips a test on a laptop that lacks a component, but fails it in CI
  (``CI=true``), so a skipped test is never counted as passing there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from lambdapool.tools.testing.postgres import (
    ExternalPostgres,
    PostgresNotFound,
    PostgresServer,
    postgres_from_env,
    sweep_orphans,
)
from lambdapool.tools.testing.replication import ReplicatedPostgres


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(component: str, why: str) -> None:
    """Skip (developer laptop) or fail (CI) a test whose component is not on this machine."""
    message = f"{component} unavailable: {why}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: missing components fail, they do not skip)", pytrace=False)
    pytest.skip(message)


def _start(server: PostgresServer | ExternalPostgres) -> PostgresServer | ExternalPostgres:
    try:
        return server.start()
    except PostgresNotFound as exc:
        missing("Postgres server binaries", str(exc))
        raise  # unreachable: missing() always raises


def pytest_sessionstart(session: pytest.Session) -> None:
    sweep_orphans()  # clusters of earlier runs that were killed before their teardown


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer | ExternalPostgres]:
    server = _start(postgres_from_env())
    try:
        yield server
    finally:
        server.stop()


def _pg_factory() -> Iterator[Callable[..., PostgresServer]]:
    """The body of ``pg_factory`` and ``pg_session_factory``: they differ only in scope."""
    started: list[PostgresServer] = []

    def make(**settings: object) -> PostgresServer:
        server = PostgresServer(**settings)  # type: ignore[arg-type]
        started.append(server)
        _start(server)
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def pg_factory() -> Iterator[Callable[..., PostgresServer]]:
    yield from _pg_factory()


@pytest.fixture(scope="session")
def pg_session_factory() -> Iterator[Callable[..., PostgresServer]]:
    yield from _pg_factory()


@pytest.fixture
def pg_replication() -> Iterator[Callable[..., ReplicatedPostgres]]:
    """A factory of started :class:`ReplicatedPostgres` clusters, stopped at teardown."""
    started: list[ReplicatedPostgres] = []

    def make(**settings: object) -> ReplicatedPostgres:
        cluster = ReplicatedPostgres(**settings)  # type: ignore[arg-type]
        started.append(cluster)
        try:
            return cluster.start()
        except PostgresNotFound as exc:
            missing("Postgres server binaries", str(exc))
            raise  # unreachable: missing() always raises

    try:
        yield make
    finally:
        for cluster in started:
            cluster.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Fake AWS credentials and region (us-east-1) for moto; yields the region."""
    from lambdapool.tools.testing.moto import fake_aws_environment

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for key, value in fake_aws_environment().items():
        monkeypatch.setenv(key, value)
    from lambdapool import _aws as aws

    aws.reset_clients()  # cached clients keep the credentials they were built with
    yield "us-east-1"


@pytest.fixture(scope="session")
def moto_server_url() -> Iterator[str]:
    """moto's threaded server for the session (aiobotocore needs a real endpoint)."""
    try:
        from lambdapool.tools.testing.moto import moto_server

        with moto_server() as url:
            yield url
    except ImportError as exc:
        missing("moto[server]", str(exc))


@pytest.fixture
def moto_url(moto_server_url: str, aws_env: str) -> str:
    """The session's moto server, emptied for this test."""
    from lambdapool.tools.testing.moto import reset_moto

    reset_moto(moto_server_url)
    return moto_server_url


# Last: fleet_fixtures imports missing() from this module.
from lambdapool.tools.testing.fleet_fixtures import *  # noqa: E402, F403
