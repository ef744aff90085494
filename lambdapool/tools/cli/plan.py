"""`lambdapool plan`: the connection budget, and pooler settings that keep the fan-out under it.

Inputs come from flags or a small JSON/TOML file (flags win); outputs are a table, JSON,
CloudFormation parameter overrides for ``infra/sam/template.yaml``, a Terraform tfvars file for
``infra/terraform``, or the ``[pgbouncer]`` lines that ``infra/pgbouncer/pgbouncer.ini`` includes.
``--platform gcp`` plans Cloud Run functions against Cloud SQL instead (plan_gcp.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from lambdapool.errors import ConfigError
from lambdapool.tools.budget import POOLERS, Function, Limits, Plan, default_max_connections, plan
from lambdapool.tools.budget_gcp import GCP_POOLERS

HELP = "compute the connection budget and the pooler settings that keep the fan-out under it"

FORMATS = ("table", "json", "cfn", "cfn-json", "tfvars", "pgbouncer")

_SPEC = re.compile(r"(?P<name>[A-Za-z0-9_.:-]+)=(?P<c>\d+)(?:x(?P<k>\d+))?(?:x(?P<p>\d+))?(?:@(?P<pooler>[a-z-]+))?")


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The database limit and reserved slots; shared with `lambdapool check`."""
    parser.add_argument("--max-connections", type=int, help="the database's max_connections")
    parser.add_argument(
        "--instance-class",
        help="derive max_connections from an RDS class (e.g. db.t4g.medium) or, with --platform gcp, a Cloud SQL "
        "machine type (e.g. db-custom-2-7680)",
    )
    parser.add_argument("--reserved", type=int, help="superuser_reserved_connections (default 3)")
    parser.add_argument("--replication", type=int, help="slots kept for replication (default 0)")
    parser.add_argument("--admin", type=int, help="slots kept for people and migrations (default 2)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--platform",
        choices=("aws", "gcp"),
        default="aws",
        help="aws (default: Lambda against RDS) or gcp (Cloud Run functions against Cloud SQL: "
        "--function NAME=INSTANCESxCONCURRENCY[xCONNS][@POOLER])",
    )
    parser.add_argument("--config", type=Path, help="a JSON or TOML file with the same inputs (flags override it)")
    add_limit_arguments(parser)
    parser.add_argument(
        "--function",
        action="append",
        default=[],
        metavar="NAME=CONCURRENCY[xCONNS[xPROCS]][@POOLER]",
        help=(
            "a function sharing the database: reserved concurrency (or max instances), connections per "
            "process (max_per_instance), processes per environment; repeat for each. xPROCS marks a Lambda "
            "Managed Instances function: CONCURRENCY is then its execution environments and PROCS its "
            "PerExecutionEnvironmentMaxConcurrency (default 16 per vCPU). With --platform gcp: "
            "NAME=INSTANCESxCONCURRENCY[xCONNS][@POOLER], max_instance_count x max_instance_request_concurrency x "
            "connections per instance"
        ),
    )
    parser.add_argument(
        "--pooler",
        choices=POOLERS + GCP_POOLERS,
        help="how functions reach the database (default rds-proxy; on gcp cloud-sql, or cloud-sql-pooler for "
        "Managed Connection Pooling)",
    )
    parser.add_argument(
        "--poolers",
        type=int,
        help="pooler instances sharing the database (default 1; on gcp the managed poolers, default one per 4 "
        "vCPUs of --instance-class)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help=(
            "table (default: the arithmetic and the settings); json (every input and output); cfn "
            "(Key=Value overrides for infra/sam/template.yaml, for aws cloudformation deploy "
            "--parameter-overrides); cfn-json (the same as a parameters file); tfvars (for infra/terraform); "
            "pgbouncer (the [pgbouncer] lines infra/pgbouncer/pgbouncer.ini includes); with --platform gcp: "
            "table, json, tfvars (for infra/gcp)"
        ),
    )
    parser.add_argument("--stack-function", metavar="NAME", help="cfn formats: the function whose stack this is")


def parse_function(spec: str) -> Function:
    match = _SPEC.fullmatch(spec.strip())
    if not match:
        raise ConfigError(
            f"--function {spec!r}: expected NAME=CONCURRENCY[xCONNS[xPROCS]][@POOLER], e.g. api=50 or web=20x4"
        )
    g = match.groupdict()
    managed = g["p"] is not None  # xPROCS: Lambda Managed Instances, CONCURRENCY counts environments
    return Function(g["name"], int(g["c"]), int(g["k"] or 1), int(g["p"] or 1), g["pooler"], managed=managed)


