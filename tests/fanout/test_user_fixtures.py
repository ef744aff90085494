"""The plugin's fan-out fixtures, used the way a user tests their own handler."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest

from lambdapool.tools.emulator.processes import proc_state

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


# The control's handler holds its connection until the role's 8 slots are taken and a ninth
# invocation has entered: otherwise, on a loaded machine, the threads of a burst can run one after
# the other on a few warm instances and never overlap enough to run the database out.
OVERLAPPING = """
import os, time
import lambdapool

db = lambdapool.Database.from_env(driver="psycopg")
ENTRIES = os.environ["OVERRUN_ENTRIES"]


def entered():
    with open(ENTRIES) as f:
        return len(f.read())


@db.lambda_handler
def handler(event, context):
    with open(ENTRIES, "a") as f:
        f.write(".")
    with db.connection() as conn:
        deadline = time.monotonic() + 20  # a bound, not a timing: the test fails on its assertions
        while time.monotonic() < deadline:
            conn.execute("SELECT pg_stat_clear_snapshot()")  # a transaction keeps its first view
            held = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = current_user")
            if held.fetchone()[0] >= 8 and entered() > 8:
                break
            time.sleep(0.01)
    return {"result": event["n"] + 1}
"""


def test_the_same_assertion_catches_a_direct_overrun(app_db, light_fleet, backend_sampler, tmp_path):
    # The control: without a pooler or the guard, the same kind of burst runs the database out.
    pg, app_dsn = app_db
    (tmp_path / "overlapping.py").write_text(OVERLAPPING)
    (tmp_path / "entries").write_text("")
    env = {"LAMBDAPOOL_DSN": app_dsn, "LAMBDAPOOL_BUDGET_GUARD": "false", "LAMBDAPOOL_ACQUIRE_TIMEOUT": "1",
           "OVERRUN_ENTRIES": str(tmp_path / "entries")}  # fmt: skip
    fleet = light_fleet(f"{tmp_path / 'overlapping.py'}:handler", env=env, reserved_concurrency=16, timeout=30.0)
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
    # (the plugin is opt-in)
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "lambdapool.testing").assert_outcomes(passed=1)
    port, pid = map(int, (pytester.path / "left.txt").read_text().split())
    assert proc_state(pid) is None, "the environment was killed"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_a_handler_that_does_not_exist_is_named(lambda_fleet):
    from lambdapool.errors import ConfigError

    with pytest.raises(ConfigError, match="defines no top-level 'nope'"):
        lambda_fleet(f"{EXAMPLE}:nope")
