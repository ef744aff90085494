"""Helpers shared by the infra tests: templates, SAM translation, and a small intrinsic resolver
for the resources moto's CloudFormation skips (which the tests then create through the API)."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[2]
MOTO_SKIPS = {"AWS::RDS::DBProxy", "AWS::RDS::DBProxyTargetGroup", "AWS::CloudWatch::Alarm"}
PLACEHOLDER_PROXY_ID = "prx-0123456789abcdef0"
PLACEHOLDER_DBI_RESOURCE_ID = "db-ABCDEFGHIJKLMNOPQRSTUVWXY0"  # moto has no DBInstance.DbiResourceId
SAM_TEMPLATE = ROOT / "infra" / "sam" / "template.yaml"
TERRAFORM = ROOT / "infra" / "terraform"
TERRAFORM_GCP = ROOT / "infra" / "gcp"

# SAM asks IAM for managed-policy ARNs; offline we give it the two it uses.
MANAGED_POLICIES = {
    "AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
    "AWSLambdaVPCAccessExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole",
}


class StaticPolicyLoader:
    def load(self) -> dict[str, str]:
        return dict(MANAGED_POLICIES)


def load_template(path: Path = SAM_TEMPLATE) -> dict[str, Any]:
    """The template as plain JSON-able data (short-form tags expanded, as cfn-lint reads it)."""
    from cfnlint.decode import cfn_yaml

    return json.loads(json.dumps(cfn_yaml.load(str(path))))


def translate(template: dict[str, Any]) -> dict[str, Any]:
    """Apply the SAM transform locally, as CloudFormation would (needs AWS_DEFAULT_REGION)."""
    from samtranslator.translator.transform import transform

    return transform(json.loads(json.dumps(template)), {}, StaticPolicyLoader())


def lambda_zip(source: str = "def handler(event, context):\n    return 'ok'\n") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("app.py", source)
    return buf.getvalue()


def replace(value: Any, table: dict[str, Any]) -> Any:
    """Replace intrinsic references found in ``table`` (keyed by their JSON) with fixed values."""
    if isinstance(value, dict):
        key = json.dumps(value, sort_keys=True)
        if key in table:
            return table[key]
        return {k: replace(v, table) for k, v in value.items()}
    if isinstance(value, list):
        return [replace(v, table) for v in value]
    return value


def ref(name: str) -> str:
    return json.dumps({"Ref": name}, sort_keys=True)


def getatt(name: str, attribute: str) -> str:
    return json.dumps({"Fn::GetAtt": [name, attribute]}, sort_keys=True)


_NO_VALUE = object()


class Resolver:
    """Evaluate the intrinsics of one resource's properties against a deployed stack.

    Enough of CloudFormation for the resources moto skips: Ref (parameters, pseudo
    parameters, physical ids), Fn::GetAtt (via ``attributes``), Fn::If with the template's
    Conditions, Fn::Equals/Not/And/Or, Fn::Sub (plain form), AWS::NoValue.
    """

    def __init__(
        self,
        template: dict[str, Any],
        stack: str,
        parameters: dict[str, str],
        physical: dict[str, str],
        attributes: dict[tuple[str, str], str],
    ) -> None:
        self.template = template
        declared = template.get("Parameters", {})
        given = {k: str(v.get("Default", "")) for k, v in declared.items()} | parameters
        lists = {k for k, v in declared.items() if v["Type"].startswith("List<") or v["Type"] == "CommaDelimitedList"}
        self.values: dict[str, Any] = {k: v.split(",") if k in lists else v for k, v in given.items()}
        self.values |= physical | {
            "AWS::StackName": stack,
            "AWS::Region": "us-east-1",
            "AWS::AccountId": "123456789012",
            "AWS::Partition": "aws",
        }
        self.attributes = attributes

    def condition(self, name: str) -> bool:
        return bool(self(self.template["Conditions"][name]))

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [v for v in (self(x) for x in value) if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((fn, arg),) = value.items()
            if fn == "Ref":
                return _NO_VALUE if arg == "AWS::NoValue" else self.values[arg]
            if fn == "Condition":
                return self.condition(arg)
            if fn == "Fn::GetAtt":
                return self.attributes[tuple(arg)]
            if fn == "Fn::If":
                return self(arg[1] if self.condition(arg[0]) else arg[2])
            if fn == "Fn::Equals":
                return str(self(arg[0])) == str(self(arg[1]))
            if fn == "Fn::Not":
                return not self(arg[0])
            if fn == "Fn::And":
                return all(self(a) for a in arg)
            if fn == "Fn::Or":
                return any(self(a) for a in arg)
            if fn == "Fn::Sub" and isinstance(arg, str):
                out = arg
                for key, val in self.values.items():
                    out = out.replace("${" + key + "}", str(val))
                return out
        return {k: v for k, v in ((k, self(v)) for k, v in value.items()) if v is not _NO_VALUE}


def make_network() -> tuple[str, list[str]]:
    """A VPC with two private subnets in two AZs, as RDS and RDS Proxy require."""
    import boto3

    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"us-east-1{az}")["Subnet"][
            "SubnetId"
        ]
        for i, az in enumerate("ab")
    ]
    return vpc, subnets


def plan_parameters(argv: list[str], function: str) -> dict[str, str]:
    """The template parameters `lambdapool plan ... --format cfn-json --stack-function` gives."""
    from lambdapool.tools.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plan", *argv, "--format", "cfn-json", "--stack-function", function]) == 0
    return {p["ParameterKey"]: p["ParameterValue"] for p in json.loads(out.getvalue())}


def create_secret(name: str, fields: dict[str, str] | None = None) -> str:
    import boto3

    value = json.dumps(fields or {"username": "app"})
    return boto3.client("secretsmanager").create_secret(Name=name, SecretString=value)["ARN"]


def _numbers(props: dict, keys: tuple[str, ...]) -> dict:
    return {k: (float(v) if k == "Threshold" else int(v)) if k in keys else v for k, v in props.items()}


def proxy_endpoint(stack: str) -> str:
    """The hostname deploy_stack gives the stack's proxy (in the template and in moto's RDS)."""
    return f"{stack}.proxy-placeholder.us-east-1.rds.amazonaws.com"


def deploy_stack(stack: str, parameters: dict[str, str], network: tuple[str, list[str]], secret_arn: str) -> dict:
    """Deploy the SAM template into moto; make what moto's CloudFormation skips through the APIs.

    moto's CloudFormation skips MOTO_SKIPS and rejects Fn::GetAtt on them and on
    DBInstance.MasterUserSecret.SecretArn: those resources are removed, the references replaced
    by fixed values (the proxy's name is the stack's; its ARN carries PLACEHOLDER_PROXY_ID, its
    endpoint is ``proxy_endpoint(stack)``, also in moto's RDS; the master secret is ``secret_arn``;
    the database's DbiResourceId PLACEHOLDER_DBI_RESOURCE_ID), and the removed resources are then
    created through moto's RDS and CloudWatch APIs from the template's own properties, so their
    settings are the template's. Returns the outputs, the physical ids, the names of the skipped
    resources and the properties each one made was created with (``made``).
    """
    import boto3

    vpc, subnets = network
    s3 = boto3.client("s3")
    if "code" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="code")
        s3.put_object(Bucket="code", Key="app.zip", Body=lambda_zip())
    parameters = {
        "CodeS3Bucket": "code",
        "CodeS3Key": "app.zip",
        "VpcId": vpc,
        "SubnetIds": ",".join(subnets),
        **parameters,
    }
    template = translate(load_template())
    skipped = {name: r for name, r in template["Resources"].items() if r["Type"] in MOTO_SKIPS}
    for name in skipped:
        del template["Resources"][name]
    fixed = {
        ref("Proxy"): stack,  # DBProxyName is the stack's name
        getatt("Proxy", "DBProxyArn"): f"arn:aws:rds:us-east-1:123456789012:db-proxy:{PLACEHOLDER_PROXY_ID}",
        getatt("Proxy", "Endpoint"): proxy_endpoint(stack),
        getatt("Database", "MasterUserSecret.SecretArn"): secret_arn,
        getatt("Database", "DbiResourceId"): PLACEHOLDER_DBI_RESOURCE_ID,
    }
    cfn = boto3.client("cloudformation")
    cfn.create_stack(
        StackName=stack,
        TemplateBody=json.dumps(replace(template, fixed)),
        Capabilities=["CAPABILITY_IAM"],
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )
    described = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    assert described["StackStatus"] == "CREATE_COMPLETE", described.get("StackStatusReason")
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"]
        if r["LogicalResourceId"]
    }
    attributes = {(name, "GroupId"): pid for name, pid in physical.items() if name.endswith("SecurityGroup")}
    if "ProxyRole" in physical:
        attributes["ProxyRole", "Arn"] = boto3.client("iam").get_role(RoleName=physical["ProxyRole"])["Role"]["Arn"]
    attributes["Database", "MasterUserSecret.SecretArn"] = secret_arn
    resolve = Resolver(template, stack, parameters, {**physical, "Proxy": stack}, attributes)

    rds, cloudwatch = boto3.client("rds"), boto3.client("cloudwatch")
    made = {}
    for name, resource in skipped.items():
        if "Condition" in resource and not resolve.condition(resource["Condition"]):
            continue
        props = made[name] = resolve(resource["Properties"])
        if resource["Type"] == "AWS::RDS::DBProxy":
            # moto 5.2 requires Auth (an end-to-end IAM proxy has none) and ignores DefaultAuthScheme
            rds.create_db_proxy(**{"Auth": [], **_numbers(props, ("IdleClientTimeout",))})
            from moto.core import DEFAULT_ACCOUNT_ID
            from moto.rds.models import rds_backends

            rds_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].db_proxies[props["DBProxyName"]].endpoint = proxy_endpoint(
                stack
            )
        elif resource["Type"] == "AWS::RDS::DBProxyTargetGroup":
            rds.register_db_proxy_targets(
                DBProxyName=props["DBProxyName"], DBInstanceIdentifiers=props["DBInstanceIdentifiers"]
            )
            pool = props["ConnectionPoolConfigurationInfo"]
            rds.modify_db_proxy_target_group(
                DBProxyName=props["DBProxyName"],
                TargetGroupName=props["TargetGroupName"],
                ConnectionPoolConfig={k: int(v) for k, v in pool.items()},
            )
        else:
            cloudwatch.put_metric_alarm(
                AlarmName=f"{stack}-{name}",
                **_numbers(props, ("Period", "EvaluationPeriods", "DatapointsToAlarm", "Threshold")),
            )
    return {
        "outputs": {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])},
        "physical": physical,
        "skipped": sorted(skipped),
        "made": made,
    }


class MotoGaps:
    """botocore's Stubber for the calls moto (5.2) does not model, on a client whose other calls
    go on to moto: Lambda Managed Instances (GetCapacityProvider, GetFunctionScalingConfig, the
    CapacityProviderConfig in GetFunctionConfiguration). Each stubbed response is validated
    against botocore's Lambda model by ``Stubber.add_response``; a stub answers the first call
    of its operation whose parameters include ``expected``; unmatched calls reach moto."""

    def __init__(self, client: Any) -> None:
        from botocore.stub import Stubber

        self.client = client
        self.stubber = Stubber(client)
        self._stubs: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    def add(self, method: str, response: dict[str, Any], **expected: Any) -> None:
        self.stubber.add_response(method, response, expected)  # validates the response's shape
        item = self.stubber._queue.pop()
        self._stubs.append((item["operation_name"], expected, item["response"]))

    def _match(self, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        for i, (operation, expected, _response) in enumerate(self._stubs):
            if operation == model.name and all(params.get(k) == v for k, v in expected.items()):
                context["moto_gaps_response"] = self._stubs.pop(i)[2]
                return

    def _respond(self, context: dict[str, Any], **_: Any) -> Any:
        return context.pop("moto_gaps_response", None)  # None: the call goes on to moto

    def __enter__(self) -> Self:
        events = self.client.meta.events
        events.register_first("before-parameter-build.lambda.*", self._match, unique_id="moto-gaps-match")
        events.register("before-call.lambda.*", self._respond, unique_id="moto-gaps-respond")
        return self

    def __exit__(self, *exc: object) -> None:
        events = self.client.meta.events
        events.unregister("before-parameter-build.lambda.*", unique_id="moto-gaps-match")
        events.unregister("before-call.lambda.*", unique_id="moto-gaps-respond")

    @property
    def unused(self) -> list[str]:
        return [operation for operation, _, _ in self._stubs]


# -- Terraform, read with python-hcl2 (no terraform binary here) ------------------------------------


def parse_hcl(text: str) -> dict:
    """HCL (a .tf file, or a tfvars file the plan wrote) as Python values, strings unquoted."""
    import hcl2

    options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    return hcl2.loads(text, serialization_options=options)


def load_module(directory: Path) -> dict:
    """Every top-level block of the module's .tf files, by kind (``{"resource": [...], ...}``)."""
    merged: dict = {}
    for path in sorted(directory.glob("*.tf")):
        for key, value in parse_hcl(path.read_text()).items():
            merged.setdefault(key, []).extend(value if isinstance(value, list) else [value])
    return merged


def blocks(module: dict, kind: str) -> dict[str, dict]:
    """``{"aws_lambda_function.this": body}`` for resources, ``{"functions": body}`` for variables."""
    out = {}
    for entry in module[kind]:
        for name, body in entry.items():
            if kind == "variable":
                out[name] = body
            else:
                out.update({f"{name}.{label}": inner for label, inner in body.items()})
    return out
