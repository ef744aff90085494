"""The connection budget on Google Cloud: Cloud Run functions (2nd gen) against Cloud SQL.

Theory of operation. A function's instances each serve up to ``max_instance_request_concurrency``
requests at once, and lambdapool keeps up to ``max_per_instance`` connections in each (never more
than the concurrency: a request holds one at a time). Google documents that an instance count can
briefly pass ``max_instance_count``: "In some cases, such as rapid traffic surges, Cloud
Functions may, for a short period of time, create more instances than the specified max
instances limit. If your function cannot tolerate this temporary behavior, you may want to
factor in a safety margin" (Cloud Functions v2 REST reference, ``ServiceConfig.maxInstanceCount``;
Cloud Run's "About instance autoscaling" says the same). Google gives no number, so the budget
counts a stated headroom: :func:`surge` extra instances, 10 % of ``max_instance_count`` rounded
up, at least one. A function connecting straight to Cloud SQL (``cloud-sql``: the ``/cloudsql/``
socket or the private IP) then costs ``(max_instance_count + surge) x connections`` backends.

Through Cloud SQL's Managed Connection Pooling (``cloud-sql-pooler``; Enterprise Plus) the
functions' connections are the pooler's clients; the database sees the pools: each pooler keeps
one pool per database and user pair, of at most ``max_pool_size`` server connections, and an
instance runs one pooler per 4 vCPUs, at least one (Cloud SQL "Managed Connection Pooling
overview"). With the one IAM user the infra/gcp module makes, that is ``poolers x max_pool_size``.

The database's limit and reserved slots are :class:`lambdapool.tools.budget.Limits`, as on AWS;
``max_connections`` defaults to Cloud SQL's table by memory (:func:`default_max_connections`).
Pure arithmetic: no Google API, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from lambdapool.errors import ConfigError
from lambdapool.tools.budget import BudgetError, Consumer, Limits, Tally, tally

__all__ = [
    "GCP_POOLERS",
    "MAX_CONCURRENCY",
    "CloudRunFunction",
    "CloudSqlTier",
    "GcpPlan",
    "ManagedPool",
    "default_max_connections",
    "plan",
    "pooler_count",
    "surge",
    "tier",
]

GCP_POOLERS = ("cloud-sql", "cloud-sql-pooler")
MAX_CONCURRENCY = 1000  # max_instance_request_concurrency's ceiling (Cloud Run functions)
SURGE_PERCENT = 10
SURGE_MINIMUM = 1
SURGE_RULE = f"+{SURGE_PERCENT} % of max_instance_count, at least {SURGE_MINIMUM}, for surges past it"
DEFAULT_MAX_PER_INSTANCE = 4  # lambdapool._config.Settings.max_per_instance's default off Lambda


def surge(max_instances: int) -> int:
    """Instances counted beyond ``max_instance_count`` (the stated headroom; see the module doc)."""
    return max(SURGE_MINIMUM, math.ceil(max_instances * SURGE_PERCENT / 100))


# Cloud SQL for PostgreSQL's default max_connections by the instance's memory: Google's table
# "Cloud SQL for PostgreSQL connection limits" (Maximum concurrent connections), on
# https://cloud.google.com/sql/docs/postgres/quotas#cloud-sql-for-postgresql-connection-limits:
# 0.6 GiB (db-f1-micro) 25, 1.7 GiB (db-g1-small) 50, 3.75 up to 6 GiB 100, 6 up to 7.5 200,
# 7.5 up to 15 400, 15 up to 30 500, 30 up to 60 600, 60 up to 120 800, 120 and above 1000.
# Memory exactly on a boundary (db-custom-2-7680 is 7.5 GiB) takes the lower row: the safe side.
_BY_MEMORY = ((0.6, 25), (1.7, 50), (6, 100), (7.5, 200), (15, 400), (30, 500), (60, 600), (120, 800))
_ABOVE = 1000


@dataclass(frozen=True)
class CloudSqlTier:
    """A Cloud SQL machine type: vCPUs (``None`` for the shared-core ones) and memory."""

    name: str
    vcpus: int | None
    memory_gib: float
    enterprise_plus: bool = False


_CUSTOM = re.compile(r"db-custom-(\d+)-(\d+)")
_PERF = re.compile(r"db-perf-optimized-n-(\d+)")  # Enterprise Plus: 8 GiB per vCPU
_N1 = re.compile(r"db-n1-(standard|highmem)-(\d+)")  # legacy: 3.75 / 6.5 GiB per vCPU
_SHARED = {"db-f1-micro": 0.6, "db-g1-small": 1.7}
_PERF_VCPUS = (2, 4, 8, 16, 32, 48, 64, 80, 96, 128)


def tier(name: str) -> CloudSqlTier:
    """Parse a Cloud SQL for PostgreSQL machine type (``--instance-class``)."""
    given = name.strip()  # kept as given: Google spells db-perf-optimized-N-8 with a capital N
    text = given.lower()
    if text in _SHARED:
        return CloudSqlTier(given, None, _SHARED[text])
    custom = _CUSTOM.fullmatch(text)
    if custom and int(custom.group(1)) >= 1:
        return CloudSqlTier(given, int(custom.group(1)), int(custom.group(2)) / 1024)
    perf = _PERF.fullmatch(text)
    if perf and int(perf.group(1)) in _PERF_VCPUS:
        vcpus = int(perf.group(1))
        return CloudSqlTier(given, vcpus, 8.0 * vcpus, enterprise_plus=True)
    n1 = _N1.fullmatch(text)
    if n1 and int(n1.group(2)) >= 1:
        vcpus = int(n1.group(2))
        return CloudSqlTier(given, vcpus, (3.75 if n1.group(1) == "standard" else 6.5) * vcpus)
    raise ConfigError(
        f"--instance-class {name!r} is not a Cloud SQL machine type lambdapool knows; give one of db-f1-micro, "
        "db-g1-small, db-custom-CPUS-MEMORY_MB (e.g. db-custom-2-7680), db-perf-optimized-N-CPUS (Enterprise "
        "Plus, e.g. db-perf-optimized-N-8), db-n1-standard-CPUS, db-n1-highmem-CPUS; or the database's "
        "max_connections (--max-connections N; SHOW max_connections says it)"
    )


def default_max_connections(machine_type: str) -> int:
    """Cloud SQL for PostgreSQL's default ``max_connections`` for a machine type (Google's table)."""
    memory = tier(machine_type).memory_gib
    return next((limit for upto, limit in _BY_MEMORY if memory <= upto), _ABOVE)


def pooler_count(vcpus: int | None) -> int:
    """Managed Connection Pooling runs one pooler per 4 vCPUs, at least one (2 or 4 vCPUs: 1; 8: 2;
    16: 4). Rounded up between those points: more poolers means smaller pools, the safe side."""
    return max(1, math.ceil((vcpus or 1) / 4))


@dataclass(frozen=True)
class CloudRunFunction:
    """A Cloud Run function (2nd gen) sharing the database.

    ``max_instances``: ``max_instance_count``; ``concurrency``: ``max_instance_request_concurrency``
    (1..1000); ``connections``: lambdapool's ``max_per_instance`` (at most the concurrency).
    ``pooler``: ``None`` means the plan's.
    """

    name: str
    max_instances: int
    concurrency: int = 1
    connections: int | None = None  # None: min(concurrency, lambdapool's default max_per_instance)
    pooler: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a function needs a name")
        for what, value, flag in (
            ("INSTANCES", self.max_instances, "max_instance_count"),
            ("CONCURRENCY", self.concurrency, "max_instance_request_concurrency"),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--function {self.name}: {what} ({flag}) must be a whole number >= 1, got {value!r}")
        if self.concurrency > MAX_CONCURRENCY:
            raise ConfigError(
                f"--function {self.name}: CONCURRENCY {self.concurrency} is above Cloud Run functions' limit of "
                f"{MAX_CONCURRENCY} requests per instance (max_instance_request_concurrency); lower it and raise "
                "INSTANCES instead"
            )
        if self.connections is None:
            object.__setattr__(self, "connections", min(self.concurrency, DEFAULT_MAX_PER_INSTANCE))
        conns = self.connections
        if isinstance(conns, bool) or not isinstance(conns, int) or conns < 1:
            raise ConfigError(
                f"--function {self.name}: CONNS (max_per_instance) must be a whole number >= 1, got {conns!r}"
            )
        if conns > self.concurrency:
            raise ConfigError(
                f"--function {self.name}: CONNS {conns} is more than its CONCURRENCY {self.concurrency}: an "
                f"instance never uses more connections than it serves requests; use "
                f"{self.name}={self.max_instances}x{self.concurrency}x{self.concurrency} or raise CONCURRENCY"
            )
        if self.pooler is not None and self.pooler not in GCP_POOLERS:
            raise ConfigError(
                f"--function {self.name}@{self.pooler}: on --platform gcp the pooler is one of {', '.join(GCP_POOLERS)}"
            )

    @property
    def per_instance(self) -> int:
        assert self.connections is not None  # set in __post_init__
        return self.connections

    @property
    def available_cpu(self) -> str | None:
        """Concurrency above 1 needs at least 1 vCPU; ``None`` leaves Cloud Run's default (from memory)."""
        return "1" if self.concurrency > 1 else None

    @property
    def surge(self) -> int:
        return surge(self.max_instances)

    @property
    def fan_out(self) -> int:
        return (self.max_instances + self.surge) * self.per_instance

    def arithmetic(self) -> str:
        return (
            f"{self.name} ({self.max_instances} + surge {self.surge}) instances x {self.per_instance} conn = "
            f"{self.fan_out}"
        )

    def largest_max_instances(self, budget: int) -> int:
        """The largest ``max_instance_count`` whose fan-out (with its surge) is at most ``budget``."""
        best = 0
        low, high = 1, max(1, budget)
        while low <= high:  # fan-out grows with max_instances: bisect
            mid = (low + high) // 2
            if (mid + surge(mid)) * self.per_instance <= budget:
                best, low = mid, mid + 1
            else:
                high = mid - 1
        return best


