"""Every invocation is atomic and starts with the user's own settings, whatever the SDK ran on
the connection before it died, and whatever the handler left behind (issue 19, bugs 1-3)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from tests.support import LambdaContext, terminate


@pytest.fixture
def table(pg_server):
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS lp_atomic; CREATE TABLE lp_atomic (v int)")
    yield
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS lp_atomic")


def rows(pg) -> list[int]:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        return [v for (v,) in conn.execute("SELECT v FROM lp_atomic ORDER BY v")]


class Boom(Exception):
    pass


def writer(db, pg):
    """A handler: ``{"v": n, "fail": bool}`` inserts n (then raises), ``{"die": True}`` commits a
    block and has its own backend killed before the invocation ends (so the SDK's own statement
    at release meets a dead connection); each returns the connection's autocommit as it began."""
    if db.settings.driver == "psycopg":

        @db.lambda_handler
        def handler(event, context):
            with db.connection() as conn:
                began = conn.autocommit
                if "v" in event:
                    conn.execute("INSERT INTO lp_atomic VALUES (%s)", (event["v"],))
                    conn.execute("INSERT INTO lp_atomic VALUES (%s)", (-event["v"],))
                    if event.get("fail"):
                        raise Boom
                pid = conn.info.backend_pid
            if event.get("die"):
                terminate(pg, pid)
            return began

    else:

        @db.lambda_handler
        async def handler(event, context):
            async with db.connection() as conn:
                began = conn.autocommit
                if "v" in event:
                    await conn.execute("INSERT INTO lp_atomic VALUES (%s)", (event["v"],))
                    await conn.execute("INSERT INTO lp_atomic VALUES (%s)", (-event["v"],))
                    if event.get("fail"):
                        raise Boom
                pid = conn.info.backend_pid
            if event.get("die"):
                await asyncio.to_thread(terminate, pg, pid)
            return began

    return handler


# Where the SDK's own statement meets the dead connection: the ping before lending (killed
# while idle), the budget guard's utilisation sample at release, reset_session's RESET at release.
ENTRY_POINTS = {
    "ping": {"budget_guard": False},
    "guard_sample": {"guard_sample_interval": 0},
    "reset": {"budget_guard": False, "reset_session": True},
}


@pytest.mark.parametrize("driver", ["psycopg", "psycopg-async"])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_failed_invocation_commits_nothing_after_a_reconnect(pg_server, make_db, table, driver, entry):
    # Before: the SDK's statement ran in autocommit, the connection died under it, and the
    # replacement inherited autocommit=True from the dead one: a failed invocation's rows stayed.
    db = make_db(pg_server.dsn, driver=driver, **ENTRY_POINTS[entry])
    handler = writer(db, pg_server)

    if entry == "ping":
        assert handler({}, LambdaContext()) is False
        terminate(pg_server, *[h.driver.backend_pid(h.conn) for h in db._slots.all if h.conn is not None])
    else:
        assert handler({"die": True}, LambdaContext()) is False
    assert handler({}, LambdaContext()) is False  # the replacement: the user's autocommit, not the SDK's
    with pytest.raises(Boom):
        handler({"v": 1, "fail": True}, LambdaContext())
    assert rows(pg_server) == []
    assert handler({"v": 2}, LambdaContext()) is False
    assert rows(pg_server) == [-2, 2]
    assert db.stats()["connects"] == 2


def test_the_users_own_autocommit_still_follows_a_replacement(pg_server, make_db, table):
    # The other side of the fix: what the user set (not what the SDK set) is carried.
    db = make_db(pg_server.dsn, guard_sample_interval=0)

    @db.lambda_handler
    def handler(event, context):
        with db.connection() as conn:
            began = conn.autocommit
            conn.autocommit = event.get("autocommit", began)
            pid = conn.info.backend_pid
        if event.get("die"):
            terminate(pg_server, pid)
        return began

    assert handler({"autocommit": True, "die": True}, LambdaContext()) is False
    assert handler({}, LambdaContext()) is True
    assert handler({"autocommit": False, "die": True}, LambdaContext()) is True
    assert handler({}, LambdaContext()) is False
    assert db.stats()["connects"] == 3


@pytest.mark.parametrize("finish", ["return", "raise"])
def test_asyncpg_transaction_started_by_hand_and_left_open_does_not_poison_the_connection(
    pg_server, make_db, table, finish
):
    # Before: after lambdapool's ROLLBACK asyncpg still believed the transaction open, and every
    # later conn.transaction() was a SAVEPOINT outside a transaction block.
    db = make_db(pg_server.dsn, driver="asyncpg")

    @db.lambda_handler
    async def handler(event, context):
        async with db.connection() as conn:
            if event.get("by_hand"):
                tr = conn.transaction()
                await tr.start()
                await conn.execute("INSERT INTO lp_atomic VALUES (1)")
                if finish == "raise":
                    raise Boom
                return "left open"
            async with conn.transaction():
                await conn.execute("INSERT INTO lp_atomic VALUES (2)")
            return conn.is_in_transaction()

    if finish == "raise":
        with pytest.raises(Boom):
            handler({"by_hand": True}, LambdaContext())
    else:
        assert handler({"by_hand": True}, LambdaContext()) == "left open"
    assert handler({}, LambdaContext()) is False
    assert rows(pg_server) == [2]
    assert db.stats()["connects"] == 1


def configure_for(driver: str):
    sql = "SET search_path TO lp_schema, public; SET TIME ZONE 'Asia/Kolkata'"
    if driver == "psycopg":

        def configure(conn):
            conn.execute(sql)
            conn.commit()

        return configure
    if driver == "psycopg-async":

        async def aconfigure(conn):
            await conn.execute(sql)
            await conn.commit()

        return aconfigure

    async def asyncpg_configure(conn):
        await conn.execute(sql)

    return asyncpg_configure


@pytest.mark.parametrize("driver", ["psycopg", "psycopg-async", "asyncpg"])
def test_reset_session_keeps_what_configure_set(pg_server, make_db, driver):
    # Before: RESET ALL at release undid configure's SETs from the second invocation on.
    from tests.support import query_handler

    db = make_db(pg_server.dsn, driver=driver, reset_session=True, configure=configure_for(driver))
    handler = query_handler(db)
    show = "SELECT current_setting('search_path') || ' / ' || current_setting('TimeZone')"
    configured = "lp_schema, public / Asia/Kolkata"
    assert handler({"sql": show}, LambdaContext()) == configured
    handler({"sql": "SET search_path TO pg_catalog; SET statement_timeout = '7s'; SELECT 1"}, LambdaContext())
    assert handler({"sql": show}, LambdaContext()) == configured  # the handler's SET is gone, configure's is not
    assert handler({"sql": "SHOW statement_timeout"}, LambdaContext()) == "0"
    assert db.stats()["connects"] == 1 and db.stats()["resets"] >= 3
