"""The fan-out and fault suites' parts: a small Postgres, a burst of process and light instances
running one handler, a sampler at 20 Hz or more, and the checks every test shares.

* ``fanout_pg``: a private Postgres with ``max_connections=30`` (27 ordinary slots), a
  non-superuser role ``app`` (superusers may take the reserved slots, so the load never connects
  as one), the ``fanout_runs`` table and ``fanout_attempt()`` (see handlers/fanout_handler.py).
* :func:`burst`: processes (``LambdaFleet`` on a fork server: real awslambdaric environments,
  frozen between invocations) and light instances (``LightFleet``: one ``Database`` each, in
  this process) invoked at the same time, with a ``BackendSampler`` on the server; optionally
  a fault injected mid-burst, whose window is recorded.
* :func:`check_runs`: no request id ran its statement twice (server log) or committed twice
  (table), and every successful invocation's row is there.
* :func:`failures_outside`: the strict rule for "could have been served".
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lambdapool.testing import wait_for
from lambdapool.tools.emulator import BackendSampler, InvocationResult, LambdaFleet, LightFleet, module_factory
from lambdapool.tools.testing.process import stop_process

HANDLERS = Path(__file__).parent / "handlers"
HANDLER = "fanout_handler.handler"
MAX_CONNECTIONS = 30
ORDINARY_SLOTS = MAX_CONNECTIONS - 3  # superuser_reserved_connections=3: the most a non-superuser gets
POOL_CAP = 20
MIN_SAMPLE_HZ = 20.0
PRELOAD = ("psycopg", "lambdapool")

SCHEMA = """
CREATE ROLE app LOGIN;
CREATE TABLE fanout_runs (request_id text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
GRANT INSERT, SELECT ON fanout_runs TO app;
CREATE FUNCTION fanout_attempt(rid text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  RAISE LOG 'fanout-attempt %', rid;  -- one server-log line per execution, committed or not
  RETURN rid;
END $$;
"""
_ATTEMPT = re.compile(r"LOG:\s+fanout-attempt (\S+)")

# What an invocation sees when its connection dies under a statement: the server's FATAL
# (AdminShutdown 57P01), a closed socket (OperationalError), the proxy's 08006 (OperationalError).
CONNECTION_LOST = {"AdminShutdown", "OperationalError", "ConnectionFailure"}


def lost_connection(r: InvocationResult) -> bool:
    """Did this invocation fail because its connection died under a statement?"""
    return r.error_type in CONNECTION_LOST


def need_awslambdaric() -> None:
    import importlib.util

    from lambdapool.tools.testing.pytest_plugin import missing

    if importlib.util.find_spec("awslambdaric") is None:
        missing("awslambdaric", "pip install awslambdaric (it is in the dev extra)")


@pytest.fixture
def fanout_pg(pg_factory):
    """Postgres with max_connections=30, the ``app`` role and the handler's table."""
    need_awslambdaric()
    pg = pg_factory(max_connections=MAX_CONNECTIONS)
    pg.psql(SCHEMA)
    return pg


def app_dsn(pg: Any) -> str:
    return f"postgresql://app@{pg.host}:{pg.port}/postgres"


@dataclass
class Fault:
    """When a fault was injected: ``start`` before the first action, ``end`` once it took effect
    (wall-clock seconds, as ``InvocationResult.started_at``/``ended_at``)."""

    start: float = 0.0
    end: float = 0.0


@dataclass
class BurstResult:
    """What one :func:`burst` gave: each fleet's results and counters, the sampler, the fault's
    window (the burst's shape, for the CLI and benchmarks, is ``lambdapool.tools.emulator.fanout.Burst``)."""

    processes: list[InvocationResult] = field(default_factory=list)
    light: list[InvocationResult] = field(default_factory=list)
    process_counters: dict[str, int] = field(default_factory=dict)
    light_counters: dict[str, int] = field(default_factory=dict)
    sampler: BackendSampler | None = None
    fault: Fault | None = None
    seconds: float = 0.0

    @property
    def results(self) -> list[InvocationResult]:
        return self.processes + self.light

    def failed(self) -> list[InvocationResult]:
        return [r for r in self.results if not r.ok]

    def describe_failures(self, limit: int = 5) -> str:
        bad = self.failed()
        kinds = Counter(r.error_type for r in bad)
        return f"{len(bad)} failed {dict(kinds)}: " + " | ".join((r.error_message or "")[:300] for r in bad[:limit])

    def figures(self) -> str:
        """One line for the log (``pytest -s``): what docs/fanout_suites.md quotes."""
        s, bad = self.sampler, self.failed()
        processes, light = self.process_counters.get("peak_instances", 0), self.light_counters.get("peak_instances", 0)
        out = (f"{len(self.results)} invocations in {self.seconds:.1f}s, {len(bad)} failed "
               f"{dict(Counter(r.error_type for r in bad))}; instances {processes} processes + {light} light; "
               f"server backends peak {s.peak if s else '?'} sampled at {s.rate_hz if s else 0:.0f} Hz")  # fmt: skip
        if self.fault is not None:
            out += f"; fault window {1000 * (self.fault.end - self.fault.start):.0f} ms"
        return out

    def last_stats(self) -> dict[str, dict[str, Any]]:
        """Each instance's ``db.stats()`` as of its last successful invocation."""
        last: dict[str, tuple[float, dict[str, Any]]] = {}
        for r in self.results:
            if r.ok and (r.instance_id not in last or r.ended_at >= last[r.instance_id][0]):
                last[r.instance_id] = (r.ended_at, r.payload["stats"])  # type: ignore[index]
        return {k: v for k, (_, v) in last.items()}

    def total(self, key: str) -> int:
        return int(sum(s[key] for s in self.last_stats().values()))


@contextmanager
def proxy_process(backend: str, max_backends: int) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    """The local proxy in a process of its own (``lambdapool proxy``), as it runs beside real
    functions: in this process it would share the GIL with a thousand light instances and the
    Runtime API, and a slow machine starved it. Yields its DSN and a reader of its ``SHOW STATS``."""
    import tempfile

    import psycopg

    from lambdapool._config import parse_dsn
    from lambdapool.tools.testing.postgres import free_port

    port = free_port()
    parts = parse_dsn(backend)
    dsn = f"postgresql://{parts.user}@127.0.0.1:{port}/{parts.dbname}"
    admin = f"postgresql://{parts.user}@127.0.0.1:{port}/lambdapool"
    cmd = [sys.executable, "-m", "lambdapool", "proxy", "--backend", backend, "--listen", f"127.0.0.1:{port}",
           "--max-backends", str(max_backends), "--status-interval", "0"]  # fmt: skip
    # stderr to a file, not a pipe nobody reads: a full pipe would block the proxy mid-burst
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True)

        def stats() -> dict[str, Any]:
            with psycopg.connect(
                admin, autocommit=True, cursor_factory=psycopg.ClientCursor, connect_timeout=5
            ) as conn:
                cur = conn.execute("SHOW STATS")
                return dict(zip([c.name for c in cur.description], cur.fetchone()))

        try:
            banner = proc.stdout.readline()  # type: ignore[union-attr]  # printed once it listens
            if "listening on" not in banner:
                proc.wait(10)
                errors.seek(0)
                raise RuntimeError(f"lambdapool proxy did not start: {banner}{errors.read()}")
            yield dsn, stats
        finally:
            stop_process(proc)
            proc.stdout.close()  # type: ignore[union-attr]


class LightFleetProcess:
    """A light fleet that runs each burst in a child process (tests/fanout/light_child.py), for
    the widest bursts; same ``burst`` and ``counters`` as LightFleet, read once the burst ends."""

    def __init__(self, env: Mapping[str, str], light: int, timeout: float = 60.0) -> None:
        self.env, self.reserved_concurrency, self.timeout = dict(env), light, timeout
        self.counters: dict[str, int] = {}

    def burst(self, evs: list[dict], concurrency: int) -> list[InvocationResult]:
        assert concurrency == self.reserved_concurrency
        spec = {"env": self.env, "light": concurrency, "timeout": self.timeout, "events": evs}
        out = subprocess.run([sys.executable, "-m", "tests.fanout.light_child"], input=json.dumps(spec),
                             capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-4000:]
        answer = json.loads(out.stdout)
        self.counters = answer["counters"]
        return [InvocationResult(**{k: v for k, v in r.items() if k != "throttled"}) for r in answer["results"]]


def events(count: int, **knobs: Any) -> list[dict[str, Any]]:
    return [dict(knobs) for _ in range(count)]


@contextmanager
def fleets(env: Mapping[str, str], *, processes: int, light: int, timeout: float = 60.0,
           preload: Sequence[str] = PRELOAD) -> Iterator[tuple[LambdaFleet, LightFleet | None]]:  # fmt: skip
    """A process fleet and (if ``light``) a light fleet running the handler with ``env``."""
    with ExitStack() as stack:
        pf = stack.enter_context(LambdaFleet(HANDLER, HANDLERS, env=dict(env), fork_server=True, preload=list(preload),
                                             reserved_concurrency=processes, timeout=timeout))  # fmt: skip
        lf = None
        if light:
            lf = stack.enter_context(LightFleet(module_factory(HANDLERS, HANDLER), env=dict(env),
                                                reserved_concurrency=light, timeout=timeout))  # fmt: skip
        yield pf, lf


def burst(
    pf: LambdaFleet,
    lf: LightFleet | None,
    process_events: list[dict],
    light_events: list[dict],
    *,
    sampler_dsn: str,
    fault: Callable[[], float | None] | None = None,
    fault_after: int = 0,
) -> BurstResult:
    """Run both fleets' events at once (processes ``len(set)`` wide: concurrency = fleet size),
    sampling the server's backends; with ``fault``, call it once ``fault_after`` invocations
    have ended and record its window: from the call to its return, or to the time it returns
    (when the fault took effect, before a downtime it then waits out)."""
    out = BurstResult()
    errors: list[BaseException] = []

    def run(name: str, fleet: Any, evs: list[dict]) -> None:
        try:
            setattr(out, name, fleet.burst(evs, concurrency=fleet.reserved_concurrency))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("processes", pf, process_events))]
    if lf is not None and light_events:
        threads.append(threading.Thread(target=run, args=("light", lf, light_events)))
    with BackendSampler(sampler_dsn) as sampler:
        t0 = time.monotonic()
        for t in threads:
            t.start()
        if fault is not None:
            wait_for(lambda: _ended(pf, lf) >= fault_after or not any(t.is_alive() for t in threads),
                     "the burst's progress before the fault", timeout=60, interval=0.005)  # fmt: skip
            out.fault = Fault(start=time.time())
            cut = fault()
            out.fault.end = time.time() if cut is None else cut
        for t in threads:
            t.join(180)
        out.seconds = time.monotonic() - t0
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a fleet's burst did not finish in 180 s"
    out.sampler = sampler
    out.process_counters = dict(pf.counters)
    out.light_counters = dict(lf.counters) if lf is not None else {}
    print("FIGURES", out.figures())
    return out


