"""Lambda Managed Instances in the emulator: awslambdaric's own multi-process mode, many
invocations in flight per environment, packing, no freezing, scale-in by SIGTERM."""

from __future__ import annotations

from pathlib import Path

import pytest

from lambdapool.errors import ConfigError
from lambdapool.tools.emulator import LambdaFleet
from lambdapool.tools.emulator.processes import group_members, proc_state


@pytest.fixture
def mi_env(pg_server, app_name):
    return {"LAMBDAPOOL_DSN": pg_server.dsn, "LAMBDAPOOL_POOLER": "direct", "LAMBDAPOOL_APPLICATION_NAME": app_name}


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


@pytest.mark.parametrize("fork_server", [False, True], ids=["launched", "forked"])
def test_two_environments_of_four_worker_processes_serve_an_eight_way_burst(
    lambda_fleet, mi_env, backends, eventually, tmp_path, fork_server
):
    marker = tmp_path / "sigterm"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    fleet = lambda_fleet("mi_handler.handler", env={**mi_env, "SHUTDOWN_MARKER": str(marker)}, max_concurrency=4,
                         reserved_concurrency=8, fork_server=fork_server,
                         preload=("psycopg", "lambdapool") if fork_server else ())  # fmt: skip
    # WHEN 8 invocations are in flight at once, each waiting until 8 processes hold one
    results = fleet.burst([{"barrier": str(barrier), "parties": 8}] * 8, concurrency=8)
    assert all(r.ok for r in results), [(r.error_type, r.error_message) for r in results if not r.ok]
    # THEN two environments (packed 4 + 4), eight distinct worker processes, told apart by the fleet too
    assert fleet.counters["instances_started"] == 2 and fleet.counters["throttles"] == 0
    assert len({r.instance_id for r in results}) == 2
    pids = {r.payload["pid"] for r in results}
    assert len(pids) == 8 and len({r.process_id for r in results}) == 8
    envs = fleet.environments
    assert len(envs) == 2
    # AND the workers are awslambdaric's own: children of the environment's main process,
    # which runs awslambdaric's main with AWS_LAMBDA_MAX_CONCURRENCY=4
    assert {p for e in envs for p in e.worker_pids} == pids
    for e in envs:
        assert len(e.worker_pids) == 4
        assert {r.payload["ppid"] for r in results if r.instance_id == e.id} == {e.pid}
        if not fork_server:
            assert _cmdline(e.pid)[1:4] == ["-m", "awslambdaric", "mi_handler.handler"]
    assert {r.payload["max_concurrency"] for r in results} == {"4"}
    assert {r.payload["init_type"] for r in results} == {"lambda-managed-instances"}
    # AND each process holds exactly one connection of its own
    for r in results:
        assert r.payload["stats"]["open_connections"] == 1 and r.payload["stats"]["connects"] == 1, r.payload
    assert len({r.payload["backend_pid"] for r in results}) == 8
    eventually(lambda: backends() == 8, what="8 backends, one per worker")
    # AND nothing was frozen: idle environments keep running (state not T), warm calls reuse them
    assert not any(e.frozen for e in fleet.environments)
    for pid in [e.pid for e in envs] + sorted(pids):
        assert proc_state(pid) not in ("T", "t", None), pid
    again = fleet.burst([{}] * 16, concurrency=4)
    assert all(r.ok and not r.cold for r in again) and fleet.counters["instances_started"] == 2
    assert {r.instance_id for r in again} <= {e.id for e in envs}
    # WHEN the fleet scales in: SIGTERM to each environment's process group, then SIGKILL
    assert sorted(fleet.reap()) == sorted(e.id for e in envs)
    # THEN every worker ran its SIGTERM hook (after lambdapool closed its connection), the
    # groups are gone, and the app holds no backend
    assert sorted(int(p) for p in marker.read_text().split()) == sorted(pids)
    assert not any(group_members(e.pid) for e in envs)
    eventually(lambda: backends() == 0, timeout=10, what="no backend left after scale-in")
    assert fleet.environments == []


def test_invocations_pack_onto_environments_before_another_starts_and_throttle_beyond(lambda_fleet, mi_env, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    # reserved concurrency 6 over environments of 4: 2 environments at most, 6 in flight at most
    fleet = lambda_fleet("mi_handler.handler", env=mi_env, max_concurrency=4, reserved_concurrency=6,
                         fork_server=True, preload=("psycopg", "lambdapool"))  # fmt: skip
    assert fleet.max_environments == 2
    results = fleet.burst([{"barrier": str(barrier), "parties": 6}] * 8, concurrency=8)
    served = [r for r in results if not r.throttled]
    assert len(served) == 6 and all(r.ok for r in served), [r.error_message for r in results if not r.ok]
    assert sum(r.throttled for r in results) == 2
    assert "6 of 6 invocations in flight" in next(r for r in results if r.throttled).error_message
    per_env = sorted(sum(r.instance_id == i for r in served) for i in {r.instance_id for r in served})
    assert per_env == [2, 4]  # the first filled before the second took any
    # one at a time: always the same (fullest, then most recent) environment, warm
    one = [fleet.invoke({}) for _ in range(3)]
    assert all(r.ok and not r.cold for r in one) and len({r.instance_id for r in one}) == 1


def test_a_worker_import_error_is_the_environments_init_error(lambda_fleet, eventually):
    fleet = lambda_fleet("import_error.handler", max_concurrency=3)
    result = fleet.invoke({})
    assert not result.ok and result.error_type == "Runtime.ImportModuleError", result
    eventually(lambda: fleet.environments == [], what="the environment gone")


def test_bad_managed_instances_settings_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"max_concurrency=0: processes per Managed Instances environment"):
        LambdaFleet("app.handler", tmp_path, max_concurrency=0)
    with pytest.raises(ConfigError, match=r"freeze=True with max_concurrency: .* never freeze"):
        LambdaFleet("app.handler", tmp_path, max_concurrency=4, freeze=True)
    with pytest.raises(ConfigError, match=r"max_environments=0"):
        LambdaFleet("app.handler", tmp_path, max_concurrency=4, max_environments=0)
    assert LambdaFleet("app.handler", tmp_path, max_concurrency=4, reserved_concurrency=10).max_environments == 3
    assert LambdaFleet("app.handler", tmp_path).freeze is True
