"""pgbouncer: transaction-mode safe by default.

In transaction mode consecutive transactions of one client may run on different server
connections, so a named prepared statement made on one is missing on the next ("prepared
statement ... does not exist"). PgBouncer 1.21+ can track them (``max_prepared_statements``);
older ones cannot. Unless ``pgbouncer_prepared_statements`` says yours can, prepared statements
are off: psycopg ``prepare_threshold=None``, asyncpg ``statement_cache_size=0``.
``describe()`` reads SHOW POOLS / SHOW STATS from the admin console when ``pgbouncer_admin_dsn``
is given.
"""

from __future__ import annotations

from typing import Any

from lambdapool._config import Setting, redact_dsn
from lambdapool.adapters.base import Adapter


class PgBouncerAdapter(Adapter):
    name = "pgbouncer"
    OPTIONS = (
        *Adapter.OPTIONS,
        Setting(
            "pgbouncer_prepared_statements",
            bool,
            False,
            "true only for PgBouncer 1.21+ with max_prepared_statements > 0",
        ),
        Setting("pgbouncer_admin_dsn", str, None, "DSN of the admin console (dbname=pgbouncer) for describe()"),
    )

    def driver_options(self) -> dict[str, Any]:
        if self.options["pgbouncer_prepared_statements"]:
            return {}
        if self.settings.driver == "asyncpg":
            return {"statement_cache_size": 0}
        return {"prepare_threshold": None}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["prepared_statements"] = self.options["pgbouncer_prepared_statements"]
        admin = self.options["pgbouncer_admin_dsn"]
        if admin:
            out["admin"] = redact_dsn(admin)
            out["pools"], out["stats"] = show(admin, "POOLS"), show(admin, "STATS")
        return out


def show(admin_dsn: str, what: str) -> list[dict[str, Any]]:
    """Rows of ``SHOW <what>`` from PgBouncer's admin console, as dicts."""
    import psycopg

    # The admin console knows no transactions and only the simple protocol (no parameters).
    with psycopg.connect(admin_dsn, autocommit=True, prepare_threshold=None) as conn:
        cur = conn.execute(f"SHOW {what}")
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row)) for row in cur.fetchall()]
