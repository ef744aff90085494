"""The budget arithmetic: RDS defaults, pooler settings that fit, refusals that say what to change."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lambdapool
from lambdapool.tools.budget import (
    INSTANCE_CLASS_GIB,
    BudgetError,
    Function,
    Limits,
    default_max_connections,
    instance_class_memory,
    max_connections_from_parameter,
    plan,
)


def test_budget_error_is_a_config_error():
    assert issubclass(BudgetError, lambdapool.ConfigError)


@pytest.mark.parametrize(
    ("instance_class", "observed"),
    # SHOW max_connections on default instances of these sizes (2, 4, 8, 15.25 GiB classes)
    [("db.t3.small", 198), ("db.t3.medium", 413), ("db.m5.large", 856)],
)
def test_instance_class_default_is_close_to_rds_and_never_above(instance_class, observed):
    derived = default_max_connections(instance_class)
    assert observed * 0.95 <= derived <= observed


def test_table_covers_the_common_families_and_caps_at_5000():
    for family in ("t3", "t4g", "m5", "m6g", "m6i", "r5", "r6g", "r6i"):
        assert f"db.{family}.large" in INSTANCE_CLASS_GIB
    assert INSTANCE_CLASS_GIB["db.r6g.large"] == 16 and INSTANCE_CLASS_GIB["db.m6i.32xlarge"] == 512
    assert default_max_connections("db.r6i.32xlarge") == 5000
    with pytest.raises(lambdapool.ConfigError, match="db.x9.huge.*max_connections"):
        default_max_connections("db.x9.huge")


@pytest.mark.parametrize(
    ("family", "large_gib", "largest"),
    [
        ("r7g", 16, "16xlarge"),
        ("m7g", 8, "16xlarge"),
        ("r7i", 16, "48xlarge"),
        ("m7i", 8, "48xlarge"),
        ("r8g", 16, "48xlarge"),
    ],
)
def test_current_instance_classes_every_size_with_rds_formula(family, large_gib, largest):
    # GIVEN the current classes (memory doubles with each size; 12xlarge is 24 x .large)
    sizes = ["large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge"]
    factors = [1, 2, 4, 8, 16, 24, 32, 48, 96]
    for size, factor in list(zip(sizes, factors))[: sizes.index(largest) + 1]:
        cls = f"db.{family}.{size}"
        assert INSTANCE_CLASS_GIB[cls] == large_gib * factor, cls
        # THEN max_connections is RDS's default formula, LEAST({DBInstanceClassMemory/9531392}, 5000)
        assert default_max_connections(cls) == min(instance_class_memory(cls) // 9531392, 5000), cls
    # AND a size the family does not offer is refused, not guessed
    for missing in ("32xlarge", *sizes[sizes.index(largest) + 1 :]):
        assert f"db.{family}.{missing}" not in INSTANCE_CLASS_GIB
    assert default_max_connections(f"db.{family}.large") == (1720 if large_gib == 16 else 846)
    assert default_max_connections(f"db.{family}.{largest}") == 5000


def test_burstable_t4g_every_size():
    assert [INSTANCE_CLASS_GIB[f"db.t4g.{s}"] for s in ("micro", "small", "medium", "large", "xlarge", "2xlarge")] == [
        1,
        2,
        4,
        8,
        16,
        32,
    ]
    assert default_max_connections("db.t4g.micro") == 81 and default_max_connections("db.t4g.2xlarge") == 3468
    assert default_max_connections(" DB.R7G.Large ") == default_max_connections("db.r7g.large")  # as AWS prints it


def test_parameter_group_formula_number_and_absent_value():
    cls = "db.t4g.medium"
    assert max_connections_from_parameter(
        "LEAST({DBInstanceClassMemory/9531392},5000)", cls
    ) == default_max_connections(cls)
    assert max_connections_from_parameter("{DBInstanceClassMemory/9531392}", cls) == default_max_connections(cls)
    assert max_connections_from_parameter("250", cls) == 250
    assert max_connections_from_parameter(None, cls) == default_max_connections(cls)
    with pytest.raises(lambdapool.ConfigError, match="--max-connections"):
        max_connections_from_parameter("GREATEST(1,2)", cls)


def test_rds_proxy_percent_keeps_the_cap_under_the_usable_slots():
    # GIVEN max_connections 100, 3 superuser slots, 2 admin slots
    p = plan(Limits(100), [Function("api", 500)], pooler="rds-proxy")
    # THEN the proxy gets 95 % and keeps half of it idle at most
    assert (p.rds_proxy.max_connections_percent, p.rds_proxy.max_idle_connections_percent) == (95, 47)
    assert p.rds_proxy.cap == 95 and p.tally.fits


def test_direct_functions_come_off_the_poolers_share():
    p = plan(Limits(408, admin=5), [Function("api", 50), Function("cron", 10, pooler="direct")])
    assert p.rds_proxy.max_connections_percent == 95  # (408-3-5-10)=390 -> 390*100//408 = 95
    assert p.tally.used <= p.limits.usable


def test_pgbouncer_numbers_split_between_instances():
    fns = [Function("api", 100), Function("web", 20, connections=4)]
    p = plan(Limits(200, superuser_reserved=3, admin=1), fns, pooler="pgbouncer", poolers=2)
    b = p.pgbouncer
    assert (b.default_pool_size, b.max_db_connections, b.max_client_conn, b.reserve_pool_size) == (98, 98, 180, 0)


def test_direct_reports_the_largest_reserved_concurrency_that_fits():
    p = plan(Limits(100), [Function("api", 50), Function("web", 5, connections=2, processes=2)], pooler="direct")
    # usable 95, used 50 + 20 = 70, room 25: api +25, web +25 // 4 = 6
    assert p.largest_concurrency == {"api": 75, "web": 11}


def test_impossible_direct_plan_says_by_how_much_and_what_to_change():
    with pytest.raises(BudgetError) as info:
        plan(Limits(100), [Function("api", 80), Function("worker", 30)], pooler="direct")
    message = str(info.value)
    assert "worker breaks the budget" in message
    assert "overflow by 15" in message
    assert "lower worker's reserved concurrency from 30 to 15" in message
    assert "raise max_connections to 115" in message


@pytest.mark.parametrize(
    ("limits", "functions", "kwargs", "needle"),
    [
        (Limits(5), [Function("api", 1)], {}, "nothing is left"),
        (Limits(5000, superuser_reserved=4990, admin=0), [Function("api", 1)], {}, "MaxConnectionsPercent >= 1"),
        (Limits(100), [Function("api", 1), Function("cron", 96, pooler="direct")], {}, "cron breaks the budget"),
        (Limits(100), [Function("api", 1), Function("cron", 95, pooler="direct")], {}, r"\(cron\) use 95 of 95"),
        (Limits(100), [], {}, "at least one function"),
        (Limits(100), [Function("a", 1), Function("a", 2)], {}, "unique"),
        (Limits(100), [Function("a", 1)], {"pooler": "haproxy"}, "pooler must be one of"),
    ],
)
def test_plans_that_cannot_fit_are_refused(limits, functions, kwargs, needle):
    with pytest.raises(lambdapool.ConfigError, match=needle):
        plan(limits, functions, **kwargs)


def test_bad_inputs_name_the_setting():
    with pytest.raises(lambdapool.ConfigError, match="api: concurrency must be an integer >= 1, got 0"):
        Function("api", 0)
    with pytest.raises(lambdapool.ConfigError, match="max_connections must be"):
        Limits(0)


@given(
    max_connections=st.integers(10, 5000),
    admin=st.integers(0, 5),
    direct=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 3)), max_size=3),
    pooler=st.sampled_from(["rds-proxy", "pgbouncer"]),
    poolers=st.integers(1, 3),
)
def test_any_accepted_plan_keeps_backends_under_max_connections(max_connections, admin, direct, pooler, poolers):
    limits = Limits(max_connections, admin=admin)
    fns = [Function("api", 100)] + [Function(f"d{i}", c, k, pooler="direct") for i, (c, k) in enumerate(direct)]
    try:
        p = plan(limits, fns, pooler=pooler, poolers=poolers)
    except BudgetError:
        return
    cap = p.rds_proxy.cap if p.rds_proxy else p.pgbouncer.max_db_connections
    backends = poolers * cap + sum(f.fan_out for f in fns if f.pooler == "direct")
    assert backends <= max_connections - limits.reserved
