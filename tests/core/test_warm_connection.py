"""One warm connection per instance: reused across invocations, checked after a freeze."""

from __future__ import annotations

import time

import pytest

from tests.support import DRIVERS, LambdaContext, backends, query_handler, terminate


@pytest.mark.parametrize("driver", DRIVERS)
def test_one_backend_across_hundreds_of_warm_invocations(pg_server, make_db, driver):
    # GIVEN a handler decorated on one Database (one instance)
    db = make_db(pg_server.dsn, driver=driver)
    handler = query_handler(db)
    # WHEN it serves 300 invocations
    pids = {handler({}, LambdaContext()) for _ in range(300)}
    # THEN one backend served them all, opened once
    assert len(pids) == 1
    stats = db.stats()
    assert stats["invocations"] == 300
    assert stats["connects"] == 1 and stats["reuses"] == 299 and stats["reconnects"] == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_cold_start_is_true_only_on_the_first_invocation(pg_server, make_db, driver):
    db = make_db(pg_server.dsn, driver=driver)
    seen = []
    if db.is_async:

        @db.lambda_handler
        async def handler(event, context):
            seen.append((db.invocation.cold_start, db.invocation.number))

    else:

        @db.lambda_handler
        def handler(event, context):
            seen.append((db.invocation.cold_start, db.invocation.number))

    for _ in range(5):
        handler({}, LambdaContext())
    assert seen == [(True, 1), (False, 2), (False, 3), (False, 4), (False, 5)]
    assert db.stats()["cold_starts"] == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_invocation_that_never_asks_opens_nothing(pg_server, make_db, driver):
    db = make_db(pg_server.dsn, driver=driver, application_name="lp-lazy")
    if db.is_async:

        @db.lambda_handler
        async def handler(event, context):
            return "no database needed"

    else:

        @db.lambda_handler
        def handler(event, context):
            return "no database needed"

    assert handler({}, LambdaContext()) == "no database needed"
    assert db.stats()["connects"] == 0 and db.stats()["open_connections"] == 0
    assert backends(pg_server, "lp-lazy") == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_backend_killed_between_invocations_costs_no_failed_invocation(pg_factory, make_db, driver):
    pg = pg_factory()
    db = make_db(pg.dsn, driver=driver, application_name="lp-killed")
    handler = query_handler(db)
    first = handler({}, LambdaContext())
    for _round in range(3):
        # Between invocations (the instance is frozen on Lambda), the server ends the session.
        assert terminate(pg, first)  # (returns once the FATAL has reached the socket)
        second = handler({}, LambdaContext())
        assert second != first
        first = second
    stats = db.stats()
    assert stats["reconnects"] == 3 and stats["invocations"] == 4
    assert backends(pg, "lp-killed") == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_long_idle_gap_triggers_a_real_ping(pg_server, make_db, driver):
    db = make_db(pg_server.dsn, driver=driver, ping_after_idle=0.2)
    handler = query_handler(db)
    pid = handler({}, LambdaContext())
    assert handler({}, LambdaContext()) == pid
    assert db.stats()["pings"] == 0  # quiet socket, short gap: no round trip
    time.sleep(0.3)  # as after a freeze
    assert handler({}, LambdaContext()) == pid
    assert db.stats()["pings"] == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_nested_connection_blocks_share_one_connection(pg_server, make_db, driver):
    db = make_db(pg_server.dsn, driver=driver)
    if db.is_async:

        @db.lambda_handler
        async def handler(event, context):
            async with db.connection() as a:
                async with db.connection() as b:
                    return a is b

    else:

        @db.lambda_handler
        def handler(event, context):
            with db.connection() as a, db.connection() as b:
                return a is b

    assert handler({}, LambdaContext()) is True


def test_prewarm_connects_during_init(pg_server, make_db):
    db = make_db(pg_server.dsn, prewarm=True, application_name="lp-prewarm")
    assert db.stats()["connects"] == 1
    assert backends(pg_server, "lp-prewarm") == 1
    handler = query_handler(db)
    handler({}, LambdaContext())
    assert db.stats()["connects"] == 1 and db.stats()["reuses"] == 1
