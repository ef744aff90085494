"""Django's PostgreSQL ``DatabaseWrapper`` whose connection is lent by a ``lambdapool.Database``.

Theory of operation
-------------------
* One ``lambdapool.Database`` (sync psycopg driver) per distinct connection settings, per
  process (``_DATABASES``), so the warm connection outlives every ``DatabaseWrapper``: Django
  makes one per thread, and over ASGI one per request context.
* ``get_new_connection`` lends the warm connection (``db.connection()``, entered; lambdapool's
  liveness check, retries and deadline apply) instead of ``psycopg.connect``; ``_close`` gives
  it back, rolling back whatever Django left open. ``close_if_unusable_or_obsolete`` (the end of
  every request) always gives it back: a wrapper never keeps a connection between requests, so
  CONN_MAX_AGE and CONN_HEALTH_CHECKS have nothing to act on (the warm connection's life is
  lambdapool's ``max_lifetime``; its health check is lambdapool's).
* The connection is made as Django's own backend makes it: Django's connect arguments
  (``cursor_factory``, the adapters ``context`` for its timezone handling, ``prepare_threshold``,
  ``client_encoding`` and any psycopg OPTIONS) go to lambdapool's connect as ``connect_kwargs``;
  isolation level and ``init_connection_state`` (timezone, ``assume_role``) run on each lend, as
  they run on each Django connect.
* The session time zone is asked for in the startup packet (``options=-c TimeZone=...``), so
  Django finds it set and sends no ``SET TIME ZONE``, which would pin the session behind RDS
  Proxy (and the local proxy). PgBouncer refuses ``options`` (before 1.20): there Django's
  ``SET TIME ZONE`` runs, and PgBouncer carries it (TimeZone is one of its tracked parameters).
* Test databases: Django's maintenance connection (``_nodb_cursor``, to ``postgres``) is Django's
  own, closed at once; the warm connections to a test database are closed before it is dropped
  or cloned (Postgres refuses while sessions remain).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base as postgresql
from django.db.backends.postgresql.creation import DatabaseCreation as PostgresCreation
from django.db.backends.postgresql.psycopg_any import IsolationLevel, is_psycopg3
from django.utils.asyncio import async_unsafe

import lambdapool
from lambdapool.errors import ConfigError

# Django's connect parameters that lambdapool takes in the DSN (or as the password setting).
_IN_DSN = ("host", "port", "user", "dbname", "sslmode", "sslrootcert")
# lambdapool settings this backend derives from Django's own settings.
_DERIVED = ("dsn", "password", "driver")

if not is_psycopg3:
    raise ImproperlyConfigured("ENGINE 'lambdapool.django' needs psycopg 3: pip install 'psycopg[binary]>=3.1'")

_DATABASES: dict[str, tuple[str, lambdapool.Database[Any]]] = {}  # key -> (dbname, Database)
_LOCK = threading.Lock()


class _ClosedInTransaction(Exception):
    """Django closed its connection inside a transaction: the lend ends with a rollback."""


def release(dbname: str) -> None:
    """Close (for real) the warm connections this process keeps to database ``dbname``."""
    with _LOCK:
        gone = [key for key, (name, _) in _DATABASES.items() if name == dbname]
        dbs = [_DATABASES.pop(key)[1] for key in gone]
    for db in dbs:
        db.close()


class DatabaseCreation(PostgresCreation):  # type: ignore[misc]
    """Django's test-database creation, closing warm connections that would block DROP / clone."""

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        release(test_database_name)
        super()._destroy_test_db(test_database_name, verbosity)

    def _clone_test_db(self, suffix: Any, verbosity: int, keepdb: bool = False) -> None:
        release(self.connection.settings_dict["NAME"])  # CREATE DATABASE ... TEMPLATE needs it idle
        super()._clone_test_db(suffix, verbosity, keepdb)


