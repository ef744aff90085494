"""``lambdapool.Database``: the instance's warm connection(s), lent to each invocation."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from lambdapool import _drivers as drivers
from lambdapool import _lifecycle as lifecycle
from lambdapool import _metrics as metrics
from lambdapool import adapters
from lambdapool._config import SETTINGS, Settings, from_environment, redact_dsn, warn_unknown_variables
from lambdapool._loop import InstanceLoop, run_when_free
from lambdapool._runtime import Instance, Invocation, InvocationState, function_name
from lambdapool._scope import InvocationScope
from lambdapool.errors import ConfigError
from lambdapool.stats import StatsDict, total

if TYPE_CHECKING:
    import asyncpg
    import psycopg

    from lambdapool._drivers.contract import AnyDriver
    from lambdapool._lend import Lender
    from lambdapool._lend_async import AsyncLender
    from lambdapool._protocols import AsyncBlock, SyncBlock
    from lambdapool._warm import WarmConnection
    from lambdapool._warm_async import AsyncWarmConnection
    from lambdapool.adapters.base import Adapter

logger = logging.getLogger("lambdapool")

F = TypeVar("F", bound=Callable[..., Any])
BlockT = TypeVar("BlockT")

# Stop connecting this long before the platform's deadline, so the handler still has time to
# report ConnectionUnavailable (and to survive a scheduling stall on a busy host): half a
# second, never more than a fifth of the invocation's budget.
DEADLINE_MARGIN = 0.5
DEADLINE_MARGIN_SHARE = 0.2

NO_DSN = (
    "no database configured: set LAMBDAPOOL_DSN or DATABASE_URL (or pass dsn=), e.g. "
    "postgresql://user@host:5432/dbname; on {platform} there is no local Postgres socket to fall back to"
)

NO_DSN_LOCALLY = (
    "no database configured (no LAMBDAPOOL_DSN, DATABASE_URL, dsn= or PGHOST): lambdapool connects with "
    "libpq's defaults, the local Unix socket as your OS user; set LAMBDAPOOL_DSN=postgresql://user@host:5432/dbname "
    "(or pass dsn=) to choose the database"
)


class NoDsnWarning(UserWarning):
    """Outside a platform, nothing names the database: libpq's defaults will be used."""


_warned_no_dsn = False


def _warn_no_dsn() -> None:
    """Once per process: a local script that forgot its DSN hears it once, not per Database."""
    global _warned_no_dsn
    if not _warned_no_dsn:
        _warned_no_dsn = True
        import warnings

        warnings.warn(NO_DSN_LOCALLY, NoDsnWarning, stacklevel=4)  # (the caller of Database() / from_env())


