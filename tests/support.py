"""Helpers shared by the tests: a Lambda context stand-in, one query handler per driver,
the ``make_db`` fixture (re-exported by tests/conftest.py), :func:`terminate` and
:func:`need_cli_parts`."""

from __future__ import annotations

import time
import uuid

import pytest

import lambdapool
from lambdapool.tools.waiting import wait_for

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


def terminate(pg, *pids: int) -> bool:
    """``pg_terminate_backend`` each backend on ``pg``, then wait until they have all exited, so
    their FATAL has reached the clients' sockets; True if every one was signalled.

    A PostgresServer is reached over its Unix socket (trust: a password changed by the test
    does not matter), anything else through its ``.dsn``."""
    import psycopg

    from lambdapool.tools.testing.postgres import SUPERUSER

    ids = [int(pid) for pid in pids]
    if getattr(pg, "base_dir", None) is not None:
        conn = psycopg.connect(host=str(pg.base_dir), port=pg.port, user=SUPERUSER, dbname=pg.database, autocommit=True)
    else:
        conn = psycopg.connect(pg.dsn, autocommit=True)
    with conn:
        (signalled,) = conn.execute(
            "SELECT coalesce(bool_and(pg_terminate_backend(pid)), true) FROM unnest(%s::int[]) AS pid", (ids,)
        ).fetchone()
        wait_for(lambda: not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                          (ids,)).fetchone()[0], f"backends {ids} to exit", interval=0.005)  # fmt: skip
    return bool(signalled)


def need_cli_parts(*, pgbouncer: bool = False, moto: bool = False) -> None:
    """Check what ``lambdapool demo`` / ``emulate`` will need on this machine (Postgres binaries,
    awslambdaric; PgBouncer, moto if asked): skip on a laptop, fail in CI."""
    import importlib.util

    from lambdapool.tools.testing.postgres import PostgresNotFound, find_bin_dir
    from lambdapool.tools.testing.pytest_plugin import missing

    try:
        find_bin_dir()
    except PostgresNotFound as exc:
        missing("Postgres server binaries", str(exc))
    if importlib.util.find_spec("awslambdaric") is None:
        missing("awslambdaric", "pip install 'lambdapool[dev]'")
    if pgbouncer:
        from lambdapool.tools.testing.pgbouncer import PgBouncerNotFound, find_pgbouncer

        try:
            find_pgbouncer()
        except PgBouncerNotFound as exc:
            missing("PgBouncer", str(exc))
    if moto and importlib.util.find_spec("moto") is None:
        missing("moto[server]", "pip install 'lambdapool[dev]'")
