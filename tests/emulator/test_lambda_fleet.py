"""The Lambda emulator: real awslambdaric processes, a local Runtime API, real Postgres."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from lambdapool.errors import ConfigError
from lambdapool.tools.emulator import LambdaFleet
from lambdapool.tools.emulator.processes import proc_state

HANDLERS = Path(__file__).parent / "handlers"


def test_cold_start_only_on_the_first_invocation_of_each_environment(lambda_fleet):
    fleet = lambda_fleet(reserved_concurrency=5)
    # WHEN three invocations run at once, then three more
    first = fleet.burst([{"sleep": 0.3}] * 3, concurrency=3)
    second = fleet.burst([{"sleep": 0.3}] * 3, concurrency=3)
    # THEN the first three each started an environment; the next three reused them, warm
    assert all(r.ok for r in first + second), [r.error_message for r in first + second]
    assert [r.cold for r in first] == [True] * 3 and all(r.init_ms and r.init_ms > 0 for r in first)
    assert [r.cold for r in second] == [False] * 3 and all(r.init_ms is None for r in second)
    assert {r.instance_id for r in second} == {r.instance_id for r in first}
    # and each environment connected once and kept its connection (same process, same backend)
    by_env = {}
    for r in first + second:
        by_env.setdefault(r.instance_id, set()).add((r.payload["pid"], r.payload["backend_pid"]))
    assert all(len(v) == 1 for v in by_env.values())
    assert all(r.payload["connects"] == 1 for r in second)
    assert fleet.counters["cold_starts"] == 3 and fleet.counters["instances_started"] == 3


def test_an_idle_environment_is_reused_one_after_another(lambda_fleet):
    fleet = lambda_fleet()
    results = [fleet.invoke({"n": i}) for i in range(4)]
    assert [r.cold for r in results] == [True, False, False, False]
    assert len({r.instance_id for r in results}) == 1
    assert [r.payload["invocation"] for r in results] == [1, 2, 3, 4]


def test_frozen_between_invocations_and_thawed_for_the_next(lambda_fleet):
    fleet = lambda_fleet()
    pid = fleet.invoke().payload["pid"]
    # GIVEN an environment idle in GET /next: it is stopped (T), as Lambda freezes a sandbox
    assert fleet.freeze_all() == 1
    assert proc_state(pid) == "T"
    assert [e.frozen for e in fleet.environments] == [True]
    # WHEN the next invocation comes, it is thawed and runs (seen running mid-invocation)
    states = []
    call = threading.Thread(target=lambda: states.append(fleet.invoke({"sleep": 0.5})))
    call.start()
    seen_running = False
    while call.is_alive():
        seen_running |= proc_state(pid) in ("R", "S")
    call.join()
    assert seen_running and states[0].ok and not states[0].cold and states[0].payload["pid"] == pid
    # THEN it is frozen again afterwards
    fleet.freeze_all()
    assert proc_state(pid) == "T"


def test_reserved_concurrency_caps_environments_and_throttles_the_rest(lambda_fleet):
    fleet = lambda_fleet(reserved_concurrency=3)
    results = fleet.burst([{"sleep": 0.5}] * 6, concurrency=6)
    served = [r for r in results if r.ok]
    refused = [r for r in results if r.throttled]
    assert len(served) == 3 and len(refused) == 3
    assert all(r.error_type == "TooManyRequestsException" and r.instance_id is None for r in refused)
    assert "Rate Exceeded" in refused[0].error_message
    assert len({r.instance_id for r in served}) == 3
    assert fleet.counters["throttles"] == 3 and fleet.counters["peak_instances"] == 3
    assert len(fleet.environments) == 3


def test_idle_environments_are_reaped_and_their_backends_go(lambda_fleet, backends, eventually):
    fleet = lambda_fleet(idle_reap_after=0.3)
    pid = fleet.invoke().payload["pid"]
    assert backends() == 1
    # WHEN it stays idle past idle_reap_after: killed (SIGKILL, no goodbye), its connection dropped
    eventually(lambda: not fleet.environments, what="reaping")
    assert proc_state(pid) is None
    eventually(lambda: backends() == 0, what="the backend of the reaped environment closing")
    assert fleet.counters["reaped"] == 1
    # THEN the next invocation is a cold start in a new environment
    again = fleet.invoke()
    assert again.ok and again.cold and again.payload["pid"] != pid


@pytest.mark.parametrize("extension", [True, False])
def test_sigterm_reaches_the_handler_only_with_a_shutdown_extension(lambda_fleet, tmp_path, extension):
    marker = tmp_path / "shutdown.txt"
    marker.touch()
    fleet = lambda_fleet(env={"SHUTDOWN_MARKER": str(marker)}, shutdown_extension=extension, shutdown_grace=3.0)
    pid = fleet.invoke().payload["pid"]
    fleet.freeze_all()  # SIGTERM must reach a frozen environment too
    env_id = fleet.results[0].instance_id
    assert fleet.reap() == [env_id]
    assert fleet.environments == []
    log = (fleet.log_dir / f"{env_id}.log").read_text()
    assert marker.read_text().split() == ([str(pid)] if extension else []), log


# A process shaped like awslambdaric's on python3.12+: the main thread waits in a lock (a join)
# for a thread blocked in a read (its GET /next poller; more of them here, to widen the race);
# SIGTERM's handler says goodbye.
_MAIN_WAITS_ON_POLLERS = """
import os, signal, threading
signal.signal(signal.SIGTERM, lambda *_: (print("goodbye", flush=True), os._exit(0)))
pollers = [threading.Thread(target=os.read, args=(os.pipe()[0], 1)) for _ in range(8)]
for poller in pollers:
    poller.start()