@dataclass(frozen=True)
class ManagedPool:
    """Managed Connection Pooling settings: ``max_pool_size`` per pooler (one database/user pair),
    the poolers the instance runs, and the client connections the functions may open to it."""

    max_pool_size: int
    poolers: int
    clients: int

    @property
    def database_connections(self) -> int:
        return self.max_pool_size * self.poolers


@dataclass(frozen=True)
class GcpPlan:
    """Settings that keep Cloud Run functions under Cloud SQL's limit (see :func:`plan`)."""

    limits: Limits
    pooler: str
    functions: tuple[CloudRunFunction, ...]
    tally: Tally
    pool: ManagedPool | None = None
    largest_max_instances: dict[str, int] = field(default_factory=dict)
    tier: CloudSqlTier | None = None

    def pooled(self) -> tuple[CloudRunFunction, ...]:
        return tuple(f for f in self.functions if (f.pooler or self.pooler) == "cloud-sql-pooler")

    def direct(self) -> tuple[CloudRunFunction, ...]:
        return tuple(f for f in self.functions if (f.pooler or self.pooler) == "cloud-sql")

    def lines(self) -> list[str]:
        out = [f"surge headroom: {SURGE_RULE} (Google: instances can briefly exceed max_instance_count)"]
        out += self.tally.lines()
        out += [f"  client: {f.arithmetic()} through cloud-sql-pooler" for f in self.pooled()]
        for f in self.functions:
            cpu = f", available_cpu {f.available_cpu}" if f.available_cpu else ""
            out.append(
                f"{f.name}: max_instance_count {f.max_instances}, max_instance_request_concurrency "
                f"{f.concurrency}, LAMBDAPOOL_MAX_PER_INSTANCE {f.per_instance}{cpu}"
            )
        if self.pool:
            p = self.pool
            out.append(
                f"Managed Connection Pooling: max_pool_size {p.max_pool_size} x {p.poolers} pooler(s) = "
                f"{p.database_connections} database connections; clients up to {p.clients}"
            )
        for name, largest in self.largest_max_instances.items():
            out.append(f"direct: {name} fits up to max_instance_count {largest}")
        return out

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "platform": "gcp",
            "max_connections": self.limits.max_connections,
            "instance_class": self.limits.instance_class,
            "superuser_reserved": self.limits.superuser_reserved,
            "replication": self.limits.replication,
            "admin": self.limits.admin,
            "usable": self.limits.usable,
            "pooler": self.pooler,
            "surge_rule": SURGE_RULE,
            "used": self.tally.used,
            "functions": [
                {
                    "name": f.name,
                    "pooler": f.pooler or self.pooler,
                    "max_instance_count": f.max_instances,
                    "max_instance_request_concurrency": f.concurrency,
                    "max_per_instance": f.per_instance,
                    "available_cpu": f.available_cpu,
                    "surge_instances": f.surge,
                    "fan_out": f.fan_out,
                    **(
                        {"largest_max_instance_count": self.largest_max_instances[f.name]}
                        if f.name in self.largest_max_instances
                        else {}
                    ),
                }
                for f in self.functions
            ],
        }
        if self.pool:
            out["managed_pool"] = {
                "max_pool_size": self.pool.max_pool_size,
                "poolers": self.pool.poolers,
                "database_connections": self.pool.database_connections,
                "clients": self.pool.clients,
            }
        return out


