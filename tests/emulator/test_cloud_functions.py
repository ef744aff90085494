"""Cloud Functions instances: real functions-framework (gunicorn) servers, real Postgres."""

from __future__ import annotations

from pathlib import Path

import pytest

from lambdapool.errors import ConfigError
from lambdapool.tools.emulator import CloudFunctionFleet
from lambdapool.tools.emulator.processes import proc_state

SOURCE = Path(__file__).parent / "handlers" / "cf_handler.py"


def test_one_instance_serves_concurrent_requests_on_separate_connections(cf_fleet, backends):
    fleet = cf_fleet(instances=1, concurrency=4)
    # WHEN four requests arrive together at an instance that takes four at once
    results = fleet.burst([{"sleep": 0.8}] * 4, concurrency=4)
    assert all(r.ok for r in results), [r.error_message for r in results]
    payloads = [r.payload for r in results]
    # THEN one instance (one worker process) ran them at the same time, on four threads
    assert len({r.instance_id for r in results}) == 1 and len({p["pid"] for p in payloads}) == 1
    assert len({p["thread"] for p in payloads}) == 4
    assert max(p["start"] for p in payloads) < min(p["end"] for p in payloads)  # all four overlapped
    # and each thread had a backend of its own
    assert len({p["backend_pid"] for p in payloads}) == 4 and backends() == 4
    (info,) = fleet.instances
    assert info.worker_pid == payloads[0]["pid"] != info.pid  # the function runs in gunicorn's worker
    assert sum(r.cold for r in results) == 1


def test_idle_instance_is_frozen_and_thawed_for_the_next_request(cf_fleet):
    fleet = cf_fleet()
    first = fleet.invoke({})
    assert first.ok and first.cold and first.init_ms > 0
    assert fleet.freeze_all() == 1
    worker = first.payload["pid"]
    assert proc_state(worker) == "T"
    second = fleet.invoke({})
    assert second.ok and not second.cold and second.payload["pid"] == worker


def test_requests_beyond_instances_times_concurrency_wait_then_get_429(cf_fleet):
    fleet = cf_fleet(instances=1, concurrency=1, queue_timeout=0.2)
    results = fleet.burst([{"sleep": 0.6}] * 3, concurrency=3)
    assert sorted((r.ok, r.throttled) for r in results) == [(False, True), (False, True), (True, False)]
    assert fleet.counters["throttles"] == 2 and len(fleet.instances) == 1


def test_cloudevent_functions_receive_the_event(cf_fleet, tmp_path):
    log = tmp_path / "events.txt"
    fleet = cf_fleet(target="on_event", signature="cloudevent", env={"EVENT_LOG": str(log)})
    results = [fleet.invoke({"n": n}) for n in range(3)]
    assert all(r.ok for r in results)
    lines = [line.split() for line in log.read_text().splitlines()]
    assert lines == [[r.request_id, "dev.lambdapool.emulator.event", str(n)] for n, r in enumerate(results)]


def test_instances_start_as_needed_up_to_the_cap(cf_fleet):
    fleet = cf_fleet(instances=2, concurrency=1)
    results = fleet.burst([{"sleep": 0.3}] * 2, concurrency=2)
    assert all(r.ok and r.cold for r in results)
    assert len({r.payload["pid"] for r in results}) == 2 and fleet.counters["peak_instances"] == 2


def test_an_instance_that_cannot_start_fails_its_request(cf_fleet):
    fleet = cf_fleet(target="no_such_function")
    result = fleet.invoke({})
    # functions-framework's own error, as the server raised it (not a bare "could not start")
    assert (result.ok, result.error_type, result.init_failed) == (False, "MissingTargetException", True)
    assert "no_such_function" in result.error_message
    assert fleet.instances == []  # replaced by a new one on the next request


def test_reaping_an_idle_instance_stops_it_and_its_connections(cf_fleet, backends, eventually):
    fleet = cf_fleet(concurrency=2)
    assert all(r.ok for r in fleet.burst([{"sleep": 0.2}] * 2, concurrency=2))
    (info,) = fleet.instances
    assert backends() == 2
    fleet.freeze_all()  # a frozen instance is thawed for its SIGTERM
    assert fleet.reap() == [info.id]
    assert fleet.instances == [] and proc_state(info.pid) is None and proc_state(info.worker_pid) is None
    eventually(lambda: backends() == 0, what="the reaped instance's backends closing")
    again = fleet.invoke({})
    assert again.ok and again.cold and again.instance_id != info.id
    assert fleet.counters["reaped"] == 1


def test_a_function_error_is_an_error_result(cf_fleet):
    fleet = cf_fleet()
    result = fleet.invoke("not an object")  # the handler calls .get on a str
    # the function's own exception (the server answered a bare 500), with its traceback
    assert (result.ok, result.error_type) == (False, "AttributeError") and "get" in result.error_message
    assert f'File "{SOURCE}", line' in result.error_trace.splitlines()[1] and ", in fn" in result.error_trace


def test_bad_settings_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="signature='pubsub'"):
        CloudFunctionFleet(SOURCE, "fn", signature="pubsub")
    with pytest.raises(ConfigError, match="source="):
        CloudFunctionFleet(tmp_path / "missing.py", "fn")
