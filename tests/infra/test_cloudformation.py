"""The SAM template: cfn-lint clean, translates with samtranslator, and deploys into moto's
CloudFormation with the plan's numbers; `lambdapool check` then reads the deployment back.

moto's CloudFormation skips AWS::RDS::DBProxy, AWS::RDS::DBProxyTargetGroup and
AWS::CloudWatch::Alarm (and crashes on Fn::GetAtt of a skipped resource or of
DBInstance.MasterUserSecret.SecretArn). The deployed variant therefore has those resources
removed and the references replaced by fixed values (``infra_support.deploy_stack``); the
removed resources are then made through moto's RDS and CloudWatch APIs from the template's own
properties, so their settings are still the template's.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import boto3
import pytest

import lambdapool
from lambdapool.tools.cli import main
from tests.infra.infra_support import (
    PLACEHOLDER_DBI_RESOURCE_ID,
    PLACEHOLDER_PROXY_ID,
    SAM_TEMPLATE,
    create_secret,
    deploy_stack,
    load_template,
    plan_parameters,
    proxy_endpoint,
    translate,
)

PLAN = ["--instance-class", "db.t4g.medium", "--admin", "5", "--function", "api=50", "--function", "web=20x2"]


def cfn_lint(*paths) -> subprocess.CompletedProcess:
    runner = "import sys; from cfnlint.runner import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", runner, *map(str, paths)], capture_output=True, text=True)


def templates():
    root = SAM_TEMPLATE.parents[1]
    return sorted(p for p in root.rglob("*.y*ml") if "AWSTemplateFormatVersion" in p.read_text())


def test_cfn_lint_passes_on_every_template():
    found = templates()
    assert SAM_TEMPLATE in found
    result = cfn_lint(*found)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}"


@pytest.mark.slow
def test_cfn_lint_with_the_plans_numbers_and_every_rule_on(tmp_path, capsys):
    # GIVEN the template with the plan's numbers and real-looking ids as defaults, and the
    # W1030 exception (empty defaults of optional parameters) taken out
    params = plan_parameters(PLAN, "api") | {
        "CodeS3Bucket": "code",
        "CodeS3Key": "app.zip",
        "VpcId": "vpc-0123456789abcdef0",
        "SubnetIds": "subnet-01234567,subnet-89abcdef",
        "ExistingDbInstanceId": "orders",
        "ExistingDbSecurityGroupId": "sg-0123456789abcdef0",
        "ExistingProxyResourceId": PLACEHOLDER_PROXY_ID,
        "ExistingProxySecurityGroupId": "sg-0123456789abcdef1",
        "ExistingProxyName": "orders",
        "ExistingProxyEndpoint": proxy_endpoint("orders"),
        "ExistingDbResourceId": PLACEHOLDER_DBI_RESOURCE_ID,
        "DbSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:orders-AbCdEf",
        "AlarmTopicArn": "arn:aws:sns:us-east-1:123456789012:alarms",
    }
    template = load_template()
    del template["Metadata"]["cfn-lint"]
    for name, value in params.items():
        template["Parameters"][name]["Default"] = value
    good = tmp_path / "good.json"
    good.write_text(json.dumps(template))
    # AND a copy with a number out of the template's range (so the lint is shown to fail)
    template["Parameters"]["MaxConnectionsPercent"]["Default"] = "120"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(template))
    # WHEN both are linted (one cfn-lint run: it starts slowly)
    result = cfn_lint(good, bad)
    findings = [line for line in result.stdout.splitlines() if line.startswith(str(tmp_path))]
    # THEN the plan's numbers pass every rule, and only the out-of-range number is flagged
    assert result.returncode != 0
    assert findings and all(line.startswith(str(bad)) for line in findings), result.stdout
    assert "MaxConnectionsPercent" in result.stdout


def test_every_parameter_the_plan_gives_is_one_the_template_takes():
    declared = load_template()["Parameters"]
    for function in ("api", "web"):
        params = plan_parameters(PLAN, function)
        assert set(params) <= set(declared)
        for name, value in params.items():  # within the template's own bounds
            spec = declared[name]
            if spec["Type"] == "Number":
                assert int(spec.get("MinValue", 0)) <= int(value) <= int(spec.get("MaxValue", 1 << 31)), name


def test_sam_template_translates(aws):
    out = translate(load_template())
    resources = out["Resources"]
    fn = resources["Function"]
    assert fn["Type"] == "AWS::Lambda::Function"
    assert fn["Properties"]["ReservedConcurrentExecutions"] == {"Ref": "ReservedConcurrency"}
    assert fn["Properties"]["Environment"]["Variables"]["LAMBDAPOOL_POOLER"] == "rds-proxy"
    statements = resources["FunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    connect = statements[1]["Fn::If"][1]
    assert connect["Action"] == "rds-db:connect"
    assert connect["Resource"]["Fn::Sub"][0].endswith(":dbuser:${ProxyId}/${DbUser}")
    assert resources["ProxyTargetGroup"]["Properties"]["ConnectionPoolConfigurationInfo"] == {
        "MaxConnectionsPercent": {"Ref": "MaxConnectionsPercent"},
        "MaxIdleConnectionsPercent": {"Ref": "MaxIdleConnectionsPercent"},
        "ConnectionBorrowTimeout": {"Ref": "ConnectionBorrowTimeout"},
    }
    assert {r["Properties"]["MetricName"] for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"} == {
        "DatabaseConnections",
        "DatabaseConnectionsCurrentlySessionPinned",
        "DatabaseConnectionsBorrowLatency",
    }


def _statements(role: str, policy: str) -> list[dict]:
    doc = boto3.client("iam").get_role_policy(RoleName=role, PolicyName=policy)["PolicyDocument"]
    doc = ast.literal_eval(doc) if isinstance(doc, str) else doc  # moto's CFN stores a Python repr
    # moto leaves None where CloudFormation drops an Fn::If's AWS::NoValue from the list
    return [statement for statement in doc["Statement"] if statement is not None]


def _actions(role: str) -> set[str]:
    """Every action the role's inline policies allow."""
    iam = boto3.client("iam")
    return {
        s["Action"] for name in iam.list_role_policies(RoleName=role)["PolicyNames"] for s in _statements(role, name)
    }


