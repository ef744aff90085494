"""AWS Lambda handler on asyncpg: ``async def`` runs on one event loop kept for the instance."""

from typing import Any

import lambdapool

db = lambdapool.Database.from_env(driver="asyncpg")


@db.lambda_handler
async def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    async with db.connection() as conn:  # an asyncpg.Connection
        async with conn.transaction():
            value = await conn.fetchval("SELECT $1::int + 1", int(event.get("n", 0)))
        pid = conn.get_server_pid()
    return {
        "backend_pid": pid,
        "result": value,
        "cold_start": db.invocation.cold_start,
        "invocation": db.invocation.number,
    }
