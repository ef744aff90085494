"""Environments forked from a zygote (``fork_server=True``): same behaviour, cheaper cold starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lambdapool.tools.emulator import EnvironmentStartError, LambdaFleet
from lambdapool.tools.emulator.processes import proc_state


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_forked_environments_behave_like_launched_ones(lambda_fleet, backends, eventually):
    fleet = lambda_fleet(fork_server=True, preload=["psycopg"], reserved_concurrency=2)
    zygote = fleet._zygote.proc.pid
    first = fleet.burst([{"env": True, "sleep": 0.2}] * 2, concurrency=2)
    assert all(r.ok and r.cold and r.init_ms > 0 for r in first)
    pids = {r.payload["pid"] for r in first}
    assert len(pids) == 2 and {_parent(pid) for pid in pids} == {zygote} and zygote != os.getpid()
    env = first[0].payload["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "lambdapool-emulated" and env["_HANDLER"] == "pg_handler.handler"
    # warm reuse, freezing and thawing, as with launched environments
    again = fleet.burst([{}] * 2, concurrency=2)
    assert all(r.ok and not r.cold for r in again) and {r.payload["pid"] for r in again} == pids
    fleet.freeze_all()
    assert {proc_state(pid) for pid in pids} == {"T"}
    assert backends() == 2
    # reaping: killed, and the zygote reports the exit
    assert len(fleet.reap()) == 2
    assert fleet.environments == [] and {proc_state(pid) for pid in pids} == {None}
    eventually(lambda: backends() == 0, what="backends of reaped forked environments closing")
    fleet.close()
    assert proc_state(zygote) is None


def test_forked_environment_init_error_and_sigterm(lambda_fleet, tmp_path, monkeypatch):
    monkeypatch.setenv("LAMBDAPOOL_TEST_SENTINEL", "1")  # must not leak into environments
    failing = lambda_fleet(handler="import_error.handler", fork_server=True)
    result = failing.invoke()
    assert (result.ok, result.error_type) == (False, "Runtime.ImportModuleError")

    marker = tmp_path / "bye.txt"
    marker.touch()
    fleet = lambda_fleet(
        fork_server=True, shutdown_extension=True, env={"SHUTDOWN_MARKER": str(marker)}, shutdown_grace=3.0
    )  # as its twin in test_lambda_fleet.py: a loaded host is slow to exit
    pid = fleet.invoke({"env": True}).payload["pid"]
    assert "LAMBDAPOOL_TEST_SENTINEL" not in fleet.results[0].payload["env"]
    fleet.freeze_all()
    (env_id,) = fleet.reap()
    log = (fleet.log_dir / f"{env_id}.log").read_text() + (fleet.log_dir / "zygote.log").read_text()
    assert marker.read_text().split() == [str(pid)], log


def test_a_preload_that_fails_is_reported_at_start(tmp_path):
    fleet = LambdaFleet("app.handler", tmp_path, preload=["lambdapool_no_such_preload"])
    with pytest.raises(EnvironmentStartError, match="lambdapool_no_such_preload"):
        fleet.start()
    assert fleet._loop is None  # nothing left running


def test_many_forked_environments_freeze_without_ever_stopping_us(lambda_fleet):
    # A forked environment can reach GET /next before the zygote reports its pid; freezing it
    # then must wait for the pid, never signal process group 0 (ours).
    fleet = lambda_fleet(fork_server=True, preload=["psycopg"], reserved_concurrency=12)
    for _ in range(3):
        results = fleet.burst([{}] * 12, concurrency=12)
        assert all(r.ok for r in results)
        fleet.freeze_all()
        assert {proc_state(e.pid) for e in fleet.environments} == {"T"}
    assert proc_state(os.getpid()) != "T"


def test_signalling_our_own_process_group_is_refused():
    from lambdapool.tools.emulator.processes import signal_group

    with pytest.raises(ValueError):
        signal_group(0, 0)
