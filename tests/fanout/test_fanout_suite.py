"""The fan-out proof (issue 5, item 4): a burst of process and light instances against a
Postgres with max_connections=30, directly and through each pooler. What each test proves and
the figures seen are in docs/fanout_suites.md.

Every burst has two waves: a cold wave as wide as the fleets (each invocation pauses before
touching the database, so the whole wave is in flight at once and every instance is its own),
then a warm wave of as many invocations again. Each invocation holds its transaction 20 ms.
"""

from __future__ import annotations

import pytest

from lambdapool.testing import LocalProxy
from lambdapool.tools.emulator import PgBouncerSampler
from tests.fanout.conftest import (
    MIN_SAMPLE_HZ,
    ORDINARY_SLOTS,
    POOL_CAP,
    BurstResult,
    LightFleetProcess,
    app_dsn,
    burst,
    check_runs,
    events,
    fleets,
    proxy_process,
    refused_attempts,
)

pytestmark = [pytest.mark.slow, pytest.mark.alone]  # (a burst that saturates the CPUs)

PROCESSES, LIGHT = 100, 1000
# The cold wave's pause outlasts its dispatch, so every invocation of the wave is its own
# instance: a slow two-core VM started ~400 light instances a second (threads, each importing
# its handler under one GIL), and with a 2 s pause the first ones were done, and reused, before
# the last started.
PAUSE, HOLD = 5.0, 0.02
# Direct, the light wave is 300 wide: on two cores a 1,000-wide wave against 27 slots spends the
# machine on refused connection attempts (each forks a backend), see docs/fanout_suites.md.
DIRECT_LIGHT = 300


def fan_out(pg, env: dict, *, processes: int = PROCESSES, light: int = LIGHT, preload=None, **kw) -> BurstResult:
    """The two waves through both fleets at once. Lambda timeout 60 s, acquire timeout 50 s,
    connect timeout 20 s (unless ``env`` says otherwise): on two cores a wave of a thousand cold
    instances queues for the CPU (and the light ones for this process's GIL), not only for the
    pool, and that wait is the harness's, not the SDK's."""
    extra = {} if preload is None else {"preload": preload}
    env = {"LAMBDAPOOL_ACQUIRE_TIMEOUT": "50", "LAMBDAPOOL_CONNECT_TIMEOUT": "20", **env}
    lf = LightFleetProcess(env, light) if light else None
    with fleets(env, processes=processes, light=0, **extra) as (pf, _):
        return burst(
            pf,
            lf,
            events(processes, pause=PAUSE, hold=HOLD) + events(processes, hold=HOLD),
            events(light, pause=PAUSE, hold=HOLD) + events(light, hold=HOLD),
            sampler_dsn=pg.dsn,
            **kw,
        )


def assert_wide(result: BurstResult, processes: int = PROCESSES, light: int = LIGHT) -> None:
    """The burst really was as wide as asked: every process environment started, and nearly
    every light instance (a light instance is reused if one of the wave finished before the
    last thread of the wave started, which a loaded machine may allow)."""
    assert result.process_counters["peak_instances"] == processes
    if light:
        assert result.light_counters["peak_instances"] >= 0.9 * light, result.light_counters


def assert_sampled(result: BurstResult) -> None:
    assert result.sampler is not None and result.sampler.errors == 0
    assert result.sampler.rate_hz >= MIN_SAMPLE_HZ, f"sampled at {result.sampler.rate_hz:.1f} Hz"


def assert_all_served(pg, result: BurstResult) -> None:
    assert not result.failed(), result.describe_failures()
    assert check_runs(pg, result.results)["rows"] == len(result.results)


def test_direct_without_the_guard_overruns_the_server(fanout_pg):
    """The control: with no pooler and no guard, warm instances keep every ordinary slot and
    the rest are refused until their deadline. It proves the harness sees an overrun.

    Acquire timeout 3 s: nothing frees a slot while the instances that hold them stay warm, so
    a longer one would only delay the same failures."""
    env = {"LAMBDAPOOL_DSN": app_dsn(fanout_pg), "LAMBDAPOOL_BUDGET_GUARD": "false", "LAMBDAPOOL_ACQUIRE_TIMEOUT": "3"}
    result = fan_out(fanout_pg, env, light=DIRECT_LIGHT)
    assert_sampled(result)
    # every ordinary slot taken: the sampler's own (superuser) backend holds one of them
    assert result.sampler.peak == ORDINARY_SLOTS - 1
    failed = result.failed()
    served_by = {r.instance_id for r in result.results if r.ok}
    assert len(served_by) <= ORDINARY_SLOTS - 1, "only instances that got a slot ever succeeded"
    cold = [r for r in result.results if r.cold]  # one per instance
    assert len(failed) >= len(cold) - (ORDINARY_SLOTS - 1), result.describe_failures()
    assert {r.error_type for r in failed} == {"ConnectionUnavailable"}
    # refused by the server (the last slots are the superuser's), or out of time connecting: the
    # server was busy forking backends only to refuse them
    refusals = ("too many clients", "remaining connection slots are reserved")
    assert any(why in r.error_message for r in failed for why in refusals), result.describe_failures()
    reasons = (*refusals, "timeout expired", "no time left before the deadline")
    assert all(any(why in r.error_message for why in reasons) for r in failed), [
        r.error_message for r in failed if not any(why in r.error_message for why in reasons)
    ][:3]
    check_runs(fanout_pg, result.results)


