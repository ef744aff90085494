"""Flask apps on a (psycopg) Database: a query, a streamed response that queries while the
server iterates it, a failure, and the stats. ``gunicorn tests.frameworks.apps.wsgi_apps:app``
builds it from env; ``cloud_fn`` is a functions-framework target with @db.cloud_function."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import lambdapool


def flask_app(db: lambdapool.Database[Any]) -> Any:
    from flask import Flask, Response, jsonify

    app = Flask(__name__)

    @app.get("/sync")
    def query() -> Any:
        with db.connection() as conn:
            clean = conn.info.transaction_status == 0
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        return jsonify(pid=pid, clean=clean, os_pid=os.getpid())

    @app.get("/stream")
    def stream() -> Any:
        def rows() -> Iterator[str]:  # runs while the server iterates the response
            for i in range(3):
                with db.connection() as conn:
                    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                    yield f"{i}:{pid}:{db.invocation.number}\n"

        return Response(rows(), mimetype="text/plain")

    @app.get("/fail")
    def fail() -> Any:
        with db.connection() as conn:
            conn.execute("SELECT txid_current()")
            raise RuntimeError("boom")

    @app.get("/stats")
    def stats() -> Any:
        return jsonify(**db.stats(), os_pid=os.getpid())

    return app


def _from_env() -> Any:
    db = lambdapool.Database.from_env()
    return db, db.wsgi(flask_app(db))


if os.environ.get("LAMBDAPOOL_DSN"):
    db, app = _from_env()
