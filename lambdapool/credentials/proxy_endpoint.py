"""Find an RDS Proxy's endpoint by its name (``describe_db_proxies``), for ``proxy_name``.

The templates in infra/ hand functions the proxy's hostname (in ``LAMBDAPOOL_DSN``), which
needs no AWS call at all. ``proxy_name`` stays for those who prefer a name to a generated
hostname: it is looked up once per instance, at the first connect. A burst of cold starts makes
as many control-plane calls, and RDS throttles them (``Throttling``, ``ThrottlingException``,
``RequestLimitExceeded``): those are retried here with decorrelated jitter, never past the
``deadline`` the caller gives (the connect's budget). botocore's own retries are turned off for
this call, because they sleep without knowing that deadline. An RDS Proxy listens on its engine
family's default port; it has no port setting of its own.
"""

from __future__ import annotations

import random
import time
from typing import Any

from lambdapool import _aws as aws
from lambdapool.errors import ConfigError, ConnectionUnavailable, LambdapoolError

ENGINE_PORTS = {"POSTGRESQL": 5432, "MYSQL": 3306, "SQLSERVER": 1433}
THROTTLED = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded"})
# Seconds. Decorrelated jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"):
# each wait is uniform(FIRST, 3 x the previous one), capped, so a fleet's retries spread out.
BACKOFF_FIRST, BACKOFF_CAP = 0.1, 5.0
LOOKUP_BUDGET = 10.0  # without a deadline from the caller


class _Throttled(Exception):
    """AWS said slow down (not a botocore exception, so aws.translated_errors lets it through)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class _Backoff:
    """The waits between throttled attempts of one lookup, inside ``deadline``."""

    def __init__(self, request: aws.AwsCall, proxy_name: str, deadline: float | None) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + LOOKUP_BUDGET if deadline is None else deadline
        self.request, self.proxy_name = request, proxy_name
        self.attempts, self.previous = 0, BACKOFF_FIRST

    def next_delay(self, exc: _Throttled) -> float:
        """Seconds to wait before the next attempt; ConnectionUnavailable once it would pass the deadline."""
        self.attempts += 1
        self.previous = min(BACKOFF_CAP, random.uniform(BACKOFF_FIRST, self.previous * 3))
        now = time.monotonic()
        if now + self.previous >= self.deadline:
            raise ConnectionUnavailable(
                f"could not {self.request.action}: AWS throttled {self.request.permission} "
                f"({exc.code}) {self.attempts} time{'s' if self.attempts > 1 else ''} in "
                f"{now - self.started:.2f}s and the connect's budget ran out; give the proxy's endpoint "
                "instead of proxy_name (its host in LAMBDAPOOL_DSN, as the infra/ templates do), so a "
                "cold start makes no control-plane call"
            ) from exc
        return self.previous


def resolve_proxy_endpoint(
    proxy_name: str, region: str | None = None, *, endpoint_url: str | None = None, deadline: float | None = None
) -> tuple[str, int]:
    """The ``(host, port)`` of RDS Proxy ``proxy_name``, looked up with boto3; throttling is
    retried until ``deadline`` (a ``time.monotonic()``; default: LOOKUP_BUDGET from now)."""
    request = _request(proxy_name, aws.resolve_region(region), endpoint_url)
    api = aws.client("rds", request.region, endpoint_url, retries=False)  # (kept: ~0.25 s of CPU to build)
    backoff = _Backoff(request, proxy_name, deadline)
    while True:
        try:
            return _endpoint(_call(api, request), proxy_name)
        except _Throttled as exc:
            time.sleep(backoff.next_delay(exc))
        except aws.AwsNotFound as exc:
            try:
                names: list[str] | None = _names(_call(api, _list_request(request)))
            except (LambdapoolError, _Throttled):  # not allowed to list: the message does without
                names = None
            raise ConfigError(f"{request.not_found}{_existing(names)}") from exc


async def aresolve_proxy_endpoint(
    proxy_name: str, region: str | None = None, *, endpoint_url: str | None = None, deadline: float | None = None
) -> tuple[str, int]:
    """The ``(host, port)`` of RDS Proxy ``proxy_name``, looked up with aiobotocore; as
    :func:`resolve_proxy_endpoint`."""
    import asyncio  # here, not at import: lambdapool's import stays cheap

    request = _request(proxy_name, aws.resolve_region(region), endpoint_url)
    session = aws.import_sdk("aiobotocore.session", "aws-async").get_session()
    from aiobotocore.config import AioConfig

    config = AioConfig(retries=aws.NO_RETRIES, **aws.TIMEOUTS)
    backoff = _Backoff(request, proxy_name, deadline)
    with aws.translated_errors("create an aiobotocore rds client", region=request.region):
        async with session.create_client(
            "rds", region_name=request.region, endpoint_url=endpoint_url, config=config
        ) as api:
            while True:
                try:
                    return _endpoint(await _acall(api, request), proxy_name)
                except _Throttled as exc:
                    await asyncio.sleep(backoff.next_delay(exc))
                except aws.AwsNotFound as exc:
                    try:
                        names: list[str] | None = _names(await _acall(api, _list_request(request)))
                    except (LambdapoolError, _Throttled):
                        names = None
                    raise ConfigError(f"{request.not_found}{_existing(names)}") from exc


def _call(api: Any, request: aws.AwsCall) -> Any:
    import botocore.exceptions as bx

    with aws.translated_errors(request.action, request.region, request.permission, request.not_found):
        try:
            return getattr(api, request.method)(**request.params)
        except bx.ClientError as exc:
            _raise_if_throttled(exc)
            raise


async def _acall(api: Any, request: aws.AwsCall) -> Any:
    import botocore.exceptions as bx

    with aws.translated_errors(request.action, request.region, request.permission, request.not_found):
        try:
            return await getattr(api, request.method)(**request.params)
        except bx.ClientError as exc:
            _raise_if_throttled(exc)
            raise


def _raise_if_throttled(exc: Any) -> None:
    code = exc.response.get("Error", {}).get("Code", "")
    if code in THROTTLED:
        raise _Throttled(code) from exc


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
