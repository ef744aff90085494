"""Fan-out scenarios: one handler, one pooler, one burst, and what the database saw.

This is what ``lambdapool emulate``, ``lambdapool demo`` and ``benchmarks/bench_fanout.py``
share. A scenario sets up what its pooler needs (nothing for ``direct``; a
:class:`~lambdapool.tools.proxy.LocalProxy` capped at ``cap`` for ``local``; a throwaway PgBouncer
whose pool is ``cap`` for ``pgbouncer``; moto's server holding an RDS Proxy whose endpoint is
an IAM- and TLS-checking local proxy for ``rds-proxy``; a local proxy taking the access tokens of
a :class:`~lambdapool.testing.MetadataServer`, over TLS, for ``cloud-sql``, Cloud SQL's IAM
login), points the handler at it through
``LAMBDAPOOL_*`` variables, runs the burst on a :class:`LambdaFleet` (forked environments, for
width; a :class:`CloudFunctionFleet` for Cloud Functions) and/or a :class:`LightFleet`, samples
the database's backends at 50 Hz, and adds the scenario to a :class:`Report`.

The *limit* reported is what the handlers can really have: ``max_connections``, less the
slots reserved for superusers (when the handlers' role is not one), less the sampler's own
connection. The embedded database reserves no slots, so its handlers meet Postgres's own
"sorry, too many clients already" at ``max_connections - 1``.

Rows added to the emulator's summary: ``refused`` (failures whose message is the server's
"too many clients" / "slots are reserved"), ``timed_out`` (the other failures whose connect ran
out of time: a server busy forking backends only to refuse them answers late), ``connects``
and ``reconnects`` (from the SDK's per-invocation metric lines, so any handler built on
``lambdapool.Database`` reports them),
``cap``, ``pooler_peak`` (the pooler's own count of its server connections) and ``pinned``
(sessions the local proxy had to pin).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import math
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lambdapool.errors import ConfigError
from lambdapool.tools.backend_count import client_backends
from lambdapool.tools.emulator import (
    BackendSampler,
    CloudFunctionFleet,
    InvocationResult,
    LambdaFleet,
    LightFleet,
    Report,
    Scenario,
)
from lambdapool.tools.emulator.handler_ref import HandlerRef
from lambdapool.tools.waiting import WaitTimeout, wait_for

POOLERS = ("direct", "local", "pgbouncer", "rds-proxy", "cloud-sql")
PROXY_NAME = "lambdapool-emulated-proxy"
REGION = "us-east-1"
REFUSALS = ("too many clients", "connection slots are reserved")
TIMEOUTS = ("timeout expired", "timed out", "no time left before the deadline")
DEMO_HANDLER = Path(__file__).with_name("demo_handler.py")

# (scenario name, done, total, failures, backends now) every few tenths of a second
Progress = Callable[[str, int, int, int, int], None]


# What brings a module that the testing extra does not (the demo extra brings all the demo needs).
_NOT_IN_TESTING = {"matplotlib": "matplotlib", "functions_framework": "'lambdapool[gcp]'"}


def require(*modules: str, extra: str = "testing") -> None:
    """Fail early, in one line, when a module the command needs is not installed, naming what
    to install: the user-facing ``extra`` (``testing`` for emulate, ``demo`` for the demo), and
    what brings a module that extra does not."""
    absent = [m for m in ("psycopg", "awslambdaric", *modules) if importlib.util.find_spec(m) is None]
    if not absent:
        return
    others = {} if extra == "demo" else {m: _NOT_IN_TESTING[m] for m in absent if m in _NOT_IN_TESTING}
    install = [f"'lambdapool[{extra}]'"] * (len(others) < len(absent)) + list(others.values())
    raise ConfigError(f"{', '.join(absent)} not installed: pip install {' '.join(install)}")


@contextlib.contextmanager
def demo_handler() -> Iterator[HandlerRef]:
    """The bundled demo handler, copied to a task root of its own (so that nothing beside it
    in the package, such as ``lambdapool/tools/testing/moto.py``, can shadow a module it imports)."""
    root = Path(tempfile.mkdtemp(prefix="lambdapool-demo-"))
    try:
        shutil.copy(DEMO_HANDLER, root / "demo_handler.py")
        yield HandlerRef(root / "demo_handler.py", "handler")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Target:
    """The database under load: ``dsn`` for the handlers, ``monitor_dsn`` for the sampler."""

    dsn: str
    monitor_dsn: str
    max_connections: int
    limit: int  # connections the handlers' role can hold (see the module docstring)
    description: str

    def __repr__(self) -> str:  # never the DSNs: they may hold a password
        return f"<Target {self.description} limit={self.limit}>"

    @property
    def user(self) -> str:
        return _conninfo(self.dsn).get("user") or "postgres"

    def backends(self) -> int:
        """Client backends now, the query's own excluded."""
        return client_backends(self.monitor_dsn)

    def wait_quiet(self, baseline: int, timeout: float = 15.0) -> None:
        """Wait (bounded) until the backends of killed instances are gone, so the next
        scenario's timeline starts from the same floor (if they linger, it starts anyway)."""
        try:
            wait_for(lambda: self.backends() <= baseline, "backends back to the baseline", timeout, interval=0.05)
        except WaitTimeout:
            pass


