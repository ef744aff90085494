"""The failover suite (issue 21): a fleet of process and light instances running without a
pause while the writer fails over to its hot standby (``pg_replication``: fast shutdown of the
writer, promotion of the standby, the old writer back read-only on its old port), directly
with the budget guard, directly with a multi-host DSN, through PgBouncer and through the local
proxy. What each test proves and the figures seen are in docs/fanout_suites.md.

The rule for failures is the fault suite's: an invocation may fail only if it was in flight
while the writer went down (started before its fast shutdown ended, ended after it began) and
its connection was lost under a statement. Every invocation that starts later waits (connect
retries) until a writer is reachable, whatever the name still leads to, and succeeds; PgBouncer,
which has no writer detection, is the exception, and its test shows what it costs.

Each test also checks that no statement ran twice and every successful invocation committed:
rows are read on the new writer (they replicate), executions from both servers' logs.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lambdapool.testing import wait_for
from lambdapool.tools.emulator import InvocationResult
from lambdapool.tools.testing.replication import ReplicatedPostgres
from tests.fanout.conftest import (
    CONNECTION_LOST,
    MAX_CONNECTIONS,
    POOL_CAP,
    SCHEMA,
    BurstResult,
    Fault,
    app_dsn,
    check_runs,
    failures_outside,
    fleets,
    need_awslambdaric,
    proxy_process,
)

pytestmark = [pytest.mark.slow, pytest.mark.alone]  # (a burst that saturates the CPUs)

PROCESSES, LIGHT = 20, 100
HOLD = 0.02  # each invocation keeps its transaction open 20 ms
# Every invocation may wait out the whole failover (seconds on a loaded two-core machine) and,
# through the endpoint, the "DNS" lag after it; the Lambda timeout is the fleets' 60 s.
ENV = {"LAMBDAPOOL_ACQUIRE_TIMEOUT": "30"}
BEFORE, AFTER = 300, 300  # successful invocations before the failover, and after writes resume
DEMOTED_CONNECTS = 40  # the "DNS" lag: the endpoint leads to the demoted writer until it has met this many


# -- the traffic -----------------------------------------------------------------------------------
class Stream:
    """Steady traffic: every instance slot of each fleet invokes again as soon as its last
    invocation ended, until stopped. Results are kept per fleet, in the order they ended."""

    def __init__(self, *fleets: Any, event: dict[str, Any]) -> None:
        self._stop = threading.Event()
        self.results: list[list[InvocationResult]] = [[] for _ in fleets]
        self._threads = [
            threading.Thread(target=self._run, args=(fleet, out, event), daemon=True)
            for fleet, out in zip(fleets, self.results)
            for _ in range(fleet.reserved_concurrency)
        ]

    def _run(self, fleet: Any, out: list[InvocationResult], event: dict[str, Any]) -> None:
        while not self._stop.is_set():
            out.append(fleet.invoke(event))  # (list.append is atomic: no lock needed)

    def __enter__(self) -> Stream:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)  # an invocation ends by its Lambda timeout (60 s)
        assert not any(t.is_alive() for t in self._threads), "an invocation outlived its Lambda timeout"

    def all(self) -> list[InvocationResult]:
        return [r for out in self.results for r in list(out)]

    def served_since(self, since: float) -> int:
        return sum(r.ok and r.started_at >= since for r in self.all())

    def wait_served(self, count: int, since: float = 0.0, what: str = "") -> None:
        wait_for(lambda: self.served_since(since) >= count, f"{count} invocations served {what}".strip(),
                 timeout=60, interval=0.05)  # fmt: skip

    def result(self, fault: Fault) -> BurstResult:
        processes, *light = self.results
        return BurstResult(processes=list(processes), light=[r for out in light for r in out], fault=fault)


# -- the failover ------------------------------------------------------------------------------------
@dataclass
class Failover:
    """When each step happened (wall-clock seconds, as ``InvocationResult.started_at``)."""

    began: float  # the writer's fast shutdown starts
    stopped: float  # ... and has ended: its clients' connections are gone; the window closes
    promoted: float  # the standby takes writes
    rejoined: float  # the old writer is back on its old port, read-only, caught up
    rebuilt: bool  # it could not follow the new timeline and was made anew from a base backup
    old_log: str  # the old writer's log up to its stop (a rebuild removes it)
    old_offset: int  # the size of that log when it stopped
    rejoined_offset: int  # the size of the old writer's log once it was back
    pointed: float | None = None  # the endpoint moved to the new writer

    @property
    def window(self) -> Fault:
        return Fault(start=self.began, end=self.stopped)


def fail_over(cluster: ReplicatedPostgres) -> Failover:
    """``cluster.failover()`` in its two steps, keeping the old writer's log between them."""
    began = time.time()
    timings = cluster.failover(demoted_returns=False)
    promoted = time.time()
    old = cluster.standby  # the old writer, stopped
    old_log, old_offset = old.log_file.read_text(errors="replace"), old.log_file.stat().st_size
    rebuilt = cluster.rejoin_as_standby()
    return Failover(began=began, stopped=began + timings.stopped, promoted=promoted, rejoined=time.time(),
                    rebuilt=rebuilt, old_log=old_log, old_offset=old_offset,
                    rejoined_offset=cluster.standby.log_file.stat().st_size)  # fmt: skip


