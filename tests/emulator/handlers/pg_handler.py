"""A Lambda handler as people write it without lambdapool: a module-global psycopg connection,
opened on first use and reused while it is alive. Test knobs come in the event."""

import os
import signal
import sys

import psycopg

CONN = None
CONNECTS = 0
INVOCATIONS = 0


def _connection():
    global CONN, CONNECTS
    if CONN is None or CONN.closed:
        CONN = psycopg.connect(
            os.environ["DATABASE_URL"], autocommit=True, application_name=os.environ.get("APP_NAME", "emulator")
        )
        CONNECTS += 1
    return CONN


def _goodbye(signum, frame):
    """What a shutdown hook does: close the connection, leave a trace, exit."""
    if CONN is not None:
        CONN.close()
    with open(os.environ["SHUTDOWN_MARKER"], "a") as f:
        f.write(f"{os.getpid()}\n")
    sys.exit(0)


if os.environ.get("SHUTDOWN_MARKER"):
    signal.signal(signal.SIGTERM, _goodbye)


def handler(event, context):
    global INVOCATIONS
    INVOCATIONS += 1
    event = event or {}
    if event.get("fail"):
        raise ValueError(event["fail"])
    if event.get("echo"):  # no database: large payloads both ways
        return {"echo": event["echo"], "pad": "y" * event.get("pad", 0)}
    (backend_pid,) = (
        _connection().execute("SELECT pg_backend_pid() FROM pg_sleep(%s)", (event.get("sleep", 0),)).fetchone()
    )
    out = {
        "pid": os.getpid(),
        "backend_pid": backend_pid,
        "invocation": INVOCATIONS,
        "connects": CONNECTS,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "function_name": context.function_name,
        "request_id": context.aws_request_id,
    }
    if event.get("env"):
        out["env"] = dict(os.environ)
    return out