def _ended(pf: LambdaFleet, lf: LightFleet | None) -> int:
    return pf.counters["invocations"] + (lf.counters["invocations"] if lf is not None else 0)


def failures_outside(result: BurstResult, grace: float = 0.0) -> list[InvocationResult]:
    """Failures that could have been served: every failure except those of invocations in flight
    during the fault's window (started before it ended, ended after it began) whose connection
    was lost under them. ``grace`` widens the window's end (seconds) where a fault's effect
    outlasts the call that caused it; it is stated by each test that uses it."""
    assert result.fault is not None
    start, end = result.fault.start, result.fault.end + grace
    return [r for r in result.failed()
            if not (r.started_at <= end and r.ended_at >= start and lost_connection(r))]  # fmt: skip


def attempts_logged(pg: Any) -> Counter[str]:
    """How many times each request id's statement was executed, from the server's log."""
    return Counter(_ATTEMPT.findall(Path(pg.log_file).read_text(errors="replace")))


_REFUSED = re.compile(r"FATAL:\s+(?:sorry, too many clients already|remaining connection slots are reserved)")


def refused_attempts(pg: Any) -> int:
    """Connect attempts the server refused for want of a slot, from its log (one FATAL each)."""
    return len(_REFUSED.findall(Path(pg.log_file).read_text(errors="replace")))


def check_runs(pg: Any, results: Sequence[InvocationResult]) -> dict[str, int]:
    """No statement ran twice, no row committed twice, every successful invocation's row is
    there and nothing committed that no invocation asked for."""
    rows = Counter({
        rid: int(n) for rid, n in (line.split("|") for line in pg.psql(
            "SELECT request_id, count(*) FROM fanout_runs GROUP BY 1").splitlines() if line)
    })  # fmt: skip
    attempts = attempts_logged(pg)
    ours = {r.request_id for r in results}
    twice = {rid: n for rid, n in attempts.items() if n > 1}
    assert not twice, f"statements executed more than once: {list(twice.items())[:5]}"
    assert all(n == 1 for n in rows.values()), f"rows committed twice: {[k for k, n in rows.items() if n > 1][:5]}"
    missing = [r.request_id for r in results if r.ok and r.request_id not in rows]
    assert not missing, f"{len(missing)} successful invocations have no row: {missing[:5]}"
    assert set(rows) <= ours and set(attempts) <= ours, "rows from request ids no invocation had"
    assert set(rows) <= set(attempts), "a committed row whose execution was not logged"
    return {"rows": len(rows), "attempts": sum(attempts.values()), "ok": sum(r.ok for r in results)}
