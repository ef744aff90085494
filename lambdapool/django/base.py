"""Django's PostgreSQL ``DatabaseWrapper`` whose connection is lent by a ``lambdapool.Database``.

Theory of operation
-------------------
* One ``lambdapool.Database`` (sync psycopg driver) per distinct connection settings, per
  process (``_DATABASES``), so the warm connection outlives every ``DatabaseWrapper``: Django
  makes one per thread, and over ASGI one per request context.
* ``get_new_connection`` lends a warm connection (lambdapool's liveness check, retries and
  deadline apply) instead of ``psycopg.connect``: the running invocation's, or a slot of the
  wrapper's own when another wrapper holds that one (``lambdapool.django.lending``); ``_close``
  gives it back, rolling back whatever Django left open, and so does a connect that fails after
  the lend began. ``close_if_unusable_or_obsolete`` (the end of
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
from lambdapool.django.lending import Lend
from lambdapool.errors import AuthError, ConfigError, ConnectionUnavailable

# Django's connect parameters that lambdapool takes in the DSN (or as the password setting).
_IN_DSN = ("host", "port", "user", "dbname", "sslmode", "sslrootcert")
# lambdapool settings this backend derives from Django's own settings.
_DERIVED = ("dsn", "password", "driver")

if not is_psycopg3:
    raise ImproperlyConfigured("ENGINE 'lambdapool.django' needs psycopg 3: pip install 'psycopg[binary]>=3.1'")

_DATABASES: dict[str, tuple[str, lambdapool.Database[Any]]] = {}  # key -> (dbname, Database)
_LOCK = threading.Lock()


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
    _lend: Lend | None = None  # the lend behind self.connection (lambdapool.django.lending)

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
        # assume_role too: Django's SET ROLE stays in the session, which outlives the wrapper
        role = self.settings_dict["OPTIONS"].get("assume_role")
        key = repr((sorted(given.items()), sorted(conn_params.items()), role))  # (keys unique: values never compared)
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
    @property
    def connection(self) -> Any:
        """Django's connection: None once given back (Django's close, a failed connect, or the
        end of the invocation that lent it), so Django lends anew rather than using a connection
        no longer its own."""
        conn = self._connection
        lend = self._lend
        if lend is not None and not lend.holds(conn):
            return None
        return conn

    @connection.setter
    def connection(self, conn: Any) -> None:
        self._connection = conn

    @async_unsafe  # type: ignore[untyped-decorator]
    def connect(self) -> None:
        try:
            super().connect()
        except BaseException:  # whatever failed after the lend began (settings, signals): end it
            if self._lend is not None:
                self._lend.end()
            raise

    @async_unsafe  # type: ignore[untyped-decorator]
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if self.alias == NO_DB_ALIAS:  # test-database maintenance: Django's own, closed at once
            return super().get_new_connection(conn_params)
        # The isolation level as Django's get_new_connection sets it (it reads self.isolation_level).
        options = self.settings_dict["OPTIONS"]
        wanted = None  # the server's default
        if "isolation_level" in options:
            try:
                self.isolation_level = wanted = IsolationLevel(options["isolation_level"])
            except ValueError:
                raise ImproperlyConfigured(
                    f"Invalid transaction isolation level {options['isolation_level']} "
                    f"specified. Use one of the psycopg.IsolationLevel values."
                ) from None
        else:
            self.isolation_level = IsolationLevel.READ_COMMITTED
        if self._lend is not None:  # one the invocation took back: forget it
            self._lend.end()
        try:
            lend = self._lend = Lend.begin(self._database(conn_params), self, self.alias)
        except (AuthError, ConnectionUnavailable) as exc:
            # A database error to Django (wrap_database_errors makes it django.db.OperationalError),
            # as a failed psycopg.connect would be.
            raise self.Database.OperationalError(str(exc)) from exc
        conn = lend.conn
        if conn.isolation_level != wanted:  # set on every lend: the warm connection outlives wrappers
            conn.isolation_level = wanted
        return conn

    def _close(self) -> None:
        if self._lend is None:  # Django's own connection (test-database maintenance)
            super()._close()
            return
        self._lend.end()

    def is_usable(self) -> bool:
        return self.connection is not None and bool(super().is_usable())

    def close_if_unusable_or_obsolete(self) -> None:
        """Start and end of every request: give the connection back warm (lambdapool checks it
        at the next lend), whatever CONN_MAX_AGE says."""
        if self.connection is not None:
            self.close()
