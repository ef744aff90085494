"""`lambdapool check`: does what is deployed fit under the database's max_connections?

Reads the numbers from AWS, not from templates: each function's reserved concurrency and
``LAMBDAPOOL_*`` environment (Lambda; a function uses the proxy when its DSN's host is the
proxy's endpoint, as the infra/ templates set it, or its ``LAMBDAPOOL_PROXY_NAME`` names it), the proxy target group's ``MaxConnectionsPercent``
(RDS), and the database's ``max_connections`` from its parameter group (a number, RDS's
formula, or the class default when the group does not set it). Prints the arithmetic; exits 1
naming the function (or the proxy) that breaks the budget, 0 when it fits.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from lambdapool.budget import (
    Consumer,
    Function,
    Limits,
    RdsProxySettings,
    Tally,
    direct_consumer,
    max_connections_from_parameter,
    tally,
)
from lambdapool.cli.plan import add_limit_arguments, limits_from
from lambdapool.errors import ConfigError

HELP = "read the deployed functions, proxy and database from AWS and check the fan-out fits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION)")
    parser.add_argument("--endpoint-url", help="AWS endpoint (moto, LocalStack)")
    parser.add_argument("--proxy-name", help="the RDS Proxy in front of the database")
    parser.add_argument("--db-instance", help="the RDS instance (default: the proxy's target)")
    parser.add_argument(
        "--function", action="append", default=[], metavar="NAME",
        help="a function to count (repeatable); default: every function whose DSN (LAMBDAPOOL_DSN / "
             "DATABASE_URL) points at the proxy's endpoint or the instance, or whose LAMBDAPOOL_PROXY_NAME "
             "is the proxy",
    )
    add_limit_arguments(parser)


@dataclass(frozen=True)
class Deployed:
    """One Lambda function as AWS describes it."""

    name: str
    concurrency: int | None  # reserved concurrency; None = unreserved
    pooler: str
    proxy_name: str | None
    connections: int
    processes: int = 1
    host: str | None = None  # the DSN's host, normalised (never the DSN: it may carry a password)

    def uses(self, proxy_name: str | None, proxy_host: str | None) -> bool:
        """Does it connect through this proxy: by its endpoint (whatever the pooler setting
        says, that is where its connections go) or by name (the rds-proxy pooler's lookup)?"""
        if self.pooler == "rds-proxy" and self.proxy_name:
            return self.proxy_name == proxy_name  # proxy_name wins over the DSN's host
        return bool(proxy_host) and self.host == proxy_host


class _Aws:
    """The few read-only calls check makes, through lambdapool.aws's error translation."""

    def __init__(self, region: str | None, endpoint_url: str | None) -> None:
        from lambdapool import aws

        self._aws = aws
        self.region = aws.resolve_region(region)
        self.endpoint_url = endpoint_url

    def call(self, service: str, method: str, action: str, permission: str, not_found: str | None = None,
             **params: Any) -> Any:
        return self._aws.call(self._aws.AwsCall(
            service, method, self.region, action, permission, params, self.endpoint_url, not_found,
        ))

    def pages(self, service: str, method: str, key: str, action: str, permission: str,
              next_key: str = "Marker", **params: Any) -> Iterator[Any]:
        """Every item under ``key`` across pages (RDS answers ``Marker``, Lambda ``NextMarker``)."""
        while True:
            page = self.call(service, method, action, permission, **params)
            yield from page.get(key, [])
            if not page.get(next_key):
                return
            params["Marker"] = page[next_key]


def _dsn_host(env: dict[str, str]) -> str | None:
    """The host of the function's DSN (never the DSN itself: it may carry a password)."""
    dsn = env.get("LAMBDAPOOL_DSN") or env.get("DATABASE_URL")
    if not dsn:
        return None
    if "://" in dsn:
        return normal_host(urlsplit(dsn).hostname)
    for part in dsn.split():
        key, _, value = part.partition("=")
        if key == "host":
            return normal_host(value)
    return None


def normal_host(host: str | None) -> str | None:
    """Hostnames compare case-blind, a trailing dot (the DNS root) aside."""
    return host.lower().rstrip(".") or None if host else None


def _deployed(api: _Aws, name: str, config: dict[str, Any] | None = None) -> Deployed:
    if config is None:
        config = api.call("lambda", "get_function_configuration", f"read Lambda function {name!r}",
                          "lambda:GetFunctionConfiguration", f"Lambda function {name!r} not found",
                          FunctionName=name)
    env = {k: str(v) for k, v in (config.get("Environment") or {}).get("Variables", {}).items()}
    reserved = api.call("lambda", "get_function_concurrency", f"read the concurrency of {name!r}",
                        "lambda:GetFunctionConcurrency", FunctionName=name).get("ReservedConcurrentExecutions")
    try:
        connections = int(env.get("LAMBDAPOOL_MAX_PER_INSTANCE", "1"))
    except ValueError:
        raise ConfigError(f"{name}: LAMBDAPOOL_MAX_PER_INSTANCE is not an integer") from None
    return Deployed(name, reserved, env.get("LAMBDAPOOL_POOLER", "direct"), env.get("LAMBDAPOOL_PROXY_NAME"),
                    connections, processes_per_environment(config), _dsn_host(env))


def processes_per_environment(config: dict[str, Any]) -> int:
    """Python processes in one environment: several on Lambda Managed Instances, one each
    serving one of the environment's concurrent requests (and holding its own connections)."""
    managed = (config.get("CapacityProviderConfig") or {}).get("LambdaManagedInstancesCapacityProviderConfig")
    return int((managed or {}).get("PerExecutionEnvironmentMaxConcurrency") or 1)


def _discover(api: _Aws, proxy_name: str | None, hosts: set[str]) -> list[Deployed]:
    """The functions whose LAMBDAPOOL_PROXY_NAME is the proxy, or whose DSN's host is one of
    ``hosts`` (the proxy's endpoint, the instance's address)."""
    found = []
    for config in api.pages("lambda", "list_functions", "Functions", "list Lambda functions",
                            "lambda:ListFunctions", next_key="NextMarker"):
        env = (config.get("Environment") or {}).get("Variables", {})
        if (proxy_name and env.get("LAMBDAPOOL_PROXY_NAME") == proxy_name) or (
            _dsn_host({k: str(v) for k, v in env.items()}) in hosts
        ):
            found.append(_deployed(api, config["FunctionName"], config))
    return found


def _proxy(api: _Aws, name: str) -> tuple[dict[str, Any], str | None, str | None]:
    """The default target group's pool settings, the instance the proxy points at, and its endpoint."""
    proxies = api.call("rds", "describe_db_proxies", f"read RDS Proxy {name!r}", "rds:DescribeDBProxies",
                       f"RDS Proxy {name!r} not found in {api.region}", DBProxyName=name).get("DBProxies", [])
    endpoint = normal_host(proxies[0].get("Endpoint")) if proxies else None
    groups = api.call("rds", "describe_db_proxy_target_groups", f"read RDS Proxy {name!r}'s target groups",
                      "rds:DescribeDBProxyTargetGroups", DBProxyName=name)["TargetGroups"]
    group = next((g for g in groups if g.get("IsDefault")), groups[0] if groups else {})
    targets = api.call("rds", "describe_db_proxy_targets", f"read RDS Proxy {name!r}'s targets",
                       "rds:DescribeDBProxyTargets", DBProxyName=name).get("Targets", [])
    instance = next((t.get("RdsResourceId") for t in targets if t.get("Type") == "RDS_INSTANCE"), None)
    return group.get("ConnectionPoolConfig", {}), instance, endpoint


def _instance(api: _Aws, identifier: str) -> tuple[int, str, str | None]:
    """(max_connections, instance class, endpoint address) of an RDS instance."""
    db = api.call("rds", "describe_db_instances", f"read RDS instance {identifier!r}", "rds:DescribeDBInstances",
                  f"RDS instance {identifier!r} not found", DBInstanceIdentifier=identifier)["DBInstances"][0]
    cls = db["DBInstanceClass"]
    value = None
    for group in db.get("DBParameterGroups", [])[:1]:
        for param in api.pages("rds", "describe_db_parameters", "Parameters",
                               f"read parameter group {group['DBParameterGroupName']!r}",
                               "rds:DescribeDBParameters", DBParameterGroupName=group["DBParameterGroupName"]):
            if param.get("ParameterName") == "max_connections":
                value = param.get("ParameterValue")
    return max_connections_from_parameter(value, cls), cls, (db.get("Endpoint") or {}).get("Address")


def _proxy_consumer(limits: Limits, name: str, pool: dict[str, Any]) -> Consumer:
    """The proxy's cap, as RDS computes it from the target group's MaxConnectionsPercent."""
    percent = int(pool.get("MaxConnectionsPercent", 100))
    idle = pool.get("MaxIdleConnectionsPercent")
    if idle is not None and int(idle) > percent:
        print(f"warning: MaxIdleConnectionsPercent {idle} is above MaxConnectionsPercent {percent}")
    cap = limits.max_connections * percent // 100
    label = f"rds-proxy {name}"
    arithmetic = f"{label} cap = {limits.max_connections} x MaxConnectionsPercent {percent} % = {cap}"
    return Consumer(label, cap, arithmetic)


@dataclass
class _Counted:
    """The functions sorted by what they cost the database."""

    direct: list[Consumer]
    notes: list[str]
    unbounded: list[str]


def _count(functions: list[Deployed], proxy_name: str | None, proxy_host: str | None = None) -> _Counted:
    counted = _Counted([], [], [])
    for fn in functions:
        if proxy_name and fn.uses(proxy_name, proxy_host):
            counted.notes.append(f"  client: {fn.name} reserved {fn.concurrency or 'unreserved'} x "
                                 f"{fn.connections} conn through rds-proxy {proxy_name}")
        elif fn.pooler != "direct":
            via = f"{fn.pooler} {fn.proxy_name or fn.host or ''}".rstrip()
            counted.notes.append(f"  not counted: {fn.name} goes through {via}")
        elif fn.concurrency is None:
            counted.unbounded.append(fn.name)
        else:
            function = Function(fn.name, fn.concurrency, fn.connections, fn.processes, pooler="direct")
            counted.direct.append(direct_consumer(function))
    if not functions:
        counted.notes.append("  no function found (pass --function NAME)")
    return counted


def _verdict(t: Tally) -> str:
    if t.fits:
        return f"OK: the fan-out fits, {t.limits.usable - t.used} connection(s) to spare"
    breaker = t.breaker()
    assert breaker is not None  # over the limit: some consumer crossed it
    if breaker.function is not None:
        return f"FAIL: {breaker.name} breaks the budget: over by {t.over}; to fit, {t.advice()}"
    share = t.limits.usable - sum(c.connections for c in t.consumers if c.function is not None)
    try:
        percent = RdsProxySettings.for_share(share, t.limits.max_connections).max_connections_percent
        fix = f"set MaxConnectionsPercent to {percent}"
    except ConfigError:
        fix = "route the direct functions through the proxy"
    return f"FAIL: {breaker.name} breaks the budget: over by {t.over}; {fix}"


def _limits(api: _Aws, args: argparse.Namespace) -> tuple[Limits, dict[str, Any], str | None, str | None]:
    """The database's limits (flags win over AWS), the proxy's pool settings, the instance's
    host, and the proxy's endpoint."""
    pool: dict[str, Any] = {}
    instance = args.db_instance
    endpoint = None
    if args.proxy_name:
        pool, target, endpoint = _proxy(api, args.proxy_name)
        instance = instance or target
    host = None
    if instance:
        max_connections, cls, host = _instance(api, instance)
        given = "" if args.max_connections is None else f" (--max-connections {args.max_connections} used instead)"
        print(f"database {instance} ({cls}): max_connections {max_connections}{given}")
        if args.max_connections is None:
            args.max_connections = max_connections
    elif args.max_connections is None:
        raise ConfigError(f"RDS Proxy {args.proxy_name!r} has no RDS instance target; pass --db-instance "
                          "or --max-connections")
    return limits_from(args), pool, normal_host(host), endpoint


def run(args: argparse.Namespace) -> int:
    if not (args.proxy_name or args.db_instance):
        raise ConfigError("give --proxy-name NAME (its target is the database) or --db-instance ID")
    api = _Aws(args.region, args.endpoint_url)
    limits, pool, host, endpoint = _limits(api, args)
    functions = ([_deployed(api, n) for n in args.function] if args.function
                 else _discover(api, args.proxy_name, {h for h in (host, endpoint) if h}))
    counted = _count(functions, args.proxy_name, endpoint)
    proxy = [_proxy_consumer(limits, args.proxy_name, pool)] if args.proxy_name else []
    result = tally(limits, proxy + counted.direct)
    print("\n".join(result.lines() + counted.notes))
    if counted.unbounded:
        print(f"FAIL: {', '.join(counted.unbounded)} connect(s) directly with no reserved concurrency: the "
              "fan-out is bounded only by the account's concurrency; set reserved concurrency (lambdapool "
              "plan --pooler direct says the largest that fits) or go through the proxy")
        return 1
    print(_verdict(result))
    return 0 if result.fits else 1