def _validate(functions: Sequence[CloudRunFunction], pooler: str, limits: Limits) -> None:
    if pooler not in GCP_POOLERS:
        raise ConfigError(f"--pooler on --platform gcp is one of {', '.join(GCP_POOLERS)}, got {pooler!r}")
    if not functions:
        raise ConfigError("a plan needs at least one function (--function NAME=INSTANCESxCONCURRENCY[xCONNS])")
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise ConfigError(f"function names must be unique, got {names}")
    if limits.usable < 1:
        raise BudgetError(
            f"nothing is left for functions: {limits.arithmetic()}; raise max_connections or reserve fewer slots"
        )


def _direct_consumer(fn: CloudRunFunction) -> Consumer:
    return Consumer(fn.name, fn.fan_out, f"{fn.arithmetic()} (direct)")


def _refuse(t: Tally, functions: Sequence[CloudRunFunction]) -> BudgetError:
    """Name the function at which the sum passes ``usable``, with what would make it fit."""
    breaker = t.breaker()
    fn = next((f for f in functions if breaker and f.name == breaker.name), None)
    fix = []
    if fn is not None:
        largest = fn.largest_max_instances(fn.fan_out - t.over)
        if largest >= 1:
            fix.append(f"lower {fn.name}'s max_instance_count from {fn.max_instances} to {largest}")
        if fn.per_instance > 1:
            fix.append(f"lower its connections per instance (xCONNS) from {fn.per_instance}")
        fix.append(f"route {fn.name} through Managed Connection Pooling (--pooler cloud-sql-pooler)")
    fix.append(f"raise max_connections to {t.limits.max_connections + t.over} (or a larger machine type)")
    who = f"{breaker.name} breaks the budget: " if breaker else ""
    return BudgetError(
        f"{who}the connections overflow by {t.over}: {' + '.join(c.arithmetic for c in t.consumers)} = {t.used}, "
        f"but only {t.limits.usable} are usable ({t.limits.arithmetic()}); surge headroom {SURGE_RULE}. "
        f"To fit, {'; or '.join(fix)}."
    )


