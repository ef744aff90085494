"""The fan-out and fault suites' handler: one lambdapool Database per instance, settings from
``LAMBDAPOOL_*``, and a user statement whose every execution the server records.

Each invocation inserts one row keyed by its request id into ``fanout_runs``, through
``fanout_attempt(request_id)``, a function that also writes ``fanout-attempt <id>`` to the
server log with ``RAISE LOG``. The row is transactional (it is there only if the invocation
committed); the log line is not (it is written even when the transaction later rolls back), so
counting log lines per id shows whether any statement ran twice, committed or not.

Event knobs: ``pause`` (seconds to wait before touching the database: keeps a wave of
instances overlapping, as a function doing other work does), ``hold`` (seconds to keep the
transaction open, holding a pooled backend), ``barrier`` (a directory) and ``parties``: each
invocation leaves a file named after its request there and waits until ``parties`` have, so a
wave is known to be in flight all at once (a condition, where a pause only makes it likely).
The answer carries the instance's ``db.stats()``.
"""

import os
import time

import lambdapool
from lambdapool.tools.waiting import arrive_and_wait

db = lambdapool.Database.from_env(driver="psycopg")


@db.lambda_handler
def handler(event, context):
    event = event or {}
    if event.get("barrier"):
        arrive_and_wait(event["barrier"], context.aws_request_id, int(event["parties"]), timeout=30, interval=0.02)
    if event.get("pause"):
        time.sleep(float(event["pause"]))
    with db.connection() as conn:
        conn.execute("INSERT INTO fanout_runs (request_id) VALUES (fanout_attempt(%s))", (context.aws_request_id,))
        if event.get("hold"):
            conn.execute("SELECT pg_sleep(%s)", (float(event["hold"]),))
    return {
        "request_id": context.aws_request_id,
        "pid": os.getpid(),
        "cold_start": db.invocation.cold_start,
        "stats": db.stats(),
    }
