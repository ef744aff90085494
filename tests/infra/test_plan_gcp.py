"""`lambdapool plan --platform gcp`: Cloud Run functions against Cloud SQL, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import hcl2
import pytest

from lambdapool.tools.budget_gcp import default_max_connections, pooler_count, surge
from lambdapool.tools.cli import main


def plan(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["plan", "--platform", "gcp", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("machine_type", "expected"),
    [
        ("db-f1-micro", 25),
        ("db-g1-small", 50),
        ("db-custom-1-3840", 100),  # 3.75 GiB
        ("db-custom-2-7680", 200),  # 7.5 GiB: on the 6-7.5 / 7.5-15 boundary, the lower row
        ("db-custom-4-15360", 400),
        ("db-custom-8-30720", 500),
        ("db-n1-standard-16", 600),  # 60 GiB
        ("db-perf-optimized-N-8", 800),  # 64 GiB
        ("db-perf-optimized-N-16", 1000),  # 128 GiB
    ],
)
def test_default_max_connections_follow_googles_table(machine_type, expected):
    assert default_max_connections(machine_type) == expected


def test_the_surge_headroom_is_ten_percent_at_least_one():
    assert [surge(n) for n in (1, 5, 10, 11, 20, 100, 101)] == [1, 1, 1, 2, 2, 10, 11]


def test_poolers_are_one_per_four_vcpus_rounded_up():
    assert [pooler_count(v) for v in (None, 2, 4, 6, 8, 16, 32)] == [1, 1, 1, 2, 2, 4, 8]


def test_table_states_the_headroom_and_the_settings(capsys):
    code, out, _ = plan(capsys, "--instance-class", "db-custom-2-7680", "--function", "api=20x80")
    assert code == 0
    assert out.splitlines() == [
        "surge headroom: +10 % of max_instance_count, at least 1, for surges past it "
        "(Google: instances can briefly exceed max_instance_count)",
        "usable = max_connections 200 - superuser_reserved 3 - replication 0 - admin 2 = 195",
        "  api (20 + surge 2) instances x 4 conn = 88 (direct)",
        "used = 88 of 195 usable: fits",
        "api: max_instance_count 20, max_instance_request_concurrency 80, LAMBDAPOOL_MAX_PER_INSTANCE 4, "
        "available_cpu 1",
        "direct: api fits up to max_instance_count 43",
    ]


def test_conns_default_to_the_smaller_of_concurrency_and_max_per_instance(capsys):
    code, out, _ = plan(
        capsys, "--max-connections", "400", "--function", "a=10x2", "--function", "b=10", "--format", "json"
    )
    assert code == 0
    functions = {f["name"]: f for f in json.loads(out)["functions"]}
    assert functions["a"]["max_per_instance"] == 2 and functions["b"]["max_per_instance"] == 1
    # concurrency 1 leaves the CPU to Cloud Run's default; above 1 needs a whole vCPU
    assert functions["b"]["available_cpu"] is None and functions["a"]["available_cpu"] == "1"


def test_the_largest_max_instances_that_fits_is_exact(capsys):
    code, out, _ = plan(capsys, "--max-connections", "100", "--function", "api=10x4x4", "--format", "json")
    largest = json.loads(out)["functions"][0]["largest_max_instance_count"]
    usable = 95
    assert (largest + surge(largest)) * 4 <= usable < (largest + 1 + surge(largest + 1)) * 4


def test_managed_pool_size_splits_what_direct_functions_leave(capsys):
    code, out, _ = plan(
        capsys,
        "--instance-class",
        "db-perf-optimized-N-8",
        "--pooler",
        "cloud-sql-pooler",
        "--function",
        "api=100x80x8",
        "--function",
        "cron=2@cloud-sql",
        "--format",
        "json",
    )
    assert code == 0
    data = json.loads(out)
    # 800 - 5 reserved = 795; cron (2 + 1) x 1 = 3 direct; 792 left over 2 poolers (8 vCPUs)
    assert data["managed_pool"] == {"max_pool_size": 396, "poolers": 2, "database_connections": 792, "clients": 880}
    assert data["used"] == 795


def test_an_enterprise_machine_type_with_the_pooler_is_noted_on_stderr(capsys):
    code, out, err = plan(
        capsys,
        "--instance-class",
        "db-custom-4-15360",
        "--pooler",
        "cloud-sql-pooler",
        "--function",
        "a=5x10",
        "--format",
        "tfvars",
    )
    assert code == 0
    assert "needs a Cloud SQL Enterprise Plus instance" in err
    hcl2.loads(out)  # stdout stays valid tfvars


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["--max-connections", "100", "--function", "api=5x1001"],
            "CONCURRENCY 1001 is above Cloud Run functions' limit of 1000",
        ),
        (
            ["--max-connections", "100", "--function", "api=5x0"],
            "CONCURRENCY (max_instance_request_concurrency) must be",
        ),
        (["--max-connections", "100", "--function", "api=5x4x8"], "CONNS 8 is more than its CONCURRENCY 4"),
        (["--max-connections", "100", "--function", "api=5x4@rds-proxy"], "on --platform gcp the pooler is one of"),
        (["--max-connections", "100", "--pooler", "pgbouncer", "--function", "api=5"], "--pooler on --platform gcp"),
        (["--max-connections", "100", "--function", "api=5", "--format", "cfn"], "--format cfn: on --platform gcp"),
        (["--instance-class", "db.t4g.medium", "--function", "api=5"], "is not a Cloud SQL machine type"),
        (["--function", "api=5"], "give --max-connections N or --instance-class MACHINE_TYPE"),
    ],
)
def test_impossible_inputs_name_the_flag_and_the_fix(capsys, argv, needle):
    code, out, err = plan(capsys, *argv)
    assert code == 2 and out == ""
    assert needle in err


def test_a_budget_that_does_not_fit_is_refused_naming_the_function(capsys):
    code, out, err = plan(capsys, "--max-connections", "100", "--function", "api=10x4", "--function", "worker=60x8x2")
    assert code == 2 and out == ""
    # api (10 + 1) x 4 = 44; worker (60 + 6) x 2 = 132; 176 > 95
    assert err.startswith("lambdapool plan: worker breaks the budget: the connections overflow by 81:")
    # lowered by the overflow: at most 132 - 81 = 51 connections, (22 + surge 3) x 2 = 50
    assert "To fit, lower worker's max_instance_count from 60 to 22" in err
    assert (23 + surge(23)) * 2 > 51
    assert "route worker through Managed Connection Pooling (--pooler cloud-sql-pooler)" in err


def test_tfvars_carry_the_plans_numbers(capsys):
    argv = ["--instance-class", "db-perf-optimized-N-4", "--pooler", "cloud-sql-pooler"]
    code, out, _ = plan(
        capsys, *argv, "--function", "api=50x40x4", "--function", "cron=1@cloud-sql", "--format", "tfvars"
    )
    assert code == 0
    tfvars = hcl2.loads(
        out, serialization_options=hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
    )
    assert tfvars["pooler"] == "cloud-sql-pooler" and tfvars["database_tier"] == "db-perf-optimized-N-4"
    # 32 GiB: 600 max_connections, 595 usable, cron (1 + 1) x 1 = 2 direct, 4 vCPUs: one pooler
    assert tfvars["max_pool_size"] == 593
    assert tfvars["functions"]["api"] == {
        "max_instance_count": 50,
        "max_instance_request_concurrency": 40,
        "max_per_instance": 4,
        "available_cpu": "1",
    }
    assert tfvars["functions"]["cron"]["pooler"] == "cloud-sql"


def test_the_aws_plan_is_unchanged_by_default():
    proc = subprocess.run(
        [sys.executable, "-m", "lambdapool", "plan", "--max-connections", "100", "--function", "api=50"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rds-proxy cap = " in proc.stdout and "surge" not in proc.stdout