def plan(
    limits: Limits,
    functions: Sequence[CloudRunFunction],
    pooler: str = "cloud-sql",
    poolers: int | None = None,
    machine: CloudSqlTier | None = None,
) -> GcpPlan:
    """Settings that keep Cloud Run functions' fan-out under Cloud SQL's limit.

    Direct (``cloud-sql``) functions count with their whole fan-out, surge included; what they
    leave is the managed pool's, split between its ``poolers`` (default: from the machine
    type's vCPUs, else 1). Raises :class:`BudgetError` when it cannot fit.
    """
    _validate(functions, pooler, limits)
    direct = [f for f in functions if (f.pooler or pooler) == "cloud-sql"]
    pooled = [f for f in functions if (f.pooler or pooler) == "cloud-sql-pooler"]
    consumers = [_direct_consumer(f) for f in direct]
    first = tally(limits, consumers)
    if not first.fits:
        raise _refuse(first, direct)
    pool = None
    if pooled:
        count = poolers if poolers is not None else pooler_count(machine.vcpus if machine else None)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"--poolers must be a whole number >= 1, got {count!r}")
        left = limits.usable - first.used
        size = left // count
        if size < 1:
            raise BudgetError(
                f"direct functions ({', '.join(f.name for f in direct)}) use {first.used} of {limits.usable} usable "
                f"connections, leaving {left} for {count} pooler(s); lower their max_instance_count or route them "
                "through the pooler too"
            )
        pool = ManagedPool(size, count, sum(f.fan_out for f in pooled))
        label = "cloud-sql-pooler"
        consumers.append(
            Consumer(
                label, pool.database_connections, f"{label} max_pool_size {size} x {count} pooler(s) = {size * count}"
            )
        )
    final = tally(limits, consumers)
    if not final.fits:  # rounding only goes down; this guards the invariant
        raise _refuse(final, direct)
    room = limits.usable - final.used
    largest = {f.name: f.largest_max_instances(f.fan_out + room) for f in direct}
    return GcpPlan(limits, pooler, tuple(functions), final, pool, largest, machine)
