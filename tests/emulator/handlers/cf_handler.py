"""Cloud Functions handlers: concurrent requests on threads, one psycopg connection per thread."""

import os
import threading
import time

import psycopg

_local = threading.local()


def _connection():
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(
            os.environ["DATABASE_URL"], autocommit=True, application_name=os.environ.get("APP_NAME", "emulator-cf")
        )
    return conn


def fn(request):
    data = request.get_json(silent=True) or {}
    started = time.time()
    (backend_pid,) = (
        _connection().execute("SELECT pg_backend_pid() FROM pg_sleep(%s)", (data.get("sleep", 0),)).fetchone()
    )
    return {
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "backend_pid": backend_pid,
        "start": started,
        "end": time.time(),
    }


def on_event(cloud_event):
    with open(os.environ["EVENT_LOG"], "a") as f:
        f.write(f"{cloud_event['id']} {cloud_event['type']} {cloud_event.data['n']}\n")
