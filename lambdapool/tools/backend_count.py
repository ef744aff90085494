"""How many client backends a Postgres server holds, as ``pg_stat_activity`` says.

Each count is its own autocommit statement (inside a transaction ``pg_stat_activity`` is a frozen
snapshot) and leaves out the asking connection's own backend.
"""

from __future__ import annotations

from typing import Any

CLIENT_BACKENDS = (
    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
)


def count_on(conn: Any, application_name_like: str | None = None) -> int:
    """Client backends, on an open autocommit psycopg connection; only those whose
    ``application_name`` matches the LIKE pattern, when one is given."""
    if application_name_like is None:
        row = conn.execute(CLIENT_BACKENDS).fetchone()
    else:
        row = conn.execute(CLIENT_BACKENDS + " AND application_name LIKE %s", (application_name_like,)).fetchone()
    return int(row[0])


def client_backends(dsn: str, application_name_like: str | None = None, connect_timeout: int = 5) -> int:
    """Client backends on the server at ``dsn`` (a connection of its own, closed after)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
        return count_on(conn, application_name_like)
