"""psycopg 3, synchronous. Semantics follow psycopg_pool: a clean block commits, an error rolls back."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from lambdapool._drivers.base import RESET_SQL, ConnectParams, Probes

if TYPE_CHECKING:
    import psycopg
from lambdapool._drivers.params import keepalive_options


def connect_kwargs(p: ConnectParams, timeout: float) -> dict[str, Any]:
    """libpq's parameters: the DSN's own as they are (keepalives on by default, see
    drivers.params), then ours, then the user's connect_kwargs."""
    hosts = p.hosts()
    kwargs: dict[str, Any] = {**keepalive_options(p.dsn_params), **p.dsn_params}
    kwargs.update(
        {
            "host": ",".join(h or "" for h, _ in hosts) if len(hosts) > 1 else p.host,
            "port": ",".join(str(port or "") for _, port in hosts) if len(hosts) > 1 else p.port,
            "user": p.user,
            "password": p.password,
            "dbname": p.dbname,
            "sslmode": p.sslmode,
            "sslrootcert": p.sslrootcert,
            "application_name": p.application_name,
            # libpq counts whole seconds, at least 2, per host; the exact deadline is kept by the caller.
            "connect_timeout": max(2, math.floor(timeout)),
        }
    )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.update(p.options)
    return kwargs


# libpq's PQtransactionStatus values, read straight off the PGconn: going through conn.info
# builds an object and an enum per call, which showed up in the warm path's profile.
_IDLE, _ACTIVE, _INTRANS, _INERROR, _UNKNOWN = range(5)
_CONNECTION_OK = 0


def is_closed(conn: psycopg.BaseConnection[Any]) -> bool:
    return conn.broken or conn.pgconn.status != _CONNECTION_OK


def fileno(conn: psycopg.BaseConnection[Any]) -> int:
    return conn.pgconn.socket


def in_transaction(conn: psycopg.BaseConnection[Any]) -> bool:
    return conn.pgconn.transaction_status in (_INTRANS, _INERROR)


def probes(conn: psycopg.BaseConnection[Any]) -> Probes:
    pgconn = conn.pgconn  # (one for the connection's life)

    def is_open() -> bool:
        return not conn.broken and pgconn.status == _CONNECTION_OK

    def transaction_open() -> bool:
        return pgconn.transaction_status in (_INTRANS, _INERROR)

    return is_open, transaction_open


def read_only(conn: psycopg.BaseConnection[Any]) -> bool:
    """Does the server say it is read-only? From the parameters it reports by itself
    (PostgreSQL 14+: in_hot_standby; default_transaction_read_only), no round trip; False when
    it reports neither (an older server, a pooler that does not pass them on)."""
    status = conn.pgconn.parameter_status
    return status(b"in_hot_standby") == b"on" or status(b"default_transaction_read_only") == b"on"


def usable(conn: psycopg.BaseConnection[Any]) -> bool:
    pgconn = conn.pgconn
    return not conn.broken and pgconn.status == _CONNECTION_OK and pgconn.transaction_status != _UNKNOWN


# What a user may set on a connection and expects to keep: carried over to the connection
# that replaces it after a reconnect (adapters registered on conn.adapters are not: use
# the configure setting for those).
USER_SETTINGS = (
    "autocommit",
    "isolation_level",
    "read_only",
    "deferrable",
    "row_factory",
    "cursor_factory",
    "prepare_threshold",
    "prepared_max",
)


def user_settings(conn: psycopg.BaseConnection[Any]) -> dict[str, Any]:
    return {name: getattr(conn, name) for name in USER_SETTINGS if hasattr(conn, name)}


def _own_cursor(conn: psycopg.Connection[Any]) -> Any:
    from psycopg import ClientCursor, rows

    # ClientCursor: parameters bound client-side, one simple-protocol query (no Parse/Bind,
    # nothing prepared, nothing for a transaction-mode pooler to trip on).
    return ClientCursor(conn, row_factory=rows.tuple_row)


class _autocommit:
    """In autocommit for the block (if not already), then back to what the user had."""

    __slots__ = ("conn", "was")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.was = self.conn.autocommit
        if not self.was:
            self.conn.autocommit = True

    def __exit__(self, *exc: object) -> None:
        if not self.was and not self.conn.closed:
            try:
                self.conn.autocommit = False
            except Exception:  # broken meanwhile: the error that broke it is the one to report
                pass


