"""direct with the budget guard: a burst wider than max_connections completes; without the
guard the same burst surfaces refusals (the control)."""

from __future__ import annotations

import threading
import time

import pytest

import lambdapool
from lambdapool.tools.emulator import BackendSampler
from tests.support import LambdaContext, backends

INSTANCES = 100
INVOCATIONS = 3


@pytest.fixture
def small_pg(pg_factory):
    pg = pg_factory(max_connections=30)  # 3 reserved for superusers: 27 ordinary slots
    pg.psql("CREATE ROLE app LOGIN")
    return pg


def burst(pg, *, guard: bool, deadline_ms: int) -> tuple[list[object], int, list[lambdapool.Database]]:
    """INSTANCES instances (each its own Database) x INVOCATIONS, all at once; returns the
    results (values or exceptions), the peak of our backends, and the databases."""
    dsn = pg.dsn.replace("postgres@", "app@", 1)
    dbs = [lambdapool.Database(dsn, application_name="lp-guard", budget_guard=guard, acquire_timeout=30,
                               handle_sigterm=False) for _ in range(INSTANCES)]  # fmt: skip
    results: list[object] = []
    lock = threading.Lock()

    def instance(db: lambdapool.Database) -> None:
        @db.lambda_handler
        def handler(event, context):
            with db.connection() as conn:
                return conn.execute("SELECT pg_sleep(0.02), pg_backend_pid()").fetchone()[1]

        for _ in range(INVOCATIONS):
            try:
                value: object = handler({}, LambdaContext(remaining_ms=deadline_ms))
            except lambdapool.LambdapoolError as exc:
                value = exc
            with lock:
                results.append(value)

    # Its one superuser connection is opened before the burst (it sits in a reserved slot).
    sampler = BackendSampler(pg.dsn, interval=0.02, application_name_like="lp-guard").start()
    threads = [threading.Thread(target=instance, args=(db,)) for db in dbs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sampler.stop()
    return results, sampler.peak, dbs


@pytest.mark.slow
@pytest.mark.alone  # (a burst against a small server: CPU starvation would look like refusals)
def test_guarded_burst_completes_every_invocation_within_the_limit(small_pg):
    results, peak, dbs = burst(small_pg, guard=True, deadline_ms=20_000)
    try:
        failures = [r for r in results if isinstance(r, BaseException)]
        assert len(results) == INSTANCES * INVOCATIONS
        assert not failures, failures[:3]
        assert peak <= 27, "never more than max_connections minus the reserved slots"
        stats = [db.stats() for db in dbs]
        assert sum(s["guard_closes"] for s in stats) > 0  # the guard made room
        assert sum(s["connect_retries"] for s in stats) > 0  # refusals were absorbed, not surfaced
    finally:
        for db in dbs:
            db.close()


@pytest.mark.slow
@pytest.mark.alone  # (a burst against a small server: CPU starvation would look like refusals)
def test_control_unguarded_burst_surfaces_refusals(small_pg):
    results, peak, dbs = burst(small_pg, guard=False, deadline_ms=2_000)
    try:
        failures = [r for r in results if isinstance(r, lambdapool.ConnectionUnavailable)]
        assert failures, "without the guard, warm idle connections starve the other instances"
        assert any("too many clients" in str(f) or "remaining connection slots" in str(f) for f in failures)
    finally:
        for db in dbs:
            db.close()


def test_zombie_timeout_terminates_only_our_own_idle_connections(small_pg, make_db):
    import psycopg

    dsn = small_pg.dsn.replace("postgres@", "app@", 1)
    ours = psycopg.connect(dsn, application_name="lp-zombie", autocommit=True)  # a frozen instance's
    theirs = psycopg.connect(dsn, application_name="someone-else", autocommit=True)
    time.sleep(1.1)
    db = make_db(dsn, application_name="lp-zombie", guard_threshold=0.0, zombie_timeout=1.0)
    with db.connection() as conn:
        conn.execute("SELECT 1")
    assert db.adapter.zombies_terminated == 1
    assert backends(small_pg, "someone-else") == 1
    assert backends(small_pg, "lp-zombie") == 0  # the zombie, and ours closed by the guard
    ours.close()
    theirs.close()


def test_an_outage_is_not_taken_for_a_full_server(pg_factory, make_db):
    # Before: any connect that needed retries counted as "server full", so after a restart
    # (connection refused for a moment) the guard closed the connection after every invocation
    # for guard_sample_interval: a restart became a reconnect storm across a fleet.
    from lambdapool.testing import wait_for
    from tests.support import query_handler

    pg = pg_factory()
    db = make_db(pg.dsn, guard_sample_interval=60)  # no sample in this test: only a refusal could close
    handler = query_handler(db)
    handler({}, LambdaContext())
    pg.stop(keep=True)  # an outage: every connect is refused until it is back

    def start_once_refused() -> None:
        wait_for(lambda: db.stats()["connect_failures"] >= 1, "a refused connect", timeout=20)
        pg._launch_server()
        pg._wait_ready()

    restarter = threading.Thread(target=start_once_refused)
    restarter.start()
    try:
        handler({}, LambdaContext())  # reconnects through the outage
    finally:
        restarter.join(30)
    for _ in range(10):
        handler({}, LambdaContext())
    stats = db.stats()
    assert stats["connect_retries"] >= 1
    assert stats["guard_closes"] == 0 and stats["connects"] == 2
