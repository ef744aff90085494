"""An async Lambda handler runs on the instance's one event loop. Lambda calls it one
invocation at a time; called from several threads at once (a test, an app's own threads),
the calls take turns on that loop instead of failing."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.support import LambdaContext


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg-async"])
def test_async_handler_called_from_threads_at_once_serves_every_call(pg_server, make_db, driver):
    # GIVEN an async handler that holds its connection across an await
    db = make_db(pg_server.dsn, driver=driver)

    @db.lambda_handler
    async def handler(event, context):
        async with db.connection() as conn:
            await asyncio.sleep(0.005)
            if driver == "asyncpg":
                return await conn.fetchval("SELECT $1::int", event["n"])
            cur = await conn.execute("SELECT %s::int", (event["n"],))
            return (await cur.fetchone())[0]

    assert handler({"n": 0}, LambdaContext()) == 0  # the first call makes the instance's loop
    results, errors = [], []

    def caller(base: int) -> None:
        for i in range(20):
            try:
                results.append(handler({"n": base + i}, LambdaContext()))
            except Exception as exc:
                errors.append(exc)

    # WHEN four threads call it at once
    threads = [threading.Thread(target=caller, args=(100 * t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN every call ran and answered its own event, one at a time on the one warm connection
    assert errors == []
    assert sorted(results) == sorted(100 * t + i for t in range(4) for i in range(20))
    stats = db.stats()
    assert stats["invocations"] == 81 and stats["connects"] == 1


def test_a_runtime_error_from_the_handler_itself_is_raised_not_retried(pg_server, make_db):
    db = make_db(pg_server.dsn, driver="asyncpg")
    calls = []

    @db.lambda_handler
    async def handler(event, context):
        calls.append(1)
        raise RuntimeError("the handler's own")

    for expected in (1, 2):  # the first call (loop made) and a warm one
        with pytest.raises(RuntimeError, match="the handler's own"):
            handler({}, LambdaContext())
        assert len(calls) == expected
