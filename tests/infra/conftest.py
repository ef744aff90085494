"""Fixtures for the infra tests: moto in-process (``mock_aws``) with a VPC to deploy into."""

from __future__ import annotations

import pytest


@pytest.fixture
def aws(monkeypatch):
    """An in-process moto account in us-east-1, with fake credentials and fresh lambdapool clients."""
    from moto import mock_aws

    from lambdapool import aws as lp_aws

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    lp_aws.reset_clients()
    with mock_aws():
        yield
    lp_aws.reset_clients()


@pytest.fixture
def network(aws):
    """A VPC with two private subnets in two AZs, as RDS and RDS Proxy require."""
    import boto3

    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"us-east-1{az}")["Subnet"]["SubnetId"]
        for i, az in enumerate("ab")
    ]
    return vpc, subnets
