"""The fan-out suite with Lambda Managed Instances environments (issue 13): 4 environments x 16
worker processes (awslambdaric's own multi-process mode, ``AWS_LAMBDA_MAX_CONCURRENCY=16``)
against a Postgres with max_connections=30, directly and through the poolers.

64 processes each hold their own lambdapool Database, so the connection arithmetic is
environments x processes x connections per process = 4 x 16 x 1 = 64 against 27 ordinary
slots. Two waves, as in test_fanout_suite.py: a cold wave 64 wide (each invocation waits at a
barrier until all 64 have arrived before touching the database, so all 64 are in flight at
once and every process serves one), then a warm wave as wide again. Each invocation holds its
transaction 20 ms.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

from lambdapool.tools.emulator import LambdaFleet, PgBouncerSampler
from tests.fanout.conftest import (
    HANDLER,
    HANDLERS,
    MIN_SAMPLE_HZ,
    ORDINARY_SLOTS,
    POOL_CAP,
    PRELOAD,
    BurstResult,
    app_dsn,
    burst,
    check_runs,
    events,
    proxy_process,
)

pytestmark = [pytest.mark.slow, pytest.mark.alone]  # (a burst that saturates the CPUs)

ENVIRONMENTS, PROCESSES = 4, 16
WIDTH = ENVIRONMENTS * PROCESSES
HOLD = 0.02


@contextmanager
def mi_fleet(env: Mapping[str, str]) -> Iterator[LambdaFleet]:
    """Managed Instances environments of 16 workers, on the fork server (for width); reserved
    concurrency 64, so at most 4 environments (packed full before another starts)."""
    with LambdaFleet(HANDLER, HANDLERS, env=dict(env), max_concurrency=PROCESSES, reserved_concurrency=WIDTH,
                     fork_server=True, preload=list(PRELOAD), timeout=60) as fleet:  # fmt: skip
        yield fleet


def fan_out(pg: Any, env: Mapping[str, str]) -> BurstResult:
    env = {"LAMBDAPOOL_ACQUIRE_TIMEOUT": "40", "LAMBDAPOOL_CONNECT_TIMEOUT": "20", **env}
    with mi_fleet(env) as fleet, tempfile.TemporaryDirectory(prefix="lambdapool-barrier-") as barrier:
        cold = events(WIDTH, barrier=barrier, parties=WIDTH, hold=HOLD)
        result = burst(fleet, None, cold + events(WIDTH, hold=HOLD), [], sampler_dsn=pg.dsn)
        assert not any(e.frozen for e in fleet.environments), "Managed Instances are never frozen"
    return result


def per_process(result: BurstResult) -> dict[int, dict[str, Any]]:
    """Each worker process's ``db.stats()`` as of its last successful invocation, by pid."""
    last: dict[int, tuple[float, dict[str, Any]]] = {}
    for r in result.results:
        if r.ok:
            pid = r.payload["pid"]
            if pid not in last or r.ended_at >= last[pid][0]:
                last[pid] = (r.ended_at, r.payload["stats"])
    return {pid: stats for pid, (_, stats) in last.items()}


def assert_shape(result: BurstResult) -> None:
    """4 environments, 64 distinct processes (16 each), each seen in the report's terms too."""
    served = [r for r in result.results if not r.throttled]
    assert result.process_counters["instances_started"] == ENVIRONMENTS, result.process_counters
    assert len({r.instance_id for r in served}) == ENVIRONMENTS
    assert len({r.process_id for r in served}) == WIDTH
    assert result.sampler is not None and result.sampler.errors == 0
    assert result.sampler.rate_hz >= MIN_SAMPLE_HZ, f"sampled at {result.sampler.rate_hz:.1f} Hz"


def assert_all_served(pg: Any, result: BurstResult) -> None:
    assert not result.failed(), result.describe_failures()
    assert check_runs(pg, result.results)["rows"] == len(result.results)
    stats = per_process(result)
    assert len(stats) == WIDTH, "every worker process served"
    for pid, s in stats.items():  # one connection per process, never more
        assert s["open_connections"] == 1, (pid, s)


def test_direct_without_the_guard_overruns_the_server(fanout_pg):
    """The control: 64 processes, each keeping its connection warm, against 27 slots."""
    env = {"LAMBDAPOOL_DSN": app_dsn(fanout_pg), "LAMBDAPOOL_BUDGET_GUARD": "false", "LAMBDAPOOL_ACQUIRE_TIMEOUT": "3"}
    result = fan_out(fanout_pg, env)
    assert_shape(result)
    assert result.sampler.peak == ORDINARY_SLOTS - 1  # every ordinary slot (the sampler holds one)
    failed = result.failed()
    assert len(failed) >= WIDTH - (ORDINARY_SLOTS - 1), result.describe_failures()
    assert {r.error_type for r in failed} == {"ConnectionUnavailable"}
    served_by = {r.payload["pid"] for r in result.results if r.ok}
    assert len(served_by) <= ORDINARY_SLOTS - 1, "only processes that got a slot ever succeeded"
    check_runs(fanout_pg, result.results)


def test_direct_with_the_budget_guard_never_fails(fanout_pg):
    result = fan_out(fanout_pg, {"LAMBDAPOOL_DSN": app_dsn(fanout_pg)})
    assert_shape(result)
    assert not result.failed(), result.describe_failures()
    assert check_runs(fanout_pg, result.results)["rows"] == len(result.results)
    assert result.sampler.peak <= ORDINARY_SLOTS
    stats = per_process(result)
    assert len(stats) == WIDTH and all(s["open_connections"] <= 1 for s in stats.values()), stats
    totals = {
        k: sum(s[k] for s in stats.values()) for k in ("connects", "guard_closes", "connect_retries", "reconnects")
    }
    print("FIGURES direct+guard per-process totals:", totals)
    # the guard had to act: 64 processes for 27 slots (it closes idle connections or retries refused ones)
    assert totals["guard_closes"] + totals["connect_retries"] > 0, totals


def test_local_proxy_caps_backends_at_20(fanout_pg):
    with proxy_process(app_dsn(fanout_pg), POOL_CAP) as (dsn, proxy_stats):
        result = fan_out(fanout_pg, {"LAMBDAPOOL_DSN": dsn, "LAMBDAPOOL_POOLER": "local"})
        stats = {
            k: int(v) for k, v in proxy_stats().items() if k in ("peak_backends", "peak_clients", "borrow_timeouts")
        }
    assert_shape(result)
    assert_all_served(fanout_pg, result)
    assert result.sampler.peak <= POOL_CAP and stats["peak_backends"] <= POOL_CAP
    assert stats["peak_clients"] >= WIDTH and stats["borrow_timeouts"] == 0, stats


def test_pgbouncer_caps_backends_at_20(fanout_pg):
    from lambdapool.tools.testing.pgbouncer import PgBouncer

    with PgBouncer(fanout_pg, default_pool_size=POOL_CAP, max_client_conn=WIDTH + 50,
                   auth_user="app", admin_users=("app",)) as pgb:  # fmt: skip
        with PgBouncerSampler(pgb.admin_dsn) as pooler:
            result = fan_out(fanout_pg, {"LAMBDAPOOL_DSN": pgb.dsn, "LAMBDAPOOL_POOLER": "pgbouncer"})
    assert_shape(result)
    assert_all_served(fanout_pg, result)
    assert pooler.errors == 0 and pooler.peak <= POOL_CAP
    assert result.sampler.peak <= POOL_CAP
