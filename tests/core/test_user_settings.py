"""The user's connection is the user's: the SDK's own queries never depend on (or undo) the
user's row_factory, prepare_threshold or autocommit; configure, connect_kwargs, max_lifetime."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import LambdaContext, backends, terminate


def test_a_dict_row_factory_does_not_break_the_budget_guard(pg_server, make_db):
    # Before: the guard's sample query unpacked dict rows into keys, failed, and every
    # invocation dropped its connection and reconnected (logged at INFO only).
    from psycopg.rows import dict_row

    db = make_db(pg_server.dsn, guard_sample_interval=0)  # sample at every invocation

    @db.lambda_handler
    def handler(event, context):
        with db.connection() as conn:
            conn.row_factory = dict_row
            return conn.execute("SELECT 1 AS one").fetchone()

    assert [handler({}, LambdaContext()) for _ in range(10)] == [{"one": 1}] * 10
    stats = db.stats()
    assert stats["connects"] == 1 and stats["discarded"] == 0
    assert db.adapter.samples >= 9  # the guard did sample (and its query worked)


def test_the_users_autocommit_is_kept_across_invocations(pg_server, make_db):
    # Before: the SDK's ping and guard queries set autocommit back to False.
    db = make_db(pg_server.dsn, guard_sample_interval=0, ping_after_idle=0)  # ping and sample every time

    @db.lambda_handler
    def handler(event, context):
        with db.connection() as conn:
            before = conn.autocommit
            conn.autocommit = True
            conn.execute("SELECT 1")
            return before

    assert [handler({}, LambdaContext()) for _ in range(4)] == [False, True, True, True]
    assert db.stats()["pings"] >= 3


def test_the_users_settings_follow_the_connection_that_replaces_a_dead_one(pg_factory, make_db):
    from psycopg.rows import dict_row

    pg = pg_factory()
    db = make_db(pg.dsn)

    @db.lambda_handler
    def handler(event, context):
        with db.connection() as conn:
            if event.get("set"):
                conn.row_factory = dict_row
                conn.autocommit = True
            return conn.execute("SELECT 1 AS one").fetchone(), conn.autocommit

    assert handler({"set": True}, LambdaContext()) == ({"one": 1}, True)
    terminate(pg, *[h.driver.backend_pid(h.conn) for h in db._slots.all if h.conn is not None])  # (and its FATAL sent)
    assert handler({}, LambdaContext()) == ({"one": 1}, True)
    assert db.stats()["reconnects"] == 1


def test_prepare_threshold_zero_does_not_prepare_the_sdks_own_queries(pg_server, make_db):
    db = make_db(pg_server.dsn, guard_sample_interval=0, connect_kwargs={"prepare_threshold": 0})

    @db.lambda_handler
    def handler(event, context):
        with db.connection() as conn:
            conn.execute("SELECT %s::int", (1,))
            return conn.execute("SELECT name FROM pg_prepared_statements").fetchall()

    for _ in range(3):
        names = handler({}, LambdaContext())
    # Only the user's own statement (and the catalog query) is prepared; the guard's is not.
    assert len(names) <= 2
    assert db.stats()["connects"] == 1


def test_configure_runs_on_every_new_connection(pg_factory, make_db):
    from psycopg.rows import dict_row

    pg = pg_factory()
    seen = []

    def configure(conn):
        seen.append(conn.info.backend_pid)
        conn.row_factory = dict_row

    db = make_db(pg.dsn, configure=configure)

    @db.lambda_handler
    def handler(event, context):
        with db.connection() as conn:
            return conn.execute("SELECT 2 AS two").fetchone()

    assert handler({}, LambdaContext()) == {"two": 2}
    assert handler({}, LambdaContext()) == {"two": 2}
    terminate(pg, seen[-1])  # (and its FATAL sent: the next invocation must see it)
    assert handler({}, LambdaContext()) == {"two": 2}
    assert len(seen) == 2 and seen[0] != seen[1]


@pytest.mark.parametrize("driver", ["psycopg-async", "asyncpg"])
def test_configure_may_be_a_coroutine_function_for_async_drivers(pg_server, make_db, driver):
    calls = []

    async def configure(conn):
        if driver == "asyncpg":
            await conn.set_type_codec("json", encoder=str, decoder=lambda s: ("decoded", s), schema="pg_catalog")
        calls.append(1)

    db = make_db(pg_server.dsn, driver=driver, configure=configure)

    @db.lambda_handler
    async def handler(event, context):
        async with db.connection() as conn:
            if driver == "asyncpg":
                return await conn.fetchval("SELECT '{}'::json")
            return (await (await conn.execute("SELECT 1")).fetchone())[0]

    first, second = handler({}, LambdaContext()), handler({}, LambdaContext())
    assert first == second and calls == [1]
    if driver == "asyncpg":
        assert first == ("decoded", "{}")


def test_configure_that_leaves_a_transaction_open_is_a_config_error(pg_server, make_db):
    import lambdapool

    db = make_db(pg_server.dsn, configure=lambda conn: conn.execute("SELECT 1"))
    with pytest.raises(lambdapool.ConfigError, match="configure left the new connection inside a transaction"):
        with db.connection():
            pass
    assert backends(pg_server) == 0


def test_connect_kwargs_reach_the_driver(pg_server, make_db):
    db = make_db(pg_server.dsn, connect_kwargs={"options": "-c statement_timeout=1234"})
    with db.connection() as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "1234ms"


def test_connect_kwargs_from_the_environment_are_json(pg_server, monkeypatch):
    import lambdapool

    monkeypatch.setenv("LAMBDAPOOL_DSN", pg_server.dsn)
    monkeypatch.setenv("LAMBDAPOOL_CONNECT_KWARGS", '{"options": "-c work_mem=4321kB"}')
    db = lambdapool.Database.from_env()
    try:
        with db.connection() as conn:
            assert conn.execute("SHOW work_mem").fetchone()[0] == "4321kB"
    finally:
        db.close()
    monkeypatch.setenv("LAMBDAPOOL_CONNECT_KWARGS", "options=-c")
    with pytest.raises(lambdapool.ConfigError, match="connect_kwargs .from LAMBDAPOOL_CONNECT_KWARGS. must be a JSON"):
        lambdapool.Database.from_env()


def test_connect_kwargs_may_not_carry_the_endpoint_or_the_password():
    import lambdapool

    with pytest.raises(lambdapool.ConfigError, match="connect_kwargs may not set host, password"):
        lambdapool.Database("postgresql://u@h/db", connect_kwargs={"host": "x", "password": "hunter2"})


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_max_lifetime_replaces_an_old_connection_between_invocations(pg_server, make_db, driver):
    db = make_db(pg_server.dsn, driver=driver, max_lifetime=0.2)

    if driver == "psycopg":

        @db.lambda_handler
        def handler(event, context):
            with db.connection() as conn:
                return conn.info.backend_pid
    else:

        @db.lambda_handler
        async def handler(event, context):
            async with db.connection() as conn:
                await asyncio.sleep(0.3)  # older than max_lifetime by the end: kept to the end
                return conn.get_server_pid()

    first = handler({}, LambdaContext())
    if driver == "psycopg":
        import time

        from lambdapool.testing import wait_for

        # (waiting for the age condition itself: the connection is past max_lifetime)
        wait_for(lambda: all(time.monotonic() >= h.expires for h in db._slots.all), "the connection to age")
    second = handler({}, LambdaContext())
    assert first != second
    stats = db.stats()
    assert stats["expired"] == 1 and stats["connects"] == 2 and stats["reconnects"] == 0