def log_since(server: Any, offset: int) -> str:
    with open(server.log_file, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def demoted_connects(cluster: ReplicatedPostgres, fo: Failover) -> int:
    """Sessions of the load's role the demoted writer accepted since it came back (log_connections)."""
    return log_since(cluster.standby, fo.rejoined_offset).count("connection authorized: user=app ")


@dataclass
class ClusterRuns:
    """What ``check_runs`` reads, across a failover: the rows on the writer now (they replicated),
    the executions from both servers' logs (each logs its own)."""

    writer: Any
    log_file: Path

    def psql(self, sql: str) -> str:
        return self.writer.psql(sql)


def check_runs_across(cluster: ReplicatedPostgres, fo: Failover, results: list[InvocationResult],
                      tmp: Path) -> dict[str, int]:  # fmt: skip
    demoted = log_since(cluster.standby, 0 if fo.rebuilt else fo.old_offset)
    logs = tmp / "both-servers.log"
    logs.write_text(fo.old_log + demoted + cluster.primary.log_file.read_text(errors="replace"))
    return check_runs(ClusterRuns(cluster.primary, logs), results)


def writes_resumed(cluster: ReplicatedPostgres, fo: Failover) -> float:
    """When the first row was written after the old writer stopped (the server's clock)."""
    sql = f"SELECT extract(epoch FROM min(at)) FROM fanout_runs WHERE at > to_timestamp({fo.stopped})"
    at = cluster.primary.psql(sql)
    assert at, "no row written after the failover"
    return float(at)


def figures(case: str, result: BurstResult, fo: Failover, resumed: float) -> str:
    bad = result.failed()
    out = (f"FIGURES failover {case}: ok {len(result.results) - len(bad)}, failed {len(bad)} "
           f"{dict(Counter(r.error_type for r in bad))}, writes resumed {resumed - fo.began:.1f} s after the "
           f"failover began")  # fmt: skip
    if fo.pointed is not None:
        out += f" / {resumed - fo.pointed:.1f} s after point_to"
    rebuilt = ", rebuilt" if fo.rebuilt else ""
    return out + (f" (writer down {fo.stopped - fo.began:.2f} s, promoted at +{fo.promoted - fo.began:.2f} s, "
                  f"old writer back read-only at +{fo.rejoined - fo.began:.2f} s{rebuilt})")  # fmt: skip


def assert_only_in_flight_failed(result: BurstResult) -> None:
    fault = result.fault
    assert fault is not None
    avoidable = failures_outside(result)
    seen = [(r.error_type, (r.error_message or "")[:300], f"started {r.started_at - fault.start:+.3f}s ended "
             f"{r.ended_at - fault.start:+.3f}s after the failover began (the writer was down at "
             f"{fault.end - fault.start:+.3f}s)") for r in avoidable[:3]]  # fmt: skip
    assert not avoidable, f"{len(avoidable)} failures outside the failover: {seen}"


@pytest.fixture
def cluster(pg_replication) -> ReplicatedPostgres:
    """A writer and a hot standby, max_connections=30 each (27 ordinary slots), the fan-out
    schema on the writer (replicated), every connection logged (to see who reached which)."""
    need_awslambdaric()
    cluster = pg_replication(max_connections=MAX_CONNECTIONS, settings={"log_connections": "on"})
    cluster.primary.psql(SCHEMA)
    cluster.wait_replicated()
    return cluster


def multi_host_dsn(cluster: ReplicatedPostgres) -> str:
    hosts = ",".join(f"{s.host}:{s.port}" for s in (cluster.primary, cluster.standby))
    return f"postgresql://app@{hosts}/postgres?target_session_attrs=read-write"


# -- direct ----------------------------------------------------------------------------------------------
def test_direct_with_the_guard_through_the_cluster_endpoint(cluster, tmp_path):
    """The DSN names the cluster endpoint, which still leads to the demoted writer after the
    failover until "DNS" catches up: new connections land on a read-only server, are refused
    by the SDK (read_only_drops) and retried until the endpoint moves. 120 instances against
    27 slots: the guard acts throughout."""
    env = {**ENV, "LAMBDAPOOL_DSN": app_dsn(cluster.endpoint)}
    with fleets(env, processes=PROCESSES, light=LIGHT) as (pf, lf), Stream(pf, lf, event={"hold": HOLD}) as stream:
        stream.wait_served(BEFORE, what="before the failover")
        fo = fail_over(cluster)
        # the "DNS" lag: the endpoint leads to the demoted writer until the fleet has met it a while
        wait_for(lambda: demoted_connects(cluster, fo) >= DEMOTED_CONNECTS, "the fleet meeting the demoted writer",
                 timeout=30)  # fmt: skip
        cluster.endpoint.point_to(cluster.primary)
        fo.pointed = time.time()
        stream.wait_served(AFTER, since=fo.pointed, what="after point_to")
    result = stream.result(fo.window)
    resumed = writes_resumed(cluster, fo)
    print(figures("direct+guard, endpoint", result, fo, resumed),
          f"; read_only_drops {result.total('read_only_drops')}, guard closes {result.total('guard_closes')}, "
          f"the demoted writer's sessions {demoted_connects(cluster, fo)}")  # fmt: skip
    assert_only_in_flight_failed(result)
    assert resumed >= fo.pointed, "no write reached a writer before the endpoint moved (the harness check)"
    assert result.total("read_only_drops") > 0, "the SDK refused the demoted writer's connections"
    assert result.total("guard_closes") > 0, "the guard acted: the fleet is wider than the server"
    check_runs_across(cluster, fo, result.results, tmp_path)


def test_direct_with_the_guard_and_a_multi_host_dsn(cluster, tmp_path):
    """Both servers in the DSN, target_session_attrs=read-write, no endpoint: writes resume once
    the promoted standby takes them; the demoted writer, first in the list, is passed over by
    every new connection (libpq connects to it, sees it read-only, goes on)."""
    env = {**ENV, "LAMBDAPOOL_DSN": multi_host_dsn(cluster)}
    with fleets(env, processes=PROCESSES, light=LIGHT) as (pf, lf), Stream(pf, lf, event={"hold": HOLD}) as stream:
        stream.wait_served(BEFORE, what="before the failover")
        fo = fail_over(cluster)
        stream.wait_served(AFTER, since=fo.rejoined, what="after the old writer came back read-only")
    result = stream.result(fo.window)
    resumed = writes_resumed(cluster, fo)
    print(figures("direct+guard, multi-host", result, fo, resumed), f"; guard closes {result.total('guard_closes')}, "
          f"the demoted writer's sessions {demoted_connects(cluster, fo)}")  # fmt: skip
    assert_only_in_flight_failed(result)
    assert demoted_connects(cluster, fo) > 0, "new connections met the demoted writer first, and passed it over"
    assert result.total("guard_closes") > 0, "the guard acted: the fleet is wider than the server"
    check_runs_across(cluster, fo, result.results, tmp_path)


# -- PgBouncer ---------------------------------------------------------------------------------------------
# PgBouncer 1.18 has no writer detection: it keeps its server connections to whatever its
# [databases] entry led to. server_login_retry (default 15 s) fails every transaction at once for
# that long after a server login failed; 1 s is what a user running through failovers sets.
PGBOUNCER = {"server_login_retry": 1}
READ_ONLY = "ReadOnlySqlTransaction"  # psycopg's error for SQLSTATE 25006
READ_ONLY_BEFORE_POINT_TO = 40  # the "DNS" lag: until this many transactions failed on the demoted writer


@dataclass
class _Backend:
    dsn: str  # what PgBouncer's [databases] entry points at


def by_phase(result: BurstResult, marks: dict[str, float]) -> dict[str, dict[str, int]]:
    """Failures by the phase their invocation started in (``marks``: name -> start), then by error type."""
    order = sorted(marks.items(), key=lambda kv: kv[1])
    out: dict[str, Counter[str]] = {}
    for r in result.failed():
        phase = next((f"from {name}" for name, at in reversed(order) if r.started_at >= at), f"before {order[0][0]}")
        out.setdefault(phase, Counter())[r.error_type or "?"] += 1
    return {phase: dict(c) for phase, c in out.items()}


def test_pgbouncer_keeps_the_demoted_writer_until_reconnect(cluster, tmp_path):
    """The honest behaviour of PgBouncer 1.18 pointed at the cluster endpoint: after the endpoint
    moves, transactions still go to the demoted writer's server connections and fail with 25006
    until they are recycled; an operator's RECONNECT on the admin console (what PgBouncer does
    itself when a name it resolves changes address) ends that, and from then on nothing fails.
    Before the endpoint moves, failures are PgBouncer's: see docs/fanout_suites.md."""
    from lambdapool.tools.testing.pgbouncer import PgBouncer

    with PgBouncer(_Backend(app_dsn(cluster.endpoint)), default_pool_size=POOL_CAP, auth_user="app",
                   admin_users=("app",), max_client_conn=PROCESSES + LIGHT + 50, extra=PGBOUNCER) as pgb:  # fmt: skip
        env = {**ENV, "LAMBDAPOOL_DSN": pgb.dsn, "LAMBDAPOOL_POOLER": "pgbouncer"}
        with fleets(env, processes=PROCESSES, light=LIGHT) as (pf, lf), Stream(pf, lf, event={"hold": HOLD}) as stream:
            stream.wait_served(BEFORE, what="before the failover")
            fo = fail_over(cluster)
            wait_for(lambda: read_only_failures(stream, fo.rejoined) >= READ_ONLY_BEFORE_POINT_TO,
                     "PgBouncer's server connections on the demoted writer", timeout=30)  # fmt: skip
            cluster.endpoint.point_to(cluster.primary)
            fo.pointed = time.time()
            # a second later, transactions still go to the demoted writer: PgBouncer kept its connections
            wait_for(lambda: read_only_failures(stream, fo.pointed + 1.0), "25006 a second after point_to", timeout=30)
            reconnect = time.time()
            pgb.admin("RECONNECT")
            reconnected = time.time()
            stream.wait_served(AFTER, since=reconnected, what="after RECONNECT")
    result = stream.result(fo.window)
    resumed = writes_resumed(cluster, fo)
    phases = by_phase(result, {"failover began": fo.began, "writer down": fo.stopped, "point_to": fo.pointed,
                               "RECONNECT": reconnect, "RECONNECT returned": reconnected})  # fmt: skip
    print(figures("pgbouncer, endpoint", result, fo, resumed), f"; failures by the phase they started in {phases}")
    between = [r for r in result.failed() if fo.pointed <= r.started_at < reconnect]
    assert {r.error_type for r in between} == {READ_ONLY}, "after point_to, only the demoted writer's 25006"
    late = [r for r in result.failed() if r.started_at >= reconnected]
    assert not late, f"{len(late)} failed after RECONNECT: {[(r.error_type, r.error_message) for r in late[:3]]}"
    # before the endpoint moved: lost under a statement at the failover, refused by PgBouncer
    # while its logins failed (server_login_retry), or 25006 on the demoted writer
    kinds = {r.error_type for r in result.failed() if r.started_at < fo.pointed}
    assert kinds <= CONNECTION_LOST | {READ_ONLY, "ProtocolViolation", "InternalError"}, kinds
    check_runs_across(cluster, fo, result.results, tmp_path)


def read_only_failures(stream: Stream, since: float) -> int:
    return sum(r.error_type == READ_ONLY and r.started_at >= since for r in stream.all())


# -- the local proxy ----------------------------------------------------------------------------------------
def test_local_proxy_follows_the_writer_and_keeps_its_clients(cluster, tmp_path):
    """``lambdapool proxy --backend <both servers, target_session_attrs=read-write>`` in its own
    process: it finds the promoted standby itself; only transactions open at the failover fail,
    and the instances' connections to the proxy stay open through it."""
    with proxy_process(multi_host_dsn(cluster), POOL_CAP) as (dsn, proxy_stats):
        env = {**ENV, "LAMBDAPOOL_DSN": dsn, "LAMBDAPOOL_POOLER": "local"}
        with fleets(env, processes=PROCESSES, light=LIGHT) as (pf, lf), Stream(pf, lf, event={"hold": HOLD}) as stream:
            stream.wait_served(BEFORE, what="before the failover")
            fo = fail_over(cluster)
            stream.wait_served(AFTER, since=fo.rejoined, what="after the old writer came back read-only")
        stats = proxy_stats()
    result = stream.result(fo.window)
    resumed = writes_resumed(cluster, fo)
    replaced = result.total("connects") - len(result.last_stats())
    seen = ", ".join(f"{k} {stats.get(k)}" for k in ("failovers", "writer_changes", "server", "peak_backends"))
    print(figures("local proxy, multi-host", result, fo, resumed),
          f"; connections to the proxy replaced {replaced}; proxy: {seen}")  # fmt: skip
    assert_only_in_flight_failed(result)
    assert replaced <= len(result.failed()), "only the clients whose transaction was lost reconnected"
    assert int(stats["peak_backends"]) <= POOL_CAP
    check_runs_across(cluster, fo, result.results, tmp_path)