class Database(Generic[BlockT]):
    """One per process (module level), shared by every invocation the instance serves.

    ``Database(dsn, driver="psycopg", pooler="direct", **settings)``; see the settings table
    in the README (and ``lambdapool._config.SETTINGS``). Nothing connects until an invocation
    asks (``prewarm=True`` connects during init). Raises :class:`~lambdapool.ConfigError` for
    bad settings. Typed by driver: ``connection()`` yields a ``psycopg.Connection``, a
    ``psycopg.AsyncConnection`` or an ``asyncpg.Connection``.
    """

    @overload
    def __init__(
        self: Database[SyncBlock[psycopg.Connection[Any]]],
        dsn: str | None = None,
        *,
        driver: Literal["psycopg"] = "psycopg",
        pooler: str | None = None,
        **settings: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: Database[AsyncBlock[psycopg.AsyncConnection[Any]]],
        dsn: str | None = None,
        *,
        driver: Literal["psycopg-async"],
        pooler: str | None = None,
        **settings: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: Database[AsyncBlock[asyncpg.Connection]],
        dsn: str | None = None,
        *,
        driver: Literal["asyncpg"],
        pooler: str | None = None,
        **settings: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: Database[Any],
        dsn: str | None = None,
        *,
        driver: str | None = None,
        pooler: str | None = None,
        **settings: Any,
    ) -> None: ...
    def __init__(
        self, dsn: str | None = None, *, driver: str | None = None, pooler: str | None = None, **settings: Any
    ) -> None:
        values = dict(settings)
        for key, value in (("dsn", dsn), ("driver", driver), ("pooler", pooler)):
            if value is not None:
                values[key] = value
        self._setup(values, env={})

    @overload
    @classmethod
    def from_env(
        cls, *, driver: Literal["psycopg"], **overrides: Any
    ) -> Database[SyncBlock[psycopg.Connection[Any]]]: ...
    @overload
    @classmethod
    def from_env(
        cls, *, driver: Literal["psycopg-async"], **overrides: Any
    ) -> Database[AsyncBlock[psycopg.AsyncConnection[Any]]]: ...
    @overload
    @classmethod
    def from_env(cls, *, driver: Literal["asyncpg"], **overrides: Any) -> Database[AsyncBlock[asyncpg.Connection]]: ...
    @overload
    @classmethod
    def from_env(cls, **overrides: Any) -> Database[Any]: ...
    @classmethod
    def from_env(cls, **overrides: Any) -> Database[Any]:
        """Settings from ``LAMBDAPOOL_<NAME>`` variables (``DATABASE_URL`` for the DSN);
        keyword arguments win over the environment. A ``LAMBDAPOOL_*`` variable that names no
        setting is reported (:class:`~lambdapool._config.UnknownSettingWarning`, with the
        closest name), not silently ignored."""
        core = [s.name for s in SETTINGS]
        env = from_environment(core)
        pooler = overrides.get("pooler") or env.get("pooler") or "direct"
        options = [o.name for o in adapters.load(pooler).OPTIONS]
        env.update(from_environment(options))
        warn_unknown_variables(core + options)
        db: Database[Any] = cls.__new__(cls)
        db._setup(overrides, env=env)
        return db

    def _setup(self, values: dict[str, Any], env: dict[str, str]) -> None:
        self.settings = settings = Settings.build(values, env=env)
        instance = Instance(settings.invocation_timeout)
        self._function = function_name()
        dsn_name = settings.parts.params.get("application_name")  # the user's, either way, wins over ours
        app_name = settings.application_name or dsn_name or f"lambdapool:{self._function}"[:63]
        self.adapter: Adapter = adapters.load(settings.pooler)(settings, application_name=app_name)
        platform = instance.platform
        if not settings.dsn and not self.adapter.names_an_endpoint():
            if platform != "local":
                raise ConfigError(NO_DSN.format(platform=platform))
            _warn_no_dsn()
        self.driver: AnyDriver = drivers.load(settings.driver)
        self.is_async = bool(self.driver.is_async)
        self._core = core = Core(settings, self.adapter, self.driver, instance)
        if settings.emit_metrics:
            core.report = metrics.EmfSink(
                metrics.namespace(settings.metrics_namespace),
                metrics.dimensions(settings.metrics_dimensions, self._function),
            )
        self._current = core.current
        self._slots = core.lender.slots  # (what tests look at)
        self.loop = InstanceLoop()  # for async handlers (lambdapool._loop)
        lifecycle.register(core, handle_sigterm=settings.handle_sigterm, snap_start=instance.init_type == "snap-start")
        if settings.prewarm:
            self._prewarm()

    def __repr__(self) -> str:
        return (
            f"<lambdapool.Database driver={self.settings.driver} pooler={self.settings.pooler} "
            f"dsn={redact_dsn(self.settings.dsn)}>"
        )

    # -- decorators and integrations: thin layers over invocation_scope() -------------------
    def lambda_handler(self, handler: F) -> F:
        """Decorate an AWS Lambda handler ``(event, context)``: a ``def``, an ``async def`` or
        any callable (a ``Mangum`` instance)."""
        from lambdapool._handlers import wrap_lambda

        return wrap_lambda(self, handler)  # type: ignore[return-value]

    def cloud_function(self, function: F) -> F:
        """Decorate a Google Cloud Function: HTTP ``(request)`` or CloudEvent ``(cloud_event)``."""
        from lambdapool._handlers import wrap_cloud_function

        return wrap_cloud_function(self, function)  # type: ignore[return-value]

    def invocation_scope(self, context: Any = None) -> InvocationScope:
        """The block of one invocation: ``with`` (sync drivers) or ``async with`` (any driver).

        Numbered, cold start or warm, with a deadline from ``context`` (a Lambda context) or
        ``invocation_timeout``; a connection is taken only if the block asks for one, and
        whatever it holds is given back clean at the end. Yields :attr:`invocation`. Entered
        inside a running invocation, it joins that one.
        """
        return InvocationScope(self._core, context)

    def asgi(self, app: Any) -> Any:
        """Wrap an ASGI app so that each HTTP request is one invocation (lifespan untouched)."""
        from lambdapool.web import AsgiApp

        return AsgiApp(self._core, app)

    def wsgi(self, app: Any) -> Any:
        """Wrap a WSGI app so that each request is one invocation (until its response closes)."""
        from lambdapool.web import WsgiApp

        return WsgiApp(self._core, app)

    def sqlalchemy_engine(self, **engine_kwargs: Any) -> Any:
        """A ``sqlalchemy.Engine`` whose pool lends the invocation's warm connection."""
        from lambdapool.sqlalchemy import create_engine

        return create_engine(self._core, **engine_kwargs)

    def sqlalchemy_async_engine(self, **engine_kwargs: Any) -> Any:
        """A ``sqlalchemy.ext.asyncio.AsyncEngine`` whose pool lends the invocation's warm connection."""
        from lambdapool.sqlalchemy import create_async_engine

        return create_async_engine(self._core, **engine_kwargs)

    def add_metrics_to(self, powertools_metrics: Any) -> None:
        """Add lambdapool's per-invocation figures to a Powertools ``Metrics`` instead of printing
        an EMF line of our own: one blob and one ColdStart per invocation. Put
        ``@metrics.log_metrics`` outside ``@db.lambda_handler``, so it flushes after we add."""
        self._core.report = metrics.PowertoolsSink(powertools_metrics)

    # -- what handlers see -----------------------------------------------------------------
    @property
    def invocation(self) -> Invocation:
        """The running invocation (else the last one, else a placeholder numbered 0)."""
        state = self._current.get()
        if state is None or not state.number:
            state = self._core.instance.last
        if state is None:
            state = InvocationState(self._core.instance, None, counted=False)
        return state.view()

    def stats(self) -> StatsDict:
        """Counters since the instance started (keys in ``lambdapool.stats.KEYS``), plus
        ``open_connections``."""
        return self._core.stats()

    def connection(self) -> BlockT:
        """The invocation's connection: a context manager (``async with`` for async drivers)
        yielding the driver's own connection object.

        Lazy (nothing opens until asked), re-entrant (nested blocks get the same connection).
        When the outermost block exits cleanly, psycopg commits (as psycopg_pool does) and
        asyncpg rolls back any transaction left open (as asyncpg.Pool does); an exception rolls
        back. Outside an invocation each outermost block is its own, and may end in another
        thread than it began (FastAPI's sync dependencies).
        """
        return self._core.lender.block()  # type: ignore[return-value]  # (BlockT: chosen by the driver, in __init__'s overloads)

    # -- lifecycle -------------------------------------------------------------------------
    def _prewarm(self) -> None:
        lender = self._core.lender
        try:
            if lender.is_async:
                alender = lender

                async def warm() -> None:
                    async with self.invocation_scope(), alender:
                        pass

                self.loop.run(warm())
            else:
                with self.invocation_scope(), lender:
                    pass
        except Exception as exc:  # init must not fail for want of a connection: connect later
            logger.warning("lambdapool: prewarm failed (%s); will connect on first use", type(exc).__name__)

    def close(self) -> None:
        """Close this instance's connections (they reopen lazily if used again)."""
        lender = self._core.lender
        if lender.is_async:
            for holder in [h for h in lender.slots.all if h.conn is not None]:
                loop = holder.loop
                if loop is not None and loop.is_running() and asyncio._get_running_loop() is not loop:
                    asyncio.run_coroutine_threadsafe(holder.discard(), loop).result(5)
        self._core.shutdown("close")

    async def aclose(self) -> None:
        """Async drivers: close this instance's connections from inside a running loop."""
        lender = self._core.lender
        if lender.is_async:
            for holder in list(lender.slots.all):
                await holder.discard()
        else:
            for sync_holder in list(lender.slots.all):
                sync_holder.discard()


