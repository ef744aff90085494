"""The Terraform module, checked statically (no terraform binary here): it parses with
python-hcl2, `lambdapool plan --format tfvars` fills exactly its variables, the plan's numbers
land on the right resource attributes, and its validations accept them."""

from __future__ import annotations

import json
import math
import re

import pytest

from lambdapool.tools.cli import main
from tests.infra.infra_support import TERRAFORM, blocks, load_module, parse_hcl

PLAN = [
    "--instance-class",
    "db.t4g.medium",
    "--function",
    "api=50",
    "--function",
    "web=20x2",
    "--function",
    "cron=3@direct",
]
USER_SUPPLIED = {"name", "vpc_id", "subnet_ids", "code_s3_bucket", "code_s3_key"}


@pytest.fixture(scope="module")
def module() -> dict:
    return load_module(TERRAFORM)


def plan(capsys, fmt: str) -> str:
    assert main(["plan", *PLAN, "--format", fmt]) == 0
    return capsys.readouterr().out


def test_every_file_parses(module):
    assert {"terraform", "variable", "resource", "output", "locals", "data"} == set(module)
    resources = blocks(module, "resource")
    for needed in (
        "aws_db_proxy.this",
        "aws_db_proxy_default_target_group.this",
        "aws_db_proxy_target.this",
        "aws_lambda_function.this",
        "aws_iam_role.function",
        "aws_db_instance.this",
        "aws_cloudwatch_metric_alarm.this",
    ):
        assert needed in resources


def test_plan_tfvars_fill_exactly_the_module_variables(module, capsys):
    variables = blocks(module, "variable")
    tfvars = parse_hcl(plan(capsys, "tfvars"))
    assert set(tfvars) <= set(variables)
    required = {name for name, body in variables.items() if "default" not in body}
    assert required - set(tfvars) == USER_SUPPLIED  # the rest comes from the plan
    attributes = set(re.findall(r"(\w+)\s*=", variables["functions"]["type"]))
    for fn in tfvars["functions"].values():
        assert set(fn) <= attributes


def _resolve(value: str, tfvars: dict, each: dict | None = None):
    """``${var.x}`` / ``${each.value.y}`` -> the value; anything else is returned as is."""
    var = re.fullmatch(r"\$\{var\.(\w+)\}", str(value))
    if var:
        return tfvars[var.group(1)]
    item = re.fullmatch(r"\$\{each\.value\.(\w+)\}", str(value))
    if item and each is not None:
        return each[item.group(1)]
    managed = re.fullmatch(r"\$\{each\.value\.managed_instances == null \? each\.value\.(\w+) : null\}", str(value))
    if managed and each is not None:  # reserved concurrency on standard Lambda only
        return None if each.get("managed_instances") else each[managed.group(1)]
    return value


def test_managed_instances_functions_get_the_plans_environments_and_processes(module, capsys):
    # GIVEN a plan with a Managed Instances function: 4 environments x 16 processes x 1 conn
    assert (
        main(
            [
                "plan",
                "--max-connections",
                "400",
                "--function",
                "api=50",
                "--function",
                "worker=4x1x16",
                "--format",
                "tfvars",
            ]
        )
        == 0
    )
    tfvars = parse_hcl(capsys.readouterr().out)
    worker = tfvars["functions"]["worker"]
    assert worker["managed_instances"] == {"per_execution_environment_max_concurrency": 16}
    resources = blocks(module, "resource")
    fn = resources["aws_lambda_function.this"]
    # THEN its processes are the plan's, it runs on its own capacity provider, no reserved concurrency
    config = fn["dynamic"][1]["capacity_provider_config"]["content"][0][
        "lambda_managed_instances_capacity_provider_config"
    ][0]
    assert config["per_execution_environment_max_concurrency"] == (
        "${capacity_provider_config.value.per_execution_environment_max_concurrency}"
    )
    assert config["capacity_provider_arn"] == "${aws_lambda_capacity_provider.this[each.key].arn}"
    assert _resolve(fn["reserved_concurrent_executions"], tfvars, worker) is None
    assert _resolve(fn["reserved_concurrent_executions"], tfvars, tfvars["functions"]["api"]) == 50
    # AND the provider's vCPU cap holds exactly the planned environments: 4 x 4096 MiB / 1024 / 2 GiB per vCPU
    scaling = resources["aws_lambda_capacity_provider.this"]["capacity_provider_scaling_config"][0]
    expression = scaling["max_vcpu_count"].removeprefix("${").removesuffix("}")
    for name, value in (
        ("each.value.reserved_concurrency", 4),
        ("var.memory_size", 4096),
        ("each.value.managed_instances.memory_gib_per_vcpu", 2),
    ):
        expression = expression.replace(name, str(value))
    assert eval(expression, {"max": max, "ceil": math.ceil}) == 8  # our own module's arithmetic


