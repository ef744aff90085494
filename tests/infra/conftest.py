"""Fixtures for the infra tests: moto in-process (``mock_aws``) with a VPC to deploy into."""

from __future__ import annotations

import pytest


@pytest.fixture
def aws(aws_env):
    """An in-process moto account in us-east-1 (fake credentials from the plugin's ``aws_env``)."""
    from moto import mock_aws

    from lambdapool import aws as lp_aws

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
