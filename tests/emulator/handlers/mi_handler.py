"""A Lambda Managed Instances handler: one lambdapool Database per worker process.

Event knobs: ``barrier`` (a directory) and ``parties``: each invocation leaves a file named
after its process there and waits until ``parties`` processes have, so that that many distinct
processes are seen holding an invocation at once (a condition, not a sleep). The answer
carries the process id, ``db.stats()`` and what the SDK saw of the mode.
"""

import contextlib
import os
import signal
from pathlib import Path

import lambdapool
from lambdapool.waiting import WaitTimeout, wait_for

if os.environ.get("SHUTDOWN_MARKER"):
    # Installed before the Database, which chains it after closing its own connections.
    def _goodbye(signum, frame):
        with open(os.environ["SHUTDOWN_MARKER"], "a") as f:
            f.write(f"{os.getpid()}\n")
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _goodbye)

db = lambdapool.Database.from_env(driver="psycopg")


def _wait_for_parties(directory: str, parties: int) -> None:
    """A barrier across processes (bounded: past 20 s the invocation goes on, the test's asserts judge)."""
    Path(directory, str(os.getpid())).touch()
    with contextlib.suppress(WaitTimeout):
        wait_for(lambda: len(os.listdir(directory)) >= parties, "the barrier's parties", timeout=20, interval=0.005)


@db.lambda_handler
def handler(event, context):
    event = event or {}
    with db.connection() as conn:
        (backend_pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    if event.get("barrier"):
        _wait_for_parties(event["barrier"], int(event["parties"]))
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "backend_pid": backend_pid,
        "stats": db.stats(),
        "init_type": db.invocation.init_type,
        "max_concurrency": os.environ.get("AWS_LAMBDA_MAX_CONCURRENCY"),
    }
