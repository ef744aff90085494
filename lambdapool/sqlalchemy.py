"""SQLAlchemy 2 engines whose pool lends the invocation's warm connection.

``db.sqlalchemy_engine(**kw)`` (driver ``psycopg``) and ``db.sqlalchemy_async_engine(**kw)``
(``psycopg-async``, ``asyncpg``) build an ordinary SQLAlchemy engine with the dialect, the
user's engine arguments and a :class:`LambdapoolPool`. A checkout lends the connection
``db.connection()`` yields (inside an invocation: the invocation's; outside one: an ad-hoc
invocation of its own, ended at checkin); a checkin gives it back to lambdapool, never
closing it. The dialect sees one "new DBAPI connection" per warm connection: its on-connect
hooks and first-connect initialisation run then, and again only after lambdapool connects
anew (a reconnect, a replaced connection).

SQLAlchemy invalidating a connection (a disconnect error, ``Connection.invalidate()``) makes
lambdapool drop it, so the next checkout gets a fresh one. ``pool_pre_ping`` and
``pool_recycle`` are refused: lambdapool's liveness check at acquire (``ping_after_idle``)
and ``max_lifetime`` do that job, before any statement runs.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy.pool import Pool
from sqlalchemy.pool.base import _ConnectionRecord

from lambdapool._runtime import InvocationState
from lambdapool.errors import ConfigError, LambdapoolError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from lambdapool._database import Core
    from lambdapool._warm import WarmConnection
    from lambdapool._warm_async import AsyncWarmConnection

DIALECTS = {
    "psycopg": "postgresql+psycopg",
    "psycopg-async": "postgresql+psycopg_async",
    "asyncpg": "postgresql+asyncpg",
}

# Engine arguments that would build or tune a pool of SQLAlchemy's own: lambdapool is the pool.
POOL_ARGS = {
    "poolclass": "the pool is lambdapool's (one warm connection per invocation); use sqlalchemy.create_engine "
    "for a pool of SQLAlchemy's own",
    "pool": "the pool is lambdapool's",
    "creator": "connections are lambdapool's: set connect_kwargs / configure on the Database",
    "async_creator": "connections are lambdapool's: set connect_kwargs / configure on the Database",
    "pool_size": "an instance holds max_per_instance connections (a Database setting)",
    "max_overflow": "an instance holds max_per_instance connections (a Database setting)",
    "pool_timeout": "waiting for a connection is bounded by acquire_timeout (a Database setting)",
    "pool_use_lifo": "idle connections are already lent most recently used first",
    "pool_recycle": "use the Database's max_lifetime (seconds), which replaces a connection between invocations",
    "pool_pre_ping": "lambdapool checks liveness at every acquire (and pings after ping_after_idle seconds "
    "idle) before any statement runs",
}
# connect_args that the dialect's own DBAPI adapter takes (asyncpg's), not the driver's connect.
ADAPTER_ARGS = ("prepared_statement_cache_size", "prepared_statement_name_func")

CONCURRENT = (
    "this invocation already has a SQLAlchemy connection checked out: lambdapool lends one connection per "
    "invocation, so use one Session / Connection at a time (close or commit the first, or pass its "
    "connection: Session(bind=conn))"
)


def _unique_statement_name() -> str:
    # SQLAlchemy's PgBouncer recipe: names no other client's statement on a shared server connection has.
    return f"__asyncpg_{uuid.uuid4()}__"


def _check_driver(core: Core, want_async: bool) -> None:
    driver = core.settings.driver
    if want_async and not core.lender.is_async:
        raise ConfigError(
            f"db.sqlalchemy_async_engine() needs an async driver (driver='psycopg-async' or 'asyncpg'); "
            f"this Database uses driver={driver!r}: call db.sqlalchemy_engine() instead"
        )
    if not want_async and core.lender.is_async:
        raise ConfigError(
            f"db.sqlalchemy_engine() needs the sync driver (driver='psycopg'); this Database uses "
            f"driver={driver!r}: call db.sqlalchemy_async_engine() instead"
        )


def _url(core: Core) -> sqlalchemy.URL:
    """The engine's URL: where, for display (engine.url); never the password. lambdapool connects."""
    parts = core.settings.parts
    try:
        return sqlalchemy.URL.create(
            DIALECTS[core.settings.driver], username=parts.user, host=parts.host, port=parts.port, database=parts.dbname
        )
    except Exception:  # a DSN SQLAlchemy's URL cannot spell (several hosts): the dialect is what matters
        return sqlalchemy.URL.create(DIALECTS[core.settings.driver])


