"""Find an RDS Proxy's endpoint by its name (``describe_db_proxies``).

Done once per instance, at the first connect: the name is stable across deployments while the
hostname is generated, so configuring the name spares users copying hostnames around. An RDS
Proxy listens on its engine family's default port; it has no port setting of its own.
"""

from __future__ import annotations

from typing import Any

from lambdapool import aws
from lambdapool.errors import ConfigError, LambdapoolError

ENGINE_PORTS = {"POSTGRESQL": 5432, "MYSQL": 3306, "SQLSERVER": 1433}


def resolve_proxy_endpoint(
    proxy_name: str, region: str | None = None, *, endpoint_url: str | None = None
) -> tuple[str, int]:
    """The ``(host, port)`` of RDS Proxy ``proxy_name``, looked up with boto3."""
    request = _request(proxy_name, aws.resolve_region(region), endpoint_url)
    try:
        response = aws.call(request)
    except aws.AwsNotFound as exc:
        try:
            names: list[str] | None = _names(aws.call(_list_request(request)))
        except LambdapoolError:  # not allowed to list: the message does without
            names = None
        raise ConfigError(f"{request.not_found}{_existing(names)}") from exc
    return _endpoint(response, proxy_name)


async def aresolve_proxy_endpoint(
    proxy_name: str, region: str | None = None, *, endpoint_url: str | None = None
) -> tuple[str, int]:
    """The ``(host, port)`` of RDS Proxy ``proxy_name``, looked up with aiobotocore."""
    request = _request(proxy_name, aws.resolve_region(region), endpoint_url)
    try:
        response = await aws.acall(request)
    except aws.AwsNotFound as exc:
        try:
            names: list[str] | None = _names(await aws.acall(_list_request(request)))
        except LambdapoolError:  # not allowed to list: the message does without
            names = None
        raise ConfigError(f"{request.not_found}{_existing(names)}") from exc
    return _endpoint(response, proxy_name)


def _request(proxy_name: str, region: str, endpoint_url: str | None) -> aws.AwsCall:
    if not proxy_name:
        raise ConfigError("proxy_name: empty; give the RDS Proxy's name (or its host instead)")
    return aws.AwsCall(
        service="rds",
        method="describe_db_proxies",
        region=region,
        endpoint_url=endpoint_url,
        action=f"look up RDS Proxy {proxy_name!r}",
        permission="rds:DescribeDBProxies",
        params={"DBProxyName": proxy_name},
        not_found=(
            f"proxy_name: no RDS Proxy named {proxy_name!r} in {region}; check the name and the "
            "region, or give the proxy's host instead"
        ),
    )


def _list_request(request: aws.AwsCall) -> aws.AwsCall:
    return aws.AwsCall(
        service="rds",
        method="describe_db_proxies",
        region=request.region,
        endpoint_url=request.endpoint_url,
        action=f"list the RDS Proxies in {request.region}",
        permission="rds:DescribeDBProxies",
        params={"MaxRecords": 100},
    )


def _existing(names: list[str] | None) -> str:
    if names is None:
        return ""
    if not names:
        return "; the region has no RDS Proxy at all"
    return "; the proxies there are: " + ", ".join(sorted(names))


def _names(response: dict[str, Any]) -> list[str]:
    return [proxy["DBProxyName"] for proxy in response.get("DBProxies", [])]


def _endpoint(response: dict[str, Any], proxy_name: str) -> tuple[str, int]:
    proxies = response.get("DBProxies") or []
    if not proxies or not proxies[0].get("Endpoint"):
        raise ConfigError(f"proxy_name: RDS Proxy {proxy_name!r} reports no endpoint yet; is it still being created?")
    proxy = proxies[0]
    family = proxy.get("EngineFamily", "")
    if family != "POSTGRESQL":
        raise ConfigError(
            f"proxy_name: RDS Proxy {proxy_name!r} serves engine family {family or 'unknown'}; "
            "lambdapool speaks PostgreSQL: give a proxy created with EngineFamily POSTGRESQL"
        )
    return proxy["Endpoint"], ENGINE_PORTS[family]
