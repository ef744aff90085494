"""The plugin's fan-out fixtures, used the way a user tests their own handler."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest

from lambdapool.emulator.processes import proc_state

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lambda_psycopg" / "handler.py"
HANDLER = f"{EXAMPLE}:handler"


@pytest.fixture
def app_db(pg_factory):
    """A database with max_connections=12 and an ordinary role for the handler, as in production."""
    pg = pg_factory(max_connections=12)
    pg.psql("CREATE ROLE app LOGIN")
    return pg, f"postgresql://app@{pg.host}:{pg.port}/postgres"


@pytest.mark.slow
def test_a_burst_through_the_local_proxy_stays_under_its_cap(app_db, local_proxy, lambda_fleet, backend_sampler):
    pg, app_dsn = app_db
    proxy = local_proxy(app_dsn, max_backends=4)
    fleet = lambda_fleet(HANDLER, env={"LAMBDAPOOL_DSN": proxy.dsn, "LAMBDAPOOL_POOLER": "local"},
                         reserved_concurrency=16, fork_server=True, preload=["psycopg", "lambdapool"])  # fmt: skip
    sampler = backend_sampler(pg)  # the superuser's DSN: it still gets in when the role's slots are gone
    results = fleet.burst([{"n": i} for i in range(64)], concurrency=16)
    sampler.stop()
    assert [r.payload["result"] for r in results] == [i + 1 for i in range(64)]
    assert fleet.counters["cold_starts"] > 4, "more instances than the cap: the proxy multiplexed them"
    assert 1 <= sampler.peak <= 4 and proxy.stats()["peak_backends"] <= 4
    assert sampler.rate_hz >= 20


def test_the_same_assertion_catches_a_direct_overrun(app_db, light_fleet, backend_sampler):
    # The control: without a pooler or the guard, the same kind of burst runs the database out.
    pg, app_dsn = app_db
    env = {"LAMBDAPOOL_DSN": app_dsn, "LAMBDAPOOL_BUDGET_GUARD": "false", "LAMBDAPOOL_ACQUIRE_TIMEOUT": "1"}
    fleet = light_fleet(HANDLER, env=env, reserved_concurrency=16, timeout=3.0)
    sampler = backend_sampler(pg)
    results = fleet.burst([{"n": i} for i in range(32)], concurrency=16)
    sampler.stop()
    failed = [r for r in results if not r.ok]
    assert failed and all(r.error_type == "ConnectionUnavailable" for r in failed)
    # 12 slots, 3 reserved for superusers, 1 held by the sampler: the role gets 8, then refusals
    assert sampler.peak == 8
    assert all("connection slots are reserved" in r.error_message for r in failed)


@pytest.mark.slow
def test_factories_stop_what_they_started_at_teardown(pytester, pg_server):
    # A user's own test file, run by pytest: it leaves its proxy's port and its environment's pid.
    pytester.makepyfile(test_user=textwrap.dedent(f"""
        def test_handler(pg_server, local_proxy, lambda_fleet, backend_sampler):
            proxy = local_proxy(pg_server)
            fleet = lambda_fleet({HANDLER!r}, env={{"LAMBDAPOOL_DSN": proxy.dsn, "LAMBDAPOOL_POOLER": "local"}})
            backend_sampler(pg_server)
            assert fleet.invoke({{"n": 1}}).payload["result"] == 2
            open("left.txt", "w").write(f"{{proxy.port}} {{fleet.environments[0].pid}}")
    """))  # fmt: skip
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    port, pid = map(int, (pytester.path / "left.txt").read_text().split())
    assert proc_state(pid) is None, "the environment was killed"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_a_handler_that_does_not_exist_is_named(lambda_fleet):
    from lambdapool.errors import ConfigError

    with pytest.raises(ConfigError, match="defines no top-level 'nope'"):
        lambda_fleet(f"{EXAMPLE}:nope")
