"""Fixtures for the infra tests: moto in-process (``mock_aws``) with a VPC to deploy into."""

from __future__ import annotations

import pytest


@pytest.fixture
def aws(aws_env):
    """An in-process moto account in us-east-1 (fake credentials from the plugin's ``aws_env``)."""
    from moto import mock_aws

    from lambdapool import _aws as lp_aws

    with mock_aws():
        yield
    lp_aws.reset_clients()


@pytest.fixture
def network(aws):
    """A VPC with two private subnets in two AZs, in the in-process moto account."""
    from tests.infra.infra_support import make_network

    return make_network()
