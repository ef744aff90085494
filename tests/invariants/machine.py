"""The state machine of the invariants test: one ``lambdapool.Database`` (an instance with Lambda's
one-at-a-time invocations) driven through random invocations, blocks outside invocations and
faults, with the design's invariants checked after every step (DESIGN.md, "The invariants").

The model keeps what the user set on the connection (psycopg's autocommit, row_factory,
isolation level; configure's), the rows each invocation should have left committed, and what the
last faults should make the next invocation's counters show.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import lambdapool
from lambdapool._drivers.base import read_only_error
from tests.invariants.conftest import Target, soon
from tests.invariants.handlers import CONFIGURED, CONFIGURES, HANDLERS, HandlerFailed
from tests.support import LambdaContext

PING_AFTER_IDLE = 0.05  # small, when an example asks for it: "idle past ping_after_idle" is waited for
MAX_LIFETIME = 0.2  # likewise "older than max_lifetime"
COUNTERS = ("connects", "reconnects", "expired", "pings", "rollbacks", "resets")


class InstanceMachine(RuleBasedStateMachine):
    def __init__(self, driver: str, target: Target, counted: Counter[str]) -> None:
        super().__init__()
        self.driver, self.target, self.counted = driver, target, counted
        counted["examples"] += 1
        self.db: Any = None
        self.seen: list[dict[str, Any]] = []  # the views the handler found its connection in
        self.run = uuid.uuid4().hex[:12]  # this example's tokens start with it
        self.expected: dict[str, int] = {}  # token -> rows it should have committed
        self.invocations = 0
        self.last_stats: dict[str, Any] = {}
        self.session_dirty = False  # the handler left SET / temp table / LISTEN on a session
        # what the faults since the last invocation should make the next one do
        self.killed = self.idled = self.aged = False
        self.last_end = self.connected_by = 0.0

    # -- the instance ------------------------------------------------------------------------
    @initialize(
        reset_session=st.booleans(),
        configure=st.booleans(),
        short_ping=st.booleans(),
        short_lifetime=st.booleans(),
        sample_every_release=st.booleans(),
    )
    def start_an_instance(
        self, reset_session: bool, configure: bool, short_ping: bool, short_lifetime: bool, sample_every_release: bool
    ) -> None:
        self.reset_session, self.configure = reset_session, configure
        self.ping_after_idle = PING_AFTER_IDLE if short_ping else 60.0
        self.max_lifetime = MAX_LIFETIME if short_lifetime else 3600.0
        options: dict[str, Any] = {}
        if self.target.pooler == "direct" and sample_every_release:
            options["guard_sample_interval"] = 0  # the budget guard's query at every release
        self.db = lambdapool.Database(
            self.target.dsn,
            driver=self.driver,
            pooler=self.target.pooler,
            reset_session=reset_session,
            configure=CONFIGURES[self.driver] if configure else None,
            ping_after_idle=self.ping_after_idle,
            max_lifetime=self.max_lifetime,
            handle_sigterm=False,
            **options,
        )
        self.handler, self.outside = HANDLERS[self.driver](self.db, self.seen)
        # the user's settings as configure leaves them (psycopg); the settings rule changes them
        self.autocommit = False
        self.row_factory = "dict" if configure else "tuple"
        self.isolation: str | None = "repeatable read" if configure else None
        self.last_stats = dict(self.db.stats())

    def teardown(self) -> None:
        if self.db is not None:
            self.db.close()

    # -- actions -----------------------------------------------------------------------------
    @rule(rows=st.integers(1, 3), fails=st.booleans(), explicit=st.booleans())
    def invocation_writes(self, rows: int, fails: bool, explicit: bool) -> None:
        self.write({"do": "write", "rows": rows, "fails": fails, "explicit": explicit}, outside=False)

    @rule(rows=st.integers(1, 3), fails=st.booleans())
    def block_outside_any_invocation_writes(self, rows: int, fails: bool) -> None:
        self.write({"do": "write", "rows": rows, "fails": fails, "explicit": False}, outside=True)

    @rule(rows=st.integers(1, 2), closed_block=st.booleans())
    def invocation_leaves_a_transaction_open(self, rows: int, closed_block: bool) -> None:
        event = {"do": "leave_open", "token": self.token(), "rows": rows, "closed_block": closed_block}
        # psycopg's clean block commits what is open (as psycopg_pool's); anything else is rolled back
        commits = closed_block and self.driver != "asyncpg"
        self.expected[event["token"]] = rows if commits else 0
        self.invoke(event, rollbacks=0 if commits else 1)

    @rule()
    def invocation_changes_session_state(self) -> None:
        self.invoke({"do": "session"})
        self.session_dirty = True

    @precondition(lambda self: self.driver != "asyncpg")
    @rule(
        autocommit=st.booleans(),
        row_factory=st.sampled_from(["tuple", "dict"]),
        isolation=st.sampled_from([None, "repeatable read", "serializable"]),
    )
    def invocation_changes_connection_settings(self, autocommit: bool, row_factory: str, isolation: str | None) -> None:
        self.invoke({"do": "settings", "autocommit": autocommit, "row_factory": row_factory, "isolation": isolation})
        self.autocommit, self.row_factory, self.isolation = autocommit, row_factory, isolation

    @rule()
    def invocation_probes_the_session(self) -> None:
        self.probe()

    # -- faults between invocations ------------------------------------------------------------
    @rule()
    def backends_killed(self) -> None:
        self.note_kill(self.target.pooler == "direct")
        self.target.kill_backends()

    @rule()
    def server_restarted(self) -> None:
        self.note_kill(self.target.pooler == "direct")
        self.target.restart_server()

    @rule()
    def server_ends_idle_sessions_during_a_freeze(self) -> None:
        """idle_session_timeout, armed for one invocation (a backend takes it up at its next
        command): the sessions that invocation used are ended once it is idle."""
        # An invocation first, so that the armed one reuses a live connection: a connection made
        # while armed could time out between its login and its first statement on a stalled VM.
        self.probe()
        self.target.arm_idle_session_timeout()
        try:
            pid = self.probe()["pid"]
            self.target.wait_ended([pid], "the server to end the idle session")
        finally:
            self.target.disarm_idle_session_timeout()
        self.note_kill(self.target.pooler == "direct")

    @precondition(lambda self: self.ping_after_idle == PING_AFTER_IDLE)
    @rule()
    def idle_past_ping_after_idle(self) -> None:
        soon(lambda: time.monotonic() - self.last_end >= self.ping_after_idle, "ping_after_idle to pass", 5)
        self.idled = True

    @precondition(lambda self: self.max_lifetime == MAX_LIFETIME)
    @rule()
    def older_than_max_lifetime(self) -> None:
        # the connection was made before connected_by (the end of the invocation that made it)
        soon(lambda: time.monotonic() - self.connected_by >= self.max_lifetime, "max_lifetime to pass", 5)
        self.aged = True

    @rule(rows=st.integers(1, 2))
    def writer_demoted_under_the_warm_connection(self, rows: int) -> None:
        """A failover demotes the server while the connection is warm (read-only in place): the
        invocation's write is refused with 25006, commits nothing, and the connection is not kept
        (issue 21); the server is a writer again before the next step."""
        self.probe()  # a warm connection to demote under
        event = {"do": "write", "rows": rows, "fails": False, "explicit": False, "token": self.token()}
        self.expected[event["token"]] = 0
        before = dict(self.db.stats())
        self.target.admin.reload_with("ALTER SYSTEM SET default_transaction_read_only = on")
        try:
            try:
                self.handler(event, LambdaContext())
            except Exception as exc:
                assert read_only_error(exc), f"expected the server's 25006, got {exc!r}"
            else:
                raise AssertionError("a write on a read-only server succeeded")
            finally:
                self.invocations += 1
                self.last_end = time.monotonic()
        finally:
            self.target.admin.reload_with("ALTER SYSTEM RESET default_transaction_read_only")
        after = dict(self.db.stats())
        assert after["read_only_drops"] - before["read_only_drops"] == 1, (before, after)
        assert after["open_connections"] == 0
        self.killed = self.idled = self.aged = False  # (no connection left for them to act on)
        self.counted["demotions"] += 1

    @precondition(lambda self: self.target.pooler == "local")
    @rule()
    def proxy_drops_its_clients(self) -> None:
        self.note_kill(True)
        self.target.proxy_drops_clients()

    @precondition(lambda self: self.target.pooler == "local")
    @rule()
    def proxy_kills_its_backends(self) -> None:
        self.target.proxy_kills_backends()

    @precondition(lambda self: self.target.pooler == "pgbouncer")
    @rule()
    def pgbouncer_restarted(self) -> None:
        self.note_kill(True)
        self.target.restart_pgbouncer()

    # -- the invariants, after every step ---------------------------------------------------------
    @invariant()
    def the_promise_holds(self) -> None:
        if self.db is not None:
            self.counted["steps"] += 1
            self.every_invocation_committed_exactly_what_it_should()
            self.holds_no_more_connections_than_it_may()
            self.counters_only_grow()

    def every_invocation_committed_exactly_what_it_should(self) -> None:
        rows = self.target.admin.rows(
            "SELECT token, count(*) FROM invariant_rows WHERE token LIKE %s GROUP BY token", (self.run + "-%",)
        )
        committed = dict(rows)
        wrong = {t: (committed.get(t, 0), n) for t, n in self.expected.items() if committed.get(t, 0) != n}
        assert not wrong, f"rows committed by invocations (token: (committed, expected)): {wrong}"
        assert committed.keys() <= self.expected.keys()

    def holds_no_more_connections_than_it_may(self) -> None:
        assert self.db.stats()["open_connections"] <= 1
        target = self.target
        soon(lambda: target.client_connections() <= 1, "the instance to hold at most one connection", 5)
        soon(lambda: len(target.admin.app_backends()) <= target.backend_cap, "backends within the cap", 5)

    def counters_only_grow(self) -> None:
        stats = dict(self.db.stats())
        shrunk = {k: (v, stats[k]) for k, v in self.last_stats.items() if k != "open_connections" and stats[k] < v}
        assert not shrunk, f"stats() counters went down: {shrunk}"
        assert stats["invocations"] == self.invocations
        if stats["connects"]:
            assert stats["connects"] >= 1 + stats["reconnects"] + stats["expired"], stats
        self.last_stats = stats

    # -- helpers -----------------------------------------------------------------------------
    def token(self) -> str:
        return f"{self.run}-{len(self.expected)}"

    def write(self, event: dict[str, Any], *, outside: bool) -> None:
        event["token"] = self.token()
        autocommitting = self.driver == "asyncpg" or self.autocommit  # each statement its own transaction
        statement_by_statement = autocommitting and not event["explicit"]
        self.expected[event["token"]] = event["rows"] if not event["fails"] or statement_by_statement else 0
        # a failure with a transaction still open is rolled back by the SDK (conn.transaction() rolls back its own)
        rollbacks = 1 if event["fails"] and not autocommitting and not event["explicit"] else 0
        self.invoke(event, outside=outside, fails=event["fails"], rollbacks=rollbacks)

    def probe(self) -> dict[str, Any]:
        got = self.invoke({"do": "probe"})
        target, expect = self.target, {}
        if self.driver != "asyncpg":
            expect["row_type"] = self.row_factory
            # psycopg begins its transactions at the isolation level asked (none in autocommit)
            in_effect = None if self.autocommit else self.isolation
            expect["transaction_isolation"] = in_effect or "read committed"
        if target.keeps_sessions:
            configured = CONFIGURED if self.configure else target.defaults
            expect.update(search_path=configured["search_path"], timezone=configured["timezone"])
            if self.reset_session or not self.session_dirty:
                expect.update(work_mem=target.defaults["work_mem"], listening=0, temp_table=False)
        if self.driver == "asyncpg" and self.configure:
            expect["json"] = ("decoded", "{}")  # configure's codec
        found = {k: got[k] for k in expect}
        assert found == expect, f"the session is not as the user left it: found {found}, expected {expect}"
        return got

    def invoke(self, event: dict[str, Any], *, outside: bool = False, fails: bool = False, rollbacks: int = 0) -> Any:
        """One invocation (or a block outside any), checked: no exception but the handler's own,
        the connection found outside a transaction with the user's settings, the counters."""
        before = dict(self.db.stats())
        self.seen.clear()
        result: Any = None
        try:
            result = self.outside(event) if outside else self.handler(event, LambdaContext())
            raised = False
        except HandlerFailed:
            raised = True
        except Exception as exc:
            raise AssertionError(f"an exception other than the handler's own escaped: {exc!r}") from exc
        finally:
            self.invocations += 0 if outside else 1
            self.last_end = time.monotonic()
        assert raised == fails
        assert len(self.seen) == 1
        self.check_view(self.seen[0])
        self.check_counters(before, dict(self.db.stats()), rollbacks)
        return result

    def check_view(self, view: dict[str, Any]) -> None:
        expect: dict[str, Any] = {"in_transaction": False}
        if self.driver != "asyncpg":
            expect.update(autocommit=self.autocommit, row_factory=self.row_factory, isolation=self.isolation)
        assert view == expect, f"the invocation found its connection as {view}, expected {expect}"

    def check_counters(self, before: dict[str, Any], after: dict[str, Any], rollbacks: int) -> None:
        d = {k: after[k] - before[k] for k in COUNTERS}
        assert d["connects"] in (0, 1), d
        assert d["reconnects"] <= d["connects"], d
        assert d["rollbacks"] == rollbacks, f"rollbacks: {d['rollbacks']}, expected {rollbacks}"
        if self.reset_session:
            assert d["resets"] == 1, d
        if before["open_connections"]:
            if self.killed:  # found dead and replaced before any statement
                assert d["connects"] == 1 and d["reconnects"] + d["expired"] == 1, d
            if self.aged:
                assert d["expired"] == 1 and d["connects"] == 1, d
            if self.idled:
                assert d["pings"] + d["expired"] >= 1, d
        if d["connects"]:
            self.connected_by = time.monotonic()
        self.killed = self.idled = self.aged = False

    def note_kill(self, kills_the_instances_connection: bool) -> None:
        if kills_the_instances_connection and self.db.stats()["open_connections"]:
            self.killed = True