def _can_drive_connect(psycopg: Any) -> bool:
    return hasattr(psycopg.Connection, "_connect_gen") and hasattr(psycopg.waiting, "wait_conn")


_CONNECT_OPTIONS = ("autocommit", "prepare_threshold", "row_factory", "cursor_factory")


def _connect_within(psycopg: Any, kwargs: dict[str, Any], timeout: float) -> Any:
    """Connect within exactly ``timeout`` seconds.

    libpq's connect_timeout is whole seconds and at least 2, so a deadline of 2.75 s (or 1.5 s)
    cannot be expressed; psycopg's own connect drives the same generator with that rounded
    value (psycopg/connection.py), so drive it with ours.
    Falls back to the public API when psycopg's internals differ (see _can_drive_connect).
    """
    from psycopg import errors
    from psycopg.conninfo import make_conninfo

    # connect()'s own keyword arguments, applied as it applies them (the rest is conninfo)
    options = {k: kwargs.pop(k) for k in _CONNECT_OPTIONS if k in kwargs}
    context = kwargs.pop("context", None)
    gen = psycopg.Connection._connect_gen(make_conninfo("", **kwargs))
    try:
        conn = psycopg.waiting.wait_conn(gen, interval=0.02, timeout=timeout)
    except errors._WaitTimeout:
        raise errors.ConnectionTimeout("connection timeout expired") from None
    if context is not None:  # an AdaptContext (Django's adapters template): a copy of its adapters
        from psycopg.adapt import AdaptersMap

        conn._adapters = AdaptersMap(context.adapters)
    for key, value in options.items():
        if value is not None or key == "prepare_threshold":  # (None is connect()'s default for the factories)
            setattr(conn, key, value)
    return conn


class PsycopgDriver:
    name = "psycopg"
    is_async: Literal[False] = False

    def connect(self, params: ConnectParams, timeout: float) -> Any:
        import psycopg

        kwargs = connect_kwargs(params, timeout)
        if not _can_drive_connect(psycopg):  # psycopg's internals moved: whole seconds, >= 2
            return psycopg.Connection.connect(**kwargs)
        return _connect_within(psycopg, kwargs, timeout)

    is_closed = staticmethod(is_closed)
    fileno = staticmethod(fileno)
    in_transaction = staticmethod(in_transaction)
    usable = staticmethod(usable)
    probes = staticmethod(probes)
    read_only = staticmethod(read_only)

    # The SDK's own statements run on a cursor of their own, with tuple rows and never
    # prepared, in autocommit (starting no transaction) and leave the user's settings as they
    # were: row_factory, prepare_threshold and autocommit are the user's.
    def ping(self, conn: psycopg.Connection[Any]) -> None:
        # psycopg_pool's check_connection: an empty query, outside any transaction.
        with _autocommit(conn):
            _own_cursor(conn).execute("", prepare=False)

    def query_row(self, conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        """One row of an internal query, in autocommit: it starts no transaction."""
        with _autocommit(conn):
            row: tuple[Any, ...] = _own_cursor(conn).execute(sql, params or None, prepare=False).fetchone()
            return row

    user_settings = staticmethod(user_settings)

    def apply_user_settings(self, conn: psycopg.Connection[Any], settings: dict[str, Any]) -> None:
        for name, value in settings.items():
            setattr(conn, name, value)

    def end_transaction(self, conn: psycopg.Connection[Any]) -> Literal["commit"]:
        """A clean block left a transaction open: psycopg_pool's connection() commits it."""
        conn.commit()
        return "commit"

    def rollback(self, conn: psycopg.Connection[Any]) -> None:
        conn.rollback()

    def reset(self, conn: psycopg.Connection[Any], configured: str = "") -> None:
        """Session state back to a new connection's; ``configured``: what configure SET, again."""
        sql = f"{RESET_SQL}; {configured}" if configured else RESET_SQL
        with _autocommit(conn):
            _own_cursor(conn).execute(sql, prepare=False)  # no parameters: one simple-protocol round trip

    def close(self, conn: psycopg.Connection[Any]) -> None:
        conn.close()

    terminate = close

    def backend_pid(self, conn: psycopg.Connection[Any]) -> int:
        return conn.info.backend_pid


if TYPE_CHECKING:  # mypy checks that the glue keeps the driver contract
    from lambdapool._drivers.contract import Driver

    _: Driver = PsycopgDriver()
