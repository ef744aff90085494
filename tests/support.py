"""Helpers shared by the tests: a Lambda context stand-in, one query handler per driver,
and the ``make_db`` fixture (re-exported by tests/conftest.py)."""

from __future__ import annotations

import time
import uuid

import pytest

import lambdapool

DRIVERS = ["psycopg", "psycopg-async", "asyncpg"]


class LambdaContext:
    """The two things the SDK reads from Lambda's context object."""

    def __init__(self, remaining_ms: int = 30_000) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + remaining_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def query_handler(db: lambdapool.Database):
    """A Lambda handler running ``event['sql']`` (one value back) on the invocation's connection."""
    driver = db.settings.driver
    if driver == "psycopg":

        @db.lambda_handler
        def handler(event, context):
            with db.connection() as conn:
                cur = conn.execute(event.get("sql", "SELECT pg_backend_pid()"))
                while cur.nextset():  # several statements: the last one's value
                    pass
                return cur.fetchone()[0]

    elif driver == "psycopg-async":

        @db.lambda_handler
        async def handler(event, context):
            async with db.connection() as conn:
                cur = await conn.execute(event.get("sql", "SELECT pg_backend_pid()"))
                while cur.nextset():
                    pass
                return (await cur.fetchone())[0]

    else:

        @db.lambda_handler
        async def handler(event, context):
            async with db.connection() as conn:
                *setup, last = [q for q in event.get("sql", "SELECT pg_backend_pid()").split(";") if q.strip()]
                if setup:  # several statements: asyncpg runs them with the simple protocol
                    await conn.execute(";".join(setup))
                return await conn.fetchval(last)

    return handler


@pytest.fixture
def make_db():
    """Build Databases that are closed at teardown."""
    made: list[lambdapool.Database] = []

    def make(dsn: str, **settings) -> lambdapool.Database:
        db = lambdapool.Database(dsn, **settings)
        made.append(db)
        return db

    yield make
    for db in made:
        db.close()


def backends(pg, app: str = "lambdapool:%") -> int:
    """Client backends the server holds for an application_name pattern (lambdapool's own by default)."""
    return pg.backends(app)