def test_the_modules_numbers_are_the_plans(module, capsys):
    # GIVEN the same inputs planned as JSON and as tfvars
    expected = json.loads(plan(capsys, "json"))
    tfvars = parse_hcl(plan(capsys, "tfvars"))
    resources = blocks(module, "resource")
    # THEN the proxy's pool settings resolve to the plan's percentages
    pool = resources["aws_db_proxy_default_target_group.this"]["connection_pool_config"][0]
    assert _resolve(pool["max_connections_percent"], tfvars) == expected["rds_proxy"]["max_connections_percent"]
    assert (
        _resolve(pool["max_idle_connections_percent"], tfvars) == expected["rds_proxy"]["max_idle_connections_percent"]
    )
    # AND each function through the proxy gets its planned concurrency and connections
    fn = resources["aws_lambda_function.this"]
    assert fn["for_each"] == "${var.functions}"
    environment = fn["environment"][0]["variables"]
    assert "LAMBDAPOOL_MAX_PER_INSTANCE = tostring(each.value.max_per_instance)" in environment
    assert 'LAMBDAPOOL_POOLER = "rds-proxy"' in environment
    planned = {f["name"]: f for f in expected["functions"] if f["pooler"] == "rds-proxy"}
    assert set(tfvars["functions"]) == set(planned) == {"api", "web"}
    for name, each in tfvars["functions"].items():
        assert _resolve(fn["reserved_concurrent_executions"], tfvars, each) == planned[name]["concurrency"]
        assert each["max_per_instance"] == planned[name]["connections"]
    # AND the alarms fire at the proxy's cap and at the database's usable slots
    assert resources["aws_cloudwatch_metric_alarm.this"]["threshold"] == "${each.value.threshold}"
    alarms = next(block["alarms"] for block in module["locals"] if "alarms" in block)
    assert _resolve(alarms["proxy-connections"]["threshold"], tfvars) == expected["rds_proxy"]["cap"]
    assert _resolve(alarms["database-connections"]["threshold"], tfvars) == expected["usable"]
    assert {a["metric"] for a in alarms.values()} == {
        "DatabaseConnections",
        "DatabaseConnectionsCurrentlySessionPinned",
        "DatabaseConnectionsBorrowLatency",
    }
    assert _resolve(resources["aws_db_instance.this"]["instance_class"], tfvars) == "db.t4g.medium"


def test_rds_db_connect_is_scoped_to_the_proxy_and_user(module):
    locals_ = next(block for block in module["locals"] if "proxy_user_arn" in block)
    assert locals_["proxy_resource_id"] == '${split(":", aws_db_proxy.this.arn)[6]}'
    policy = next(
        b
        for e in module["data"]
        for k, v in e.items()
        if k == "aws_iam_policy_document"
        for label, b in v.items()
        if label == "function"
    )
    connect = _dynamic_statement(policy, "ConnectThroughTheProxy")
    assert connect["actions"] == ["rds-db:connect"] and connect["resources"] == ["${local.proxy_user_arn}"]
    # the expression, applied to a proxy ARN, gives the rds-db ARN of that proxy and user
    expression = locals_["proxy_user_arn"]
    assert expression == (
        '${replace(replace(aws_db_proxy.this.arn, ":rds:", ":rds-db:"), ":db-proxy:", ":dbuser:")}/${var.db_user}'
    )
    arn = "arn:aws:rds:us-east-1:123456789012:db-proxy:prx-0123456789abcdef0"
    applied = arn.replace(":rds:", ":rds-db:").replace(":db-proxy:", ":dbuser:") + "/app"
    assert applied == "arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-0123456789abcdef0/app"


def _dynamic_statement(policy: dict, sid: str) -> dict:
    return next(d["statement"]["content"][0] for d in policy["dynamic"] if d["statement"]["content"][0]["sid"] == sid)


