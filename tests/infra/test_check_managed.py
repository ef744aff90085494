"""`lambdapool check` counts Lambda Managed Instances: environments x processes x connections.

moto (5.2) keeps no CapacityProviderConfig and answers GetCapacityProvider and
GetFunctionScalingConfig with "Not yet implemented", so those three answers come from
botocore's Stubber (validated against Lambda's API model); the database, the proxy, the
functions' concurrency and versions are moto's."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from lambdapool import _aws as lp_aws
from lambdapool.tools.cli.check import processes_per_environment
from tests.infra.infra_support import MotoGaps
from tests.infra.test_check import check, direct, endpointed, make_deployment

PROVIDER = "arn:aws:lambda:us-east-1:123456789012:capacity-provider:orders-fleet"


@pytest.fixture
def deployment(network):
    return make_deployment(network[1])


@pytest.fixture
def gaps(aws):
    with MotoGaps(lp_aws.client("lambda", "us-east-1")) as stubs:
        yield stubs
    assert not stubs.unused, f"stubbed but never called: {stubs.unused}"


def managed_function(
    deployment: dict[str, str],
    gaps: MotoGaps,
    name: str,
    *,
    via_proxy: bool = False,
    memory: int = 4096,
    per_environment: int | None = None,
    max_environments: int | None = None,
    max_vcpus: int | None = None,
    gib_per_vcpu: float | None = None,
) -> None:
    """A function published on a capacity provider: moto holds it (one published version), the
    stubs add what moto drops."""
    if via_proxy:
        endpointed(deployment, name, None)
    else:
        direct(deployment, name, None)
    lam = boto3.client("lambda")
    lam.update_function_configuration(FunctionName=name, MemorySize=memory)
    lam.publish_version(FunctionName=name)
    config: dict[str, Any] = {
        k: v for k, v in lam.get_function_configuration(FunctionName=name).items() if k != "ResponseMetadata"
    }
    managed: dict[str, Any] = {"CapacityProviderArn": PROVIDER}
    if per_environment is not None:
        managed["PerExecutionEnvironmentMaxConcurrency"] = per_environment
    if gib_per_vcpu is not None:
        managed["ExecutionEnvironmentMemoryGiBPerVCpu"] = gib_per_vcpu
    config["CapacityProviderConfig"] = {"LambdaManagedInstancesCapacityProviderConfig": managed}
    config.pop("VpcConfig", None)  # a Managed Instances function takes its network from the provider
    gaps.add("get_function_configuration", config, FunctionName=name)
    scaling = {} if max_environments is None else {"MaxExecutionEnvironments": max_environments}
    gaps.add(
        "get_function_scaling_config",
        {"AppliedFunctionScalingConfig": {"MinExecutionEnvironments": 0, **scaling}},
        FunctionName=name,
        Qualifier="1",
    )
    provider_scaling = {} if max_vcpus is None else {"MaxVCpuCount": max_vcpus}
    gaps.add(
        "get_capacity_provider",
        {
            "CapacityProvider": {
                "CapacityProviderArn": PROVIDER,
                "State": "Active",
                "VpcConfig": {"SubnetIds": ["subnet-0123"], "SecurityGroupIds": []},
                "PermissionsConfig": {"CapacityProviderOperatorRoleArn": deployment["role"]},
                "CapacityProviderScalingConfig": {"ScalingMode": "Auto", **provider_scaling},
            }
        },
        CapacityProviderName=PROVIDER,
    )


def test_a_managed_instances_function_that_fits(deployment, gaps, capsys):
    # GIVEN a direct function on Managed Instances: 8 processes per environment, at most 4
    # environments (its version's scaling config; the provider's 16 vCPUs would hold 8 of 2 vCPUs)
    managed_function(deployment, gaps, "worker", per_environment=8, max_environments=4, max_vcpus=16)
    code, out = check(capsys, "--function", "worker")
    # THEN it counts 4 x 8 x 1 = 32 beside the proxy's 60: 92 of 95 usable
    assert code == 0, out
    assert "managed instances: worker runs 8 processes per environment (PerExecutionEnvironmentMaxConcurrency)" in out
    assert "worker environments <= 4: MaxExecutionEnvironments of its published versions (v1 4)" in out
    assert "worker environments <= 8: capacity provider orders-fleet MaxVCpuCount 16 / 2 vCPU per environment" in out
    assert "worker 4 environments x 8 processes x 1 conn = 32 (direct)" in out
    assert "OK: the fan-out fits, 3 connection(s) to spare" in out
    assert "hunter2" not in out


def test_a_managed_instances_function_that_breaks_the_budget_is_named(deployment, gaps, capsys):
    # GIVEN the same function with AWS's default concurrency: 16 per vCPU x 2 vCPUs (4 GiB at 2 GiB per vCPU)
    managed_function(deployment, gaps, "worker", max_environments=4, max_vcpus=16)
    code, out = check(capsys, "--function", "worker")
    # THEN 4 x 32 = 128 overflows, and check says which knob fits it
    assert code == 1, out
    assert (
        "worker runs 32 processes per environment (default 16 per vCPU x 2 vCPU: MemorySize 4096 MiB / 2 GiB per vCPU)"
        in out
    )
    assert "worker 4 environments x 32 processes x 1 conn = 128 (direct)" in out
    assert "used = 188 of 95 usable: OVER by 93" in out
    assert (
        "FAIL: worker breaks the budget: over by 93; to fit, lower worker's execution environments from 4 to 1 "
        "(MaxExecutionEnvironments in its scaling config, or its capacity provider's MaxVCpuCount); or lower "
        "worker's PerExecutionEnvironmentMaxConcurrency from 32 to 8"
    ) in out


def test_the_capacity_provider_bounds_environments_when_the_function_does_not(deployment, gaps, capsys):
    # GIVEN no MaxExecutionEnvironments; 8 GiB at 4 GiB per vCPU = 2 vCPUs, on a 9-vCPU provider
    managed_function(deployment, gaps, "worker", memory=8192, gib_per_vcpu=4.0, per_environment=10, max_vcpus=9)
    code, out = check(capsys, "--function", "worker")
    # THEN floor(9 / 2) = 4 environments x 10 processes = 40; 60 + 40 is 5 over
    assert code == 1, out
    assert "worker environments <= 4: capacity provider orders-fleet MaxVCpuCount 9 / 2 vCPU per environment" in out
    assert "MaxExecutionEnvironments of its published versions" not in out  # v1 sets none
    assert "FAIL: worker breaks the budget: over by 5; to fit, lower worker's execution environments from 4 to 3" in out


def test_an_unbounded_managed_instances_function_fails(deployment, gaps, capsys):
    managed_function(deployment, gaps, "worker", per_environment=4)
    code, out = check(capsys, "--function", "worker")
    assert code == 1, out
    assert "managed instances: worker environments = unbounded" in out
    assert (
        "FAIL: worker connect(s) directly from Lambda Managed Instances with no bound on execution environments" in out
    )


def test_a_managed_instances_client_of_the_proxy_is_counted_as_its_client(deployment, gaps, capsys):
    managed_function(deployment, gaps, "api", via_proxy=True, per_environment=64, max_environments=10)
    code, out = check(capsys, "--function", "api")
    assert code == 0, out
    assert "client: api 10 environments x 64 processes x 1 conn through rds-proxy orders" in out


def test_processes_default_to_16_per_vcpu():
    managed = {"LambdaManagedInstancesCapacityProviderConfig": {"CapacityProviderArn": PROVIDER}}
    assert processes_per_environment({"MemorySize": 2048, "CapacityProviderConfig": managed}) == 16
    managed["LambdaManagedInstancesCapacityProviderConfig"]["ExecutionEnvironmentMemoryGiBPerVCpu"] = 4
    assert processes_per_environment({"MemorySize": 16384, "CapacityProviderConfig": managed}) == 64
    assert processes_per_environment({"MemorySize": 16384}) == 1
