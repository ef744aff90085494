"""The fault suite (issue 5, item 5): freezes past idle timeouts, every backend killed, the
proxy restarted, the database restarted, a connect that hangs. Process environments wherever
freezing matters; light instances add width to the bursts.

Each test checks that no statement ran twice and every successful invocation committed
(``check_runs``), and that no invocation failed that could have been served. The rule for the
latter (docs/fanout_suites.md): an invocation may fail only if it was in flight during the
fault's window (started before the window closed, ended after it opened) and its failure is a
lost connection under a statement; the window closes once the fault has taken effect (killed
backends gone, clients cut), *before* any downtime that follows, so every invocation that starts
while a proxy or the database is down must wait for it and succeed.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from lambdapool.testing import LocalProxy, free_port, wait_for
from tests.fanout.conftest import (
    MAX_CONNECTIONS,
    SCHEMA,
    BurstResult,
    app_dsn,
    burst,
    check_runs,
    events,
    failures_outside,
    fleets,
    need_awslambdaric,
)
from tests.support import terminate

pytestmark = [pytest.mark.slow, pytest.mark.alone]  # (a burst that saturates the CPUs)

HOLD = 0.03


def app_backends(pg) -> list[int]:
    return [int(p) for p in pg.psql("SELECT pid FROM pg_stat_activity WHERE usename = 'app'").split()]


def reconnects_by_instance(result: BurstResult) -> dict[str, int]:
    return {i: int(s["reconnects"]) for i, s in result.last_stats().items()}


def replaced(result: BurstResult) -> int:
    """Connections opened beyond each instance's first: found dead at acquire (a reconnect), or
    dropped after a statement failed under them and opened afresh."""
    stats = result.last_stats()
    return int(sum(s["connects"] for s in stats.values())) - len(stats)


def steady_burst(pf, lf, pg, *, fault=None, fault_after: int = 0, per_instance: int = 30) -> BurstResult:
    """Each instance runs ~``per_instance`` invocations of HOLD seconds, all fleets at once."""
    light = lf.reserved_concurrency * per_instance if lf is not None else 0
    return burst(pf, lf, events(pf.reserved_concurrency * per_instance, hold=HOLD), events(light, hold=HOLD),
                 sampler_dsn=pg.dsn, fault=fault, fault_after=fault_after)  # fmt: skip


def assert_no_avoidable_failure(result: BurstResult) -> None:
    avoidable = failures_outside(result)
    fault = result.fault
    assert fault is not None
    seen = [
        (
            r.error_type,
            r.error_message,
            f"started {r.started_at - fault.start:+.3f}s ended {r.ended_at - fault.start:+.3f}s "
            f"after the fault began (its window closed at {fault.end - fault.start:+.3f}s)",
        )
        for r in avoidable[:3]
    ]
    assert not avoidable, f"{len(avoidable)} avoidable: {seen}"


# -- freezing past idle timeouts ---------------------------------------------------------------------


def test_frozen_past_the_proxys_idle_client_timeout(fanout_pg):
    with (
        LocalProxy(backend=app_dsn(fanout_pg), max_backends=5, idle_client_timeout=1.0) as proxy,
        fleets({"LAMBDAPOOL_DSN": proxy.dsn, "LAMBDAPOOL_POOLER": "local"}, processes=4, light=0) as (pf, _),
    ):
        first = burst(pf, None, events(4, pause=0.3), [], sampler_dsn=fanout_pg.dsn)
        assert not first.failed(), first.describe_failures()
        assert pf.freeze_all() == 4 and all(e.frozen for e in pf.environments)
        wait_for(lambda: proxy.stats()["clients"] == 0, "the proxy closing its idle (frozen) clients")
        time.sleep(0.3)  # frozen well past the timeout
        second = burst(pf, None, events(4, pause=0.3), [], sampler_dsn=fanout_pg.dsn)
    assert not second.failed(), second.describe_failures()
    assert not any(r.cold for r in second.results), "the same, thawed environments served"
    assert {r.instance_id for r in second.results} == {r.instance_id for r in first.results}
    assert set(reconnects_by_instance(second).values()) == {1}, "each reconnected once, before its statement"
    check_runs(fanout_pg, first.results + second.results)


def test_frozen_past_the_servers_idle_session_timeout(pg_factory):
    need_awslambdaric()
    pg = pg_factory(max_connections=MAX_CONNECTIONS, idle_session_timeout="1s")
    pg.psql(SCHEMA)
    with fleets({"LAMBDAPOOL_DSN": app_dsn(pg)}, processes=4, light=0) as (pf, _):
        first = burst(pf, None, events(4, pause=0.3), [], sampler_dsn=pg.dsn)
        assert not first.failed(), first.describe_failures()
        assert pf.freeze_all() == 4 and all(e.frozen for e in pf.environments)
        wait_for(lambda: not app_backends(pg), "the server ending the frozen environments' sessions")
        time.sleep(0.3)
        second = burst(pf, None, events(4, pause=0.3), [], sampler_dsn=pg.dsn)
    assert not second.failed(), second.describe_failures()
    assert not any(r.cold for r in second.results)
    assert set(reconnects_by_instance(second).values()) == {1}
    check_runs(pg, first.results + second.results)


# -- every backend killed mid-burst ---------------------------------------------------------------


def kill_app_backends(pg) -> None:
    """pg_terminate_backend for every backend of the load's role; returns once they are gone."""
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'")]  # fmt: skip
    terminate(pg, *pids)
    assert pids, "the burst had no backend to kill"