def _conninfo(dsn: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    return {k: str(v) for k, v in conninfo_to_dict(dsn).items()}


@contextlib.contextmanager
def embedded_database(max_connections: int = 20, role: str = "app") -> Iterator[Target]:
    """A throwaway Postgres with ``max_connections`` and an ordinary (non-superuser) role for
    the handlers: a superuser could use reserved slots that a real application's role cannot."""
    from lambdapool.tools.testing.postgres import PostgresServer

    if max_connections < 3:
        raise ConfigError(f"--max-connections {max_connections}: at least 3 (the sampler needs one)")
    pg = PostgresServer(max_connections=max_connections, settings={"superuser_reserved_connections": 0})
    pg.start()
    try:
        # PostgreSQL 15 lets no ordinary role create in `public`: the role gets a schema of its
        # own, named after it, so first on the default search_path ("$user", public).
        pg.psql(f'CREATE ROLE "{role}" LOGIN; CREATE SCHEMA AUTHORIZATION "{role}"')
        dsn = f"postgresql://{quote(role, safe='')}@{pg.host}:{pg.port}/{pg.database}"
        yield Target(
            dsn, pg.dsn, max_connections, max_connections - 1, f"embedded Postgres (max_connections={max_connections})"
        )
    finally:
        pg.stop()


def run_setup(target: Target, path: Path) -> None:
    """Run the SQL script at ``path`` once, as the database's owner (the throwaway database's
    superuser, or ``--dsn``'s user), before any burst: tables, grants, seed rows."""
    import psycopg

    try:
        script = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--setup {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        with psycopg.connect(target.monitor_dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(script)  # no parameters: the simple protocol, many statements
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise ConfigError(
            f"--setup {path}: the script failed ({type(exc).__name__}: {detail}); fix it and run again"
        ) from None


def existing_database(dsn: str) -> Target:
    """A running database named by ``dsn`` (handlers and sampler both use it)."""
    import psycopg

    from lambdapool._config import redact_dsn

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            max_connections = int(conn.execute("SHOW max_connections").fetchall()[0][0])
            reserved = int(conn.execute("SHOW superuser_reserved_connections").fetchall()[0][0])
            superuser = conn.info.parameter_status("is_superuser") == "on"
    except psycopg.Error as exc:
        raise ConfigError(
            f"--dsn {redact_dsn(dsn)}: cannot connect ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'})"
        ) from None
    limit = max_connections - (0 if superuser else reserved) - 1
    return Target(dsn, dsn, max_connections, limit, f"{redact_dsn(dsn)} (max_connections={max_connections})")


def default_cap(target: Target) -> int:
    """A pooler cap well under the limit (two thirds), leaving room for everything else."""
    return max(1, target.limit * 2 // 3)


@dataclass(frozen=True)
class Burst:
    """``invocations`` over Lambda environments, ``concurrency`` in flight (and at most that
    many environments); ``light`` adds that many in-process instances, each invoked as many
    rounds as the environments are (``light * ceil(invocations / concurrency)`` invocations).
    With ``max_concurrency`` the environments are Lambda Managed Instances of that many worker
    processes each: ``ceil(concurrency / max_concurrency)`` environments at most. On ``platform``
    ``gcp`` they are Cloud Functions instances (functions-framework servers) taking
    ``max_concurrency`` requests at once each (one by default), and ``signature`` says how the
    function is called (``http``: the event POSTed as JSON; ``cloudevent``)."""

    invocations: int = 200
    concurrency: int = 20
    light: int = 0
    timeout: float = 10.0  # the functions' timeout: a connection wait never runs past it
    event: Mapping[str, Any] = field(default_factory=dict)
    max_concurrency: int | None = None
    platform: str = "aws"
    signature: str = "http"

    def validate(self) -> Burst:
        for name in ("invocations", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} {getattr(self, name)}: must be at least 1")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError(f"--max-concurrency {self.max_concurrency}: processes per environment, at least 1")
        if self.light < 0:
            raise ConfigError(f"--light {self.light}: must be 0 or more")
        if self.timeout <= 0:
            raise ConfigError(f"--timeout {self.timeout}: must be more than 0 seconds")
        if self.platform == "gcp" and self.light:
            raise ConfigError("--light: light instances run Lambda handlers in-process, not Cloud Functions")
        return self

    @property
    def light_invocations(self) -> int:
        return self.light * math.ceil(self.invocations / self.concurrency) if self.light else 0

    @property
    def total(self) -> int:
        return self.invocations + self.light_invocations

    def events(self, count: int) -> list[dict[str, Any]]:
        return [{**self.event, "n": i} for i in range(count)]

    @property
    def environments(self) -> int:
        """The most Lambda environments the burst can use."""
        return math.ceil(self.concurrency / (self.max_concurrency or 1))

    def describe(self) -> str:
        """ "20 Lambda environments", or "4 Managed Instances environments x 16 processes"."""
        if self.platform == "gcp":
            each = f" x {self.max_concurrency} concurrent requests" if self.max_concurrency else ""
            return f"{self.environments} Cloud Functions instances{each}"
        if self.max_concurrency is None:
            return f"{self.concurrency} Lambda environments"
        return f"{self.environments} Managed Instances environments x {self.max_concurrency} processes"


@dataclass
class _Pooler:
    """What one pooler gives the handlers (``env``) and tells about itself afterwards."""

    env: dict[str, str]
    cap: int | None
    stats: Callable[[], dict[str, Any]] = dict
    preload: tuple[str, ...] = ()


@contextlib.contextmanager
def pooler(
    kind: str, target: Target, *, cap: int, budget_guard: bool = True, metadata: Any = None
) -> Iterator[_Pooler]:
    """Start what ``kind`` needs in front of ``target``; yields the handlers' settings.

    ``metadata``: the started MetadataServer whose tokens ``cloud-sql`` takes (default: one of its own).
    """
    if kind not in POOLERS:
        raise ConfigError(f"--pooler {kind!r}: not one of {', '.join(POOLERS)}")
    if cap < 1:
        raise ConfigError(f"--cap {cap}: must be at least 1")
    if kind == "direct":
        env = _sdk_env(target.dsn, "direct")
        env["LAMBDAPOOL_BUDGET_GUARD"] = "true" if budget_guard else "false"
        yield _Pooler(env, None)
    elif kind == "local":
        from lambdapool.tools.proxy import LocalProxy

        with LocalProxy(backend=target.dsn, max_backends=cap) as proxy:
            yield _Pooler(_sdk_env(proxy.dsn, "local"), cap, lambda: _proxy_stats(proxy))
    elif kind == "pgbouncer":
        with _pgbouncer(target, cap) as (pgb, sampler):
            yield _Pooler(_sdk_env(pgb.dsn, "pgbouncer"), cap, lambda: {"pooler_peak": sampler.peak})
    elif kind == "cloud-sql":
        with _cloud_sql(target, cap, metadata) as pooled:
            yield pooled
    else:
        with _rds_proxy(target, cap) as pooled:
            yield pooled


def _sdk_env(dsn: str, kind: str) -> dict[str, str]:
    # DATABASE_URL too, for handlers that read it themselves; metric lines count reconnects.
    return {"LAMBDAPOOL_DSN": dsn, "DATABASE_URL": dsn, "LAMBDAPOOL_POOLER": kind, "LAMBDAPOOL_EMIT_METRICS": "true"}


def _proxy_stats(proxy: Any) -> dict[str, Any]:
    stats = proxy.stats()
    return {"pooler_peak": stats["peak_backends"], "pinned": stats["pinned_sessions"]}


@dataclass(frozen=True)
class _DsnOnly:
    """What PgBouncer needs of its backend: a DSN (here the handlers' role, not the superuser)."""

    dsn: str


@contextlib.contextmanager
def _pgbouncer(target: Target, cap: int) -> Iterator[tuple[Any, Any]]:
    from lambdapool.tools.emulator import PgBouncerSampler
    from lambdapool.tools.testing.pgbouncer import PgBouncer

    user = target.user
    with (
        PgBouncer(
            _DsnOnly(target.dsn), default_pool_size=cap, max_client_conn=10_000, auth_user=user, admin_users=(user,)
        ) as pgb,
        PgBouncerSampler(pgb.admin_dsn) as sampler,
    ):
        yield pgb, sampler


@contextlib.contextmanager
def _rds_proxy(target: Target, cap: int) -> Iterator[_Pooler]:
    """RDS Proxy as the SDK meets it in AWS: looked up by name (moto's server), IAM tokens
    signed with test keys, TLS verified against the proxy's certificate."""
    try:
        from lambdapool.tools.testing.moto import (
            apply_environment,
            create_db_proxy,
            fake_aws_environment,
            moto_server,
            restore_environment,
            signing_keys,
        )
    except ImportError as exc:  # pragma: no cover - the testing extra brings moto
        raise ConfigError(
            f"--pooler rds-proxy needs moto[server] and boto3 ({exc}): pip install 'lambdapool[testing]'"
        ) from None
    from lambdapool.tools.proxy import LocalProxy

    aws = fake_aws_environment(REGION)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server: no line per request on stderr
    saved = apply_environment(aws)  # create_db_proxy's boto3 clients sign with these
    try:
        with (
            moto_server() as url,
            LocalProxy(
                backend=target.dsn,
                max_backends=cap,
                auth="iam",
                iam_credentials=signing_keys(),
                region=REGION,
                tls=True,
                require_tls=True,
            ) as proxy,
        ):
            create_db_proxy(PROXY_NAME, proxy.host, region=REGION, endpoint_url=url)
            # No host: the SDK finds the proxy by name; the port overrides RDS Proxy's 5432.
            dbname = _conninfo(target.dsn).get("dbname", "postgres")
            dsn = f"postgresql://{quote(target.user, safe='')}@:{proxy.port}/{quote(dbname, safe='')}"
            env = {
                **aws,
                **_sdk_env(dsn, "rds-proxy"),
                "LAMBDAPOOL_PROXY_NAME": PROXY_NAME,
                "LAMBDAPOOL_IAM_AUTH": "true",
                "LAMBDAPOOL_REGION": REGION,
                "LAMBDAPOOL_AWS_ENDPOINT_URL": url,
                "LAMBDAPOOL_SSL_CA_FILE": str(proxy.ca_file),
            }
            yield _Pooler(env, cap, lambda: _proxy_stats(proxy), preload=("boto3",))
    finally:
        restore_environment(saved)


@contextlib.contextmanager
def _cloud_sql(target: Target, cap: int, metadata: Any) -> Iterator[_Pooler]:
    """Cloud SQL with IAM database login: the proxy takes the metadata server's tokens, over TLS."""
    from lambdapool.tools.proxy import LocalProxy
    from lambdapool.tools.testing.metadata import MetadataServer

    with contextlib.ExitStack() as stack:
        if metadata is None:
            metadata = stack.enter_context(MetadataServer())
        proxy = stack.enter_context(
            LocalProxy(backend=target.dsn, max_backends=cap, auth="cloud-sql-iam", metadata=metadata, tls=True)
        )
        env = {**_sdk_env(proxy.dsn, "cloud-sql"), "LAMBDAPOOL_IAM_AUTH": "true", **metadata.environ}
        yield _Pooler(env, cap, lambda: _proxy_stats(proxy))


def scenario_name(kind: str, budget_guard: bool = True) -> str:
    return "direct (no guard)" if kind == "direct" and not budget_guard else kind


def _failed_with(result: Any, reasons: tuple[str, ...]) -> bool:
    return not result.ok and any(why in (result.error_message or "") for why in reasons)


def unexpected_failures(results: Sequence[InvocationResult]) -> list[InvocationResult]:
    """The failures of one scenario that a burst against a limit does not explain: all but the
    database's refusals (and connects that ran out of time where the server was refusing others:
    a server busy forking backends only to refuse them answers late); throttles are not failures."""
    refused = any(_failed_with(r, REFUSALS) for r in results)
    reasons = REFUSALS + TIMEOUTS if refused else REFUSALS
    return [r for r in results if not r.ok and not r.throttled and not _failed_with(r, reasons)]


def run_scenario(
    report: Report,
    handler: HandlerRef,
    kind: str,
    target: Target,
    burst: Burst,
    *,
    cap: int | None = None,
    budget_guard: bool = True,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    progress: Progress | None = None,
    metadata: Any = None,
) -> Scenario:
    """Run ``burst`` through pooler ``kind`` against ``target``; add the scenario to ``report``.

    ``env`` adds the handlers' own variables (they win over the pooler's). ``progress`` is
    called a few times a second from a thread of its own while the burst runs. ``metadata``: the
    MetadataServer ``cloud-sql`` takes tokens from (default: one of the scenario's own).
    """
    burst.validate()
    name = name or scenario_name(kind, budget_guard)
    cap = cap if cap is not None else default_cap(target)
    baseline = target.backends()
    with pooler(kind, target, cap=cap, budget_guard=budget_guard, metadata=metadata) as pooled:
        fleets = _Fleets(handler, {**pooled.env, **(env or {})}, burst, pooled.preload)
        try:
            fleets.start()  # the fork server's imports before the clock starts: the chart shows the burst
            with (
                BackendSampler(target.monitor_dsn, interval=0.02) as sampler,
                _Ticker(name, burst.total, fleets, sampler, progress),
            ):
                results = fleets.run()
        finally:
            metrics = fleets.close()
        pooler_stats = pooled.stats()
    target.wait_quiet(baseline)
    extra = {
        "refused": sum(_failed_with(r, REFUSALS) for r in results),
        "timed_out": sum(_failed_with(r, TIMEOUTS) and not _failed_with(r, REFUSALS) for r in results),
        **metrics,
        "cap": pooled.cap,
        "pooler_peak": pooler_stats.get("pooler_peak"),
        "pinned": pooler_stats.get("pinned"),
    }
    return report.add(name, results, sampler, limit=target.limit, **extra)


class _Fleets:
    """The burst's Lambda environments (or Cloud Functions instances) and (optionally) light
    instances, run side by side."""

    def __init__(self, handler: HandlerRef, env: dict[str, str], burst: Burst, preload: tuple[str, ...]) -> None:
        self.burst = burst
        self.lambda_fleet: LambdaFleet | CloudFunctionFleet
        if burst.platform == "gcp":
            self.lambda_fleet = CloudFunctionFleet(
                handler.path,
                handler.function,
                signature=burst.signature,
                instances=burst.environments,
                concurrency=burst.max_concurrency or 1,
                env=env,
                queue_timeout=burst.timeout,
                timeout=burst.timeout,
            )
        else:
            # Environments are frozen between invocations, as on Lambda (never on Managed Instances,
            # whose environments run max_concurrency worker processes each, packed full first).
            self.lambda_fleet = LambdaFleet(
                handler.handler,
                handler.task_root,
                env=env,
                reserved_concurrency=burst.concurrency,
                timeout=burst.timeout,
                max_concurrency=burst.max_concurrency,
                fork_server=True,
                preload=("psycopg", "lambdapool", *preload),
            )
        self.light_fleet: LightFleet | None = None
        if burst.light:
            from lambdapool.tools.emulator import module_factory

            self.light_fleet = LightFleet(
                module_factory(handler.task_root, handler.handler),
                reserved_concurrency=burst.light,
                timeout=burst.timeout,
                env=env,
            )
        self._light_stdout = io.StringIO()
        self._started = False

    def done(self) -> tuple[int, int]:
        """(invocations finished, of which failed) so far."""
        results = list(self.lambda_fleet.results) + (list(self.light_fleet.results) if self.light_fleet else [])
        return len(results), sum(not r.ok for r in results)

    def start(self) -> None:
        self.lambda_fleet.start()
        self._started = True
        if self.light_fleet is not None:
            self.light_fleet.start()

    def run(self) -> list[InvocationResult]:
        light: list[InvocationResult] = []
        thread = None
        if self.light_fleet is not None:
            thread = threading.Thread(target=lambda: light.extend(self._run_light()), name="lambdapool-light-burst")
            thread.start()
        results = self.lambda_fleet.burst(self.burst.events(self.burst.invocations), concurrency=self.burst.concurrency)
        if thread is not None:
            thread.join()
        return results + light

    def _run_light(self) -> list[InvocationResult]:
        assert self.light_fleet is not None
        # Light instances print their metric lines on this process's stdout: keep them.
        with contextlib.redirect_stdout(self._light_stdout):
            return self.light_fleet.burst(self.burst.events(self.burst.light_invocations), concurrency=self.burst.light)

    def close(self) -> dict[str, int]:
        """Read the SDK's metric lines (environments' logs, light instances' stdout), then
        close both fleets; returns ``connects`` and ``reconnects``."""
        lines: list[str] = []
        if self._started:  # log_dir exists once the fleet has started
            for log in sorted(self.lambda_fleet.log_dir.glob("*.log")):
                lines += log.read_text(errors="replace").splitlines()
        lines += self._light_stdout.getvalue().splitlines()
        self.lambda_fleet.close()
        if self.light_fleet is not None:
            self.light_fleet.close()
        return _count_metrics(lines)


def _count_metrics(lines: list[str]) -> dict[str, int]:
    totals = {"connects": 0, "reconnects": 0}
    for line in lines:
        if not line.startswith('{"_aws"'):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        totals["connects"] += int(record.get("Connects", 0))
        totals["reconnects"] += int(record.get("Reconnects", 0))
    return totals


class _Ticker:
    """Calls ``progress`` every 0.2 s while the burst runs, and once at the end."""

    def __init__(
        self, name: str, total: int, fleets: _Fleets, sampler: BackendSampler, progress: Progress | None
    ) -> None:
        self.name, self.total, self.fleets, self.sampler, self.progress = name, total, fleets, sampler, progress
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Ticker:
        if self.progress is not None:
            self._thread = threading.Thread(target=self._run, name="lambdapool-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._tick()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._tick()

    def _tick(self) -> None:
        assert self.progress is not None
        done, failed = self.fleets.done()
        timeline = self.sampler.timeline
        self.progress(self.name, done, self.total, failed, timeline[-1][1] if timeline else 0)


__all__ = [
    "POOLERS",
    "Burst",
    "HandlerRef",
    "Progress",
    "Target",
    "default_cap",
    "demo_handler",
    "embedded_database",
    "existing_database",
    "pooler",
    "require",
    "run_scenario",
    "run_setup",
    "scenario_name",
    "unexpected_failures",
]