def _pool(core: Core, kw: dict[str, Any]) -> LambdapoolPool:
    for name, why in POOL_ARGS.items():
        if name in kw and not (name == "pool_pre_ping" and not kw[name]):
            raise ConfigError(f"{name} is not for a lambdapool engine: {why}")
    kw.pop("pool_pre_ping", None)
    connect_args = dict(kw.pop("connect_args", None) or {})
    unknown = sorted(set(connect_args) - set(ADAPTER_ARGS))
    if unknown:
        raise ConfigError(
            f"connect_args {', '.join(unknown)} would never reach the driver: lambdapool makes the connections, "
            "so pass them as the Database's connect_kwargs (LAMBDAPOOL_CONNECT_KWARGS)"
        )
    if (
        core.settings.driver == "asyncpg"
        and core.settings.pooler == "pgbouncer"
        and not core.adapter.options.get("pgbouncer_prepared_statements")
    ):
        # Transaction mode: SQLAlchemy's asyncpg dialect prepares every statement itself; cached
        # or clashing names break when the next transaction lands on another server connection.
        connect_args.setdefault("prepared_statement_cache_size", 0)
        connect_args.setdefault("prepared_statement_name_func", _unique_statement_name)
    options = {
        k: kw.pop(v)
        for k, v in (
            ("echo", "echo_pool"),
            ("logging_name", "pool_logging_name"),
            ("reset_on_return", "pool_reset_on_return"),
        )
        if v in kw
    }
    return LambdapoolPool(core, connect_args, **options)


def create_engine(core: Core, **engine_kwargs: Any) -> sqlalchemy.Engine:
    """``db.sqlalchemy_engine()``: a :class:`sqlalchemy.Engine` (driver ``psycopg``)."""
    _check_driver(core, want_async=False)
    pool = _pool(core, engine_kwargs)
    engine = sqlalchemy.create_engine(_url(core), pool=pool, **engine_kwargs)
    pool._adopt_dialect(engine)
    return engine


def create_async_engine(core: Core, **engine_kwargs: Any) -> AsyncEngine:
    """``db.sqlalchemy_async_engine()``: a :class:`sqlalchemy.ext.asyncio.AsyncEngine`."""
    from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

    _check_driver(core, want_async=True)
    pool = _pool(core, engine_kwargs)
    engine = sa_create_async_engine(_url(core), pool=pool, **engine_kwargs)
    pool._adopt_dialect(engine.sync_engine)
    return engine


class _Record(_ConnectionRecord):
    """SQLAlchemy's record of one warm connection (``lp_raw``), lent to ``lp_state``."""

    lp_raw: Any = None
    lp_state: Any = None


