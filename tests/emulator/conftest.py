"""Fixtures for the emulator tests: handler files, a fleet factory, the components they need."""

from __future__ import annotations

import functools
import importlib.util
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lambdapool.testing import wait_for
from lambdapool.tools.emulator import CloudFunctionFleet, LambdaFleet
from lambdapool.tools.testing.pytest_plugin import missing

HANDLERS = Path(__file__).parent / "handlers"


def need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        missing(module, f"pip install {module} (it is in the dev extra)")


@pytest.fixture
def app_name() -> str:
    """An application_name of this test's own, so the sampler counts only its backends."""
    return f"emu-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def lambda_fleet(lambda_fleet, pg_server, app_name) -> Callable[..., LambdaFleet]:
    """The plugin's ``lambda_fleet`` (closed at teardown) on a handler of handlers/, named as
    Lambda names it (``module.function``), with this test's database and application_name."""

    def make(handler: str = "pg_handler.handler", env: dict | None = None, **settings) -> LambdaFleet:
        module, function = handler.rsplit(".", 1)
        return lambda_fleet(f"{HANDLERS / module}.py:{function}", env={"DATABASE_URL": pg_server.dsn,
                            "APP_NAME": app_name, **(env or {})}, **settings)  # fmt: skip

    return make


@pytest.fixture
def cf_fleet(pg_server, app_name) -> Iterator[Callable[..., CloudFunctionFleet]]:
    need("functions_framework")
    fleets: list[CloudFunctionFleet] = []

    def make(target: str = "fn", env: dict | None = None, **settings) -> CloudFunctionFleet:
        fleet = CloudFunctionFleet(HANDLERS / "cf_handler.py", target, env={
            "DATABASE_URL": pg_server.dsn, "APP_NAME": app_name, **(env or {})}, **settings)  # fmt: skip
        fleets.append(fleet)
        return fleet.start()

    try:
        yield make
    finally:
        for fleet in fleets:
            fleet.close()


@pytest.fixture
def eventually() -> Callable[..., object]:
    """Wait (bounded) for something asynchronous: a process exit, a backend closing."""
    return functools.partial(wait_for, timeout=5.0)


@pytest.fixture
def backends(pg_server, app_name) -> Callable[[], int]:
    """How many server backends this test's instances hold right now."""
    return lambda: pg_server.backends(app_name)
