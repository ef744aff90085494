"""pytest fixtures for fan-out tests of your own handlers (loaded with the ``lambdapool`` plugin).

Each is a factory: call it as often as the test needs; what it started is stopped at teardown.

* ``local_proxy(pg, max_backends=5, **settings)``: a started :class:`~lambdapool.testing.LocalProxy`
  in front of ``pg`` (a ``PostgresServer``, anything with a ``.dsn``, or a DSN string).
* ``lambda_fleet("src/app.py:handler", env={...}, **settings)``: a started
  :class:`~lambdapool.tools.emulator.LambdaFleet` (real execution environments) for that handler.
* ``light_fleet("src/app.py:handler", env={...}, **settings)``: a started
  :class:`~lambdapool.tools.emulator.LightFleet` (in-process instances, for width).
* ``backend_sampler(pg, interval=0.02)``: a started
  :class:`~lambdapool.tools.emulator.BackendSampler` counting the database's backends.
* ``metadata_server(email="fn@PROJECT.iam.gserviceaccount.com", token_ttl=3600, **settings)``: a
  started :class:`~lambdapool.testing.MetadataServer` (Google's metadata server, for Cloud SQL
  IAM logins: pair it with ``local_proxy(pg, auth="cloud-sql-iam", metadata=server, tls=True)``).
* ``cloud_function_fleet("src/main.py:fn", env={...}, metadata=server, **settings)``: a started
  :class:`~lambdapool.tools.emulator.CloudFunctionFleet` (real functions-framework servers);
  with ``metadata``, its instances get the server's ``GCE_METADATA_HOST``.

A test of your own fan-out then reads::

    def test_burst_stays_under_the_limit(pg_factory, local_proxy, lambda_fleet, backend_sampler):
        pg = pg_factory(max_connections=20)
        proxy = local_proxy(pg, max_backends=10)
        fleet = lambda_fleet("src/app.py:handler", reserved_concurrency=30, fork_server=True,
                             env={"LAMBDAPOOL_DSN": proxy.dsn, "LAMBDAPOOL_POOLER": "local"})
        sampler = backend_sampler(pg)
        results = fleet.burst([{}] * 300, concurrency=30)
        sampler.stop()
        assert all(r.ok for r in results) and sampler.peak <= 10
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from lambdapool.tools.testing.pytest_plugin import missing

T = TypeVar("T")


def _dsn(database: Any) -> str:
    """A DSN string, or the ``.dsn`` of a server object (PostgresServer, PgBouncer, LocalProxy)."""
    if isinstance(database, str):
        return database
    dsn = getattr(database, "dsn", None)
    if not isinstance(dsn, str):
        raise TypeError(f"expected a DSN or an object with a .dsn (a PostgresServer), got {type(database).__name__}")
    return dsn


def _need(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        missing(module, f"pip install 'lambdapool[{extra}]'")


def _started(stop: Callable[[Any], None]) -> Callable[[Callable[..., T]], Callable[[], Iterator[Callable[..., T]]]]:
    """Turn ``make(*args, **kwargs) -> started thing`` into a fixture body yielding a factory
    and calling ``stop(thing)`` on everything it made, last made first, at teardown."""

    def wrap(make: Callable[..., T]) -> Callable[[], Iterator[Callable[..., T]]]:
        def body() -> Iterator[Callable[..., T]]:
            made: list[T] = []

            def factory(*args: Any, **kwargs: Any) -> T:
                thing = make(*args, **kwargs)
                made.append(thing)
                return thing

            try:
                yield factory
            finally:
                for thing in reversed(made):
                    stop(thing)

        body.__doc__ = make.__doc__
        return body

    return wrap


@_started(lambda proxy: proxy.stop())
def _local_proxy(database: Any, max_backends: int | None = 5, **settings: Any) -> Any:
    """``local_proxy(pg, max_backends=5, **settings)``: a started LocalProxy in front of ``pg``."""
    from lambdapool.tools.proxy import LocalProxy

    return LocalProxy(backend=_dsn(database), max_backends=max_backends, **settings).start()


@_started(lambda fleet: fleet.close())
def _lambda_fleet(handler: str, *, env: dict[str, str] | None = None, **settings: Any) -> Any:
    """``lambda_fleet("src/app.py:handler", env={...}, **settings)``: a started LambdaFleet."""
    _need("awslambdaric", "testing")
    from lambdapool.tools.emulator import LambdaFleet
    from lambdapool.tools.emulator.fanout import HandlerRef

    ref = HandlerRef.parse(str(handler))
    return LambdaFleet(ref.handler, ref.task_root, env=env, **settings).start()


@_started(lambda fleet: fleet.close())
def _light_fleet(handler: str, *, env: dict[str, str] | None = None, **settings: Any) -> Any:
    """``light_fleet("src/app.py:handler", env={...}, **settings)``: a started LightFleet."""
    from lambdapool.tools.emulator import LightFleet, module_factory
    from lambdapool.tools.emulator.fanout import HandlerRef

    ref = HandlerRef.parse(str(handler))
    return LightFleet(module_factory(ref.task_root, ref.handler), env=env, **settings).start()


@_started(lambda server: server.stop())
def _metadata_server(email: str = "lambdapool-fn@lambdapool-local.iam.gserviceaccount.com", **settings: Any) -> Any:
    """``metadata_server(email=..., token_ttl=3600, **settings)``: a started MetadataServer."""
    from lambdapool.tools.testing.metadata import MetadataServer

    return MetadataServer(email, **settings).start()


@_started(lambda fleet: fleet.close())
def _cloud_function_fleet(function: str, *, env: dict[str, str] | None = None, **settings: Any) -> Any:
    """``cloud_function_fleet("src/main.py:fn", env={...}, metadata=server, **settings)``: a started
    CloudFunctionFleet (``signature="cloudevent"`` for a CloudEvent function)."""
    _need("functions_framework", "gcp")
    from lambdapool.tools.emulator import CloudFunctionFleet
    from lambdapool.tools.emulator.fanout import HandlerRef

    ref = HandlerRef.parse(str(function))
    return CloudFunctionFleet(ref.path, ref.function, env=env, **settings).start()


@_started(lambda sampler: sampler.stop())
def _backend_sampler(database: Any, interval: float = 0.02, application_name_like: str | None = None) -> Any:
    """``backend_sampler(pg, interval=0.02)``: a started BackendSampler (stop it to end the timeline)."""
    from lambdapool.tools.emulator import BackendSampler

    return BackendSampler(_dsn(database), interval, application_name_like).start()


local_proxy = pytest.fixture(_local_proxy, name="local_proxy")
lambda_fleet = pytest.fixture(_lambda_fleet, name="lambda_fleet")
light_fleet = pytest.fixture(_light_fleet, name="light_fleet")
backend_sampler = pytest.fixture(_backend_sampler, name="backend_sampler")
metadata_server = pytest.fixture(_metadata_server, name="metadata_server")
cloud_function_fleet = pytest.fixture(_cloud_function_fleet, name="cloud_function_fleet")

__all__ = [
    "backend_sampler",
    "cloud_function_fleet",
    "lambda_fleet",
    "light_fleet",
    "local_proxy",
    "metadata_server",
]