class DatabaseWrapper(postgresql.DatabaseWrapper):  # type: ignore[misc]
    """``ENGINE: "lambdapool.django"``: see the module's docstring."""

    creation_class = DatabaseCreation

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The current lend: the connection() block and its invocation state (or None).
        self._lend: tuple[Any, Any] | None = None

    @property
    def pool(self) -> None:
        """Never Django's psycopg_pool: lambdapool lends the connection (check_settings refuses
        OPTIONS["pool"])."""
        return None

    def check_settings(self) -> None:
        super().check_settings()
        if self.settings_dict["OPTIONS"].get("pool"):
            raise ImproperlyConfigured(
                f"DATABASES[{self.alias!r}]: OPTIONS['pool'] (psycopg_pool) cannot be used with "
                "ENGINE 'lambdapool.django', which lends lambdapool's warm connection: remove 'pool' "
                "(max_per_instance in OPTIONS['lambdapool'] bounds the connections per process)"
            )

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        params.pop("lambdapool", None)  # ours, not psycopg's
        return params

    # -- lambdapool's Database for these settings ------------------------------------------
    def lambdapool_database(self) -> lambdapool.Database[Any]:
        """The process's ``lambdapool.Database`` for this connection's settings."""
        return self._database(self.get_connection_params())

    def _database(self, conn_params: dict[str, Any]) -> lambdapool.Database[Any]:
        given = self.settings_dict["OPTIONS"].get("lambdapool") or {}
        if not isinstance(given, dict):
            raise ConfigError(
                f"DATABASES[{self.alias!r}]['OPTIONS']['lambdapool'] must be a dict of lambdapool.Database "
                f"settings such as {{'pooler': 'rds-proxy'}}, got {type(given).__name__}"
            )
        derived = sorted(k for k in _DERIVED if k in given and not (k == "driver" and given[k] == "psycopg"))
        if derived:
            raise ConfigError(
                f"DATABASES[{self.alias!r}]['OPTIONS']['lambdapool'] may not set {', '.join(derived)}: the "
                "endpoint and password come from NAME, USER, PASSWORD, HOST and PORT, and the driver is "
                "psycopg (Django's sync ORM)"
            )
        key = repr((sorted(given.items(), key=lambda kv: kv[0]), sorted(conn_params.items(), key=lambda kv: kv[0])))
        found = _DATABASES.get(key)
        if found is not None:
            return found[1]
        with _LOCK:
            found = _DATABASES.get(key)
            if found is None:
                found = _DATABASES[key] = (conn_params.get("dbname") or "", self._make_database(given, conn_params))
        return found[1]

    def _make_database(self, given: dict[str, Any], conn_params: dict[str, Any]) -> lambdapool.Database[Any]:
        from psycopg.conninfo import make_conninfo

        kwargs = dict(conn_params)
        password = kwargs.pop("password", None) or None
        dsn = make_conninfo("", **{k: kwargs.pop(k) for k in _IN_DSN if kwargs.get(k) not in (None, "")})
        for k in _IN_DSN:
            kwargs.pop(k, None)
        pooler = given.get("pooler") or os.environ.get("LAMBDAPOOL_POOLER") or "direct"
        timezone = self.timezone_name
        if timezone and pooler != "pgbouncer":  # in the startup packet: no SET TIME ZONE (module doc)
            kwargs["options"] = f"{kwargs.get('options') or ''} -c TimeZone={timezone}".strip()
        kwargs.update(given.get("connect_kwargs") or {})
        settings = {k: v for k, v in given.items() if k not in ("connect_kwargs", "driver")}
        return lambdapool.Database.from_env(
            driver="psycopg", dsn=dsn or None, password=password, connect_kwargs=kwargs, **settings
        )

    # -- lend and give back ------------------------------------------------------------------
    @async_unsafe  # type: ignore[untyped-decorator]
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if self.alias == NO_DB_ALIAS:  # test-database maintenance: Django's own, closed at once
            return super().get_new_connection(conn_params)
        # The isolation level as Django's get_new_connection sets it (it reads self.isolation_level).
        options = self.settings_dict["OPTIONS"]
        set_isolation_level = "isolation_level" in options
        if set_isolation_level:
            try:
                self.isolation_level = IsolationLevel(options["isolation_level"])
            except ValueError:
                raise ImproperlyConfigured(
                    f"Invalid transaction isolation level {options['isolation_level']} "
                    f"specified. Use one of the psycopg.IsolationLevel values."
                ) from None
        else:
            self.isolation_level = IsolationLevel.READ_COMMITTED
        db = self._database(conn_params)
        block = db.connection()
        conn = block.__enter__()
        self._lend = (block, db._current.get())
        if set_isolation_level:
            conn.isolation_level = self.isolation_level
        return conn

    @async_unsafe  # type: ignore[untyped-decorator]
    def ensure_connection(self) -> None:
        lend = self._lend
        if lend is not None and lend[1].conn is not self.connection:  # type: ignore[has-type]
            # The invocation that lent it has ended (and took it back): forget it, lend anew.
            self._lend = None
            self.connection = None
        super().ensure_connection()

    def _close(self) -> None:
        lend, self._lend = self._lend, None
        if lend is None:
            return super()._close()
        block, state = lend
        if state.conn is not self.connection:  # already taken back by its invocation's end
            return None
        holder = state.holder
        left_open = holder is not None and holder.conn is not None and holder.in_transaction()
        # A transaction Django left open is rolled back (as closing would); a connection left
        # broken is dropped by lambdapool, the rest goes back warm.
        block.__exit__(_ClosedInTransaction if left_open else None, None, None)
        return None

    def close_if_unusable_or_obsolete(self) -> None:
        """Start and end of every request: give the connection back warm (lambdapool checks it
        at the next lend), whatever CONN_MAX_AGE says."""
        if self.connection is not None:
            self.close()
