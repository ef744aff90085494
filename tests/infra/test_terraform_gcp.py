"""infra/gcp, checked statically (no terraform binary here): it parses with python-hcl2,
`lambdapool plan --platform gcp --format tfvars` fills only its variables, the plan's numbers land
on the function's service_config and the managed pool, the identity is exactly what IAM database
login needs, and its validations accept what the plan makes and refuse what Cloud Run refuses."""

from __future__ import annotations

import json
import re

import pytest

from lambdapool.tools.cli import main
from tests.infra.infra_support import TERRAFORM_GCP, blocks, load_module, parse_hcl

PLAN = [
    "plan",
    "--platform",
    "gcp",
    "--instance-class",
    "db-perf-optimized-N-8",
    "--pooler",
    "cloud-sql-pooler",
    "--function",
    "api=100x80x8",
    "--function",
    "cron=2@cloud-sql",
]
USER_SUPPLIED = {"project", "region", "name", "source_bucket", "source_object"}


@pytest.fixture(scope="module")
def module() -> dict:
    return load_module(TERRAFORM_GCP)


def plan(capsys, fmt: str) -> str:
    assert main([*PLAN, "--format", fmt]) == 0
    return capsys.readouterr().out


def _resolve(value, tfvars: dict, each: dict | None = None):
    """``${var.x}`` / ``${each.value.y}`` / ``${tostring(var.x)}`` -> the value; else as is."""
    text = str(value)
    for pattern, source in ((r"\$\{var\.(\w+)\}", tfvars), (r"\$\{each\.value\.(\w+)\}", each or {})):
        found = re.fullmatch(pattern, text)
        if found:
            return source.get(found.group(1))
    found = re.fullmatch(r"\$\{tostring\((var|each\.value)\.(\w+)\)\}", text)
    if found:
        return str((tfvars if found.group(1) == "var" else each or {})[found.group(2)])
    return value


def test_every_file_parses(module):
    assert {"terraform", "variable", "resource", "output", "locals", "data"} == set(module)
    resources = blocks(module, "resource")
    for needed in (
        "google_cloudfunctions2_function.this",
        "google_service_account.function",
        "google_project_iam_member.function",
        "google_sql_user.function",
        "google_sql_database_instance.this",
    ):
        assert needed in resources


def test_plan_tfvars_fill_only_the_module_variables(module, capsys):
    variables = blocks(module, "variable")
    tfvars = parse_hcl(plan(capsys, "tfvars"))
    assert set(tfvars) <= set(variables)
    required = {name for name, body in variables.items() if "default" not in body}
    assert required - set(tfvars) == USER_SUPPLIED  # the rest comes from the plan
    attributes = set(re.findall(r"(\w+)\s*=", variables["functions"]["type"]))
    for fn in tfvars["functions"].values():
        assert set(fn) <= attributes


def test_the_plans_numbers_land_on_the_functions_and_the_pool(module, capsys):
    # GIVEN the same inputs planned as JSON and as tfvars
    expected = json.loads(plan(capsys, "json"))
    tfvars = parse_hcl(plan(capsys, "tfvars"))
    resources = blocks(module, "resource")
    fn = resources["google_cloudfunctions2_function.this"]
    assert fn["for_each"] == "${var.functions}"
    service = fn["service_config"][0]
    planned = {f["name"]: f for f in expected["functions"]}
    assert set(tfvars["functions"]) == set(planned) == {"api", "cron"}
    # THEN each function's service_config gets its planned instances, concurrency and CPU
    for name, each in tfvars["functions"].items():
        assert _resolve(service["max_instance_count"], tfvars, each) == planned[name]["max_instance_count"]
        assert (
            _resolve(service["max_instance_request_concurrency"], tfvars, each)
            == planned[name]["max_instance_request_concurrency"]
        )
        assert _resolve(service["available_cpu"], tfvars, each) == planned[name]["available_cpu"]
        env = service["environment_variables"]
        assert _resolve(env["LAMBDAPOOL_MAX_PER_INSTANCE"], tfvars, each) == str(planned[name]["max_per_instance"])
    # AND its pooler (a function's own, else the plan's) picks the port: 6432 for the managed pool
    assert env["LAMBDAPOOL_POOLER"] == "${coalesce(each.value.pooler, var.pooler)}"
    assert env["LAMBDAPOOL_IAM_AUTH"] == "true"
    assert "port=${local.port[coalesce(each.value.pooler, var.pooler)]}" in env["LAMBDAPOOL_DSN"]
    assert "password" not in env["LAMBDAPOOL_DSN"]
    locals_ = next(block for block in module["locals"] if "port" in block)
    assert locals_["port"] == {"cloud-sql": 5432, "cloud-sql-pooler": 6432}
    # AND the managed pool's max_pool_size and the machine type are the plan's
    settings = resources["google_sql_database_instance.this"]["settings"][0]
    pool = settings["dynamic"][0]["connection_pool_config"]
    assert pool["for_each"] == '${var.pooler == "cloud-sql-pooler" ? [1] : []}'
    content = pool["content"][0]
    assert content["connection_pooling_enabled"] is True
    flag = content["flags"][0]
    assert flag["name"] == "max_pool_size"
    assert _resolve(flag["value"], tfvars) == str(expected["managed_pool"]["max_pool_size"])
    assert _resolve(settings["tier"], tfvars) == expected["instance_class"] == "db-perf-optimized-N-8"
    assert settings["database_flags"][0] == {"name": "cloudsql.iam_authentication", "value": "on"}


