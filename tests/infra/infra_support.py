"""Helpers shared by the infra tests: templates, SAM translation, and a small intrinsic resolver
for the resources moto's CloudFormation skips (which the tests then create through the API)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SAM_TEMPLATE = ROOT / "infra" / "sam" / "template.yaml"
TERRAFORM = ROOT / "infra" / "terraform"

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

    def __init__(self, template: dict[str, Any], stack: str, parameters: dict[str, str],
                 physical: dict[str, str], attributes: dict[tuple[str, str], str]) -> None:
        self.template = template
        declared = template.get("Parameters", {})
        given = {k: str(v.get("Default", "")) for k, v in declared.items()} | parameters
        lists = {k for k, v in declared.items() if v["Type"].startswith("List<") or v["Type"] == "CommaDelimitedList"}
        self.values: dict[str, Any] = {k: v.split(",") if k in lists else v for k, v in given.items()}
        self.values |= physical | {"AWS::StackName": stack, "AWS::Region": "us-east-1",
                                   "AWS::AccountId": "123456789012", "AWS::Partition": "aws"}
        self.attributes = attributes

    def condition(self, name: str) -> bool:
        return bool(self(self.template["Conditions"][name]))

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [v for v in (self(x) for x in value) if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (fn, arg), = value.items()
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
