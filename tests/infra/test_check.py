"""`lambdapool check` against resources made in moto: a fitting deployment passes, an
overcommitted one fails naming what breaks the budget, with the arithmetic printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import boto3
import pytest

from lambdapool.tools.budget import default_max_connections
from lambdapool.tools.cli import main
from tests.infra.infra_support import lambda_zip, make_network


def make_deployment(subnets: list[str]) -> dict[str, str]:
    """A database (max_connections 100 via its parameter group) behind an RDS Proxy at 60 %."""
    rds = boto3.client("rds")
    rds.create_db_parameter_group(
        DBParameterGroupName="orders", DBParameterGroupFamily="postgres16", Description="orders"
    )
    rds.modify_db_parameter_group(
        DBParameterGroupName="orders",
        Parameters=[{"ParameterName": "max_connections", "ParameterValue": "100", "ApplyMethod": "pending-reboot"}],
    )
    rds.create_db_instance(
        DBInstanceIdentifier="orders",
        DBInstanceClass="db.t4g.medium",
        Engine="postgres",
        MasterUsername="app",
        MasterUserPassword="not-a-real-one",
        AllocatedStorage=20,
        DBParameterGroupName="orders",
    )
    role = boto3.client("iam").create_role(RoleName="fn", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    secret = boto3.client("secretsmanager").create_secret(Name="orders", SecretString="{}")["ARN"]
    rds.create_db_proxy(
        DBProxyName="orders",
        EngineFamily="POSTGRESQL",
        RoleArn=role,
        VpcSubnetIds=subnets,
        RequireTLS=True,
        Auth=[{"AuthScheme": "SECRETS", "SecretArn": secret, "IAMAuth": "REQUIRED"}],
    )
    rds.register_db_proxy_targets(DBProxyName="orders", DBInstanceIdentifiers=["orders"])
    pool_config(60)
    address = rds.describe_db_instances(DBInstanceIdentifier="orders")["DBInstances"][0]["Endpoint"]["Address"]
    endpoint = rds.describe_db_proxies(DBProxyName="orders")["DBProxies"][0]["Endpoint"]
    return {"role": role, "address": address, "endpoint": endpoint}


@pytest.fixture
def deployment(network):
    return make_deployment(network[1])


def pool_config(percent: int) -> None:
    boto3.client("rds").modify_db_proxy_target_group(
        DBProxyName="orders",
        TargetGroupName="default",
        ConnectionPoolConfig={"MaxConnectionsPercent": percent, "MaxIdleConnectionsPercent": percent // 2},
    )


def function(role: str, name: str, env: dict[str, str], reserved: int | None) -> None:
    lam = boto3.client("lambda")
    lam.create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": lambda_zip()},
        Environment={"Variables": env},
    )
    if reserved is not None:
        lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=reserved)


def proxied(deployment, name: str, reserved: int | None, per_instance: int = 1) -> None:
    function(
        deployment["role"],
        name,
        {
            "LAMBDAPOOL_POOLER": "rds-proxy",
            "LAMBDAPOOL_PROXY_NAME": "orders",
            "LAMBDAPOOL_MAX_PER_INSTANCE": str(per_instance),
        },
        reserved,
    )


def endpointed(
    deployment,
    name: str,
    reserved: int | None,
    per_instance: int = 1,
    *,
    variable: str = "LAMBDAPOOL_DSN",
    pooler: str | None = "rds-proxy",
) -> None:
    """A function given the proxy's hostname, as the infra/ templates do (no LAMBDAPOOL_PROXY_NAME)."""
    dsn = f"postgresql://app:hunter2-secret@{deployment['endpoint'].upper()}:5432/orders"  # hosts are case-blind
    env = {variable: dsn, "LAMBDAPOOL_MAX_PER_INSTANCE": str(per_instance)}
    function(deployment["role"], name, env | ({"LAMBDAPOOL_POOLER": pooler} if pooler else {}), reserved)


def direct(deployment, name: str, reserved: int | None) -> None:
    dsn = f"postgresql://app:hunter2-secret@{deployment['address']}:5432/orders"
    function(deployment["role"], name, {"LAMBDAPOOL_POOLER": "direct", "LAMBDAPOOL_DSN": dsn}, reserved)


