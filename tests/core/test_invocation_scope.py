"""``db.invocation_scope()``: the one seam every decorator and integration is built on."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

import lambdapool
from tests.support import DRIVERS, LambdaContext


def test_a_scope_is_one_numbered_invocation_with_the_lambda_deadline(pg_server, make_db):
    db = make_db(pg_server.dsn)
    with db.invocation_scope(LambdaContext(remaining_ms=4_000)) as first:
        with db.connection() as conn:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert first.number == 1 and first.cold_start
        assert 3.0 < first.remaining_time <= 4.0  # from the context, not invocation_timeout (60 s)
        assert db.invocation.number == 1
    with db.invocation_scope() as second:
        with db.connection() as conn:
            assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
        assert second.number == 2 and not second.cold_start
        assert 59 < second.remaining_time <= 60  # invocation_timeout's default
    stats = db.stats()
    assert (stats["invocations"], stats["cold_starts"], stats["connects"], stats["reuses"]) == (2, 1, 1, 1)


def test_a_scope_gives_back_what_it_holds_even_when_the_block_forgot(pg_server, make_db):
    db = make_db(pg_server.dsn, max_per_instance=1)
    with db.invocation_scope():
        block = db.connection()
        conn = block.__enter__()  # never exited: the scope's end releases it anyway
        conn.execute("CREATE TEMP TABLE left_open (x int)")  # a transaction, left open
    with db.invocation_scope(), db.connection() as conn:
        assert conn.info.transaction_status.name == "IDLE"  # rolled back at the end of the scope
    assert db.stats()["rollbacks"] >= 1 and db.stats()["open_connections"] == 1


def test_a_scope_inside_an_invocation_joins_it(pg_server, make_db):
    db = make_db(pg_server.dsn)

    @db.lambda_handler
    def handler(event, context):
        with db.invocation_scope() as inner:  # e.g. Mangum(db.asgi(app)) under @db.lambda_handler
            with db.connection() as conn:
                conn.execute("SELECT 1")
            return inner.number

    assert [handler({}, None), handler({}, None)] == [1, 2]
    assert db.stats()["invocations"] == 2


@pytest.mark.parametrize("driver", ["psycopg-async", "asyncpg"])
def test_async_scope_on_an_async_driver(pg_server, make_db, driver):
    db = make_db(pg_server.dsn, driver=driver)

    async def invocation() -> int:
        async with db.invocation_scope() as inv:
            async with db.connection() as conn:
                if driver == "asyncpg":
                    await conn.fetchval("SELECT 1")
                else:
                    await conn.execute("SELECT 1")
            return inv.number

    async def main() -> list[int]:
        return [await invocation() for _ in range(5)]

    assert asyncio.run(main()) == [1, 2, 3, 4, 5]
    assert db.stats()["connects"] == 1 and db.stats()["reuses"] == 4


def ended_elsewhere(db, use_scope: bool) -> None:
    """Enter a connection() block in one thread and leave it in another, each with its own
    copy of the context, as FastAPI runs a sync ``yield`` dependency (anyio's to_thread)."""
    holder: dict = {}

    def enter() -> None:
        holder["block"] = block = db.connection()
        holder["conn"] = block.__enter__()
        holder["conn"].execute("SELECT 1")

    def leave() -> None:
        holder["block"].__exit__(None, None, None)

    for step in (enter, leave):
        ctx = contextvars.copy_context()
        thread = threading.Thread(target=ctx.run, args=(step,))
        thread.start()
        thread.join()


@pytest.mark.parametrize("use_scope", [False, True], ids=["ad-hoc", "in-a-scope"])
def test_a_block_may_end_in_another_thread_and_context_without_leaking_its_slot(pg_server, make_db, use_scope):
    # Before the seam, the exit looked its invocation up in the context variable, found None in
    # the second thread's context ("'NoneType' object has no attribute 'depth'") and never gave
    # the slot back: with max_per_instance=1 every later request waited and failed.
    db = make_db(pg_server.dsn, max_per_instance=1, acquire_timeout=2)
    errors = []
    for _ in range(20):
        try:
            if use_scope:
                with db.invocation_scope():
                    ended_elsewhere(db, use_scope)
            else:
                ended_elsewhere(db, use_scope)
        except Exception as exc:  # (threads swallow theirs: the next iteration would time out)
            errors.append(exc)
    with db.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert errors == []
    assert db.stats()["connects"] == 1 and db.stats()["open_connections"] == 1


def test_a_connection_the_user_closed_is_never_handed_out_again(pg_server, make_db):
    db = make_db(pg_server.dsn)

    @db.lambda_handler
    def handler(event, context):
        with db.connection() as conn:
            conn.close()  # what SQLAlchemy's NullPool does at checkin
        with db.connection() as conn:  # the same invocation asks again
            return conn.execute("SELECT 1").fetchone()[0]

    assert [handler({}, None) for _ in range(5)] == [1] * 5
    assert db.stats()["connects"] == 6  # one per invocation, plus the one closed in the first


@pytest.mark.parametrize("driver", DRIVERS)
def test_lambda_handler_takes_any_callable(pg_server, make_db, driver):
    db = make_db(pg_server.dsn, driver=driver)

    class Handler:  # an object with __call__, as Mangum is: it has no __name__
        def __init__(self) -> None:
            self.calls = 0

        def __call__(self, event, context):
            self.calls += 1
            return db.invocation.number

    handler = db.lambda_handler(Handler())
    assert [handler({}, None) for _ in range(3)] == [1, 2, 3]


def test_a_decorator_that_hides_an_async_def_is_named_in_the_error():
    import functools

    db = lambdapool.Database("postgresql://u@h/db", driver="asyncpg")

    def log_metrics(fn):  # Powertools' decorators wrap an async def in a plain def like this
        @functools.wraps(fn)
        def wrapper(event, context):
            return fn(event, context)

        return wrapper

    with pytest.raises(lambdapool.ConfigError, match="innermost"):

        @db.lambda_handler
        @log_metrics
        async def handler(event, context):
            return 1
