"""Google Cloud Functions (HTTP and CloudEvent) on psycopg.

    functions-framework --target hello --source examples/cloud_function/main.py

Concurrent requests in one instance (gen2 concurrency, functions-framework threads) each get
their own connection, at most LAMBDAPOOL_MAX_PER_INSTANCE of them.
"""

from typing import Any

import lambdapool

db = lambdapool.Database.from_env(driver="psycopg")


@db.cloud_function
def hello(request: Any) -> dict[str, Any]:  # a flask.Request
    sleep = float(request.args.get("sleep", 0)) if request.args else 0.0
    with db.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid() FROM (SELECT pg_sleep(%s)) AS s", (sleep,)).fetchone()
    pid = row[0] if row else None
    return {"backend_pid": pid, "cold_start": db.invocation.cold_start, "invocation": db.invocation.number}


@db.cloud_function
def on_event(cloud_event: Any) -> None:  # a cloudevents.http.CloudEvent
    with db.connection() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS events (id text PRIMARY KEY, type text)")
        conn.execute(
            "INSERT INTO events VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (cloud_event["id"], cloud_event["type"]),
        )
