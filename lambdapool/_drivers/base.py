"""What every driver shares: connect parameters, the free liveness check, error classes."""

from __future__ import annotations

import re
import select
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# Runs after a rollback, outside any transaction. Not DISCARD ALL: that also drops prepared
# statements the drivers have cached (psycopg copes, asyncpg does not).
RESET_SQL = (
    "CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); RESET ALL; "
    "SET SESSION AUTHORIZATION DEFAULT; DISCARD TEMP; DISCARD SEQUENCES"
)
# Read once on a new connection after ``configure`` (with reset_session): what it SET, as one
# statement that sets it again after each RESET ALL (NULL if it set nothing). One SELECT, so
# every driver runs it whichever protocol it uses.
CONFIGURED_SQL = (
    "SELECT 'SELECT ' || string_agg(format('pg_catalog.set_config(%L, %L, false)', name, current_setting(name)), "
    "', ' ORDER BY name) FROM pg_catalog.pg_settings WHERE source = 'session'"
)


@dataclass(frozen=True)
class ConnectParams:
    """Everything one connect needs; ``repr`` shows where, never the password."""

    host: str | None
    port: int | None
    user: str | None
    dbname: str | None
    password: str | None = field(default=None, repr=False)
    sslmode: str | None = None
    sslrootcert: str | None = None
    application_name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # driver-specific keyword arguments
    # Every address, in order, when the DSN names several (libpq's multi-host DSN); host and
    # port are then the first.
    addresses: tuple[tuple[str | None, int | None], ...] = ()
    # the DSN's other libpq parameters (sslpassword too: no repr)
    dsn_params: dict[str, str] = field(default_factory=dict, repr=False)

    def hosts(self) -> tuple[tuple[str | None, int | None], ...]:
        return self.addresses if len(self.addresses) > 1 else ((self.host, self.port),)

    def where(self) -> str:
        at = ",".join(f"{host or '(default host)'}:{port or 5432}" for host, port in self.hosts())
        return f"{self.user or '(default user)'}@{at}/{self.dbname or ''}"


# A connection's probes, bound once per connection: (is_open, in_transaction), each a call with
# no arguments and no round trip, as the driver knows them (not the socket: see socket_watch).
# They run on every warm invocation.
Probes = tuple[Callable[[], bool], Callable[[], bool]]


class Watch(Protocol):
    """An idle connection's socket, watched (select.epoll / select.poll, or the two below)."""

    def poll(self, timeout: int) -> list[tuple[int, int]]: ...


class _Unwatchable:
    def poll(self, timeout: int) -> list[tuple[int, int]]:
        return [(-1, select.POLLIN)]  # cannot see the socket: report it readable, so it is pinged


class _NotWatched:
    def poll(self, timeout: int) -> list[tuple[int, int]]:
        return []  # (no connection: nothing to watch)


NOT_WATCHED: Watch = _NotWatched()


def socket_watch(fd: int | None) -> Watch:
    """A poller on an idle connection's socket, made once per connection: ``poll(0)`` is
    empty while nothing waits on it (one system call, no round trip).

    Readable on an idle connection means the server said something unasked: almost always a
    FATAL before it hung up (terminated backend, idle_session_timeout, a pooler's idle client
    timeout), sometimes a NOTIFY. Either way the caller verifies before a user statement runs.
    On Linux an epoll set of its own (its descriptor closes with it): epoll_wait reads a ready
    list, where poll() sets up and asks the socket on every call (~230 ns against ~320 ns here).
    """
    if fd is None or fd < 0:
        return _Unwatchable()
    if hasattr(select, "epoll"):
        watcher = select.epoll(1)
        watcher.register(fd, select.EPOLLIN)  # (errors and hang-ups are always reported)
        return watcher
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return poller


# A statement refused because the server is read-only (a hot standby, or a demoted writer)
READ_ONLY_SQLSTATE = "25006"
READ_ONLY_SERVER = "the server is read-only"  # (our own refusal of such a connection: see warm_async)


class ReadOnlyServer(ConnectionError):
    """A new connection landed on a read-only server while a writer is wanted."""


def read_only_error(exc: BaseException | None) -> bool:
    """Did ``exc``, or an error it was raised from (an ORM wraps the driver's), come from a
    read-only server?"""
    seen = 0
    while exc is not None and seen < 8:
        if getattr(exc, "sqlstate", None) == READ_ONLY_SQLSTATE:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


