"""The warm connection an instance keeps across invocations (sync drivers).

DO NOT EDIT: generated from ``_warm_async.py`` by ``tools/unasync.py``.

Theory of operation
-------------------
acquire (first ``db.connection()`` of an invocation):
  * no connection: connect (with retries) - a *connect*;
  * a connection whose socket is quiet and which was used less than ``ping_after_idle`` ago:
    hand it out - a *reuse*, costing the driver's own open check and one poll of the socket
    (drivers.base.socket_watch, made once per connection), and no round trip;
  * readable socket (the server spoke unasked: usually a FATAL before hanging up) or a long
    idle gap (a freeze: a silently dropped peer only shows on a round trip): ping it; a good
    ping is a reuse, a bad one drops it and connects anew - a *reconnect*;
  * all before any user statement runs, so no statement is ever sent twice.
release (end of the invocation): when nothing is open, nothing is to be reset and the adapter
has no say, the lender gives the slot back as it is (the lender's ``finish_warm``);
otherwise release(): roll back whatever is open, reset session state if asked, drop a
connection left broken or one the adapter does not want kept warm.
connect: retries transient errors (server or pooler full, refused, not ready) with backoff
(lambdapool._retry: a network blip briefly, a refusal for capacity on a longer, decorrelated
scale), and an auth failure once after refreshing the credentials; never past the deadline.
Failures raise ConnectionUnavailable / AuthError chained to the driver's error, scrubbed of
its secrets (lambdapool._scrub).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lambdapool._drivers.base import (
    CONFIGURED_SQL,
    NOT_WATCHED,
    READ_ONLY_SERVER,
    ReadOnlyServer,
    Watch,
    classify_connect_error,
    connect_error_fix,
    socket_watch,
)
from lambdapool._drivers.contract import Connection
from lambdapool._retry import CONNECT_DEADLINE, REFUSED_MEMORY, Backoff, describe_error, is_refusal
from lambdapool._scrub import detach, driver_error
from lambdapool.errors import AuthError, ConfigError, ConnectionUnavailable, LambdapoolError
from lambdapool.stats import Stats

if TYPE_CHECKING:
    from lambdapool._config import Settings
    from lambdapool._drivers.contract import Driver
    from lambdapool._runtime import InvocationState
    from lambdapool.adapters.base import Adapter

logger = logging.getLogger("lambdapool")

UserSettings = dict[str, Any]  # what the user set on a connection (the driver's user_settings)
# A new connection, whether a connect attempt was refused for capacity, and what configure SET
Opened = tuple[Connection, bool, str]

# Seconds of retrying after which a connect says so at WARNING: a handler stuck connecting
# should show why in its logs before its deadline, not only when it gives up.
RETRY_WARNING_AFTER = 3.0


class Connector:
    """Opens connections for one Database: adapter parameters, driver, retries."""

    def __init__(self, driver: Driver, adapter: Adapter, settings: Settings) -> None:
        self.driver = driver
        self.adapter = adapter
        self.settings = settings
        self.refused_delay = 0.0  # the last refusal's backoff delay, and when it was chosen
        self.refused_at = float("-inf")
        self.wants_writer = adapter.wants_writer

    def connect(self, deadline: float, stats: Stats, carried: UserSettings | None = None) -> Opened:
        """A new connection, set up as the user's own: ``configure`` run, then ``carried`` (the
        settings the user gave the connection it replaces, such as autocommit or row_factory)
        applied. Also: was an attempt refused for capacity (the server or pooler was full; the
        attempts are counted in ``stats``), and the statement that sets again what ``configure``
        SET (see _set_up)."""
        token = CONNECT_DEADLINE.set(deadline)
        try:
            return self._attempts(deadline, stats, carried)
        except LambdapoolError as error:
            detach(error)  # its context is the driver's error, which holds the password
            raise
        finally:
            CONNECT_DEADLINE.reset(token)

    def _attempts(self, deadline: float, stats: Stats, carried: UserSettings | None) -> Opened:
        started = time.monotonic()
        attempts = 0
        refreshed = False
        refused = False  # (an outage's "connection refused" is not the server being full)
        recently = started - self.refused_at < REFUSED_MEMORY
        backoff = Backoff(deadline - started, self.refused_delay) if recently else Backoff(deadline - started)
        earlier = ""  # the error before the last: the last attempt may be cut short by the deadline
        warned = False
        while True:
            params = self.adapter.connect_params()
            where = params.where()
            remaining = deadline - time.monotonic()
            attempts += 1
            t0 = time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError("no time left before the deadline")
                conn = self.driver.connect(params, min(self.settings.connect_timeout, remaining))
                if self.wants_writer and self.driver.read_only(conn):
                    self._refuse_read_only(conn, stats)
            except Exception as exc:
                stats.incr("connect_failures")
                kind = classify_connect_error(exc)
                detail = describe_error(exc, (params.password,))
                if kind == "config":  # only a setting fixes it (e.g. RDS Proxy's IAM needs TLS)
                    raise ConfigError(
                        f"{where} via pooler {self.adapter.name!r} refused the connection ({detail}): "
                        f"{connect_error_fix(exc)}"
                    ) from driver_error(exc, (params.password,))
                if kind == "auth":
                    if not refreshed and self.adapter.invalidate_credentials():
                        refreshed = True
                        stats.incr("auth_refreshes")
                        logger.info("lambdapool: credentials rejected by %s; fetched them again", where)
                        continue
                    raise AuthError(
                        f"{where} rejected the credentials"
                        + (" even after fetching them again" if refreshed else "")
                        + f" ({detail}); check the user, the password/secret and pg_hba / the proxy's auth"
                    ) from driver_error(exc, (params.password,))
                elapsed = time.monotonic() - started
                delay = backoff.delay(exc)
                if is_refusal(exc):
                    refused = True
                    self.refused_delay, self.refused_at = delay, time.monotonic()
                if kind == "fatal" or time.monotonic() + delay >= deadline:
                    budget = deadline - started
                    why = "the error is not transient" if kind == "fatal" else f"the budget of {budget:.2f}s ran out"
                    raise ConnectionUnavailable(
                        f"could not connect to {where} via pooler {self.adapter.name!r}: "
                        f"{attempts} attempt{'s' if attempts > 1 else ''} in {elapsed:.2f}s, stopped because "
                        f"{why}; last error: {detail}"
                        + (f" (the one before: {earlier})" if earlier and earlier != detail else "")
                    ) from driver_error(exc, (params.password,))
                earlier = detail
                stats.incr("connect_retries")
                logger.debug("lambdapool: connect to %s failed (%s); retrying in %.3fs", where, detail, delay)
                if not warned and time.monotonic() + delay - started >= RETRY_WARNING_AFTER:
                    warned = True  # (once per connect: the final error tells the rest)
                    logger.warning(
                        "lambdapool: still trying to connect to %s via pooler %r: %d attempt%s in %.1fs, "
                        "next in %.1fs, %.1fs left before giving up; last error: %s",
                        where,
                        self.adapter.name,
                        attempts,
                        "s" if attempts > 1 else "",
                        elapsed,
                        delay,
                        deadline - time.monotonic(),
                        detail,
                    )
                time.sleep(delay)
                continue
            stats.incr("connects")
            stats.add("connect_ms_total", (time.monotonic() - t0) * 1000.0)
            return conn, refused, self._set_up(conn, carried)

    def _refuse_read_only(self, conn: Connection, stats: Stats) -> None:
        """A writer is wanted and the server says it is read-only (the name still leads to a
        demoted writer, or to a standby): not kept; tried again, as a server not ready yet."""
        stats.incr("read_only_drops")
        try:
            self.driver.close(conn)
        except Exception:
            pass
        raise ReadOnlyServer(
            f"{READ_ONLY_SERVER} (in_hot_standby or default_transaction_read_only is on) and a writer is "
            "wanted; set target_session_attrs=read-only (or any) in the dsn if a reader will do"
        )

    def _set_up(self, conn: Connection, carried: UserSettings | None) -> str:
        """Run ``configure`` and apply ``carried``. With ``reset_session``, also read back what
        configure SET, as the statement that sets it again after each RESET ALL: the session
        the user configured is the one every invocation starts with."""
        configure = self.settings.configure
        configured = ""
        try:
            if configure is not None:
                configure(conn)
                if self.driver.in_transaction(conn):
                    raise ConfigError(
                        "configure left the new connection inside a transaction: commit or roll back "
                        "before it returns (or set conn.autocommit = True there)"
                    )
                if self.settings.reset_session:
                    configured = (self.driver.query_row(conn, CONFIGURED_SQL))[0] or ""
            if carried:
                self.driver.apply_user_settings(conn, carried)
            return configured
        except BaseException:
            try:
                self.driver.close(conn)
            except Exception:
                pass
            raise


def _no() -> bool:
    return False  # (the probes of no connection)


class WarmConnection:
    """One slot of an instance: at most one connection, lent to one invocation at a time."""

    # (slotted: its fields sit in the object itself, fewer memory lines on the warm path)
    __slots__ = (
        "connector",
        "driver",
        "ping_after_idle",
        "max_lifetime",
        "reset_session",
        "may_close",
        "stats",
        "counts",
        "conn",
        "is_open",
        "in_transaction",
        "watch",
        "last_used",
        "expires",
        "outcome",
        "refused",
        "carried",
        "configured",
        "wants_writer",
    )

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.driver = connector.driver
        settings = connector.settings
        self.ping_after_idle = settings.ping_after_idle
        self.max_lifetime = settings.max_lifetime or float("inf")
        self.reset_session = settings.reset_session
        self.may_close = connector.adapter.may_close
        self.stats = Stats()  # this slot's own counters: one request holds it at a time
        self.counts = self.stats.values  # (the same dict, one lookup nearer)
        self.conn: Connection = None
        # The connection's probes, bound once per connection (see drivers.base.Probes)
        self.is_open: Callable[[], bool] = _no
        self.in_transaction: Callable[[], bool] = _no
        self.watch: Watch = NOT_WATCHED  # poller on the connection's socket
        self.last_used = 0.0
        self.expires = 0.0  # time.monotonic() after which the connection is replaced (max_lifetime)
        self.outcome = ""  # what the last acquire did: reuse, connect or reconnect
        self.refused = False  # was the last connect refused for capacity (the server or pooler was full)?
        # The user's settings of the connection, for its successor: read before the SDK runs a
        # statement of its own on it (a statement that kills it can leave the SDK's autocommit behind)
        self.carried: UserSettings | None = None
        self.configured = ""  # the statement that sets configure's SETs again after a reset
        self.wants_writer = connector.wants_writer

    def reuse(self, state: InvocationState) -> Connection:
        """Lend the warm connection to ``state`` (an InvocationState) if that needs no round
        trip (the common case): open, its socket quiet, used less than ``ping_after_idle`` ago,
        younger than ``max_lifetime``. Else None: call acquire()."""
        conn = self.conn
        if conn is None:
            return None
        counts = self.counts
        counts["liveness_checks"] += 1
        now = time.monotonic()
        if (
            not self.is_open()
            or self.watch.poll(0)
            or now - self.last_used >= self.ping_after_idle
            or now >= self.expires
        ):
            return None
        counts["reuses"] += 1
        self.outcome = state.outcome = "reuse"
        state.conn = conn
        return conn

    def acquire(self, deadline: float) -> Connection:
        """After reuse() said no: verify the connection with a ping, or (re)connect."""
        conn = self.conn
        if conn is not None:
            self.carried = self.driver.user_settings(conn)
        if conn is not None and time.monotonic() >= self.expires:
            self.stats.incr("expired")  # older than max_lifetime: replaced between invocations
            self.discard(read_settings=False)
            conn = None
        if conn is not None:
            if not self.driver.is_closed(conn) and self._ping_ok(conn):
                self.stats.incr("reuses")
                self.outcome = "reuse"
                return conn
            self.discard(read_settings=False)
            self._connect(deadline)
            self.stats.incr("reconnects")
            self.outcome = "reconnect"
            return self.conn
        self._connect(deadline)
        self.outcome = "connect"
        return self.conn

    def _connect(self, deadline: float) -> None:
        conn, self.refused, self.configured = self.connector.connect(deadline, self.stats, self.carried)
        self.conn = conn
        self.is_open, self.in_transaction = self.driver.probes(conn)
        self.watch = socket_watch(self.driver.fileno(conn))
        self.expires = time.monotonic() + self.max_lifetime

    def _ping_ok(self, conn: Connection) -> bool:
        self.stats.incr("pings")
        try:
            self.driver.ping(conn)
            return True
        except Exception as exc:
            logger.info("lambdapool: warm connection failed its ping (%s); reconnecting", type(exc).__name__)
            return False

    def release(self) -> None:
        """End of invocation: leave the connection idle and clean, or drop it (broken, or the
        adapter wants it closed: the direct adapter's budget guard)."""
        conn = self.conn
        if conn is None:
            return
        self.last_used = time.monotonic()
        self.carried = self.driver.user_settings(conn)
        keep = True
        try:
            if not self.driver.usable(conn):
                keep = False
            else:
                if self.driver.in_transaction(conn):
                    self.stats.incr("rollbacks")
                    self.driver.rollback(conn)
                if self.reset_session:
                    self.stats.incr("resets")
                    self.driver.reset(conn, self.configured)
                if not self.connector.adapter.keep_warm(self.driver, conn, self.refused):
                    self.stats.incr("guard_closes")
                    keep = False
                self.refused = False
        except Exception as exc:
            logger.info("lambdapool: cleaning the connection failed (%s); dropping it", type(exc).__name__)
            keep = False
        if not keep:
            self.discard(read_settings=False)

    def _drop(self, read_settings: bool) -> Connection:
        """Forget the connection. ``read_settings``: keep the user's settings of it for the next
        one (False where they were read before the SDK's own statements ran on it)."""
        conn, self.conn, self.watch = self.conn, None, NOT_WATCHED
        if conn is not None and read_settings:
            self.carried = self.driver.user_settings(conn)
        return conn

    def drop_read_only(self) -> None:
        """An invocation's statement was refused as the server is read-only (SQLSTATE 25006)
        while a writer is wanted (a failover demoted it): not kept warm, so the next connect
        finds the writer (the next host, a fresh DNS lookup)."""
        self.stats.incr("read_only_drops")
        logger.info("lambdapool: the server is read-only and a writer is wanted; dropping the connection")
        self.discard()

    def discard(self, *, read_settings: bool = True) -> None:
        conn = self._drop(read_settings)
        if conn is None:
            return
        self.stats.incr("discarded")
        try:
            self.driver.close(conn)
        except Exception:  # already dead: nothing to say goodbye to
            pass

    def terminate(self, *, read_settings: bool = True) -> None:
        """Close without awaiting (signal handlers, before a snapshot)."""
        conn = self._drop(read_settings)
        if conn is not None:
            try:
                self.driver.terminate(conn)
            except Exception:
                pass
