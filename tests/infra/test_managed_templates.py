"""The SAM template's Lambda Managed Instances option carries the plan's environments and processes."""

from __future__ import annotations

from lambdapool.tools.cli import main
from tests.infra.infra_support import load_template, translate


def test_sam_managed_instances_option_takes_the_plans_numbers(aws_env, capsys):
    assert main(["plan", "--max-connections", "400", "--function", "worker=4x1x16", "--format", "cfn"]) == 0
    params = dict(pair.split("=", 1) for pair in capsys.readouterr().out.split())
    template = load_template()
    assert set(params) <= set(template["Parameters"])
    resources = translate(template)["Resources"]
    managed = resources["ManagedFunction"]
    assert managed["Condition"] == "OnManagedInstances" and resources["Function"]["Condition"] == "OnStandardLambda"
    config = managed["Properties"]["CapacityProviderConfig"]["LambdaManagedInstancesCapacityProviderConfig"]
    assert config == {
        "CapacityProviderArn": {"Ref": "CapacityProviderArn"},
        "PerExecutionEnvironmentMaxConcurrency": {"Ref": "PerEnvironmentMaxConcurrency"},
    }
    scaling = {"MaxExecutionEnvironments": {"Ref": "ManagedInstancesMaxEnvironments"}}
    assert managed["Properties"]["FunctionScalingConfig"] == scaling
    assert "VpcConfig" not in managed["Properties"] and "ReservedConcurrentExecutions" not in managed["Properties"]
    versions = [r for r in resources.values() if r["Type"] == "AWS::Lambda::Version"]
    assert [v["Properties"]["FunctionScalingConfig"] for v in versions] == [scaling]
    assert (params["ManagedInstancesMaxEnvironments"], params["PerEnvironmentMaxConcurrency"]) == ("4", "16")
    assert template["Conditions"]["OnManagedInstances"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "CapacityProviderArn"}, ""]}]
    }