def _ingress_sources(group_id: str) -> list[str]:
    group = boto3.client("ec2").describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    return [
        pair["GroupId"]
        for perm in group["IpPermissions"]
        if perm.get("FromPort") == 5432
        for pair in perm.get("UserIdGroupPairs", [])
    ]


def test_template_with_a_new_database_deploys_with_the_plans_numbers(network, capsys, monkeypatch):
    # GIVEN the plan's parameters for the first function's stack
    params = plan_parameters(PLAN, "api")
    # WHEN the stack is deployed (a new database, IAM auth)
    stack = deploy_stack("orders", params, network, create_secret("orders-master"))
    physical = stack["physical"]
    assert stack["skipped"] == [
        "BorrowLatencyAlarm",
        "DatabaseConnectionsAlarm",
        "PinnedConnectionsAlarm",
        "Proxy",
        "ProxyConnectionsAlarm",
        "ProxyTargetGroup",
    ]
    # THEN the function has the plan's reserved concurrency and the lambdapool environment
    lam = boto3.client("lambda")
    assert lam.get_function_concurrency(FunctionName="api")["ReservedConcurrentExecutions"] == 50
    env = lam.get_function_configuration(FunctionName="api")["Environment"]["Variables"]
    # (the proxy's hostname in the DSN: no control-plane call at cold start)
    assert {k: str(v) for k, v in env.items()} == {
        "LAMBDAPOOL_POOLER": "rds-proxy",
        "LAMBDAPOOL_DSN": f"postgresql://{proxy_endpoint('orders')}:5432",
        "LAMBDAPOOL_DRIVER": "psycopg",
        "LAMBDAPOOL_USER": "app",
        "LAMBDAPOOL_DBNAME": "app",
        "LAMBDAPOOL_MAX_PER_INSTANCE": "1",
        "LAMBDAPOOL_IAM_AUTH": "true",
    }
    # AND its role may connect as the user through this proxy only, and call no RDS API at all
    connect = [
        s for s in _statements(physical["FunctionRole"], "FunctionRolePolicy0") if s["Action"] == "rds-db:connect"
    ]
    assert connect[0]["Resource"] == f"arn:aws:rds-db:us-east-1:123456789012:dbuser:{PLACEHOLDER_PROXY_ID}/app"
    assert _actions(physical["FunctionRole"]) == {"rds-db:connect"}
    # AND the network lets functions reach the proxy, and only the proxy reach the database
    assert _ingress_sources(physical["ProxySecurityGroup"]) == [physical["FunctionSecurityGroup"]]
    assert _ingress_sources(physical["DatabaseSecurityGroup"]) == [physical["ProxySecurityGroup"]]
    db = boto3.client("rds").describe_db_instances(DBInstanceIdentifier=physical["Database"])["DBInstances"][0]
    assert db["DBInstanceClass"] == "db.t4g.medium"
    # AND the proxy and alarms (made from the template's properties) carry the plan's numbers
    group = boto3.client("rds").describe_db_proxy_target_groups(DBProxyName="orders")["TargetGroups"][0]
    assert group["ConnectionPoolConfig"]["MaxConnectionsPercent"] == int(params["MaxConnectionsPercent"])
    assert group["ConnectionPoolConfig"]["MaxIdleConnectionsPercent"] == int(params["MaxIdleConnectionsPercent"])
    alarms = {
        a["MetricName"] + "/" + a["Dimensions"][0]["Name"]: a["Threshold"]
        for a in boto3.client("cloudwatch").describe_alarms()["MetricAlarms"]
    }
    assert alarms["DatabaseConnections/ProxyName"] == float(params["ProxyConnectionsAlarmThreshold"])
    assert alarms["DatabaseConnections/DBInstanceIdentifier"] == float(params["DatabaseConnectionsAlarmThreshold"])
    # AND `lambdapool check` reads it all back and finds that it fits
    code = main(["check", "--proxy-name", "orders", "--admin", "5"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "client: api reserved 50 x 1 conn through rds-proxy orders" in out and "OK: the fan-out fits" in out
    # AND the SDK, given that environment, connects to the proxy's host without asking AWS
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    db = lambdapool.Database.from_env()
    try:
        assert db.adapter.endpoint() == (proxy_endpoint("orders"), 5432)
        assert db.adapter.connect_params().host == proxy_endpoint("orders")  # the token is signed for it
    finally:
        db.close()


def test_second_function_joins_the_proxy(network, capsys):
    first = deploy_stack("orders", plan_parameters(PLAN, "api"), network, create_secret("orders-master"))
    joined = plan_parameters(PLAN, "web") | {
        "ExistingProxyName": first["outputs"]["ProxyName"],
        "ExistingProxyResourceId": first["outputs"]["ProxyResourceId"],
        "ExistingProxySecurityGroupId": first["outputs"]["ProxySecurityGroupId"],
        "ExistingProxyEndpoint": first["outputs"]["ProxyEndpoint"],
    }
    second = deploy_stack("orders-web", joined, network, create_secret("unused"))
    # THEN the second stack makes no proxy, database or alarms, only the function and its access
    assert not {"Proxy", "Database", "ProxySecurityGroup"} & set(second["physical"])
    assert first["physical"]["FunctionSecurityGroup"] in _ingress_sources(first["outputs"]["ProxySecurityGroupId"])
    assert second["physical"]["FunctionSecurityGroup"] in _ingress_sources(first["outputs"]["ProxySecurityGroupId"])
    env = boto3.client("lambda").get_function_configuration(FunctionName="web")["Environment"]["Variables"]
    assert env["LAMBDAPOOL_DSN"] == f"postgresql://{proxy_endpoint('orders')}:5432"
    assert "LAMBDAPOOL_PROXY_NAME" not in env and str(env["LAMBDAPOOL_MAX_PER_INSTANCE"]) == "2"
    assert "rds:DescribeDBProxies" not in _actions(second["physical"]["FunctionRole"])
    code = main(["check", "--proxy-name", "orders", "--admin", "5"])
    out = capsys.readouterr().out
    assert code == 0 and "web reserved 20 x 2 conn through rds-proxy orders" in out


def test_template_with_an_existing_database(network, capsys):
    # GIVEN a database made outside the stack, with its own security group
    vpc, subnets = network
    ec2, rds = boto3.client("ec2"), boto3.client("rds")
    db_sg = ec2.create_security_group(GroupName="orders-db", Description="db", VpcId=vpc)["GroupId"]
    rds.create_db_instance(
        DBInstanceIdentifier="orders-db",
        DBInstanceClass="db.r6g.large",
        Engine="postgres",
        MasterUsername="app",
        MasterUserPassword="not-a-real-one",
        AllocatedStorage=20,
        VpcSecurityGroupIds=[db_sg],
    )
    secret = create_secret("orders-db-app")
    params = plan_parameters(PLAN, "api") | {
        "ExistingDbInstanceId": "orders-db",
        "ExistingDbSecurityGroupId": db_sg,
        "DbSecretArn": secret,
        "AuthMode": "secret",
    }
    stack = deploy_stack("orders", params, network, secret)
    # THEN the stack makes no database, lets the proxy into the existing one, and targets it
    assert "Database" not in stack["physical"]
    assert _ingress_sources(db_sg) == [stack["physical"]["ProxySecurityGroup"]]
    targets = rds.describe_db_proxy_targets(DBProxyName="orders")["Targets"]
    assert [t["RdsResourceId"] for t in targets] == ["orders-db"]
    env = boto3.client("lambda").get_function_configuration(FunctionName="api")["Environment"]["Variables"]
    assert env["LAMBDAPOOL_IAM_AUTH"] == "false" and env["LAMBDAPOOL_SECRET_ARN"] == secret
    # AND check reads the larger instance's default max_connections (the plan was for a t4g.medium)
    code = main(["check", "--proxy-name", "orders"])
    out = capsys.readouterr().out
    assert code == 0 and "database orders-db (db.r6g.large)" in out


def test_find_proxy_by_name_is_still_an_option(network, capsys):
    # GIVEN a stack that asks for the lookup by name
    params = plan_parameters(PLAN, "api") | {"FindProxyBy": "name"}
    stack = deploy_stack("orders", params, network, create_secret("orders-master"))
    # THEN the function gets the name, no hostname, and may describe this proxy only
    env = boto3.client("lambda").get_function_configuration(FunctionName="api")["Environment"]["Variables"]
    assert env["LAMBDAPOOL_PROXY_NAME"] == "orders" and "LAMBDAPOOL_DSN" not in env
    find = [
        s
        for s in _statements(stack["physical"]["FunctionRole"], "FunctionRolePolicy0")
        if s["Action"] == "rds:DescribeDBProxies"
    ]
    assert [s["Resource"] for s in find] == [f"arn:aws:rds:us-east-1:123456789012:db-proxy:{PLACEHOLDER_PROXY_ID}"]
    # AND check finds the function by that name
    code = main(["check", "--proxy-name", "orders", "--admin", "5"])
    out = capsys.readouterr().out
    assert code == 0 and "client: api reserved 50 x 1 conn through rds-proxy orders" in out


def test_end_to_end_iam_proxy_has_no_secret(network, capsys):
    # GIVEN the end-to-end IAM option (the proxy logs in to the database with IAM too)
    params = plan_parameters(PLAN, "api") | {"ProxyAuthScheme": "IAM_AUTH"}
    stack = deploy_stack("orders", params, network, create_secret("orders-master"))
    # THEN the proxy is made with DefaultAuthScheme IAM_AUTH and no Auth (no secret to read)
    proxy = stack["made"]["Proxy"]
    assert proxy["DefaultAuthScheme"] == "IAM_AUTH" and "Auth" not in proxy
    # AND its role may connect as the user to the database, and read no secret
    role = stack["physical"]["ProxyRole"]
    assert _actions(role) == {"rds-db:connect"}
    (connect,) = _statements(role, "connect-to-the-database")
    assert connect["Resource"] == f"arn:aws:rds-db:us-east-1:123456789012:dbuser:{PLACEHOLDER_DBI_RESOURCE_ID}/app"
    # AND the database accepts IAM logins; the function reads no secret and calls no RDS API
    # (moto's CloudFormation does not carry EnableIAMDatabaseAuthentication over: read the template)
    database = load_template()["Resources"]["Database"]["Properties"]
    assert database["EnableIAMDatabaseAuthentication"] == {"Fn::If": ["ProxyUsesIam", True, False]}
    assert _actions(stack["physical"]["FunctionRole"]) == {"rds-db:connect"}
    env = boto3.client("lambda").get_function_configuration(FunctionName="api")["Environment"]["Variables"]
    assert "LAMBDAPOOL_SECRET_ARN" not in env and env["LAMBDAPOOL_IAM_AUTH"] == "true"
    # AND the default (SECRETS) renders the secret-based Auth and no DefaultAuthScheme
    template = translate(load_template())
    assert not [r for r in template["Resources"].values() if r["Type"] == "AWS::SecretsManager::Secret"]
    code = main(["check", "--proxy-name", "orders", "--admin", "5"])
    assert code == 0, capsys.readouterr().out


def test_secrets_proxy_renders_auth_and_no_default_scheme(network):
    stack = deploy_stack("orders", plan_parameters(PLAN, "api"), network, create_secret("orders-master"))
    proxy = stack["made"]["Proxy"]
    assert "DefaultAuthScheme" not in proxy
    assert [a["AuthScheme"] for a in proxy["Auth"]] == ["SECRETS"] and proxy["Auth"][0]["IAMAuth"] == "REQUIRED"
    assert _actions(stack["physical"]["ProxyRole"]) == {"secretsmanager:GetSecretValue"}
