"""Commit/rollback as the driver's own pool would, and no invocation ever starts in a transaction."""

from __future__ import annotations

import pytest

from tests.support import DRIVERS, LambdaContext, query_handler


@pytest.fixture
def table(pg_server):
    import psycopg

    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS lp_items; CREATE TABLE lp_items (id int)")
    yield "lp_items"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS lp_items")


def count(pg_server) -> int:
    return int(pg_server.psql("SELECT count(*) FROM lp_items"))


class Boom(Exception):
    pass


def test_psycopg_block_commits_on_clean_exit_and_rolls_back_on_error(pg_server, make_db, table):
    db = make_db(pg_server.dsn)

    @db.lambda_handler
    def handler(event, context):
        with db.connection() as conn:
            conn.execute("INSERT INTO lp_items VALUES (1)")
            if event.get("fail"):
                raise Boom("handler failed mid-transaction")

    handler({}, LambdaContext())
    assert count(pg_server) == 1
    with pytest.raises(Boom, match="handler failed mid-transaction"):  # propagates unchanged
        handler({"fail": True}, LambdaContext())
    assert count(pg_server) == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_handler_raising_inside_a_transaction_commits_nothing_and_next_starts_idle(pg_server, make_db, table, driver):
    db = make_db(pg_server.dsn, driver=driver)
    if driver == "psycopg":

        @db.lambda_handler
        def writer(event, context):
            with db.connection() as conn:
                conn.execute("INSERT INTO lp_items VALUES (1)")
                raise Boom()

    elif driver == "psycopg-async":

        @db.lambda_handler
        async def writer(event, context):
            async with db.connection() as conn:
                await conn.execute("INSERT INTO lp_items VALUES (1)")
                raise Boom()

    else:

        @db.lambda_handler
        async def writer(event, context):
            async with db.connection() as conn:
                tr = conn.transaction()
                await tr.start()  # left open: the invocation's end must roll it back
                await conn.execute("INSERT INTO lp_items VALUES (1)")
                raise Boom()

    with pytest.raises(Boom):
        writer({}, LambdaContext())
    assert count(pg_server) == 0
    # The next invocation gets the same connection, idle (the driver's own transaction status).
    if db.is_async:

        @db.lambda_handler
        async def status(event, context):
            async with db.connection() as conn:
                return db.driver.in_transaction(conn)

    else:

        @db.lambda_handler
        def status(event, context):
            with db.connection() as conn:
                return db.driver.in_transaction(conn)

    assert status({}, LambdaContext()) is False
    assert query_handler(db)({"sql": "SELECT count(*) FROM lp_items"}, LambdaContext()) == 0
    assert db.stats()["connects"] == 1 and db.stats()["rollbacks"] >= 1


def test_transaction_left_open_outside_the_block_is_rolled_back_at_invocation_end(pg_server, make_db, table):
    db = make_db(pg_server.dsn)

    @db.lambda_handler
    def handler(event, context):
        with db.connection() as conn:
            pass
        conn.execute("INSERT INTO lp_items VALUES (1)")  # after the block: opens a transaction

    handler({}, LambdaContext())
    assert count(pg_server) == 0
    assert db.stats()["rollbacks"] == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_reset_session_clears_session_state_between_invocations(pg_server, make_db, driver):
    db = make_db(pg_server.dsn, driver=driver, reset_session=True)
    handler = query_handler(db)
    setup = (
        "SET statement_timeout = '123s'; CREATE TEMP TABLE lp_tmp (x int); "
        "SELECT pg_advisory_lock(4242); LISTEN lp_channel; SELECT 1"
    )
    handler({"sql": setup}, LambdaContext())
    assert handler({"sql": "SHOW statement_timeout"}, LambdaContext()) == "0"
    assert handler({"sql": "SELECT count(*) FROM pg_tables WHERE tablename = 'lp_tmp'"}, LambdaContext()) == 0
    assert handler({"sql": "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                           "AND pid = pg_backend_pid()"}, LambdaContext()) == 0  # fmt: skip
    assert handler({"sql": "SELECT count(*) FROM pg_listening_channels()"}, LambdaContext()) == 0
    assert db.stats()["resets"] >= 4 and db.stats()["connects"] == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_without_reset_session_state_survives_as_the_driver_leaves_it(pg_server, make_db, driver):
    # The control for the test above: the reset is what cleared the state.
    db = make_db(pg_server.dsn, driver=driver)
    handler = query_handler(db)
    handler({"sql": "SET statement_timeout = '123s'; SELECT 1"}, LambdaContext())
    # asyncpg autocommits; psycopg commits the block: either way the SET stays.
    assert handler({"sql": "SHOW statement_timeout"}, LambdaContext()) == "123s"
