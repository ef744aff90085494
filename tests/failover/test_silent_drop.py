"""A connection to a silently dropped server fails its invocation within seconds, not at the
function's timeout, for each driver, direct.

A failed-over primary is hard fenced: its packets stop, with no RST and no ICMP error
(tests/failover/netns.py plays it: the server behind a veth pair in a namespace of its own).
lambdapool turns TCP keepalives and TCP_USER_TIMEOUT on by default
(lambdapool/_drivers/params.py KEEPALIVE_DEFAULTS). Three ways an invocation meets the silence,
each on a warm connection of its own, all under one fence:

* ``statement``: the handler's own statement is the first thing sent (``ping_after_idle``
  large): data goes unacknowledged, and ``tcp_user_timeout`` (10 s) ends the connection;
* ``ping``: the SDK's ping is (``ping_after_idle=0``): the same timer, after which the
  acquire's budget (``acquire_timeout``, 10 s) is spent and no reconnect is tried;
* ``in-flight``: the statement is already running when the fence comes: everything sent was
  acknowledged, so only keepalives notice (first probe after 5 s of silence, then every 2 s;
  TCP_USER_TIMEOUT, set too, decides when they give up: about 11 s).

The control, under the same fence, turns both off in the DSN: the same statements still wait
after 20 s (Linux would retransmit the first for ~15 minutes; the in-flight one would wait forever). And the timers cut
only silence: a statement longer than they are, on a healthy link, runs to its end.
Each case prints ``FIGURES silent-drop ...``: the README quotes them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from lambdapool.tools.testing.postgres import PostgresNotFound
from lambdapool.tools.testing.pytest_plugin import missing
from lambdapool.tools.waiting import WaitTimeout, wait_for
from tests.failover.netns import NamespacedPostgres, SilentLink, silent_link
from tests.support import DRIVERS, LambdaContext, query_handler

# The defaults give up after 10 s (tcp_user_timeout) or 5 + 3 x 2 = 11 s (keepalives); what
# fails sooner than EARLIEST was not the silence, what takes LATEST or more is the bug.
EARLIEST, LATEST = 5.0, 15.0
CONTROL_WAIT = 20.0  # the control's statements must still be waiting after this long
IN_FLIGHT_SQL = "SELECT pg_sleep(60)"  # runs past every fence of this file
NO_KEEPALIVES = "?keepalives=0&tcp_user_timeout=0"
PING_AFTER_IDLE = {"statement": 3600.0, "ping": 0.0, "in-flight": 3600.0}
LONGER_THAN_THE_TIMERS = "SELECT 1 FROM pg_sleep(12)"  # > 10 s (user timeout) and 11 s (keepalives)

pytestmark = pytest.mark.slow  # (every test waits out the kernel's timers: 10 s and more)


@pytest.fixture(scope="module")
def fenceable() -> Iterator[tuple[SilentLink, NamespacedPostgres]]:
    """A server behind a link of its own, for the whole module (one initdb)."""
    with silent_link() as link:
        server = NamespacedPostgres(link)
        try:
            server.start()
        except PostgresNotFound as exc:
            missing("Postgres server binaries", str(exc))
        try:
            yield link, server
        finally:
            server.stop()


@pytest.fixture
def fenced_pg(fenceable) -> Iterator[tuple[SilentLink, NamespacedPostgres]]:
    """The module's server, its link up again and our sockets to it ended after each test."""
    link, server = fenceable
    try:
        yield link, server
    finally:
        link.abort_client_sockets()
        if link.fenced:
            link.unfence()


@dataclass
class Case:
    """One invocation meeting the silence, in a thread of its own, timed from ``started``."""

    driver: str
    variant: str
    handler: Callable
    sql: str = "SELECT 1"
    started: float = 0.0
    ended: float | None = None
    outcome: object = None
    thread: threading.Thread = field(init=False)

    def start(self) -> Case:
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"{self.driver}-{self.variant}", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.outcome = self.handler({"sql": self.sql}, LambdaContext(remaining_ms=30_000))
        except Exception as exc:  # what the test is about
            self.outcome = exc
        self.ended = time.monotonic()

    @property
    def seconds(self) -> float:
        assert self.ended is not None
        return self.ended - self.started

    def error(self) -> BaseException:
        assert isinstance(self.outcome, BaseException), f"{self.driver} {self.variant}: returned {self.outcome!r}"
        return self.outcome


