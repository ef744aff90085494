"""A writing handler per driver, for the failover tests: each invocation inserts its id and
answers the port of the server that took the write."""

from __future__ import annotations

import lambdapool

INSERT = "INSERT INTO writes (id) VALUES ({id}) RETURNING inet_server_port()"
SCHEMA = "CREATE TABLE writes (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())"


def writer_handler(db: lambdapool.Database):
    """``handler({"id": n}, context)``: one row written, atomically; the server's port back."""
    driver = db.settings.driver
    if driver == "psycopg":

        @db.lambda_handler
        def handler(event, context):
            with db.connection() as conn:
                return conn.execute(INSERT.format(id=int(event["id"]))).fetchone()[0]

    elif driver == "psycopg-async":

        @db.lambda_handler
        async def handler(event, context):
            async with db.connection() as conn:
                cur = await conn.execute(INSERT.format(id=int(event["id"])))
                return (await cur.fetchone())[0]

    else:

        @db.lambda_handler
        async def handler(event, context):
            async with db.connection() as conn, conn.transaction():
                return await conn.fetchval(INSERT.format(id=int(event["id"])))

    return handler


def written(server) -> set[int]:
    """The ids committed on ``server``."""
    return {int(line) for line in server.psql("SELECT id FROM writes").split() if line}