def _load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib

                return tomllib.loads(text)
            raise ConfigError(f"--config {path}: reading TOML needs Python 3.11+; write it as JSON")
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--config {path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None


def _pick(args: argparse.Namespace, data: dict[str, Any], key: str, default: Any = None) -> Any:
    value = getattr(args, key, None)
    return value if value is not None else data.get(key, default)


def _count(args: argparse.Namespace, data: dict[str, Any], key: str, default: int | None, minimum: int) -> Any:
    """A limit from its flag (``--max-connections`` for ``max_connections``) or the --config file,
    checked here so that a bad one is named as the user gave it."""
    value = _pick(args, data, key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        flag = f"--{key.replace('_', '-')}"
        where = flag if getattr(args, key, None) is not None else f"--config {getattr(args, 'config', None)}: {key}"
        raise ConfigError(f"{where} {value!r}: must be a whole number >= {minimum}")
    return value


def limits_from(args: argparse.Namespace, data: dict[str, Any] | None = None) -> Limits:
    data = data or {}
    if "reserved" not in data and "superuser_reserved" in data:  # the file may use Limits' own name
        data = {**data, "reserved": data["superuser_reserved"]}
    max_connections = _count(args, data, "max_connections", None, 1)
    instance_class = _pick(args, data, "instance_class")
    if max_connections is None and instance_class is None:
        raise ConfigError("give --max-connections N or --instance-class CLASS")
    if max_connections is None:
        max_connections = default_max_connections(instance_class)
    return Limits(
        max_connections,
        superuser_reserved=_count(args, data, "reserved", 3, 0),
        replication=_count(args, data, "replication", 0, 0),
        admin=_count(args, data, "admin", 2, 0),
        instance_class=instance_class,
    )


def _functions(args: argparse.Namespace, data: dict[str, Any]) -> list[Function]:
    if args.function:
        return [parse_function(spec) for spec in args.function]
    out = []
    for item in data.get("functions", []):
        try:
            item = {"managed": "processes" in item, **item}  # as with xPROCS; "managed": false overrides
            out.append(Function(**item))
        except TypeError as exc:
            raise ConfigError(
                f"--config functions: {exc}; keys are name, concurrency, connections, processes, pooler, managed"
            ) from None
    return out


def build(args: argparse.Namespace) -> Plan:
    data = _load(args.config) if args.config else {}
    return plan(
        limits_from(args, data),
        _functions(args, data),
        pooler=_pick(args, data, "pooler", "rds-proxy"),
        poolers=_pick(args, data, "poolers", 1),
    )


def processes_explained(p: Plan) -> list[str]:
    """How to read the xPROCS term (printed when a function has one)."""
    managed = [f for f in p.functions if f.managed]
    if not managed:
        return []
    names = ", ".join(f"{f.name} {f.concurrency} environments x {f.processes} processes" for f in managed)
    return [
        f"processes: {names} (Lambda Managed Instances)",
        "  each execution environment runs PerExecutionEnvironmentMaxConcurrency Python processes, each with",
        "  its own connections (the runtime sets AWS_LAMBDA_MAX_CONCURRENCY to it); unset, Python's default is",
        "  16 per vCPU, vCPUs = MemorySize / 1024 / ExecutionEnvironmentMemoryGiBPerVCpu (default 2).",
        "  Read it: aws lambda get-function-configuration --function-name NAME --query",
        "  CapacityProviderConfig.LambdaManagedInstancesCapacityProviderConfig",
        "  environments: MaxExecutionEnvironments (aws lambda get-function-scaling-config --function-name NAME",
        "  --qualifier VERSION; each published version counts), at most the capacity provider's MaxVCpuCount / vCPUs;",
        "  lambdapool check reads all of these from AWS.",
    ]


def cfn_parameters(p: Plan, stack_function: str | None) -> dict[str, str]:
    """Parameters of infra/sam/template.yaml (one function per stack) from the plan."""
    if p.rds_proxy is None:
        raise ConfigError("the CloudFormation template deploys RDS Proxy: plan with --pooler rds-proxy")
    pooled = {f.name: f for f in p.pooled()}
    if stack_function is None:
        if len(pooled) != 1:
            raise ConfigError(f"--stack-function NAME: one stack per function, pick one of {sorted(pooled)}")
        stack_function = next(iter(pooled))
    if stack_function not in pooled:
        raise ConfigError(f"--stack-function {stack_function!r}: not a function through RDS Proxy {sorted(pooled)}")
    fn = pooled[stack_function]
    managed = (
        {"ManagedInstancesMaxEnvironments": str(fn.concurrency), "PerEnvironmentMaxConcurrency": str(fn.processes)}
        if fn.managed
        else {}
    )
    return {
        "FunctionName": fn.name,
        "ReservedConcurrency": str(fn.concurrency),
        "MaxPerInstance": str(fn.connections),
        **managed,
        "MaxConnectionsPercent": str(p.rds_proxy.max_connections_percent),
        "MaxIdleConnectionsPercent": str(p.rds_proxy.max_idle_connections_percent),
        "ProxyConnectionsAlarmThreshold": str(p.rds_proxy.cap),
        "DatabaseConnectionsAlarmThreshold": str(p.limits.usable),
        **({"DbInstanceClass": p.limits.instance_class} if p.limits.instance_class else {}),
    }


def tfvars(p: Plan) -> str:
    """Variables of infra/terraform from the plan (HCL)."""
    if p.rds_proxy is None:
        raise ConfigError("the Terraform module deploys RDS Proxy: plan with --pooler rds-proxy")
    values: dict[str, object] = {
        "max_connections_percent": p.rds_proxy.max_connections_percent,
        "max_idle_connections_percent": p.rds_proxy.max_idle_connections_percent,
        "proxy_connections_alarm_threshold": p.rds_proxy.cap,
        "database_connections_alarm_threshold": p.limits.usable,
    }
    if p.limits.instance_class:
        values["db_instance_class"] = f'"{p.limits.instance_class}"'
    width = max(map(len, values))
    lines = [
        "# lambdapool plan: "
        + ", ".join(
            f"{f.name} {f.concurrency}x{f.connections}" + (f"x{f.processes}" if f.managed else "") for f in p.functions
        )
    ]
    lines += [f"{key.ljust(width)} = {value}" for key, value in values.items()]
    lines.append("functions = {")
    for f in p.pooled():
        lines += [
            f'  "{f.name}" = {{',
            f"    reserved_concurrency = {f.concurrency}",
            f"    max_per_instance     = {f.connections}",
        ]
        if f.managed:  # the environments cap comes from the capacity provider's max_vcpu_count
            lines.append(f"    managed_instances    = {{ per_execution_environment_max_concurrency = {f.processes} }}")
        lines.append("  }")
    lines.append("}")
    direct = [f.name for f in p.functions if f not in p.pooled()]
    if direct:
        lines.append(f"# direct (not managed here): {', '.join(direct)}")
    return "\n".join(lines)


def pgbouncer_lines(p: Plan) -> str:
    if p.pgbouncer is None:
        raise ConfigError("--format pgbouncer: plan with --pooler pgbouncer")
    b = p.pgbouncer
    return "\n".join(
        [
            f"; lambdapool plan: {p.limits.arithmetic()}",
            f"default_pool_size = {b.default_pool_size}",
            f"max_db_connections = {b.max_db_connections}",
            f"max_client_conn = {b.max_client_conn}",
            f"reserve_pool_size = {b.reserve_pool_size}",
        ]
    )


def render(p: Plan, fmt: str, stack_function: str | None = None) -> str:
    if fmt == "json":
        return json.dumps(p.to_dict(), indent=2)
    if fmt == "cfn":
        return " ".join(f"{k}={v}" for k, v in cfn_parameters(p, stack_function).items())
    if fmt == "cfn-json":
        params = cfn_parameters(p, stack_function)
        return json.dumps([{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()], indent=2)
    if fmt == "tfvars":
        return tfvars(p)
    if fmt == "pgbouncer":
        return pgbouncer_lines(p)
    return "\n".join(p.lines() + processes_explained(p))


def run(args: argparse.Namespace) -> int:
    if getattr(args, "platform", "aws") == "gcp":
        from lambdapool.tools.cli import plan_gcp

        return plan_gcp.run(args)
    print(render(build(args), args.format, args.stack_function))
    return 0
