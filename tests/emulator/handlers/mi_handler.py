"""A Lambda Managed Instances handler: one lambdapool Database per worker process.

Event knobs: ``barrier`` (a directory) and ``parties``: each invocation leaves a file named
after its process there and waits until ``parties`` processes have, so that that many distinct
processes are seen holding an invocation at once (a condition, not a sleep). The answer
carries the process id, ``db.stats()`` and what the SDK saw of the mode.
"""

import os
import signal

import lambdapool
from lambdapool.tools.waiting import arrive_and_wait

if os.environ.get("SHUTDOWN_MARKER"):
    # Installed before the Database, which chains it after closing its own connections.
    def _goodbye(signum, frame):
        with open(os.environ["SHUTDOWN_MARKER"], "a") as f:
            f.write(f"{os.getpid()}\n")
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _goodbye)

db = lambdapool.Database.from_env(driver="psycopg")


@db.lambda_handler
def handler(event, context):
    event = event or {}
    with db.connection() as conn:
        (backend_pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    if event.get("barrier"):
        arrive_and_wait(event["barrier"], str(os.getpid()), int(event["parties"]), timeout=20, interval=0.005)
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "backend_pid": backend_pid,
        "stats": db.stats(),
        "init_type": db.invocation.init_type,
        "max_concurrency": os.environ.get("AWS_LAMBDA_MAX_CONCURRENCY"),
    }