# SQLSTATEs worth another try: the server or pooler is full or not ready yet.
RETRY_SQLSTATES = {"53300", "53400", "57P03", "08000", "08001", "08004", "08006"}
AUTH_SQLSTATES = {"28P01", "28000"}
_RETRY_TEXT = (
    # a read-only server where a writer is wanted (libpq's target_session_attrs, asyncpg's):
    # a failover in progress, or a name that still leads to the old writer
    "hot standby mode",
    "session is read-only",
    "target attribute requirement",
    READ_ONLY_SERVER,
    "too many clients",
    "remaining connection slots are reserved",
    "too many connections",
    "starting up",
    "shutting down",
    "in recovery",
    "connection refused",
    "connection reset",
    "server closed the connection",
    "timeout expired",
    "timed out",
    "timed-out",
    "could not receive data",
    "no connection to the server",
    "terminating connection",
    "borrow",
    "network is unreachable",
    "connection timed out",
    "eof detected",
)
_AUTH_TEXT = (
    "password authentication failed",
    "pam authentication failed",
    "iam authentication failed",
    "no pg_hba.conf entry",
    "authentication failed",
)
# libpq gives no SQLSTATE for a failed connect (psycopg's error has none): the server's text
# for 28000, an unknown role.
_UNKNOWN_ROLE = re.compile(r'role "[^"]*" does not exist')


# RDS Proxy's own refusals (its troubleshooting page gives texts, no SQLSTATEs). The pool is
# full or the proxy sheds load: transient. Matched before the credential rules, because the
# IAM one is worded as an authentication failure ("The IAM authentication failed because of
# too many competing requests") and may carry a 28xxx SQLSTATE, yet the token is fine.
_PROXY_BUSY_TEXT = (
    "timed-out waiting to acquire database connection",
    "rate of connection to proxy exceeded",
    "maximum number of client connections to the proxy exceeded",
    "too many competing requests",
)
# Refusals that only a setting fixes: (text, the fix). Retrying or refreshing credentials
# cannot help, so they fail at once as a ConfigError (matched before the 28000 auth rule).
_CONFIG_TEXT = (
    # RDS Proxy: "IAM is allowed only with SSL connections." / "IAM authentication is allowed
    # only with SSL connections."
    (
        "allowed only with ssl connections",
        (
            "IAM authentication through RDS Proxy needs TLS: connect with sslmode=require (or verify-full with "
            "ssl_ca_file), not sslmode=disable/allow"
        ),
    ),
    # RDS Proxy with RequireTLS: "This RDS Proxy requires TLS connections."
    (
        "requires tls connections",
        "the proxy requires TLS (RequireTLS): connect with sslmode=require (or verify-full with ssl_ca_file)",
    ),
)


def connect_error_fix(exc: BaseException) -> str | None:
    """The setting that fixes a connect error classified 'config', else None."""
    text = str(exc).lower()
    return next((fix for needle, fix in _CONFIG_TEXT if needle in text), None)


def classify_connect_error(exc: BaseException) -> str:
    """'retry' (transient), 'auth' (credentials rejected), 'config' (a setting must change:
    see connect_error_fix) or 'fatal' (retrying cannot help)."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = str(exc).lower()
    if any(t in text for t in _PROXY_BUSY_TEXT):
        return "retry"
    if connect_error_fix(exc) is not None:
        return "config"
    if sqlstate in AUTH_SQLSTATES or any(t in text for t in _AUTH_TEXT) or _UNKNOWN_ROLE.search(text):
        return "auth"
    if sqlstate in RETRY_SQLSTATES or any(t in text for t in _RETRY_TEXT):
        return "retry"
    if is_missing_socket(exc):
        return "fatal"
    if isinstance(exc, (OSError, TimeoutError)):
        return "retry"
    return "fatal"


def is_missing_socket(exc: BaseException) -> bool:
    """No Unix socket file where the DSN points (/tmp/.s.PGSQL.5432, /cloudsql/...): nothing
    listens there, and waiting will not make a server appear. psycopg says so in its message,
    asyncpg raises FileNotFoundError: the same error, so the same answer for every driver."""
    return isinstance(exc, FileNotFoundError) or "no such file or directory" in str(exc).lower()
