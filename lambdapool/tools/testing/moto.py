"""AWS for tests, as moto: fake credentials, the threaded moto server, an RDS Proxy whose
endpoint points at a local address (the bundled local proxy), Secrets Manager secrets.

Sync code (boto3) can use in-process ``moto.mock_aws``; aiobotocore cannot (aiobotocore#1320),
so async code talks to :func:`moto_server` through ``aws_endpoint_url``.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

FAKE_ACCESS_KEY = "AKIALAMBDAPOOLTEST"
FAKE_SECRET_KEY = "lambdapool-test-secret-key"
ACCOUNT = "123456789012"
MOCK_AWS_KEYS = {"FOOBARKEY": "FOOBARSECRET"}  # what moto's in-process mock_aws puts in the environment


def signing_keys() -> dict[str, str]:
    """Every key pair a token may be signed with in tests (for LocalProxy(iam_credentials=...))."""
    return {FAKE_ACCESS_KEY: FAKE_SECRET_KEY, **MOCK_AWS_KEYS}


def fake_aws_environment(region: str = "us-east-1") -> dict[str, str]:
    """Variables that give boto3 fake credentials and a region, and nothing from ~/.aws."""
    return {
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
        "AWS_CONFIG_FILE": "/nonexistent/config",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's threaded server on 127.0.0.1 (a free port); yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def reset_moto(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10)


def _client(service: str, region: str, endpoint_url: str | None) -> Any:
    import boto3

    return boto3.client(service, region_name=region, endpoint_url=endpoint_url)


def create_db_proxy(
    name: str, endpoint_host: str, *, region: str = "us-east-1", endpoint_url: str | None = None, iam: bool = True
) -> str:
    """Create an RDS Proxy in moto (VPC and subnets first, moto checks them) and point its
    endpoint at ``endpoint_host`` (moto has no API for that: its backend is set directly,
    which works for the in-process mock and the threaded server alike)."""
    ec2 = _client("ec2", region, endpoint_url)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24")["Subnet"]["SubnetId"] for i in (1, 2)]
    _client("rds", region, endpoint_url).create_db_proxy(
        DBProxyName=name,
        EngineFamily="POSTGRESQL",
        RequireTLS=True,
        Auth=[{"AuthScheme": "SECRETS", "IAMAuth": "REQUIRED" if iam else "DISABLED"}],
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{name}",
        VpcSubnetIds=subnets,
    )
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.rds.models import rds_backends

    rds_backends[DEFAULT_ACCOUNT_ID][region].db_proxies[name].endpoint = endpoint_host
    return endpoint_host


def create_secret(
    name: str, fields: dict[str, Any], *, region: str = "us-east-1", endpoint_url: str | None = None
) -> str:
    """A Secrets Manager secret in the RDS JSON shape; returns its ARN."""
    client = _client("secretsmanager", region, endpoint_url)
    return client.create_secret(Name=name, SecretString=json.dumps(fields))["ARN"]


def rotate_secret(
    arn: str, fields: dict[str, Any], *, region: str = "us-east-1", endpoint_url: str | None = None
) -> None:
    """The rotation's "set secret" step: put the new value as AWSCURRENT (moto cannot run a
    rotation Lambda without Docker; the test changes the database password itself)."""
    client = _client("secretsmanager", region, endpoint_url)
    client.put_secret_value(SecretId=arn, SecretString=json.dumps(fields), VersionStages=["AWSCURRENT"])


def apply_environment(env: dict[str, str]) -> dict[str, str | None]:
    """Set variables; returns the previous values for :func:`restore_environment`."""
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return previous


def restore_environment(previous: dict[str, str | None]) -> None:
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