@pytest.mark.parametrize("pooler", ["direct", "local"])
def test_every_backend_killed_mid_burst(fanout_pg, pooler):
    # direct: 20 instances, inside the 27 ordinary slots (the guard never has to act)
    light = 10 if pooler == "direct" else 50
    with LocalProxy(backend=app_dsn(fanout_pg), max_backends=10) as proxy:
        dsn = app_dsn(fanout_pg) if pooler == "direct" else proxy.dsn
        with fleets({"LAMBDAPOOL_DSN": dsn, "LAMBDAPOOL_POOLER": pooler}, processes=10, light=light) as (pf, lf):
            result = steady_burst(pf, lf, fanout_pg, fault=lambda: kill_app_backends(fanout_pg), fault_after=200)
    assert_no_avoidable_failure(result)
    assert sum(r.ok and r.started_at > result.fault.end for r in result.results) > 100, "the burst went on after"
    if pooler == "direct":
        assert replaced(result) > 0, "connections replaced after the kill"
    check_runs(fanout_pg, result.results)


# -- the proxy restarted mid-burst ------------------------------------------------------------------


DOWNTIME = 0.5


def test_proxy_restarted_mid_burst(fanout_pg):
    proxy = LocalProxy(backend=app_dsn(fanout_pg), max_backends=10, listen=f"127.0.0.1:{free_port()}")

    def restart() -> float:
        proxy.stop()  # every client connection cut, every backend closed
        cut = time.time()
        time.sleep(DOWNTIME)  # refused meanwhile: instances must wait, not fail
        proxy.start()  # same port
        return cut

    with proxy, fleets({"LAMBDAPOOL_DSN": proxy.dsn, "LAMBDAPOOL_POOLER": "local"}, processes=10, light=50) as (pf, lf):
        result = steady_burst(pf, lf, fanout_pg, fault=restart, fault_after=200)
        after = proxy.stats()
    assert_no_avoidable_failure(result)
    assert replaced(result) > 0 and result.total("connect_retries") > 0, "refused, retried, connected again"
    assert after["peak_backends"] <= 10
    check_runs(fanout_pg, result.results)


# -- the database restarted ---------------------------------------------------------------------------


def restarting(pg):
    """A fault: fast shutdown (every session told, then cut), DOWNTIME refused, start again on
    the same port and data. Its window closes at the cut."""

    def restart() -> float:
        pg.stop(keep=True)
        cut = time.time()
        time.sleep(DOWNTIME)
        pg.start()
        return cut

    return restart


def test_database_restarted_between_and_mid_burst(fanout_pg):
    pg = fanout_pg
    with fleets({"LAMBDAPOOL_DSN": app_dsn(pg)}, processes=10, light=10) as (pf, lf):
        first = steady_burst(pf, lf, pg, per_instance=3)
        assert not first.failed(), first.describe_failures()
        pf.freeze_all()
        pg.restart()  # between bursts, every environment frozen
        between = steady_burst(pf, lf, pg, per_instance=3)
        assert not between.failed(), between.describe_failures()
        assert min(reconnects_by_instance(between).values()) >= 1, "every instance found its connection dead"
        mid = steady_burst(pf, lf, pg, fault=restarting(pg), fault_after=200)
    assert_no_avoidable_failure(mid)
    assert sum(r.ok and r.started_at > mid.fault.end for r in mid.results) > 100
    check_runs(pg, first.results + between.results + mid.results)


def test_database_restarted_mid_burst_through_the_local_proxy(fanout_pg):
    pg = fanout_pg
    with (
        LocalProxy(backend=app_dsn(pg), max_backends=10) as proxy,
        fleets({"LAMBDAPOOL_DSN": proxy.dsn, "LAMBDAPOOL_POOLER": "local"}, processes=10, light=20) as (pf, lf),
    ):
        mid = steady_burst(pf, lf, pg, fault=restarting(pg), fault_after=200)
    check_runs(pg, mid.results)
    assert_no_avoidable_failure(mid)


# -- a connect that hangs -------------------------------------------------------------------------------


# A Lambda timeout under libpq's 2 s connect_timeout floor, and the 3 s the issue suggests (a
# 2.5 s connect budget, which libpq's whole seconds would round up past the deadline).
@pytest.mark.parametrize("lambda_timeout", [1.5, 3.0])
def test_hanging_connect_stops_at_the_deadline(fanout_pg, lambda_timeout):
    with LocalProxy(backend=app_dsn(fanout_pg), max_backends=5) as proxy, \
            fleets({"LAMBDAPOOL_DSN": proxy.dsn, "LAMBDAPOOL_POOLER": "local"}, processes=2, light=0,
                   timeout=lambda_timeout) as (pf, _):  # fmt: skip
        warm = pf.burst([{}] * 2, concurrency=2)
        assert all(r.ok for r in warm)
        proxy.hang_on_connect(True)
        proxy.drop_clients()  # the warm connections die: the next invocations must connect
        wait_for(lambda: proxy.stats()["clients"] == 0, "the cut connections closed")  # uvloop closes on its next turn
        hung = pf.burst([{}] * 2, concurrency=2)
        proxy.hang_on_connect(False)
        after = pf.burst([{}] * 2, concurrency=2)
    for r in hung:
        assert (r.ok, r.error_type) == (False, "ConnectionUnavailable"), (r.error_type, r.error_message)
        assert not r.cold and r.latency_ms < lambda_timeout * 1000, "returned before the platform's timeout"
        assert r.latency_ms > lambda_timeout * 0.8 * 1000, "it waited for the connect until near its deadline"
    assert all(r.ok and not r.cold for r in after), "the environments survived and connect again"
    assert {r.instance_id for r in after} == {r.instance_id for r in warm}
    check_runs(fanout_pg, warm + hung + after)