def test_the_service_account_may_connect_and_log_in_and_nothing_else(module):
    resources = blocks(module, "resource")
    grants = resources["google_project_iam_member.function"]
    assert grants["for_each"] == '${toset(["roles/cloudsql.client", "roles/cloudsql.instanceUser"])}'
    assert grants["member"] == "serviceAccount:${google_service_account.function.email}"
    assert [k for k in resources if "iam" in k] == ["google_project_iam_member.function"]
    fn = resources["google_cloudfunctions2_function.this"]["service_config"][0]
    assert fn["service_account_email"] == "${google_service_account.function.email}"
    user = resources["google_sql_user.function"]
    assert user["type"] == "CLOUD_IAM_SERVICE_ACCOUNT" and user["name"] == "${local.db_user}"
    # the user's name is the email less .gserviceaccount.com, as Cloud SQL for PostgreSQL wants
    db_user = next(block["db_user"] for block in module["locals"] if "db_user" in block)
    assert db_user == '${trimsuffix(google_service_account.function.email, ".gserviceaccount.com")}'
    email = "lp-fn@demo.iam.gserviceaccount.com"
    assert email.removesuffix(".gserviceaccount.com") == "lp-fn@demo.iam"


def _hcl_to_python(condition: str) -> str:
    """Enough of HCL for the module's validations: alltrue over the functions, &&, ||, null,
    coalesce, tonumber, contains."""
    text = condition.removeprefix("${").removesuffix("}")
    text = re.sub(
        r"alltrue\(\[for f in values\(var\.functions\) : (.*)\]\)", r"all(\1 for f in var_functions.values())", text
    )
    text = re.sub(r"\bf\.(\w+)", r'f["\1"]', text)
    text = text.replace("&&", " and ").replace("||", " or ").replace("null", "None")
    return re.sub(r"var\.(\w+)", r"var_\1", text)


def _valid(variables: dict, name: str, value) -> bool:
    scope = {  # globals: the generator in alltrue's translation looks names up there
        "__builtins__": {},
        "all": all,
        "coalesce": lambda *xs: next(x for x in xs if x is not None),
        "tonumber": float,
        "contains": lambda seq, x: x in seq,
        f"var_{name}": value,
    }
    return all(bool(eval(_hcl_to_python(v["condition"]), scope)) for v in variables[name]["validation"])


def _function(**given) -> dict:
    """A functions entry as Terraform fills it: optional attributes with their defaults."""
    return {"max_instance_request_concurrency": 1, "max_per_instance": 1, "available_cpu": None, **given}


def test_validations_accept_the_plan_and_refuse_what_cloud_run_refuses(module, capsys):
    variables = blocks(module, "variable")
    tfvars = parse_hcl(plan(capsys, "tfvars"))
    functions = {name: _function(**fn) for name, fn in tfvars["functions"].items()}
    assert _valid(variables, "functions", functions)
    assert _valid(variables, "pooler", tfvars["pooler"]) and _valid(variables, "max_pool_size", tfvars["max_pool_size"])
    for bad in (
        _function(max_instance_count=10, max_instance_request_concurrency=1001, available_cpu="1"),
        _function(max_instance_count=10, max_instance_request_concurrency=8, max_per_instance=9, available_cpu="1"),
        _function(max_instance_count=10, max_instance_request_concurrency=8),  # concurrency > 1 without a vCPU
        _function(max_instance_count=10, max_instance_request_concurrency=8, available_cpu="0.5"),
        _function(max_instance_count=0),
    ):
        assert not _valid(variables, "functions", {"f": bad}), bad
    assert not _valid(variables, "pooler", "pgbouncer")
    assert not _valid(variables, "max_pool_size", 0)
