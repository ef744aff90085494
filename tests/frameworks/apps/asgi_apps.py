"""ASGI apps on a Database: FastAPI (sync and async endpoints, a sync ``yield`` dependency)
and plain Starlette. Each query endpoint answers the backend pid and whether the connection
came clean (no transaction open when lent)."""

from __future__ import annotations

import os
from typing import Any

import lambdapool


async def _query_async(db: lambdapool.Database[Any]) -> dict[str, Any]:
    """On an async driver, or on psycopg from inside the loop (blocking, but correct)."""
    driver = db.settings.driver
    if driver == "psycopg":
        with db.connection() as conn:
            clean = conn.info.transaction_status == 0
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    elif driver == "psycopg-async":
        async with db.connection() as conn:
            clean = conn.info.transaction_status == 0
            cur = await conn.execute("SELECT pg_backend_pid()")
            pid = (await cur.fetchone())[0]
    else:
        async with db.connection() as conn:
            clean = not conn.is_in_transaction()
            pid = await conn.fetchval("SELECT pg_backend_pid()")
    return {"pid": pid, "clean": clean, "os_pid": os.getpid()}


def _query_sync(db: lambdapool.Database[Any]) -> dict[str, Any]:
    with db.connection() as conn:
        clean = conn.info.transaction_status == 0
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    return {"pid": pid, "clean": clean, "os_pid": os.getpid()}


async def _fail_async(db: lambdapool.Database[Any]) -> None:
    """Open a transaction, write in it, then raise: the block and the invocation roll back."""
    if db.settings.driver == "psycopg":
        with db.connection() as conn:
            conn.execute("SELECT txid_current()")
            raise RuntimeError("boom")
    async with db.connection() as conn:
        if db.settings.driver == "asyncpg":
            await conn.execute("BEGIN; SELECT txid_current()")
        else:
            await conn.execute("SELECT txid_current()")
        raise RuntimeError("boom")


def stats(db: lambdapool.Database[Any]) -> dict[str, Any]:
    return {**db.stats(), "os_pid": os.getpid(), "last_request_id": db.invocation.request_id,
            "idle_slots": len(db._slots.idle), "slots": len(db._slots.all)}  # fmt: skip


def fastapi_app(db: lambdapool.Database[Any]) -> Any:
    from fastapi import Depends, FastAPI

    app = FastAPI()

    def sync_conn() -> Any:  # a sync yield dependency: FastAPI enters and exits it on two threads
        with db.connection() as conn:
            yield conn

    @app.get("/async")
    async def async_route() -> dict[str, Any]:
        return await _query_async(db)

    @app.get("/stats")
    async def stats_route() -> dict[str, Any]:
        return stats(db)

    @app.get("/fail")
    async def fail_route() -> None:
        await _fail_async(db)

    if db.settings.driver == "psycopg":

        @app.get("/sync")
        def sync_route() -> dict[str, Any]:  # run in the threadpool
            return _query_sync(db)

        @app.get("/dep")
        def dep_route(conn: Any = Depends(sync_conn)) -> dict[str, Any]:
            clean = conn.info.transaction_status == 0
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            return {"pid": pid, "clean": clean, "os_pid": os.getpid()}

    return app


def starlette_app(db: lambdapool.Database[Any]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def query(request: Request) -> JSONResponse:
        return JSONResponse(await _query_async(db))

    async def stats_route(request: Request) -> JSONResponse:
        return JSONResponse(stats(db))

    async def fail(request: Request) -> PlainTextResponse:
        await _fail_async(db)
        return PlainTextResponse("unreachable")

    return Starlette(routes=[Route("/async", query), Route("/stats", stats_route), Route("/fail", fail)])
