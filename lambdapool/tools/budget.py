"""The connection budget: how wide functions may fan out before Postgres says "too many clients".

Theory of operation. A database accepts ``max_connections`` backends. Some slots are not ours:
``superuser_reserved_connections`` (3 by default; on RDS the ``rdsadmin`` user lives there and
the master user, an ``rds_superuser``, cannot use them), connections kept for replication tools
and logical-replication consumers, and headroom for people (a psql session, a migration). What
is left, ``usable``, is shared by the *consumers*:

* a pooler (RDS Proxy, PgBouncer) opens at most its cap of backends, however many clients it has;
* a function that connects directly opens ``concurrency x processes x connections`` backends:
  reserved concurrency (Lambda) or max instances (Cloud Functions), times the Python processes
  per environment, times the connections each process keeps (``max_per_instance``; 1 on
  Lambda). Standard Lambda runs one process per environment. Lambda Managed Instances run
  ``PerExecutionEnvironmentMaxConcurrency`` processes in each (default 16 per vCPU), each with
  its own connections and never frozen, so ``concurrency`` counts *environments* there: the
  function scaling config's ``MaxExecutionEnvironments``, or what the capacity provider's
  ``MaxVCpuCount`` can hold.

The budget fits when the consumers' sum is at most ``usable``. :func:`plan` turns the inputs
into pooler settings that fit; :func:`tally` checks deployed numbers (``lambdapool check``).
Pure arithmetic: no AWS, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lambdapool.errors import ConfigError

__all__ = [
    "BudgetError",
    "Consumer",
    "Function",
    "INSTANCE_CLASS_GIB",
    "Limits",
    "POOLERS",
    "PgBouncerSettings",
    "Plan",
    "RdsProxySettings",
    "Tally",
    "default_max_connections",
    "direct_consumer",
    "instance_class_memory",
    "max_connections_from_parameter",
    "plan",
    "tally",
]

POOLERS = ("rds-proxy", "pgbouncer", "direct")

# RDS for PostgreSQL's default: max_connections = LEAST({DBInstanceClassMemory/9531392}, 5000).
_BYTES_PER_CONNECTION = 9531392
_RDS_CONNECTION_CEILING = 5000
_GIB = 1 << 30
_MIB = 1 << 20

# Memory (GiB) of RDS for PostgreSQL's instance classes (AWS's hardware specifications for DB
# instance classes). Within a family, memory doubles with the size: a size is the family's
# ".large" times its factor below. Each family lists the sizes RDS offers it (none has every one:
# the 7th/8th-generation Intel and Graviton4 classes skip 32xlarge and go to 48xlarge).
_SIZE_FACTOR = {
    "large": 1,
    "xlarge": 2,
    "2xlarge": 4,
    "4xlarge": 8,
    "8xlarge": 16,
    "12xlarge": 24,
    "16xlarge": 32,
    "24xlarge": 48,
    "32xlarge": 64,
    "48xlarge": 96,
}
_UP_TO_16 = ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge")
_UP_TO_24 = (*_UP_TO_16, "24xlarge")
_UP_TO_32 = (*_UP_TO_24, "32xlarge")
_UP_TO_48 = (*_UP_TO_24, "48xlarge")
_FAMILIES = {  # family: (GiB of .large, the sizes offered for PostgreSQL)
    # general purpose: 4 GiB per vCPU
    "m5": (8, _UP_TO_24),
    "m6g": (8, _UP_TO_16),
    "m6i": (8, _UP_TO_32),
    "m7g": (8, _UP_TO_16),
    "m7i": (8, _UP_TO_48),
    "m8g": (8, _UP_TO_48),
    # memory optimized: 8 GiB per vCPU
    "r5": (16, _UP_TO_24),
    "r6g": (16, _UP_TO_16),
    "r6i": (16, _UP_TO_32),
    "r7g": (16, _UP_TO_16),
    "r7i": (16, _UP_TO_48),
    "r8g": (16, _UP_TO_48),
}
_BURSTABLE = {"micro": 1, "small": 2, "medium": 4, "large": 8, "xlarge": 16, "2xlarge": 32}


def _class_table() -> dict[str, float]:
    table: dict[str, float] = {}
    for family in ("t3", "t4g"):
        table.update({f"db.{family}.{size}": gib for size, gib in _BURSTABLE.items()})
    for family, (large_gib, sizes) in _FAMILIES.items():
        table.update({f"db.{family}.{size}": large_gib * _SIZE_FACTOR[size] for size in sizes})
    return table


INSTANCE_CLASS_GIB: dict[str, float] = _class_table()


def instance_class_memory(instance_class: str) -> int:
    """Approximate ``DBInstanceClassMemory`` (bytes) of an RDS class.

    AWS does not publish it: it is the class's memory less what the OS and RDS's own processes
    keep. We take off 256 MiB plus 3 % of the memory. Against ``SHOW max_connections`` read
    on real default instances (db.t2.small 198, db.t2.medium 413, db.t2.large and db.m4.large
    856, db.r4.large 1660) this gives 190, 408, 846 and 1638: a few per cent low, never high,
    which is the safe side for a budget. Read the real value (``lambdapool check`` does) when
    it matters.
    """
    try:
        gib = INSTANCE_CLASS_GIB[instance_class.strip().lower()]
    except KeyError:
        families = sorted({name.rsplit(".", 1)[0] for name in INSTANCE_CLASS_GIB})
        raise ConfigError(
            f"instance class {instance_class!r} is not in lambdapool's table; give the database's "
            f"max_connections instead (--max-connections N; SHOW max_connections says it), or a class of "
            f"{', '.join(families)} (e.g. db.r7g.large)"
        ) from None
    memory = int(gib * _GIB)
    return memory - (256 * _MIB + memory * 3 // 100)


def default_max_connections(instance_class: str) -> int:
    """RDS for PostgreSQL's default ``max_connections`` for ``instance_class`` (approximate)."""
    return min(instance_class_memory(instance_class) // _BYTES_PER_CONNECTION, _RDS_CONNECTION_CEILING)


_FORMULA = re.compile(r"\{DBInstanceClassMemory/(\d+)\}")
_LEAST = re.compile(r"LEAST\(\s*(.+?)\s*,\s*(.+?)\s*\)")


def max_connections_from_parameter(value: str | None, instance_class: str) -> int:
    """Evaluate a parameter group's ``max_connections`` (a number or RDS's formula).

    ``None`` (not set in the group) means RDS's default for the class.
    """
    if value is None or not value.strip():
        return default_max_connections(instance_class)
    text = value.replace(" ", "")
    if text.isdigit():
        return int(text)

    def term(t: str) -> int:
        if t.isdigit():
            return int(t)
        formula = _FORMULA.fullmatch(t)
        if not formula:
            raise ValueError(t)
        return instance_class_memory(instance_class) // int(formula.group(1))

    try:
        least = _LEAST.fullmatch(text)
        return min(term(least.group(1)), term(least.group(2))) if least else term(text)
    except ValueError:
        raise ConfigError(
            f"max_connections parameter {value!r} is neither a number nor RDS's "
            "LEAST({DBInstanceClassMemory/N},M) formula; pass --max-connections"
        ) from None


def _positive(setting: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{setting} must be an integer >= {minimum}, got {value!r}")
    return value


class BudgetError(ConfigError):
    """The connections asked for do not fit under the database's limit; says by how much and what to change."""

    __module__ = "lambdapool.tools.budget"


@dataclass(frozen=True)
class Limits:
    """The database's connection limit and the slots that are not the functions' to use.

    ``admin`` defaults to 2 because on RDS the master user cannot use the superuser slots:
    keep room for one psql session and one migration.
    """

    max_connections: int
    superuser_reserved: int = 3
    replication: int = 0
    admin: int = 2
    instance_class: str | None = None  # where max_connections came from, when it did

    def __post_init__(self) -> None:
        _positive("max_connections", self.max_connections)
        _positive("superuser_reserved", self.superuser_reserved, 0)
        _positive("replication", self.replication, 0)
        _positive("admin", self.admin, 0)

    @property
    def reserved(self) -> int:
        return self.superuser_reserved + self.replication + self.admin

    @property
    def usable(self) -> int:
        return self.max_connections - self.reserved

    def arithmetic(self) -> str:
        return (
            f"usable = max_connections {self.max_connections} - superuser_reserved {self.superuser_reserved}"
            f" - replication {self.replication} - admin {self.admin} = {self.usable}"
        )


@dataclass(frozen=True)
class Function:
    """A function that shares the database.

    ``concurrency``: reserved concurrency (Lambda) or max instances (Cloud Functions).
    ``connections``: connections per process (``max_per_instance``; 1 on Lambda).
    ``processes``: Python processes per environment (Lambda Managed Instances; else 1).
    ``pooler``: how it reaches the database; ``None`` means the plan's pooler.
    ``managed``: a Lambda Managed Instances function; ``concurrency`` is then its environments.
    """

    name: str
    concurrency: int
    connections: int = 1
    processes: int = 1
    pooler: str | None = None
    managed: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a function needs a name")
        _positive(f"{self.name}: concurrency", self.concurrency)
        _positive(f"{self.name}: connections", self.connections)
        _positive(f"{self.name}: processes", self.processes)
        if self.pooler is not None and self.pooler not in POOLERS:
            raise ConfigError(f"{self.name}: pooler must be one of {', '.join(POOLERS)}, got {self.pooler!r}")

    @property
    def per_environment(self) -> int:
        return self.processes * self.connections

    @property
    def fan_out(self) -> int:
        return self.concurrency * self.per_environment

    def arithmetic(self) -> str:
        parts = [f"{self.concurrency} environments" if self.managed else str(self.concurrency)]
        if self.processes != 1 or self.managed:
            parts.append(f"{self.processes} processes")
        parts.append(f"{self.connections} conn")
        return f"{self.name} {' x '.join(parts)} = {self.fan_out}"


@dataclass(frozen=True)
class Consumer:
    """Something that opens backends: a pooler (its cap) or a direct function (its fan-out)."""

    name: str
    connections: int
    arithmetic: str
    function: Function | None = None


@dataclass(frozen=True)
class Tally:
    """Consumers against the usable slots; ``over`` > 0 means the budget does not fit."""

    limits: Limits
    consumers: tuple[Consumer, ...]

    @property
    def used(self) -> int:
        return sum(c.connections for c in self.consumers)

    @property
    def over(self) -> int:
        return self.used - self.limits.usable

    @property
    def fits(self) -> bool:
        return self.over <= 0

    def breaker(self) -> Consumer | None:
        """The consumer at which the running sum first passes ``usable`` (in the given order)."""
        running = 0
        for consumer in self.consumers:
            running += consumer.connections
            if running > self.limits.usable:
                return consumer
        return None

    def lines(self) -> list[str]:
        out = [self.limits.arithmetic()]
        out += [f"  {c.arithmetic}" for c in self.consumers]
        verdict = "fits" if self.fits else f"OVER by {self.over}"
        out.append(f"used = {self.used} of {self.limits.usable} usable: {verdict}")
        return out

    def advice(self, through: str = "a pooler (--pooler rds-proxy or pgbouncer)") -> str:
        """What to change so that it fits (only meaningful when it does not); ``through`` names
        the pooler a direct function could be routed through, in the caller's terms."""
        breaker = self.breaker()
        fix = []
        if all(c.function is not None for c in self.consumers):  # a percent-sized pooler would grow too
            needed = self.limits.max_connections + self.over
            fix.append(f"raise max_connections to {needed} (or a larger instance class)")
        if breaker is not None and breaker.function is not None:
            fn = breaker.function
            room = breaker.connections - self.over
            largest = room // fn.per_environment
            route = f"route {fn.name} through {through}"
            if fn.managed:
                lower = (
                    f"lower {fn.name}'s execution environments from {fn.concurrency} to {largest} "
                    "(MaxExecutionEnvironments in its scaling config, or its capacity provider's MaxVCpuCount)"
                )
                processes = room // (fn.concurrency * fn.connections)
                if 1 <= processes < fn.processes:
                    route = (
                        f"lower {fn.name}'s PerExecutionEnvironmentMaxConcurrency from {fn.processes} to "
                        f"{processes}; or {route}"
                    )
            else:
                lower = f"lower {fn.name}'s reserved concurrency from {fn.concurrency} to {largest}"
            fix = [lower, route, *fix] if largest >= 1 else [route, *fix]
        elif breaker is not None:
            fix.insert(0, f"lower {breaker.name}'s connection cap by {self.over}")
        return "; or ".join(fix)

    def check(self) -> None:
        """Raise :class:`BudgetError` if it does not fit."""
        if self.fits:
            return
        breaker = self.breaker()
        who = f"{breaker.name} breaks the budget: " if breaker else ""
        raise BudgetError(
            f"{who}the connections overflow by {self.over}: {' + '.join(c.arithmetic for c in self.consumers)}"
            f" = {self.used}, but only {self.limits.usable} are usable ({self.limits.arithmetic()}). "
            f"To fit, {self.advice()}."
        )


def tally(limits: Limits, consumers: Iterable[Consumer]) -> Tally:
    return Tally(limits, tuple(consumers))


def direct_consumer(fn: Function) -> Consumer:
    return Consumer(fn.name, fn.fan_out, f"{fn.arithmetic()} (direct)", fn)


@dataclass(frozen=True)
class RdsProxySettings:
    """The proxy target group's ConnectionPoolConfigurationInfo numbers.

    The proxy opens at most ``max_connections x MaxConnectionsPercent / 100`` backends; rounding
    the percentage down keeps that under the share even if the proxy rounds its cap up.
    ``MaxIdleConnectionsPercent`` is half of it, AWS's own default ratio (100 / 50): idle backends
    kept warm for the next burst, given back when the traffic is gone.
    """

    max_connections_percent: int
    max_idle_connections_percent: int
    cap: int

    @classmethod
    def for_share(cls, share: int, max_connections: int) -> RdsProxySettings:
        percent = min(100, share * 100 // max_connections)
        if percent < 1:
            raise BudgetError(
                f"RDS Proxy needs MaxConnectionsPercent >= 1, but its share of {share} connections is "
                f"{share * 100 / max_connections:.2f} % of max_connections {max_connections}; "
                "keep fewer slots in reserve or use PgBouncer, whose cap is a count"
            )
        return cls(percent, percent // 2, max_connections * percent // 100)


@dataclass(frozen=True)
class PgBouncerSettings:
    """pgbouncer.ini numbers for one PgBouncer with one database/user pool.

    ``max_db_connections`` is the hard cap on backends to the database;
    ``default_pool_size`` the same number (one user), ``reserve_pool_size`` 0 so that nothing
    is added on top; ``max_client_conn`` is the functions' whole fan-out, so that no function
    instance is turned away by PgBouncer itself.
    """

    default_pool_size: int
    max_db_connections: int
    max_client_conn: int
    reserve_pool_size: int = 0


@dataclass(frozen=True)
class Plan:
    """Settings that keep the fan-out under the limit (see :func:`plan`)."""

    limits: Limits
    pooler: str
    poolers: int
    functions: tuple[Function, ...]
    tally: Tally
    rds_proxy: RdsProxySettings | None = None
    pgbouncer: PgBouncerSettings | None = None
    largest_concurrency: dict[str, int] = field(default_factory=dict)

    def pooled(self) -> tuple[Function, ...]:
        return tuple(f for f in self.functions if (f.pooler or self.pooler) != "direct")

    def lines(self) -> list[str]:
        out = self.tally.lines()
        out += [f"  client: {f.arithmetic()} through {f.pooler or self.pooler}" for f in self.pooled()]
        if self.rds_proxy:
            p = self.rds_proxy
            out.append(
                f"RDS Proxy: MaxConnectionsPercent {p.max_connections_percent}, MaxIdleConnectionsPercent "
                f"{p.max_idle_connections_percent} (cap {p.cap} backends per proxy)"
            )
        if self.pgbouncer:
            b = self.pgbouncer
            out.append(
                f"PgBouncer: default_pool_size {b.default_pool_size}, max_db_connections {b.max_db_connections}, "
                f"max_client_conn {b.max_client_conn}, reserve_pool_size {b.reserve_pool_size}"
            )
        managed = {f.name for f in self.functions if f.managed}
        for name, largest in self.largest_concurrency.items():
            what = "execution environments" if name in managed else "reserved concurrency"
            out.append(f"direct: {name} fits up to {what} {largest}")
        return out

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "max_connections": self.limits.max_connections,
            "instance_class": self.limits.instance_class,
            "superuser_reserved": self.limits.superuser_reserved,
            "replication": self.limits.replication,
            "admin": self.limits.admin,
            "usable": self.limits.usable,
            "pooler": self.pooler,
            "poolers": self.poolers,
            "used": self.tally.used,
            "functions": [
                {
                    "name": f.name,
                    "pooler": f.pooler or self.pooler,
                    "concurrency": f.concurrency,
                    "connections": f.connections,
                    "processes": f.processes,
                    "managed_instances": f.managed,
                    "fan_out": f.fan_out,
                    **(
                        {"largest_concurrency": self.largest_concurrency[f.name]}
                        if f.name in self.largest_concurrency
                        else {}
                    ),
                }
                for f in self.functions
            ],
        }
        if self.rds_proxy:
            out["rds_proxy"] = {
                "max_connections_percent": self.rds_proxy.max_connections_percent,
                "max_idle_connections_percent": self.rds_proxy.max_idle_connections_percent,
                "cap": self.rds_proxy.cap,
            }
        if self.pgbouncer:
            b = self.pgbouncer
            out["pgbouncer"] = {
                "default_pool_size": b.default_pool_size,
                "max_db_connections": b.max_db_connections,
                "max_client_conn": b.max_client_conn,
                "reserve_pool_size": b.reserve_pool_size,
            }
        return out


def _validate(functions: Sequence[Function], pooler: str, poolers: int, limits: Limits) -> None:
    if pooler not in POOLERS:
        raise ConfigError(f"pooler must be one of {', '.join(POOLERS)}, got {pooler!r}")
    _positive("poolers", poolers)
    if not functions:
        raise ConfigError("a plan needs at least one function (--function NAME=CONCURRENCY)")
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise ConfigError(f"function names must be unique, got {names}")
    kinds = {f.pooler or pooler for f in functions} - {"direct"}
    if len(kinds) > 1:
        raise ConfigError(f"one plan sizes one kind of pooler, got {sorted(kinds)}")
    if limits.usable < 1:
        raise BudgetError(
            f"nothing is left for functions: {limits.arithmetic()}; raise max_connections or reserve fewer slots"
        )


def plan(limits: Limits, functions: Sequence[Function], pooler: str = "rds-proxy", poolers: int = 1) -> Plan:
    """Pooler settings (and direct-mode concurrency limits) that keep the fan-out under the limit.

    Functions whose pooler is ``direct`` count with their whole fan-out; what they leave is
    split evenly between the ``poolers`` pooler instances (several PgBouncers, or several
    proxies on one database). Raises :class:`BudgetError` when that cannot fit.
    """
    _validate(functions, pooler, poolers, limits)
    direct = [f for f in functions if (f.pooler or pooler) == "direct"]
    pooled = [f for f in functions if (f.pooler or pooler) != "direct"]
    consumers = [direct_consumer(f) for f in direct]
    tally(limits, consumers).check()

    rds_proxy = pgbouncer = None
    if pooled:
        kind = pooled[0].pooler or pooler
        left = limits.usable - sum(f.fan_out for f in direct)
        share = left // poolers
        if share < 1:
            raise BudgetError(
                f"direct functions ({', '.join(f.name for f in direct)}) use {limits.usable - left} of "
                f"{limits.usable} usable connections, leaving {left} for {poolers} {kind} instance(s); lower "
                "the direct functions' reserved concurrency or route them through the pooler too"
            )
        if kind == "rds-proxy":
            rds_proxy = RdsProxySettings.for_share(share, limits.max_connections)
            cap = rds_proxy.cap
        else:
            pgbouncer = PgBouncerSettings(share, share, sum(f.fan_out for f in pooled))
            cap = share
        for i in range(poolers):
            label = kind if poolers == 1 else f"{kind} #{i + 1}"
            consumers.append(Consumer(label, cap, f"{label} cap = {cap}"))
    final = tally(limits, consumers)
    final.check()  # rounding only ever goes down; this guards the invariant

    room = limits.usable - final.used
    largest = {f.name: f.concurrency + room // f.per_environment for f in direct}
    return Plan(limits, pooler, poolers, tuple(functions), final, rds_proxy, pgbouncer, largest)
