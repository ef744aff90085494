"""``db.asgi(app)`` and ``db.wsgi(app)``: each HTTP request is one invocation.

Both are thin layers over ``db.invocation_scope()``, for the ways a web app meets a function
platform: Mangum (API Gateway / ALB events turned into ASGI calls), AWS Lambda Web Adapter
(the app served by uvicorn or gunicorn as it is, the process frozen between requests),
Cloud Run and functions-framework (gunicorn serving a WSGI app on threads).

ASGI: an ``http`` request runs inside ``async with db.invocation_scope(context)``, the Lambda
context taken from ``scope["aws.context"]`` (Mangum) or from Lambda Web Adapter's
``x-amzn-lambda-context`` header, for the deadline and request id. ``lifespan`` passes through
untouched, and so does ``websocket``: a socket may stay open for hours, and an invocation
holds its slot until it ends, so there each ``db.connection()`` block is its own invocation.

WSGI: the invocation lasts until the server closes the response iterable (PEP 3333
``close()``), so a streamed body can still use the connection; an exception from the app ends
it too. It runs in a context of its own, so nothing of it is left in the server's thread
whatever the server does. Sync driver only.
"""

from __future__ import annotations

import contextvars
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from lambdapool._scope import InvocationScope
from lambdapool.errors import ConfigError

if TYPE_CHECKING:
    from lambdapool._database import Core

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
StartResponse = Callable[..., Any]

LWA_CONTEXT = b"x-amzn-lambda-context"


class HeaderContext:
    """The Lambda context Lambda Web Adapter passes in ``x-amzn-lambda-context`` (JSON with
    ``request_id`` and ``deadline``, epoch milliseconds), read like Lambda's own."""

    __slots__ = ("aws_request_id", "_deadline")

    def __init__(self, request_id: str | None, deadline_ms: float) -> None:
        self.aws_request_id = request_id
        self._deadline = time.monotonic() + (deadline_ms / 1000.0 - time.time())

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    @classmethod
    def parse(cls, raw: bytes) -> HeaderContext | None:
        try:
            data = json.loads(raw)
            return cls(str(data.get("request_id") or "") or None, float(data["deadline"]))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None  # not what the adapter sends: no deadline of its own


def lambda_context(scope: Scope) -> Any:
    """The Lambda context of an ASGI request: Mangum's ``aws.context``, else Lambda Web
    Adapter's header, else None (the invocation_timeout applies)."""
    context = scope.get("aws.context")
    if context is not None:
        return context
    for name, value in scope.get("headers") or ():
        if name == LWA_CONTEXT:
            return HeaderContext.parse(value)
    return None


async def give_back(core: Core) -> None:
    """Before the last of the response goes out, give the slot back if no connection() block
    is open: the client (Lambda Web Adapter, a browser) may send its next request as soon as it
    has the response, and that request should find the warm connection idle rather than open a
    second one. The invocation goes on (a background task may take a connection again, lazily)."""
    state = core.current.get()
    if state is not None and state.holder is not None and not state.depth:
        await core.end_from_async(state)


def give_back_sync(core: Core) -> None:
    """give_back() for WSGI (the sync driver), in the invocation's context."""
    state = core.current.get()
    if state is not None and state.holder is not None and not state.depth:
        core.end_from_sync(state)


class AsgiApp:
    """An ASGI app whose every ``http`` request is one invocation (``db.asgi(app)``).

    Works with every driver: async drivers for ``async def`` endpoints, psycopg for sync ones
    too (FastAPI runs them in a threadpool with a copy of the request's context, so their
    ``db.connection()`` finds the invocation). Async connections belong to the loop they were
    made on; the server's loop (uvicorn's, or the thread's loop Mangum keeps) lasts across
    requests, so the warm connection is reused.
    """

    def __init__(self, core: Core, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        if not callable(app):
            raise ConfigError(
                f"db.asgi() needs an ASGI app (async callable (scope, receive, send)), got {type(app).__name__}"
            )
        self.core = core
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan, websocket: as they are
            await self.app(scope, receive, send)
            return
        core = self.core

        async def send_last_unheld(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                await give_back(core)
            await send(message)

        async with InvocationScope(core, lambda_context(scope)):
            await self.app(scope, receive, send_last_unheld)

    def __getattr__(self, name: str) -> Any:  # (app.state, app.router...: the app's own)
        if name in ("core", "app"):
            raise AttributeError(name)
        return getattr(self.app, name)


class WsgiApp:
    """A WSGI app whose every request is one invocation (``db.wsgi(app)``), lasting until the
    server closes the response. Sync driver (psycopg) only: WSGI requests run in plain threads."""

    def __init__(self, core: Core, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        if core.lender.is_async:
            raise ConfigError(
                f"db.wsgi(): driver {core.settings.driver!r} is asynchronous, but a WSGI app serves its "
                "requests in plain threads: choose driver='psycopg' (LAMBDAPOOL_DRIVER=psycopg), or "
                "serve an ASGI app with db.asgi()"
            )
        if not callable(app):
            raise ConfigError(
                f"db.wsgi() needs a WSGI app (callable (environ, start_response)), got {type(app).__name__}"
            )
        self.core = core
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        ctx = contextvars.copy_context()  # the invocation lives here, not in the server's thread
        scope = InvocationScope(self.core)
        ctx.run(scope.__enter__)
        try:
            result = ctx.run(self.app, environ, start_response)
        except BaseException:
            ctx.run(scope.__exit__, *sys.exc_info())
            raise
        return ClosingResponse(ctx, scope, result, self.core)

    def __getattr__(self, name: str) -> Any:
        if name in ("core", "app"):
            raise AttributeError(name)
        return getattr(self.app, name)


class ClosingResponse:
    """The app's response iterable, iterated in the invocation's context; ``close()`` closes
    the app's iterable, then ends the invocation (once, whatever happens)."""

    __slots__ = ("_ctx", "_scope", "_result", "_it", "_core")

    def __init__(self, ctx: contextvars.Context, scope: InvocationScope, result: Iterable[bytes], core: Core) -> None:
        self._ctx = ctx
        self._scope: InvocationScope | None = scope
        self._result = result
        self._core = core
        self._it: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._it is None:
            self._it = self._ctx.run(iter, self._result)
        try:
            return self._ctx.run(next, self._it)
        except StopIteration:  # the body is out: the slot goes back before the server's close()
            self._ctx.run(give_back_sync, self._core)
            raise

    def close(self) -> None:
        scope, self._scope = self._scope, None
        if scope is None:
            return
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                self._ctx.run(close)
        finally:
            self._ctx.run(scope.__exit__, None, None, None)

    def __del__(self) -> None:
        # A server that never calls close() (against PEP 3333) must not keep the slot forever.
        if self._scope is not None:
            try:
                self.close()
            except Exception:
                pass
