"""AWS Lambda handler on psycopg (sync): one warm connection per execution environment.

Deploy with the handler ``handler.handler`` and set LAMBDAPOOL_DSN (or DATABASE_URL), or the
rds-proxy settings (see the README). Locally: ``lambdapool emulate examples/lambda_psycopg/handler.py:handler``.
"""

from typing import Any

import lambdapool

# Module level: built once per execution environment, during init. Connects on first use.
db = lambdapool.Database.from_env(driver="psycopg")


@db.lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with db.connection() as conn:  # a psycopg.Connection; commits when the block exits cleanly
        row = conn.execute(
            "SELECT pg_backend_pid(), %s::int + 1", (int(event.get("n", 0)),)
        ).fetchone()
    assert row is not None  # (one row: a SELECT without FROM)
    return {
        "backend_pid": row[0],
        "result": row[1],
        "cold_start": db.invocation.cold_start,
        "invocation": db.invocation.number,
    }