class LambdapoolPool(Pool):
    """A SQLAlchemy pool that lends the invocation's warm lambdapool connection."""

    def __init__(self, core: Core, adapter_args: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(self._connect, **kw)
        self._core = core
        self._lender = core.lender
        self._current = core.current
        self._adapter_args = dict(adapter_args or {})
        self._context: Any = None  # what the dialect would connect with (psycopg: its adapters map)
        self._records: dict[Any, _Record] = {}  # slot (WarmConnection) -> record of its connection
        if core.lender.is_async:
            from sqlalchemy.util.concurrency import await_, in_greenlet

            self._await, self._in_greenlet = await_, in_greenlet

    def _adopt_dialect(self, engine: sqlalchemy.Engine) -> None:
        dialect = engine.dialect
        _, cparams = dialect.create_connect_args(engine.url)
        if cparams.get("client_encoding") is not None:
            raise ConfigError("client_encoding: set it in the Database's connect_kwargs ({'client_encoding': ...})")
        self._context = cparams.get("context")

    # -- checkout / checkin ------------------------------------------------------------------
    def _do_get(self) -> _Record:
        state = self._current.get()
        if state is None:  # outside any invocation (create_all at import): its own, until checkin
            state = InvocationState(self._core.instance, None, counted=False)
            state.token = self._current.set(state)
        raw = self._enter(state)
        try:
            holder = state.holder
            rec = self._records.get(holder)
            if rec is not None and rec.lp_state is not None:
                raise LambdapoolError(CONCURRENT)
            if rec is not None and rec.dbapi_connection is not None and rec._soft_invalidate_time > rec.starttime:
                holder.terminate()  # soft-invalidated by the user: a fresh connection, within this lend
                raw = self._enter(state)
                self._exit(state)
                rec = None
            if rec is None or rec.lp_raw is not raw or rec.dbapi_connection is None:
                # A connection this pool has not seen (new, replaced, or made before the engine):
                # the record connects through _connect(), and SQLAlchemy's connect events run.
                rec = _Record(self, connect=False)
                rec.lp_raw = raw
                self._records[holder] = rec
            rec.lp_state = state
            return rec
        except BaseException:
            self._exit(state)
            raise

    def _do_return_conn(self, record: Any) -> None:
        state, record.lp_state = record.lp_state, None
        if state is not None:
            self._exit(state)

    def _enter(self, state: InvocationState) -> Any:
        lender = self._lender
        return self._await(lender.enter(state)) if lender.is_async else lender.enter(state)

    def _exit(self, state: InvocationState) -> None:
        lender = self._lender
        if not lender.is_async:
            lender.exit(state, None)
        elif self._in_greenlet():
            self._await(lender.exit(state, None))
        else:  # garbage collection of an async connection never checked in: no I/O possible here
            state.depth -= 1
            if state.token is not None and not state.depth:
                token, state.token = state.token, None
                try:
                    self._current.reset(token)
                except ValueError:
                    pass
                lender.abandon(state)

    # -- the DBAPI connection the dialect sees -------------------------------------------------
    def _connect(self, connection_record: Any = None) -> Any:
        """The record's "new connection": the warm one, set up as the dialect would have made it."""
        raw = connection_record.lp_raw
        dialect = self._dialect
        if self._context is not None:
            _psycopg_setup(dialect, raw)
        if not self._core.lender.is_async:
            return raw

        async def ready(*_: Any, **__: Any) -> Any:
            return raw

        return dialect.dbapi.connect(async_creator_fn=ready, **self._adapter_args)  # type: ignore[union-attr]

    def _close_connection(self, connection: Any, *, terminate: bool = False) -> None:
        """SQLAlchemy closes a connection only to be rid of it (invalidated, detached, a failed
        connect event): lambdapool drops it too, so no dead connection is kept warm."""
        try:
            raw = self._dialect.get_driver_connection(connection)
        except Exception:
            raw = None
        if raw is not None:
            holders: list[WarmConnection | AsyncWarmConnection] = list(self._lender.slots.all)
            for holder in holders:
                if holder.conn is raw:
                    holder.stats.incr("discarded")
                    holder.terminate()
                    rec = self._records.get(holder)
                    if rec is not None and rec.lp_state is not None and rec.lp_state.conn is raw:
                        rec.lp_state.conn = None  # the invocation holds no connection now
                    return
        super()._close_connection(connection, terminate=terminate)

    def _invalidate(self, connection: Any, exception: BaseException | None = None, _checkin: bool = True) -> None:
        # Only this connection: no pool-wide generation to expire, each warm connection is
        # checked at its own acquire.
        if _checkin and getattr(connection, "is_valid", False):
            connection.invalidate(exception)

    # -- Pool's housekeeping -----------------------------------------------------------------
    def dispose(self) -> None:
        """Forget the records; the connections are the Database's (``db.close()`` closes them)."""
        self._records.clear()

    def recreate(self) -> LambdapoolPool:
        self.logger.info("Pool recreating")
        pool = self.__class__(
            self._core,
            self._adapter_args,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )
        pool._context = self._context
        return pool

    def status(self) -> str:
        s = self._core.stats()
        return (
            f"LambdapoolPool driver={self._core.settings.driver} pooler={self._core.settings.pooler} "
            f"open={s['open_connections']} connects={s['connects']} reuses={s['reuses']}"
        )


def _psycopg_setup(dialect: Any, conn: Any) -> None:
    """Give a psycopg connection what the dialect puts in the adapters map it connects with
    (``context=``; PGDialect_psycopg.__init__), on top of the connection's own (``configure``)."""
    if dialect._native_inet_types is False:
        from psycopg.types.string import TextLoader

        conn.adapters.register_loader("inet", TextLoader)
        conn.adapters.register_loader("cidr", TextLoader)
    if dialect._json_deserializer:
        from psycopg.types.json import set_json_loads

        set_json_loads(dialect._json_deserializer, conn)
    if dialect._json_serializer:
        from psycopg.types.json import set_json_dumps

        set_json_dumps(dialect._json_serializer, conn)
