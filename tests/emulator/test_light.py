"""Light in-process instances: each its own handler state (its own connection), real Postgres."""

from __future__ import annotations

from pathlib import Path

import pytest

from lambdapool.errors import ConfigError
from lambdapool.tools.emulator import LightFleet, module_factory

HANDLERS = Path(__file__).parent / "handlers"


@pytest.fixture
def light_env(pg_server, app_name):
    return {"DATABASE_URL": pg_server.dsn, "APP_NAME": app_name}


def test_each_instance_has_its_own_module_global_connection(light_env, backends, eventually):
    factory = module_factory(HANDLERS, "pg_handler.handler")
    with LightFleet(factory, env=light_env) as fleet:
        # WHEN 40 invocations run 10 at a time
        results = fleet.burst([{"sleep": 0.05}] * 40, concurrency=10)
        assert all(r.ok for r in results), [r.error_message for r in results]
        instances = {r.instance_id for r in results}
        # THEN at most 10 instances started, each connected once and kept its backend
        assert sum(r.cold for r in results) == len(instances) <= 10
        backend_of = {}
        for r in results:
            backend_of.setdefault(r.instance_id, set()).add(r.payload["backend_pid"])
            assert r.payload["connects"] == 1
        assert all(len(b) == 1 for b in backend_of.values())
        assert len({next(iter(b)) for b in backend_of.values()}) == len(instances)  # none shared
        assert backends() == len(instances) == fleet.instances
        # and per-instance invocation counts add up (module globals are not shared)
        assert sum(max(r.payload["invocation"] for r in results if r.instance_id == i) for i in instances) == 40
        # WHEN every instance is reaped, their connections go with them
        assert sorted(fleet.reap()) == sorted(instances)
        eventually(lambda: backends() == 0, what="reaped light instances' backends closing")


def test_light_fleet_throttles_beyond_reserved_concurrency(light_env):
    with LightFleet(module_factory(HANDLERS, "pg_handler.handler"), reserved_concurrency=3, env=light_env) as fleet:
        results = fleet.burst([{"sleep": 0.8}] * 6, concurrency=6)
        assert sum(r.ok for r in results) == 3 and sum(r.throttled for r in results) == 3
        assert fleet.counters["peak_instances"] == 3


def test_factory_failure_is_an_init_error_and_handler_error_an_error(light_env):
    with LightFleet(module_factory(HANDLERS, "import_error.handler")) as fleet:
        result = fleet.invoke({})
        assert (result.ok, result.cold, result.error_type) == (False, True, "Runtime.InitError")
        assert "lambdapool_emulator_no_such_module" in result.error_message and fleet.instances == 0
    with LightFleet(module_factory(HANDLERS, "pg_handler.handler"), env=light_env) as fleet:
        failed = fleet.invoke({"fail": "bad input"})
        assert (failed.ok, failed.error_type, failed.error_message) == (False, "ValueError", "bad input")
        assert fleet.invoke({}).instance_id == failed.instance_id


def test_context_and_env(light_env):
    import os

    with LightFleet(module_factory(HANDLERS, "pg_handler.handler"), env=light_env, timeout=5.0,
                    function_name="light-orders") as fleet:  # fmt: skip
        result = fleet.invoke({})
        assert result.payload["function_name"] == "light-orders"
        assert 0 < result.payload["remaining_ms"] <= 5000
        assert result.payload["request_id"] == result.request_id
        assert os.environ["APP_NAME"] == light_env["APP_NAME"]
    assert os.environ.get("APP_NAME") != light_env["APP_NAME"]  # restored


def test_module_factory_names_a_bad_handler():
    with pytest.raises(ConfigError, match="handler='nomodule'"):
        module_factory(HANDLERS, "nomodule")
    with pytest.raises(ConfigError, match="no .*missing.py"):
        module_factory(HANDLERS, "missing.handler")