def test_local_proxy_caps_backends_at_20(fanout_pg):
    with proxy_process(app_dsn(fanout_pg), POOL_CAP) as (dsn, proxy_stats):
        admin = PgBouncerSampler(dsn.rsplit("/", 1)[0] + "/lambdapool")
        with admin:
            result = fan_out(fanout_pg, {"LAMBDAPOOL_DSN": dsn, "LAMBDAPOOL_POOLER": "local"})
        stats = {
            k: int(v) for k, v in proxy_stats().items() if k in ("peak_backends", "peak_clients", "borrow_timeouts")
        }
    assert_all_served(fanout_pg, result)
    assert_wide(result)
    assert_sampled(result)
    assert result.sampler.peak <= POOL_CAP and stats["peak_backends"] <= POOL_CAP
    assert admin.peak <= POOL_CAP and admin.rate_hz >= MIN_SAMPLE_HZ
    assert result.sampler.peak == stats["peak_backends"] == POOL_CAP, "the cap was reached, and seen by both"
    assert stats["peak_clients"] >= PROCESSES + 0.9 * LIGHT and stats["borrow_timeouts"] == 0


def test_pgbouncer_caps_backends_at_20(fanout_pg):
    from lambdapool.tools.testing.pgbouncer import PgBouncer

    with PgBouncer(fanout_pg, default_pool_size=POOL_CAP, max_client_conn=PROCESSES + LIGHT + 100,
                   auth_user="app", admin_users=("app",)) as pgb:  # fmt: skip
        with PgBouncerSampler(pgb.admin_dsn) as pooler:
            result = fan_out(fanout_pg, {"LAMBDAPOOL_DSN": pgb.dsn, "LAMBDAPOOL_POOLER": "pgbouncer"})
    assert_all_served(fanout_pg, result)
    assert_wide(result)
    assert_sampled(result)
    assert pooler.errors == 0 and pooler.rate_hz >= MIN_SAMPLE_HZ
    assert result.sampler.peak <= POOL_CAP and pooler.peak <= POOL_CAP
    assert result.sampler.peak == pooler.peak == POOL_CAP, "the cap was reached, and seen by both"


def test_direct_with_the_budget_guard_never_fails(fanout_pg):
    """The full width, 1,100 instances against 26 slots: refused connects back off on their own
    scale (lambdapool/_retry.py), so the server serves instead of forking backends to refuse."""
    result = fan_out(fanout_pg, {"LAMBDAPOOL_DSN": app_dsn(fanout_pg)})
    print(f"FIGURES direct+guard: {result.figures()}; refused attempts (server log) {refused_attempts(fanout_pg)}; "
          f"connects {result.total('connects')}, guard closes {result.total('guard_closes')}")  # fmt: skip
    assert_all_served(fanout_pg, result)
    assert_wide(result)
    assert_sampled(result)
    assert result.sampler.peak <= ORDINARY_SLOTS
    assert result.total("guard_closes") > 0, "the guard had to act: the fan-out is wider than the server"


IAM_PROCESSES, IAM_LIGHT = 20, 300


def test_rds_proxy_path_with_iam_tokens_pins_nothing(fanout_pg, moto_url):
    """The rds-proxy adapter end to end: endpoint looked up by name in moto (threaded server,
    reached from every process), IAM tokens signed with the test keys, TLS verified against
    the proxy's certificate. Narrower than the others: each instance builds boto3 clients
    (~0.5 s of CPU per process on a cold start), see docs/fanout_suites.md."""
    from lambdapool.tools.testing.moto import create_db_proxy, fake_aws_environment, signing_keys

    with LocalProxy(backend=app_dsn(fanout_pg), max_backends=POOL_CAP, auth="iam", iam_credentials=signing_keys(),
                    region="us-east-1", tls=True, require_tls=True) as proxy:  # fmt: skip
        create_db_proxy("fanout-proxy", proxy.host, endpoint_url=moto_url)
        env = {
            **fake_aws_environment(), "LAMBDAPOOL_POOLER": "rds-proxy",
            "LAMBDAPOOL_DSN": f"postgresql://app@:{proxy.port}/postgres", "LAMBDAPOOL_PROXY_NAME": "fanout-proxy",
            "LAMBDAPOOL_IAM_AUTH": "true", "LAMBDAPOOL_REGION": "us-east-1",
            "LAMBDAPOOL_SSL_CA_FILE": proxy.ca_file, "LAMBDAPOOL_AWS_ENDPOINT_URL": moto_url,
        }  # fmt: skip
        result = fan_out(fanout_pg, env, processes=IAM_PROCESSES, light=IAM_LIGHT,
                         preload=["psycopg", "lambdapool", "boto3"])  # fmt: skip
        stats = proxy.stats()
    assert_all_served(fanout_pg, result)
    assert_wide(result, IAM_PROCESSES, IAM_LIGHT)
    assert_sampled(result)
    assert stats["pinned_sessions"] == 0 and stats["pin_reasons"] == {}
    assert stats["auth_failures"] == 0
    assert result.sampler.peak <= POOL_CAP and stats["peak_backends"] <= POOL_CAP
    assert result.sampler.peak == stats["peak_backends"] == POOL_CAP
