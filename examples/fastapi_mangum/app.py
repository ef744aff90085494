"""FastAPI on AWS Lambda through Mangum: each request one invocation on the warm connection.

``LAMBDAPOOL_DRIVER=asyncpg`` (the default here) or ``psycopg``. The async route awaits an
asyncpg (or, with psycopg, runs a sync) query; the sync route runs in FastAPI's threadpool
and needs the sync driver, psycopg (with asyncpg it answers from the async path).

Lambda handler: ``app.handler``.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from mangum import Mangum

import lambdapool

db: lambdapool.Database[Any] = lambdapool.Database.from_env(driver=os.environ.get("LAMBDAPOOL_DRIVER", "asyncpg"))
app = FastAPI()


async def add_one(n: int) -> int:
    if db.is_async:
        async with db.connection() as conn:  # asyncpg.Connection
            return int(await conn.fetchval("SELECT $1::int + 1", n))
    return add_one_sync(n)


def add_one_sync(n: int) -> int:
    with db.connection() as conn:  # psycopg.Connection
        row = conn.execute("SELECT %s::int + 1", (n,)).fetchone()
        assert row is not None
        return int(row[0])


def answer(result: int) -> dict[str, Any]:
    inv = db.invocation
    return {"result": result, "invocation": inv.number, "cold_start": inv.cold_start}


@app.get("/items/{n}")
async def item(n: int) -> dict[str, Any]:
    return answer(await add_one(n))


@app.get("/items/{n}/sync")
def item_sync(n: int) -> dict[str, Any]:  # FastAPI runs it in a worker thread
    if db.is_async:  # an async driver's connection lives on the event loop, not in this thread
        raise RuntimeError("the sync route needs LAMBDAPOOL_DRIVER=psycopg")
    return answer(add_one_sync(n))


# lifespan="off": Mangum would otherwise run the app's startup and shutdown on every call.
handler = Mangum(db.asgi(app), lifespan="off")
