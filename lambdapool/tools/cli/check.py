"""`lambdapool check`: does what is deployed fit under the database's max_connections?

Reads the numbers from AWS, not from templates: each function's reserved concurrency and
``LAMBDAPOOL_*`` environment (Lambda; a function uses the proxy when its DSN's host is the
proxy's endpoint, as the infra/ templates set it, or its ``LAMBDAPOOL_PROXY_NAME`` names it),
the proxy target group's ``MaxConnectionsPercent`` (RDS), and the database's ``max_connections``
from its parameter group (a number, RDS's formula, or the class default when the group does not
set it). Prints the arithmetic; exits 1 naming the function (or the proxy) that breaks the
budget, 0 when it fits.

A Lambda Managed Instances function (``CapacityProviderConfig`` in its configuration) counts
environments x processes x connections (lambdapool/tools/cli/managed.py says where each comes from).

``--platform gcp`` reads Cloud Run functions and Cloud SQL instead (check_gcp.py).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from lambdapool.errors import ConfigError
from lambdapool.tools.budget import (
    Consumer,
    Function,
    Limits,
    RdsProxySettings,
    Tally,
    direct_consumer,
    max_connections_from_parameter,
    tally,
)
from lambdapool.tools.cli import check_gcp
from lambdapool.tools.cli.plan import add_limit_arguments, limits_from

HELP = "read the deployed functions, proxy and database from AWS (or Google Cloud) and check the fan-out fits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--platform",
        choices=("aws", "gcp"),
        default="aws",
        help="aws (default: Lambda, RDS Proxy, RDS) or gcp (Cloud Run functions, Cloud SQL; --instance, --project)",
    )
    parser.add_argument(
        "--region", help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION); gcp: the functions' region"
    )
    parser.add_argument("--endpoint-url", help="AWS endpoint (moto, LocalStack)")
    parser.add_argument("--proxy-name", help="the RDS Proxy in front of the database")
    parser.add_argument("--db-instance", help="the RDS instance (default: the proxy's target)")
    parser.add_argument(
        "--function",
        action="append",
        default=[],
        metavar="NAME",
        help=(
            "a function to count (repeatable); default: every function whose DSN (LAMBDAPOOL_DSN / "
            "DATABASE_URL) points at the proxy's endpoint or the instance, or whose LAMBDAPOOL_PROXY_NAME "
            "is the proxy"
        ),
    )
    add_limit_arguments(parser)
    check_gcp.add_arguments(parser)


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
    managed: ManagedInstances | None = None  # Lambda Managed Instances: environments and processes

    def uses(self, proxy_name: str | None, proxy_host: str | None) -> bool:
        """Does it connect through this proxy: by its endpoint (whatever the pooler setting
        says, that is where its connections go) or by name (the rds-proxy pooler's lookup)?"""
        if self.pooler == "rds-proxy" and self.proxy_name:
            return self.proxy_name == proxy_name  # proxy_name wins over the DSN's host
        return bool(proxy_host) and self.host == proxy_host


class _Aws:
    """The few read-only calls check makes, through lambdapool._aws's error translation."""

    def __init__(self, region: str | None, endpoint_url: str | None) -> None:
        from lambdapool import _aws as aws

        self._aws = aws
        self.region = aws.resolve_region(region)
        self.endpoint_url = endpoint_url

    def call(
        self, service: str, method: str, action: str, permission: str, not_found: str | None = None, **params: Any
    ) -> Any:
        return self._aws.call(
            self._aws.AwsCall(
                service,
                method,
                self.region,
                action,
                permission,
                params,
                self.endpoint_url,
                not_found,
            )
        )

    def pages(
        self, service: str, method: str, key: str, action: str, permission: str, next_key: str = "Marker", **params: Any
    ) -> Iterator[Any]:
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
        config = api.call(
            "lambda",
            "get_function_configuration",
            f"read Lambda function {name!r}",
            "lambda:GetFunctionConfiguration",
            f"Lambda function {name!r} not found",
            FunctionName=name,
        )
    env = {k: str(v) for k, v in (config.get("Environment") or {}).get("Variables", {}).items()}
    reserved = api.call(
        "lambda",
        "get_function_concurrency",
        f"read the concurrency of {name!r}",
        "lambda:GetFunctionConcurrency",
        FunctionName=name,
    ).get("ReservedConcurrentExecutions")
    try:
        connections = int(env.get("LAMBDAPOOL_MAX_PER_INSTANCE", "1"))
    except ValueError:
        raise ConfigError(f"{name}: LAMBDAPOOL_MAX_PER_INSTANCE is not an integer") from None
    managed = managed_instances(api, name, config)
    return Deployed(
        name,
        reserved,
        env.get("LAMBDAPOOL_POOLER", "direct"),
        env.get("LAMBDAPOOL_PROXY_NAME"),
        connections,
        processes_per_environment(config),
        _dsn_host(env),
        managed,
    )


# Lambda Managed Instances -------------------------------------------------------------------
# moto (5.2) models none of this: tests answer these calls with botocore's Stubber.

PROCESSES_PER_VCPU = 16  # Python's PerExecutionEnvironmentMaxConcurrency default, per vCPU (AWS docs)
GIB_PER_VCPU = 2.0  # ExecutionEnvironmentMemoryGiBPerVCpu's default


def _managed_config(config: dict[str, Any]) -> dict[str, Any] | None:
    return (config.get("CapacityProviderConfig") or {}).get("LambdaManagedInstancesCapacityProviderConfig")


def vcpus_per_environment(config: dict[str, Any]) -> float:
    """An environment's vCPUs: its memory over the memory-per-vCPU ratio (both from the configuration)."""
    ratio = float((_managed_config(config) or {}).get("ExecutionEnvironmentMemoryGiBPerVCpu") or GIB_PER_VCPU)
    return int(config.get("MemorySize") or 2048) / 1024 / ratio


def processes_per_environment(config: dict[str, Any]) -> int:
    """Python processes in one environment: on Lambda Managed Instances one per concurrent
    request (PerExecutionEnvironmentMaxConcurrency, default 16 per vCPU), each holding its own
    connections; 1 on standard Lambda."""
    managed = _managed_config(config)
    if managed is None:
        return 1
    given = managed.get("PerExecutionEnvironmentMaxConcurrency")
    return int(given) if given else PROCESSES_PER_VCPU * max(1, math.ceil(vcpus_per_environment(config)))


@dataclass(frozen=True)
class ManagedInstances:
    """What bounds a Managed Instances function's environments, and how many processes each runs."""

    processes: int
    processes_from: str
    environments: int | None  # None: nothing bounds them
    bounds: tuple[str, ...]  # each bound that was found, with its arithmetic

    def lines(self, name: str) -> list[str]:
        envs = "unbounded" if self.environments is None else str(self.environments)
        out = [f"managed instances: {name} runs {self.processes} processes per environment ({self.processes_from})"]
        out += [f"managed instances: {name} environments <= {b}" for b in self.bounds]
        out.append(
            f"managed instances: {name} environments = {envs}"
            + (" (the smallest bound)" if len(self.bounds) > 1 else "")
        )
        return out


def managed_instances(api: _Aws, name: str, config: dict[str, Any]) -> ManagedInstances | None:
    """Read a Managed Instances function's bounds: each published version's scaling config
    (MaxExecutionEnvironments; each version runs its own environments, so they add up) and the
    capacity provider's MaxVCpuCount over the environment's vCPUs. ``None`` for standard Lambda."""
    managed = _managed_config(config)
    if managed is None:
        return None
    processes = processes_per_environment(config)
    vcpus = vcpus_per_environment(config)
    if managed.get("PerExecutionEnvironmentMaxConcurrency"):
        processes_from = "PerExecutionEnvironmentMaxConcurrency"
    else:
        ratio = managed.get("ExecutionEnvironmentMemoryGiBPerVCpu") or GIB_PER_VCPU
        processes_from = (
            f"default {PROCESSES_PER_VCPU} per vCPU x {math.ceil(vcpus)} vCPU: MemorySize "
            f"{config.get('MemorySize') or 2048} MiB / {ratio:g} GiB per vCPU"
        )
    bounds: list[tuple[int, str]] = []
    versions = [
        v["Version"]
        for v in api.pages(
            "lambda",
            "list_versions_by_function",
            "Versions",
            f"list the versions of {name!r}",
            "lambda:ListVersionsByFunction",
            next_key="NextMarker",
            FunctionName=name,
        )
        if v.get("Version") != "$LATEST"
    ]
    maxima: list[int | None] = []
    for version in versions:
        scaling = api.call(
            "lambda",
            "get_function_scaling_config",
            f"read the scaling config of {name}:{version}",
            "lambda:GetFunctionScalingConfig",
            FunctionName=name,
            Qualifier=version,
        )
        applied = scaling.get("AppliedFunctionScalingConfig") or scaling.get("RequestedFunctionScalingConfig") or {}
        maxima.append(applied.get("MaxExecutionEnvironments"))
    known = [int(m) for m in maxima if m is not None]
    if versions and len(known) == len(versions):  # a version without a maximum leaves this unbounded
        terms = " + ".join(f"v{v} {m}" for v, m in zip(versions, known))
        bounds.append((sum(known), f"{sum(known)}: MaxExecutionEnvironments of its published versions ({terms})"))
    arn = managed.get("CapacityProviderArn")
    if arn:
        provider = api.call(
            "lambda",
            "get_capacity_provider",
            f"read capacity provider {arn.rsplit(':', 1)[-1]!r}",
            "lambda:GetCapacityProvider",
            f"capacity provider {arn!r} not found",
            CapacityProviderName=arn,
        )["CapacityProvider"]
        max_vcpus = (provider.get("CapacityProviderScalingConfig") or {}).get("MaxVCpuCount")
        if max_vcpus:
            fit = math.floor(max_vcpus / vcpus)  # some vCPUs go to the instances' own agents: an upper bound
            text = (
                f"{fit}: capacity provider {arn.rsplit(':', 1)[-1]} MaxVCpuCount {max_vcpus} / "
                f"{vcpus:g} vCPU per environment"
            )
            bounds.append((fit, text))
    environments = min(b for b, _ in bounds) if bounds else None
    return ManagedInstances(processes, processes_from, environments, tuple(text for _, text in bounds))


def _discover(api: _Aws, proxy_name: str | None, hosts: set[str]) -> list[Deployed]:
    """The functions whose LAMBDAPOOL_PROXY_NAME is the proxy, or whose DSN's host is one of
    ``hosts`` (the proxy's endpoint, the instance's address)."""
    found = []
    for config in api.pages(
        "lambda", "list_functions", "Functions", "list Lambda functions", "lambda:ListFunctions", next_key="NextMarker"
    ):
        env = (config.get("Environment") or {}).get("Variables", {})
        if (proxy_name and env.get("LAMBDAPOOL_PROXY_NAME") == proxy_name) or (
            _dsn_host({k: str(v) for k, v in env.items()}) in hosts
        ):
            found.append(_deployed(api, config["FunctionName"], config))
    return found


def _proxy(api: _Aws, name: str) -> tuple[dict[str, Any], str | None, str | None]:
    """The default target group's pool settings, the instance the proxy points at, and its endpoint."""
    proxies = api.call(
        "rds",
        "describe_db_proxies",
        f"read RDS Proxy {name!r}",
        "rds:DescribeDBProxies",
        f"RDS Proxy {name!r} not found in {api.region}",
        DBProxyName=name,
    ).get("DBProxies", [])
    endpoint = normal_host(proxies[0].get("Endpoint")) if proxies else None
    groups = api.call(
        "rds",
        "describe_db_proxy_target_groups",
        f"read RDS Proxy {name!r}'s target groups",
        "rds:DescribeDBProxyTargetGroups",
        DBProxyName=name,
    )["TargetGroups"]
    group = next((g for g in groups if g.get("IsDefault")), groups[0] if groups else {})
    targets = api.call(
        "rds",
        "describe_db_proxy_targets",
        f"read RDS Proxy {name!r}'s targets",
        "rds:DescribeDBProxyTargets",
        DBProxyName=name,
    ).get("Targets", [])
    instance = next((t.get("RdsResourceId") for t in targets if t.get("Type") == "RDS_INSTANCE"), None)
    return group.get("ConnectionPoolConfig", {}), instance, endpoint


def _instance(api: _Aws, identifier: str) -> tuple[str | None, str, str | None]:
    """(its parameter group's max_connections, instance class, endpoint address) of an RDS instance."""
    db = api.call(
        "rds",
        "describe_db_instances",
        f"read RDS instance {identifier!r}",
        "rds:DescribeDBInstances",
        f"RDS instance {identifier!r} not found",
        DBInstanceIdentifier=identifier,
    )["DBInstances"][0]
    cls = db["DBInstanceClass"]
    value = None
    for group in db.get("DBParameterGroups", [])[:1]:
        for param in api.pages(
            "rds",
            "describe_db_parameters",
            "Parameters",
            f"read parameter group {group['DBParameterGroupName']!r}",
            "rds:DescribeDBParameters",
            DBParameterGroupName=group["DBParameterGroupName"],
        ):
            if param.get("ParameterName") == "max_connections":
                value = param.get("ParameterValue")
    return value, cls, (db.get("Endpoint") or {}).get("Address")


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
    unbounded_managed: list[str] = field(default_factory=list)


def _clients(fn: Deployed) -> str:
    """A proxied function's client connections (the proxy's side, not the database's)."""
    if fn.managed is not None:
        envs = fn.managed.environments if fn.managed.environments is not None else "unbounded"
        return f"{fn.name} {envs} environments x {fn.managed.processes} processes x {fn.connections} conn"
    return f"{fn.name} reserved {fn.concurrency or 'unreserved'} x {fn.connections} conn"


def _count(functions: list[Deployed], proxy_name: str | None, proxy_host: str | None = None) -> _Counted:
    counted = _Counted([], [], [])
    for fn in functions:
        if fn.managed is not None:
            counted.notes += [f"  {line}" for line in fn.managed.lines(fn.name)]
        if proxy_name and fn.uses(proxy_name, proxy_host):
            counted.notes.append(f"  client: {_clients(fn)} through rds-proxy {proxy_name}")
        elif fn.pooler != "direct":
            via = f"{fn.pooler} {fn.proxy_name or fn.host or ''}".rstrip()
            counted.notes.append(f"  not counted: {fn.name} goes through {via}")
        elif fn.managed is not None and fn.managed.environments is None:
            counted.unbounded_managed.append(fn.name)
        elif fn.managed is not None and fn.managed.environments == 0:
            counted.notes.append(f"  not counted: {fn.name} may run no environment (MaxExecutionEnvironments 0)")
        elif fn.managed is not None and fn.managed.environments is not None:
            function = Function(
                fn.name, fn.managed.environments, fn.connections, fn.managed.processes, pooler="direct", managed=True
            )
            counted.direct.append(direct_consumer(function))
        elif fn.concurrency is None:
            counted.unbounded.append(fn.name)
        else:
            function = Function(fn.name, fn.concurrency, fn.connections, fn.processes, pooler="direct")
            counted.direct.append(direct_consumer(function))
    if not functions:
        counted.notes.append("  no function found (pass --function NAME)")
    return counted


def _verdict(t: Tally, proxy_name: str | None) -> str:
    if t.fits:
        return f"OK: the fan-out fits, {t.limits.usable - t.used} connection(s) to spare"
    breaker = t.breaker()
    assert breaker is not None  # over the limit: some consumer crossed it
    if breaker.function is not None:
        # In what is deployed, a function goes through the proxy by its DSN's host (as the
        # templates set it), not by a flag of ours.
        through = (
            f"RDS Proxy {proxy_name} (its endpoint as the host of LAMBDAPOOL_DSN)"
            if proxy_name
            else "a pooler (its host in LAMBDAPOOL_DSN, LAMBDAPOOL_POOLER=rds-proxy or pgbouncer)"
        )
        return f"FAIL: {breaker.name} breaks the budget: over by {t.over}; to fit, {t.advice(through)}"
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
        value, cls, host = _instance(api, instance)
        if args.max_connections is None:
            args.max_connections = max_connections_from_parameter(value, cls)
            print(f"database {instance} ({cls}): max_connections {args.max_connections}")
        else:  # the flag wins, even where the class is one lambdapool cannot size
            try:
                found = str(max_connections_from_parameter(value, cls))
            except ConfigError:
                found = "not known to lambdapool"
            used = f"--max-connections {args.max_connections} used instead"
            print(f"database {instance} ({cls}): max_connections {found} ({used})")
    elif args.max_connections is None:
        raise ConfigError(
            f"RDS Proxy {args.proxy_name!r} has no RDS instance target; pass --db-instance or --max-connections"
        )
    return limits_from(args), pool, normal_host(host), endpoint


def run(args: argparse.Namespace) -> int:
    if getattr(args, "platform", "aws") == "gcp":
        return check_gcp.run(args)
    if not (args.proxy_name or args.db_instance):
        raise ConfigError("give --proxy-name NAME (its target is the database) or --db-instance ID")
    api = _Aws(args.region, args.endpoint_url)
    limits, pool, host, endpoint = _limits(api, args)
    functions = (
        [_deployed(api, n) for n in args.function]
        if args.function
        else _discover(api, args.proxy_name, {h for h in (host, endpoint) if h})
    )
    counted = _count(functions, args.proxy_name, endpoint)
    proxy = [_proxy_consumer(limits, args.proxy_name, pool)] if args.proxy_name else []
    result = tally(limits, proxy + counted.direct)
    print("\n".join(result.lines() + counted.notes))
    failed = False
    if counted.unbounded:
        print(
            f"FAIL: {', '.join(counted.unbounded)} connect(s) directly with no reserved concurrency: the "
            "fan-out is bounded only by the account's concurrency; set reserved concurrency (lambdapool "
            "plan --pooler direct says the largest that fits) or go through the proxy"
        )
        failed = True
    if counted.unbounded_managed:
        print(
            f"FAIL: {', '.join(counted.unbounded_managed)} connect(s) directly from Lambda Managed Instances "
            "with no bound on execution environments: set MaxExecutionEnvironments in each published "
            "version's scaling config or MaxVCpuCount on the capacity provider (lambdapool plan --pooler "
            "direct --function NAME=ENVSx1xPROCS says the largest that fits), or go through the proxy"
        )
        failed = True
    if failed:
        return 1
    print(_verdict(result, args.proxy_name))
    return 0 if result.fits else 1
