"""The backend sampler (real pg_stat_activity) and the report built from a fleet's results."""

from __future__ import annotations

import json

from lambdapool.tools.emulator import BackendSampler, InvocationResult, Report, percentile


def test_sampler_sees_the_backends_a_fleet_opens_at_20_hz_or_more(lambda_fleet, pg_server, app_name):
    fleet = lambda_fleet(reserved_concurrency=4, preload=["psycopg"])
    with BackendSampler(pg_server.dsn, interval=0.02, application_name_like=app_name) as sampler:
        results = fleet.burst([{"sleep": 0.4}] * 4, concurrency=4)
        fleet.burst([{"sleep": 0.2}] * 4, concurrency=4)
    assert all(r.ok for r in results)
    environments = len(fleet.environments)
    assert environments == 4
    assert sampler.peak >= environments
    assert sampler.timeline[0][1] == 0  # it started before the fleet connected
    assert sampler.rate_hz >= 20, sampler.rate_hz
    assert sampler.errors == 0
    assert "postgres" not in repr(sampler)


def test_sampler_without_a_filter_counts_every_client_backend_but_its_own(pg_factory):
    import psycopg

    pg = pg_factory()  # a server of its own: nobody else's backends come and go
    with BackendSampler(pg.dsn, interval=0.01) as sampler:
        before = sampler.timeline[-1][1]
        with psycopg.connect(pg.dsn), psycopg.connect(pg.dsn):
            n = len(sampler.timeline)
            while len(sampler.timeline) < n + 3:
                pass
            during = sampler.timeline[-1][1]
    assert (before, during) == (0, 2)


def test_report_numbers_table_json_and_chart(lambda_fleet, pg_server, app_name, tmp_path):
    fleet = lambda_fleet(reserved_concurrency=2, preload=["psycopg"])
    with BackendSampler(pg_server.dsn, application_name_like=app_name) as sampler:
        fleet.burst([{"sleep": 0.3}] * 3, concurrency=3)  # 2 cold, 1 throttled
        fleet.burst([{}] * 4, concurrency=2)  # warm
        fleet.invoke({"fail": "x"})
    report = Report("test fan-out")
    report.add("direct", fleet.results, sampler, limit=1, reconnects=0)
    summary = report.summary()["direct"]
    assert summary["invocations"] == 8 == fleet.counters["invocations"]
    assert (summary["cold_starts"], summary["throttles"], summary["failures"]) == (2, 1, 1)
    assert summary["ok"] == 6 and summary["instances"] == 2
    assert summary["peak_backends"] == sampler.peak == 2
    assert summary["peak_pct_of_limit"] == 200 and summary["limit"] == 1
    assert summary["errors"] == {"TooManyRequestsException": 1, "ValueError": 1}
    cold = sorted(r.latency_ms for r in fleet.results if r.cold)
    assert summary["cold_p50_ms"] == round(cold[0], 2) and summary["cold_p99_ms"] == round(cold[1], 2)
    assert summary["warm_p50_ms"] is not None and summary["reconnects"] == 0

    table = report.table()
    assert "direct" in table and "peak_backends" in table and "ValueError=1" in table

    doc = json.loads(report.to_json())
    assert doc["scenarios"]["direct"]["summary"]["invocations"] == 8
    timeline = doc["scenarios"]["direct"]["timeline"]
    assert len(timeline) == len(sampler.timeline) and timeline[0][0] >= 0

    pooled = [r for r in fleet.results if r.ok]
    report.add("pooled", pooled, sampler, limit=1)
    png = report.chart(tmp_path / "out" / "fanout.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert report.write_json(tmp_path / "fanout.json").exists()


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (50, 95, 99, 100)] == [50, 95, 99, 100]
    assert percentile([], 50) is None and percentile([7.0], 99) == 7.0
    results = [InvocationResult(str(i), "i", i == 0, None, float(i), True) for i in range(1, 11)]
    summary = Report().add("s", results).summary()
    assert summary["warm_p50_ms"] == 5.0 and summary["peak_backends"] is None and summary["cold_p50_ms"] is None


def test_pgbouncer_sampler_cross_checks_the_database_count(lambda_fleet, pg_factory):
    from lambdapool.tools.emulator import PgBouncerSampler
    from lambdapool.tools.testing.pgbouncer import PgBouncer, PgBouncerNotFound, find_pgbouncer
    from lambdapool.tools.testing.pytest_plugin import missing

    try:
        find_pgbouncer()
    except PgBouncerNotFound as exc:
        missing("PgBouncer", str(exc))
    pg = pg_factory(max_connections=20)
    with PgBouncer(pg, default_pool_size=2) as pgb:
        fleet = lambda_fleet(reserved_concurrency=3, env={"DATABASE_URL": pgb.dsn}, preload=["psycopg"])
        with BackendSampler(pg.dsn) as database, PgBouncerSampler(pgb.admin_dsn) as pooler:
            results = fleet.burst([{"sleep": 0.3}] * 6, concurrency=3)
        assert all(r.ok for r in results), [r.error_message for r in results]
        # GIVEN three environments through a pool of two: both views agree the cap held
        assert database.peak == pooler.peak == 2
        assert pooler.rate_hz >= 20 and pooler.errors == 0
