"""Cloud Run functions logging in to Cloud SQL with IAM: ``pooler="cloud-sql", iam_auth=True``.

Run by tests/gcp/test_cloud_functions_iam.py under functions-framework: ``DRIVER`` picks the
driver, ``DATABASE_URL`` is the proxy (no password: the token is the password), the token comes
from ``GCE_METADATA_HOST``. HTTP functions answer with what the instance saw; CloudEvent
functions append it to ``RESULTS_FILE`` (their answer is an empty 200).
"""

import json
import os

import lambdapool

DRIVER = os.environ["DRIVER"]
db = lambdapool.Database(os.environ["DATABASE_URL"], pooler="cloud-sql", iam_auth=True, driver=DRIVER)


def _seen(value: object) -> dict:
    stats = db.stats()
    keys = ("connects", "reuses", "reconnects", "auth_refreshes")
    return {"value": value, "pid": os.getpid(), "cold_start": db.invocation.cold_start, **{k: stats[k] for k in keys}}


def _record(cloud_event, seen: dict) -> None:
    with open(os.environ["RESULTS_FILE"], "a") as f:
        f.write(json.dumps({"id": cloud_event["id"], **seen}) + "\n")


async def _http_async(request):
    async with db.connection() as conn:
        return _seen(await conn.fetchval("SELECT 1"))


async def _event_async(cloud_event):
    async with db.connection() as conn:
        _record(cloud_event, _seen(await conn.fetchval("SELECT 1")))


def _http_sync(request):
    with db.connection() as conn:
        return _seen(conn.execute("SELECT 1").fetchone()[0])


def _event_sync(cloud_event):
    with db.connection() as conn:
        _record(cloud_event, _seen(conn.execute("SELECT 1").fetchone()[0]))


# asyncpg needs `async def` functions, psycopg (sync) plain ones
http_fn = db.cloud_function(_http_async if DRIVER == "asyncpg" else _http_sync)
event_fn = db.cloud_function(_event_async if DRIVER == "asyncpg" else _event_sync)
