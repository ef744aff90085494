"""The handler ``lambdapool demo`` runs: examples/lambda_psycopg/handler.py, shipped in the wheel.

examples/ is not installed, so the demo carries this copy. It holds its connection for
``event["sleep"]`` seconds (default 0.05) so that concurrent invocations overlap, as real work
does. Settings come from the environment (``LAMBDAPOOL_DSN``, ``LAMBDAPOOL_POOLER``, ...).
"""

import lambdapool

# Module level: built once per execution environment, during init. Connects on first use.
db = lambdapool.Database.from_env(driver="psycopg")


@db.lambda_handler
def handler(event, context):
    with db.connection() as conn:  # a psycopg.Connection; commits when the block exits cleanly
        row = conn.execute("SELECT pg_backend_pid(), pg_sleep(%s)", (float(event.get("sleep", 0.05)),)).fetchall()[0]
    return {
        "backend_pid": row[0],
        "cold_start": db.invocation.cold_start,
        "invocation": db.invocation.number,
    }
