"""Every public name of lambdapool, used as a user would: checked with ``mypy --strict``
(tests/test_typing.py). Never imported by the tests themselves."""

from __future__ import annotations

from typing import Any

import asyncpg
import psycopg

import lambdapool
from lambdapool import AuthError, ConfigError, ConnectionUnavailable, Database, LambdapoolError
from lambdapool._runtime import Invocation
from lambdapool.stats import StatsDict

sync_db = lambdapool.Database("postgresql://u@h/db", driver="psycopg", pooler="direct")
default_db = Database("postgresql://u@h/db")
psycopg_async_db = Database("postgresql://u@h/db", driver="psycopg-async")
asyncpg_db = Database.from_env(driver="asyncpg")
errors: tuple[type[LambdapoolError], ...] = (AuthError, ConfigError, ConnectionUnavailable)
version: str = lambdapool.__version__


@sync_db.lambda_handler
def handler(event: dict[str, Any], context: Any) -> int:
    with sync_db.connection() as conn:
        typed: psycopg.Connection[Any] = conn
        row = typed.execute("SELECT 1").fetchone()
    inv: Invocation = sync_db.invocation
    return (row[0] if row else 0) + inv.number


@default_db.cloud_function
def function(request: Any) -> dict[str, int]:
    with default_db.connection() as conn:
        return {"pid": conn.info.backend_pid}


@psycopg_async_db.lambda_handler
async def psycopg_async_handler(event: dict[str, Any], context: Any) -> bool:
    async with psycopg_async_db.connection() as conn:
        typed: psycopg.AsyncConnection[Any] = conn
        return typed.closed


@asyncpg_db.lambda_handler
async def asyncpg_handler(event: dict[str, Any], context: Any) -> int:
    async with asyncpg_db.invocation_scope(context) as inv:
        async with asyncpg_db.connection() as conn:
            typed: asyncpg.Connection[Any] = conn
            value: int = await typed.fetchval("SELECT 1")
        return value + inv.number


def scoped() -> float:
    with sync_db.invocation_scope() as inv:
        return inv.remaining_time


stats: StatsDict = sync_db.stats()
connects: int = stats["connects"]
connect_ms: float = stats["connect_ms_total"]
sync_db.close()
