"""`lambdapool plan --platform gcp`: Cloud Run functions (2nd gen) against Cloud SQL.

Same inputs as the AWS plan where they mean the same (limits, --config, --format table/json/
tfvars); a function is ``NAME=INSTANCESxCONCURRENCY[xCONNS][@POOLER]``. The arithmetic is
lambdapool/tools/budget_gcp.py; the tfvars are the variables of ``infra/gcp``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from lambdapool.errors import ConfigError
from lambdapool.tools.budget import Limits
from lambdapool.tools.budget_gcp import CloudRunFunction, CloudSqlTier, GcpPlan, default_max_connections, plan, tier
from lambdapool.tools.cli.plan import _count, _load, _pick

FORMATS = ("table", "json", "tfvars")

_SPEC = re.compile(r"(?P<name>[A-Za-z0-9_.:-]+)=(?P<n>\d+)(?:x(?P<c>\d+))?(?:x(?P<k>\d+))?(?:@(?P<pooler>[a-z-]+))?")


def parse_function(spec: str) -> CloudRunFunction:
    match = _SPEC.fullmatch(spec.strip())
    if not match:
        raise ConfigError(
            f"--function {spec!r}: on --platform gcp expected NAME=INSTANCESxCONCURRENCY[xCONNS][@POOLER] "
            "(max_instance_count x max_instance_request_concurrency x connections per instance), e.g. api=20x80"
        )
    g = match.groupdict()
    conns = int(g["k"]) if g["k"] is not None else None
    return CloudRunFunction(g["name"], int(g["n"]), int(g["c"] or 1), conns, g["pooler"])


def _functions(args: argparse.Namespace, data: dict[str, Any]) -> list[CloudRunFunction]:
    if args.function:
        return [parse_function(spec) for spec in args.function]
    out = []
    for item in data.get("functions", []):
        try:
            out.append(CloudRunFunction(**item))
        except TypeError as exc:
            raise ConfigError(
                f"--config functions: {exc}; on gcp keys are name, max_instances, concurrency, connections, pooler"
            ) from None
    return out


def limits(args: argparse.Namespace, data: dict[str, Any]) -> tuple[Limits, CloudSqlTier | None]:
    max_connections = _count(args, data, "max_connections", None, 1)
    machine_type = _pick(args, data, "instance_class")
    if max_connections is None and machine_type is None:
        raise ConfigError("give --max-connections N or --instance-class MACHINE_TYPE (e.g. db-custom-2-7680)")
    machine = tier(machine_type) if machine_type else None
    if max_connections is None:
        max_connections = default_max_connections(machine_type)
    found = Limits(
        max_connections,
        superuser_reserved=_count(args, data, "reserved", 3, 0),
        replication=_count(args, data, "replication", 0, 0),
        admin=_count(args, data, "admin", 2, 0),
        instance_class=machine.name if machine else None,
    )
    return found, machine


def build(args: argparse.Namespace) -> GcpPlan:
    data = _load(args.config) if args.config else {}
    found, machine = limits(args, data)
    pooler = _pick(args, data, "pooler", "cloud-sql")
    if (
        pooler == "cloud-sql-pooler"
        and machine is not None
        and machine.vcpus is not None
        and not machine.enterprise_plus
    ):
        print(
            f"note: Managed Connection Pooling needs a Cloud SQL Enterprise Plus instance; {machine.name} is an "
            "Enterprise machine type (db-perf-optimized-N-* are Enterprise Plus)",
            file=sys.stderr,  # stdout may be JSON or tfvars
        )
    return plan(found, _functions(args, data), pooler=pooler, poolers=_pick(args, data, "poolers"), machine=machine)


def tfvars(p: GcpPlan) -> str:
    """Variables of infra/gcp from the plan (HCL)."""
    values: dict[str, object] = {"pooler": f'"{p.pooler}"'}
    if p.pool is not None:
        values["max_pool_size"] = p.pool.max_pool_size
    if p.limits.instance_class:
        values["database_tier"] = f'"{p.limits.instance_class}"'
    width = max(map(len, values))
    lines = [
        "# lambdapool plan --platform gcp: "
        + ", ".join(f"{f.name} {f.max_instances}x{f.concurrency}x{f.per_instance}" for f in p.functions)
        + f"; used {p.tally.used} of {p.limits.usable} usable with surge headroom"
    ]
    lines += [f"{key.ljust(width)} = {value}" for key, value in values.items()]
    lines.append("functions = {")
    for f in p.functions:
        lines += [
            f'  "{f.name}" = {{',
            f"    max_instance_count               = {f.max_instances}",
            f"    max_instance_request_concurrency = {f.concurrency}",
            f"    max_per_instance                 = {f.per_instance}",
        ]
        if f.available_cpu:
            lines.append(f'    available_cpu                    = "{f.available_cpu}"')
        if f.pooler and f.pooler != p.pooler:
            lines.append(f'    pooler                           = "{f.pooler}"')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines)


def render(p: GcpPlan, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(p.to_dict(), indent=2)
    if fmt == "tfvars":
        return tfvars(p)
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: on --platform gcp the formats are {', '.join(FORMATS)}")
    return "\n".join(p.lines())


def run(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:  # before any output: a cfn/pgbouncer request is an AWS format
        raise ConfigError(f"--format {args.format}: on --platform gcp the formats are {', '.join(FORMATS)}")
    print(render(build(args), args.format))
    return 0
