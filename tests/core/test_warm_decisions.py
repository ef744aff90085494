"""The warm path's decisions, against a scripted driver (tests/core/fake_driver.py): no server,
milliseconds each, every driver kind. The same behaviours against a real Postgres are in
test_warm_connection.py, test_transactions.py, test_user_settings.py and tests/failover."""

from __future__ import annotations

import inspect
import time

import pytest

import lambdapool
from lambdapool import _drivers as drivers
from lambdapool._drivers import contract
from tests.core.fake_driver import AsyncFakeDriver, FakeDriver, FakeError, too_many_clients
from tests.support import LambdaContext

KINDS = {"sync": ("psycopg", FakeDriver), "async": ("psycopg-async", AsyncFakeDriver)}


@pytest.fixture(params=sorted(KINDS))
def fake(request, monkeypatch):
    """make(**settings) -> (db, driver): a Database whose driver is a FakeDriver."""
    setting, cls = KINDS[request.param]
    made = []

    def make(**settings):
        driver = cls()
        monkeypatch.setattr(drivers, "load", lambda name: driver)
        settings.setdefault("handle_sigterm", False)
        settings.setdefault("budget_guard", False)  # (its utilisation sample is a query: tested on its own)
        db = lambdapool.Database("postgresql://app@db.invalid:5432/app", driver=setting, **settings)
        made.append(db)
        return db, driver

    yield make
    for db in made:
        db.close()


def invoke(db, body=lambda conn: None):
    """One invocation that takes the connection and runs ``body(conn)`` in its block."""
    if db.is_async:

        @db.lambda_handler
        async def handler(event, context):
            async with db.connection() as conn:
                return body(conn)

    else:

        @db.lambda_handler
        def handler(event, context):
            with db.connection() as conn:
                return body(conn)

    return handler({}, LambdaContext())


def pid(conn):
    return conn.pid


def test_the_fake_keeps_the_driver_contract():
    for fake_cls, protocol in ((FakeDriver, contract.Driver), (AsyncFakeDriver, contract.AsyncDriver)):
        members = set()
        for cls in protocol.__mro__:
            if cls.__module__ == contract.__name__:
                members.update(n for n in [*vars(cls), *vars(cls).get("__annotations__", {})] if not n.startswith("_"))
        assert members and all(hasattr(fake_cls, name) for name in members), fake_cls
        kinds = {
            n: inspect.iscoroutinefunction(getattr(protocol, n))
            for n in members
            if callable(getattr(protocol, n, None))
        }
        assert kinds == {n: inspect.iscoroutinefunction(getattr(fake_cls, n)) for n in kinds}, fake_cls


def test_a_quiet_recent_connection_is_reused_without_a_round_trip(fake):
    db, driver = fake()
    assert [invoke(db, pid) for _ in range(3)] == [1, 1, 1]
    assert driver.calls == ["connect"]
    assert db.stats()["reuses"] == 2 and db.stats()["pings"] == 0


def test_a_readable_socket_is_pinged_and_kept_when_the_ping_answers(fake):
    db, driver = fake()
    invoke(db)
    driver.connections[0].speak()  # a NOTICE or a NOTIFY while idle
    assert invoke(db, pid) == 1
    assert driver.calls == ["connect", "ping"]
    assert db.stats()["reconnects"] == 0


def test_a_failed_ping_reconnects_before_the_handler_runs(fake):
    db, driver = fake()
    invoke(db)
    driver.connections[0].die()  # terminated while idle: a FATAL, then silence
    assert invoke(db, pid) == 2
    assert driver.calls == ["connect", "ping", "close", "connect", "apply_user_settings"]
    assert db.stats()["reconnects"] == 1


def test_a_long_idle_gap_is_pinged_even_with_a_quiet_socket(fake):
    db, driver = fake(ping_after_idle=0.01)
    invoke(db)
    time.sleep(0.02)
    assert invoke(db, pid) == 1
    assert driver.calls == ["connect", "ping"]


def test_an_expired_connection_is_replaced_without_a_ping(fake):
    db, driver = fake(max_lifetime=0.01)
    invoke(db)
    time.sleep(0.02)
    assert invoke(db, pid) == 2
    assert driver.calls == ["connect", "close", "connect", "apply_user_settings"]
    assert db.stats()["expired"] == 1 and driver.connections[0].closed


def test_a_connection_refused_for_capacity_is_closed_by_the_budget_guard(fake):
    db, driver = fake(acquire_timeout=0.6, budget_guard=True)
    driver.connect_errors.append(too_many_clients())
    assert invoke(db, pid) == 1  # the second attempt got in
    assert driver.calls == ["connect", "connect", "close"]  # not kept warm: the server was full
    assert db.stats()["guard_closes"] == 1 and db.stats()["open_connections"] == 0
    assert invoke(db, pid) == 2


