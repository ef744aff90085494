"""A writer demoted behind the same name, on real streaming replication, for each driver, direct
and through the local proxy: invocations write one row each, back to back, while the primary is
stopped, the standby promoted and the old primary comes back read-only on its old port, where
the cluster endpoint (``cluster.endpoint``, a name) still leads; then the name catches up.

The promise: at most the invocations in flight fail; none fails once the name leads to the
writer again; what an invocation committed is on the new writer, once, and what failed is not.
Each run prints ``FIGURES failover ...``: the README's Failover section quotes them.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

import pytest

from lambdapool.tools.waiting import wait_for
from tests.failover.support import INSERT, SCHEMA, writer_handler, written
from tests.support import DRIVERS, LambdaContext


@dataclass
class Run:
    id: int
    started: float
    ended: float
    outcome: object  # the server's port, or the exception

    @property
    def ok(self) -> bool:
        return not isinstance(self.outcome, BaseException)


class Writes:
    """Invocations one after another on one instance, each writing its own id, until stopped."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self.runs: list[Run] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="writes", daemon=True)

    def __enter__(self) -> Writes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                outcome = self.handler({"id": n}, LambdaContext(remaining_ms=60_000))
            except Exception as exc:  # the invocation's failure is what the test counts
                outcome = exc
            self.runs.append(Run(n, started, time.monotonic(), outcome))

    def ok_after(self, t: float) -> int:
        return sum(1 for r in list(self.runs) if r.started > t and r.ok)

    def ended_after(self, t: float) -> int:
        return sum(1 for r in list(self.runs) if r.started > t)


def _db_for(pooler, make_db, local_proxy, driver, dsn):
    """The function's Database, with the default deadlines (acquire_timeout 10 s), and how to
    tell that its connects have met the demoted writer."""
    if pooler == "direct":
        db = make_db(dsn, driver=driver)
        return db, lambda: db.stats()["read_only_drops"] >= 2
    proxy = local_proxy(dsn)
    return make_db(proxy.dsn, driver=driver, pooler="local"), lambda: proxy.stats()["failovers"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("pooler", ["direct", "local"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_writer_demoted_behind_the_same_name_costs_only_the_invocations_in_flight(
    pg_replication, make_db, local_proxy, driver, pooler
):
    cluster = pg_replication()
    cluster.primary.psql(SCHEMA)
    name = cluster.endpoint
    db, met_the_demoted_writer = _db_for(pooler, make_db, local_proxy, driver, name.dsn)
    with Writes(writer_handler(db)) as writes:
        wait_for(lambda: writes.ok_after(0) >= 20, "20 writes before the failover", 60)
        cluster.failover()  # the name still leads to the old writer's port: a read-only standby now
        wait_for(met_the_demoted_writer, "connects to the demoted writer", 30)
        name.point_to(cluster.primary)  # DNS catches up (within the invocations' deadline here)
        caught_up = time.monotonic()
        wait_for(lambda: writes.ok_after(caught_up) >= 20, "20 writes on the new writer", 60)
    runs = writes.runs
    failed = [r for r in runs if not r.ok]
    after = [r for r in runs if r.started > caught_up]
    assert all(r.ok for r in after), [r.outcome for r in after if not r.ok][:3]
    assert all(r.outcome == cluster.primary.port for r in after)
    # all or nothing, once: every write that succeeded is on the new writer, no failed one is
    ok_ids = {r.id for r in runs if r.ok}
    assert written(cluster.primary) == ok_ids
    # at most the invocations in flight when the writer stopped (one here: they run one at a time)
    assert len(failed) <= 1, [r.outcome for r in failed]
    ends = [r.ended for r in runs if r.ok]
    gap = max(b - a for a, b in itertools.pairwise(ends))
    first = min(r.ended for r in runs if r.ended > caught_up and r.ok) - caught_up
    print(
        f"FIGURES failover {driver} {pooler}: {len(runs)} invocations, {len(failed)} failed "
        f"({_kinds(failed)}); no write for {gap:.1f} s; the first write {first:.2f} s "
        f"after the name led to the writer again; read_only_drops={db.stats()['read_only_drops']}"
    )


def _kinds(runs: list[Run]) -> str:
    kinds: dict[str, int] = {}
    for r in runs:
        kinds[type(r.outcome).__name__] = kinds.get(type(r.outcome).__name__, 0) + 1
    return ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"


@pytest.mark.slow
def test_the_control_a_hand_written_module_global_connection_stays_on_the_demoted_writer(pg_replication):
    """What lambdapool is compared with: the usual module-global connection, reopened when broken."""
    import psycopg

    cluster = pg_replication()
    cluster.primary.psql(SCHEMA)
    name = cluster.endpoint
    state: dict[str, psycopg.Connection] = {}

    def handler(event, context):
        conn = state.get("conn")
        if conn is None or conn.closed or conn.broken:
            conn = state["conn"] = psycopg.connect(name.dsn, connect_timeout=3)
        with conn.transaction():
            return conn.execute(INSERT.format(id=int(event["id"]))).fetchone()[0]

    with Writes(handler) as writes:
        wait_for(lambda: writes.ok_after(0) >= 20, "20 writes before the failover", 60)
        cluster.failover()
        demoted = time.monotonic()
        wait_for(lambda: writes.ended_after(demoted) >= 5, "invocations against the demoted writer", 60)
        name.point_to(cluster.primary)
        caught_up = time.monotonic()
        wait_for(lambda: writes.ended_after(caught_up) >= 50, "50 invocations after the name caught up", 60)
    runs = writes.runs
    after = [r for r in runs if r.started > caught_up]
    failed = [r for r in runs if not r.ok]
    assert not any(r.ok for r in after), "it stays on the read-only server, whatever the name says"
    assert {getattr(r.outcome, "sqlstate", None) for r in after} == {"25006"}
    assert written(cluster.primary) == {r.id for r in runs if r.ok}
    state["conn"].close()
    print(
        f"FIGURES failover control (module-global psycopg connection): {len(runs)} invocations, {len(failed)} failed "
        f"({_kinds(failed)}), all {len(after)} after the name led to the writer again"
    )
