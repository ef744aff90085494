"""The handler decorators: each call is one ``db.invocation_scope()`` around the user's code.

The handler's own result or exception passes through untouched. ``async def`` handlers run on
the instance's single event loop (``db.loop``): a new loop per invocation would orphan the
loop-bound connections that the warm connection is made of. Any other callable (a ``Mangum``
instance, which runs its own loop) is called as it is, inside the scope.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from lambdapool.errors import ConfigError


def describe(fn: Any) -> str:
    """A name for ``fn`` in messages: functions have one, callable objects have a class."""
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def is_async(fn: Any) -> bool:
    call = getattr(fn, "__call__", None)  # noqa: B004  (the method itself: an instance's async __call__)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _check_arity(fn: Callable[..., Any], count: int, decorator: str, shape: str) -> None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in params)
    required = [p for p in positional if p.default is p.empty]
    if len(required) > count or (len(positional) < count and not variadic):
        raise ConfigError(f"{decorator}: {describe(fn)} must take {shape}")


def hidden_async(decorator: str, fn: Any) -> ConfigError:
    return ConfigError(
        f"{decorator}: {describe(fn)} is a plain function around an async def (another decorator sits "
        f"between them, e.g. Powertools' @metrics.log_metrics): put @db.{decorator} innermost, directly "
        "above the async def, and the other decorators above it"
    )


def ran_a_running_loop(exc: RuntimeError) -> bool:
    """Did ``exc`` come from running an event loop that is already running (Mangum's
    ``loop.run_until_complete`` called from inside an ``async def``)?"""
    text = str(exc)
    return "already running" in text or "another loop is running" in text


def loop_inside_async(decorator: str, fn: Any) -> ConfigError:
    return ConfigError(
        f"{decorator}: {describe(fn)} is an async def, so it runs on the instance's event loop, and something "
        "in it ran an event loop itself (a Mangum instance does: mangum(event, context) cannot be called from "
        f"an async def): decorate the Mangum instance instead, handler = db.{decorator}(Mangum(db.asgi(app))), "
        "or make the wrapper a plain def"
    )


def _check_not_hiding_async(fn: Any, decorator: str) -> None:
    if not is_async(fn) and is_async(inspect.unwrap(fn)):
        raise hidden_async(decorator, fn)


def _named_like(wrapper: Callable[..., Any], fn: Any) -> Callable[..., Any]:
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        return functools.wraps(fn)(wrapper)
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]  # (an object's __dict__ is not ours to copy)
    return wrapper


def _returned_coroutine(decorator: str, fn: Any, result: Any) -> Any:
    if inspect.iscoroutine(result):
        result.close()  # (else "coroutine was never awaited" on top of our error)
        raise hidden_async(decorator, fn)
    return result


def wrap_lambda(db: Any, handler: Callable[..., Any]) -> Callable[[Any, Any], Any]:
    if not callable(handler):
        raise ConfigError(f"lambda_handler needs a callable (event, context), got {type(handler).__name__}")
    _check_arity(handler, 2, "lambda_handler", "(event, context)")
    _check_not_hiding_async(handler, "lambda_handler")
    if is_async(handler):

        def run_async(event: Any, context: Any) -> Any:
            # The scope is entered here, in sync code, around the loop: the handler's task runs
            # in a copy of this context, which holds the invocation, and no coroutine of ours
            # wraps the handler's (on every warm invocation's path: ~1.5 us less than an
            # `async with` inside a wrapping coroutine, /tmp/bench_inline.py in session 4).
            with db.invocation_scope(context):
                try:
                    return db.loop.run(handler(event, context))
                except RuntimeError as exc:
                    if not ran_a_running_loop(exc):
                        raise
                    db.loop.cancel_pending()
                    raise loop_inside_async("lambda_handler", handler) from exc

        return _named_like(run_async, handler)

    def run(event: Any, context: Any) -> Any:
        with db.invocation_scope(context):
            result = handler(event, context)
        return _returned_coroutine("lambda_handler", handler, result)

    return _named_like(run, handler)


def wrap_cloud_function(db: Any, function: Callable[..., Any]) -> Callable[[Any], Any]:
    if not callable(function):
        raise ConfigError(f"cloud_function needs a callable (request), got {type(function).__name__}")
    _check_arity(function, 1, "cloud_function", "one argument: (request) or (cloud_event)")
    _check_not_hiding_async(function, "cloud_function")
    if is_async(function):

        async def invoke(arg: Any) -> Any:
            async with db.invocation_scope():
                return await function(arg)

        def run_async(arg: Any) -> Any:
            # functions-framework calls us on several threads: the loop runs in its own thread.
            return db.loop.run(invoke(arg), threaded=True)

        return _named_like(run_async, function)

    if db.is_async:
        raise ConfigError(
            f"cloud_function: driver {db.settings.driver!r} is asynchronous, so {describe(function)} must be "
            f"'async def' (or choose driver='psycopg' for a plain def function)"
        )

    def run(arg: Any) -> Any:
        with db.invocation_scope():
            result = function(arg)
        return _returned_coroutine("cloud_function", function, result)

    return _named_like(run, function)