def test_a_reconnect_refused_for_capacity_is_closed_by_the_budget_guard_between_samples(fake):
    db, driver = fake(acquire_timeout=0.6, budget_guard=True)
    invoke(db)  # sampled: room (the next sample is seconds away)
    driver.connections[0].die()
    driver.connect_errors.append(too_many_clients())
    assert invoke(db, pid) == 2
    assert driver.calls[-4:] == ["connect", "connect", "apply_user_settings", "close"]
    assert db.stats()["guard_closes"] == 1 and driver.calls.count("query_row") == 1


def test_the_budget_guard_keeps_the_connection_while_the_server_has_room(fake):
    db, driver = fake(budget_guard=True)
    assert [invoke(db, pid) for _ in range(2)] == [1, 1]
    assert driver.calls == ["connect", "query_row"]  # one utilisation sample (1 of 97 slots used)
    assert db.stats()["guard_closes"] == 0


def test_the_budget_guard_closes_the_connection_when_the_server_is_nearly_full(fake):
    db, driver = fake(budget_guard=True)
    driver.utilisation = (100, 3, 90)
    assert invoke(db, pid) == 1
    assert driver.calls == ["connect", "query_row", "close"]
    assert db.stats()["guard_closes"] == 1 and db.stats()["open_connections"] == 0


def test_a_new_connection_on_a_read_only_server_is_dropped_when_a_writer_is_wanted(fake):
    db, driver = fake()
    driver.read_only_connects = 1  # the name still leads to the demoted writer, once
    assert invoke(db, pid) == 2
    assert driver.calls == ["connect", "close", "connect"]
    assert db.stats()["read_only_drops"] == 1


def test_a_write_refused_as_read_only_drops_the_warm_connection(fake):
    db, driver = fake()
    invoke(db)
    driver.connections[0].read_only = True  # demoted by a failover while the function slept
    with pytest.raises(FakeError):
        invoke(db, lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
    assert db.stats()["read_only_drops"] == 1 and driver.connections[0].closed
    assert invoke(db, pid) == 2


def test_a_reader_keeps_its_read_only_server(fake):
    db, driver = fake(reader=True)
    driver.read_only_connects = 1
    assert invoke(db, pid) == 1
    assert invoke(db, pid) == 1 and db.stats()["read_only_drops"] == 0


def test_an_exception_in_the_block_rolls_back_and_keeps_the_connection(fake):
    db, driver = fake()

    def fail(conn):
        conn.execute("UPDATE t SET x = 1")
        raise ValueError("the handler's own")

    with pytest.raises(ValueError):
        invoke(db, fail)
    assert driver.calls == ["connect", "rollback"]
    assert invoke(db, pid) == 1


def test_an_exception_in_a_block_rolls_back_before_the_next_block_of_the_invocation(fake):
    db, driver = fake()

    def fail(conn):
        conn.execute("UPDATE t SET x = 1")
        raise ValueError("caught by the handler")

    def in_transaction(conn):
        return conn.in_transaction

    if db.is_async:

        @db.lambda_handler
        async def handler(event, context):
            try:
                async with db.connection() as conn:
                    fail(conn)
            except ValueError:
                pass
            async with db.connection() as conn:
                return in_transaction(conn)

    else:

        @db.lambda_handler
        def handler(event, context):
            try:
                with db.connection() as conn:
                    fail(conn)
            except ValueError:
                pass
            with db.connection() as conn:
                return in_transaction(conn)

    assert handler({}, LambdaContext()) is False
    assert driver.calls == ["connect", "rollback"]


def test_a_transaction_still_open_at_the_end_of_the_invocation_is_rolled_back(fake):
    db, driver = fake()
    seen = []

    def use_after_the_block(conn):  # the release finds the transaction open
        conn.execute("UPDATE t SET x = 1")
        seen.append(conn)

    if db.is_async:

        @db.lambda_handler
        async def handler(event, context):
            async with db.connection() as conn:
                pass
            use_after_the_block(conn)

    else:

        @db.lambda_handler
        def handler(event, context):
            with db.connection() as conn:
                pass
            use_after_the_block(conn)

    handler({}, LambdaContext())
    assert driver.calls == ["connect", "rollback"]
    assert not seen[0].in_transaction and not seen[0].closed and db.stats()["rollbacks"] == 1
    assert invoke(db, pid) == 1


def test_the_users_settings_are_applied_again_after_a_reconnect(fake):
    db, driver = fake()

    def set_autocommit(conn):
        conn.autocommit = True

    invoke(db, set_autocommit)
    driver.connections[0].die()
    assert invoke(db, lambda conn: (conn.pid, conn.autocommit)) == (2, True)
    assert driver.calls == ["connect", "ping", "close", "connect", "apply_user_settings"]


def test_a_connection_broken_during_the_invocation_is_dropped_at_its_end(fake):
    db, driver = fake()
    invoke(db)

    def break_it(conn):
        conn.gone = True
        conn.execute("SELECT 1")

    with pytest.raises(FakeError):
        invoke(db, break_it)
    assert driver.connections[0].closed and db.stats()["open_connections"] == 0
    assert invoke(db, pid) == 2