class Core:
    """A Database's internals, as the lender, the invocation scope, the integrations and the
    process hooks see them: the one interface they have of it (the Database is its facade)."""

    def __init__(self, settings: Settings, adapter: Adapter, driver: AnyDriver, instance: Instance) -> None:
        self.settings = settings
        self.adapter = adapter
        self.instance = instance
        self.current: contextvars.ContextVar[InvocationState | None] = contextvars.ContextVar(
            "lambdapool_invocation", default=None
        )
        self.report: Callable[[dict[str, float], dict[str, Any]], None] | None = None  # metrics sink
        self.lender: Lender | AsyncLender
        # How an invocation's lend ends (the lender's end(): nothing to do, else release), from
        # synchronous code and from async code: chosen here once, called on every invocation.
        self.end_from_sync: Callable[[InvocationState], None]
        self.end_from_async: Callable[[InvocationState], Awaitable[None]]
        if driver.is_async:
            from lambdapool._lend_async import AsyncLender
            from lambdapool._slots import AsyncSlots
            from lambdapool._warm_async import AsyncConnector, AsyncWarmConnection

            connector = AsyncConnector(driver, adapter, settings)
            self.lender = lender = AsyncLender(
                self, driver, AsyncSlots(settings.max_per_instance, lambda: AsyncWarmConnection(connector))
            )
            self.end_from_sync, self.end_from_async = lender.end_from_sync, lender.end
        else:
            from lambdapool._lend import Lender
            from lambdapool._slots import Slots
            from lambdapool._warm import Connector, WarmConnection

            sync_connector = Connector(driver, adapter, settings)
            self.lender = sync_lender = Lender(
                self, driver, Slots(settings.max_per_instance, lambda: WarmConnection(sync_connector))
            )
            self.end_from_sync = sync_lender.end

            async def end_from_async(state: InvocationState) -> None:  # (an async app on psycopg: FastAPI)
                sync_lender.end(state)

            self.end_from_async = end_from_async

    def stats(self) -> StatsDict:
        holders: list[WarmConnection | AsyncWarmConnection] = list(self.lender.slots.all)
        out = total([h.stats for h in holders])
        out["invocations"], out["cold_starts"] = self.instance.invocations, self.instance.cold_starts
        out["open_connections"] = sum(1 for h in holders if h.conn is not None)
        return out

    # -- invocation bookkeeping (lambdapool._scope) -------------------------------------------
    def acquire_deadline(self, state: InvocationState) -> float:
        now = time.monotonic()
        margin = min(DEADLINE_MARGIN, DEADLINE_MARGIN_SHARE * max(0.0, state.deadline - now))
        return min(state.deadline - margin, now + self.settings.acquire_timeout)

    def after(self, state: InvocationState) -> None:
        self.instance.last_end = time.monotonic()
        if self.report is not None:
            self._emit(self.report, state)

    def _emit(self, report: Callable[[dict[str, float], dict[str, Any]], None], state: InvocationState) -> None:
        inv, outcome = state.view(), state.outcome
        figures = {
            "ColdStart": int(inv.cold_start),
            "Connects": int(outcome in ("connect", "reconnect")),
            "Reconnects": int(outcome == "reconnect"),
            "AcquireMs": round(state.acquire_ms, 3),
        }
        report(figures, {"invocation": inv.number, "requestId": inv.request_id})

    # -- process hooks (lambdapool._lifecycle) ------------------------------------------------
    def restored(self) -> None:
        self.instance.restored()
        # A cached secret's age is kept on a monotonic clock, which may not count the time the
        # snapshot sat on disk: fetch credentials afresh after a restore.
        self.adapter.invalidate_credentials()

    def shutdown(self, reason: str) -> None:
        """Close every connection now (SIGTERM, exit, before a snapshot); never raises."""
        lender = self.lender
        holders = [h for h in lender.slots.all if h.conn is not None]
        if not holders:
            return
        logger.info("lambdapool: closing %d connection(s) (%s)", len(holders), reason)
        if not lender.is_async:
            for sync_holder in lender.slots.all:
                if sync_holder.conn is not None:
                    try:
                        sync_holder.discard()
                    except Exception:
                        sync_holder.terminate()
            return
        for holder in lender.slots.all:
            if holder.conn is None:
                continue
            loop = holder.loop  # a graceful close on the connection's own loop, where it is idle
            if loop is not None and not loop.is_running() and not loop.is_closed():
                try:
                    run_when_free(loop, asyncio.wait_for(holder.discard(), 2.0))
                    continue
                except Exception:
                    pass
            holder.terminate()


def core_of(db: Database[Any]) -> Core:
    """The Database's internals, for an integration handed the Database itself (Django)."""
    return db._core
