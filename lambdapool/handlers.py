"""The handler decorators: each invocation begins, runs the user's code, and always ends.

Ending an invocation releases its connection (rolls back what is open, resets if asked) and
counts it. The handler's own result or exception passes through untouched. ``async def``
handlers run on the instance's single event loop (``Database._run``): a new loop per
invocation would orphan the loop-bound connections that the warm connection is made of.
"""

from __future__ import annotations

import functools
import inspect
import time
from asyncio import _get_running_loop  # (returns None when there is none, without raising: hot path)
from typing import Any, Callable

from lambdapool.database import busy_elsewhere, run_when_free
from lambdapool.errors import ConfigError
from lambdapool.runtime import InvocationState


def _check_sync_allowed(db: Any, fn: Callable[..., Any], decorator: str) -> None:
    if db.is_async:
        raise ConfigError(
            f"{decorator}: driver {db.settings.driver!r} is asynchronous, so {fn.__name__} must be "
            f"'async def' (or choose driver='psycopg' for a plain def handler)"
        )


def _check_arity(fn: Callable[..., Any], count: int, decorator: str, shape: str) -> None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in params)
    required = [p for p in positional if p.default is p.empty]
    if len(required) > count or (len(positional) < count and not variadic):
        raise ConfigError(f"{decorator}: {fn.__name__} must take {shape}")


def _invoke_sync(db: Any, fn: Callable[..., Any], args: tuple, context: Any) -> Any:
    state = InvocationState(db._instance, context)
    token = db._current.set(state)
    try:
        return fn(*args)
    finally:
        db._current.reset(token)
        if not db._lender.finish_warm(state):
            db._lender.finish(state)
        db._after(state)


async def _invoke_async(db: Any, fn: Callable[..., Any], args: tuple, context: Any) -> Any:
    state = InvocationState(db._instance, context)
    token = db._current.set(state)
    try:
        return await fn(*args)
    finally:
        db._current.reset(token)
        lender = db._lender
        if not lender.finish_warm(state):
            if db.is_async:
                await lender.finish(state)
            else:  # an async def handler may use a sync driver
                lender.finish(state)
        db._after(state)


def wrap_lambda(db: Any, handler: Callable[..., Any]) -> Callable[[Any, Any], Any]:
    _check_arity(handler, 2, "lambda_handler", "(event, context)")
    if inspect.iscoroutinefunction(handler):

        instance, current, lender = db._instance, db._current, db._lender  # (fixed for its life)

        @functools.wraps(handler)
        def run_async(event: Any, context: Any) -> Any:
            loop = db._loop
            if loop is None or db._loop_thread is not None or _get_running_loop() is not None:
                return db._run(_invoke_async(db, handler, (event, context), context))  # the first, or threaded
            # The usual case: the instance's loop runs in this thread. The handler's coroutine
            # runs as the loop's task, in a copy of this context, which already holds the
            # invocation: no coroutine of ours wraps it (on every warm invocation's path).
            state = InvocationState(instance, context)
            token = current.set(state)
            try:
                coro = handler(event, context)
                try:
                    return loop.run_until_complete(coro)
                except RuntimeError:
                    if not busy_elsewhere(loop, coro):
                        raise
                    return run_when_free(loop, coro)  # another thread's call holds the loop
            finally:
                current.reset(token)
                if not lender.finish_warm(state):
                    if db.is_async:
                        run_when_free(loop, lender.finish(state))
                    else:
                        lender.finish(state)
                instance.last_end = time.monotonic()  # (db._after(), inline)
                if db._emit_metrics:
                    db._emit(state)

        return run_async

    _check_sync_allowed(db, handler, "lambda_handler")

    @functools.wraps(handler)
    def run(event: Any, context: Any) -> Any:
        return _invoke_sync(db, handler, (event, context), context)

    return run


def wrap_cloud_function(db: Any, function: Callable[..., Any]) -> Callable[[Any], Any]:
    _check_arity(function, 1, "cloud_function", "one argument: (request) or (cloud_event)")
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        def run_async(arg: Any) -> Any:
            # functions-framework calls us on several threads: the loop runs in its own thread.
            return db._run(_invoke_async(db, function, (arg,), None), threaded=True)

        return run_async

    _check_sync_allowed(db, function, "cloud_function")

    @functools.wraps(function)
    def run(arg: Any) -> Any:
        return _invoke_sync(db, function, (arg,), None)

    return run
