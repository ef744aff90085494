"""``lambdapool.Database``: the instance's warm connection(s), lent to each invocation."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
import time
from typing import Any, Callable, TypeVar

from lambdapool import adapters, drivers, lifecycle
from lambdapool.config import SETTINGS, Settings, from_environment, redact_dsn
from lambdapool.metrics import emf_record, emit
from lambdapool.runtime import Instance, Invocation, InvocationState, function_name
from lambdapool.stats import total

logger = logging.getLogger("lambdapool")

F = TypeVar("F", bound=Callable[..., Any])

# Stop connecting this long before the platform's deadline, so the handler still has time to
# report ConnectionUnavailable (and to survive a scheduling stall on a busy host): half a
# second, never more than a fifth of the invocation's budget.
DEADLINE_MARGIN = 0.5
DEADLINE_MARGIN_SHARE = 0.2


def busy_elsewhere(loop: asyncio.AbstractEventLoop, coro: Any) -> bool:
    """After ``loop.run_until_complete(coro)`` raised RuntimeError: was it only that another
    thread is running the loop? (Then coro was never started and can still run.)"""
    return not loop.is_closed() and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED


def run_when_free(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    """``loop.run_until_complete(coro)``, taking turns with other threads that run the loop.

    Lambda gives an environment one invocation at a time, so the instance's loop is normally
    ours alone; a test or an app calling an async ``lambda_handler`` from several threads at
    once gets its calls run one after another instead of "This event loop is already running".
    """
    while True:
        try:
            return loop.run_until_complete(coro)
        except RuntimeError:
            if not busy_elsewhere(loop, coro):
                raise
        time.sleep(0.0005)


class Database:
    """One per process (module level), shared by every invocation the instance serves.

    ``Database(dsn, driver="psycopg", pooler="direct", **settings)``; see the settings table
    in the README (and ``lambdapool.config.SETTINGS``). Nothing connects until an invocation
    asks (``prewarm=True`` connects during init). Raises :class:`~lambdapool.ConfigError` for
    bad settings.
    """

    def __init__(self, dsn: str | None = None, *, driver: str | None = None, pooler: str | None = None,
                 **settings: Any) -> None:  # fmt: skip
        values = dict(settings)
        for key, value in (("dsn", dsn), ("driver", driver), ("pooler", pooler)):
            if value is not None:
                values[key] = value
        self._setup(values, env={})

    @classmethod
    def from_env(cls, **overrides: Any) -> Database:
        """Settings from ``LAMBDAPOOL_<NAME>`` variables (``DATABASE_URL`` for the DSN);
        keyword arguments win over the environment."""
        core = [s.name for s in SETTINGS]
        env = from_environment(core)
        pooler = overrides.get("pooler") or env.get("pooler") or "direct"
        options = [o.name for o in adapters.load(pooler).OPTIONS]
        env.update(from_environment(options))
        db = cls.__new__(cls)
        db._setup(overrides, env=env)
        return db

    def _setup(self, values: dict[str, Any], env: dict[str, str]) -> None:
        self.settings = settings = Settings.build(values, env=env)
        self._instance = Instance(settings.invocation_timeout)
        self._function = function_name()
        app_name = settings.application_name or f"lambdapool:{self._function}"[:63]
        self.adapter = adapters.load(settings.pooler)(settings, application_name=app_name)
        self.driver = drivers.load(settings.driver)
        self.is_async = bool(self.driver.is_async)
        self._emit_metrics = settings.emit_metrics
        self._lock = threading.Lock()
        self._current: contextvars.ContextVar[InvocationState | None] = contextvars.ContextVar(
            "lambdapool_invocation", default=None
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        if self.is_async:
            from lambdapool.lend_async import AsyncLender
            from lambdapool.slots import AsyncSlots
            from lambdapool.warm_async import AsyncConnector, AsyncWarmConnection

            connector = AsyncConnector(self.driver, self.adapter, settings)
            self._slots: Any = AsyncSlots(settings.max_per_instance, lambda: AsyncWarmConnection(connector))
            self._lender: Any = AsyncLender(self)
        else:
            from lambdapool.lend import Lender
            from lambdapool.slots import Slots
            from lambdapool.warm import Connector, WarmConnection

            sync_connector = Connector(self.driver, self.adapter, settings)
            self._slots = Slots(settings.max_per_instance, lambda: WarmConnection(sync_connector))
            self._lender = Lender(self)
        lifecycle.register(
            self, handle_sigterm=settings.handle_sigterm, snap_start=self._instance.init_type == "snap-start"
        )
        if settings.prewarm:
            self._prewarm()

    def __repr__(self) -> str:
        return (
            f"<lambdapool.Database driver={self.settings.driver} pooler={self.settings.pooler} "
            f"dsn={redact_dsn(self.settings.dsn)}>"
        )

    # -- decorators (lambdapool.handlers does the work) -------------------------------------
    def lambda_handler(self, handler: F) -> F:
        """Decorate an AWS Lambda handler ``(event, context)``, ``def`` or ``async def``."""
        from lambdapool.handlers import wrap_lambda

        return wrap_lambda(self, handler)  # type: ignore[return-value]

    def cloud_function(self, function: F) -> F:
        """Decorate a Google Cloud Function: HTTP ``(request)`` or CloudEvent ``(cloud_event)``."""
        from lambdapool.handlers import wrap_cloud_function

        return wrap_cloud_function(self, function)  # type: ignore[return-value]

    # -- what handlers see -----------------------------------------------------------------
    @property
    def invocation(self) -> Invocation:
        """The running invocation (else the last one, else a placeholder numbered 0)."""
        state = self._current.get()
        if state is None or not state.number:
            state = self._instance.last
        if state is not None:
            return state.view()
        return Invocation(
            cold_start=True, number=0, init_type=self._instance.init_type, platform=self._instance.platform,
            deadline=time.monotonic() + self.settings.invocation_timeout,
        )  # fmt: skip

    def stats(self) -> dict[str, float]:
        """Counters since the instance started (keys in ``lambdapool.stats.KEYS``), plus
        ``open_connections``."""
        holders = list(self._slots.all)
        out = total([h.stats for h in holders])
        out["invocations"], out["cold_starts"] = self._instance.invocations, self._instance.cold_starts
        out["open_connections"] = sum(1 for h in holders if h.conn is not None)
        return out

    def connection(self) -> Any:
        """The invocation's connection: a context manager (``async with`` for async drivers)
        yielding the driver's own connection object.

        Lazy (nothing opens until asked), re-entrant (nested blocks get the same connection).
        When the outermost block exits cleanly, psycopg commits (as psycopg_pool does) and
        asyncpg rolls back any transaction left open (as asyncpg.Pool does); an exception rolls
        back. Outside a handler each outermost block acts as its own invocation.
        """
        return self._lender  # the lender is the block: it keeps no state of its own

    # -- invocation bookkeeping ------------------------------------------------------------
    def _acquire_deadline(self, state: InvocationState) -> float:
        now = time.monotonic()
        margin = min(DEADLINE_MARGIN, DEADLINE_MARGIN_SHARE * max(0.0, state.deadline - now))
        return min(state.deadline - margin, now + self.settings.acquire_timeout)

    def _after(self, state: InvocationState) -> None:
        self._instance.last_end = time.monotonic()
        if self._emit_metrics:
            self._emit(state)

    def _emit(self, state: InvocationState) -> None:
        inv, outcome = state.view(), state.outcome
        figures = {
            "ColdStart": int(inv.cold_start),
            "Connects": int(outcome in ("connect", "reconnect")),
            "Reconnects": int(outcome == "reconnect"),
            "AcquireMs": round(state.acquire_ms, 3),
        }
        emit(emf_record(self._function, figures, {"invocation": inv.number, "requestId": inv.request_id}))

    # -- the instance's event loop (async handlers) -----------------------------------------
    def _run(self, coro: Any, *, threaded: bool = False) -> Any:
        """Run ``coro`` on the one loop this instance keeps for its whole life.

        Lambda runs it in the calling thread (one invocation at a time). Cloud Functions
        serve requests on several threads, so there the loop runs in its own thread.
        """
        if self._loop is None:
            with self._lock:  # (two threads may make the first call at once)
                if self._loop is None:
                    self._loop = asyncio.new_event_loop()
        if asyncio._get_running_loop() is not None:  # (no exception when there is none: hot path)
            threaded = True  # called from inside someone's loop: cannot block it
        if threaded or self._loop_thread is not None:
            self._ensure_loop_thread()
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        return run_when_free(self._loop, coro)

    def _ensure_loop_thread(self) -> None:
        with self._lock:
            if self._loop_thread is not None:
                return
            assert self._loop is not None
            loop = self._loop
            self._loop_thread = threading.Thread(target=loop.run_forever, name="lambdapool-loop", daemon=True)
            self._loop_thread.start()

    # -- lifecycle -------------------------------------------------------------------------
    def _prewarm(self) -> None:
        try:
            if self.is_async:

                async def warm() -> None:
                    async with self._lender:
                        pass

                self._run(warm())
            else:
                with self._lender:
                    pass
        except Exception as exc:  # init must not fail for want of a connection: connect later
            logger.warning("lambdapool: prewarm failed (%s); will connect on first use", type(exc).__name__)

    def _restored(self) -> None:
        self._instance.restored()
        # A cached secret's age is kept on a monotonic clock, which may not count the time the
        # snapshot sat on disk: fetch credentials afresh after a restore.
        self.adapter.invalidate_credentials()

    def _shutdown(self, reason: str) -> None:
        """Close every connection now (SIGTERM, exit, before a snapshot); never raises."""
        holders = list(self._slots.all)
        if not any(h.conn is not None for h in holders):
            return
        logger.info("lambdapool: closing %d connection(s) (%s)", len(holders), reason)
        loop = self._loop
        if self.is_async and loop is not None and not loop.is_running() and not loop.is_closed():
            try:
                loop.run_until_complete(asyncio.wait_for(self._aclose_holders(holders), 2.0))
                return
            except Exception:
                pass
        for holder in holders:
            if self.is_async:
                holder.terminate()
            else:
                try:
                    holder.discard()
                except Exception:
                    holder.terminate()

    @staticmethod
    async def _aclose_holders(holders: list[Any]) -> None:
        for holder in holders:
            await holder.discard()

    def close(self) -> None:
        """Close this instance's connections (they reopen lazily if used again)."""
        if self.is_async and self._loop is not None and self._loop_thread is not None:
            asyncio.run_coroutine_threadsafe(self._aclose_holders(list(self._slots.all)), self._loop).result(5)
            return
        self._shutdown("close")

    async def aclose(self) -> None:
        """Async drivers: close this instance's connections from inside a running loop."""
        await self._aclose_holders(list(self._slots.all))