def check(capsys, *argv: str) -> tuple[int, str]:
    code = main(["check", "--proxy-name", "orders", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_fitting_deployment_passes_and_shows_the_arithmetic(deployment, capsys):
    # GIVEN two functions through the proxy and a direct one, found by their environment
    proxied(deployment, "api", 500)
    proxied(deployment, "web", 50, per_instance=4)
    direct(deployment, "cron", 30)
    code, out = check(capsys)
    # THEN 60 (proxy) + 30 (cron) <= 95 usable
    assert code == 0, out
    assert "database orders (db.t4g.medium): max_connections 100" in out
    assert "usable = max_connections 100 - superuser_reserved 3 - replication 0 - admin 2 = 95" in out
    assert "rds-proxy orders cap = 100 x MaxConnectionsPercent 60 % = 60" in out
    assert "cron 30 x 1 conn = 30 (direct)" in out
    assert "client: web reserved 50 x 4 conn through rds-proxy orders" in out
    assert "OK: the fan-out fits, 5 connection(s) to spare" in out
    assert "hunter2" not in out  # the DSN is read for its host, never printed


def test_functions_given_the_proxys_endpoint_are_found_as_its_clients(deployment, capsys):
    # GIVEN functions that carry the proxy's hostname (LAMBDAPOOL_DSN, DATABASE_URL, even with no
    # pooler set: their connections go to the proxy all the same) and no LAMBDAPOOL_PROXY_NAME
    endpointed(deployment, "api", 500)
    endpointed(deployment, "web", 50, per_instance=4, variable="DATABASE_URL")
    endpointed(deployment, "plain", 10, pooler=None)
    direct(deployment, "cron", 30)
    code, out = check(capsys)
    # THEN each is counted as a client of the proxy, not as direct connections: 60 + 30 fits
    assert code == 0, out
    for name, reserved, conns in (("api", 500, 1), ("web", 50, 4), ("plain", 10, 1)):
        assert f"client: {name} reserved {reserved} x {conns} conn through rds-proxy orders" in out
    assert "cron 30 x 1 conn = 30 (direct)" in out and "OK: the fan-out fits, 5 connection(s) to spare" in out
    assert "hunter2" not in out


def test_an_endpoint_deployment_that_overcommits_names_the_function(deployment, capsys):
    endpointed(deployment, "api", 500)
    direct(deployment, "cron", 40)
    code, out = check(capsys)
    assert code == 1, out
    assert "client: api reserved 500 x 1 conn through rds-proxy orders" in out
    assert "FAIL: cron breaks the budget: over by 5; to fit, lower cron's reserved concurrency from 40 to 35" in out


def test_a_function_named_for_another_proxy_is_not_its_client(deployment, capsys):
    # proxy_name wins over the DSN's host in the adapter, so check follows the name
    function(
        deployment["role"],
        "elsewhere",
        {
            "LAMBDAPOOL_POOLER": "rds-proxy",
            "LAMBDAPOOL_PROXY_NAME": "billing",
            "LAMBDAPOOL_DSN": f"postgresql://{deployment['endpoint']}:5432",
        },
        100,
    )
    code, out = check(capsys)
    assert code == 0 and "not counted: elsewhere goes through rds-proxy billing" in out


def test_an_overcommitted_direct_function_fails_by_name(deployment, capsys):
    proxied(deployment, "api", 500)
    direct(deployment, "cron", 40)
    code, out = check(capsys, "--function", "api", "--function", "cron")
    assert code == 1
    assert "used = 100 of 95 usable: OVER by 5" in out
    assert "FAIL: cron breaks the budget: over by 5; to fit, lower cron's reserved concurrency from 40 to 35" in out


def check_flags() -> set[str]:
    from lambdapool.tools.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["check"]
    return {flag for action in sub._actions for flag in action.option_strings}


def foreign_flags(out: str) -> set[str]:
    """Flags named in check's output that check does not have (a pointer to `lambdapool plan ...`
    may name plan's own)."""
    mine = re.sub(r"lambdapool plan[^;)]*", "", out)
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", mine)) - check_flags()


def test_messages_name_checks_own_flags_and_the_deployed_settings(deployment, capsys):
    # GIVEN a direct function over the budget and another with no reserved concurrency
    proxied(deployment, "api", 500)
    direct(deployment, "cron", 40)
    code, out = check(capsys)
    # THEN the fix names what to change in the deployment, not a flag of another command
    assert code == 1 and not foreign_flags(out), out
    assert "route cron through RDS Proxy orders (its endpoint as the host of LAMBDAPOOL_DSN)" in out, out
    direct(deployment, "report", None)
    code, out = check(capsys)
    assert code == 1 and not foreign_flags(out), out
    # AND bad limits are named by check's flags
    for argv, needle in (
        (["--reserved", "-1"], "--reserved -1: must be a whole number >= 0"),
        (["--max-connections", "0"], "--max-connections 0: must be a whole number >= 1"),
    ):
        code, out = check(capsys, *argv)
        assert code == 2 and needle in out and not foreign_flags(out), out


def test_max_connections_flag_wins_over_a_class_lambdapool_cannot_size(network, capsys):
    # GIVEN an instance of a class not in lambdapool's table, its parameter group silent
    boto3.client("rds").create_db_instance(
        DBInstanceIdentifier="big",
        DBInstanceClass="db.x2g.large",
        Engine="postgres",
        MasterUsername="app",
        MasterUserPassword="not-a-real-one",
        AllocatedStorage=20,
    )
    # THEN without the flag the error says to give it; with it, check runs
    assert main(["check", "--db-instance", "big"]) == 2
    assert "--max-connections N" in capsys.readouterr().err
    assert main(["check", "--db-instance", "big", "--max-connections", "500"]) == 0
    out = capsys.readouterr().out
    assert "database big (db.x2g.large): max_connections not known to lambdapool (--max-connections 500" in out


def test_a_proxy_allowed_too_much_fails_with_the_percent_that_fits(deployment, capsys):
    pool_config(100)
    proxied(deployment, "api", 10)
    code, out = check(capsys)
    assert code == 1
    assert "FAIL: rds-proxy orders breaks the budget: over by 5; set MaxConnectionsPercent to 95" in out


def test_a_direct_function_without_reserved_concurrency_fails(deployment, capsys):
    direct(deployment, "report", None)
    code, out = check(capsys)
    assert code == 1 and "FAIL: report connect(s) directly with no reserved concurrency" in out


def test_flags_override_what_aws_says(deployment, capsys):
    direct(deployment, "cron", 30)
    code, out = check(capsys, "--max-connections", "80", "--admin", "0")
    # 80 - 3 = 77 usable; proxy 80 x 60 % = 48; + 30 = 78
    assert code == 1 and "OVER by 1" in out and "cron breaks the budget" in out


def test_formula_and_class_default_from_the_parameter_group(network, capsys):
    rds = boto3.client("rds")
    rds.create_db_parameter_group(
        DBParameterGroupName="formula", DBParameterGroupFamily="postgres16", Description="formula"
    )
    rds.modify_db_parameter_group(
        DBParameterGroupName="formula",
        Parameters=[
            {
                "ParameterName": "max_connections",
                "ParameterValue": "LEAST({DBInstanceClassMemory/9531392},5000)",
                "ApplyMethod": "pending-reboot",
            }
        ],
    )
    for name, group in (("with-formula", {"DBParameterGroupName": "formula"}), ("with-default", {})):
        rds.create_db_instance(
            DBInstanceIdentifier=name,
            DBInstanceClass="db.r6g.large",
            Engine="postgres",
            MasterUsername="app",
            MasterUserPassword="not-a-real-one",
            AllocatedStorage=20,
            **group,
        )
        assert main(["check", "--db-instance", name]) == 0
        out = capsys.readouterr().out
        assert f"database {name} (db.r6g.large): max_connections {default_max_connections('db.r6g.large')}" in out


def test_unknown_proxy_is_a_clear_error(aws, capsys):
    code, out = check(capsys)
    assert code == 2 and "RDS Proxy 'orders' not found" in out and "Traceback" not in out


def test_console_script_against_moto_server(moto_url, monkeypatch):
    # GIVEN the deployment in moto's server (boto3 here reaches it through AWS_ENDPOINT_URL)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    deployment = make_deployment(make_network()[1])
    endpointed(deployment, "api", 500)
    direct(deployment, "cron", 40)
    # WHEN `lambdapool check` runs as a command, told the endpoint by --endpoint-url only
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    out = subprocess.run(
        [sys.executable, "-m", "lambdapool", "check", "--endpoint-url", moto_url, "--proxy-name", "orders"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    # THEN it exits 1 naming the function, and never prints the DSN's password
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL: cron breaks the budget: over by 5" in out.stdout
    assert "hunter2" not in out.stdout + out.stderr


def test_lambda_managed_instances_count_every_process():
    from lambdapool.tools.cli.check import processes_per_environment

    managed = {
        "CapacityProviderConfig": {
            "LambdaManagedInstancesCapacityProviderConfig": {
                "CapacityProviderArn": "arn:aws:lambda:us-east-1:123456789012:capacity-provider:cp",
                "PerExecutionEnvironmentMaxConcurrency": 8,
            }
        }
    }
    assert processes_per_environment(managed) == 8
    assert processes_per_environment({"FunctionName": "api"}) == 1
    # the path read is the one in Lambda's API model (moto does not return it)
    model = boto3.client("lambda", region_name="us-east-1").meta.service_model
    output = model.operation_model("GetFunctionConfiguration").output_shape
    config = output.members["CapacityProviderConfig"].members["LambdaManagedInstancesCapacityProviderConfig"]
    assert config.members["PerExecutionEnvironmentMaxConcurrency"].type_name == "integer"
