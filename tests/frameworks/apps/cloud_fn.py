"""functions-framework target: ``functions-framework --source tests/frameworks/apps/cloud_fn.py
--target query``; a Flask request in, @db.cloud_function around it."""

from __future__ import annotations

import os
from typing import Any

import lambdapool

db = lambdapool.Database.from_env(driver="psycopg")


@db.cloud_function
def query(request: Any) -> Any:
    if request.path.endswith("/stats"):
        return {**db.stats(), "os_pid": os.getpid()}
    with db.connection() as conn:
        clean = conn.info.transaction_status == 0
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    return {"pid": pid, "clean": clean, "os_pid": os.getpid()}