def chain(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it, outermost first."""
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return out


def describe(exc: BaseException) -> str:
    """``ErrorClass (from CauseClass): reason``, the reason being the innermost message's last
    clause ("Connection timed out"): what the README quotes."""
    errors = chain(exc)
    names = [type(e).__name__ for e in errors]
    reason = str(errors[-1]).rsplit(": ", 1)[-1].strip()[:60]
    return names[0] + (f" (from {' <- '.join(names[1:])})" if len(names) > 1 else "") + f": {reason}"


def timed_out(exc: BaseException) -> bool:
    """Did the kernel give up by its own timers (ETIMEDOUT), not hear a reset or an ICMP error?"""
    return any("timed out" in str(e).lower() for e in chain(exc))


def figures(case: Case, label: str = "") -> None:
    outcome = f"failed after {case.seconds:.1f} s with {describe(case.error())}"
    print(f"FIGURES silent-drop {case.driver} {case.variant}{label}: {outcome}")


def warm(handler) -> None:
    assert handler({"sql": "SELECT 1"}, LambdaContext()) == 1


def start_in_flight(server: NamespacedPostgres, case: Case, app: str) -> None:
    """Start ``case``'s long statement and wait until the server runs it."""
    case.start()
    active = f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' AND state = 'active'"
    wait_for(lambda: server.psql(active) == "1", f"{app}'s statement to run", timeout=15)


def wait_ended(cases: list[Case], timeout: float, every: bool = True) -> bool:
    """True once every case (or, not ``every``, any case) has ended; False after ``timeout``."""
    done = all if every else any
    try:
        wait_for(lambda: done(c.ended is not None for c in cases), "the invocations to end", timeout, interval=0.05)
        return True
    except WaitTimeout:
        return False


def end_all(link: SilentLink, cases: list[Case]) -> None:
    """Whatever still waits: its socket aborted, its thread joined (bounded)."""
    if link.fenced:
        link.unfence()
    link.abort_client_sockets()
    for case in cases:
        if getattr(case, "thread", None) is not None:
            case.thread.join(15)


def test_a_silent_drop_fails_each_invocation_within_seconds_unless_keepalives_are_off(fenced_pg, make_db):
    """Every driver and way of meeting the silence under one fence (the kernel's timers run side by
    side): with the defaults each invocation fails within seconds; the control's, keepalives and
    the user timeout off in the DSN, are still waiting after CONTROL_WAIT."""
    link, server = fenced_pg
    # GIVEN one warm instance per driver and way of meeting the silence, with lambdapool's
    # defaults, and the control's instances (statement and in-flight) with keepalives off
    dbs, handlers, apps = {}, {}, {}
    for driver in DRIVERS:
        for variant, ping_after_idle in PING_AFTER_IDLE.items():
            for control in (False, True):
                if control and variant == "ping":
                    continue  # (the ping meets the silence as a statement does)
                key = (driver, variant, control)
                apps[key] = f"lp-silent-{driver}-{variant}" + ("-off" if control else "")
                dsn = server.dsn + (NO_KEEPALIVES if control else "")
                dbs[key] = make_db(dsn, driver=driver, application_name=apps[key], ping_after_idle=ping_after_idle)
                handlers[key] = query_handler(dbs[key])
                warm(handlers[key])
    cases = {key: Case(key[0], key[1], handler, IN_FLIGHT_SQL if key[1] == "in-flight" else "SELECT 1")
             for key, handler in handlers.items()}  # fmt: skip
    defaults = [c for (_, _, control), c in cases.items() if not control]
    controls = [c for (_, _, control), c in cases.items() if control]
    try:
        for key, case in cases.items():
            if key[1] == "in-flight":
                start_in_flight(server, case, apps[key])
        dropped = link.dropped()
        # WHEN the server is fenced: from now on its packets vanish
        link.fence()
        fenced = time.monotonic()
        for key, case in cases.items():
            if key[1] == "in-flight":
                case.started = fenced  # (its clock runs from the fence)
            else:
                case.start()
        # THEN each invocation with the defaults fails, by the kernel's timers, within seconds
        assert wait_ended(defaults, LATEST + 5), [(c.driver, c.variant, c.ended) for c in defaults]
        # AND none of the control's has ended after CONTROL_WAIT: only the function's timeout would end them
        assert not wait_ended(controls, CONTROL_WAIT - (time.monotonic() - fenced), every=False), [
            (c.driver, c.variant, c.outcome) for c in controls
        ]
        waited = time.monotonic() - fenced
        assert link.dropped() > dropped  # (packets were sent, and vanished)
    finally:
        end_all(link, list(cases.values()))  # (what still waits: its socket aborted, ECONNABORTED)
    for case in defaults:
        figures(case)
    for case in controls:
        print(f"FIGURES silent-drop {case.driver} {case.variant} (keepalives off): still waiting after {waited:.1f} s")
    for case in defaults:
        assert EARLIEST <= case.seconds < LATEST, (case.driver, case.variant, case.seconds, describe(case.error()))
        if case.variant != "ping":
            assert timed_out(case.error()), (case.driver, case.variant, describe(case.error()))
    for driver in DRIVERS:
        assert dbs[driver, "ping", False].stats()["pings"] == 1  # (the SDK's ping met the silence, not the handler)
    # AND once the server is back, the next invocations reconnect and succeed
    for key, handler in handlers.items():
        assert handler({"sql": "SELECT 2"}, LambdaContext()) == 2, key
        assert dbs[key].stats()["connects"] == 2, key


def test_a_statement_longer_than_the_timers_runs_to_its_end_on_a_healthy_link(fenced_pg, make_db):
    link, server = fenced_pg
    # GIVEN warm instances with lambdapool's defaults, one per driver
    handlers = {
        d: query_handler(make_db(server.dsn, driver=d, application_name=f"lp-silent-long-{d}")) for d in DRIVERS
    }
    for handler in handlers.values():
        warm(handler)
    # WHEN each runs a statement that outlasts the keepalives and the user timeout, unfenced
    cases = [Case(d, "long statement", h, LONGER_THAN_THE_TIMERS).start() for d, h in handlers.items()]
    try:
        assert wait_ended(cases, 30), [(c.driver, c.ended) for c in cases]
    finally:
        end_all(link, cases)
    # THEN it returns its row: the peer answered every probe
    assert [c.outcome for c in cases] == [1] * len(cases), [(c.driver, c.outcome) for c in cases]