print("ready", flush=True)
pollers[0].join()
"""


def _threads_asleep(pid: int) -> bool:
    return all(proc_state(int(t)) == "S" for t in os.listdir(f"/proc/{pid}/task"))


def test_a_thawed_process_takes_sigterm_in_its_main_thread(eventually):
    # Before: thaw_fully returned as soon as no thread showed T, while threads just woken (R)
    # still had the stop's signal delivery ahead of them; SIGTERM sent then could be taken by a
    # poller thread, and the main thread, asleep in its join, never ran the handler (the fleet's
    # SIGTERM test lost its goodbye now and then, mostly on a loaded machine).
    import asyncio
    import signal
    import subprocess
    import sys

    from lambdapool.tools.emulator import processes

    async def thaw_then_terminate(pid: int) -> None:
        await processes.thaw_fully(pid)
        assert _threads_asleep(pid), "thaw_fully returned before every thread had left the stop"
        processes.signal_group(pid, signal.SIGTERM)

    for _ in range(30):  # each round a fresh process
        proc = subprocess.Popen([sys.executable, "-c", _MAIN_WAITS_ON_POLLERS], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)  # fmt: skip
        try:
            assert proc.stdout.readline() == "ready\n"
            eventually(lambda: _threads_asleep(proc.pid), what="every thread waiting")  # noqa: B023
            processes.stop_group(proc.pid)  # frozen as the fleet freezes an idle environment
            assert asyncio.run(processes.wait_stopped(proc.pid))
            asyncio.run(thaw_then_terminate(proc.pid))
            assert proc.stdout.readline() == "goodbye\n"
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
            proc.wait()


def test_handler_error_comes_back_as_an_error_result(lambda_fleet):
    fleet = lambda_fleet()
    failed = fleet.invoke({"fail": "no such order"})
    assert not failed.ok and not failed.throttled
    assert (failed.error_type, failed.error_message) == ("ValueError", "no such order")
    after = fleet.invoke()  # the environment survives a handler error
    assert after.ok and not after.cold and after.instance_id == failed.instance_id
    assert fleet.counters["errors"] == 1


def test_large_events_answers_and_errors_cross_the_runtime_api_intact(lambda_fleet):
    fleet = lambda_fleet()
    big = "x" * 300_000  # far beyond one read: bodies are read to their Content-Length
    answer = fleet.invoke({"echo": big, "pad": 200_000})
    assert answer.ok and answer.payload == {"echo": big, "pad": "y" * 200_000}
    failed = fleet.invoke({"fail": "z" * 50_000})
    assert (failed.error_type, failed.error_message) == ("ValueError", "z" * 50_000)


def test_import_error_is_reported_as_an_init_error(lambda_fleet, eventually):
    fleet = lambda_fleet(handler="import_error.handler")
    result = fleet.invoke()
    assert not result.ok and result.cold and result.init_failed
    assert result.error_type == "Runtime.ImportModuleError"
    assert "lambdapool_emulator_no_such_module" in result.error_message
    eventually(lambda: not fleet.environments, what="the failed environment going away")


def test_an_invocation_past_the_timeout_fails_and_its_environment_is_killed(lambda_fleet):
    fleet = lambda_fleet(timeout=1.0)
    pid = fleet.invoke().payload["pid"]
    late = fleet.invoke({"sleep": 5})
    assert (late.ok, late.error_type) == (False, "Sandbox.Timedout")
    assert proc_state(pid) is None and fleet.environments == []


def test_environment_variables_context_and_deadline_are_lambdas(lambda_fleet):
    fleet = lambda_fleet(env={"MY_SETTING": "42"}, memory_mb=256, timeout=7.0, function_name="orders")
    result = fleet.invoke({"env": True})
    env, payload = result.payload["env"], result.payload
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == payload["function_name"] == "orders"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/orders"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"]
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert env["AWS_REGION"] == "us-east-1"
    assert env["_HANDLER"] == "pg_handler.handler"
    assert env["LAMBDA_TASK_ROOT"] == str(HANDLERS.resolve())
    assert env["AWS_LAMBDA_RUNTIME_API"].startswith("127.0.0.1:")
    assert env["MY_SETTING"] == "42"
    assert payload["request_id"] == result.request_id
    assert 0 < payload["remaining_ms"] <= 7000


def test_provisioned_environments_start_ahead_and_serve_warm(lambda_fleet, backends):
    fleet = lambda_fleet(reserved_concurrency=3)
    ids = fleet.provision(2)
    assert sorted(e.id for e in fleet.environments) == sorted(ids)
    fleet.freeze_all()
    assert all(e.state == "idle" and e.frozen and e.init_ms > 0 for e in fleet.environments)
    assert backends() == 0  # init imported the handler; nothing connected yet (lazy)
    results = fleet.burst([{"env": True, "sleep": 0.3}] * 2, concurrency=2)
    assert all(r.ok and not r.cold for r in results) and {r.instance_id for r in results} == set(ids)
    assert {r.payload["env"]["AWS_LAMBDA_INITIALIZATION_TYPE"] for r in results} == {"provisioned-concurrency"}
    assert fleet.counters["cold_starts"] == 0
    with pytest.raises(ConfigError, match="only 1 environments left"):
        fleet.provision(2)


def test_bad_settings_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="handler='app'"):
        LambdaFleet("app", tmp_path)
    with pytest.raises(ConfigError, match="task_root="):
        LambdaFleet("app.handler", tmp_path / "nope")
    with pytest.raises(ConfigError, match="reserved_concurrency=0"):
        LambdaFleet("app.handler", tmp_path, reserved_concurrency=0)