def _function_policy(module: dict) -> dict:
    return next(
        b
        for e in module["data"]
        for k, v in e.items()
        if k == "aws_iam_policy_document"
        for label, b in v.items()
        if label == "function"
    )


def test_functions_get_the_proxys_endpoint_and_no_describe_permission(module):
    fn = blocks(module, "resource")["aws_lambda_function.this"]
    environment = fn["environment"][0]["variables"]
    # the endpoint when find_proxy_by is endpoint (the default), the name only when asked
    assert (
        'var.find_proxy_by == "endpoint" ? {LAMBDAPOOL_DSN = "postgresql://${aws_db_proxy.this.endpoint}:5432"} : {}'
    ) in environment
    assert 'var.find_proxy_by == "name" ? {LAMBDAPOOL_PROXY_NAME = aws_db_proxy.this.name} : {}' in environment
    assert "LAMBDAPOOL_PROXY_NAME = aws_db_proxy.this.name," not in environment  # not unconditionally
    assert blocks(module, "variable")["find_proxy_by"]["default"] == "endpoint"
    # the role has rds:DescribeDBProxies only through the dynamic block that find_proxy_by = name turns on
    policy = _function_policy(module)
    assert "statement" not in policy  # every statement is conditional
    find = next(d for d in policy["dynamic"] if d["statement"]["content"][0]["sid"] == "FindTheProxy")["statement"]
    assert find["for_each"] == '${var.find_proxy_by == "name" ? [1] : []}'
    assert find["content"][0]["actions"] == ["rds:DescribeDBProxies"]


def test_end_to_end_iam_option_renders(module):
    resources = blocks(module, "resource")
    proxy = resources["aws_db_proxy.this"]
    assert proxy["default_auth_scheme"] == '${local.end_to_end_iam ? "IAM_AUTH" : null}'
    auth = proxy["dynamic"][0]["auth"]
    assert auth["for_each"] == "${local.end_to_end_iam ? [] : [1]}" and auth["content"][0]["auth_scheme"] == "SECRETS"
    assert resources["aws_iam_role_policy.proxy_secret"]["count"] == "${local.end_to_end_iam ? 0 : 1}"
    assert resources["aws_iam_role_policy.proxy_connect"]["count"] == "${local.end_to_end_iam ? 1 : 0}"
    assert "local.db_user_arn" in resources["aws_iam_role_policy.proxy_connect"]["policy"]
    assert resources["aws_db_instance.this"]["iam_database_authentication_enabled"] == "${local.end_to_end_iam}"
    locals_ = next(block for block in module["locals"] if "end_to_end_iam" in block)
    assert locals_["end_to_end_iam"] == '${var.proxy_auth_scheme == "IAM_AUTH"}'
    assert ":dbuser:${local.db_resource_id}/${var.db_user}" in locals_["db_user_arn"]
    variable = blocks(module, "variable")["proxy_auth_scheme"]
    assert variable["default"] == "SECRETS"
    condition = variable["validation"][0]["condition"]
    assert _validate(condition, "proxy_auth_scheme", "IAM_AUTH") and not _validate(condition, "proxy_auth_scheme", "x")
    assert not any(r.startswith("aws_secretsmanager_secret") for r in resources)  # the module never makes one


def _validate(condition: str, name: str, value) -> bool:
    """Evaluate a simple validation condition (comparisons, &&, ||, contains) for one value."""
    expression = condition.removeprefix("${").removesuffix("}")
    expression = expression.replace("&&", " and ").replace("||", " or ").replace(f"var.{name}", repr(value))
    return bool(eval(expression, {"__builtins__": {}, "contains": lambda seq, x: x in seq}))


def test_validations_accept_the_plan_and_refuse_what_it_never_makes(module, capsys):
    variables = blocks(module, "variable")
    tfvars = parse_hcl(plan(capsys, "tfvars"))
    checked = 0
    for name, body in variables.items():
        for validation in body.get("validation", []):
            if name in tfvars:
                assert _validate(validation["condition"], name, tfvars[name]), name
                checked += 1
    assert checked == 2
    assert not _validate(
        variables["max_connections_percent"]["validation"][0]["condition"], "max_connections_percent", 0
    )
    assert not _validate(variables["driver"]["validation"][0]["condition"], "driver", "pg8000")
