"""``db.invocation_scope()``: the one place an invocation begins and ends.

Everything that serves requests is a thin layer over it: the Lambda and Cloud Functions
decorators, ``db.asgi()`` / ``db.wsgi()``, the SQLAlchemy pool and the Django backend. Within
the block the invocation is numbered (cold start or warm), has a deadline (the Lambda
context's, else ``invocation_timeout``), and takes a slot and its warm connection only if it
asks (``db.connection()``); at the end whatever it holds is given back clean.

A scope entered inside a running invocation joins it rather than starting another, so
wrapping twice (``@db.lambda_handler`` around ``Mangum(db.asgi(app))``) counts one invocation.
"""

from __future__ import annotations

import contextvars
from typing import Any

from lambdapool._loop import run_on
from lambdapool._runtime import Invocation, InvocationState
from lambdapool.errors import LambdapoolError


class InvocationScope:
    """``with db.invocation_scope(context):`` (sync drivers) or ``async with`` (any driver).

    Yields the :class:`~lambdapool._runtime.Invocation`. ``context`` is the Lambda context
    (for the deadline and request id), or None.
    """

    __slots__ = ("_db", "_context", "_state", "_token")

    def __init__(self, db: Any, context: Any = None) -> None:
        self._db = db
        self._context = context
        self._state: InvocationState | None = None
        self._token: contextvars.Token[Any] | None = None

    def _begin(self) -> Invocation:
        db = self._db
        if self._token is not None:
            raise LambdapoolError("this invocation_scope() is already in use: make one per invocation")
        outer: InvocationState | None = db._current.get()
        if outer is not None and outer.number:  # inside a running invocation: part of it
            return outer.view()
        state = self._state = InvocationState(db._instance, self._context)
        self._token = db._current.set(state)
        return state.view()

    def _end(self) -> InvocationState | None:
        state, token = self._state, self._token
        if token is None:
            return None
        self._state = self._token = None
        try:
            self._db._current.reset(token)
        except ValueError:  # ended in another context than it began: that copy is gone anyway
            pass
        return state

    def __enter__(self) -> Invocation:
        return self._begin()

    def __exit__(self, *exc: object) -> None:
        state = self._end()
        if state is None:
            return
        db = self._db
        lender = db._lender
        try:
            if not lender.finish_warm(state):
                if db.is_async:  # an async driver's connection, given back from sync code (Mangum)
                    holder = state.holder
                    if holder.loop is None or holder.loop.is_closed():
                        lender.abandon(state)
                    else:
                        run_on(holder.loop, lender.finish(state))
                else:
                    lender.finish(state)
        finally:
            db._after(state)

    async def __aenter__(self) -> Invocation:
        return self._begin()

    async def __aexit__(self, *exc: object) -> None:
        state = self._end()
        if state is None:
            return
        db = self._db
        lender = db._lender
        try:
            if db.is_async:
                await lender.end(state)
            else:  # an async app on a sync driver (FastAPI with psycopg)
                lender.end(state)
        finally:
            db._after(state)
